"""The ``backend`` every fasttx module takes, how it shows in the repr, and the in-place conversion
of torch.nn modules into their fasttx drop-ins (used by the composite modules and fasttx.patch).
Also how a fasttx module goes through the tools that compile or trace a torch.nn one (TorchScript,
torch.fx), where fasttx's forward cannot."""

import collections
import types
import warnings

import torch

from .. import backends
from ..functional import native


class BackendMixin:
    """Put first among the bases of a torch.nn subclass that adds no state of its own: adds the
    ``backend`` keyword to its constructor and, to its repr, the backend (for "auto", also the one
    that last ran). Torch submodules the constructor made become fasttx modules in place (same
    parameters, same initialisation draws), and setting ``backend`` sets it on every fasttx
    submodule."""

    _fasttx_op = None  # the op name fasttx.backends records for this module

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        convert(self, backend)
        self.backend = backend

    @property
    def backend(self):
        return self.__dict__["_fasttx_backend"]

    @backend.setter
    def backend(self, name):
        backends._check_choice(name)
        for module in self.modules():
            if isinstance(module, BackendMixin):
                module.__dict__["_fasttx_backend"] = name

    # TorchScript compiles a module's properties unless told not to; this one is Python-only.
    __jit_unused_properties__ = ["backend"]

    def __prepare_scriptable__(self):
        """torch.jit.script compiles each fasttx module's forward, whose TorchScript branch is torch.nn's
        own forward (see torch_forward). Returns the module itself: torch.jit.script puts what this
        returns into the parent, so anything else would change the user's model."""
        _warn_backend_not_applied(self, "torch.jit.script")
        return self

    def _traced(self, *args):
        """forward's answer under torch.fx symbolic tracing, which forward tells by its first argument
        being a Proxy: the graph node that calls this module, as the tracer makes for torch.nn's own
        modules (Tracer.is_leaf_module), since fasttx's forward reads the shapes, dtypes and devices a
        Proxy does not have. Traced as the root itself, the module is traced through torch.nn's
        forward, as a torch.nn root is."""
        tracer = args[0].tracer
        path = tracer.path_of_module(self)
        if path == "":
            _warn_backend_not_applied(self, "torch.fx.symbolic_trace of the module itself")
            return self._torch_forward(*args)
        return tracer.create_proxy("call_module", path, args, {})

    def extra_repr(self):
        ran = backends.last_used.get(self._fasttx_op)
        shown = f"backend={self.backend}" + (f" (last ran: {ran})" if self.backend == "auto" and ran else "")
        return ", ".join(part for part in (super().extra_repr(), shown) if part)


def torch_forward(torch_class):
    """``torch_class.forward`` (a torch.nn module's), to be a fasttx module's ``_torch_forward``: what its
    forward runs under TorchScript, which cannot compile fasttx's Python dispatch to the kernels, so a
    scripted fasttx module computes torch.nn's formulation, with the same parameters. The same code
    under that name: TorchScript compiles a method called from forward under its function's name."""
    forward = torch_class.forward
    method = types.FunctionType(forward.__code__, forward.__globals__, "_torch_forward", forward.__defaults__,
                                forward.__closure__)
    method.__kwdefaults__ = forward.__kwdefaults__
    method.__annotations__ = dict(forward.__annotations__)
    method.__qualname__ = f"{torch_class.__qualname__}._torch_forward"
    return method


def registered(module, name):
    """``module.<name>`` where it is a registered parameter or submodule (or None in its place), read
    without the ordinary attribute lookup that fails before torch.nn.Module.__getattr__ finds it:
    ~0.5 us of a small module's host time, a name (1.5-2x that inside a model's call). Where the
    name is neither (a parametrization's property, a plain tensor set in its place), the attribute
    as Python finds it."""
    table = module._parameters
    if name in table:
        return table[name]
    table = module._modules
    return table[name] if name in table else getattr(module, name)


def _warn_backend_not_applied(module, tool):
    """What ``tool`` compiles computes torch.nn's formulation: say so where the module's backend was
    asked for explicitly (it may not change silently; "auto" and "torch" may)."""
    if module.backend not in ("auto", "torch"):
        warnings.warn(f"fasttx.nn.{type(module).__name__}: {tool} compiles torch.nn's formulation of the module, "
                      f"not its backend={module.backend!r} kernels", stacklevel=3)


def convert(model, backend):
    """Turn every module inside ``model`` (itself included) whose exact type is a torch.nn module
    with a fasttx drop-in into that drop-in, in place: the objects, and so their parameters,
    buffers, hooks and train/eval mode, stay; only their class changes, and they get ``backend``.
    User subclasses keep their own class. Returns {torch class name: how many were converted}."""
    from . import DROP_INS

    backends._check_choice(backend)
    converted = collections.Counter()
    for module in model.modules():
        drop_in = DROP_INS.get(type(module))
        if drop_in is not None:
            converted[type(module).__name__] += 1
            module.__class__ = drop_in
            module.__dict__["_fasttx_backend"] = backend
    return dict(converted)


