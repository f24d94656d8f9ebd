// crossentropy.h: logit softcap + cross-entropy, fused forward and backward (model.md §3.2 7-8, §5).
//
// Like llm.c's fused classifier, one pass per row computes the loss and (optionally) overwrites
// the logits with their gradient, so the (N, Vp) probabilities are never materialized:
//   z_v = s * tanh(l_v / s)                         (s = softcap, 15 in the model), v < V
//   loss = logsumexp_v z_v - z_y                     (0 for ignored rows, y == -1)
//   dl_v = dloss_scale * (p_v - [v == y]) * (1 - (z_v / s)^2)   for v < V
//   dl_v = 0 for padded columns v >= V and for ignored rows.
// dloss_scale carries the mean over valid tokens and the gradient-accumulation factor
// (e.g. 1/(N_valid * grad_accum)), so this op needs no global count.
// dlogits may alias logits: each row reads all its logits (max, then sum of exp) before the
// third pass writes, and that pass reads l_v right before overwriting the same element.
// z is recomputed in each pass instead of stored (tanh is cheap next to the lm_head matmul and
// no scratch row is needed). The sum of exponentials is accumulated in double.
// Targets are validated before any work so that a bad one throws (outside the OpenMP region).
#pragma once
#include <cmath>
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
    const Real inv_s = (Real)1 / s;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const Real* l = logits + (long)i * Vp;
        int y = targets[i];
        if (y == -1) {
            losses[i] = 0;
            if (dlogits) { Real* d = dlogits + (long)i * Vp; for (int v = 0; v < Vp; v++) d[v] = 0; }
            continue;
        }
        // pass 1: max of z (z is monotonic in l, but computing it is as cheap and obviously right)
        Real zmax = -s;
        for (int v = 0; v < V; v++) { Real z = s * std::tanh(l[v] * inv_s); if (z > zmax) zmax = z; }
        // pass 2: sum of exp(z - zmax)
        double sum = 0.0;
        for (int v = 0; v < V; v++) sum += (double)std::exp(s * std::tanh(l[v] * inv_s) - zmax);
        Real lse = zmax + (Real)std::log(sum);
        Real zy = s * std::tanh(l[y] * inv_s);
        losses[i] = lse - zy;
        if (!dlogits) continue;
        // pass 3: gradient, overwriting (possibly in place)
        Real* d = dlogits + (long)i * Vp;
        const Real scale = (Real)dloss_scale;
        for (int v = 0; v < V; v++) {
            Real t = std::tanh(l[v] * inv_s);   // = z / s
            Real p = std::exp(s * t - lse);
            Real ind = (v == y) ? (Real)1 : (Real)0;
            d[v] = scale * (p - ind) * ((Real)1 - t * t);
        }
        for (int v = V; v < Vp; v++) d[v] = 0;
    }
}
