// test_muon.cu: llmc/cuda/muon.cuh (Muon on a stack of same-shape matrices) against the CPU op
// llmc/muon.h, matrix by matrix, for tall, wide and square stacks (and ve_gate's 10 x 12 and odd
// widths that take the scalar paths).
//
// The GPU differs from the fp32 CPU op by design in one place: Polar Express runs on bf16 operands
// (X rounded once after MuonEq/normalize, then A = Gram(X), Bm = c A·A + b A and X' = Bm X + a X
// each rounded to bf16 once per iteration; accumulation fp32). Everything else is fp32 with double
// reductions on both sides. So the test splits the step in three:
//
// (1) X after Polar Express (muon_update returns it): against the CPU's steps 1-5 run with
//     llmc/muon.h's own functions (momentum, muon_equilibrate_rows, muon_normalize, polar_express).
//     The difference is the bf16 roundings (the fp32 reference is ~1e-5 off in entries of ~0.1,
//     test_optim: negligible here). Their effect is derived per matrix from the singular values of
//     the input (pe_bound):
//       - rounding model: each rounding to bf16 adds an error of zero mean and root mean square
//         <= 2^-8/sqrt(3) of the value (uniform within half an ulp, and half an ulp is <= 2^-8 of
//         the value), independently for each element;
//       - iteration k rounds A (in A's eigenbasis the error reaches Bm as (b + c(l_i + l_j)) dA_ij),
//         Bm, and X'; the size of each follows exactly from the singular values (||A||_F^2 = sum s^4,
//         ||Bm||_F^2 = sum (b s^2 + c s^4)^2, ||X'||_F^2 = sum p(s)^2);
//       - each error reaches the output through the first-order derivative of the remaining
//         iterations, a function of the singular values: per singular pair the divided differences
//         of the scalar map (f' on the diagonal), f(s)/s on the rectangular part; the Gram-side
//         errors (A, Bm) are symmetric in the singular basis and mostly move singular values,
//         which the later iterations pull back;
//       - independent errors add in quadrature: the expected norm of the output error.
//     Checks: ||X_gpu - X_cpu||_F <= 3x that expected norm; each singular value's shift from
//     f(sigma_in) (its diagonal component, times f') <= 4x its root mean square (a maximum over
//     <= 96 near-Gaussian values); the singular values lie in the band of docs/model.md#polar-express [0.8589, 1.1411]
//     widened by that shift bound, which is < 0.1 for min(m, n) >= 32 (checked, so the band check
//     means something; the bound grows for the 10 x 12 kind, with fewer elements per singular value).
//     Observed: 0.2-0.45 of the bounds. Worst-case bounds instead (every |E_ij| = 2^-8 |Z_ij|, all
//     aligned with the largest gain) come out 20-50x the observed errors and wider than the band.
//     Test matrices have a known spectrum (random orthonormal factors, singular values spread
//     over a decade), so the bound stays informative for square ones too (a square Gaussian
//     matrix's smallest singular value can fall below the band's premise, 1e-3); Gaussian tall
//     and wide ones (aspect 1.5) are used for Polar Express alone.
// (2) steps 6-9 on the GPU's own X: against a double implementation of docs/model.md#muon written
//     here (textbook forms), from the same X, P and S. Differences are fp32 roundings only: the
//     factor of g carries ~20 of them (Muon+ scale, q, S lerp, 1/sqrt, ratio), so g is within
//     2^-19 relative, and P' = P - (lr_eff g + decay) adds two roundings:
//     |dP| <= 2^-23 |P'| + 2^-19 (lr_eff |g| + lr_eff wd |P|); S' within 2^-19 relative. The
//     cautious mask cannot flip (g's sign comes from the same bf16 x). The bf16 copy is checked
//     bitwise against bf16(P').
// (3) the same double steps 6-9 from the CPU's X reproduce llmc::muon_update's P and S (same
//     tolerances), which ties (1) and (2) to the CPU op end to end; the end-to-end difference
//     is printed.
// FP32 build (-DLLMC_FP32, floatX = float): X, A, Bm and the Polar Express GEMMs are fp32 (cuBLASLt
// CUBLAS_COMPUTE_32F; SIM: the CPU GEMM), so (1) compares two fp32 computations that differ only in
// the order of their roundings. The same error propagation (pe_bound) is used with the fp32 model
// (round_model): every stored element of A, Bm, X' is a K-term fp32 sum plus a rounding: 2K + 1
// roundings (K products, K - 1 adds, the store; +2 for the epilogue's scaled C term), each
// independent with rms <= 2^-24/sqrt(3) of the element's scale (the partial sums of these
// well-conditioned products do not exceed it: diagonal sums grow monotonically to the value,
// off-diagonal ones are random walks of size sqrt(k) |term| <= the value scale), and both the kernel
// and the CPU op make such errors (x sqrt 2); the input X: ~8 roundings (the factors tau, f, denom, h
// and the products). The bound is then ~2^-12 of the bf16 one: a rounding to bf16 anywhere fails it.
// Observed under SIM: up to 0.25 of the bounds.
// (2)-(3) are unchanged; the copy P_bf16 is P' itself there.
// Momentum M: PyTorch's lerp in fp32 on both sides; the GPU may contract a multiply-add into an FMA:
// 2^-23 (|M'| + |w (G - M)|).
// Determinism: two runs of two steps from the same state are bitwise equal (P, its bf16 copy, M, S).
// Matrix stride ldm (check_strided): stacks whose matrices are ldm >= m*n elements apart in P, P_bf16,
// M and G (a gap after each matrix; and the GPU trainer's layout, [Wq_l; Wk_l; Wv_l] per layer, three
// stacks interleaved) against dense calls on the same values: bitwise, and every element outside the
// call's stack keeps its bits.
#include <doctest/doctest.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>
#include "llmc/cuda/muon.cuh"
#include "llmc/muon.h"
#include "test/sim/test_util.h"

using namespace testutil;
using dvec = std::vector<double>;

