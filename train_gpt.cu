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
#include <memory>
#include <vector>
#include <sys/stat.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "llmc/utils.h"
#include "llmc/rng.h"
#include "llmc/cli.h"
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

// ------------------------------------------------------------------------------------------------
// Optimizer (§9): AdamW for embeddings, unembedding and scalars; Muon for every matrix under
// transformer.h. State is one allocation per kind: opt_m (Adam first moment, or Muon momentum)
// and opt_v (Adam second moment) indexed like the parameters, and the NorMuon second moments S.

#include "llmc/adamw.h"
#include "llmc/muon.h"
#include "llmc/schedule.h"

inline bool is_muon_param(int id) {
    return id == P_CQ || id == P_CK || id == P_CV || id == P_ATTN_PROJ || id == P_VE_GATE || id == P_FC || id == P_MLP_PROJ;
}
inline int adam_group_of(int id) {
    switch (id) {
        case P_LM_HEAD: return llmc::ADAM_LM_HEAD;
        case P_WTE: return llmc::ADAM_WTE;
        case P_VALUE_EMBEDS: return llmc::ADAM_VALUE_EMBEDS;
        case P_RESID_LAMBDAS: return llmc::ADAM_RESID;
        case P_X0_LAMBDAS: return llmc::ADAM_X0;
        default: return llmc::ADAM_SMEAR;  // smear_gate, smear_lambda, backout_lambda
    }
}

struct Optimizer {
    std::vector<float> opt_m, opt_v, opt_s;
    std::vector<size_t> s_offset[NUM_PARAM_TENSORS];  // per matrix: offset of its S in opt_s
    llmc::MuonScratch scratch;

    void init(const GPT<float>& m) {
        opt_m.assign(m.num_params, 0.0f);
        opt_v.assign(m.num_params, 0.0f);
        size_t off = 0;
        for (int id = 0; id < NUM_PARAM_TENSORS; id++) {
            s_offset[id].clear();
            if (!is_muon_param(id)) continue;
            for (int j = 0; j < m.spec[id].count; j++) {
                s_offset[id].push_back(off);
                off += llmc::muon_second_moment_size(m.spec[id].rows, m.spec[id].cols);
                scratch.reserve(m.spec[id].rows, m.spec[id].cols);  // allocate once, before training
            }
        }
        opt_s.assign(off, 0.0f);
    }

    // one optimizer step at iteration `it` (0-based); the AdamW step count is it + 1
    void step(GPT<float>& m, const llmc::Recipe& r, int it) {
        int N = r.num_iterations;
        double lrm = llmc::lr_multiplier(it, N, r.warmup_steps, r.warmdown_ratio, r.final_lr_frac);
        float muon_lr = (float)(r.muon_lr * lrm);
        float momentum = (float)llmc::muon_momentum(it, N, r.warmdown_ratio);
        float wd = (float)llmc::muon_weight_decay(it, N, r.weight_decay_scaled);
        for (int id = 0; id < NUM_PARAM_TENSORS; id++) {
            const ParamSpec& sp = m.spec[id];
            if (sp.count == 0) continue;
            if (is_muon_param(id)) {
                for (int j = 0; j < sp.count; j++) {
                    size_t o = sp.offset + (size_t)j * sp.matrix_numel();
                    llmc::muon_update(m.params.data() + o, opt_m.data() + o, opt_s.data() + s_offset[id][j], m.grads.data() + o,
                                      sp.rows, sp.cols, muon_lr, momentum, wd, scratch);
                }
            } else {
                const llmc::AdamGroup& g = r.adam[adam_group_of(id)];
                llmc::adamw_update(m.params.data() + sp.offset, opt_m.data() + sp.offset, opt_v.data() + sp.offset,
                                   m.grads.data() + sp.offset, (long)sp.numel(), (float)(g.lr * lrm), (float)g.beta1,
                                   (float)g.beta2, (float)g.eps, (float)g.weight_decay, it + 1);
            }
        }
    }
};

// ------------------------------------------------------------------------------------------------
// Checkpoints (design.md §5): model_<step>.safetensors (nanochat tensor names), optim_<step>.safetensors,
// meta_<step>.json (model_config, flags, step, loader state, recipe). Each file is written under a
// temporary name and renamed; the meta file is written last, so a complete meta file means a
// complete checkpoint.

