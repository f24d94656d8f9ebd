// moe.h: the DeepSeek-V3-style mixture-of-experts FFN, CPU reference, forward and backward
// (docs/moe.md). For N = B*T tokens u_t (rows of u, width C):
//
//   s_t = sigmoid(W_g u_t)                       router scores (E of them)
//   S_t = top-K of s_t + b (ties: lower index)   b is the balancing bias: it only chooses
//   g[t,k] = rho * s_{idx[t,k]} / (sum_{j in S_t} s_j + 1e-20)
//   h_t = Shared(u_t) + sum_k g[t,k] * FFN_{idx[t,k]}(u_t)          (slot order)
//
// Strategy (the GPU's, so the CPU reference exercises the same bookkeeping, docs/moe.md#dispatch):
// the N*K (token, slot) pairs are sorted by expert with a stable counting sort (cnt, off, perm,
// pos); each expert then runs as two dense matmuls over its contiguous segment of sorted rows
// (the rows of u gathered into a buffer, so the blocked fp32 GEMM of matmul.h does the work); the
// outputs are combined per token by a gather-sum in slot order. No float atomics anywhere, every
// output element is owned by one loop iteration and summed in a fixed order, and the matmuls are
// bitwise independent of the thread count, so the whole layer is deterministic.
//
// The backward uses the "a-trick" (docs/moe.md#a-trick): dL/dg_r = <dout_t W2_e, A_r>, the dot of
// the down projection's input gradient with the activation, so the expert outputs Y need not be
// kept. The gate backward (docs/moe.md#gate-backward) turns these into dL/dz.
//
// API for a trainer (docs/moe.md#api): MoeConfig, MoeWeights, MoeGrads; per MoE layer one MoeSaved
// (sizes from moe_saved_numel, pointers from moe_saved_bind over caller buffers); one workspace
// shared by all layers (moe_workspace_numel); moe_forward / moe_backward allocate nothing.
// The balancing bias is updated by moe_bias_update from integer loads that moe_forward counts;
// the metrics of docs/moe.md#metrics are plain functions. moe_forward_literal is the per-token
// definition, written independently of the sorted path, for tests.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include "llmc/cpu/common.h"
#include "llmc/cpu/matmul.h"
#include "llmc/cpu/relu2.h"
#include "llmc/utils.h"

// Limits of the per-token selection, which keeps its small arrays on the stack (no allocation).
constexpr int MOE_MAX_K = 64;       // experts per token
constexpr int MOE_MAX_GROUPS = 64;  // expert groups of group-limited routing

struct MoeConfig {
    int C = 0;           // model width: the layer maps (N, C) -> (N, C)
    int E = 0;           // routed experts
    int K = 0;           // experts chosen per token
    int F = 0;           // hidden width of one routed expert
    int Fs = 0;          // hidden width of the shared expert (N_s * F); 0 = no shared expert
    bool swiglu = false; // expert activation: false = relu(x)^2, true = silu(x1) * x3
    double rho = 2.5;    // routed scaling factor
    double alpha = 0.0;  // sequence-wise auxiliary loss coefficient; 0 = off
    int groups = 1;      // group-limited routing (docs/moe.md#groups): G groups of E/G experts,
    int topk_groups = 1; // keep the M best; G = 1 is plain top-K
};

// Throws llmc::Error (one sentence naming the field) for a configuration the layer cannot run.
inline void moe_check_config(const MoeConfig& c) {
    LLMC_CHECK(c.C > 0 && c.E > 0 && c.F > 0 && c.Fs >= 0, "moe: bad shape C=%d E=%d F=%d Fs=%d", c.C, c.E, c.F, c.Fs);
    LLMC_CHECK(c.K >= 1 && c.K <= c.E && c.K <= MOE_MAX_K, "moe: K=%d experts per token must be in [1, min(E=%d, %d)]", c.K, c.E,
               MOE_MAX_K);
    LLMC_CHECK(c.alpha >= 0 && std::isfinite(c.alpha) && std::isfinite(c.rho), "moe: bad rho=%g or alpha=%g", c.rho, c.alpha);
    if (c.groups != 1) {
        const int G = c.groups, M = c.topk_groups;
        LLMC_CHECK(G > 1 && G <= MOE_MAX_GROUPS && c.E % G == 0, "moe: %d groups must divide E=%d (at most %d groups)", G, c.E,
                   MOE_MAX_GROUPS);
        LLMC_CHECK(M >= 1 && M <= G, "moe: topk_groups=%d must be in [1, groups=%d]", M, G);
        // a group's score is the sum of its top K/M keys (docs/moe.md#groups), so M must divide K,
        // a group must hold K/M experts, and the M kept groups must hold K experts (implied)
        LLMC_CHECK(c.K % M == 0 && c.K / M <= c.E / G, "moe: topk_groups=%d must divide K=%d with K/M <= E/G=%d", M, c.K, c.E / G);
    }
}