# Up to this many elements of the input (batch x sequence x features), torch's fused inference kernel
# beats fasttx's forward on CPU: the host's time per op decides there. Above it fasttx's forward is as
# fast or faster (torch's flash SDPA against the kernel's materialised L x S softmax). Measured on
# this 2-core CPU: benchmarks/notes/attention.md, "Inference on CPU".
TORCH_INFERENCE_KERNEL_MAX_ELEMENTS = 2**15


def torch_inference_kernel_applies(module, x, key_padding_mask, ops, max_elements=TORCH_INFERENCE_KERNEL_MAX_ELEMENTS):
    """Whether torch.nn's fused inference kernel for ``module`` (in eval mode; the kernel its forward
    calls: torch._native_multi_head_attention, _transformer_encoder_layer_fwd) should run in place of
    fasttx's forward: it then computes what fasttx's forward would, in one C++ call where fasttx's
    makes ~15, and is faster (small inputs). The caller checks its module's own conditions first,
    eval mode first (it rules out every training call at once), and its masks (fused_kernel_masks).
    Holds on CPU, without autograd, autocast, torch.compile or make_fx tracing (which
    torch.nn's forwards keep their kernels out of), when each (op, fasttx submodule) of ``ops``
    resolves to torch (or is a torch.nn module), with no key-padding mask or an (N, S) bool one in
    which no sequence is all padding: torch's kernel gives such a sequence NaN where fasttx gives 0.
    (CPU only: on CUDA the kernel computes GELU by its tanh approximation.) The caller then calls the
    kernel itself, not through torch.nn's forward, whose checks repeat these at a few us of Python a
    call, and where the kernel refuses the arguments runs fasttx's forward, whose checks name the
    argument. ``max_elements``: the input size up to which torch's kernel is the faster, None where
    it is at any size."""
    if x.dim() != 3 or not x.is_cpu or (max_elements is not None and x.numel() > max_elements):
        return False
    if torch.compiler.is_compiling() or torch._C._is_any_autocast_enabled() or not torch.backends.mha.get_fastpath_enabled():
        return False
    if torch._C._len_torch_dispatch_stack() and _make_fx_tracing():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())):
        return False
    if key_padding_mask is not None and not (isinstance(key_padding_mask, torch.Tensor) and key_padding_mask.dtype == torch.bool
                                             and key_padding_mask.shape == x.shape[:2]
                                             and native.some_row_all(key_padding_mask, True) is False):
        return False
    # (A submodule a user swapped back to a torch.nn one has no backend: torch's, which that kernel computes.)
    for op, submodule in ops:  # (a loop: all() of a generator costs ~0.3 us more)
        if backends.resolve(op, getattr(submodule, "backend", "torch"), x) != "torch":
            return False
    return True


def fused_kernel_masks(attn_mask, is_causal, key_padding_mask, x, num_heads):
    """(mask, mask_type): the masks of this call as torch.nn's forwards merge them for their fused kernel
    (MultiheadAttention.merge_masks), for the batch-first input ``x`` (N, L, E), where the kernel computes
    what fasttx's forward would: no mask; a key-padding mask alone (torch_inference_kernel_applies then
    checks it); or an (L, L) attn_mask that the is_causal hint names the causal mask, without a
    key-padding mask: no row of it is all masked out, which the kernel would give NaN. Else None. Masks go
    as they are (bool: True masked out); the kernel reads a float one as bool, so only the hint's mask,
    which holds 0 and -inf, is passed: an additive one would lose its values."""
    if attn_mask is None:
        return None if is_causal else (key_padding_mask, None if key_padding_mask is None else 1)
    if not (is_causal and key_padding_mask is None and isinstance(attn_mask, torch.Tensor)):
        return None
    batch, seq = x.shape[0], x.shape[1]
    if attn_mask.shape != (seq, seq) or not (attn_mask.dtype == torch.bool or attn_mask.is_floating_point()):
        return None
    return attn_mask.view(1, 1, seq, seq).expand(batch, num_heads, seq, seq), 2


def _make_fx_tracing():
    """Whether make_fx traces this call (torch.nn.MultiheadAttention's own test for it, where it
    leaves its fused kernel out)."""
    from torch.fx.experimental.proxy_tensor import ProxyTorchDispatchMode

    modes = torch.utils._python_dispatch._get_current_dispatch_mode_stack()
    return any(type(mode) is ProxyTorchDispatchMode for mode in modes)


def forward_hooks_below(module):
    """Whether a submodule of ``module``, at any depth, has a forward hook or pre-hook: a fused kernel
    computing the submodules' work would not run them (torch.nn's encoder layer then keeps its
    submodules' calls too)."""
    for child in module._modules.values():
        if child is not None and (child._forward_hooks or child._forward_pre_hooks or forward_hooks_below(child)):
            return True
    return False
