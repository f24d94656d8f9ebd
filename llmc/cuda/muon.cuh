// muon.cuh: the Muon update on the GPU, one call per stack of K same-shape matrices (a Muon group,
// docs/model.md#param-groups, docs/model.md#muon; CPU twin: llmc::muon_update in llmc/muon.h, one matrix per call, whose order of
// operations this follows step by step).
//
//   per matrix P (m x n), gradient G, momentum M, NorMuon second moment S (m floats if m >= n, else n):
//   1. Nesterov momentum (PyTorch lerp forms)   M <- lerp(M, G, 1-mu);  U = lerp(G, M, mu)
//   3. MuonEq: row i scaled by tau / max(||U_i||, 1e-6), tau = ||U||_F / sqrt(m)
//   4. normalize by 1.01 ||X||_F + 1e-6
//   5. Polar Express, 5 iterations X <- a X + (b A + c A·A) X with A the smaller Gram matrix
//   6-7. Muon+: g = X sqrt(min(m,n)) / max(||X||_F, 1e-6)
//   8. NorMuon: per-row (m >= n) or per-column mean squares q, S <- lerp(S, q, 1-beta2),
//      g <- g / sqrt(max(S, 1e-10)), rescaled to keep ||g||_F
//   9. cautious weight decay and the step: P <- P - (lr_eff g + lr_eff wd P [g P >= 0]),
//      lr_eff = lr sqrt(max(1, m/n)); P_bf16 <- bf16(P) (the GEMM operand copy)
//
// Precision (docs/model.md#precision): P, M, S and every statistic are fp32 (norms and means accumulated in
// double, as the CPU op does, then rounded to fp32); the Polar Express GEMMs are bf16 operands with
// fp32 accumulation, as nanochat's. X is rounded to bf16 once, after steps 3-4 (the two row/matrix
// scalings are one per-row factor h_i = f_i / (1.01 ||X_eq||_F + 1e-6), with ||X_eq||_F computed from
// the row norms: ||X_eq||_F^2 = sum_i f_i^2 ||U_i||^2), not at step 2 and again after each scaling:
// one rounding instead of three, the rest of the order as the CPU op. Each Polar Express iteration
// is three strided-batched GEMMs over the stack (llmc/cuda/matmul.cuh), with the iteration's
// elementwise terms folded into cuBLASLt's epilogue (D = alpha·A·B + beta·C):
//   A  = X·Xᵀ (wide, square) or Xᵀ·X (tall)        bf16, m x m or n x n (the smaller)
//   Bm = c·(A·A) + b·A                              alpha = c, beta = b, C = A
//   X' = Bm·X + a·X  (or X·Bm + a·X when tall)      alpha = 1, beta = a, C = X, D = the other X buffer
// so A, Bm and X' are each rounded to bf16 once (test_muon.cu derives its tolerances from exactly
// these roundings). Scalars computed once per group on the host exactly as the CPU op does (fp32:
// 1 - mu, lr_eff from muon_shape_factor in double, lr_eff * wd); divisions and square roots in the
// kernels are the IEEE-rounded __fdiv_rn / __fsqrt_rn (the build uses --use_fast_math).
// FP32 build (-DLLMC_FP32): X, A, Bm and the P copy are fp32 (floatX), the GEMMs fp32 throughout
// (matmul.cuh: CUBLAS_COMPUTE_32F, no TF32), so nothing is rounded to bf16 and Polar Express matches
// the CPU op up to the order of fp32 roundings.
//
// Kernels (all deterministic: fixed reduction orders, no atomics):
//   muon_momentum_kernel   one warp per row: M updated, sum of U^2 of the row (double) -> stat
//   muon_prescale_kernel   one warp per matrix: tau, the MuonEq factors, ||X_eq||_F -> h_i
//   muon_scale_kernel      elementwise: U recomputed from the new M and G (bitwise the U of the
//                          first kernel), X = bf16(U h_i)   [recomputing U costs 8 bytes read per
//                          element and saves a full-precision U buffer]
//   15 batched GEMMs       Polar Express
//   muon_rowsq / muon_colsq  sums of X^2 per row (one warp each) or per column (one thread each,
//                          walking the rows in order) -> stat (double)
//   muon_normuon_kernel    one warp per matrix: ||X||_F from the statistics, the Muon+ scale, q,
//                          S update, the NorMuon weights and ratio -> per-row/column factor
//   muon_apply_kernel      elementwise: g, cautious decay, P and its bf16 copy
// Bytes per element of the memory-bound kernels: momentum 12 (read M, G; write M), scaling 10 (read
// M, G; write bf16 X), statistics 2, update 12 (read P, X; write P and its bf16 copy): ~36 in all,
// against 5 x (4 q^2 p + 2 q^3) GEMM FLOPs per matrix (q = min(m, n), p = max(m, n)), which dominate.
// Block size 128 for the row and elementwise kernels (full occupancy either way; it also keeps
// the ThreadSanitizer flavor of SIM, whose cost grows with the threads per block, affordable).
//
// Scratch (MuonGPUScratch): two bf16 X buffers, the Gram matrix and Bm (bf16), per-row statistics
// (double), per-row factors and per-matrix scalars (fp32): one cudaMalloc, sized by
// muon_scratch_reserve() for every group before muon_scratch_alloc(). The stack's matrices sit in
// the X buffers at a stride rounded up to 8 elements (and the Gram matrices likewise), so every
// batch entry is 16-byte aligned as cuBLASLt requires (ve_gate's 10 x 10 Gram matrix is 200 bytes).
// muon_update allocates nothing; the first call per shape builds the matmul plans (matmul.cuh).
//
// Matrix stride ldm: the GPU trainer stores a layer's c_q, c_k and c_v weights as one matrix
// [Wq; Wk; Wv] (one GEMM computes the packed q, k, v), so a stack of c_q (or c_k, c_v) matrices,
// one per layer, has its matrices ldm elements apart in P, P_bf16, M and G, with the other
// projections' matrices in between (0 means m*n: dense). The kernels that touch those arrays
// (momentum, scaling, apply) only compute the address k*ldm + r instead of k*m*n + r: the same
// arithmetic on the same values (a strided call gives the dense call's bits), and the elements
// between the matrices are never read or written (other muon_update calls own them). S, the
// scratch and the returned X stay dense.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/matmul.cuh"
#include "llmc/cuda/reduce.cuh"
#include "llmc/muon.h"  // MUON_POLAR_COEFFS, MUON_NS_STEPS, MUON_BETA2, muon_shape_factor, muon_second_moment_size

