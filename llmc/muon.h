// muon.h: the Muon update of one weight matrix, fp32, CPU (docs/model.md#muon).
//
// One matrix P of shape m x n (m = out rows, n = in columns, row-major, PyTorch Linear layout), its
// gradient G (already averaged over the global batch), momentum M (m x n) and NorMuon second moment
// S (m floats if m >= n, else n floats). Per step, in this order:
//   1. Nesterov momentum, PyTorch lerp form:   M <- lerp(M, G, 1-mu);  U = lerp(G, M, mu)
//   2. X = U
//   3. MuonEq: scale each row to the matrix's mean row norm  tau = ||X||_F / sqrt(m)
//   4. X <- X / (1.01 ||X||_F + 1e-6)
//   5. Polar Express, 5 odd-polynomial iterations X <- a X + (b A + c A^2) X with A the Gram matrix
//      (tall m > n: A = X^T X, applied on the right; wide/square: A = X X^T, applied on the left)
//   6-7. Muon+: g = X * sqrt(min(m,n)) / max(||X||_F, 1e-6)
//   8. NorMuon (beta2 = 0.9): per-row (m >= n) or per-column (m < n) second moment of g, EMA into S,
//      divide by sqrt(S), then rescale so that ||g||_F is unchanged
//   9. cautious weight decay (only where g*P >= 0) and the step with lr_eff = lr * sqrt(max(1, m/n))
// Ignoring weight decay and the epsilons, ||dP||_F = lr_eff * sqrt(min(m,n)) exactly (tests use this).
//
// Precision: everything is fp32 (the GPU rounds X to bf16 at step 2; the CPU reference does not).
// Scalars that nanochat holds in fp32 tensors (mu, 1-mu, lr*wd, the coefficients a,b,c) are rounded
// to fp32. Reductions (row norms, the Frobenius norm, NorMuon means) are accumulated in double and
// rounded once to fp32: the result is the fp32-rounded exact value, which is what PyTorch's pairwise
// fp32 summation approximates, and the reduction order is fixed (one thread per row/column chunk,
// then a serial sum), so the step is bit-deterministic whatever the OpenMP thread count.
//
// The GEMMs (the Gram matrix X^T X or X X^T, its square, the product with X) go through the
// project's blocked CPU GEMM (mm_gemm in llmc/cpu/matmul.h: fp32 accumulation, like the GPU's
// GEMMs, and bitwise independent of the thread count). Its operands are given by strides, so the
// Gram matrix reads X transposed in place: no transposed copy.
//
// Memory: MuonScratch holds every work buffer; reserve() it once for the largest shape (or let the
// first step grow it). After that muon_update allocates nothing.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#include "llmc/utils.h"
#include "llmc/cpu/matmul.h"

namespace llmc {

constexpr int MUON_NS_STEPS = 5;       // Polar Express iterations
constexpr float MUON_BETA2 = 0.9f;     // NorMuon second-moment EMA

// Polar Express coefficients (a, b, c) per iteration (Amsel et al. 2505.16932, num_iters=5,
// safety_factor=2e-2, cushion=2), as nanochat lists them. Rounded to fp32 when applied.
constexpr double MUON_POLAR_COEFFS[MUON_NS_STEPS][3] = {
    {8.156554524902461, -22.48329292557795, 15.878769915207462},
    {4.042929935166739, -2.808917465908714, 0.5000178451051316},
    {3.8916678022926607, -2.772484153217685, 0.5060648178503393},
    {3.285753657755655, -2.3681294933425376, 0.46449024233003106},
    {2.3465413258596377, -1.7097828382687081, 0.42323551169305323},
};

// Work buffers for one matrix at a time. reserve(m, n) for every shape the optimizer will see
// (or the largest ones) before training; muon_update calls reserve() itself, which is a no-op
// once the buffers are big enough.
struct MuonScratch {
    std::vector<float> Y;     // m*n: the GEMM product X*Bm or Bm*X
    std::vector<float> A;     // s*s, s = min(m,n): Gram matrix
    std::vector<float> AA;    // s*s: A*A
    std::vector<float> Bm;    // s*s: b*A + c*A*A
    std::vector<float> vec;   // max(m,n): row norms / NorMuon means
    std::vector<float> vec2;  // max(m,n): NorMuon per-row/column scale
    std::vector<double> acc;  // max(m,n): double partial sums (deterministic reductions)
    std::vector<float> X;     // m*n: the matrix being orthogonalized
    void reserve(int m, int n) {
        size_t mn = (size_t)m * n, s = (size_t)std::min(m, n), mx = (size_t)std::max(m, n);
        if (X.size() < mn) { X.resize(mn); Y.resize(mn); }
        if (A.size() < s * s) { A.resize(s * s); AA.resize(s * s); Bm.resize(s * s); }
        if (vec.size() < mx) { vec.resize(mx); vec2.resize(mx); acc.resize(mx); }
    }
};

// lr_eff / lr for an m x n matrix: sqrt(max(1, m/n)), computed in double (nanochat computes it in
// Python floats and rounds the product with lr once, into an fp32 tensor).
inline double muon_shape_factor(int m, int n) { return std::sqrt(std::max(1.0, (double)m / (double)n)); }
// number of floats in the NorMuon second moment S of an m x n matrix
inline int muon_second_moment_size(int m, int n) { return m >= n ? m : n; }

// PyTorch's lerp(a, b, w) for fp32 (aten/src/ATen/native/Lerp.h): two forms depending on the weight,
// so that the result is exact at both ends.
inline float torch_lerp(float a, float b, float w) {
    return std::fabs(w) < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

// C[M x N] = A[M x K] * B[K x N], row-major, C overwritten.
inline void muon_matmul(const float* A, const float* B, float* C, int M, int N, int K) {
    MatmulOperands op{A, K, 1, B, N, 1, C, N};
    mm_gemm(op, M, N, K, true);
}

// The Gram matrix of X (m x n), the smaller of the two: tall (m > n) G = X^T X (n x n), else
// G = X X^T (m x m). The transposed operand is read through its strides.
inline void muon_gram(const float* X, float* G, int m, int n) {
    if (m > n) {
        MatmulOperands op{X, 1, n, X, n, 1, G, n};  // A(i,k) = X[k][i], B(k,j) = X[k][j]
        mm_gemm(op, n, n, m, true);
    } else {
        MatmulOperands op{X, n, 1, X, 1, n, G, m};  // A(i,k) = X[i][k], B(k,j) = X[j][k]
        mm_gemm(op, m, m, n, true);
    }
}

// out[i] = sum_j X[i,j]^2 for each row, accumulated in double (one thread per row: deterministic)
inline void muon_row_sumsq(const float* X, int m, int n, double* out) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < m; i++) {
        const float* x = X + (long)i * n;
        double s = 0.0;
        for (int j = 0; j < n; j++) s += (double)x[j] * (double)x[j];
        out[i] = s;
    }
}

