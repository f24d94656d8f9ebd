// test_ops.cpp: the CPU reference ops (llmc/cpu/*.h), the oracle every CUDA kernel is tested against.
//
// What is checked, per op:
//  * backward vs central finite differences, everything in double. The loss is a random linear
//    functional of the op's outputs, L = sum(out * R), so every output element contributes and the
//    analytic gradient is the op's backward called with dout = R.
//    Error measure (per gradient element, a = analytic, b = numeric):
//        rel = |a - b| / max(|a|, |b|, floor),  floor = 1e-3 * scale,  scale = max_j |b_j| of the tensor
//    i.e. elements smaller than 1e-3 of the tensor's largest gradient are "tiny" and compared
//    absolutely against that floor instead of relatively. Required: max rel <= 1e-6.
//    The numeric derivative is the 5-point central stencil
//        (8 (L(x+h) - L(x-h)) - (L(x+2h) - L(x-2h))) / (12 h),  h = 1e-3,
//    whose truncation error is ~h^4 |L^(5)| / 30 ~ 1e-13 for the O(1..100) derivatives here, and
//    whose rounding error is ~1.5 * 2^-52 |L| / h ~ 3e-13 |L| (|L| ~ 1..30). Both are far below the
//    1e-6 * 1e-3 * scale allowed for gradient scales ~ 0.1 .. 10. (A plain 2-point difference needs
//    h ~ 1e-5 to keep its h^2 truncation small, and then its rounding error, ~2e-11 |L| / scale,
//    came within a factor 2 of the bound on the cross-entropy test.)
//    Ops with kinks (relu) get inputs kept at least 0.05 away from the kink, so the stencil
//    (width 4h) never straddles it.
//  * forward values against independent hand computations on tiny cases.
//  * "=" outputs are poisoned with NaN first (an unwritten element fails); "+=" outputs are called
//    twice on a non-zero start and must equal start + 2 * gradient.
//  * the float instantiation (what the trainer runs) agrees with the double one.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "llmc/rng.h"
#include "llmc/utils.h"
#include "llmc/cpu/crossentropy.h"
#include "llmc/cpu/embedding.h"
#include "llmc/cpu/matmul.h"
#include "llmc/cpu/rmsnorm.h"

using Vec = std::vector<double>;
using VecF = std::vector<float>;
static const double NaN = std::numeric_limits<double>::quiet_NaN();

static Vec randn(llmc::Rng& rng, size_t n, double scale = 1.0) {
    Vec v(n);
    for (auto& x : v) x = scale * rng.normal();
    return v;
}
static VecF to_float(const Vec& v) { return VecF(v.begin(), v.end()); }
static double dot(const Vec& a, const Vec& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
    return s;
}
[[maybe_unused]] static bool all_finite(const Vec& v) {
    for (double x : v) if (!std::isfinite(x)) return false;
    return true;
}
// max over elements of |a-b| / max(|a|,|b|, floor_frac * max|b|)
static double max_rel_err(const Vec& a, const Vec& b, double floor_frac) {
    double scale = 0;
    for (double x : b) scale = std::max(scale, std::fabs(x));
    double floor_ = std::max(floor_frac * scale, 1e-300);
    double worst = 0;
    for (size_t i = 0; i < a.size(); i++) {
        double d = std::fabs(a[i] - b[i]);
        double den = std::max({std::fabs(a[i]), std::fabs(b[i]), floor_});
        double r = d / den;
        if (!(r <= worst)) worst = r;  // also catches NaN
    }
    return worst;
}

// Central finite differences (5-point stencil) of loss() w.r.t. every element of x (x is perturbed in place and
// restored), compared with the analytic gradient. Returns the max relative error (see top).
static double gradcheck(const char* what, Vec& x, const Vec& analytic, const std::function<double()>& loss,
                        double h = 1e-3) {
    REQUIRE(analytic.size() == x.size());
    Vec numeric(x.size());
    for (size_t i = 0; i < x.size(); i++) {
        double save = x[i];
        x[i] = save + h; double p1 = loss();
        x[i] = save - h; double m1 = loss();
        x[i] = save + 2 * h; double p2 = loss();
        x[i] = save - 2 * h; double m2 = loss();
        x[i] = save;
        numeric[i] = (8 * (p1 - m1) - (p2 - m2)) / (12 * h);
    }
    double err = max_rel_err(analytic, numeric, 1e-3);
    std::string msg = llmc::strfmt("%s: max rel err %.3g over %zu elements", what, err, x.size());
    INFO(msg);
    CHECK(err <= 1e-6);
    MESSAGE(msg);
    return err;
}

// ============================================================================================
// rmsnorm
// ============================================================================================

