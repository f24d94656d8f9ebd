// lightning.cuh: the MiniMax-01 Lightning Attention layer on the GPU, forward and backward (CPU twin:
// llmc/cpu/lightning.h, same names and argument order plus the stream; math in docs/lightning.md and
// the spec's section 3).
//
//   p_q, p_k, p_v = u W_qᵀ, u W_kᵀ, u W_vᵀ; q, k, v = silu(p); o = core(q, k, v) (per row and head,
//   o_t = sum_{j<=t} exp(-s_h (t-j)) <q_t, k_j> v_j); r = sqrt(mean_N(o²) + 1e-5);
//   a = u W_gateᵀ; z = σ(a) ⊙ w ⊙ o / r; out = z W_oᵀ.
//
// Strategy (a simple first design: correct, deterministic, no float atomics):
//  * the five projections are cuBLASLt GEMMs (matmul.cuh): bf16 operands, fp32 accumulation; the
//    weight gradients accumulate (+=) into the fp32 master-gradient buffers, du is overwritten
//    (its first contributor, the gate's dinp, overwrites, the q, k, v ones accumulate).
//  * the norm and gate are row kernels, one warp per token (the N = H*D channels of a token),
//    statistics in fp32; dw is a column kernel: each column summed over the tokens in a fixed
//    order (8 interleaved partial sums in double, then added in order), no atomics.
//  * the decay core: one CUDA block (256 threads) per (row, head) walking the chunks of the row in
//    order, the D x D state in fp32 shared memory, the chunk's q, k, v (silu of the saved p,
//    computed in fp32 on load: q, k, v are never stored) and its scores in fp32 shared memory,
//    every product a plain fp32 FMA loop in a fixed order. The backward runs two block kinds side
//    by side (blockIdx.y): y = 0 scans forward for dq (intra term + dO KVᵀ with the state
//    recomputed), y = 1 scans backward with the state gradient G for dk and dv (intra + inter).
//    Each gradient element is summed completely in registers and written once, already multiplied
//    by silu'(p): the core backward writes dp_q, dp_k, dp_v directly.
//  * chunk size: min(blk, 64) for D <= 64, min(blk, 32) for D <= 128 (shared memory). The blocked
//    form computes the same function for every block size (docs/lightning.md#core), so blk is a
//    performance knob here: the result differs from the CPU op's blocking only by fp32 rounding.
//  * decays: E[m] = exp(-s m) for m = 0..chunk, computed in double from the fp32 slope and rounded
//    once (the CPU op's table); never a factor λ^i λ^-j.
// Shared memory rows of the tiles and states are padded to D+1 floats, so the column walks
// (thread per column, reading down a row index) hit distinct banks.
// Saved tensors (as the CPU op, rounded to floatX except r): p (3 planes (B*T, N)), o, a (B*T, N),
// r (B*T) fp32. The norm in the forward reads the stored (rounded) o, as the backward does.
// Work (floatX elements, lightning_sizes_cuda): forward B*T*N (z); backward 5 B*T*N (z/da, dz/do,
// dp_q, dp_k, dp_v).
// Shared memory per block (dynamic, opted in): forward 83,472 B (D 64, chunk 64) / 119,952 B
// (D 128, chunk 32); backward 116,752 B / 140,688 B: one block per SM.
// Limits: D <= 128 (the state lives in shared memory); N = H*D a multiple of 8 (the GEMMs need the
// planes of p 16-byte aligned; matmul.cuh refuses otherwise); training only (zero initial state, no
// decode state: the CPU op keeps the inference paths).
// Not yet fast: B*H blocks only (64 for B = 8, H = 8: half the SMs idle) and every FMA reads its
// operands from shared memory (no register tiling, no tensor cores). The spec's design (section
// 3.6: e-slices of the state per block, an intra kernel parallel over chunks, bf16 mma for the
// chunk products) is the next step, to be measured with a benchmark on a GPU.
#pragma once
#include <algorithm>
#include <cmath>
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/reduce.cuh"
#include "llmc/cuda/matmul.cuh"
#include "llmc/cpu/lightning.h"

