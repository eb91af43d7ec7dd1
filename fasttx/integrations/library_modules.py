"""The library modules ``fasttx.patch`` converts, listed by exact class (never guessed from attribute
names), and how: each converted module's class becomes a subclass of its own class (isinstance,
parameters, buffers, state_dict and hooks stay) whose forward runs fasttx.

Norms, each checked against the stock class in tests/integrations/test_library_modules.py:
- Llama-style RMSNorm (Llama, Mistral, Mixtral, Qwen2, Qwen2-MoE, Qwen3, Phi3): the stock class
  normalises in fp32, rounds to the input dtype, then multiplies by the weight; fasttx.rms_norm's
  kernels apply the weight in fp32 and round once. Identical math in fp32; in half precision the
  results differ by that one rounding (within the fp16/bf16 tolerances of fasttx.testing). The output
  keeps the stock dtype (the promotion of input and weight dtypes). Where the backend resolves to
  torch (CPU, or backend="torch"), the stock forward runs, as is (_runs_stock_forward).
- T5LayerNorm: RMSNorm whose output is in the weight's dtype when that is half precision, else fp32
  (as the stock class); the same one-rounding difference, and the same stock forward on torch.
- timm's LayerNorm (timm.layers.LayerNorm, what timm's ViTs use): F.layer_norm with its arguments.
Gemma-style RMSNorm (weight + 1, multiplied before the cast) is not LlamaRMSNorm math and is not listed.

Attention: timm's ViT ``Attention`` calls ``F.scaled_dot_product_attention`` when ``fused_attn``; the
converted module sets ``fused_attn`` and runs its own forward with exactly that call sent to
``fasttx.scaled_dot_product_attention`` (same arguments), so q/k norms, masks and dropout stay timm's:
the forward's own code, run where the global ``F`` it reads is torch.nn.functional with fasttx's SDPA
(_forward_on_fasttx_sdpa), else under a TorchFunctionMode that catches the call however it is made. On
CPU with the torch backend, where fasttx's SDPA is torch's, it runs its own forward as it is.
"""

import collections
import importlib
import sys
import types

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .. import backends, functional, nn
from ..nn._backend import BackendMixin, registered

_HALF = (torch.float16, torch.bfloat16)


def _runs_stock_forward(module, hidden_states):
    """Whether a listed RMSNorm runs its stock class's forward: where its backend resolves to torch.
    The stock forward is a few torch ops; torch.rms_norm, what fasttx.rms_norm runs there, is on CPU
    a composite of more, and was as fast or slower but in one case of eight (benchmarks/notes/
    layer_norm.md, "Library RMSNorms on CPU"). The stock forward is the stock model's speed, exactly."""
    return backends.resolve("rms_norm", module.backend, hidden_states) == "torch"


class LlamaStyleRMSNorm(BackendMixin):
    """rms_norm(x) then the weight, in the stock output dtype promote(x, weight)."""

    _fasttx_op = "rms_norm"

    def forward(self, hidden_states):
        if _runs_stock_forward(self, hidden_states):
            return super().forward(hidden_states)
        weight = registered(self, "weight")
        out = functional.rms_norm(hidden_states, weight.shape, weight, self.variance_epsilon, backend=self.backend)
        return out.to(torch.promote_types(hidden_states.dtype, weight.dtype))


class T5StyleRMSNorm(BackendMixin):
    """rms_norm(x) then the weight; output in the weight's dtype if half, else promote(x, fp32, weight)."""

    _fasttx_op = "rms_norm"

    def forward(self, hidden_states):
        if _runs_stock_forward(self, hidden_states):
            return super().forward(hidden_states)
        weight = registered(self, "weight")
        out = functional.rms_norm(hidden_states, weight.shape, weight,
                                  self.variance_epsilon, backend=self.backend)
        dtype = weight.dtype if weight.dtype in _HALF else torch.promote_types(
            torch.promote_types(hidden_states.dtype, torch.float32), weight.dtype)
        return out.to(dtype)


class _SDPAToFasttx(TorchFunctionMode):
    """Sends F.scaled_dot_product_attention calls to fasttx's (other torch functions run as they are)."""

    def __init__(self, backend):
        super().__init__()
        self.backend = backend

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return functional.scaled_dot_product_attention(*args, **kwargs, backend=self.backend)
        return func(*args, **kwargs)


class _FunctionalOnFasttx:
    """torch.nn.functional as a forward made by _forward_on_fasttx_sdpa reads it through its global ``F``:
    scaled_dot_product_attention is fasttx's with ``backend``; any other name is torch.nn.functional's,
    looked up at each use."""

    def __init__(self, backend):
        self.backend = backend

    def scaled_dot_product_attention(self, *args, **kwargs):
        return functional.scaled_dot_product_attention(*args, **kwargs, backend=self.backend)

    def __getattr__(self, name):
        return getattr(F, name)


