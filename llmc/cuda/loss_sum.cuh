// loss_sum.cuh: the two small kernels the GPU trainer needs around the model's ops.
//
//   loss_sum:         out[0] = sum_i losses[i] in double (device), one micro-batch's summed loss.
//                     The trainer divides by the valid-target count on the host, in the same order
//                     as the CPU build (docs/model.md#softcap-loss), after the step: each
//                     micro-batch writes its own slot, so nothing is read back inside a step.
//                     One block: threads stride over the rows in fixed order, then the block tree
//                     (reduce.cuh), so the sum is bitwise the same on every run. N is one
//                     micro-batch's rows (B*T, at most ~10^5): one block reads 256 KB in microseconds.
//   convert_to_floatX: dst = floatX(src), the bf16 copy of the fp32 master weights that the
//                     forward's matmuls read (written by the optimizer after each step; this
//                     kernel makes it after the weights are set from the host: init, resume).
// The CPU references: op::loss_sum in llmc/ops_cpu.h (a double loop in index order) and the
// host conversion floatX(float) (round to nearest even). test/sim/test_loss_sum.cu checks both.
#pragma once
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/reduce.cuh"

constexpr int LOSS_SUM_BLOCK = 1024;

__global__ void __launch_bounds__(LOSS_SUM_BLOCK)
loss_sum_kernel(double* out, const float* losses, int N) {
    STATIC_SMEM(double[32], s_red);
    double acc = 0.0;
    for (int i = threadIdx.x; i < N; i += blockDim.x) acc += (double)losses[i];
    acc = block_reduce_sum(acc, s_red);
    if (threadIdx.x == 0) *out = acc;
}

// *out (device double) = sum of losses[0..N) (overwrite)
inline void loss_sum(double* out, const float* losses, int N, cudaStream_t stream) {
    LLMC_CHECK(N >= 0, "loss_sum: bad N=%d", N);
    LAUNCH(loss_sum_kernel, 1, LOSS_SUM_BLOCK, 0, stream, out, losses, N);
}

constexpr int CONVERT_BLOCK = 256;

__global__ void __launch_bounds__(CONVERT_BLOCK)
convert_to_floatX_kernel(floatX* dst, const float* src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = (floatX)src[i];
}

// dst[0..n) = floatX(src[0..n)) (overwrite; device memory)
inline void convert_to_floatX(floatX* dst, const float* src, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    const unsigned grid = (unsigned)std::min<size_t>(CEIL_DIV(n, (size_t)CONVERT_BLOCK), 4096);
    LAUNCH(convert_to_floatX_kernel, grid, CONVERT_BLOCK, 0, stream, dst, src, n);
}
