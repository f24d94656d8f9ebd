// Whole-model tests of the hybrid GPT of train_gpt.cu / train_moe.cu (docs/model.md#hybrid): the
// full gradient of a tiny model with 2 lightning layers and 1 softmax layer, one dense-MLP layer and
// two MoE layers (E = 4, K = 2, one shared expert, aux loss on), against central finite differences
// in double over every parameter element; the layout, names, init, FLOPs and parameter counts; the
// load counters and the bias update.
//
// Routing is piecewise constant (top-K of s + b, and the aux loss's top-K of s), so finite
// differences are only meaningful where no perturbation changes a decision. The test records the
// routing of the unperturbed model, freezes it through the model's idx_override hook (the same
// function everywhere, so the analytic gradient is exactly that of the frozen routing), and then
// re-derives, after EVERY perturbed forward, the top-K the model itself would have chosen (from the
// saved scores and the bias, with llmc/cpu/moe.h's selection) and the aux frequencies: all must
// equal the frozen ones, so the gradient checked is the real model's at that point.
#define TESTING
#include "train_gpt.cu"

#include <doctest/doctest.h>

namespace {

// depth 3: lightning, lightning, softmax (attn_period 3); FFN dense, MoE, MoE (moe_dense_layers 1)
llmc::ModelOptions tiny_hybrid(bool swiglu) {
    llmc::ModelOptions o;
    o.depth = 3;
    o.aspect_ratio = 8;   // n_embd 24 (smear's minimum)
    o.head_dim = 12;      // 2 heads: lightning 2 x 12, softmax 2 query heads
    o.n_kv_head = 1;      // GQA on the softmax layer
    o.vocab_size = 50;    // padded to 64
    o.sequence_len = 7;
    o.windows = false;
    o.attn_period = 3;
    o.moe_dense_layers = 1;
    o.n_experts = 4;
    o.moe_topk = 2;
    o.moe_shared = 1;
    o.moe_hidden = 8;
    o.moe_swiglu = swiglu;
    o.moe_aux_alpha = 0.1;  // large, so that the aux loss's gradient is well above the noise floor
    o.la_block = 4;         // T = 7: two blocks, the second partial
    if (swiglu) { o.moe_groups = 2; o.moe_topk_groups = 1; }  // group-limited routing too
    return o;
}

// uniform(-0.5, 0.5) parameters (real init zeroes the projections), lambdas near init, a random
// balancing bias (so the biased and the unbiased top-K differ)
void randomize(GPT<double>& m, uint64_t seed) {
    llmc::Rng rng(seed, 7);
    for (size_t i = 0; i < m.num_params; i++) m.params[i] = rng.uniform(-0.5, 0.5);
    for (int l = 0; l < m.config.n_layer; l++) {
        m.param(P_RESID_LAMBDAS)[l] = 1.0 + 0.1 * rng.uniform(-1, 1);
        m.param(P_X0_LAMBDAS)[l] = 0.2 + 0.1 * rng.uniform(-1, 1);
    }
    for (size_t i = 0; i < m.spec[P_MOE_BIAS].numel(); i++) m.param(P_MOE_BIAS)[i] = rng.uniform(-0.3, 0.3);
}

// Routing of MoE layer j after a forward: the idx the model used, and the idx / aux frequencies its
// own rule (llmc/cpu/moe.h's top-K of s + b, and plain top-K of s for the aux loss) gives from the
// saved scores. Margins: the smallest gap between the K-th and (K+1)-th key of any token.
struct Routing { std::vector<int> idx, natural, plain; double margin = 1e9; };

Routing routing(GPT<double>& m, int j) {
    const MoeConfig& c = m.moe_cfg;
    long N = (long)m.B * m.T;
    MoeSaved<double> sv = moe_saved_bind(c, m.B, m.T, m.moe_saved(j), m.moe_saved_ints(j));
    const double* b = m.mparam(P_MOE_BIAS, j);
    MoeConfig plain = c;
    plain.groups = 1; plain.topk_groups = 1;
    Routing r;
    r.idx.assign(sv.idx, sv.idx + N * c.K);
    r.natural.resize(N * c.K);
    r.plain.resize(N * c.K);
    std::vector<double> keys(c.E), zero(c.E, 0.0);
    for (long t = 0; t < N; t++) {
        const double* s = sv.s + t * c.E;
        moe_topk_token(r.natural.data() + t * c.K, s, b, c);
        moe_topk_token(r.plain.data() + t * c.K, s, zero.data(), plain);
        // margins of both selections (with groups, the group choice's margin is covered by the flip check)
        for (int pass = 0; pass < 2; pass++) {
            for (int e = 0; e < c.E; e++) keys[e] = s[e] + (pass == 0 ? b[e] : 0.0);
            std::sort(keys.begin(), keys.end(), std::greater<double>());
            r.margin = std::min(r.margin, keys[c.K - 1] - keys[c.K]);
        }
    }
    return r;
}

struct GradcheckResult { double worst_rel = 0, worst_abs_tiny = 0, margin = 1e9; size_t checked = 0, tiny = 0, total = 0, flips = 0; };

// The noise floor and tolerances are test_model.cpp's (see there): h = 1e-5, elements above 3e-4
// to 1e-6 relative, the tiny rest to 1e-9 absolute.
GradcheckResult gradcheck(const llmc::ModelOptions& o, int B, int T) {
    omp_set_num_threads(1);
    GPTConfig cfg = llmc::derive_model_shape(o);
    GPT<double> m;
    m.init(cfg);
    randomize(m, 1);
    llmc::Rng rng(3, 0);
    std::vector<int> idx(B * T), tgt(B * T);
    for (int i = 0; i < B * T; i++) { idx[i] = (int)rng.below(cfg.vocab_size); tgt[i] = (int)rng.below(cfg.vocab_size); }
    GradcheckResult r;
    // the natural routing, frozen
    m.forward(idx.data(), tgt.data(), B, T);
    std::vector<Routing> base;
    for (int j = 0; j < cfg.n_moe; j++) {
        base.push_back(routing(m, j));
        REQUIRE(base[j].idx == base[j].natural);  // the override hook is off: the model routed by its rule
        r.margin = std::min(r.margin, base[j].margin);
        m.moe_idx_override[j] = base[j].idx.data();
    }
    auto same_routing = [&]() {
        for (int j = 0; j < cfg.n_moe; j++) {
            Routing now = routing(m, j);
            if (now.natural != base[j].idx || now.plain != base[j].plain) return false;
        }
        return true;
    };
    m.zero_grad();
    double l0 = m.forward(idx.data(), tgt.data(), B, T);
    m.backward(1.0f);
    double aux = m.slot_aux(0);
    MESSAGE("objective " << l0 << " of which aux " << aux << "; smallest top-K margin " << r.margin);
    CHECK(aux > 0.0);
    std::vector<double> g(m.grads, m.grads + m.num_params);
    const double h = 1e-5, tiny = 3e-4;
    r.total = m.num_params;
    for (size_t i = 0; i < m.spec[P_MOE_BIAS].numel(); i++) CHECK(g[m.spec[P_MOE_BIAS].offset + i] == 0.0);  // a buffer
    for (int id = 0; id < NUM_PARAM_TENSORS; id++) {
        if (is_buffer(id)) continue;
        for (size_t i = m.spec[id].offset; i < m.spec[id].offset + m.spec[id].numel(); i++) {
            double p = m.params[i];
            m.params[i] = p + h;
            double lp = m.forward(idx.data(), tgt.data(), B, T);
            bool ok = same_routing();
            m.params[i] = p - h;
            double lm = m.forward(idx.data(), tgt.data(), B, T);
            ok = ok && same_routing();
            m.params[i] = p;
            if (!ok) { r.flips++; continue; }
            double num = (lp - lm) / (2 * h), a = g[i];
            double big = std::max(std::fabs(a), std::fabs(num)), err = std::fabs(a - num);
            bool bad;
            if (big > tiny) { r.checked++; r.worst_rel = std::max(r.worst_rel, err / big); bad = err / big > 1e-6; }
            else { r.tiny++; r.worst_abs_tiny = std::max(r.worst_abs_tiny, err); bad = err > 1e-9; }
            if (bad) {
                size_t jm = (i - m.spec[id].offset) / m.spec[id].matrix_numel();
                MESSAGE("element " << i << " of " << param_name(m.config, id, (int)jm) << ": analytic " << a << " numeric " << num);
            }
        }
    }
    MESSAGE(r.checked << " elements above " << tiny << ": worst relative error " << r.worst_rel << "; " << r.tiny
                      << " tiny elements: worst absolute error " << r.worst_abs_tiny << "; " << r.flips << " routing changes");
    return r;
}

void check_gradients(const GradcheckResult& r) {
    CHECK(r.flips == 0);  // every perturbed forward kept the natural routing: nothing was skipped
    CHECK(r.checked > r.total * 6 / 10);  // the relative check covers the bulk of the model
    CHECK(r.worst_rel <= 1e-6);
    CHECK(r.worst_abs_tiny <= 1e-9);
}

}  // namespace

