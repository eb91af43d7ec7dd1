// The sm_90a attention forward (csrc/attention/sm90) compiled for the host: attention/primitives.cuh
// and attention/sm90/primitives_sm90.cuh of this directory replace the real ones, every other line is
// the real source, tensor maps and launch included. Called from tests/test_cuda_attention_sm90_emulated.py,
// which also checks the emulated TMA and wgmma layouts through the layout entry points below.

#include "attention/primitives.cuh"
#include "attention/sm90/primitives_sm90.cuh"

#include "attention/sm90/attention_fwd_sm90.cu"
#include "attention_fields.h"
#include "attention_sm90_fwd_kernels.inc"  // every generated attention_fwd_sm90_hdim*.cu

using namespace fasttx;

// fields, ranges and the result as emu_attention's (emulator.cpp, tests/cuda_emulator/params_by_name.h), for the forward;
// *launched: the query rows of the sm_90a kernel's CTA (its tile: 64 a consumer warpgroup of the launch's
// threads but the producer's 128) if it ran, 0 if not (attention_fwd_launch would then launch the sm_80 one);
// *shared: the dynamic shared memory it launched with (which the tile's keys a block and stages set).
extern "C" const char* emu_attention_fwd_sm90(const char* const* fields, int n_fields, const int64_t* ranges,
                                              int n_ranges, int* launched, int* shared) {
  *launched = 0;
  *shared = 0;
  return emu::error_or_null([&] {
    const AttentionParams p = emu::params(emu::fwd_fields<AttentionParams>(), fields, n_fields);
    emu::set_ranges(ranges, n_ranges);
    attn::emulate_sm90 = true;
    const bool ran = attention_fwd_sm90_supports(p) && attention_fwd_sm90(p, nullptr);
    attn::emulate_sm90 = false;
    if (ran) {
      const int rows = 64 * (attn::launched_threads / 128 - 1);
      if (static_cast<int64_t>(attn::launched_grid.x) != (p.queries + rows - 1) / rows) {
        throw std::runtime_error("the grid's CTAs do not cover the queries with the tile's rows");
      }
      *launched = rows;
      *shared = attn::smem_bytes;
    }
    attn::mbar_check_quiescent();
    attn::wgmma_check_quiescent();
    attn::named_barrier_check_quiescent();
    attn::tma_store_check_quiescent();
  });
}

// ---- layout entry points: the emulated TMA and wgmma against the test's own statement of the layout

// The descriptor the kernel builds (smem_layout_sm90.h).
extern "C" uint64_t emu_smem_desc_128b(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return attn::smem_desc_128b(addr, lbo, sbo);
}

// One TMA box of a (dims[3], dims[2], dims[1], dims[0]) 16-bit tensor at `base` (byte strides of dims
// 1..3) at coordinates c, landed at shared address 1024; `out` receives the 2 box0 box1 shared bytes.
extern "C" void emu_tma_box(const void* base, const int64_t* dims, const int64_t* strides, int box0, int box1,
                            const int* c, unsigned char* out) {
  using namespace attn;
  CUtensorMap map;
  const int64_t d[4] = {dims[0], dims[1], dims[2], dims[3]};
  const int64_t s[3] = {strides[0], strides[1], strides[2]};
  if (!encode_tma_4d(&map, base, true, d, s, box0, box1)) fail("tensor map refused", base);
  global_ranges = {{static_cast<const char*>(base), static_cast<size_t>(strides[2] * dims[3])}};
  smem_bytes = kMaxSmem;
  std::memset(smem, 0xff, kMaxSmem);
  TmaCopy cp{};
  std::memcpy(&cp.map, &map, sizeof(TmaMap));
  cp.dst = 1024;
  for (int i = 0; i < 4; ++i) cp.c[i] = c[i];
  tma_land(cp);
  std::memcpy(out, smem_at(1024, cp.bytes(), 16), cp.bytes());
}

