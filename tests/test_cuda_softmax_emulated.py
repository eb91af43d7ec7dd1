"""The CUDA softmax kernels (csrc/softmax), run on the CPU: tests/rowwise_emulator compiles the real
kernel source for the host, one fiber per GPU thread, with barriers and emulated warp
shuffles (tests/cuda_emulator/cta.h). This test plays the binding (softmax_api.cpp: the mask
broadcast through 0 strides, a float mask of a third dtype converted, the output and gradient dtypes
the kernels write or that are cast) and the autograd of fasttx/_declarations.py (the float mask's
gradient: the backward at scale 1, summed to the mask's shape), and compares the output and every
gradient with the float64 reference (tests/ops/test_softmax.py's judge and tolerances). Every
tensor sits between guards (NaN; False for a bool mask), which must survive (no write past a
tensor) and which poison any result read from past one. It checks indexing, the row layouts (rows
of a few lanes to several warps, chunked long rows, long rows split over a cluster on a device that
launches clusters, the last block past the last row), the alignment dispatch, masks, causal limits and
reductions; not timing, registers or real races."""

import pytest
import torch

from fasttx._extension import cuda_clusters

from .cuda_emulator import DTYPE_CODE, Guarded, call, cluster_device, compile_emulator
from .ops.test_softmax import compare_with_reference

LOG2E = 1.4426950408889634  # csrc/common/constants.h, folded into the scale in double as the binding does
MASK_KIND = {None: 0, torch.bool: 1}  # csrc/common/mask_kind.h; any float dtype: 2


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return compile_emulator(tmp_path_factory, "rowwise_emulator", "softmax.cpp")


class Memory:
    """The tensors of one emulated call, each between guards, checked once the kernels have run."""

    def __init__(self, offset):
        self.offset = offset
        self.tensors = []

    def new(self, shape, dtype, fill=None, offset=None):
        t = Guarded(tuple(shape), dtype, self.offset if offset is None else offset, fill)
        self.tensors.append(t)
        return t.tensor

    def mask(self, mask, layout):
        """mask stored "contiguous", "transposed" (its last two dims swapped in memory: column
        stride > 1) or "padded" (rows 3 elements longer than its last dim: row strides that are no
        multiple of a vector)."""
        if layout == "transposed":
            return self.new(mask.transpose(-1, -2).shape, mask.dtype, mask.transpose(-1, -2)).transpose(-1, -2)
        if layout == "padded":
            return self.new((*mask.shape[:-1], mask.shape[-1] + 3), mask.dtype)[..., :mask.shape[-1]].copy_(mask)
        return self.new(mask.shape, mask.dtype, mask)

    def check_guards(self):
        for i, t in enumerate(self.tensors):
            t.check_guards(f"tensor {i} (shape {tuple(t.tensor.shape)}, {t.tensor.dtype})")


def _fwd(emulator, memory, x, mask, scale, is_causal, out_dtype):
    """softmax_api.cpp's softmax_fwd_cuda on the emulator: x (A, B, L, C) contiguous, mask 4-D and
    broadcastable to it, or None."""
    if mask is not None and mask.dtype not in (torch.bool, x.dtype, torch.float32):
        mask = memory.new(mask.shape, torch.float32, mask)  # mask.to(kFloat): fresh, aligned memory
    mask4 = None if mask is None else mask.expand(x.shape)
    direct = out_dtype in (x.dtype, torch.float32)
    y = memory.new(x.shape, out_dtype if direct else torch.float32)
    float_mask = mask4 is not None and mask4.dtype != torch.bool
    call(emulator.emu_softmax_fwd, dict(
        input_dtype=DTYPE_CODE[x.dtype], output_dtype=DTYPE_CODE[y.dtype],
        mask_kind=2 if float_mask else MASK_KIND[None if mask4 is None else mask4.dtype],
        mask_dtype=DTYPE_CODE[mask4.dtype if float_mask else x.dtype], is_causal=int(is_causal),
        rows=x.numel() // x.shape[3], cols=x.shape[3], heads=x.shape[1], queries=x.shape[2], x=x.data_ptr(),
        mask=0 if mask4 is None else mask4.data_ptr(),
        # A dim of size 1 is only ever indexed at 0: the binding gives it stride 0.
        mask_strides=tuple(mask4.stride(d) if mask4 is not None and x.shape[d] > 1 else 0 for d in range(4)),
        y=y.data_ptr(), scale_log2=scale * LOG2E))
    return y if direct else y.to(out_dtype)


