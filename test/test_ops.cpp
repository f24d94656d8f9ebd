// test_ops.cpp: the CPU reference ops (llmc/cpu/*.h), the oracle every CUDA kernel is tested against.
//
// What is checked, per op:
//  * backward vs central finite differences, everything in double. The loss is a random linear
//    functional of the op's outputs, L = sum(out * R), so every output element contributes and the
//    analytic gradient is the op's backward called with dout = R.
//    Error measure (per gradient element, a = analytic, b = numeric):
//        rel = |a - b| / max(|a|, |b|, floor),  floor = max(1e-3 * scale, 1e-9),
//        scale = max_j |b_j| of the tensor
//    i.e. elements smaller than 1e-3 of the tensor's largest gradient are "tiny" and compared
//    absolutely against that floor instead of relatively. Required: max rel <= 1e-6.
//    The absolute 1e-9 covers gradients that are exactly zero in exact arithmetic (e.g. dq of
//    attention with window 0, where each softmax has one element): the op then returns
//    rounding noise ~1e-16 (inputs are O(1)), the stencil returns 0.
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
//  * the float instantiation (what the trainer runs) agrees with the double one; the blocked fp32
//    matmul is held to a rigorous rounding-error bound against a double reference (odd shapes,
//    exact multiples of its blocking, accumulation); the float exp/tanh are checked in ulps.
//  * determinism: accumulated parameter gradients (embedding, matmul, lambdas, backout, smear,
//    value-embedding gate) and attention's backward are bitwise the same on 1 and 2 threads.
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
#include "llmc/cpu/rope.h"
#include "llmc/cpu/qknorm.h"
#include "llmc/cpu/attention.h"
#include "llmc/cpu/relu2.h"
#include "llmc/cpu/residual.h"
#include "llmc/cpu/backout.h"
#include "llmc/cpu/smear.h"
#include "llmc/cpu/value_embed.h"

#include "test/op_test_util.h"

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

// ============================================================================================
// RoPE
// ============================================================================================

TEST_CASE("rope table: fp32 angles as docs/model.md#rope builds them") {
    const int D = 4, P = 9;
    VecF c(P * 2), s(P * 2);
    rope_table(c.data(), s.data(), P, D, 100000.0);
    // j=0: inv_freq 1 -> theta = t; j=1: inv_freq = 1/100000^(1/2) = 1/316.227766...
    for (int t = 0; t < P; t++) {
        CHECK(c[t * 2 + 0] == doctest::Approx(std::cos((double)t)).epsilon(1e-6));
        CHECK(s[t * 2 + 0] == doctest::Approx(std::sin((double)t)).epsilon(1e-6));
        double th = t / std::sqrt(100000.0);
        CHECK(c[t * 2 + 1] == doctest::Approx(std::cos(th)).epsilon(1e-6));
        CHECK(s[t * 2 + 1] == doctest::Approx(std::sin(th)).epsilon(1e-6));
    }
    CHECK(c[0] == 1.0f); CHECK(s[0] == 0.0f);  // position 0 is the identity
}

TEST_CASE("rope forward: a unit vector rotates by -theta (half-split pairs); pos0; in place") {
    const int D = 8, half = 4, P = 16;
    VecF c(P * half), s(P * half);
    rope_table(c.data(), s.data(), P, D, 100000.0);
    // one head, two positions starting at pos0 = 5. Input at t=0: e_1 (x1[1] = 1);
    // at t=1: e_{half+2} (x2[2] = 1).
    Vec x(2 * D, 0.0), y(2 * D, NaN);
    x[1] = 1.0;
    x[D + half + 2] = 1.0;
    rope_forward(y.data(), x.data(), c.data(), s.data(), 1, 2, 1, D, 5);
    double c51 = c[5 * half + 1], s51 = s[5 * half + 1], c62 = c[6 * half + 2], s62 = s[6 * half + 2];
    for (int d = 0; d < D; d++) {
        // (x1, x2) = (1, 0) -> (cos, -sin): rotation by -theta
        double e0 = d == 1 ? c51 : d == half + 1 ? -s51 : 0.0;
        // (x1, x2) = (0, 1) -> (sin, cos)
        double e1 = d == 2 ? s62 : d == half + 2 ? c62 : 0.0;
        CHECK(y[d] == e0);
        CHECK(y[D + d] == e1);
    }
    // in place gives the same
    Vec z = x;
    rope_forward(z.data(), z.data(), c.data(), s.data(), 1, 2, 1, D, 5);
    for (int i = 0; i < 2 * D; i++) CHECK(z[i] == y[i]);
    // backward = inverse rotation: backward(forward(x)) == x (float, orthogonal: a few ulps)
    llmc::Rng rng(7, 1);
    VecF xf = to_float(randn(rng, 3 * 4 * 2 * D)), yf(xf.size(), NAN), bf(xf.size(), NAN);
    rope_forward(yf.data(), xf.data(), c.data(), s.data(), 3, 4, 2, D, 3);
    rope_backward(bf.data(), yf.data(), c.data(), s.data(), 3, 4, 2, D, 3);
    for (size_t i = 0; i < xf.size(); i++) CHECK(bf[i] == doctest::Approx(xf[i]).epsilon(1e-6).scale(1.0));
}

TEST_CASE("rope backward: finite differences, overwrite, in place") {
    llmc::Rng rng(8, 1);
    const int B = 2, T = 3, NH = 3, D = 10, P = 12, pos0 = 2;
    VecF c(P * D / 2), s(P * D / 2);
    rope_table(c.data(), s.data(), P, D, 100000.0);
    const int n = B * T * NH * D;
    Vec x = randn(rng, n), R = randn(rng, n), out(n);
    auto loss = [&]() { rope_forward(out.data(), x.data(), c.data(), s.data(), B, T, NH, D, pos0); return dot(out, R); };
    Vec dx(n, NaN);
    rope_backward(dx.data(), R.data(), c.data(), s.data(), B, T, NH, D, pos0);
    gradcheck("rope dx", x, dx, loss);
    Vec g = R;
    rope_backward(g.data(), g.data(), c.data(), s.data(), B, T, NH, D, pos0);
    for (int i = 0; i < n; i++) CHECK(g[i] == dx[i]);
}

// ============================================================================================
// QK-norm
// ============================================================================================