constexpr int LA_THREADS = 256;
constexpr int LA_MAX_D = 128;
constexpr float LA_EPS_F = 1e-5f;  // LLMC_LIGHTNING_EPS

__device__ __forceinline__ float la_sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float la_siluf(float x) { return x * la_sigmoidf(x); }
// silu'(x) = σ(x) (1 + x (1 - σ(x)))
__device__ __forceinline__ float la_dsiluf(float x) {
    const float sg = la_sigmoidf(x);
    return sg * (1.0f + x * (1.0f - sg));
}

inline int la_chunk_cuda(int blk, int D) { return std::min(blk, D <= 64 ? 64 : 32); }

// shared memory layout (floats): E (chunk+1, rounded up to 4), then `tiles` chunk x (D+1) tiles,
// `scores` chunk x (chunk+1) score matrices, one D x (D+1) state
__host__ __device__ inline int la_e_floats(int chunk) { return (chunk + 1 + 3) / 4 * 4; }
inline size_t la_smem_bytes(int chunk, int D, int tiles, int scores) {
    return sizeof(float) * ((size_t)la_e_floats(chunk) + (size_t)tiles * chunk * (D + 1) +
                            (size_t)scores * chunk * (chunk + 1) + (size_t)D * (D + 1));
}

// E[m] = exp(-s m), m = 0..chunk (double, rounded once), by the whole block
__device__ inline void la_decay_table(float* E, float s, int chunk) {
    for (int m = threadIdx.x; m <= chunk; m += blockDim.x) E[m] = (float)exp(-(double)s * (double)m);
}

// One chunk's rows [t0, t0+b) of head columns [0, D) of a (B*T, N) plane (pointer at the row's token
// 0 and the head's column 0) into a (b x ld) fp32 tile, silu'd when `act`.
__device__ inline void la_load_tile(float* tile, const floatX* src, int t0, int b, int D, int ld, int N, bool act) {
    for (int idx = threadIdx.x; idx < b * D; idx += blockDim.x) {
        const int i = idx / D, c = idx % D;
        const float x = llmc::to_float(src[(size_t)(t0 + i) * N + c]);
        tile[i * ld + c] = act ? la_siluf(x) : x;
    }
}

// S[i][j] = E[i-j] <A_i, B_j> for the causal pairs j <= i < b of a chunk (rows of length D at stride
// L; entries above the diagonal are never read), spread over the block's threads: the decayed
// scores of the forward (Q, K) and of the backward (dO, V)
__device__ inline void la_decayed_scores(float* S, const float* A, const float* B, const float* E, int b, int D, int L, int SL) {
    for (int idx = threadIdx.x; idx < b * b; idx += blockDim.x) {
        const int i = idx / b, j = idx % b;
        if (j > i) continue;
        float acc = 0.0f;
        for (int c = 0; c < D; c++) acc += A[i * L + c] * B[j * L + c];
        S[i * SL + j] = E[i - j] * acc;
    }
}

// Row i, column col of a chunk's output: sum_{j<=i} S_ij X_j[col] + E[i+1] <A_i, M[:, col]>, the
// intra-chunk part through the decayed scores S plus the inter-chunk part through the state M (D x
// D at stride L): o from (S, V, Q, KV) in the forward, dq from (dP, K, dO, KVᵀ) in the backward
__device__ inline float la_chunk_row(const float* S, const float* X, const float* A, const float* M, const float* E, int i, int col, int D,
                                     int L, int SL) {
    float intra = 0.0f, inter = 0.0f;
    for (int j = 0; j <= i; j++) intra += S[i * SL + j] * X[j * L + col];
    for (int c = 0; c < D; c++) inter += A[i * L + c] * M[c * L + col];
    return intra + E[i + 1] * inter;
}

