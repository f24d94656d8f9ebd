// rmsnorm.h: parameter-free RMSNorm over the last dimension (docs/model.md#rmsnorm).
//
//   y = x * r,  r = 1 / sqrt(mean(x^2) + eps),  eps = 2^-23 (FLT_EPSILON) in every precision.
//
// The model has no norm weights, so the op has no parameters. The forward saves r per row
// (rstd, like llm.c's layernorm saves its statistics) so the backward does not recompute it:
//   dx = r * (G - y * <G, y> / C)
// Row reductions are accumulated in double: they cost O(N*C), negligible next to the matmuls,
// and make the reference less sensitive to summation order than any kernel tested against it.
// Rows are independent, so OpenMP splits rows across threads (no reduction across threads).
#pragma once
#include <cmath>

// eps of the model's RMSNorm: 2^-23, written exactly so float and double agree on its value.
constexpr double LLMC_RMSNORM_EPS = 1.1920928955078125e-07;

// out(N,C) = rms(inp), rstd(N) = r  (both overwritten)
template <typename Real>
void rmsnorm_forward(Real* out, Real* rstd, const Real* inp, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const Real* x = inp + (long)i * C;
        Real* y = out + (long)i * C;
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * (double)x[c];
        Real r = (Real)(1.0 / std::sqrt(ss / C + LLMC_RMSNORM_EPS));
        for (int c = 0; c < C; c++) y[c] = x[c] * r;
        rstd[i] = r;
    }
}

// dinp(N,C) += r * (dout - out * <dout, out> / C)   (accumulates: the residual stream's gradient)
template <typename Real>
void rmsnorm_backward(Real* dinp, const Real* dout, const Real* out, const Real* rstd, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const Real* g = dout + (long)i * C;
        const Real* y = out + (long)i * C;
        Real* dx = dinp + (long)i * C;
        double dot = 0.0;
        for (int c = 0; c < C; c++) dot += (double)g[c] * (double)y[c];
        Real m = (Real)(dot / C);
        Real r = rstd[i];
        for (int c = 0; c < C; c++) dx[c] += r * (g[c] - y[c] * m);
    }
}