TEST_CASE("qknorm forward: 1.2 * rms per head row") {
    Vec x = {3, 4, 1, -1}, out(4, NaN), r(2, NaN);
    qknorm_forward(out.data(), r.data(), x.data(), 2, 2);
    const double eps = std::ldexp(1.0, -23);
    double r0 = 1 / std::sqrt(12.5 + eps), r1 = 1 / std::sqrt(1 + eps);
    CHECK(r[0] == doctest::Approx(r0).epsilon(1e-15));
    CHECK(out[0] == doctest::Approx(1.2 * 3 * r0).epsilon(1e-15));
    CHECK(out[1] == doctest::Approx(1.2 * 4 * r0).epsilon(1e-15));
    CHECK(out[3] == doctest::Approx(-1.2 * r1).epsilon(1e-15));
}

TEST_CASE("qknorm backward: finite differences, overwrite, in place") {
    llmc::Rng rng(9, 1);
    const int rows = 11, D = 6;
    Vec x = randn(rng, rows * D), R = randn(rng, rows * D), out(rows * D), r(rows);
    auto loss = [&]() { qknorm_forward(out.data(), r.data(), x.data(), rows, D); return dot(out, R); };
    loss();
    Vec dx(rows * D, NaN);
    qknorm_backward(dx.data(), R.data(), out.data(), r.data(), rows, D);
    gradcheck("qknorm dx", x, dx, loss);
    Vec g = R;
    qknorm_backward(g.data(), g.data(), out.data(), r.data(), rows, D);
    for (int i = 0; i < rows * D; i++) CHECK(g[i] == dx[i]);
}

// ============================================================================================
// attention
// ============================================================================================

// Independent slow reference: materializes the masked (T x T) score matrix per (b, h) and a
// textbook softmax. Returns out and lse.
static void attention_reference(Vec& out, Vec& lse, const Vec& q, const Vec& k, const Vec& v, int B, int T, int H,
                                int Hkv, int D, int window) {
    out.assign((size_t)B * T * H * D, 0.0);
    lse.assign((size_t)B * H * T, 0.0);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int g = h / (H / Hkv);
            for (int i = 0; i < T; i++) {
                std::vector<double> sc(T, -INFINITY);
                double mx = -INFINITY;
                for (int j = 0; j < T; j++) {
                    bool visible = j <= i && i - j <= window;
                    if (!visible) continue;
                    double s = 0;
                    for (int d = 0; d < D; d++) s += q[((b * T + i) * H + h) * D + d] * k[((b * T + j) * Hkv + g) * D + d];
                    sc[j] = s / std::sqrt((double)D);
                    mx = std::max(mx, sc[j]);
                }
                double z = 0;
                for (int j = 0; j < T; j++) z += std::exp(sc[j] - mx);  // exp(-inf) = 0 for masked
                lse[(b * H + h) * T + i] = mx + std::log(z);
                for (int j = 0; j < T; j++) {
                    double p = std::exp(sc[j] - mx) / z;
                    for (int d = 0; d < D; d++) out[((b * T + i) * H + h) * D + d] += p * v[((b * T + j) * Hkv + g) * D + d];
                }
            }
        }
}

TEST_CASE("attention forward: window 0 returns v of the same position (GQA head mapping)") {
    llmc::Rng rng(10, 1);
    const int B = 2, T = 5, H = 4, Hkv = 2, D = 3;
    Vec q = randn(rng, B * T * H * D), k = randn(rng, B * T * Hkv * D), v = randn(rng, B * T * Hkv * D);
    Vec out(B * T * H * D, NaN), lse(B * H * T, NaN);
    attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D, 0);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                int g = h / 2;  // heads 0,1 -> kv head 0; heads 2,3 -> kv head 1
                double s = 0;
                for (int d = 0; d < D; d++) {
                    CHECK(out[((b * T + t) * H + h) * D + d] == doctest::Approx(v[((b * T + t) * Hkv + g) * D + d]).epsilon(1e-14));
                    s += q[((b * T + t) * H + h) * D + d] * k[((b * T + t) * Hkv + g) * D + d];
                }
                // one visible key: lse is that key's scaled score
                CHECK(lse[(b * H + h) * T + t] == doctest::Approx(s / std::sqrt(3.0)).epsilon(1e-13));
            }
}

TEST_CASE("attention forward: hand-computed two-token case") {
    // T=2, one head, D=2. Query 1 sees keys 0 and 1.
    Vec q = {1, 0, 2, 1}, k = {1, 1, 0, 2}, v = {1, 2, 3, 5}, out(4, NaN), lse(2, NaN);
    attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), 1, 2, 1, 1, 2, 100);
    // row 0: only key 0 -> v0
    CHECK(out[0] == doctest::Approx(1.0)); CHECK(out[1] == doctest::Approx(2.0));
    // row 1: s = [<(2,1),(1,1)>, <(2,1),(0,2)>] / sqrt2 = [3, 2] / sqrt2
    double s0 = 3 / std::sqrt(2.0), s1 = 2 / std::sqrt(2.0);
    double p0 = std::exp(s0) / (std::exp(s0) + std::exp(s1)), p1 = 1 - p0;
    CHECK(out[2] == doctest::Approx(p0 * 1 + p1 * 3).epsilon(1e-14));
    CHECK(out[3] == doctest::Approx(p0 * 2 + p1 * 5).epsilon(1e-14));
    CHECK(lse[1] == doctest::Approx(std::log(std::exp(s0) + std::exp(s1))).epsilon(1e-14));
}