constexpr int MUON_BLOCK = 128;
constexpr int MUON_ROWS_PER_BLOCK = MUON_BLOCK / WARP_SIZE;  // warp-per-row kernels

// ---------------------------------------------------------------------------------------------
// scratch

struct MuonGPUScratch {
    // capacities in elements, grown by muon_scratch_reserve (host only, before muon_scratch_alloc)
    size_t cap_x = 0;     // one X buffer: K * muon_x_stride(m, n)
    size_t cap_gram = 0;  // A or Bm: K * muon_gram_stride(m, n)
    size_t cap_vec = 0;   // K * max(m, n): per-row statistics / factors
    size_t cap_mats = 0;  // K
    void* base = nullptr;
    floatX* X0 = nullptr;  // the input of Polar Express (and every other iteration's output)
    floatX* X1 = nullptr;
    floatX* A = nullptr;
    floatX* Bm = nullptr;
    double* stat = nullptr;   // per-row sums of squares (momentum), per-row/column ones (NorMuon)
    float* vec = nullptr;     // MuonEq/normalize factors h_i, then the NorMuon factors
    float* mscale = nullptr;  // per matrix: the Muon+ scale
};

inline long long muon_round8(long long x) { return (x + 7) / 8 * 8; }
// elements between consecutive matrices of a stack in the X buffers / the Gram buffers
inline long long muon_x_stride(int m, int n) { return muon_round8((long long)m * n); }
inline long long muon_gram_stride(int m, int n) {
    const long long q = std::min(m, n);
    return muon_round8(q * q);
}

// make room for a group of K matrices of shape m x n (call for every group, then alloc once)
inline void muon_scratch_reserve(MuonGPUScratch& s, int K, int m, int n) {
    LLMC_CHECK(K >= 0 && m > 0 && n > 0, "muon_scratch_reserve: bad group %d x (%d x %d)", K, m, n);
    LLMC_CHECK(s.base == nullptr, "muon_scratch_reserve: the scratch is already allocated");
    s.cap_x = std::max(s.cap_x, (size_t)K * (size_t)muon_x_stride(m, n));
    s.cap_gram = std::max(s.cap_gram, (size_t)K * (size_t)muon_gram_stride(m, n));
    s.cap_vec = std::max(s.cap_vec, (size_t)K * (size_t)std::max(m, n));
    s.cap_mats = std::max(s.cap_mats, (size_t)K);
}