TEST_CASE("rmsnorm forward: hand-computed rows") {
    // row [3, 4]: mean(x^2) = 12.5; row [0, 0]: r = 1/sqrt(eps), y = 0; row [-2, 2]: mean 4.
    Vec x = {3, 4, 0, 0, -2, 2};
    Vec out(6, NaN), rstd(3, NaN);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), 3, 2);
    const double eps = std::ldexp(1.0, -23);
    double r0 = 1.0 / std::sqrt(12.5 + eps), r2 = 1.0 / std::sqrt(4.0 + eps);
    CHECK(rstd[0] == doctest::Approx(r0).epsilon(1e-15));
    CHECK(rstd[1] == doctest::Approx(1.0 / std::sqrt(eps)).epsilon(1e-15));
    CHECK(rstd[2] == doctest::Approx(r2).epsilon(1e-15));
    CHECK(out[0] == doctest::Approx(3 * r0).epsilon(1e-15));
    CHECK(out[1] == doctest::Approx(4 * r0).epsilon(1e-15));
    CHECK(out[2] == 0.0);
    CHECK(out[3] == 0.0);
    CHECK(out[4] == doctest::Approx(-2 * r2).epsilon(1e-15));
    // the normalized row has mean square 1 (up to eps)
    CHECK((out[0] * out[0] + out[1] * out[1]) / 2 == doctest::Approx(1.0).epsilon(1e-8));
}

TEST_CASE("rmsnorm backward: finite differences, accumulation") {
    llmc::Rng rng(1, 1);
    const int N = 7, C = 13;
    Vec x = randn(rng, N * C), R = randn(rng, N * C);
    Vec out(N * C), rstd(N);
    auto loss = [&]() { rmsnorm_forward(out.data(), rstd.data(), x.data(), N, C); return dot(out, R); };
    loss();
    Vec dx(N * C, 0.0);
    rmsnorm_backward(dx.data(), R.data(), out.data(), rstd.data(), N, C);
    gradcheck("rmsnorm dx", x, dx, loss);
    // += : start from a random buffer, call twice
    Vec base = randn(rng, N * C), acc = base;
    loss();
    rmsnorm_backward(acc.data(), R.data(), out.data(), rstd.data(), N, C);
    rmsnorm_backward(acc.data(), R.data(), out.data(), rstd.data(), N, C);
    for (int i = 0; i < N * C; i++) CHECK(acc[i] == doctest::Approx(base[i] + 2 * dx[i]).epsilon(1e-12));
}

// ============================================================================================
// embedding
// ============================================================================================

TEST_CASE("embedding forward gathers rows; backward scatter-adds (repeated ids)") {
    llmc::Rng rng(2, 1);
    const int Vt = 5, C = 19, N = 11;
    std::vector<int> idx = {3, 0, 3, 4, 1, 3, 0, 2, 4, 4, 3};
    Vec table = randn(rng, Vt * C), R = randn(rng, N * C);
    Vec out(N * C, NaN);
    embedding_forward(out.data(), idx.data(), table.data(), N, C);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) CHECK(out[i * C + c] == table[idx[i] * C + c]);
    auto loss = [&]() { embedding_forward(out.data(), idx.data(), table.data(), N, C); return dot(out, R); };
    Vec dtable(Vt * C, 0.0);
    embedding_backward(dtable.data(), R.data(), idx.data(), N, C);
    gradcheck("embedding dtable", table, dtable, loss);
    // hand check: row 3 of dtable is the sum of the dout rows whose id is 3 (rows 0, 2, 5, 10)
    for (int c = 0; c < C; c++)
        CHECK(dtable[3 * C + c] == doctest::Approx(R[0 * C + c] + R[2 * C + c] + R[5 * C + c] + R[10 * C + c]));
    // += : twice on a random start
    Vec base = randn(rng, Vt * C), acc = base;
    embedding_backward(acc.data(), R.data(), idx.data(), N, C);
    embedding_backward(acc.data(), R.data(), idx.data(), N, C);
    for (int i = 0; i < Vt * C; i++) CHECK(acc[i] == doctest::Approx(base[i] + 2 * dtable[i]).epsilon(1e-12));
}

TEST_CASE("embedding backward is bitwise independent of the thread count") {
#ifdef _OPENMP
    llmc::Rng rng(3, 1);
    const int Vt = 37, C = 200, N = 1001;  // C not a multiple of the 16-channel chunks
    std::vector<int> idx(N);
    for (auto& i : idx) i = (int)rng.below(Vt);
    VecF dout = to_float(randn(rng, (size_t)N * C));
    VecF start = to_float(randn(rng, (size_t)Vt * C));
    VecF a = start, b = start;
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    embedding_backward(a.data(), dout.data(), idx.data(), N, C);
    omp_set_num_threads(2);
    embedding_backward(b.data(), dout.data(), idx.data(), N, C);
    omp_set_num_threads(saved);
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
#else
    MESSAGE("built without OpenMP: thread-count determinism is trivially true");
    CHECK(true);
#endif
}

