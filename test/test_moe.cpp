// test_moe.cpp: the CPU reference of the mixture-of-experts FFN (llmc/cpu/moe.h, docs/moe.md).
//
// What is checked:
//  * M1: central finite differences (5-point stencil, double) of the whole layer, L = <out, R> +
//    daux * L_bal, against moe_backward: dW_g, du, dW1, dW2, dW3, the shared expert; ReLU² and
//    SwiGLU, rho = 2.5, alpha > 0 over 2 rows, with and without group-limited routing. The layer is
//    piecewise smooth (top-K, the group choice, the aux loss's own top-K and relu are kinks or
//    jumps), so inputs are drawn until every such decision has a margin of at least MARGIN from its
//    threshold, the margin is checked, and every perturbed forward is checked to take the same
//    decisions (idx, f, relu signs) as the unperturbed one. Error measure and tolerance as in
//    test_ops.cpp: rel = |a - b| / max(|a|, |b|, 1e-3 * max|b|, 1e-9) <= 1e-6.
//  * every formula of the backward (docs/moe.md#backward): the a-trick identity a_r = <dout_t,
//    FFN_e(u_t)>, the gate backward through M1 and, alone, the aux-loss gradient; silu' by
//    finite differences; the claim that a balanced router gives L_bal = alpha.
//  * the sorted per-expert path equals the per-token definition moe_forward_literal (double,
//    <= 1e-12 relative; idx and g exactly), on random, grouped and adversarial routings.
//  * M3 dispatch invariants, M4 zero-token experts (and a Muon step on their zero gradient),
//    M5 the tie rule, M6 the balancing bias (hand-computed over 3 steps of 2 micro-batches, ties,
//    two ranks vs one, eval), M8 the metrics on hand-made inputs.
//  * fp32 (the trainer's type) against fp64 with the same routing, bitwise 1- vs 2-thread
//    determinism, bad configurations and bad idx_override throw.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "llmc/rng.h"
#include "llmc/utils.h"
#include "llmc/muon.h"
#include "llmc/cpu/moe.h"

#include "test/op_test_util.h"

// ---- a layer with its own buffers ----

template <typename Real>
struct Layer {
    MoeConfig c;
    int B, T;
    long N;
    std::vector<Real> router, bias, w1, w3, w2, s1, s3, s2;
    std::vector<Real> drouter, dw1, dw3, dw2, ds1, ds3, ds2;
    std::vector<Real> sreal, work, out, du;
    std::vector<int> sint;
    MoeSaved<Real> sv;

    Layer(const MoeConfig& cfg, int B_, int T_) : c(cfg), B(B_), T(T_), N((long)B_ * T_) {
        const size_t E = c.E, C = c.C, F = c.F, Fs = c.Fs;
        router.assign(E * C, 0); bias.assign(E, 0);
        w1.assign(E * F * C, 0); w3.assign(c.swiglu ? E * F * C : 0, 0); w2.assign(E * C * F, 0);
        s1.assign(Fs * C, 0); s3.assign(c.swiglu ? Fs * C : 0, 0); s2.assign(C * Fs, 0);
        MoeSavedSize z = moe_saved_numel(c, B, T);
        sreal.assign(z.real, (Real)NaN);  // poisoned: an element the forward forgets to write shows
        sint.assign(z.ints, -1);
        sv = moe_saved_bind(c, B, T, sreal.data(), sint.data());
        work.assign(moe_workspace_numel(c, B, T), (Real)NaN);
        out.assign(N * C, (Real)NaN);
        du.assign(N * C, (Real)NaN);
        zero_grads();
    }
    void zero_grads() {
        drouter.assign(router.size(), 0); dw1.assign(w1.size(), 0); dw3.assign(w3.size(), 0); dw2.assign(w2.size(), 0);
        ds1.assign(s1.size(), 0); ds3.assign(s3.size(), 0); ds2.assign(s2.size(), 0);
    }
    static const Real* p(const std::vector<Real>& v) { return v.empty() ? nullptr : v.data(); }
    static Real* p(std::vector<Real>& v) { return v.empty() ? nullptr : v.data(); }
    MoeWeights<Real> weights() const {
        MoeWeights<Real> w;
        w.router = p(router); w.bias = p(bias); w.w1 = p(w1); w.w3 = p(w3); w.w2 = p(w2);
        w.s1 = p(s1); w.s3 = p(s3); w.s2 = p(s2);
        return w;
    }
    MoeGrads<Real> grads() {
        MoeGrads<Real> g;
        g.router = p(drouter); g.w1 = p(dw1); g.w3 = p(dw3); g.w2 = p(dw2); g.s1 = p(ds1); g.s3 = p(ds3); g.s2 = p(ds2);
        return g;
    }
    double forward(const Real* u, int64_t* load = nullptr, const int* ov = nullptr) {
        return moe_forward(out.data(), sv, work.data(), u, weights(), c, B, T, load, ov);
    }
    void backward(const Real* dout, const Real* u, Real daux) {
        moe_backward(du.data(), grads(), work.data(), dout, u, weights(), sv, c, B, T, daux);
    }
    MoeWork<Real> ws() { return moe_work_bind(c, B, T, work.data()); }
    void randomize(llmc::Rng& rng, double bias_range) {
        auto fill = [&](std::vector<Real>& v, double sd) { for (auto& x : v) x = (Real)(sd * rng.normal()); };
        fill(router, 1.0 / std::sqrt((double)c.C));
        for (auto& x : bias) x = (Real)rng.uniform(-bias_range, bias_range);
        fill(w1, 1.0); fill(w3, 1.0); fill(w2, 1.0); fill(s1, 1.0); fill(s3, 1.0); fill(s2, 1.0);
    }
};

// max_i |a_i - b_i| / max_i |b_i|  (NaN anywhere gives NaN, which fails any <= check)
template <typename A, typename B>
static double rel_max_diff(const std::vector<A>& a, const std::vector<B>& b) {
    double d = 0, m = 0;
    for (size_t i = 0; i < a.size(); i++) {
        double e = std::fabs((double)a[i] - (double)b[i]);
        if (!(e <= d)) d = e;
        m = std::max(m, std::fabs((double)b[i]));
    }
    return m > 0 ? d / m : d;
}
// The 5-point stencil reaches 2h from the point: h = 1e-4 keeps that far inside the decision
// margins (MARGIN below).
static double gradcheck_moe(const std::string& what, Vec& x, const Vec& analytic, const std::function<double()>& loss) {
    return gradcheck(what, x, analytic, loss, 1e-4);
}

// ---- decision margins (independent re-derivation of the routing decisions from s and b) ----