// Parameters of one MoE layer (fp32 in the trainer; checkpoint names in docs/moe.md#params).
template <typename Real>
struct MoeWeights {
    const Real* router = nullptr;  // W_g (E, C)
    const Real* bias = nullptr;    // b (E): selection only, no gradient; nullptr = 0
    const Real* w1 = nullptr;      // (E, F, C)  up projection, one (F, C) matrix per expert
    const Real* w3 = nullptr;      // (E, F, C)  SwiGLU's second up projection (unused for ReLU²)
    const Real* w2 = nullptr;      // (E, C, F)  down projection
    const Real* s1 = nullptr;      // (Fs, C)    shared expert up (unused when Fs = 0)
    const Real* s3 = nullptr;      // (Fs, C)    shared expert SwiGLU second up
    const Real* s2 = nullptr;      // (C, Fs)    shared expert down
};

// Their gradients, all accumulated (+=). b has none.
template <typename Real>
struct MoeGrads {
    Real *router = nullptr, *w1 = nullptr, *w3 = nullptr, *w2 = nullptr, *s1 = nullptr, *s3 = nullptr, *s2 = nullptr;
};

// What moe_forward keeps for moe_backward, per layer (docs/moe.md#saved). The layer input u is
// not here: the caller passes the same u to both (the trainer recomputes it from the residual).
// h and hs are in the sorted row order of perm; for SwiGLU they hold two blocks each (x1 then x3).
template <typename Real>
struct MoeSaved {
    Real* s = nullptr;     // (N, E)      router scores sigmoid(z)
    Real* g = nullptr;     // (N, K)      gate weights, in slot order
    Real* h = nullptr;     // (N*K, F)    expert pre-activations (x2 blocks for SwiGLU)
    Real* hs = nullptr;    // (N, Fs)     shared pre-activations (x2 blocks for SwiGLU); none if Fs = 0
    Real* f = nullptr;     // (B, E)      aux-loss selection frequencies per row; none if alpha = 0
    int* idx = nullptr;    // (N, K)      chosen experts, slot order
    int* perm = nullptr;   // (N*K)       sorted row r -> pair p = t*K + k
    int* pos = nullptr;    // (N*K)       pair p -> sorted row r (the inverse of perm)
    int* cnt = nullptr;    // (E)         pairs per expert
    int* off = nullptr;    // (E+1)       segment starts, off[E] = N*K
};

struct MoeSavedSize { size_t real = 0, ints = 0; };  // elements of Real and of int

inline MoeSavedSize moe_saved_numel(const MoeConfig& c, int B, int T) {
    const size_t N = (size_t)B * T, NK = N * c.K, m = c.swiglu ? 2 : 1;
    MoeSavedSize z;
    z.real = N * c.E + N * c.K + m * NK * c.F + m * N * c.Fs + (c.alpha > 0 ? (size_t)B * c.E : 0);
    z.ints = N * c.K + 2 * NK + c.E + (c.E + 1);
    return z;
}

// Slices caller memory (moe_saved_numel's sizes) into a MoeSaved.
template <typename Real>
MoeSaved<Real> moe_saved_bind(const MoeConfig& c, int B, int T, Real* real, int* ints) {
    const size_t N = (size_t)B * T, NK = N * c.K, m = c.swiglu ? 2 : 1;
    MoeSaved<Real> sv;
    sv.s = real; real += N * c.E;
    sv.g = real; real += N * c.K;
    sv.h = real; real += m * NK * c.F;
    sv.hs = c.Fs > 0 ? real : nullptr; real += m * N * c.Fs;
    sv.f = c.alpha > 0 ? real : nullptr;
    sv.idx = ints; ints += N * c.K;
    sv.perm = ints; ints += NK;
    sv.pos = ints; ints += NK;
    sv.cnt = ints; ints += c.E;
    sv.off = ints;
    return sv;
}

// Scratch of one forward or backward call; nothing in it survives from the forward to the
// backward, so one workspace serves every layer. Per-expert buffers hold N rows: a token's K
// experts are distinct, so no expert receives more than N rows.
template <typename Real>
struct MoeWork {
    Real* yp;    // (N*K, C)  forward: expert outputs in sorted order; backward: dX_p (same space)
    Real* xe;    // (N, C)    one expert's gathered input rows
    Real* de;    // (N, C)    one expert's gathered output gradients (times g)
    Real* ae;    // (N, F)    one expert's activation
    Real* dae;   // (N, F)    its gradient: dA', then dA, then dH (dH1 for SwiGLU)
    Real* dh3;   // (N, F)    SwiGLU: dH3
    Real* a;     // (N*K)     a_r = dL/dg at sorted row r (the a-trick), kept until the gate backward
    Real* as;    // (N, Fs)   shared activation
    Real* das;   // (N, Fs)   its gradient, then dH (dH1)
    Real* dhs3;  // (N, Fs)   SwiGLU: shared dH3
    Real* dz;    // (N, E)    dL/dz
};

inline size_t moe_workspace_numel(const MoeConfig& c, int B, int T) {
    const size_t N = (size_t)B * T, NK = N * c.K, m = c.swiglu ? 3 : 2;
    return NK * c.C + 2 * N * c.C + m * N * c.F + NK + m * N * c.Fs + N * c.E;
}

template <typename Real>
MoeWork<Real> moe_work_bind(const MoeConfig& c, int B, int T, Real* w) {
    const size_t N = (size_t)B * T, NK = N * c.K;
    MoeWork<Real> ws;
    ws.yp = w; w += NK * c.C;
    ws.xe = w; w += N * c.C;
    ws.de = w; w += N * c.C;
    ws.ae = w; w += N * c.F;
    ws.dae = w; w += N * c.F;
    ws.dh3 = w; if (c.swiglu) w += N * c.F;
    ws.a = w; w += NK;
    ws.as = w; w += N * c.Fs;
    ws.das = w; w += N * c.Fs;
    ws.dhs3 = w; if (c.swiglu) w += N * c.Fs;
    ws.dz = w;
    return ws;
}

