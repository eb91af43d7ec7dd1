#pragma once
// The emulated GPU that the host emulators of the CUDA kernels share (tests/attention_emulator,
// tests/rowwise_emulator): a grid runs one CTA after another, each on one host thread per GPU thread,
// with real barriers for __syncthreads and __syncwarp. Warp shuffles exchange operands through a
// per-warp buffer between two warp barriers. Global reads can be checked against the tensors the
// kernel was given; a violation aborts with a message naming the block and thread.
//
// The built-ins live in namespace fasttx, where every kernel does, so that they hide whatever the
// CUDA headers declare for the host.

#include <cuda_runtime_api.h>

#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

// Host compilers know no launch bounds (the CUDA headers turn the other keywords into attributes).
#undef __launch_bounds__
#define __launch_bounds__(...)

namespace fasttx {

inline thread_local uint3 threadIdx;
inline thread_local int thread_rank;  // threadIdx linearized, x fastest: what warps are cut from
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

[[noreturn]] inline void fail(const char* what, const void* p) {
  std::fprintf(stderr, "emulator: %s at %p (block %u,%u,%u thread %u)\n", what, p, blockIdx.x, blockIdx.y, blockIdx.z,
               thread_rank);
  std::abort();
}

struct Range {
  const char* begin;
  size_t bytes;
};
inline std::vector<Range> global_ranges;  // the tensors a kernel may read

inline void check_global(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (const Range& r : global_ranges) {
    if (c >= r.begin && c + bytes <= r.begin + r.bytes) return;
  }
  fail("global read outside every input tensor", p);
}

// ---- barriers and shuffles ---------------------------------------------------------------------

constexpr int kMaxWarpsPerCta = 32;
inline std::barrier<>* block_barrier = nullptr;
inline std::barrier<>* warp_barriers[kMaxWarpsPerCta];

inline int lane_id() { return thread_rank % 32; }
inline int warp_id() { return thread_rank / 32; }

inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline void __syncwarp() { warp_barriers[warp_id()]->arrive_and_wait(); }

// One 32-bit word per lane of every warp: what a shuffle reads from its source lane.
inline uint32_t shuffle_slots[kMaxWarpsPerCta][32];

inline uint32_t shuffle_xor_bits(uint32_t v, int lane_mask) {
  uint32_t(&slots)[32] = shuffle_slots[warp_id()];
  slots[lane_id()] = v;
  __syncwarp();
  const uint32_t r = slots[lane_id() ^ lane_mask];
  __syncwarp();
  return r;
}
inline uint32_t __shfl_xor_sync(unsigned, uint32_t v, int lane_mask) { return shuffle_xor_bits(v, lane_mask); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  return __builtin_bit_cast(float, shuffle_xor_bits(__builtin_bit_cast(uint32_t, v), lane_mask));
}

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// ---- the grid ----------------------------------------------------------------------------------

// Runs cta() for every block of `grid`, one after another, on one host thread per thread of
// `block`. setup() runs on one thread before each CTA starts, cta() on every thread; the next CTA
// starts only when every thread has finished the last one.
inline void run_grid(dim3 grid, dim3 block, const std::function<void()>& setup, const std::function<void()>& cta) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads % 32 != 0 || threads > 32 * kMaxWarpsPerCta) fail("block size not whole warps", nullptr);
  std::barrier<> bar(threads);
  std::deque<std::barrier<>> warp_bars;  // barriers cannot move: no vector
  for (int w = 0; w < threads / 32; ++w) warp_barriers[w] = &warp_bars.emplace_back(32);
  block_barrier = &bar;
  gridDim = grid;
  blockDim = block;
  std::vector<std::thread> pool;
  for (int tid = 0; tid < threads; ++tid) {
    pool.emplace_back([&, tid] {
      thread_rank = tid;
      threadIdx = {tid % block.x, tid / block.x % block.y, tid / (block.x * block.y)};
      for (unsigned z = 0; z < grid.z; ++z) {
        for (unsigned y = 0; y < grid.y; ++y) {
          for (unsigned x = 0; x < grid.x; ++x) {
            if (tid == 0) {
              blockIdx = {x, y, z};
              setup();
            }
            bar.arrive_and_wait();
            cta();
            bar.arrive_and_wait();  // the CTA is done before the next one's setup
          }
        }
      }
    });
  }
  for (auto& t : pool) t.join();
}

}  // namespace fasttx