TEST_CASE("hybrid model layout: 2 lightning + 1 softmax layer, 1 dense + 2 MoE FFNs; names, slots, value embeddings") {
    GPTConfig c = llmc::derive_model_shape(tiny_hybrid(false));
    CHECK(c.is_lightning == std::vector<bool>{true, true, false});
    CHECK(c.is_moe == std::vector<bool>{false, true, true});
    CHECK(c.n_softmax == 1);
    CHECK(c.n_lightning == 2);
    CHECK(c.n_moe == 2);
    CHECK(c.n_dense_mlp == 1);
    CHECK(c.has_ve == std::vector<bool>{false, false, true});  // parity (L-1)%2 = 0: layers 0, 2; layer 0 is lightning
    ParamSpec s[NUM_PARAM_TENSORS];
    size_t total;
    param_layout(c, s, &total);
    size_t n = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) n += s[i].numel();
    CHECK((int64_t)n == c.params.total);
    CHECK(s[P_CQ].count == 1);
    CHECK(s[P_FC].count == 1);
    CHECK(s[P_LA_Q].count == 2);
    CHECK(s[P_MOE_FC].count == 2 * 4);
    CHECK(s[P_MOE_UP].count == 0);
    CHECK(param_name(c, P_CQ, 0) == "transformer.h.2.attn.c_q.weight");
    CHECK(param_name(c, P_FC, 0) == "transformer.h.0.mlp.c_fc.weight");
    CHECK(param_name(c, P_LA_Q, 1) == "transformer.h.1.attn.c_q.weight");
    CHECK(param_name(c, P_LA_GATE, 0) == "transformer.h.0.attn.c_gate.weight");
    CHECK(param_name(c, P_LA_NORM, 0) == "transformer.h.0.attn.norm.weight");
    CHECK(param_name(c, P_MOE_ROUTER, 1) == "transformer.h.2.mlp.router.weight");
    CHECK(param_name(c, P_MOE_BIAS, 0) == "transformer.h.1.mlp.router.e_score_correction_bias");
    CHECK(param_name(c, P_MOE_FC, 4) == "transformer.h.2.mlp.experts.c_fc");  // matrix 4 = layer 2's expert 0
    CHECK(param_name(c, P_MOE_SHARED_PROJ, 0) == "transformer.h.1.mlp.shared.c_proj.weight");
    CHECK(param_name(c, P_VE_GATE, 0) == "transformer.h.2.attn.ve_gate.weight");
    CHECK(param_file_shape(c, P_MOE_PROJ, s[P_MOE_PROJ]) == std::vector<int64_t>{4, 24, 8});
    CHECK(param_file_shape(c, P_MOE_BIAS, s[P_MOE_BIAS]) == std::vector<int64_t>{4});
    CHECK(is_muon_param(P_MOE_FC));
    CHECK(is_muon_param(P_LA_GATE));
    CHECK(!is_muon_param(P_MOE_ROUTER));
    CHECK(adam_group_of(P_MOE_ROUTER) == llmc::ADAM_ROUTER);
    CHECK(adam_group_of(P_LA_NORM) == llmc::ADAM_LA_NORM);
    // a dense model's layout is the one it always had: no hybrid tensor, all layers in the stacks
    GPTConfig d = llmc::derive_model_shape(llmc::ModelOptions());
    param_layout(d, s, &total);
    for (int id = P_LA_Q; id < NUM_PARAM_TENSORS; id++) CHECK(s[id].count == 0);
    CHECK(s[P_CQ].count == d.n_layer);
    CHECK(!d.hybrid());
}

