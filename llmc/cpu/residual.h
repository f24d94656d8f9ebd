// residual.h: residual-stream helpers: the plain residual add and the per-layer lambdas
// (docs/model.md#lambdas).
//
//   residual:  out = a + b                 (out may alias a: x <- x + f(x))
//   lambdas:   out = alpha * x + beta * x0
//     backward: dx = alpha G (overwrite, dx == dout allowed), dx0 += beta G,
//               dalpha += sum G x,  dbeta += sum G x0
// The two scalar gradients are sums over all B*T*C elements. They are computed with
// cpu_chunked_sum (fixed chunks, double partials, chunks added in order), so they do not depend
// on the thread count. The elementwise part is fused into the same pass over memory.
#pragma once
#include "llmc/cpu/common.h"

template <typename Real>
void residual_forward(Real* out, const Real* a, const Real* b, long n) {
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
}

// out = alpha*x + beta*x0 (overwrite; out may alias x)
template <typename Real>
void lambdas_forward(Real* out, const Real* x, const Real* x0, Real alpha, Real beta, long n) {
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) out[i] = alpha * x[i] + beta * x0[i];
}

template <typename Real>
void lambdas_backward(Real* dx, Real* dx0, Real* dalpha, Real* dbeta, const Real* dout, const Real* x,
                      const Real* x0, Real alpha, Real beta, long n) {
    double sums[2];
    cpu_chunked_sum(n, 2, sums, [&](long begin, long end, double* part) {
        double sa = 0.0, sb = 0.0;
        for (long i = begin; i < end; i++) {
            Real g = dout[i];  // read before dx (which may alias dout) is written
            sa += (double)g * (double)x[i];
            sb += (double)g * (double)x0[i];
            dx0[i] += beta * g;
            dx[i] = alpha * g;
        }
        part[0] += sa;
        part[1] += sb;
    });
    *dalpha += (Real)sums[0];
    *dbeta += (Real)sums[1];
}
