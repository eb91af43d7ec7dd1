#pragma once
// The sm_90a instructions of the Hopper attention kernels (attention_{fwd,bwd}_sm90.cuh), as inline PTX:
// TMA tile loads and stores (cp.async.bulk.tensor), mbarriers, wgmma, setmaxnreg, named barriers, and
// the host-side tensor-map encoding. As with primitives.cuh, nothing else in the kernel is
// hardware-specific, so the host emulator (tests/attention_emulator/attention/sm90/primitives_sm90.cuh)
// substitutes this header as a whole and runs every other line of the real source.
//
// wgmma.m64nNk16 fragments (PTX ISA "Matrix Fragments for wgmma.mma_async.m64nNk16"), thread
// 32 w + 4 g + t of the warpgroup (warp w owns rows 16 w .. 16 w + 15):
//   D (fp32, N / 2 registers): d[4 i + 2 h + j] = D[16 w + g + 8 h][8 i + 2 t + j], i < N / 8,
//     h, j in {0, 1}: the mma.m16n8 C fragment repeated over the N / 8 column tiles.
//   A from registers (4 x 32 bits, two 16-bit values each, lower column in the low half):
//     a[0] = A[16 w + g][2 t, 2 t + 1], a[1] = A[16 w + g + 8][2 t ..], a[2] = A[16 w + g][2 t + 8 ..],
//     a[3] = A[16 w + g + 8][2 t + 8 ..]: the mma.m16n8k16 A fragment, so a D fragment of columns
//     16 kk .. 16 kk + 15 (d[8 kk .. 8 kk + 7]) packs into the A fragment of k-step kk.
//   A and B from shared memory: matrix descriptors (smem_layout_sm90.h), B (K x N) K-major unless
//     kTransB (then N-major: "transposed" through the descriptor, as V is read in O += P V).
// A wgmma reads its operands and writes D asynchronously: D (and register A) may be touched only
// after wgmma_wait, whose operand fence keeps the compiler from moving accesses across it.

#include <cuda.h>  // CUtensorMap and its enums (types only: libcuda is reached at run time)
#include <cudaTypedefs.h>

#include <atomic>

#include "attention/primitives.cuh"
#include "attention/sm90/smem_layout_sm90.h"

namespace fasttx {
namespace attn {

// ---- TMA and mbarriers --------------------------------------------------------------------------

// A 4-D tiled tensor map over `base`: dims[0] contiguous 16-bit elements, byte strides of dims 1..3,
// box of box0 x box1 x 1 x 1 elements, 128B swizzle, out-of-bounds elements zero-filled. False if
// the driver refuses it (or has no cuTensorMapEncodeTiled), with `map` unusable.
inline bool encode_tma_4d(CUtensorMap* map, const void* base, bool bf16, const int64_t (&dims)[4],
                          const int64_t (&strides_bytes)[3], int box0, int box1) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                                             cudaEnableDefault, &found);
    return err == cudaSuccess && found == cudaDriverEntryPointSuccess
               ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn)
               : nullptr;
  }();
  if (encode == nullptr) return false;
  const cuuint64_t dim[4] = {static_cast<cuuint64_t>(dims[0]), static_cast<cuuint64_t>(dims[1]),
                             static_cast<cuuint64_t>(dims[2]), static_cast<cuuint64_t>(dims[3])};
  const cuuint64_t stride[3] = {static_cast<cuuint64_t>(strides_bytes[0]), static_cast<cuuint64_t>(strides_bytes[1]),
                                static_cast<cuuint64_t>(strides_bytes[2])};
  const cuuint32_t box[4] = {static_cast<cuuint32_t>(box0), static_cast<cuuint32_t>(box1), 1, 1};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  return encode(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
                const_cast<void*>(base), dim, stride, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Whether `kernel` can run here with its sm_90a code: the current device is sm_90 and the code loaded
// for it is sm_90a's. binaryVersion 90 says only that the build has sm_90 code ("9.0a" or "9.0" in
// TORCH_CUDA_ARCH_LIST); with "9.0" alone that code is the kernel's stub, __trap() alone
// (attention_fwd_sm90.cuh), whose launch would take the process's CUDA context with it. The two differ
// in registers: the sm_90a kernels start with all their __launch_bounds__(threads, 1) allow, 128-255 a
// thread, which setmaxnreg then moves between warpgroups; the stub needs 4 (ptxas -v, CUDA 13.0).
// cudaFuncGetAttributes reads that without a launch, so also under stream capture. Cached per device.
constexpr int kSm90StubMaxRegisters = 32;
template <typename Kernel>
bool runs_sm90a(Kernel kernel) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices];  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) {
    cudaGetLastError();
    return false;
  }
  if (cached[dev].load() == 0) {
    int major = 0, minor = 0;
    cudaFuncAttributes attr{};
    const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
                    major == 9 && minor == 0 && cudaFuncGetAttributes(&attr, kernel) == cudaSuccess &&
                    attr.binaryVersion == 90 && attr.numRegs > kSm90StubMaxRegisters;
    cudaGetLastError();  // a kernel without code for this device is an answer, not an error to report later
    cached[dev].store(ok ? 1 : 2);
  }
  return cached[dev].load() == 1;
}