namespace {

// Steps per group: two (the second starts from the state the GPU left). The ThreadSanitizer flavor
// looks for races, which one step shows as well as two, and each launch costs it ~0.1 s: one step.
#if defined(LLMC_SIM_TSAN) && LLMC_SIM_TSAN
constexpr int kSteps = 1;
#else
constexpr int kSteps = 2;
#endif

// ---------------------------------------------------------------------------------------------
// small double linear algebra

// eigenvalues (ascending) of a symmetric s x s matrix: cyclic Jacobi rotations
dvec sym_eigenvalues(dvec A, int s) {
    for (int sweep = 0; sweep < 60; sweep++) {
        double off = 0.0, tot = 0.0;
        for (int i = 0; i < s; i++)
            for (int j = 0; j < s; j++) {
                const double v = A[(size_t)i * s + j] * A[(size_t)i * s + j];
                tot += v;
                if (i != j) off += v;
            }
        if (off <= 1e-30 * tot) break;
        for (int p = 0; p < s; p++)
            for (int q = p + 1; q < s; q++) {
                const double apq = A[(size_t)p * s + q];
                if (apq == 0.0) continue;
                const double theta = (A[(size_t)q * s + q] - A[(size_t)p * s + p]) / (2.0 * apq);
                const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1.0));
                const double c = 1.0 / std::sqrt(t * t + 1.0), sn = t * c;
                for (int k = 0; k < s; k++) {
                    const double akp = A[(size_t)k * s + p], akq = A[(size_t)k * s + q];
                    A[(size_t)k * s + p] = c * akp - sn * akq;
                    A[(size_t)k * s + q] = sn * akp + c * akq;
                }
                for (int k = 0; k < s; k++) {
                    const double apk = A[(size_t)p * s + k], aqk = A[(size_t)q * s + k];
                    A[(size_t)p * s + k] = c * apk - sn * aqk;
                    A[(size_t)q * s + k] = sn * apk + c * aqk;
                }
            }
    }
    dvec ev(s);
    for (int i = 0; i < s; i++) ev[i] = A[(size_t)i * s + i];
    std::sort(ev.begin(), ev.end());
    return ev;
}

// singular values (ascending) of a row-major m x n matrix, from its smaller Gram matrix
dvec singular_values(const dvec& X, int m, int n) {
    const int s = std::min(m, n);
    dvec G((size_t)s * s, 0.0);
    for (int i = 0; i < s; i++)
        for (int j = 0; j < s; j++) {
            double acc = 0.0;
            if (m >= n) for (int r = 0; r < m; r++) acc += X[(size_t)r * n + i] * X[(size_t)r * n + j];
            else        for (int c = 0; c < n; c++) acc += X[(size_t)i * n + c] * X[(size_t)j * n + c];
            G[(size_t)i * s + j] = acc;
        }
    dvec ev = sym_eigenvalues(G, s);
    for (double& e : ev) e = std::sqrt(std::max(e, 0.0));
    return ev;
}

double fro(const dvec& v) {
    double s = 0.0;
    for (double x : v) s += x * x;
    return std::sqrt(s);
}

// rows x cols with orthonormal columns: modified Gram-Schmidt (twice) of a Gaussian matrix
dvec random_orthonormal(int rows, int cols, llmc::Rng& rng) {
    dvec Q((size_t)rows * cols);
    for (double& x : Q) x = rng.normal();
    for (int pass = 0; pass < 2; pass++)
        for (int j = 0; j < cols; j++) {
            for (int i = 0; i < j; i++) {
                double d = 0.0;
                for (int r = 0; r < rows; r++) d += Q[(size_t)r * cols + i] * Q[(size_t)r * cols + j];
                for (int r = 0; r < rows; r++) Q[(size_t)r * cols + j] -= d * Q[(size_t)r * cols + i];
            }
            double nrm = 0.0;
            for (int r = 0; r < rows; r++) nrm += Q[(size_t)r * cols + j] * Q[(size_t)r * cols + j];
            nrm = std::sqrt(nrm);
            for (int r = 0; r < rows; r++) Q[(size_t)r * cols + j] /= nrm;
        }
    return Q;
}

// m x n matrix U diag(sigma) Vᵀ with random orthonormal U, V and singular values log-uniform in
// [scale/10, scale]: a known, moderate conditioning for every shape (square ones included)
std::vector<float> designed_matrix(int m, int n, double scale, llmc::Rng& rng) {
    const int s = std::min(m, n);
    const dvec U = random_orthonormal(m, s, rng), V = random_orthonormal(n, s, rng);
    dvec sig(s);
    for (double& x : sig) x = scale * std::pow(10.0, -rng.uniform());
    std::vector<float> X((size_t)m * n);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double acc = 0.0;
            for (int k = 0; k < s; k++) acc += U[(size_t)i * s + k] * sig[k] * V[(size_t)j * s + k];
            X[(size_t)i * n + j] = (float)acc;
        }
    return X;
}

dvec to_d(const std::vector<float>& v) { return dvec(v.begin(), v.end()); }

// ---------------------------------------------------------------------------------------------
// the rounding error budget of Polar Express (see the top of the file)

// rms of one stored element's error per unit of its scale (||Z||_F / sqrt(#entries)), for the input X
// and for A, Bm, X' of each iteration: bf16: one rounding to bf16 (the fp32 accumulation is
// negligible next to it); fp32 build: the roundings of the K-term sums, in both implementations.
struct RoundModel { double input, gram, poly, step; };
RoundModel round_model(int m, int n) {
    if (!kFP32) {
        const double u = 0x1p-8 / std::sqrt(3.0);
        return {u, u, u, u};
    }
    const double u = 0x1p-24 / std::sqrt(3.0) * std::sqrt(2.0);
    const double q = std::min(m, n), p = std::max(m, n);
    return {u * std::sqrt(8.0), u * std::sqrt(2 * p + 1), u * std::sqrt(2 * q + 3), u * std::sqrt(2 * q + 3)};
}

