#pragma once
// The consumer warpgroups' turns at issuing wgmma (FlashAttention-3's ping-pong), shared by the forward
// (attention_fwd_sm90.cuh) and the dQ kernel (attention_dq_sm90.cuh): while one warpgroup's products
// occupy the tensor cores, the others run their elementwise work (softmax, dS), so the warpgroups cannot
// fall into step with the tensor cores idle.

#include "attention/sm90/primitives_sm90.cuh"

namespace fasttx {
namespace attn {

// Round robin over kConsumers warpgroups: warpgroup 0's turn 0, warpgroup 1's turn 0, ..., warpgroup
// kConsumers - 1's turn 0, warpgroup 0's turn 1, ..., each warpgroup `turns` turns. Named barrier
// kFirstBarrier + wg opens wg's turn: its own 128 threads wait there (bar.sync) for the previous
// warpgroup's 128 passing the turn (bar.arrive), 256 a phase whatever kConsumers. The first turn has
// nobody to wait for, the last pass nobody to take it, so every phase is complete when the CTA exits; a
// warpgroup cannot pass twice into one phase, as its next pass follows a whole round of turns. One
// consumer has nobody to take turns with: begin and pass are no-ops. Every turn but a warpgroup's first
// waits and every turn but its last passes, so code that knows it is past the first (or before the last)
// calls begin_inner (pass_inner), without the branch on the turn: after such a branch ptxas duplicated
// the code that followed the pass (the dQ kernel's dropout draw: 7 to 14 shuffles more an instance).
template <int kConsumers, int kFirstBarrier>
struct Sm90Turns {
  static_assert(kConsumers >= 1 && kFirstBarrier >= 1 && kFirstBarrier + kConsumers <= 16,
                "turns on named barriers 1 .. 15 (0 is __syncthreads')");
  int wg, turns;
  __device__ __forceinline__ void begin(int turn) const {
    if constexpr (kConsumers > 1) {
      if (kConsumers * turn + wg > 0) begin_inner();
    }
  }
  __device__ __forceinline__ void pass(int turn) const {
    if constexpr (kConsumers > 1) {
      if (kConsumers * turn + wg < kConsumers * turns - 1) pass_inner();
    }
  }
  // begin(turn) for turn > 0, pass(turn) for turn < turns - 1.
  __device__ __forceinline__ void begin_inner() const {
    if constexpr (kConsumers > 1) named_barrier_sync(kFirstBarrier + wg, 2 * 128);
  }
  __device__ __forceinline__ void pass_inner() const {
    if constexpr (kConsumers > 1) named_barrier_arrive(kFirstBarrier + (wg + 1) % kConsumers, 2 * 128);
  }
};

}  // namespace attn
}  // namespace fasttx