inline size_t muon_scratch_bytes(const MuonGPUScratch& s) {
    auto up = [](size_t b) { return (b + 255) / 256 * 256; };  // every piece 256-byte aligned
    return 2 * up(s.cap_x * sizeof(floatX)) + 2 * up(s.cap_gram * sizeof(floatX)) + up(s.cap_vec * sizeof(double)) +
           up(s.cap_vec * sizeof(float)) + up(s.cap_mats * sizeof(float));
}

inline void muon_scratch_alloc(MuonGPUScratch& s) {
    LLMC_CHECK(s.base == nullptr, "muon_scratch_alloc: already allocated");
    cudaCheck(cudaMalloc(&s.base, std::max<size_t>(muon_scratch_bytes(s), 256)));
    auto up = [](size_t b) { return (b + 255) / 256 * 256; };
    char* p = (char*)s.base;
    s.X0 = (floatX*)p; p += up(s.cap_x * sizeof(floatX));
    s.X1 = (floatX*)p; p += up(s.cap_x * sizeof(floatX));
    s.A = (floatX*)p; p += up(s.cap_gram * sizeof(floatX));
    s.Bm = (floatX*)p; p += up(s.cap_gram * sizeof(floatX));
    s.stat = (double*)p; p += up(s.cap_vec * sizeof(double));
    s.vec = (float*)p; p += up(s.cap_vec * sizeof(float));
    s.mscale = (float*)p;
}

inline void muon_scratch_free(MuonGPUScratch& s) {
    if (s.base) cudaCheck(cudaFree(s.base));
    s = MuonGPUScratch{};
}

// ---------------------------------------------------------------------------------------------
// kernels

