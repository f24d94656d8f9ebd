/*
train_gpt.cu: the dense GPT trainer (nanochat architecture), in the spirit of llm.c.

This file reads like the model: the config, the parameter and activation layout, forward as a list
of op calls in model order, backward as the same list in reverse, then the optimizer groups, the
checkpoint format and the training loop with its command line.

The same model is also the hybrid one of train_moe.cu (docs/model.md#hybrid): each layer's mixer is
softmax attention or Lightning Attention and its FFN the dense MLP or a mixture of experts, as the
config says; the dense model has softmax and the MLP everywhere. train_moe.cu defines
LLMC_TRAIN_MOE, includes this file and sets its defaults, which switches on the hybrid flags.

Builds (see Makefile):
  make train_gpt_cpu   g++ -x c++ (this file), OpenMP, fp32 CPU reference ops from llmc/cpu/
  (the GPU build of this file, with the kernels of llmc/cuda/, is a later milestone)

The model is templated on the element type `Real` so that the test suite can instantiate it in
double and check the whole gradient against finite differences (test/test_model.cpp, which
includes this file with TESTING defined, as llm.c's test_gpt2.c does).

The math, the optimizer, the recipe and the checkpoint format are described in docs/model.md; the
comments below cite its sections by anchor (docs/model.md#forward, docs/model.md#adamw, ...).
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
#include <climits>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "llmc/utils.h"
#include "llmc/rng.h"
#include "llmc/cli.h"
#include "llmc/scaling.h"
#include "llmc/cpu/rope.h"  // rope_table (the tables are computed on the host in every build)
// the hybrid layers' configuration, sizes, slopes, bias update and metrics (host code in every build)
#include "llmc/cpu/lightning.h"
#include "llmc/cpu/moe.h"
// The op set the model calls (see llmc/ops_cpu.h): the CUDA kernels when nvcc compiles this file or
// g++ compiles it against SIM, else the CPU reference ops.
#if defined(__CUDACC__) || defined(LLMC_SIM)
#define LLMC_GPU_BUILD 1
#include "llmc/ops_cuda.cuh"
#else
#include "llmc/ops_cpu.h"
#endif

// ------------------------------------------------------------------------------------------------
// Config (docs/model.md#config): llmc::ModelShape from llmc/scaling.h holds nanochat's GPTConfig
// fields, the feature flags (docs/model.md#features) and what follows from them (padded vocab,
// per-layer windows, value-embedding layers, parameter counts, FLOPs per token);
// derive_model_shape() builds it from --depth and validates it.

typedef llmc::ModelShape GPTConfig;

// The program this file is built as: train_gpt, or train_moe (train_moe.cu defines LLMC_TRAIN_MOE,
// includes this file and supplies its defaults: the same model, optimizer, checkpoints and loop).
#ifdef LLMC_TRAIN_MOE
static const char* const kProgram = "train_moe";
#else
static const char* const kProgram = "train_gpt";
#endif

// ------------------------------------------------------------------------------------------------
// Parameters (docs/model.md#parameters). One allocation; each tensor group is a slice. Per-layer
// tensors are stacked in memory over the layers that have them: softmax attention over the softmax
// layers, the dense MLP over the dense-FFN layers, lightning and MoE tensors over theirs (all L
// layers of each in the dense model), value embeddings and ve_gate over the VE layers; a layer's
// slot in its stack is layer_slot(). Files use nanochat's per-layer names with the real layer
// index. The enum order is the order of the tables in docs/model.md#parameters and
// docs/model.md#hybrid-params, which also keys the init RNG streams (docs/model.md#init).

enum ParamId {
    P_WTE, P_CQ, P_CK, P_CV, P_ATTN_PROJ, P_VE_GATE, P_FC, P_MLP_PROJ, P_VALUE_EMBEDS, P_LM_HEAD,
    P_RESID_LAMBDAS, P_X0_LAMBDAS, P_SMEAR_GATE, P_SMEAR_LAMBDA, P_BACKOUT_LAMBDA,
    // hybrid models only (docs/model.md#hybrid-params): the lightning mixers, the MoE FFNs
    P_LA_Q, P_LA_K, P_LA_V, P_LA_GATE, P_LA_PROJ, P_LA_NORM,
    P_MOE_ROUTER, P_MOE_BIAS, P_MOE_FC, P_MOE_UP, P_MOE_PROJ, P_MOE_SHARED_FC, P_MOE_SHARED_UP, P_MOE_SHARED_PROJ,
    NUM_PARAM_TENSORS
};

struct ParamSpec {
    size_t offset = 0;   // element offset in the parameter buffer
    int count = 0;       // number of stacked matrices (layers of its kind, VE layers, experts x MoE layers, or 1); 0 = absent
    int rows = 0, cols = 0;  // shape of one matrix (cols = 1 for vectors)
    size_t stride = 0;       // elements from one matrix of the stack to the next: matrix_numel(), except
                             // for c_q, c_k, c_v, whose matrices interleave per layer (param_layout)
    size_t numel() const { return (size_t)count * rows * cols; }
    size_t matrix_numel() const { return (size_t)rows * cols; }
    size_t at(int j) const { return offset + (size_t)j * stride; }  // element offset of matrix j
};

// The slot of layer l in the stack of the layers of its own kind (kind[i] == kind[l]), and back:
// the layer of slot j among the layers with kind[i] == want (-1 if none).
inline int layer_slot(const std::vector<bool>& kind, int l) {
    int n = 0;
    for (int i = 0; i < l; i++) n += kind[i] == kind[l];
    return n;
}
inline int slot_layer(const std::vector<bool>& kind, bool want, int j) {
    int n = 0;
    for (int i = 0; i < (int)kind.size(); i++)
        if (kind[i] == want && n++ == j) return i;
    return -1;
}

// The MoE layer configuration of llmc/cpu/moe.h (docs/moe.md#api) of a model with MoE layers.
inline MoeConfig moe_config(const GPTConfig& c) {
    MoeConfig m;
    m.C = c.n_embd; m.E = c.n_experts; m.K = c.moe_topk; m.F = c.moe_hidden; m.Fs = c.moe_shared * c.moe_hidden;
    m.swiglu = c.moe_swiglu; m.rho = c.moe_rho; m.alpha = c.moe_aux_alpha; m.groups = c.moe_groups; m.topk_groups = c.moe_topk_groups;
    return m;
}

// *total: the buffer's length, the parameter count plus alignment gaps (see the end)
inline void param_layout(const GPTConfig& c, ParamSpec* spec, size_t* total) {
    int L = c.n_layer, C = c.n_embd, D = c.head_dim, H = c.n_head, Hkv = c.n_kv_head;
    int Vp = c.padded_vocab_size, nve = c.n_ve_layers;
    int Ls = c.n_softmax, Lm = c.n_dense_mlp, Lla = c.n_lightning, Lmoe = c.n_moe;
    int E = c.n_experts, F = c.moe_hidden, Fs = c.moe_shared * c.moe_hidden, N = H * D;  // N: lightning inner width
    auto set = [&](int id, int count, int rows, int cols) { spec[id].count = count; spec[id].rows = rows; spec[id].cols = cols; };
    set(P_WTE, 1, Vp, C);
    set(P_CQ, Ls, H * D, C);
    set(P_CK, Ls, Hkv * D, C);
    set(P_CV, Ls, Hkv * D, C);
    set(P_ATTN_PROJ, Ls, C, H * D);
    set(P_VE_GATE, nve, Hkv, 12);
    set(P_FC, Lm, 4 * C, C);
    set(P_MLP_PROJ, Lm, C, 4 * C);
    set(P_VALUE_EMBEDS, nve, Vp, Hkv * D);
    set(P_LM_HEAD, 1, Vp, C);
    set(P_RESID_LAMBDAS, c.lambdas ? 1 : 0, L, 1);
    set(P_X0_LAMBDAS, c.lambdas ? 1 : 0, L, 1);
    set(P_SMEAR_GATE, c.smear ? 1 : 0, 1, 24);
    set(P_SMEAR_LAMBDA, c.smear ? 1 : 0, 1, 1);
    set(P_BACKOUT_LAMBDA, c.backout ? 1 : 0, 1, 1);
    set(P_LA_Q, Lla, N, C);
    set(P_LA_K, Lla, N, C);
    set(P_LA_V, Lla, N, C);
    set(P_LA_GATE, Lla, N, C);
    set(P_LA_PROJ, Lla, C, N);
    set(P_LA_NORM, Lla, N, 1);
    set(P_MOE_ROUTER, Lmoe, E, C);
    set(P_MOE_BIAS, Lmoe, E, 1);
    set(P_MOE_FC, Lmoe * E, F, C);
    set(P_MOE_UP, c.moe_swiglu ? Lmoe * E : 0, F, C);
    set(P_MOE_PROJ, Lmoe * E, C, F);
    set(P_MOE_SHARED_FC, Fs > 0 ? Lmoe : 0, Fs, C);
    set(P_MOE_SHARED_UP, Fs > 0 && c.moe_swiglu ? Lmoe : 0, Fs, C);
    set(P_MOE_SHARED_PROJ, Fs > 0 ? Lmoe : 0, C, Fs);
    // each tensor starts at a multiple of 8 elements, so that its matmul copy (bf16 on a GPU) is
    // 16-byte aligned as cuBLASLt and the vector loads require; the gaps are zeros no op reads.
    // c_q, c_k, c_v interleave: layer slot j holds [Wq_j; Wk_j; Wv_j], one (H + 2 Hkv) D x C matrix,
    // so that the GPU computes q, k and v with one GEMM (docs/model.md#qkv); each stays its own
    // matrix for Muon, the init and the files (a stack with stride (H + 2 Hkv) D C).
    size_t off = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        if (i == P_CK || i == P_CV) continue;  // placed with P_CQ
        spec[i].stride = spec[i].matrix_numel();
        spec[i].offset = off;
        size_t n = spec[i].numel();
        if (i == P_CQ) {
            size_t qkv = (size_t)(H + 2 * Hkv) * D * C;
            spec[P_CQ].stride = spec[P_CK].stride = spec[P_CV].stride = qkv;
            spec[P_CK].offset = off + (size_t)H * D * C;
            spec[P_CV].offset = off + (size_t)(H + Hkv) * D * C;
            n = (size_t)Ls * qkv;
        }
        off += (n + 7) / 8 * 8;
    }
    *total = off;
}

// The balancing bias b is a buffer: in the model file (it changes the forward), but no gradient
// reaches it and no optimizer updates it (docs/moe.md#bias: the trainer's moe_update_bias does).
inline bool is_buffer(int id) { return id == P_MOE_BIAS; }

// Matrices per named tensor: an expert stack is one tensor (E, rows, cols) per MoE layer in files,
// E matrices in memory (Muon orthogonalises each); everything else is one matrix per name.
inline int param_group(const GPTConfig& c, int id) {
    return id == P_MOE_FC || id == P_MOE_UP || id == P_MOE_PROJ ? c.n_experts : 1;
}

// nanochat state-dict name of the tensor holding matrix `j` of tensor `id` (j = slot in its stack)
inline std::string param_name(const GPTConfig& c, int id, int j) {
    auto ve_layer = [&](int slot) { int n = 0; for (int i = 0; i < c.n_layer; i++) if (c.has_ve[i] && n++ == slot) return i; return -1; };
    auto h = [&](int layer) { return "transformer.h." + std::to_string(layer) + "."; };
    int softmax = slot_layer(c.is_lightning, false, j), lightning = slot_layer(c.is_lightning, true, j);
    int mlp = slot_layer(c.is_moe, false, j), moe = slot_layer(c.is_moe, true, j / param_group(c, id));
    switch (id) {
        case P_WTE: return "transformer.wte.weight";
        case P_CQ: return h(softmax) + "attn.c_q.weight";
        case P_CK: return h(softmax) + "attn.c_k.weight";
        case P_CV: return h(softmax) + "attn.c_v.weight";
        case P_ATTN_PROJ: return h(softmax) + "attn.c_proj.weight";
        case P_VE_GATE: return h(ve_layer(j)) + "attn.ve_gate.weight";
        case P_FC: return h(mlp) + "mlp.c_fc.weight";
        case P_MLP_PROJ: return h(mlp) + "mlp.c_proj.weight";
        case P_VALUE_EMBEDS: return "value_embeds." + std::to_string(ve_layer(j)) + ".weight";
        case P_LM_HEAD: return "lm_head.weight";
        case P_RESID_LAMBDAS: return "resid_lambdas";
        case P_X0_LAMBDAS: return "x0_lambdas";
        case P_SMEAR_GATE: return "smear_gate.weight";
        case P_SMEAR_LAMBDA: return "smear_lambda";
        case P_BACKOUT_LAMBDA: return "backout_lambda";
        case P_LA_Q: return h(lightning) + "attn.c_q.weight";
        case P_LA_K: return h(lightning) + "attn.c_k.weight";
        case P_LA_V: return h(lightning) + "attn.c_v.weight";
        case P_LA_GATE: return h(lightning) + "attn.c_gate.weight";
        case P_LA_PROJ: return h(lightning) + "attn.c_proj.weight";
        case P_LA_NORM: return h(lightning) + "attn.norm.weight";
        case P_MOE_ROUTER: return h(moe) + "mlp.router.weight";
        case P_MOE_BIAS: return h(moe) + "mlp.router.e_score_correction_bias";
        case P_MOE_FC: return h(moe) + "mlp.experts.c_fc";
        case P_MOE_UP: return h(moe) + "mlp.experts.c_up";
        case P_MOE_PROJ: return h(moe) + "mlp.experts.c_proj";
        case P_MOE_SHARED_FC: return h(moe) + "mlp.shared.c_fc.weight";
        case P_MOE_SHARED_UP: return h(moe) + "mlp.shared.c_up.weight";
        case P_MOE_SHARED_PROJ: return h(moe) + "mlp.shared.c_proj.weight";
    }
    return "?";
}

// shape of one named tensor in files (PyTorch shapes, docs/model.md#parameters)
inline std::vector<int64_t> param_file_shape(const GPTConfig& c, int id, const ParamSpec& s) {
    switch (id) {
        case P_RESID_LAMBDAS: case P_X0_LAMBDAS: case P_LA_NORM: case P_MOE_BIAS: return {s.rows};
        case P_SMEAR_LAMBDA: case P_BACKOUT_LAMBDA: return {1};
        case P_MOE_FC: case P_MOE_UP: case P_MOE_PROJ: return {param_group(c, id), s.rows, s.cols};
        default: return {s.rows, s.cols};
    }
}

// Activation memory for micro-batches of B rows of T tokens, in elements: `act` of the activation
// type, `stat` of the statistics type (op::Types), `ints` of int (the MoE routing). The sum of the
// slots GPT::build_activations allocates (it checks that they agree); used to say how much memory
// a model needs before trying to allocate it. Per layer only what the backward cannot cheaply
// recompute is kept, and only for the layers of that kind: the norm outputs (ln1, ln2) and relu²
// are recomputed from their inputs in the backward.
struct ActivationSize { size_t act = 0, stat = 0, ints = 0; };

// The scratch the lightning and MoE layers share (they run one at a time): the larger need.
inline size_t mixer_work_numel(const GPTConfig& c, int B, int T) {
    size_t w = 0;
    if (c.n_lightning) {
        LightningSizes z = op::lightning_sizes(B, T, c.n_head, c.head_dim);
        w = std::max(z.work_forward, z.work_backward);
    }
    if (c.n_moe) w = std::max(w, op::moe_workspace_numel(moe_config(c), B, T));
    return w;
}

inline ActivationSize activation_numel(const GPTConfig& c, int B, int T) {
    size_t N = (size_t)B * T, C = c.n_embd, L = c.n_layer, H = c.n_head, Hkv = c.n_kv_head, D = c.head_dim;
    size_t Vp = c.padded_vocab_size, nve = c.n_ve_layers;
    size_t Ls = c.n_softmax, Lm = c.n_dense_mlp, Lla = c.n_lightning, Lmoe = c.n_moe;
    ActivationSize s;
    s.act = N * C * 3                                               // emb, e, x0
          + L * N * C                                               // xin
          + Ls * N * (H + 2 * Hkv) * D + nve * N * Hkv * D           // qkv (qn, kn, v), ve
          + Ls * N * H * D + L * N * C                              // att, xattn
          + Lm * N * 4 * C + L * N * C                              // fc_pre, xout
          + N * C * 2 + N * Vp                                      // xf, lnf, logits
          + N * C + N * 4 * C                                       // ln (recomputed), fc_act (recomputed)
          + N * C * 5 + N * 4 * C                                   // tmp_c, dx, dx0, dxmid, dln, dfc
          + N * H * D + N * (H + 2 * Hkv) * D + N * Hkv * D;          // datt, dqkv, dve
    s.stat = N + L * N * 2 + Ls * N * H + Ls * N * Hkv + nve * N * Hkv + Ls * N * H + N + N;  // rstd0, rstd1/2, rstd_q, rstd_k,
                                                                                              // gamma, lse, rstdf, losses
    if (Lla) {  // p, o, a; r
        LightningSizes z = op::lightning_sizes(B, T, (int)H, (int)D);
        s.act += Lla * (z.p + z.o + z.a);
        s.stat += Lla * z.r;
    }
    if (Lmoe) {  // routing and expert pre-activations (docs/moe.md#saved)
        MoeSavedSize z = op::moe_saved_numel(moe_config(c), B, T);
        s.act += Lmoe * z.real;
        s.ints += Lmoe * z.ints;
    }
    s.act += mixer_work_numel(c, B, T);
    return s;
}

// ------------------------------------------------------------------------------------------------
// The model. One source for every build: the op calls below resolve to op::* of llmc/ops_cpu.h
// (g++: the fp32 reference ops; double in the gradient tests) or llmc/ops_cuda.cuh (nvcc, or g++
// with LLMC_SIM: the CUDA kernels). Tensors live where the ops run ("device" memory, host memory
// on the CPU); the host reads and writes them only through host_params()/upload_params() and the
// other host_* accessors, which on the CPU are the tensors themselves.

template <typename Real>
struct GPT {
    typedef typename op::Types<Real>::act act_t;        // activations, matmul weights
    typedef typename op::Types<Real>::stat stat_t;      // rstd, lse, gates, per-row losses
    typedef typename op::Types<Real>::master master_t;  // master weights, gradients
    typedef typename op::Types<Real>::rope rope_t;
    typedef typename op::Types<Real>::norm norm_t;
    // the matmuls read the master weights themselves when the types agree (CPU, GPU fp32), else a
    // copy in the activation type (bf16) written by the optimizer
    static constexpr bool kWeightsAreMaster = std::is_same<act_t, master_t>::value;

    GPTConfig config;
    int B = 0, T = 0;  // activation sizes allocated for (micro-batch rows, sequence length)

    ParamSpec spec[NUM_PARAM_TENSORS];
    size_t num_params = 0;
    master_t* params = nullptr;  // one allocation each
    master_t* grads = nullptr;
    act_t* weights = nullptr;    // == params, or its bf16 copy
    std::vector<master_t> h_params, h_grads;  // host copies (device builds)

    // RoPE tables (max_pos = 10 * sequence_len, docs/model.md#rope), computed in fp32
    int rope_len = 0;
    rope_t *rope_cos = nullptr, *rope_sin = nullptr;

    // activations: one allocation per element type, sliced by build_activations()
    act_t* acts = nullptr;
    stat_t* stats = nullptr;
    size_t act_bytes = 0;
    act_t *emb, *e, *x0, *xin, *qkv, *ve, *att, *xattn, *fc_pre, *xout, *xf, *lnf, *logits;
    stat_t *rstd0, *rstd1, *rstd2, *rstd_q, *rstd_k, *gamma, *lse, *rstdf, *losses;
    // scratch: shared across layers (recomputed norms and relu², forward temporaries, backward gradients)
    act_t *ln, *fc_act, *tmp_c, *dx, *dx0, *dxmid, *dln, *dfc, *datt, *dqkv, *dve;
    // hybrid layers (docs/model.md#hybrid): lightning's saved p, o, a (stacked over the lightning
    // layers) and r; each MoE layer's routing and pre-activations (moe_saved_numel per layer); the
    // workspace both share
    act_t *la_p = nullptr, *la_o = nullptr, *la_a = nullptr, *moe_real = nullptr, *mix_work = nullptr;
    stat_t* la_r = nullptr;
    int* moe_ints = nullptr;
    // per layer: its slot in the stack of its mixer's kind and of its FFN's kind
    std::vector<int> mixer_slot, ffn_slot;
    MoeConfig moe_cfg;
    stat_t* la_slopes = nullptr;      // (lightning layers, H): the fixed decay slopes
    int64_t* moe_load = nullptr;      // (MoE layers, E): the optimizer step's selection counts
    std::vector<int64_t> h_load;
    double* aux_slots = nullptr;      // (loss slots, MoE layers): each micro-batch's aux losses
    std::vector<const int*> moe_idx_override;  // tests: a fixed routing (N, K) per MoE layer, or null
    // the micro-batches' ids and targets: a ring of slots, one more than a step's micro-batches
    // (the GPU uploads the next batches while the current one is read; llmc/ops_cuda.cuh), and the
    // host's copy of the current targets
    int* tokens = nullptr;
    int n_tok_slots = 2;
    std::vector<int*> idx_slot, tgt_slot;
    int cur = 0;
    std::vector<int> h_targets;
    int last_valid = 0;
    // per micro-batch summed losses (device) and their valid-target counts (host); read after a step
    double* loss_slots = nullptr;
    int n_loss_slots = 0;
    std::vector<int> slot_valid;
    norm_t* norm_buf = nullptr;
    std::vector<stat_t> h_losses;
    std::vector<act_t> h_row;

    GPT() = default;
    GPT(const GPT&) = delete;
    GPT& operator=(const GPT&) = delete;
    ~GPT() {
        for (void* p : {(void*)params, (void*)grads, (void*)rope_cos, (void*)rope_sin, (void*)acts, (void*)stats, (void*)tokens,
                        (void*)loss_slots, (void*)norm_buf, (void*)moe_ints, (void*)la_slopes, (void*)moe_load, (void*)aux_slots})
            op::release(p);
        if (!kWeightsAreMaster) op::release(weights);
    }

    act_t* param(int id) { return weights + spec[id].offset; }  // what the ops read
    act_t* param(int id, int j) { return weights + spec[id].at(j); }
    master_t* mparam(int id) { return params + spec[id].offset; }  // fp32 scalars the kernels read
    master_t* mparam(int id, int j) { return params + spec[id].at(j); }
    master_t* grad(int id) { return grads + spec[id].offset; }
    master_t* grad(int id, int j) { return grads + spec[id].at(j); }

    // Host access to the weights: host_params() is the master weights as the host sees them (a copy
    // fetched from the device in device builds); after changing them, upload_params().
    master_t* host_params() {
        if (!op::kDevice) return params;
        op::to_host(h_params.data(), params, num_params);
        return h_params.data();
    }
    void upload_params() {
        if (op::kDevice) op::to_device(params, h_params.data(), num_params);
        if (!kWeightsAreMaster) op::to_weights(weights, params, num_params);
    }
    master_t* host_grads() {
        if (!op::kDevice) return grads;
        op::to_host(h_grads.data(), grads, num_params);
        return h_grads.data();
    }

    void init(const GPTConfig& cfg) {
        config = cfg;
        param_layout(config, spec, &num_params);
        params = op::alloc<master_t>(num_params);
        grads = op::alloc<master_t>(num_params);
        if constexpr (kWeightsAreMaster) weights = params;
        else weights = op::alloc<act_t>(num_params);
        if (op::kDevice) { h_params.assign(num_params, master_t(0)); h_grads.assign(num_params, master_t(0)); }
        rope_len = 10 * config.sequence_len;
        int D = config.head_dim;
        size_t n = (size_t)rope_len * D / 2;
        std::vector<float> c(n), s(n);
        rope_table(c.data(), s.data(), rope_len, D, 100000.0);
        std::vector<rope_t> cr(c.begin(), c.end()), sr(s.begin(), s.end());  // rounded once when rope_t is bf16
        rope_cos = op::alloc<rope_t>(n);
        rope_sin = op::alloc<rope_t>(n);
        op::to_device(rope_cos, cr.data(), n);
        op::to_device(rope_sin, sr.data(), n);
        norm_buf = op::alloc<norm_t>(1);
        // hybrid layers
        mixer_slot.resize(config.n_layer);
        ffn_slot.resize(config.n_layer);
        for (int l = 0; l < config.n_layer; l++) {
            mixer_slot[l] = layer_slot(config.is_lightning, l);
            ffn_slot[l] = layer_slot(config.is_moe, l);
        }
        if (config.n_lightning) {  // slopes of the global layer index (softmax layers counted), fp32
            int H = config.n_head;
            std::vector<float> sl((size_t)config.n_lightning * H);
            for (int j = 0; j < config.n_lightning; j++)
                lightning_slopes(sl.data() + (size_t)j * H, H, slot_layer(config.is_lightning, true, j), config.n_layer);
            std::vector<stat_t> slr(sl.begin(), sl.end());
            la_slopes = op::alloc<stat_t>(slr.size());
            op::to_device(la_slopes, slr.data(), slr.size());
        }
        if (config.n_moe) {
            moe_cfg = moe_config(config);
            moe_check_config(moe_cfg);
            moe_load = op::alloc<int64_t>((size_t)config.n_moe * config.n_experts);
            h_load.assign((size_t)config.n_moe * config.n_experts, 0);
        }
        moe_idx_override.assign(config.n_moe, nullptr);
    }

    // Initialization (docs/model.md#init). Each (tensor, matrix) draws from its own stream keyed by
    // (seed, 1000·table index + matrix index), row-major, normals by Box-Muller in double.
    void init_weights(uint64_t seed) {
        const GPTConfig& c = config;
        int L = c.n_layer;
        double s = std::sqrt(3.0) / std::sqrt((double)c.n_embd);
        master_t* hp = host_params();
        for (int id = 0; id < NUM_PARAM_TENSORS; id++) {
            for (int j = 0; j < spec[id].count; j++) {
                // the backbone's tensors have fewer than 1000 matrices; the hybrid ones (an expert
                // stack can have more) take their streams from a range of their own
                uint64_t stream = id <= P_BACKOUT_LAMBDA ? (uint64_t)id * 1000 + j : ((uint64_t)id << 32) + j;
                llmc::Rng rng(seed, stream);
                master_t* p = hp + spec[id].at(j);
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
                        // hybrid layers (docs/model.md#hybrid-params)
                        case P_LA_Q: case P_LA_K: case P_LA_V: case P_LA_GATE: case P_MOE_ROUTER: val = rng.uniform(-s, s); break;
                        case P_MOE_FC: case P_MOE_UP: case P_MOE_SHARED_FC: case P_MOE_SHARED_UP: val = rng.uniform(-0.4 * s, 0.4 * s); break;
                        case P_LA_PROJ: case P_MOE_PROJ: case P_MOE_SHARED_PROJ: case P_MOE_BIAS: val = 0.0; break;
                        case P_LA_NORM: val = 1.0; break;
                    }
                    p[k] = (master_t)(float)val;  // rounded once to fp32 (also in the double build)
                }
            }
        }
        upload_params();
    }

    // Activation memory for micro-batches of B rows of T tokens. Called once before training
    // (and again only if the shape changes, e.g. for sampling): never inside a step.
    void build_activations(int B_, int T_) {
        if (B_ == B && T_ == T && acts) return;
        // the hybrid layers' shape limits of this build's kernels: one error before anything runs
        op::check_hybrid_shapes(config.n_moe ? &moe_cfg : nullptr, config.n_lightning, B_, T_, config.n_embd, config.n_head,
                                config.head_dim, config.la_block);
        B = B_; T = T_;
        LLMC_CHECK(T <= rope_len, "sequence length %d exceeds the RoPE table (%d positions)", T, rope_len);
        const GPTConfig& c = config;
        size_t N = (size_t)B * T, C = c.n_embd, L = c.n_layer, H = c.n_head, Hkv = c.n_kv_head, D = c.head_dim;
        size_t Vp = c.padded_vocab_size, nve = c.n_ve_layers;
        size_t Ls = c.n_softmax, Lm = c.n_dense_mlp, Lla = c.n_lightning, Lmoe = c.n_moe;
        LightningSizes lz = op::lightning_sizes(B, T, (int)H, (int)D);
        MoeSavedSize mz = Lmoe ? op::moe_saved_numel(moe_cfg, B, T) : MoeSavedSize();
        struct ASlot { act_t** ptr; size_t n; };
        struct SSlot { stat_t** ptr; size_t n; };
        std::vector<ASlot> aslots = {
            {&emb, N * C}, {&e, N * C}, {&x0, N * C}, {&xin, L * N * C},
            {&qkv, Ls * N * (H + 2 * Hkv) * D}, {&ve, nve * N * Hkv * D},
            {&att, Ls * N * H * D}, {&xattn, L * N * C}, {&fc_pre, Lm * N * 4 * C}, {&xout, L * N * C},
            {&xf, N * C}, {&lnf, N * C}, {&logits, N * Vp}, {&ln, N * C}, {&fc_act, N * 4 * C},
            {&tmp_c, N * C}, {&dx, N * C}, {&dx0, N * C}, {&dxmid, N * C}, {&dln, N * C}, {&dfc, N * 4 * C},
            {&datt, N * H * D}, {&dqkv, N * (H + 2 * Hkv) * D}, {&dve, N * Hkv * D},
            {&la_p, Lla * lz.p}, {&la_o, Lla * lz.o}, {&la_a, Lla * lz.a}, {&moe_real, Lmoe * mz.real},
            {&mix_work, mixer_work_numel(c, B, T)},
        };
        std::vector<SSlot> sslots = {
            {&rstd0, N}, {&rstd1, L * N}, {&rstd2, L * N}, {&rstd_q, Ls * N * H}, {&rstd_k, Ls * N * Hkv},
            {&gamma, nve * N * Hkv}, {&lse, Ls * N * H}, {&rstdf, N}, {&losses, N}, {&la_r, Lla * lz.r},
        };
        // each slot rounded up to 8 elements (16 bytes of bf16) so every slice stays aligned for
        // the kernels' vector loads whatever the shapes
        auto round8 = [](size_t n) { return (n + 7) / 8 * 8; };
        size_t na = 0, ns = 0, raw_a = 0, raw_s = 0;
        for (auto& s : aslots) { na += round8(s.n); raw_a += s.n; }
        for (auto& s : sslots) { ns += round8(s.n); raw_s += s.n; }
        ActivationSize want = activation_numel(c, B, T);
        LLMC_CHECK(raw_a == want.act && raw_s == want.stat && Lmoe * mz.ints == want.ints,
                   "internal: activation_numel() disagrees with build_activations()");
        op::release(acts); op::release(stats); op::release(tokens); op::release(moe_ints);
        acts = nullptr; stats = nullptr; tokens = nullptr; moe_ints = nullptr;
        acts = op::alloc<act_t>(na);
        stats = op::alloc<stat_t>(ns);
        moe_ints = op::alloc<int>(want.ints);
        act_bytes = na * sizeof(act_t) + ns * sizeof(stat_t) + want.ints * sizeof(int);
        size_t off = 0;
        for (auto& s : aslots) { *s.ptr = acts + off; off += round8(s.n); }
        off = 0;
        for (auto& s : sslots) { *s.ptr = stats + off; off += round8(s.n); }
        alloc_token_slots();
        h_targets.assign(N, -1);
        if (op::kDevice) h_losses.assign(N, stat_t(0));
        op::setup((int)N, c.vocab_size, c.n_embd, c.n_head, c.n_kv_head);
        reserve_micro_batches(1);
    }

    void alloc_token_slots() {
        size_t n = (size_t)B * T, stride = (n + 7) / 8 * 8;
        op::release(tokens);
        tokens = nullptr;
        tokens = op::alloc<int>(2 * n_tok_slots * stride);
        idx_slot.assign(n_tok_slots, nullptr);
        tgt_slot.assign(n_tok_slots, nullptr);
        for (int k = 0; k < n_tok_slots; k++) { idx_slot[k] = tokens + (2 * k) * stride; tgt_slot[k] = tokens + (2 * k + 1) * stride; }
    }

    // Room for n micro-batches per optimizer step: their summed losses, and n + 1 token slots,
    // before training.
    void reserve_micro_batches(int n) {
        if (n + 1 > n_tok_slots) {
            n_tok_slots = n + 1;
            op::reserve_token_slots(n_tok_slots);
            if (acts) alloc_token_slots();
        }
        if (n <= n_loss_slots) return;
        op::release(loss_slots); op::release(aux_slots);
        loss_slots = nullptr; aux_slots = nullptr;
        loss_slots = op::alloc<double>(n);
        aux_slots = op::alloc<double>((size_t)n * std::max(config.n_moe, 1));
        n_loss_slots = n;
        slot_valid.assign(n, 0);
    }

    // per-layer slices of the stacked activations
    template <typename E> E* L_(E* base, int l, size_t per_row) { return base + (size_t)l * B * T * per_row; }

    // A softmax layer's q, k, v (or their gradients) in its block of N (H + 2 Hkv) D elements. The
    // CUDA builds (op::kPackedQKV) compute them with one GEMM on [Wq; Wk; Wv], so the block holds
    // rows [q | k | v] per token and every op reads and writes them with a token stride of (H + 2 Hkv) D;
    // the CPU keeps three contiguous tensors (three GEMMs, as nanochat: the reference's rounding).
    struct QKV { act_t *q, *k, *v; long ldq, ldkv; };
    QKV qkv_view(act_t* block) const {
        const GPTConfig& c = config;
        long N = (long)B * T, H = c.n_head, Hkv = c.n_kv_head, D = c.head_dim;
        if (op::kPackedQKV) return {block, block + H * D, block + (H + Hkv) * D, (H + 2 * Hkv) * D, (H + 2 * Hkv) * D};
        return {block, block + N * H * D, block + N * (H + Hkv) * D, H * D, Hkv * D};
    }
    int ve_slot(int l) const { int n = 0; for (int i = 0; i < l; i++) n += config.has_ve[i]; return n; }
    // MoE layer slot j: its saved routing tensors (docs/moe.md#saved) and counters
    act_t* moe_saved(int j) { return moe_real + (size_t)j * op::moe_saved_numel(moe_cfg, B, T).real; }
    int* moe_saved_ints(int j) { return moe_ints + (size_t)j * op::moe_saved_numel(moe_cfg, B, T).ints; }
    int64_t* moe_layer_load(int j) { return moe_load + (size_t)j * config.n_experts; }

    // Forward (docs/model.md#forward), enqueued: idx, targets (host, B x T; targets may be null, no
    // loss). With targets, the summed loss goes to loss slot `slot` (read by slot_loss() after the
    // step; on a GPU nothing here waits for the device), and the MoE layers' aux losses to its aux
    // slot (slot_aux()). train: a training micro-batch, whose expert selections the MoE layers add
    // to the step's load counters (docs/moe.md#bias); evaluation and sampling count nothing.
    void forward_async(const int* idx, const int* targets, int B_, int T_, int slot = 0, bool train = false) {
        build_activations(B_, T_);
        const GPTConfig& c = config;
        int N = B * T, C = c.n_embd, L = c.n_layer, H = c.n_head, Hkv = c.n_kv_head, D = c.head_dim;
        const int QKVW = (H + 2 * Hkv) * D;  // a token's q, k, v
        int V = c.vocab_size, Vp = c.padded_vocab_size, E = c.n_experts, Fs = c.moe_shared * c.moe_hidden;
        int valid = 0;
        for (int i = 0; i < N; i++) {
            LLMC_CHECK(idx[i] >= 0 && idx[i] < V, "input token %d at position %d is outside the vocabulary [0, %d)", idx[i], i, V);
            int y = targets ? targets[i] : -1;
            LLMC_CHECK(y == -1 || (y >= 0 && y < V), "target %d at position %d is outside the vocabulary [0, %d) and not -1 (ignore)", y, i, V);
            h_targets[i] = y;
            valid += y != -1;
        }
        last_valid = valid;
        LLMC_CHECK(slot >= 0 && slot < n_loss_slots, "internal: loss slot %d of %d", slot, n_loss_slots);
        cur = op::set_tokens(idx_slot.data(), tgt_slot.data(), n_tok_slots, idx, targets, N);
        const int* ix = idx_slot[cur];

        // 1. token embedding, then RMSNorm
        op::embedding_forward(emb, ix, param(P_WTE), N, C);
        op::rmsnorm_forward(e, rstd0, emb, N, C);
        // 2. smear: mix in the previous token's (pre-smear) embedding through a learned gate
        if (c.smear) op::smear_forward(x0, e, mparam(P_SMEAR_GATE), mparam(P_SMEAR_LAMBDA), B, T, C);
        else op::copy(x0, e, (size_t)N * C);
        // 4. the blocks
        const act_t* x = x0;
        for (int l = 0; l < L; l++) {
            int ms = mixer_slot[l], fs = ffn_slot[l];  // slots in the stacks of this layer's kinds
            act_t *xin_l = L_(xin, l, C), *xattn_l = L_(xattn, l, C), *xout_l = L_(xout, l, C);
            stat_t *rstd1_l = L_(rstd1, l, 1), *rstd2_l = L_(rstd2, l, 1);
            // 4.1 lambdas: x <- a_l x + b_l x0
            if (c.lambdas) op::lambdas_forward(xin_l, x, x0, mparam(P_RESID_LAMBDAS) + l, mparam(P_X0_LAMBDAS) + l, (long)N * C);
            else op::copy(xin_l, x, (size_t)N * C);
            op::rmsnorm_forward(ln, rstd1_l, xin_l, N, C);
            if (c.is_lightning[l]) {
                // 4.2' Lightning Attention (docs/lightning.md#layer)
                LightningSizes z = op::lightning_sizes(B, T, H, D);
                op::lightning_forward(tmp_c, la_p + ms * z.p, la_o + ms * z.o, la_r + ms * z.r, la_a + ms * z.a, ln, param(P_LA_Q, ms),
                                      param(P_LA_K, ms), param(P_LA_V, ms), param(P_LA_GATE, ms), param(P_LA_PROJ, ms), mparam(P_LA_NORM, ms),
                                      la_slopes + (size_t)ms * H, B, T, C, H, D, c.la_block, mix_work);
            } else {
                // 4.2 attention (docs/model.md#attention)
                QKV a = qkv_view(L_(qkv, ms, QKVW));  // q, k become qn, kn in place
                act_t* att_l = L_(att, ms, H * D);
                stat_t *rq_l = L_(rstd_q, ms, H), *rk_l = L_(rstd_k, ms, Hkv), *lse_l = L_(lse, ms, H);
                if (op::kPackedQKV) {
                    op::matmul_forward(a.q, ln, param(P_CQ, ms), N, C, QKVW);  // [Wq; Wk; Wv]: one GEMM
                } else {
                    op::matmul_forward(a.q, ln, param(P_CQ, ms), N, C, H * D);
                    op::matmul_forward(a.k, ln, param(P_CK, ms), N, C, Hkv * D);
                    op::matmul_forward(a.v, ln, param(P_CV, ms), N, C, Hkv * D);
                }
                if (c.has_ve[l]) {
                    int s = ve_slot(l);
                    act_t* ve_s = ve + (size_t)s * N * Hkv * D;
                    op::embedding_forward(ve_s, ix, param(P_VALUE_EMBEDS, s), N, Hkv * D);
                    op::ve_gate_forward(a.v, gamma + (size_t)s * N * Hkv, ln, ve_s, mparam(P_VE_GATE, s), N, C, Hkv, D, a.ldkv);
                }
                op::rope_qknorm_forward(a.q, rq_l, a.k, rk_l, a.q, a.k, rope_cos, rope_sin, B, T, H, Hkv, D, a.ldq, a.ldkv);
                op::attention_forward(att_l, lse_l, a.q, a.k, a.v, B, T, H, Hkv, D, c.window[l], a.ldq, a.ldkv);
                op::matmul_forward(tmp_c, att_l, param(P_ATTN_PROJ, ms), N, H * D, C);
            }
            op::residual_forward(xattn_l, xin_l, tmp_c, (long)N * C);
            op::rmsnorm_forward(ln, rstd2_l, xattn_l, N, C);
            if (c.is_moe[l]) {
                // 4.3' mixture of experts (docs/moe.md); its aux loss into the aux slot
                op::moe_forward(tmp_c, moe_saved(fs), moe_saved_ints(fs), mix_work, ln, mparam(P_MOE_ROUTER, fs), mparam(P_MOE_BIAS, fs),
                                param(P_MOE_FC, fs * E), c.moe_swiglu ? param(P_MOE_UP, fs * E) : nullptr, param(P_MOE_PROJ, fs * E),
                                Fs ? param(P_MOE_SHARED_FC, fs) : nullptr, Fs && c.moe_swiglu ? param(P_MOE_SHARED_UP, fs) : nullptr,
                                Fs ? param(P_MOE_SHARED_PROJ, fs) : nullptr, moe_cfg, B, T, train ? moe_layer_load(fs) : nullptr,
                                aux_slots + (size_t)slot * c.n_moe + fs, moe_idx_override[fs]);
            } else {
                // 4.3 MLP (docs/model.md#mlp)
                act_t* fc_pre_l = L_(fc_pre, fs, 4 * C);
                op::matmul_forward(fc_pre_l, ln, param(P_FC, fs), N, C, 4 * C);
                op::relu2_forward(fc_act, fc_pre_l, (long)N * 4 * C);
                op::matmul_forward(tmp_c, fc_act, param(P_MLP_PROJ, fs), N, 4 * C, C);
            }
            op::residual_forward(xout_l, xattn_l, tmp_c, (long)N * C);
            x = xout_l;
        }
        // 5. backout: subtract a learned fraction of the middle layer's output
        if (c.backout) op::backout_forward(xf, x, L_(xout, L / 2, C), mparam(P_BACKOUT_LAMBDA), (long)N * C);
        else op::copy(xf, x, (size_t)N * C);
        // 6. final norm and unembedding (padded vocab; only the first V columns are read)
        op::rmsnorm_forward(lnf, rstdf, xf, N, C);
        op::matmul_forward(logits, lnf, param(P_LM_HEAD), N, C, Vp);
        if (!targets) return;
        // 7-8. softcap + cross-entropy (per-row losses; gradient later, in backward)
        op::crossentropy(losses, (act_t*)nullptr, logits, tgt_slot[cur], N, V, Vp, 0.0f);
        op::loss_sum(loss_slots + slot, losses, N);
        slot_valid[slot] = valid;
    }

    // The mean loss over valid targets of the micro-batch in loss slot `slot` (0 with a warning when
    // none is valid, docs/model.md#softcap-loss). Waits for the device.
    double slot_loss(int slot) {
        double sum = 0.0;
        op::to_host(&sum, loss_slots + slot, 1);
        return slot_valid[slot] ? sum / slot_valid[slot] : 0.0;
    }

    // The MoE layers' aux losses of the micro-batch in slot `slot`, summed over the layers (0 without
    // MoE or with --moe-aux-alpha 0), and layer j's alone. Wait for the device.
    double slot_aux(int slot) {
        double sum = 0.0;
        for (int j = 0; j < config.n_moe; j++) sum += slot_aux(slot, j);
        return sum;
    }
    double slot_aux(int slot, int j) {
        double a = 0.0;
        op::to_host(&a, aux_slots + (size_t)slot * config.n_moe + j, 1);
        return a;
    }

    // Forward and the objective its backward differentiates: the mean loss plus the MoE aux losses
    // (0 without targets), synchronously: for evaluation, sampling, tests.
    double forward(const int* idx, const int* targets, int B_, int T_) {
        forward_async(idx, targets, B_, T_, 0);
        return targets ? slot_loss(0) + slot_aux(0) : 0.0;
    }

    // Host views of the last forward's outputs (device builds copy them back first).
    const stat_t* host_losses() {
        if (!op::kDevice) return losses;
        op::to_host(h_losses.data(), losses, h_losses.size());
        return h_losses.data();
    }
    // logits row i (first V columns) as float
    void logits_row(int i, float* out) {
        int V = config.vocab_size;
        const act_t* src = logits + (size_t)i * config.padded_vocab_size;
        if (op::kDevice) {
            h_row.resize(V);
            op::to_host(h_row.data(), src, (size_t)V);
            src = h_row.data();
        }
        for (int k = 0; k < V; k++) out[k] = (float)src[k];
    }

    void zero_grad() { op::zero(grads, num_params); }

    // ---- the balancing bias of the MoE layers (docs/moe.md#bias) ----
    // The step's selection counts of every MoE layer, (MoE layers, E), as the host sees them.
    const int64_t* host_moe_load() {
        if (!op::kDevice) return moe_load;
        op::to_host(h_load.data(), moe_load, h_load.size());
        return h_load.data();
    }
    // Once per optimizer step, after the parameter update: b += gamma·sign(mean load − load) per
    // layer, in integers (the same b on every rank), then the counters are zeroed.
    void moe_update_bias(double gamma) {
        for (int j = 0; j < config.n_moe; j++) op::moe_bias_update(mparam(P_MOE_BIAS, j), moe_layer_load(j), config.n_experts, gamma);
    }
    // Mean routing entropy (nats) over the tokens of the last forward, MoE layer slot j.
    double moe_entropy_of(int j) {
        long n = (long)B * T;
        int E = config.n_experts;
        if (!op::kDevice) return ::moe_entropy(moe_saved(j), n, E);
        std::vector<act_t> h((size_t)n * E);  // (device builds: a log step only)
        op::to_host(h.data(), moe_saved(j), h.size());
        std::vector<float> f(h.size());
        for (size_t i = 0; i < h.size(); i++) f[i] = (float)h[i];
        return ::moe_entropy(f.data(), n, E);
    }

    // The gradient's L2 norm (logged only). Waits for the device.
    double grad_norm() {
        op::sum_squares(norm_buf, grads, num_params);
        norm_t s = 0;
        op::to_host(&s, norm_buf, 1);
        return std::sqrt((double)s);
    }

    // Backward of the last forward(). Parameter gradients ACCUMULATE into grads, scaled by
    // loss_scale (1 / grad_accum_steps), so micro-batches add up to the mean gradient.
    void backward(float loss_scale = 1.0f) {
        const GPTConfig& c = config;
        int N = B * T, C = c.n_embd, L = c.n_layer, H = c.n_head, Hkv = c.n_kv_head, D = c.head_dim;
        const int QKVW = (H + 2 * Hkv) * D;  // a token's q, k, v
        int V = c.vocab_size, Vp = c.padded_vocab_size, E = c.n_experts, Fs = c.moe_shared * c.moe_hidden;
        size_t NC = (size_t)N * C;
        const int* ix = idx_slot[cur];
        if (last_valid == 0) { fprintf(stderr, "warning: micro-batch with no valid targets: loss and gradient are 0\n"); return; }
        // 8-7. dlogits = scale·(p - onehot)·(1 - (z/15)^2), in place over the logits
        act_t* dlogits = logits;
        op::crossentropy(losses, dlogits, logits, tgt_slot[cur], N, V, Vp, loss_scale / (float)last_valid);
        // 6. unembedding and final norm
        op::matmul_backward(dln, grad(P_LM_HEAD), dlogits, lnf, param(P_LM_HEAD), N, C, Vp, false);
        op::zero(dx, NC);
        op::rmsnorm_backward(dx, dln, lnf, rstdf, N, C);
        // 5. backout: dx_mid collects -λ·G, added when the backward reaches layer L/2
        if (c.backout) {
            op::zero(dxmid, NC);
            op::backout_backward(dxmid, grad(P_BACKOUT_LAMBDA), dx, L_(xout, L / 2, C), mparam(P_BACKOUT_LAMBDA), (long)NC);
        }
        if (c.lambdas) op::zero(dx0, NC);
        // 4. the blocks in reverse; dx holds the gradient of the current layer's output
        for (int l = L - 1; l >= 0; l--) {
            int ms = mixer_slot[l], fs = ffn_slot[l];
            act_t *xin_l = L_(xin, l, C), *xattn_l = L_(xattn, l, C);
            stat_t *rstd1_l = L_(rstd1, l, 1), *rstd2_l = L_(rstd2, l, 1);
            if (c.backout && l == L / 2) op::add_inplace(dx, dxmid, (long)NC);
            // FFN: xout = xattn + FFN(rms(xattn)); ln2 recomputed (the same deterministic ops on the
            // same inputs: bitwise what the forward had)
            op::rmsnorm_forward(ln, rstd2_l, xattn_l, N, C);
            if (c.is_moe[l]) {
                // the aux loss entered the objective with the micro-batch's factor: daux = loss_scale
                op::moe_backward(dln, grad(P_MOE_ROUTER, fs), grad(P_MOE_FC, fs * E), c.moe_swiglu ? grad(P_MOE_UP, fs * E) : nullptr,
                                 grad(P_MOE_PROJ, fs * E), Fs ? grad(P_MOE_SHARED_FC, fs) : nullptr,
                                 Fs && c.moe_swiglu ? grad(P_MOE_SHARED_UP, fs) : nullptr, Fs ? grad(P_MOE_SHARED_PROJ, fs) : nullptr, mix_work,
                                 dx, ln, mparam(P_MOE_ROUTER, fs), mparam(P_MOE_BIAS, fs), param(P_MOE_FC, fs * E),
                                 c.moe_swiglu ? param(P_MOE_UP, fs * E) : nullptr, param(P_MOE_PROJ, fs * E),
                                 Fs ? param(P_MOE_SHARED_FC, fs) : nullptr, Fs && c.moe_swiglu ? param(P_MOE_SHARED_UP, fs) : nullptr,
                                 Fs ? param(P_MOE_SHARED_PROJ, fs) : nullptr, moe_saved(fs), moe_saved_ints(fs), moe_cfg, B, T, loss_scale);
            } else {
                // MLP: relu² recomputed
                act_t* fc_pre_l = L_(fc_pre, fs, 4 * C);
                op::relu2_forward(fc_act, fc_pre_l, (long)N * 4 * C);
                op::matmul_backward(dfc, grad(P_MLP_PROJ, fs), dx, fc_act, param(P_MLP_PROJ, fs), N, 4 * C, C, false);
                op::relu2_backward(dfc, dfc, fc_pre_l, (long)N * 4 * C);
                op::matmul_backward(dln, grad(P_FC, fs), dfc, ln, param(P_FC, fs), N, C, 4 * C, false);
            }
            op::rmsnorm_backward(dx, dln, ln, rstd2_l, N, C);  // dx += : now the gradient of xattn
            if (c.is_lightning[l]) {
                // lightning: xattn = xin + LA(rms(xin)); ln1 recomputed
                LightningSizes z = op::lightning_sizes(B, T, H, D);
                op::rmsnorm_forward(ln, rstd1_l, xin_l, N, C);
                op::lightning_backward(dln, grad(P_LA_Q, ms), grad(P_LA_K, ms), grad(P_LA_V, ms), grad(P_LA_GATE, ms), grad(P_LA_PROJ, ms),
                                       grad(P_LA_NORM, ms), dx, ln, la_p + ms * z.p, la_o + ms * z.o, la_r + ms * z.r, la_a + ms * z.a,
                                       param(P_LA_Q, ms), param(P_LA_K, ms), param(P_LA_V, ms), param(P_LA_GATE, ms), param(P_LA_PROJ, ms),
                                       mparam(P_LA_NORM, ms), la_slopes + (size_t)ms * H, B, T, C, H, D, c.la_block, mix_work);
            } else {
                // attention: xattn = xin + proj(attn(rms(xin))); ln1 recomputed
                QKV a = qkv_view(L_(qkv, ms, QKVW)), d = qkv_view(dqkv);  // a: qn, kn, v; d: their gradients
                act_t* att_l = L_(att, ms, H * D);
                stat_t *rq_l = L_(rstd_q, ms, H), *rk_l = L_(rstd_k, ms, Hkv), *lse_l = L_(lse, ms, H);
                op::matmul_backward(datt, grad(P_ATTN_PROJ, ms), dx, att_l, param(P_ATTN_PROJ, ms), N, H * D, C, false);
                op::attention_backward(d.q, d.k, d.v, datt, att_l, lse_l, a.q, a.k, a.v, B, T, H, Hkv, D, c.window[l], a.ldq, a.ldkv);
                op::rope_qknorm_backward(d.q, d.k, d.q, d.k, a.q, a.k, rq_l, rk_l, rope_cos, rope_sin, B, T, H, Hkv, D, a.ldq, a.ldkv);
                op::rmsnorm_forward(ln, rstd1_l, xin_l, N, C);
                if (c.has_ve[l]) {
                    int s = ve_slot(l);
                    const act_t* ve_s = ve + (size_t)s * N * Hkv * D;
                    op::zero(dln, NC);  // ve_gate_backward adds to dln (its 12 channels), the matmuls add the rest
                    op::ve_gate_backward(dln, dve, grad(P_VE_GATE, s), d.v, ln, ve_s, gamma + (size_t)s * N * Hkv, mparam(P_VE_GATE, s), N,
                                         C, Hkv, D, a.ldkv);
                    op::embedding_backward(grad(P_VALUE_EMBEDS, s), dve, ix, N, Hkv * D);
                }
                bool acc = c.has_ve[l];  // else the first matmul overwrites dln
                if (op::kPackedQKV) {
                    op::matmul_backward(dln, grad(P_CQ, ms), d.q, ln, param(P_CQ, ms), N, C, QKVW, acc);
                } else {
                    op::matmul_backward(dln, grad(P_CQ, ms), d.q, ln, param(P_CQ, ms), N, C, H * D, acc);
                    op::matmul_backward(dln, grad(P_CK, ms), d.k, ln, param(P_CK, ms), N, C, Hkv * D, true);
                    op::matmul_backward(dln, grad(P_CV, ms), d.v, ln, param(P_CV, ms), N, C, Hkv * D, true);
                }
            }
            op::rmsnorm_backward(dx, dln, ln, rstd1_l, N, C);  // dx += : now the gradient of xin
            // lambdas: xin = a·x + b·x0 (x = previous layer's output, or x0 itself at layer 0)
            if (c.lambdas) {
                const act_t* xprev = l > 0 ? L_(xout, l - 1, C) : x0;
                op::lambdas_backward(dx, dx0, grad(P_RESID_LAMBDAS) + l, grad(P_X0_LAMBDAS) + l, dx, xprev, x0, mparam(P_RESID_LAMBDAS) + l,
                                     mparam(P_X0_LAMBDAS) + l, (long)NC);
            }
        }
        // dx is now the gradient reaching x0 through layer 0's residual input; add the x0 paths
        if (c.lambdas) op::add_inplace(dx, dx0, (long)NC);
        // 2. smear, then 1. embedding norm and the scatter-add into wte
        act_t* de = dx0;  // reuse: dx0 is consumed
        if (c.smear) op::smear_backward(de, grad(P_SMEAR_GATE), grad(P_SMEAR_LAMBDA), dx, e, mparam(P_SMEAR_GATE), mparam(P_SMEAR_LAMBDA), B, T, C);
        else op::copy(de, dx, NC);
        op::zero(dln, NC);
        op::rmsnorm_backward(dln, de, e, rstd0, N, C);
        op::embedding_backward(grad(P_WTE), dln, ix, N, C);
    }
};

// ------------------------------------------------------------------------------------------------
// Optimizer (docs/model.md#optimizer): AdamW for embeddings, unembedding and scalars; Muon for
// every matrix under transformer.h. State is one allocation per kind: opt_m (Adam first moment, or
// Muon momentum) and opt_v (Adam second moment) indexed like the parameters, and the NorMuon second
// moments S. On the CPU the update is llmc/adamw.h and llmc/muon.h, matrix by matrix; on the GPU
// llmc/cuda/adamw.cuh (fused, one pass per tensor) and llmc/cuda/muon.cuh (each tensor's stack
// of same-shape matrices at once, Polar Express as batched GEMMs), which also write the matmul copy
// of the weights. The same order of tensors, the same scalars.

#include "llmc/adamw.h"
#include "llmc/muon.h"
#include "llmc/schedule.h"

// Muon: every matrix under transformer.h (each expert of a stack its own matrix) except the MoE
// router (AdamW group "router", docs/model.md#hybrid-params); AdamW: the rest but the buffers.
inline bool is_muon_param(int id) {
    switch (id) {
        case P_CQ: case P_CK: case P_CV: case P_ATTN_PROJ: case P_VE_GATE: case P_FC: case P_MLP_PROJ:
        case P_LA_Q: case P_LA_K: case P_LA_V: case P_LA_GATE: case P_LA_PROJ:
        case P_MOE_FC: case P_MOE_UP: case P_MOE_PROJ: case P_MOE_SHARED_FC: case P_MOE_SHARED_UP: case P_MOE_SHARED_PROJ: return true;
    }
    return false;
}
inline int adam_group_of(int id) {
    switch (id) {
        case P_MOE_ROUTER: return llmc::ADAM_ROUTER;
        case P_LA_NORM: return llmc::ADAM_LA_NORM;
        case P_LM_HEAD: return llmc::ADAM_LM_HEAD;
        case P_WTE: return llmc::ADAM_WTE;
        case P_VALUE_EMBEDS: return llmc::ADAM_VALUE_EMBEDS;
        case P_RESID_LAMBDAS: return llmc::ADAM_RESID;
        case P_X0_LAMBDAS: return llmc::ADAM_X0;
        default: return llmc::ADAM_SMEAR;  // smear_gate, smear_lambda, backout_lambda
    }
}

typedef GPT<float> Model;  // the trainer's model (fp32 on the CPU; on a GPU floatX activations, fp32 master)

struct Optimizer {
    float *opt_m = nullptr, *opt_v = nullptr, *opt_s = nullptr;  // "device" memory (host on the CPU)
    size_t n_mv = 0, n_s = 0;
    std::vector<float> h_m, h_v, h_s;  // host copies (device builds)
    std::vector<size_t> s_offset[NUM_PARAM_TENSORS];  // per matrix: offset of its S in opt_s
#ifdef LLMC_GPU_BUILD
    MuonGPUScratch scratch;
#else
    llmc::MuonScratch scratch;
#endif

    Optimizer() = default;
    Optimizer(const Optimizer&) = delete;
    Optimizer& operator=(const Optimizer&) = delete;
    ~Optimizer() {
        op::release(opt_m); op::release(opt_v); op::release(opt_s);
#ifdef LLMC_GPU_BUILD
        muon_scratch_free(scratch);
#endif
    }

    // c_q, c_k, c_v of one shape (no GQA): in the interleaved layout (docs/model.md#qkv) their
    // matrices Wq_0, Wk_0, Wv_0, Wq_1, ... are one stack at stride rows*cols, which the GPU updates
    // with one muon_update of 3 Ls matrices (bigger batched GEMMs, a third of the launches); their
    // second moments are laid out in the same order
    static bool qkv_one_stack(const Model& m) { return m.spec[P_CQ].count > 0 && m.spec[P_CK].rows == m.spec[P_CQ].rows; }

    void init(const Model& m) {
        n_mv = m.num_params;
        size_t off = 0;
        const bool qkv1 = qkv_one_stack(m);
        for (int id = 0; id < NUM_PARAM_TENSORS; id++) s_offset[id].clear();
        for (int id = 0; id < NUM_PARAM_TENSORS; id++) {
            if (!is_muon_param(id)) continue;
            if (qkv1 && (id == P_CK || id == P_CV)) continue;  // placed with c_q
            const ParamSpec& sp = m.spec[id];
            const int per = qkv1 && id == P_CQ ? 3 : 1;  // matrices per stack slot: q, k, v
#ifdef LLMC_GPU_BUILD
            if (sp.count > 0) muon_scratch_reserve(scratch, per * sp.count, sp.rows, sp.cols);
#endif
            for (int j = 0; j < sp.count; j++) {
                for (int t = 0; t < per; t++) {
                    s_offset[id + t].push_back(off);
                    off += llmc::muon_second_moment_size(sp.rows, sp.cols);
                }
#ifndef LLMC_GPU_BUILD
                scratch.reserve(sp.rows, sp.cols);  // allocate once, before training
#endif
            }
        }
        n_s = off;
        opt_m = op::alloc<float>(n_mv);
        opt_v = op::alloc<float>(n_mv);
        opt_s = op::alloc<float>(n_s);
#ifdef LLMC_GPU_BUILD
        muon_scratch_alloc(scratch);
#endif
        if (op::kDevice) { h_m.assign(n_mv, 0.0f); h_v.assign(n_mv, 0.0f); h_s.assign(n_s, 0.0f); }
    }
    size_t scratch_bytes() const {
#ifdef LLMC_GPU_BUILD
        return muon_scratch_bytes(scratch);
#else
        return 0;
#endif
    }

    // the state as the host sees it (fetched from the device in device builds), and back
    void download() {
        if (!op::kDevice) return;
        op::to_host(h_m.data(), opt_m, n_mv); op::to_host(h_v.data(), opt_v, n_mv); op::to_host(h_s.data(), opt_s, n_s);
    }
    void upload() {
        if (!op::kDevice) return;
        op::to_device(opt_m, h_m.data(), n_mv); op::to_device(opt_v, h_v.data(), n_mv); op::to_device(opt_s, h_s.data(), n_s);
    }
    float* host_m() { return op::kDevice ? h_m.data() : opt_m; }
    float* host_v() { return op::kDevice ? h_v.data() : opt_v; }
    float* host_s() { return op::kDevice ? h_s.data() : opt_s; }

    // one optimizer step at iteration `it` (0-based); the AdamW step count is it + 1
    void step(Model& m, const llmc::Recipe& r, int it) {
        int N = r.num_iterations;
        double lrm = llmc::lr_multiplier(it, N, r.warmup_steps, r.warmdown_ratio, r.final_lr_frac);
        float muon_lr = (float)(r.muon_lr * lrm);
        float momentum = (float)llmc::muon_momentum(it, N, r.warmdown_ratio);
        float wd = (float)llmc::muon_weight_decay(it, N, r.weight_decay_scaled);
        for (int id = 0; id < NUM_PARAM_TENSORS; id++) {
            const ParamSpec& sp = m.spec[id];
            if (sp.count == 0 || is_buffer(id)) continue;
            float* P = m.params + sp.offset;
            const float* G = m.grads + sp.offset;
#ifdef LLMC_GPU_BUILD
            floatX* Pw = Model::kWeightsAreMaster ? nullptr : (floatX*)m.weights + sp.offset;
            const bool qkv1 = qkv_one_stack(m);
            if (qkv1 && (id == P_CK || id == P_CV)) continue;  // updated with c_q
            op::OpTimer t_(is_muon_param(id) ? "muon" : "adamw");
            if (is_muon_param(id)) {
                const bool all3 = qkv1 && id == P_CQ;  // Wq_0, Wk_0, Wv_0, Wq_1, ...: 3 Ls matrices at stride rows*cols
                muon_update(P, Pw, opt_m + sp.offset, opt_s + s_offset[id][0], G, all3 ? 3 * sp.count : sp.count, sp.rows, sp.cols,
                            muon_lr, momentum, wd, scratch, op::g_ctx.stream, all3 ? (long long)sp.matrix_numel() : (long long)sp.stride);
            } else {
                const llmc::AdamGroup& g = r.adam[adam_group_of(id)];
                adamw_update(P, Pw, opt_m + sp.offset, opt_v + sp.offset, G, (long)sp.numel(), (float)(g.lr * lrm), (float)g.beta1,
                             (float)g.beta2, (float)g.eps, (float)g.weight_decay, it + 1, op::g_ctx.stream);
            }
#else
            if (is_muon_param(id)) {
                for (int j = 0; j < sp.count; j++) {
                    size_t o = sp.at(j) - sp.offset;
                    llmc::muon_update(P + o, opt_m + sp.offset + o, opt_s + s_offset[id][j], G + o, sp.rows, sp.cols, muon_lr, momentum, wd,
                                      scratch);
                }
            } else {
                const llmc::AdamGroup& g = r.adam[adam_group_of(id)];
                llmc::adamw_update(P, opt_m + sp.offset, opt_v + sp.offset, G, (long)sp.numel(), (float)(g.lr * lrm), (float)g.beta1,
                                   (float)g.beta2, (float)g.eps, (float)g.weight_decay, it + 1);
            }
#endif
        }
    }
};

// ------------------------------------------------------------------------------------------------
// Checkpoints (docs/model.md#checkpoints). A checkpoint of step S is three files in the output directory:
//   model_S.safetensors   the weights (nanochat's tensor names)
//   optim_S.safetensors   the optimizer state
//   meta_S.json           step, model_config, loader state, the derived recipe and every option, the
//                         run id, and the byte size and checksum (checksum.h) of the two files above
// Each is written under a temporary name and renamed (llmc::AtomicFile: every write, flush, fsync and
// close checked), the meta last, so a checkpoint is complete iff its meta exists. Both safetensors
// files also carry the run id and the step in their __metadata__. Resume verifies all of it (sizes,
// checksums, ids) before using anything: a truncated file, a file overwritten by another run, or
// files of two checkpoints mixed together are refused, and `--resume DIR` falls back to the newest
// checkpoint that verifies. A failed save removes what it wrote, so the previous checkpoint stays
// the newest.

#include "llmc/checksum.h"
#include "llmc/json.h"
#include "llmc/safetensors.h"
#include "llmc/dataloader.h"

inline std::string ckpt_path(const std::string& dir, const char* kind, int step, const char* ext) {
    return llmc::strfmt("%s/%s_%06d.%s", dir.c_str(), kind, step, ext);
}

inline std::string base_name(const std::string& p) {
    size_t s = p.rfind('/');
    return s == std::string::npos ? p : p.substr(s + 1);
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
    if (c.hybrid()) {  // (docs/model.md#hybrid; dense checkpoints have none of these)
        j.set("attn_period", c.attn_period);
        j.set("moe_dense_layers", c.n_experts ? c.moe_dense_layers : 0);
        j.set("n_experts", c.n_experts);
        j.set("moe_topk", c.moe_topk);
        j.set("moe_shared", c.moe_shared);
        j.set("moe_hidden", c.moe_hidden);
        j.set("moe_act", c.moe_swiglu ? "swiglu" : "relu2");
        j.set("moe_rho", c.moe_rho);
        j.set("moe_groups", c.moe_groups);
        j.set("moe_topk_groups", c.moe_topk_groups);
    }
    return j;
}

// The step in a meta file's name (meta_NNNNNN.json), or -1 if the name is not of that form.
inline int meta_step_of(const std::string& path) {
    std::string b = base_name(path);
    if (b.size() < 11 || b.compare(0, 5, "meta_") != 0 || b.compare(b.size() - 5, 5, ".json") != 0) return -1;
    std::string digits = b.substr(5, b.size() - 10);
    if (digits.size() > 9) return -1;
    for (char ch : digits) if (ch < '0' || ch > '9') return -1;
    return std::stoi(digits);
}

// The checkpoints (meta files) in dir, newest first, as (step, path).
inline std::vector<std::pair<int, std::string>> list_checkpoints(const std::string& dir) {
    std::vector<std::pair<int, std::string>> v;
    std::vector<std::string> metas;
    try { metas = llmc::glob_files(dir + "/meta_*.json"); } catch (const llmc::Error&) { return v; }
    for (auto& m : metas) {
        int s = meta_step_of(m);
        if (s >= 0) v.emplace_back(s, m);
    }
    std::sort(v.begin(), v.end(), [](const std::pair<int, std::string>& a, const std::pair<int, std::string>& b) { return a.first > b.first; });
    return v;
}

// Every named tensor of the model (nanochat's names and file shapes; an expert stack is one tensor)
// from `base`, a host buffer laid out like the parameters: the weights, or the gradient.
inline void add_param_tensors(llmc::SafetensorsWriter& w, const Model& m, const float* base) {
    for (int id = 0; id < NUM_PARAM_TENSORS; id++)
        for (int j = 0; j < m.spec[id].count; j += param_group(m.config, id))
            w.add(param_name(m.config, id, j), param_file_shape(m.config, id, m.spec[id]),
                  base + m.spec[id].at(j));
}

// Write the checkpoint of `step`; returns its meta path. On any failure every file of this step is
// removed (AtomicFile removes its own temporary) and the error says so.
inline std::string save_checkpoint(const std::string& dir, int step, Model& m, Optimizer& opt, const std::string& run_id,
                                   const llmc::Json& extra) {
    std::string model_path = ckpt_path(dir, "model", step, "safetensors"), optim_path = ckpt_path(dir, "optim", step, "safetensors");
    std::string meta_path = ckpt_path(dir, "meta", step, "json");
    llmc::SafetensorsWriter w, wo;
    add_param_tensors(w, m, m.host_params());  // (device builds: fetched from the device)
    opt.download();
    for (int id = 0; id < NUM_PARAM_TENSORS; id++) {
        const ParamSpec& sp = m.spec[id];
        int group = param_group(m.config, id);  // matrices per named tensor (E for an expert stack)
        std::vector<int64_t> shape = param_file_shape(m.config, id, sp);
        if (is_buffer(id)) continue;  // no optimizer state
        for (int j = 0; j < sp.count; j += group) {
            std::string name = param_name(m.config, id, j);
            size_t o = sp.at(j);
            if (is_muon_param(id)) {
                // a stack's per-matrix statistics are consecutive in opt_s: one (group, size) tensor
                int64_t ns = (int64_t)llmc::muon_second_moment_size(sp.rows, sp.cols);
                wo.add(name + ".momentum_buffer", shape, opt.host_m() + o);
                wo.add(name + ".second_momentum_buffer", group > 1 ? std::vector<int64_t>{group, ns} : std::vector<int64_t>{ns},
                       opt.host_s() + opt.s_offset[id][j]);
            } else {
                wo.add(name + ".exp_avg", shape, opt.host_m() + o);
                wo.add(name + ".exp_avg_sq", shape, opt.host_v() + o);
            }
        }
    }
    w.metadata.push_back({"format", "pt"});
    for (auto* x : {&w, &wo}) {
        x->metadata.push_back({"llmc_run_id", run_id});
        x->metadata.push_back({"llmc_step", std::to_string(step)});
    }
    try {
        // A meta of this step from an earlier run in this directory must not end up describing our files.
        if (unlink(meta_path.c_str()) != 0 && errno != ENOENT) LLMC_FAIL("cannot remove the old '%s': %s", meta_path.c_str(), strerror(errno));
        llmc::Json files = llmc::Json::object();
        auto record = [&](const char* kind, const std::string& path, uint64_t sum) {
            struct stat st;
            if (stat(path.c_str(), &st) != 0) LLMC_FAIL("cannot stat '%s' after writing it: %s", path.c_str(), strerror(errno));
            llmc::Json f = llmc::Json::object();
            f.set("name", base_name(path));
            f.set("bytes", (long long)st.st_size);
            f.set("checksum", llmc::checksum_str(sum));
            files.set(kind, f);
        };
        record("model", model_path, w.write(model_path));
        record("optim", optim_path, wo.write(optim_path));
        llmc::Json meta = llmc::Json::object();
        meta.set("step", step);
        meta.set("run_id", run_id);
        meta.set("model_config", model_config_json(m.config));
        meta.set("files", files);
        for (auto& kv : extra.as_object()) meta.set(kv.first, kv.second);
        llmc::write_file_atomic(meta_path, llmc::json_dump(meta, 2) + "\n");
    } catch (const std::exception& e) {
        for (const std::string* p : {&meta_path, &optim_path, &model_path}) unlink(p->c_str());
        LLMC_FAIL("saving the checkpoint of step %d in '%s' failed: %s (its files are removed)", step, dir.c_str(), e.what());
    }
    return meta_path;
}

// A checkpoint read and verified by open_checkpoint: the meta and the safetensors files' bytes.
struct Checkpoint {
    std::string meta_path, dir;
    int step = -1;
    llmc::Json meta;
    std::unique_ptr<llmc::SafetensorsFile> model, optim;
};

// Read one checkpoint and verify it (the optimizer file too when with_optim): the meta parses, its
// step matches its name, it is not marked diverged, each file has the recorded size and checksum and
// carries the meta's run id and step. Any problem throws, naming the checkpoint and the file.
inline Checkpoint open_checkpoint(const std::string& meta_path, bool with_optim) {
    Checkpoint ck;
    ck.meta_path = meta_path;
    ck.dir = llmc::dir_of(meta_path);
    try {
        ck.meta = llmc::json_parse(llmc::read_file(meta_path), meta_path);
        const llmc::Json& meta = ck.meta;
        LLMC_CHECK(meta.is_object(), "not a checkpoint meta (not a JSON object)");
        ck.step = (int)meta["step"].as_int();
        int named = meta_step_of(meta_path);
        LLMC_CHECK(named < 0 || named == ck.step, "records step %d but its name says %d", ck.step, named);
        if (meta.has("diverged"))
            LLMC_FAIL("marked diverged (%s)", meta["diverged"].is_string() ? meta["diverged"].as_string().c_str() : "?");
        std::string run_id = meta.has("run_id") ? meta["run_id"].as_string() : "";
        auto open_one = [&](const char* kind) {
            std::string path = ckpt_path(ck.dir, kind, ck.step, "safetensors");
            const llmc::Json* files = meta.find("files");
            // a checkpoint written before checksums existed: the safetensors checks are all there is
            if (!files) return std::unique_ptr<llmc::SafetensorsFile>(new llmc::SafetensorsFile(path));
            const llmc::Json& rec = (*files)[kind];
            std::string bytes = llmc::read_file(path);
            long long want = rec["bytes"].as_int();
            LLMC_CHECK((long long)bytes.size() == want, "'%s' is %zu bytes but the meta records %lld (truncated, or overwritten by another run?)",
                       path.c_str(), bytes.size(), want);
            std::string sum = llmc::checksum_str(llmc::checksum64(bytes.data(), bytes.size()));
            LLMC_CHECK(sum == rec["checksum"].as_string(), "'%s': checksum %s does not match the %s recorded in the meta (the file changed after it was saved)",
                       path.c_str(), sum.c_str(), rec["checksum"].as_string().c_str());
            std::unique_ptr<llmc::SafetensorsFile> f(new llmc::SafetensorsFile(path, std::move(bytes)));
            auto r = f->metadata.find("llmc_run_id");
            auto s = f->metadata.find("llmc_step");
            std::string frun = r == f->metadata.end() ? "?" : r->second, fstep = s == f->metadata.end() ? "?" : s->second;
            LLMC_CHECK(frun == run_id && fstep == std::to_string(ck.step),
                       "'%s' belongs to run %s step %s, the meta to run %s step %d: files of different checkpoints are mixed", path.c_str(),
                       frun.c_str(), fstep.c_str(), run_id.c_str(), ck.step);
            return f;
        };
        ck.model = open_one("model");
        if (with_optim) ck.optim = open_one("optim");
    } catch (const llmc::Error& e) {
        LLMC_FAIL("checkpoint '%s': %s", meta_path.c_str(), e.what());
    }
    return ck;
}

// Load a verified checkpoint's weights (and optimizer state when opt != null). The model flags must
// match the checkpoint's: a mismatch is the user's to fix, not a damaged checkpoint.
inline void load_checkpoint(const Checkpoint& ck, Model& m, Optimizer* opt) {
    llmc::Json want = model_config_json(m.config);
    const llmc::Json& have = ck.meta["model_config"];
    for (auto& kv : want.as_object()) {
        LLMC_CHECK(have.has(kv.first) && llmc::json_dump(have[kv.first], -1) == llmc::json_dump(kv.second, -1),
                   "checkpoint '%s': model_config.%s is %s but this run has %s (model flags must match to resume)", ck.meta_path.c_str(),
                   kv.first.c_str(), have.has(kv.first) ? llmc::json_dump(have[kv.first], -1).c_str() : "missing",
                   llmc::json_dump(kv.second, -1).c_str());
    }
    if (have.is_object())  // a hybrid checkpoint's fields that this (dense) model lacks
        for (auto& kv : have.as_object())
            LLMC_CHECK(want.has(kv.first), "checkpoint '%s': model_config.%s is %s but this run has no such field (a %s model; model flags "
                       "must match to resume)", ck.meta_path.c_str(), kv.first.c_str(), llmc::json_dump(kv.second, -1).c_str(),
                       m.config.hybrid() ? "different" : "dense");
    LLMC_CHECK(!opt || ck.optim, "internal: checkpoint '%s' was opened without its optimizer file", ck.meta_path.c_str());
    const llmc::SafetensorsFile& f = *ck.model;
    float* hp = m.host_params();  // every tensor is overwritten below, then uploaded
    for (int id = 0; id < NUM_PARAM_TENSORS; id++) {
        const ParamSpec& sp = m.spec[id];
        int group = param_group(m.config, id);
        std::vector<int64_t> shape = param_file_shape(m.config, id, sp);
        for (int j = 0; j < sp.count; j += group) {
            std::string name = param_name(m.config, id, j);
            size_t o = sp.at(j);
            f.read(name, shape, hp + o);
            if (!opt || is_buffer(id)) continue;
            const llmc::SafetensorsFile& fo = *ck.optim;
            if (is_muon_param(id)) {
                int64_t ns = (int64_t)llmc::muon_second_moment_size(sp.rows, sp.cols);
                fo.read(name + ".momentum_buffer", shape, opt->host_m() + o);
                fo.read(name + ".second_momentum_buffer", group > 1 ? std::vector<int64_t>{group, ns} : std::vector<int64_t>{ns},
                        opt->host_s() + opt->s_offset[id][j]);
            } else {
                fo.read(name + ".exp_avg", shape, opt->host_m() + o);
                fo.read(name + ".exp_avg_sq", shape, opt->host_v() + o);
            }
        }
    }
    m.upload_params();
    if (opt) opt->upload();
}

// --resume WHERE: a meta file is used as is (and must verify); a directory gives its newest checkpoint
// that verifies, with a note for each newer one skipped and why.
inline Checkpoint find_checkpoint(const std::string& where, bool with_optim) {
    if (where.size() > 5 && where.compare(where.size() - 5, 5, ".json") == 0) {
        try { return open_checkpoint(where, with_optim); } catch (const llmc::Error& e) { LLMC_FAIL("--resume %s: %s", where.c_str(), e.what()); }
    }
    auto list = list_checkpoints(where);
    LLMC_CHECK(!list.empty(), "--resume %s: no checkpoint (meta_NNNNNN.json) found there", where.c_str());
    std::vector<std::string> skipped;
    for (auto& c : list) {
        try {
            Checkpoint ck = open_checkpoint(c.second, with_optim);
            for (auto& s : skipped) fprintf(stderr, "note: --resume: skipped %s\n", s.c_str());
            if (!skipped.empty())
                printf("--resume %s: using '%s', the newest checkpoint that verifies (%zu newer skipped, see the notes)\n", where.c_str(),
                       c.second.c_str(), skipped.size());
            return ck;
        } catch (const llmc::Error& e) {
            skipped.push_back(e.what());
        }
    }
    std::string all;
    for (auto& s : skipped) all += (all.empty() ? "" : "; ") + s;
    LLMC_FAIL("--resume %s: no usable checkpoint: %s", where.c_str(), all.c_str());
}

// Mark a checkpoint whose weights gave a non-finite loss, so that --resume DIR passes over it. The
// files stay (nothing is deleted); the meta gets a "diverged" key saying why.
inline void mark_diverged(const std::string& meta_path, const std::string& why) {
    llmc::Json meta = llmc::json_parse(llmc::read_file(meta_path), meta_path);
    meta.set("diverged", why);
    llmc::write_file_atomic(meta_path, llmc::json_dump(meta, 2) + "\n");
}

// The newest checkpoint in dir below step `before` that is not marked diverged ("" if none). Reads
// the metas only: it names a candidate, resume verifies it.
inline std::string newest_good_checkpoint(const std::string& dir, int before) {
    for (auto& c : list_checkpoints(dir)) {
        if (c.first >= before) continue;
        try {
            llmc::Json meta = llmc::json_parse(llmc::read_file(c.second), c.second);
            if (!meta.has("diverged")) return c.second;
        } catch (const llmc::Error&) {}
    }
    return "";
}

// ------------------------------------------------------------------------------------------------
// One writer per output directory: an exclusive flock on <dir>/train_gpt.lock, held until the
// process ends. The kernel drops it when the process dies, even by SIGKILL, so a crashed run never
// leaves a stale lock behind. The file holds the owner's pid, for the message a second run gets.

#include <sys/file.h>

inline void lock_out_dir(const std::string& dir) {
    std::string path = dir + "/train_gpt.lock";
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) LLMC_FAIL("--out-dir: cannot create the lock file '%s': %s", path.c_str(), strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        if (e == EWOULDBLOCK) {
            char buf[32] = {0};
            ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
            close(fd);
            std::string pid = n > 0 ? std::string(buf, strcspn(buf, "\n")) : "";
            LLMC_FAIL("--out-dir '%s' is in use by another %s run (%s holds '%s'): two runs in one directory would overwrite each "
                      "other's checkpoints; wait for it to end or choose another --out-dir",
                      dir.c_str(), kProgram, pid.empty() ? "a process" : ("pid " + pid).c_str(), path.c_str());
        }
        if (e == ENOLCK || e == EOPNOTSUPP || e == ENOSYS) {
            fprintf(stderr, "warning: cannot lock '%s' (%s): nothing stops a second run from writing to this directory\n", path.c_str(), strerror(e));
            close(fd);
            return;
        }
        close(fd);
        LLMC_FAIL("cannot lock '%s': %s", path.c_str(), strerror(e));
    }
    std::string pid = llmc::strfmt("%d\n", (int)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) != (ssize_t)pid.size())
        LLMC_FAIL("cannot write the lock file '%s': %s", path.c_str(), strerror(errno));
    // fd stays open, and the lock held, until the process exits
}

// At start, with the directory locked (so no live writer owns them): remove the temporaries of a run
// killed mid-save (model_*.tmp, optim_*.tmp, meta_*.tmp, <log>.tmp) and point out safetensors files
// that have no meta.
inline void tidy_out_dir(const std::string& dir, const std::string& log_file) {
    std::vector<std::string> tmps;
    try { tmps = llmc::glob_files(dir + "/*.tmp"); } catch (const llmc::Error&) {}
    int n = 0;
    for (auto& t : tmps) {
        std::string b = base_name(t);
        bool ours = b.rfind("model_", 0) == 0 || b.rfind("optim_", 0) == 0 || b.rfind("meta_", 0) == 0 || t == log_file + ".tmp";
        if (ours && unlink(t.c_str()) == 0) n++;
    }
    if (n) fprintf(stderr, "note: removed %d temporary file(s) that an interrupted run left in '%s'\n", n, dir.c_str());
    // files of a save killed before its meta was written: not a checkpoint (resume never reads them),
    // but they take space; they are the user's to delete (a later save of that step replaces them)
    std::vector<std::string> orphans;
    for (const char* kind : {"model", "optim"}) {
        std::vector<std::string> files;
        try { files = llmc::glob_files(dir + "/" + kind + "_*.safetensors"); } catch (const llmc::Error&) { continue; }
        for (auto& f : files) {
            std::string b = base_name(f);
            std::string digits = b.substr(strlen(kind) + 1, b.size() - strlen(kind) - 1 - strlen(".safetensors"));
            if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 9) continue;
            if (!llmc::file_exists(ckpt_path(dir, "meta", std::stoi(digits), "json"))) orphans.push_back(b);
        }
    }
    if (!orphans.empty())
        fprintf(stderr, "note: %zu file(s) in '%s' have no meta file (a save that did not finish), e.g. %s: they are not checkpoints and "
                "can be deleted\n", orphans.size(), dir.c_str(), orphans[0].c_str());
}

// ------------------------------------------------------------------------------------------------
// Signals. SIGTERM, SIGINT and SIGHUP set a flag that the training loop checks between steps (and
// evaluation and sampling between batches and tokens): the run finishes the step it is in, saves a
// checkpoint and exits with status 128 + the signal. A second signal exits at once (the previous
// checkpoints stay intact: files are only ever renamed into place). SIGPIPE is ignored, so a closed
// stdout is a write error that stops the run with a checkpoint, not a silent death. SIGBUS, which a
// shard mapped into memory raises when another program truncates it, is reported with the file's
// name (found in /proc/self/maps from the faulting address).

#include <csignal>

static volatile sig_atomic_t g_stop_signal = 0;
static int g_signals_seen = 0;    // counted atomically: two signals may reach two threads at once
static char g_newest_ckpt[4096];  // newest checkpoint, for messages written by signal handlers

inline const char* signal_name(int sig) {
    switch (sig) {
        case SIGTERM: return "SIGTERM";
        case SIGINT: return "SIGINT";
        case SIGHUP: return "SIGHUP";
    }
    return "a signal";
}

// async-signal-safe writes to stderr
inline void sig_write(const char* s) {
    size_t n = 0;
    while (s[n]) n++;
    while (n > 0) {
        ssize_t w = write(2, s, n);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

inline void on_stop_signal(int sig) {
    if (__atomic_fetch_add(&g_signals_seen, 1, __ATOMIC_SEQ_CST) > 0) {
        sig_write("\n");
        sig_write(kProgram);
        sig_write(": second signal: exiting at once, without saving (the checkpoints already saved are intact)\n");
        _exit(128 + sig);
    }
    g_stop_signal = sig;
    sig_write("\n");
    sig_write(kProgram);
    sig_write(": ");
    sig_write(signal_name(sig));
    sig_write(" received: finishing the current step, then saving a checkpoint (send another signal to exit at once)\n");
}

// One line of /proc/self/maps ("start-end perms offset dev inode   path"): if [start, end) holds
// addr, copy the path (possibly empty) into path and return true. No allocation, no stdio.
inline bool maps_line_covers(const char* line, uintptr_t addr, char* path, size_t cap) {
    auto hex = [](const char*& p) {
        uintptr_t v = 0;
        for (;; p++) {
            char c = *p;
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
            if (d < 0) return v;
            v = v * 16 + (uintptr_t)d;
        }
    };
    const char* p = line;
    uintptr_t lo = hex(p);
    if (*p != '-') return false;
    p++;
    uintptr_t hi = hex(p);
    if (addr < lo || addr >= hi) return false;
    for (int field = 0; field < 4; field++) {  // perms, offset, dev, inode
        while (*p == ' ') p++;
        while (*p && *p != ' ') p++;
    }
    while (*p == ' ') p++;
    size_t n = 0;
    while (p[n] && n + 1 < cap) { path[n] = p[n]; n++; }
    path[n] = 0;
    return true;
}

inline void on_sigbus(int, siginfo_t* si, void*) {
    static char path[4096], line[4352], buf[4096];
    path[0] = 0;
    uintptr_t addr = (uintptr_t)si->si_addr;
    int fd = open("/proc/self/maps", O_RDONLY);
    if (fd >= 0) {
        size_t len = 0;
        bool found = false;
        ssize_t n;
        while (!found && (n = read(fd, buf, sizeof(buf))) > 0) {
            for (ssize_t i = 0; i < n && !found; i++) {
                if (buf[i] != '\n') { if (len + 1 < sizeof(line)) line[len++] = buf[i]; continue; }
                line[len] = 0;
                len = 0;
                found = maps_line_covers(line, addr, path, sizeof(path));
            }
        }
        close(fd);
    }
    if (path[0]) {
        sig_write("error: '");
        sig_write(path);
        sig_write("' shrank while the trainer was reading it (truncated or rewritten by another program?)");
    } else {
        sig_write("error: bus error (SIGBUS): a memory-mapped file shrank while it was being read (truncated or rewritten by another program?)");
    }
    sig_write(": stopping; the checkpoints already saved are kept");
    if (g_newest_ckpt[0]) {
        sig_write(", the newest is '");
        sig_write(g_newest_ckpt);
        sig_write("'");
    }
    sig_write("\n");
    _exit(1);
}

inline void install_signal_handlers() {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;  // reads and writes in progress continue; the loop checks the flag
    for (int s : {SIGTERM, SIGINT, SIGHUP}) sigaction(s, &sa, nullptr);
    struct sigaction sb;
    memset(&sb, 0, sizeof(sb));
    sb.sa_sigaction = on_sigbus;
    sigemptyset(&sb.sa_mask);
    sb.sa_flags = SA_SIGINFO;
    sigaction(SIGBUS, &sb, nullptr);
    signal(SIGPIPE, SIG_IGN);
}

// ------------------------------------------------------------------------------------------------
// Evaluation (docs/model.md#evaluation): validation loss and bits per byte over the same val
// batches every time.

#include "llmc/tokenizer.h"
#include "llmc/datadir.h"
#include "llmc/sampler.h"

struct EvalResult { double loss = 0, bpb = 0; int64_t tokens = 0; bool complete = true; };

// Tokens in a loader's files.
inline int64_t split_tokens(const llmc::DataLoader& d) {
    int64_t n = 0;
    for (const auto& f : d.files) n += f.ntok;
    return n;
}

// `stop` (may be null) is polled between batches: when it is set the evaluation is abandoned and
// returned with complete = false (a signal should not wait for a long evaluation).
inline EvalResult evaluate(Model& m, llmc::DataLoader& val, int B, int T, int64_t eval_tokens,
                           const std::vector<int32_t>* token_bytes, std::vector<int>& inputs, std::vector<int>& targets,
                           const volatile sig_atomic_t* stop = nullptr) {
    val.reset();
    // At most the split's size: the default 40M tokens is sized for FineWeb, and on a small split
    // (tinyshakespeare's ~30k tokens) more would only repeat the same documents. A split smaller than
    // one batch still gets one batch (so it repeats documents: the trainer says so at start).
    int64_t batches = std::max<int64_t>(1, std::min<int64_t>(eval_tokens, split_tokens(val)) / ((int64_t)B * T));
    double nats = 0.0, nats_counted = 0.0;
    int64_t bytes = 0, count = 0;
    EvalResult r;
    for (int64_t b = 0; b < batches; b++) {
        if (stop && *stop) { r.complete = false; return r; }
        val.next_batch(inputs.data(), targets.data());
        m.forward_async(inputs.data(), targets.data(), B, T);
        const auto* losses = m.host_losses();
        for (int i = 0; i < B * T; i++) {
            int y = targets[i];
            if (y < 0) continue;
            nats += (double)losses[i];
            count++;
            int nb = token_bytes ? (*token_bytes)[y] : 0;
            if (nb > 0) { nats_counted += (double)losses[i]; bytes += nb; }
        }
    }
    r.tokens = count;
    r.loss = count ? nats / count : 0.0;
    r.bpb = bytes ? nats_counted / (std::log(2.0) * (double)bytes) : INFINITY;
    return r;
}

// The note for a validation split smaller than one evaluation batch ("" when it is not).
inline std::string small_val_note(const llmc::DataLoader& val, int B, int T) {
    int64_t n = split_tokens(val), bt = (int64_t)B * T;
    if (n >= bt) return "";
    return llmc::strfmt("note: the validation split has %lld tokens, fewer than one evaluation batch (%d x %d = %lld): each evaluation "
                        "repeats some of its documents to fill the batch, so the loss weights them twice; a smaller --device-batch-size "
                        "or more validation data avoids that",
                        (long long)n, B, T, (long long)bt);
}

// Sample a continuation with a full forward pass per token over the last T positions (the KV-cache
// engine is a later milestone). Causality makes the logits at the last real position independent of
// the padding after it, so the activation shape stays fixed at (1, T). Generation ends at a token
// of stop_ids (not emitted; docs/model.md#sampling: <|bos|> starts a new document, so nothing after
// it continues the prompt), after max_new tokens, or when *stop is set.
inline std::vector<uint32_t> generate(Model& m, std::vector<uint32_t> ids, int max_new, float temperature, int top_k, llmc::Rng& rng,
                                      const std::vector<int>& stop_ids = {}, bool* stopped_at_token = nullptr,
                                      const volatile sig_atomic_t* stop = nullptr) {
    int T = m.config.sequence_len, V = m.config.vocab_size;
    std::vector<int> window(T, 0);
    std::vector<float> z(V);
    if (stopped_at_token) *stopped_at_token = false;
    for (int k = 0; k < max_new; k++) {
        if (stop && *stop) break;
        int n = std::min<int>((int)ids.size(), T);
        for (int i = 0; i < T; i++) window[i] = i < n ? (int)ids[ids.size() - n + i] : 0;
        m.forward(window.data(), nullptr, 1, T);
        m.logits_row(n - 1, z.data());
        // the softcap (docs/model.md#softcap-loss)
        for (int v = 0; v < V; v++) z[v] = 15.0f * std::tanh(z[v] / 15.0f);
        int next = llmc::sample_next_token(z.data(), V, temperature, top_k, rng);
        if (std::find(stop_ids.begin(), stop_ids.end(), next) != stop_ids.end()) {
            if (stopped_at_token) *stopped_at_token = true;
            break;
        }
        ids.push_back((uint32_t)next);
    }
    return ids;
}

// ------------------------------------------------------------------------------------------------
// Command line, set-up and the training loop (docs/model.md#schedules, docs/model.md#scaling,
// docs/model.md#training-step)

// The current gradient (fp32), one tensor per parameter matrix under its nanochat name.
inline void dump_grads(const std::string& path, Model& m) {
    llmc::SafetensorsWriter w;
    add_param_tensors(w, m, m.host_grads());
    w.write(path);
}

// " | MFU x%" of the card's bf16 peak when it is known (GPU builds), else ""
inline std::string mfu_str(double flops_per_s) {
    double peak = op::peak_flops();
    return peak > 0 ? llmc::strfmt(" | MFU %.1f%%", 100.0 * flops_per_s / peak) : std::string();
}

// --profile: time per op per step (CUDA events around every op call), most expensive first
inline void print_profile(int steps, double train_time) {
    if (op::g_prof.total.empty() || steps == 0) {
        printf("profile: no per-op times (the per-op table is the GPU build's; this is %s)\n", op::backend_name());
        return;
    }
    auto rows = op::g_prof.total;
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
    double sum = 0;
    for (auto& r : rows) sum += r.second.first;
    double step_ms = 1e3 * train_time / steps;
    printf("profile: time per op, mean over %d steps (%.2f ms per step measured by the host; ops sum to %.2f ms)\n", steps, step_ms, sum / steps);
    printf("  %-22s %10s %8s %7s\n", "op", "ms/step", "calls", "% step");
    for (auto& r : rows)
        printf("  %-22s %10.3f %8.1f %6.1f%%\n", r.first.c_str(), r.second.first / steps, (double)r.second.second / steps,
               100.0 * r.second.first / steps / step_ms);
}

// The routing metrics of each MoE layer for the log (docs/moe.md#metrics): the step's loads, maxvio,
// cv, the experts dead over the window since the last metrics line, the routing entropy of the last
// micro-batch (nats and / ln E) and the layer's aux loss (mean over the step's A micro-batches).
inline llmc::Json moe_metrics_json(Model& m, const int64_t* load, const int64_t* window, int A) {
    const GPTConfig& c = m.config;
    int E = c.n_experts;
    llmc::Json arr = llmc::Json::array();
    for (int jl = 0; jl < c.n_moe; jl++) {
        const int64_t* l = load + (size_t)jl * E;
        llmc::Json x = llmc::Json::object();
        x.set("layer", slot_layer(c.is_moe, true, jl));
        llmc::Json ld = llmc::Json::array();
        for (int e = 0; e < E; e++) ld.push(llmc::Json((long long)l[e]));
        x.set("load", ld);
        x.set("maxvio", moe_maxvio(l, E));
        x.set("cv", moe_cv(l, E));
        x.set("dead", moe_dead(window + (size_t)jl * E, E));
        double h = m.moe_entropy_of(jl);
        x.set("entropy", h);
        x.set("entropy_norm", E > 1 ? h / std::log((double)E) : 1.0);
        double aux = 0.0;
        for (int a = 0; a < A; a++) aux += m.slot_aux(a, jl) / A;
        x.set("aux", aux);
        arr.push(x);
    }
    return arr;
}

// bias_min, bias_max, bias_std of each layer's b, added to moe_metrics_json's entries
inline void add_bias_stats(Model& m, llmc::Json& arr) {
    const float* hp = m.host_params();
    for (int jl = 0; jl < m.config.n_moe; jl++) {
        MoeBiasStats b = moe_bias_stats(hp + m.spec[P_MOE_BIAS].offset + (size_t)jl * m.config.n_experts, m.config.n_experts);
        arr.arr[jl].set("bias_min", b.min);
        arr.arr[jl].set("bias_max", b.max);
        arr.arr[jl].set("bias_std", b.std);
    }
}

// The last routing metrics, one line per MoE layer, at the end of training.
inline void print_moe_summary(const llmc::Json& arr, int step, const GPTConfig& c) {
    printf("moe balance at step %d (maxvio = max load / mean load - 1 of the step; dead over the last %s):\n", step, "metrics window");
    double worst = 0.0;
    for (auto& x : arr.as_array()) {
        worst = std::max(worst, x["maxvio"].as_double());
        printf("  layer %2lld: maxvio %.3f | cv %.3f | dead %lld/%d | entropy %.3f nats (%.3f of ln E) | bias [%+.4f, %+.4f] std %.4f | aux %.3g\n",
               (long long)x["layer"].as_int(), x["maxvio"].as_double(), x["cv"].as_double(), (long long)x["dead"].as_int(), c.n_experts,
               x["entropy"].as_double(), x["entropy_norm"].as_double(), x["bias_min"].as_double(), x["bias_max"].as_double(),
               x["bias_std"].as_double(), x["aux"].as_double());
    }
    printf("moe maxvio (worst layer) at step %d: %.3f\n", step, worst);
}

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
    std::string out_dir = "out", resume, log_file, dump_grads;
    int profile = 0;
    bool save_init = false, eval_only = false;
    // sampling at the end
    int num_samples = 3, sample_tokens = 128, top_k = 50;
    double temperature = 0.8;
    std::string prompt = "";
    // misc
    int seed = 42, threads = -1;
    // hybrid layers and MoE (docs/model.md#hybrid): flags of train_moe only; train_gpt keeps these,
    // the dense model's values, and train_moe.cu's program_defaults() sets the hybrid ones
    int attn_period = 1, moe_dense_layers = 0, moe_experts = 0, moe_topk = 4, moe_shared = 1, moe_hidden = -1;
    int moe_groups = 1, moe_topk_groups = 1, la_block = 64, moe_log_every = 10;
    std::string moe_act = "relu2";
    double moe_rho = 2.5, moe_aux_alpha = 1e-4, moe_bias_rate = 1e-3, moe_bias_freeze_frac = 0.0, router_lr = 1e-3, la_norm_lr = 0.005;
};

#ifdef LLMC_TRAIN_MOE
void program_defaults(TrainerOptions& o);  // train_moe.cu
#endif

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

// The flag checks that no other layer makes (the model shape and the recipe check their own).
inline void check_options(TrainerOptions& o) {
    auto finite_nonneg = [](double v, const char* name) {
        LLMC_CHECK(std::isfinite(v) && v >= 0.0, "--%s must be a finite number >= 0 (got %g)", name, v);
    };
    finite_nonneg(o.embedding_lr, "embedding-lr");
    finite_nonneg(o.unembedding_lr, "unembedding-lr");
    finite_nonneg(o.matrix_lr, "matrix-lr");
    finite_nonneg(o.scalar_lr, "scalar-lr");
    finite_nonneg(o.weight_decay, "weight-decay");
    finite_nonneg(o.router_lr, "router-lr");
    finite_nonneg(o.la_norm_lr, "la-norm-lr");
    LLMC_CHECK(std::isfinite(o.moe_bias_freeze_frac) && o.moe_bias_freeze_frac >= 0.0 && o.moe_bias_freeze_frac <= 1.0,
               "--moe-bias-freeze-frac must be in [0, 1] (the fraction of the steps at the end without bias updates), got %g",
               o.moe_bias_freeze_frac);
    LLMC_CHECK(o.moe_log_every >= 1, "--moe-log-every must be >= 1 (got %d)", o.moe_log_every);
    LLMC_CHECK(o.moe_act == "relu2" || o.moe_act == "swiglu", "--moe-act must be relu2 or swiglu (got '%s')", o.moe_act.c_str());
    LLMC_CHECK(std::isfinite(o.final_lr_frac) && o.final_lr_frac >= 0.0 && o.final_lr_frac <= 1.0,
               "--final-lr-frac must be in [0, 1] (the fraction of the peak lr the warmdown ends at), got %g", o.final_lr_frac);
    LLMC_CHECK(std::isfinite(o.warmdown_ratio) && o.warmdown_ratio >= 0.0 && o.warmdown_ratio <= 1.0,
               "--warmdown-ratio must be in [0, 1] (a fraction of the steps), got %g", o.warmdown_ratio);
    LLMC_CHECK(o.warmup_steps >= 0, "--warmup-steps must be >= 0, got %d", o.warmup_steps);
    LLMC_CHECK(o.target_flops == -1 || (std::isfinite(o.target_flops) && o.target_flops > 0),
               "--target-flops must be > 0, or -1 for unused (got %g)", o.target_flops);
    LLMC_CHECK(std::isfinite(o.target_param_data_ratio), "--target-param-data-ratio must be finite (got %g)", o.target_param_data_ratio);
    LLMC_CHECK(o.eval_every == -1 || o.eval_every >= 1, "--eval-every must be >= 1, or -1 for only at the end (got %d)", o.eval_every);
    LLMC_CHECK(o.save_every == -1 || o.save_every >= 1, "--save-every must be >= 1, or -1 for only at the end (got %d)", o.save_every);
    LLMC_CHECK(o.eval_tokens >= 1, "--eval-tokens must be >= 1 (got %lld)", o.eval_tokens);
    LLMC_CHECK(std::isfinite(o.temperature), "--temperature must be finite (got %g)", o.temperature);
    LLMC_CHECK(o.max_seq_len <= (1 << 24), "--max-seq-len %d is too large (at most %d: the RoPE table holds 10x that many positions)",
               o.max_seq_len, 1 << 24);
    LLMC_CHECK(!o.out_dir.empty(), "--out-dir must not be empty (it is where checkpoints and the log go)");
    LLMC_CHECK(o.threads == -1 || o.threads >= 1, "--threads must be >= 1, or -1 for all cores (got %d)", o.threads);
#ifdef _OPENMP
    int cores = omp_get_num_procs();
#else
    int cores = 1;
#endif
    if (o.threads > cores) {
        fprintf(stderr, "note: --threads %d is more than the %d cores this process may use: using %d\n", o.threads, cores, cores);
        o.threads = cores;
    }
}

// 16 hex digits naming this process's run: written into every file of each checkpoint it saves.
inline std::string make_run_id() {
    uint64_t x = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &x, sizeof(x)) != (ssize_t)sizeof(x)) x = 0;
        close(fd);
    }
    if (x == 0) x = (uint64_t)std::chrono::system_clock::now().time_since_epoch().count() * 0x9E3779B97F4A7C15ULL ^ (uint64_t)getpid();
    return llmc::strfmt("%016llx", (unsigned long long)x);
}

// Memory a training run needs, in bytes: weights and gradients (+ RoPE tables), optimizer state (+
// the Muon scratch), activations for (B, T). Compared with the machine's memory before allocating,
// because on Linux an impossible allocation is more often a kill by the OOM killer than a bad_alloc.
struct MemoryNeed { double weights = 0, optimizer = 0, activations = 0, total = 0; };

inline MemoryNeed memory_need(const GPTConfig& c, int B, int T) {
    ParamSpec spec[NUM_PARAM_TENSORS];
    size_t P = 0;
    param_layout(c, spec, &P);
    double S = 0, mn = 0, ss = 0, mx = 0;
    for (int id = 0; id < NUM_PARAM_TENSORS; id++) {
        if (!is_muon_param(id) || spec[id].count == 0) continue;
        double r = spec[id].rows, k = spec[id].cols;
        S += spec[id].count * (double)llmc::muon_second_moment_size(spec[id].rows, spec[id].cols);
        mn = std::max(mn, r * k);
        ss = std::max(ss, std::min(r, k) * std::min(r, k));
        mx = std::max(mx, std::max(r, k));
    }
    MemoryNeed m;
    m.weights = 4.0 * 2 * (double)P + 4.0 * 10.0 * c.sequence_len * c.head_dim;
    if (!Model::kWeightsAreMaster) m.weights += sizeof(Model::act_t) * (double)P;  // the matmuls' bf16 copy
    m.optimizer = 4.0 * (2 * (double)P + S) + 4.0 * (2 * mn + 3 * ss + 2 * mx) + 8.0 * mx;
    ActivationSize a = activation_numel(c, B, T);
    m.activations = sizeof(Model::act_t) * (double)a.act + sizeof(Model::stat_t) * (double)a.stat + sizeof(int) * (double)a.ints + 16.0 * B * T;
    m.total = m.weights + m.optimizer + m.activations;
    return m;
}

// Physical memory, or the cgroup (container) limit when that is lower; 0 if unknown.
inline double machine_memory_bytes() {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    double mem = pages > 0 && page > 0 ? (double)pages * (double)page : 0.0;
    if (FILE* f = fopen("/sys/fs/cgroup/memory.max", "r")) {
        unsigned long long lim = 0;
        if (fscanf(f, "%llu", &lim) == 1 && lim > 0 && (mem == 0 || (double)lim < mem)) mem = (double)lim;
        fclose(f);
    }
    return mem;
}

inline double gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

// Everything the recipe derived (docs/model.md#scaling, docs/model.md#schedules), for the checkpoint
// meta: how the checkpoint was trained.
inline llmc::Json recipe_json(const llmc::Recipe& r, const Model& m) {
    using llmc::Json;
    Json j = Json::object();
    j.set("horizon", r.horizon);
    j.set("num_iterations", r.num_iterations);
    j.set("total_batch_size", (long long)r.total_batch_size);
    j.set("batch_from_rule", r.batch_from_rule);
    j.set("batch_log2", r.batch_log2);
    j.set("device_batch_size", r.device_batch_size);
    j.set("world_size", r.world_size);
    j.set("tokens_per_fwdbwd", (long long)r.tokens_per_fwdbwd);
    j.set("grad_accum_steps", r.grad_accum_steps);
    j.set("total_tokens", (long long)r.total_tokens);
    j.set("total_flops", r.total_flops);
    j.set("flops_per_token", (long long)r.shape.flops_per_token);
    j.set("params_total", (long long)r.shape.params.total);
    j.set("scaling_params", (long long)r.scaling_params);
    j.set("ref_scaling_params", (long long)r.ref_scaling_params);
    j.set("target_tokens", (long long)r.target_tokens);
    j.set("d_ref", r.d_ref);
    j.set("b_ref", (long long)r.b_ref);
    j.set("lr_batch_scale", r.bls);
    j.set("lr_width_scale", r.dms);
    Json adam = Json::array();
    for (int g = 0; g < llmc::ADAM_NUM_GROUPS; g++) {
        const llmc::AdamGroup& a = r.adam[g];
        Json x = Json::object();
        x.set("group", a.name);
        x.set("present", a.present);
        x.set("lr", a.lr);
        x.set("beta1", a.beta1);
        x.set("beta2", a.beta2);
        x.set("eps", a.eps);
        x.set("weight_decay", a.weight_decay);
        adam.push(x);
    }
    j.set("adamw", adam);
    Json muon = Json::object();
    muon.set("lr", r.muon_lr);
    Json per = Json::object();  // lr_eff = lr * sqrt(max(1, rows/cols)) of each block matrix
    const char* names[NUM_PARAM_TENSORS] = {};
    names[P_CQ] = "attn.c_q"; names[P_CK] = "attn.c_k"; names[P_CV] = "attn.c_v"; names[P_ATTN_PROJ] = "attn.c_proj";
    names[P_VE_GATE] = "attn.ve_gate"; names[P_FC] = "mlp.c_fc"; names[P_MLP_PROJ] = "mlp.c_proj";
    names[P_LA_Q] = "lightning attn.c_q"; names[P_LA_K] = "lightning attn.c_k"; names[P_LA_V] = "lightning attn.c_v";
    names[P_LA_GATE] = "lightning attn.c_gate"; names[P_LA_PROJ] = "lightning attn.c_proj"; names[P_MOE_FC] = "mlp.experts.c_fc";
    names[P_MOE_UP] = "mlp.experts.c_up"; names[P_MOE_PROJ] = "mlp.experts.c_proj"; names[P_MOE_SHARED_FC] = "mlp.shared.c_fc";
    names[P_MOE_SHARED_UP] = "mlp.shared.c_up"; names[P_MOE_SHARED_PROJ] = "mlp.shared.c_proj";
    for (int id = 0; id < NUM_PARAM_TENSORS; id++)
        if (is_muon_param(id) && m.spec[id].count > 0)
            per.set(names[id], r.muon_lr * llmc::muon_shape_factor(m.spec[id].rows, m.spec[id].cols));
    muon.set("lr_by_matrix", per);
    muon.set("beta2", (double)r.muon_beta2);
    muon.set("ns_steps", r.muon_ns_steps);
    muon.set("weight_decay_scaled", r.weight_decay_scaled);
    muon.set("weight_decay_schedule", "weight_decay_scaled * 0.5 * (1 + cos(pi * step / num_iterations))");
    j.set("muon", muon);
    Json s = Json::object();
    s.set("warmup_steps", r.warmup_steps);
    s.set("warmdown_ratio", r.warmdown_ratio);
    s.set("warmdown_steps", (long long)llmc::warmdown_steps(r.num_iterations, r.warmdown_ratio));
    s.set("final_lr_frac", r.final_lr_frac);
    Json mom = Json::object();  // schedule.h's muon_momentum defaults, as Optimizer::step calls it
    mom.set("warmup_steps", 400);
    mom.set("start", 0.85);
    mom.set("peak", 0.97);
    mom.set("end", 0.90);
    s.set("muon_momentum", mom);
    j.set("schedule", s);
    return j;
}

// Every flag's value (after defaults were filled in), by its command-line name.
inline llmc::Json options_json(const llmc::Cli& cli) {
    llmc::Json j = llmc::Json::object();
    for (const auto& f : cli.flags) {
        switch (f.kind) {
            case llmc::Cli::INT: j.set(f.name, *(const int*)f.ptr); break;
            case llmc::Cli::INT64: j.set(f.name, *(const long long*)f.ptr); break;
            case llmc::Cli::DOUBLE: j.set(f.name, *(const double*)f.ptr); break;
            case llmc::Cli::STRING: j.set(f.name, *(const std::string*)f.ptr); break;
            case llmc::Cli::BOOL: j.set(f.name, *(const bool*)f.ptr); break;
        }
    }
    return j;
}

// --eval-only: the model flags not on the command line come from the checkpoint's recorded options.
inline void take_options_from_checkpoint(llmc::Cli& cli, const Checkpoint& ck) {
    const llmc::Json* opts = ck.meta.find("options");
    if (!opts) {
        fprintf(stderr, "note: checkpoint '%s' records no options (an older %s): the model flags given here must match it\n",
                ck.meta_path.c_str(), kProgram);
        return;
    }
    for (const char* name : {"depth", "aspect-ratio", "head-dim", "n-kv-head", "max-seq-len", "window-pattern", "short-window", "arch", "smear",
                             "value-embeds", "lambdas", "backout", "windows", "device-batch-size", "loader", "seed", "attn-period",
                             "moe-dense-layers", "moe-experts", "moe-topk", "moe-shared", "moe-hidden", "moe-act", "moe-rho", "moe-aux-alpha",
                             "moe-groups", "moe-topk-groups", "la-block"}) {
        llmc::Cli::Flag* f = cli.find(name);
        if (!f || cli.given(name) || !opts->has(name)) continue;
        const llmc::Json& v = (*opts)[name];
        try {
            switch (f->kind) {
                case llmc::Cli::INT: *(int*)f->ptr = (int)v.as_int(); break;
                case llmc::Cli::INT64: *(long long*)f->ptr = (long long)v.as_int(); break;
                case llmc::Cli::DOUBLE: *(double*)f->ptr = v.as_double(); break;
                case llmc::Cli::STRING: *(std::string*)f->ptr = v.as_string(); break;
                case llmc::Cli::BOOL: *(bool*)f->ptr = v.as_bool(); break;
            }
        } catch (const llmc::Error& e) {
            LLMC_FAIL("checkpoint '%s': options.%s: %s", ck.meta_path.c_str(), name, e.what());
        }
    }
}

// The JSON Lines log: an {"event": ...} line when a run starts or resumes, one line per training
// step, one per evaluation; every line has "step", and train/val lines "tokens" (step x batch). Each
// write is checked: a full disk stops the run (with a checkpoint) instead of going unnoticed.
struct RunLog {
    std::unique_ptr<llmc::File> f;
    void open(const std::string& path, const char* mode) { f.reset(new llmc::File(path, mode)); }
    void line(const llmc::Json& j) {
        std::string s = llmc::json_dump(j, -1) + "\n";
        f->write(s.data(), s.size());
        if (fflush(f->f) != 0) LLMC_FAIL("'%s': write failed: %s", f->path.c_str(), strerror(errno));
    }
};

// Resuming at `step`: drop the log lines past it (the run that went on after that checkpoint wrote
// them, and they are about to be written again) and torn lines (a run killed mid-write), so each
// step appears once. Returns the number of lines dropped; the file is rewritten atomically.
inline int truncate_log_after(const std::string& path, int step) {
    if (!llmc::file_exists(path)) return 0;
    std::string s = llmc::read_file(path), keep;
    int dropped = 0;
    size_t a = 0;
    while (a < s.size()) {
        size_t b = s.find('\n', a);
        bool torn = b == std::string::npos;
        if (torn) b = s.size();
        std::string line = s.substr(a, b - a);
        a = b + 1;
        if (line.empty()) continue;
        bool ok = !torn;
        try {
            llmc::Json j = llmc::json_parse(line, path);
            if (j.has("step") && j["step"].as_int() > step) ok = false;
        } catch (const llmc::Error&) {
            ok = false;
        }
        if (ok) keep += line + "\n";
        else dropped++;
    }
    if (dropped) llmc::write_file_atomic(path, keep);
    return dropped;
}

// Print num_samples continuations of the prompt. Returns false if a signal cut it short.
inline bool print_samples(Model& m, const TrainerOptions& o, const llmc::Tokenizer* tok, int bos) {
    llmc::Rng rng((uint64_t)o.seed, 999);
    std::vector<int> stop_ids;
    if (bos >= 0) stop_ids.push_back(bos);
    if (tok) {
        int64_t ae = tok->special_id("<|assistant_end|>");
        if (ae >= 0) stop_ids.push_back((int)ae);
    }
    for (int s = 0; s < o.num_samples; s++) {
        std::vector<uint32_t> ids;
        if (bos >= 0) ids.push_back((uint32_t)bos);
        if (tok && !o.prompt.empty()) for (uint32_t id : llmc::encode_ordinary(*tok, o.prompt)) ids.push_back(id);
        if (ids.empty()) ids.push_back(0);
        size_t n0 = ids.size();
        bool ended = false;
        ids = generate(m, ids, o.sample_tokens, (float)o.temperature, o.top_k, rng, stop_ids, &ended, &g_stop_signal);
        if (g_stop_signal) return false;
        printf("--- sample %d ---\n", s + 1);
        if (tok) {
            std::vector<uint32_t> text(ids.begin() + (bos >= 0 && ids[0] == (uint32_t)bos ? 1 : 0), ids.end());
            printf("%s\n", llmc::decode_text(*tok, text).c_str());
        } else {
            for (size_t i = n0; i < ids.size(); i++) printf("%u ", ids[i]);
            printf("\n");
        }
        if (ended) printf("(ended at an end-of-document token after %zu tokens)\n", ids.size() - n0);
        fflush(stdout);
    }
    return true;
}

// Refuse a model that cannot fit before allocating it, with what it needs and what there is (the
// machine's memory on the CPU, the GPU's free memory in the GPU build).
inline void check_memory(const GPTConfig& cfg, const MemoryNeed& need, double total, int B, int T) {
#if defined(LLMC_GPU_BUILD) && !defined(LLMC_SIM)
    op::setup_device();
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    double have = (double)free_b;
    const char* where = "free on the GPU";
#else
    double have = machine_memory_bytes();
    const char* where = "on this machine";
#endif
    if (have > 0 && total > have)
        LLMC_FAIL("this model (depth %d, n_embd %d, %lld parameters) needs about %.1f GiB of memory (weights and gradients %.1f GiB, "
                  "optimizer state %.1f GiB, activations for %d x %d tokens %.1f GiB) but there are %.1f GiB %s: use a smaller "
                  "--device-batch-size (or --depth, --max-seq-len)",
                  cfg.n_layer, cfg.n_embd, (long long)cfg.params.total, gib(total), gib(need.weights), gib(need.optimizer), B, T,
                  gib(need.activations), gib(have), where);
}

[[noreturn]] inline void fail_out_of_memory(const GPTConfig& cfg, double total) {
    LLMC_FAIL("out of memory while allocating the model (depth %d, n_embd %d, %lld parameters): it needs about %.1f GiB; use a smaller "
              "--depth (or --device-batch-size, --max-seq-len)",
              cfg.n_layer, cfg.n_embd, (long long)cfg.params.total, gib(total));
}

inline bool same_dir(const std::string& a, const std::string& b) {
    char ra[PATH_MAX], rb[PATH_MAX];
    if (!realpath(a.c_str(), ra) || !realpath(b.c_str(), rb)) return false;
    return strcmp(ra, rb) == 0;
}

// --eval-only: a checkpoint's validation loss and bits per byte, printed and appended to a log
// (--log-file, else <--out-dir>/log.jsonl when --out-dir is given, else the checkpoint's own
// directory's log.jsonl). No training, no checkpoint written, no lock taken.
inline int eval_only_main(TrainerOptions& o, const llmc::Cli& cli, const llmc::ModelOptions& mo, Checkpoint& ck, const llmc::Tokenizer* tok,
                          int vocab, int bos, llmc::LoaderMode mode) {
    GPTConfig cfg = llmc::derive_model_shape(mo);
    int B = o.device_batch_size, T = cfg.sequence_len;
    LLMC_CHECK(B >= 1, "--device-batch-size must be >= 1 (got %d)", B);
    MemoryNeed need = memory_need(cfg, B, T);
    need.optimizer = 0;
    check_memory(cfg, need, need.weights + need.activations, B, T);
    Model model;
    try {
        model.init(cfg);
        model.build_activations(B, T);
    } catch (const std::bad_alloc&) {
        fail_out_of_memory(cfg, need.weights + need.activations);
    }
    load_checkpoint(ck, model, nullptr);
    ck.model.reset();  // the file's bytes are no longer needed

    bool have_val = true;
    try { (void)llmc::glob_files(o.val_data); } catch (const llmc::Error&) { have_val = false; }
    LLMC_CHECK(have_val, "--eval-only: no validation shards match '%s' (give --data-dir or --val-data)", o.val_data.c_str());
    llmc::DataLoader val;
    val.name = "val";
    val.quiet = true;
    val.init(o.val_data, B, T, 0, 1, mode, bos, vocab, tok ? "the tokenizer's bos_token" : "--bos-id");
    std::string note = small_val_note(val, B, T);
    if (!note.empty()) fprintf(stderr, "%s\n", note.c_str());
    std::vector<int> inputs((size_t)B * T), targets((size_t)B * T);
    EvalResult e = evaluate(model, val, B, T, o.eval_tokens, tok ? &tok->token_bytes : nullptr, inputs, targets, &g_stop_signal);
    if (!e.complete) {
        fprintf(stderr, "%s: stopped by %s during the evaluation (nothing written)\n", kProgram, signal_name(g_stop_signal));
        return 128 + g_stop_signal;
    }
    LLMC_CHECK(std::isfinite(e.loss), "checkpoint '%s': validation loss is %g: its weights diverged", ck.meta_path.c_str(), e.loss);
    printf("eval-only: %s (step %d) | val loss %.6f | val bpb %.4f | %lld tokens\n", ck.meta_path.c_str(), ck.step, e.loss, e.bpb,
           (long long)e.tokens);

    std::string log_path = o.log_file;
    if (log_path.empty() && cli.given("out-dir")) {
        llmc::make_dirs(o.out_dir, "--out-dir");
        log_path = o.out_dir + "/log.jsonl";
    }
    if (log_path.empty()) log_path = ck.dir + "/log.jsonl";
    llmc::Json j = llmc::Json::object();
    j.set("step", ck.step);
    if (ck.meta.has("total_batch_size")) j.set("tokens", (long long)ck.step * (long long)ck.meta["total_batch_size"].as_int());
    j.set("val_loss", e.loss);
    j.set("val_bpb", std::isfinite(e.bpb) ? llmc::Json(e.bpb) : llmc::Json());
    j.set("eval_only", true);
    j.set("checkpoint", base_name(ck.meta_path));
    j.set("eval_tokens", (long long)e.tokens);
    RunLog log;
    log.open(log_path, "ab");
    log.line(j);
    printf("logged to %s\n", log_path.c_str());
    // samples only when asked for: the defaults are for the end of training
    if (cli.given("num-samples") && o.num_samples > 0 && o.sample_tokens > 0 && !print_samples(model, o, tok, bos)) {
        fprintf(stderr, "%s: stopped by %s while sampling\n", kProgram, signal_name(g_stop_signal));
        return 128 + g_stop_signal;
    }
    if (fflush(stdout) != 0 || ferror(stdout)) LLMC_FAIL("writing to stdout failed: %s", strerror(errno));
    return 0;
}

inline int train_main(int argc, char** argv) {
    TrainerOptions o;
#ifdef LLMC_TRAIN_MOE
    program_defaults(o);
    llmc::Cli cli(kProgram, llmc::strfmt("Train a hybrid GPT: Lightning Attention and softmax attention layers, mixture-of-experts FFNs "
                                         "(docs/model.md#hybrid). This build: %s.", op::backend_name()));
#else
    llmc::Cli cli(kProgram, llmc::strfmt("Train a nanochat-architecture GPT. This build: %s.", op::backend_name()));
#endif
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
    cli.add("final-lr-frac", &o.final_lr_frac, "lr multiplier the warmdown decays towards, in [0, 1]");
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
    cli.add("save-init", &o.save_init, "also checkpoint the initial weights (step 0), to compare runs from their first step");
    cli.add("out-dir", &o.out_dir, "checkpoint and log directory (one run at a time: it is locked)");
    cli.add("resume", &o.resume, "checkpoint directory (its newest checkpoint that verifies) or meta file to resume from");
    cli.add("eval-only", &o.eval_only, "evaluate the --resume checkpoint (val loss, bits per byte; printed and logged) without training; "
                                       "model flags not given come from the checkpoint");
    cli.add("log-file", &o.log_file, "JSON Lines log; default <out-dir>/log.jsonl");
    cli.add("profile", &o.profile, "1: time every op of every step after the first (CUDA events; GPU build) and print a table at the end");
    cli.add("dump-grads", &o.dump_grads, "write the first step's gradient (mean over its micro-batches) to this safetensors file "
                                         "(to compare builds: test/test_builds.cpp)");
    cli.add("num-samples", &o.num_samples, "continuations sampled at the end");
    cli.add("sample-tokens", &o.sample_tokens, "tokens per sample (a sample also ends at <|bos|>)");
    cli.add("temperature", &o.temperature, "sampling temperature (0 = greedy)");
    cli.add("top-k", &o.top_k, "sample among the top k tokens (0 = all)");
    cli.add("prompt", &o.prompt, "text the samples continue (after BOS)");
    cli.add("seed", &o.seed, "seed of the init and sampling RNG");
    cli.add("threads", &o.threads, "OpenMP threads; -1 = all cores (at most the cores there are)");
#ifdef LLMC_TRAIN_MOE
    cli.add("attn-period", &o.attn_period, "layer l is softmax attention iff (l+1) % P == 0, else Lightning Attention; 0 = no softmax layer");
    cli.add("la-block", &o.la_block, "block size of the blocked lightning core (64 or 256; any >= 1)");
    cli.add("moe-dense-layers", &o.moe_dense_layers, "the first layers keep the dense MLP (4C, ReLU²)");
    cli.add("moe-experts", &o.moe_experts, "routed experts per MoE layer E; 0 = no MoE layer");
    cli.add("moe-topk", &o.moe_topk, "experts chosen per token K");
    cli.add("moe-shared", &o.moe_shared, "shared experts N_s (one always-on MLP of width N_s*F)");
    cli.add("moe-hidden", &o.moe_hidden, "expert hidden width F; -1 = 128*round(4C/(128(K+N_s))) (SwiGLU: 2/3 of that)");
    cli.add("moe-act", &o.moe_act, "expert activation: relu2 or swiglu");
    cli.add("moe-rho", &o.moe_rho, "routed scaling factor rho");
    cli.add("moe-aux-alpha", &o.moe_aux_alpha, "sequence-wise auxiliary balance loss coefficient; 0 = off");
    cli.add("moe-bias-rate", &o.moe_bias_rate, "balancing bias step gamma per optimizer step; 0 = frozen");
    cli.add("moe-bias-freeze-frac", &o.moe_bias_freeze_frac, "no bias updates in this last fraction of the steps");
    cli.add("moe-groups", &o.moe_groups, "group-limited routing: G groups of E/G experts (1 = plain top-K)");
    cli.add("moe-topk-groups", &o.moe_topk_groups, "group-limited routing: keep the M best groups");
    cli.add("moe-log-every", &o.moe_log_every, "log the routing metrics (load, maxvio, cv, dead, entropy, bias) every N steps and at the end");
    cli.add("router-lr", &o.router_lr, "AdamW lr of the MoE routers (times the batch and width scales)");
    cli.add("la-norm-lr", &o.la_norm_lr, "AdamW lr of the lightning norm weights (times the batch scale)");
#endif
    if (!cli.parse(argc, argv)) return 0;
    check_options(o);
#ifdef _OPENMP
    if (o.threads > 0) omp_set_num_threads(o.threads);
#endif
    install_signal_handlers();

    // ---- eval-only reads its checkpoint first: it supplies the model flags not given ----
    std::unique_ptr<Checkpoint> eval_ck;
    if (o.eval_only) {
        LLMC_CHECK(!o.resume.empty(), "--eval-only needs --resume DIR (its newest checkpoint that verifies) or --resume DIR/meta_NNNNNN.json");
        eval_ck.reset(new Checkpoint(find_checkpoint(o.resume, false)));
        take_options_from_checkpoint(cli, *eval_ck);
    }

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

    // ---- model shape and recipe (docs/model.md#depth, docs/model.md#scaling) ----
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
    mo.attn_period = o.attn_period; mo.la_block = o.la_block; mo.moe_dense_layers = o.moe_dense_layers; mo.n_experts = o.moe_experts;
    mo.moe_topk = o.moe_topk; mo.moe_shared = o.moe_shared; mo.moe_hidden = o.moe_hidden; mo.moe_swiglu = o.moe_act == "swiglu";
    mo.moe_rho = o.moe_rho; mo.moe_aux_alpha = o.moe_aux_alpha; mo.moe_bias_rate = o.moe_bias_rate; mo.moe_groups = o.moe_groups;
    mo.moe_topk_groups = o.moe_topk_groups;
    if (o.eval_only) return eval_only_main(o, cli, mo, *eval_ck, tok.get(), vocab, bos, mode);
    llmc::RecipeOptions ro;
    ro.target_param_data_ratio = o.target_param_data_ratio; ro.num_iterations = o.num_iterations; ro.target_flops = o.target_flops;
    ro.total_batch_size = o.total_batch_size; ro.device_batch_size = o.device_batch_size;
    ro.unembedding_lr = o.unembedding_lr; ro.embedding_lr = o.embedding_lr; ro.scalar_lr = o.scalar_lr; ro.matrix_lr = o.matrix_lr;
    ro.weight_decay = o.weight_decay; ro.warmup_steps = o.warmup_steps; ro.warmdown_ratio = o.warmdown_ratio; ro.final_lr_frac = o.final_lr_frac;
    ro.router_lr = o.router_lr; ro.la_norm_lr = o.la_norm_lr;
    llmc::Recipe r = llmc::derive_recipe(mo, ro);
    const GPTConfig& cfg = r.shape;
    int B = o.device_batch_size, T = cfg.sequence_len, A = r.grad_accum_steps, N = r.num_iterations;

    // ---- the output directory: one writer at a time (taken once the flags are known to be sound,
    // before the slow parts: allocation, data scan, checkpoint reading) ----
    llmc::make_dirs(o.out_dir, "--out-dir");
    lock_out_dir(o.out_dir);
    if (o.log_file.empty()) o.log_file = o.out_dir + "/log.jsonl";
    tidy_out_dir(o.out_dir, o.log_file);

    printf("model: depth %d, n_embd %d, heads %d/%d (kv), head_dim %d, vocab %d (padded %d), T %d, windows", cfg.n_layer, cfg.n_embd,
           cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.vocab_size, cfg.padded_vocab_size, T);
    for (int l = 0; l < cfg.n_layer; l++) {
        if (cfg.is_lightning[l]) printf(" -");  // (no window: a lightning layer)
        else printf(" %d", cfg.window[l]);
    }
    printf("\nextras: smear %d value_embeds %d lambdas %d backout %d windows %d\n", cfg.smear, cfg.value_embeds, cfg.lambdas, cfg.backout, cfg.windows);
    if (cfg.hybrid()) {
        std::string mix, ffn;
        for (int l = 0; l < cfg.n_layer; l++) { mix += cfg.is_lightning[l] ? 'L' : 'S'; ffn += cfg.is_moe[l] ? 'M' : 'D'; }
        printf("layers: mixers %s (L lightning, %d heads of %d, block %d; S softmax, full context), FFNs %s (D dense 4C; M MoE", mix.c_str(),
               cfg.n_head, cfg.head_dim, cfg.la_block, ffn.c_str());
        if (cfg.n_moe)
            printf(": %d experts, top %d, %d shared, F %d, %s, rho %g, aux alpha %g, bias rate %g", cfg.n_experts, cfg.moe_topk, cfg.moe_shared,
                   cfg.moe_hidden, cfg.moe_swiglu ? "SwiGLU" : "ReLU²", cfg.moe_rho, cfg.moe_aux_alpha, cfg.moe_bias_rate);
        printf(")\n");
        if (cfg.attn_period > 1 && cfg.n_layer % cfg.attn_period != 0)
            fprintf(stderr, "warning: depth %d is not a multiple of --attn-period %d: the last %d layer(s) are lightning, not ending on a "
                    "softmax layer\n", cfg.n_layer, cfg.attn_period, cfg.n_layer % cfg.attn_period);
    }
    printf("parameters: %lld total, %lld scaling", (long long)cfg.params.total, (long long)cfg.params.scaling);
    if (cfg.n_moe) printf(" (%lld matrix elements per token of %lld)", (long long)cfg.params.active_matrices, (long long)cfg.params.transformer_matrices);
    printf("; %.3g FLOPs/token\n", (double)cfg.flops_per_token);
    printf("recipe: %d steps (%s) x %lld tokens = %.3g tokens; grad accum %d x (%d x %d); muon lr %.5g, wd %.4g\n", N, r.horizon.c_str(),
           (long long)r.total_batch_size, (double)r.total_tokens, A, B, T, r.muon_lr, r.weight_decay_scaled);

    MemoryNeed need = memory_need(cfg, B, T);
    printf("memory: about %.2f GiB (weights and gradients %.2f, optimizer state %.2f, activations %.2f)\n", gib(need.total), gib(need.weights),
           gib(need.optimizer), gib(need.activations));
    check_memory(cfg, need, need.total, B, T);

    Model model;
    Optimizer opt;
    try {
        model.init(cfg);
        model.init_weights((uint64_t)o.seed);
        model.build_activations(B, T);
        model.reserve_micro_batches(A);
        opt.init(model);
    } catch (const std::bad_alloc&) {
        fail_out_of_memory(cfg, need.total);
    }
    if (op::kDevice) {
        // what was allocated, group by group (each one allocation), and the allocator's own peak
        double w = (double)model.num_params * (8 + (Model::kWeightsAreMaster ? 0 : sizeof(Model::act_t)));
        double st = 4.0 * (2 * opt.n_mv + opt.n_s) + (double)opt.scratch_bytes();
        printf("device memory: weights + gradients %.2f GiB, optimizer state %.2f GiB, activations %.2f GiB; peak allocated by the "
               "trainer %.2f GiB, %.2f GiB in use on the device\n", gib(w), gib(st), gib((double)model.act_bytes), gib(op::peak_allocated()),
               gib(op::device_memory_used()));
    }

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
    if (have_val) {
        std::string note = small_val_note(val, B, T);
        if (!note.empty()) fprintf(stderr, "%s\n", note.c_str());
    }

    // ---- resume ----
    std::string run_id = make_run_id();
    bool resumed = !o.resume.empty();
    int start_step = 0;
    std::string resumed_from;
    if (resumed) {
        Checkpoint ck = find_checkpoint(o.resume, true);
        load_checkpoint(ck, model, &opt);
        const llmc::Json& meta = ck.meta;
        start_step = ck.step;
        LLMC_CHECK(meta["num_iterations"].as_int() == N && meta["total_batch_size"].as_int() == r.total_batch_size &&
                   meta["device_batch_size"].as_int() == B,
                   "checkpoint '%s' was trained with %lld steps of %lld tokens (device batch %lld); this run has %d steps of %lld (device batch %d)",
                   ck.meta_path.c_str(), (long long)meta["num_iterations"].as_int(), (long long)meta["total_batch_size"].as_int(),
                   (long long)meta["device_batch_size"].as_int(), N, (long long)r.total_batch_size, B);
        std::vector<int64_t> st;
        for (auto& x : meta["loader_state"].as_array()) st.push_back(x.as_int());
        train.state_from_ints(st);
        resumed_from = ck.meta_path;
        printf("resumed from %s at step %d\n", ck.meta_path.c_str(), start_step);
    } else {
        auto old = list_checkpoints(o.out_dir);
        if (!old.empty())
            fprintf(stderr, "note: '%s' already holds checkpoints of an earlier run (newest: step %d); this run replaces those of the steps it "
                    "saves, and --resume %s takes the newest checkpoint there, whichever run wrote it\n",
                    o.out_dir.c_str(), old.front().first, o.out_dir.c_str());
    }
    snprintf(g_newest_ckpt, sizeof(g_newest_ckpt), "%s", resumed_from.c_str());

    // ---- the log ----
    if (resumed) {
        int dropped = truncate_log_after(o.log_file, start_step);
        if (dropped)
            fprintf(stderr, "note: '%s': dropped %d line(s) past step %d (written after that checkpoint; the steps are run again now)\n",
                    o.log_file.c_str(), dropped, start_step);
    }
    RunLog log;
    log.open(o.log_file, resumed ? "ab" : "wb");
    printf("run %s: checkpoints in %s, log %s\n", run_id.c_str(), o.out_dir.c_str(), o.log_file.c_str());
    // A write error on the log or stdout stops the run at the next step boundary, with a checkpoint.
    std::string stop_reason;
    auto log_line = [&](const llmc::Json& j) {
        try { log.line(j); } catch (const llmc::Error& e) { if (stop_reason.empty()) stop_reason = e.what(); }
    };
    auto check_stdout = [&]() {
        if ((fflush(stdout) != 0 || ferror(stdout)) && stop_reason.empty()) stop_reason = llmc::strfmt("writing to stdout failed: %s", strerror(errno));
    };
    {
        llmc::Json j = llmc::Json::object();
        j.set("event", resumed ? "resume" : "start");
        j.set("step", start_step);
        j.set("run_id", run_id);
        j.set("num_iterations", N);
        j.set("total_batch_size", (long long)r.total_batch_size);
        if (resumed) j.set("checkpoint", resumed_from);
        log_line(j);
    }
    check_stdout();

    // The checkpoint in this run's directory that holds the current weights, if any: the one marked
    // diverged when those weights give a non-finite loss.
    std::string weights_ckpt = resumed && same_dir(llmc::dir_of(resumed_from), o.out_dir) ? resumed_from : "";
    int last_saved = -1;
    double last_train_loss = NAN;
    EvalResult last_eval;
    int last_eval_step = -1;

    // A non-finite loss: mark the checkpoint of these weights (if there is one), name the newest one
    // with a finite loss, stop.
    auto diverged = [&](const std::string& what, int weights_step) {
        std::string msg = "training diverged: " + what;
        if (!weights_ckpt.empty()) {
            try {
                mark_diverged(weights_ckpt, what);
                msg += llmc::strfmt("; '%s' holds these weights and is now marked diverged (resume skips it)", weights_ckpt.c_str());
            } catch (const llmc::Error& e) {
                msg += llmc::strfmt("; '%s' holds these weights (marking it diverged failed: %s)", weights_ckpt.c_str(), e.what());
            }
        }
        std::string good = newest_good_checkpoint(o.out_dir, weights_step);
        if (good.empty() && resumed && start_step < weights_step) good = resumed_from;
        if (good.empty()) msg += "; there is no checkpoint with a finite loss to resume from: start again, e.g. with lower learning rates";
        else msg += llmc::strfmt("; resume from '%s', the newest checkpoint with a finite loss (e.g. with lower learning rates)", good.c_str());
        LLMC_FAIL("%s", msg.c_str());
    };

    auto save = [&](int step) {
        const float* hp = model.host_params();
        for (size_t i = 0; i < model.num_params; i++)  // never a checkpoint of non-finite weights
            if (!std::isfinite(hp[i])) diverged(llmc::strfmt("the weights after step %d/%d are not finite", step, N), step);
        llmc::Json extra = llmc::Json::object();
        extra.set("num_iterations", N);
        extra.set("total_batch_size", (long long)r.total_batch_size);
        extra.set("device_batch_size", B);
        extra.set("seed", o.seed);
        llmc::Json st = llmc::Json::array();
        for (int64_t x : train.state_to_ints()) st.arr.push_back(llmc::Json((long long)x));
        extra.set("loader_state", st);
        if (std::isfinite(last_train_loss)) extra.set("train_loss", last_train_loss);  // of the step that ended here
        if (last_eval_step == step) {
            extra.set("val_loss", last_eval.loss);
            if (std::isfinite(last_eval.bpb)) extra.set("val_bpb", last_eval.bpb);
        }
        if (step < N) {  // the schedules' values for the step a resume runs next
            llmc::Json s = llmc::Json::object();
            s.set("lr_multiplier", llmc::lr_multiplier(step, N, r.warmup_steps, r.warmdown_ratio, r.final_lr_frac));
            s.set("muon_momentum", llmc::muon_momentum(step, N, r.warmdown_ratio));
            s.set("muon_weight_decay", llmc::muon_weight_decay(step, N, r.weight_decay_scaled));
            extra.set("next_step_schedule", s);
        }
        extra.set("recipe", recipe_json(r, model));
        extra.set("options", options_json(cli));
        if (resumed) extra.set("resumed_from", resumed_from);
        std::string path;
        try {
            path = save_checkpoint(o.out_dir, step, model, opt, run_id, extra);
        } catch (const llmc::Error& e) {
            auto list = list_checkpoints(o.out_dir);
            std::string newest = !list.empty() ? list.front().second : resumed_from;
            LLMC_FAIL("%s; the newest checkpoint is still %s", e.what(), newest.empty() ? "none" : ("'" + newest + "'").c_str());
        }
        last_saved = step;
        weights_ckpt = path;
        snprintf(g_newest_ckpt, sizeof(g_newest_ckpt), "%s", path.c_str());
        printf("saved checkpoint %s\n", path.c_str());
        check_stdout();
    };

    // A signal or a write error: save the current weights (unless saved already), say where they
    // are, exit non-zero (128 + the signal, or 1).
    auto finish_stop = [&](int step) -> int {
        int sig = g_stop_signal;
        std::string why = sig ? llmc::strfmt("stopped by %s", signal_name(sig)) : stop_reason;
        if (step > start_step && step != last_saved) {
            try {
                save(step);
            } catch (const std::exception& e) {
                fprintf(stderr, "error: %s at step %d/%d, and %s\n", why.c_str(), step, N, e.what());
                return 1;
            }
        }
        std::string newest = last_saved >= 0 ? ckpt_path(o.out_dir, "meta", last_saved, "json") : resumed_from;
        std::string tail = newest.empty() ? "nothing to save (no training step since the start)"
                                          : llmc::strfmt("the newest checkpoint is '%s': continue with --resume %s", newest.c_str(),
                                                         llmc::dir_of(newest).c_str());
        if (sig) {
            fprintf(stderr, "%s: %s at step %d/%d: %s\n", kProgram, why.c_str(), step, N, tail.c_str());
            return 128 + sig;
        }
        fprintf(stderr, "error: %s (at step %d/%d): %s\n", why.c_str(), step, N, tail.c_str());
        return 1;
    };

    if (o.profile) op::profile_enable(A * (60 * cfg.n_layer + 64) + 64);
    // MoE loads summed over the steps since the last metrics line (for "dead"; after a resume the
    // window starts at the resumed step), and the last metrics for the summary at the end
    std::vector<int64_t> window_load((size_t)cfg.n_moe * cfg.n_experts, 0);
    llmc::Json last_moe_log;
    int last_moe_step = -1;
    std::vector<int> inputs((size_t)B * T), targets((size_t)B * T);
    double t_start = now_seconds(), train_time = 0.0;
    int timed_steps = 0;
    for (int step = start_step; step <= N; step++) {
        bool last = step == N;
        if (g_stop_signal || !stop_reason.empty()) return finish_stop(step);
        // evaluate at step 0, every eval_every steps and at the end (docs/model.md#schedules); not again
        // right after a resume
        if (have_val && (last || (o.eval_every > 0 && step % o.eval_every == 0)) && !(step == start_step && resumed)) {
            EvalResult e = evaluate(model, val, B, T, o.eval_tokens, tok ? &tok->token_bytes : nullptr, inputs, targets, &g_stop_signal);
            if (!e.complete) return finish_stop(step);  // a signal: the evaluation is dropped
            if (!std::isfinite(e.loss)) diverged(llmc::strfmt("the validation loss is %g at step %d/%d", e.loss, step, N), step);
            printf("step %5d/%d | val loss %.6f | val bpb %.4f | %lld tokens\n", step, N, e.loss, e.bpb, (long long)e.tokens);
            check_stdout();
            llmc::Json j = llmc::Json::object();
            j.set("step", step); j.set("tokens", (long long)step * r.total_batch_size);
            j.set("val_loss", e.loss); j.set("val_bpb", std::isfinite(e.bpb) ? llmc::Json(e.bpb) : llmc::Json());
            log_line(j);
            last_eval = e;
            last_eval_step = step;
        }
        bool save_due = step > start_step ? last || (o.save_every > 0 && step % o.save_every == 0) : step == 0 && o.save_init && !resumed;
        if (save_due) save(step);
        if (last) break;
        if (g_stop_signal || !stop_reason.empty()) return finish_stop(step);

        // ---- one optimizer step: A micro-batches, mean gradient, then the update ----
        // (docs/model.md#training-step)
        double t0 = now_seconds();
        model.zero_grad();
        for (int a = 0; a < A; a++) {
            train.next_batch(inputs.data(), targets.data());
            model.forward_async(inputs.data(), targets.data(), B, T, a, true);
            model.backward(1.0f / A);
        }
        // the step's loss: the first read of anything the device computed in this step. The MoE
        // aux loss is part of the objective but logged apart, so `loss` compares with val loss.
        double loss = 0.0, aux = 0.0;
        for (int a = 0; a < A; a++) loss += model.slot_loss(a) / A;
        for (int a = 0; a < A && cfg.n_moe; a++) aux += model.slot_aux(a) / A;
        // numbered like the step lines: the forward of step k+1 runs on the weights after step k
        if (!std::isfinite(loss + aux))
            diverged(llmc::strfmt("the training loss is %g at step %d/%d (the forward pass on the weights after step %d)", loss + aux, step + 1,
                                  N, step), step);
        if (!o.dump_grads.empty() && step == start_step) dump_grads(o.dump_grads, model);
        double gn = model.grad_norm();  // logged only
        opt.step(model, r, step);
        // MoE: the step's integer loads (summed over its micro-batches) give the metrics, then the
        // balancing bias moves and the counters return to zero (docs/moe.md#bias, docs/moe.md#metrics)
        double step_maxvio = 0.0;
        llmc::Json moe_log;
        if (cfg.n_moe) {
            int E = cfg.n_experts;
            const int64_t* ld = model.host_moe_load();
            for (size_t i = 0; i < window_load.size(); i++) window_load[i] += ld[i];
            for (int jl = 0; jl < cfg.n_moe; jl++) step_maxvio = std::max(step_maxvio, moe_maxvio(ld + (size_t)jl * E, E));
            bool log_moe = (step + 1) % o.moe_log_every == 0 || step + 1 == N;
            if (log_moe) moe_log = moe_metrics_json(model, ld, window_load.data(), A);
            bool frozen = step >= N - (int)llmc::round_half_even(o.moe_bias_freeze_frac * N);
            model.moe_update_bias(frozen ? 0.0 : cfg.moe_bias_rate);
            if (log_moe) {
                add_bias_stats(model, moe_log);  // b after this step's update: what the next forward routes with
                std::fill(window_load.begin(), window_load.end(), 0);
                last_moe_log = moe_log;
                last_moe_step = step + 1;
            }
        }
        if (o.profile) {  // the first step (allocations, plan caches, clocks) is not representative
            if (step > start_step) op::profile_collect();
            else op::profile_discard();
        }
        weights_ckpt.clear();
        last_train_loss = loss;
        double dt = now_seconds() - t0;
        if (step > start_step) { train_time += dt; timed_steps++; }  // the first step warms caches
        double tok_s = dt > 0 ? (double)r.total_batch_size / dt : 0.0;  // (the log cannot hold an inf)
        double lrm = llmc::lr_multiplier(step, N, r.warmup_steps, r.warmdown_ratio, r.final_lr_frac);
        double elapsed = now_seconds() - t_start;
        double eta = timed_steps ? train_time / timed_steps * (N - step - 1) : NAN;
        std::string moe_str = cfg.n_moe ? llmc::strfmt(" | aux %.3g | maxvio %.3f", aux, step_maxvio) : std::string();
        printf("step %5d/%d | loss %.6f | lrm %.3f | gnorm %.4f%s | %.0f ms | %.0f tok/s | %.2f GFLOP/s%s | elapsed %s | eta %s\n", step + 1, N,
               loss, lrm, gn, moe_str.c_str(), dt * 1e3, tok_s, tok_s * (double)cfg.flops_per_token * 1e-9,
               mfu_str(tok_s * (double)cfg.flops_per_token).c_str(), fmt_duration(elapsed).c_str(), fmt_duration(eta).c_str());
        check_stdout();
        llmc::Json j = llmc::Json::object();
        j.set("step", step + 1); j.set("tokens", (long long)(step + 1) * r.total_batch_size);
        j.set("loss", loss); j.set("lrm", lrm); j.set("grad_norm", std::isfinite(gn) ? llmc::Json(gn) : llmc::Json()); j.set("dt_ms", dt * 1e3);
        j.set("tok_per_s", tok_s); j.set("gflops", tok_s * (double)cfg.flops_per_token * 1e-9);
        if (cfg.n_moe) {
            j.set("aux", aux); j.set("maxvio", step_maxvio);
            if (moe_log.is_array()) j.set("moe", moe_log);
        }
        log_line(j);
    }
    if (timed_steps) {
        double tps = (double)r.total_batch_size * timed_steps / train_time;
        printf("throughput: %.0f tokens/s, %.2f model GFLOP/s%s (mean over %d steps)\n", tps, tps * (double)cfg.flops_per_token * 1e-9,
               mfu_str(tps * (double)cfg.flops_per_token).c_str(), timed_steps);
    }
    if (o.profile) print_profile(timed_steps, train_time);
    if (last_moe_step > 0) print_moe_summary(last_moe_log, last_moe_step, cfg);

    // ---- samples ----
    if (o.num_samples > 0 && o.sample_tokens > 0 && !print_samples(model, o, tok.get(), bos)) {
        fprintf(stderr, "%s: stopped by %s while sampling (training is done and its final checkpoint saved)\n", kProgram,
                signal_name(g_stop_signal));
        return 128 + g_stop_signal;
    }
    check_stdout();
    if (!stop_reason.empty()) {
        fprintf(stderr, "error: %s (training finished; the final checkpoint is '%s')\n", stop_reason.c_str(), g_newest_ckpt);
        return 1;
    }
    return 0;
}

#ifndef TESTING
int main(int argc, char** argv) {
    LLMC_MAIN_GUARD(return train_main(argc, argv);)
}
#endif
