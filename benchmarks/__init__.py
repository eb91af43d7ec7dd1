"""Benchmarks behind ``python -m fasttx bench`` (installed as fasttx.benchmarks).

One module per op family, each with:
  OPS      the op names it benchmarks (``--op`` choices)
  SHAPE    what one ``--shapes`` entry means, e.g. "ROWSxHIDDEN"
  PRESETS  {"quick": shapes, "full": shapes}: a few small shapes (CPU), the GPU sweep
  PLOT     (x-axis label key, label keys shared by the points of one line)
  cases(op, dtype, device_type, shapes, fasttx_backends) -> iterable of common.Case
An op's module is named by its declaration (``bench`` in fasttx/_declarations.py); ``modules`` times
the nn modules built on the ops.
"""

import importlib

from .._declarations import DECLARATIONS

MODULES = tuple(importlib.import_module(f"{__name__}.{name}")
                for name in dict.fromkeys([d.bench for d in DECLARATIONS.values()] + ["modules"]))
REGISTRY = {op: module for module in MODULES for op in module.OPS}
