// Whole-model tests of train_gpt.cu's GPT: the full gradient against central finite differences in
// double (every parameter element), with every nanochat extra on and with --arch core, plus
// structural checks (parameter counts, names, windows, init statistics, determinism).
#define TESTING
#include "train_gpt.cu"

#include <doctest/doctest.h>

namespace {

llmc::ModelOptions tiny_options(bool extras) {
    llmc::ModelOptions o;
    o.depth = 3;          // odd: VE layers 0 and 2, backout at layer 1
    o.aspect_ratio = 8;   // n_embd = 24, the smallest width smear allows
    o.head_dim = 12;      // 2 query heads
    o.n_kv_head = 1;      // GQA
    o.vocab_size = 50;    // padded to 64: the padded rows must get zero gradient from the loss
    o.sequence_len = 8;
    o.window_pattern = "SL";
    o.short_window = 3;   // shorter than T, so windows really cut
    if (!extras) o.set_arch_core();
    return o;
}
GPTConfig tiny_config(bool extras) { return llmc::derive_model_shape(tiny_options(extras)); }

// Random parameters of order 1 (the real init zeroes the projections, which would leave whole
// gradient paths untested), lambdas near their init values.
void randomize(GPT<double>& m, uint64_t seed) {
    llmc::Rng rng(seed, 7);
    for (size_t i = 0; i < m.num_params; i++) m.params[i] = rng.uniform(-0.5, 0.5);
    if (m.config.lambdas)
        for (int l = 0; l < m.config.n_layer; l++) {
            m.param(P_RESID_LAMBDAS)[l] = 1.0 + 0.1 * rng.uniform(-1, 1);
            m.param(P_X0_LAMBDAS)[l] = 0.2 + 0.1 * rng.uniform(-1, 1);
        }
}

// Compare the analytic gradient with central differences over EVERY parameter element.
// Noise floor: the loss (~4) is computed in double, so each evaluation carries a rounding error of
// ~1e-15 relative; with h = 1e-5 the difference quotient has absolute noise ~1e-15*4/2e-5 = 2e-10
// (observed: up to 1.5e-10), and the truncation error O(h^2 f''') ~ 1e-10 is no larger. A relative
// error of 1e-6 is therefore only resolvable for |g| above ~2e-4: elements above 3e-4 ("not tiny",
// the bulk of them) must match to 1e-6 relative; the tiny rest must still match to 1e-9 absolute
// (a few times the noise floor). A wrong backward term shows as an O(1) relative error.
// (A fourth-order stencil with a larger h would lower the noise, but ReLU^2 has a kink in its
// second derivative: perturbations of 1e-3 cross it and give errors of 1e-2; h = 1e-5 rarely does.)
struct GradcheckResult { double worst_rel = 0, worst_abs_tiny = 0; size_t checked = 0, tiny = 0, total = 0; };

GradcheckResult gradcheck(GPTConfig cfg, int B, int T, bool some_ignored) {
    omp_set_num_threads(1);  // tiny shapes: threads only add overhead
    GPT<double> m;
    m.init(cfg);
    randomize(m, 1);
    llmc::Rng rng(3, 0);
    std::vector<int> idx(B * T), tgt(B * T);
    for (int i = 0; i < B * T; i++) { idx[i] = (int)rng.below(cfg.vocab_size); tgt[i] = (int)rng.below(cfg.vocab_size); }
    if (some_ignored) { tgt[1] = -1; tgt[B * T - 2] = -1; }
    m.zero_grad();
    m.forward(idx.data(), tgt.data(), B, T);
    m.backward(1.0f);
    std::vector<double> g(m.grads, m.grads + m.num_params);
    const double h = 1e-5, tiny = 3e-4;
    GradcheckResult r;
    r.total = m.num_params;
    for (size_t i = 0; i < m.num_params; i++) {
        double p = m.params[i];
        m.params[i] = p + h;
        double lp = m.forward(idx.data(), tgt.data(), B, T);
        m.params[i] = p - h;
        double lm = m.forward(idx.data(), tgt.data(), B, T);
        m.params[i] = p;
        double num = (lp - lm) / (2 * h), a = g[i];
        double big = std::max(std::fabs(a), std::fabs(num)), err = std::fabs(a - num);
        bool bad;
        if (big > tiny) { r.checked++; r.worst_rel = std::max(r.worst_rel, err / big); bad = err / big > 1e-6; }
        else { r.tiny++; r.worst_abs_tiny = std::max(r.worst_abs_tiny, err); bad = err > 1e-9; }
        if (bad) {  // name the tensor, to make a failure actionable
            int id = 0;
            while (id + 1 < NUM_PARAM_TENSORS && m.spec[id + 1].offset <= i) id++;
            while (m.spec[id].count == 0) id--;
            MESSAGE("element " << i << " of " << param_name(m.config, id, 0) << " (or a later layer's): analytic " << a << " numeric " << num);
        }
    }
    MESSAGE(r.checked << " elements above " << tiny << ": worst relative error " << r.worst_rel << "; " << r.tiny
                      << " tiny elements: worst absolute error " << r.worst_abs_tiny);
    return r;
}

void check_gradients(const GradcheckResult& r) {
    CHECK(r.checked > r.total * 7 / 10);  // the relative check really covers the bulk of the model (measured 73-86%)
    CHECK(r.worst_rel <= 1e-6);
    CHECK(r.worst_abs_tiny <= 1e-9);
}

}  // namespace

