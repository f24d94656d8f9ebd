// test_optim.cpp: AdamW, Muon (Polar Express, NorMuon, cautious wd), schedules and the depth recipe.
//
// Expected values come from (a) hand calculations written in the comments, (b) slow double-precision
// references written here independently of the code under test (textbook forms where the code uses
// PyTorch's lerp forms, the other Gram branch for Polar Express, Jacobi eigenvalues for singular
// values), or (c) the worked tables of docs/model.md#flops and docs/model.md#scaling, which were
// computed from the formulas with a separate script.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "llmc/adamw.h"
#include "llmc/muon.h"
#include "llmc/rng.h"
#include "llmc/scaling.h"
#include "llmc/schedule.h"

using namespace llmc;
using dvec = std::vector<double>;

// ------------------------------------------------------------------------------------------------
// small double-precision linear algebra for the references

// C[M x N] = A[M x K] B[K x N]
static dvec dmatmul(const dvec& A, const dvec& B, int M, int N, int K) {
    dvec C((size_t)M * N, 0.0);
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) {
            double a = A[(size_t)i * K + k];
            for (int j = 0; j < N; j++) C[(size_t)i * N + j] += a * B[(size_t)k * N + j];
        }
    return C;
}
static dvec dtranspose(const dvec& A, int m, int n) {
    dvec T((size_t)m * n);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) T[(size_t)j * m + i] = A[(size_t)i * n + j];
    return T;
}
static double dfro(const dvec& A) {
    double s = 0;
    for (double x : A) s += x * x;
    return std::sqrt(s);
}

// eigenvalues of a symmetric n x n matrix, cyclic Jacobi rotations (Numerical Recipes' convention)
static dvec jacobi_eigenvalues(dvec A, int n) {
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, tot = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                double a2 = A[(size_t)i * n + j] * A[(size_t)i * n + j];
                tot += a2;
                if (i != j) off += a2;
            }
        if (off <= 1e-30 * tot || off == 0) break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double apq = A[(size_t)p * n + q];
                if (apq == 0) continue;
                double theta = (A[(size_t)q * n + q] - A[(size_t)p * n + p]) / (2 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
                double c = 1 / std::sqrt(t * t + 1), s = t * c;
                for (int k = 0; k < n; k++) { // columns p, q
                    double akp = A[(size_t)k * n + p], akq = A[(size_t)k * n + q];
                    A[(size_t)k * n + p] = c * akp - s * akq;
                    A[(size_t)k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; k++) { // rows p, q
                    double apk = A[(size_t)p * n + k], aqk = A[(size_t)q * n + k];
                    A[(size_t)p * n + k] = c * apk - s * aqk;
                    A[(size_t)q * n + k] = s * apk + c * aqk;
                }
            }
    }
    dvec ev(n);
    for (int i = 0; i < n; i++) ev[i] = A[(size_t)i * n + i];
    std::sort(ev.begin(), ev.end());
    return ev;
}

// singular values (ascending) of an m x n matrix via the smaller Gram matrix
static dvec singular_values(const dvec& X, int m, int n) {
    dvec G = m >= n ? dmatmul(dtranspose(X, m, n), X, n, n, m) : dmatmul(X, dtranspose(X, m, n), m, m, n);
    dvec ev = jacobi_eigenvalues(G, std::min(m, n));
    for (double& e : ev) e = std::sqrt(std::max(e, 0.0));
    return ev;
}

static dvec to_d(const std::vector<float>& v) { return dvec(v.begin(), v.end()); }
static std::vector<float> randn(long n, uint64_t stream, double scale = 1.0) {
    Rng r(1234, stream);
    std::vector<float> v(n);
    for (auto& x : v) x = (float)(scale * r.normal());
    return v;
}

// the Polar Express coefficients, typed in again from docs/model.md#polar-express (independent of muon.h)
static const double PE[5][3] = {
    {8.156554524902461, -22.48329292557795, 15.878769915207462},
    {4.042929935166739, -2.808917465908714, 0.5000178451051316},
    {3.8916678022926607, -2.772484153217685, 0.5060648178503393},
    {3.285753657755655, -2.3681294933425376, 0.46449024233003106},
    {2.3465413258596377, -1.7097828382687081, 0.42323551169305323},
};
// the composed scalar polynomial acting on one singular value
static double pe_scalar(double x) {
    for (auto& k : PE) x = k[0] * x + k[1] * x * x * x + k[2] * x * x * x * x * x;
    return x;
}
// Polar Express in double, deliberately through the OTHER Gram branch than muon.h uses
// (tall: X X^T on the left; wide/square: X^T X on the right). Both equal X * q(X^T X).
static dvec pe_reference(dvec X, int m, int n) {
    for (auto& k : PE) {
        if (m > n) {
            dvec A = dmatmul(X, dtranspose(X, m, n), m, m, n);
            dvec AA = dmatmul(A, A, m, m, m);
            for (size_t i = 0; i < A.size(); i++) A[i] = k[1] * A[i] + k[2] * AA[i];
            dvec Y = dmatmul(A, X, m, n, m);
            for (size_t i = 0; i < X.size(); i++) X[i] = k[0] * X[i] + Y[i];
        } else {
            dvec A = dmatmul(dtranspose(X, m, n), X, n, n, m);
            dvec AA = dmatmul(A, A, n, n, n);
            for (size_t i = 0; i < A.size(); i++) A[i] = k[1] * A[i] + k[2] * AA[i];
            dvec Y = dmatmul(X, A, m, n, n);
            for (size_t i = 0; i < X.size(); i++) X[i] = k[0] * X[i] + Y[i];
        }
    }
    return X;
}

// ------------------------------------------------------------------------------------------------
// AdamW