// Matmul weights one token touches (router, K experts, shared expert): 6x this is the layer's
// training FLOPs per token, the MFU convention of docs/moe.md#flops.
inline long moe_active_matmul_params(const MoeConfig& c) {
    const long m = c.swiglu ? 3 : 2;
    return (long)c.E * c.C + (long)c.K * m * c.F * c.C + m * (long)c.Fs * c.C;
}

// ---- router (docs/moe.md#router) ----

template <typename Real>
inline Real moe_sigmoid_(Real x) { return (Real)1 / ((Real)1 + std::exp(-x)); }

// The k largest key(i) over i in [0, n) with ok(i), written to sel[0..k) in descending order,
// equal keys lower index first (docs/moe.md#topk). Repeated selection, O(k^2 n): k and n are
// small per token. A NaN key never wins a comparison, so the result is still k distinct indices
// in range (the NaN then shows up in the loss, not as a crash). Needs k allowed indices.
template <typename KeyFn, typename OkFn>
inline void moe_select_(int* sel, int k, int n, KeyFn key, OkFn ok) {
    for (int j = 0; j < k; j++) {
        int best = -1;
        decltype(key(0)) bk{};
        for (int i = 0; i < n; i++) {
            if (!ok(i)) continue;
            bool taken = false;
            for (int q = 0; q < j; q++) taken |= sel[q] == i;
            if (taken) continue;
            const auto ki = key(i);
            if (best < 0 || ki > bk) { best = i; bk = ki; }  // strict: the earlier (lower) index keeps a tie
        }
        sel[j] = best;
    }
}

// Top-K of one token's keys s + b into sel[0..K), with the group limit when groups > 1:
// a group's score is the sum of its top K/M keys (summed in descending order), the M best groups
// are kept (ties: lower group), and the top-K is taken over their experts only.
template <typename Real>
inline void moe_topk_token(int* sel, const Real* s, const Real* bias, const MoeConfig& c) {
    auto key = [&](int i) { return bias ? s[i] + bias[i] : s[i]; };
    if (c.groups <= 1) {
        moe_select_(sel, c.K, c.E, key, [](int) { return true; });
        return;
    }
    const int G = c.groups, M = c.topk_groups, eg = c.E / G, q = c.K / M;
    Real gscore[MOE_MAX_GROUPS];
    int top[MOE_MAX_K], gsel[MOE_MAX_GROUPS];
    for (int gi = 0; gi < G; gi++) {
        const int e0 = gi * eg;
        moe_select_(top, q, eg, [&](int i) { return key(e0 + i); }, [](int) { return true; });
        Real sum = 0;
        for (int j = 0; j < q; j++) sum += key(e0 + top[j]);
        gscore[gi] = sum;
    }
    moe_select_(gsel, M, G, [&](int gi) { return gscore[gi]; }, [](int) { return true; });
    auto allowed = [&](int i) {
        const int gi = i / eg;
        for (int j = 0; j < M; j++)
            if (gsel[j] == gi) return true;
        return false;
    };
    moe_select_(sel, c.K, c.E, key, allowed);
}

// Gate weights of one token from its scores at the chosen experts.
template <typename Real>
inline void moe_gates_token_(Real* g, const Real* s, const int* sel, const MoeConfig& c) {
    Real sum = 0;
    for (int k = 0; k < c.K; k++) sum += s[sel[k]];
    sum += (Real)1e-20;  // the guard of HF/Megatron: only matters if every chosen score underflows
    for (int k = 0; k < c.K; k++) g[k] = (Real)c.rho * s[sel[k]] / sum;
}

// idx_override (N, K): experts given by the caller instead of the top-K (tests; the GPU's choice
// fed to the CPU). Checked before any work: in range and distinct per token.
inline void moe_check_override_(const int* idx, long N, const MoeConfig& c) {
    for (long t = 0; t < N; t++)
        for (int k = 0; k < c.K; k++) {
            const int e = idx[t * c.K + k];
            LLMC_CHECK(e >= 0 && e < c.E, "moe: idx_override[%ld][%d] = %d is outside [0, %d)", t, k, e, c.E);
            for (int j = 0; j < k; j++)
                LLMC_CHECK(idx[t * c.K + j] != e, "moe: idx_override[%ld] names expert %d twice", t, e);
        }
}

// s (N, E) = sigmoid(u W_g^T); idx, g (N, K) = the top-K (or idx_override) and its gates. (=)
template <typename Real>
void moe_route(Real* s, int* idx, Real* g, const Real* u, const Real* router, const Real* bias, const MoeConfig& c, long N,
               const int* idx_override = nullptr) {
    if (idx_override) moe_check_override_(idx_override, N, c);
    matmul_forward(s, u, router, (int)N, c.C, c.E);
    const int E = c.E, K = c.K;
    #pragma omp parallel for schedule(static)
    for (long t = 0; t < N; t++) {
        Real* st = s + t * E;
        for (int i = 0; i < E; i++) st[i] = moe_sigmoid_(st[i]);
        int* sel = idx + t * K;
        if (idx_override) for (int k = 0; k < K; k++) sel[k] = idx_override[t * K + k];
        else moe_topk_token(sel, st, bias, c);
        moe_gates_token_(g + t * K, st, sel, c);
    }
}