TEST_CASE("attention forward matches a slow materialized reference (GQA, windows)") {
    llmc::Rng rng(11, 1);
    struct Shape { int B, T, H, Hkv, D, window; };
    for (Shape sh : {Shape{2, 9, 4, 2, 20, 3}, Shape{1, 13, 3, 1, 5, 100}, Shape{3, 6, 2, 2, 16, 5}, Shape{1, 7, 6, 3, 7, 1}}) {
        int B = sh.B, T = sh.T, H = sh.H, Hkv = sh.Hkv, D = sh.D;
        Vec q = randn(rng, B * T * H * D), k = randn(rng, B * T * Hkv * D), v = randn(rng, B * T * Hkv * D);
        Vec out(B * T * H * D, NaN), lse(B * H * T, NaN), ro, rl;
        attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D, sh.window);
        attention_reference(ro, rl, q, k, v, B, T, H, Hkv, D, sh.window);
        CHECK(max_rel_err(out, ro, 1e-3) <= 1e-12);
        CHECK(max_rel_err(lse, rl, 1e-3) <= 1e-12);
        // float instantiation. o is a convex combination of v rows, so its absolute error is bounded
        // by (error of p) * max|v| plus rounding of the sum: fp32 scores carry ~1e-7 * sqrt(D) |s|
        // relative error, so 1e-5 * max|v| absolute leaves >10x margin. (A relative bound per element
        // would be wrong: outputs that cancel to ~0 have large relative error.)
        VecF qf = to_float(q), kf = to_float(k), vf = to_float(v), of(out.size(), NAN), lf(lse.size(), NAN);
        attention_forward(of.data(), lf.data(), qf.data(), kf.data(), vf.data(), B, T, H, Hkv, D, sh.window);
        double vmax = 0, oerr = 0, lerr = 0;
        for (double x : v) vmax = std::max(vmax, std::fabs(x));
        for (size_t i = 0; i < ro.size(); i++) oerr = std::max(oerr, std::fabs(of[i] - ro[i]));
        for (size_t i = 0; i < rl.size(); i++) lerr = std::max(lerr, std::fabs(lf[i] - rl[i]) / std::max(1.0, std::fabs(rl[i])));
        MESSAGE("attention fp32 forward: max |out err| " << oerr << " (max|v| " << vmax << "), lse err " << lerr);
        CHECK(oerr <= 1e-5 * vmax);
        CHECK(lerr <= 1e-5);
    }
}

TEST_CASE("attention backward: finite differences (GQA, window < T, odd D), overwrite") {
    llmc::Rng rng(12, 1);
    struct Shape { int B, T, H, Hkv, D, window; };
    for (Shape sh : {Shape{2, 7, 4, 2, 5, 2}, Shape{1, 6, 3, 1, 18, 100}, Shape{1, 5, 2, 2, 3, 0}}) {
        int B = sh.B, T = sh.T, H = sh.H, Hkv = sh.Hkv, D = sh.D, W = sh.window;
        CAPTURE(B); CAPTURE(T); CAPTURE(H); CAPTURE(Hkv); CAPTURE(D); CAPTURE(W);
        Vec q = randn(rng, B * T * H * D), k = randn(rng, B * T * Hkv * D), v = randn(rng, B * T * Hkv * D);
        Vec R = randn(rng, B * T * H * D), out(B * T * H * D), lse(B * H * T);
        auto loss = [&]() { attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D, W); return dot(out, R); };
        loss();
        Vec dq(q.size(), NaN), dk(k.size(), NaN), dv(v.size(), NaN);
        attention_backward(dq.data(), dk.data(), dv.data(), R.data(), out.data(), lse.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D, W);
        gradcheck("attention dq", q, dq, loss);
        gradcheck("attention dk", k, dk, loss);
        gradcheck("attention dv", v, dv, loss);
    }
}

TEST_CASE("attention backward: float agrees with double (GQA, window, T not a multiple of the blocks)") {
    llmc::Rng rng(23, 1);
    struct Shape { int B, T, H, Hkv, D, window; };
    for (Shape sh : {Shape{2, 37, 4, 2, 20, 9}, Shape{1, 50, 2, 1, 64, 100}}) {
        int B = sh.B, T = sh.T, H = sh.H, Hkv = sh.Hkv, D = sh.D, W = sh.window;
        CAPTURE(T); CAPTURE(D); CAPTURE(W);
        Vec q = randn(rng, B * T * H * D), k = randn(rng, B * T * Hkv * D), v = randn(rng, B * T * Hkv * D), g = randn(rng, B * T * H * D);
        Vec out(q.size()), lse(B * H * T), dq(q.size()), dk(k.size()), dv(v.size());
        attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D, W);
        attention_backward(dq.data(), dk.data(), dv.data(), g.data(), out.data(), lse.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D, W);
        VecF qf = to_float(q), kf = to_float(k), vf = to_float(v), gf = to_float(g);
        VecF of(q.size()), lf(B * H * T), dqf(q.size(), NAN), dkf(k.size(), NAN), dvf(v.size(), NAN);
        attention_forward(of.data(), lf.data(), qf.data(), kf.data(), vf.data(), B, T, H, Hkv, D, W);
        attention_backward(dqf.data(), dkf.data(), dvf.data(), gf.data(), of.data(), lf.data(), qf.data(), kf.data(), vf.data(), B, T, H, Hkv, D, W);
        // fp32 rounding (2^-24 ~ 6e-8 per operation, a few operations deep, partial sums of
        // <= 100 terms) gives a few 1e-7 of the tensor's largest element (observed 1-3e-7);
        // 3e-6 leaves 10x margin, while a wrong term (a mask off by one) would be ~1e-2
        auto rel = [](const VecF& f, const Vec& d) {
            double md = 0, mx = 0;
            for (size_t i = 0; i < d.size(); i++) { md = std::max(md, std::fabs((double)f[i] - d[i])); mx = std::max(mx, std::fabs(d[i])); }
            return md / mx;
        };
        double eq = rel(dqf, dq), ek = rel(dkf, dk), ev = rel(dvf, dv);
        MESSAGE("attention fp32 backward: max err / max |grad|: dq " << eq << ", dk " << ek << ", dv " << ev);
        CHECK(eq <= 3e-6); CHECK(ek <= 3e-6); CHECK(ev <= 3e-6);
    }
}

TEST_CASE("attention: bad head counts are a clear error") {
    Vec x(64, 0.0), l(64, 0.0);
    CHECK_THROWS_WITH_AS(attention_forward(x.data(), l.data(), x.data(), x.data(), x.data(), 1, 2, 3, 2, 4, 10),
                         doctest::Contains("multiple of n_kv_head"), llmc::Error);
}

// ============================================================================================
// ReLU^2
// ============================================================================================

TEST_CASE("relu2: hand values; finite differences away from the kink; in place") {
    Vec x = {-1, 0, 3, 0.5}, y(4, NaN);
    relu2_forward(y.data(), x.data(), 4);
    CHECK(y[0] == 0); CHECK(y[1] == 0); CHECK(y[2] == 9); CHECK(y[3] == 0.25);
    llmc::Rng rng(13, 1);
    const long n = 53;
    Vec xs = randn(rng, n), R = randn(rng, n), out(n);
    for (auto& v : xs) if (std::fabs(v) < 0.05) v = v < 0 ? -0.05 - std::fabs(v) : 0.05 + v;  // keep 4h away from 0
    auto loss = [&]() { relu2_forward(out.data(), xs.data(), n); return dot(out, R); };
    Vec dx(n, NaN);
    relu2_backward(dx.data(), R.data(), xs.data(), n);
    gradcheck("relu2 dx", xs, dx, loss);
    Vec g = R;
    relu2_backward(g.data(), g.data(), xs.data(), n);
    for (long i = 0; i < n; i++) CHECK(g[i] == dx[i]);
}