TEST_CASE("whole-model gradient vs finite differences, all nanochat extras on (double)") {
    check_gradients(gradcheck(tiny_config(true), 2, 8, false));
}

TEST_CASE("whole-model gradient vs finite differences, --arch core (double)") {
    check_gradients(gradcheck(tiny_config(false), 2, 8, false));
}

TEST_CASE("whole-model gradient with ignored targets and L = 1 (backout at the last layer)") {
    llmc::ModelOptions o = tiny_options(true);
    o.depth = 1;
    o.aspect_ratio = 24;  // keep n_embd = 24
    check_gradients(gradcheck(llmc::derive_model_shape(o), 2, 6, true));
}

TEST_CASE("parameter layout: counts match docs/model.md#parameters and scaling.h, nanochat names") {
    // d4 at V = 32768 with every extra on: the total 36,700,242 of docs/model.md#scaling; core: 19,922,944
    llmc::ModelOptions o;
    o.depth = 4;
    o.vocab_size = 32768;
    ParamSpec s[NUM_PARAM_TENSORS]; size_t total;
    // the parameter count (the buffer adds gaps that start every tensor at a multiple of 8 elements)
    // Every matrix's extent [at(j), at(j) + rows*cols) is 8-aligned, inside the buffer, and disjoint
    // from every other; a layer's c_q, c_k, c_v are adjacent (the GPU's one q/k/v GEMM reads them as
    // one (H + 2 Hkv) D x C matrix).
    auto count = [&]() {
        size_t n = 0;
        std::vector<std::pair<size_t, size_t>> ext;
        for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
            for (int j = 0; j < s[i].count; j++) {
                CHECK(s[i].at(j) % 8 == 0);
                ext.push_back({s[i].at(j), s[i].at(j) + s[i].matrix_numel()});
            }
            n += s[i].numel();
        }
        std::sort(ext.begin(), ext.end());
        for (size_t e = 1; e < ext.size(); e++) CHECK(ext[e].first >= ext[e - 1].second);  // no overlap
        CHECK(ext.back().second <= total);
        CHECK(total - n < 8 * NUM_PARAM_TENSORS);
        for (int j = 0; j < s[P_CQ].count; j++) {
            CHECK(s[P_CK].at(j) == s[P_CQ].at(j) + s[P_CQ].matrix_numel());
            CHECK(s[P_CV].at(j) == s[P_CK].at(j) + s[P_CK].matrix_numel());
        }
        return n;
    };
    GPTConfig c = llmc::derive_model_shape(o);
    param_layout(c, s, &total);
    CHECK(count() == 36700242);
    CHECK((int64_t)count() == c.params.total);
    o.set_arch_core();
    c = llmc::derive_model_shape(o);
    param_layout(c, s, &total);
    CHECK(count() == 19922944);
    o.n_kv_head = 1;  // GQA: c_k, c_v narrower than c_q, still adjacent
    c = llmc::derive_model_shape(o);
    param_layout(c, s, &total);
    CHECK((int64_t)count() == c.params.total);
    GPTConfig t = tiny_config(true);
    CHECK(param_name(t, P_VALUE_EMBEDS, 1) == "value_embeds.2.weight");
    CHECK(param_name(t, P_VE_GATE, 0) == "transformer.h.0.attn.ve_gate.weight");
    CHECK(param_name(t, P_FC, 2) == "transformer.h.2.mlp.c_fc.weight");
    CHECK(t.window[0] == 3);
    CHECK(t.window[2] == 8);
}

