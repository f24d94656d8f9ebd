// lightning.h: the MiniMax-01 Lightning Attention layer, the linear-attention mixer of train_moe
// (docs/lightning.md).
//
// Layer (u: the block's normed input, (B, T, C); N = H*D):
//   p_q, p_k, p_v = u W_qᵀ, u W_kᵀ, u W_vᵀ             q, k, v = silu(p)      (B, T, H, D) each
//   o = core(q, k, v)   per row and head: o_t = sum_{j<=t} exp(-s_h (t-j)) <q_t, k_j> v_j
//   r = sqrt(mean_N(o²) + 1e-5)   (over the whole N-vector of a token, not per head)
//   a = u W_gateᵀ,  z = σ(a) ⊙ w ⊙ o / r,  out = z W_oᵀ
// No 1/sqrt(D), no softmax, no normaliser in the core: the decay alone makes it a weighted sum
// of the past, and the RMSNorm after it fixes the scale (docs/lightning.md#layer).
//
// The core comes in three forms (docs/lightning.md#core), all computing the same function:
//  * naive, O(T²): the weights exp(-s(t-j)) written out; the test oracle.
//  * recurrent: S_t = exp(-s) S_{t-1} + k_tᵀ v_t, o_t = q_t S_t; a (D x D) state per row and
//    head. With T = 1 it is the decode step (lightning_core_decode_step).
//  * blocked (Lightning Attention-2), what the layer uses: blocks of `blk` tokens; inside a block
//    the decayed causal product, across blocks the state KV carried as in the recurrent form.
//    Work is O(T (blk + D) D) per head instead of O(T² D).
// Backward: naive (oracle) and blocked (docs/lightning.md#core-backward): intra-block products,
// a forward scan that recomputes the states for dq, a reverse scan of the state gradient G for
// dk and dv. States are recomputed, never stored.
//
// Decays: every factor is exp(-s m) with m >= 0, taken from a table E[m], m = 0..blk, built per
// head in double from the fp32 slope (docs/lightning.md#numerics). Nothing is ever factored as
// λ^i λ^-j (it would overflow), and large m underflow to 0, which is harmless.
//
// Layouts: q, k, v, o, dq, dk, dv are (B, T, H, D) row-major, i.e. (B*T, N) with head h in
// columns [h*D, (h+1)*D). A state (B, H, D, D) holds KV[c][e] = sum_j decay * k_j[c] v_j[e].
// The layer's saved pre-activation p is three planes p_q | p_k | p_v of (B*T, N) each (the
// trainer's W_q, W_k, W_v are separate tensors, so three plain matmuls fill the planes).
//
// Rows: every row starts from a zero state and nothing resets inside a row, also not at a BOS
// token (docs/lightning.md#rows). A state argument (prefill / decode) is for inference only: the
// layer's backward assumes zero initial states.
//
// Saved for the backward (sizes in lightning_sizes): u (the caller's), p, o, r, a. q, k, v, z
// and the decays are recomputed. Workspace: the layer functions take `work` (a scratch area of
// work_forward / work_backward elements the caller allocates once, shared by all layers);
// the core functions use small per-thread tiles from cpu_scratch (grow once, kept).
//
// "=" overwrites, "+=" accumulates: activations and activation gradients are overwritten,
// parameter gradients (dW_q, dW_k, dW_v, dW_gate, dW_o, dw) accumulate.
//
// Threads (deterministic, no result depends on the thread count): the core runs one (row, head)
// per task, each summing in a fixed order; per-token steps split tokens; dw splits columns, each
// summed over tokens in order; the matmuls are matmul.h's (deterministic by construction).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include "llmc/cpu/common.h"
#include "llmc/cpu/matmul.h"
#include "llmc/utils.h"

// eps of the lightning output norm (vLLM's MiniMaxText01 value; docs/lightning.md#layer)
constexpr double LLMC_LIGHTNING_EPS = 1e-5;

// ---- slopes (docs/lightning.md#slopes) ----

// base slope of head h of H (before the layer factor): 2^(-8(h+1)/H) for a power-of-two H;
// otherwise with c the largest power of two below H, the c slopes of c heads, then the
// even-indexed slopes of 2c heads, 2^(-4(2m+1)/c), m = 0..H-c-1.
inline double lightning_base_slope(int h, int H) {
    LLMC_CHECK(H > 0 && h >= 0 && h < H, "lightning: head %d out of range for %d heads", h, H);
    int c = 1;
    while (c * 2 <= H) c *= 2;
    if (h < c) return std::exp2(-8.0 * (h + 1) / c);
    return std::exp2(-4.0 * (2 * (h - c) + 1) / c);
}