// ============================================================================================
// residual, lambdas, backout
// ============================================================================================

TEST_CASE("residual and lambdas forward: hand values, aliasing") {
    Vec a = {1, 2, 3}, b = {10, 20, 30}, out(3, NaN);
    residual_forward(out.data(), a.data(), b.data(), 3);
    CHECK(out[0] == 11); CHECK(out[1] == 22); CHECK(out[2] == 33);
    residual_forward(a.data(), a.data(), b.data(), 3);  // in place on a
    CHECK(a[0] == 11); CHECK(a[2] == 33);
    Vec x = {1, -2}, x0 = {4, 8}, o(2, NaN);
    lambdas_forward(o.data(), x.data(), x0.data(), 0.5, 0.25, 2);
    CHECK(o[0] == 1.5); CHECK(o[1] == 1.0);
}

TEST_CASE("lambdas backward: finite differences for x, x0, alpha, beta; accumulation; in place") {
    llmc::Rng rng(14, 1);
    const long n = 37;
    Vec x = randn(rng, n), x0 = randn(rng, n), R = randn(rng, n), out(n), ab = {0.7, -0.4};
    auto loss = [&]() { lambdas_forward(out.data(), x.data(), x0.data(), ab[0], ab[1], n); return dot(out, R); };
    Vec dx(n, NaN), dx0(n, 0.0), dab = {0.0, 0.0};
    lambdas_backward(dx.data(), dx0.data(), &dab[0], &dab[1], R.data(), x.data(), x0.data(), ab[0], ab[1], n);
    gradcheck("lambdas dx", x, dx, loss);
    gradcheck("lambdas dx0", x0, dx0, loss);
    gradcheck("lambdas dalpha,dbeta", ab, dab, loss);
    // accumulation of dx0, dalpha, dbeta (twice on a random start); dx in place over dout
    Vec s0 = randn(rng, n), acc0 = s0, sab = {0.3, -1.1}, accab = sab;
    Vec g1 = R, g2 = R;
    lambdas_backward(g1.data(), acc0.data(), &accab[0], &accab[1], g1.data(), x.data(), x0.data(), ab[0], ab[1], n);
    lambdas_backward(g2.data(), acc0.data(), &accab[0], &accab[1], g2.data(), x.data(), x0.data(), ab[0], ab[1], n);
    for (long i = 0; i < n; i++) {
        CHECK(g1[i] == dx[i]);
        CHECK(acc0[i] == doctest::Approx(s0[i] + 2 * dx0[i]).epsilon(1e-12));
    }
    CHECK(accab[0] == doctest::Approx(sab[0] + 2 * dab[0]).epsilon(1e-12));
    CHECK(accab[1] == doctest::Approx(sab[1] + 2 * dab[1]).epsilon(1e-12));
}

TEST_CASE("backout: hand values, finite differences, accumulation") {
    Vec x = {1, 2}, xm = {4, -2}, o(2, NaN);
    backout_forward(o.data(), x.data(), xm.data(), 0.5, 2);
    CHECK(o[0] == -1); CHECK(o[1] == 3);
    llmc::Rng rng(15, 1);
    const long n = 29;
    Vec xs = randn(rng, n), xmid = randn(rng, n), R = randn(rng, n), out(n), lam = {0.3};
    auto loss = [&]() { backout_forward(out.data(), xs.data(), xmid.data(), lam[0], n); return dot(out, R); };
    Vec dxmid(n, 0.0), dlam = {0.0};
    backout_backward(dxmid.data(), &dlam[0], R.data(), xmid.data(), lam[0], n);
    gradcheck("backout dxmid", xmid, dxmid, loss);
    gradcheck("backout dlambda", lam, dlam, loss);
    Vec s = randn(rng, n), acc = s;
    double l0 = 0.25, lacc = l0;
    backout_backward(acc.data(), &lacc, R.data(), xmid.data(), lam[0], n);
    backout_backward(acc.data(), &lacc, R.data(), xmid.data(), lam[0], n);
    for (long i = 0; i < n; i++) CHECK(acc[i] == doctest::Approx(s[i] + 2 * dxmid[i]).epsilon(1e-12));
    CHECK(lacc == doctest::Approx(l0 + 2 * dlam[0]).epsilon(1e-12));
}

// ============================================================================================
// smear
// ============================================================================================

TEST_CASE("smear forward: hand values with a zero gate weight") {
    // w = 0 -> a = 0, sigmoid = 1/2, g = lambda/2: x_t = e_t + (lambda/2) e_{t-1}, x_0 = e_0
    const int B = 2, T = 3, C = 24;
    llmc::Rng rng(16, 1);
    Vec e = randn(rng, B * T * C), w(24, 0.0), out(B * T * C, NaN);
    smear_forward(out.data(), e.data(), w.data(), 0.6, B, T, C);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++) {
                long i = ((long)b * T + t) * C + c;
                double expect = t == 0 ? e[i] : e[i] + 0.3 * e[i - C];  // previous token of the same row only
                CHECK(out[i] == doctest::Approx(expect).epsilon(1e-15));
            }
    Vec small(2 * 20);
    CHECK_THROWS_WITH_AS(smear_forward(small.data(), small.data(), w.data(), 0.6, 1, 2, 20), doctest::Contains("24"), llmc::Error);
}

TEST_CASE("smear backward: finite differences for e, w, lambda; accumulation") {
    llmc::Rng rng(17, 1);
    const int B = 2, T = 5, C = 27;
    const int n = B * T * C;
    Vec e = randn(rng, n), w = randn(rng, 24, 0.3), lam = {0.8}, R = randn(rng, n), out(n);
    auto loss = [&]() { smear_forward(out.data(), e.data(), w.data(), lam[0], B, T, C); return dot(out, R); };
    Vec de(n, NaN), dw(24, 0.0), dlam = {0.0};
    smear_backward(de.data(), dw.data(), &dlam[0], R.data(), e.data(), w.data(), lam[0], B, T, C);
    gradcheck("smear de", e, de, loss);
    gradcheck("smear dw", w, dw, loss);
    gradcheck("smear dlambda", lam, dlam, loss);
    Vec ws = randn(rng, 24), wacc = ws, de2(n, NaN);
    double l0 = -0.5, lacc = l0;
    smear_backward(de2.data(), wacc.data(), &lacc, R.data(), e.data(), w.data(), lam[0], B, T, C);
    smear_backward(de2.data(), wacc.data(), &lacc, R.data(), e.data(), w.data(), lam[0], B, T, C);
    for (int c = 0; c < 24; c++) CHECK(wacc[c] == doctest::Approx(ws[c] + 2 * dw[c]).epsilon(1e-12));
    CHECK(lacc == doctest::Approx(l0 + 2 * dlam[0]).epsilon(1e-12));
    for (int i = 0; i < n; i++) CHECK(de2[i] == de[i]);  // de overwrites
}

