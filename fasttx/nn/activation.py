"""fasttx.nn.Softmax: torch.nn.Softmax (same constructor, repr, state_dict) on fasttx.softmax."""

import warnings

import torch
from torch import Tensor
from torch.fx import Proxy

from .. import functional
from ._backend import BackendMixin, torch_forward


class Softmax(BackendMixin, torch.nn.Softmax):
    _fasttx_op = "softmax"
    _torch_forward = torch_forward(torch.nn.Softmax)

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles this branch only (_backend.torch_forward)
            return self._torch_forward(input)
        if isinstance(input, Proxy):  # torch.fx symbolic tracing (BackendMixin._traced)
            return self._traced(input)
        dim = self.dim
        if dim is None:  # torch's legacy implicit dim, with its warning
            warnings.warn("Implicit dimension choice for softmax has been deprecated. "
                          "Change the call to include dim=X as an argument.", stacklevel=2)
            dim = 0 if input.dim() in (0, 1, 3) else 1
        return functional.softmax(input, dim, backend=self.backend)
