// moe.cuh: the mixture-of-experts FFN on the GPU, forward and backward (docs/moe.md; CPU twin
// llmc/cpu/moe.h, whose comments state every rule followed here: sigmoid router, top-K with ties to
// the lower index, group-limited routing, gates renormalised times rho, the sequence-wise aux loss,
// the stable counting sort, the a-trick backward, the bias update).
//
// Strategy (the first, simple version: correct and deterministic, not yet fast):
//   router     one warp per token: E fp32 dot products u_t . W_g[i] (warp butterfly, fixed order),
//              s = sigmoid in fp32; lane 0 then runs the CPU's selection loops serially on those
//              scores (bit-for-bit the same decisions given the same s) and writes idx and the
//              fp32 gates; with alpha > 0 also the plain unbiased top-K and sum_i s_i (double) that
//              the aux loss needs.
//   dispatch   the CPU's stable counting sort, on the device and without atomics: blocks of 256
//              pairs rank each pair among the same-expert pairs of their chunk (an O(256) scan in
//              shared memory) and write per-chunk counts; one block turns them into cnt, off, the
//              per-chunk bases and load += cnt; a last pass writes pos and perm. Positions are in
//              pair order within every expert, exactly as on the CPU.
//   experts    the E+1 offsets are copied to the host (one cudaStreamSynchronize per forward and
//              per backward: the known cost of this version; a grouped GEMM reading off from device
//              memory is the later optimisation, docs/moe.md#dispatch). Then per expert with rows:
//              gather its rows of u, cuBLASLt GEMMs (llmc/cuda/matmul.cuh) for H = X W1_e^T (+ W3),
//              the activation as an elementwise kernel, Y = A W2_e^T. Zero-token experts are
//              skipped, so their gradients are untouched (exactly zero contribution).
//   combine    out_t = shared_t + sum_k g[t,k] y[pos[t,k]], one thread per element, slot order,
//              fp32, rounded once.
//   backward   the CPU's order: shared expert (GEMMs), per expert dA' = D W2_e, a row kernel that
//              forms a_r = <dA'_r, A_r> (the a-trick), dH = act'(H) g dA' and g D, then the weight
//              and input GEMMs; the gate backward per token in fp32; dW_g += dz^T u by one thread
//              per (expert, column) summing tokens in order; du = du^sh + sum_k dX_p + W_g^T dz in
//              one pass, rounded once.
// No float atomics anywhere: every output element is owned by one thread (or one GEMM) and summed
// in a fixed order, so two runs are bitwise equal.
//
// Precision (docs/moe.md#cuda): router, scores, selection, gates, aux loss and the gate
// backward in fp32 (aux sums in double, as the CPU); W_g and its gradient fp32; expert operands
// floatX (bf16) with fp32 accumulation; H, A and the GEMM outputs are rounded to floatX once each.
//
// Shapes: C, F and Fs must be multiples of 8 (16 bytes of bf16) because cuBLASLt needs 16-byte
// aligned operands and the per-expert slices of the saved H, of Y and of the weight stacks start at
// row offsets times these widths (checked, one error line).
//
// Saved layout (moe_saved_numel_cuda): the floatX buffer holds, 16-byte aligned each, s (N, E) fp32,
// g (N, K) fp32, f (B, E) fp32 when alpha > 0 (fp32 stored by reinterpretation), then H (N*K, F)
// floatX (two blocks for SwiGLU: H1 then H3) and the shared H (N, Fs) (two blocks for SwiGLU); the
// int buffer idx (N, K), perm (N*K), pos (N*K), cnt (E), off (E+1), the CPU's order.
#pragma once
#include <cstdint>
#include <vector>
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/reduce.cuh"
#include "llmc/cuda/matmul.cuh"
#include "llmc/cpu/moe.h"  // MoeConfig, MoeSavedSize, moe_check_config, MOE_MAX_K, MOE_MAX_GROUPS

constexpr int MOE_ROUTER_WARPS = 4;   // tokens per block of the router kernel (one warp each)
constexpr int MOE_SORT_CHUNK = 256;   // pairs per block of the counting sort (= its block size)
constexpr int MOE_BLOCK = 256;        // elementwise kernels
constexpr int MOE_ROW_BLOCK = 128;    // the per-row backward kernel

// ---- layout: slices of the caller's buffers, each 16-byte aligned ----

namespace llmc {
struct MoeCarve {
    char* base;
    size_t bytes = 0;
    template <typename T>
    T* take(size_t n) {
        T* p = base ? reinterpret_cast<T*>(base + bytes) : nullptr;
        bytes += (n * sizeof(T) + 15) & ~(size_t)15;
        return p;
    }
};
}  // namespace llmc

struct MoeSavedCuda {
    float* s; float* g; float* f; floatX* h; floatX* hs;
    int *idx, *perm, *pos, *cnt, *off;
    size_t real_bytes;
};