// the GPU's coefficients: the spec's values rounded to fp32
double coef(int k, int j) { return (double)(float)llmc::MUON_POLAR_COEFFS[k][j]; }
double pk(int k, double x) { return coef(k, 0) * x + coef(k, 1) * x * x * x + coef(k, 2) * x * x * x * x * x; }
double dpk(int k, double x) { return coef(k, 0) + 3 * coef(k, 1) * x * x + 5 * coef(k, 2) * x * x * x * x; }

// the composed map of iterations k+1..5 (0-based: iterations k..4) applied to x, and its derivative
void compose_from(int k, double x, double& f, double& df) {
    f = x;
    df = 1.0;
    for (int j = k; j < llmc::MUON_NS_STEPS; j++) {
        df *= dpk(j, f);
        f = pk(j, f);
    }
}

struct PeBound {
    double fro;    // for ||X_gpu - X_exact||_F
    double sigma;  // for max_i |sigma_i(X_gpu) - f(sigma_i(X0))|
};

// Gains of the remaining iterations k+1..5 as a map of the k-th iterate X_k = U diag(t) Vᵀ (m x n,
// q = min(m, n) singular values t): to first order it maps a perturbation E, written in the singular
// bases (E' = Uᵀ E V), component by component: the diagonal by f'(t_i); each pair (i, j) of the q x q
// block by d1 = (f(t_i) - f(t_j))/(t_i - t_j) on its symmetric part and d2 = (f(t_i) + f(t_j))/(t_i + t_j)
// on its antisymmetric part; the (max(m,n) - q) x q rectangular rest by f(t_j)/t_j.
struct Gains {
    dvec f, df;
    double d1(int i, int j, const dvec& t) const { return t[i] == t[j] ? df[i] : (f[i] - f[j]) / (t[i] - t[j]); }
    double d2(int i, int j, const dvec& t) const { return (f[i] + f[j]) / (t[i] + t[j]); }
};
Gains gains_at(int k, const dvec& t) {
    Gains g{dvec(t.size()), dvec(t.size())};
    for (size_t i = 0; i < t.size(); i++) compose_from(k, t[i], g.f[i], g.df[i]);
    return g;
}

// Output error (Frobenius) of a perturbation of the k-th iterate with independent random entries of
// root mean square r: r sqrt(sum of the squared gains over all m*n components).
double random_out(const Gains& g, const dvec& t, int m, int n, double r) {
    const int q = (int)t.size();
    double sum = 0.0;
    for (int i = 0; i < q; i++) {
        sum += g.df[i] * g.df[i];
        const double rect = g.f[i] / t[i];
        sum += (double)(std::max(m, n) - q) * rect * rect;
        for (int j = 0; j < q; j++)
            if (j != i) sum += 0.5 * (g.d1(i, j, t) * g.d1(i, j, t) + g.d2(i, j, t) * g.d2(i, j, t));
    }
    return r * std::sqrt(sum);
}

// Output error of a perturbation dBm·X (or X·dBm) of the k-th iterate, dBm symmetric with entries
// beta_ij * delta_ij in the singular basis (delta independent, rms rho), s the spectrum of the
// iteration's input X: the component (i, j) is beta_ij delta_ij s_j, (j, i) the same delta times s_i,
// so each pair has a symmetric part beta delta (s_i + s_j)/2 and an antisymmetric one beta delta (s_i - s_j)/2
// (small once the singular values cluster: the Gram-side roundings mostly move singular values,
// which the later iterations pull back). No rectangular part: dBm X lies in X's row space.
template <typename Beta>
double structured_out(const Gains& g, const dvec& t, const dvec& s, double rho, Beta beta) {
    const int q = (int)t.size();
    double sum = 0.0;
    for (int i = 0; i < q; i++) {
        const double di = g.df[i] * beta(i, i) * s[i];
        sum += di * di;
        for (int j = i + 1; j < q; j++) {
            const double b2 = beta(i, j) * beta(i, j), sp = 0.5 * (s[i] + s[j]), sm = 0.5 * (s[i] - s[j]);
            const double d1 = g.d1(i, j, t), d2 = g.d2(i, j, t);
            sum += 2.0 * b2 * (d1 * d1 * sp * sp + d2 * d2 * sm * sm);
        }
    }
    return rho * std::sqrt(sum);
}

// s0: singular values of the Polar Express input (all min(m, n) of them, > 0); input_rounded: the GPU
// rounded that input (to floatX). Rounding model: rounding Z to bf16 adds errors of zero mean and root
// mean square <= u = 2^-8/sqrt(3) of the value (uniform within half an ulp, which is <= 2^-8 of
// it), independent between elements: rms entry u ||Z||_F / sqrt(#entries) (u per array: round_model). Iteration k (a, b, c;
// input spectrum s, Gram eigenvalues l = s^2, output t = p_k(s)) rounds:
//   A:  dBm = b dA + c (dA A + A dA), i.e. beta_ij = b + c (l_i + l_j) on the entries of dA (rms
//       u ||A||_F / q, symmetric: A_ij and A_ji are the same fp32 sum), applied to X
//   Bm: beta = 1, rms u ||Bm||_F / q, applied to X
//   X': a random perturbation of rms u ||X'||_F / sqrt(m n)
// (all norms exact functions of s: ||A||_F^2 = sum l^2, ||Bm||_F^2 = sum (b l + c l^2)^2, ...), each
// carried to the output by the gains of iterations k+1..5 at t. A singular value moves by the
// diagonal component, times f'(t_i) at the output; over the q singular values the largest of these
// Gaussian-like shifts is taken as 4 rms. Contributions are summed linearly (not in quadrature),
// then doubled. (Worst-case alignment of every rounding error instead, ||E||_F = 2^-8 ||Z||_F with
// the largest gain for every component, bounds the observed errors by ~50x and the singular values
// by more than the band's width: no test at all.)
PeBound pe_bound(const dvec& s0, int m, int n, bool input_rounded) {
    const RoundModel u = round_model(m, n);
    const int steps = llmc::MUON_NS_STEPS;
    const int q = (int)s0.size();
    const double mn = (double)m * n;
    std::vector<dvec> sig(steps + 1, s0);
    for (int k = 1; k <= steps; k++)
        for (int i = 0; i < q; i++) sig[k][i] = pk(k - 1, sig[k - 1][i]);
    double fro2 = 0.0;     // sum of the squared output errors of the independent roundings
    dvec shift2(q, 0.0);  // per singular value: sum of its squared output shifts
    if (input_rounded) {
        const Gains g = gains_at(0, sig[0]);
        const double r = u.input * fro(sig[0]) / std::sqrt(mn);
        fro2 += std::pow(random_out(g, sig[0], m, n, r), 2);
        for (int i = 0; i < q; i++) shift2[i] += std::pow(g.df[i] * r, 2);
    }
    for (int k = 1; k <= steps; k++) {
        const dvec& s = sig[k - 1];
        const dvec& t = sig[k];
        const double bb = coef(k - 1, 1), cc = coef(k - 1, 2);
        double nA = 0.0, nB = 0.0;
        for (double x : s) {
            nA += x * x * x * x;
            const double bm = bb * x * x + cc * x * x * x * x;
            nB += bm * bm;
        }
        const double rho_a = u.gram * std::sqrt(nA) / q, rho_b = u.poly * std::sqrt(nB) / q, r = u.step * fro(t) / std::sqrt(mn);
        auto beta_a = [&](int i, int j) { return bb + cc * (s[i] * s[i] + s[j] * s[j]); };
        auto beta_b = [](int, int) { return 1.0; };
        const Gains g = gains_at(k, t);
        fro2 += std::pow(structured_out(g, t, s, rho_a, beta_a), 2) + std::pow(structured_out(g, t, s, rho_b, beta_b), 2) +
                std::pow(random_out(g, t, m, n, r), 2);
        for (int i = 0; i < q; i++)
            shift2[i] += std::pow(g.df[i], 2) * (std::pow(beta_a(i, i) * rho_a * s[i], 2) + std::pow(rho_b * s[i], 2) + r * r);
    }
    return PeBound{3.0 * std::sqrt(fro2), 4.0 * std::sqrt(*std::max_element(shift2.begin(), shift2.end()))};
}