def _forward_on_fasttx_sdpa(forward, backend):
    """``forward`` (a stock class's function) with its ``F.scaled_dot_product_attention`` calls running
    fasttx's with ``backend``: the same code object, with a copy of its module's globals (made when the
    class is converted; ``F`` in it is a _FunctionalOnFasttx), so every other op runs at torch's own
    cost. Where the code calls SDPA otherwise (not through a global ``F`` that is torch.nn.functional, or
    also through ``torch.nn.functional``), None: the module then runs under the TorchFunctionMode, which
    catches any call but sends every torch function of the forward through Python (~30 us a call of
    timm's ViT Attention on the host, dim 64, 17 tokens: benchmarks/notes/attention.md)."""
    code, scope = forward.__code__, forward.__globals__
    if not (scope.get("F") is F and "scaled_dot_product_attention" in code.co_names
            and "functional" not in code.co_names and "scaled_dot_product_attention" not in scope):
        return None
    # Without its module's __name__: torch.compile takes globals that have one for that module's own,
    # and would read F there (torch 2.11's dynamo failed on its guard).
    made_scope = {name: value for name, value in scope.items() if name != "__name__"}
    made_scope["F"] = _FunctionalOnFasttx(backend)
    made = types.FunctionType(code, made_scope, forward.__name__, forward.__defaults__, forward.__closure__)
    made.__kwdefaults__ = forward.__kwdefaults__
    made.__module__, made.__qualname__ = forward.__module__, forward.__qualname__
    return made


class SDPAOnFasttx(BackendMixin):
    """The module's own forward, its F.scaled_dot_product_attention calls running fasttx's: its code on
    fasttx's SDPA (_forward_on_fasttx_sdpa, made per backend when the class is made, so that a compiled
    forward only looks it up), else under the TorchFunctionMode. On CPU where the backend resolves to
    torch, fasttx's SDPA is torch's own (a row a mask empties gives 0 in both:
    functional.native.scaled_dot_product_attention), and the stock forward runs as it is: fasttx's SDPA
    checks cost its call a few us there."""

    _fasttx_op = "attention"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        stock_forward = super(SDPAOnFasttx, cls).forward
        cls._forwards_on_fasttx_sdpa = {backend: _forward_on_fasttx_sdpa(stock_forward, backend)
                                        for backend in backends.CHOICES}

    def forward(self, *args, **kwargs):
        x = args[0] if args else kwargs.get("x")
        if isinstance(x, torch.Tensor) and x.is_cpu and backends.resolve("attention", self.backend, x) == "torch":
            return super().forward(*args, **kwargs)
        made = self._forwards_on_fasttx_sdpa[self.backend]
        if made is not None:
            return made(self, *args, **kwargs)
        with _SDPAToFasttx(self.backend):
            return super().forward(*args, **kwargs)


# (module, class name) -> the fasttx behaviour its converted instances get. Only classes whose
# module is already imported are looked up: a model holding one has imported it.
LIBRARY_MODULES = {
    **{(f"transformers.models.{model}.modeling_{model}", f"{prefix}RMSNorm"): LlamaStyleRMSNorm
       for model, prefix in (("llama", "Llama"), ("mistral", "Mistral"), ("mixtral", "Mixtral"), ("qwen2", "Qwen2"),
                             ("qwen2_moe", "Qwen2Moe"), ("qwen3", "Qwen3"), ("phi3", "Phi3"))},
    ("transformers.models.t5.modeling_t5", "T5LayerNorm"): T5StyleRMSNorm,
    ("timm.layers.norm", "LayerNorm"): nn.LayerNorm,
    ("timm.layers.attention", "Attention"): SDPAOnFasttx,
    ("timm.models.vision_transformer", "Attention"): SDPAOnFasttx,  # where older timm defines it
}

_subclasses = {}  # stock class -> its fasttx subclass


def _fasttx_subclass(cls, behaviour):
    if cls not in _subclasses:
        _subclasses[cls] = type(f"Fasttx{cls.__name__}", (behaviour, cls), {"__module__": __name__})
    return _subclasses[cls]


def __getattr__(name):
    """The converted classes by name (``FasttxLlamaRMSNorm``): how pickle finds them, so that a
    patched model saves and loads whole (torch.save(model))."""
    for (module_name, class_name), behaviour in LIBRARY_MODULES.items():
        if name == f"Fasttx{class_name}":
            try:
                return _fasttx_subclass(getattr(importlib.import_module(module_name), class_name), behaviour)
            except (ImportError, AttributeError):  # e.g. timm's Attention in its other home
                continue
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def listed_classes():
    """{stock class: fasttx behaviour} for the listed classes of the libraries imported now."""
    found = {}
    for (module_name, class_name), behaviour in LIBRARY_MODULES.items():
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type):
            found[cls] = behaviour
    return found


def convert(model, backend):
    """Convert, in place, every module of ``model`` whose exact class is listed; {class name: count}."""
    classes = listed_classes()
    converted = collections.Counter()
    for module in model.modules():
        behaviour = classes.get(type(module))
        if behaviour is None:
            continue
        converted[type(module).__name__] += 1
        module.__class__ = _fasttx_subclass(type(module), behaviour)
        module.__dict__["_fasttx_backend"] = backend
        if behaviour is SDPAOnFasttx and hasattr(module, "fused_attn"):
            module.fused_attn = True  # timm's other path computes the same attention without SDPA
    return dict(converted)