#include "llmc/json.h"
#include "llmc/safetensors.h"
#include "llmc/dataloader.h"

inline std::string ckpt_path(const std::string& dir, const char* kind, int step, const char* ext) {
    return llmc::strfmt("%s/%s_%06d.%s", dir.c_str(), kind, step, ext);
}

inline llmc::Json model_config_json(const GPTConfig& c) {
    llmc::Json j = llmc::Json::object();
    j.set("sequence_len", c.sequence_len);
    j.set("vocab_size", c.vocab_size);
    j.set("n_layer", c.n_layer);
    j.set("n_head", c.n_head);
    j.set("n_kv_head", c.n_kv_head);
    j.set("n_embd", c.n_embd);
    j.set("window_pattern", c.window_pattern);
    j.set("short_window", c.short_window);
    j.set("smear", c.smear);
    j.set("value_embeds", c.value_embeds);
    j.set("lambdas", c.lambdas);
    j.set("backout", c.backout);
    j.set("windows", c.windows);
    return j;
}

inline void save_checkpoint(const std::string& dir, int step, GPT<float>& m, const Optimizer& opt, const llmc::Json& extra) {
    llmc::SafetensorsWriter w, wo;
    for (int id = 0; id < NUM_PARAM_TENSORS; id++) {
        const ParamSpec& sp = m.spec[id];
        for (int j = 0; j < sp.count; j++) {
            std::string name = param_name(m.config, id, j);
            size_t o = sp.offset + (size_t)j * sp.matrix_numel();
            w.add(name, param_file_shape(id, sp), m.params.data() + o);
            if (is_muon_param(id)) {
                wo.add(name + ".momentum_buffer", param_file_shape(id, sp), opt.opt_m.data() + o);
                wo.add(name + ".second_momentum_buffer", {(int64_t)llmc::muon_second_moment_size(sp.rows, sp.cols)},
                       opt.opt_s.data() + opt.s_offset[id][j]);
            } else {
                wo.add(name + ".exp_avg", param_file_shape(id, sp), opt.opt_m.data() + o);
                wo.add(name + ".exp_avg_sq", param_file_shape(id, sp), opt.opt_v.data() + o);
            }
        }
    }
    w.metadata.push_back({"format", "pt"});
    w.write(ckpt_path(dir, "model", step, "safetensors"));
    wo.write(ckpt_path(dir, "optim", step, "safetensors"));
    llmc::Json meta = llmc::Json::object();
    meta.set("step", step);
    meta.set("model_config", model_config_json(m.config));
    for (auto& kv : extra.as_object()) meta.set(kv.first, kv.second);
    llmc::write_file_atomic(ckpt_path(dir, "meta", step, "json"), llmc::json_dump(meta, 2) + "\n");
}

// Load weights (and optimizer state when opt != null) of the checkpoint whose meta file is given.
inline llmc::Json load_checkpoint(const std::string& meta_path, GPT<float>& m, Optimizer* opt) {
    llmc::Json meta = llmc::json_parse(llmc::read_file(meta_path), meta_path);
    int step = (int)meta["step"].as_int();
    llmc::Json want = model_config_json(m.config);
    const llmc::Json& have = meta["model_config"];
    for (auto& kv : want.as_object()) {
        LLMC_CHECK(have.has(kv.first) && llmc::json_dump(have[kv.first], -1) == llmc::json_dump(kv.second, -1),
                   "checkpoint '%s': model_config.%s is %s but this run has %s (model flags must match to resume)", meta_path.c_str(),
                   kv.first.c_str(), have.has(kv.first) ? llmc::json_dump(have[kv.first], -1).c_str() : "missing",
                   llmc::json_dump(kv.second, -1).c_str());
    }
    std::string dir = meta_path.substr(0, meta_path.find_last_of('/') == std::string::npos ? 0 : meta_path.find_last_of('/'));
    if (dir.empty()) dir = ".";
    llmc::SafetensorsFile f(ckpt_path(dir, "model", step, "safetensors"));
    std::unique_ptr<llmc::SafetensorsFile> fo;
    if (opt) fo.reset(new llmc::SafetensorsFile(ckpt_path(dir, "optim", step, "safetensors")));
    for (int id = 0; id < NUM_PARAM_TENSORS; id++) {
        const ParamSpec& sp = m.spec[id];
        for (int j = 0; j < sp.count; j++) {
            std::string name = param_name(m.config, id, j);
            size_t o = sp.offset + (size_t)j * sp.matrix_numel();
            f.read(name, param_file_shape(id, sp), m.params.data() + o);
            if (!opt) continue;
            if (is_muon_param(id)) {
                fo->read(name + ".momentum_buffer", param_file_shape(id, sp), opt->opt_m.data() + o);
                fo->read(name + ".second_momentum_buffer", {(int64_t)llmc::muon_second_moment_size(sp.rows, sp.cols)},
                         opt->opt_s.data() + opt->s_offset[id][j]);
            } else {
                fo->read(name + ".exp_avg", param_file_shape(id, sp), opt->opt_m.data() + o);
                fo->read(name + ".exp_avg_sq", param_file_shape(id, sp), opt->opt_v.data() + o);
            }
        }
    }
    return meta;
}

