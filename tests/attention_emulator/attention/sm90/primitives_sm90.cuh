#pragma once
// Host emulation of csrc/attention/sm90/primitives_sm90.cuh (found first on the emulator's include
// path). It models what the kernel relies on, from the PTX ISA, and fails loudly where the kernel
// leaves what it models:
// - Shared addresses: the dynamic shared memory starts at shared address kDynamicSmemAddress (16),
//   not on a 1024-byte boundary, so a kernel that does not align its swizzled tiles reads garbage.
// - TMA (cp.async.bulk.tensor.4d, 128B swizzle): issuing a box fills its destination with NaN; the
//   box lands, with out-of-bounds elements zero, only when a thread waiting on its mbarrier finds
//   every arrival in: a consumer that reads a tile without waiting reads NaN, one that releases a
//   stage before its last wgmma on it retires usually does (when the producer refills it first).
//   The box's bytes count against the barrier's expected transaction bytes; a mismatch fails.
// - mbarriers: arrival count, transaction bytes, phase; a wait passes while the current phase's
//   parity differs from the one asked (as try_wait.parity); a wait that no thread can end fails at
//   once (cta.h's wait_until: wrong parity, missing arrival, bytes never delivered).
// - wgmma (m64nNk16, N = 176, 128, 96, 80, 64, fp32 accumulate): warpgroup-collective, descriptors decoded as the PTX ISA's
//   canonical 128B-swizzled layouts (K-major and MN-major, B and, with the transpose bit, A from
//   shared memory; written here independently of smem_layout_sm90.h), operands read and D written
//   only at the wgmma_wait that retires the group;
//   a wgmma without a wgmma_fence since the thread's last wait fails; descriptors must agree across
//   the warpgroup.
// - Named barriers (bar.sync / bar.arrive): ids, thread counts and phases, below.
// - TMA stores: shared memory read at the wait that covers the store, in-bounds elements written, below.
// - Vector reductions (red.global.add.v2.f32): two fp32 adds, below.
// What it cannot prove: that the hardware's layout is this reading of the ISA (only a GPU can), timing,
// async-proxy ordering beyond the above, register allocation under setmaxnreg (a no-op here).

#include <cuda.h>

#include "attention/primitives.cuh"
#include "attention/sm90/smem_layout_sm90.h"

namespace fasttx {
namespace attn {

constexpr uint32_t kDynamicSmemAddress = 16;

inline uint32_t smem_addr(const void* p) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < smem || c > smem + kMaxSmem) fail("not a shared-memory pointer", p);
  return kDynamicSmemAddress + static_cast<uint32_t>(c - smem);
}

inline unsigned char* smem_at(uint32_t addr, size_t bytes, size_t align) {
  if (addr < kDynamicSmemAddress) fail("shared address below the dynamic shared memory", nullptr);
  unsigned char* p = smem + (addr - kDynamicSmemAddress);
  check_smem(p, bytes, align);
  return p;
}

// 128B swizzle: address bits [7, 10) XOR-ed into bits [4, 7).
inline uint32_t swizzle_128b(uint32_t addr) { return addr ^ (((addr >> 7) & 7) << 4); }

// ---- TMA ------------------------------------------------------------------------------------

struct TmaMap {
  uint64_t magic;
  const char* base;
  int64_t dims[4];
  int64_t strides[4];  // bytes; strides[0] = 2
  int box[2];
};
constexpr uint64_t kTmaMagic = 0x544d41u;
static_assert(sizeof(TmaMap) <= sizeof(CUtensorMap));