inline MoeSavedCuda moe_saved_bind_cuda(const MoeConfig& c, int B, int T, floatX* real, int* ints) {
    const size_t N = (size_t)B * T, NK = N * c.K, m = c.swiglu ? 2 : 1;
    llmc::MoeCarve cv{reinterpret_cast<char*>(real)};
    MoeSavedCuda sv;
    sv.s = cv.take<float>(N * c.E);
    sv.g = cv.take<float>(NK);
    sv.f = cv.take<float>(c.alpha > 0 ? (size_t)B * c.E : 0);
    sv.h = cv.take<floatX>(m * NK * c.F);
    sv.hs = cv.take<floatX>(m * N * c.Fs);
    sv.real_bytes = cv.bytes;
    sv.idx = ints;
    sv.perm = ints ? ints + NK : nullptr;
    sv.pos = ints ? ints + 2 * NK : nullptr;
    sv.cnt = ints ? ints + 3 * NK : nullptr;
    sv.off = ints ? ints + 3 * NK + c.E : nullptr;
    return sv;
}

// .real in floatX elements (a multiple of 16 bytes, so per-layer buffers laid end to end stay
// aligned), .ints in ints
inline MoeSavedSize moe_saved_numel_cuda(const MoeConfig& c, int B, int T) {
    const size_t N = (size_t)B * T, NK = N * c.K;
    MoeSavedSize z;
    z.real = moe_saved_bind_cuda(c, B, T, nullptr, nullptr).real_bytes / sizeof(floatX);
    z.ints = 3 * NK + c.E + (c.E + 1);
    return z;
}

// Scratch of one call (nothing survives from forward to backward).
struct MoeWorkCuda {
    floatX* yp;    // (N*K, C) forward: expert outputs in sorted order; backward: dX_p
    floatX* xe;    // (N, C)   one expert's gathered input rows
    floatX* de;    // (N, C)   its gathered output gradients (then times g)
    floatX* ae;    // (N, F)   its activation
    floatX* dae;   // (N, F)   dA', then dH (dH1)
    floatX* dh3;   // (N, F)   SwiGLU dH3
    floatX* as;    // (N, Fs)  shared activation
    floatX* das;   // (N, Fs)  its gradient, then dH (dH1)
    floatX* dhs3;  // (N, Fs)  SwiGLU shared dH3
    float* a;      // (N*K)    a_r = dL/dg at sorted row r
    float* dz;     // (N, E)   dL/dz
    double* all;   // (N)      sum_i s_ti (alpha > 0)
    int* asel;     // (N, K)   the aux loss's plain top-K (alpha > 0)
    double* contrib; // (B, E) f_i P_i / T per row (alpha > 0)
    double* rowloss; // (B)
    int* hist;     // (chunks, E) per-chunk counts, then bases
    int* flag;     // (4)      [0]: a bad idx_override
    size_t bytes;
};

inline MoeWorkCuda moe_work_bind_cuda(const MoeConfig& c, int B, int T, floatX* w) {
    const size_t N = (size_t)B * T, NK = N * c.K;
    const size_t chunks = CEIL_DIV(NK, (size_t)MOE_SORT_CHUNK);
    const bool aux = c.alpha > 0;
    llmc::MoeCarve cv{reinterpret_cast<char*>(w)};
    MoeWorkCuda ws;
    ws.yp = cv.take<floatX>(NK * c.C);
    ws.xe = cv.take<floatX>(N * c.C);
    ws.de = cv.take<floatX>(N * c.C);
    ws.ae = cv.take<floatX>(N * c.F);
    ws.dae = cv.take<floatX>(N * c.F);
    ws.dh3 = cv.take<floatX>(c.swiglu ? N * c.F : 0);
    ws.as = cv.take<floatX>(N * c.Fs);
    ws.das = cv.take<floatX>(N * c.Fs);
    ws.dhs3 = cv.take<floatX>(c.swiglu ? N * c.Fs : 0);
    ws.a = cv.take<float>(NK);
    ws.dz = cv.take<float>(N * c.E);
    ws.all = cv.take<double>(aux ? N : 0);
    ws.asel = cv.take<int>(aux ? NK : 0);
    ws.contrib = cv.take<double>(aux ? (size_t)B * c.E : 0);
    ws.rowloss = cv.take<double>(aux ? (size_t)B : 0);
    ws.hist = cv.take<int>(chunks * c.E);
    ws.flag = cv.take<int>(4);
    ws.bytes = cv.bytes;
    return ws;
}

inline size_t moe_workspace_numel_cuda(const MoeConfig& c, int B, int T) {
    return moe_work_bind_cuda(c, B, T, nullptr).bytes / sizeof(floatX);
}

// ---- router ----

__device__ __forceinline__ float moe_sigmoid_dev(float x) { return 1.0f / (1.0f + expf(-x)); }

// moe_select_ of the CPU, on one thread: the k largest key(i) with ok(i), ties to the lower index.
template <typename KeyFn, typename OkFn>
__device__ __forceinline__ void moe_select_dev(int* sel, int k, int n, KeyFn key, OkFn ok) {
    for (int j = 0; j < k; j++) {
        int best = -1;
        float bk = 0.0f;
        for (int i = 0; i < n; i++) {
            if (!ok(i)) continue;
            bool taken = false;
            for (int q = 0; q < j; q++) taken |= sel[q] == i;
            if (taken) continue;
            const float ki = key(i);
            if (best < 0 || ki > bk) { best = i; bk = ki; }  // strict: the lower index keeps a tie
        }
        sel[j] = best;
    }
}

