"""Argument checks shared by the functional ops: errors name the argument, expected and actual."""

import torch


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
        raise ValueError(f"fasttx.{op}: {name} must have shape {tuple(expected)}, got {tuple(value.shape)}")
