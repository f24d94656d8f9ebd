// attention.h: causal sliding-window multi-head attention with GQA (docs/model.md#attention,
// docs/model.md#windows).
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
// Work is done in blocks of ATT_QB query rows (forward, dq) or key rows (dk, dv), as small
// matrix products with a register tile of ATT_QB rows x 64 floats:
//  * row-by-matrix products over D (scores, <G_i, v_j>) read a transposed copy (D x T) of the
//    other operand, made once per call, so a tile row is contiguous: s[j..] += q[d] * Kt[d][j..];
//  * probability-weighted sums (o_i, dq_i, dk_j, dv_j) run along D over the rows of v, k, q, G.
// Softmax max/sum use ATT_LANES independent partial results (a fixed order, so no
// reassociation is needed to vectorize them), and exp in float is a branch-free polynomial the
// compiler vectorizes (cpu_exp_ in common.h); double uses std::exp.
//
// Parallelism (deterministic: every output row is owned by one thread and summed in a fixed
// order): forward and the dq pass split (b, h, query block); the dk/dv pass splits
// (b, kv head, key block) and loops over the group's query heads and the queries that see each
// key. Recomputing s and p in that second pass keeps both cores busy for any B and Hkv without
// ever adding into shared memory.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include "llmc/cpu/common.h"
#include "llmc/utils.h"

constexpr int ATT_QB = 4;      // query (or key) rows per block
constexpr int ATT_LANES = 16;  // partial results of the max/sum reductions

inline void attention_check_args_(int B, int T, int H, int Hkv, int D, int window) {
    LLMC_CHECK(B > 0 && T > 0 && D > 0, "attention: bad shape B=%d T=%d D=%d", B, T, D);
    LLMC_CHECK(H > 0 && Hkv > 0 && H % Hkv == 0, "attention: n_head %d must be a positive multiple of n_kv_head %d", H, Hkv);
    LLMC_CHECK(window >= 0, "attention: window must be >= 0, got %d", window);
}

// Leading dimension of the transposed copies: T plus one cache line, so that walking down d
// (stride ld) does not hit the same L1 set every time when T*sizeof(Real) is a multiple of 4 KB.
inline long attn_ld_(int T) { return (long)T + 16; }

// dst (NH, D, ld) per batch row = transpose of src (B, T, NH, D): dst[((b*NH + h)*D + d)*ld + t]
template <typename Real>
void attn_transpose_(Real* dst, const Real* src, int B, int T, int NH, int D) {
    const long ld = attn_ld_(T);
    #pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            Real* out = dst + ((long)b * NH + h) * D * ld;
            for (int t = 0; t < T; t++) {
                const Real* row = src + (((long)b * T + t) * NH + h) * D;
                for (int d = 0; d < D; d++) out[(long)d * ld + t] = row[d];
            }
        }
}

// Register tiles for the two products below: ATT_QB rows x ATT_NV vectors of 64 bytes
// (16 floats or 8 doubles) accumulate in registers over the whole reduction, so each step is
// ATT_NV loads + ATT_QB broadcasts for ATT_QB * ATT_NV FMAs (a 4 x 64 float tile: 16 zmm).
// Vector extensions on a template type (GCC/Clang, also accepted by nvcc's front end).
constexpr int ATT_NV = 4;
template <typename Real>
struct AttVec { typedef Real type __attribute__((vector_size(64))); };

// s[r][0..L) = sum_d x_r[d] * Yt[d][j0 .. j0+L), for nr <= ATT_QB rows r; Yt has leading
// dimension T (attn_ld_). Full tiles of ATT_NV vectors along j in registers; the tail along j plainly.
template <typename Real>
inline void attn_rows_times_t_(Real* s, int ldS, const Real* const* x_in, int nr, const Real* Yt, long T, int j0, int L, int D) {
    typedef typename AttVec<Real>::type V;
    constexpr int VL = (int)(64 / sizeof(Real)), JW = ATT_NV * VL;
    const Real* x[ATT_QB];
    for (int r = 0; r < ATT_QB; r++) x[r] = x_in[r < nr ? r : 0];  // pad rows: computed, not stored
    int jb = 0;
    for (; jb + JW <= L; jb += JW) {
        V acc[ATT_QB][ATT_NV];
        for (int r = 0; r < ATT_QB; r++)
            for (int v = 0; v < ATT_NV; v++) acc[r][v] = (V){};
        const Real* y = Yt + j0 + jb;
        for (int d = 0; d < D; d++, y += T) {
            V yv[ATT_NV];
            for (int v = 0; v < ATT_NV; v++) memcpy(&yv[v], y + v * VL, sizeof(V));
            for (int r = 0; r < ATT_QB; r++) {
                const Real a = x[r][d];
                for (int v = 0; v < ATT_NV; v++) acc[r][v] += a * yv[v];
            }
        }
        for (int r = 0; r < nr; r++)
            for (int v = 0; v < ATT_NV; v++) memcpy(s + (long)r * ldS + jb + v * VL, &acc[r][v], sizeof(V));
    }
    if (jb == L) return;
    for (int r = 0; r < nr; r++) memset(s + (long)r * ldS + jb, 0, sizeof(Real) * (L - jb));
    for (int d = 0; d < D; d++) {
        const Real* y = Yt + (long)d * T + j0;
        for (int r = 0; r < nr; r++) {
            const Real a = x[r][d];
            Real* sr = s + (long)r * ldS;
            for (int j = jb; j < L; j++) sr[j] += a * y[j];
        }
    }
}