// Frobenius norm in double (serial sum of the per-row sums), rounded to fp32 by the caller
inline double muon_frobenius(const float* X, int m, int n, double* rowbuf) {
    muon_row_sumsq(X, m, n, rowbuf);
    double s = 0.0;
    for (int i = 0; i < m; i++) s += rowbuf[i];
    return std::sqrt(s);
}

// Step 3, MuonEq: X_i <- X_i * (tau / max(||X_i||, 1e-6)), tau = ||X||_F / sqrt(m). Always rows.
inline void muon_equilibrate_rows(float* X, int m, int n, MuonScratch& s) {
    s.reserve(m, n);
    double* rs = s.acc.data();
    muon_row_sumsq(X, m, n, rs);
    double tot = 0.0;
    for (int i = 0; i < m; i++) tot += rs[i];
    const float fro = (float)std::sqrt(tot);
    const float tau = fro / sqrtf((float)m);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < m; i++) {
        const float rn = (float)std::sqrt(rs[i]);
        const float f = tau / std::max(rn, 1e-6f);
        float* x = X + (long)i * n;
        for (int j = 0; j < n; j++) x[j] *= f;
    }
}

// Step 4: X <- X / (1.01 ||X||_F + 1e-6)
inline void muon_normalize(float* X, int m, int n, MuonScratch& s) {
    s.reserve(m, n);
    const float fro = (float)muon_frobenius(X, m, n, s.acc.data());
    const float denom = 1.01f * fro + 1e-6f;
    const long mn = (long)m * n;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < mn; i++) X[i] = X[i] / denom;
}

// Step 5: 5 Polar Express iterations in place on X (m x n), which should already be normalized
// (step 4) so that its singular values are <= 1. Tall (m > n) uses the n x n Gram matrix X^T X on
// the right, wide and square the m x m Gram matrix X X^T on the left: always the smaller one.
inline void polar_express(float* X, int m, int n, MuonScratch& s) {
    s.reserve(m, n);
    const long mn = (long)m * n;
    const bool tall = m > n;
    const int q = tall ? n : m; // Gram matrix size
    float* Y = s.Y.data();
    float* A = s.A.data();
    float* AA = s.AA.data();
    float* Bm = s.Bm.data();
    for (int it = 0; it < MUON_NS_STEPS; it++) {
        const float a = (float)MUON_POLAR_COEFFS[it][0];
        const float b = (float)MUON_POLAR_COEFFS[it][1];
        const float c = (float)MUON_POLAR_COEFFS[it][2];
        muon_gram(X, A, m, n);                       // A = X^T X (tall) or X X^T
        muon_matmul(A, A, AA, q, q, q);              // A*A
        const long qq = (long)q * q;
        for (long i = 0; i < qq; i++) Bm[i] = b * A[i] + c * AA[i];
        if (tall) muon_matmul(X, Bm, Y, m, n, n);    // X * Bm
        else      muon_matmul(Bm, X, Y, m, n, m);    // Bm * X
#pragma omp parallel for schedule(static)
        for (long i = 0; i < mn; i++) X[i] = a * X[i] + Y[i];
    }
}