// The smallest distance of any discrete decision of the last forward from its threshold: for
// each token the K-th vs (K+1)-th allowed key, the M-th vs (M+1)-th group score, and (alpha > 0)
// the K-th vs (K+1)-th unbiased score; and min |pre-activation| of every ReLU² input.
static double decision_margin(Layer<double>& L) {
    const MoeConfig& c = L.c;
    const int E = c.E, K = c.K;
    double m = std::numeric_limits<double>::infinity();
    auto desc = [](Vec v) { std::sort(v.begin(), v.end(), [](double a, double b) { return a > b; }); return v; };
    for (long t = 0; t < L.N; t++) {
        const double* s = L.sv.s + t * E;
        Vec key(E);
        for (int i = 0; i < E; i++) key[i] = s[i] + L.bias[i];
        std::vector<int> allowed;
        if (c.groups > 1) {
            const int G = c.groups, eg = E / G, q = K / c.topk_groups;
            Vec gs(G);
            for (int gi = 0; gi < G; gi++) {
                Vec kk = desc(Vec(key.begin() + gi * eg, key.begin() + (gi + 1) * eg));
                gs[gi] = std::accumulate(kk.begin(), kk.begin() + q, 0.0);
            }
            Vec gsd = desc(gs);
            if (c.topk_groups < G) m = std::min(m, gsd[c.topk_groups - 1] - gsd[c.topk_groups]);
            for (int gi = 0; gi < G; gi++)
                if (gs[gi] >= gsd[c.topk_groups - 1])
                    for (int i = 0; i < eg; i++) allowed.push_back(gi * eg + i);
        } else {
            for (int i = 0; i < E; i++) allowed.push_back(i);
        }
        Vec ak;
        for (int i : allowed) ak.push_back(key[i]);
        ak = desc(ak);
        if ((int)ak.size() > K) m = std::min(m, ak[K - 1] - ak[K]);
        if (c.alpha > 0 && K < E) {
            Vec sd = desc(Vec(s, s + E));
            m = std::min(m, sd[K - 1] - sd[K]);
        }
    }
    if (!c.swiglu) {
        for (long i = 0; i < L.N * K * c.F; i++) m = std::min(m, std::fabs(L.sv.h[i]));
        for (long i = 0; i < L.N * c.Fs; i++) m = std::min(m, std::fabs(L.sv.hs[i]));
    }
    return m;
}

// ============================================================================================
// M1: finite differences of the whole layer
// ============================================================================================

static const double MARGIN = 5e-3;

static void fd_check_layer(const char* name, MoeConfig c, uint64_t seed) {
    const int B = 2, T = 4;
    Layer<double> L(c, B, T);
    Vec u, R;
    // draw until every decision has a margin (the loop is deterministic: seeds in order)
    int tries = 0;
    double margin = 0;
    for (; tries < 2000; tries++) {
        llmc::Rng rng(seed, tries);
        L.randomize(rng, 0.05);
        u = randn(rng, (size_t)L.N * c.C);
        R = randn(rng, (size_t)L.N * c.C);
        L.forward(u.data());
        margin = decision_margin(L);
        if (margin >= MARGIN) break;
    }
    INFO(name);
    MESSAGE(llmc::strfmt("%s: inputs drawn %d times; smallest decision margin %.3g", name, tries + 1, margin));
    REQUIRE(margin >= MARGIN);
    const double daux = 0.7;
    L.forward(u.data());
    const std::vector<int> idx0(L.sv.idx, L.sv.idx + L.N * c.K);
    const Vec f0 = c.alpha > 0 ? Vec(L.sv.f, L.sv.f + B * c.E) : Vec();
    auto signs = [&]() {
        std::vector<char> sg;
        if (!c.swiglu) {
            for (long i = 0; i < L.N * c.K * c.F; i++) sg.push_back(L.sv.h[i] > 0);
            for (long i = 0; i < L.N * c.Fs; i++) sg.push_back(L.sv.hs[i] > 0);
        }
        return sg;
    };
    const std::vector<char> sign0 = signs();
    long changed = 0;  // perturbed forwards that took a different decision (must stay 0)
    auto loss = [&]() {
        double aux = L.forward(u.data());
        if (!std::equal(idx0.begin(), idx0.end(), L.sv.idx)) changed++;
        if (c.alpha > 0 && !std::equal(f0.begin(), f0.end(), L.sv.f)) changed++;
        if (signs() != sign0) changed++;
        return dot(L.out, R) + daux * aux;
    };
    double aux = L.forward(u.data());
    if (c.alpha > 0) CHECK(aux > 0);
    L.zero_grads();
    L.backward(R.data(), u.data(), daux);
    const Vec du = L.du, dr = L.drouter, d1 = L.dw1, d2 = L.dw2, d3 = L.dw3, ds1 = L.ds1, ds2 = L.ds2, ds3 = L.ds3;
    std::string n = name;
    gradcheck_moe(n + " du", u, du, loss);
    gradcheck_moe(n + " dW_g", L.router, dr, loss);
    gradcheck_moe(n + " dW1", L.w1, d1, loss);
    gradcheck_moe(n + " dW2", L.w2, d2, loss);
    if (c.swiglu) gradcheck_moe(n + " dW3", L.w3, d3, loss);
    if (c.Fs > 0) {
        gradcheck_moe(n + " shared dW1", L.s1, ds1, loss);
        gradcheck_moe(n + " shared dW2", L.s2, ds2, loss);
        if (c.swiglu) gradcheck_moe(n + " shared dW3", L.s3, ds3, loss);
    }
    CHECK(changed == 0);
    // parameter gradients accumulate: a second backward doubles them (same inputs)
    L.forward(u.data());
    L.backward(R.data(), u.data(), daux);
    for (size_t i = 0; i < d1.size(); i++) CHECK(L.dw1[i] == doctest::Approx(2 * d1[i]).epsilon(1e-12));
    for (size_t i = 0; i < dr.size(); i++) CHECK(L.drouter[i] == doctest::Approx(2 * dr[i]).epsilon(1e-12));
    // and du is overwritten, not accumulated
    for (size_t i = 0; i < du.size(); i++) CHECK(L.du[i] == du[i]);
}

static MoeConfig cfg(int C, int E, int K, int F, int Fs, bool swiglu, double alpha, int G = 1, int M = 1) {
    MoeConfig c;
    c.C = C; c.E = E; c.K = K; c.F = F; c.Fs = Fs; c.swiglu = swiglu; c.rho = 2.5; c.alpha = alpha;
    c.groups = G; c.topk_groups = M;
    return c;
}