// moe_topk_token of the CPU: keys s + b, group-limited when G > 1 (group score = the sum of its
// top K/M keys in descending order; the M best groups; ties to the lower group).
__device__ __forceinline__ void moe_topk_dev(int* sel, const float* s, const float* bias, int E, int K, int G, int M) {
    auto key = [&](int i) { return bias ? s[i] + bias[i] : s[i]; };
    auto all = [](int) { return true; };
    if (G <= 1) {
        moe_select_dev(sel, K, E, key, all);
        return;
    }
    const int eg = E / G, q = K / M;
    float gscore[MOE_MAX_GROUPS];
    int top[MOE_MAX_K], gsel[MOE_MAX_GROUPS];
    for (int gi = 0; gi < G; gi++) {
        const int e0 = gi * eg;
        moe_select_dev(top, q, eg, [&](int i) { return key(e0 + i); }, all);
        float sum = 0.0f;
        for (int j = 0; j < q; j++) sum += key(e0 + top[j]);
        gscore[gi] = sum;
    }
    moe_select_dev(gsel, M, G, [&](int gi) { return gscore[gi]; }, all);
    moe_select_dev(sel, K, E, key, [&](int i) {
        const int gi = i / eg;
        for (int j = 0; j < M; j++)
            if (gsel[j] == gi) return true;
        return false;
    });
}

// One warp per token: s (N, E), idx and g (N, K); alpha > 0: asel (N, K) and all (N). A bad
// idx_override row (out of range or repeated) sets flag[0] and routes the token to experts 0..K-1,
// so that the later kernels stay in bounds until the host raises the error.
__global__ void __launch_bounds__(MOE_ROUTER_WARPS * WARP_SIZE)
moe_router_kernel(float* s, int* idx, float* g, int* asel, double* all, int* flag, const floatX* u, const float* router,
                  const float* bias, const int* idx_override, int N, int C, int E, int K, int G, int M, float rho) {
    const int t = blockIdx.x * MOE_ROUTER_WARPS + threadIdx.x / WARP_SIZE;
    const int lane = threadIdx.x % WARP_SIZE;
    if (t >= N) return;  // the whole warp leaves together (no block barrier here)
    const floatX* ut = u + (size_t)t * C;
    float* st = s + (size_t)t * E;
    for (int i = 0; i < E; i++) {
        const float* wi = router + (size_t)i * C;
        float acc = 0.0f;
        for (int j = lane; j < C; j += WARP_SIZE) acc += llmc::to_float(ut[j]) * wi[j];
        acc = warp_reduce_sum(acc);
        if (lane == 0) st[i] = moe_sigmoid_dev(acc);
    }
    __syncwarp();  // lane 0's scores are complete (and visible) before it selects
    if (lane != 0) return;
    int sel[MOE_MAX_K];
    if (idx_override) {
        const int* ov = idx_override + (size_t)t * K;
        bool bad = false;
        for (int k = 0; k < K; k++) {
            const int e = ov[k];
            bad |= e < 0 || e >= E;
            for (int j = 0; j < k; j++) bad |= ov[j] == e;
            sel[k] = e;
        }
        if (bad) {
            atomicOr(flag, 1);
            for (int k = 0; k < K; k++) sel[k] = k;
        }
    } else {
        moe_topk_dev(sel, st, bias, E, K, G, M);
    }
    float sum = 0.0f;
    for (int k = 0; k < K; k++) sum += st[sel[k]];
    sum += 1e-20f;  // the guard of HF/Megatron, as the CPU
    for (int k = 0; k < K; k++) {
        idx[(size_t)t * K + k] = sel[k];
        g[(size_t)t * K + k] = rho * st[sel[k]] / sum;
    }
    if (asel) {  // the aux loss: plain top-K of the unbiased scores, and sum_i s_i in double
        moe_select_dev(sel, K, E, [&](int i) { return st[i]; }, [](int) { return true; });
        for (int k = 0; k < K; k++) asel[(size_t)t * K + k] = sel[k];
        double a = 0.0;
        for (int i = 0; i < E; i++) a += (double)st[i];
        all[t] = a;
    }
}

// One block per row b of T tokens: f (B, E) and contrib[b, i] = f_i P_i / T; thread 0 then sums the
// row over i in order (the CPU's order) into rowloss[b] = alpha * sum.
__global__ void __launch_bounds__(MOE_BLOCK)
moe_aux_kernel(float* f, double* contrib, double* rowloss, const float* s, const int* asel, const double* all, int T, int E,
               int K, double alpha) {
    const int b = blockIdx.x;
    for (int i = threadIdx.x; i < E; i += blockDim.x) {
        int cnt = 0;
        double P = 0.0;
        for (int t = b * T; t < (b + 1) * T; t++) {
            for (int k = 0; k < K; k++) cnt += asel[(size_t)t * K + k] == i;
            P += (double)s[(size_t)t * E + i] / all[t];
        }
        const float fi = (float)((double)E * (double)cnt / ((double)K * T));
        f[(size_t)b * E + i] = fi;
        contrib[(size_t)b * E + i] = (double)fi * (P / T);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double L = 0.0;
        for (int i = 0; i < E; i++) L += contrib[(size_t)b * E + i];
        rowloss[b] = alpha * L;
    }
}