// The state after a chunk of b rows: M[r][s] = E[b] M[r][s] + sum_j E[b-1-j] X_j[r] Y_j[s] over the
// block's threads: KV from (K, V) in the forward, KVᵀ from (V, K) in the backward's dq scan
__device__ inline void la_state_update(float* M, const float* X, const float* Y, const float* E, int b, int D, int L) {
    for (int idx = threadIdx.x; idx < D * D; idx += blockDim.x) {
        const int r = idx / D, c = idx % D;
        float acc = 0.0f;
        for (int j = 0; j < b; j++) acc += E[b - 1 - j] * X[j * L + r] * Y[j * L + c];
        M[r * L + c] = E[b] * M[r * L + c] + acc;
    }
}

// Forward core: o (B*T, N) = core(silu(p_q), silu(p_k), silu(p_v)). Grid B*H, one block per (row, head).
__global__ void __launch_bounds__(LA_THREADS)
lightning_core_forward_kernel(floatX* o, const floatX* p, const float* slopes, int T, int H, int D, int chunk, long plane) {
    DYNAMIC_SMEM(float, smem);
    const int bh = blockIdx.x, row = bh / H, h = bh % H, N = H * D, L = D + 1, SL = chunk + 1;
    const size_t base = (size_t)row * T * N + (size_t)h * D;
    const floatX* pq = p + base;
    const floatX* pk = pq + plane;
    const floatX* pv = pq + 2 * plane;
    floatX* ob = o + base;
    float* E = smem;
    float* Q = E + la_e_floats(chunk);
    float* K = Q + chunk * L;
    float* V = K + chunk * L;
    float* S = V + chunk * L;     // scores (chunk x SL)
    float* KV = S + chunk * SL;   // KV[c][e] (D x L)
    la_decay_table(E, slopes[h], chunk);
    for (int x = threadIdx.x; x < D * L; x += blockDim.x) KV[x] = 0.0f;
    __syncthreads();
    for (int t0 = 0; t0 < T; t0 += chunk) {
        const int b = min(chunk, T - t0);
        la_load_tile(Q, pq, t0, b, D, L, N, true);
        la_load_tile(K, pk, t0, b, D, L, N, true);
        la_load_tile(V, pv, t0, b, D, L, N, true);
        __syncthreads();
        la_decayed_scores(S, Q, K, E, b, D, L, SL);  // S_ij = E[i-j] <q_i, k_j>
        __syncthreads();
        // o_i = sum_{j<=i} S_ij v_j + E[i+1] q_i KV (the state holds everything before the chunk)
        for (int idx = threadIdx.x; idx < b * D; idx += blockDim.x) {
            const int i = idx / D, e = idx % D;
            ob[(size_t)(t0 + i) * N + e] = llmc::to_floatX(la_chunk_row(S, V, Q, KV, E, i, e, D, L, SL));
        }
        __syncthreads();
        // KV = E[b] KV + sum_j E[b-1-j] k_jᵀ v_j (not needed after the last chunk)
        if (t0 + b < T) la_state_update(KV, K, V, E, b, D, L);
        __syncthreads();
    }
}

