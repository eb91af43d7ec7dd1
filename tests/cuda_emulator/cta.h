#pragma once
// The emulated GPU that the host emulators of the CUDA kernels share (tests/attention_emulator,
// tests/rowwise_emulator): a grid runs one CTA after another; a CTA's threads are fibers on the host
// thread that launched it, one per GPU thread. A fiber runs until it must wait (a barrier, an
// mbarrier, a named barrier), then the next one runs, round-robin. Warp shuffles exchange operands
// through a per-warp buffer between two warp barriers. Global reads can be checked against the tensors
// the kernel was given; a violation aborts with a message naming the block and thread.
//
// Why fibers and not one host thread per GPU thread: a barrier of 128-384 host threads costs a wakeup
// of each, and on a loaded 2-core machine every wakeup waits for a time slice, so the emulated suites'
// time depended on the machine's load more than on the kernels. Fibers switch in user space, the
// result does not depend on the host's scheduling, and a wait that no thread can end is known at
// once: every fiber waiting, a whole round with no progress (wait_until).
//
// The built-ins live in namespace fasttx, where every kernel does, so that they hide whatever the
// CUDA headers declare for the host.

#include <cuda_runtime_api.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <vector>

// Host compilers know no launch bounds (the CUDA headers turn the other keywords into attributes).
#undef __launch_bounds__
#define __launch_bounds__(...)

namespace fasttx {

constexpr int kMaxWarpsPerCta = 32;
constexpr int kMaxThreadsPerCta = 32 * kMaxWarpsPerCta;

// The running fiber's; set at every switch.
inline uint3 threadIdx;
inline int thread_rank;  // threadIdx linearized, x fastest: what warps are cut from
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

// ---- fibers ------------------------------------------------------------------------------------

struct Fiber {
  ucontext_t context;
  void* stack = nullptr;
  bool started = false, finished = false;
};
// 512 KB a fiber (the kernels' register arrays and the emulation's frames take a few KB), below a
// guard page: an overflow faults instead of writing into the next fiber's stack.
constexpr size_t kFiberStackBytes = 512 << 10;
constexpr size_t kGuardBytes = 4096;

inline std::vector<Fiber> fibers;
inline int running_fiber = -1;
inline ucontext_t host_context;
inline const std::function<void(int)>* fiber_body = nullptr;
// Bumped by every change a waiting fiber may be waiting for (an arrival, a phase, a landed copy, a
// wait passed, a fiber started or finished): wait_until's deadlock test.
inline uint64_t progress = 0;

inline void note_progress() { ++progress; }

// The next unfinished fiber after `after`, round-robin (`after` itself if it is the only one); -1 if none.
inline int next_fiber(int after) {
  const int n = static_cast<int>(fibers.size());
  for (int i = 1; i <= n; ++i) {
    const int f = (after + i) % n;
    if (!fibers[f].finished) return f;
  }
  return -1;
}

// Switches to fiber `to`, saving the running context into `from` (nullptr: a finished fiber's, dropped).
inline void switch_to(int to, ucontext_t* from) {
  running_fiber = thread_rank = to;
  threadIdx = {to % blockDim.x, to / blockDim.x % blockDim.y, to / (blockDim.x * blockDim.y)};
  Fiber& f = fibers[to];
  if (!f.started) {
    f.started = true;
    note_progress();
  }
  if (from != nullptr) {
    swapcontext(from, &f.context);
  } else {
    setcontext(&f.context);
  }
}

inline void yield() {
  const int me = running_fiber;
  const int next = next_fiber(me);
  if (next != me) switch_to(next, &fibers[me].context);
}

// Returns once done() holds, running the other fibers meanwhile. If a whole round of them passes with
// no progress and done() still false, no thread can ever make it true: fails with `deadlock`. One round
// is enough: between this fiber's yield and its return every other live fiber ran once, and with no
// progress each of them only found its own condition false, so nothing any of them waits on changed.
template <typename Done>
inline void wait_until(Done done, const char* deadlock, const void* p) {
  while (!done()) {
    const uint64_t seen = progress;
    yield();
    if (!done() && progress == seen) fail(deadlock, p);
  }
  note_progress();
}

inline void fiber_main() {
  (*fiber_body)(running_fiber);
  fibers[running_fiber].finished = true;
  note_progress();
  const int next = next_fiber(running_fiber);
  if (next < 0) {
    setcontext(&host_context);
  } else {
    switch_to(next, nullptr);
  }
}

// ---- barriers and shuffles ---------------------------------------------------------------------

// `count` threads arrive; the last one's arrival releases them all, and the barrier is ready for the
// next phase at once.
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void arrive_and_wait() {
    const uint64_t phase = phase_;
    note_progress();
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++phase_;
      return;
    }
    wait_until([&] { return phase_ != phase; },
               "barrier never completes (a thread of it waits elsewhere or has exited)", this);
  }

 private:
  int count_, arrived_ = 0;
  uint64_t phase_ = 0;
};

inline Barrier* block_barrier = nullptr;
inline Barrier* warp_barriers[kMaxWarpsPerCta];

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

// Runs cta() for every block of `grid`, one after another, on one fiber per thread of `block`.
// setup() runs on one thread before each CTA starts, cta() on every thread; the next CTA starts only
// when every thread has finished the last one.
inline void run_grid(dim3 grid, dim3 block, const std::function<void()>& setup, const std::function<void()>& cta) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads % 32 != 0 || threads > kMaxThreadsPerCta) fail("block size not whole warps", nullptr);
  Barrier bar(threads);
  std::deque<Barrier> warp_bars;  // barriers are pointed to: no vector
  for (int w = 0; w < threads / 32; ++w) warp_barriers[w] = &warp_bars.emplace_back(32);
  block_barrier = &bar;
  gridDim = grid;
  blockDim = block;
  const std::function<void(int)> body = [&](int tid) {
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
  };
  fiber_body = &body;
  fibers.assign(threads, Fiber{});
  for (Fiber& f : fibers) {
    void* mem = mmap(nullptr, kGuardBytes + kFiberStackBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) fail("no memory for a fiber's stack", nullptr);
    mprotect(mem, kGuardBytes, PROT_NONE);
    f.stack = mem;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = static_cast<char*>(mem) + kGuardBytes;
    f.context.uc_stack.ss_size = kFiberStackBytes;
    f.context.uc_link = nullptr;  // fiber_main never returns
    makecontext(&f.context, fiber_main, 0);
  }
  switch_to(0, &host_context);  // back here when the last fiber finishes
  for (Fiber& f : fibers) munmap(f.stack, kGuardBytes + kFiberStackBytes);
  fibers.clear();
  running_fiber = -1;
}

}  // namespace fasttx