// ---- sequence-wise auxiliary loss (docs/moe.md#aux-loss) ----

// f (B, E) = (E / (K T)) * #{t in row: i in top-K of the unbiased s_t} (plain top-K, no group
// limit). Returns L_bal = alpha * mean over rows of sum_i f_i P_i, P_i = mean_t s_it / sum_j s_jt.
template <typename Real>
double moe_aux_forward(Real* f, const Real* s, const MoeConfig& c, int B, int T) {
    const int E = c.E, K = c.K;
    double* row_loss = cpu_scratch<double, 20>((size_t)B);
    #pragma omp parallel
    {
    double* P = cpu_scratch<double, 21>((size_t)E);  // this thread's sums of s_it / sum_j s_jt
    #pragma omp for schedule(static)
    for (int b = 0; b < B; b++) {
        Real* fb = f + (long)b * E;
        for (int i = 0; i < E; i++) fb[i] = 0;
        for (int i = 0; i < E; i++) P[i] = 0.0;
        int sel[MOE_MAX_K];
        for (int t = 0; t < T; t++) {
            const Real* st = s + ((long)b * T + t) * E;
            moe_select_(sel, K, E, [&](int i) { return st[i]; }, [](int) { return true; });
            for (int k = 0; k < K; k++) fb[sel[k]] += 1;  // integer counts: exact in fp32 up to 2^24
            double all = 0.0;
            for (int i = 0; i < E; i++) all += (double)st[i];
            for (int i = 0; i < E; i++) P[i] += (double)st[i] / all;
        }
        double L = 0.0;
        for (int i = 0; i < E; i++) {
            fb[i] = (Real)((double)E * (double)fb[i] / ((double)K * T));
            L += (double)fb[i] * (P[i] / T);
        }
        row_loss[b] = c.alpha * L;
    }
    }
    double sum = 0.0;
    for (int b = 0; b < B; b++) sum += row_loss[b];
    return B > 0 ? sum / B : 0.0;
}

// ---- dispatch: stable counting sort of the N*K pairs by expert (docs/moe.md#dispatch) ----

// cnt[e] = pairs with expert e; off = exclusive prefix sums (off[E] = N*K); perm[r] = the pair at
// sorted row r, ordered by (expert, pair index); pos = its inverse. Serial and O(N*K): the rank of
// a pair within its expert is the count of earlier pairs of that expert, so the order is fixed.
inline void moe_sort(int* cnt, int* off, int* perm, int* pos, const int* idx, long N, int K, int E) {
    const long NK = N * K;
    for (int e = 0; e < E; e++) cnt[e] = 0;
    for (long p = 0; p < NK; p++) pos[p] = cnt[idx[p]]++;  // rank within the expert, for now
    off[0] = 0;
    for (int e = 0; e < E; e++) off[e + 1] = off[e] + cnt[e];
    for (long p = 0; p < NK; p++) {
        pos[p] += off[idx[p]];
        perm[pos[p]] = (int)p;
    }
}

// load[e] += cnt[e]: the integer counts of the auxiliary-loss-free balancing (docs/moe.md#bias).
inline void moe_load_accumulate(int64_t* load, const int* cnt, int E) {
    for (int e = 0; e < E; e++) load[e] += cnt[e];
}

// ---- experts (docs/moe.md#experts) ----

// a = act(h): relu(h)^2, or silu(h1) * h3 for SwiGLU (h3 = the second block).
template <typename Real>
void moe_act_forward(Real* a, const Real* h, const Real* h3, long n, bool swiglu) {
    if (!swiglu) { relu2_forward(a, h, n); return; }
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) a[i] = h[i] * moe_sigmoid_(h[i]) * h3[i];
}

// dh = da * act'(h) (may alias da); SwiGLU also dh3 = da * silu(h1), with
// silu'(x) = sigmoid(x) (1 + x (1 - sigmoid(x))) (docs/moe.md#experts).
template <typename Real>
void moe_act_backward(Real* dh, Real* dh3, const Real* da, const Real* h, const Real* h3, long n, bool swiglu) {
    if (!swiglu) { relu2_backward(dh, da, h, n); return; }
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        const Real x = h[i], sg = moe_sigmoid_(x), d = da[i];
        dh3[i] = d * x * sg;
        dh[i] = d * h3[i] * sg * ((Real)1 + x * ((Real)1 - sg));
    }
}

// rows j < n of dst = rows src[perm[r0 + j] / K]
template <typename Real>
void moe_gather_(Real* dst, const Real* src, const int* perm, int r0, int n, int K, int C) {
    #pragma omp parallel for schedule(static)
    for (int j = 0; j < n; j++) memcpy(dst + (long)j * C, src + (long)(perm[r0 + j] / K) * C, sizeof(Real) * C);
}