// slopes[h] = base_h * (1 - layer/(n_layer-1) + 1e-5), or base_h * (1 + 1e-5) for n_layer = 1;
// layer is the global index (softmax layers counted). Computed in double and rounded once to
// fp32: the slopes are fp32 in every build, so the double instantiation (the tests) runs the same
// values as the fp32 trainer.
template <typename Real>
void lightning_slopes(Real* slopes, int H, int layer, int n_layer) {
    LLMC_CHECK(n_layer > 0 && layer >= 0 && layer < n_layer, "lightning: layer %d out of range for %d layers", layer, n_layer);
    const double factor = n_layer == 1 ? 1.0 + 1e-5 : 1.0 - (double)layer / (n_layer - 1) + 1e-5;
    for (int h = 0; h < H; h++) slopes[h] = (Real)(float)(lightning_base_slope(h, H) * factor);
}

// ---- sizes (elements of Real) the caller allocates ----

struct LightningSizes {
    size_t p, o, r, a;      // saved for the backward: p = 3 planes (B*T, N); o, a (B*T, N); r (B*T)
    size_t work_forward;    // lightning_forward's `work`
    size_t work_backward;   // lightning_backward's `work`
    size_t state;           // one decode state (B, H, D, D)
};

inline LightningSizes lightning_sizes(int B, int T, int H, int D) {
    const size_t BT = (size_t)B * T, N = (size_t)H * D;
    LightningSizes s;
    s.p = 3 * BT * N;
    s.o = BT * N;
    s.r = BT;
    s.a = BT * N;
    s.work_forward = 3 * BT * N;   // q, k, v (z reuses q's plane)
    s.work_backward = 7 * BT * N;  // z/da, dz/do, q, k, v, dk, dv (dq reuses z/da's plane)
    s.state = (size_t)B * H * D * D;
    return s;
}

// ---- helpers ----

inline void lightning_check_args_(int B, int T, int H, int D, int blk) {
    LLMC_CHECK(B > 0 && T > 0 && H > 0 && D > 0, "lightning: bad shape B=%d T=%d H=%d D=%d", B, T, H, D);
    LLMC_CHECK(blk > 0, "lightning: block size must be positive, got %d", blk);
}

constexpr int LA_LANES = 16;  // partial sums of a dot product (a fixed order the compiler can vectorize)