TEST_CASE("whole hybrid model gradient vs finite differences (double): ReLU² experts, shared expert, aux loss") {
    check_gradients(gradcheck(tiny_hybrid(false), 2, 7));
}

TEST_CASE("whole hybrid model gradient vs finite differences (double): SwiGLU experts, group-limited routing") {
    check_gradients(gradcheck(tiny_hybrid(true), 2, 7));
}

TEST_CASE("hybrid parameter counts and FLOPs per token (d16 of docs/model.md#hybrid, counted here term by term)") {
    llmc::ModelOptions o;
    o.depth = 16; o.vocab_size = 32768; o.windows = false; o.value_embeds = false;
    o.attn_period = 8; o.moe_dense_layers = 1; o.n_experts = 32; o.moe_topk = 4; o.moe_shared = 1;
    GPTConfig c = llmc::derive_model_shape(o);
    const int64_t d = 1024, T = 2048, V = 32768, F = 768;
    CHECK(c.moe_hidden == F);  // 128 * round(4096 / 640) = 768
    CHECK(c.n_softmax == 2);
    CHECK(!c.is_lightning[7]);
    CHECK(!c.is_lightning[15]);
    // active matrices: 2 softmax (4 d^2), 14 lightning (5 d^2), 1 dense MLP (8 d^2), 15 MoE (router,
    // 4 routed + 1 shared expert of 2 F d); plus lm_head and the smear gate
    int64_t moe_active = 32 * d + 5 * 2 * F * d;
    int64_t active = 2 * 4 * d * d + 14 * 5 * d * d + 8 * d * d + 15 * moe_active;
    CHECK(c.params.active_matrices == active);
    CHECK(c.n_matmul == active + V * d + 24);
    // docs/model.md#hybrid: about 242.2 M active matmul parameters (with lm_head)
    CHECK((double)(active + V * d) == doctest::Approx(242.2e6).epsilon(1e-3));
    int64_t flops = 6 * c.n_matmul + 2 * 12 * d * T + 14 * 12 * 8 * 128 * (64 + 128);
    CHECK(c.flops_per_token == flops);
    CHECK((double)c.flops_per_token == doctest::Approx(1.536e9).epsilon(1e-3));
    // total: every expert, ~0.94 B
    int64_t total = 2 * V * d + 2 * 4 * d * d + 14 * (5 * d * d + d) + 8 * d * d + 15 * (32 * d + 32 + 32 * 2 * F * d + 2 * F * d) + 2 * 16 + 25 + 1;
    CHECK(c.params.total == total);
    CHECK((double)total == doctest::Approx(0.94e9).epsilon(0.01));
    // SwiGLU: F = 64 * round(2 * 768 / 192) = 512, the same active parameters per expert (3 F d)
    o.moe_swiglu = true;
    GPTConfig sw = llmc::derive_model_shape(o);
    CHECK(sw.moe_hidden == 512);
    CHECK(sw.params.active_matrices == active);
}