// Backward core: dp_q, dp_k, dp_v (planes of dp, (B*T, N) each, =) from do (B*T, N) and p.
// Grid (B*H, 2): y = 0 computes dq (forward scan), y = 1 dk and dv (reverse scan).
__global__ void __launch_bounds__(LA_THREADS)
lightning_core_backward_kernel(floatX* dp, const floatX* dout, const floatX* p, const float* slopes, int T, int H, int D, int chunk,
                               long plane) {
    DYNAMIC_SMEM(float, smem);
    const int bh = blockIdx.x, row = bh / H, h = bh % H, N = H * D, L = D + 1, SL = chunk + 1;
    const size_t base = (size_t)row * T * N + (size_t)h * D;
    const floatX* pq = p + base;
    const floatX* pk = pq + plane;
    const floatX* pv = pq + 2 * plane;
    const floatX* dob = dout + base;
    float* E = smem;
    float* Q = E + la_e_floats(chunk);
    float* K = Q + chunk * L;
    float* V = K + chunk * L;
    float* dO = V + chunk * L;
    float* P = dO + chunk * L;    // (Q Kᵀ) ⊙ M   (chunk x SL)
    float* dP = P + chunk * SL;   // (dO Vᵀ) ⊙ M
    float* St = dP + chunk * SL;  // y = 0: the forward state transposed, KVt[e][c]; y = 1: G[c][e] = dL/dKV
    la_decay_table(E, slopes[h], chunk);
    for (int x = threadIdx.x; x < D * L; x += blockDim.x) St[x] = 0.0f;
    __syncthreads();
    if (blockIdx.y == 0) {
        floatX* dq = dp + base;
        for (int t0 = 0; t0 < T; t0 += chunk) {
            const int b = min(chunk, T - t0);
            la_load_tile(K, pk, t0, b, D, L, N, true);
            la_load_tile(V, pv, t0, b, D, L, N, true);
            la_load_tile(dO, dob, t0, b, D, L, N, false);
            __syncthreads();
            la_decayed_scores(dP, dO, V, E, b, D, L, SL);  // dP_ij = E[i-j] <dO_i, v_j>
            __syncthreads();
            // dq_i = sum_{j<=i} dP_ij k_j + E[i+1] dO_i KVᵀ
            for (int idx = threadIdx.x; idx < b * D; idx += blockDim.x) {
                const int i = idx / D, c = idx % D;
                const size_t g = (size_t)(t0 + i) * N + c;
                dq[g] = llmc::to_floatX(la_chunk_row(dP, K, dO, St, E, i, c, D, L, SL) * la_dsiluf(llmc::to_float(pq[g])));
            }
            __syncthreads();
            if (t0 + b < T) la_state_update(St, V, K, E, b, D, L);  // KVᵀ = E[b] KVᵀ + sum_j E[b-1-j] v_jᵀ k_j
            __syncthreads();
        }
    } else {
        floatX* dk = dp + plane + base;
        floatX* dv = dp + 2 * plane + base;
        const int nchunks = CEIL_DIV(T, chunk);
        for (int tb = nchunks - 1; tb >= 0; tb--) {
            const int t0 = tb * chunk, b = min(chunk, T - t0);
            la_load_tile(Q, pq, t0, b, D, L, N, true);
            la_load_tile(K, pk, t0, b, D, L, N, true);
            la_load_tile(V, pv, t0, b, D, L, N, true);
            la_load_tile(dO, dob, t0, b, D, L, N, false);
            __syncthreads();
            la_decayed_scores(P, Q, K, E, b, D, L, SL);    // the forward's scores, recomputed
            la_decayed_scores(dP, dO, V, E, b, D, L, SL);
            __syncthreads();
            // G = dL/dKV after this chunk (from the chunks after it):
            // dk_j = sum_{i>=j} dP_ij q_i + E[b-1-j] v_j Gᵀ;  dv_j = sum_{i>=j} P_ij dO_i + E[b-1-j] k_j G
            for (int idx = threadIdx.x; idx < b * D; idx += blockDim.x) {
                const int j = idx / D, c = idx % D;
                float dki = 0.0f, dke = 0.0f, dvi = 0.0f, dve = 0.0f;
                for (int i = j; i < b; i++) {
                    dki += dP[i * SL + j] * Q[i * L + c];
                    dvi += P[i * SL + j] * dO[i * L + c];
                }
                for (int x = 0; x < D; x++) {
                    dke += V[j * L + x] * St[c * L + x];  // sum_e v_j[e] G[c][e]
                    dve += K[j * L + x] * St[x * L + c];  // sum_c' k_j[c'] G[c'][c]  (c plays e here)
                }
                const float beta = E[b - 1 - j];
                const size_t g = (size_t)(t0 + j) * N + c;
                dk[g] = llmc::to_floatX((dki + beta * dke) * la_dsiluf(llmc::to_float(pk[g])));
                dv[g] = llmc::to_floatX((dvi + beta * dve) * la_dsiluf(llmc::to_float(pv[g])));
            }
            __syncthreads();
            if (tb > 0) {  // G = E[b] G + sum_i E[i+1] q_iᵀ dO_i
                for (int idx = threadIdx.x; idx < D * D; idx += blockDim.x) {
                    const int c = idx / D, e = idx % D;
                    float acc = 0.0f;
                    for (int i = 0; i < b; i++) acc += E[i + 1] * Q[i * L + c] * dO[i * L + e];
                    St[c * L + e] = E[b] * St[c * L + e] + acc;
                }
            }
            __syncthreads();
        }
    }
}

