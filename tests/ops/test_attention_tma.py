"""The Triton attention's TMA path (attention_tma: descriptors of q, k, v, o, dO, dQ, dK, dV on sm_90):
forced on, it gives the pointer path's results, forward and every gradient against float64; and the
launchers choose the pointer path wherever TMA cannot address a tensor.

Without a GPU the interpreter runs the descriptors (Triton 3.6 and 3.8 both interpret host-side
TensorDescriptors: a descriptor load becomes a load masked at the tensor's bounds, per dimension, as TMA
zero-fills), so FASTTX_TRITON_TMA=1 (the module's _TMA) puts the same kernels' TMA branches under test
here; on an sm_90 GPU the whole suite runs them by default. What the interpreter cannot show, the copies
TMA compiles to, is checked compiled (tests/ops/compile_attention.py, benchmarks/kernel_report.py)."""

import pytest
import torch

import fasttx
from fasttx.triton_kernels import attention_common, attention_tma

from ..conftest import DEVICE, runnable_backends
from .test_attention import ROUNDING, attention_inputs, check, make_mask, transposed

pytestmark = pytest.mark.skipif("triton" not in runnable_backends(op="attention"), reason="Triton cannot run here")
# The dtypes of the TMA path (attention_tma.TMA_DTYPES); bf16 dots are wrong in the Triton interpreter:
# bf16 is tested on the GPU only (test_attention.py).
DTYPES = [torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


@pytest.fixture
def paths(monkeypatch):
    """TMA forced on wherever the strides allow; returns the paths the launches took (use_tma's results)."""
    monkeypatch.setattr(attention_tma, "_TMA", "1")
    taken = []
    real = attention_tma.use_tma

    def spy(*tensors):
        taken.append("tma" if real(*tensors) else "pointers")
        return taken[-1] == "tma"

    monkeypatch.setattr(attention_common, "use_tma", spy)
    return taken


CASES = {  # (B, H, Hkv, L, S, E, Ev), keyword arguments
    "L=S=1": ((2, 2, 2, 1, 1, 16, 16), {}),
    "L=1,S=7": ((2, 2, 2, 1, 7, 32, 32), {}),
    "33x100": ((1, 2, 2, 33, 100, 16, 16), {}),  # L, S not multiples of the interpreter's 16-row blocks
    "100x33,causal": ((1, 2, 2, 100, 33, 16, 16), {"is_causal": True}),
    "gqa,causal": ((2, 4, 1, 17, 29, 32, 32), {"enable_gqa": True, "is_causal": True}),
    "head dims 24, 40": ((1, 2, 2, 19, 23, 24, 40), {}),  # tiles of 32 and 64 columns, zero-filled past E
    "bool_key_padding": ((2, 3, 3, 12, 45, 16, 16), {"attn_mask": "bool_key_padding"}),  # fully masked rows
    "float_full_with_-inf": ((2, 3, 3, 12, 45, 16, 16), {"attn_mask": "float_full_with_-inf"}),
    "bool_2d": ((2, 3, 3, 12, 45, 16, 16), {"attn_mask": "bool_2d"}),
    "negative scale": ((2, 2, 2, 12, 21, 16, 16), {"scale": -0.3, "is_causal": True}),
}


def inputs(case, dtype):
    (batch, heads, kv_heads, queries, keys, head_dim, value_dim), kw = CASES[case]
    q, k, v = attention_inputs(batch, heads, kv_heads, queries, keys, head_dim, value_dim, dtype=dtype)
    if isinstance(kw.get("attn_mask"), str):
        kw = dict(kw, attn_mask=make_mask(kw["attn_mask"], batch, heads, queries, keys))
    return q, k, v, kw


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "atomic dq"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tma_path_against_float64(paths, dtype, case, deterministic):
    q, k, v, kw = inputs(case, dtype)
    check(q, k, v, "triton", deterministic=deterministic, **kw)
    assert paths == ["tma", "tma"]  # forward, backward


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tma_path_reads_transposed_views(paths, dtype):
    """(B, L, H, E) storage viewed as (B, H, L, E), GQA: 4-D descriptors over the views' own strides, with
    a dO of the same layout."""
    q, k, v = (transposed(2, h, n, 32, dtype) for h, n in ((4, 11), (2, 13), (2, 13)))
    dy = transposed(2, 4, 11, 32, dtype)
    assert not q.is_contiguous() and not dy.is_contiguous()
    check(q, k, v, "triton", dy=dy, enable_gqa=True)
    assert paths == ["tma", "tma"]


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "atomic dq"])
def test_tma_path_dropout(paths, deterministic):
    """Dropout draws by global row and key, whatever reads the tiles: the keep mask of the pointer path."""
    from fasttx.triton_kernels.attention import dropout_keep_mask

    q, k, v = attention_inputs(2, 2, 2, 40, 50, 16, dtype=torch.float16)
    dy = torch.randn(2, 2, 40, 16, device=DEVICE).to(torch.float16)
    torch.manual_seed(7)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64, device=DEVICE))  # what the op draws after this seed
    keep = dropout_keep_mask(seed, 2, 2, 40, 50, 0.3, q.device)
    torch.manual_seed(7)
    check(q, k, v, "triton", dy=dy, dropout_p=0.3, dropout_mask=keep, deterministic=deterministic)
    assert paths == ["tma", "tma"]


