/*
train_gpt.cu: the dense GPT trainer (nanochat architecture), in the spirit of llm.c.

This file reads like the model: the config, the parameter and activation layout, forward as a list
of op calls in model order, backward as the same list in reverse, then the optimizer groups, the
checkpoint format and the training loop with its command line.

Builds (see Makefile):
  make train_gpt_cpu   g++ -x c++ (this file), OpenMP, fp32 CPU reference ops from llmc/cpu/
  (the GPU build of this file, with the kernels of llmc/cuda/, is a later milestone)

The model is templated on the element type `Real` so that the test suite can instantiate it in
double and check the whole gradient against finite differences (test/test_model.cpp, which
includes this file with TESTING defined, as llm.c's test_gpt2.c does).

The math is ../shared/spec/model.md (section numbers below refer to it).
*/
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "llmc/utils.h"
#include "llmc/rng.h"
#include "llmc/scaling.h"
#include "llmc/cpu/embedding.h"
#include "llmc/cpu/rmsnorm.h"
#include "llmc/cpu/matmul.h"
#include "llmc/cpu/rope.h"
#include "llmc/cpu/qknorm.h"
#include "llmc/cpu/attention.h"
#include "llmc/cpu/relu2.h"
#include "llmc/cpu/residual.h"
#include "llmc/cpu/smear.h"
#include "llmc/cpu/value_embed.h"
#include "llmc/cpu/backout.h"
#include "llmc/cpu/crossentropy.h"

// ------------------------------------------------------------------------------------------------
// Config (§1): llmc::ModelShape from llmc/scaling.h holds nanochat's GPTConfig fields, the feature
// flags (§4) and what follows from them (padded vocab, per-layer windows, value-embedding layers,
// parameter counts, FLOPs per token); derive_model_shape() builds it from --depth and validates it.

typedef llmc::ModelShape GPTConfig;

// ------------------------------------------------------------------------------------------------
// Parameters (§2). One allocation; each tensor group is a slice. Per-layer tensors are stacked
// (L, ...) in memory (value embeddings and ve_gate only over the VE layers); files use nanochat's
// per-layer names. The enum order is the §2 table order, which also keys the init RNG streams (§6).

enum ParamId {
    P_WTE, P_CQ, P_CK, P_CV, P_ATTN_PROJ, P_VE_GATE, P_FC, P_MLP_PROJ, P_VALUE_EMBEDS, P_LM_HEAD,
    P_RESID_LAMBDAS, P_X0_LAMBDAS, P_SMEAR_GATE, P_SMEAR_LAMBDA, P_BACKOUT_LAMBDA, NUM_PARAM_TENSORS
};

struct ParamSpec {
    size_t offset = 0;   // element offset in the parameter buffer
    int count = 0;       // number of stacked matrices (L, n_ve_layers, or 1); 0 = tensor absent
    int rows = 0, cols = 0;  // shape of one matrix (cols = 1 for vectors)
    size_t numel() const { return (size_t)count * rows * cols; }
    size_t matrix_numel() const { return (size_t)rows * cols; }
};

inline void param_layout(const GPTConfig& c, ParamSpec* spec, size_t* total) {
    int L = c.n_layer, C = c.n_embd, D = c.head_dim, H = c.n_head, Hkv = c.n_kv_head;
    int Vp = c.padded_vocab_size, nve = c.n_ve_layers;
    auto set = [&](int id, int count, int rows, int cols) { spec[id].count = count; spec[id].rows = rows; spec[id].cols = cols; };
    set(P_WTE, 1, Vp, C);
    set(P_CQ, L, H * D, C);
    set(P_CK, L, Hkv * D, C);
    set(P_CV, L, Hkv * D, C);
    set(P_ATTN_PROJ, L, C, H * D);
    set(P_VE_GATE, nve, Hkv, 12);
    set(P_FC, L, 4 * C, C);
    set(P_MLP_PROJ, L, C, 4 * C);
    set(P_VALUE_EMBEDS, nve, Vp, Hkv * D);
    set(P_LM_HEAD, 1, Vp, C);
    set(P_RESID_LAMBDAS, c.lambdas ? 1 : 0, L, 1);
    set(P_X0_LAMBDAS, c.lambdas ? 1 : 0, L, 1);
    set(P_SMEAR_GATE, c.smear ? 1 : 0, 1, 24);
    set(P_SMEAR_LAMBDA, c.smear ? 1 : 0, 1, 1);
    set(P_BACKOUT_LAMBDA, c.backout ? 1 : 0, 1, 1);
    size_t off = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) { spec[i].offset = off; off += spec[i].numel(); }
    *total = off;
}