// *aux = mean over rows of rowloss (summed in row order)
__global__ void moe_aux_final_kernel(double* aux, const double* rowloss, int B) {
    if (threadIdx.x != 0) return;
    double sum = 0.0;
    for (int b = 0; b < B; b++) sum += rowloss[b];
    *aux = B > 0 ? sum / B : 0.0;
}

// ---- dispatch: stable counting sort (docs/moe.md#dispatch) ----

// Block = one chunk of MOE_SORT_CHUNK pairs: pos[p] = the rank of p among its chunk's pairs of the
// same expert, hist[chunk, e] = that chunk's count of expert e (0 for absent experts).
__global__ void __launch_bounds__(MOE_SORT_CHUNK)
moe_sort_rank_kernel(int* pos, int* hist, const int* idx, int NK, int E) {
    STATIC_SMEM(int[MOE_SORT_CHUNK], s_idx);
    const int c0 = blockIdx.x * MOE_SORT_CHUNK, n = min(MOE_SORT_CHUNK, NK - c0);
    for (int e = threadIdx.x; e < E; e += blockDim.x) hist[(size_t)blockIdx.x * E + e] = 0;
    if ((int)threadIdx.x < n) s_idx[threadIdx.x] = idx[c0 + threadIdx.x];
    __syncthreads();  // the zeros are written before any count, and the chunk is in shared memory
    if ((int)threadIdx.x < n) {
        const int me = threadIdx.x, e = s_idx[me];
        int before = 0;
        bool last = true;
        for (int q = 0; q < n; q++) {
            const bool same = s_idx[q] == e;
            before += same && q < me;
            last &= !(same && q > me);
        }
        pos[c0 + me] = before;
        if (last) hist[(size_t)blockIdx.x * E + e] = before + 1;  // the expert's last pair owns the count
    }
}

// One block: cnt[e] = sum over chunks, off = exclusive scan (off[E] = NK), hist[chunk, e] := off[e] +
// the counts of the earlier chunks; load[e] += cnt[e] when load is not null.
__global__ void __launch_bounds__(MOE_BLOCK)
moe_sort_scan_kernel(int* cnt, int* off, int* hist, int64_t* load, int chunks, int E) {
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int sum = 0;
        for (int ch = 0; ch < chunks; ch++) sum += hist[(size_t)ch * E + e];
        cnt[e] = sum;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int run = 0;
        for (int e = 0; e < E; e++) { off[e] = run; run += cnt[e]; }
        off[E] = run;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int run = off[e];
        for (int ch = 0; ch < chunks; ch++) {
            const int v = hist[(size_t)ch * E + e];
            hist[(size_t)ch * E + e] = run;
            run += v;
        }
        if (load) load[e] += cnt[e];
    }
}

// pos[p] = the chunk's base for its expert + its rank; perm = the inverse
__global__ void __launch_bounds__(MOE_BLOCK)
moe_sort_scatter_kernel(int* perm, int* pos, const int* idx, const int* hist, int NK, int E) {
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= NK) return;
    const int r = hist[(size_t)(p / MOE_SORT_CHUNK) * E + idx[p]] + pos[p];
    pos[p] = r;
    perm[r] = p;
}

// ---- experts ----

// rows j < n of dst (n, C) = rows perm[j] / K of src (perm already offset to the expert's segment)
__global__ void __launch_bounds__(MOE_BLOCK)
moe_gather_kernel(floatX* dst, const floatX* src, const int* perm, int n, int K, int C) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * C) return;
    const size_t j = i / C, col = i % C;
    dst[i] = src[(size_t)(perm[j] / K) * C + col];
}

// a = relu(h)^2, or silu(h) * h3 (SwiGLU), in fp32, rounded once
__global__ void __launch_bounds__(MOE_BLOCK)
moe_act_forward_kernel(floatX* a, const floatX* h, const floatX* h3, size_t n, int swiglu) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float x = llmc::to_float(h[i]);
    float y;
    if (swiglu) {
        y = x * moe_sigmoid_dev(x) * llmc::to_float(h3[i]);
    } else {
        const float r = x > 0.0f ? x : 0.0f;
        y = r * r;
    }
    a[i] = llmc::to_floatX(y);
}

// dh (and dh3 for SwiGLU) from d = scale * da at pre-activation x (and x3), in fp32
__device__ __forceinline__ void moe_act_grad_dev(float d, float x, float x3, bool swiglu, float* dh, float* dh3) {
    if (swiglu) {
        const float sg = moe_sigmoid_dev(x);
        *dh3 = d * x * sg;
        *dh = d * x3 * sg * (1.0f + x * (1.0f - sg));
    } else {
        const float r = x > 0.0f ? x : 0.0f;
        *dh = 2.0f * r * d;
    }
}