TEST_CASE("adamw: first step closed form and a second step by hand (with weight decay)") {
    // Step 1 with m = v = 0: m1 = (1-b1) g, v1 = (1-b2) g^2, so m1/(1-b1) = g and sqrt(v1/(1-b2)) = |g|:
    //   p1 = p0 (1 - lr wd) - lr g / (|g| + eps).
    // p0 = 1, g = 0.5, lr = 0.1, wd = 0.1, eps = 1e-8: p1 = 0.99 - 0.1 * 0.5/0.50000001 = 0.89 (+2e-9).
    // p0 = -2, g = -0.25: p1 = -2 * 0.99 + 0.1 = -1.88.
    float p[2] = {1.0f, -2.0f}, m[2] = {0, 0}, v[2] = {0, 0};
    float g1[2] = {0.5f, -0.25f};
    adamw_update(p, m, v, g1, 2, 0.1f, 0.9f, 0.99f, 1e-8f, 0.1f, 1);
    // tolerance 1e-6: a few fp32 roundings of numbers of size ~1 (ulp 1.2e-7)
    CHECK(std::fabs(p[0] - 0.89) < 1e-6);
    CHECK(std::fabs(p[1] - (-1.88)) < 1e-6);
    // Step 2 by hand in double, textbook form m = b1 m + (1-b1) g (the code uses the lerp form):
    // g2 = {-1, 0.125}
    float g2[2] = {-1.0f, 0.125f};
    adamw_update(p, m, v, g2, 2, 0.1f, 0.9f, 0.99f, 1e-8f, 0.1f, 2);
    double P0[2] = {1.0, -2.0}, G1[2] = {0.5, -0.25}, G2[2] = {-1.0, 0.125};
    for (int i = 0; i < 2; i++) {
        double p1 = P0[i] * 0.99 - 0.1 * G1[i] / (std::fabs(G1[i]) + 1e-8);
        double m1 = 0.1 * G1[i], v1 = 0.01 * G1[i] * G1[i];
        double m2 = 0.9 * m1 + 0.1 * G2[i], v2 = 0.99 * v1 + 0.01 * G2[i] * G2[i];
        double mhat = m2 / (1 - 0.81), vhat = v2 / (1 - 0.99 * 0.99);
        double p2 = p1 * 0.99 - 0.1 * mhat / (std::sqrt(vhat) + 1e-8);
        CHECK(std::fabs(p[i] - p2) < 2e-6);
        // moments: relative 2e-6, because the code receives b1 = 0.9f, b2 = 0.99f (1 - 0.99f differs from 0.01
        // by 9.5e-7 relative) while this hand reference uses the exact decimals
        CHECK(std::fabs(m[i] - m2) < 2e-6 * std::fabs(m2));
        CHECK(std::fabs(v[i] - v2) < 2e-6 * std::fabs(v2));
    }
    // e.g. element 0: m2 = 0.9*0.05 - 0.1 = -0.055, v2 = 0.99*0.0025 + 0.01 = 0.012475,
    // mhat = -0.2894737, vhat = 0.6269, step = 0.1*0.2894737/0.791770 = 0.036560, p2 = 0.8811 + 0.03656
    CHECK(std::fabs(p[0] - (0.89 * 0.99 + 0.1 * (0.055 / 0.19) / std::sqrt(0.012475 / 0.0199))) < 2e-6);
}

TEST_CASE("adamw: many elements and steps vs a double reference (nanochat group hyperparameters)") {
    const long n = 4099; // odd size: no assumption on vector width
    std::vector<float> p = randn(n, 1), m(n, 0.f), v(n, 0.f);
    dvec P = to_d(p), Mm(n, 0.0), V(n, 0.0);
    const float b1 = 0.8f, b2 = 0.95f, eps = 1e-10f, wd = 0.05f;
    for (int t = 1; t <= 5; t++) {
        std::vector<float> g = randn(n, 100 + t, 0.01);
        const float lr = 0.005f * (float)t;
        adamw_update(p.data(), m.data(), v.data(), g.data(), n, lr, b1, b2, eps, wd, t);
        // reference: the hyperparameters as the fp32 values the code receives, the math in double
        double B1 = b1, B2 = b2, LR = lr, WD = wd, EPS = eps;
        for (long i = 0; i < n; i++) {
            P[i] *= 1 - LR * WD;
            Mm[i] = B1 * Mm[i] + (1 - B1) * g[i];
            V[i] = B2 * V[i] + (1 - B2) * (double)g[i] * g[i];
            P[i] -= LR / (1 - std::pow(B1, t)) * Mm[i] / (std::sqrt(V[i] / (1 - std::pow(B2, t))) + EPS);
        }
    }
    // params ~N(0,1) move by ~lr per step: fp32 rounding of p (ulp <= 4.8e-7 for |p| < 4) over 5 steps,
    // plus rounding of m/sqrt(v) (~1e-7 relative of a ~0.03 step): 3e-6 covers it with margin
    double maxerr = 0;
    for (long i = 0; i < n; i++) maxerr = std::max(maxerr, std::fabs(p[i] - P[i]) / std::max(1.0, std::fabs(P[i])));
    CHECK(maxerr < 3e-6);
}

// ------------------------------------------------------------------------------------------------
// Polar Express

TEST_CASE("polar express: the composed scalar polynomial (double, independent of muon.h)") {
    // docs/model.md#polar-express: sigma = 1 -> 0.8591; [1e-3, 1] -> [0.8589, 1.1411]; 5e-4 -> ~0.48.
    CHECK(std::fabs(pe_scalar(1.0) - 0.8591) < 5e-5); // the docs print 4 decimals
    double lo = 1e9, hi = -1e9;
    for (int i = 0; i <= 100000; i++) { // log-spaced grid over [1e-3, 1]
        double v = pe_scalar(1e-3 * std::pow(1000.0, i / 100000.0));
        lo = std::min(lo, v);
        hi = std::max(hi, v);
    }
    CHECK(lo >= 0.8589 - 5e-5); // the printed band is rounded to 4 decimals
    CHECK(hi <= 1.1411 + 5e-5);
    CHECK(lo < 0.8590);         // and the band is tight (not a vacuous bound)
    CHECK(hi > 1.1410);
    CHECK(std::fabs(pe_scalar(5e-4) - 0.48) < 0.01);
    // the code's table is the one in docs/model.md#polar-express
    for (int k = 0; k < 5; k++)
        for (int j = 0; j < 3; j++) CHECK(MUON_POLAR_COEFFS[k][j] == PE[k][j]);
}