TEST_CASE("init follows docs/model.md#init and is reproducible") {
    GPT<float> a, b;
    llmc::ModelOptions o = tiny_options(true);
    o.aspect_ratio = 16; o.n_kv_head = 2; o.vocab_size = 500;  // C = 48, 4 heads
    GPTConfig c = llmc::derive_model_shape(o);
    a.init(c); b.init(c);
    a.init_weights(42); b.init_weights(42);
    CHECK(std::equal(a.params, a.params + a.num_params, b.params));
    // wte ~ N(0, 0.8): sample std within 5% (n = 512·48 draws: std error of the std ≈ 0.5%)
    double s2 = 0; size_t n = a.spec[P_WTE].numel();
    for (size_t i = 0; i < n; i++) s2 += (double)a.param(P_WTE)[i] * a.param(P_WTE)[i];
    CHECK(std::sqrt(s2 / n) == doctest::Approx(0.8).epsilon(0.05));
    // projections start at zero; lambdas per the formula
    for (size_t i = 0; i < a.spec[P_MLP_PROJ].numel(); i++) REQUIRE(a.param(P_MLP_PROJ)[i] == 0.0f);
    CHECK(a.param(P_RESID_LAMBDAS)[0] == doctest::Approx(1.15));
    CHECK(a.param(P_RESID_LAMBDAS)[2] == doctest::Approx(1.05));
    CHECK(a.param(P_X0_LAMBDAS)[2] == doctest::Approx(0.05));
    CHECK(*a.param(P_BACKOUT_LAMBDA) == doctest::Approx(0.2));
    // c_q bound s = sqrt(3/C)
    float bound = std::sqrt(3.0f / 48), mx = 0;
    for (int j = 0; j < a.spec[P_CQ].count; j++)
        for (size_t i = 0; i < a.spec[P_CQ].matrix_numel(); i++) mx = std::max(mx, std::fabs(a.param(P_CQ, j)[i]));
    CHECK(mx <= bound);
    CHECK(mx > 0.9f * bound);
    // different seed, different weights
    b.init_weights(43);
    CHECK(!std::equal(a.params, a.params + a.num_params, b.params));
}

TEST_CASE("forward at init: loss near ln(V) and deterministic") {
    GPT<float> m;
    llmc::ModelOptions o = tiny_options(true);
    o.vocab_size = 300;
    m.init(llmc::derive_model_shape(o));
    m.init_weights(42);
    std::vector<int> idx(16), tgt(16);
    for (int i = 0; i < 16; i++) { idx[i] = (i * 37) % 300; tgt[i] = (i * 11 + 5) % 300; }
    double l1 = m.forward(idx.data(), tgt.data(), 2, 8);
    // lm_head ~ N(0, 0.001) makes logits ~1e-3: the loss is ln(300) to within ~1e-3
    CHECK(l1 == doctest::Approx(std::log(300.0)).epsilon(1e-3));
    double l2 = m.forward(idx.data(), tgt.data(), 2, 8);
    CHECK(l1 == l2);
    idx[3] = 300;
    CHECK_THROWS_WITH_AS(m.forward(idx.data(), tgt.data(), 2, 8), doctest::Contains("outside the vocabulary"), llmc::Error);
}