TEST_CASE("M1 finite differences: ReLU², shared expert, aux loss over 2 rows, G = 1") {
    fd_check_layer("relu2 G=1", cfg(6, 6, 2, 4, 5, false, 0.5), 11);
}
TEST_CASE("M1 finite differences: SwiGLU, shared expert, aux loss over 2 rows, G = 1") {
    fd_check_layer("swiglu G=1", cfg(6, 6, 2, 4, 5, true, 0.5), 12);
}
TEST_CASE("M1 finite differences: ReLU², group-limited routing G = 4, M = 2 (top-2 of 3 per group)") {
    fd_check_layer("relu2 G=4 M=2", cfg(6, 12, 4, 3, 5, false, 0.5, 4, 2), 13);
}
TEST_CASE("M1 finite differences: SwiGLU, G = 3, M = 1, no shared expert") {
    fd_check_layer("swiglu G=3 M=1 no shared", cfg(5, 9, 2, 3, 0, true, 0.3, 3, 1), 14);
}

TEST_CASE("aux-loss gradient alone (docs/moe.md#gate-backward): L = L_bal, finite differences") {
    // dout = 0 makes every a_r zero, so dW_g and du come from the aux term alone
    MoeConfig c = cfg(5, 6, 2, 3, 0, false, 1.0);
    const int B = 2, T = 5;
    Layer<double> L(c, B, T);
    Vec u, zero((size_t)B * T * c.C, 0.0);
    double margin = 0;
    for (int tries = 0; tries < 2000; tries++) {
        llmc::Rng rng(21, tries);
        L.randomize(rng, 0.0);
        for (auto& x : L.router) x *= 3;  // sharper scores: the aux term's gradient is larger
        u = randn(rng, (size_t)L.N * c.C);
        L.forward(u.data());
        margin = decision_margin(L);
        if (margin >= MARGIN) break;
    }
    REQUIRE(margin >= MARGIN);
    auto loss = [&]() { return L.forward(u.data()); };
    L.forward(u.data());
    L.zero_grads();
    L.backward(zero.data(), u.data(), 1.0);
    CHECK(max_abs(L.drouter) > 1e-3);  // not vacuous
    for (double x : L.dw1) CHECK(x == 0.0);
    Vec dr = L.drouter, du = L.du;
    gradcheck_moe("aux only dW_g", L.router, dr, loss);
    gradcheck_moe("aux only du", u, du, loss);
}

TEST_CASE("silu' = sigmoid(x) (1 + x (1 - sigmoid(x))), and the SwiGLU product rule, by finite differences") {
    const double xs[] = {-6.0, -1.3, -0.2, 0.0, 0.4, 2.5, 7.0};
    for (double x : xs) {
        for (double x3 : {1.0, -0.7}) {
            double h = x, h3 = x3, da = 1.0, dh = NaN, dh3 = NaN;
            moe_act_backward(&dh, &dh3, &da, &h, &h3, 1, true);
            auto f = [&](double a, double b) { double o; moe_act_forward(&o, &a, &b, 1, true); return o; };
            const double e = 1e-4;
            double n1 = (8 * (f(x + e, x3) - f(x - e, x3)) - (f(x + 2 * e, x3) - f(x - 2 * e, x3))) / (12 * e);
            double n3 = (8 * (f(x, x3 + e) - f(x, x3 - e)) - (f(x, x3 + 2 * e) - f(x, x3 - 2 * e))) / (12 * e);
            CHECK(dh == doctest::Approx(n1).epsilon(1e-9));
            CHECK(dh3 == doctest::Approx(n3).epsilon(1e-9));
            const double sg = 1 / (1 + std::exp(-x));
            CHECK(dh == doctest::Approx(x3 * sg * (1 + x * (1 - sg))).epsilon(1e-14));
        }
    }
}

TEST_CASE("a-trick: a_r = <dout_t W2_e, A_r> equals <dout_t, FFN_e(u_t)> = dL/dg (docs/moe.md#a-trick)") {
    for (bool swiglu : {false, true}) {
        MoeConfig c = cfg(7, 5, 2, 6, 4, swiglu, 0.0);
        Layer<double> L(c, 2, 5);
        llmc::Rng rng(31, swiglu);
        L.randomize(rng, 0.1);
        Vec u = randn(rng, (size_t)L.N * c.C), R = randn(rng, (size_t)L.N * c.C);
        L.forward(u.data());
        L.backward(R.data(), u.data(), 0.0);
        MoeWork<double> ws = L.ws();
        // FFN_e(u_t) by plain loops, here in the test
        double worst = 0, scale = 0;
        for (long r = 0; r < L.N * c.K; r++) {
            const int p = L.sv.perm[r], t = p / c.K, e = L.sv.idx[p];
            Vec hid(c.F), y(c.C, 0.0);
            for (int j = 0; j < c.F; j++) {
                double h1 = 0, h3 = 0;
                for (int i = 0; i < c.C; i++) {
                    h1 += L.w1[((size_t)e * c.F + j) * c.C + i] * u[t * c.C + i];
                    if (swiglu) h3 += L.w3[((size_t)e * c.F + j) * c.C + i] * u[t * c.C + i];
                }
                hid[j] = swiglu ? h1 / (1 + std::exp(-h1)) * h3 : (h1 > 0 ? h1 * h1 : 0.0);
            }
            double expect = 0;
            for (int o = 0; o < c.C; o++) {
                for (int j = 0; j < c.F; j++) y[o] += L.w2[((size_t)e * c.C + o) * c.F + j] * hid[j];
                expect += R[t * c.C + o] * y[o];
            }
            worst = std::max(worst, std::fabs(ws.a[r] - expect));
            scale = std::max(scale, std::fabs(expect));
        }
        CHECK(scale > 0.1);
        CHECK(worst <= 1e-12 * scale);
    }
}

TEST_CASE("a balanced router gives L_bal = alpha (uniform scores; uniform selections)") {
    // uniform scores: W_g = 0, every s = 1/2, P_i = 1/E; the ties send every token to experts
    // 0..K-1, f_i = E/K there: sum_i f_i P_i = K (E/K)(1/E) = 1
    MoeConfig c = cfg(4, 8, 2, 3, 0, false, 1e-4);
    Layer<double> L(c, 3, 4);
    Vec u(L.N * c.C, 0.3);
    double aux = L.forward(u.data());
    CHECK(aux == doctest::Approx(1e-4).epsilon(1e-14));
    for (int b = 0; b < 3; b++)
        for (int i = 0; i < c.E; i++) CHECK(L.sv.f[b * c.E + i] == (i < c.K ? 4.0 : 0.0));
    // uniform selections: E = 4, K = 1, T = 4 tokens, token t prefers expert t; scores not uniform
    MoeConfig c2 = cfg(4, 4, 1, 3, 0, false, 0.01);
    Layer<double> L2(c2, 1, 4);
    for (int i = 0; i < 4; i++) L2.router[i * 4 + i] = 1.0;  // W_g = I: z_t = u_t
    Vec u2(16, 0.0);
    for (int t = 0; t < 4; t++) u2[t * 4 + t] = 2.0;
    aux = L2.forward(u2.data());
    for (int i = 0; i < 4; i++) CHECK(L2.sv.f[i] == 1.0);
    CHECK(aux == doctest::Approx(0.01).epsilon(1e-14));  // sum_i P_i = 1 whatever the scores
}