// the shared expert: dh = act'(h) da (dh may alias da), dh3 for SwiGLU
__global__ void __launch_bounds__(MOE_BLOCK)
moe_act_backward_kernel(floatX* dh, floatX* dh3, const floatX* da, const floatX* h, const floatX* h3, size_t n, int swiglu) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float d1 = 0.0f, d3 = 0.0f;
    moe_act_grad_dev(llmc::to_float(da[i]), llmc::to_float(h[i]), swiglu ? llmc::to_float(h3[i]) : 0.0f, swiglu, &d1, &d3);
    dh[i] = llmc::to_floatX(d1);
    if (swiglu) dh3[i] = llmc::to_floatX(d3);
}

// One block per row j of one expert's segment (perm, a offset to the segment): a[j] = <dA'_j, A_j>
// (dL/dg, the a-trick), then dae_j := dH_j = act'(H_j) (g_j dA'_j) (and dh3_j), de_j := g_j de_j.
// Each element is read and rewritten by the same thread.
__global__ void __launch_bounds__(MOE_ROW_BLOCK)
moe_expert_rows_kernel(float* a, floatX* dae, floatX* dh3, floatX* de, const floatX* ae, const floatX* h, const floatX* h3,
                       const float* g, const int* perm, int F, int C, int swiglu) {
    STATIC_SMEM(float[32], s_red);
    const size_t j = blockIdx.x;
    floatX* da = dae + j * F;
    const floatX* A = ae + j * F;
    float dot = 0.0f;
    for (int i = threadIdx.x; i < F; i += blockDim.x) dot += llmc::to_float(da[i]) * llmc::to_float(A[i]);
    dot = block_reduce_sum(dot, s_red);
    const float gj = g[perm[j]];
    if (threadIdx.x == 0) a[j] = dot;
    for (int i = threadIdx.x; i < F; i += blockDim.x) {
        float d1 = 0.0f, d3 = 0.0f;
        moe_act_grad_dev(gj * llmc::to_float(da[i]), llmc::to_float(h[j * F + i]), swiglu ? llmc::to_float(h3[j * F + i]) : 0.0f,
                         swiglu, &d1, &d3);
        da[i] = llmc::to_floatX(d1);
        if (swiglu) dh3[j * F + i] = llmc::to_floatX(d3);
    }
    for (int i = threadIdx.x; i < C; i += blockDim.x) de[j * C + i] = llmc::to_floatX(gj * llmc::to_float(de[j * C + i]));
}

// out_t (=, or += when accumulate: the shared expert's output is there) sum_k g[t,k] yp[pos[t,k]]
__global__ void __launch_bounds__(MOE_BLOCK)
moe_combine_kernel(floatX* out, const floatX* yp, const float* g, const int* pos, int N, int C, int K, int accumulate) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * C) return;
    const size_t t = i / C, col = i % C;
    float acc = accumulate ? llmc::to_float(out[i]) : 0.0f;
    for (int k = 0; k < K; k++) acc += g[t * K + k] * llmc::to_float(yp[(size_t)pos[t * K + k] * C + col]);
    out[i] = llmc::to_floatX(acc);
}

// ---- gate backward ----

// One thread per token: dz (N, E) = dL/dz from a (dL/dg per sorted row) and, with aux, the aux
// loss gradient (kscale = alpha daux / (T B)), the CPU's formulas in its order, in fp32.
__global__ void __launch_bounds__(MOE_BLOCK)
moe_gate_backward_kernel(float* dz, const float* a, const float* s, const int* idx, const int* pos, const float* f, int N, int T,
                         int E, int K, float rho, float kscale) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= N) return;
    const float* st = s + (size_t)t * E;
    const int* sel = idx + (size_t)t * K;
    const int* pt = pos + (size_t)t * K;
    float* d = dz + (size_t)t * E;
    for (int i = 0; i < E; i++) d[i] = 0.0f;
    float sum = 0.0f;
    for (int k = 0; k < K; k++) sum += st[sel[k]];
    sum += 1e-20f;
    float sa = 0.0f;
    for (int k = 0; k < K; k++) sa += a[pt[k]] * st[sel[k]];
    for (int k = 0; k < K; k++) d[sel[k]] = rho / sum * (a[pt[k]] - sa / sum);
    if (f) {
        const float* fb = f + (size_t)(t / T) * E;
        float all = 0.0f, ks = 0.0f;
        for (int i = 0; i < E; i++) { all += st[i]; ks += kscale * fb[i] * st[i]; }
        for (int i = 0; i < E; i++) d[i] += (kscale * fb[i] - ks / all) / all;
    }
    for (int i = 0; i < E; i++) d[i] *= st[i] * (1.0f - st[i]);
}