def _bwd(emulator, memory, out, grad_out, scale, is_causal, in_dtype):
    """softmax_api.cpp's softmax_bwd_cuda on the emulator."""
    same = grad_out.dtype == out.dtype
    y = out if same else memory.new(out.shape, torch.float32, out)
    dy = grad_out if same else memory.new(out.shape, torch.float32, grad_out)
    direct = in_dtype in (y.dtype, torch.float32) or y.dtype == torch.float32
    dx = memory.new(out.shape, in_dtype if direct else torch.float32)
    call(emulator.emu_softmax_bwd, dict(
        out_dtype=DTYPE_CODE[y.dtype], grad_dtype=DTYPE_CODE[dx.dtype], is_causal=int(is_causal),
        rows=out.numel() // out.shape[-1], cols=out.shape[-1], queries=out.shape[-2] if out.dim() >= 2 else 1,
        y=y.data_ptr(), dy=dy.data_ptr(), dx=dx.data_ptr(), scale=scale))
    return dx if direct else dx.to(in_dtype)


def check(emulator, x, scale=1.0, mask=None, is_causal=False, out_dtype=None, grad_dtype=None, offset=0,
          mask_layout="contiguous"):
    """Forward, input gradient and float-mask gradient through the emulated kernels, as the binding
    and the autograd call them, against the float64 reference; returns (out, dx)."""
    memory = Memory(offset)
    out_dtype = out_dtype or x.dtype
    x_dev = memory.new(x.shape, x.dtype, x)
    mask_dev = None if mask is None else memory.mask(mask, mask_layout)
    out = _fwd(emulator, memory, x_dev, mask_dev, scale, is_causal, out_dtype)
    dy = torch.randn(x.shape, dtype=grad_dtype or out_dtype)
    # The autograd passes grad_out as it comes (contiguous); its storage is guarded too.
    dy_dev = memory.new(dy.shape, dy.dtype, dy)
    dx = _bwd(emulator, memory, out, dy_dev, scale, is_causal, x.dtype)
    dmask = None
    if mask is not None and mask.is_floating_point():
        dmask = _bwd(emulator, memory, out, dy_dev, 1.0, is_causal, mask.dtype).sum_to_size(mask.shape)
    memory.check_guards()
    compare_with_reference(x, mask, scale, is_causal, dy, out, dx, dmask)
    return out, dx