constexpr int LA_ROWS_PER_BLOCK = LA_THREADS / WARP_SIZE;

// z = σ(a) ⊙ w ⊙ o / r (=), one warp per token. r_out != null: r = sqrt(mean(o²) + eps) computed
// (fp32) and saved; else r is read from r_in (the backward's recompute).
__global__ void __launch_bounds__(LA_THREADS)
lightning_norm_gate_forward_kernel(floatX* z, float* r_out, const float* r_in, const floatX* o, const floatX* a, const float* w,
                                   long BT, int N) {
    const int lane = threadIdx.x % WARP_SIZE;
    const long t = (long)blockIdx.x * LA_ROWS_PER_BLOCK + threadIdx.x / WARP_SIZE;
    if (t >= BT) return;  // whole warp; no block barrier follows
    const floatX* ot = o + t * N;
    const floatX* at = a + t * N;
    floatX* zt = z + t * N;
    float r;
    if (r_out) {
        float ss = 0.0f;
        for (int j = lane; j < N; j += WARP_SIZE) {
            const float x = llmc::to_float(ot[j]);
            ss += x * x;
        }
        ss = warp_reduce_sum(ss);
        r = sqrtf(ss / (float)N + LA_EPS_F);
        if (lane == 0) r_out[t] = r;
    } else {
        r = r_in[t];
    }
    for (int j = lane; j < N; j += WARP_SIZE)
        zt[j] = llmc::to_floatX(la_sigmoidf(llmc::to_float(at[j])) * w[j] * (llmc::to_float(ot[j]) / r));
}

// dw[j] += sum_t dz σ(a) o / r over the tokens. Block: 32 columns x 8 token classes (t mod 8), each
// summed in token order in double, then the 8 added in order: deterministic, no atomics.
__global__ void __launch_bounds__(LA_THREADS)
lightning_norm_dw_kernel(float* dw, const floatX* dz, const floatX* o, const float* r, const floatX* a, long BT, int N) {
    STATIC_SMEM(double[LA_ROWS_PER_BLOCK][WARP_SIZE], part);
    const int lane = threadIdx.x % WARP_SIZE, g = threadIdx.x / WARP_SIZE;
    const int j = blockIdx.x * WARP_SIZE + lane;
    double acc = 0.0;
    if (j < N)
        for (long t = g; t < BT; t += LA_ROWS_PER_BLOCK) {
            const size_t x = (size_t)t * N + j;
            const float dy = llmc::to_float(dz[x]) * la_sigmoidf(llmc::to_float(a[x]));
            acc += (double)dy * (double)(llmc::to_float(o[x]) / r[t]);
        }
    part[g][lane] = acc;
    __syncthreads();
    if (g == 0 && j < N) {
        double s = 0.0;
        for (int k = 0; k < LA_ROWS_PER_BLOCK; k++) s += part[k][lane];
        dw[j] += (float)s;
    }
}