// ============================================================================================
// value-embedding gate
// ============================================================================================

TEST_CASE("ve_gate forward: hand values with a zero gate (gamma = 1.5)") {
    const int N = 3, C = 12, Hkv = 2, D = 2;
    Vec u(N * C, 0.7), ve = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, wg(Hkv * 12, 0.0);
    Vec v(N * Hkv * D, 1.0), gamma(N * Hkv, NaN);
    ve_gate_forward(v.data(), gamma.data(), u.data(), ve.data(), wg.data(), N, C, Hkv, D);
    for (int i = 0; i < N * Hkv; i++) CHECK(gamma[i] == 1.5);
    for (int i = 0; i < N * Hkv * D; i++) CHECK(v[i] == doctest::Approx(1.0 + 1.5 * ve[i]).epsilon(1e-15));
}

TEST_CASE("ve_gate backward: finite differences for u, ve, wg; accumulation") {
    llmc::Rng rng(18, 1);
    const int N = 5, C = 14, Hkv = 2, D = 3;
    const int KV = Hkv * D;
    Vec u = randn(rng, N * C), ve = randn(rng, N * KV), wg = randn(rng, Hkv * 12, 0.5), v0 = randn(rng, N * KV);
    Vec R = randn(rng, N * KV), v(N * KV), gamma(N * Hkv);
    auto loss = [&]() { v = v0; ve_gate_forward(v.data(), gamma.data(), u.data(), ve.data(), wg.data(), N, C, Hkv, D); return dot(v, R); };
    loss();
    Vec du(N * C, 0.0), dve(N * KV, NaN), dwg(Hkv * 12, 0.0);
    ve_gate_backward(du.data(), dve.data(), dwg.data(), R.data(), u.data(), ve.data(), gamma.data(), wg.data(), N, C, Hkv, D);
    gradcheck("ve_gate du", u, du, loss);
    gradcheck("ve_gate dve", ve, dve, loss);
    gradcheck("ve_gate dwg", wg, dwg, loss);
    for (int n = 0; n < N; n++) for (int c = 12; c < C; c++) CHECK(du[n * C + c] == 0.0);  // gate reads 12 channels
    Vec us = randn(rng, N * C), uacc = us, ws = randn(rng, Hkv * 12), wacc = ws, dve2(N * KV, NaN);
    ve_gate_backward(uacc.data(), dve2.data(), wacc.data(), R.data(), u.data(), ve.data(), gamma.data(), wg.data(), N, C, Hkv, D);
    ve_gate_backward(uacc.data(), dve2.data(), wacc.data(), R.data(), u.data(), ve.data(), gamma.data(), wg.data(), N, C, Hkv, D);
    for (int i = 0; i < N * C; i++) CHECK(uacc[i] == doctest::Approx(us[i] + 2 * du[i]).epsilon(1e-12));
    for (int i = 0; i < Hkv * 12; i++) CHECK(wacc[i] == doctest::Approx(ws[i] + 2 * dwg[i]).epsilon(1e-12));
    for (int i = 0; i < N * KV; i++) CHECK(dve2[i] == dve[i]);
}

// ============================================================================================
// matmul, float fast path vs a double reference; determinism
// ============================================================================================

// C (=|+=) A·B in double with the test's own loops, plus the error bound of any fp32 evaluation:
// for an fp32 result of c0 + sum_k a_k b_k, in ANY summation order (blocked, FMA or not),
//     |fl - exact| <= gamma_{K+1} (|c0| + sum_k |a_k b_k|),  gamma_n = n u / (1 - n u), u = 2^-24
// (Higham, Accuracy and Stability of Numerical Algorithms, section 3.1). The test asserts this rigorous
// bound per element. It is loose for random data, but a missing or doubled term (error ~ the
// size of one product, ~sum/K) would still exceed it by more than 10x for the K used here.
struct MatmulCheck {
    double worst_ratio = 0;  // max over elements of |err| / bound
    bool finite = true;
    void add(double got, double exact, double absum, int K) {
        const double u = std::ldexp(1.0, -24);
        double gamma = (K + 1) * u / (1 - (K + 1) * u);
        double bound = gamma * absum + 1e-30;
        if (!std::isfinite(got)) finite = false;
        worst_ratio = std::max(worst_ratio, std::fabs(got - exact) / bound);
    }
};