// ============================================================================================
// the sorted path against the per-token definition
// ============================================================================================

static void compare_literal(MoeConfig c, int B, int T, uint64_t seed, const std::vector<int>* ov = nullptr, double bias_range = 0.05,
                            const Vec* bias = nullptr) {
    Layer<double> L(c, B, T);
    llmc::Rng rng(seed, 0);
    L.randomize(rng, bias_range);
    if (bias) for (int i = 0; i < c.E; i++) L.bias[i] = (*bias)[i];
    Vec u = randn(rng, (size_t)L.N * c.C);
    const int* o = ov ? ov->data() : nullptr;
    double aux = L.forward(u.data(), nullptr, o);
    Vec out(L.N * c.C, NaN), g(L.N * c.K, NaN);
    std::vector<int> idx(L.N * c.K, -1);
    double aux_lit = moe_forward_literal(out.data(), idx.data(), g.data(), u.data(), L.weights(), c, B, T, o);
    CHECK(std::equal(idx.begin(), idx.end(), L.sv.idx));
    bool g_exact = true;
    for (size_t i = 0; i < g.size(); i++) g_exact &= g[i] == L.sv.g[i];
    CHECK(g_exact);
    double d = rel_max_diff(L.out, out);
    CHECK(d <= 1e-12);
    CHECK(aux == doctest::Approx(aux_lit).epsilon(1e-12));
    MESSAGE(llmc::strfmt("literal vs sorted (E=%d K=%d G=%d %s): max |diff| / max |out| = %.3g", c.E, c.K, c.groups,
                         c.swiglu ? "swiglu" : "relu2", d));
}

TEST_CASE("the sorted per-expert layer equals the per-token definition (fp64)") {
    compare_literal(cfg(8, 6, 2, 5, 7, false, 0.1), 3, 7, 41);
    compare_literal(cfg(8, 6, 3, 5, 7, true, 0.1), 3, 7, 42);
    compare_literal(cfg(8, 12, 4, 5, 0, false, 0.1, 4, 2), 2, 9, 43);
    compare_literal(cfg(8, 16, 2, 5, 6, true, 0.0, 8, 2), 2, 9, 44, nullptr, 0.5);  // large bias: routing far from the unbiased one
}

// ============================================================================================
// M3: dispatch invariants
// ============================================================================================

// Every invariant of docs/moe.md#dispatch, checked from idx alone.
static void check_dispatch(const MoeSaved<double>& sv, long N, int K, int E) {
    const long NK = N * K;
    std::vector<long> count(E, 0);
    for (long t = 0; t < N; t++)
        for (int k = 0; k < K; k++) {
            const int e = sv.idx[t * K + k];
            REQUIRE((e >= 0 && e < E));
            count[e]++;
            for (int j = 0; j < k; j++) CHECK(sv.idx[t * K + j] != e);  // a token's experts are distinct
        }
    long total = 0;
    CHECK(sv.off[0] == 0);
    for (int e = 0; e < E; e++) {
        CHECK(sv.cnt[e] == count[e]);
        CHECK(sv.off[e + 1] - sv.off[e] == sv.cnt[e]);
        total += sv.cnt[e];
    }
    CHECK(total == NK);
    CHECK(sv.off[E] == NK);
    std::vector<char> seen(NK, 0);
    for (long r = 0; r < NK; r++) {
        const int p = sv.perm[r];
        REQUIRE((p >= 0 && p < NK));
        CHECK(!seen[p]);
        seen[p] = 1;
        CHECK(sv.pos[p] == r);
    }
    for (int e = 0; e < E; e++)
        for (int r = sv.off[e]; r < sv.off[e + 1]; r++) {
            CHECK(sv.idx[sv.perm[r]] == e);
            if (r > sv.off[e]) CHECK(sv.perm[r] > sv.perm[r - 1]);  // stable: pair order kept
        }
}

TEST_CASE("M3 dropless dispatch invariants: random, all tokens to one expert, T*K < E") {
    // random routing
    {
        MoeConfig c = cfg(6, 8, 3, 4, 0, false, 0.0);
        Layer<double> L(c, 4, 25);
        llmc::Rng rng(51, 0);
        L.randomize(rng, 0.1);
        Vec u = randn(rng, (size_t)L.N * c.C);
        L.forward(u.data());
        check_dispatch(L.sv, L.N, c.K, c.E);
        int used = 0;
        for (int e = 0; e < c.E; e++) used += L.sv.cnt[e] > 0;
        CHECK(used == c.E);
    }
    // all tokens to one expert: a bias of 10 on expert 3 puts it in every token's first slot
    {
        MoeConfig c = cfg(6, 8, 2, 4, 3, false, 0.0);
        Vec bias(8, 0.0);
        bias[3] = 10.0;
        Layer<double> L(c, 2, 16);
        llmc::Rng rng(52, 0);
        L.randomize(rng, 0.0);
        L.bias = bias;
        Vec u = randn(rng, (size_t)L.N * c.C);
        L.forward(u.data());
        check_dispatch(L.sv, L.N, c.K, c.E);
        CHECK(L.sv.cnt[3] == L.N);
        for (long t = 0; t < L.N; t++) CHECK(L.sv.idx[t * 2] == 3);
        compare_literal(c, 2, 16, 52, nullptr, 0.0, &bias);
    }
    // the same through idx_override, K = 2: every token on experts (7, 0) in that slot order
    {
        MoeConfig c = cfg(6, 8, 2, 4, 3, true, 0.0);
        Layer<double> L(c, 1, 9);
        std::vector<int> ov;
        for (int t = 0; t < 9; t++) { ov.push_back(7); ov.push_back(0); }
        llmc::Rng rng(53, 0);
        L.randomize(rng, 0.1);
        Vec u = randn(rng, (size_t)L.N * c.C);
        L.forward(u.data(), nullptr, ov.data());
        check_dispatch(L.sv, L.N, c.K, c.E);
        CHECK(L.sv.cnt[7] == 9);
        CHECK(L.sv.cnt[0] == 9);
        CHECK(L.sv.off[1] == 9);
        compare_literal(c, 1, 9, 53, &ov, 0.1);
    }
    // T*K < E: 2 tokens, K = 2, E = 8: at least 4 experts get nothing
    {
        MoeConfig c = cfg(6, 8, 2, 4, 0, false, 0.2);
        Layer<double> L(c, 1, 2);
        llmc::Rng rng(54, 0);
        L.randomize(rng, 0.1);
        Vec u = randn(rng, (size_t)L.N * c.C), R = randn(rng, (size_t)L.N * c.C);
        L.forward(u.data());
        check_dispatch(L.sv, L.N, c.K, c.E);
        int empty = 0;
        for (int e = 0; e < c.E; e++) empty += L.sv.cnt[e] == 0;
        CHECK(empty >= 4);
        L.backward(R.data(), u.data(), 1.0);
        CHECK(all_finite(L.out));
        CHECK(all_finite(L.du));
        compare_literal(c, 1, 2, 54);
    }
}