def logits(*shape, dtype=torch.float32):
    return (torch.randn(shape) * 3).to(dtype)


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# C: one column (a thread per row, 128 rows a block), odd, not a power of two (100: vector-aligned
# in fp32 only), 8 threads a row (256), 32 (1000, 4 rows a block), 512 (9000, a block a row).
@pytest.mark.parametrize("shape", [(2, 3, 5, 1), (1, 2, 70, 7), (2, 3, 5, 100), (2, 1, 9, 256), (1, 1, 7, 1000),
                                   (1, 1, 2, 9000)], ids=lambda s: f"C{s[-1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_row_lengths(emulator, dtype, shape):
    check(emulator, logits(*shape, dtype=dtype), scale=0.7)


@pytest.mark.parametrize("cols,dtype", [(16400, torch.float32), (16392, torch.bfloat16), (33000, torch.float16)])
def test_long_rows_in_chunks(emulator, cols, dtype):
    """Rows longer than a 512-thread chunk of 16384 elements: two chunks (the second just one vector,
    aligned or not), three; the online max and sum across chunks, earlier chunks read again."""
    # A rising row: its max grows chunk by chunk (each chunk rescales the running sum), and its mass
    # sits at the end, where fp16 probabilities are normal numbers, not the subnormals of ~1/C.
    check(emulator, logits(1, 1, 1, cols, dtype=dtype) + torch.linspace(0, 20, cols).to(dtype))


@pytest.fixture
def clusters(emulator):
    """The emulated device launches thread block clusters of up to 16 CTAs, as an sm_90 GPU running the
    library's sm_90 code does; back to none (the sm_80 path) after the test."""
    with cluster_device(emulator) as device:
        yield device


# (A, B, L, C, dtype, mask kind, causal): rows of 2, 3 and 16 chunks, the last one vector (aligned or
# not) or part of one; the masks read from each block's first column on; causal rows whose kept
# columns end in the first chunk (the other CTAs read nothing, add an empty state, write 0).
SPLIT_CASES = [(1, 1, 2, 16400, torch.float32, None, False), (1, 1, 1, 16392, torch.bfloat16, None, False),
               (1, 2, 1, 33000, torch.float16, None, False), (1, 1, 1, 16 * 16384, torch.bfloat16, None, False),
               (2, 1, 1, 32768, torch.bfloat16, "bool key padding", False),
               (1, 1, 3, 33001, torch.float32, "float (L, C) with -inf", False),
               (1, 1, 3, 16400, torch.bfloat16, None, True), (1, 1, 3, 16400, torch.float32, "bool (L, C)", True)]


@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: f"{c[:4]}-{str(c[4])[6:]}-{c[5]}-causal{int(c[6])}")
def test_long_rows_split_over_a_cluster(clusters, case):
    """On a device with clusters, a row longer than a chunk is split over a cluster of
    ceil(C / 16384) CTAs, a chunk each, their (max, sum) and y . dy combined through each other's
    shared memory: forward and both gradients against float64, and the launch was a cluster's."""
    a, b, queries, cols, dtype, kind, is_causal = case
    shape = (a, b, queries, cols)
    mask = None if kind is None else _mask(kind, shape, dtype)
    # A rising row, as in test_long_rows_in_chunks: the max sits in the last chunk, which the first
    # CTAs' sums must be rescaled to.
    x = logits(*shape, dtype=dtype) + torch.linspace(0, 20, cols).to(dtype)
    check(clusters, x, scale=0.9, mask=mask, is_causal=is_causal)
    assert clusters.emu_largest_cluster_launched() == -(-cols // 16384)


@pytest.mark.parametrize("max_cluster,cols", [(16, 16 * 16384 + 8), (8, 8 * 16384 + 8), (1, 16400)],
                         ids=["17 chunks", "9 chunks, clusters of 8", "no clusters"])
def test_rows_no_cluster_holds_walk_their_chunks(emulator, max_cluster, cols):
    """Rows of more chunks than the largest cluster the device launches (or on a device without
    clusters) keep the one-block path, chunk by chunk."""
    with cluster_device(emulator, max_cluster):
        check(emulator, logits(1, 1, 1, cols, dtype=torch.bfloat16) + torch.linspace(0, 20, cols).to(torch.bfloat16))
        assert emulator.emu_largest_cluster_launched() == 1


def test_cluster_switch_off_walks_the_chunks(clusters):
    """FASTTX_CUDA_CLUSTERS=0 (fasttx._extension.cuda_clusters(False), the benchmark's "fasttx cuda
    (no clusters)"): rows a cluster would hold are walked by one block, as before the split."""
    with cuda_clusters(False):
        check(clusters, logits(1, 1, 2, 33000, dtype=torch.bfloat16), scale=0.9)
        assert clusters.emu_largest_cluster_launched() == 1
    check(clusters, logits(1, 1, 2, 33000, dtype=torch.bfloat16), scale=0.9)
    assert clusters.emu_largest_cluster_launched() == 3


def _mask(kind, shape, dtype):
    a, b, l, c = shape
    if kind == "bool key padding":
        mask = torch.rand(a, 1, 1, c) > 0.3
        mask[-1] = False  # a batch element with every key padded: fully masked rows
    elif kind == "bool (L, C)":
        mask = torch.rand(1, 1, l, c) > 0.5
    elif kind == "bool full":
        mask = torch.rand(shape) > 0.5
    elif kind == "float (L, C) with -inf":
        mask = torch.randn(1, 1, l, c)
        mask[torch.rand(1, 1, l, c) > 0.6] = float("-inf")
        mask[..., 2, :] = float("-inf")  # a fully -inf row: 0, not NaN
        mask = mask.to(dtype)
    elif kind == "float32 full":
        mask = torch.randn(shape)
    else:
        assert kind == "float (B, 1, C), another dtype"
        # Converted to fp32 by the binding. (Not float64: its gradient has no kernel dtype.)
        other = {torch.float32: torch.float16, torch.float16: torch.bfloat16, torch.bfloat16: torch.float16}[dtype]
        mask = torch.randn(1, b, 1, c).to(other)
    return mask


MASKS = ["bool key padding", "bool (L, C)", "bool full", "float (L, C) with -inf", "float32 full",
         "float (B, 1, C), another dtype"]


@pytest.mark.parametrize("cols", [37, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_masks(emulator, dtype, kind, cols):
    """Every mask kind and dtype the kernels take, broadcast through 0 strides; C = 64 vector-aligned
    (a mask vector of 4 to 32 bytes), C = 37 element by element."""
    shape = (3, 2, 6, cols)
    out, _ = check(emulator, logits(*shape, dtype=dtype), scale=0.3, mask=_mask(kind, shape, dtype))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("layout", ["transposed", "padded"])
@pytest.mark.parametrize("kind", ["bool full", "float32 full", "float (L, C) with -inf"])
def test_strided_masks(emulator, kind, layout):
    """Masks the kernels cannot read as vectors: a column stride > 1, row strides that are no multiple
    of a vector (x then element by element too), and a mask broadcast along C (stride 0)."""
    shape = (2, 2, 8, 64)
    check(emulator, logits(*shape, dtype=torch.bfloat16), scale=0.5, mask=_mask(kind, shape, torch.bfloat16),
          mask_layout=layout)


def test_mask_broadcast_along_columns(emulator):
    mask = torch.randn(1, 3, 8, 1)
    mask[0, 1, 2] = float("-inf")
    check(emulator, logits(2, 3, 8, 48), scale=0.5, mask=mask)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("queries,keys", [(5, 9), (9, 5), (16, 16), (40, 37)], ids=["L<C", "L>C", "L=C", "L>C odd"])
def test_causal(emulator, dtype, queries, keys):
    out, dx = check(emulator, logits(2, 3, queries, keys, dtype=dtype), scale=0.5, is_causal=True)
    above = torch.arange(keys)[None, :] > torch.arange(queries)[:, None]
    assert (out[..., above] == 0).all() and (dx[..., above] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_causal_long_rows(emulator, dtype):
    """Rows of two chunks whose kept columns end in the first: the second is never read, written 0."""
    queries, keys = 3, 16400
    out, _ = check(emulator, logits(1, 1, queries, keys, dtype=dtype), scale=0.5, is_causal=True)
    assert (out[..., queries:] == 0).all()


# (A, B, L, C, dtype, out dtype): L < C, L > C with C odd (element by element), L = C aligned (the
# vector across the limit read whole), 16-bit y with fp32 dx and fp32 y with 16-bit dx, one row,
# rows of two chunks whose second is past every limit (never read).
CAUSAL_BWD_CASES = [(2, 3, 5, 9, torch.float32, None), (1, 2, 40, 37, torch.bfloat16, None),
                    (1, 2, 64, 64, torch.bfloat16, None), (2, 1, 24, 24, torch.float16, None),
                    (1, 1, 16, 48, torch.bfloat16, torch.float32), (1, 1, 1, 40, torch.float32, None),
                    (1, 1, 3, 16400, torch.float32, None)]


@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("case", CAUSAL_BWD_CASES, ids=lambda c: f"{c[:4]}-{str(c[4])[6:]}-{str(c[5])[6:]}")
def test_causal_backward_reads_nothing_past_the_limit(emulator, case, offset):
    """The causal backward's dx is exactly 0 past the limit, and y and dy there do not reach it: NaN in
    y, NaN and huge values in dy past the limit (where the forward wrote y = 0) give bit for bit the
    dx of the clean inputs. A kernel that read them into its dot product or its dx would not."""
    a, b, queries, keys, dtype, out_dtype = case
    memory = Memory(offset)
    x = logits(a, b, queries, keys, dtype=dtype)
    out = _fwd(emulator, memory, memory.new(x.shape, x.dtype, x), None, 0.5, True, out_dtype or dtype)
    dy = memory.new(x.shape, out.dtype, torch.randn(x.shape))
    clean_out, clean_dy = out.clone(), dy.clone()
    clean = _bwd(emulator, memory, out, dy, 0.5, True, dtype)
    above = (torch.arange(keys)[None, :] > torch.arange(queries)[:, None]).expand(x.shape)
    out[above] = float("nan")
    huge = torch.finfo(out.dtype).max
    dy[above] = torch.where(torch.rand(int(above.sum())) > 0.5, float("nan"), huge).to(dy.dtype)
    poisoned = _bwd(emulator, memory, out, dy, 0.5, True, dtype)
    memory.check_guards()
    assert (poisoned[above] == 0).all() and not poisoned[above].signbit().any()
    assert torch.equal(poisoned, clean)
    compare_with_reference(x, None, 0.5, True, clean_dy, clean_out, clean, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("cols", [16, 37], ids=lambda c: f"C{c}")
def test_causal_with_masks_fully_masking_rows(emulator, dtype, cols):
    """Causal and key padding together: the first query rows of batch 0 keep nothing (output and
    gradient 0); a float mask with causal."""
    mask = torch.ones(2, 1, 1, cols, dtype=torch.bool)
    mask[0, ..., :3] = False
    x = logits(2, 2, 6, cols, dtype=dtype)
    out, dx = check(emulator, x, mask=mask, is_causal=True)
    assert (out[0, :, :3] == 0).all() and (dx[0, :, :3] == 0).all()
    check(emulator, x, scale=0.9, mask=torch.randn(1, 2, 6, cols).to(dtype), is_causal=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cols", [37, 64], ids=lambda c: f"C{c}")
def test_masked_out_logits_are_ignored_even_if_not_finite(emulator, dtype, cols):
    """inf and NaN logits under masked-out entries (past the causal limit: read with the vector
    that crosses it; under a bool mask's False) do not reach the output."""
    queries = 20
    x = logits(2, 2, queries, cols, dtype=dtype)
    mask = torch.rand(2, 1, 1, cols) > 0.3
    above = (torch.arange(cols)[None, :] > torch.arange(queries)[:, None]).expand(x.shape)
    x[above] = torch.where(torch.rand(int(above.sum())) > 0.5, float("inf"), float("nan")).to(dtype)
    x[(~mask).expand(x.shape)] = float("nan")
    out, _ = check(emulator, x, scale=0.5, mask=mask, is_causal=True)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_huge_logits_do_not_overflow(emulator, dtype):
    out, _ = check(emulator, (torch.randn(1, 1, 4, 300) * 1e4).to(dtype))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype,out_dtype", [
    (torch.bfloat16, torch.float32), (torch.float16, torch.float32),  # written by the kernel in fp32
    (torch.float32, torch.bfloat16), (torch.bfloat16, torch.float16),  # the fp32 result cast
], ids=str)
def test_output_dtypes(emulator, dtype, out_dtype):
    """The output dtype (autocast's fp32, or asked for) and, back, the input's gradient in the input's
    dtype from an output of another (fp32 y: dx of any dtype; 16-bit y: fp32 dx cast)."""
    check(emulator, logits(2, 1, 5, 64, dtype=dtype), scale=0.8, out_dtype=out_dtype, mask=torch.randn(1, 1, 5, 64))


@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.float16], ids=str)
def test_grad_out_of_another_dtype(emulator, grad_dtype):
    """grad_out in a dtype other than the output's: y and dy both read as fp32."""
    check(emulator, logits(1, 2, 5, 40, dtype=torch.bfloat16), scale=0.8, grad_dtype=grad_dtype)


@pytest.mark.parametrize("kind", [None, "bool (L, C)", "float (L, C) with -inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_misaligned_storage(emulator, dtype, kind):
    """Every tensor one element past a 16-byte boundary, C a multiple of every vector width: the
    element-wise paths chosen by address alone."""
    shape = (2, 2, 5, 64)
    check(emulator, logits(*shape, dtype=dtype), scale=0.5, is_causal=True, offset=1,
          mask=None if kind is None else _mask(kind, shape, dtype))


def test_params_are_set_by_field_name(emulator):
    """A missing or unknown field fails loudly, launching nothing."""
    fields = dict(out_dtype=0, grad_dtype=0, is_causal=0, rows=1, cols=4, queries=1, y=0, dy=0, dx=0, scale=1.0)
    for message, given in {"field 'scale' not given": {k: v for k, v in fields.items() if k != "scale"},
                           "unknown field 'x'": {**fields, "x": 0}}.items():
        with pytest.raises(ValueError, match=message):
            call(emulator.emu_softmax_bwd, given)