// Per token: da = dz ⊙ w ô ⊙ σ(a)(1-σ(a)) (=), do = (ĝ - ô mean(ĝ ⊙ ô)) / r (=), ĝ = w ⊙ dz ⊙ σ(a),
// ô = o / r. do may alias dz: every lane reads its own elements of dz before writing them.
__global__ void __launch_bounds__(LA_THREADS)
lightning_norm_gate_backward_kernel(floatX* da, floatX* do_, const floatX* dz, const floatX* o, const float* r, const floatX* a,
                                    const float* w, long BT, int N) {
    const int lane = threadIdx.x % WARP_SIZE;
    const long t = (long)blockIdx.x * LA_ROWS_PER_BLOCK + threadIdx.x / WARP_SIZE;
    if (t >= BT) return;
    const size_t row = (size_t)t * N;
    const float rt = r[t];
    float m = 0.0f;
    for (int j = lane; j < N; j += WARP_SIZE) {
        const float gh = w[j] * llmc::to_float(dz[row + j]) * la_sigmoidf(llmc::to_float(a[row + j]));
        m += gh * (llmc::to_float(o[row + j]) / rt);
    }
    m = warp_reduce_sum(m);
    const float mean = m / (float)N;
    for (int j = lane; j < N; j += WARP_SIZE) {
        const float sg = la_sigmoidf(llmc::to_float(a[row + j]));
        const float oh = llmc::to_float(o[row + j]) / rt;
        const float g = llmc::to_float(dz[row + j]);
        da[row + j] = llmc::to_floatX(g * (w[j] * oh) * sg * (1.0f - sg));
        do_[row + j] = llmc::to_floatX((w[j] * g * sg - oh * mean) / rt);
    }
}

// ---- the layer ----

// Sizes (elements; p, o, a and the work areas in floatX, r in float). Only the work areas differ
// from the CPU op's: forward B*T*N (z), backward 5 B*T*N.
inline LightningSizes lightning_sizes_cuda(int B, int T, int H, int D) {
    LightningSizes s = lightning_sizes(B, T, H, D);
    const size_t BTN = (size_t)B * T * H * D;
    s.work_forward = BTN;
    s.work_backward = 5 * BTN;
    return s;
}

inline void lightning_check_args_cuda_(const char* what, int B, int T, int C, int H, int D, int blk) {
    LLMC_CHECK(B > 0 && T > 0 && H > 0 && D > 0 && C > 0, "%s: bad shape B=%d T=%d C=%d H=%d D=%d", what, B, T, C, H, D);
    LLMC_CHECK(blk > 0, "%s: block size must be positive, got %d", what, blk);
    LLMC_CHECK(D <= LA_MAX_D, "%s: head dim %d: the CUDA kernel keeps a D x D state in shared memory, D <= %d", what, D, LA_MAX_D);
    LLMC_CHECK((long)B * H <= 0x7fffffffL, "%s: B*H = %ld blocks is too many", what, (long)B * H);
}