inline bool encode_tma_4d(CUtensorMap* map, const void* base, bool, const int64_t (&dims)[4],
                          const int64_t (&strides_bytes)[3], int box0, int box1) {
  // The driver's rules (cuTensorMapEncodeTiled) on what the call's tensors decide: refused, as the
  // driver would (the caller then keeps the sm_80 kernel). A zero stride is refused here; whether the
  // driver takes one is not known, so the emulator does not depend on it.
  if (reinterpret_cast<uintptr_t>(base) % 16 != 0) return false;
  for (int d = 0; d < 3; ++d) {
    if (strides_bytes[d] % 16 != 0 || strides_bytes[d] <= 0 || strides_bytes[d] >= (int64_t{1} << 40)) return false;
  }
  for (int d = 0; d < 4; ++d) {
    if (dims[d] <= 0 || dims[d] > (int64_t{1} << 32)) return false;
  }
  // What the kernel's constants decide: a mistake, not a refusal.
  if (box0 * 2 != kSwizzleBytes) fail("128B swizzle box rows other than 128 bytes are not modelled", base);
  if (box1 <= 0 || box1 > 256) fail("tensor map box dim outside [1, 256]", base);
  TmaMap m{kTmaMagic, static_cast<const char*>(base), {dims[0], dims[1], dims[2], dims[3]},
           {2, strides_bytes[0], strides_bytes[1], strides_bytes[2]}, {box0, box1}};
  std::memset(map, 0, sizeof(CUtensorMap));
  std::memcpy(map, &m, sizeof(m));
  return true;
}

// The emulated device is sm_90a when the caller says so (emu_attention_fwd_sm90), so that the sm_80
// emulation keeps running the sm_80 kernels.
inline bool emulate_sm90 = false;
template <typename Kernel>
bool runs_sm90a(Kernel) {
  return emulate_sm90;
}

struct TmaCopy {
  TmaMap map;
  uint32_t dst;
  int c[4];
  int64_t bytes() const { return int64_t{2} * map.box[0] * map.box[1]; }
};

// The box lands: element (i0, i1) of the box at dst + 2 (i1 box0 + i0), 128B-swizzled; out of bounds -> 0.
inline void tma_land(const TmaCopy& cp) {
  const TmaMap& m = cp.map;
  for (int i1 = 0; i1 < m.box[1]; ++i1) {
    for (int i0 = 0; i0 < m.box[0]; ++i0) {
      const int64_t at[4] = {int64_t{cp.c[0]} + i0, int64_t{cp.c[1]} + i1, cp.c[2], cp.c[3]};
      uint16_t v = 0;
      bool in = true;
      int64_t off = 0;
      for (int d = 0; d < 4; ++d) {
        in = in && at[d] >= 0 && at[d] < m.dims[d];
        off += at[d] * m.strides[d];
      }
      if (in) {
        check_global(m.base + off, 2);
        std::memcpy(&v, m.base + off, 2);
      }
      const uint32_t addr = swizzle_128b(cp.dst + 2 * (i1 * m.box[0] + i0));
      std::memcpy(smem_at(addr, 2, 2), &v, 2);
    }
  }
}

// ---- mbarriers -------------------------------------------------------------------------------

struct Mbar {
  int count, pending;  // arrivals per phase, still missing in this one
  int64_t tx;          // transaction bytes expected and not yet landed
  uint64_t phase;
  std::vector<TmaCopy> copies;  // issued, landing when the phase can complete
};
inline std::deque<Mbar> mbars;  // an initialized barrier's 8 shared bytes hold its index here

inline Mbar& mbar_state(const uint64_t* bar) {
  check_smem(bar, 8, 8);
  if (*bar >= mbars.size()) fail("mbarrier used before mbar_init", bar);
  return mbars[*bar];
}

inline void mbar_init(uint64_t* bar, int count) {
  check_smem(bar, 8, 8);
  mbars.push_back({count, count, 0, 0, {}});
  *bar = mbars.size() - 1;
}

inline void mbar_init_fence() {}

inline void mbar_arrive(uint64_t* bar) {
  Mbar& s = mbar_state(bar);
  if (s.pending == 0) fail("mbarrier arrival beyond its count in one phase", bar);
  --s.pending;
  note_progress();
}

inline void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  mbar_state(bar).tx += bytes;
  mbar_arrive(bar);
}

// A hint to the descriptor cache: nothing to model.
inline void tma_prefetch_descriptor(const CUtensorMap*) {}

inline void tma_load_4d(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1, int c2, int c3) {
  TmaMap m;
  std::memcpy(&m, map, sizeof(m));
  if (m.magic != kTmaMagic) fail("TMA through a tensor map that encode_tma_4d did not write", map);
  const uint32_t addr = smem_addr(dst);
  if (addr % kSwizzleAtomBytes != 0) fail("128B-swizzled TMA destination not 1024-byte aligned", dst);
  TmaCopy cp{m, addr, {c0, c1, c2, c3}};
  // Until it lands, the destination holds nothing usable: NaN, which a consumer still reading the
  // stage (released too early) then multiplies.
  std::memset(smem_at(addr, cp.bytes(), 16), 0xff, cp.bytes());
  mbar_state(bar).copies.push_back(cp);
  note_progress();
}