static void check_matmul_float(int N, int IC, int OC, uint64_t seed) {
    CAPTURE(N); CAPTURE(IC); CAPTURE(OC);
    llmc::Rng rng(seed, 2);
    VecF inp = to_float(randn(rng, (size_t)N * IC)), W = to_float(randn(rng, (size_t)OC * IC));
    VecF dout = to_float(randn(rng, (size_t)N * OC));
    VecF dinp0 = to_float(randn(rng, (size_t)N * IC)), dW0 = to_float(randn(rng, (size_t)OC * IC));
    // forward, "=": poisoned output
    VecF out((size_t)N * OC, NAN);
    matmul_forward(out.data(), inp.data(), W.data(), N, IC, OC);
    MatmulCheck cf;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double e = 0, a = 0;
            for (int k = 0; k < IC; k++) { double t = (double)inp[(size_t)n * IC + k] * W[(size_t)o * IC + k]; e += t; a += std::fabs(t); }
            cf.add(out[(size_t)n * OC + o], e, a, IC);
        }
    // backward, "+=": start from random values, both products in one call, then a second call.
    // Exact increments e (sum of products) and their absolute sums a, in double:
    Vec ei((size_t)N * IC, 0.0), ai((size_t)N * IC, 0.0), ew((size_t)OC * IC, 0.0), aw((size_t)OC * IC, 0.0);
    for (int n = 0; n < N; n++)
        for (int k = 0; k < IC; k++)
            for (int o = 0; o < OC; o++) {
                double t = (double)dout[(size_t)n * OC + o] * W[(size_t)o * IC + k];
                ei[(size_t)n * IC + k] += t; ai[(size_t)n * IC + k] += std::fabs(t);
            }
    for (int o = 0; o < OC; o++)
        for (int k = 0; k < IC; k++)
            for (int n = 0; n < N; n++) {
                double t = (double)dout[(size_t)n * OC + o] * inp[(size_t)n * IC + k];
                ew[(size_t)o * IC + k] += t; aw[(size_t)o * IC + k] += std::fabs(t);
            }
    VecF dinp = dinp0, dW = dW0;
    matmul_backward(dinp.data(), dW.data(), dout.data(), inp.data(), W.data(), N, IC, OC);
    MatmulCheck ci, cw;
    for (size_t i = 0; i < dinp.size(); i++) ci.add(dinp[i], dinp0[i] + ei[i], std::fabs(dinp0[i]) + ai[i], OC);
    for (size_t i = 0; i < dW.size(); i++) cw.add(dW[i], dW0[i] + ew[i], std::fabs(dW0[i]) + aw[i], N);
    // second call: c0 + 2 * product, i.e. a sum of 2K+1 terms, within gamma_{2K+1}
    matmul_backward(dinp.data(), dW.data(), dout.data(), inp.data(), W.data(), N, IC, OC);
    MatmulCheck ci2, cw2;
    for (size_t i = 0; i < dinp.size(); i++) ci2.add(dinp[i], dinp0[i] + 2 * ei[i], std::fabs(dinp0[i]) + 2 * ai[i], 2 * OC);
    for (size_t i = 0; i < dW.size(); i++) cw2.add(dW[i], dW0[i] + 2 * ew[i], std::fabs(dW0[i]) + 2 * aw[i], 2 * N);
    MESSAGE("matmul fp32 N=" << N << " IC=" << IC << " OC=" << OC << ": max err/bound forward " << cf.worst_ratio
            << ", dinp " << ci.worst_ratio << " (twice " << ci2.worst_ratio << "), dweight " << cw.worst_ratio
            << " (twice " << cw2.worst_ratio << ")");
    CHECK(cf.finite); CHECK(ci.finite); CHECK(cw.finite);
    CHECK(cf.worst_ratio <= 1.0);
    CHECK(ci.worst_ratio <= 1.0);
    CHECK(cw.worst_ratio <= 1.0);
    CHECK(ci2.worst_ratio <= 1.0);
    CHECK(cw2.worst_ratio <= 1.0);
}

TEST_CASE("matmul float (blocked path) vs double reference: odd shapes, blocking multiples, accumulation") {
    INFO("micro-tile " << MM_MR << "x" << MM_NR << ", KC " << MM_KC << ", MC " << MM_MC);
    check_matmul_float(37, 53, 71, 1);                                   // odd, tiny (single thread)
    check_matmul_float(2 * MM_MC, 2 * MM_KC, 2 * MM_NR, 2);              // exact multiples of every block
    check_matmul_float(MM_MR, MM_KC, MM_NR, 3);                          // exactly one micro-tile, one depth block
    check_matmul_float(MM_MC + 1, MM_KC + 1, MM_NR + 1, 4);              // one past each block
    check_matmul_float(203, 269, 181, 5);                                // odd, big enough for threads
    check_matmul_float(20, 300, 1000, 6);                                // few rows: columns split across threads
    check_matmul_float(1, 64, 7, 7);                                     // a single row
    // several column chunks (NC), row groups and depth blocks, in both "shared" orientations:
    // forward/dweight share A (N < OC) or B, dinp the other
    check_matmul_float(600, 300, 700, 8);
    check_matmul_float(700, 600, 300, 9);
}

TEST_CASE("matmul float: bitwise the same for 1 and 2 threads (forward, dinp, dweight)") {
#ifdef _OPENMP
    struct Shape { int N, IC, OC; };
    for (Shape s : {Shape{203, 269, 181}, Shape{20, 300, 1000}, Shape{1000, 40, 24}, Shape{600, 300, 700}}) {
        CAPTURE(s.N); CAPTURE(s.IC); CAPTURE(s.OC);
        llmc::Rng rng(21, 2);
        VecF inp = to_float(randn(rng, (size_t)s.N * s.IC)), W = to_float(randn(rng, (size_t)s.OC * s.IC));
        VecF dout = to_float(randn(rng, (size_t)s.N * s.OC)), dW0 = to_float(randn(rng, (size_t)s.OC * s.IC));
        VecF dinp0 = to_float(randn(rng, (size_t)s.N * s.IC));
        VecF o1((size_t)s.N * s.OC), o2 = o1, di1 = dinp0, di2 = dinp0, dw1 = dW0, dw2 = dW0;
        int saved = omp_get_max_threads();
        omp_set_num_threads(1);
        matmul_forward(o1.data(), inp.data(), W.data(), s.N, s.IC, s.OC);
        matmul_backward(di1.data(), dw1.data(), dout.data(), inp.data(), W.data(), s.N, s.IC, s.OC);
        omp_set_num_threads(2);
        matmul_forward(o2.data(), inp.data(), W.data(), s.N, s.IC, s.OC);
        matmul_backward(di2.data(), dw2.data(), dout.data(), inp.data(), W.data(), s.N, s.IC, s.OC);
        omp_set_num_threads(saved);
        CHECK(std::memcmp(o1.data(), o2.data(), o1.size() * sizeof(float)) == 0);
        CHECK(std::memcmp(di1.data(), di2.data(), di1.size() * sizeof(float)) == 0);
        CHECK(std::memcmp(dw1.data(), dw2.data(), dw1.size() * sizeof(float)) == 0);
    }
#else
    MESSAGE("built without OpenMP");
    CHECK(true);
#endif
}

// ============================================================================================
// determinism of the other parameter-gradient sums and of attention's backward
// ============================================================================================