// ============================================================================================
// matmul (double path: plain loops)
// ============================================================================================

TEST_CASE("matmul forward: hand-computed 2x2") {
    // inp = [[1,2],[3,4]], W = [[5,6],[7,8]] (OC=2, IC=2): out = inp W^T = [[17,23],[39,53]]
    Vec inp = {1, 2, 3, 4}, W = {5, 6, 7, 8}, out(4, NaN);
    matmul_forward(out.data(), inp.data(), W.data(), 2, 2, 2);
    CHECK(out[0] == 17); CHECK(out[1] == 23); CHECK(out[2] == 39); CHECK(out[3] == 53);
    VecF inpf = to_float(inp), Wf = to_float(W), outf(4, NAN);
    matmul_forward(outf.data(), inpf.data(), Wf.data(), 2, 2, 2);
    CHECK(outf[0] == 17); CHECK(outf[1] == 23); CHECK(outf[2] == 39); CHECK(outf[3] == 53);
}

TEST_CASE("matmul backward: finite differences, accumulation, null outputs skipped") {
    llmc::Rng rng(4, 1);
    const int N = 7, IC = 9, OC = 5;
    Vec inp = randn(rng, N * IC), W = randn(rng, OC * IC), R = randn(rng, N * OC), out(N * OC);
    auto loss = [&]() { matmul_forward(out.data(), inp.data(), W.data(), N, IC, OC); return dot(out, R); };
    Vec dinp(N * IC, 0.0), dW(OC * IC, 0.0);
    matmul_backward(dinp.data(), dW.data(), R.data(), inp.data(), W.data(), N, IC, OC);
    gradcheck("matmul dinp", inp, dinp, loss);
    gradcheck("matmul dweight", W, dW, loss);
    Vec a1 = randn(rng, N * IC), a2 = a1, w1 = randn(rng, OC * IC), w2 = w1;
    matmul_backward(a2.data(), w2.data(), R.data(), inp.data(), W.data(), N, IC, OC);
    matmul_backward(a2.data(), w2.data(), R.data(), inp.data(), W.data(), N, IC, OC);
    for (int i = 0; i < N * IC; i++) CHECK(a2[i] == doctest::Approx(a1[i] + 2 * dinp[i]).epsilon(1e-12));
    for (int i = 0; i < OC * IC; i++) CHECK(w2[i] == doctest::Approx(w1[i] + 2 * dW[i]).epsilon(1e-12));
    // nullptr skips that output (and must not crash)
    Vec a3(N * IC, 0.0);
    matmul_backward(a3.data(), (double*)nullptr, R.data(), inp.data(), W.data(), N, IC, OC);
    for (int i = 0; i < N * IC; i++) CHECK(a3[i] == doctest::Approx(dinp[i]).epsilon(1e-12));
    Vec w3(OC * IC, 0.0);
    matmul_backward((double*)nullptr, w3.data(), R.data(), inp.data(), W.data(), N, IC, OC);
    for (int i = 0; i < OC * IC; i++) CHECK(w3[i] == doctest::Approx(dW[i]).epsilon(1e-12));
}

// ============================================================================================
// softcap + cross-entropy
// ============================================================================================

TEST_CASE("crossentropy: all-equal logits give ln(V); ignored rows; padded columns; bad target") {
    const int N = 3, V = 10, Vp = 16;
    Vec logits(N * Vp, 2.5), losses(N, NaN), dl(N * Vp, NaN);
    for (int i = 0; i < N; i++) for (int v = V; v < Vp; v++) logits[i * Vp + v] = 1e3;  // padding must not matter
    std::vector<int> y = {4, -1, 9};
    softcap_crossentropy_forward_backward(losses.data(), dl.data(), logits.data(), y.data(), N, V, Vp, 15.0f, 1.0f);
    CHECK(losses[0] == doctest::Approx(std::log(10.0)).epsilon(1e-14));
    CHECK(losses[1] == 0.0);
    CHECK(losses[2] == doctest::Approx(std::log(10.0)).epsilon(1e-14));
    // gradient by hand: p = 1/10, d tanh factor 1 - tanh(2.5/15)^2
    double f = 1 - std::pow(std::tanh(2.5 / 15), 2);
    for (int v = 0; v < V; v++) CHECK(dl[0 * Vp + v] == doctest::Approx((0.1 - (v == 4)) * f).epsilon(1e-13));
    for (int v = 0; v < Vp; v++) CHECK(dl[1 * Vp + v] == 0.0);  // ignored row: exactly 0
    for (int i = 0; i < N; i++) for (int v = V; v < Vp; v++) CHECK(dl[i * Vp + v] == 0.0);  // padded columns
    // dlogits == nullptr: loss only
    Vec l2(N, NaN);
    softcap_crossentropy_forward_backward(l2.data(), (double*)nullptr, logits.data(), y.data(), N, V, Vp, 15.0f, 1.0f);
    for (int i = 0; i < N; i++) CHECK(l2[i] == losses[i]);
    // a bad target names the row and the value
    std::vector<int> bad = {4, 10, 0};
    CHECK_THROWS_WITH_AS(softcap_crossentropy_forward_backward(l2.data(), dl.data(), logits.data(), bad.data(), N, V, Vp, 15.0f, 1.0f),
                         doctest::Contains("row 1 is 10"), llmc::Error);
    bad = {4, 0, -2};
    CHECK_THROWS_WITH_AS(softcap_crossentropy_forward_backward(l2.data(), dl.data(), logits.data(), bad.data(), N, V, Vp, 15.0f, 1.0f),
                         doctest::Contains("row 2 is -2"), llmc::Error);
}