// expected output singular values: |f(sigma)| of the input ones, sorted
dvec pe_expected(const dvec& s0) {
    dvec r(s0.size());
    for (size_t i = 0; i < s0.size(); i++) {
        double f, df;
        compose_from(0, s0[i], f, df);
        r[i] = std::fabs(f);
    }
    std::sort(r.begin(), r.end());
    return r;
}

// Check one Polar Express output against the fp32 reference and the band; returns ||diff||_F / ||ref||_F.
double check_polar(const dvec& x_gpu, const dvec& x_ref, const dvec& s_in, int m, int n, bool input_rounded) {
    const PeBound b = pe_bound(s_in, m, n, input_rounded);
    dvec diff(x_gpu.size());
    for (size_t i = 0; i < diff.size(); i++) diff[i] = x_gpu[i] - x_ref[i];
    const double err = fro(diff), fro_bound = b.fro, sig_bound = b.sigma;
    const dvec s_out = singular_values(x_gpu, m, n), s_exp = pe_expected(s_in);
    double sig_dev = 0.0;
    for (size_t i = 0; i < s_out.size(); i++) sig_dev = std::max(sig_dev, std::fabs(s_out[i] - s_exp[i]));
    MESSAGE(m << "x" << n << ": sigma_in [" << s_in.front() << ", " << s_in.back() << "] -> sigma_out [" << s_out.front()
              << ", " << s_out.back() << "]; ||X_gpu - X_cpu||_F " << err << " (bound " << fro_bound << ", ||X||_F "
              << fro(x_ref) << "); max |sigma - f(sigma_in)| " << sig_dev << " (bound " << sig_bound << ")");
    CHECK(err <= fro_bound);
    CHECK(sig_dev <= sig_bound);
    // the band: every input singular value is >= 1e-3 here (the premise of the band of docs/model.md#polar-express)
    CHECK(s_in.front() >= 1e-3);
    // (the band's limits are printed to 4 decimals, the exact ones 0.858873 and 1.141127: +-5e-5, which
    // matters where sig_bound is fp32-small)
    CHECK(s_out.front() >= 0.8589 - 5e-5 - sig_bound);
    CHECK(s_out.back() <= 1.1411 + 5e-5 + sig_bound);
    // the bound must leave the band check meaningful where the matrices are big enough: a wrong
    // coefficient or a missing iteration moves singular values by > 0.1 (the band is 0.28 wide)
    if (std::min(m, n) >= 32) CHECK(sig_bound < 0.1);
    return err / fro(x_ref);
}

// ---------------------------------------------------------------------------------------------
// steps 6-9 in double (docs/model.md#muon, textbook forms), from X after Polar Express

void post_reference(const dvec& X, dvec& P, dvec& S, int m, int n, double lr_eff, double lrwd, dvec* g_out) {
    const size_t mn = (size_t)m * n;
    const double f = fro(X);
    dvec g(mn);
    for (size_t i = 0; i < mn; i++) g[i] = X[i] * std::sqrt((double)std::min(m, n)) / std::max(f, 1e-6);
    const bool rows = m >= n;
    const int nq = rows ? m : n, nr = rows ? n : m;
    dvec q(nq, 0.0);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) q[rows ? i : j] += g[(size_t)i * n + j] * g[(size_t)i * n + j];
    for (double& x : q) x /= nr;
    const double nu = fro(g), wb = (double)(1.0f - llmc::MUON_BETA2);
    double nu2 = 0.0;
    dvec w(nq);
    for (int k = 0; k < nq; k++) {
        S[k] = S[k] + wb * (q[k] - S[k]);
        w[k] = 1.0 / std::sqrt(std::max(S[k], 1e-10));
        nu2 += nr * q[k] * w[k] * w[k];
    }
    nu2 = std::sqrt(nu2);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) g[(size_t)i * n + j] *= w[rows ? i : j] * nu / std::max(nu2, 1e-10);
    for (size_t i = 0; i < mn; i++) P[i] -= lr_eff * g[i] + (g[i] * P[i] >= 0.0 ? lrwd * P[i] : 0.0);
    if (g_out) *g_out = g;
}