TEST_CASE("scalar/gate parameter gradients and attention backward: bitwise the same for 1 and 2 threads") {
#ifdef _OPENMP
    llmc::Rng rng(22, 2);
    const int B = 3, T = 67, C = 40, Hkv = 2, D = 8, H = 4;
    const long n = (long)B * T * C;
    VecF x = to_float(randn(rng, n)), x0 = to_float(randn(rng, n)), g = to_float(randn(rng, n));
    VecF w = to_float(randn(rng, 24, 0.3)), wg = to_float(randn(rng, Hkv * 12, 0.3));
    VecF ve = to_float(randn(rng, (size_t)B * T * Hkv * D)), gv = to_float(randn(rng, (size_t)B * T * Hkv * D));
    VecF q = to_float(randn(rng, (size_t)B * T * H * D)), k = to_float(randn(rng, (size_t)B * T * Hkv * D));
    VecF v = to_float(randn(rng, (size_t)B * T * Hkv * D)), go = to_float(randn(rng, (size_t)B * T * H * D));
    auto run_all = [&]() {
        VecF r;
        VecF dx(n), dx0(n, 0.0f);
        float da = 0, db = 0;
        lambdas_backward(dx.data(), dx0.data(), &da, &db, g.data(), x.data(), x0.data(), 0.9f, 0.2f, n);
        r.push_back(da); r.push_back(db);
        VecF dxm(n, 0.0f);
        float dl = 0;
        backout_backward(dxm.data(), &dl, g.data(), x.data(), 0.4f, n);
        r.push_back(dl);
        VecF de(n), dw(24, 0.0f);
        float dls = 0;
        smear_backward(de.data(), dw.data(), &dls, g.data(), x.data(), w.data(), 0.7f, B, T, C);
        r.insert(r.end(), dw.begin(), dw.end()); r.push_back(dls);
        VecF u = x, gamma((size_t)B * T * Hkv), vv = v, du((size_t)n, 0.0f), dve(ve.size()), dwg(Hkv * 12, 0.0f);
        ve_gate_forward(vv.data(), gamma.data(), u.data(), ve.data(), wg.data(), B * T, C, Hkv, D);
        ve_gate_backward(du.data(), dve.data(), dwg.data(), gv.data(), u.data(), ve.data(), gamma.data(), wg.data(), B * T, C, Hkv, D);
        r.insert(r.end(), dwg.begin(), dwg.end());
        VecF out(q.size()), lse((size_t)B * H * T), dq(q.size()), dk(k.size()), dv(v.size());
        attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D, 9);
        attention_backward(dq.data(), dk.data(), dv.data(), go.data(), out.data(), lse.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D, 9);
        r.insert(r.end(), dq.begin(), dq.end()); r.insert(r.end(), dk.begin(), dk.end()); r.insert(r.end(), dv.begin(), dv.end());
        return r;
    };
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    VecF r1 = run_all();
    omp_set_num_threads(2);
    VecF r2 = run_all();
    omp_set_num_threads(saved);
    REQUIRE(r1.size() == r2.size());
    CHECK(std::memcmp(r1.data(), r2.data(), r1.size() * sizeof(float)) == 0);
#else
    MESSAGE("built without OpenMP");
    CHECK(true);
#endif
}

// ============================================================================================
// float instantiations (what the trainer runs) agree with double
// ============================================================================================

TEST_CASE("softcap's float tanh: within 4 * 2^-24 relative of tanh in double") {
    // relative error over [-10, 10] (x = l / softcap), dense around the 0.55 switch point, and at 0
    double worst = 0, worst_x = 0;
    for (int i = -200000; i <= 200000; i++) {
        float x = 10.0f * (float)i / 200000.0f;
        double ref = std::tanh((double)x);
        double got = cpu_tanh_<float>(x);
        double err = ref == 0 ? std::fabs(got) : std::fabs(got - ref) / std::fabs(ref);
        if (err > worst) { worst = err; worst_x = x; }
    }
    for (int i = -1000; i <= 1000; i++) {
        float x = 0.55f + 1e-6f * i;
        double ref = std::tanh((double)x), got = cpu_tanh_<float>(x);
        worst = std::max(worst, std::fabs(got - ref) / ref);
    }
    MESSAGE("cpu_tanh_<float> max relative error " << worst << " at x = " << worst_x);
    CHECK(worst <= 4 * std::ldexp(1.0, -24));
    CHECK(cpu_tanh_<float>(0.0f) == 0.0f);
    CHECK(cpu_tanh_<float>(1e-20f) == 1e-20f);
    CHECK(cpu_tanh_<float>(-50.0f) == -1.0f);
}

TEST_CASE("attention's float exp: within 3 ulp of exp in double over the softmax range") {
    // the softmax only evaluates exp at arguments <= ~0 (s - max, s - lse); values below
    // exp(-87.3) (denormals) flush to 0
    double worst = 0;
    for (int i = 0; i <= 200000; i++) {
        float x = -87.0f + 88.0f * (float)i / 200000.0f;  // [-87, 1]
        double ref = std::exp((double)x);
        double got = cpu_exp_<float>(x);
        worst = std::max(worst, std::fabs(got - ref) / ref);
    }
    MESSAGE("cpu_exp_<float> max relative error " << worst << " (ulp = 2^-23 = 1.19e-7 relative at most)");
    CHECK(worst <= 3 * std::ldexp(1.0, -23));
    CHECK(cpu_exp_<float>(-100.0f) == 0.0f);
    CHECK(cpu_exp_<float>(0.0f) == 1.0f);
}

// Relative agreement of a float result with the double one: max |f - d| / max |d| over the
// tensor. Every op below does O(1..C) fp32 operations per element on O(1) data (sums over
// C <= 64 values accumulate in double), so errors are a few ulps: 2e-6 leaves >10x margin.
static double frel(const VecF& f, const Vec& d) {
    double md = 0, mx = 0;
    for (size_t i = 0; i < d.size(); i++) { md = std::max(md, std::fabs((double)f[i] - d[i])); mx = std::max(mx, std::fabs(d[i])); }
    return mx > 0 ? md / mx : md;
}