TEST_CASE("jacobi eigenvalues (test helper) on known matrices") {
    dvec A = {2, 1, 0, 1, 2, 0, 0, 0, 5}; // eigenvalues 1, 3, 5
    dvec ev = jacobi_eigenvalues(A, 3);
    CHECK(std::fabs(ev[0] - 1) < 1e-12);
    CHECK(std::fabs(ev[1] - 3) < 1e-12);
    CHECK(std::fabs(ev[2] - 5) < 1e-12);
    // singular values of a 3 x 2 matrix with orthogonal columns of norms 2 and 0.5
    dvec X = {2, 0, 0, 0.3, 0, 0.4};
    dvec sv = singular_values(X, 3, 2);
    CHECK(std::fabs(sv[0] - 0.5) < 1e-12);
    CHECK(std::fabs(sv[1] - 2) < 1e-12);
}

TEST_CASE("polar express: singular values of random Gaussian matrices land in the band") {
    struct Shape { int m, n; bool guaranteed; };
    // aspect >= 2: sigma_min/sigma_max of a Gaussian matrix ~ (1 - sqrt(n/m))/(1 + sqrt(n/m)) >= 0.17, far above
    // 1e-3 after normalization. Square ones may have sigma_min < 1e-3 (the caveat in docs/model.md#polar-express).
    const Shape shapes[] = {{64, 16, true}, {128, 32, true}, {16, 64, true}, {32, 96, true}, {48, 48, false}, {40, 37, false}};
    MuonScratch s;
    int stream = 10;
    for (const Shape& sh : shapes) {
        CAPTURE(sh.m);
        CAPTURE(sh.n);
        const int m = sh.m, n = sh.n;
        std::vector<float> X = randn((long)m * n, stream++);
        muon_normalize(X.data(), m, n, s); // step 4
        dvec X0 = to_d(X);
        // step 4 normalization checked in double: X0 = G / (1.01 ||G||_F + 1e-6), so ||X0||_F < 1/1.01
        CHECK(dfro(X0) < 1 / 1.01 + 1e-6);
        CHECK(dfro(X0) > 1 / 1.01 - 1e-5);
        dvec sin = singular_values(X0, m, n);
        polar_express(X.data(), m, n, s);
        dvec sout = singular_values(to_d(X), m, n);
        // expected output singular values: the scalar polynomial applied to each input one
        dvec sexp(sin.size());
        for (size_t i = 0; i < sin.size(); i++) sexp[i] = std::fabs(pe_scalar(sin[i]));
        std::sort(sexp.begin(), sexp.end());
        // fp32 slack: 5 iterations of fp32 GEMMs (inner length <= 128, ulp 6e-8) give output singular value
        // errors of ~1e-5 (observed <= ~2e-5 here); 1e-3 is ~50x that and still 280x narrower than the band
        // (a wrong coefficient moves outputs by >> 1e-2).
        const double slack = 1e-3;
        double maxdev = 0;
        for (size_t i = 0; i < sin.size(); i++) maxdev = std::max(maxdev, std::fabs(sout[i] - sexp[i]));
        CHECK(maxdev < slack);
        MESSAGE("shape " << m << "x" << n << ": sigma_in [" << sin.front() << ", " << sin.back() << "], sigma_out ["
                         << sout.front() << ", " << sout.back() << "], max |sigma_out - p(sigma_in)| " << maxdev);
        if (sh.guaranteed) {
            CHECK(sin.front() >= 1e-3); // the premise of the band
            CHECK(sout.front() >= 0.8589 - slack);
        } else {
            // square-ish: only the singular values that started >= 1e-3 are promised to land in the band
            for (size_t i = 0; i < sin.size(); i++)
                if (sin[i] >= 1e-3) CHECK(std::fabs(pe_scalar(sin[i])) >= 0.8589 - 5e-5);
        }
        CHECK(sout.back() <= 1.1411 + slack);
        // and the matrix itself against the double reference through the other Gram branch:
        // entries are ~1/sqrt(max(m,n)) ~ 0.1; 1e-4 absolute is ~10x the observed fp32 deviation
        dvec R = pe_reference(X0, m, n);
        double maxe = 0;
        for (size_t i = 0; i < R.size(); i++) maxe = std::max(maxe, std::fabs(R[i] - X[i]));
        CHECK(maxe < 1e-4);
    }
}

// ------------------------------------------------------------------------------------------------
// Muon

// The whole Muon step in double, written from docs/model.md#muon (textbook momentum form, the other Gram
// branch for Polar Express). Returns the update direction g (before lr) through *gout.
static void muon_reference(dvec& P, dvec& M, dvec& S, const dvec& G, int m, int n, double lr, double mu, double wd,
                           dvec* gout) {
    const size_t mn = (size_t)m * n;
    dvec U(mn);
    for (size_t i = 0; i < mn; i++) {
        M[i] = mu * M[i] + (1 - mu) * G[i];
        U[i] = mu * M[i] + (1 - mu) * G[i];
    }
    // MuonEq on rows
    double tau = dfro(U) / std::sqrt((double)m);
    for (int i = 0; i < m; i++) {
        double rn = 0;
        for (int j = 0; j < n; j++) rn += U[(size_t)i * n + j] * U[(size_t)i * n + j];
        rn = std::sqrt(rn);
        for (int j = 0; j < n; j++) U[(size_t)i * n + j] *= tau / std::max(rn, 1e-6);
    }
    double f = 1.01 * dfro(U) + 1e-6;
    for (double& x : U) x /= f;
    dvec g = pe_reference(U, m, n);
    double gn = dfro(g);
    for (double& x : g) x *= std::sqrt((double)std::min(m, n)) / std::max(gn, 1e-6);
    // NorMuon
    const bool rows = m >= n;
    const int nq = rows ? m : n, nr = rows ? n : m;
    dvec q(nq, 0.0);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) q[rows ? i : j] += g[(size_t)i * n + j] * g[(size_t)i * n + j] / nr;
    double nu = dfro(g), nu2 = 0;
    dvec w(nq);
    for (int k = 0; k < nq; k++) {
        S[k] = 0.9 * S[k] + 0.1 * q[k];
        w[k] = 1 / std::sqrt(std::max(S[k], 1e-10));
        nu2 += nr * q[k] * w[k] * w[k];
    }
    nu2 = std::sqrt(nu2);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) g[(size_t)i * n + j] *= w[rows ? i : j] * nu / std::max(nu2, 1e-10);
    double lre = lr * std::sqrt(std::max(1.0, (double)m / n));
    for (size_t i = 0; i < mn; i++) P[i] -= lre * g[i] + (g[i] * P[i] >= 0 ? lre * wd * P[i] : 0.0);
    if (gout) *gout = g;
}

