"""fasttx.nn.LayerNorm and fasttx.nn.RMSNorm.

They subclass the torch.nn modules, so constructor arguments, defaults, parameter names and
initialisation, state_dict keys and isinstance checks are torch's own; only forward changes.
"""

import torch

from .. import functional
from ._backend import BackendMixin


class LayerNorm(BackendMixin, torch.nn.LayerNorm):
    _fasttx_op = "layer_norm"

    def forward(self, input):
        return functional.layer_norm(
            input, self.normalized_shape, self.weight, self.bias, self.eps, backend=self.backend
        )


class RMSNorm(BackendMixin, torch.nn.RMSNorm):
    _fasttx_op = "rms_norm"

    def forward(self, input):
        return functional.rms_norm(input, self.normalized_shape, self.weight, self.eps, backend=self.backend)
