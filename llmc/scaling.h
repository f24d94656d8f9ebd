// scaling.h: everything `--depth N` implies (docs/model.md#config, docs/model.md#parameters,
// docs/model.md#flops, docs/model.md#param-groups, docs/model.md#scaling).
//
// Two steps, both plain functions of plain structs:
//   ModelShape derive_model_shape(const ModelOptions&)
//       width, heads, padded vocab, per-layer windows, value-embedding layers, parameter counts and
//       FLOPs per token, plus the validity checks of docs/model.md#depth (LLMC_FAIL with a clear message).
//   Recipe derive_recipe(const ModelOptions&, const RecipeOptions&)
//       the training horizon, batch size (Power Lines rule), learning rates of every optimizer group,
//       scaled weight decay and gradient accumulation, following nanochat's scripts/base_train.py.
// All arithmetic that nanochat does in Python floats is done here in double; Python's round() is
// round-half-to-even (round_half_even from schedule.h) and int() truncates.
//
// The d12 reference (D_ref = ratio * P(d12)) is built from the same options with depth 12, as
// nanochat's build_model_meta(12) does, except n_kv_head, which is reset to the reference's own
// n_head (nanochat never uses GQA; keeping the user's n_kv_head could make the d12 reference invalid,
// e.g. 4 kv heads do not divide 6 heads).
#pragma once
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>
#include "llmc/schedule.h"
#include "llmc/utils.h"

