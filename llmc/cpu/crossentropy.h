// crossentropy.h: logit softcap + cross-entropy, fused forward and backward (docs/model.md#softcap-loss).
//
// Like llm.c's fused classifier, one pass per row computes the loss and (optionally) overwrites
// the logits with their gradient, so the (N, Vp) probabilities are never materialized:
//   t_v = tanh(l_v / s),  z_v = s t_v          (s = softcap, 15 in the model), v < V
//   loss = logsumexp_v z_v - z_y                 (0 for ignored rows, y == -1)
//   dl_v = dloss_scale * (p_v - [v == y]) * (1 - t_v^2)   for v < V
//   dl_v = 0 for padded columns v >= V and for ignored rows.
// dloss_scale carries the mean over valid tokens and the gradient-accumulation factor
// (e.g. 1/(N_valid * grad_accum)), so this op needs no global count.
// l / s is a true division, as docs/model.md#softcap-loss writes it (not a multiply by 1/s).
// Per row: t goes into a per-thread scratch row (so dlogits may alias logits: the logits are
// read once, by that first pass), then e_v = exp(z_v - max z) (kept in a second scratch row),
// their sum in double, and p_v = e_v / sum. tanh and exp are cpu_tanh_/cpu_exp_ (common.h),
// which the compiler vectorizes in float; with glibc's scalar tanhf/expf this op took longer
// than the lm_head matmuls. Rows are split across threads (each row is independent).
// Targets are validated before any work so that a bad one throws (outside the OpenMP region).
#pragma once
#include <cmath>
#include "llmc/cpu/common.h"
#include "llmc/utils.h"

template <typename Real>
void softcap_crossentropy_forward_backward(Real* losses, Real* dlogits, const Real* logits, const int* targets,
                                           int N, int V, int Vp, float softcap, float dloss_scale) {
    LLMC_CHECK(V > 0 && V <= Vp, "softcap_crossentropy: need 0 < V <= Vp, got V=%d Vp=%d", V, Vp);
    LLMC_CHECK(softcap > 0.0f, "softcap_crossentropy: softcap must be > 0, got %g", (double)softcap);
    for (int i = 0; i < N; i++) {
        int y = targets[i];
        if (y != -1 && (y < 0 || y >= V)) LLMC_FAIL("softcap_crossentropy: target of row %d is %d, outside [0, %d) and not -1 (ignore)", i, y, V);
    }
    const Real s = (Real)softcap;
    const Real scale = (Real)dloss_scale;
    constexpr int LANES = 16;
    #pragma omp parallel
    {
        Real* t = cpu_scratch<Real, 7>((size_t)V);  // tanh(l / s) of the current row
        Real* e = cpu_scratch<Real, 8>((size_t)V);  // exp(z - max z) of the current row
        #pragma omp for schedule(static)
        for (int i = 0; i < N; i++) {
            const Real* l = logits + (long)i * Vp;
            Real* d = dlogits ? dlogits + (long)i * Vp : nullptr;
            const int y = targets[i];
            if (y == -1) {
                losses[i] = 0;
                if (d) for (int v = 0; v < Vp; v++) d[v] = 0;
                continue;
            }
            // pass 1: t and its max (max z = s max t, s > 0); lane-wise so it vectorizes
            Real tm[LANES];
            for (int k = 0; k < LANES; k++) tm[k] = (Real)-1;
            int v = 0;
            for (; v + LANES <= V; v += LANES)
                for (int k = 0; k < LANES; k++) {
                    Real tv = cpu_tanh_(l[v + k] / s);
                    t[v + k] = tv;
                    tm[k] = std::max(tm[k], tv);
                }
            for (int k = 0; v < V; v++, k++) {
                Real tv = cpu_tanh_(l[v] / s);
                t[v] = tv;
                tm[k] = std::max(tm[k], tv);
            }
            Real tmax = tm[0];
            for (int k = 1; k < LANES; k++) tmax = std::max(tmax, tm[k]);
            const Real zmax = s * tmax;
            // pass 2: e = exp(z - zmax), then their sum in 8 double lanes added in a fixed order.
            // Two loops, not one: fused, GCC kept the double lanes in memory and ran the whole
            // pass scalar (measured: this op was 20% of a d4/V=32768 step; split, each loop vectorizes).
            for (v = 0; v < V; v++) e[v] = cpu_exp_(s * t[v] - zmax);
            double acc[8] = {0};
            for (v = 0; v + 8 <= V; v += 8)
                for (int k = 0; k < 8; k++) acc[k] += (double)e[v + k];
            for (int k = 0; v < V; v++, k++) acc[k] += (double)e[v];
            double sum = 0.0;
            for (int k = 0; k < 8; k++) sum += acc[k];
            losses[i] = zmax + (Real)std::log(sum) - s * t[y];
            if (!d) continue;
            // pass 3: the gradient (overwrites; the logits of this row were all read in pass 1)
            const Real inv_sum = (Real)(1.0 / sum);
            for (v = 0; v < V; v++) d[v] = scale * (e[v] * inv_sum) * ((Real)1 - t[v] * t[v]);
            d[y] = scale * (e[y] * inv_sum - (Real)1) * ((Real)1 - t[y] * t[y]);
            for (v = V; v < Vp; v++) d[v] = 0;
        }
    }
}