TEST_CASE("float ops agree with double: rmsnorm, qknorm, rope, relu2, lambdas, backout, smear, ve_gate, embedding") {
    llmc::Rng rng(30, 3);
    const int B = 2, T = 9, C = 40, NH = 4, D = 10, Hkv = 2, Dv = 4;
    const int N = B * T, n = N * C;
    Vec x = randn(rng, n), x0 = randn(rng, n), g = randn(rng, n);
    VecF xf = to_float(x), x0f = to_float(x0), gf = to_float(g);
    const double tol = 2e-6;
    {   // rmsnorm
        Vec o(n), r(N), dx(n, 0.0); VecF of(n), rf(N), dxf(n, 0.0f);
        rmsnorm_forward(o.data(), r.data(), x.data(), N, C); rmsnorm_backward(dx.data(), g.data(), o.data(), r.data(), N, C);
        rmsnorm_forward(of.data(), rf.data(), xf.data(), N, C); rmsnorm_backward(dxf.data(), gf.data(), of.data(), rf.data(), N, C);
        CHECK(frel(of, o) <= tol); CHECK(frel(rf, r) <= tol); CHECK(frel(dxf, dx) <= tol);
    }
    {   // qknorm, rope (rows of D)
        const int rows = n / D;
        Vec o(n), r(rows), dx(n); VecF of(n), rf(rows), dxf(n);
        qknorm_forward(o.data(), r.data(), x.data(), rows, D); qknorm_backward(dx.data(), g.data(), o.data(), r.data(), rows, D);
        qknorm_forward(of.data(), rf.data(), xf.data(), rows, D); qknorm_backward(dxf.data(), gf.data(), of.data(), rf.data(), rows, D);
        CHECK(frel(of, o) <= tol); CHECK(frel(dxf, dx) <= tol);
        VecF cs(64 * D / 2), sn(64 * D / 2);
        rope_table(cs.data(), sn.data(), 64, D, 100000.0);
        rope_forward(o.data(), x.data(), cs.data(), sn.data(), B, T, NH, D, 7); rope_backward(dx.data(), g.data(), cs.data(), sn.data(), B, T, NH, D, 7);
        rope_forward(of.data(), xf.data(), cs.data(), sn.data(), B, T, NH, D, 7); rope_backward(dxf.data(), gf.data(), cs.data(), sn.data(), B, T, NH, D, 7);
        CHECK(frel(of, o) <= tol); CHECK(frel(dxf, dx) <= tol);
    }
    {   // relu2, lambdas, backout
        Vec o(n), dx(n), dx0(n, 0.0), da = {0, 0}; VecF of(n), dxf(n), dx0f(n, 0.0f), daf = {0, 0};
        relu2_forward(o.data(), x.data(), n); relu2_backward(dx.data(), g.data(), x.data(), n);
        relu2_forward(of.data(), xf.data(), n); relu2_backward(dxf.data(), gf.data(), xf.data(), n);
        CHECK(frel(of, o) <= tol); CHECK(frel(dxf, dx) <= tol);
        lambdas_forward(o.data(), x.data(), x0.data(), 0.8, 0.3, n);
        lambdas_backward(dx.data(), dx0.data(), &da[0], &da[1], g.data(), x.data(), x0.data(), 0.8, 0.3, n);
        lambdas_forward(of.data(), xf.data(), x0f.data(), 0.8f, 0.3f, n);
        lambdas_backward(dxf.data(), dx0f.data(), &daf[0], &daf[1], gf.data(), xf.data(), x0f.data(), 0.8f, 0.3f, n);
        CHECK(frel(of, o) <= tol); CHECK(frel(dxf, dx) <= tol); CHECK(frel(dx0f, dx0) <= tol); CHECK(frel(daf, da) <= tol);
        Vec dl = {0}; VecF dlf = {0};
        Vec dm(n, 0.0); VecF dmf(n, 0.0f);
        backout_forward(o.data(), x.data(), x0.data(), 0.6, n); backout_backward(dm.data(), &dl[0], g.data(), x0.data(), 0.6, n);
        backout_forward(of.data(), xf.data(), x0f.data(), 0.6f, n); backout_backward(dmf.data(), &dlf[0], gf.data(), x0f.data(), 0.6f, n);
        CHECK(frel(of, o) <= tol); CHECK(frel(dmf, dm) <= tol); CHECK(frel(dlf, dl) <= tol);
    }
    {   // smear
        Vec w = randn(rng, 24, 0.3), o(n), de(n), dw(24, 0.0), dl = {0};
        VecF wf = to_float(w), of(n), def(n), dwf(24, 0.0f), dlf = {0};
        smear_forward(o.data(), x.data(), w.data(), 0.7, B, T, C); smear_backward(de.data(), dw.data(), &dl[0], g.data(), x.data(), w.data(), 0.7, B, T, C);
        smear_forward(of.data(), xf.data(), wf.data(), 0.7f, B, T, C); smear_backward(def.data(), dwf.data(), &dlf[0], gf.data(), xf.data(), wf.data(), 0.7f, B, T, C);
        CHECK(frel(of, o) <= tol); CHECK(frel(def, de) <= tol); CHECK(frel(dwf, dw) <= tol); CHECK(frel(dlf, dl) <= tol);
    }
    {   // ve_gate
        const int KV = Hkv * Dv;
        Vec ve = randn(rng, N * KV), v0 = randn(rng, N * KV), wg = randn(rng, Hkv * 12, 0.3), gv = randn(rng, N * KV);
        Vec v = v0, gam(N * Hkv), du(n, 0.0), dve(N * KV), dwg(Hkv * 12, 0.0);
        VecF vef = to_float(ve), vf = to_float(v0), wgf = to_float(wg), gvf = to_float(gv), gamf(N * Hkv), duf(n, 0.0f), dvef(N * KV), dwgf(Hkv * 12, 0.0f);
        ve_gate_forward(v.data(), gam.data(), x.data(), ve.data(), wg.data(), N, C, Hkv, Dv);
        ve_gate_backward(du.data(), dve.data(), dwg.data(), gv.data(), x.data(), ve.data(), gam.data(), wg.data(), N, C, Hkv, Dv);
        ve_gate_forward(vf.data(), gamf.data(), xf.data(), vef.data(), wgf.data(), N, C, Hkv, Dv);
        ve_gate_backward(duf.data(), dvef.data(), dwgf.data(), gvf.data(), xf.data(), vef.data(), gamf.data(), wgf.data(), N, C, Hkv, Dv);
        CHECK(frel(vf, v) <= tol); CHECK(frel(gamf, gam) <= tol); CHECK(frel(duf, du) <= tol);
        CHECK(frel(dvef, dve) <= tol); CHECK(frel(dwgf, dwg) <= tol);
    }
    {   // embedding
        std::vector<int> idx(N);
        for (auto& i : idx) i = (int)rng.below(7);
        Vec tab = randn(rng, 7 * C), o(n), dt(7 * C, 0.0); VecF tabf = to_float(tab), of(n), dtf(7 * C, 0.0f);
        embedding_forward(o.data(), idx.data(), tab.data(), N, C); embedding_backward(dt.data(), g.data(), idx.data(), N, C);
        embedding_forward(of.data(), idx.data(), tabf.data(), N, C); embedding_backward(dtf.data(), gf.data(), idx.data(), N, C);
        CHECK(frel(of, o) <= tol); CHECK(frel(dtf, dt) <= tol);  // (the float table is the rounded double one)
    }
}
