#pragma once
// The emulated GPU that the host emulators of the CUDA kernels share (tests/attention_emulator,
// tests/rowwise_emulator): a grid runs one CTA after another; a CTA's threads are fibers on the host
// thread that launched it, one per GPU thread. A fiber runs until it must wait (a barrier, an
// mbarrier, a named barrier), then the next one runs, round-robin. Warp shuffles exchange operands
// through a per-warp buffer between two warp barriers. Global reads can be checked against the tensors
// the kernel was given; a violation aborts with a message naming the block and thread. A grid of
// thread block clusters (run_clusters) runs one cluster after another, its CTAs at once, each on a
// host thread of its own (the emulator state below is per host thread), meeting at the cluster
// barrier and in each other's shared memory.
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

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

// Host compilers know no launch bounds (the CUDA headers turn the other keywords into attributes).
#undef __launch_bounds__
#define __launch_bounds__(...)

namespace fasttx {

constexpr int kMaxWarpsPerCta = 32;
constexpr int kMaxThreadsPerCta = 32 * kMaxWarpsPerCta;

// The running fiber's; set at every switch. This and all the emulator's state below is thread_local:
// the CTAs of a cluster run at once, on host threads of their own.
inline thread_local uint3 threadIdx;
inline thread_local int thread_rank;  // threadIdx linearized, x fastest: what warps are cut from
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

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

inline thread_local std::vector<Fiber> fibers;
inline thread_local int running_fiber = -1;
inline thread_local ucontext_t host_context;
inline thread_local const std::function<void(int)>* fiber_body = nullptr;
// Bumped by every change a waiting fiber may be waiting for (an arrival, a phase, a landed copy, a
// wait passed, a fiber started or finished): wait_until's deadlock test.
inline thread_local uint64_t progress = 0;

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

// ---- clusters: what the CTAs of one cluster share ----------------------------------------------

// The CTAs of a cluster run at once, each on a host thread; this is what they share, under `mutex`.
struct Cluster {
  Cluster(int blocks, int threads) : blocks(blocks), arrivals(blocks * threads), shared(blocks), exited(blocks) {}
  const int blocks;
  const int arrivals;  // a phase of the cluster barrier: every thread of every CTA
  std::mutex mutex;
  std::condition_variable changed;  // notified with every event
  int arrived = 0;
  std::atomic<uint64_t> phase{0};
  std::atomic<uint64_t> events{0};  // arrivals and exits: what a CTA with every fiber waiting waits for
  std::vector<const char*> shared;  // per rank: that CTA's host thread's tls_anchor (load_cluster_shared)
  std::vector<bool> exited;         // per rank
  int running = 0;                  // CTAs not yet exited
};
inline thread_local Cluster* cluster = nullptr;  // this host thread's CTA's, while it runs one
// A CTA's static __shared__ objects are thread_local in the emulation (rowwise_emulator's launch.h):
// the same offset from this anchor on every host thread, which is how load_cluster_shared finds another
// CTA's copy.
inline thread_local char tls_anchor;

inline void cluster_event(Cluster& c) {
  c.events.fetch_add(1, std::memory_order_release);
  c.changed.notify_all();
}

// With every fiber of this CTA waiting and none having made progress in a round: waits for an event of
// another CTA of the cluster after `seen` (one it may be waiting for). False where there is no cluster,
// or none came for a minute: a deadlock then.
inline bool other_ctas_moved(uint64_t seen) {
  if (cluster == nullptr) return false;
  std::unique_lock<std::mutex> lock(cluster->mutex);
  return cluster->changed.wait_for(lock, std::chrono::seconds(60), [&] { return cluster->events.load() != seen; });
}

// Returns once done() holds, running the other fibers meanwhile. If a whole round of them passes with
// no progress and done() still false, no thread of this CTA can ever make it true: fails with
// `deadlock`, unless another CTA of its cluster has moved meanwhile (then it tries again). One round is
// enough: between this fiber's yield and its return every other live fiber ran once, and with no
// progress each of them only found its own condition false, so nothing any of them waits on changed.
template <typename Done>
inline void wait_until(Done done, const char* deadlock, const void* p) {
  while (!done()) {
    const uint64_t seen = progress;
    const uint64_t cluster_seen = cluster == nullptr ? 0 : cluster->events.load(std::memory_order_acquire);
    yield();
    if (!done() && progress == seen && !other_ctas_moved(cluster_seen)) fail(deadlock, p);
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

inline thread_local Barrier* block_barrier = nullptr;
inline thread_local Barrier* warp_barriers[kMaxWarpsPerCta];

inline int lane_id() { return thread_rank % 32; }
inline int warp_id() { return thread_rank / 32; }

inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline void __syncwarp() { warp_barriers[warp_id()]->arrive_and_wait(); }

// One 32-bit word per lane of every warp: what a shuffle reads from its source lane.
inline thread_local uint32_t shuffle_slots[kMaxWarpsPerCta][32];

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

// ---- the cluster barrier and distributed shared memory (csrc/common/launch.h's) ------------------

inline thread_local uint64_t cluster_arrival[kMaxThreadsPerCta];  // per thread: the phase it arrived in
inline thread_local bool cluster_arrived[kMaxThreadsPerCta];      // per thread: arrived, not yet waited

inline void cluster_arrive() {
  if (cluster == nullptr) fail("cluster barrier outside a cluster launch", nullptr);
  if (cluster_arrived[thread_rank]) fail("cluster barrier arrived at twice without a wait", cluster);
  cluster_arrived[thread_rank] = true;
  {
    const std::lock_guard<std::mutex> lock(cluster->mutex);
    cluster_arrival[thread_rank] = cluster->phase.load();
    if (++cluster->arrived == cluster->arrivals) {
      cluster->arrived = 0;
      cluster->phase.fetch_add(1, std::memory_order_release);
    }
    cluster_event(*cluster);
  }
  note_progress();
}

inline void cluster_wait() {
  if (cluster == nullptr || !cluster_arrived[thread_rank]) fail("cluster wait without an arrival", cluster);
  wait_until([] { return cluster->phase.load(std::memory_order_acquire) > cluster_arrival[thread_rank]; },
             "cluster barrier never completes (a thread of the cluster waits elsewhere or has exited)", cluster);
  cluster_arrived[thread_rank] = false;
}

// The float at `shared` (a static __shared__ object of this CTA: thread_local here) in CTA `rank` of the
// cluster.
inline float load_cluster_shared(const float* shared, int rank) {
  if (cluster == nullptr || rank < 0 || rank >= cluster->blocks) fail("load_cluster_shared: no such CTA", shared);
  // Every kernel instance's static __shared__ arrays lie in the library's thread-local block (a few MB:
  // the norm backward's hold ~40 KB an instance); a stack or heap object lies much farther away.
  constexpr std::ptrdiff_t kThreadLocalSpan = std::ptrdiff_t{1} << 26;
  const std::ptrdiff_t offset = reinterpret_cast<const char*>(shared) - &tls_anchor;
  if (offset < -kThreadLocalSpan || offset > kThreadLocalSpan) {
    fail("load_cluster_shared of an object not in shared memory", shared);
  }
  const std::lock_guard<std::mutex> lock(cluster->mutex);
  if (cluster->exited[rank]) fail("load_cluster_shared from a CTA that has exited", shared);
  return *reinterpret_cast<const float*>(cluster->shared[rank] + offset);
}

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// ---- the grid ----------------------------------------------------------------------------------

// Runs cta() for `blocks` of a grid of `grid`, one after another, on one fiber per thread of `block`,
// on this host thread. setup() runs on one thread before each CTA starts, cta() on every thread; the
// next CTA starts only when every thread has finished the last one.
inline void run_blocks(const std::vector<uint3>& blocks, dim3 grid, dim3 block, const std::function<void()>& setup,
                       const std::function<void()>& cta) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads % 32 != 0 || threads > kMaxThreadsPerCta) fail("block size not whole warps", nullptr);
  Barrier bar(threads);
  std::deque<Barrier> warp_bars;  // barriers are pointed to: no vector
  for (int w = 0; w < threads / 32; ++w) warp_barriers[w] = &warp_bars.emplace_back(32);
  block_barrier = &bar;
  gridDim = grid;
  blockDim = block;
  const std::function<void(int)> body = [&](int tid) {
    for (const uint3& b : blocks) {
      if (tid == 0) {
        blockIdx = b;
        setup();
      }
      bar.arrive_and_wait();
      cta();
      // Its cluster may still be reading this CTA's shared memory (the kernel's last cluster_wait).
      if (cluster_arrived[tid]) fail("a thread exited with a cluster barrier arrival not waited for", cluster);
      bar.arrive_and_wait();  // the CTA is done before the next one's setup
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

// Runs cta() for every block of `grid`, in order (x fastest), as run_blocks.
inline void run_grid(dim3 grid, dim3 block, const std::function<void()>& setup, const std::function<void()>& cta) {
  std::vector<uint3> blocks;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) blocks.push_back({x, y, z});
    }
  }
  run_blocks(blocks, grid, block, setup, cta);
}

// Runs cta() for every block of a 1-D `grid` of clusters of `cluster_blocks` CTAs: one cluster after
// another, its CTAs at once, each on a host thread of its own (so each has its own thread_local
// __shared__ objects). A CTA's host thread stays until the whole cluster has exited: its shared memory
// outlives every read of it, and a read after its CTA exited fails (load_cluster_shared).
inline void run_clusters(dim3 grid, dim3 block, int cluster_blocks, const std::function<void()>& cta) {
  if (grid.y != 1 || grid.z != 1 || cluster_blocks < 1 || grid.x % cluster_blocks != 0) {
    fail("a cluster grid here is 1-D, a whole number of clusters", nullptr);
  }
  const int threads = static_cast<int>(block.x * block.y * block.z);
  for (unsigned first = 0; first < grid.x; first += cluster_blocks) {
    Cluster c(cluster_blocks, threads);
    c.running = cluster_blocks;
    std::vector<std::thread> hosts;
    for (int rank = 0; rank < cluster_blocks; ++rank) {
      hosts.emplace_back([&, rank] {
        {
          const std::lock_guard<std::mutex> lock(c.mutex);
          c.shared[rank] = &tls_anchor;
        }
        cluster = &c;
        run_blocks({{first + rank, 0, 0}}, grid, block, [] {}, cta);
        std::unique_lock<std::mutex> lock(c.mutex);
        c.exited[rank] = true;
        --c.running;
        cluster_event(c);
        c.changed.wait(lock, [&] { return c.running == 0; });
        cluster = nullptr;
      });
    }
    for (std::thread& t : hosts) t.join();
  }
}

}  // namespace fasttx