TEST_CASE("crossentropy: hand-computed softcap loss on one row") {
    // logits [20, -3, 0] with softcap 15: z = 15 tanh(l/15); loss = lse(z) - z[0]
    Vec l = {20, -3, 0}, loss(1), dl(3);
    std::vector<int> y = {0};
    softcap_crossentropy_forward_backward(loss.data(), dl.data(), l.data(), y.data(), 1, 3, 3, 15.0f, 1.0f);
    double z0 = 15 * std::tanh(20.0 / 15), z1 = 15 * std::tanh(-3.0 / 15), z2 = 0;
    double expect = std::log(std::exp(z0) + std::exp(z1) + std::exp(z2)) - z0;
    CHECK(loss[0] == doctest::Approx(expect).epsilon(1e-14));
}

TEST_CASE("crossentropy backward: finite differences (softcap saturation, padding, ignore), in place") {
    llmc::Rng rng(5, 1);
    const int N = 6, V = 11, Vp = 16;
    const float softcap = 15.0f, scale = 0.37f;
    Vec logits = randn(rng, N * Vp, 12.0);  // std 12: many logits in tanh's curved region
    std::vector<int> y = {3, -1, 0, 10, 7, -1};
    Vec losses(N), dl(N * Vp, NaN);
    auto loss = [&]() {
        softcap_crossentropy_forward_backward(losses.data(), (double*)nullptr, logits.data(), y.data(), N, V, Vp, softcap, scale);
        double s = 0; for (double x : losses) s += x;
        return s * (double)scale;  // the op's dlogits is dloss_scale * d(sum of losses)/dlogits
    };
    softcap_crossentropy_forward_backward(losses.data(), dl.data(), logits.data(), y.data(), N, V, Vp, softcap, scale);
    gradcheck("crossentropy dlogits", logits, dl, loss);
    for (int i = 0; i < N; i++) for (int v = V; v < Vp; v++) CHECK(dl[i * Vp + v] == 0.0);
    // in place (dlogits == logits) gives the same losses and gradient
    Vec inplace = logits, l2(N, NaN);
    softcap_crossentropy_forward_backward(l2.data(), inplace.data(), inplace.data(), y.data(), N, V, Vp, softcap, scale);
    for (int i = 0; i < N; i++) CHECK(l2[i] == losses[i]);
    for (int i = 0; i < N * Vp; i++) CHECK(inplace[i] == dl[i]);
}

TEST_CASE("crossentropy float agrees with double") {
    llmc::Rng rng(6, 1);
    const int N = 9, V = 1000, Vp = 1024;
    Vec logits = randn(rng, N * Vp, 8.0), losses(N), dl(N * Vp);
    std::vector<int> y(N);
    for (auto& t : y) t = (int)rng.below(V);
    y[4] = -1;
    softcap_crossentropy_forward_backward(losses.data(), dl.data(), logits.data(), y.data(), N, V, Vp, 15.0f, 0.5f);
    VecF lf = to_float(logits), lossf(N, NAN), dlf(N * Vp, NAN);
    softcap_crossentropy_forward_backward(lossf.data(), dlf.data(), lf.data(), y.data(), N, V, Vp, 15.0f, 0.5f);
    // fp32: tanh/exp each ~1 ulp, losses ~ 5..15 -> absolute 1e-5 is ~100 ulps of margin
    for (int i = 0; i < N; i++) CHECK(lossf[i] == doctest::Approx(losses[i]).epsilon(1e-5));
    double maxd = 0, maxg = 0;
    for (int i = 0; i < N * Vp; i++) { maxd = std::max(maxd, std::fabs(dlf[i] - dl[i])); maxg = std::max(maxg, std::fabs(dl[i])); }
    CHECK(maxd <= 1e-5 * maxg);
}