// Every expert's segment of sorted rows: h = X W1_e^T (+ h3 = X W3_e^T), A = act(h),
// yp = A W2_e^T. Experts with no rows are skipped: they contribute exactly nothing.
template <typename Real>
void moe_experts_forward(Real* yp, Real* h, Real* xe, Real* ae, const Real* u, const int* perm, const int* off,
                         const MoeWeights<Real>& w, const MoeConfig& c, long N) {
    const int C = c.C, F = c.F, K = c.K;
    Real* h3 = h + N * K * F;
    for (int e = 0; e < c.E; e++) {
        const int r0 = off[e], n = off[e + 1] - off[e];
        if (n == 0) continue;
        moe_gather_(xe, u, perm, r0, n, K, C);
        matmul_forward(h + (long)r0 * F, xe, w.w1 + (long)e * F * C, n, C, F);
        if (c.swiglu) matmul_forward(h3 + (long)r0 * F, xe, w.w3 + (long)e * F * C, n, C, F);
        moe_act_forward(ae, h + (long)r0 * F, h3 + (long)r0 * F, (long)n * F, c.swiglu);
        matmul_forward(yp + (long)r0 * C, ae, w.w2 + (long)e * C * F, n, F, C);
    }
}

// out = Shared(u) (=), or 0 without a shared expert. as: the activation (scratch).
template <typename Real>
void moe_shared_forward(Real* out, Real* hs, Real* as, const Real* u, const MoeWeights<Real>& w, const MoeConfig& c, long N) {
    if (c.Fs == 0) {
        memset(out, 0, sizeof(Real) * N * c.C);
        return;
    }
    Real* hs3 = hs + N * c.Fs;
    matmul_forward(hs, u, w.s1, (int)N, c.C, c.Fs);
    if (c.swiglu) matmul_forward(hs3, u, w.s3, (int)N, c.C, c.Fs);
    moe_act_forward(as, hs, hs3, N * c.Fs, c.swiglu);
    matmul_forward(out, as, w.s2, (int)N, c.Fs, c.C);
}

// out_t += sum_k g[t,k] * yp[pos[t*K + k]], slot by slot (a gather: each token owns its row).
template <typename Real>
void moe_combine(Real* out, const Real* yp, const Real* g, const int* pos, const MoeConfig& c, long N) {
    const int C = c.C, K = c.K;
    #pragma omp parallel for schedule(static)
    for (long t = 0; t < N; t++) {
        Real* o = out + t * C;
        for (int k = 0; k < K; k++) {
            const Real gk = g[t * K + k];
            const Real* y = yp + (long)pos[t * K + k] * C;
            for (int i = 0; i < C; i++) o[i] += gk * y[i];
        }
    }
}

// ---- the layer ----

// out (N, C) = the MoE FFN of u (N = B*T rows of C; B rows of T tokens matter only to the aux
// loss). Overwrites out and sv; work: moe_workspace_numel elements. load (E) != nullptr: the
// training forward, which adds the step's selection counts (eval passes nullptr: b and the
// counters are untouched; b is read-only here anyway). Returns the layer's aux loss L_bal
// (0 when alpha = 0), which the caller adds to the loss with the same factor as the CE.
template <typename Real>
double moe_forward(Real* out, const MoeSaved<Real>& sv, Real* work, const Real* u, const MoeWeights<Real>& w, const MoeConfig& c,
                   int B, int T, int64_t* load, const int* idx_override = nullptr) {
    moe_check_config(c);
    LLMC_CHECK(B >= 0 && T > 0, "moe: bad batch shape B=%d T=%d", B, T);
    const long N = (long)B * T;
    MoeWork<Real> ws = moe_work_bind(c, B, T, work);
    moe_route(sv.s, sv.idx, sv.g, u, w.router, w.bias, c, N, idx_override);
    const double aux = c.alpha > 0 ? moe_aux_forward(sv.f, sv.s, c, B, T) : 0.0;
    moe_sort(sv.cnt, sv.off, sv.perm, sv.pos, sv.idx, N, c.K, c.E);
    if (load) moe_load_accumulate(load, sv.cnt, c.E);
    moe_shared_forward(out, sv.hs, ws.as, u, w, c, N);
    moe_experts_forward(ws.yp, sv.h, ws.xe, ws.ae, u, sv.perm, sv.off, w, c, N);
    moe_combine(out, ws.yp, sv.g, sv.pos, c, N);
    return aux;
}

// ---- backward (docs/moe.md#backward) ----

// du = du^sh (=, or 0 without a shared expert); dS1, dS2 (dS3) +=. The activation is recomputed.
template <typename Real>
void moe_shared_backward(Real* du, const MoeGrads<Real>& gr, const MoeWork<Real>& ws, const Real* dout, const Real* u,
                         const Real* hs, const MoeWeights<Real>& w, const MoeConfig& c, long N) {
    memset(du, 0, sizeof(Real) * N * c.C);
    if (c.Fs == 0) return;
    const int C = c.C, Fs = c.Fs;
    const Real* hs3 = hs + N * Fs;
    moe_act_forward(ws.as, hs, hs3, N * Fs, c.swiglu);
    matmul_backward((Real*)nullptr, gr.s2, dout, ws.as, w.s2, (int)N, Fs, C);
    memset(ws.das, 0, sizeof(Real) * N * Fs);
    matmul_backward(ws.das, (Real*)nullptr, dout, ws.as, w.s2, (int)N, Fs, C);
    moe_act_backward(ws.das, ws.dhs3, ws.das, hs, hs3, N * Fs, c.swiglu);
    matmul_backward(du, gr.s1, ws.das, u, w.s1, (int)N, C, Fs);
    if (c.swiglu) matmul_backward(du, gr.s3, ws.dhs3, u, w.s3, (int)N, C, Fs);
}