template <typename Real>
inline Real la_dot_(const Real* a, const Real* b, int n) {
    Real acc[LA_LANES] = {0};
    int i = 0;
    for (; i + LA_LANES <= n; i += LA_LANES)
        for (int l = 0; l < LA_LANES; l++) acc[l] += a[i + l] * b[i + l];
    for (int l = 0; i < n; i++, l++) acc[l] += a[i] * b[i];
    for (int w = LA_LANES / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return acc[0];
}

// y[0..n) += alpha x[0..n)
template <typename Real>
inline void la_axpy_(Real* __restrict__ y, Real alpha, const Real* __restrict__ x, int n) {
    for (int i = 0; i < n; i++) y[i] += alpha * x[i];
}

// E[m] = exp(-s m), m = 0..n. The product s*m in double, so the table does not inherit the
// rounding of an fp32 argument (|error| up to 2^-24 s m in the exponent).
template <typename Real>
inline void la_decay_table_(Real* E, double s, int n) {
    for (int m = 0; m <= n; m++) E[m] = (Real)std::exp(-s * m);
}

template <typename Real>
inline Real la_sigmoid_(Real x) { return (Real)1 / ((Real)1 + cpu_exp_(-x)); }

// ---- the core, one (row, head) at a time: rows of q, k, v, o are `ld` elements apart ----

template <typename Real>
void la_naive_forward_head_(Real* o, const Real* q, const Real* k, const Real* v, long ld, int T, int D, double s) {
    for (int t = 0; t < T; t++) {
        Real* ot = o + t * ld;
        memset(ot, 0, sizeof(Real) * D);
        for (int j = 0; j <= t; j++) {
            Real w = (Real)std::exp(-s * (t - j)) * la_dot_(q + t * ld, k + j * ld, D);
            la_axpy_(ot, w, v + j * ld, D);
        }
    }
}

// S (D x D) in/out: the state before the first token, then after the last
template <typename Real>
void la_recurrent_forward_head_(Real* o, Real* S, const Real* q, const Real* k, const Real* v, long ld, int T, int D, double s) {
    const Real lam = (Real)std::exp(-s);
    for (int t = 0; t < T; t++) {
        const Real* kt = k + t * ld;
        const Real* vt = v + t * ld;
        for (int c = 0; c < D; c++) {
            Real* row = S + (long)c * D;
            for (int e = 0; e < D; e++) row[e] = lam * row[e] + kt[c] * vt[e];
        }
        Real* ot = o + t * ld;
        memset(ot, 0, sizeof(Real) * D);
        for (int c = 0; c < D; c++) la_axpy_(ot, q[t * ld + c], S + (long)c * D, D);
    }
}

// la_mm_: C (m x n) (= or +=) A (m x L) · M (L x n), all row-major with leading dimensions.
// The block products of the blocked core (scores, intra and inter terms, state updates) are
// all this shape, with m, n, L in {block, D}. A register tile of LA_RW rows x LA_NV vectors of
// 64 bytes (4 x 64 floats, 4 x 32 doubles) accumulates over the whole L, so each step is LA_NV
// loads + LA_RW broadcasts for LA_RW * LA_NV vector FMAs; columns past the last full tile are
// done plainly. Every element is summed over x = 0..L-1 in order, then stored or added to C.
// Loads and stores go through an unaligned, may_alias vector type: a memcpy per vector was
// merged by GCC into one byte-copy loop through the stack, which spilled the whole tile.
constexpr int LA_RW = 4, LA_NV = 4;
template <typename Real>
struct LaVec {
    typedef Real type __attribute__((vector_size(64)));
    typedef Real unaligned __attribute__((vector_size(64), aligned(sizeof(Real)), may_alias));
};

template <typename Real>
void la_mm_(Real* C, long ldc, const Real* A, long lda, const Real* M, long ldm, int m, int n, int L, bool overwrite) {
    typedef typename LaVec<Real>::type V;
    typedef typename LaVec<Real>::unaligned VU;
    constexpr int VL = (int)(64 / sizeof(Real)), JW = LA_NV * VL;
    for (int r0 = 0; r0 < m; r0 += LA_RW) {
        const int nr = std::min(LA_RW, m - r0);
        const Real* a[LA_RW];
        for (int r = 0; r < LA_RW; r++) a[r] = A + (long)(r0 + (r < nr ? r : 0)) * lda;  // pad rows: computed, not stored
        int j0 = 0;
        for (; j0 + JW <= n; j0 += JW) {
            V acc[LA_RW][LA_NV];
            for (int r = 0; r < LA_RW; r++)
                for (int v = 0; v < LA_NV; v++) acc[r][v] = (V){};
            const Real* mx = M + j0;
            for (int x = 0; x < L; x++, mx += ldm) {
                V mv[LA_NV];
                for (int v = 0; v < LA_NV; v++) mv[v] = *(const VU*)(mx + v * VL);
                for (int r = 0; r < LA_RW; r++) {
                    const Real ax = a[r][x];
                    for (int v = 0; v < LA_NV; v++) acc[r][v] += ax * mv[v];
                }
            }
            for (int r = 0; r < nr; r++) {
                Real* c = C + (long)(r0 + r) * ldc + j0;
                for (int v = 0; v < LA_NV; v++) {
                    VU* cv = (VU*)(c + v * VL);
                    *cv = overwrite ? acc[r][v] : *cv + acc[r][v];
                }
            }
        }
        for (int r = 0; r < nr; r++) {
            Real* c = C + (long)(r0 + r) * ldc;
            for (int j = j0; j < n; j++) {
                Real acc = 0;
                for (int x = 0; x < L; x++) acc += a[r][x] * M[(long)x * ldm + j];
                c[j] = overwrite ? acc : c[j] + acc;
            }
        }
    }
}

// Scores of one block of b tokens: S (b x b, ld blk) = ((X Yᵀ) ⊙ M), M_ij = E[i-j] for j <= i,
// else 0; Yt is Y transposed (D x b, ld blk). The full b x b product is computed (twice the
// causal work, but whole vector tiles), then masked.
template <typename Real>
inline void la_block_scores_(Real* S, const Real* X, long ld, const Real* Yt, const Real* E, int b, int blk, int D) {
    la_mm_(S, blk, X, ld, Yt, blk, b, b, D, true);
    for (int i = 0; i < b; i++) {
        Real* Si = S + (long)i * blk;
        for (int j = 0; j <= i; j++) Si[j] *= E[i - j];
        for (int j = i + 1; j < b; j++) Si[j] = 0;
    }
}

// Per-thread scratch of the blocked forward, in elements: E, Kt, Kb, Qs, S, KV.
inline size_t la_forward_scratch_(int blk, int D) {
    return (size_t)(blk + 1) + 3 * (size_t)D * blk + (size_t)blk * blk + (size_t)D * D;
}

// One (row, head). KV (D x D) in/out: the initial state (kv_zero: known to be 0, so inter terms
// are skipped and KV's contents ignored), then the final one. ws: la_forward_scratch_ elements.
template <typename Real>
void la_blocked_forward_head_(Real* o, Real* KV, bool kv_zero, const Real* q, const Real* k, const Real* v, long ld,
                              int T, int D, double s, int blk, Real* ws) {
    Real* E = ws;                            // E[m] = exp(-s m), m = 0..blk
    Real* Kt = E + blk + 1;                  // K of the block, transposed (D x blk)
    Real* Kb = Kt + (long)D * blk;           // β_j k_j, transposed (D x blk): the state update's left operand
    Real* Qs = Kb + (long)D * blk;           // α_i q_i (blk x D): the inter term's left operand
    Real* S = Qs + (long)blk * D;            // scores (blk x blk)
    la_decay_table_(E, s, blk);
    for (int t0 = 0; t0 < T; t0 += blk) {
        const int b = std::min(blk, T - t0);
        const Real* qb = q + t0 * ld;
        const Real* kb = k + t0 * ld;
        const Real* vb = v + t0 * ld;
        Real* ob = o + t0 * ld;
        for (int j = 0; j < b; j++)
            for (int c = 0; c < D; c++) {
                Kt[(long)c * blk + j] = kb[j * ld + c];
                Kb[(long)c * blk + j] = E[b - 1 - j] * kb[j * ld + c];  // β_j = E[b-1-j]
            }
        // intra: O = ((Q Kᵀ) ⊙ M) V, each group of rows stopping at its last diagonal
        la_block_scores_(S, qb, ld, Kt, E, b, blk, D);
        for (int i0 = 0; i0 < b; i0 += LA_RW) {
            const int nr = std::min(LA_RW, b - i0);
            la_mm_(ob + i0 * ld, ld, S + (long)i0 * blk, blk, vb, ld, nr, D, i0 + nr, true);
        }
        // inter: O += diag(α) Q KV, α_i = E[i+1] (the state holds everything before the block)
        if (!kv_zero) {
            for (int i = 0; i < b; i++)
                for (int c = 0; c < D; c++) Qs[(long)i * D + c] = E[i + 1] * qb[i * ld + c];
            la_mm_(ob, ld, Qs, D, KV, D, b, D, D, false);
        }
        // KV = E[b] KV + (diag(β) K)ᵀ V
        if (!kv_zero)
            for (long x = 0; x < (long)D * D; x++) KV[x] *= E[b];
        la_mm_(KV, D, Kb, blk, vb, ld, D, D, b, kv_zero);
        kv_zero = false;
    }
}

template <typename Real>
void la_naive_backward_head_(Real* dq, Real* dk, Real* dv, const Real* dout, const Real* q, const Real* k,
                             const Real* v, long ld, int T, int D, double s) {
    for (int t = 0; t < T; t++) {
        memset(dq + t * ld, 0, sizeof(Real) * D);
        memset(dk + t * ld, 0, sizeof(Real) * D);
        memset(dv + t * ld, 0, sizeof(Real) * D);
    }
    // o_t = sum_{j<=t} w_tj <q_t, k_j> v_j: dq_t += w <G_t, v_j> k_j, dk_j += w <G_t, v_j> q_t,
    // dv_j += w <q_t, k_j> G_t
    for (int t = 0; t < T; t++)
        for (int j = 0; j <= t; j++) {
            const Real w = (Real)std::exp(-s * (t - j));
            const Real g = w * la_dot_(dout + t * ld, v + j * ld, D);
            la_axpy_(dq + t * ld, g, k + j * ld, D);
            la_axpy_(dk + j * ld, g, q + t * ld, D);
            la_axpy_(dv + j * ld, w * la_dot_(q + t * ld, k + j * ld, D), dout + t * ld, D);
        }
}

// Per-thread scratch of the blocked backward, in elements: E; Kt, Vt, Vbt, Qat, dKt (D x blk);
// P, dP, PT, dPT (blk x blk); dOs, Ks (blk x D); KVt, G (D x D).
inline size_t la_backward_scratch_(int blk, int D) {
    return (size_t)(blk + 1) + 7 * (size_t)D * blk + 4 * (size_t)blk * blk + 2 * (size_t)D * D;
}

// One (row, head). state_in, dstate_out (D x D) may be null (zero); dstate_in (D x D) is written
// when non-null. ws: la_backward_scratch_ elements.
template <typename Real>
void la_blocked_backward_head_(Real* dq, Real* dk, Real* dv, const Real* dout, const Real* q, const Real* k,
                               const Real* v, long ld, int T, int D, double s, int blk, const Real* state_in,
                               const Real* dstate_out, Real* dstate_in, Real* ws) {
    const long DB = (long)D * blk, BB = (long)blk * blk;
    Real* E = ws;
    Real* Kt = E + blk + 1;      // K, V of the block transposed (D x blk): the scores' right operands
    Real* Vt = Kt + DB;
    Real* Vbt = Vt + DB;         // β_j v_j transposed (D x blk)
    Real* Qat = Vbt + DB;        // α_i q_i transposed (D x blk)
    Real* dKt = Qat + DB;        // dk's inter term, transposed (D x blk)
    Real* P = dKt + DB;          // (Q Kᵀ) ⊙ M, then its transpose PT; likewise dP = (dO Vᵀ) ⊙ M
    Real* dP = P + BB;
    Real* PT = dP + BB;
    Real* dPT = PT + BB;
    Real* dOs = dPT + BB;        // α_i dO_i (blk x D)
    Real* Ks = dOs + DB;         // β_j k_j (blk x D)
    Real* KVt = Ks + DB;         // the forward's state, transposed: KVt[e][c] = KV[c][e]
    Real* G = KVt + (long)D * D; // dL/dKV (D x D)
    la_decay_table_(E, s, blk);
    const int nblocks = (T + blk - 1) / blk;

    // Pass 1, blocks in order: the intra-block gradients, and dq's inter term from the state
    // before each block, recomputed by the forward's recurrence (kept transposed, which makes
    // dO KVᵀ a plain product).
    bool kv_zero = state_in == nullptr;
    if (state_in)
        for (int c = 0; c < D; c++)
            for (int e = 0; e < D; e++) KVt[(long)e * D + c] = state_in[(long)c * D + e];
    for (int t0 = 0; t0 < T; t0 += blk) {
        const int b = std::min(blk, T - t0);
        const long off = t0 * ld;
        for (int j = 0; j < b; j++)
            for (int c = 0; c < D; c++) {
                Kt[(long)c * blk + j] = k[off + j * ld + c];
                Vt[(long)c * blk + j] = v[off + j * ld + c];
                Vbt[(long)c * blk + j] = E[b - 1 - j] * v[off + j * ld + c];
            }
        la_block_scores_(P, q + off, ld, Kt, E, b, blk, D);      // P = (Q Kᵀ) ⊙ M
        la_block_scores_(dP, dout + off, ld, Vt, E, b, blk, D);  // dP = (dO Vᵀ) ⊙ M
        for (int i = 0; i < b; i++)
            for (int j = 0; j < b; j++) {
                PT[(long)j * blk + i] = P[(long)i * blk + j];
                dPT[(long)j * blk + i] = dP[(long)i * blk + j];
            }
        // dQ = dP K (rows stop at their diagonal), dK = dPᵀ Q and dV = Pᵀ dO (rows start at theirs)
        for (int r0 = 0; r0 < b; r0 += LA_RW) {
            const int nr = std::min(LA_RW, b - r0);
            la_mm_(dq + off + r0 * ld, ld, dP + (long)r0 * blk, blk, k + off, ld, nr, D, r0 + nr, true);
            la_mm_(dk + off + r0 * ld, ld, dPT + (long)r0 * blk + r0, blk, q + off + r0 * ld, ld, nr, D, b - r0, true);
            la_mm_(dv + off + r0 * ld, ld, PT + (long)r0 * blk + r0, blk, dout + off + r0 * ld, ld, nr, D, b - r0, true);
        }
        // dQ += diag(α) dO KVᵀ
        if (!kv_zero) {
            for (int i = 0; i < b; i++)
                for (int e = 0; e < D; e++) dOs[(long)i * D + e] = E[i + 1] * dout[off + i * ld + e];
            la_mm_(dq + off, ld, dOs, D, KVt, D, b, D, D, false);
        }
        if (t0 + b < T) {  // KVᵀ = E[b] KVᵀ + (diag(β) V)ᵀ K; the last block's state is not needed
            if (!kv_zero)
                for (long x = 0; x < (long)D * D; x++) KVt[x] *= E[b];
            la_mm_(KVt, D, Vbt, blk, k + off, ld, D, D, b, kv_zero);
            kv_zero = false;
        }
    }

    // Pass 2, blocks in reverse: G = dL/dKV_t, the gradient of the state after block t. It
    // reaches k_j, v_j of block t through KV_t's update, then passes to KV_{t-1} decayed, plus
    // the inter term of block t's outputs.
    bool g_zero = dstate_out == nullptr;
    if (dstate_out) memcpy(G, dstate_out, sizeof(Real) * D * D);
    for (int tb = nblocks - 1; tb >= 0; tb--) {
        const int t0 = tb * blk, b = std::min(blk, T - t0);
        const long off = t0 * ld;
        if (!g_zero) {
            for (int j = 0; j < b; j++)
                for (int c = 0; c < D; c++) {
                    const Real beta = E[b - 1 - j];
                    Vbt[(long)c * blk + j] = beta * v[off + j * ld + c];
                    Ks[(long)j * D + c] = beta * k[off + j * ld + c];
                }
            // dK_j += β_j v_j Gᵀ, computed transposed: dKt = G (diag(β) V)ᵀ
            la_mm_(dKt, blk, G, D, Vbt, blk, D, b, D, true);
            for (int j = 0; j < b; j++)
                for (int c = 0; c < D; c++) dk[off + j * ld + c] += dKt[(long)c * blk + j];
            // dV += diag(β) K G
            la_mm_(dv + off, ld, Ks, D, G, D, b, D, D, false);
        }
        if (tb == 0 && !dstate_in) break;  // dL/dKV_{-1} is wanted only for an initial state
        // G = E[b] G + (diag(α) Q)ᵀ dO
        for (int i = 0; i < b; i++)
            for (int c = 0; c < D; c++) Qat[(long)c * blk + i] = E[i + 1] * q[off + i * ld + c];
        if (!g_zero)
            for (long x = 0; x < (long)D * D; x++) G[x] *= E[b];
        la_mm_(G, D, Qat, blk, dout + off, ld, D, D, b, g_zero);
        g_zero = false;
    }
    if (dstate_in) {
        if (g_zero) memset(dstate_in, 0, sizeof(Real) * D * D);
        else memcpy(dstate_in, G, sizeof(Real) * D * D);
    }
}

// ---- the core, all rows and heads: q, k, v, o (B, T, H, D), slopes (H), states (B, H, D, D) ----

// o = naive core (the O(T²) oracle; zero initial state)
template <typename Real>
void lightning_core_naive_forward(Real* o, const Real* q, const Real* k, const Real* v, const Real* slopes,
                                  int B, int T, int H, int D) {
    lightning_check_args_(B, T, H, D, 1);
    const long ld = (long)H * D;
    #pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const long off = (long)b * T * ld + (long)h * D;
            la_naive_forward_head_(o + off, q + off, k + off, v + off, ld, T, D, (double)slopes[h]);
        }
}