// PyTorch's lerp(a, b, w) for fp32, as llmc::torch_lerp (exact at both ends)
__device__ __forceinline__ float muon_lerp(float a, float b, float w) {
    return fabsf(w) < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

// rows = K*m rows of n, one warp each: M <- lerp(M, G, w); stat[row] = sum_j U_j^2 (double),
// U = lerp(G, M, mu). Matrix k of M, G at k*ldm. W = 4 (16-byte packs) when n % 4 == 0,
// ldm % 4 == 0 and M, G are 16-byte aligned.
template <int W>
__global__ void __launch_bounds__(MUON_BLOCK)
muon_momentum_kernel(float* M, const float* G, double* stat, long rows, int m_rows, int n, long long ldm, float w,
                     float mu) {
    const int lane = threadIdx.x % WARP_SIZE;
    const long row = (long)blockIdx.x * MUON_ROWS_PER_BLOCK + threadIdx.x / WARP_SIZE;
    if (row >= rows) return;  // the whole warp (rows are warp-uniform): no collective is left half-called
    const long k = row / m_rows;
    const long long off = k * ldm + (row - k * m_rows) * n;
    float* m = M + off;
    const float* g = G + off;
    double acc = 0.0;
    for (int j = lane * W; j < n; j += WARP_SIZE * W) {
        Pack<float, W> pm = load_pack<float, W>(m + j);
        const Pack<float, W> pg = load_pack<float, W>(g + j);
        #pragma unroll
        for (int t = 0; t < W; t++) {
            const float mi = muon_lerp(pm.v[t], pg.v[t], w);
            const float u = muon_lerp(pg.v[t], mi, mu);
            pm.v[t] = mi;
            acc += (double)u * (double)u;
        }
        store_pack<float, W>(m + j, pm);
    }
    acc = warp_reduce_sum(acc);
    if (lane == 0) stat[row] = acc;
}

// one warp per matrix (grid K, block 32): from the row sums of squares (m doubles) the per-row
// factor of steps 3-4, h_i = f_i / (1.01 ||X_eq||_F + 1e-6) with f_i = tau / max(||U_i||, 1e-6),
// tau = ||U||_F / sqrt(m). A warp, not a block: the work is O(m) per matrix, and the butterfly
// gives every lane the sum without shared memory or barriers.
__global__ void __launch_bounds__(WARP_SIZE)
muon_prescale_kernel(float* h, const double* stat, int m) {
    const double* rs = stat + (size_t)blockIdx.x * m;
    float* hk = h + (size_t)blockIdx.x * m;
    double tot = 0.0;
    for (int i = threadIdx.x; i < m; i += WARP_SIZE) tot += rs[i];
    tot = warp_reduce_sum(tot);
    const float tau = __fdiv_rn((float)sqrt(tot), __fsqrt_rn((float)m));
    double eq = 0.0;  // ||X_eq||_F^2 = sum_i f_i^2 ||U_i||^2
    for (int i = threadIdx.x; i < m; i += WARP_SIZE) {
        const float f = __fdiv_rn(tau, fmaxf((float)sqrt(rs[i]), 1e-6f));
        eq += (double)f * (double)f * rs[i];
    }
    eq = warp_reduce_sum(eq);
    const float denom = 1.01f * (float)sqrt(eq) + 1e-6f;
    for (int i = threadIdx.x; i < m; i += WARP_SIZE) {
        const float f = __fdiv_rn(tau, fmaxf((float)sqrt(rs[i]), 1e-6f));
        hk[i] = __fdiv_rn(f, denom);
    }
}

// elementwise over the stack (total = K*m*n, mn = m*n): X[k*sx + r] = bf16(U * h[row]),
// U = lerp(G, M, mu) from the updated M (the same expression and inputs as muon_momentum_kernel),
// matrix k of M, G at k*ldm. W = 4 when n % 4 == 0, ldm % 4 == 0 and M, G are 16-byte aligned (a
// pack then lies in one row).
template <int W>
__global__ void __launch_bounds__(MUON_BLOCK)
muon_scale_kernel(floatX* X, const float* M, const float* G, const float* h, size_t npacks, int n, size_t mn,
                  long long ldm, long long sx, float mu) {
    const size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= npacks) return;
    const size_t e = p * W;
    const size_t k = e / mn, r = e - k * mn;
    const float hr = h[e / n];  // h is dense over the stack: global row = k*m + r/n = e/n
    const size_t a = k * (size_t)ldm + r;
    const Pack<float, W> pm = load_pack<float, W>(M + a);
    const Pack<float, W> pg = load_pack<float, W>(G + a);
    PackX<W> out;
    #pragma unroll
    for (int t = 0; t < W; t++) out.v[t] = llmc::to_floatX(muon_lerp(pg.v[t], pm.v[t], mu) * hr);
    store_pack<floatX, W>(X + k * sx + r, out);
}

// one warp per row of the K*m rows of X (bf16, matrices at stride sx): stat[row] = sum_j X_j^2.
// W = XPACK (16-byte packs) when n % XPACK == 0 (the buffers' stride keeps every row 16-byte aligned).
template <int W>
__global__ void __launch_bounds__(MUON_BLOCK)
muon_rowsq_kernel(double* stat, const floatX* X, long rows, int m, int n, long long sx) {
    const int lane = threadIdx.x % WARP_SIZE;
    const long row = (long)blockIdx.x * MUON_ROWS_PER_BLOCK + threadIdx.x / WARP_SIZE;
    if (row >= rows) return;  // warp-uniform
    const long k = row / m, i = row - k * m;
    const floatX* x = X + k * sx + i * n;
    double acc = 0.0;
    for (int j = lane * W; j < n; j += WARP_SIZE * W) {
        const PackX<W> px = load_pack<floatX, W>(x + j);
        #pragma unroll
        for (int t = 0; t < W; t++) {
            const double v = (double)llmc::to_float(px.v[t]);
            acc += v * v;
        }
    }
    acc = warp_reduce_sum(acc);
    if (lane == 0) stat[row] = acc;
}

// grid (ceil(n / MUON_BLOCK), K): one thread per column of one matrix, rows summed in order
// (neighbouring threads read neighbouring columns: coalesced): stat[k*n + j] = sum_i X_ij^2
__global__ void __launch_bounds__(MUON_BLOCK)
muon_colsq_kernel(double* stat, const floatX* X, int m, int n, long long sx) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const long k = blockIdx.y;
    if (j >= n) return;
    const floatX* x = X + k * sx + j;
    double acc = 0.0;
    for (int i = 0; i < m; i++) {
        const double v = (double)llmc::to_float(x[(long)i * n]);
        acc += v * v;
    }
    stat[k * n + j] = acc;
}