// out_r[0..D) += sum_{x<L} c[r*ldC + x] * X_x[0..D), X_x = X + x*stride, for nr <= ATT_QB rows r.
// Full tiles of ATT_NV vectors along D in registers over all L source rows; the tail along D
// plainly.
template <typename Real>
inline void attn_weighted_rows_(Real* const* out, int nr, const Real* c_in, int ldC, const Real* X, long stride, int L, int D) {
    typedef typename AttVec<Real>::type V;
    constexpr int VL = (int)(64 / sizeof(Real)), DW = ATT_NV * VL;
    const Real* c[ATT_QB];
    for (int r = 0; r < ATT_QB; r++) c[r] = c_in + (long)(r < nr ? r : 0) * ldC;
    int db = 0;
    for (; db + DW <= D; db += DW) {
        V acc[ATT_QB][ATT_NV];
        for (int r = 0; r < ATT_QB; r++)
            for (int v = 0; v < ATT_NV; v++) acc[r][v] = (V){};
        const Real* xr = X + db;
        for (int x = 0; x < L; x++, xr += stride) {
            V xv[ATT_NV];
            for (int v = 0; v < ATT_NV; v++) memcpy(&xv[v], xr + v * VL, sizeof(V));
            for (int r = 0; r < ATT_QB; r++) {
                const Real a = c[r][x];
                for (int v = 0; v < ATT_NV; v++) acc[r][v] += a * xv[v];
            }
        }
        for (int r = 0; r < nr; r++)
            for (int v = 0; v < ATT_NV; v++) {
                V o;
                memcpy(&o, out[r] + db + v * VL, sizeof(V));
                o += acc[r][v];
                memcpy(out[r] + db + v * VL, &o, sizeof(V));
            }
    }
    if (db == D) return;
    for (int x = 0; x < L; x++) {
        const Real* xr = X + (long)x * stride;
        for (int r = 0; r < nr; r++) {
            const Real cx = c[r][x];
            Real* o = out[r];
            for (int d = db; d < D; d++) o[d] += cx * xr[d];
        }
    }
}

template <typename Real>
inline Real attn_max_(const Real* x, int n) {
    Real m[ATT_LANES];
    for (int l = 0; l < ATT_LANES; l++) m[l] = -INFINITY;
    int i = 0;
    for (; i + ATT_LANES <= n; i += ATT_LANES)
        for (int l = 0; l < ATT_LANES; l++) m[l] = std::max(m[l], x[i + l]);
    for (int l = 0; i < n; i++, l++) m[l] = std::max(m[l], x[i]);
    Real r = m[0];
    for (int l = 1; l < ATT_LANES; l++) r = std::max(r, m[l]);
    return r;
}