// ============================================================================================
// M4: zero-token experts
// ============================================================================================

TEST_CASE("M4 zero-token experts contribute exactly nothing; a Muon step on their zero gradient is finite") {
    for (bool swiglu : {false, true}) {
        MoeConfig c = cfg(16, 8, 2, 12, 8, swiglu, 1e-2);
        Layer<float> L(c, 1, 3);
        llmc::Rng rng(61, swiglu);
        L.randomize(rng, 0.0);
        for (auto& x : L.w2) x *= 0.1f;
        std::vector<int> ov = {0, 1, 1, 2, 2, 0};  // experts 3..7 get no token
        std::vector<float> u(L.N * c.C), R(L.N * c.C);
        for (auto& x : u) x = (float)rng.normal();
        for (auto& x : R) x = (float)rng.normal();
        const size_t per1 = (size_t)c.F * c.C, per2 = (size_t)c.C * c.F;
        auto run = [&]() {
            L.forward(u.data(), nullptr, ov.data());
            for (auto* g : {&L.drouter, &L.dw1, &L.dw2, &L.dw3, &L.ds1, &L.ds2, &L.ds3}) std::fill(g->begin(), g->end(), 0.25f);
            L.backward(R.data(), u.data(), 1.0f);
        };
        run();
        const std::vector<float> out0 = L.out, du0 = L.du, dw1_0 = L.dw1, dr0 = L.drouter;
        // poison the unused experts' weights: nothing may change, bit for bit
        for (int e = 3; e < 8; e++) {
            std::fill(L.w1.begin() + e * per1, L.w1.begin() + (e + 1) * per1, NAN);
            std::fill(L.w2.begin() + e * per2, L.w2.begin() + (e + 1) * per2, NAN);
            if (swiglu) std::fill(L.w3.begin() + e * per1, L.w3.begin() + (e + 1) * per1, NAN);
        }
        run();
        CHECK(std::memcmp(out0.data(), L.out.data(), out0.size() * sizeof(float)) == 0);
        CHECK(std::memcmp(du0.data(), L.du.data(), du0.size() * sizeof(float)) == 0);
        CHECK(std::memcmp(dr0.data(), L.drouter.data(), dr0.size() * sizeof(float)) == 0);
        for (float x : L.out) CHECK(std::isfinite(x));
        for (int e = 0; e < 8; e++)
            for (size_t i = 0; i < per1; i++) {
                const float g1 = L.dw1[e * per1 + i], g2 = L.dw2[e * per2 + i];
                CHECK(std::isfinite(g1));
                if (e >= 3) {  // untouched: exactly the start value
                    CHECK(g1 == 0.25f);
                    CHECK(g2 == 0.25f);
                    if (swiglu) CHECK(L.dw3[e * per1 + i] == 0.25f);
                }
            }
        bool used_changed = false;
        for (size_t i = 0; i < per1; i++) used_changed |= dw1_0[i] != 0.25f;
        CHECK(used_changed);  // the used experts did get gradient (not vacuous)
    }
    // Muon on an all-zero gradient (an expert no token reached this step): fresh state, and state
    // with momentum left from earlier steps
    const int m = 12, n = 16;
    llmc::MuonScratch scratch;
    for (int with_momentum = 0; with_momentum < 2; with_momentum++) {
        llmc::Rng rng(62, with_momentum);
        std::vector<float> P(m * n), Mo(m * n, 0.0f), S(llmc::muon_second_moment_size(m, n), 0.0f), G(m * n, 0.0f);
        for (auto& x : P) x = (float)(0.3 * rng.normal());
        if (with_momentum) for (auto& x : Mo) x = (float)(0.01 * rng.normal());
        const std::vector<float> P0 = P;
        llmc::muon_update(P.data(), Mo.data(), S.data(), G.data(), m, n, 0.02f, 0.95f, 0.1f, scratch);
        bool finite = true, moved_less = true;
        for (int i = 0; i < m * n; i++) {
            finite &= std::isfinite(P[i]) && std::isfinite(Mo[i]);
            if (!with_momentum) moved_less &= std::fabs(P[i]) <= std::fabs(P0[i]);  // only the decay acts
        }
        for (float x : S) finite &= std::isfinite(x);
        CHECK(finite);
        CHECK(moved_less);
    }
}

// ============================================================================================
// M5: the tie rule
// ============================================================================================

TEST_CASE("M5 ties: equal keys select the lower index, slot order by key then index; group ties too") {
    // W_g = 0: every score is exactly 1/2, so keys are 1/2 + b, exactly representable below
    auto route = [](MoeConfig c, const Vec& bias, std::vector<int>& idx, Vec& g) {
        Layer<double> L(c, 1, 2);
        L.bias = bias;
        Vec u(L.N * c.C, 1.0);
        L.forward(u.data());
        idx.assign(L.sv.idx, L.sv.idx + L.N * c.K);
        g.assign(L.sv.g, L.sv.g + L.N * c.K);
        // the per-token definition, written with std::sort, must agree
        Vec out(L.N * c.C), gl(L.N * c.K);
        std::vector<int> il(L.N * c.K);
        moe_forward_literal(out.data(), il.data(), gl.data(), u.data(), L.weights(), c, 1, 2);
        CHECK(il == idx);
        // and the float instantiation
        Layer<float> Lf(c, 1, 2);
        for (int i = 0; i < c.E; i++) Lf.bias[i] = (float)bias[i];
        std::vector<float> uf(Lf.N * c.C, 1.0f);
        Lf.forward(uf.data());
        CHECK(std::equal(idx.begin(), idx.end(), Lf.sv.idx));
    };
    std::vector<int> idx;
    Vec g;
    MoeConfig c = cfg(4, 6, 3, 2, 0, false, 0.0);
    route(c, Vec(6, 0.0), idx, g);
    CHECK(idx == std::vector<int>({0, 1, 2, 0, 1, 2}));
    for (double x : g) CHECK(x == 2.5 * 0.5 / (1.5 + 1e-20));
    route(c, {0, 0.25, 0, 0.25, 0, 0}, idx, g);
    CHECK(idx == std::vector<int>({1, 3, 0, 1, 3, 0}));
    route(c, {0, 0.125, 0.375, 0.25, 0, 0.375}, idx, g);  // keys .5 .625 .875 .75 .5 .875
    CHECK(idx == std::vector<int>({2, 5, 3, 2, 5, 3}));
    // groups of 2, keep 1, K = 2 (group score = sum of both keys): three groups tie at 1.25,
    // the lowest group wins although expert 2 has the largest single key in group 1
    MoeConfig cg = cfg(4, 6, 2, 2, 0, false, 0.0, 3, 1);
    route(cg, {0.25, 0, 0.5, -0.25, 0.125, 0.125}, idx, g);
    CHECK(idx == std::vector<int>({0, 1, 0, 1}));
    // K = 1, M = 1: group score = the max key; groups 0 and 2 tie, group 0 wins
    MoeConfig c1 = cfg(4, 6, 1, 2, 0, false, 0.0, 3, 1);
    route(c1, {0, 0.25, 0.125, 0, 0.25, 0}, idx, g);
    CHECK(idx == std::vector<int>({1, 1}));
    // the aux loss's top-K (unbiased, no group limit) breaks ties the same way
    MoeConfig ca = cfg(4, 6, 2, 2, 0, false, 1.0);
    Layer<double> La(ca, 1, 3);
    La.bias = {0, 0, 0, 0, 0, 1.0};
    Vec u(La.N * ca.C, 1.0);
    La.forward(u.data());
    for (int i = 0; i < 6; i++) CHECK(La.sv.f[i] == (i < 2 ? 3.0 : 0.0));  // bias ignored: experts 0, 1
    CHECK(La.sv.idx[0] == 5);  // while the routing itself uses the bias
}