// P' and S' against the double steps 6-9 (tolerances at the top of the file)
long check_post(const char* what, const std::vector<float>& p_got, const std::vector<float>& s_got, const dvec& p_ref,
                const dvec& s_ref, const dvec& g, const std::vector<float>& p_old, double lr_eff, double lrwd) {
    const long bad_p = count_mismatches(what, p_got, p_ref, [&](size_t i) {
        return 0x1p-23 * std::fabs(p_ref[i]) + 0x1p-19 * (lr_eff * std::fabs(g[i]) + lrwd * std::fabs(p_old[i]));
    });
    const long bad_s = count_mismatches(what, s_got, s_ref, [&](size_t i) { return 0x1p-19 * std::fabs(s_ref[i]); });
    return bad_p + bad_s;
}

template <typename T>
std::vector<T> part(const std::vector<T>& v, size_t off, size_t n) {
    return std::vector<T>(v.begin() + off, v.begin() + off + n);
}

struct Shape { int K, m, n; };

// the K matrices of a scratch X buffer (stride sx), each copied on its own: the padding between
// them is never written (compute-sanitizer's initcheck would flag a copy of it); entry k at k*sx
std::vector<floatX> download_stack(const floatX* dX, int K, size_t mn, long long sx) {
    std::vector<floatX> xs(K * sx, host_to_x(0.0f));
    cudaCheck(cudaDeviceSynchronize());
    for (int k = 0; k < K; k++)
        cudaCheck(cudaMemcpy(xs.data() + k * sx, dX + k * sx, mn * sizeof(floatX), cudaMemcpyDeviceToHost));
    return xs;
}

// ---------------------------------------------------------------------------------------------
// one group through kSteps Muon steps, every matrix checked as described at the top

void check_group(const Shape& sh, float lr, float mu, float wd, uint64_t seed) {
    const int K = sh.K, m = sh.m, n = sh.n;
    CAPTURE(K); CAPTURE(m); CAPTURE(n);
    const size_t mn = (size_t)m * n, ns = (size_t)llmc::muon_second_moment_size(m, n);
    const long long sx = muon_x_stride(m, n);
    llmc::Rng rng(seed);
    std::vector<float> P = randn(K * mn, rng, 0.05), M = randn(K * mn, rng, 0.02), S(K * ns);
    for (float& x : S) x = (float)(0.5 + rng.uniform());  // a second moment from "earlier steps"

    MuonGPUScratch scr;
    muon_scratch_reserve(scr, K, m, n);
    muon_scratch_alloc(scr);
    matmul_init();
    DeviceBuffer<float> dP(P), dM(M), dS(S), dG(K * mn);
    DeviceBuffer<floatX> dPb(K * mn);
    llmc::MuonScratch cs;
    const float w = 1.0f - mu;
    const float lr_eff = (float)((double)lr * llmc::muon_shape_factor(m, n)), lrwd = lr_eff * wd;

    for (int step = 0; step < kSteps; step++) {
        CAPTURE(step);
        // gradients chosen so that the momentum's output U = mu^2 M + (1-mu)(1+mu) G has a known
        // spectrum (scale 1, singular values over a decade: see the top), from the GPU's previous state
        std::vector<float> G(K * mn);
        for (int k = 0; k < K; k++) {
            const std::vector<float> u = designed_matrix(m, n, 1.0, rng);
            for (size_t i = 0; i < mn; i++)
                G[k * mn + i] = (float)((u[i] - (double)mu * mu * M[k * mn + i]) / ((1.0 - mu) * (1.0 + mu)));
        }
        dG.upload(G);
        dPb.poison();
        floatX* dX = muon_update(dP.ptr, dPb.ptr, dM.ptr, dS.ptr, dG.ptr, K, m, n, lr, mu, wd, scr, 0);
        REQUIRE(dX != nullptr);
        const std::vector<floatX> xs = download_stack(dX, K, mn, sx);
        const std::vector<float> P1 = dP.download(), M1 = dM.download(), S1 = dS.download();
        const std::vector<floatX> Pb1 = dPb.download();

        for (int k = 0; k < K; k++) {
            CAPTURE(k);
            const size_t o = k * mn;
            // CPU steps 1-5 with llmc/muon.h's functions (the order muon_update uses)
            std::vector<float> Mc = part(M, o, mn), X(mn);
            for (size_t i = 0; i < mn; i++) {
                Mc[i] = llmc::torch_lerp(Mc[i], G[o + i], w);
                X[i] = llmc::torch_lerp(G[o + i], Mc[i], mu);
            }
            CHECK(count_mismatches("M", part(M1, o, mn), Mc, [&](size_t i) {
                      return 0x1p-23 * (std::fabs(Mc[i]) + std::fabs(w * (G[o + i] - M[o + i])));
                  }) == 0);
            llmc::muon_equilibrate_rows(X.data(), m, n, cs);
            llmc::muon_normalize(X.data(), m, n, cs);
            const dvec s_in = singular_values(to_d(X), m, n);
            llmc::polar_express(X.data(), m, n, cs);
            const dvec x_cpu = to_d(X);
            const dvec x_gpu = to_d(to_f32(part(xs, k * sx, mn)));
            // (1) Polar Express, floatX against fp32
            const double rel = check_polar(x_gpu, x_cpu, s_in, m, n, true);

            // (2) steps 6-9 from the GPU's X
            const std::vector<float> p_old = part(P, o, mn);
            dvec p_ref = to_d(p_old), s_ref = to_d(part(S, k * ns, ns)), g_ref;
            post_reference(x_gpu, p_ref, s_ref, m, n, lr_eff, lrwd, &g_ref);
            CHECK(check_post("P, S (GPU)", part(P1, o, mn), part(S1, k * ns, ns), p_ref, s_ref, g_ref, p_old, lr_eff, lrwd) ==
                  0);
            long bad_copy = 0;
            for (size_t i = 0; i < mn; i++) {
                const floatX want = host_to_x(P1[o + i]);
                bad_copy += std::memcmp(&Pb1[o + i], &want, sizeof(floatX)) != 0;
            }
            CHECK(bad_copy == 0);

            // (3) the same steps from the CPU's X reproduce llmc::muon_update
            std::vector<float> Pc = p_old, Mc2 = part(M, o, mn), Sc = part(S, k * ns, ns);
            llmc::muon_update(Pc.data(), Mc2.data(), Sc.data(), G.data() + o, m, n, lr, mu, wd, cs);
            dvec p_ref2 = to_d(p_old), s_ref2 = to_d(part(S, k * ns, ns)), g_ref2;
            post_reference(x_cpu, p_ref2, s_ref2, m, n, lr_eff, lrwd, &g_ref2);
            CHECK(check_post("P, S (CPU op)", Pc, Sc, p_ref2, s_ref2, g_ref2, p_old, lr_eff, lrwd) == 0);
            double dpe = 0.0, dpn = 0.0;
            for (size_t i = 0; i < mn; i++) {
                dpe += ((double)P1[o + i] - Pc[i]) * ((double)P1[o + i] - Pc[i]);
                dpn += ((double)Pc[i] - p_old[i]) * ((double)Pc[i] - p_old[i]);
            }
            MESSAGE("  step " << step << " matrix " << k << ": X rel err " << rel << ", end to end ||P_gpu - P_cpu||_F / ||dP_cpu||_F "
                              << std::sqrt(dpe / dpn));
        }
        P = P1;
        M = M1;
        S = S1;
    }
    muon_scratch_free(scr);
}

