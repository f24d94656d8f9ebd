// rmsnorm.cuh: parameter-free RMSNorm, forward and backward (docs/model.md#rmsnorm; CPU twin:
// llmc/cpu/rmsnorm.h, same names and argument order plus the stream).
//
//   forward:  y = x * r,  r = 1/sqrt(mean(x^2) + eps), eps = 2^-23;  out = bf16(y), rstd = r (fp32)
//   backward: dinp += r * (G - y * <G, y> / C)     (accumulates, in bf16: the residual stream's
//             gradient; dinp is read, the fp32 update added, and the sum rounded to bf16 once)
//
// Strategy: one warp per row, 8 rows per 256-thread block. A row (C = 768..2048 in the models) is
// only a few KB, so a warp streams it with 16-byte loads (8 bf16 per lane per instruction, 512 B
// per warp instruction) and reduces with shuffles only: no shared memory, no __syncthreads, and
// warps of the same block never wait on each other. The row is read twice (reduction, then the
// elementwise pass); the second read hits L1/L2 since the warp just touched it. Statistics and the
// elementwise math are fp32; only the stored activations are bf16 (docs/model.md#precision).
// When C is not a multiple of 8 (or a pointer is not 16-byte aligned) the same kernels run with
// W = 1: scalar accesses, lanes striding by 32 elements, still coalesced.
#pragma once
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/reduce.cuh"

// 2^-23 exactly, the eps of the model's RMSNorm in every precision (llmc/cpu/rmsnorm.h)
#define LLMC_RMSNORM_EPS_F 1.1920928955078125e-07f

constexpr int RMSNORM_BLOCK = 256;  // 8 warps = 8 rows per block

template <int W>
__global__ void __launch_bounds__(RMSNORM_BLOCK)
rmsnorm_forward_kernel(floatX* out, float* rstd, const floatX* inp, int N, int C) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;  // whole warp leaves together; no block-wide barrier follows
    const floatX* x = inp + (size_t)row * C;
    floatX* y = out + (size_t)row * C;

    float ss = 0.0f;
    for (int c = lane * W; c < C; c += WARP_SIZE * W) {
        PackX<W> p = load_pack<floatX, W>(x + c);
        #pragma unroll
        for (int k = 0; k < W; k++) { float f = llmc::to_float(p.v[k]); ss += f * f; }
    }
    ss = warp_reduce_sum(ss);
    const float r = rsqrtf(ss / (float)C + LLMC_RMSNORM_EPS_F);

    for (int c = lane * W; c < C; c += WARP_SIZE * W) {
        PackX<W> p = load_pack<floatX, W>(x + c);
        PackX<W> o;
        #pragma unroll
        for (int k = 0; k < W; k++) o.v[k] = llmc::to_floatX(llmc::to_float(p.v[k]) * r);
        store_pack<floatX, W>(y + c, o);
    }
    if (lane == 0) rstd[row] = r;
}

template <int W>
__global__ void __launch_bounds__(RMSNORM_BLOCK)
rmsnorm_backward_kernel(floatX* dinp, const floatX* dout, const floatX* out, const float* rstd, int N, int C) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;
    const floatX* g = dout + (size_t)row * C;
    const floatX* y = out + (size_t)row * C;
    floatX* dx = dinp + (size_t)row * C;

    float dot = 0.0f;
    for (int c = lane * W; c < C; c += WARP_SIZE * W) {
        PackX<W> pg = load_pack<floatX, W>(g + c);
        PackX<W> py = load_pack<floatX, W>(y + c);
        #pragma unroll
        for (int k = 0; k < W; k++) dot += llmc::to_float(pg.v[k]) * llmc::to_float(py.v[k]);
    }
    dot = warp_reduce_sum(dot);
    const float m = dot / (float)C;
    const float r = rstd[row];

    for (int c = lane * W; c < C; c += WARP_SIZE * W) {
        PackX<W> pg = load_pack<floatX, W>(g + c);
        PackX<W> py = load_pack<floatX, W>(y + c);
        PackX<W> pd = load_pack<floatX, W>(dx + c);
        #pragma unroll
        for (int k = 0; k < W; k++) {
            float upd = r * (llmc::to_float(pg.v[k]) - llmc::to_float(py.v[k]) * m);
            pd.v[k] = llmc::to_floatX(llmc::to_float(pd.v[k]) + upd);
        }
        store_pack<floatX, W>(dx + c, pd);
    }
}

// out(N,C) = rms(inp) (bf16), rstd(N) = r (fp32); both overwritten.
inline void rmsnorm_forward(floatX* out, float* rstd, const floatX* inp, int N, int C, cudaStream_t stream) {
    LLMC_CHECK(N >= 0 && C > 0, "rmsnorm_forward: bad shape N=%d C=%d", N, C);
    if (N == 0) return;
    const int grid = CEIL_DIV(N, RMSNORM_BLOCK / WARP_SIZE);
    if (C % XPACK == 0 && aligned16(out) && aligned16(inp)) {
        LAUNCH(rmsnorm_forward_kernel<XPACK>, grid, RMSNORM_BLOCK, 0, stream, out, rstd, inp, N, C);
    } else {
        LAUNCH(rmsnorm_forward_kernel<1>, grid, RMSNORM_BLOCK, 0, stream, out, rstd, inp, N, C);
    }
}

// dinp(N,C) += rstd * (dout - out * <dout, out> / C)   (accumulates in bf16)
inline void rmsnorm_backward(floatX* dinp, const floatX* dout, const floatX* out, const float* rstd, int N, int C,
                             cudaStream_t stream) {
    LLMC_CHECK(N >= 0 && C > 0, "rmsnorm_backward: bad shape N=%d C=%d", N, C);
    if (N == 0) return;
    const int grid = CEIL_DIV(N, RMSNORM_BLOCK / WARP_SIZE);
    if (C % XPACK == 0 && aligned16(dinp) && aligned16(dout) && aligned16(out)) {
        LAUNCH(rmsnorm_backward_kernel<XPACK>, grid, RMSNORM_BLOCK, 0, stream, dinp, dout, out, rstd, N, C);
    } else {
        LAUNCH(rmsnorm_backward_kernel<1>, grid, RMSNORM_BLOCK, 0, stream, dinp, dout, out, rstd, N, C);
    }
}
