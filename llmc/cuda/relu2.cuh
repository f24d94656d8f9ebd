// relu2.cuh: the MLP nonlinearity, ReLU squared, forward and backward (docs/model.md#mlp; CPU
// twin: llmc/cpu/relu2.h, same names and argument order plus the stream).
//
//   forward:  out = relu(x)^2                 (bf16, overwrite)
//   backward: dinp = 2 relu(x) G              (bf16, overwrite; dinp == dout allowed)
//   relu2_backward_recompute: the backward that also writes act = relu(x)^2 in the same pass
//
// What is stored: only the pre-activation x (the c_fc output, fc_pre), not relu(x)^2 (an (L, N, 4C)
// tensor, as big as fc_pre). The backward needs relu(x)^2 once more, as the input of c_proj's
// weight gradient. With the matmul's two products issued separately, the MLP backward is:
//   matmul_backward(dfc, nullptr, dx, ...)                dfc = dx W_proj  (needs no activation)
//   relu2_backward_recompute(dfc, act, dfc, fc_pre, ...)   one pass over fc_pre and dfc: dfc in
//                                                          place, act = relu(fc_pre)^2 into a
//                                                          scratch buffer shared by all layers
//   matmul_backward(nullptr, dW_proj, dx, act, ...)        dW_proj += dx^T act
// so fc_pre is read once in the backward (8 bytes per element moved, against 10 for a separate
// recompute pass plus relu2_backward).
//
// Strategy: purely elementwise and memory-bound, so one thread per 16-byte pack (8 bf16), a flat
// grid over the n elements: every load and store is a full 128-bit access. When n is not a
// multiple of 8 or a pointer is not 16-byte aligned the same kernels run with W = 1.
// Exactness: x and G are bf16 (8 significant bits), so relu(x)^2 and 2 relu(x) G are exact in
// fp32 (<= 16 bits; outside the fp32 denormal range that the GPU flushes); the single rounding is
// the final one to bf16. The results are therefore bitwise those of the fp32 CPU op rounded to bf16
// (test_relu2 checks exactly that).
#pragma once
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/reduce.cuh"

constexpr int RELU2_BLOCK = 256;

template <int W>
__global__ void __launch_bounds__(RELU2_BLOCK)
relu2_forward_kernel(floatX* out, const floatX* inp, size_t npacks) {
    const size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= npacks) return;
    PackX<W> x = load_pack<floatX, W>(inp + p * W);
    PackX<W> y;
    #pragma unroll
    for (int k = 0; k < W; k++) {
        const float xf = llmc::to_float(x.v[k]);
        const float r = xf > 0.0f ? xf : 0.0f;  // as the CPU op: -0 and NaN give +0
        y.v[k] = llmc::to_floatX(r * r);
    }
    store_pack<floatX, W>(out + p * W, y);
}

// act: relu(inp)^2 is also written there (nullptr: not)
template <int W>
__global__ void __launch_bounds__(RELU2_BLOCK)
relu2_backward_kernel(floatX* dinp, floatX* act, const floatX* dout, const floatX* inp, size_t npacks) {
    const size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= npacks) return;
    // dout is read before dinp is written, by this thread only: dinp == dout is safe
    PackX<W> x = load_pack<floatX, W>(inp + p * W);
    PackX<W> g = load_pack<floatX, W>(dout + p * W);
    PackX<W> d, a;
    #pragma unroll
    for (int k = 0; k < W; k++) {
        const float xf = llmc::to_float(x.v[k]);
        const float r = xf > 0.0f ? xf : 0.0f;
        d.v[k] = llmc::to_floatX(2.0f * r * llmc::to_float(g.v[k]));
        a.v[k] = llmc::to_floatX(r * r);
    }
    store_pack<floatX, W>(dinp + p * W, d);
    if (act) store_pack<floatX, W>(act + p * W, a);
}

// out(n) = relu(inp)^2 (overwrite)
inline void relu2_forward(floatX* out, const floatX* inp, long n, cudaStream_t stream) {
    LLMC_CHECK(n >= 0, "relu2_forward: bad n=%ld", n);
    if (n == 0) return;
    if (n % XPACK == 0 && aligned16(out) && aligned16(inp)) {
        const size_t np = (size_t)n / XPACK;
        LAUNCH(relu2_forward_kernel<XPACK>, (unsigned)CEIL_DIV(np, (size_t)RELU2_BLOCK), RELU2_BLOCK, 0, stream, out, inp, np);
    } else {
        LAUNCH(relu2_forward_kernel<1>, (unsigned)CEIL_DIV((size_t)n, (size_t)RELU2_BLOCK), RELU2_BLOCK, 0, stream, out,
               inp, (size_t)n);
    }
}

namespace llmc {
inline void relu2_backward_launch(floatX* dinp, floatX* act, const floatX* dout, const floatX* inp, long n,
                                  cudaStream_t stream) {
    if (n == 0) return;
    if (n % XPACK == 0 && aligned16(dinp) && aligned16(dout) && aligned16(inp) && (act == nullptr || aligned16(act))) {
        const size_t np = (size_t)n / XPACK;
        LAUNCH(relu2_backward_kernel<XPACK>, (unsigned)CEIL_DIV(np, (size_t)RELU2_BLOCK), RELU2_BLOCK, 0, stream, dinp, act,
               dout, inp, np);
    } else {
        LAUNCH(relu2_backward_kernel<1>, (unsigned)CEIL_DIV((size_t)n, (size_t)RELU2_BLOCK), RELU2_BLOCK, 0, stream, dinp,
               act, dout, inp, (size_t)n);
    }
}
}  // namespace llmc

// dinp(n) = 2 relu(inp) * dout (overwrite; dinp == dout allowed)
inline void relu2_backward(floatX* dinp, const floatX* dout, const floatX* inp, long n, cudaStream_t stream) {
    LLMC_CHECK(n >= 0, "relu2_backward: bad n=%ld", n);
    llmc::relu2_backward_launch(dinp, nullptr, dout, inp, n, stream);
}

// dinp(n) = 2 relu(inp) * dout (overwrite; dinp == dout allowed) and act(n) = relu(inp)^2 (overwrite;
// must alias none of the others), in one pass over inp and dout.
inline void relu2_backward_recompute(floatX* dinp, floatX* act, const floatX* dout, const floatX* inp, long n,
                                     cudaStream_t stream) {
    LLMC_CHECK(n >= 0, "relu2_backward_recompute: bad n=%ld", n);
    LLMC_CHECK(act != nullptr && act != dinp && act != dout && act != inp,
               "relu2_backward_recompute: act must be a separate buffer");
    llmc::relu2_backward_launch(dinp, act, dout, inp, n, stream);
}
