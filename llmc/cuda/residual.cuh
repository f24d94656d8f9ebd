// residual.cuh: the residual stream's elementwise ops: the plain residual add and the per-layer
// lambdas, forward and backward (docs/model.md#lambdas; CPU twin:
// llmc/cpu/residual.h, same names and argument order plus scratch and the stream).
//
//   residual:  out = a + b                                   (bf16, overwrite; out may alias a)
//   lambdas:   out = alpha * x + beta * x0                   (bf16, overwrite; out may alias x)
//     backward: dx = alpha G            (bf16, overwrite; dx may alias dout)
//               dx0 += beta G           (bf16, accumulates over the layers: read, add in fp32, round)
//               dalpha += sum G x,  dbeta += sum G x0        (fp32 parameter gradients, accumulate)
//
// alpha and beta are the fp32 master values on the device (resid_lambdas[l], x0_lambdas[l]),
// passed by pointer so that no host round trip is needed; dalpha, dbeta point into the fp32
// gradient buffer.
//
// Strategy. Elementwise and memory-bound: 16-byte packs (8 bf16) per thread, W = 1 when n is not
// a multiple of 8 or a pointer is not 16-byte aligned. The forward kernels are one thread per
// pack. The backward fuses the elementwise part with the two scalar sums in one pass over memory:
// a fixed grid of P blocks (reduce.cuh, P depends on n only) strides over the packs, each thread
// keeps fp32 partial sums, each block reduces them and writes its 2 partials to scratch, and
// reduce_partials adds the P partials in a fixed order: deterministic without float atomics.
#pragma once
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/reduce.cuh"

constexpr int RESIDUAL_BLOCK = 256;

template <int W>
__global__ void __launch_bounds__(RESIDUAL_BLOCK)
residual_forward_kernel(floatX* out, const floatX* a, const floatX* b, size_t npacks) {
    const size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= npacks) return;
    PackX<W> pa = load_pack<floatX, W>(a + p * W);
    PackX<W> pb = load_pack<floatX, W>(b + p * W);
    PackX<W> o;
    #pragma unroll
    for (int k = 0; k < W; k++) o.v[k] = llmc::to_floatX(llmc::to_float(pa.v[k]) + llmc::to_float(pb.v[k]));
    store_pack<floatX, W>(out + p * W, o);
}

template <int W>
__global__ void __launch_bounds__(RESIDUAL_BLOCK)
lambdas_forward_kernel(floatX* out, const floatX* x, const floatX* x0, const float* alpha, const float* beta,
                       size_t npacks) {
    const size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= npacks) return;
    const float al = *alpha, be = *beta;
    PackX<W> px = load_pack<floatX, W>(x + p * W);
    PackX<W> p0 = load_pack<floatX, W>(x0 + p * W);
    PackX<W> o;
    #pragma unroll
    for (int k = 0; k < W; k++) o.v[k] = llmc::to_floatX(al * llmc::to_float(px.v[k]) + be * llmc::to_float(p0.v[k]));
    store_pack<floatX, W>(out + p * W, o);
}

// grid P (fixed by n), partials: [dalpha partials (P) | dbeta partials (P)]
template <int W>
__global__ void __launch_bounds__(RESIDUAL_BLOCK)
lambdas_backward_kernel(floatX* dx, floatX* dx0, float* partials, const floatX* dout, const floatX* x,
                        const floatX* x0, const float* alpha, const float* beta, size_t npacks) {
    STATIC_SMEM(float[32], s_red);
    const float al = *alpha, be = *beta;
    float sa = 0.0f, sb = 0.0f;
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < npacks; p += (size_t)gridDim.x * blockDim.x) {
        // dout is read before dx (which may alias it) is written, by this thread only
        PackX<W> pg = load_pack<floatX, W>(dout + p * W);
        PackX<W> px = load_pack<floatX, W>(x + p * W);
        PackX<W> p0 = load_pack<floatX, W>(x0 + p * W);
        PackX<W> pd0 = load_pack<floatX, W>(dx0 + p * W);
        PackX<W> pd;
        #pragma unroll
        for (int k = 0; k < W; k++) {
            const float g = llmc::to_float(pg.v[k]);
            sa += g * llmc::to_float(px.v[k]);
            sb += g * llmc::to_float(p0.v[k]);
            pd0.v[k] = llmc::to_floatX(llmc::to_float(pd0.v[k]) + be * g);
            pd.v[k] = llmc::to_floatX(al * g);
        }
        store_pack<floatX, W>(dx0 + p * W, pd0);
        store_pack<floatX, W>(dx + p * W, pd);
    }
    sa = block_reduce_sum(sa, s_red);
    sb = block_reduce_sum(sb, s_red);
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = sa;
        partials[gridDim.x + blockIdx.x] = sb;
    }
}

