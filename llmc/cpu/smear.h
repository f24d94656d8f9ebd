// smear.h: the smear gate, mixing each token's embedding with the previous one's
// (docs/model.md#smear).
//
// For every row b and t >= 1 (e is the normed embedding, w = smear_gate.weight[0], 24 values):
//   a_t = sum_{c<24} e_t[c] w[c],  g_t = lambda sigmoid(a_t),  x_t = e_t + g_t e_{t-1}
// using the PRE-smear e_{t-1}; x_0 = e_0. So out never aliases e.
// Backward (G = dout):
//   de_t = G_t + g_{t+1} G_{t+1}  (second term when t+1 < T)  + da_t w[c] for c < 24, t >= 1
//   h_t = <G_t, e_{t-1}>,  dlambda += sum h_t sigmoid(a_t)
//   da_t = h_t lambda sigmoid(a_t) (1 - sigmoid(a_t)),  dw[c] += sum da_t e_t[c]
// de is overwritten (and must not alias dout: de_t reads G_{t+1}). The 25 parameter-gradient
// sums run over all B*(T-1) rows with cpu_chunked_sum (fixed chunks, in order): deterministic.
// The gate is recomputed in the backward (24 multiply-adds per row) rather than saved.
#pragma once
#include <cmath>
#include "llmc/cpu/common.h"
#include "llmc/utils.h"

constexpr int LLMC_SMEAR_CHANNELS = 24;

template <typename Real>
inline Real smear_sigmoid_(Real a) { return (Real)1 / ((Real)1 + std::exp(-a)); }

template <typename Real>
void smear_forward(Real* out, const Real* e, const Real* w, Real lambda, int B, int T, int C) {
    LLMC_CHECK(C >= LLMC_SMEAR_CHANNELS, "smear: n_embd %d < %d channels read by the gate", C, LLMC_SMEAR_CHANNELS);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            const Real* et = e + ((long)b * T + t) * C;
            Real* xt = out + ((long)b * T + t) * C;
            if (t == 0) { for (int c = 0; c < C; c++) xt[c] = et[c]; continue; }
            const Real* ep = et - C;
            Real a = 0;
            for (int c = 0; c < LLMC_SMEAR_CHANNELS; c++) a += et[c] * w[c];
            Real g = lambda * smear_sigmoid_(a);
            for (int c = 0; c < C; c++) xt[c] = et[c] + g * ep[c];
        }
    }
}

template <typename Real>
void smear_backward(Real* de, Real* dw, Real* dlambda, const Real* dout, const Real* e, const Real* w, Real lambda,
                    int B, int T, int C) {
    LLMC_CHECK(C >= LLMC_SMEAR_CHANNELS, "smear: n_embd %d < %d channels read by the gate", C, LLMC_SMEAR_CHANNELS);
    const int K = LLMC_SMEAR_CHANNELS + 1;  // partials: dw[0..23], dlambda
    double sums[LLMC_SMEAR_CHANNELS + 1];
    // row r = b*T + t; every row writes its own de_t (so rows are split across threads freely)
    cpu_chunked_sum((long)B * T, K, sums, [&](long begin, long end, double* part) {
        for (long r = begin; r < end; r++) {
            int t = (int)(r % T);
            const Real* et = e + r * C;
            const Real* gt = dout + r * C;
            Real* dt = de + r * C;
            // direct path, plus the gate of the NEXT token, which reads e_t as its "previous"
            if (t + 1 < T) {
                const Real* en = et + C;
                Real an = 0;
                for (int c = 0; c < LLMC_SMEAR_CHANNELS; c++) an += en[c] * w[c];
                Real gn = lambda * smear_sigmoid_(an);
                const Real* gnext = gt + C;
                for (int c = 0; c < C; c++) dt[c] = gt[c] + gn * gnext[c];
            } else {
                for (int c = 0; c < C; c++) dt[c] = gt[c];
            }
            if (t == 0) continue;
            // this token's own gate: x_t = e_t + lambda sigmoid(a_t) e_{t-1}
            const Real* ep = et - C;
            Real a = 0;
            for (int c = 0; c < LLMC_SMEAR_CHANNELS; c++) a += et[c] * w[c];
            Real sg = smear_sigmoid_(a);
            double h = 0.0;
            for (int c = 0; c < C; c++) h += (double)gt[c] * (double)ep[c];
            part[LLMC_SMEAR_CHANNELS] += h * (double)sg;
            Real da = (Real)h * lambda * sg * ((Real)1 - sg);
            for (int c = 0; c < LLMC_SMEAR_CHANNELS; c++) {
                part[c] += (double)da * (double)et[c];
                dt[c] += da * w[c];
            }
        }
    });
    for (int c = 0; c < LLMC_SMEAR_CHANNELS; c++) dw[c] += (Real)sums[c];
    *dlambda += (Real)sums[LLMC_SMEAR_CHANNELS];
}