// nanochat state-dict name of matrix `j` of tensor `id` (j = layer, or VE-layer slot)
inline std::string param_name(const GPTConfig& c, int id, int j) {
    auto ve_layer = [&](int slot) { int n = 0; for (int i = 0; i < c.n_layer; i++) if (c.has_ve[i] && n++ == slot) return i; return -1; };
    auto h = [&](int layer) { return "transformer.h." + std::to_string(layer) + "."; };
    switch (id) {
        case P_WTE: return "transformer.wte.weight";
        case P_CQ: return h(j) + "attn.c_q.weight";
        case P_CK: return h(j) + "attn.c_k.weight";
        case P_CV: return h(j) + "attn.c_v.weight";
        case P_ATTN_PROJ: return h(j) + "attn.c_proj.weight";
        case P_VE_GATE: return h(ve_layer(j)) + "attn.ve_gate.weight";
        case P_FC: return h(j) + "mlp.c_fc.weight";
        case P_MLP_PROJ: return h(j) + "mlp.c_proj.weight";
        case P_VALUE_EMBEDS: return "value_embeds." + std::to_string(ve_layer(j)) + ".weight";
        case P_LM_HEAD: return "lm_head.weight";
        case P_RESID_LAMBDAS: return "resid_lambdas";
        case P_X0_LAMBDAS: return "x0_lambdas";
        case P_SMEAR_GATE: return "smear_gate.weight";
        case P_SMEAR_LAMBDA: return "smear_lambda";
        case P_BACKOUT_LAMBDA: return "backout_lambda";
    }
    return "?";
}

// shape of one named tensor in files (PyTorch shapes of §2)
inline std::vector<int64_t> param_file_shape(int id, const ParamSpec& s) {
    switch (id) {
        case P_RESID_LAMBDAS: case P_X0_LAMBDAS: return {s.rows};
        case P_SMEAR_LAMBDA: case P_BACKOUT_LAMBDA: return {1};
        default: return {s.rows, s.cols};
    }
}

// ------------------------------------------------------------------------------------------------
// The model

template <typename Real>
struct GPT {
    GPTConfig config;
    int B = 0, T = 0;  // activation sizes allocated for (micro-batch rows, sequence length)

    ParamSpec spec[NUM_PARAM_TENSORS];
    size_t num_params = 0;
    std::vector<Real> params, grads;  // one allocation each

    // RoPE tables (max_pos = 10 * sequence_len, §1.5), fp32 in every build
    int rope_len = 0;
    std::vector<float> rope_cos, rope_sin;

    // activations: one allocation, sliced by build_activations()
    std::vector<Real> acts;
    std::vector<int> act_idx, act_targets;  // copies of the current batch (needed by backward)
    Real *emb, *e, *rstd0, *x0, *xin, *ln1, *rstd1, *qn, *rstd_q, *kn, *rstd_k, *v, *ve, *gamma, *att,
        *lse, *xattn, *ln2, *rstd2, *fc_pre, *fc_act, *xout, *xf, *lnf, *rstdf, *logits, *losses;
    // scratch: shared across layers (forward temporaries, backward gradients)
    Real *tmp_q, *tmp_k, *tmp_c, *dx, *dx0, *dxmid, *dln, *dfc, *datt, *dq, *dk, *dv, *dve;
    double last_loss = 0.0;
    int last_valid = 0;

    Real* param(int id) { return params.data() + spec[id].offset; }
    Real* grad(int id) { return grads.data() + spec[id].offset; }
    Real* param(int id, int j) { return param(id) + (size_t)j * spec[id].matrix_numel(); }
    Real* grad(int id, int j) { return grad(id) + (size_t)j * spec[id].matrix_numel(); }

    void init(const GPTConfig& cfg) {
        config = cfg;
        param_layout(config, spec, &num_params);
        params.assign(num_params, Real(0));
        grads.assign(num_params, Real(0));
        rope_len = 10 * config.sequence_len;
        int D = config.head_dim;
        rope_cos.assign((size_t)rope_len * D / 2, 0.0f);
        rope_sin.assign((size_t)rope_len * D / 2, 0.0f);
        rope_table(rope_cos.data(), rope_sin.data(), rope_len, D, 100000.0);
    }