// out(n) = a + b (overwrite; out may alias a or b)
inline void residual_forward(floatX* out, const floatX* a, const floatX* b, long n, cudaStream_t stream) {
    LLMC_CHECK(n >= 0, "residual_forward: bad n=%ld", n);
    if (n == 0) return;
    if (n % XPACK == 0 && aligned16(out) && aligned16(a) && aligned16(b)) {
        const size_t np = (size_t)n / XPACK;
        LAUNCH(residual_forward_kernel<XPACK>, (unsigned)CEIL_DIV(np, (size_t)RESIDUAL_BLOCK), RESIDUAL_BLOCK, 0, stream, out,
               a, b, np);
    } else {
        LAUNCH(residual_forward_kernel<1>, (unsigned)CEIL_DIV((size_t)n, (size_t)RESIDUAL_BLOCK), RESIDUAL_BLOCK, 0,
               stream, out, a, b, (size_t)n);
    }
}

// out(n) = alpha*x + beta*x0 (overwrite; out may alias x). alpha, beta: device fp32 scalars.
inline void lambdas_forward(floatX* out, const floatX* x, const floatX* x0, const float* alpha, const float* beta,
                            long n, cudaStream_t stream) {
    LLMC_CHECK(n >= 0, "lambdas_forward: bad n=%ld", n);
    if (n == 0) return;
    if (n % XPACK == 0 && aligned16(out) && aligned16(x) && aligned16(x0)) {
        const size_t np = (size_t)n / XPACK;
        LAUNCH(lambdas_forward_kernel<XPACK>, (unsigned)CEIL_DIV(np, (size_t)RESIDUAL_BLOCK), RESIDUAL_BLOCK, 0, stream, out,
               x, x0, alpha, beta, np);
    } else {
        LAUNCH(lambdas_forward_kernel<1>, (unsigned)CEIL_DIV((size_t)n, (size_t)RESIDUAL_BLOCK), RESIDUAL_BLOCK, 0,
               stream, out, x, x0, alpha, beta, (size_t)n);
    }
}

// partial sums: K = 2 (dalpha, dbeta)
inline constexpr int LAMBDAS_PARTIALS = 2;

// dx = alpha*dout (overwrite; dx may alias dout), dx0 += beta*dout, *dalpha += sum dout*x,
// *dbeta += sum dout*x0. scratch: reduce_scratch_floats(LAMBDAS_PARTIALS) floats of device memory.
inline void lambdas_backward(floatX* dx, floatX* dx0, float* dalpha, float* dbeta, const floatX* dout, const floatX* x,
                             const floatX* x0, const float* alpha, const float* beta, long n, float* scratch,
                             cudaStream_t stream) {
    LLMC_CHECK(n >= 0, "lambdas_backward: bad n=%ld", n);
    if (n == 0) return;
    const bool vec = n % XPACK == 0 && aligned16(dx) && aligned16(dx0) && aligned16(dout) && aligned16(x) && aligned16(x0);
    const size_t np = vec ? (size_t)n / XPACK : (size_t)n;
    const int P = reduce_grid(np, RESIDUAL_BLOCK);
    if (vec) {
        LAUNCH(lambdas_backward_kernel<XPACK>, P, RESIDUAL_BLOCK, 0, stream, dx, dx0, scratch, dout, x, x0, alpha, beta, np);
    } else {
        LAUNCH(lambdas_backward_kernel<1>, P, RESIDUAL_BLOCK, 0, stream, dx, dx0, scratch, dout, x, x0, alpha, beta, np);
    }
    reduce_partials(dalpha, 1, dbeta, 1, scratch, P, stream);
}