// "DIR" -> DIR/meta_<largest step>.json; a path ending in .json is taken as is
inline std::string find_latest_meta(const std::string& where) {
    if (where.size() > 5 && where.substr(where.size() - 5) == ".json") return where;
    std::vector<std::string> metas;
    try { metas = llmc::glob_files(where + "/meta_*.json"); } catch (const llmc::Error&) {
        LLMC_FAIL("--resume %s: no checkpoint (meta_*.json) found there", where.c_str());
    }
    return metas.back();  // sorted, and the step is zero-padded
}

// ------------------------------------------------------------------------------------------------
// Evaluation (§14): validation loss and bits per byte over the same val batches every time.

#include "llmc/tokenizer.h"
#include "llmc/datadir.h"
#include "llmc/sampler.h"

struct EvalResult { double loss = 0, bpb = 0; int64_t tokens = 0; };

inline EvalResult evaluate(GPT<float>& m, llmc::DataLoader& val, int B, int T, int64_t eval_tokens,
                           const std::vector<int32_t>* token_bytes, std::vector<int>& inputs, std::vector<int>& targets) {
    val.reset();
    // At most the split's size: the default 40M tokens is sized for FineWeb, and on a small split
    // (tinyshakespeare's ~30k tokens) more would only repeat the same documents.
    int64_t split_tokens = 0;
    for (const auto& f : val.files) split_tokens += f.ntok;
    int64_t batches = std::max<int64_t>(1, std::min<int64_t>(eval_tokens, split_tokens) / ((int64_t)B * T));
    double nats = 0.0, nats_counted = 0.0;
    int64_t bytes = 0, count = 0;
    for (int64_t b = 0; b < batches; b++) {
        val.next_batch(inputs.data(), targets.data());
        m.forward(inputs.data(), targets.data(), B, T);
        for (int i = 0; i < B * T; i++) {
            int y = targets[i];
            if (y < 0) continue;
            nats += (double)m.losses[i];
            count++;
            int nb = token_bytes ? (*token_bytes)[y] : 0;
            if (nb > 0) { nats_counted += (double)m.losses[i]; bytes += nb; }
        }
    }
    EvalResult r;
    r.tokens = count;
    r.loss = count ? nats / count : 0.0;
    r.bpb = bytes ? nats_counted / (std::log(2.0) * (double)bytes) : INFINITY;
    return r;
}

// Sample a continuation with a full forward pass per token over the last T positions (the KV-cache
// engine is a later milestone). Causality makes the logits at the last real position independent of
// the padding after it, so the activation shape stays fixed at (1, T).
inline std::vector<uint32_t> generate(GPT<float>& m, std::vector<uint32_t> ids, int max_new, float temperature, int top_k, llmc::Rng& rng) {
    int T = m.config.sequence_len, V = m.config.vocab_size, Vp = m.config.padded_vocab_size;
    std::vector<int> window(T, 0);
    std::vector<float> z(V);
    for (int k = 0; k < max_new; k++) {
        int n = std::min<int>((int)ids.size(), T);
        for (int i = 0; i < T; i++) window[i] = i < n ? (int)ids[ids.size() - n + i] : 0;
        m.forward(window.data(), nullptr, 1, T);
        const float* l = m.logits + (size_t)(n - 1) * Vp;
        for (int v = 0; v < V; v++) z[v] = 15.0f * std::tanh(l[v] / 15.0f);  // the softcap (§3.2 step 7)
        ids.push_back((uint32_t)llmc::sample_next_token(z.data(), V, temperature, top_k, rng));
    }
    return ids;
}