@pytest.mark.parametrize("case", ["gqa,causal", "bool_key_padding", "33x100"])
def test_tma_and_pointer_paths_agree(monkeypatch, case):
    """The two paths on one input: the same tiles and the same math, so within rounding of each other
    (fp32 sums in the same order; compiled, the dots may round differently)."""
    q, k, v, kw = inputs(case, torch.float16)
    dy = torch.randn(*q.shape[:-1], v.shape[-1], device=DEVICE)
    results = []
    for mode in ("1", "0"):
        monkeypatch.setattr(attention_tma, "_TMA", mode)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fasttx.scaled_dot_product_attention(*leaves, **kw, backend="triton")
        results.append([out, *torch.autograd.grad(out, leaves, dy)])
    for name, tma, pointers in zip(("output", "dq", "dk", "dv"), *results):
        torch.testing.assert_close(tma, pointers, rtol=ROUNDING[torch.float16], atol=ROUNDING[torch.float16],
                                   msg=name)


def storage(shape, dtype, offset=0):
    """A tensor of ``shape`` starting ``offset`` elements into a 16-byte aligned buffer."""
    numel = torch.Size(shape).numel()
    return torch.randn(numel + offset, device=DEVICE).to(dtype)[offset:].view(shape)


SHAPE = (2, 2, 9, 16)  # (B, H, L, E) of q, k, v, dy unless a case says otherwise
# Inputs TMA cannot address, each breaking one rule: the tensors that differ from aligned, contiguous ones.
BREAKS = {
    "fp32 (spills on the TMA path)": lambda: {n: storage(SHAPE, torch.float32) for n in ("q", "k", "v", "dy")},
    "q base not 16-byte aligned": lambda: dict(q=storage(SHAPE, torch.float16, offset=1)),
    "head dim 6: rows of 12 bytes": lambda: {n: storage((2, 2, 9, 6), torch.float16) for n in ("q", "k", "v", "dy")},
    "v rows of 40 bytes": lambda: dict(v=storage((2, 2, 9, 20), torch.float16)[..., :16]),
    "k broadcast over the batch (stride 0)": lambda: dict(k=storage((1, 2, 9, 16), torch.float16).expand(SHAPE)),
    "dy broadcast over the batch (stride 0)": lambda: dict(dy=storage((1, 2, 9, 16), torch.float16).expand(SHAPE)),
}


@pytest.mark.parametrize("case", BREAKS)
def test_pointer_path_where_tma_cannot_address_a_tensor(paths, case):
    """One tensor TMA cannot address sends the whole launch (forward: q, k, v, o; backward: those, dO and
    the gradients) to the pointer path, which computes it right."""
    tensors = {name: storage(SHAPE, torch.float16) for name in ("q", "k", "v", "dy")}
    tensors.update(BREAKS[case]())
    check(tensors["q"], tensors["k"], tensors["v"], "triton", dy=tensors["dy"])
    assert paths == (["tma", "pointers"] if case.startswith("dy") else ["pointers", "pointers"]), paths