TEST_CASE("muon: full step vs a double reference (tall, wide, square; two steps with state and wd)") {
    struct Shape { int m, n; };
    const Shape shapes[] = {{64, 16}, {16, 64}, {32, 32}, {36, 20}};
    MuonScratch s;
    int stream = 100;
    for (const Shape& sh : shapes) {
        CAPTURE(sh.m);
        CAPTURE(sh.n);
        const int m = sh.m, n = sh.n, ns = muon_second_moment_size(m, n);
        CHECK(ns == (m >= n ? m : n));
        const size_t mn = (size_t)m * n;
        std::vector<float> P = randn(mn, stream++, 0.05), M = randn(mn, stream++, 0.01), S(ns);
        Rng r(7, stream++);
        for (float& x : S) x = (float)(0.01 * (0.5 + r.uniform())); // a positive second moment from "earlier steps"
        dvec Pd = to_d(P), Md = to_d(M), Sd = to_d(S);
        const float lr = 0.02f, mu = 0.95f, wd = 0.2f;
        for (int step = 0; step < 2; step++) {
            std::vector<float> G = randn(mn, stream++, 0.01);
            muon_update(P.data(), M.data(), S.data(), G.data(), m, n, lr, mu, wd, s);
            dvec g;
            muon_reference(Pd, Md, Sd, to_d(G), m, n, (double)lr, (double)mu, (double)wd, &g);
            // momentum: fp32 lerp of values ~0.01, relative error ~1e-7
            double em = 0, es = 0, ep = 0;
            for (size_t i = 0; i < mn; i++) em = std::max(em, std::fabs(M[i] - Md[i]));
            for (int k = 0; k < ns; k++) es = std::max(es, std::fabs(S[k] - Sd[k]) / Sd[k]);
            // P: the update lr_eff*g has entries ~lr_eff/sqrt(max(m,n)) ~ 5e-3; g carries the fp32 error of
            // Polar Express (~1e-5 absolute on entries ~0.1-1, see above), times lr_eff <= 0.04 -> ~4e-7. An
            // element whose g*P sign is ambiguous (|g| < 1e-3) may take the decay term lr_eff*wd*|P| or not.
            const double lre = lr * std::sqrt(std::max(1.0, (double)m / n));
            int bad = 0;
            for (size_t i = 0; i < mn; i++) {
                double tol = 2e-6 + (std::fabs(g[i]) < 1e-3 ? lre * wd * std::fabs(Pd[i]) : 0.0);
                ep = std::max(ep, std::fabs(P[i] - Pd[i]));
                if (std::fabs(P[i] - Pd[i]) > tol) bad++;
            }
            CHECK(em < 1e-8);
            CHECK(es < 1e-3); // S is a mean of squares of g: relative error ~2x that of g (~1e-4)
            CHECK(bad == 0);
            MESSAGE("muon " << m << "x" << n << " step " << step << ": max |dP| err " << ep << ", M err " << em
                            << ", S rel err " << es);
        }
    }
}

TEST_CASE("muon: ||dP||_F = lr_eff*sqrt(min(m,n)) with wd = 0; shape factor 2 for a 4C x C matrix") {
    MuonScratch s;
    s.reserve(64, 64);
    const float lr = 0.02f, mu = 0.9f;
    auto step_norm = [&](int m, int n, int seed) {
        const size_t mn = (size_t)m * n;
        std::vector<float> P = randn(mn, seed, 0.02), M(mn, 0.f), S(muon_second_moment_size(m, n), 0.f);
        double first = 0;
        for (int step = 0; step < 3; step++) { // also with non-zero momentum and second moment
            std::vector<float> P0 = P, G = randn(mn, seed + 1 + step, 1e-3);
            muon_update(P.data(), M.data(), S.data(), G.data(), m, n, lr, mu, 0.0f, s);
            double d = 0;
            for (size_t i = 0; i < mn; i++) d += ((double)P[i] - P0[i]) * ((double)P[i] - P0[i]);
            d = std::sqrt(d);
            double expect = lr * std::sqrt(std::max(1.0, (double)m / n)) * std::sqrt((double)std::min(m, n));
            // NorMuon rescales to preserve ||g||_F = sqrt(min(m,n)); the only errors are fp32 rounding of the
            // scale factors (~1e-7 relative) and of P - P0 (|P| ~ 0.02, ulp 1.9e-9, vs entries ~2.5e-3 of dP):
            // relative 1e-5 bounds both with margin.
            CHECK(std::fabs(d / expect - 1) < 1e-5);
            if (step == 0) first = d;
        }
        return first;
    };
    double tall = step_norm(64, 16, 500); // c_fc-like: 4C x C with C = 16
    double wide = step_norm(16, 64, 600); // mlp c_proj-like
    double sq = step_norm(48, 48, 700);
    double odd = step_norm(45, 20, 800);  // m/n = 2.25: factor 1.5
    CHECK(std::fabs(tall / wide - 2.0) < 2e-5);
    CHECK(std::fabs(sq - lr * std::sqrt(48.0)) < 1e-5 * sq);
    CHECK(std::fabs(odd - lr * 1.5 * std::sqrt(20.0)) < 1e-5 * odd);
    CHECK(muon_shape_factor(64, 16) == 2.0);
    CHECK(muon_shape_factor(16, 64) == 1.0);
    CHECK(muon_shape_factor(6, 12) == 1.0); // ve_gate with Hkv = 6 (shape Hkv x 12)
}