// One Muon step on one matrix. P, M: m x n; S: muon_second_moment_size(m, n) floats; G: m x n.
// lr is the group's learning rate BEFORE the shape factor (initial_lr * lrm); this function applies
// lr_eff = lr * sqrt(max(1, m/n)) itself. momentum = mu(step), weight_decay = wd(step) (schedule.h).
inline void muon_update(float* P, float* M, float* S, const float* G, int m, int n, float lr,
                        float momentum, float weight_decay, MuonScratch& s) {
    LLMC_CHECK(m > 0 && n > 0, "muon_update: bad matrix shape %d x %d", m, n);
    s.reserve(m, n);
    const long mn = (long)m * n;
    float* X = s.X.data();

    // 1-2. Nesterov momentum in PyTorch's lerp form; X = U
    const float w = 1.0f - momentum; // momentum_buffer.lerp_(grads, 1 - momentum)
#pragma omp parallel for schedule(static)
    for (long i = 0; i < mn; i++) {
        const float Mi = torch_lerp(M[i], G[i], w);
        M[i] = Mi;
        X[i] = torch_lerp(G[i], Mi, momentum); // = M - (M - G)(1 - mu) for mu >= 0.5
    }

    // 3-5. MuonEq, normalize, Polar Express
    muon_equilibrate_rows(X, m, n, s);
    muon_normalize(X, m, n, s);
    polar_express(X, m, n, s);

    // 6-7. g = X; Muon+ renormalization to ||g||_F = sqrt(min(m,n))
    {
        const float fro = (float)muon_frobenius(X, m, n, s.acc.data());
        const float scale = sqrtf((float)std::min(m, n)) / std::max(fro, 1e-6f);
#pragma omp parallel for schedule(static)
        for (long i = 0; i < mn; i++) X[i] *= scale;
    }

    // 8. NorMuon: q = mean of g^2 over the reduced dimension (columns if m >= n, else rows)
    const bool per_row = m >= n;
    const int nq = per_row ? m : n;   // number of statistics (= size of S)
    const int nr = per_row ? n : m;   // N_r: elements averaged into each statistic
    float* qv = s.vec.data();
    float* scale = s.vec2.data();
    double* acc = s.acc.data();
    if (per_row) {
        muon_row_sumsq(X, m, n, acc);
    } else {
        // per-column sums; each thread owns a chunk of columns and walks all rows: deterministic
        constexpr int CB = 64;
#pragma omp parallel for schedule(static)
        for (int jb = 0; jb < n; jb += CB) {
            const int je = std::min(jb + CB, n);
            for (int j = jb; j < je; j++) acc[j] = 0.0;
            for (int i = 0; i < m; i++) {
                const float* x = X + (long)i * n;
                for (int j = jb; j < je; j++) acc[j] += (double)x[j] * (double)x[j];
            }
        }
    }
    double sum_q = 0.0;
    for (int k = 0; k < nq; k++) {
        qv[k] = (float)(acc[k] / nr);    // v_mean (fp32)
        sum_q += qv[k];
    }
    const float nu = sqrtf((float)sum_q * (float)nr);  // ||g||_F
    const float wb = 1.0f - MUON_BETA2;                // second_momentum_buffer.lerp_(v_mean, 1 - beta2)
    double sum_scaled = 0.0;
    for (int k = 0; k < nq; k++) {
        S[k] = torch_lerp(S[k], qv[k], wb);
        const float wk = 1.0f / sqrtf(std::max(S[k], 1e-10f));
        scale[k] = wk;
        sum_scaled += (double)((qv[k] * (float)nr) * (wk * wk));
    }
    const float nu_new = (float)std::sqrt(sum_scaled);   // ||g * w||_F
    const float ratio = nu / std::max(nu_new, 1e-10f);
    for (int k = 0; k < nq; k++) scale[k] = scale[k] * ratio;

    // 9. cautious weight decay and the update: P <- P - (lr_eff g + lr_eff wd P [g P >= 0])
    const float lr_eff = (float)((double)lr * muon_shape_factor(m, n));
    const float lrwd = lr_eff * weight_decay;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < m; i++) {
        float* p = P + (long)i * n;
        const float* x = X + (long)i * n;
        for (int j = 0; j < n; j++) {
            const float g = x[j] * (per_row ? scale[i] : scale[j]);
            const float decay = (g * p[j] >= 0.0f) ? lrwd * p[j] : 0.0f;
            p[j] = p[j] - (lr_eff * g + decay);
        }
    }
}

} // namespace llmc