// With every arrival in, the issued boxes land; the phase completes when their bytes match the expected.
inline bool mbar_try_complete(uint64_t* bar) {
  Mbar& s = mbar_state(bar);
  if (s.pending != 0) return false;
  for (const TmaCopy& cp : s.copies) {
    tma_land(cp);
    s.tx -= cp.bytes();
  }
  s.copies.clear();
  if (s.tx < 0) fail("more TMA bytes landed on an mbarrier than expect_tx announced", bar);
  if (s.tx > 0) return false;
  ++s.phase;
  s.pending = s.count;
  note_progress();
  return true;
}

inline void mbar_wait(uint64_t* bar, uint32_t parity) {
  wait_until([&] { return (mbar_state(bar).phase & 1) != parity || mbar_try_complete(bar); },
             "mbarrier wait never completes (wrong parity, missing arrival, or expected bytes never landing)", bar);
}

// After a launch: every barrier's issued copies have landed and no phase is half-arrived (a phase
// with every arrival in that nobody waited for, as the last release of a ring stage, is fine).
inline void mbar_check_quiescent() {
  for (const Mbar& s : mbars) {
    if (!s.copies.empty() || s.tx != 0) fail("a CTA exited with TMA copies never awaited", nullptr);
    if (s.pending != 0 && s.pending != s.count) fail("a CTA exited with an mbarrier phase partly arrived", nullptr);
  }
  mbars.clear();
}

// ---- registers ---------------------------------------------------------------------------------

template <int kRegs>
inline void warpgroup_reg_dealloc() {
  static_assert(kRegs % 8 == 0 && kRegs >= 24 && kRegs <= 256, "setmaxnreg takes multiples of 8 in [24, 256]");
}
template <int kRegs>
inline void warpgroup_reg_alloc() {
  static_assert(kRegs % 8 == 0 && kRegs >= 24 && kRegs <= 256, "setmaxnreg takes multiples of 8 in [24, 256]");
}

// ---- wgmma -----------------------------------------------------------------------------------

// Shared address of element (mn, k) of a 16-bit operand (k < 16) under a 128B-swizzled descriptor,
// K-major or MN-major, per the PTX ISA's canonical layouts.
inline uint32_t desc_element(uint64_t desc, int mn, int k, bool mn_major) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3fff) << 4;
  const uint32_t lbo = static_cast<uint32_t>((desc >> 16) & 0x3fff) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3fff) << 4;
  if ((desc >> 62) != 1) fail("wgmma descriptor swizzle other than 128B: not modelled", nullptr);
  if (((desc >> 49) & 7) != 0 || ((start >> 7) & 7) != 0) {
    fail("wgmma descriptor start off its atom's first row (base offset): not modelled", nullptr);
  }
  uint32_t off;
  if (mn_major) {
    if (start % kSwizzleBytes != 0) fail("MN-major descriptor start inside a row", nullptr);
    off = 2 * (mn % 64) + (mn / 64) * lbo + (k % 8) * 128 + (k / 8) * sbo;
  } else {
    if (start % kSwizzleBytes + 32 > kSwizzleBytes) fail("K-major descriptor's 16 k cross a 128-byte row", nullptr);
    off = (mn % 8) * 128 + (mn / 8) * sbo + 2 * k;
  }
  return swizzle_128b(start + off);
}

struct WgmmaOp {
  bool bf16, a_regs, trans_b, accumulate;
  uint64_t desc_a, desc_b;
  const uint32_t* a[128];  // register A of each thread (4 registers)
  float* d[128];           // D of each thread (n / 2 registers)
  int n = 128;             // N of wgmma.m64nNk16
  bool trans_a = false;    // A from shared memory MN-major (the transpose bit)
};
struct Warpgroup {
  WgmmaOp staging;
  uint64_t descs[128][2];
  std::vector<WgmmaOp> open;
  std::deque<std::vector<WgmmaOp>> groups;
};
inline Warpgroup warpgroups[8];
inline std::deque<Barrier> warpgroup_bars = [] {
  std::deque<Barrier> d;
  for (int i = 0; i < 8; ++i) d.emplace_back(128);
  return d;
}();
inline bool wgmma_fenced[kMaxThreadsPerCta];  // each thread's: a wgmma_fence since its last wgmma_wait