TEST_CASE("muon: cautious weight decay only where g*P >= 0; momentum and S updates") {
    const int m = 24, n = 40; // wide: NorMuon per column, S has n entries
    const size_t mn = (size_t)m * n;
    const float lr = 0.03f, mu = 0.85f, wd = 0.5f;
    MuonScratch s;
    std::vector<float> G = randn(mn, 900, 0.1), M0 = randn(mn, 901, 0.05), S0(n, 0.f);
    // 1. the direction g does not depend on P: run once from P = 0 with wd = 0 and read g = -dP/lr_eff
    //    (lr_eff = lr since m < n)
    std::vector<float> P(mn, 0.f), M = M0, S = S0;
    muon_update(P.data(), M.data(), S.data(), G.data(), m, n, lr, mu, 0.0f, s);
    dvec g(mn);
    for (size_t i = 0; i < mn; i++) g[i] = -(double)P[i] / lr;
    // momentum buffer: M0 + (1-mu)(G - M0), fp32 values ~0.1: 1e-8 absolute
    for (size_t i = 0; i < mn; i++) CHECK(std::fabs(M[i] - (M0[i] + (1.0 - mu) * (G[i] - M0[i]))) < 1e-8);
    // S after one step from zero: 0.1 * mean over rows of g_unscaled^2; with S = 0.1 q, w = 1/sqrt(0.1 q_j) and
    // the final g has per-column mean square q_j w_j^2 c^2 = 10 c^2 (c the global renormalization), i.e.
    // every column of g ends with the same mean square: check that (relative 1e-4: fp32 of g)
    dvec colms(n, 0.0);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) colms[j] += g[(size_t)i * n + j] * g[(size_t)i * n + j] / m;
    for (int j = 0; j < n; j++) CHECK(std::fabs(colms[j] / colms[0] - 1) < 1e-4);
    // and ||g||_F = sqrt(min(m,n)) = sqrt(24)
    double gf = 0;
    for (double x : g) gf += x * x;
    CHECK(std::fabs(std::sqrt(gf) - std::sqrt(24.0)) < 1e-4);
    for (int j = 0; j < n; j++) CHECK(S[j] > 0);

    // 2. P chosen so that half the entries agree in sign with g and half disagree
    std::vector<float> P0(mn);
    int agree = 0, disagree = 0;
    for (size_t i = 0; i < mn; i++) {
        float sg = g[i] >= 0 ? 1.f : -1.f;
        P0[i] = (i % 2 == 0) ? 0.5f * sg : -0.5f * sg;
        (i % 2 == 0 ? agree : disagree)++;
    }
    P = P0; M = M0; S = S0;
    muon_update(P.data(), M.data(), S.data(), G.data(), m, n, lr, mu, wd, s);
    // expected: P0 - lr g - lr wd P0 where g P0 >= 0 (even i), P0 - lr g elsewhere.
    // Errors: recovered g has error ~ulp(lr g)/lr ~ 1e-7 relative, P ~ 0.5 (ulp 6e-8): 1e-6 absolute.
    int wrong = 0;
    for (size_t i = 0; i < mn; i++) {
        double expect = P0[i] - lr * g[i] - ((i % 2 == 0) ? (double)lr * wd * P0[i] : 0.0);
        if (std::fabs(P[i] - expect) > 1e-6) wrong++;
    }
    CHECK(agree > 0);
    CHECK(disagree > 0);
    CHECK(wrong == 0);
    // the decay is large enough to be seen: lr wd |P0| = 0.0075 >> 1e-6
}