// x[i] = exp(x[i] - sub), returns the sum (ATT_LANES partial sums, then added in a fixed order)
template <typename Real>
inline Real attn_exp_sum_(Real* x, int n, Real sub) {
    Real acc[ATT_LANES] = {0};
    int i = 0;
    for (; i + ATT_LANES <= n; i += ATT_LANES)
        for (int l = 0; l < ATT_LANES; l++) {
            Real e = cpu_exp_(x[i + l] - sub);
            x[i + l] = e;
            acc[l] += e;
        }
    for (int l = 0; i < n; i++, l++) {
        Real e = cpu_exp_(x[i] - sub);
        x[i] = e;
        acc[l] += e;
    }
    for (int w = ATT_LANES / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return acc[0];
}

template <typename Real>
inline Real attn_dot_(const Real* a, const Real* b, int D) {
    Real acc[ATT_LANES] = {0};
    int d = 0;
    for (; d + ATT_LANES <= D; d += ATT_LANES)
        for (int l = 0; l < ATT_LANES; l++) acc[l] += a[d + l] * b[d + l];
    for (int l = 0; d < D; d++, l++) acc[l] += a[d] * b[d];
    for (int w = ATT_LANES / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return acc[0];
}

template <typename Real>
void attention_forward(Real* out, Real* lse, const Real* q, const Real* k, const Real* v,
                       int B, int T, int H, int Hkv, int D, int window) {
    attention_check_args_(B, T, H, Hkv, D, window);
    const int w = std::min(window, T - 1);
    const int group = H / Hkv;
    const Real scale = (Real)(1.0 / std::sqrt((double)D));
    const int nqb = (T + ATT_QB - 1) / ATT_QB;
    const int ldS = w + ATT_QB;  // keys seen by a block of ATT_QB queries, at most
    Real* Kt = cpu_scratch<Real, 2>((size_t)B * Hkv * D * attn_ld_(T));
    #pragma omp parallel
    {
        attn_transpose_(Kt, k, B, T, Hkv, D);  // (ends in a barrier)
        Real* S = cpu_scratch<Real, 3>((size_t)ATT_QB * ldS);  // this thread's scores block
        #pragma omp for collapse(3) schedule(dynamic, 4)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < H; h++) {
                for (int qb = 0; qb < nqb; qb++) {
                    const int kvh = h / group;
                    const int i0 = qb * ATT_QB, nr = std::min(ATT_QB, T - i0);
                    const int j0 = std::max(0, i0 - w), L = i0 + nr - j0;  // union of visible keys
                    const Real* qrow[ATT_QB];
                    for (int r = 0; r < nr; r++) qrow[r] = q + (((long)b * T + i0 + r) * H + h) * D;
                    attn_rows_times_t_(S, ldS, qrow, nr, Kt + ((long)b * Hkv + kvh) * D * attn_ld_(T), attn_ld_(T), j0, L, D);
                    for (int r = 0; r < nr; r++) {
                        const int i = i0 + r;
                        Real* s = S + (long)r * ldS;
                        const int a = std::max(0, i - w) - j0, e = i - j0;  // visible: [a, e]
                        for (int j = a; j <= e; j++) s[j] *= scale;
                        Real m = attn_max_(s + a, e - a + 1);
                        Real sum = attn_exp_sum_(s + a, e - a + 1, m);
                        for (int j = 0; j < a; j++) s[j] = 0;
                        for (int j = e + 1; j < L; j++) s[j] = 0;
                        Real inv = (Real)1 / sum;
                        for (int j = a; j <= e; j++) s[j] *= inv;  // probabilities
                        lse[((long)b * H + h) * T + i] = m + std::log(sum);
                    }
                    // o_r = sum_j p_rj v_j, one pass over the v rows for the whole block
                    Real* orow[ATT_QB];
                    for (int r = 0; r < nr; r++) {
                        orow[r] = out + (((long)b * T + i0 + r) * H + h) * D;
                        memset(orow[r], 0, sizeof(Real) * D);
                    }
                    attn_weighted_rows_(orow, nr, S, ldS, v + (((long)b * T + j0) * Hkv + kvh) * D, (long)Hkv * D, L, D);
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
    const int nb = (T + ATT_QB - 1) / ATT_QB;
    const int ldS = w + ATT_QB;
    // scratch: D_i (B, H, T) and transposed copies (D x T per head) of k, v (pass 1), q, dout (pass 2)
    Real* Dbuf = cpu_scratch<Real, 1>((size_t)B * H * T);
    Real* Kt = cpu_scratch<Real, 2>((size_t)B * Hkv * D * attn_ld_(T));
    Real* Vt = cpu_scratch<Real, 4>((size_t)B * Hkv * D * attn_ld_(T));
    Real* Qt = cpu_scratch<Real, 5>((size_t)B * H * D * attn_ld_(T));
    Real* Gt = cpu_scratch<Real, 6>((size_t)B * H * D * attn_ld_(T));
    #pragma omp parallel
    {
        attn_transpose_(Kt, k, B, T, Hkv, D);
        attn_transpose_(Vt, v, B, T, Hkv, D);
        attn_transpose_(Qt, q, B, T, H, D);
        attn_transpose_(Gt, dout, B, T, H, D);
        #pragma omp for collapse(3) schedule(static)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < T; i++) {
                    long row = (((long)b * T + i) * H + h) * D;
                    Dbuf[((long)b * H + h) * T + i] = attn_dot_(dout + row, out + row, D);
                }
        // (barrier: the loops above end in one)
        Real* P = cpu_scratch<Real, 3>((size_t)2 * ATT_QB * ldS);  // p and ds of one block
        Real* S2 = P + (long)ATT_QB * ldS;

        // pass 1: dq, per (b, h, query block)
        #pragma omp for collapse(3) schedule(dynamic, 4)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < H; h++) {
                for (int qb = 0; qb < nb; qb++) {
                    const int kvh = h / group;
                    const int i0 = qb * ATT_QB, nr = std::min(ATT_QB, T - i0);
                    const int j0 = std::max(0, i0 - w), L = i0 + nr - j0;
                    const Real* qrow[ATT_QB];
                    const Real* grow[ATT_QB];
                    for (int r = 0; r < nr; r++) {
                        qrow[r] = q + (((long)b * T + i0 + r) * H + h) * D;
                        grow[r] = dout + (((long)b * T + i0 + r) * H + h) * D;
                    }
                    attn_rows_times_t_(P, ldS, qrow, nr, Kt + ((long)b * Hkv + kvh) * D * attn_ld_(T), attn_ld_(T), j0, L, D);     // scores
                    attn_rows_times_t_(S2, ldS, grow, nr, Vt + ((long)b * Hkv + kvh) * D * attn_ld_(T), attn_ld_(T), j0, L, D);    // <G_i, v_j>
                    for (int r = 0; r < nr; r++) {
                        const int i = i0 + r;
                        const Real lse_i = lse[((long)b * H + h) * T + i], D_i = Dbuf[((long)b * H + h) * T + i];
                        Real* p = P + (long)r * ldS;
                        Real* ds = S2 + (long)r * ldS;
                        const int a = std::max(0, i - w) - j0, e = i - j0;
                        for (int j = 0; j < L; j++) {
                            bool vis = j >= a && j <= e;
                            Real pj = vis ? cpu_exp_(p[j] * scale - lse_i) : (Real)0;
                            ds[j] = pj * (ds[j] - D_i);
                        }
                    }
                    Real* dqrow[ATT_QB];
                    for (int r = 0; r < nr; r++) {
                        dqrow[r] = dq + (((long)b * T + i0 + r) * H + h) * D;
                        memset(dqrow[r], 0, sizeof(Real) * D);
                    }
                    attn_weighted_rows_(dqrow, nr, S2, ldS, k + (((long)b * T + j0) * Hkv + kvh) * D, (long)Hkv * D, L, D);
                    for (int r = 0; r < nr; r++)
                        for (int d = 0; d < D; d++) dqrow[r][d] *= scale;
                }
            }
        }

        // pass 2: dk, dv, per (b, kv head, key block); sums over the group's query heads (in
        // order) and the queries that see the block's keys (in order)
        #pragma omp for collapse(3) schedule(dynamic, 4)
        for (int b = 0; b < B; b++) {
            for (int kvh = 0; kvh < Hkv; kvh++) {
                for (int kb = 0; kb < nb; kb++) {
                    const int j0 = kb * ATT_QB, nk = std::min(ATT_QB, T - j0);
                    const int i_end = std::min(T - 1, j0 + nk - 1 + w), L = i_end - j0 + 1;  // queries j0..i_end
                    const Real* krow[ATT_QB];
                    const Real* vrow[ATT_QB];
                    Real* dkrow[ATT_QB];
                    Real* dvrow[ATT_QB];
                    for (int r = 0; r < nk; r++) {
                        long off = (((long)b * T + j0 + r) * Hkv + kvh) * D;
                        krow[r] = k + off; vrow[r] = v + off;
                        dkrow[r] = dk + off; dvrow[r] = dv + off;
                        memset(dkrow[r], 0, sizeof(Real) * D);
                        memset(dvrow[r], 0, sizeof(Real) * D);
                    }
                    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                        const Real* lse_h = lse + ((long)b * H + h) * T;
                        const Real* D_h = Dbuf + ((long)b * H + h) * T;
                        attn_rows_times_t_(P, ldS, krow, nk, Qt + ((long)b * H + h) * D * attn_ld_(T), attn_ld_(T), j0, L, D);   // scores s_ji
                        attn_rows_times_t_(S2, ldS, vrow, nk, Gt + ((long)b * H + h) * D * attn_ld_(T), attn_ld_(T), j0, L, D);  // <G_i, v_j>
                        for (int r = 0; r < nk; r++) {
                            const int j = j0 + r;
                            Real* p = P + (long)r * ldS;
                            Real* ds = S2 + (long)r * ldS;
                            // query i = j0 + x sees key j iff j <= i <= j + w
                            const int a = j - j0, e = std::min(i_end, j + w) - j0;
                            for (int x = 0; x < L; x++) {
                                bool vis = x >= a && x <= e;
                                Real px = vis ? cpu_exp_(p[x] * scale - lse_h[j0 + x]) : (Real)0;
                                p[x] = px;
                                ds[x] = px * (ds[x] - D_h[j0 + x]);
                            }
                        }
                        const long row0 = (((long)b * T + j0) * H + h) * D;
                        attn_weighted_rows_(dkrow, nk, S2, ldS, q + row0, (long)H * D, L, D);
                        attn_weighted_rows_(dvrow, nk, P, ldS, dout + row0, (long)H * D, L, D);
                    }
                    for (int r = 0; r < nk; r++)
                        for (int d = 0; d < D; d++) dkrow[r][d] *= scale;
                }
            }
        }
    }
}