// Per expert segment: dA' = D W2_e, a_r = <dA'_r, A_r> (= dL/dg_r), dA = g dA', dW2_e += (g D)^T A,
// dH = act'(H) dA, dW1_e (dW3_e) += dH^T X, dX_p = dH W1_e (+ dH3 W3_e). Writes ws.a and the
// rows of ws.yp (= dX_p) of every expert with rows.
template <typename Real>
void moe_experts_backward(const MoeGrads<Real>& gr, const MoeWork<Real>& ws, const Real* dout, const Real* u,
                          const MoeSaved<Real>& sv, const MoeWeights<Real>& w, const MoeConfig& c, long N) {
    const int C = c.C, F = c.F, K = c.K;
    const Real* h3all = sv.h + N * K * F;
    Real* dxp = ws.yp;
    for (int e = 0; e < c.E; e++) {
        const int r0 = sv.off[e], n = sv.off[e + 1] - sv.off[e];
        if (n == 0) continue;  // a zero-token expert: its gradients stay exactly as they were
        const Real* h = sv.h + (long)r0 * F;
        const Real* h3 = h3all + (long)r0 * F;
        const Real* W1 = w.w1 + (long)e * F * C;
        const Real* W3 = c.swiglu ? w.w3 + (long)e * F * C : nullptr;
        const Real* W2 = w.w2 + (long)e * C * F;
        moe_gather_(ws.xe, u, sv.perm, r0, n, K, C);
        moe_gather_(ws.de, dout, sv.perm, r0, n, K, C);
        moe_act_forward(ws.ae, h, h3, (long)n * F, c.swiglu);
        memset(ws.dae, 0, sizeof(Real) * n * F);
        matmul_backward(ws.dae, (Real*)nullptr, ws.de, ws.ae, W2, n, F, C);  // dA' = D W2_e
        #pragma omp parallel for schedule(static)
        for (int j = 0; j < n; j++) {
            Real* da = ws.dae + (long)j * F;
            const Real* A = ws.ae + (long)j * F;
            Real dot = 0;
            for (int i = 0; i < F; i++) dot += da[i] * A[i];
            ws.a[r0 + j] = dot;
            const Real gj = sv.g[sv.perm[r0 + j]];
            for (int i = 0; i < F; i++) da[i] *= gj;
            Real* d = ws.de + (long)j * C;
            for (int i = 0; i < C; i++) d[i] *= gj;
        }
        matmul_backward((Real*)nullptr, gr.w2 + (long)e * C * F, ws.de, ws.ae, W2, n, F, C);
        moe_act_backward(ws.dae, ws.dh3, ws.dae, h, h3, (long)n * F, c.swiglu);
        Real* dx = dxp + (long)r0 * C;
        memset(dx, 0, sizeof(Real) * n * C);
        matmul_backward(dx, gr.w1 + (long)e * F * C, ws.dae, ws.xe, W1, n, C, F);
        if (c.swiglu) matmul_backward(dx, gr.w3 + (long)e * F * C, ws.dh3, ws.xe, W3, n, C, F);
    }
}

// du_t += sum_k dxp[pos[t*K + k]], slot by slot.
template <typename Real>
void moe_dispatch_backward(Real* du, const Real* dxp, const int* pos, const MoeConfig& c, long N) {
    const int C = c.C, K = c.K;
    #pragma omp parallel for schedule(static)
    for (long t = 0; t < N; t++) {
        Real* d = du + t * C;
        for (int k = 0; k < K; k++) {
            const Real* x = dxp + (long)pos[t * K + k] * C;
            for (int i = 0; i < C; i++) d[i] += x[i];
        }
    }
}

// dz (N, E) = dL/dz from a (dL/dg per sorted row) and, when alpha > 0, the aux loss scaled by
// daux = dL/dL_bal; then dW_g += dz^T u and du += dz W_g (docs/moe.md#gate-backward).
template <typename Real>
void moe_gate_backward(Real* du, Real* drouter, Real* dz, const Real* a, const Real* u, const Real* router, const MoeSaved<Real>& sv,
                       const MoeConfig& c, int B, int T, Real daux) {
    const long N = (long)B * T;
    const int E = c.E, K = c.K;
    const Real rho = (Real)c.rho;
    const bool aux = c.alpha > 0;
    const Real kscale = aux ? (Real)(c.alpha / ((double)T * B)) * daux : (Real)0;  // kappa_i = kscale * f_i
    #pragma omp parallel for schedule(static)
    for (long t = 0; t < N; t++) {
        const Real* st = sv.s + t * E;
        const int* sel = sv.idx + t * K;
        Real* d = dz + t * E;
        for (int i = 0; i < E; i++) d[i] = 0;
        Real sum = 0;  // the forward's renormaliser, recomputed in the same order
        for (int k = 0; k < K; k++) sum += st[sel[k]];
        sum += (Real)1e-20;
        Real sa = 0;
        for (int k = 0; k < K; k++) sa += a[sv.pos[t * K + k]] * st[sel[k]];
        for (int k = 0; k < K; k++) d[sel[k]] = rho / sum * (a[sv.pos[t * K + k]] - sa / sum);
        if (aux) {
            const Real* fb = sv.f + (t / T) * E;
            Real all = 0, ks = 0;
            for (int i = 0; i < E; i++) { all += st[i]; ks += kscale * fb[i] * st[i]; }
            for (int i = 0; i < E; i++) d[i] += (kscale * fb[i] - ks / all) / all;
        }
        for (int i = 0; i < E; i++) d[i] *= st[i] * ((Real)1 - st[i]);
    }
    matmul_backward(du, drouter, dz, u, router, (int)N, c.C, E);
}