// one warp per matrix (grid K, block 32), after Polar Express. stat: nq sums of X^2 (rows if
// m >= n, else columns), nr the count of each. Steps 6-8: fro = ||X||_F, the Muon+ scale
// s1 = sqrt(min(m,n)) / max(fro, 1e-6) -> mscale[k]; q_t = mean of (s1 X)^2 over the statistic's
// elements; S <- lerp(S, q, 1 - beta2); w_t = 1/sqrt(max(S_t, 1e-10));
// ratio = ||g||_F / max(||g w||_F, 1e-10); factor[t] = w_t * ratio. The fp32 expressions are the CPU
// op's; its g^2 sums are s1^2 times these X^2 sums (up to its rounding of each s1*x to fp32, 2^-24).
__global__ void __launch_bounds__(WARP_SIZE)
muon_normuon_kernel(float* factor, float* S, float* mscale, const double* stat, int nq, int nr, float sqrt_s, float wb) {
    const int k = blockIdx.x;
    const double* st = stat + (size_t)k * nq;
    float* Sk = S + (size_t)k * nq;
    float* fk = factor + (size_t)k * nq;
    double fro2 = 0.0;
    for (int t = threadIdx.x; t < nq; t += WARP_SIZE) fro2 += st[t];
    fro2 = warp_reduce_sum(fro2);
    const float s1 = __fdiv_rn(sqrt_s, fmaxf((float)sqrt(fro2), 1e-6f));
    const double s1sq = (double)s1 * (double)s1;
    double sum_q = 0.0, sum_scaled = 0.0;
    for (int t = threadIdx.x; t < nq; t += WARP_SIZE) {
        const float q = (float)(st[t] * s1sq / nr);  // v_mean
        const float Snew = muon_lerp(Sk[t], q, wb);
        Sk[t] = Snew;
        const float wt = __fdiv_rn(1.0f, __fsqrt_rn(fmaxf(Snew, 1e-10f)));
        fk[t] = wt;
        sum_q += (double)q;
        sum_scaled += (double)((q * (float)nr) * (wt * wt));
    }
    sum_q = warp_reduce_sum(sum_q);
    sum_scaled = warp_reduce_sum(sum_scaled);
    const float nu = __fsqrt_rn((float)sum_q * (float)nr);  // ||g||_F
    const float nu_new = (float)sqrt(sum_scaled);           // ||g w||_F
    const float ratio = __fdiv_rn(nu, fmaxf(nu_new, 1e-10f));
    for (int t = threadIdx.x; t < nq; t += WARP_SIZE) fk[t] = fk[t] * ratio;  // this lane's own w_t
    if (threadIdx.x == 0) mscale[k] = s1;
}

// elementwise over the stack: g = (X * s1[k]) * factor[row or column]; P <- P - (lr_eff g + decay),
// decay = lrwd P where g P >= 0; P_bf16 <- bf16(P) (skipped if null); matrix k of P, P_bf16 at k*ldm.
// W = 4 when n % 4 == 0, ldm % 4 == 0 and P (16 bytes), P_bf16 (a 4-wide floatX pack: 8 bytes, 16
// in the fp32 build) are aligned.
template <int W>
__global__ void __launch_bounds__(MUON_BLOCK)
muon_apply_kernel(float* P, floatX* Pb, const floatX* X, const float* factor, const float* mscale, size_t npacks, int m,
                  int n, size_t mn, long long ldm, long long sx, bool per_row, int nq, float lr_eff, float lrwd) {
    const size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= npacks) return;
    const size_t e = p * W;
    const size_t k = e / mn, r = e - k * mn;
    const size_t i = r / n, j = r - i * n;
    const float s1 = mscale[k];
    const float* fk = factor + k * nq;
    const size_t a = k * (size_t)ldm + r;
    Pack<float, W> pp = load_pack<float, W>(P + a);
    const PackX<W> px = load_pack<floatX, W>(X + k * sx + r);
    PackX<W> pb;
    #pragma unroll
    for (int t = 0; t < W; t++) {
        const float g = (llmc::to_float(px.v[t]) * s1) * fk[per_row ? i : j + t];
        const float pv = pp.v[t];
        const float decay = (g * pv >= 0.0f) ? lrwd * pv : 0.0f;
        pp.v[t] = pv - (lr_eff * g + decay);
        pb.v[t] = llmc::to_floatX(pp.v[t]);
    }
    store_pack<float, W>(P + a, pp);
    if (Pb) store_pack<floatX, W>(Pb + a, pb);
}

