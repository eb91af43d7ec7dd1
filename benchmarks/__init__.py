"""Benchmarks behind ``python -m fasttx bench`` (installed as fasttx.benchmarks).

One module per op family, each with:
  OPS      the op names it benchmarks (``--op`` choices)
  SHAPE    what one ``--shapes`` entry means, e.g. "ROWSxHIDDEN"
  PRESETS  {"quick": shapes, "full": shapes}: a few small shapes (CPU), the GPU sweep
  PLOT     (x-axis label key, label keys shared by the points of one line)
  cases(op, dtype, device_type, shapes, fasttx_backends) -> iterable of common.Case
A new op is a new module listed in MODULES.
"""

from . import attention, modules, norms, softmax

MODULES = (norms, softmax, attention, modules)
REGISTRY = {op: module for module in MODULES for op in module.OPS}