// o = recurrent core. state (B, H, D, D): in/out (starts from it, ends with S_{T-1}); null: zero
// initial state, the final one discarded.
template <typename Real>
void lightning_core_recurrent_forward(Real* o, Real* state, const Real* q, const Real* k, const Real* v,
                                      const Real* slopes, int B, int T, int H, int D) {
    lightning_check_args_(B, T, H, D, 1);
    const long ld = (long)H * D;
    #pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const long off = (long)b * T * ld + (long)h * D;
            Real* S;
            if (state) {
                S = state + ((long)b * H + h) * D * D;
            } else {
                S = cpu_scratch<Real, 10>((size_t)D * D);
                memset(S, 0, sizeof(Real) * D * D);
            }
            la_recurrent_forward_head_(o + off, S, q + off, k + off, v + off, ld, T, D, (double)slopes[h]);
        }
}

// One generated token per row (q, k, v, o: (B, 1, H, D)), state (B, H, D, D) in/out: the
// recurrent step S = exp(-s) S + kᵀv, o = q S (docs/lightning.md#decode).
template <typename Real>
void lightning_core_decode_step(Real* o, Real* state, const Real* q, const Real* k, const Real* v,
                                const Real* slopes, int B, int H, int D) {
    LLMC_CHECK(state != nullptr, "lightning: the decode step needs a state");
    lightning_core_recurrent_forward(o, state, q, k, v, slopes, B, 1, H, D);
}

