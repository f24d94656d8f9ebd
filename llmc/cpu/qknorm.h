// qknorm.h: QK-norm, y = 1.2 * rms(x) over each head's D values (docs/model.md#qknorm).
//
// Applied to q and k after RoPE, one row per (b, t, head): rows = B*T*NH. Same RMSNorm as
// rmsnorm.h (eps = 2^-23, sums in double), then the fixed 1.2 factor: 1.2^2 = 1.44 is the only
// sharpening of the attention logits (the softmax scale stays 1/sqrt(D)). rstd saves r (without
// the 1.2). With n = out / 1.2:
//   dx = 1.2 r (G - n <G, n> / D) = r (1.2 G - out <G, out> / (1.2 D))
// The backward overwrites, and dinp == dout is allowed: the dot product is taken over the whole
// row before any element of the row is written.
#pragma once
#include <cmath>
#include "llmc/cpu/rmsnorm.h"

constexpr double LLMC_QKNORM_SCALE = 1.2;

template <typename Real>
void qknorm_forward(Real* out, Real* rstd, const Real* inp, int rows, int D) {
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < rows; i++) {
        const Real* x = inp + (long)i * D;
        Real* y = out + (long)i * D;
        double ss = 0.0;
        for (int d = 0; d < D; d++) ss += (double)x[d] * (double)x[d];
        double r = 1.0 / std::sqrt(ss / D + LLMC_RMSNORM_EPS);
        Real f = (Real)(LLMC_QKNORM_SCALE * r);  // 1.2 r folded into one multiplier
        for (int d = 0; d < D; d++) y[d] = x[d] * f;
        rstd[i] = (Real)r;
    }
}

// dinp = 1.2 r (G - n <G,n>/D)   (overwrite; dinp == dout allowed)
template <typename Real>
void qknorm_backward(Real* dinp, const Real* dout, const Real* out, const Real* rstd, int rows, int D) {
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < rows; i++) {
        const Real* g = dout + (long)i * D;
        const Real* y = out + (long)i * D;
        Real* dx = dinp + (long)i * D;
        double dot = 0.0;
        for (int d = 0; d < D; d++) dot += (double)g[d] * (double)y[d];
        // n = y/1.2, so n <G,n>/D = y <G,y> / (1.44 D)
        Real m = (Real)(dot / (LLMC_QKNORM_SCALE * LLMC_QKNORM_SCALE * D));
        Real f = (Real)(LLMC_QKNORM_SCALE * (double)rstd[i]);
        for (int d = 0; d < D; d++) dx[d] = f * (g[d] - y[d] * m);
    }
}