inline int wg_thread() { return threadIdx.x % 128; }
inline Warpgroup& my_wg() { return warpgroups[threadIdx.x / 128]; }
inline void wg_sync() { warpgroup_bars[threadIdx.x / 128].arrive_and_wait(); }

inline float operand(const WgmmaOp& op, bool is_a, int mn, int k) {
  uint16_t bits;
  if (is_a && op.a_regs) {
    // A fragment: thread 32 (m / 16) + 4 (m % 8) + (k % 8) / 2, register (m % 16) / 8 + 2 (k / 8).
    const int owner = 32 * (mn / 16) + 4 * (mn % 8) + (k % 8) / 2;
    bits = static_cast<uint16_t>(op.a[owner][(mn % 16) / 8 + 2 * (k / 8)] >> (16 * (k % 2)));
  } else {
    const uint32_t addr = desc_element(is_a ? op.desc_a : op.desc_b, mn, k, is_a ? op.trans_a : op.trans_b);
    std::memcpy(&bits, smem_at(addr, 2, 2), 2);
  }
  return op.bf16 ? half_to_float<__nv_bfloat16>(bits) : half_to_float<__half>(bits);
}

// This thread's D fragment of one retired wgmma: d[4 i + 2 h + j] = D[16 w + g + 8 h][8 i + 2 t + j],
// i < N / 8.
inline void wgmma_retire(const WgmmaOp& op, int i) {
  const int w = i / 32, g = (i % 32) / 4, t = i % 4;
  for (int e = 0; e < op.n / 2; ++e) {
    const int m = 16 * w + g + 8 * ((e >> 1) & 1), n = 8 * (e >> 2) + 2 * t + (e & 1);
    double sum = op.accumulate ? op.d[i][e] : 0.0;
    for (int k = 0; k < 16; ++k) sum += double{operand(op, true, m, k)} * operand(op, false, n, k);
    op.d[i][e] = static_cast<float>(sum);
  }
}

inline void wgmma_issue(const WgmmaOp& mine, const uint32_t* a, float* d) {
  if (!wgmma_fenced[thread_rank]) fail("wgmma issued without a wgmma_fence since the thread's last wgmma_wait", d);
  Warpgroup& wg = my_wg();
  const int i = wg_thread();
  if (i == 0) {
    const WgmmaOp head = mine;
    std::memcpy(&wg.staging, &head, offsetof(WgmmaOp, a));
    wg.staging.n = mine.n;
    wg.staging.trans_a = mine.trans_a;
  }
  wg.staging.a[i] = a;
  wg.staging.d[i] = d;
  wg.descs[i][0] = mine.desc_a;
  wg.descs[i][1] = mine.desc_b;
  wg_sync();
  if (i == 0) {
    for (int j = 0; j < 128; ++j) {
      if (wg.descs[j][0] != wg.descs[0][0] || wg.descs[j][1] != wg.descs[0][1]) {
        fail("wgmma descriptors differ across the warpgroup", nullptr);
      }
    }
    wg.open.push_back(wg.staging);
  }
  wg_sync();
}

inline void wgmma_fence() { wgmma_fenced[thread_rank] = true; }

inline void wgmma_commit() {
  Warpgroup& wg = my_wg();
  wg_sync();
  if (wg_thread() == 0) {
    wg.groups.push_back(std::move(wg.open));
    wg.open.clear();
  }
  wg_sync();
}

template <int kPending, typename... Regs>
inline void wgmma_wait(Regs&...) {
  Warpgroup& wg = my_wg();
  wg_sync();
  while (wg.groups.size() > kPending) {
    for (const WgmmaOp& op : wg.groups.front()) wgmma_retire(op, wg_thread());
    wg_sync();  // every thread has read the register A fragments
    if (wg_thread() == 0) wg.groups.pop_front();
    wg_sync();
  }
  wgmma_fenced[thread_rank] = false;
}

// Shared/shared wgmma of width N, both operands K-major or both MN-major (kMnMajor).
template <typename T, bool kMnMajor, int N>
inline void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  WgmmaOp op{std::is_same_v<T, __nv_bfloat16>, false, kMnMajor, accumulate, desc_a, desc_b, {}, {}, N, kMnMajor};
  wgmma_issue(op, nullptr, d);
}

