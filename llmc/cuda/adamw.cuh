// adamw.cuh: the AdamW update of one parameter range on the GPU, fused into one pass
// (docs/model.md#adamw; CPU twin: llmc::adamw_update in llmc/adamw.h, same argument order plus
// the bf16 copy and the stream).
//
//   1. p <- p * (1 - lr*wd)                                   decoupled weight decay, first
//   2. m <- m + (1-b1)*(g - m);  v <- v + (1-b2)*(g*g - v)
//   3. p <- p - (lr / (1 - b1^t)) * m / (sqrt(v / (1 - b2^t)) + eps)
//   4. param_bf16 <- bf16(p)       (the GEMM / embedding operand copy; skipped if null)
//
// Precision (docs/model.md#precision): master weights, gradients and both moments are fp32; the
// bf16 copy is refreshed in the same pass, so the weights are read and written exactly once per
// step (a separate cast kernel would re-read the fp32 weights). The per-tensor scalars (1 - lr*wd,
// 1 - b1, 1 - b2, the bias corrections, lr / (1 - b1^t)) are computed on the host exactly as the
// CPU op computes them (fp32, glibc powf) and passed in. In the element loop the division and the
// square root are the IEEE-rounded __fdiv_rn / __fsqrt_rn (not the approximate ones --use_fast_math
// would substitute), so the kernel computes the CPU op's formula; the only difference left is that
// nvcc may contract a multiply and an add into an FMA (one rounding fewer, <= 1 ulp per operation).
//
// FP32 build (-DLLMC_FP32): the copy is floatX = fp32, i.e. p itself (16-byte stores; the 4-wide
// path then needs param_bf16 16-byte aligned).
// Strategy: elementwise and memory-bound: one thread per 4 elements (16-byte fp32 accesses for p,
// g, m, v; an 8-byte store for the bf16 copy), W = 1 when n % 4 != 0 or a pointer is misaligned.
// 30 bytes moved per element (read p g m v, write p m v: 4 bytes each; 2 bytes of bf16). One call per contiguous
// range: a group whose tensors are adjacent in the parameter buffer is one launch.
#pragma once
#include <cmath>
#include <cstdint>
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/reduce.cuh"

constexpr int ADAMW_BLOCK = 256;

template <int W>
__global__ void __launch_bounds__(ADAMW_BLOCK)
adamw_kernel(float* param, floatX* param_bf16, float* m, float* v, const float* grad, size_t npacks, float decay,
             float w1, float w2, float bias2, float step_size, float eps) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= npacks) return;
    Pack<float, W> pp = load_pack_cs<float, W>(param + i * W);
    Pack<float, W> pg = load_pack_cs<float, W>(grad + i * W);
    Pack<float, W> pm = load_pack_cs<float, W>(m + i * W);
    Pack<float, W> pv = load_pack_cs<float, W>(v + i * W);
    PackX<W> pb;
    #pragma unroll
    for (int k = 0; k < W; k++) {
        const float g = pg.v[k];
        const float p = pp.v[k] * decay;
        const float mi = pm.v[k] + w1 * (g - pm.v[k]);
        const float vi = pv.v[k] + w2 * (g * g - pv.v[k]);
        const float denom = __fsqrt_rn(__fdiv_rn(vi, bias2)) + eps;
        const float pn = p - step_size * __fdiv_rn(mi, denom);
        pp.v[k] = pn;
        pm.v[k] = mi;
        pv.v[k] = vi;
        pb.v[k] = llmc::to_floatX(pn);
    }
    store_pack_cs<float, W>(param + i * W, pp);
    store_pack_cs<float, W>(m + i * W, pm);
    store_pack_cs<float, W>(v + i * W, pv);
    if (param_bf16) store_pack<floatX, W>(param_bf16 + i * W, pb);
}

// Update n elements in place (fp32 param, m, v; grad fp32) and write bf16(param) to param_bf16
// (nullptr: no copy). t: this step's count (1 for the first update). Hyperparameters as the CPU op.
inline void adamw_update(float* param, floatX* param_bf16, float* m, float* v, const float* grad, long n, float lr,
                         float beta1, float beta2, float eps, float weight_decay, int t, cudaStream_t stream) {
    LLMC_CHECK(n >= 0 && t >= 1, "adamw_update: bad n=%ld or step t=%d (t starts at 1)", n, t);
    if (n == 0) return;
    // the per-tensor scalars, each rounded to fp32 exactly as llmc::adamw_update (llmc/adamw.h) does
    const float decay = 1.0f - lr * weight_decay;
    const float w1 = 1.0f - beta1;
    const float w2 = 1.0f - beta2;
    const float bias1 = 1.0f - powf(beta1, (float)t);
    const float bias2 = 1.0f - powf(beta2, (float)t);
    const float step_size = lr / bias1;
    // a 4-wide floatX pack: 8-byte aligned (bf16) or 16 (fp32)
    const bool copy_ok = param_bf16 == nullptr || reinterpret_cast<uintptr_t>(param_bf16) % alignof(PackX<4>) == 0;
    if (n % 4 == 0 && aligned16(param) && aligned16(m) && aligned16(v) && aligned16(grad) && copy_ok) {
        const size_t np = (size_t)n / 4;
        LAUNCH(adamw_kernel<4>, (unsigned)CEIL_DIV(np, (size_t)ADAMW_BLOCK), ADAMW_BLOCK, 0, stream, param, param_bf16, m,
               v, grad, np, decay, w1, w2, bias2, step_size, eps);
    } else {
        LAUNCH(adamw_kernel<1>, (unsigned)CEIL_DIV((size_t)n, (size_t)ADAMW_BLOCK), ADAMW_BLOCK, 0, stream, param,
               param_bf16, m, v, grad, (size_t)n, decay, w1, w2, bias2, step_size, eps);
    }
}