// drouter[i, c] += sum_t dz[t, i] u[t, c]: one thread per (i, c), tokens in order (fp32)
__global__ void __launch_bounds__(MOE_BLOCK)
moe_drouter_kernel(float* drouter, const float* dz, const floatX* u, int N, int C, int E) {
    const size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= (size_t)E * C) return;
    const size_t i = o / C, col = o % C;
    float acc = 0.0f;
    for (int t = 0; t < N; t++) acc += dz[(size_t)t * E + i] * llmc::to_float(u[(size_t)t * C + col]);
    drouter[o] += acc;
}

// du_t = du^sh_t (already in du when has_shared, else 0) + sum_k dxp[pos[t,k]] + sum_i dz[t,i] W_g[i]:
// the CPU's order, in fp32, rounded once
__global__ void __launch_bounds__(MOE_BLOCK)
moe_du_kernel(floatX* du, const floatX* dxp, const int* pos, const float* dz, const float* router, int N, int C, int K, int E,
              int has_shared) {
    const size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= (size_t)N * C) return;
    const size_t t = o / C, col = o % C;
    float acc = has_shared ? llmc::to_float(du[o]) : 0.0f;
    for (int k = 0; k < K; k++) acc += llmc::to_float(dxp[(size_t)pos[t * K + k] * C + col]);
    float gate = 0.0f;
    for (int i = 0; i < E; i++) gate += dz[t * E + i] * router[(size_t)i * C + col];
    du[o] = llmc::to_floatX(acc + gate);
}

// ---- balancing bias ----

// one block: b_e += gamma sign(sum l - E l_e) (int64), then l = 0 (the CPU's rule, bit for bit)
__global__ void __launch_bounds__(MOE_BLOCK)
moe_bias_update_kernel(float* b, int64_t* load, int E, float gm) {
    int64_t total = 0;
    for (int e = 0; e < E; e++) total += load[e];
    __syncthreads();  // every thread has read the loads before any is reset
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        const int64_t v = total - (int64_t)E * load[e];
        if (v > 0) b[e] += gm;
        else if (v < 0) b[e] -= gm;
        load[e] = 0;
    }
}

// ---- host side ----

namespace llmc {
inline unsigned moe_grid(size_t n, int block) { return (unsigned)CEIL_DIV(n, (size_t)block); }

inline void moe_check_cuda(const MoeConfig& c, int B, int T) {
    moe_check_config(c);
    LLMC_CHECK(B >= 1 && T > 0, "moe (CUDA): bad batch shape B=%d T=%d", B, T);
    LLMC_CHECK(c.C % 8 == 0 && c.F % 8 == 0 && c.Fs % 8 == 0,
               "moe (CUDA): C=%d, F=%d and Fs=%d must be multiples of 8 (16-byte aligned GEMM operands)", c.C, c.F, c.Fs);
    LLMC_CHECK((size_t)B * T * c.K < (size_t)INT32_MAX, "moe (CUDA): B*T*K = %zu pairs overflow int", (size_t)B * T * c.K);
}

// the E+1 segment offsets, on the host (the one synchronisation of a call); reused storage
inline const int* moe_offsets_to_host(const int* off, int E, const int* flag, int* flag_host, cudaStream_t stream) {
    static std::vector<int> host;
    if (host.size() < (size_t)E + 1) host.resize((size_t)E + 1);
    cudaCheck(cudaMemcpyAsync(host.data(), off, sizeof(int) * (E + 1), cudaMemcpyDeviceToHost, stream));
    if (flag) cudaCheck(cudaMemcpyAsync(flag_host, flag, sizeof(int), cudaMemcpyDeviceToHost, stream));
    cudaCheck(cudaStreamSynchronize(stream));
    return host.data();
}

inline void moe_act_forward(floatX* a, const floatX* h, const floatX* h3, size_t n, bool swiglu, cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH(moe_act_forward_kernel, moe_grid(n, MOE_BLOCK), MOE_BLOCK, 0, stream, a, h, h3, n, (int)swiglu);
}

inline void moe_gather(floatX* dst, const floatX* src, const int* perm, int n, int K, int C, cudaStream_t stream) {
    LAUNCH(moe_gather_kernel, moe_grid((size_t)n * C, MOE_BLOCK), MOE_BLOCK, 0, stream, dst, src, perm, n, K, C);
}
}  // namespace llmc