// Box at element coordinates (c0, c1, c2, c3) of `map` -> shared `dst` (1024-byte aligned), its bytes
// counted on the mbarrier `bar` (complete_tx) when they land.
__device__ __forceinline__ void tma_load_4d(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1, int c2,
                                            int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

// Starts fetching `map` (a __grid_constant__ kernel parameter) into the descriptor cache: a hint, no
// ordering. Issued by the thread that initializes the barriers, before them, so that the producer's
// first copy through each map does not wait for the descriptor's read (FlashAttention-3's producer does
// the same at kernel start).
__device__ __forceinline__ void tma_prefetch_descriptor(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// An mbarrier completes a phase when `count` arrivals and every expected transaction byte are in;
// phases alternate parity, the first has parity 0.
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}

// Makes the initializations visible to the async proxy (TMA) and the other threads' mbarrier
// operations; a __syncthreads must follow before any other thread uses the barriers.
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// One arrival, announcing `bytes` more transaction bytes for the current phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}

// Blocks until the phase of parity `parity` has completed, i.e. while the current phase has that
// parity. On a fresh barrier, parity 1 passes at once (the "phase before the first").
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  }
}

// ---- registers --------------------------------------------------------------------------------

// Warpgroup-wide register budget (setmaxnreg): the producer gives registers back, the consumers take them.
template <int kRegs>
__device__ __forceinline__ void warpgroup_reg_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void warpgroup_reg_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// ---- wgmma -------------------------------------------------------------------------------------

// Before the first wgmma that reads registers (D, register A) written by ordinary instructions.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }

// Closes the wgmma group of every wgmma issued since the last commit.
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void fence_operand(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int M, int N>
__device__ __forceinline__ void fence_operand(uint32_t (&r)[M][N]) {
#pragma unroll
  for (int i = 0; i < M; ++i) {
#pragma unroll
    for (int j = 0; j < N; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
  }
}

// Waits until at most kPending wgmma groups are in flight; `regs` are the fragments those groups
// read or write, which the compiler must neither read early nor reuse before this point.
template <int kPending, typename... Regs>
__device__ __forceinline__ void wgmma_wait(Regs&... regs) {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
  (fence_operand(regs), ...);
}

#define FASTTX_WGMMA_D64                                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "  \
  "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define FASTTX_WGMMA_D64_OPERANDS                                                                                \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),    \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),     \
      "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),    \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),    \
      "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),    \
      "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),    \
      "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),    \
      "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// D (64 x 128, fp32) = A B + (accumulate ? D : 0), A (64 x 16) and B (16 x 128) from shared memory
// through descriptors, both K-major, or both MN-major (kMnMajor: the transpose bits; the atomic-dQ
// backward's dS K, dS read from its stored transpose).
template <typename T, bool kMnMajor = false>
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %66, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " FASTTX_WGMMA_D64
                 ", %64, %65, p, 1, 1, %67, %67;\n}\n"
                 : FASTTX_WGMMA_D64_OPERANDS
                 : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)), "n"(kMnMajor ? 1 : 0));
  } else {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %66, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " FASTTX_WGMMA_D64
                 ", %64, %65, p, 1, 1, %67, %67;\n}\n"
                 : FASTTX_WGMMA_D64_OPERANDS
                 : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)), "n"(kMnMajor ? 1 : 0));
  }
}

// D (64 x 128, fp32) += A B, A (64 x 16) from registers (fragment above), B (16 x 128) from shared
// memory, N-major (transposed through the descriptor).
template <typename T>
__device__ __forceinline__ void wgmma_m64n128k16_rs_tn(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, 1, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " FASTTX_WGMMA_D64
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : FASTTX_WGMMA_D64_OPERANDS
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
  } else {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, 1, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " FASTTX_WGMMA_D64
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : FASTTX_WGMMA_D64_OPERANDS
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
  }
}

