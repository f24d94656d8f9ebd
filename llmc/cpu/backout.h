// backout.h: subtract a multiple of the middle layer's output before the final norm
// (docs/model.md#backout).
//
//   out = x - lambda * xmid
//   backward: dx = G (the caller passes G straight through; no call needed),
//             dxmid += -lambda G  (added to the gradient flowing back into layer floor(L/2)'s output),
//             dlambda += -sum G xmid  (deterministic: cpu_chunked_sum, fixed chunks in order)
#pragma once
#include "llmc/cpu/common.h"

// out = x - lambda*xmid (overwrite; out may alias x)
template <typename Real>
void backout_forward(Real* out, const Real* x, const Real* xmid, Real lambda, long n) {
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) out[i] = x[i] - lambda * xmid[i];
}

template <typename Real>
void backout_backward(Real* dxmid, Real* dlambda, const Real* dout, const Real* xmid, Real lambda, long n) {
    double s;
    cpu_chunked_sum(n, 1, &s, [&](long begin, long end, double* part) {
        double acc = 0.0;
        for (long i = begin; i < end; i++) {
            Real g = dout[i];
            acc += (double)g * (double)xmid[i];
            dxmid[i] += -lambda * g;
        }
        part[0] += acc;
    });
    *dlambda += (Real)(-s);
}