TEST_CASE("muon: the GEMM and Gram-matrix helpers against double products (edge tiles included)") {
    // 37 x 53 x 129: no dimension a multiple of the micro-tile; 48 x 32 x 64: whole tiles on AVX2;
    // 300 x 257 x 700: more than one depth block (KC = 256)
    const int shapes[3][3] = {{37, 53, 129}, {48, 32, 64}, {300, 257, 700}};
    for (auto& sh : shapes) {
        const int M = sh[0], N = sh[1], K = sh[2];
        std::vector<float> A = randn((long)M * K, 1000), B = randn((long)K * N, 1001), C((size_t)M * N, NAN);
        muon_matmul(A.data(), B.data(), C.data(), M, N, K);
        dvec R = dmatmul(to_d(A), to_d(B), M, N, K);
        // fp32 sums of K <= 700 products of N(0,1) values: error ~ sqrt(K) * 6e-8 * |terms| ~ 5e-5; bound 5e-4
        double e = 0;
        for (size_t i = 0; i < R.size(); i++) e = std::max(e, std::fabs(R[i] - C[i]));
        CHECK(e < 5e-4);
        // Gram matrices of A (M x K): wide (M <= K) -> A A^T (M x M); of A^T's shape tall -> A^T A
        for (bool tall : {false, true}) {
            int m = tall ? K : M, n = tall ? M : K;  // X = A viewed as m x n (tall: a K x M matrix)
            std::vector<float> X((size_t)m * n);
            for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) X[(size_t)i * n + j] = tall ? A[(size_t)j * K + i] : A[(size_t)i * K + j];
            int q = std::min(m, n);
            std::vector<float> G((size_t)q * q, NAN);
            muon_gram(X.data(), G.data(), m, n);
            double eg = 0;
            for (int i = 0; i < q; i++)
                for (int j = 0; j < q; j++) {
                    double r = 0;
                    for (int k = 0; k < std::max(m, n); k++)
                        r += tall ? (double)X[(size_t)k * n + i] * X[(size_t)k * n + j] : (double)X[(size_t)i * n + k] * X[(size_t)j * n + k];
                    eg = std::max(eg, std::fabs(r - G[(size_t)i * q + j]));
                }
            CHECK(eg < 5e-4);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// schedules

TEST_CASE("schedules: lr multiplier, momentum, weight decay at chosen steps") {
    // N = 1000: Dw = round(650) = 650, warmdown starts after it = 350
    const int N = 1000;
    CHECK(lr_multiplier(0, N) == doctest::Approx(1.0 / 40).epsilon(1e-15));
    CHECK(lr_multiplier(19, N) == doctest::Approx(0.5).epsilon(1e-15));
    CHECK(lr_multiplier(39, N) == 1.0);
    CHECK(lr_multiplier(40, N) == 1.0);
    CHECK(lr_multiplier(350, N) == 1.0);
    // it = 351: p = 649/650, lrm = p + (1-p) 0.05
    CHECK(lr_multiplier(351, N) == doctest::Approx(649.0 / 650 + (1.0 / 650) * 0.05).epsilon(1e-14));
    CHECK(lr_multiplier(675, N) == doctest::Approx(0.5 + 0.5 * 0.05).epsilon(1e-14)); // p = 325/650
    CHECK(lr_multiplier(999, N) == doctest::Approx(1.0 / 650 + (649.0 / 650) * 0.05).epsilon(1e-14));
    // Python's round is half-to-even: N = 10 -> 6.5 -> 6 (not 7). With warmup 2, it = 4 is the last
    // plateau step and it = 5 has p = 5/6.
    CHECK(warmdown_steps(10, 0.65) == 6);
    CHECK(warmdown_steps(30, 0.65) == 20);  // 19.5 -> 20
    CHECK(warmdown_steps(1000, 0.65) == 650);
    CHECK(lr_multiplier(4, 10, 2) == 1.0);
    CHECK(lr_multiplier(5, 10, 2) == doctest::Approx(5.0 / 6 + (1.0 / 6) * 0.05).epsilon(1e-14));
    CHECK(round_half_even(2.5) == 2);
    CHECK(round_half_even(3.5) == 4);
    CHECK(round_half_even(17.75) == 18);
    CHECK(round_half_even(18.47) == 18);

    // momentum, N = 4000: Dw = 2600, warmdown from it = 1400
    const int N2 = 4000;
    CHECK(muon_momentum(0, N2) == doctest::Approx(0.85).epsilon(1e-15));
    CHECK(muon_momentum(200, N2) == doctest::Approx(0.91).epsilon(1e-15));
    CHECK(muon_momentum(399, N2) == doctest::Approx(0.85 + 399.0 / 400 * 0.12).epsilon(1e-15));
    CHECK(muon_momentum(400, N2) == doctest::Approx(0.97).epsilon(1e-15));
    CHECK(muon_momentum(1399, N2) == doctest::Approx(0.97).epsilon(1e-15));
    CHECK(muon_momentum(1400, N2) == doctest::Approx(0.97).epsilon(1e-15)); // p = 0
    CHECK(muon_momentum(2700, N2) == doctest::Approx(0.935).epsilon(1e-14)); // p = 1/2
    CHECK(muon_momentum(3999, N2) == doctest::Approx(0.97 - 0.07 * 2599.0 / 2600).epsilon(1e-14));
    // short run: warmdown starts inside the 400-step ramp; the ramp is checked first
    CHECK(muon_momentum(300, 1000) == doctest::Approx(0.85 + 0.75 * 0.12).epsilon(1e-15));
    CHECK(muon_momentum(400, 1000) == doctest::Approx(0.97 * (600.0 / 650) + 0.90 * (50.0 / 650)).epsilon(1e-14));

    // weight decay: cosine from lambda to 0
    CHECK(muon_weight_decay(0, 1000, 0.28) == doctest::Approx(0.28).epsilon(1e-15));
    CHECK(muon_weight_decay(500, 1000, 0.28) == doctest::Approx(0.14).epsilon(1e-14));
    CHECK(muon_weight_decay(250, 1000, 0.28) == doctest::Approx(0.14 * (1 + std::sqrt(0.5))).epsilon(1e-14));
}

// ------------------------------------------------------------------------------------------------
// scaling recipe (numbers from docs/model.md#flops and docs/model.md#scaling)

static bool close_printed(double x, double printed, double half_ulp) { return std::fabs(x - printed) <= half_ulp; }

TEST_CASE("scaling: the worked table of docs/model.md#scaling (vocab 32768, T 2048, device batch 32)") {
    struct Row { int depth, C, H, ve; long long total, P, tokens, B; int steps; double bls, lam; int accum; double log2; };
    const Row rows[] = {
        {4, 256, 2, 2, 36700242, 11534384, 138412608, 262144, 528, 0.7071, 1.8899, 4, 17.75},
        {6, 384, 3, 3, 73531538, 23199852, 278398224, 262144, 1062, 0.7071, 0.9396, 4, 18.14},
        {8, 512, 4, 4, 125829354, 41943232, 503318784, 262144, 1920, 0.7071, 0.5197, 4, 18.47},
        {12, 768, 6, 6, 286261730, 110100912, 1321210944, 524288, 2520, 1.0, 0.28, 8, 19.00},
        {20, 1280, 10, 10, 896533746, 435160240, 5221922880LL, 1048576, 4980, 1.4142, 0.1002, 16, 19.76},
        {24, 1536, 12, 12, 1384122122, 729810624, 8757727488LL, 1048576, 8352, 1.4142, 0.0597, 16, 20.05},
    };
    for (const Row& w : rows) {
        CAPTURE(w.depth);
        ModelOptions mo;
        mo.depth = w.depth;
        RecipeOptions ro; // defaults: ratio 12, auto batch, device batch 32
        Recipe r = derive_recipe(mo, ro);
        const ModelShape& s = r.shape;
        CHECK(s.n_embd == w.C);
        CHECK(s.n_head == w.H);
        CHECK(s.n_kv_head == w.H);
        CHECK(s.head_dim == 128);
        CHECK(s.padded_vocab_size == 32768);
        CHECK(s.n_ve_layers == w.ve);
        CHECK(s.params.total == w.total);
        CHECK(s.params.scaling == w.P);
        CHECK(r.target_tokens == w.tokens);
        CHECK(r.total_batch_size == w.B);
        CHECK(r.batch_from_rule);
        CHECK(r.num_iterations == w.steps);
        CHECK(r.horizon == "ratio");
        CHECK(close_printed(r.bls, w.bls, 5e-5));
        CHECK(close_printed(r.weight_decay_scaled, w.lam, 5e-5));
        CHECK(close_printed(r.batch_log2, w.log2, 5e-3));
        CHECK(r.grad_accum_steps == w.accum);
        CHECK(r.tokens_per_fwdbwd == 65536);
        CHECK(r.total_tokens == (long long)w.steps * w.B);
    }
}

TEST_CASE("scaling: d12 breakdown, VE layers, windows") {
    ModelOptions mo;
    mo.depth = 12;
    ModelShape s = derive_model_shape(mo);
    CHECK(s.params.wte == 25165824);
    CHECK(s.params.value_embeds == 150994944);
    CHECK(s.params.lm_head == 25165824);
    CHECK(s.params.transformer_matrices == 84935088);
    CHECK(s.params.scalars == 50); // 2L + 26
    // even L: VE layers 1, 3, ..., 11
    for (int i = 0; i < 12; i++) CHECK(s.has_ve[i] == (i % 2 == 1));
    // d24: [512, 512, 512, 2048] x 6
    mo.depth = 24;
    s = derive_model_shape(mo);
    for (int i = 0; i < 24; i++) CHECK(s.window[i] == (i % 4 == 3 ? 2048 : 512));
    // d6: [512, 512, 512, 2048, 512, 2048] (last layer forced L); odd depth 5: C = 384, VE layers 0, 2, 4
    mo.depth = 6;
    s = derive_model_shape(mo);
    const int w6[] = {512, 512, 512, 2048, 512, 2048};
    for (int i = 0; i < 6; i++) CHECK(s.window[i] == w6[i]);
    mo.depth = 5;
    s = derive_model_shape(mo);
    CHECK(s.n_embd == 384);
    for (int i = 0; i < 5; i++) CHECK(s.has_ve[i] == (i % 2 == 0));
    // S width: 1024 -> 256, 256 -> 128, 2049 -> 640; lower-case pattern; windows off -> all T
    CHECK(default_short_window(1024) == 256);
    CHECK(default_short_window(256) == 128);
    CHECK(default_short_window(100) == 128);
    CHECK(default_short_window(2049) == 640);
    mo.depth = 4;
    mo.sequence_len = 1024;
    mo.window_pattern = "sl";
    s = derive_model_shape(mo);
    const int w4[] = {256, 1024, 256, 1024};
    for (int i = 0; i < 4; i++) CHECK(s.window[i] == w4[i]);
    CHECK(s.window_pattern == "SL");
    mo.short_window = 32;
    s = derive_model_shape(mo);
    CHECK(s.window[0] == 32);
    CHECK(s.window[3] == 1024);
    mo.windows = false;
    s = derive_model_shape(mo);
    for (int i = 0; i < 4; i++) CHECK(s.window[i] == 1024);
    CHECK(s.window_pattern == "L");
    // vocab padding
    mo = ModelOptions();
    mo.depth = 4;
    mo.vocab_size = 50257;
    s = derive_model_shape(mo);
    CHECK(s.padded_vocab_size == 50304);
    mo.vocab_size = 65;
    CHECK(derive_model_shape(mo).padded_vocab_size == 128);
}

TEST_CASE("scaling: --arch core totals") {
    const int depths[] = {4, 6, 8, 12, 20, 24};
    const long long totals[] = {19922944, 35782656, 58720256, 135266304, 477102080, 780140544};
    for (int k = 0; k < 6; k++) {
        CAPTURE(depths[k]);
        ModelOptions mo;
        mo.depth = depths[k];
        mo.set_arch_core();
        ModelShape s = derive_model_shape(mo);
        CHECK(s.params.total == totals[k]);
        CHECK(s.params.scalars == 0);
        CHECK(s.params.value_embeds == 0);
        CHECK(s.n_ve_layers == 0);
    }
}

TEST_CASE("scaling: learning rates for d4, d12, d24") {
    struct LR { int depth; double v[7]; double cfc; double half_ulp[7]; double cfc_half_ulp; };
    // printed values and half of their last printed digit
    const LR lrs[] = {
        {12, {0.008, 0.3, 0.15, 0.005, 0.5, 0.2, 0.02}, 0.04, {5e-4, 5e-2, 5e-3, 5e-4, 5e-2, 5e-2, 5e-3}, 5e-3},
        {24, {0.008, 0.3, 0.15, 0.00707, 0.707, 0.2, 0.02828}, 0.05657,
         {5e-4, 5e-2, 5e-3, 5e-6, 5e-4, 5e-2, 5e-6}, 5e-6},
        {4, {0.0098, 0.3674, 0.1837, 0.00354, 0.3536, 0.2, 0.01414}, 0.02828,
         {5e-5, 5e-5, 5e-5, 5e-6, 5e-5, 5e-2, 5e-6}, 5e-6},
    };
    for (const LR& l : lrs) {
        CAPTURE(l.depth);
        ModelOptions mo;
        mo.depth = l.depth;
        Recipe r = derive_recipe(mo, RecipeOptions());
        const double got[7] = {r.adam[ADAM_LM_HEAD].lr, r.adam[ADAM_WTE].lr, r.adam[ADAM_VALUE_EMBEDS].lr,
                               r.adam[ADAM_RESID].lr, r.adam[ADAM_X0].lr, r.adam[ADAM_SMEAR].lr, r.muon_lr};
        for (int k = 0; k < 7; k++) {
            CAPTURE(k);
            CHECK(close_printed(got[k], l.v[k], l.half_ulp[k]));
        }
        const int C = r.shape.n_embd;
        CHECK(close_printed(r.muon_lr * muon_shape_factor(4 * C, C), l.cfc, l.cfc_half_ulp));
        // exact equalities at d12 (bls = dms = 1)
        if (l.depth == 12) {
            CHECK(r.bls == 1.0);
            CHECK(r.dms == 1.0);
            CHECK(r.adam[ADAM_X0].lr == 0.5);
        }
    }
    // group constants of docs/model.md#param-groups
    Recipe r = derive_recipe(ModelOptions(), RecipeOptions());
    CHECK(r.adam[ADAM_LM_HEAD].beta2 == 0.96);
    CHECK(r.adam[ADAM_LM_HEAD].weight_decay == 0.01);
    CHECK(r.adam[ADAM_WTE].beta2 == 0.995);
    CHECK(r.adam[ADAM_WTE].weight_decay == 0.001);
    CHECK(r.adam[ADAM_X0].beta1 == 0.96);
    CHECK(r.adam[ADAM_RESID].weight_decay == 0.05);
    for (int k = 0; k < ADAM_NUM_GROUPS; k++) CHECK(r.adam[k].eps == 1e-10);
    for (int k = 0; k <= ADAM_SMEAR; k++) CHECK(r.adam[k].present);
    CHECK(!r.adam[ADAM_ROUTER].present);   // the hybrid models' groups: absent in the dense model
    CHECK(!r.adam[ADAM_LA_NORM].present);
    ModelOptions core;
    core.set_arch_core();
    Recipe rc = derive_recipe(core, RecipeOptions());
    CHECK(rc.adam[ADAM_LM_HEAD].present);
    CHECK(rc.adam[ADAM_WTE].present);
    CHECK(!rc.adam[ADAM_VALUE_EMBEDS].present);
    CHECK(!rc.adam[ADAM_RESID].present);
    CHECK(!rc.adam[ADAM_X0].present);
    CHECK(!rc.adam[ADAM_SMEAR].present);
}

TEST_CASE("scaling: FLOPs per token values of docs/model.md#flops") {
    struct F { int depth, T; bool core; long long nm, attn, fpt; };
    const F fs[] = {
        {12, 2048, false, 110100936, 99090432, 759696048},
        {20, 2048, false, 435160264, 275251200, 2886212784LL},
        {24, 2048, false, 729810648, 396361728, 4775225616LL},
        {4, 256, false, 11534408, 1966080, 71172528},
        {4, 256, true, 11534336, 3145728, 72351744},
    };
    for (const F& f : fs) {
        CAPTURE(f.depth);
        CAPTURE(f.core);
        ModelOptions mo;
        mo.depth = f.depth;
        mo.sequence_len = f.T;
        if (f.core) mo.set_arch_core();
        ModelShape s = derive_model_shape(mo);
        CHECK(s.n_matmul == f.nm);
        CHECK(s.attn_flops_per_token == f.attn);
        CHECK(s.flops_per_token == f.fpt);
        if (f.depth == 4 && !f.core) {
            const int w[] = {128, 128, 128, 256};
            for (int i = 0; i < 4; i++) CHECK(s.window[i] == w[i]);
        }
    }
}

TEST_CASE("scaling: horizon precedence and user batch size") {
    ModelOptions mo;
    mo.depth = 4;
    mo.sequence_len = 256;
    RecipeOptions ro;
    ro.total_batch_size = 8192; // 32 rows of 256
    ro.device_batch_size = 16;
    Recipe r = derive_recipe(mo, ro);
    CHECK(!r.batch_from_rule);
    CHECK(r.total_batch_size == 8192);
    CHECK(r.grad_accum_steps == 2);
    CHECK(r.bls == doctest::Approx(std::sqrt(8192.0 / 524288)).epsilon(1e-15)); // = 1/8
    // lambda uses the user's B and target tokens from the ratio: 0.28 * (1/8) * P(d12)/P(d4)
    CHECK(r.weight_decay_scaled == doctest::Approx(0.28 * 0.125 * 110100912.0 / 11534384.0).epsilon(1e-12));
    CHECK(r.horizon == "ratio");
    CHECK(r.num_iterations == (int)(138412608LL / 8192)); // 16896
    // target_flops: N = round(F / (fpt * B)); fpt(d4, T=256) = 71,172,528 -> F = 100.5 steps' worth
    // rounds half-to-even to 100
    ro.target_flops = 100.5 * 71172528.0 * 8192.0;
    r = derive_recipe(mo, ro);
    CHECK(r.horizon == "target_flops");
    CHECK(r.num_iterations == 100);
    ro.target_flops = 101.5 * 71172528.0 * 8192.0;
    CHECK(derive_recipe(mo, ro).num_iterations == 102);
    ro.target_flops = 1e40; // absurd: clear error, not an overflow
    CHECK_THROWS_WITH_AS(derive_recipe(mo, ro), doctest::Contains("--target-flops"), Error);
    ro.target_flops = 1.0; // rounds to 0 steps
    CHECK_THROWS_WITH_AS(derive_recipe(mo, ro), doctest::Contains("need >= 1"), Error);
    ro.target_flops = 101.5 * 71172528.0 * 8192.0;
    // num_iterations wins, and does not change lambda or B
    ro.num_iterations = 7;
    Recipe r2 = derive_recipe(mo, ro);
    CHECK(r2.horizon == "num_iterations");
    CHECK(r2.num_iterations == 7);
    CHECK(r2.weight_decay_scaled == r.weight_decay_scaled);
    CHECK(r2.total_tokens == 7 * 8192);
}

TEST_CASE("scaling: clear errors") {
    auto shape_error = [](ModelOptions mo) -> std::string {
        try {
            derive_model_shape(mo);
        } catch (const Error& e) {
            return e.what();
        }
        return "";
    };
    ModelOptions mo;
    mo.n_kv_head = 4; // d12 has 6 heads
    std::string e = shape_error(mo);
    CHECK(e.find("n_kv_head 4 must divide n_head 6") != std::string::npos);
    mo.n_kv_head = 3;
    CHECK(shape_error(mo).empty());
    CHECK(derive_model_shape(mo).n_kv_head == 3);
    mo.n_kv_head = 12; // more kv heads than heads
    CHECK(!shape_error(mo).empty());

    mo = ModelOptions();
    mo.depth = 4;
    mo.head_dim = 127; // n_embd = ceil(256/127)*127 = 381, 3 heads of 127
    e = shape_error(mo);
    CHECK(e.find("head_dim 127 must be even") != std::string::npos);

    mo = ModelOptions();
    mo.depth = 1;
    mo.aspect_ratio = 4;
    mo.head_dim = 8; // C = 8
    CHECK(shape_error(mo).find("too small for smear") != std::string::npos);
    mo.smear = false;
    CHECK(shape_error(mo).find("too small for value embeddings") != std::string::npos);
    mo.value_embeds = false;
    CHECK(shape_error(mo).empty());

    mo = ModelOptions();
    mo.window_pattern = "SXL";
    CHECK(shape_error(mo).find("may only contain the letters S and L") != std::string::npos);
    mo.window_pattern = "";
    CHECK(!shape_error(mo).empty());
    mo.window_pattern = "SSSL";
    mo.depth = 0;
    CHECK(shape_error(mo).find("--depth") != std::string::npos);

    // gradient accumulation must divide exactly
    mo = ModelOptions();
    mo.depth = 4;
    RecipeOptions ro;
    ro.total_batch_size = 100000;
    CHECK_THROWS_WITH_AS(derive_recipe(mo, ro), doctest::Contains("is not a positive multiple"), Error);
    ro.total_batch_size = 32768; // smaller than one micro-step of 32 x 2048: A = 0
    CHECK_THROWS_WITH_AS(derive_recipe(mo, ro), doctest::Contains("is not a positive multiple"), Error);
    ro.total_batch_size = 3 * 65536;
    CHECK(derive_recipe(mo, ro).grad_accum_steps == 3);
    ro.world_size = 2; // 131072 tokens per micro-step does not divide 196608
    CHECK_THROWS_AS(derive_recipe(mo, ro), Error);
    // T >= 2 for training
    mo.sequence_len = 1;
    CHECK_THROWS_WITH_AS(derive_recipe(mo, RecipeOptions()), doctest::Contains(">= 2 for training"), Error);
}
