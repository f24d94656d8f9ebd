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
// 3. Deterministic grid-wide sums, for the gradients of scalar and small parameters (lambdas,
//    gates) that are sums over every token: no float atomics (docs/model.md#determinism). A kernel runs a FIXED
//    number of blocks P (reduce_grid: a function of the problem size only, never of the GPU or of
//    timing), each block sums its fixed share in a fixed order and writes its K partial sums to
//    scratch[k * P + block]; reduce_partials then adds, for each k, the P partials in a fixed
//    tree order to the destination (+=). The result is bitwise the same on every run.
//    Scratch is the caller's (reduce_scratch_floats(K) floats, allocated once, reusable by every
//    op: each op's two launches are ordered on its stream).
#pragma once
#include <cstdint>
#include <algorithm>
#include <cstring>
#include "llmc/cuda/common.cuh"

// ---------------------------------------------------------------------------------------------
// reductions

__device__ __forceinline__ float warp_reduce_sum(float v) {
    #pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// fp64 variant (the global gradient norm accumulates in double)
__device__ __forceinline__ double warp_reduce_sum(double v) {
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

// ---------------------------------------------------------------------------------------------
// deterministic grid-wide sums

#ifndef LLMC_SIM
constexpr int REDUCE_MAX_BLOCKS = 1024;  // P <= this: enough blocks to fill an H100 (132 SMs x 8)
#else
// SIM runs blocks one after another on one core (and the TSan flavor ~100x slower): a smaller cap
// runs the same code (grid-stride loops, P partials summed in order) on 1/32 of the work in the
// tests that size themselves past it. Results differ from the GPU's only in how partial sums group.
constexpr int REDUCE_MAX_BLOCKS = 32;
#endif
constexpr int REDUCE_BLOCK = 256;        // threads of the final (partials) reduction

// floats of scratch an op with K partial sums needs
inline size_t reduce_scratch_floats(int K) { return (size_t)K * REDUCE_MAX_BLOCKS; }

// number of blocks P for `work` units of which one block handles `per_block` per sweep
inline int reduce_grid(size_t work, int per_block) {
    const size_t p = CEIL_DIV(work, (size_t)per_block);
    return (int)std::max<size_t>(1, std::min<size_t>(p, REDUCE_MAX_BLOCKS));
}

// Sum of v over the whole block, returned to every thread (bitwise the same value in all: every
// warp folds the same per-warp sums in the same butterfly). blockDim.x must be a multiple of 32.
// s: 32 floats of shared memory. Every thread of the block must call it (it has barriers).
__device__ __forceinline__ float block_reduce_sum(float v, float* s) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int nwarps = blockDim.x / WARP_SIZE;
    v = warp_reduce_sum(v);
    __syncthreads();  // s may still be read by the threads of a previous call
    if (lane == 0) s[warp] = v;
    __syncthreads();
    return warp_reduce_sum(lane < nwarps ? s[lane] : 0.0f);
}

// fp64 variant; s: 32 doubles of shared memory
__device__ __forceinline__ double block_reduce_sum(double v, double* s) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int nwarps = blockDim.x / WARP_SIZE;
    v = warp_reduce_sum(v);
    __syncthreads();
    if (lane == 0) s[warp] = v;
    __syncthreads();
    return warp_reduce_sum(lane < nwarps ? s[lane] : 0.0);
}

// grid (Ka + Kb): block k adds sum_p partials[k * P + p] to out_a[k] (k < Ka) or out_b[k - Ka].
// Each thread sums a strided subset in order, then the block tree: a fixed order.
__global__ void __launch_bounds__(REDUCE_BLOCK)
reduce_partials_kernel(float* out_a, int Ka, float* out_b, const float* partials, int P) {
    STATIC_SMEM(float[32], s_red);
    const int k = blockIdx.x;
    float acc = 0.0f;
    for (int p = threadIdx.x; p < P; p += blockDim.x) acc += partials[(size_t)k * P + p];
    acc = block_reduce_sum(acc, s_red);
    if (threadIdx.x == 0) {
        float* dst = k < Ka ? out_a + k : out_b + (k - Ka);
        *dst += acc;
    }
}

// out_a[0..Ka) += the first Ka sums, out_b[0..Kb) += the next Kb (out_b may be null if Kb == 0)
inline void reduce_partials(float* out_a, int Ka, float* out_b, int Kb, const float* partials, int P,
                            cudaStream_t stream) {
    LLMC_CHECK(Ka >= 0 && Kb >= 0 && P > 0 && P <= REDUCE_MAX_BLOCKS, "reduce_partials: bad Ka=%d Kb=%d P=%d", Ka, Kb, P);
    if (Ka + Kb == 0) return;
    LAUNCH(reduce_partials_kernel, Ka + Kb, REDUCE_BLOCK, 0, stream, out_a, Ka, out_b, partials, P);
}