// ---------------------------------------------------------------------------------------------
// matrix strides

// one stack inside a shared buffer: matrix k at base + k*ldm (m x n, row-major)
struct Stack { long long base; int K, m, n; long long ldm; };

// Runs kSteps steps of muon_update for each stack, one call after the other (in the given order) on
// shared buffers P, P_bf16, M, G of `size` elements, and the same steps as dense calls (ldm = 0) on
// each stack's own dense copies, whose values start equal. Checks, per call: X (the Polar Express
// output), the stack's P, P_bf16, M and its S bitwise equal to the dense call's; every element of the
// shared buffers outside the stack (the gaps and the other stacks) unchanged bitwise. Elements no stack
// owns are poisoned (NaN): a kernel reading them would also spread NaN into the results.
// Why bitwise: a stride changes only where an element is read and written (k*ldm + r instead of
// k*m*n + r); the scratch, S, the per-row statistics and the GEMMs are the dense ones, and with the
// same pack width W (4 or 1: which elements a lane takes, so the order of the row sums) every value
// goes through the same operations. W = 4 needs ldm % 4 == 0; where a stride breaks that (and n %
// 4 == 0), dense_off = 1 puts the dense copies at a 1-element offset (misaligned: W = 1 too). The dense
// calls' agreement with the CPU op is the subject of the tests above.
void check_strided(const std::vector<Stack>& stacks, long long size, int dense_off, float lr, float mu, float wd,
                   uint64_t seed) {
    llmc::Rng rng(seed);
    std::vector<int> owner(size, -1);
    for (size_t si = 0; si < stacks.size(); si++) {
        const Stack& st = stacks[si];
        REQUIRE(st.ldm >= (long long)st.m * st.n);
        for (int k = 0; k < st.K; k++)
            for (long long r = 0; r < (long long)st.m * st.n; r++) {
                const long long e = st.base + k * st.ldm + r;
                REQUIRE((e < size && owner[e] == -1));
                owner[e] = (int)si;
            }
    }
    float nanf;
    std::memset(&nanf, 0xFF, sizeof nanf);
    auto fill = [&](double sd) {  // random where a stack owns the element, the poison elsewhere
        std::vector<float> v(size);
        for (long long e = 0; e < size; e++) v[e] = owner[e] >= 0 ? (float)rng.normal(0.0, sd) : nanf;
        return v;
    };
    // the elements of stack st as a dense K*m*n array
    auto gather = [](const auto& v, const Stack& st) {
        const size_t mn = (size_t)st.m * st.n;
        std::remove_const_t<std::remove_reference_t<decltype(v)>> out(st.K * mn);
        for (int k = 0; k < st.K; k++) std::memcpy(&out[k * mn], &v[st.base + k * st.ldm], mn * sizeof(v[0]));
        return out;
    };
    // elements outside stack si where a and b differ bitwise
    auto changed_outside = [&](const auto& a, const auto& b, int si) {
        long bad = 0;
        for (long long e = 0; e < size; e++)
            if (owner[e] != si && std::memcmp(&a[e], &b[e], sizeof(a[0])) != 0) bad++;
        return bad;
    };
    auto shifted = [&](const std::vector<float>& v) {  // dense copy at the offset
        std::vector<float> r(dense_off, 0.0f);
        r.insert(r.end(), v.begin(), v.end());
        return r;
    };

    matmul_init();
    MuonGPUScratch scr;
    for (const Stack& st : stacks) muon_scratch_reserve(scr, st.K, st.m, st.n);
    muon_scratch_alloc(scr);
    DeviceBuffer<float> dP(fill(0.05)), dM(fill(0.02)), dG(size);
    DeviceBuffer<floatX> dPb(size);
    dPb.poison();
    // per stack: its S (shared run), and the dense run's P, P_bf16, M, S, G
    std::vector<std::unique_ptr<DeviceBuffer<float>>> sS, dnP, dnM, dnS, dnG;
    std::vector<std::unique_ptr<DeviceBuffer<floatX>>> dnPb;
    {
        const std::vector<float> P0 = dP.download(), M0 = dM.download();
        for (const Stack& st : stacks) {
            const size_t mn = (size_t)st.m * st.n, ns = (size_t)st.K * llmc::muon_second_moment_size(st.m, st.n);
            std::vector<float> S0(ns);
            for (float& x : S0) x = (float)(0.5 + rng.uniform());
            sS.emplace_back(new DeviceBuffer<float>(S0));
            dnS.emplace_back(new DeviceBuffer<float>(S0));
            dnP.emplace_back(new DeviceBuffer<float>(shifted(gather(P0, st))));
            dnM.emplace_back(new DeviceBuffer<float>(shifted(gather(M0, st))));
            dnG.emplace_back(new DeviceBuffer<float>(st.K * mn + dense_off));
            dnPb.emplace_back(new DeviceBuffer<floatX>(st.K * mn + dense_off));
            dnPb.back()->poison();
        }
    }
    for (int step = 0; step < kSteps; step++) {
        CAPTURE(step);
        const std::vector<float> G = fill(1.0);
        dG.upload(G);
        for (size_t si = 0; si < stacks.size(); si++) {
            const Stack& st = stacks[si];
            CAPTURE(si); CAPTURE(st.m); CAPTURE(st.n); CAPTURE(st.ldm);
            const size_t mn = (size_t)st.m * st.n;
            const std::vector<float> P0 = dP.download(), M0 = dM.download();
            const std::vector<floatX> Pb0 = dPb.download();
            floatX* dX = muon_update(dP.ptr + st.base, dPb.ptr + st.base, dM.ptr + st.base, sS[si]->ptr, dG.ptr + st.base,
                                     st.K, st.m, st.n, lr, mu, wd, scr, 0, st.ldm);
            REQUIRE(dX != nullptr);
            const std::vector<floatX> xs = download_stack(dX, st.K, mn, muon_x_stride(st.m, st.n));
            const std::vector<float> P1 = dP.download(), M1 = dM.download();
            const std::vector<floatX> Pb1 = dPb.download();
            CHECK(changed_outside(P1, P0, (int)si) == 0);
            CHECK(changed_outside(M1, M0, (int)si) == 0);
            CHECK(changed_outside(Pb1, Pb0, (int)si) == 0);
            CHECK(bits_equal(dG.download(), G));

            dnG[si]->upload(shifted(gather(G, st)));
            floatX* dXd = muon_update(dnP[si]->ptr + dense_off, dnPb[si]->ptr + dense_off, dnM[si]->ptr + dense_off,
                                      dnS[si]->ptr, dnG[si]->ptr + dense_off, st.K, st.m, st.n, lr, mu, wd, scr, 0);
            const std::vector<floatX> xd = download_stack(dXd, st.K, mn, muon_x_stride(st.m, st.n));
            CHECK(std::memcmp(xs.data(), xd.data(), xs.size() * sizeof(floatX)) == 0);
            auto dense = [&](const auto& buf) {
                auto v = buf->download();
                v.erase(v.begin(), v.begin() + dense_off);
                return v;
            };
            CHECK(bits_equal(gather(P1, st), dense(dnP[si])));
            CHECK(bits_equal(gather(M1, st), dense(dnM[si])));
            const std::vector<floatX> pb_s = gather(Pb1, st), pb_d = dense(dnPb[si]);
            CHECK(std::memcmp(pb_s.data(), pb_d.data(), pb_s.size() * sizeof(floatX)) == 0);
            CHECK(bits_equal(sS[si]->download(), dnS[si]->download()));
        }
    }
    muon_scratch_free(scr);
}