#undef FASTTX_WGMMA_D64
#undef FASTTX_WGMMA_D64_OPERANDS

// ---- the backward's shapes (attention_bwd_sm90.cuh), and the forward's at head dim 64 ---------------

#define FASTTX_WGMMA_D32                                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define FASTTX_WGMMA_D32_OPERANDS                                                                             \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),  \
      "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

// D (64 x 64, fp32) = A B + (accumulate ? D : 0), A (64 x 16) and B (16 x 64) from shared memory
// through descriptors, both K-major: the backward's transposed scores S^T = K Q^T and dP^T = V dO^T;
// or both MN-major (kMnMajor, as wgmma_m64n128k16_ss): the atomic-dQ backward's dS K at head dim 64.
template <typename T, bool kMnMajor = false>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %34, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " FASTTX_WGMMA_D32
                 ", %32, %33, p, 1, 1, %35, %35;\n}\n"
                 : FASTTX_WGMMA_D32_OPERANDS
                 : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)), "n"(kMnMajor ? 1 : 0));
  } else {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %34, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " FASTTX_WGMMA_D32
                 ", %32, %33, p, 1, 1, %35, %35;\n}\n"
                 : FASTTX_WGMMA_D32_OPERANDS
                 : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)), "n"(kMnMajor ? 1 : 0));
  }
}

// D (64 x 64, fp32) += A B, A (64 x 16) from registers, B (16 x 64) from shared memory, N-major: the
// forward's O += P V at head dim 64.
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16_rs_tn(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, 1, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " FASTTX_WGMMA_D32
                 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : FASTTX_WGMMA_D32_OPERANDS
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
  } else {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, 1, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " FASTTX_WGMMA_D32
                 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : FASTTX_WGMMA_D32_OPERANDS
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
  }
}

#undef FASTTX_WGMMA_D32
#undef FASTTX_WGMMA_D32_OPERANDS

// ---- the forward's head dim 256 (80-key blocks) --------------------------------------------------

#define FASTTX_WGMMA_D40                                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39}"
#define FASTTX_WGMMA_D40_OPERANDS                                                                             \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),  \
      "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), \
      "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39])

// D (64 x 80, fp32) = A B + (accumulate ? D : 0), A (64 x 16) and B (16 x 80) from shared memory
// through descriptors, both K-major: the forward's S = Q K^T of 80 keys at head dim 256.
template <typename T>
__device__ __forceinline__ void wgmma_m64n80k16_ss(float (&d)[40], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %42, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n80k16.f32.f16.f16 " FASTTX_WGMMA_D40
                 ", %40, %41, p, 1, 1, 0, 0;\n}\n"
                 : FASTTX_WGMMA_D40_OPERANDS
                 : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
  } else {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %42, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n80k16.f32.bf16.bf16 " FASTTX_WGMMA_D40
                 ", %40, %41, p, 1, 1, 0, 0;\n}\n"
                 : FASTTX_WGMMA_D40_OPERANDS
                 : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
  }
}

#undef FASTTX_WGMMA_D40
#undef FASTTX_WGMMA_D40_OPERANDS

// ---- the forward's head dim 128 without causality, mask or dropout (176-key blocks) --------------------

#define FASTTX_WGMMA_D88 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, " \
  "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, " \
  "%42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, " \
  "%62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, " \
  "%82, %83, %84, %85, %86, %87}"
#define FASTTX_WGMMA_D88_OPERANDS \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), \
  "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), \
  "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), \
  "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), \
  "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), \
  "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), \
  "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), \
  "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
  "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), \
  "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), \
  "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), \
  "+f"(d[85]), "+f"(d[86]), "+f"(d[87])

// D (64 x 176, fp32) = A B + (accumulate ? D : 0), A (64 x 16) and B (16 x 176) from shared memory
// through descriptors, both K-major: the forward's S = Q K^T of 176 keys at head dim 128
// (FlashAttention-3's tile there).
template <typename T>
__device__ __forceinline__ void wgmma_m64n176k16_ss(float (&d)[88], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %90, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n176k16.f32.f16.f16 " FASTTX_WGMMA_D88
                 ", %88, %89, p, 1, 1, 0, 0;\n}\n"
                 : FASTTX_WGMMA_D88_OPERANDS
                 : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
  } else {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %90, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n176k16.f32.bf16.bf16 " FASTTX_WGMMA_D88
                 ", %88, %89, p, 1, 1, 0, 0;\n}\n"
                 : FASTTX_WGMMA_D88_OPERANDS
                 : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
  }
}