// ============================================================================================
// M6: the auxiliary-loss-free balancing bias
// ============================================================================================

namespace {
// E = C = 4, K = 1, W_g = I: a token with u = logit(p) has scores s = p (to fp32 rounding, far
// inside the 5e-4 gaps used below), so routing decisions can be worked out by hand.
struct BiasRig {
    MoeConfig c = cfg(4, 4, 1, 2, 0, false, 0.0);
    Layer<float> L{c, 1, 8};
    BiasRig() {
        for (int i = 0; i < 4; i++) L.router[i * 4 + i] = 1.0f;
        for (auto& x : L.w1) x = 0.5f;
        for (auto& x : L.w2) x = 0.5f;
    }
    // one micro-batch of tokens given by their scores; returns the experts chosen
    std::vector<int> step(const std::vector<Vec>& ps, int64_t* load) {
        Layer<float> M(c, 1, (int)ps.size());
        M.router = L.router; M.bias = L.bias; M.w1 = L.w1; M.w2 = L.w2;
        std::vector<float> u;
        for (const Vec& p : ps)
            for (double x : p) u.push_back((float)std::log(x / (1 - x)));
        M.forward(u.data(), load);
        return std::vector<int>(M.sv.idx, M.sv.idx + ps.size());
    }
};
}  // namespace

TEST_CASE("M6 bias update: hand-computed loads and b over 3 steps of 2 micro-batches; ties; eval") {
    BiasRig rig;
    const double gamma = 1e-3;
    const float gf = (float)gamma;
    std::vector<int64_t> load(4, 0);
    const std::vector<Vec> mb1 = {{.90, .8995, .2, .1}, {.5, .1, .6, .1}};
    const std::vector<Vec> mb2 = {{.7, .1, .1, .2}, {.3, .1, .1, .3005}};
    auto eval_untouched = [&]() {
        // an eval forward between steps: counts nothing, changes nothing
        const std::vector<float> b0 = rig.L.bias;
        const std::vector<int64_t> l0 = load;
        rig.step({{.2, .3, .4, .5}, {.9, .1, .1, .1}}, nullptr);
        CHECK(std::memcmp(b0.data(), rig.L.bias.data(), sizeof(float) * 4) == 0);
        CHECK(l0 == load);
    };
    // step 1, b = 0: tokens go to 0, 2 | 0, 3: load (2, 0, 1, 1), sum 4 = E * mean 1:
    // sign(4 - 4 l_e) = (-, +, 0, 0)
    CHECK(rig.step(mb1, load.data()) == std::vector<int>({0, 2}));
    eval_untouched();
    CHECK(rig.step(mb2, load.data()) == std::vector<int>({0, 3}));
    CHECK(load == std::vector<int64_t>({2, 0, 1, 1}));
    moe_bias_update(rig.L.bias.data(), load.data(), 4, gamma);
    CHECK(load == std::vector<int64_t>({0, 0, 0, 0}));
    const std::vector<float> b1 = {0.0f - gf, 0.0f + gf, 0.0f, 0.0f};
    CHECK(std::memcmp(b1.data(), rig.L.bias.data(), sizeof(float) * 4) == 0);
    // step 2, same data: b moves token 1 to expert 1 (.8995 + g > .90 - g); load (1, 1, 1, 1):
    // every expert exactly at the mean, so b does not move
    CHECK(rig.step(mb1, load.data()) == std::vector<int>({1, 2}));
    CHECK(rig.step(mb2, load.data()) == std::vector<int>({0, 3}));
    eval_untouched();
    CHECK(load == std::vector<int64_t>({1, 1, 1, 1}));
    moe_bias_update(rig.L.bias.data(), load.data(), 4, gamma);
    CHECK(std::memcmp(b1.data(), rig.L.bias.data(), sizeof(float) * 4) == 0);
    // step 3, micro-batches of 2 and 3 tokens: load (3, 1, 1, 0), sum 5 (mean 1.25, not an
    // integer: the comparison sum - E l_e stays exact): sign(5 - 4 l_e) = (-, +, +, +)
    CHECK(rig.step({{.9, .1, .1, .1}, {.6, .1, .1, .1}}, load.data()) == std::vector<int>({0, 0}));
    CHECK(rig.step({{.8, .1, .1, .1}, {.5, .4995, .1, .1}, {.1, .1, .7, .1}}, load.data()) == std::vector<int>({0, 1, 2}));
    CHECK(load == std::vector<int64_t>({3, 1, 1, 0}));
    moe_bias_update(rig.L.bias.data(), load.data(), 4, gamma);
    const std::vector<float> b3 = {b1[0] - gf, b1[1] + gf, b1[2] + gf, b1[3] + gf};
    CHECK(std::memcmp(b3.data(), rig.L.bias.data(), sizeof(float) * 4) == 0);
    // an exact tie on its own, and gamma = 0 (the frozen tail)
    std::vector<float> b = {0.5f, -0.25f, 0.0f};
    std::vector<int64_t> tie = {7, 7, 7};
    moe_bias_update(b.data(), tie.data(), 3, 0.01);
    CHECK(b == std::vector<float>({0.5f, -0.25f, 0.0f}));
    std::vector<int64_t> skew = {9, 0, 1};
    moe_bias_update(b.data(), skew.data(), 3, 0.0);
    CHECK(b == std::vector<float>({0.5f, -0.25f, 0.0f}));
}