    // §6 initialization. Each (tensor, matrix) draws from its own stream keyed by
    // (seed, 1000·table index + matrix index), row-major, normals by Box-Muller in double.
    void init_weights(uint64_t seed) {
        const GPTConfig& c = config;
        int L = c.n_layer;
        double s = std::sqrt(3.0) / std::sqrt((double)c.n_embd);
        for (int id = 0; id < NUM_PARAM_TENSORS; id++) {
            for (int j = 0; j < spec[id].count; j++) {
                llmc::Rng rng(seed, (uint64_t)id * 1000 + j);
                Real* p = param(id, j);
                size_t n = spec[id].matrix_numel();
                for (size_t k = 0; k < n; k++) {
                    double val = 0.0;
                    switch (id) {
                        case P_WTE: val = rng.normal(0.0, 0.8); break;
                        case P_LM_HEAD: val = rng.normal(0.0, 0.001); break;
                        case P_CQ: case P_CK: case P_CV: case P_VALUE_EMBEDS: val = rng.uniform(-s, s); break;
                        case P_FC: val = rng.uniform(-0.4 * s, 0.4 * s); break;
                        case P_ATTN_PROJ: case P_MLP_PROJ: val = 0.0; break;
                        case P_VE_GATE: case P_SMEAR_GATE: val = rng.uniform(0.0, 0.02); break;
                        case P_SMEAR_LAMBDA: val = 0.0; break;
                        case P_BACKOUT_LAMBDA: val = 0.2; break;
                        case P_RESID_LAMBDAS: val = 1.15 - 0.10 * (double)k / std::max(L - 1, 1); break;
                        case P_X0_LAMBDAS: val = 0.20 - 0.15 * (double)k / std::max(L - 1, 1); break;
                    }
                    p[k] = (Real)(float)val;  // rounded once to fp32 (also in the double build)
                }
            }
        }
    }

    // Activation memory for micro-batches of B rows of T tokens. Called once before training
    // (and again only if the shape changes, e.g. for sampling): never inside a step.
    void build_activations(int B_, int T_) {
        if (B_ == B && T_ == T && !acts.empty()) return;
        B = B_; T = T_;
        LLMC_CHECK(T <= rope_len, "sequence length %d exceeds the RoPE table (%d positions)", T, rope_len);
        const GPTConfig& c = config;
        size_t N = (size_t)B * T, C = c.n_embd, L = c.n_layer, H = c.n_head, Hkv = c.n_kv_head, D = c.head_dim;
        size_t Vp = c.padded_vocab_size, nve = c.n_ve_layers;
        struct Slot { Real** ptr; size_t n; };
        std::vector<Slot> slots = {
            {&emb, N * C}, {&e, N * C}, {&rstd0, N}, {&x0, N * C},
            {&xin, L * N * C}, {&ln1, L * N * C}, {&rstd1, L * N},
            {&qn, L * N * H * D}, {&rstd_q, L * N * H}, {&kn, L * N * Hkv * D}, {&rstd_k, L * N * Hkv},
            {&v, L * N * Hkv * D}, {&ve, nve * N * Hkv * D}, {&gamma, nve * N * Hkv},
            {&att, L * N * H * D}, {&lse, L * N * H}, {&xattn, L * N * C},
            {&ln2, L * N * C}, {&rstd2, L * N}, {&fc_pre, L * N * 4 * C}, {&fc_act, L * N * 4 * C},
            {&xout, L * N * C}, {&xf, N * C}, {&lnf, N * C}, {&rstdf, N}, {&logits, N * Vp}, {&losses, N},
            {&tmp_q, N * H * D}, {&tmp_k, N * Hkv * D}, {&tmp_c, N * C}, {&dx, N * C}, {&dx0, N * C},
            {&dxmid, N * C}, {&dln, N * C}, {&dfc, N * 4 * C}, {&datt, N * H * D}, {&dq, N * H * D},
            {&dk, N * Hkv * D}, {&dv, N * Hkv * D}, {&dve, N * Hkv * D},
        };
        size_t total = 0;
        for (auto& s : slots) total += s.n;
        acts.assign(total, Real(0));
        size_t off = 0;
        for (auto& s : slots) { *s.ptr = acts.data() + off; off += s.n; }
        act_idx.assign(N, 0);
        act_targets.assign(N, -1);
    }