// Forward: out (B*T, C) =; saved p (3 planes (B*T, N)), o, a (B*T, N), r (B*T) =. work: work_forward.
inline void lightning_forward(floatX* out, floatX* p, floatX* o, float* r, floatX* a, const floatX* u, const floatX* wq, const floatX* wk,
                              const floatX* wv, const floatX* wgate, const floatX* wo, const float* w, const float* slopes, int B, int T,
                              int C, int H, int D, int blk, floatX* work, cudaStream_t stream) {
    lightning_check_args_cuda_("lightning_forward", B, T, C, H, D, blk);
    const int N = H * D;
    const long BT = (long)B * T, BTN = BT * N;
    LLMC_CHECK(BT <= 0x7fffffffL, "lightning_forward: B*T = %ld tokens is too many", BT);
    matmul_forward(p, u, wq, (int)BT, C, N, stream);
    matmul_forward(p + BTN, u, wk, (int)BT, C, N, stream);
    matmul_forward(p + 2 * BTN, u, wv, (int)BT, C, N, stream);
    const int chunk = la_chunk_cuda(blk, D);
    const size_t smem = la_smem_bytes(chunk, D, 3, 1);
    cudaCheck(cudaFuncSetAttribute(lightning_core_forward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    LAUNCH(lightning_core_forward_kernel, B * H, LA_THREADS, smem, stream, o, (const floatX*)p, slopes, T, H, D, chunk, BTN);
    matmul_forward(a, u, wgate, (int)BT, C, N, stream);
    floatX* z = work;
    LAUNCH(lightning_norm_gate_forward_kernel, (int)CEIL_DIV(BT, (long)LA_ROWS_PER_BLOCK), LA_THREADS, 0, stream, z, r,
           (const float*)nullptr, (const floatX*)o, (const floatX*)a, w, BT, N);
    matmul_forward(out, z, wo, (int)BT, N, C, stream);
}

// Backward, given dout (B*T, C): du (B*T, C) =; dwq, dwk, dwv, dwgate (N, C), dwo (C, N), dw (N) +=
// (fp32). Reads the saved p, o, r, a. work: work_backward.
inline void lightning_backward(floatX* du, float* dwq, float* dwk, float* dwv, float* dwgate, float* dwo, float* dw, const floatX* dout,
                               const floatX* u, const floatX* p, const floatX* o, const float* r, const floatX* a, const floatX* wq,
                               const floatX* wk, const floatX* wv, const floatX* wgate, const floatX* wo, const float* w,
                               const float* slopes, int B, int T, int C, int H, int D, int blk, floatX* work, cudaStream_t stream) {
    lightning_check_args_cuda_("lightning_backward", B, T, C, H, D, blk);
    const int N = H * D;
    const long BT = (long)B * T, BTN = BT * N;
    LLMC_CHECK(BT <= 0x7fffffffL, "lightning_backward: B*T = %ld tokens is too many", BT);
    floatX* X = work;            // z, then da
    floatX* Y = work + BTN;      // dz, then do
    floatX* dp = work + 2 * BTN; // dp_q | dp_k | dp_v
    const int rows_grid = (int)CEIL_DIV(BT, (long)LA_ROWS_PER_BLOCK);
    // out = z W_oᵀ: dz = dout W_o (=), dW_o += doutᵀ z, z recomputed from the saved o, r, a
    LAUNCH(lightning_norm_gate_forward_kernel, rows_grid, LA_THREADS, 0, stream, X, (float*)nullptr, r, o, a, w, BT, N);
    matmul_backward(Y, dwo, dout, X, wo, (int)BT, N, C, stream, MM_OVERWRITE, MM_ACCUMULATE);
    // norm and gate: dw += (reads dz before it becomes do), then da -> X, do -> Y in place
    LAUNCH(lightning_norm_dw_kernel, CEIL_DIV(N, WARP_SIZE), LA_THREADS, 0, stream, dw, (const floatX*)Y, o, r, a, BT, N);
    LAUNCH(lightning_norm_gate_backward_kernel, rows_grid, LA_THREADS, 0, stream, X, Y, (const floatX*)Y, o, r, a, w, BT, N);
    // a = u W_gateᵀ: du = da W_gate (the first contribution overwrites), dW_gate += daᵀ u
    matmul_backward(du, dwgate, X, u, wgate, (int)BT, C, N, stream, MM_OVERWRITE, MM_ACCUMULATE);
    // the core and silu: dp_q, dp_k, dp_v
    const int chunk = la_chunk_cuda(blk, D);
    const size_t smem = la_smem_bytes(chunk, D, 4, 2);
    cudaCheck(cudaFuncSetAttribute(lightning_core_backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    LAUNCH(lightning_core_backward_kernel, dim3(B * H, 2), LA_THREADS, smem, stream, dp, (const floatX*)Y, p, slopes, T, H, D, chunk, BTN);
    // the three projections: du += dp W, dW += dpᵀ u
    matmul_backward(du, dwq, dp, u, wq, (int)BT, C, N, stream);
    matmul_backward(du, dwk, dp + BTN, u, wk, (int)BT, C, N, stream);
    matmul_backward(du, dwv, dp + 2 * BTN, u, wv, (int)BT, C, N, stream);
}