// ------------------------------------------------------------------------------------------------
// Command line, set-up and the training loop (§10-§12)

struct TrainerOptions {
    // model (nanochat names)
    int depth = 20, aspect_ratio = 64, head_dim = 128, n_kv_head = -1, max_seq_len = 2048, short_window = -1;
    std::string window_pattern = "SSSL", arch = "nanochat";
    int smear = -1, value_embeds = -1, lambdas = -1, backout = -1, windows = -1;  // -1: from --arch
    // batch, horizon and optimizer
    int device_batch_size = 32, num_iterations = -1, warmup_steps = 40;
    long long total_batch_size = -1;
    double target_flops = -1, target_param_data_ratio = 12;
    double embedding_lr = 0.3, unembedding_lr = 0.008, matrix_lr = 0.02, scalar_lr = 0.5, weight_decay = 0.28;
    double warmdown_ratio = 0.65, final_lr_frac = 0.05;
    // data
    std::string data_dir = "data/tinyshakespeare", train_data, val_data, tokenizer, loader = "bestfit";
    int vocab_size = -1, bos_id = -1;
    // evaluation, checkpoints, logging
    int eval_every = 250, save_every = -1;
    long long eval_tokens = 80LL * 524288;
    std::string out_dir = "out", resume, log_file;
    // sampling at the end
    int num_samples = 3, sample_tokens = 128, top_k = 50;
    double temperature = 0.8;
    std::string prompt = "";
    // misc
    int seed = 42, threads = -1;
};

inline std::string fmt_duration(double s) {
    if (!std::isfinite(s) || s < 0) return "?";
    int t = (int)(s + 0.5);
    if (t >= 3600) return llmc::strfmt("%dh%02dm", t / 3600, t / 60 % 60);
    if (t >= 60) return llmc::strfmt("%dm%02ds", t / 60, t % 60);
    return llmc::strfmt("%ds", t);
}

