// attention.h: causal sliding-window multi-head attention with GQA (model.md §3.3 step 5, §1.4, §5).
//
// q, out: (B, T, H, D); k, v: (B, T, Hkv, D); query head h reads kv head h / (H/Hkv).
// Query i sees key j iff j <= i and i - j <= window (window >= T-1 is plain causal; window 0
// sees only itself). Scores s_ij = <q_i, k_j> / sqrt(D); p = softmax over the visible keys;
// o_i = sum_j p_ij v_j.
//
// Like flash attention, the forward saves only lse_i = log sum_j exp(s_ij) (layout (B, H, T)),
// never the (T x T) probabilities; the backward recomputes p_ij = exp(s_ij - lse_i) and uses
//   D_i = <G_i, o_i>,  ds_ij = p_ij (<G_i, v_j> - D_i),
//   dq_i = sum_j ds_ij k_j / sqrt(D),  dk_j = sum_{h in group, i} ds_ij q_i / sqrt(D),
//   dv_j = sum_{h in group, i} p_ij G_i.
//
// Parallelism (both deterministic, every output row is owned by exactly one thread):
//  * forward and the dq pass: one task per (b, h, query i);
//  * the dk/dv pass: one task per (b, kv head, key j), which loops over the query heads of its
//    group and the queries that see key j, in a fixed order. This recomputes s and p a second
//    time (7 instead of 5 D-length vector ops per visible pair) but keeps both cores busy for any
//    B and Hkv (a split over (b, kv head) alone would leave a core idle at B*Hkv = 1) and never
//    adds into shared memory.
// D-length dot products use 16 independent partial sums so the compiler can vectorize them
// without reassociating (the order is fixed, so results do not depend on the build's vector width
// beyond FMA contraction). Sums of exponentials accumulate in double.
#pragma once
#include <algorithm>
#include <cmath>
#include "llmc/cpu/common.h"
#include "llmc/utils.h"

template <typename Real>
inline Real attn_dot_(const Real* a, const Real* b, int D) {
    Real acc[16] = {0};
    int d = 0;
    for (; d + 16 <= D; d += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[d + l] * b[d + l];
    for (int l = 0; d < D; d++, l++) acc[l] += a[d] * b[d];
    for (int w = 8; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return acc[0];
}

inline void attention_check_args_(int B, int T, int H, int Hkv, int D, int window) {
    LLMC_CHECK(B > 0 && T > 0 && D > 0, "attention: bad shape B=%d T=%d D=%d", B, T, D);
    LLMC_CHECK(H > 0 && Hkv > 0 && H % Hkv == 0, "attention: n_head %d must be a positive multiple of n_kv_head %d", H, Hkv);
    LLMC_CHECK(window >= 0, "attention: window must be >= 0, got %d", window);
}

template <typename Real>
void attention_forward(Real* out, Real* lse, const Real* q, const Real* k, const Real* v,
                       int B, int T, int H, int Hkv, int D, int window) {
    attention_check_args_(B, T, H, Hkv, D, window);
    const int w = std::min(window, T - 1);
    const int group = H / Hkv;
    const Real scale = (Real)(1.0 / std::sqrt((double)D));
    #pragma omp parallel
    {
        Real* p = cpu_scratch<Real>((size_t)w + 1);  // this thread's scores/probabilities of one row
        #pragma omp for collapse(3) schedule(static, 4)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < H; h++) {
                for (int i = 0; i < T; i++) {
                    const int kvh = h / group;
                    const Real* qi = q + (((long)b * T + i) * H + h) * D;
                    Real* oi = out + (((long)b * T + i) * H + h) * D;
                    const int j0 = std::max(0, i - w);
                    Real m = -INFINITY;
                    for (int j = j0; j <= i; j++) {
                        const Real* kj = k + (((long)b * T + j) * Hkv + kvh) * D;
                        Real s = attn_dot_(qi, kj, D) * scale;
                        p[j - j0] = s;
                        m = std::max(m, s);
                    }
                    double sum = 0.0;
                    for (int j = j0; j <= i; j++) {
                        Real e = std::exp(p[j - j0] - m);
                        p[j - j0] = e;
                        sum += (double)e;
                    }
                    for (int d = 0; d < D; d++) oi[d] = 0;
                    for (int j = j0; j <= i; j++) {
                        const Real* vj = v + (((long)b * T + j) * Hkv + kvh) * D;
                        Real pj = p[j - j0];
                        for (int d = 0; d < D; d++) oi[d] += pj * vj[d];
                    }
                    Real inv = (Real)(1.0 / sum);
                    for (int d = 0; d < D; d++) oi[d] *= inv;
                    lse[((long)b * H + h) * T + i] = m + (Real)std::log(sum);
                }
            }
        }
    }
}

