// reduce.cuh: the small building blocks the row-wise kernels share.
//
// 1. Warp reductions (sum, max) over fp32 with __shfl_xor_sync butterflies: every lane ends with
//    the same value (no broadcast needed) and the combination order is fixed by the lane pattern,
//    so results are bitwise reproducible run to run. (Block-level merges are op-specific and live
//    in the kernels, e.g. the (max, sum) pairs of crossentropy.cuh.)
// 2. Pack<E, W>: W consecutive elements moved as one memory transaction. With W*sizeof(E) == 16
//    (8 bf16, 4 fp32) this is the 128-bit load/store (ld.global.v4) that lets a warp move 512
//    contiguous bytes per instruction; with W == 1 it is a plain scalar access. Kernels are templated
//    on W and their launchers pick W = 16/sizeof(E) when the row length is a multiple of W and the
//    pointers are 16-byte aligned, W = 1 otherwise, so the same source serves both paths (and the
//    tests run both).
//    load_pack_cs / store_pack_cs are the "streaming" variants (__ldcs/__stcs, evict-first) for
//    data that is touched exactly once; under SIM they are plain accesses.
#pragma once
#include <cstdint>
#include <cstring>
#include "llmc/cuda/common.cuh"

// ---------------------------------------------------------------------------------------------
// reductions

__device__ __forceinline__ float warp_reduce_sum(float v) {
    #pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_reduce_max(float v) {
    #pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// ---------------------------------------------------------------------------------------------
// packed (vector) memory access

template <typename E, int W>
struct alignas((sizeof(E) * W) < 16 ? (sizeof(E) * W) : 16) Pack {
    static constexpr int size = W;
    E v[W];
};

template <int W>
using PackX = Pack<floatX, W>;

// The row length / pointer conditions under which the W-wide path is legal.
template <typename E>
inline bool aligned16(const E* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// A vector access must be aligned to its size (the GPU faults with "misaligned address"); SIM checks
// it here, so a bad pointer fails in every SIM flavor, not only where UBSan runs.
template <typename E, int W>
__device__ __forceinline__ void check_pack_alignment(const E* p, const char* what) {
#ifdef LLMC_SIM
    if (reinterpret_cast<uintptr_t>(p) % alignof(Pack<E, W>) != 0)
        LLMC_FAIL("%s of %zu bytes at %p: the address is not %zu-byte aligned (misaligned address on a GPU)", what,
                  sizeof(Pack<E, W>), (const void*)p, alignof(Pack<E, W>));
#endif
}

template <typename E, int W>
__device__ __forceinline__ Pack<E, W> load_pack(const E* p) {
    check_pack_alignment<E, W>(p, "vector load");
    return *reinterpret_cast<const Pack<E, W>*>(p);
}

template <typename E, int W>
__device__ __forceinline__ void store_pack(E* p, const Pack<E, W>& x) {
    check_pack_alignment<E, W>(p, "vector store");
    *reinterpret_cast<Pack<E, W>*>(p) = x;
}

#if defined(__CUDACC__)
// Streaming (evict-first) variants through the 16-byte vector type the intrinsics take.
template <typename E, int W>
__device__ __forceinline__ Pack<E, W> load_pack_cs(const E* p) {
    if constexpr (sizeof(E) * W == 16) {
        int4 raw = __ldcs(reinterpret_cast<const int4*>(p));
        Pack<E, W> r;
        static_assert(sizeof(r) == sizeof(raw), "Pack must be 16 bytes here");
        memcpy(&r, &raw, 16);
        return r;
    } else {
        return load_pack<E, W>(p);
    }
}
template <typename E, int W>
__device__ __forceinline__ void store_pack_cs(E* p, const Pack<E, W>& x) {
    if constexpr (sizeof(E) * W == 16) {
        int4 raw;
        memcpy(&raw, &x, 16);
        __stcs(reinterpret_cast<int4*>(p), raw);
    } else {
        store_pack<E, W>(p, x);
    }
}
#else
template <typename E, int W>
inline Pack<E, W> load_pack_cs(const E* p) { return load_pack<E, W>(p); }
template <typename E, int W>
inline void store_pack_cs(E* p, const Pack<E, W>& x) { store_pack<E, W>(p, x); }
#endif