// D (64 x 128, fp32, row-major) = A B through the emulated wgmma's operand decoding, with the shared
// memory image `image` at shared address 1024: A by desc_a (K-major), B by desc_b (N-major if trans_b).
extern "C" void emu_wgmma_ss(const unsigned char* image, int bytes, uint64_t desc_a, uint64_t desc_b, int trans_b,
                             float* out) {
  using namespace attn;
  smem_bytes = kMaxSmem;
  std::memcpy(smem_at(1024, bytes, 16), image, bytes);
  WgmmaOp op{true, false, trans_b != 0, false, desc_a, desc_b, {}, {}};
  for (int m = 0; m < 64; ++m) {
    for (int n = 0; n < 128; ++n) {
      double sum = 0;
      for (int k = 0; k < 16; ++k) sum += double{operand(op, true, m, k)} * operand(op, false, n, k);
      out[m * 128 + n] = static_cast<float>(sum);
    }
  }
}

// ---- named barrier probe: the model's checks on a schedule of the forward's kind ---------------------

// The consumers' turns (Sm90Turns, turns_sm90.cuh) of `consumers` warpgroups (2: the forward's and the dQ
// kernel's CTAs, 3: the forward's at E = 64; 1: the dQ kernel's at E = 256, where they are no-ops), on the
// forward's barriers, each warpgroup through a section `rounds` times; thread 0 of the section's warpgroup
// appends it to `order` (consumers x rounds entries).
struct TurnsProbe {
  int rounds;
  int* order;
  int* sections;
};
template <int kConsumers>
void turns_probe(const TurnsProbe& p) {
  const int wg = threadIdx.x / 128;
  const attn::Sm90Turns<kConsumers, attn::Sm90FwdCta<2>::kTurnBarrier> turns{wg, p.rounds};
  for (int round = 0; round < p.rounds; ++round) {
    turns.begin(round);
    if (threadIdx.x % 128 == 0) p.order[(*p.sections)++] = wg;
    turns.pass(round);
  }
}

extern "C" const char* emu_turns_probe(int consumers, int rounds, int* order) {
  using namespace attn;
  return emu::error_or_null([&] {
    int sections = 0;
    const TurnsProbe params{rounds, order, &sections};
    if (consumers == 1) {
      launch(turns_probe<1>, dim3(1, 1, 1), 128, 0, nullptr, params);
    } else if (consumers == 2) {
      launch(turns_probe<2>, dim3(1, 1, 1), 2 * 128, 0, nullptr, params);
    } else if (consumers == 3) {
      launch(turns_probe<3>, dim3(1, 1, 1), 3 * 128, 0, nullptr, params);
    } else {
      throw std::runtime_error("consumers must be 1, 2 or 3");
    }
    named_barrier_check_quiescent();
  });
}

struct ProbeParams {
  int defect, rounds;
  int* order;
  int* sections;
};

// Two warpgroups take turns through a section `rounds` times each, warpgroup 0 first: each waits for
// its turn on its own barrier (bar.sync, id 1 + wg) and passes it on the other's (bar.arrive), 256
// threads a phase, the turn skipping the first wait and the last pass as the forward's consumers do.
// Thread 0 of the section's warpgroup appends it to `order`. defect: 0 none; 1 warpgroup 1 passes with
// a count of 128; 2 warpgroup 0 skips its second pass; 3 warpgroup 1 passes after its last section too;
// 4 barrier id 0.
void named_barrier_probe(const ProbeParams& p) {
  using namespace attn;
  const int wg = threadIdx.x / 128;
  const int base_id = p.defect == 4 ? 0 : 1;
  for (int round = 0; round < p.rounds; ++round) {
    const int section = 2 * round + wg;
    if (section > 0) named_barrier_sync(base_id + wg, 256);
    if (threadIdx.x % 128 == 0) p.order[(*p.sections)++] = wg;
    const bool last = section == 2 * p.rounds - 1;
    const bool skip = (p.defect == 2 && wg == 0 && round == 1) || (last && p.defect != 3);
    if (!skip) named_barrier_arrive(base_id + 1 - wg, p.defect == 1 && wg == 1 ? 128 : 256);
  }
}

// The sections' order (2 rounds entries) in `order`; aborts with the model's message on a defect.
extern "C" void emu_named_barrier_probe(int defect, int rounds, int* order) {
  using namespace attn;
  int sections = 0;
  launch(named_barrier_probe, dim3(1, 1, 1), 256, 0, nullptr, ProbeParams{defect, rounds, order, &sections});
  named_barrier_check_quiescent();
}