    // per-layer slices of the stacked activations
    Real* L_(Real* base, int l, size_t per_row) { return base + (size_t)l * B * T * per_row; }
    int ve_slot(int l) const { int n = 0; for (int i = 0; i < l; i++) n += config.has_ve[i]; return n; }

    // Forward (§3.2). idx, targets: (B, T). targets may be null (no loss). Returns the mean loss
    // over valid targets (0 with a warning when none is valid, §15).
    double forward(const int* idx, const int* targets, int B_, int T_) {
        build_activations(B_, T_);
        const GPTConfig& c = config;
        int N = B * T, C = c.n_embd, L = c.n_layer, H = c.n_head, Hkv = c.n_kv_head, D = c.head_dim;
        int V = c.vocab_size, Vp = c.padded_vocab_size;
        for (int i = 0; i < N; i++) {
            LLMC_CHECK(idx[i] >= 0 && idx[i] < V, "input token %d at position %d is outside the vocabulary [0, %d)", idx[i], i, V);
            act_idx[i] = idx[i];
            act_targets[i] = targets ? targets[i] : -1;
        }
        const int* ix = act_idx.data();

        // 1. token embedding, then RMSNorm
        embedding_forward(emb, ix, param(P_WTE), N, C);
        rmsnorm_forward(e, rstd0, emb, N, C);
        // 2. smear: mix in the previous token's (pre-smear) embedding through a learned gate
        if (c.smear) smear_forward(x0, e, param(P_SMEAR_GATE), *param(P_SMEAR_LAMBDA), B, T, C);
        else std::copy(e, e + (size_t)N * C, x0);
        // 4. the blocks
        const Real* x = x0;
        for (int l = 0; l < L; l++) {
            Real* xin_l = L_(xin, l, C);
            Real *ln1_l = L_(ln1, l, C), *rstd1_l = L_(rstd1, l, 1);
            Real *qn_l = L_(qn, l, H * D), *rq_l = L_(rstd_q, l, H), *kn_l = L_(kn, l, Hkv * D), *rk_l = L_(rstd_k, l, Hkv);
            Real *v_l = L_(v, l, Hkv * D), *att_l = L_(att, l, H * D), *lse_l = L_(lse, l, H);
            Real *xattn_l = L_(xattn, l, C), *ln2_l = L_(ln2, l, C), *rstd2_l = L_(rstd2, l, 1);
            Real *fc_pre_l = L_(fc_pre, l, 4 * C), *fc_act_l = L_(fc_act, l, 4 * C), *xout_l = L_(xout, l, C);
            // 4.1 lambdas: x <- a_l x + b_l x0
            if (c.lambdas) lambdas_forward(xin_l, x, x0, param(P_RESID_LAMBDAS)[l], param(P_X0_LAMBDAS)[l], (long)N * C);
            else std::copy(x, x + (size_t)N * C, xin_l);
            // 4.2 attention (§3.3)
            rmsnorm_forward(ln1_l, rstd1_l, xin_l, N, C);
            matmul_forward(tmp_q, ln1_l, param(P_CQ, l), N, C, H * D);
            matmul_forward(tmp_k, ln1_l, param(P_CK, l), N, C, Hkv * D);
            matmul_forward(v_l, ln1_l, param(P_CV, l), N, C, Hkv * D);
            if (c.has_ve[l]) {
                int s = ve_slot(l);
                Real* ve_s = ve + (size_t)s * N * Hkv * D;
                embedding_forward(ve_s, ix, param(P_VALUE_EMBEDS, s), N, Hkv * D);
                ve_gate_forward(v_l, gamma + (size_t)s * N * Hkv, ln1_l, ve_s, param(P_VE_GATE, s), N, C, Hkv, D);
            }
            rope_forward(tmp_q, tmp_q, rope_cos.data(), rope_sin.data(), B, T, H, D, 0);
            rope_forward(tmp_k, tmp_k, rope_cos.data(), rope_sin.data(), B, T, Hkv, D, 0);
            qknorm_forward(qn_l, rq_l, tmp_q, N * H, D);
            qknorm_forward(kn_l, rk_l, tmp_k, N * Hkv, D);
            attention_forward(att_l, lse_l, qn_l, kn_l, v_l, B, T, H, Hkv, D, c.window[l]);
            matmul_forward(tmp_c, att_l, param(P_ATTN_PROJ, l), N, H * D, C);
            residual_forward(xattn_l, xin_l, tmp_c, (long)N * C);
            // 4.3 MLP (§3.5)
            rmsnorm_forward(ln2_l, rstd2_l, xattn_l, N, C);
            matmul_forward(fc_pre_l, ln2_l, param(P_FC, l), N, C, 4 * C);
            relu2_forward(fc_act_l, fc_pre_l, (long)N * 4 * C);
            matmul_forward(tmp_c, fc_act_l, param(P_MLP_PROJ, l), N, 4 * C, C);
            residual_forward(xout_l, xattn_l, tmp_c, (long)N * C);
            x = xout_l;
        }
        // 5. backout: subtract a learned fraction of the middle layer's output
        if (c.backout) backout_forward(xf, x, L_(xout, L / 2, C), *param(P_BACKOUT_LAMBDA), (long)N * C);
        else std::copy(x, x + (size_t)N * C, xf);
        // 6. final norm and unembedding (padded vocab; only the first V columns are read)
        rmsnorm_forward(lnf, rstdf, xf, N, C);
        matmul_forward(logits, lnf, param(P_LM_HEAD), N, C, Vp);
        if (!targets) return 0.0;
        // 7-8. softcap + cross-entropy (per-row losses; gradient later, in backward)
        softcap_crossentropy_forward_backward(losses, (Real*)nullptr, logits, act_targets.data(), N, V, Vp, 15.0f, 0.0f);
        double sum = 0.0;
        int valid = 0;
        for (int i = 0; i < N; i++) if (act_targets[i] != -1) { sum += (double)losses[i]; valid++; }
        last_valid = valid;
        last_loss = valid ? sum / valid : 0.0;
        return last_loss;
    }