template <typename T, bool kMnMajor = false>
inline void wgmma_m64n128k16_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  wgmma_ss<T, kMnMajor, 128>(d, desc_a, desc_b, accumulate);
}

template <typename T>
inline void wgmma_m64n128k16_rs_tn(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b) {
  WgmmaOp op{std::is_same_v<T, __nv_bfloat16>, true, true, true, 0, desc_b, {}, {}};
  wgmma_issue(op, a, d);
}

template <typename T, bool kMnMajor = false>
inline void wgmma_m64n64k16_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  wgmma_ss<T, kMnMajor, 64>(d, desc_a, desc_b, accumulate);
}

template <typename T, bool kMnMajor = false>
inline void wgmma_m64n96k16_ss(float (&d)[48], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  wgmma_ss<T, kMnMajor, 96>(d, desc_a, desc_b, accumulate);
}

template <typename T>
inline void wgmma_m64n64k16_rs_tn(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b) {
  WgmmaOp op{std::is_same_v<T, __nv_bfloat16>, true, true, true, 0, desc_b, {}, {}, 64};
  wgmma_issue(op, a, d);
}

template <typename T>
inline void wgmma_m64n96k16_rs_tn(float (&d)[48], const uint32_t (&a)[4], uint64_t desc_b) {
  WgmmaOp op{std::is_same_v<T, __nv_bfloat16>, true, true, true, 0, desc_b, {}, {}, 96};
  wgmma_issue(op, a, d);
}

template <typename T>
inline void wgmma_m64n80k16_ss(float (&d)[40], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  wgmma_ss<T, false, 80>(d, desc_a, desc_b, accumulate);
}

template <typename T>
inline void wgmma_m64n176k16_ss(float (&d)[88], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  wgmma_ss<T, false, 176>(d, desc_a, desc_b, accumulate);
}

// After a launch: no wgmma left unretired.
inline void wgmma_check_quiescent() {
  for (const Warpgroup& wg : warpgroups) {
    if (!wg.open.empty() || !wg.groups.empty()) fail("a CTA exited with wgmma groups never awaited", nullptr);
  }
}

// The real header's compiler-ordering fence on registers (a value computed before this point stays
// before it): nothing to order in the emulation.
template <typename Regs>
inline void fence_operand(Regs&) {}

// ---- named barriers (bar.sync / bar.arrive) ------------------------------------------------------

// The hardware's 16 per-CTA barriers: a phase completes when `count` threads have arrived, releasing
// the bar.sync-ers of the phase (bar.arrive-ers never wait). Fails on what the PTX ISA leaves
// undefined or reserves: an id outside 1..15 (0 is __syncthreads'), a count that is not a positive
// multiple of 32, different counts within a phase, a phase completed with a warp partly arrived (the
// instructions are .aligned: a warp arrives whole, so more warps arrived than the count covers), a
// CTA exiting (or the next CTA arriving) with a phase partly arrived; and a bar.sync that no thread
// can end (cta.h's wait_until: a missing arrival, a count too large, an order that waits on itself).
struct NamedBarrier {
  int count = 0, arrived = 0;  // of the current phase
  uint64_t phase = 0;
  int warp_arrivals[32] = {};
  uint3 cta{};  // of the current phase's arrivals
};
inline NamedBarrier named_barriers[16];

inline bool same_cta(uint3 a, uint3 b) { return a.x == b.x && a.y == b.y && a.z == b.z; }

// This thread's arrival; the phase it arrived in.
inline uint64_t named_barrier_arrive(int id, int count) {
  if (id < 1 || id > 15) fail("named barrier id outside 1..15 (0 is __syncthreads')", nullptr);
  if (count <= 0 || count % 32 != 0 || count > 1024) {
    fail("named barrier thread count not a positive multiple of 32 up to 1024", nullptr);
  }
  NamedBarrier& b = named_barriers[id];
  if (b.arrived == 0) {
    b.count = count;
    b.cta = blockIdx;
  } else if (!same_cta(b.cta, blockIdx)) {
    fail("a CTA exited with a named barrier phase partly arrived", nullptr);
  } else if (b.count != count) {
    fail("named barrier arrivals with different thread counts in one phase", nullptr);
  }
  ++b.warp_arrivals[threadIdx.x / 32];
  const uint64_t phase = b.phase;
  if (++b.arrived == b.count) {
    for (int& w : b.warp_arrivals) {
      if (w != 0 && w != 32) {
        fail("named barrier phase completed with a warp partly arrived (count too small)", nullptr);
      }
      w = 0;
    }
    b.arrived = 0;
    ++b.phase;
  }
  note_progress();
  return phase;
}