// o = blocked core with block size blk. state_in (B, H, D, D): the state before the first token
// (null: zero); state_out: where the final state KV_{T-1} goes (null: not kept). They may be the
// same buffer (a prefill continued, or a decode through the layer).
template <typename Real>
void lightning_core_blocked_forward(Real* o, const Real* q, const Real* k, const Real* v, const Real* slopes,
                                    int B, int T, int H, int D, int blk,
                                    const Real* state_in = nullptr, Real* state_out = nullptr) {
    lightning_check_args_(B, T, H, D, blk);
    const long ld = (long)H * D;
    #pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const long off = (long)b * T * ld + (long)h * D;
            const long soff = ((long)b * H + h) * D * D;
            Real* ws = cpu_scratch<Real, 10>(la_forward_scratch_(blk, D));
            Real* KV = ws + la_forward_scratch_(blk, D) - (long)D * D;
            if (state_in) memcpy(KV, state_in + soff, sizeof(Real) * D * D);
            la_blocked_forward_head_(o + off, KV, state_in == nullptr, q + off, k + off, v + off, ld, T, D,
                                     (double)slopes[h], blk, ws);
            if (state_out) memcpy(state_out + soff, KV, sizeof(Real) * D * D);
        }
}

// dq, dk, dv = gradients of the naive core (zero initial state), given dout = dL/do
template <typename Real>
void lightning_core_naive_backward(Real* dq, Real* dk, Real* dv, const Real* dout, const Real* q, const Real* k,
                                   const Real* v, const Real* slopes, int B, int T, int H, int D) {
    lightning_check_args_(B, T, H, D, 1);
    const long ld = (long)H * D;
    #pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const long off = (long)b * T * ld + (long)h * D;
            la_naive_backward_head_(dq + off, dk + off, dv + off, dout + off, q + off, k + off, v + off, ld, T, D,
                                    (double)slopes[h]);
        }
}

