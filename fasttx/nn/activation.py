"""fasttx.nn.Softmax: torch.nn.Softmax (same constructor, repr, state_dict) on fasttx.softmax."""

import warnings

import torch

from .. import functional
from ._backend import BackendMixin


class Softmax(BackendMixin, torch.nn.Softmax):
    _fasttx_op = "softmax"

    def forward(self, input):
        dim = self.dim
        if dim is None:  # torch's legacy implicit dim, with its warning
            warnings.warn("Implicit dimension choice for softmax has been deprecated. "
                          "Change the call to include dim=X as an argument.", stacklevel=2)
            dim = 0 if input.dim() in (0, 1, 3) else 1
        return functional.softmax(input, dim, backend=self.backend)