// du (N, C) = dL/du (=); every parameter gradient +=. dout: dL/d(out), u and sv as in the forward,
// daux = dL/dL_bal (the factor the caller put on the aux loss; ignored when alpha = 0).
// du is the sum du^shared + du^routed + du^gate, added in that order.
template <typename Real>
void moe_backward(Real* du, const MoeGrads<Real>& gr, Real* work, const Real* dout, const Real* u, const MoeWeights<Real>& w,
                  const MoeSaved<Real>& sv, const MoeConfig& c, int B, int T, Real daux) {
    const long N = (long)B * T;
    MoeWork<Real> ws = moe_work_bind(c, B, T, work);
    moe_shared_backward(du, gr, ws, dout, u, sv.hs, w, c, N);
    moe_experts_backward(gr, ws, dout, u, sv, w, c, N);
    moe_dispatch_backward(du, ws.yp, sv.pos, c, N);
    moe_gate_backward(du, gr.router, ws.dz, ws.a, u, w.router, sv, c, B, T, daux);
}

// ---- auxiliary-loss-free balancing (docs/moe.md#bias) ----

// Once per optimizer step, after the parameter update: b_e += gamma * sign(sum_i l_i - E l_e),
// then l = 0. The sign is taken of an int64 expression, so every rank holding the same summed
// loads gets the same b bit for bit; an exact tie (l_e equal to the mean) leaves b_e unchanged.
template <typename Real>
void moe_bias_update(Real* b, int64_t* load, int E, double gamma) {
    int64_t total = 0;
    for (int e = 0; e < E; e++) total += load[e];
    const Real gm = (Real)gamma;
    for (int e = 0; e < E; e++) {
        const int64_t v = total - (int64_t)E * load[e];
        if (v > 0) b[e] += gm;
        else if (v < 0) b[e] -= gm;
        load[e] = 0;
    }
}

// ---- metrics (docs/moe.md#metrics) ----

// max_e l_e / mean(l) - 1; 0 when nothing was counted.
inline double moe_maxvio(const int64_t* load, int E) {
    int64_t total = 0, mx = 0;
    for (int e = 0; e < E; e++) { total += load[e]; mx = std::max(mx, load[e]); }
    if (total == 0) return 0.0;
    return (double)mx * E / (double)total - 1.0;
}

// population std(l) / mean(l); 0 when nothing was counted.
inline double moe_cv(const int64_t* load, int E) {
    int64_t total = 0;
    for (int e = 0; e < E; e++) total += load[e];
    if (total == 0) return 0.0;
    const double mean = (double)total / E;
    double var = 0.0;
    for (int e = 0; e < E; e++) var += ((double)load[e] - mean) * ((double)load[e] - mean);
    return std::sqrt(var / E) / mean;
}

// experts with zero load in `load` (the caller sums the loads of the whole logging window)
inline int moe_dead(const int64_t* load, int E) {
    int n = 0;
    for (int e = 0; e < E; e++) n += load[e] == 0;
    return n;
}

// mean over the N tokens of -sum_i p_i ln p_i, p = s_t / sum_j s_tj, in nats (0 ln 0 = 0).
// Summed in double by cpu_chunked_sum, so the value does not depend on the thread count.
template <typename Real>
double moe_entropy(const Real* s, long N, int E) {
    double total = 0.0;
    cpu_chunked_sum(N, 1, &total, [&](long t0, long t1, double* acc) {
        for (long t = t0; t < t1; t++) {
            const Real* st = s + t * E;
            double all = 0.0, h = 0.0;
            for (int i = 0; i < E; i++) all += (double)st[i];
            for (int i = 0; i < E; i++) {
                const double p = (double)st[i] / all;
                if (p > 0) h -= p * std::log(p);
            }
            acc[0] += h;
        }
    });
    return N > 0 ? total / N : 0.0;
}

struct MoeBiasStats { double min = 0, max = 0, std = 0; };

// min, max and population std of b
template <typename Real>
MoeBiasStats moe_bias_stats(const Real* b, int E) {
    MoeBiasStats r;
    if (E <= 0) return r;
    double sum = 0.0;
    r.min = r.max = (double)b[0];
    for (int e = 0; e < E; e++) {
        sum += (double)b[e];
        r.min = std::min(r.min, (double)b[e]);
        r.max = std::max(r.max, (double)b[e]);
    }
    const double mean = sum / E;
    double var = 0.0;
    for (int e = 0; e < E; e++) var += ((double)b[e] - mean) * ((double)b[e] - mean);
    r.std = std::sqrt(var / E);
    return r;
}

// ---- the per-token definition (tests) ----

