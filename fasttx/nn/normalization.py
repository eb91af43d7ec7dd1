"""fasttx.nn.LayerNorm and fasttx.nn.RMSNorm.

They subclass the torch.nn modules, so constructor arguments, defaults, parameter names and
initialisation, state_dict keys and isinstance checks are torch's own; only forward changes.
"""

import torch
from torch import Tensor
from torch.fx import Proxy

from .. import functional
from ._backend import BackendMixin, registered, torch_forward


class LayerNorm(BackendMixin, torch.nn.LayerNorm):
    _fasttx_op = "layer_norm"
    _torch_forward = torch_forward(torch.nn.LayerNorm)

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles this branch only (_backend.torch_forward)
            return self._torch_forward(input)
        if isinstance(input, Proxy):  # torch.fx symbolic tracing (BackendMixin._traced)
            return self._traced(input)
        return functional.layer_norm(input, self.normalized_shape, registered(self, "weight"), registered(self, "bias"),
                                     self.eps, backend=self.backend)


class RMSNorm(BackendMixin, torch.nn.RMSNorm):
    _fasttx_op = "rms_norm"
    _torch_forward = torch_forward(torch.nn.RMSNorm)

    def forward(self, x: Tensor) -> Tensor:  # x, as torch names it
        if torch.jit.is_scripting():
            return self._torch_forward(x)
        if isinstance(x, Proxy):
            return self._traced(x)
        return functional.rms_norm(x, self.normalized_shape, registered(self, "weight"), self.eps, backend=self.backend)