TEST_CASE("M6 two ranks summing their loads give the same b as one rank with the whole batch (fp32, bit-exact)") {
    MoeConfig c = cfg(16, 8, 2, 8, 8, false, 0.0);
    const int T = 32;  // tokens per micro-batch per rank
    Layer<float> one(c, 2, T), r0(c, 1, T), r1(c, 1, T);
    llmc::Rng rng(71, 0);
    one.randomize(rng, 0.0);
    for (auto* L : {&r0, &r1}) { L->router = one.router; L->w1 = one.w1; L->w2 = one.w2; L->s1 = one.s1; L->s2 = one.s2; }
    const double gamma = 1e-2;  // large, so the bias changes routing within a few steps
    std::vector<int64_t> l1(8, 0), la(8, 0), lb(8, 0);
    std::vector<float> ba = one.bias, bb = one.bias;  // each rank's copy of b
    std::vector<int> first_idx;
    for (int step = 0; step < 3; step++) {
        for (int micro = 0; micro < 2; micro++) {
            std::vector<float> u(2 * T * c.C);
            for (auto& x : u) x = (float)rng.normal();
            one.forward(u.data(), l1.data());  // rows 0 and 1
            r0.bias = ba; r1.bias = bb;
            r0.forward(u.data(), la.data());                 // rank 0: row 0
            r1.forward(u.data() + (size_t)T * c.C, lb.data());  // rank 1: row 1
            if (step == 0 && micro == 0) first_idx.assign(one.sv.idx, one.sv.idx + 2 * T * c.K);
        }
        // the all-reduce: both ranks hold the sum
        std::vector<int64_t> sum(8);
        for (int e = 0; e < 8; e++) sum[e] = la[e] + lb[e];
        CHECK(sum == l1);
        std::vector<int64_t> sa = sum, sb = sum;
        moe_bias_update(one.bias.data(), l1.data(), 8, gamma);
        moe_bias_update(ba.data(), sa.data(), 8, gamma);
        moe_bias_update(bb.data(), sb.data(), 8, gamma);
        std::fill(la.begin(), la.end(), 0);
        std::fill(lb.begin(), lb.end(), 0);
        CHECK(std::memcmp(ba.data(), one.bias.data(), sizeof(float) * 8) == 0);
        CHECK(std::memcmp(bb.data(), one.bias.data(), sizeof(float) * 8) == 0);
    }
    // b did move
    double spread = 0;
    for (float x : one.bias) spread = std::max(spread, (double)std::fabs(x));
    CHECK(spread > 0);
}

// ============================================================================================
// M8: metrics
// ============================================================================================

TEST_CASE("M8 metrics on hand-made loads, scores and biases") {
    // load (6, 2, 0, 4): mean 3; maxvio = 6/3 - 1 = 1; deviations (3, -1, -3, 1), variance 20/4 = 5
    std::vector<int64_t> load = {6, 2, 0, 4};
    CHECK(moe_maxvio(load.data(), 4) == 1.0);
    CHECK(moe_cv(load.data(), 4) == doctest::Approx(std::sqrt(5.0) / 3).epsilon(1e-15));
    CHECK(moe_dead(load.data(), 4) == 1);
    std::vector<int64_t> even = {5, 5, 5, 5}, none = {0, 0, 0, 0};
    CHECK(moe_maxvio(even.data(), 4) == 0.0);
    CHECK(moe_cv(even.data(), 4) == 0.0);
    CHECK(moe_dead(even.data(), 4) == 0);
    CHECK(moe_maxvio(none.data(), 4) == 0.0);  // nothing counted: defined as 0 (no NaN in the log)
    CHECK(moe_cv(none.data(), 4) == 0.0);
    CHECK(moe_dead(none.data(), 4) == 4);
    // entropy: token 0 uniform over 4 experts (ln 4), token 1 half/half on two (ln 2, with 0 ln 0 = 0),
    // token 2 scores (0.6, 0.2, 0.2, 0) -> p = (.6, .2, .2, 0)
    Vec s = {0.5, 0.5, 0.5, 0.5, 0.3, 0.0, 0.3, 0.0, 0.6, 0.2, 0.2, 0.0};
    const double h2 = -(0.6 * std::log(0.6) + 0.4 * std::log(0.2));
    CHECK(moe_entropy(s.data(), 3, 4) == doctest::Approx((std::log(4.0) + std::log(2.0) + h2) / 3).epsilon(1e-14));
    std::vector<float> sf(s.begin(), s.end());
    CHECK(moe_entropy(sf.data(), 3, 4) == doctest::Approx((std::log(4.0) + std::log(2.0) + h2) / 3).epsilon(1e-6));
    // bias stats: b = (-0.002, 0.001, 0.003, 0): mean 0.0005, deviations (-2.5, .5, 2.5, -.5)e-3
    Vec b = {-0.002, 0.001, 0.003, 0.0};
    MoeBiasStats st = moe_bias_stats(b.data(), 4);
    CHECK(st.min == -0.002);
    CHECK(st.max == 0.003);
    CHECK(st.std == doctest::Approx(std::sqrt((6.25 + 0.25 + 6.25 + 0.25) / 4) * 1e-3).epsilon(1e-14));
}

TEST_CASE("FLOPs: active matmul parameters per token; ReLU² and SwiGLU widths cost the same") {
    // d16 of the suggested configurations: C = 1024, E = 32, K = 4, one shared expert, F = 768
    // (ReLU²) or 512 (SwiGLU); each token touches the router, K experts and the shared expert
    MoeConfig r = cfg(1024, 32, 4, 768, 768, false, 0.0), s = cfg(1024, 32, 4, 512, 512, true, 0.0);
    const long router = 32 * 1024, relu_expert = 2l * 768 * 1024, swiglu_expert = 3l * 512 * 1024;
    CHECK(moe_active_matmul_params(r) == router + 5 * relu_expert);
    CHECK(moe_active_matmul_params(s) == router + 5 * swiglu_expert);
    CHECK(moe_active_matmul_params(r) == 7897088);
    CHECK(moe_active_matmul_params(s) == moe_active_matmul_params(r));
}

// ============================================================================================
// fp32 and determinism
// ============================================================================================

template <typename To, typename From>
static std::vector<To> conv(const std::vector<From>& v) { return std::vector<To>(v.begin(), v.end()); }