// out (B*T, C) overwritten; *aux (device double) = the layer's aux loss (0 when alpha == 0);
// load (E, device int64) += this micro-batch's selection counts when not null; idx_override
// (device, N*K) replaces the selection when not null (checked: an out-of-range or repeated expert
// is an error). saved, saved_int: moe_saved_numel_cuda's sizes; work: moe_workspace_numel_cuda.
inline void moe_forward(floatX* out, floatX* saved, int* saved_int, floatX* work, const floatX* u, const float* router, const float* bias,
                        const floatX* w1, const floatX* w3, const floatX* w2, const floatX* s1, const floatX* s3, const floatX* s2,
                        const MoeConfig& c, int B, int T, int64_t* load, double* aux, const int* idx_override, cudaStream_t stream) {
    llmc::moe_check_cuda(c, B, T);
    LLMC_CHECK(w1 && w2 && (!c.swiglu || w3) && (c.Fs == 0 || (s1 && s2 && (!c.swiglu || s3))) && router && aux,
               "moe_forward (CUDA): a needed weight (or aux) pointer is null");
    const int N = B * T, NK = N * c.K, C = c.C, F = c.F, E = c.E, K = c.K;
    const MoeSavedCuda sv = moe_saved_bind_cuda(c, B, T, saved, saved_int);
    const MoeWorkCuda ws = moe_work_bind_cuda(c, B, T, work);
    const bool use_aux = c.alpha > 0;
    cudaCheck(cudaMemsetAsync(ws.flag, 0, sizeof(int), stream));
    LAUNCH(moe_router_kernel, llmc::moe_grid(N, MOE_ROUTER_WARPS), MOE_ROUTER_WARPS * WARP_SIZE, 0, stream, sv.s, sv.idx, sv.g,
           use_aux ? ws.asel : nullptr, ws.all, ws.flag, u, router, bias, idx_override, N, C, E, K, c.groups, c.topk_groups,
           (float)c.rho);
    if (use_aux) {
        LAUNCH(moe_aux_kernel, B, MOE_BLOCK, 0, stream, sv.f, ws.contrib, ws.rowloss, sv.s, ws.asel, ws.all, T, E, K, c.alpha);
        LAUNCH(moe_aux_final_kernel, 1, 32, 0, stream, aux, ws.rowloss, B);
    } else {
        cudaCheck(cudaMemsetAsync(aux, 0, sizeof(double), stream));
    }
    const int chunks = CEIL_DIV(NK, MOE_SORT_CHUNK);
    LAUNCH(moe_sort_rank_kernel, chunks, MOE_SORT_CHUNK, 0, stream, sv.pos, ws.hist, sv.idx, NK, E);
    LAUNCH(moe_sort_scan_kernel, 1, MOE_BLOCK, 0, stream, sv.cnt, sv.off, ws.hist, load, chunks, E);
    LAUNCH(moe_sort_scatter_kernel, llmc::moe_grid(NK, MOE_BLOCK), MOE_BLOCK, 0, stream, sv.perm, sv.pos, sv.idx, ws.hist, NK, E);
    int bad = 0;
    const int* off = llmc::moe_offsets_to_host(sv.off, E, ws.flag, &bad, stream);
    LLMC_CHECK(bad == 0, "moe_forward (CUDA): idx_override names an expert outside [0, %d) or one expert twice in a token", E);
    // shared expert into out (the combine adds the routed part)
    if (c.Fs > 0) {
        floatX* hs3 = sv.hs + (size_t)N * c.Fs;
        matmul_forward(sv.hs, u, s1, N, C, c.Fs, stream);
        if (c.swiglu) matmul_forward(hs3, u, s3, N, C, c.Fs, stream);
        llmc::moe_act_forward(ws.as, sv.hs, hs3, (size_t)N * c.Fs, c.swiglu, stream);
        matmul_forward(out, ws.as, s2, N, c.Fs, C, stream);
    }
    floatX* h3all = sv.h + (size_t)NK * F;
    for (int e = 0; e < E; e++) {
        const int r0 = off[e], n = off[e + 1] - off[e];
        if (n == 0) continue;
        floatX* h = sv.h + (size_t)r0 * F;
        floatX* h3 = h3all + (size_t)r0 * F;
        llmc::moe_gather(ws.xe, u, sv.perm + r0, n, K, C, stream);
        matmul_forward(h, ws.xe, w1 + (size_t)e * F * C, n, C, F, stream);
        if (c.swiglu) matmul_forward(h3, ws.xe, w3 + (size_t)e * F * C, n, C, F, stream);
        llmc::moe_act_forward(ws.ae, h, h3, (size_t)n * F, c.swiglu, stream);
        matmul_forward(ws.yp + (size_t)r0 * C, ws.ae, w2 + (size_t)e * C * F, n, F, C, stream);
    }
    LAUNCH(moe_combine_kernel, llmc::moe_grid((size_t)N * C, MOE_BLOCK), MOE_BLOCK, 0, stream, out, ws.yp, sv.g, sv.pos, N, C, K,
           (int)(c.Fs > 0));
}