// ---------------------------------------------------------------------------------------------
// host entry points

// Step 5 on the stack of K matrices (m x n, bf16) that the caller (or muon_update) put into s.X0 at
// stride muon_x_stride(m, n): five iterations of three batched GEMMs each, ping-ponging between
// s.X0 and s.X1. Returns the buffer holding the result (s.X1: five is odd).
inline floatX* muon_polar_express(MuonGPUScratch& s, int K, int m, int n, cudaStream_t stream) {
    LLMC_CHECK(K >= 1 && m > 0 && n > 0, "muon_polar_express: bad stack %d x (%d x %d)", K, m, n);
    LLMC_CHECK((size_t)K * (size_t)muon_x_stride(m, n) <= s.cap_x && (size_t)K * (size_t)muon_gram_stride(m, n) <= s.cap_gram &&
                   s.base != nullptr,
               "muon_polar_express: scratch too small for %d x (%d x %d) (muon_scratch_reserve it before alloc)", K, m, n);
    const bool tall = m > n;
    const int q = tall ? n : m;  // the Gram matrix is q x q
    const long long sx = muon_x_stride(m, n), sq = muon_gram_stride(m, n);
    floatX* X = s.X0;
    floatX* Y = s.X1;
    for (int it = 0; it < llmc::MUON_NS_STEPS; it++) {
        const float a = (float)llmc::MUON_POLAR_COEFFS[it][0];
        const float b = (float)llmc::MUON_POLAR_COEFFS[it][1];
        const float c = (float)llmc::MUON_POLAR_COEFFS[it][2];
        if (tall)  // A = Xᵀ X (n x n)
            matmul_batched<floatX>("muon gram", s.A, nullptr, X, true, X, false, n, n, m, 1.0f, 0.0f, K, sx, sx, sq, stream);
        else       // A = X Xᵀ (m x m)
            matmul_batched<floatX>("muon gram", s.A, nullptr, X, false, X, true, m, m, n, 1.0f, 0.0f, K, sx, sx, sq, stream);
        // Bm = c A·A + b A
        matmul_batched<floatX>("muon poly", s.Bm, s.A, s.A, false, s.A, false, q, q, q, c, b, K, sq, sq, sq, stream);
        if (tall)  // X' = X·Bm + a X
            matmul_batched<floatX>("muon step", Y, X, X, false, s.Bm, false, m, n, n, 1.0f, a, K, sx, sq, sx, stream);
        else       // X' = Bm·X + a X
            matmul_batched<floatX>("muon step", Y, X, s.Bm, false, X, false, m, n, m, 1.0f, a, K, sq, sx, sx, stream);
        std::swap(X, Y);
    }
    return X;
}