template <typename Real>
void attention_backward(Real* dq, Real* dk, Real* dv, const Real* dout, const Real* out, const Real* lse,
                        const Real* q, const Real* k, const Real* v, int B, int T, int H, int Hkv, int D, int window) {
    attention_check_args_(B, T, H, Hkv, D, window);
    const int w = std::min(window, T - 1);
    const int group = H / Hkv;
    const Real scale = (Real)(1.0 / std::sqrt((double)D));
    // D_i = <G_i, o_i>, layout (B, H, T); computed once, read by both passes
    Real* Dbuf = cpu_scratch<Real, 1>((size_t)B * H * T);
    #pragma omp parallel for collapse(3) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                long row = (((long)b * T + i) * H + h) * D;
                Dbuf[((long)b * H + h) * T + i] = attn_dot_(dout + row, out + row, D);
            }

    // pass 1: dq, one task per query row
    #pragma omp parallel for collapse(3) schedule(static, 4)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < T; i++) {
                const int kvh = h / group;
                const long row = (((long)b * T + i) * H + h) * D;
                const Real* qi = q + row;
                const Real* gi = dout + row;
                Real* dqi = dq + row;
                const Real lse_i = lse[((long)b * H + h) * T + i];
                const Real D_i = Dbuf[((long)b * H + h) * T + i];
                for (int d = 0; d < D; d++) dqi[d] = 0;
                for (int j = std::max(0, i - w); j <= i; j++) {
                    const Real* kj = k + (((long)b * T + j) * Hkv + kvh) * D;
                    const Real* vj = v + (((long)b * T + j) * Hkv + kvh) * D;
                    Real p = std::exp(attn_dot_(qi, kj, D) * scale - lse_i);
                    Real ds = p * (attn_dot_(gi, vj, D) - D_i);
                    for (int d = 0; d < D; d++) dqi[d] += ds * kj[d];
                }
                for (int d = 0; d < D; d++) dqi[d] *= scale;
            }
        }
    }

    // pass 2: dk, dv, one task per key row; sums over the group's query heads and the queries
    // i in [j, j + w] that see key j, in that fixed order
    #pragma omp parallel for collapse(3) schedule(static, 4)
    for (int b = 0; b < B; b++) {
        for (int kvh = 0; kvh < Hkv; kvh++) {
            for (int j = 0; j < T; j++) {
                const long krow = (((long)b * T + j) * Hkv + kvh) * D;
                const Real* kj = k + krow;
                const Real* vj = v + krow;
                Real* dkj = dk + krow;
                Real* dvj = dv + krow;
                for (int d = 0; d < D; d++) { dkj[d] = 0; dvj[d] = 0; }
                const int i1 = std::min(T - 1, j + w);
                for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                    for (int i = j; i <= i1; i++) {
                        const long row = (((long)b * T + i) * H + h) * D;
                        const Real* qi = q + row;
                        const Real* gi = dout + row;
                        const Real lse_i = lse[((long)b * H + h) * T + i];
                        const Real D_i = Dbuf[((long)b * H + h) * T + i];
                        Real p = std::exp(attn_dot_(qi, kj, D) * scale - lse_i);
                        Real ds = p * (attn_dot_(gi, vj, D) - D_i);
                        for (int d = 0; d < D; d++) {
                            dkj[d] += ds * qi[d];
                            dvj[d] += p * gi[d];
                        }
                    }
                }
                for (int d = 0; d < D; d++) dkj[d] *= scale;
            }
        }
    }
}
