"""Helpers shared by the functional ops: argument checks whose errors name the argument, expected
and actual; the mask-broadcast merging of the kernel wrappers."""

import math

import torch


class ShapeError(ValueError, RuntimeError):
    """An argument of the wrong shape: a ValueError, also catchable as the RuntimeError torch raises for
    the same call (F.layer_norm, F.rms_norm, softmax's and attention's broadcast masks), so that code
    written around torch's ops and modules still catches it from their fasttx drop-ins."""


def check_tensor(op, name, value, *, like=None):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"fasttx.{op}: {name} must be a Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"fasttx.{op}: {name} must have a floating-point dtype, got {value.dtype}")
    if like is not None and value.device != like.device:
        raise RuntimeError(
            f"fasttx.{op}: {name} must be on the input's device {like.device}, got {value.device}"
        )


def check_shape(op, name, value, expected):
    if tuple(value.shape) != tuple(expected):
        raise ShapeError(f"fasttx.{op}: {name} must have shape {tuple(expected)}, got {tuple(value.shape)}")


def check_mask_kind(op, name, mask, like, like_name):
    """A mask is a bool or floating-point Tensor on ``like``'s device."""
    if not isinstance(mask, torch.Tensor) or not (mask.dtype == torch.bool or mask.is_floating_point()):
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"fasttx.{op}: {name} must be a bool or floating-point Tensor, got {got}")
    if mask.device != like.device:
        raise RuntimeError(f"fasttx.{op}: {name} must be on {like_name} device {like.device}, got {mask.device}")


def check_mask(op, name, mask, like, like_name, target, target_name):
    """A mask is a bool or floating-point Tensor on ``like``'s device that broadcasts to
    ``target`` (described in errors as ``target_name``)."""
    check_mask_kind(op, name, mask, like, like_name)
    # (Not torch.broadcast_shapes: its symbolic-shape machinery costs ~50 us a call on the host.)
    shape = mask.shape
    if len(shape) > len(target) or any(m != 1 and m != t for m, t in zip(reversed(shape), reversed(target))):
        raise ShapeError(f"fasttx.{op}: {name} of shape {list(mask.shape)} must broadcast to {target_name} {list(target)}")


def merge_leading_dims(mask, sizes, groups):
    """Merge the leading dims ``sizes`` of a tensor, and the matching dims of ``mask`` (each 1 or
    equal: the mask broadcasts), into exactly ``groups`` dims, without expanding the mask.

    Adjacent dims merge when the mask broadcasts over all of them or over none; when that leaves
    more than ``groups`` dims, the mask's leading dims are materialised. Returns (the merged sizes,
    the mask viewed with its merged dims, 1 where it broadcasts, or None without a mask).
    """
    merged = []  # [size, mask broadcasts over it]
    for size, mask_size in zip(sizes, mask.shape if mask is not None else [1] * len(sizes)):
        if size == 1:
            continue
        if merged and (mask is None or merged[-1][1] == (mask_size == 1)):
            merged[-1][0] *= size
        else:
            merged.append([size, mask_size == 1])
    rest = () if mask is None else tuple(mask.shape[len(sizes):])
    if len(merged) > groups:
        mask = mask.expand(*sizes, *rest)
        merged = [[math.prod(sizes), False]]
    merged = [[1, True]] * (groups - len(merged)) + merged
    if mask is not None:
        mask = mask.reshape(*(1 if broadcast else size for size, broadcast in merged), *rest)
    return [size for size, _ in merged], mask
