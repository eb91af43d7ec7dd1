"""Test setup: without a GPU, Triton kernels run on CPU tensors in the interpreter, which must be
switched on before triton is first imported."""

import os
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fasttx  # noqa: E402
from fasttx import backends  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class OpRecorder(TorchDispatchMode):
    """Records the name of every op dispatched inside it (``ops``), e.g. "fasttx::attention_fwd_triton"."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.name())
        return func(*args, **(kwargs or {}))


def runnable_backends(device=DEVICE, op=None):
    """The backends that can run ``op`` on ``device`` here: every test runs on each of them."""
    return [b for b in backends.BACKENDS if backends.unavailable_reason(b, device, op=op) is None]


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # A different but reproducible draw per test: fresh random inputs, never zeros. crc32, not
    # hash(): str hashes change from process to process, which made a failure unreproducible.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
