"""fasttx: fused Triton and CUDA C++ kernels for Transformer training in PyTorch."""

from . import _extension, _ops  # noqa: F401  (_ops registers the torch.ops.fasttx custom ops)
from . import backends, integrations, nn, reference
from ._info import info
from ._patch import patch
from .backends import use_backend
from .functional import layer_norm, rms_norm, scaled_dot_product_attention, softmax

__version__ = "0.1.0"

__all__ = ["backends", "info", "layer_norm", "nn", "patch", "reference", "rms_norm", "scaled_dot_product_attention", "softmax",
           "use_backend"]

# A prebuilt fasttx._C registers torch.ops.fasttx.*_cuda now; compiling one (on a GPU machine
# without it) waits for the first use of backend "cuda".
_extension.load(allow_jit_build=False)

# "fasttx" in transformers' attention registries, now or when transformers is imported (lazily), and
# offered to torch's flash-attention registry (never activated by fasttx).
integrations.install_import_hooks()