// out (N, C), idx and g (N, K) computed token by token exactly as docs/moe.md#router writes the
// layer: no sort, no workspace, the top-K by sorting (key descending, index ascending) and the
// group limit by sorting groups the same way. Written separately from the path above on purpose;
// returns L_bal from its own loops. Allocates (it is a test oracle, not a training path).
template <typename Real>
double moe_forward_literal(Real* out, int* idx, Real* g, const Real* u, const MoeWeights<Real>& w, const MoeConfig& c, int B, int T,
                           const int* idx_override = nullptr) {
    moe_check_config(c);
    const int C = c.C, E = c.E, K = c.K, F = c.F, Fs = c.Fs;
    const long N = (long)B * T;
    std::vector<Real> s(E), hid(std::max(F, Fs)), y(C);
    std::vector<int> order(E);
    auto mlp = [&](const Real* ut, const Real* W1, const Real* W3, const Real* W2, int width, Real* dst) {
        for (int j = 0; j < width; j++) {
            Real h1 = 0, h3 = 0;
            for (int i = 0; i < C; i++) h1 += W1[(long)j * C + i] * ut[i];
            if (c.swiglu) {
                for (int i = 0; i < C; i++) h3 += W3[(long)j * C + i] * ut[i];
                hid[j] = h1 * moe_sigmoid_(h1) * h3;
            } else {
                const Real r = h1 > 0 ? h1 : (Real)0;
                hid[j] = r * r;
            }
        }
        for (int o = 0; o < C; o++) {
            Real acc = 0;
            for (int j = 0; j < width; j++) acc += W2[(long)o * width + j] * hid[j];
            dst[o] = acc;
        }
    };
    std::vector<double> f((size_t)B * E, 0.0), P((size_t)B * E, 0.0);
    for (long t = 0; t < N; t++) {
        const Real* ut = u + t * C;
        for (int i = 0; i < E; i++) {
            Real z = 0;
            for (int j = 0; j < C; j++) z += w.router[(long)i * C + j] * ut[j];
            s[i] = (Real)1 / ((Real)1 + std::exp(-z));
        }
        std::vector<Real> key(E);
        for (int i = 0; i < E; i++) key[i] = w.bias ? s[i] + w.bias[i] : s[i];
        auto by_key = [&](const std::vector<Real>& v) {
            return [&v](int a, int b) { return v[a] > v[b] || (v[a] == v[b] && a < b); };
        };
        int* sel = idx + t * K;
        if (idx_override) {
            for (int k = 0; k < K; k++) sel[k] = idx_override[t * K + k];
        } else {
            std::vector<int> cand;
            if (c.groups > 1) {
                const int G = c.groups, eg = E / G, q = K / c.topk_groups;
                std::vector<Real> gs(G);
                for (int gi = 0; gi < G; gi++) {
                    std::vector<Real> kk(key.begin() + gi * eg, key.begin() + (gi + 1) * eg);
                    std::sort(kk.begin(), kk.end(), [](Real a, Real b) { return a > b; });
                    Real sum = 0;
                    for (int j = 0; j < q; j++) sum += kk[j];
                    gs[gi] = sum;
                }
                std::vector<int> go(G);
                for (int gi = 0; gi < G; gi++) go[gi] = gi;
                std::sort(go.begin(), go.end(), by_key(gs));
                for (int j = 0; j < c.topk_groups; j++)
                    for (int i = 0; i < eg; i++) cand.push_back(go[j] * eg + i);
            } else {
                for (int i = 0; i < E; i++) cand.push_back(i);
            }
            std::sort(cand.begin(), cand.end(), by_key(key));
            for (int k = 0; k < K; k++) sel[k] = cand[k];
        }
        Real sum = 0;
        for (int k = 0; k < K; k++) sum += s[sel[k]];
        sum += (Real)1e-20;
        for (int k = 0; k < K; k++) g[t * K + k] = (Real)c.rho * s[sel[k]] / sum;
        Real* o = out + t * C;
        if (Fs > 0) mlp(ut, w.s1, w.s3, w.s2, Fs, o);
        else for (int i = 0; i < C; i++) o[i] = 0;
        for (int k = 0; k < K; k++) {
            const int e = sel[k];
            mlp(ut, w.w1 + (long)e * F * C, c.swiglu ? w.w3 + (long)e * F * C : nullptr, w.w2 + (long)e * C * F, F, y.data());
            for (int i = 0; i < C; i++) o[i] += g[t * K + k] * y[i];
        }
        if (c.alpha > 0) {  // the aux loss's own top-K: unbiased scores, no group limit
            const long b = t / T;
            for (int i = 0; i < E; i++) order[i] = i;
            std::sort(order.begin(), order.end(), by_key(s));
            for (int k = 0; k < K; k++) f[b * E + order[k]] += 1;
            double all = 0;
            for (int i = 0; i < E; i++) all += (double)s[i];
            for (int i = 0; i < E; i++) P[b * E + i] += (double)s[i] / all;
        }
    }
    if (c.alpha <= 0 || B == 0) return 0.0;
    double L = 0;
    for (int b = 0; b < B; b++) {
        double row = 0;
        for (int i = 0; i < E; i++) row += ((double)E / ((double)K * T)) * f[(size_t)b * E + i] * (P[(size_t)b * E + i] / T);
        L += c.alpha * row;
    }
    return L / B;
}
