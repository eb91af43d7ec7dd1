"""fasttx.patch(model): swap torch.nn modules for their fasttx drop-ins, in place."""

import torch

from . import nn as fnn

# torch.nn type -> fasttx type; exact types only, so user subclasses with their own forward stay.
_SWAPS = {torch.nn.LayerNorm: fnn.LayerNorm, torch.nn.RMSNorm: fnn.RMSNorm, torch.nn.Softmax: fnn.Softmax}


def _swap(module, backend):
    swapped = _SWAPS[type(module)].__new__(_SWAPS[type(module)])
    swapped.__dict__.update(module.__dict__)  # the same parameter tensors, buffers, hooks, mode
    swapped.backend = backend
    return swapped


def patch(model, backend="auto"):
    """Replace every torch.nn LayerNorm, RMSNorm and Softmax inside ``model`` (or ``model`` itself) by the
    fasttx module holding the same parameters; returns the model."""
    from .backends import _check_choice

    _check_choice(backend)
    if type(model) in _SWAPS:
        return _swap(model, backend)
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) in _SWAPS:
                setattr(parent, name, _swap(child, backend))
    return model
