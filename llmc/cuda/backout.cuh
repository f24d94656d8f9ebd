// backout.cuh: subtract a learned multiple of the middle layer's output before the final norm,
// forward and backward (docs/model.md#backout; CPU twin: llmc/cpu/backout.h, same
// names and argument order plus scratch and the stream).
//
//   forward:  out = x - lambda * xmid              (bf16, overwrite; out may alias x)
//   backward: dx = G                               (nothing to do: the caller passes G on)
//             dxmid += -lambda G                   (bf16, accumulates: read, add in fp32, round)
//             dlambda += -sum G xmid               (fp32 parameter gradient, accumulates)
//
// lambda is the fp32 master value on the device (backout_lambda), read by pointer.
// Strategy as residual.cuh: 16-byte packs (W = 1 when n % 8 != 0 or a pointer is misaligned); the
// forward one thread per pack; the backward a fixed grid of P blocks striding over the packs, with
// per-block partial sums of G xmid and reduce_partials adding them in a fixed order
// (deterministic, no float atomics).
#pragma once
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/reduce.cuh"

constexpr int BACKOUT_BLOCK = 256;

template <int W>
__global__ void __launch_bounds__(BACKOUT_BLOCK)
backout_forward_kernel(floatX* out, const floatX* x, const floatX* xmid, const float* lambda, size_t npacks) {
    const size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= npacks) return;
    const float lam = *lambda;
    PackX<W> px = load_pack<floatX, W>(x + p * W);
    PackX<W> pm = load_pack<floatX, W>(xmid + p * W);
    PackX<W> o;
    #pragma unroll
    for (int k = 0; k < W; k++) o.v[k] = llmc::to_floatX(llmc::to_float(px.v[k]) - lam * llmc::to_float(pm.v[k]));
    store_pack<floatX, W>(out + p * W, o);
}

// grid P (fixed by n); partials[blockIdx.x] = this block's sum of G xmid (the sign is applied at the end)
template <int W>
__global__ void __launch_bounds__(BACKOUT_BLOCK)
backout_backward_kernel(floatX* dxmid, float* partials, const floatX* dout, const floatX* xmid, const float* lambda,
                        size_t npacks) {
    STATIC_SMEM(float[32], s_red);
    const float lam = *lambda;
    float s = 0.0f;
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < npacks; p += (size_t)gridDim.x * blockDim.x) {
        PackX<W> pg = load_pack<floatX, W>(dout + p * W);
        PackX<W> pm = load_pack<floatX, W>(xmid + p * W);
        PackX<W> pd = load_pack<floatX, W>(dxmid + p * W);
        #pragma unroll
        for (int k = 0; k < W; k++) {
            const float g = llmc::to_float(pg.v[k]);
            s += g * llmc::to_float(pm.v[k]);
            pd.v[k] = llmc::to_floatX(llmc::to_float(pd.v[k]) - lam * g);
        }
        store_pack<floatX, W>(dxmid + p * W, pd);
    }
    s = block_reduce_sum(s, s_red);
    if (threadIdx.x == 0) partials[blockIdx.x] = -s;
}

// out(n) = x - lambda*xmid (overwrite; out may alias x). lambda: device fp32 scalar.
inline void backout_forward(floatX* out, const floatX* x, const floatX* xmid, const float* lambda, long n,
                            cudaStream_t stream) {
    LLMC_CHECK(n >= 0, "backout_forward: bad n=%ld", n);
    if (n == 0) return;
    if (n % XPACK == 0 && aligned16(out) && aligned16(x) && aligned16(xmid)) {
        const size_t np = (size_t)n / XPACK;
        LAUNCH(backout_forward_kernel<XPACK>, (unsigned)CEIL_DIV(np, (size_t)BACKOUT_BLOCK), BACKOUT_BLOCK, 0, stream, out, x,
               xmid, lambda, np);
    } else {
        LAUNCH(backout_forward_kernel<1>, (unsigned)CEIL_DIV((size_t)n, (size_t)BACKOUT_BLOCK), BACKOUT_BLOCK, 0, stream,
               out, x, xmid, lambda, (size_t)n);
    }
}

// partial sums: K = 1 (dlambda)
inline constexpr int BACKOUT_PARTIALS = 1;

// dxmid += -lambda*dout, *dlambda += -sum dout*xmid. scratch: reduce_scratch_floats(BACKOUT_PARTIALS).
inline void backout_backward(floatX* dxmid, float* dlambda, const floatX* dout, const floatX* xmid, const float* lambda,
                             long n, float* scratch, cudaStream_t stream) {
    LLMC_CHECK(n >= 0, "backout_backward: bad n=%ld", n);
    if (n == 0) return;
    const bool vec = n % XPACK == 0 && aligned16(dxmid) && aligned16(dout) && aligned16(xmid);
    const size_t np = vec ? (size_t)n / XPACK : (size_t)n;
    const int P = reduce_grid(np, BACKOUT_BLOCK);
    if (vec) {
        LAUNCH(backout_backward_kernel<XPACK>, P, BACKOUT_BLOCK, 0, stream, dxmid, scratch, dout, xmid, lambda, np);
    } else {
        LAUNCH(backout_backward_kernel<1>, P, BACKOUT_BLOCK, 0, stream, dxmid, scratch, dout, xmid, lambda, np);
    }
    reduce_partials(dlambda, 1, nullptr, 0, scratch, P, stream);
}