// the trainer's c_q, c_k, c_v stacks: L layers of [Wq_l (H*D x C); Wk_l (Hkv*D x C); Wv_l (Hkv*D x C)]
void check_qkv_layout(int L, int H, int Hkv, int D, int C, int dense_off, uint64_t seed) {
    CAPTURE(L); CAPTURE(H); CAPTURE(Hkv); CAPTURE(D); CAPTURE(C);
    const long long ld = (long long)(H + 2 * Hkv) * D * C;
    const std::vector<Stack> stacks = {{0, L, H * D, C, ld},
                                       {(long long)H * D * C, L, Hkv * D, C, ld},
                                       {(long long)(H + Hkv) * D * C, L, Hkv * D, C, ld}};
    check_strided(stacks, L * ld, dense_off, 0.02f, 0.95f, 0.2f, seed);
}

}  // namespace

TEST_CASE("muon_update matches llmc/muon.h: tall, wide and square stacks over two steps") {
    const Shape shapes[] = {{2, 96, 64}, {2, 64, 96}, {2, 64, 64}};
    uint64_t seed = 1;
    for (const Shape& s : shapes) check_group(s, 0.02f, 0.95f, 0.2f, seed++);
}

TEST_CASE("muon_update: ve_gate's 10 x 12, odd widths (scalar paths), no weight decay, low momentum") {
    const Shape shapes[] = {{3, 10, 12}, {2, 24, 13}, {2, 12, 21}};
    uint64_t seed = 10;
    for (const Shape& s : shapes) check_group(s, 0.03f, 0.85f, 0.0f, seed++);
    check_group({2, 40, 16}, 0.02f, 0.9f, 0.5f, seed++);  // shape factor sqrt(2.5), strong decay
}

TEST_CASE("muon_polar_express on Gaussian stacks (aspect 1.5): rounding bound and singular-value band") {
    const Shape shapes[] = {{3, 96, 64}, {3, 64, 96}};
    llmc::Rng rng(77);
    matmul_init();
    for (const Shape& sh : shapes) {
        const int K = sh.K, m = sh.m, n = sh.n;
        CAPTURE(m); CAPTURE(n);
        const size_t mn = (size_t)m * n;
        const long long sx = muon_x_stride(m, n);
        MuonGPUScratch scr;
        muon_scratch_reserve(scr, K, m, n);
        muon_scratch_alloc(scr);
        llmc::MuonScratch cs;
        std::vector<floatX> xin(K * sx, host_to_x(0.0f));
        std::vector<std::vector<float>> x0(K);
        for (int k = 0; k < K; k++) {
            std::vector<float> x = randn(mn, rng, 1.0);
            llmc::muon_normalize(x.data(), m, n, cs);
            x0[k] = x_round(x);  // the same floatX input for both sides: only the iterations differ
            for (size_t i = 0; i < mn; i++) xin[k * sx + i] = host_to_x(x0[k][i]);
        }
        cudaCheck(cudaMemcpy(scr.X0, xin.data(), xin.size() * sizeof(floatX), cudaMemcpyHostToDevice));
        floatX* dX = muon_polar_express(scr, K, m, n, 0);
        const std::vector<floatX> xs = download_stack(dX, K, mn, sx);
        for (int k = 0; k < K; k++) {
            CAPTURE(k);
            const dvec s_in = singular_values(to_d(x0[k]), m, n);
            std::vector<float> X = x0[k];
            llmc::polar_express(X.data(), m, n, cs);
            check_polar(to_d(to_f32(part(xs, k * sx, mn))), to_d(X), s_in, m, n, false);
        }
        muon_scratch_free(scr);
    }
}