// dq, dk, dv (=) of the blocked core. Optional, for a forward that started from a state or whose
// final state feeds a loss (both (B, H, D, D), null = none): state_in, the forward's initial
// state; dstate_out = dL/d(final state); dstate_in (=) receives dL/d(initial state). Training
// uses none of them.
template <typename Real>
void lightning_core_blocked_backward(Real* dq, Real* dk, Real* dv, const Real* dout, const Real* q, const Real* k,
                                     const Real* v, const Real* slopes, int B, int T, int H, int D, int blk,
                                     const Real* state_in = nullptr, const Real* dstate_out = nullptr,
                                     Real* dstate_in = nullptr) {
    lightning_check_args_(B, T, H, D, blk);
    const long ld = (long)H * D;
    #pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const long off = (long)b * T * ld + (long)h * D;
            const long soff = ((long)b * H + h) * D * D;
            Real* ws = cpu_scratch<Real, 10>(la_backward_scratch_(blk, D));
            la_blocked_backward_head_(dq + off, dk + off, dv + off, dout + off, q + off, k + off, v + off, ld, T, D,
                                      (double)slopes[h], blk, state_in ? state_in + soff : nullptr,
                                      dstate_out ? dstate_out + soff : nullptr, dstate_in ? dstate_in + soff : nullptr, ws);
        }
}