TEST_CASE("fp32 layer agrees with fp64 (same routing), forward and backward") {
    for (bool swiglu : {false, true}) {
        MoeConfig c = cfg(48, 8, 2, 32, 40, swiglu, 0.05, 2, 1);
        const int B = 2, T = 32;
        Layer<double> D(c, B, T);
        Layer<float> S(c, B, T);
        llmc::Rng rng(81, swiglu);
        D.randomize(rng, 0.05);
        for (auto* v : {&D.w1, &D.w3, &D.w2, &D.s1, &D.s3, &D.s2}) for (auto& x : *v) x /= std::sqrt((double)c.C);
        S.router = conv<float>(D.router); S.bias = conv<float>(D.bias); S.w1 = conv<float>(D.w1); S.w3 = conv<float>(D.w3);
        S.w2 = conv<float>(D.w2); S.s1 = conv<float>(D.s1); S.s3 = conv<float>(D.s3); S.s2 = conv<float>(D.s2);
        Vec u = randn(rng, (size_t)D.N * c.C), R = randn(rng, (size_t)D.N * c.C);
        std::vector<float> uf = conv<float>(u), Rf = conv<float>(R);
        double auxd = D.forward(u.data());
        std::vector<int> idx(D.sv.idx, D.sv.idx + D.N * c.K);
        double auxf = S.forward(uf.data(), nullptr, idx.data());  // the double's routing
        D.backward(R.data(), u.data(), 0.5);
        S.backward(Rf.data(), uf.data(), 0.5f);
        // fp32: unit roundoff 6e-8, sums of <= 64 terms, two matmuls deep: a rounding-error bound of
        // about 64 * 6e-8 = 4e-6 relative to the largest entry (measured: <= 5e-7); a wrong term
        // or a dropped factor shows at 1e-2 or more
        const double tol = 4e-6;
        double e_out = rel_max_diff(S.out, D.out), e_du = rel_max_diff(S.du, D.du), e_r = rel_max_diff(S.drouter, D.drouter);
        double e_1 = rel_max_diff(S.dw1, D.dw1), e_2 = rel_max_diff(S.dw2, D.dw2), e_s = rel_max_diff(S.ds1, D.ds1);
        MESSAGE(llmc::strfmt("fp32 vs fp64 (%s): out %.2g du %.2g dW_g %.2g dW1 %.2g dW2 %.2g shared dW1 %.2g aux %.2g",
                             swiglu ? "swiglu" : "relu2", e_out, e_du, e_r, e_1, e_2, e_s, std::fabs(auxf - auxd) / auxd));
        CHECK(e_out <= tol); CHECK(e_du <= tol); CHECK(e_r <= tol); CHECK(e_1 <= tol); CHECK(e_2 <= tol); CHECK(e_s <= tol);
        if (swiglu) CHECK(rel_max_diff(S.dw3, D.dw3) <= tol);
        CHECK(auxf == doctest::Approx(auxd).epsilon(1e-5));
    }
}

TEST_CASE("fp32 forward and backward are bitwise independent of the thread count") {
#ifdef _OPENMP
    MoeConfig c = cfg(64, 8, 2, 64, 128, false, 0.01);
    const int B = 2, T = 64;
    Layer<float> A(c, B, T), Bl(c, B, T);
    llmc::Rng rng(91, 0);
    A.randomize(rng, 0.05);
    Bl.router = A.router; Bl.bias = A.bias; Bl.w1 = A.w1; Bl.w2 = A.w2; Bl.s1 = A.s1; Bl.s2 = A.s2;
    std::vector<float> u(A.N * c.C), R(A.N * c.C);
    for (auto& x : u) x = (float)rng.normal();
    for (auto& x : R) x = (float)rng.normal();
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    double a1 = A.forward(u.data());
    A.backward(R.data(), u.data(), 1.0f);
    omp_set_num_threads(2);
    double a2 = Bl.forward(u.data());
    Bl.backward(R.data(), u.data(), 1.0f);
    omp_set_num_threads(saved);
    CHECK(a1 == a2);
    auto same = [](const std::vector<float>& x, const std::vector<float>& y) { return std::memcmp(x.data(), y.data(), x.size() * 4) == 0; };
    CHECK(same(A.out, Bl.out));
    CHECK(same(A.du, Bl.du));
    CHECK(same(A.drouter, Bl.drouter));
    CHECK(same(A.dw1, Bl.dw1));
    CHECK(same(A.dw2, Bl.dw2));
    CHECK(same(A.ds1, Bl.ds1));
    CHECK(same(A.ds2, Bl.ds2));
    CHECK(moe_entropy(A.sv.s, A.N, c.E) == moe_entropy(Bl.sv.s, Bl.N, c.E));
#else
    MESSAGE("built without OpenMP: thread-count determinism is trivially true");
    CHECK(true);
#endif
}

// ============================================================================================
// bad input
// ============================================================================================

TEST_CASE("bad configurations and a bad idx_override throw one clear error") {
    auto msg = [](MoeConfig c) {
        try { moe_check_config(c); } catch (const llmc::Error& e) { return std::string(e.what()); }
        return std::string();
    };
    CHECK(msg(cfg(4, 6, 2, 3, 0, false, 0.0)) == "");
    CHECK(msg(cfg(4, 6, 7, 3, 0, false, 0.0)).find("K=7") != std::string::npos);
    CHECK(msg(cfg(4, 6, 0, 3, 0, false, 0.0)).find("K=0") != std::string::npos);
    CHECK(msg(cfg(0, 6, 2, 3, 0, false, 0.0)).find("bad shape") != std::string::npos);
    CHECK(msg(cfg(4, 6, 2, 3, 0, false, 0.0, 4, 1)).find("must divide E=6") != std::string::npos);
    CHECK(msg(cfg(4, 6, 2, 3, 0, false, 0.0, 3, 4)).find("topk_groups=4") != std::string::npos);
    CHECK(msg(cfg(4, 12, 3, 3, 0, false, 0.0, 4, 2)).find("must divide K=3") != std::string::npos);
    CHECK(msg(cfg(4, 6, 4, 3, 0, false, 0.0, 3, 1)).find("K/M <= E/G=2") != std::string::npos);
    CHECK(msg(cfg(4, 6, 2, 3, 0, false, -1.0)).find("alpha") != std::string::npos);
    MoeConfig c = cfg(4, 6, 2, 3, 0, false, 0.0);
    Layer<double> L(c, 1, 2);
    Vec u(8, 0.1);
    std::vector<int> out_of_range = {0, 1, 2, 6}, repeated = {0, 1, 3, 3};
    CHECK_THROWS_WITH_AS(L.forward(u.data(), nullptr, out_of_range.data()), "moe: idx_override[1][1] = 6 is outside [0, 6)", llmc::Error);
    CHECK_THROWS_WITH_AS(L.forward(u.data(), nullptr, repeated.data()), "moe: idx_override[1] names expert 3 twice", llmc::Error);
    // NaN input: no crash, distinct in-range experts, the NaN reaches the output
    Vec nan_u(8, NaN);
    L.forward(nan_u.data());
    check_dispatch(L.sv, L.N, c.K, c.E);
    CHECK(std::isnan(L.out[0]));
}
