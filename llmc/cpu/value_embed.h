// value_embed.h: the gated value-embedding add of the VE layers (docs/model.md#value-embeds).
//
//   b_h = sum_{c<12} u[c] Wg[h,c],  gamma_h = 3 sigmoid(b_h)  in (0, 3),  v_h += gamma_h ve_h
// u is the normed attention input (N, C) (only its first 12 channels are read), v and ve are
// (N, Hkv*D) (ve already looked up from value_embeds by token id), Wg is (Hkv, 12); gamma (N, Hkv)
// is saved for the backward. Backward (G = dv, which itself passes through unchanged):
//   dve_h = gamma_h G_h                       (overwrite; scattered into the table afterwards)
//   dgamma_h = <G_h, ve_h>,  db_h = dgamma_h gamma_h (1 - gamma_h / 3)   (= 3 s (1 - s))
//   dWg[h,c] += sum_rows db_h u[c],  du[c] += sum_h db_h Wg[h,c]  for c < 12
// du accumulates because it already holds the gradient from the q/k/v matmuls. dWg is a sum over
// rows, computed with cpu_chunked_sum (fixed chunks, in order): deterministic.
#pragma once
#include <cmath>
#include "llmc/cpu/common.h"
#include "llmc/utils.h"

constexpr int LLMC_VE_GATE_CHANNELS = 12;

template <typename Real>
void ve_gate_forward(Real* v, Real* gamma, const Real* u, const Real* ve, const Real* wg, int N, int C, int Hkv, int D) {
    LLMC_CHECK(C >= LLMC_VE_GATE_CHANNELS, "ve_gate: n_embd %d < %d channels read by the gate", C, LLMC_VE_GATE_CHANNELS);
    const long KV = (long)Hkv * D;
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const Real* un = u + (long)n * C;
        for (int h = 0; h < Hkv; h++) {
            Real b = 0;
            for (int c = 0; c < LLMC_VE_GATE_CHANNELS; c++) b += un[c] * wg[h * LLMC_VE_GATE_CHANNELS + c];
            Real g = (Real)3 / ((Real)1 + std::exp(-b));
            gamma[(long)n * Hkv + h] = g;
            Real* vh = v + n * KV + (long)h * D;
            const Real* eh = ve + n * KV + (long)h * D;
            for (int d = 0; d < D; d++) vh[d] += g * eh[d];
        }
    }
}

template <typename Real>
void ve_gate_backward(Real* du, Real* dve, Real* dwg, const Real* dv, const Real* u, const Real* ve, const Real* gamma,
                      const Real* wg, int N, int C, int Hkv, int D) {
    LLMC_CHECK(C >= LLMC_VE_GATE_CHANNELS, "ve_gate: n_embd %d < %d channels read by the gate", C, LLMC_VE_GATE_CHANNELS);
    const long KV = (long)Hkv * D;
    const int K = Hkv * LLMC_VE_GATE_CHANNELS;
    double* sums = cpu_scratch<double, 2>((size_t)K);
    cpu_chunked_sum(N, K, sums, [&](long begin, long end, double* part) {
        for (long n = begin; n < end; n++) {
            const Real* un = u + n * C;
            Real* dun = du + n * C;
            for (int h = 0; h < Hkv; h++) {
                const Real* gh = dv + n * KV + (long)h * D;
                const Real* eh = ve + n * KV + (long)h * D;
                Real* deh = dve + n * KV + (long)h * D;
                Real g = gamma[n * Hkv + h];
                double dg = 0.0;
                for (int d = 0; d < D; d++) {
                    dg += (double)gh[d] * (double)eh[d];
                    deh[d] = g * gh[d];
                }
                Real db = (Real)dg * g * ((Real)1 - g / (Real)3);
                const Real* wh = wg + h * LLMC_VE_GATE_CHANNELS;
                for (int c = 0; c < LLMC_VE_GATE_CHANNELS; c++) {
                    part[h * LLMC_VE_GATE_CHANNELS + c] += (double)db * (double)un[c];
                    dun[c] += db * wh[c];
                }
            }
        }
    });
    for (int k = 0; k < K; k++) dwg[k] += (Real)sums[k];
}