// ---- elementwise and per-token parts of the layer ----

// out = silu(inp) = inp σ(inp)   (out == inp allowed)
template <typename Real>
void lightning_silu_forward(Real* out, const Real* inp, long n) {
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) out[i] = inp[i] * la_sigmoid_(inp[i]);
}

// dinp = dout silu'(inp), silu'(x) = σ(x) (1 + x (1 - σ(x)))   (overwrite; dinp == dout allowed)
template <typename Real>
void lightning_silu_backward(Real* dinp, const Real* dout, const Real* inp, long n) {
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        const Real x = inp[i], sg = la_sigmoid_(x);
        dinp[i] = dout[i] * sg * ((Real)1 + x * ((Real)1 - sg));
    }
}

// Norm and gate, per token over N (docs/lightning.md#layer):
//   r = sqrt(mean(o²) + eps) (=, saved),  z = σ(a) ⊙ w ⊙ o / r (=).
// r_out may be null (the backward recomputes z with the saved r: pass rstat, r_out = null).
// The mean square is accumulated in double (the core has no normaliser, so |o| can be large).
template <typename Real>
void lightning_norm_gate_forward(Real* z, Real* r_out, const Real* rstat, const Real* o, const Real* a,
                                 const Real* w, long BT, int N) {
    #pragma omp parallel for schedule(static)
    for (long t = 0; t < BT; t++) {
        const Real* ot = o + t * N;
        const Real* at = a + t * N;
        Real* zt = z + t * N;
        Real r;
        if (r_out) {
            double ss = 0.0;
            for (int j = 0; j < N; j++) ss += (double)ot[j] * (double)ot[j];
            r = (Real)std::sqrt(ss / N + LLMC_LIGHTNING_EPS);
            r_out[t] = r;
        } else {
            r = rstat[t];
        }
        for (int j = 0; j < N; j++) zt[j] = la_sigmoid_(at[j]) * w[j] * (ot[j] / r);
    }
}

// Backward of the norm and gate, given dz (docs/lightning.md#layer-backward):
//   dy = dz ⊙ σ(a),  da = dz ⊙ y ⊙ σ(a)(1 - σ(a))  (=),  y = w ⊙ ô,  ô = o / r
//   dw += sum_t dy ⊙ ô
//   do = (ĝ - ô mean_N(ĝ ⊙ ô)) / r  (=),  ĝ = w ⊙ dy
// do may alias dz (each token reads its dz row before writing it; dw is summed first).
template <typename Real>
void lightning_norm_gate_backward(Real* da, Real* do_, Real* dw, const Real* dz, const Real* o, const Real* r,
                                  const Real* a, const Real* w, long BT, int N) {
    // dw: columns split across threads, each summed over the tokens in order
    constexpr int CW = 16;
    #pragma omp parallel for schedule(static)
    for (int j0 = 0; j0 < N; j0 += CW) {
        const int j1 = std::min(N, j0 + CW);
        double acc[CW] = {0};
        for (long t = 0; t < BT; t++) {
            const long row = t * N;
            const Real inv = (Real)1 / r[t];
            for (int j = j0; j < j1; j++) acc[j - j0] += (double)(dz[row + j] * la_sigmoid_(a[row + j])) * (double)(o[row + j] * inv);
        }
        for (int j = j0; j < j1; j++) dw[j] += (Real)acc[j - j0];
    }
    #pragma omp parallel for schedule(static)
    for (long t = 0; t < BT; t++) {
        const long row = t * N;
        const Real rt = r[t], inv = (Real)1 / rt;
        double m = 0.0;
        for (int j = 0; j < N; j++) {
            const Real sg = la_sigmoid_(a[row + j]);
            const Real oh = o[row + j] * inv;
            const Real dy = dz[row + j] * sg;
            m += (double)(w[j] * dy) * (double)oh;
            da[row + j] = dz[row + j] * (w[j] * oh) * sg * ((Real)1 - sg);
        }
        const Real mean = (Real)(m / N);
        for (int j = 0; j < N; j++) {
            const Real oh = o[row + j] * inv;
            const Real gh = w[j] * dz[row + j] * la_sigmoid_(a[row + j]);
            do_[row + j] = (gh - oh * mean) * inv;
        }
    }
}