#undef FASTTX_WGMMA_D88
#undef FASTTX_WGMMA_D88_OPERANDS

// ---- the forward's head dim 96 (O += P V, N = 96) -------------------------------------------------

#define FASTTX_WGMMA_D48                                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "  \
  "%44, %45, %46, %47}"
#define FASTTX_WGMMA_D48_OPERANDS                                                                             \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),  \
      "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), \
      "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), \
      "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])

// D (64 x 96, fp32) += A B, A (64 x 16) from registers, B (16 x 96) from shared memory, N-major: the
// forward's O += P V at head dim 96.
template <typename T>
__device__ __forceinline__ void wgmma_m64n96k16_rs_tn(float (&d)[48], const uint32_t (&a)[4], uint64_t desc_b) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, 1, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n96k16.f32.f16.f16 " FASTTX_WGMMA_D48
                 ", {%48, %49, %50, %51}, %52, p, 1, 1, 1;\n}\n"
                 : FASTTX_WGMMA_D48_OPERANDS
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
  } else {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, 1, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n96k16.f32.bf16.bf16 " FASTTX_WGMMA_D48
                 ", {%48, %49, %50, %51}, %52, p, 1, 1, 1;\n}\n"
                 : FASTTX_WGMMA_D48_OPERANDS
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
  }
}

// D (64 x 96, fp32) = A B + (accumulate ? D : 0), A (64 x 16) and B (16 x 96) from shared memory
// through descriptors, both K-major or both MN-major (kMnMajor, as wgmma_m64n128k16_ss): the
// atomic-dQ backward's dS K at head dim 96.
template <typename T, bool kMnMajor = false>
__device__ __forceinline__ void wgmma_m64n96k16_ss(float (&d)[48], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %50, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n96k16.f32.f16.f16 " FASTTX_WGMMA_D48
                 ", %48, %49, p, 1, 1, %51, %51;\n}\n"
                 : FASTTX_WGMMA_D48_OPERANDS
                 : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)), "n"(kMnMajor ? 1 : 0));
  } else {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %50, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n96k16.f32.bf16.bf16 " FASTTX_WGMMA_D48
                 ", %48, %49, p, 1, 1, %51, %51;\n}\n"
                 : FASTTX_WGMMA_D48_OPERANDS
                 : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)), "n"(kMnMajor ? 1 : 0));
  }
}

#undef FASTTX_WGMMA_D48
#undef FASTTX_WGMMA_D48_OPERANDS

// ---- named barriers (bar.sync / bar.arrive) ------------------------------------------------------

// The CTA's 16 hardware barriers, id 0 being __syncthreads'. A phase completes when `count` threads
// (a multiple of 32, the same in every arrival of the phase) have arrived; bar.sync waits for that,
// bar.arrive does not. Both are .aligned: every thread of the warp executes the same one, so the
// ids and counts are warp-uniform. The "memory" clobber keeps shared-memory accesses on their side.
__device__ __forceinline__ void named_barrier_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// ---- global reductions (the atomic-dQ backward) --------------------------------------------------

// *addr += a, *(addr + 1) += b in global memory, one 8-byte reduction (no value returned; sm_90's
// vector red). addr 8-byte aligned.
__device__ __forceinline__ void red_add_f32x2(float* addr, float a, float b) {
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(addr), "f"(a), "f"(b) : "memory");
}

// ---- TMA store (the forward's epilogue) -------------------------------------------------------------

// Makes this thread's ordinary shared-memory writes visible to the async proxy: each writer fences,
// then a barrier, then one thread's TMA store reads them.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Shared `src` (1024-byte aligned, laid out as tma_load_4d lands a box) -> the box at element
// coordinates (c0, c1, c2, c3) of `map`; elements out of the tensor are not written. One bulk
// async-group operation: tma_store_commit closes the group.
__device__ __forceinline__ void tma_store_4d(const CUtensorMap* map, const void* src, int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(smem_addr(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
__device__ __forceinline__ void tma_store_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }

// Waits until this thread's committed stores have read their shared memory (which may then be
// reused, or the CTA exit; their global writes complete by the kernel's end).
__device__ __forceinline__ void tma_store_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}

}  // namespace attn
}  // namespace fasttx