def test_tma_rules():
    aligned = storage((2, 3, 5, 16), torch.float16)
    assert attention_tma.tma_fits(aligned)
    assert not attention_tma.tma_fits(storage((2, 3, 5, 16), torch.float16, offset=4))  # 8 bytes in
    assert attention_tma.tma_fits(storage((2, 3, 5, 16), torch.float16, offset=8))  # 16 bytes in
    # A dim of size 1 may have any stride: it is never stepped along, and the descriptor gets 16 bytes.
    odd = torch.randn(2, 1, 5, 16, device=DEVICE).to(torch.float16).as_strided((2, 1, 5, 16), (80, 3, 16, 1))
    assert attention_tma.tma_fits(odd)
    assert attention_tma.descriptor_strides(odd) == [80, 8, 16, 1]
    assert not attention_tma.tma_fits(torch.empty(2, 0, 5, 16, device=DEVICE))  # empty: no descriptor
    assert not attention_tma.tma_fits(aligned.transpose(2, 3))  # last stride not 1
    assert not attention_tma.tma_fits(storage((1, 1, 1, 20), torch.float16))  # a row of 40 bytes


def test_auto_uses_tma_on_hopper_only(monkeypatch):
    """The default picks TMA on sm_90 GPUs alone; "0" never, whatever the device."""
    q = storage((2, 3, 5, 16), torch.float16)
    monkeypatch.setattr(attention_tma, "_TMA", "auto")
    hopper = DEVICE == "cuda" and torch.cuda.get_device_capability()[0] == 9
    assert attention_tma.use_tma(q) == hopper
    monkeypatch.setattr(attention_tma, "_TMA", "0")
    assert not attention_tma.use_tma(q)


def test_bench_pointer_path_provider(paths):
    """The bench's "fasttx triton (pointers)" runs forward and backward on the pointer path inside its
    context (benchmarks.common.around, as the bench checks and times it), computes what the TMA path
    does, and leaves the mode as it found it."""
    from fasttx.benchmarks import common
    from fasttx.benchmarks.attention import _switched, _triton_pointer_path

    q, k, v = (t.requires_grad_() for t in attention_inputs(1, 2, 2, 20, 20, 16, dtype=torch.float16))
    dy = torch.randn(1, 2, 20, 16, device=DEVICE).to(torch.float16)
    sdpa = lambda *t: fasttx.scaled_dot_product_attention(*t, is_causal=True, backend="triton")  # noqa: E731
    pointers = _switched(sdpa, _triton_pointer_path)
    with common.around(pointers):
        out = pointers(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), dy)
    assert attention_tma._TMA == "1" and paths == ["pointers", "pointers"]
    expected = sdpa(q, k, v)
    for got, want in zip((out, *grads), (expected, *torch.autograd.grad(expected, (q, k, v), dy))):
        torch.testing.assert_close(got, want, rtol=ROUNDING[torch.float16], atol=ROUNDING[torch.float16])
    assert paths == ["pointers", "pointers", "tma", "tma"]


def test_a_tma_mode_other_than_auto_0_1_is_refused(monkeypatch):
    """FASTTX_TRITON_TMA=yes (or any other spelling) is an error naming the variable, not a silent auto."""
    q = storage((2, 3, 5, 16), torch.float16)
    monkeypatch.setattr(attention_tma, "_TMA", "yes")
    with pytest.raises(ValueError, match="FASTTX_TRITON_TMA must be one of auto, 0, 1, got 'yes'"):
        attention_tma.use_tma(q)
    with pytest.raises(ValueError, match="FASTTX_TRITON_TMA"):
        with attention_tma.tma_mode("off"):
            pass
    assert attention_tma._TMA == "yes"  # a refused mode changes nothing