inline double now_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline int train_main(int argc, char** argv) {
    TrainerOptions o;
    llmc::Cli cli("train_gpt", "Train a nanochat-architecture GPT (CPU build: fp32 reference ops, OpenMP).");
    cli.add("depth", &o.depth, "model depth: every other size and hyperparameter derives from it");
    cli.add("aspect-ratio", &o.aspect_ratio, "n_embd = depth * aspect-ratio, rounded up to head-dim");
    cli.add("head-dim", &o.head_dim, "attention head dimension");
    cli.add("n-kv-head", &o.n_kv_head, "key/value heads (GQA); -1 = n_head");
    cli.add("max-seq-len", &o.max_seq_len, "context length T");
    cli.add("window-pattern", &o.window_pattern, "sliding-window pattern of S/L letters tiled over layers");
    cli.add("short-window", &o.short_window, "width of S windows; -1 = 128*ceil(T/512)");
    cli.add("arch", &o.arch, "nanochat (all extras on) or core (all off)");
    cli.add("smear", &o.smear, "smear gate on/off (1/0); -1 = from --arch");
    cli.add("value-embeds", &o.value_embeds, "value embeddings on/off; -1 = from --arch");
    cli.add("lambdas", &o.lambdas, "residual/x0 lambdas on/off; -1 = from --arch");
    cli.add("backout", &o.backout, "backout on/off; -1 = from --arch");
    cli.add("windows", &o.windows, "sliding windows on/off; -1 = from --arch");
    cli.add("device-batch-size", &o.device_batch_size, "rows per micro-step");
    cli.add("total-batch-size", &o.total_batch_size, "tokens per optimizer step; -1 = Power Lines rule from depth");
    cli.add("num-iterations", &o.num_iterations, "optimizer steps; -1 = from --target-flops or the data:param ratio");
    cli.add("target-flops", &o.target_flops, "training FLOPs budget; -1 = unused");
    cli.add("target-param-data-ratio", &o.target_param_data_ratio, "training tokens per scaling parameter");
    cli.add("embedding-lr", &o.embedding_lr, "AdamW lr of wte (value embeddings get half)");
    cli.add("unembedding-lr", &o.unembedding_lr, "AdamW lr of lm_head");
    cli.add("matrix-lr", &o.matrix_lr, "Muon lr");
    cli.add("scalar-lr", &o.scalar_lr, "AdamW lr of the lambdas");
    cli.add("weight-decay", &o.weight_decay, "Muon weight decay before scaling");
    cli.add("warmup-steps", &o.warmup_steps, "lr warmup steps");
    cli.add("warmdown-ratio", &o.warmdown_ratio, "fraction of steps in the final linear lr decay");
    cli.add("final-lr-frac", &o.final_lr_frac, "lr multiplier the warmdown decays towards");
    cli.add("data-dir", &o.data_dir, "directory with *_train_*.bin, *_val_*.bin and tokenizer.{tiktoken,json}");
    cli.add("train-data", &o.train_data, "train shard glob; default <data-dir>/*_train_*.bin");
    cli.add("val-data", &o.val_data, "val shard glob; default <data-dir>/*_val_*.bin");
    cli.add("tokenizer", &o.tokenizer, "tokenizer stem (stem.tiktoken + stem.json); default <data-dir>/tokenizer; 'none' for none");
    cli.add("vocab-size", &o.vocab_size, "vocabulary size when there is no tokenizer");
    cli.add("bos-id", &o.bos_id, "document delimiter id when there is no tokenizer (e.g. 50256)");
    cli.add("loader", &o.loader, "bestfit (BOS-aligned packing) or contiguous (llm.c)");
    cli.add("eval-every", &o.eval_every, "evaluate val loss / bpb every N steps (and at the end); -1 = only at the end");
    cli.add("eval-tokens", &o.eval_tokens, "validation tokens per evaluation (at most one pass over the split)");
    cli.add("save-every", &o.save_every, "checkpoint every N steps (and at the end); -1 = only at the end");
    cli.add("out-dir", &o.out_dir, "checkpoint and log directory");
    cli.add("resume", &o.resume, "checkpoint directory (latest meta_*.json) or meta file to resume from");
    cli.add("log-file", &o.log_file, "JSON Lines log; default <out-dir>/log.jsonl");
    cli.add("num-samples", &o.num_samples, "continuations sampled at the end");
    cli.add("sample-tokens", &o.sample_tokens, "tokens per sample");
    cli.add("temperature", &o.temperature, "sampling temperature (0 = greedy)");
    cli.add("top-k", &o.top_k, "sample among the top k tokens (0 = all)");
    cli.add("prompt", &o.prompt, "text the samples continue (after BOS)");
    cli.add("seed", &o.seed, "seed of the init and sampling RNG");
    cli.add("threads", &o.threads, "OpenMP threads; -1 = all cores");
    if (!cli.parse(argc, argv)) return 0;
#ifdef _OPENMP
    if (o.threads > 0) omp_set_num_threads(o.threads);
#endif

    // ---- data and tokenizer ----
    bool default_train = o.train_data.empty(), default_val = o.val_data.empty();  // read from --data-dir
    if (default_train) o.train_data = o.data_dir + "/*_train_*.bin";
    if (default_val) o.val_data = o.data_dir + "/*_val_*.bin";
    LLMC_CHECK(o.temperature >= 0.0, "--temperature must be >= 0 (0 = greedy), got %g", o.temperature);
    LLMC_CHECK(o.top_k >= 0, "--top-k must be >= 0 (0 = all tokens), got %d", o.top_k);
    LLMC_CHECK(o.num_samples >= 0 && o.sample_tokens >= 0, "--num-samples and --sample-tokens must be >= 0");
    // a tokenizer named on the command line must exist; the default one (next to the shards) may not
    if (!o.tokenizer.empty() && o.tokenizer != "none")
        LLMC_CHECK(llmc::file_exists(o.tokenizer + ".tiktoken"), "--tokenizer: '%s.tiktoken' not found (give the stem, without .tiktoken, or 'none')",
                   o.tokenizer.c_str());
    if (o.tokenizer.empty()) o.tokenizer = o.data_dir + "/tokenizer";
    std::unique_ptr<llmc::Tokenizer> tok;
    if (o.tokenizer != "none" && llmc::file_exists(o.tokenizer + ".tiktoken")) tok.reset(new llmc::Tokenizer(llmc::tokenizer_load(o.tokenizer)));
    int vocab = o.vocab_size, bos = o.bos_id;
    if (tok) {
        // the vocabulary is the tokenizer's (prepare_data may have made it smaller than asked)
        LLMC_CHECK(vocab == -1 || vocab == (int)tok->n_vocab, "--vocab-size %d differs from n_vocab %u of the tokenizer '%s.json'; "
                   "leave --vocab-size out (it is for --tokenizer none)", vocab, tok->n_vocab, o.tokenizer.c_str());
        vocab = (int)tok->n_vocab;
        if (bos == -1) bos = (int)tok->bos_id;
    }
    // shards read from --data-dir must be exactly those its manifest lists, encoded with this tokenizer
    struct stat dst;
    if (default_train && stat(o.data_dir.c_str(), &dst) == 0 && S_ISDIR(dst.st_mode) &&
        !llmc::manifest_check(o.data_dir, o.train_data, default_val ? o.val_data : "", tok.get(), "'" + o.tokenizer + "'"))
        printf("note: no %s in '%s' (made by an older prepare_data?): its shards are not checked against one\n", llmc::kManifestName,
               o.data_dir.c_str());
    LLMC_CHECK(vocab > 0, "no tokenizer at '%s.tiktoken' and no --vocab-size: cannot size the model", o.tokenizer.c_str());
    LLMC_CHECK(o.loader == "bestfit" || o.loader == "contiguous", "--loader must be bestfit or contiguous (got '%s')", o.loader.c_str());
    llmc::LoaderMode mode = o.loader == "bestfit" ? llmc::LoaderMode::BESTFIT : llmc::LoaderMode::CONTIGUOUS;
    LLMC_CHECK(mode == llmc::LoaderMode::CONTIGUOUS || bos >= 0, "the bestfit loader needs a BOS id: give --tokenizer or --bos-id");

    // ---- model shape and recipe (§1.2, §11) ----
    llmc::ModelOptions mo;
    mo.depth = o.depth; mo.aspect_ratio = o.aspect_ratio; mo.head_dim = o.head_dim; mo.n_kv_head = o.n_kv_head;
    mo.vocab_size = vocab; mo.sequence_len = o.max_seq_len; mo.window_pattern = o.window_pattern; mo.short_window = o.short_window;
    if (o.arch == "core") mo.set_arch_core();
    else LLMC_CHECK(o.arch == "nanochat", "--arch must be nanochat or core (got '%s')", o.arch.c_str());
    auto flag = [](int v, bool& f, const char* name) {
        LLMC_CHECK(v >= -1 && v <= 1, "--%s must be 0, 1 or -1 (got %d)", name, v);
        if (v != -1) f = v == 1;
    };
    flag(o.smear, mo.smear, "smear"); flag(o.value_embeds, mo.value_embeds, "value-embeds"); flag(o.lambdas, mo.lambdas, "lambdas");
    flag(o.backout, mo.backout, "backout"); flag(o.windows, mo.windows, "windows");
    llmc::RecipeOptions ro;
    ro.target_param_data_ratio = o.target_param_data_ratio; ro.num_iterations = o.num_iterations; ro.target_flops = o.target_flops;
    ro.total_batch_size = o.total_batch_size; ro.device_batch_size = o.device_batch_size;
    ro.unembedding_lr = o.unembedding_lr; ro.embedding_lr = o.embedding_lr; ro.scalar_lr = o.scalar_lr; ro.matrix_lr = o.matrix_lr;
    ro.weight_decay = o.weight_decay; ro.warmup_steps = o.warmup_steps; ro.warmdown_ratio = o.warmdown_ratio; ro.final_lr_frac = o.final_lr_frac;
    llmc::Recipe r = llmc::derive_recipe(mo, ro);
    const GPTConfig& cfg = r.shape;
    int B = o.device_batch_size, T = cfg.sequence_len, A = r.grad_accum_steps, N = r.num_iterations;

    printf("model: depth %d, n_embd %d, heads %d/%d (kv), head_dim %d, vocab %d (padded %d), T %d, windows", cfg.n_layer, cfg.n_embd,
           cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.vocab_size, cfg.padded_vocab_size, T);
    for (int w : cfg.window) printf(" %d", w);
    printf("\nextras: smear %d value_embeds %d lambdas %d backout %d windows %d\n", cfg.smear, cfg.value_embeds, cfg.lambdas, cfg.backout, cfg.windows);
    printf("parameters: %lld total, %lld scaling; %.3g FLOPs/token\n", (long long)cfg.params.total, (long long)cfg.params.scaling,
           (double)cfg.flops_per_token);
    printf("recipe: %d steps (%s) x %lld tokens = %.3g tokens; grad accum %d x (%d x %d); muon lr %.5g, wd %.4g\n", N, r.horizon.c_str(),
           (long long)r.total_batch_size, (double)r.total_tokens, A, B, T, r.muon_lr, r.weight_decay_scaled);

    GPT<float> model;
    model.init(cfg);
    model.init_weights((uint64_t)o.seed);
    model.build_activations(B, T);
    Optimizer opt;
    opt.init(model);

    llmc::DataLoader train, val;
    train.init(o.train_data, B, T, 0, 1, mode, bos, vocab, tok ? "the tokenizer's bos_token" : "--bos-id");
    bool have_val = true;
    try { (void)llmc::glob_files(o.val_data); } catch (const llmc::Error&) { have_val = false; }
    if (have_val) {
        val.name = "val";
        val.quiet = true;
        val.init(o.val_data, B, T, 0, 1, mode, bos, vocab, tok ? "the tokenizer's bos_token" : "--bos-id");
    } else {
        printf("note: no validation shards match '%s': skipping evaluation\n", o.val_data.c_str());
    }

    // ---- resume ----
    int start_step = 0;
    if (!o.resume.empty()) {
        std::string meta_path = find_latest_meta(o.resume);
        llmc::Json meta = load_checkpoint(meta_path, model, &opt);
        start_step = (int)meta["step"].as_int();
        LLMC_CHECK(meta["num_iterations"].as_int() == N && meta["total_batch_size"].as_int() == r.total_batch_size &&
                   meta["device_batch_size"].as_int() == B,
                   "checkpoint '%s' was trained with %lld steps of %lld tokens (device batch %lld); this run has %d steps of %lld (device batch %d)",
                   meta_path.c_str(), (long long)meta["num_iterations"].as_int(), (long long)meta["total_batch_size"].as_int(),
                   (long long)meta["device_batch_size"].as_int(), N, (long long)r.total_batch_size, B);
        std::vector<int64_t> st;
        for (auto& x : meta["loader_state"].as_array()) st.push_back(x.as_int());
        train.state_from_ints(st);
        printf("resumed from %s at step %d\n", meta_path.c_str(), start_step);
    }

    // ---- output ----
    llmc::make_dirs(o.out_dir, "--out-dir");
    if (o.log_file.empty()) o.log_file = o.out_dir + "/log.jsonl";
    llmc::File log(o.log_file, start_step > 0 ? "ab" : "wb");
    auto log_line = [&](const llmc::Json& j) { std::string s = llmc::json_dump(j, -1) + "\n"; log.write(s.data(), s.size()); fflush(log.f); };

    std::vector<int> inputs((size_t)B * T), targets((size_t)B * T);
    double t_start = now_seconds(), train_time = 0.0;
    int timed_steps = 0;
    for (int step = start_step; step <= N; step++) {
        bool last = step == N;
        // evaluate at step 0, every eval_every steps and at the end (§10); not again right after a resume
        if (have_val && (last || (o.eval_every > 0 && step % o.eval_every == 0)) && !(step == start_step && step > 0)) {
            EvalResult e = evaluate(model, val, B, T, o.eval_tokens, tok ? &tok->token_bytes : nullptr, inputs, targets);
            printf("step %5d/%d | val loss %.6f | val bpb %.4f | %lld tokens\n", step, N, e.loss, e.bpb, (long long)e.tokens);
            llmc::Json j = llmc::Json::object();
            j.set("step", step); j.set("val_loss", e.loss); j.set("val_bpb", std::isfinite(e.bpb) ? llmc::Json(e.bpb) : llmc::Json());
            log_line(j);
        }
        if (step > start_step && (last || (o.save_every > 0 && step % o.save_every == 0))) {
            llmc::Json extra = llmc::Json::object();
            extra.set("num_iterations", N);
            extra.set("total_batch_size", (long long)r.total_batch_size);
            extra.set("device_batch_size", B);
            extra.set("seed", o.seed);
            llmc::Json st = llmc::Json::array();
            for (int64_t x : train.state_to_ints()) st.arr.push_back(llmc::Json((long long)x));
            extra.set("loader_state", st);
            save_checkpoint(o.out_dir, step, model, opt, extra);
            printf("saved checkpoint %s\n", ckpt_path(o.out_dir, "meta", step, "json").c_str());
        }
        if (last) break;

        // ---- one optimizer step: A micro-batches, mean gradient, then the update (§12) ----
        double t0 = now_seconds();
        model.zero_grad();
        double loss = 0.0;
        for (int a = 0; a < A; a++) {
            train.next_batch(inputs.data(), targets.data());
            loss += model.forward(inputs.data(), targets.data(), B, T) / A;
            model.backward(1.0f / A);
        }
        if (!std::isfinite(loss))
            LLMC_FAIL("training loss is %f at step %d: stopping (checkpoints already in '%s' are kept)", loss, step, o.out_dir.c_str());
        // gradient norm (logged only): deterministic parallel sum, 8 double lanes per chunk so it
        // vectorizes (a serial double loop over every parameter was ~3% of a d4 step)
        double gn = 0.0;
        const float* gp = model.grads.data();
        cpu_chunked_sum((long)model.grads.size(), 1, &gn, [gp](long a, long b, double* part) {
            double acc[8] = {0};
            long i = a;
            for (; i + 8 <= b; i += 8)
                for (int k = 0; k < 8; k++) acc[k] += (double)gp[i + k] * (double)gp[i + k];
            for (; i < b; i++) acc[0] += (double)gp[i] * (double)gp[i];
            for (int k = 0; k < 8; k++) part[0] += acc[k];
        });
        gn = std::sqrt(gn);
        opt.step(model, r, step);
        double dt = now_seconds() - t0;
        if (step > start_step) { train_time += dt; timed_steps++; }  // the first step warms caches
        double tok_s = (double)r.total_batch_size / dt;
        double lrm = llmc::lr_multiplier(step, N, r.warmup_steps, r.warmdown_ratio, r.final_lr_frac);
        double elapsed = now_seconds() - t_start;
        double eta = timed_steps ? train_time / timed_steps * (N - step - 1) : NAN;
        printf("step %5d/%d | loss %.6f | lrm %.3f | gnorm %.4f | %.0f ms | %.0f tok/s | %.2f GFLOP/s | elapsed %s | eta %s\n", step + 1, N,
               loss, lrm, gn, dt * 1e3, tok_s, tok_s * (double)cfg.flops_per_token * 1e-9, fmt_duration(elapsed).c_str(), fmt_duration(eta).c_str());
        fflush(stdout);
        llmc::Json j = llmc::Json::object();
        j.set("step", step + 1); j.set("loss", loss); j.set("lrm", lrm); j.set("grad_norm", gn); j.set("dt_ms", dt * 1e3);
        j.set("tok_per_s", tok_s); j.set("gflops", tok_s * (double)cfg.flops_per_token * 1e-9);
        log_line(j);
    }
    if (timed_steps) {
        double tps = (double)r.total_batch_size * timed_steps / train_time;
        printf("throughput: %.0f tokens/s, %.2f model GFLOP/s (mean over %d steps)\n", tps, tps * (double)cfg.flops_per_token * 1e-9, timed_steps);
    }

    // ---- samples ----
    if (o.num_samples > 0 && o.sample_tokens > 0) {
        llmc::Rng rng((uint64_t)o.seed, 999);
        for (int s = 0; s < o.num_samples; s++) {
            std::vector<uint32_t> ids;
            if (bos >= 0) ids.push_back((uint32_t)bos);
            if (tok && !o.prompt.empty()) for (uint32_t id : llmc::encode_ordinary(*tok, o.prompt)) ids.push_back(id);
            if (ids.empty()) ids.push_back(0);
            size_t n0 = ids.size();
            ids = generate(model, ids, o.sample_tokens, (float)o.temperature, o.top_k, rng);
            printf("--- sample %d ---\n", s + 1);
            if (tok) {
                std::vector<uint32_t> text(ids.begin() + (ids[0] == (uint32_t)bos ? 1 : 0), ids.end());
                printf("%s\n", llmc::decode_text(*tok, text).c_str());
            } else {
                for (size_t i = n0; i < ids.size(); i++) printf("%u ", ids[i]);
                printf("\n");
            }
        }
    }
    return 0;
}

#ifndef TESTING
int main(int argc, char** argv) {
    LLMC_MAIN_GUARD(return train_main(argc, argv);)
}
#endif