TEST_CASE("init of the hybrid tensors, and the load counters and bias update of a training forward") {
    llmc::ModelOptions o = tiny_hybrid(false);
    o.aspect_ratio = 16;  // C = 48
    o.head_dim = 12;
    o.vocab_size = 300;
    GPT<float> m;
    m.init(llmc::derive_model_shape(o));
    m.init_weights(42);
    const GPTConfig& c = m.config;
    float s0 = std::sqrt(3.0f / 48);
    auto max_abs = [&](int id) { float mx = 0; for (size_t i = 0; i < m.spec[id].numel(); i++) mx = std::max(mx, std::fabs(m.param(id)[i])); return mx; };
    for (size_t i = 0; i < m.spec[P_LA_NORM].numel(); i++) REQUIRE(m.param(P_LA_NORM)[i] == 1.0f);
    CHECK(max_abs(P_MOE_BIAS) == 0.0f);
    CHECK(max_abs(P_MOE_PROJ) == 0.0f);
    CHECK(max_abs(P_LA_PROJ) == 0.0f);
    CHECK(max_abs(P_MOE_SHARED_PROJ) == 0.0f);
    CHECK(max_abs(P_MOE_FC) <= 0.4f * s0);
    CHECK(max_abs(P_MOE_FC) > 0.35f * s0);
    CHECK(max_abs(P_LA_GATE) <= s0);
    CHECK(max_abs(P_LA_GATE) > 0.9f * s0);
    CHECK(max_abs(P_MOE_ROUTER) <= s0);
    // experts of one stack draw different numbers
    CHECK(!std::equal(m.param(P_MOE_FC, 0), m.param(P_MOE_FC, 0) + m.spec[P_MOE_FC].matrix_numel(), m.param(P_MOE_FC, 1)));
    // a forward at init: the loss is ln V (lm_head ~ N(0, 0.001)); each MoE layer's aux loss is
    // about alpha (exactly alpha for a balanced router, docs/moe.md#aux-loss); eval counts nothing
    std::vector<int> idx(14), tgt(14);
    for (int i = 0; i < 14; i++) { idx[i] = (i * 37) % 300; tgt[i] = (i * 11 + 5) % 300; }
    double l = m.forward(idx.data(), tgt.data(), 2, 7);
    CHECK(m.slot_loss(0) == doctest::Approx(std::log(300.0)).epsilon(1e-3));
    for (int j = 0; j < c.n_moe; j++) CHECK(m.slot_aux(0, j) == doctest::Approx(c.moe_aux_alpha).epsilon(0.2));
    CHECK(l == m.slot_loss(0) + m.slot_aux(0));
    const int64_t* load = m.host_moe_load();
    for (int i = 0; i < c.n_moe * c.n_experts; i++) CHECK(load[i] == 0);
    // two training micro-batches: each layer counts N*K selections per micro-batch
    m.forward_async(idx.data(), tgt.data(), 2, 7, 0, true);
    m.forward_async(idx.data(), tgt.data(), 2, 7, 0, true);
    for (int j = 0; j < c.n_moe; j++) {
        int64_t sum = 0;
        for (int e = 0; e < c.n_experts; e++) sum += load[j * c.n_experts + e];
        CHECK(sum == 2 * 14 * c.moe_topk);
    }
    // the bias rule by hand: above the mean -gamma, below +gamma, at the mean unchanged; counters zeroed
    std::vector<int64_t> before(load, load + c.n_moe * c.n_experts);
    m.moe_update_bias(0.25);
    for (int j = 0; j < c.n_moe; j++) {
        int64_t sum = 0;
        for (int e = 0; e < c.n_experts; e++) sum += before[j * c.n_experts + e];
        for (int e = 0; e < c.n_experts; e++) {
            int64_t v = sum - (int64_t)c.n_experts * before[j * c.n_experts + e];
            CHECK(m.param(P_MOE_BIAS, j)[e] == (v > 0 ? 0.25f : v < 0 ? -0.25f : 0.0f));
            CHECK(load[j * c.n_experts + e] == 0);
        }
    }
}