TEST_CASE("muon_update is deterministic (two runs of two steps, bitwise)") {
    const int K = 2, m = 32, n = 48;
    const size_t mn = (size_t)m * n, ns = (size_t)llmc::muon_second_moment_size(m, n);
    llmc::Rng rng(5);
    const std::vector<float> P = randn(K * mn, rng, 0.05), G1 = randn(K * mn, rng, 1.0), G2 = randn(K * mn, rng, 1.0);
    const std::vector<float> zero(K * mn, 0.0f), zs(K * ns, 0.0f);
    matmul_init();
    MuonGPUScratch scr;
    muon_scratch_reserve(scr, K, m, n);
    muon_scratch_alloc(scr);
    std::vector<float> first_p, first_m, first_s;
    std::vector<floatX> first_b;
    for (int run = 0; run < 2; run++) {
        DeviceBuffer<float> dP(P), dM(zero), dS(zs), dG(G1);
        DeviceBuffer<floatX> dPb(K * mn);
        muon_update(dP.ptr, dPb.ptr, dM.ptr, dS.ptr, dG.ptr, K, m, n, 0.02f, 0.95f, 0.1f, scr, 0);
        dG.upload(G2);
        muon_update(dP.ptr, dPb.ptr, dM.ptr, dS.ptr, dG.ptr, K, m, n, 0.02f, 0.95f, 0.1f, scr, 0);
        if (run == 0) {
            first_p = dP.download(); first_m = dM.download(); first_s = dS.download(); first_b = dPb.download();
        } else {
            CHECK(bits_equal(dP.download(), first_p));
            CHECK(bits_equal(dM.download(), first_m));
            CHECK(bits_equal(dS.download(), first_s));
            const std::vector<floatX> b = dPb.download();
            CHECK(std::memcmp(b.data(), first_b.data(), b.size() * sizeof(floatX)) == 0);
        }
    }
    muon_scratch_free(scr);
}

TEST_CASE("muon_update with a matrix stride (a gap after each matrix): bitwise the dense calls, gaps untouched") {
    auto one = [](int K, int m, int n, int extra) {
        const long long ldm = (long long)m * n + extra;
        return std::vector<Stack>{{0, K, m, n, ldm}};
    };
    check_strided(one(2, 32, 48, 8), 2 * (32 * 48 + 8), 0, 0.02f, 0.95f, 0.1f, 61);  // wide, 4-wide paths
    check_strided(one(2, 48, 32, 12), 2 * (48 * 32 + 12), 0, 0.02f, 0.9f, 0.2f, 62); // tall, 4-wide paths
    check_strided(one(2, 24, 13, 3), 2 * (24 * 13 + 3), 0, 0.03f, 0.85f, 0.0f, 63);  // n odd: scalar in both calls
    check_strided(one(2, 16, 32, 2), 2 * (16 * 32 + 2), 1, 0.02f, 0.95f, 0.1f, 64);  // ldm % 4 != 0 forces scalar
}

TEST_CASE("muon_update on the trainer's [Wq; Wk; Wv] layout: three interleaved stacks, bitwise the dense calls") {
    check_qkv_layout(2, 3, 1, 16, 32, 0, 71);  // GQA; Wq 48 x 32 (tall), Wk, Wv 16 x 32 (wide); 4-wide paths
    check_qkv_layout(2, 2, 1, 8, 13, 0, 72);   // C odd: the scalar paths
}

TEST_CASE("muon_update rejects bad shapes and a scratch that is too small") {
    matmul_init();
    MuonGPUScratch scr;
    muon_scratch_reserve(scr, 2, 16, 32);
    muon_scratch_alloc(scr);
    DeviceBuffer<float> buf(3 * 32 * 32);
    CHECK_THROWS_AS(muon_update(buf.ptr, nullptr, buf.ptr, buf.ptr, buf.ptr, 2, 0, 32, 0.02f, 0.9f, 0.0f, scr, 0), llmc::Error);
    CHECK_THROWS_AS(muon_update(buf.ptr, nullptr, buf.ptr, buf.ptr, buf.ptr, 3, 16, 32, 0.02f, 0.9f, 0.0f, scr, 0), llmc::Error);
    CHECK_THROWS_AS(muon_update(buf.ptr, nullptr, buf.ptr, buf.ptr, buf.ptr, 1, 32, 32, 0.02f, 0.9f, 0.0f, scr, 0), llmc::Error);
    CHECK_THROWS_AS(muon_scratch_reserve(scr, 1, 8, 8), llmc::Error);  // after alloc
    // matrix strides shorter than a matrix (16 x 32 = 512 elements)
    CHECK_THROWS_AS(muon_update(buf.ptr, nullptr, buf.ptr, buf.ptr, buf.ptr, 2, 16, 32, 0.02f, 0.9f, 0.0f, scr, 0, 511),
                    llmc::Error);
    CHECK_THROWS_AS(muon_update(buf.ptr, nullptr, buf.ptr, buf.ptr, buf.ptr, 2, 16, 32, 0.02f, 0.9f, 0.0f, scr, 0, -512),
                    llmc::Error);
    CHECK(muon_update(buf.ptr, nullptr, buf.ptr, buf.ptr, buf.ptr, 0, 16, 32, 0.02f, 0.9f, 0.0f, scr, 0) == nullptr);
    muon_scratch_free(scr);
    MuonGPUScratch none;
    CHECK_THROWS_AS(muon_update(buf.ptr, nullptr, buf.ptr, buf.ptr, buf.ptr, 1, 16, 32, 0.02f, 0.9f, 0.0f, none, 0), llmc::Error);
}