inline void named_barrier_sync(int id, int count) {
  const uint64_t phase = named_barrier_arrive(id, count);
  wait_until([&] { return named_barriers[id].phase != phase; },
             "named barrier sync never completes (missing arrival, count too large, or a cyclic wait)", nullptr);
}

// ---- global reductions ---------------------------------------------------------------------------

// The real one is one 8-byte reduction; here two fp32 adds (the fibers run one at a time).
inline void red_add_f32x2(float* addr, float a, float b) {
  addr[0] += a;
  addr[1] += b;
}

// ---- TMA store ---------------------------------------------------------------------------------

// A store reads its shared memory at the tma_store_wait_read that covers it (so shared writes after
// the issue, or a writer the barrier before it missed, show), and writes the in-bounds elements of
// the box; a store not committed and awaited when the launch ends fails. The async-proxy fence is
// not modelled (a no-op): that it is there is checked by reading the kernel only.
struct TmaStore {
  TmaCopy copy;  // map, shared address, coordinates
  uint32_t thread;
  bool committed;
};
inline std::vector<TmaStore> tma_stores;

inline void fence_proxy_async_shared() {}

inline void tma_store_4d(const CUtensorMap* map, const void* src, int c0, int c1, int c2, int c3) {
  TmaMap m;
  std::memcpy(&m, map, sizeof(m));
  if (m.magic != kTmaMagic) fail("TMA through a tensor map that encode_tma_4d did not write", map);
  const uint32_t addr = smem_addr(src);
  if (addr % kSwizzleAtomBytes != 0) fail("128B-swizzled TMA source not 1024-byte aligned", src);
  tma_stores.push_back({TmaCopy{m, addr, {c0, c1, c2, c3}}, threadIdx.x, false});
}

inline void tma_store_commit() {
  for (TmaStore& st : tma_stores) st.committed = st.committed || st.thread == threadIdx.x;
}

// Element (i0, i1) of the box from src + 2 (i1 box0 + i0), 128B-swizzled, to the tensor if in bounds.
inline void tma_store_land(const TmaCopy& cp) {
  const TmaMap& m = cp.map;
  for (int i1 = 0; i1 < m.box[1]; ++i1) {
    for (int i0 = 0; i0 < m.box[0]; ++i0) {
      const int64_t at[4] = {int64_t{cp.c[0]} + i0, int64_t{cp.c[1]} + i1, cp.c[2], cp.c[3]};
      bool in = true;
      int64_t off = 0;
      for (int d = 0; d < 4; ++d) {
        in = in && at[d] >= 0 && at[d] < m.dims[d];
        off += at[d] * m.strides[d];
      }
      const uint32_t addr = swizzle_128b(cp.dst + 2 * (i1 * m.box[0] + i0));
      if (in) std::memcpy(const_cast<char*>(m.base) + off, smem_at(addr, 2, 2), 2);
    }
  }
}

inline void tma_store_wait_read() {
  std::vector<TmaStore> left;
  for (const TmaStore& st : tma_stores) {
    if (st.thread == threadIdx.x && st.committed) {
      tma_store_land(st.copy);
    } else {
      left.push_back(st);
    }
  }
  tma_stores = std::move(left);
}

inline void tma_store_check_quiescent() {
  if (!tma_stores.empty()) fail("a CTA exited with a TMA store not committed and awaited", nullptr);
}

// After a launch: no named barrier phase partly arrived (the last CTA's; earlier CTAs' are caught by
// the next CTA's first arrival).
inline void named_barrier_check_quiescent() {
  for (NamedBarrier& b : named_barriers) {
    if (b.arrived != 0) fail("a CTA exited with a named barrier phase partly arrived", nullptr);
    b = NamedBarrier{};
  }
}

}  // namespace attn
}  // namespace fasttx
