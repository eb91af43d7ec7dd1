#pragma once
// The shared-memory layout of the sm_90a attention tiles and the wgmma matrix descriptor that points
// into it. Plain C++ (host and device), shared by the real primitives (primitives_sm90.cuh), the host
// emulator's and its tests, which check it against an independent statement of the PTX layout.
//
// 128-byte swizzle (TMA CU_TENSOR_MAP_SWIZZLE_128B, wgmma descriptor mode 1): a tile is stored as rows
// of 128 bytes (64 16-bit elements; wider rows are split into column blocks of 64 elements, one after
// the other); 16-byte chunk c of a row at shared address A (A % 128 == 0) lives at chunk
// c ^ ((A / 128) % 8): the XOR takes address bits [7, 10) into bits [4, 7), so tiles start on
// 1024-byte boundaries (8 rows, one "atom") for the pattern to start at row 0.
//
// wgmma matrix descriptor (PTX ISA "Matrix Descriptor Format"), 64 bits:
//   [0, 14)  start address >> 4 (shared state space)
//   [16, 30) leading dimension byte offset >> 4 (LBO)
//   [32, 46) stride dimension byte offset >> 4 (SBO)
//   [49, 52) base offset (0: every start here has address bits [7, 10) equal to its atom's)
//   [62, 64) swizzle: 0 none, 1 128B, 2 64B, 3 32B
// With 128B swizzle and 16-bit elements (PTX "Shared Memory Matrix Layout", canonical layouts):
//   K-major (k contiguous): element (mn, k), k < 16, at start + (mn % 8) 128 + (mn / 8) SBO + 2 k,
//     then swizzled; LBO unused (the 16 k of one wgmma are 32 bytes of one row). A k16 step moves
//     the start by 32 bytes inside the atom.
//   MN-major (mn contiguous): element (mn, k) at start + 2 (mn % 64) + (mn / 64) LBO + (k % 8) 128
//     + (k / 8) SBO, then swizzled. A k16 step moves the start by 2 SBO.

#include <cstdint>

namespace fasttx {
namespace attn {

constexpr int kSwizzleBytes = 128;     // one swizzled row
constexpr int kSwizzleAtomBytes = 1024;  // 8 rows: the period of the XOR pattern
constexpr int kSwizzleCols = kSwizzleBytes / 2;  // 16-bit columns of one swizzled row: a TMA box's width
constexpr uint64_t kDescSwizzle128B = 1;

// Bytes from shared address `addr` to the next 1024-byte boundary (0 on one): the swizzle pattern is a
// function of the shared address, so each kernel's tiles start there, past this padding.
#if defined(__CUDACC__)
__host__ __device__
#endif
constexpr uint32_t swizzle_pad(uint32_t addr) {
  return (kSwizzleAtomBytes - addr % kSwizzleAtomBytes) % kSwizzleAtomBytes;
}

// Descriptor of a 128B-swizzled operand at shared address `addr` (16-byte aligned), LBO and SBO in bytes.
#if defined(__CUDACC__)
__host__ __device__
#endif
constexpr uint64_t smem_desc_128b(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr >> 4) & 0x3fff) | static_cast<uint64_t>((lbo >> 4) & 0x3fff) << 16 |
         static_cast<uint64_t>((sbo >> 4) & 0x3fff) << 32 | kDescSwizzle128B << 62;
}

}  // namespace attn
}  // namespace fasttx