namespace llmc {

// ---------------------------------------------------------------------------------------------
// model shape

struct ModelOptions {
    int depth = 12;                  // --depth: n_layer
    int aspect_ratio = 64;           // --aspect-ratio: n_embd = ceil(depth*aspect/head_dim)*head_dim
    int head_dim = 128;              // --head-dim: D (must be even: RoPE)
    int n_kv_head = -1;              // --n-kv-head: -1 = n_head (no GQA)
    int vocab_size = 32768;          // V, the tokenizer's n_vocab (before padding)
    int sequence_len = 2048;         // --max-seq-len: T
    std::string window_pattern = "SSSL"; // letters S/L, case-insensitive, tiled over layers
    int short_window = -1;           // --short-window: width of S layers; -1 = 128*ceil(T/512)
    // feature flags (docs/model.md#features), all on = nanochat, all off = --arch core
    bool smear = true;
    bool value_embeds = true;
    bool lambdas = true;
    bool backout = true;
    bool windows = true;
    void set_arch_core() { smear = value_embeds = lambdas = backout = windows = false; }
    void set_arch_nanochat() { smear = value_embeds = lambdas = backout = windows = true; }
    // hybrid layout and mixture of experts (docs/model.md#hybrid, docs/moe.md, docs/lightning.md).
    // The defaults are the dense model: softmax attention and the dense MLP in every layer.
    int attn_period = 1;         // --attn-period P: layer l is softmax attention iff (l+1) % P == 0,
                                 // else Lightning Attention; 1 = all softmax, 0 = no softmax layer
    int moe_dense_layers = 0;    // --moe-dense-layers: layers l < this keep the dense MLP
    int n_experts = 0;           // --moe-experts E: routed experts per MoE layer; 0 = no MoE layer
    int moe_topk = 4;            // --moe-topk K: experts chosen per token
    int moe_shared = 1;          // --moe-shared N_s: shared experts (one MLP of width N_s*F)
    int moe_hidden = -1;         // --moe-hidden F: an expert's hidden width; -1 = the rule in moe_expert_hidden
    bool moe_swiglu = false;     // --moe-act swiglu (default relu2)
    double moe_rho = 2.5;        // --moe-rho: routed scaling factor
    double moe_aux_alpha = 1e-4; // --moe-aux-alpha: sequence-wise auxiliary loss; 0 = off
    double moe_bias_rate = 1e-3; // --moe-bias-rate gamma of the balancing bias update
    int moe_groups = 1;          // --moe-groups G: group-limited routing (1 = plain top-K)
    int moe_topk_groups = 1;     // --moe-topk-groups M
    int la_block = 64;           // --la-block: block size of the blocked lightning core
};

// element counts per parameter family (docs/model.md#parameters)
struct ParamCounts {
    int64_t wte = 0;                  // Vp*C
    int64_t value_embeds = 0;         // (#VE layers)*Vp*Hkv*D
    int64_t lm_head = 0;              // Vp*C
    int64_t transformer_matrices = 0; // every transformer.h.* matrix element (c_q,c_k,c_v,c_proj,c_fc,mlp c_proj,ve_gate;
                                      // lightning and MoE matrices, all experts)
    int64_t active_matrices = 0;      // the transformer.h.* matrix elements one token touches: = transformer_matrices
                                      // for a dense model; an MoE layer counts its router, shared expert and K experts
    int64_t vectors = 0;              // lightning norm weights and the MoE balancing biases (buffers)
    int64_t scalars = 0;              // resid/x0 lambdas, smear gate+lambda, backout lambda (2L+26 all on)
    int64_t total = 0;                // sum of the above
    int64_t scaling = 0;              // P = active_matrices + lm_head (docs/model.md#scaling)
};

struct ModelShape {
    // nanochat's GPTConfig fields (checkpoint meta `model_config`)
    int n_layer = 0, n_embd = 0, n_head = 0, n_kv_head = 0, head_dim = 0;
    int vocab_size = 0;          // V
    int padded_vocab_size = 0;   // Vp = ceil(V/64)*64: rows of wte, value_embeds, lm_head
    int sequence_len = 0;        // T
    std::string window_pattern;  // effective pattern, upper case; "L" when windows are off
    // feature flags
    bool smear = true, value_embeds = true, lambdas = true, backout = true, windows = true;
    // per layer
    int short_window = 0;        // S width actually used (128*ceil(T/512) or --short-window)
    std::vector<int> window;     // window w of layer i, T for L layers (docs/model.md#windows:
                                 // query i sees key j iff j <= i and i-j <= w)
    std::vector<bool> has_ve;    // layer i has value_embeds.{i} and attn.ve_gate: i % 2 == (L-1) % 2
    int n_ve_layers = 0;         // 0 when value embeddings are off
    int backout_layer = 0;       // floor(L/2): x_mid is this block's output (docs/model.md#backout)
    // hybrid layout and MoE (docs/model.md#hybrid); the ModelOptions of the same names
    int attn_period = 1, moe_dense_layers = 0, n_experts = 0, moe_topk = 0, moe_shared = 0;
    int moe_hidden = 0;          // F actually used (0 without MoE)
    bool moe_swiglu = false;
    double moe_rho = 2.5, moe_aux_alpha = 0, moe_bias_rate = 0;
    int moe_groups = 1, moe_topk_groups = 1, la_block = 64;
    std::vector<bool> is_lightning;  // layer i's mixer: Lightning Attention (else softmax attention)
    std::vector<bool> is_moe;        // layer i's FFN: MoE (else the dense MLP)
    int n_softmax = 0, n_lightning = 0, n_moe = 0, n_dense_mlp = 0;
    // anything but the dense model (its checkpoints record the hybrid fields, windows are off)
    bool hybrid() const { return n_lightning > 0 || n_moe > 0; }
    // sizes
    ParamCounts params;
    int64_t n_matmul = 0;              // docs/model.md#flops: block matrices + lm_head (padded) + smear_gate
    int64_t attn_flops_per_token = 0;  // sum over softmax layers of 12*H*D*min(w_l, T), plus
                                       // 12*H*D*(64+D) per lightning layer (docs/model.md#flops)
    int64_t flops_per_token = 0;       // 6*n_matmul + attention term
};

// S window: quarter context rounded up to a multiple of 128 (2048 -> 512, <= 512 -> 128)
inline int default_short_window(int T) { return 128 * ((T + 511) / 512); }

// An expert's hidden width (docs/model.md#hybrid): the active FFN width (K + N_s)*F matches the
// dense MLP's 4C, in multiples of 128 (tensor-core tiles): F = 128*round(4C / (128 (K+N_s)));
// SwiGLU, with three matrices instead of two, 64*round(2F / (3*64)) for the same FLOPs. A width
// below one tile (toy models only) is not rounded to tiles: round(4C/(K+N_s)), 2F/3.
inline int moe_expert_hidden(int C, int K, int Ns, bool swiglu) {
    const double w = 4.0 * C / (K + Ns);
    long F = 128 * round_half_even(w / 128.0);
    if (F < 128) F = std::max(1L, round_half_even(w));
    if (swiglu) {
        long Fs = 64 * round_half_even(2.0 * F / (3 * 64.0));
        F = Fs >= 64 ? Fs : std::max(1L, round_half_even(2.0 * F / 3.0));
    }
    return (int)F;
}

inline ModelShape derive_model_shape(const ModelOptions& o) {
    LLMC_CHECK(o.depth >= 1, "--depth must be >= 1 (got %d)", o.depth);
    LLMC_CHECK(o.aspect_ratio >= 1, "--aspect-ratio must be >= 1 (got %d)", o.aspect_ratio);
    LLMC_CHECK(o.head_dim >= 1, "--head-dim must be >= 1 (got %d)", o.head_dim);
    LLMC_CHECK(o.vocab_size >= 1, "vocab_size must be >= 1 (got %d)", o.vocab_size);
    LLMC_CHECK(o.sequence_len >= 1, "--max-seq-len must be >= 1 (got %d)", o.sequence_len);
    LLMC_CHECK(o.short_window == -1 || o.short_window >= 1,
               "--short-window must be >= 1, or -1 for the default 128*ceil(T/512) (got %d)", o.short_window);
    ModelShape s;
    const int L = o.depth;
    s.n_layer = L;
    // n_embd rounded UP to a multiple of head_dim (integer math, as build_model_meta)
    const int64_t base = (int64_t)o.depth * o.aspect_ratio;
    const int64_t C64 = (base + o.head_dim - 1) / o.head_dim * o.head_dim;
    LLMC_CHECK(C64 <= (1 << 20), "n_embd = %lld is too large (depth %d, aspect ratio %d)", (long long)C64, o.depth,
               o.aspect_ratio);
    s.n_embd = (int)C64;
    s.head_dim = o.head_dim;
    s.n_head = s.n_embd / o.head_dim;
    s.n_kv_head = o.n_kv_head == -1 ? s.n_head : o.n_kv_head;
    s.vocab_size = o.vocab_size;
    s.padded_vocab_size = (int)(((int64_t)o.vocab_size + 63) / 64 * 64);
    s.sequence_len = o.sequence_len;
    s.smear = o.smear; s.value_embeds = o.value_embeds; s.lambdas = o.lambdas;
    s.backout = o.backout; s.windows = o.windows;
    const int C = s.n_embd, H = s.n_head, Hkv = s.n_kv_head, D = s.head_dim, T = s.sequence_len;
    const int64_t Vp = s.padded_vocab_size;

    // validity checks (docs/model.md#depth)
    LLMC_CHECK(H >= 1 && C % H == 0, "n_embd %d is not divisible by n_head %d", C, H);
    LLMC_CHECK(Hkv >= 1 && Hkv <= H && H % Hkv == 0,
               "n_kv_head %d must divide n_head %d (n_head = n_embd/head_dim = %d/%d)", Hkv, H, C, D);
    LLMC_CHECK(D % 2 == 0, "head_dim %d must be even (rotary embeddings rotate pairs of channels)", D);
    LLMC_CHECK(!o.smear || C >= 24, "n_embd %d is too small for smear (its gate reads 24 channels); use --smear 0", C);
    LLMC_CHECK(!o.value_embeds || C >= 12,
               "n_embd %d is too small for value embeddings (their gate reads 12 channels); use --value-embeds 0", C);

    // hybrid layout (docs/model.md#hybrid)
    LLMC_CHECK(o.attn_period >= 0, "--attn-period must be >= 0 (0 = no softmax layer, 1 = all softmax), got %d", o.attn_period);
    LLMC_CHECK(o.n_experts >= 0, "--moe-experts must be >= 0 (0 = no MoE layer), got %d", o.n_experts);
    LLMC_CHECK(o.la_block >= 1, "--la-block must be >= 1, got %d", o.la_block);
    s.attn_period = o.attn_period;
    s.la_block = o.la_block;
    s.is_lightning.resize(L);
    s.is_moe.resize(L);
    if (o.n_experts > 0) {
        LLMC_CHECK(o.moe_dense_layers >= 0, "--moe-dense-layers must be >= 0, got %d", o.moe_dense_layers);
        LLMC_CHECK(o.moe_topk >= 1 && o.moe_topk <= o.n_experts && o.moe_topk <= 64,
                   "--moe-topk %d must be in [1, min(--moe-experts %d, 64)]", o.moe_topk, o.n_experts);
        LLMC_CHECK(o.moe_shared >= 0, "--moe-shared must be >= 0, got %d", o.moe_shared);
        LLMC_CHECK(o.moe_hidden == -1 || o.moe_hidden >= 1, "--moe-hidden must be >= 1, or -1 for the rule (got %d)", o.moe_hidden);
        LLMC_CHECK(std::isfinite(o.moe_rho) && o.moe_rho > 0, "--moe-rho must be > 0 (got %g)", o.moe_rho);
        LLMC_CHECK(std::isfinite(o.moe_aux_alpha) && o.moe_aux_alpha >= 0, "--moe-aux-alpha must be >= 0 (got %g)", o.moe_aux_alpha);
        LLMC_CHECK(std::isfinite(o.moe_bias_rate) && o.moe_bias_rate >= 0, "--moe-bias-rate must be >= 0 (got %g)", o.moe_bias_rate);
        const int G = o.moe_groups, M = o.moe_topk_groups;
        LLMC_CHECK(G >= 1 && G <= 64 && o.n_experts % G == 0, "--moe-groups %d must divide --moe-experts %d (at most 64 groups)", G,
                   o.n_experts);
        LLMC_CHECK(G == 1 || (M >= 1 && M <= G && o.moe_topk % M == 0 && o.moe_topk / M <= o.n_experts / G),
                   "--moe-topk-groups %d must be in [1, --moe-groups %d] and divide --moe-topk %d, with K/M <= E/G", M, G, o.moe_topk);
        s.moe_dense_layers = o.moe_dense_layers;
        s.n_experts = o.n_experts;
        s.moe_topk = o.moe_topk;
        s.moe_shared = o.moe_shared;
        s.moe_swiglu = o.moe_swiglu;
        s.moe_hidden = o.moe_hidden == -1 ? moe_expert_hidden(C, o.moe_topk, o.moe_shared, o.moe_swiglu) : o.moe_hidden;
        s.moe_rho = o.moe_rho;
        s.moe_aux_alpha = o.moe_aux_alpha;
        s.moe_bias_rate = o.moe_bias_rate;
        s.moe_groups = G;
        s.moe_topk_groups = G == 1 ? 1 : M;
    }
    for (int i = 0; i < L; i++) {
        s.is_lightning[i] = o.attn_period == 0 || (i + 1) % o.attn_period != 0;
        s.is_moe[i] = o.n_experts > 0 && i >= o.moe_dense_layers;
        s.n_lightning += s.is_lightning[i];
        s.n_moe += s.is_moe[i];
    }
    s.n_softmax = L - s.n_lightning;
    s.n_dense_mlp = L - s.n_moe;
    // a hybrid model's few softmax layers are its only exact long-range lookup: full context
    LLMC_CHECK(!(s.hybrid() && o.windows), "sliding windows are for the dense model: the softmax layers of a hybrid or MoE model "
               "use full causal context (use --windows 0)");

    // windows (docs/model.md#windows)
    s.short_window = o.short_window == -1 ? default_short_window(T) : o.short_window;
    if (o.windows) {
        LLMC_CHECK(!o.window_pattern.empty(), "--window-pattern is empty (use letters S and L, e.g. SSSL)");
        for (char ch : o.window_pattern) s.window_pattern += (char)std::toupper((unsigned char)ch);
        for (char ch : s.window_pattern)
            LLMC_CHECK(ch == 'S' || ch == 'L', "--window-pattern '%s' may only contain the letters S and L",
                       o.window_pattern.c_str());
    } else {
        s.window_pattern = "L";
    }
    s.window.resize(L);
    s.has_ve.resize(L);
    for (int i = 0; i < L; i++) {
        const char ch = s.window_pattern[i % s.window_pattern.size()];
        const bool is_long = (i == L - 1) || ch == 'L';   // last layer always L
        s.window[i] = is_long ? T : s.short_window;
        // value embeddings by the parity rule, on softmax layers only (lightning has no v to gate)
        s.has_ve[i] = o.value_embeds && !s.is_lightning[i] && (i % 2 == (L - 1) % 2);
        s.n_ve_layers += s.has_ve[i] ? 1 : 0;
    }
    s.backout_layer = L / 2;

    // parameter counts (docs/model.md#parameters, docs/model.md#hybrid)
    const int64_t CC = C;
    const int64_t softmax_mixer = (int64_t)H * D * CC        // c_q
                                + 2 * (int64_t)Hkv * D * CC  // c_k, c_v
                                + CC * H * D;                // attn c_proj
    const int64_t lightning_mixer = 5 * (int64_t)H * D * CC;  // c_q, c_k, c_v, c_gate (N x C), c_proj (C x N); N = H*D
    const int64_t dense_mlp = 8 * CC * CC;                    // c_fc (4C x C), mlp c_proj (C x 4C)
    const int64_t m = s.moe_swiglu ? 3 : 2, F = s.moe_hidden, E = s.n_experts;
    const int64_t moe_total = E * CC + E * m * F * CC + m * s.moe_shared * F * CC;     // router, experts, shared
    const int64_t moe_active = E * CC + s.moe_topk * m * F * CC + m * s.moe_shared * F * CC;
    const int64_t ve_gate = (int64_t)Hkv * 12;
    ParamCounts& p = s.params;
    p.wte = Vp * CC;
    p.lm_head = Vp * CC;
    p.value_embeds = (int64_t)s.n_ve_layers * Vp * Hkv * D;
    const int64_t mixers = s.n_softmax * softmax_mixer + s.n_lightning * lightning_mixer + (int64_t)s.n_ve_layers * ve_gate;
    p.transformer_matrices = mixers + s.n_dense_mlp * dense_mlp + s.n_moe * moe_total;
    p.active_matrices = mixers + s.n_dense_mlp * dense_mlp + s.n_moe * moe_active;
    p.vectors = (int64_t)s.n_lightning * H * D + (int64_t)s.n_moe * E;
    p.scalars = (o.lambdas ? 2 * (int64_t)L : 0) + (o.smear ? 24 + 1 : 0) + (o.backout ? 1 : 0);
    p.total = p.wte + p.lm_head + p.value_embeds + p.transformer_matrices + p.vectors + p.scalars;
    p.scaling = p.active_matrices + p.lm_head;

    // FLOPs per token (docs/model.md#flops): every matrix that multiplies the token stream (an MoE
    // layer's active ones), plus the attention cores: softmax over its window, lightning's blocked
    // core counted at a fixed block of 64 whatever --la-block is (docs/lightning.md#cost)
    s.n_matmul = p.active_matrices + p.lm_head + (o.smear ? 24 : 0);
    s.attn_flops_per_token = 0;
    for (int i = 0; i < L; i++)
        s.attn_flops_per_token += s.is_lightning[i] ? 12 * (int64_t)H * D * (64 + D) : 12 * (int64_t)H * D * std::min(s.window[i], T);
    s.flops_per_token = 6 * s.n_matmul + s.attn_flops_per_token;
    return s;
}

// ---------------------------------------------------------------------------------------------
// training recipe

struct RecipeOptions {
    double target_param_data_ratio = 12.0; // --target-param-data-ratio
    int num_iterations = -1;               // --num-iterations (> 0 wins over everything)
    double target_flops = -1.0;            // --target-flops (> 0 wins over the ratio)
    int64_t total_batch_size = -1;         // --total-batch-size in tokens; -1 = Power Lines rule
    int device_batch_size = 32;            // --device-batch-size (rows per micro-step per rank)
    int world_size = 1;                    // number of ranks
    // base learning rates and weight decay (CLI defaults), scaled below
    double unembedding_lr = 0.008;
    double embedding_lr = 0.3;
    double scalar_lr = 0.5;
    double matrix_lr = 0.02;
    double weight_decay = 0.28;
    double router_lr = 1e-3;               // --router-lr (MoE router, AdamW)
    double la_norm_lr = 0.005;             // --la-norm-lr (lightning norm weights, AdamW)
    // schedule knobs (schedule.h)
    int warmup_steps = 40;
    double warmdown_ratio = 0.65;
    double final_lr_frac = 0.05;
};

// the AdamW groups of docs/model.md#param-groups, in its order (router and la_norm: hybrid models only)
enum AdamGroupId { ADAM_LM_HEAD = 0, ADAM_WTE, ADAM_VALUE_EMBEDS, ADAM_RESID, ADAM_X0, ADAM_SMEAR, ADAM_ROUTER, ADAM_LA_NORM, ADAM_NUM_GROUPS };

struct AdamGroup {
    const char* name = "";
    bool present = false;   // false when the group's parameters are switched off (feature flags)
    double lr = 0;          // initial_lr (multiply by lr_multiplier(step))
    double beta1 = 0, beta2 = 0, eps = 0;
    double weight_decay = 0; // applied as lr*wd, so it follows the lr schedule
};

struct Recipe {
    ModelShape shape;
    // horizon
    int64_t scaling_params = 0;   // P of this model
    int64_t ref_scaling_params = 0; // P of the d12 reference
    int64_t target_tokens = 0;    // int(ratio * P); always from the ratio (used by B and lambda)
    double d_ref = 0;             // ratio * P(d12)
    int64_t b_ref = 524288;       // 2^19 tokens
    bool batch_from_rule = false; // true: B from the Power Lines rule; false: --total-batch-size
    double batch_log2 = 0;        // log2 of the predicted batch before rounding (0 when user-given)
    int64_t total_batch_size = 0; // B, tokens per optimizer step
    int num_iterations = 0;       // N
    std::string horizon;          // "num_iterations", "target_flops" or "ratio": what set N
    // learning rates
    double bls = 0;               // sqrt(B / B_ref)
    double dms = 0;               // (C/768)^-0.5
    AdamGroup adam[ADAM_NUM_GROUPS];
    double muon_lr = 0;           // matrix_lr * bls, before the per-matrix shape factor (muon.h applies it)
    float muon_beta2 = 0.9f;
    int muon_ns_steps = 5;
    double weight_decay_scaled = 0; // lambda_scaled: Muon wd at step 0 (cosine schedule)
    // batching
    int device_batch_size = 0, world_size = 0;
    int64_t tokens_per_fwdbwd = 0; // device_batch_size * T * world_size
    int grad_accum_steps = 0;      // A = B / tokens_per_fwdbwd (exact)
    // totals
    int64_t total_tokens = 0;      // N * B
    double total_flops = 0;        // flops_per_token * N * B
    // schedule knobs, copied for the trainer
    int warmup_steps = 40;
    double warmdown_ratio = 0.65, final_lr_frac = 0.05;
};

inline Recipe derive_recipe(const ModelOptions& mo, const RecipeOptions& ro) {
    Recipe r;
    r.shape = derive_model_shape(mo);
    const ModelShape& s = r.shape;
    LLMC_CHECK(s.sequence_len >= 2, "--max-seq-len must be >= 2 for training (got %d)", s.sequence_len);
    LLMC_CHECK(ro.target_param_data_ratio > 0,
               "--target-param-data-ratio must be > 0 (got %g): it sets the batch size and weight decay scale",
               ro.target_param_data_ratio);
    LLMC_CHECK(ro.device_batch_size >= 1, "--device-batch-size must be >= 1 (got %d)", ro.device_batch_size);
    LLMC_CHECK(ro.world_size >= 1, "world size must be >= 1 (got %d)", ro.world_size);
    LLMC_CHECK(ro.total_batch_size == -1 || ro.total_batch_size >= 1,
               "--total-batch-size must be >= 1, or -1 for the automatic batch size (got %lld)",
               (long long)ro.total_batch_size);
    LLMC_CHECK(ro.num_iterations == -1 || ro.num_iterations >= 1,
               "--num-iterations must be >= 1, or -1 to derive it (got %d)", ro.num_iterations);

    // docs/model.md#scaling steps 1-3: scaling parameters, target tokens, the d12 reference
    ModelOptions ref = mo;
    ref.depth = 12;
    ref.n_kv_head = -1;
    const ModelShape rs = derive_model_shape(ref);
    r.scaling_params = s.params.scaling;
    r.ref_scaling_params = rs.params.scaling;
    r.target_tokens = (int64_t)(ro.target_param_data_ratio * (double)r.scaling_params); // int(): truncation
    r.d_ref = ro.target_param_data_ratio * (double)r.ref_scaling_params;
    const double B_ref = (double)r.b_ref;

    // docs/model.md#scaling step 4: batch size
    if (ro.total_batch_size == -1) {
        r.batch_from_rule = true;
        r.batch_log2 = std::log2(B_ref * std::pow((double)r.target_tokens / r.d_ref, 0.383));
        const long e = round_half_even(r.batch_log2);
        LLMC_CHECK(e >= 0 && e <= 40, "automatic batch size 2^%ld is out of range", e);
        r.total_batch_size = (int64_t)1 << e;
    } else {
        r.total_batch_size = ro.total_batch_size;
    }
    const int64_t B = r.total_batch_size;

    // docs/model.md#scaling steps 5-6: lr scales, learning rates, weight decay
    r.bls = std::sqrt((double)B / B_ref);
    r.dms = std::pow((double)s.n_embd / 768.0, -0.5);
    r.weight_decay_scaled = ro.weight_decay * std::sqrt((double)B / B_ref) * (r.d_ref / (double)r.target_tokens);
    auto set = [&](AdamGroupId id, const char* name, bool present, double lr, double b1, double b2, double wd) {
        AdamGroup& g = r.adam[id];
        g.name = name; g.present = present; g.lr = lr; g.beta1 = b1; g.beta2 = b2; g.eps = 1e-10; g.weight_decay = wd;
    };
    set(ADAM_LM_HEAD, "lm_head", true, ro.unembedding_lr * r.bls * r.dms, 0.8, 0.96, 0.01);
    set(ADAM_WTE, "wte", true, ro.embedding_lr * r.bls * r.dms, 0.8, 0.995, 0.001);
    set(ADAM_VALUE_EMBEDS, "value_embeds", s.n_ve_layers > 0, 0.5 * ro.embedding_lr * r.bls * r.dms, 0.8, 0.995, 0.01);
    set(ADAM_RESID, "resid", s.lambdas, 0.01 * ro.scalar_lr * r.bls, 0.8, 0.95, 0.05);
    set(ADAM_X0, "x0", s.lambdas, ro.scalar_lr * r.bls, 0.96, 0.95, 0.0);
    set(ADAM_SMEAR, "smear", s.smear || s.backout, 0.2, 0.8, 0.95, 0.0);
    set(ADAM_ROUTER, "router", s.n_moe > 0, ro.router_lr * r.bls * r.dms, 0.8, 0.95, 0.0);
    set(ADAM_LA_NORM, "la_norm", s.n_lightning > 0, ro.la_norm_lr * r.bls, 0.8, 0.95, 0.0);
    r.muon_lr = ro.matrix_lr * r.bls;

    // docs/model.md#scaling step 7: horizon, precedence num_iterations > target_flops > ratio
    if (ro.num_iterations > 0) {
        r.num_iterations = ro.num_iterations;
        r.horizon = "num_iterations";
    } else if (ro.target_flops > 0) {
        const double steps = ro.target_flops / ((double)s.flops_per_token * (double)B);
        const long N = steps < 4e9 ? round_half_even(steps) : 4000000000L; // (guard the conversion)
        LLMC_CHECK(N >= 1 && N <= 2000000000L,
                   "--target-flops %g gives %ld steps at %lld FLOPs/token and batch %lld tokens (need >= 1)",
                   ro.target_flops, N, (long long)s.flops_per_token, (long long)B);
        r.num_iterations = (int)N;
        r.horizon = "target_flops";
    } else {
        const int64_t N = r.target_tokens / B;
        LLMC_CHECK(N >= 1 && N <= 2000000000LL,
                   "target of %lld tokens (ratio %g x %lld params) gives %lld steps of batch %lld tokens (need >= 1)",
                   (long long)r.target_tokens, ro.target_param_data_ratio, (long long)r.scaling_params,
                   (long long)N, (long long)B);
        r.num_iterations = (int)N;
        r.horizon = "ratio";
    }

    // docs/model.md#scaling step 8: gradient accumulation must be exact
    r.device_batch_size = ro.device_batch_size;
    r.world_size = ro.world_size;
    r.tokens_per_fwdbwd = (int64_t)ro.device_batch_size * s.sequence_len * ro.world_size;
    LLMC_CHECK(B % r.tokens_per_fwdbwd == 0 && B / r.tokens_per_fwdbwd >= 1,
               "total batch size %lld tokens is not a positive multiple of device_batch_size %d x seq_len %d x "
               "world_size %d = %lld tokens per micro-step; change --total-batch-size or --device-batch-size",
               (long long)B, ro.device_batch_size, s.sequence_len, ro.world_size, (long long)r.tokens_per_fwdbwd);
    r.grad_accum_steps = (int)(B / r.tokens_per_fwdbwd);

    r.total_tokens = (int64_t)r.num_iterations * B;
    r.total_flops = (double)s.flops_per_token * (double)r.total_tokens;
    r.warmup_steps = ro.warmup_steps;
    r.warmdown_ratio = ro.warmdown_ratio;
    r.final_lr_frac = ro.final_lr_frac;
    return r;
}

} // namespace llmc
