// global_norm.cuh: the squared L2 norm of the whole (fp32) gradient buffer, for the logged
// gradient norm (docs/model.md#optimizer: computed for logging only, after averaging, in fp32/fp64). There is
// no separate CPU op: the CPU trainer sums (double)g*g over the buffer in train_gpt.cu, which is
// the reference here.
//
//   out[0] = fp32( sum_i (double)g_i^2 )        (overwrite; the caller takes the square root, or
//                                                first adds the squares of other ranks' shards)
//
// Deterministic two-pass reduction, no atomics: pass 1 runs a FIXED grid of P blocks (reduce.cuh:
// P depends on n only), threads stride over 16-byte float4 packs (W = 1 when n % 4 != 0 or the
// pointer is misaligned) and accumulate the squares in double (each product of two floats is exact
// in double, so the only rounding is the sum's); each block tree-reduces its threads' sums and
// writes one double partial. Pass 2 is one block that adds the P partials in a fixed order and
// rounds once to fp32. The result is bitwise the same on every run and, the sum being in double,
// within one fp32 rounding of the exact value for any realistic n. Memory-bound: 4 bytes per
// element, read once; the fp64 adds (one per element) are far below the H100's fp64 rate.
#pragma once
#include <cstdint>
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/reduce.cuh"

constexpr int GLOBAL_NORM_BLOCK = 256;

template <int W>
__global__ void __launch_bounds__(GLOBAL_NORM_BLOCK)
global_norm_partials_kernel(double* partials, const float* g, size_t npacks) {
    STATIC_SMEM(double[32], s_red);
    double acc = 0.0;
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < npacks; p += (size_t)gridDim.x * blockDim.x) {
        Pack<float, W> v = load_pack_cs<float, W>(g + p * W);
        #pragma unroll
        for (int k = 0; k < W; k++) acc += (double)v.v[k] * (double)v.v[k];
    }
    acc = block_reduce_sum(acc, s_red);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(GLOBAL_NORM_BLOCK)
global_norm_final_kernel(float* out, const double* partials, int P) {
    STATIC_SMEM(double[32], s_red);
    double acc = 0.0;
    for (int p = threadIdx.x; p < P; p += blockDim.x) acc += partials[p];
    acc = block_reduce_sum(acc, s_red);
    if (threadIdx.x == 0) *out = (float)acc;
}

// floats of scratch global_norm_squared needs (P doubles)
inline size_t global_norm_scratch_floats() { return reduce_scratch_floats(2); }

// out[0] = sum of g[0..n)^2 (device fp32, overwritten). scratch: global_norm_scratch_floats()
// floats of device memory, 8-byte aligned (cudaMalloc's is).
inline void global_norm_squared(float* out, const float* g, size_t n, float* scratch, cudaStream_t stream) {
    LLMC_CHECK((reinterpret_cast<uintptr_t>(scratch) & 7u) == 0, "global_norm_squared: scratch must be 8-byte aligned");
    double* partials = reinterpret_cast<double*>(scratch);
    if (n == 0) {
        cudaCheck(cudaMemsetAsync(out, 0, sizeof(float), stream));
        return;
    }
    const bool vec = n % 4 == 0 && aligned16(g);
    const size_t np = vec ? n / 4 : n;
    const int P = reduce_grid(np, GLOBAL_NORM_BLOCK);
    if (vec) {
        LAUNCH(global_norm_partials_kernel<4>, P, GLOBAL_NORM_BLOCK, 0, stream, partials, g, np);
    } else {
        LAUNCH(global_norm_partials_kernel<1>, P, GLOBAL_NORM_BLOCK, 0, stream, partials, g, np);
    }
    LAUNCH(global_norm_final_kernel, 1, GLOBAL_NORM_BLOCK, 0, stream, out, partials, P);
}