// ---- the layer ----

// Forward (docs/lightning.md#layer). Shapes: u (B*T, C); W_q, W_k, W_v, W_gate (N, C); W_o (C, N);
// w (N); slopes (H). Writes out (B*T, C) and the saved tensors p (3 planes (B*T, N)), o, a
// (B*T, N), r (B*T). work: lightning_sizes().work_forward elements.
// state (B, H, D, D), inference only: null in training (every row starts from zero); otherwise
// the core starts from *state and leaves its final state there, so a prefill followed by calls
// with T = 1 decodes token by token (docs/lightning.md#decode).
template <typename Real>
void lightning_forward(Real* out, Real* p, Real* o, Real* r, Real* a, const Real* u, const Real* wq, const Real* wk,
                       const Real* wv, const Real* wgate, const Real* wo, const Real* w, const Real* slopes,
                       int B, int T, int C, int H, int D, int blk, Real* work, Real* state = nullptr) {
    lightning_check_args_(B, T, H, D, blk);
    LLMC_CHECK(C > 0, "lightning: bad model width %d", C);
    const int N = H * D;
    const long BT = (long)B * T, BTN = BT * N;
    Real* pq = p;
    Real* pk = p + BTN;
    Real* pv = p + 2 * BTN;
    matmul_forward(pq, u, wq, (int)BT, C, N);
    matmul_forward(pk, u, wk, (int)BT, C, N);
    matmul_forward(pv, u, wv, (int)BT, C, N);
    Real* q = work;
    Real* k = work + BTN;
    Real* v = work + 2 * BTN;
    lightning_silu_forward(q, p, 3 * BTN);  // the three planes at once
    lightning_core_blocked_forward(o, q, k, v, slopes, B, T, H, D, blk, state, state);
    matmul_forward(a, u, wgate, (int)BT, C, N);
    Real* z = q;  // q is no longer needed
    lightning_norm_gate_forward(z, r, (const Real*)nullptr, o, a, w, BT, N);
    matmul_forward(out, z, wo, (int)BT, N, C);
}

// Backward (docs/lightning.md#layer-backward), given dout (B*T, C). du (B*T, C) is overwritten;
// dwq, dwk, dwv, dwgate (N, C), dwo (C, N), dw (N) accumulate. Reads the saved p, o, r, a and the
// forward's u, weights and slopes; assumes the forward ran without a state. work:
// lightning_sizes().work_backward elements.
template <typename Real>
void lightning_backward(Real* du, Real* dwq, Real* dwk, Real* dwv, Real* dwgate, Real* dwo, Real* dw,
                        const Real* dout, const Real* u, const Real* p, const Real* o, const Real* r, const Real* a,
                        const Real* wq, const Real* wk, const Real* wv, const Real* wgate, const Real* wo,
                        const Real* w, const Real* slopes, int B, int T, int C, int H, int D, int blk, Real* work) {
    lightning_check_args_(B, T, H, D, blk);
    LLMC_CHECK(C > 0, "lightning: bad model width %d", C);
    const int N = H * D;
    const long BT = (long)B * T, BTN = BT * N;
    Real* X = work;            // z, then da, then dq -> dp_q
    Real* Y = work + BTN;      // dz, then do
    Real* q = work + 2 * BTN;  // q, k, v: three planes
    Real* dk = work + 5 * BTN;
    Real* dv = work + 6 * BTN;

    // out = z W_oᵀ: dz = dout W_o, dW_o += doutᵀ z (z recomputed from the saved o, r, a)
    lightning_norm_gate_forward(X, (Real*)nullptr, r, o, a, w, BT, N);
    memset(Y, 0, sizeof(Real) * BTN);
    matmul_backward(Y, dwo, dout, X, wo, (int)BT, N, C);
    // norm and gate: da -> X, do -> Y (in place), dw +=
    lightning_norm_gate_backward(X, Y, dw, Y, o, r, a, w, BT, N);
    // a = u W_gateᵀ
    memset(du, 0, sizeof(Real) * BT * C);
    matmul_backward(du, dwgate, X, u, wgate, (int)BT, C, N);
    // the core, on q, k, v recomputed from p
    lightning_silu_forward(q, p, 3 * BTN);
    lightning_core_blocked_backward(X, dk, dv, Y, q, q + BTN, q + 2 * BTN, slopes, B, T, H, D, blk);
    // silu and the three projections
    lightning_silu_backward(X, X, p, BTN);
    lightning_silu_backward(dk, dk, p + BTN, BTN);
    lightning_silu_backward(dv, dv, p + 2 * BTN, BTN);
    matmul_backward(du, dwq, X, u, wq, (int)BT, C, N);
    matmul_backward(du, dwk, dk, u, wk, (int)BT, C, N);
    matmul_backward(du, dwv, dv, u, wv, (int)BT, C, N);
}