    void zero_grad() { std::fill(grads.begin(), grads.end(), Real(0)); }

    // Backward of the last forward(). Parameter gradients ACCUMULATE into grads, scaled by
    // loss_scale (1 / grad_accum_steps), so micro-batches add up to the mean gradient.
    void backward(float loss_scale = 1.0f) {
        const GPTConfig& c = config;
        int N = B * T, C = c.n_embd, L = c.n_layer, H = c.n_head, Hkv = c.n_kv_head, D = c.head_dim;
        int V = c.vocab_size, Vp = c.padded_vocab_size;
        size_t NC = (size_t)N * C;
        const int* ix = act_idx.data();
        if (last_valid == 0) { fprintf(stderr, "warning: micro-batch with no valid targets: loss and gradient are 0\n"); return; }
        // 8-7. dlogits = scale·(p - onehot)·(1 - (z/15)^2), in place over the logits
        Real* dlogits = logits;
        softcap_crossentropy_forward_backward(losses, dlogits, logits, act_targets.data(), N, V, Vp, 15.0f, loss_scale / (float)last_valid);
        // 6. unembedding and final norm
        std::fill(dln, dln + NC, Real(0));
        matmul_backward(dln, grad(P_LM_HEAD), dlogits, lnf, param(P_LM_HEAD), N, C, Vp);
        std::fill(dx, dx + NC, Real(0));
        rmsnorm_backward(dx, dln, lnf, rstdf, N, C);
        // 5. backout: dx_mid collects -λ·G, added when the backward reaches layer L/2
        if (c.backout) {
            std::fill(dxmid, dxmid + NC, Real(0));
            backout_backward(dxmid, grad(P_BACKOUT_LAMBDA), dx, L_(xout, L / 2, C), *param(P_BACKOUT_LAMBDA), (long)NC);
        }
        if (c.lambdas) std::fill(dx0, dx0 + NC, Real(0));
        // 4. the blocks in reverse; dx holds the gradient of the current layer's output
        for (int l = L - 1; l >= 0; l--) {
            Real* xin_l = L_(xin, l, C);
            Real *ln1_l = L_(ln1, l, C), *rstd1_l = L_(rstd1, l, 1);
            Real *qn_l = L_(qn, l, H * D), *rq_l = L_(rstd_q, l, H), *kn_l = L_(kn, l, Hkv * D), *rk_l = L_(rstd_k, l, Hkv);
            Real *v_l = L_(v, l, Hkv * D), *att_l = L_(att, l, H * D), *lse_l = L_(lse, l, H);
            Real *ln2_l = L_(ln2, l, C), *rstd2_l = L_(rstd2, l, 1);
            Real *fc_pre_l = L_(fc_pre, l, 4 * C), *fc_act_l = L_(fc_act, l, 4 * C);
            if (c.backout && l == L / 2) for (size_t i = 0; i < NC; i++) dx[i] += dxmid[i];
            // MLP: xout = xattn + proj(relu²(fc(rms(xattn))))
            std::fill(dfc, dfc + (size_t)N * 4 * C, Real(0));
            matmul_backward(dfc, grad(P_MLP_PROJ, l), dx, fc_act_l, param(P_MLP_PROJ, l), N, 4 * C, C);
            relu2_backward(dfc, dfc, fc_pre_l, (long)N * 4 * C);
            std::fill(dln, dln + NC, Real(0));
            matmul_backward(dln, grad(P_FC, l), dfc, ln2_l, param(P_FC, l), N, C, 4 * C);
            rmsnorm_backward(dx, dln, ln2_l, rstd2_l, N, C);  // dx += : now the gradient of xattn
            // attention: xattn = xin + proj(attn(rms(xin)))
            std::fill(datt, datt + (size_t)N * H * D, Real(0));
            matmul_backward(datt, grad(P_ATTN_PROJ, l), dx, att_l, param(P_ATTN_PROJ, l), N, H * D, C);
            attention_backward(dq, dk, dv, datt, att_l, lse_l, qn_l, kn_l, v_l, B, T, H, Hkv, D, c.window[l]);
            qknorm_backward(dq, dq, qn_l, rq_l, N * H, D);
            qknorm_backward(dk, dk, kn_l, rk_l, N * Hkv, D);
            rope_backward(dq, dq, rope_cos.data(), rope_sin.data(), B, T, H, D, 0);
            rope_backward(dk, dk, rope_cos.data(), rope_sin.data(), B, T, Hkv, D, 0);
            std::fill(dln, dln + NC, Real(0));
            if (c.has_ve[l]) {
                int s = ve_slot(l);
                const Real* ve_s = ve + (size_t)s * N * Hkv * D;
                ve_gate_backward(dln, dve, grad(P_VE_GATE, s), dv, ln1_l, ve_s, gamma + (size_t)s * N * Hkv, param(P_VE_GATE, s), N, C, Hkv, D);
                embedding_backward(grad(P_VALUE_EMBEDS, s), dve, ix, N, Hkv * D);
            }
            matmul_backward(dln, grad(P_CQ, l), dq, ln1_l, param(P_CQ, l), N, C, H * D);
            matmul_backward(dln, grad(P_CK, l), dk, ln1_l, param(P_CK, l), N, C, Hkv * D);
            matmul_backward(dln, grad(P_CV, l), dv, ln1_l, param(P_CV, l), N, C, Hkv * D);
            rmsnorm_backward(dx, dln, ln1_l, rstd1_l, N, C);  // dx += : now the gradient of xin
            // lambdas: xin = a·x + b·x0 (x = previous layer's output, or x0 itself at layer 0)
            if (c.lambdas) {
                const Real* xprev = l > 0 ? L_(xout, l - 1, C) : x0;
                lambdas_backward(dx, dx0, grad(P_RESID_LAMBDAS) + l, grad(P_X0_LAMBDAS) + l, dx, xprev, x0,
                                 param(P_RESID_LAMBDAS)[l], param(P_X0_LAMBDAS)[l], (long)NC);
            }
        }
        // dx is now the gradient reaching x0 through layer 0's residual input; add the x0 paths
        if (c.lambdas) for (size_t i = 0; i < NC; i++) dx[i] += dx0[i];
        // 2. smear, then 1. embedding norm and the scatter-add into wte
        Real* de = dx0;  // reuse: dx0 is consumed
        if (c.smear) smear_backward(de, grad(P_SMEAR_GATE), grad(P_SMEAR_LAMBDA), dx, e, param(P_SMEAR_GATE), *param(P_SMEAR_LAMBDA), B, T, C);
        else std::copy(dx, dx + NC, de);
        std::fill(dln, dln + NC, Real(0));
        rmsnorm_backward(dln, de, e, rstd0, N, C);
        embedding_backward(grad(P_WTE), dln, ix, N, C);
    }
};

#ifndef TESTING
int main(int argc, char** argv) {
    LLMC_MAIN_GUARD({
        (void)argc; (void)argv;
        fprintf(stderr, "train_gpt: trainer main loop not built yet\n");
        return 1;
    })
}
#endif