// One Muon step on a stack of K matrices of shape m x n, matrix k (row-major) starting at element
// k*ldm of each of P (fp32 master weights), P_bf16 (their bf16 copy, written; may be null), M
// (momentum), G (gradients); ldm = 0 means m*n (one after another), else ldm >= m*n and the gaps are
// not touched. S: K * muon_second_moment_size(m, n) floats (dense). lr is the group's rate before the
// shape factor, momentum = mu(step), weight_decay = wd(step), as for llmc::muon_update. Returns the
// scratch buffer that holds the Polar Express output X (bf16, stride muon_x_stride), valid until the
// next call (the tests read it).
inline floatX* muon_update(float* P, floatX* P_bf16, float* M, float* S, const float* G, int K, int m, int n, float lr,
                           float momentum, float weight_decay, MuonGPUScratch& s, cudaStream_t stream,
                           long long ldm = 0) {
    LLMC_CHECK(K >= 0 && m > 0 && n > 0, "muon_update: bad stack %d x (%d x %d)", K, m, n);
    if (ldm == 0) ldm = (long long)m * n;
    LLMC_CHECK(ldm >= (long long)m * n, "muon_update: ldm=%lld is less than m*n=%lld (the matrices would overlap)", ldm,
               (long long)m * n);
    if (K == 0) return nullptr;
    LLMC_CHECK(s.base != nullptr && (size_t)K * (size_t)muon_x_stride(m, n) <= s.cap_x &&
                   (size_t)K * (size_t)muon_gram_stride(m, n) <= s.cap_gram &&
                   (size_t)K * (size_t)std::max(m, n) <= s.cap_vec && (size_t)K <= s.cap_mats,
               "muon_update: scratch too small for %d x (%d x %d) (muon_scratch_reserve every group before alloc)", K, m,
               n);
    const size_t mn = (size_t)m * n, total = (size_t)K * mn;
    const long long sx = muon_x_stride(m, n);
    const long rows = (long)K * m;
    // host scalars, each rounded to fp32 exactly as llmc::muon_update computes them
    const float w = 1.0f - momentum;
    const float lr_eff = (float)((double)lr * llmc::muon_shape_factor(m, n));
    const float lrwd = lr_eff * weight_decay;
    const bool per_row = m >= n;
    const int nq = per_row ? m : n, nr = per_row ? n : m;

    // 1-4: momentum, row statistics, the per-row factor, X = bf16(U h)
    const unsigned row_grid = (unsigned)CEIL_DIV(rows, (long)MUON_ROWS_PER_BLOCK);
    const bool vec_mg = n % 4 == 0 && ldm % 4 == 0 && aligned16(M) && aligned16(G);
    if (vec_mg) LAUNCH(muon_momentum_kernel<4>, row_grid, MUON_BLOCK, 0, stream, M, G, s.stat, rows, m, n, ldm, w, momentum);
    else        LAUNCH(muon_momentum_kernel<1>, row_grid, MUON_BLOCK, 0, stream, M, G, s.stat, rows, m, n, ldm, w, momentum);
    LAUNCH(muon_prescale_kernel, K, WARP_SIZE, 0, stream, s.vec, s.stat, m);
    if (vec_mg) {
        const size_t np = total / 4;
        LAUNCH(muon_scale_kernel<4>, (unsigned)CEIL_DIV(np, (size_t)MUON_BLOCK), MUON_BLOCK, 0, stream, s.X0, M, G, s.vec,
               np, n, mn, ldm, sx, momentum);
    } else {
        LAUNCH(muon_scale_kernel<1>, (unsigned)CEIL_DIV(total, (size_t)MUON_BLOCK), MUON_BLOCK, 0, stream, s.X0, M, G,
               s.vec, total, n, mn, ldm, sx, momentum);
    }

    // 5: Polar Express
    floatX* X = muon_polar_express(s, K, m, n, stream);

    // 6-8: statistics of X, Muon+ and NorMuon factors (S updated)
    if (per_row) {
        if (n % XPACK == 0) LAUNCH(muon_rowsq_kernel<XPACK>, row_grid, MUON_BLOCK, 0, stream, s.stat, X, rows, m, n, sx);
        else            LAUNCH(muon_rowsq_kernel<1>, row_grid, MUON_BLOCK, 0, stream, s.stat, X, rows, m, n, sx);
    } else {
        LAUNCH(muon_colsq_kernel, dim3((unsigned)CEIL_DIV(n, MUON_BLOCK), (unsigned)K), MUON_BLOCK, 0, stream, s.stat, X, m,
               n, sx);
    }
    LAUNCH(muon_normuon_kernel, K, WARP_SIZE, 0, stream, s.vec, S, s.mscale, s.stat, nq, nr,
           sqrtf((float)std::min(m, n)), 1.0f - llmc::MUON_BETA2);

    // 9: cautious weight decay, the step and the bf16 copy
    // a 4-wide floatX pack: 8-byte aligned (bf16) or 16 (fp32)
    const bool copy_ok = P_bf16 == nullptr || reinterpret_cast<uintptr_t>(P_bf16) % alignof(PackX<4>) == 0;
    if (n % 4 == 0 && ldm % 4 == 0 && aligned16(P) && copy_ok) {
        const size_t np = total / 4;
        LAUNCH(muon_apply_kernel<4>, (unsigned)CEIL_DIV(np, (size_t)MUON_BLOCK), MUON_BLOCK, 0, stream, P, P_bf16, X, s.vec,
               s.mscale, np, m, n, mn, ldm, sx, per_row, nq, lr_eff, lrwd);
    } else {
        LAUNCH(muon_apply_kernel<1>, (unsigned)CEIL_DIV(total, (size_t)MUON_BLOCK), MUON_BLOCK, 0, stream, P, P_bf16, X,
               s.vec, s.mscale, total, m, n, mn, ldm, sx, per_row, nq, lr_eff, lrwd);
    }
    return X;
}