// du (B*T, C) overwritten; every parameter gradient (fp32) +=; dout = dL/d(out); u, the weights and
// saved as in the forward; daux = dL/d(aux loss) (ignored when alpha == 0). No gradient for bias.
inline void moe_backward(floatX* du, float* drouter, float* dw1, float* dw3, float* dw2, float* ds1, float* ds3, float* ds2, floatX* work,
                         const floatX* dout, const floatX* u, const float* router, const float* bias, const floatX* w1, const floatX* w3,
                         const floatX* w2, const floatX* s1, const floatX* s3, const floatX* s2, floatX* saved, int* saved_int,
                         const MoeConfig& c, int B, int T, float daux, cudaStream_t stream) {
    (void)bias;  // selection only: no gradient
    llmc::moe_check_cuda(c, B, T);
    LLMC_CHECK(drouter && dw1 && dw2 && (!c.swiglu || dw3) && (c.Fs == 0 || (ds1 && ds2 && (!c.swiglu || ds3))),
               "moe_backward (CUDA): a needed gradient pointer is null");
    const int N = B * T, NK = N * c.K, C = c.C, F = c.F, E = c.E, K = c.K, Fs = c.Fs;
    const MoeSavedCuda sv = moe_saved_bind_cuda(c, B, T, saved, saved_int);
    const MoeWorkCuda ws = moe_work_bind_cuda(c, B, T, work);
    const int* off = llmc::moe_offsets_to_host(sv.off, E, nullptr, nullptr, stream);
    // shared expert: du (=) du^sh, dS1, dS2 (dS3) +=
    if (Fs > 0) {
        const floatX* hs3 = sv.hs + (size_t)N * Fs;
        llmc::moe_act_forward(ws.as, sv.hs, hs3, (size_t)N * Fs, c.swiglu, stream);
        matmul_backward(ws.das, ds2, dout, ws.as, s2, N, Fs, C, stream, MM_OVERWRITE, MM_ACCUMULATE);
        LAUNCH(moe_act_backward_kernel, llmc::moe_grid((size_t)N * Fs, MOE_BLOCK), MOE_BLOCK, 0, stream, ws.das, ws.dhs3, ws.das,
               sv.hs, hs3, (size_t)N * Fs, (int)c.swiglu);
        matmul_backward(du, ds1, ws.das, u, s1, N, C, Fs, stream, MM_OVERWRITE, MM_ACCUMULATE);
        if (c.swiglu) matmul_backward(du, ds3, ws.dhs3, u, s3, N, C, Fs, stream, MM_ACCUMULATE, MM_ACCUMULATE);
    }
    // experts: a (the a-trick) and dX_p, per segment
    const floatX* h3all = sv.h + (size_t)NK * F;
    floatX* dxp = ws.yp;
    for (int e = 0; e < E; e++) {
        const int r0 = off[e], n = off[e + 1] - off[e];
        if (n == 0) continue;  // a zero-token expert: its gradients stay exactly as they were
        const floatX* h = sv.h + (size_t)r0 * F;
        const floatX* h3 = h3all + (size_t)r0 * F;
        const floatX* W1 = w1 + (size_t)e * F * C;
        const floatX* W2 = w2 + (size_t)e * C * F;
        llmc::moe_gather(ws.xe, u, sv.perm + r0, n, K, C, stream);
        llmc::moe_gather(ws.de, dout, sv.perm + r0, n, K, C, stream);
        llmc::moe_act_forward(ws.ae, h, h3, (size_t)n * F, c.swiglu, stream);
        matmul_backward(ws.dae, nullptr, ws.de, ws.ae, W2, n, F, C, stream, MM_OVERWRITE);  // dA' = D W2_e
        LAUNCH(moe_expert_rows_kernel, n, MOE_ROW_BLOCK, 0, stream, ws.a + r0, ws.dae, ws.dh3, ws.de, ws.ae, h, h3, sv.g,
               sv.perm + r0, F, C, (int)c.swiglu);
        matmul_backward(nullptr, dw2 + (size_t)e * C * F, ws.de, ws.ae, W2, n, F, C, stream);  // dW2_e += (g D)^T A
        matmul_backward(dxp + (size_t)r0 * C, dw1 + (size_t)e * F * C, ws.dae, ws.xe, W1, n, C, F, stream, MM_OVERWRITE,
                        MM_ACCUMULATE);
        if (c.swiglu)
            matmul_backward(dxp + (size_t)r0 * C, dw3 + (size_t)e * F * C, ws.dh3, ws.xe, w3 + (size_t)e * F * C, n, C, F, stream,
                            MM_ACCUMULATE, MM_ACCUMULATE);
    }
    // gate: dz, dW_g += dz^T u, and du = du^sh + du^rt + W_g^T dz
    const float kscale = c.alpha > 0 ? (float)(c.alpha / ((double)T * B)) * daux : 0.0f;
    LAUNCH(moe_gate_backward_kernel, llmc::moe_grid(N, MOE_BLOCK), MOE_BLOCK, 0, stream, ws.dz, ws.a, sv.s, sv.idx, sv.pos,
           c.alpha > 0 ? sv.f : nullptr, N, T, E, K, (float)c.rho, kscale);
    LAUNCH(moe_drouter_kernel, llmc::moe_grid((size_t)E * C, MOE_BLOCK), MOE_BLOCK, 0, stream, drouter, ws.dz, u, N, C, E);
    LAUNCH(moe_du_kernel, llmc::moe_grid((size_t)N * C, MOE_BLOCK), MOE_BLOCK, 0, stream, du, dxp, sv.pos, ws.dz, router, N, C, K,
           E, (int)(Fs > 0));
}

// b (E, fp32) += gamma * sign(sum(load) - E * load), then load = 0 (docs/moe.md#bias)
inline void moe_bias_update(float* b, int64_t* load, int E, double gamma, cudaStream_t stream) {
    LLMC_CHECK(E > 0, "moe_bias_update (CUDA): bad E=%d", E);
    LAUNCH(moe_bias_update_kernel, 1, MOE_BLOCK, 0, stream, b, load, E, (float)gamma);
}
