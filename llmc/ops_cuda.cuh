// ops_cuda.cuh: the op set train_gpt.cu's model calls, bound to the CUDA kernels (llmc/cuda/*.cuh).
// The same signatures as llmc/ops_cpu.h (read its header first); this is the GPU build (nvcc) and
// the SIM build (g++ -DLLMC_SIM: the same kernels on the CPU, llmc/sim/sim.h).
//
// Types: activations and matmul weights are floatX (bf16; fp32 with -DLLMC_FP32), statistics,
// master weights, gradients and optimizer state fp32 (docs/model.md#training-step: mixed precision).
// What the kernels need beyond their arguments lives in one Context, set up once for the largest
// micro-batch (op::setup) and never reallocated in a step: the compute stream, the partial-sum
// scratch of the deterministic reductions, the attention backward's D buffer, the embedding
// backward plan (built on the host from each batch's ids), and the token upload machinery:
//
// Token upload (no idle GPU, no host sync in a step): each micro-batch's ids and targets go from a
// pinned host buffer to a device buffer on a separate copy stream, with the embedding backward's
// plan for those ids. The slots form a ring, one more than the micro-batches of a step. Before the
// upload into slot s, the copy stream waits for `consumed[s]` (recorded on the compute stream after
// the last work that read slot s was enqueued), and the compute stream waits for `uploaded[s]`
// before the forward reads it. The host waits only before it reuses slot s, for s's previous upload
// to have finished: in training that was in an earlier step, which ended with a synchronising read
// (the loss), so the host never waits inside a step; evaluation cycles through the slots and may.
// (The plan's staging is pageable memory, which the driver may copy synchronously with respect to
// the copy stream, i.e. after `consumed[s]`: that too is the previous step's work.)
#pragma once
#include <algorithm>
#include <vector>

#include "llmc/cuda/common.cuh"
#include "llmc/cuda/adamw.cuh"
#include "llmc/cuda/attention.cuh"
#include "llmc/cuda/backout.cuh"
#include "llmc/cuda/crossentropy.cuh"
#include "llmc/cuda/embedding.cuh"
#include "llmc/cuda/global_norm.cuh"
#include "llmc/cuda/lightning.cuh"
#include "llmc/cuda/loss_sum.cuh"
#include "llmc/cuda/matmul.cuh"
#include "llmc/cuda/moe.cuh"
#include "llmc/cuda/muon.cuh"
#include "llmc/cuda/reduce.cuh"
#include "llmc/cuda/relu2.cuh"
#include "llmc/cuda/residual.cuh"
#include "llmc/cuda/rmsnorm.cuh"
#include "llmc/cuda/rope.cuh"
#include "llmc/cuda/smear.cuh"
#include "llmc/cuda/value_embed.cuh"

namespace op {

template <typename Real>
struct Types {
    typedef floatX act, rope;
    typedef float stat, master;
    typedef float norm;  // the gradient norm's sum of squares (summed in double, rounded once)
};
constexpr bool kDevice = true;  // tensors live in device memory: the host reads them through to_host
// q, k, v by one GEMM on [Wq; Wk; Wv] into rows [q | k | v] per token (train_gpt.cu: GPT::qkv_view):
// rope_qknorm, ve_gate and attention take them in place with that token stride (ldq, ldkv below)
constexpr bool kPackedQKV = true;
inline const char* backend_name() {
#if defined(LLMC_SIM)
    return sizeof(floatX) == 4 ? "SIM (CUDA kernels on the CPU, fp32)" : "SIM (CUDA kernels on the CPU, bf16)";
#else
    return sizeof(floatX) == 4 ? "GPU (CUDA, fp32)" : "GPU (CUDA, bf16 mixed precision)";
#endif
}

struct Context {
    bool ready = false;
    cudaStream_t stream = nullptr, copy_stream = nullptr;
    float* scratch = nullptr;      // partial sums of the deterministic reductions (reduce.cuh)
    float* att_scratch = nullptr;  // attention backward: D_i per (b, h, i)
    size_t att_scratch_floats = 0;
    int max_N = 0, V = 0, C = 0;
    // token upload (see the top of the file): per slot a pinned host buffer (ids then targets), the
    // embedding backward's plan, and the events that order the slot's upload and use
    int nslots = 2, slot = 0;
    std::vector<int*> pinned;
    std::vector<EmbeddingBackwardPlan> plans;
    std::vector<cudaEvent_t> uploaded, consumed;
    std::vector<char> slot_used;
    // what alloc() handed out: the peak is the trainer's own measure of its device memory
    std::vector<std::pair<void*, size_t>> live;
    size_t bytes = 0, peak_bytes = 0;
};
inline Context g_ctx;

// ---- memory ----
template <typename T>
T* alloc(size_t n) {
    void* p = nullptr;
    if (n == 0) return nullptr;
    cudaError_t err = cudaMalloc(&p, n * sizeof(T));
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        LLMC_FAIL("out of GPU memory: allocating %.3f GiB with %.3f GiB free of %.3f GiB (%s); use a smaller --device-batch-size or model",
                  n * sizeof(T) / 1073741824.0, free_b / 1073741824.0, total_b / 1073741824.0, cudaGetErrorString(err));
    }
    cudaCheck(cudaMemset(p, 0, n * sizeof(T)));
    g_ctx.live.push_back({p, n * sizeof(T)});
    g_ctx.bytes += n * sizeof(T);
    g_ctx.peak_bytes = std::max(g_ctx.peak_bytes, g_ctx.bytes);
    return (T*)p;
}
inline void release(void* p) {
    if (!p) return;
    for (auto& a : g_ctx.live)
        if (a.first == p) { g_ctx.bytes -= a.second; a = g_ctx.live.back(); g_ctx.live.pop_back(); break; }
    cudaCheck(cudaFree(p));
}
inline double peak_allocated() { return (double)g_ctx.peak_bytes; }
template <typename T> void zero(T* p, size_t n) { if (n) cudaCheck(cudaMemsetAsync(p, 0, n * sizeof(T), g_ctx.stream)); }
template <typename T> void copy(T* dst, const T* src, size_t n) {
    if (n && dst != src) cudaCheck(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyDeviceToDevice, g_ctx.stream));
}
// synchronous: the host copy is complete on return (after the work before it on the stream)
template <typename T> void to_host(T* host, const T* dev, size_t n) {
    if (!n) return;
    cudaCheck(cudaMemcpyAsync(host, dev, n * sizeof(T), cudaMemcpyDeviceToHost, g_ctx.stream));
    cudaCheck(cudaStreamSynchronize(g_ctx.stream));
}
template <typename T> void to_device(T* dev, const T* host, size_t n) {
    if (!n) return;
    cudaCheck(cudaMemcpyAsync(dev, host, n * sizeof(T), cudaMemcpyHostToDevice, g_ctx.stream));
    cudaCheck(cudaStreamSynchronize(g_ctx.stream));  // the host buffer may change after we return
}
inline void synchronize() { cudaCheck(cudaStreamSynchronize(g_ctx.stream)); }
// the matmul copy of the master weights (bf16 when floatX is)
inline void to_weights(floatX* w, const float* master, size_t n) { convert_to_floatX(w, master, n, g_ctx.stream); }
// bytes of device memory in use (all allocations, by anyone: the allocator's own count)
inline double device_memory_used() {
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    return (double)(total_b - free_b);
}

// The card's dense bf16 tensor-core peak in FLOP/s, for MFU; 0 = unknown (not printed). The
// environment variable LLMC_PEAK_TFLOPS overrides it. fp32 builds: 0 (their peak is another).
inline double peak_flops() {
    if (const char* e = getenv("LLMC_PEAK_TFLOPS")) return atof(e) * 1e12;
#if defined(LLMC_SIM)
    return 0.0;
#else
    if (sizeof(floatX) != 2) return 0.0;
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) { (void)cudaGetLastError(); return 0.0; }
    std::string n = p.name;
    if (n.find("H100") != std::string::npos && n.find("PCIe") != std::string::npos) return 756e12;
    if (n.find("H100") != std::string::npos || n.find("H200") != std::string::npos || n.find("H800") != std::string::npos) return 989.4e12;
    if (n.find("A100") != std::string::npos) return 312e12;
    return 0.0;
#endif
}

// A clear error when there is no GPU (before the first allocation would fail obscurely).
inline void setup_device() {
    int ndev = 0;
    cudaError_t err = cudaGetDeviceCount(&ndev);
    if (err != cudaSuccess || ndev == 0) {
        (void)cudaGetLastError();
        LLMC_FAIL("no CUDA GPU found (%s): this is the GPU build of train_gpt; train_gpt_cpu runs on the CPU",
                  err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    }
}

inline void make_token_slots(int n);

// One-time set-up for micro-batches of up to max_N positions (never called inside a step).
inline void setup(int max_N, int V, int C, int H, int Hkv) {
    Context& g = g_ctx;
    if (g.ready && max_N <= g.max_N) return;
    if (!g.ready) {
        setup_device();
        cudaCheck(cudaStreamCreate(&g.stream));
        cudaCheck(cudaStreamCreate(&g.copy_stream));
        matmul_init();
        int K = std::max({LAMBDAS_PARTIALS, BACKOUT_PARTIALS, SMEAR_PARTIALS, ve_gate_partials(Hkv), 2});
        g.scratch = alloc<float>(std::max(reduce_scratch_floats(K), global_norm_scratch_floats()));
    } else {
        synchronize();
        release(g.att_scratch);
    }
    g.max_N = max_N; g.V = V; g.C = C;
    g.att_scratch_floats = attention_backward_scratch_floats(1, H, max_N);
    g.att_scratch = alloc<float>(g.att_scratch_floats);
    g.ready = true;
    make_token_slots(g.nslots);
}

// The token slots (see the top of the file), made again for n slots.
inline void make_token_slots(int n) {
    Context& g = g_ctx;
    cudaCheck(cudaDeviceSynchronize());  // nothing may still use the old ones
    for (size_t s = 0; s < g.pinned.size(); s++) {
        cudaCheck(cudaFreeHost(g.pinned[s]));
        embedding_plan_destroy(&g.plans[s]);
        cudaCheck(cudaEventDestroy(g.uploaded[s]));
        cudaCheck(cudaEventDestroy(g.consumed[s]));
    }
    g.nslots = n;
    g.pinned.assign(n, nullptr);
    g.plans.assign(n, EmbeddingBackwardPlan());
    g.uploaded.assign(n, nullptr);
    g.consumed.assign(n, nullptr);
    g.slot_used.assign(n, 0);
    g.slot = 0;
    for (int s = 0; s < n; s++) {
        cudaCheck(cudaMallocHost(&g.pinned[s], 2 * (size_t)g.max_N * sizeof(int)));
        embedding_plan_create(&g.plans[s], g.max_N, g.V, g.C);
        cudaCheck(cudaEventCreateWithFlags(&g.uploaded[s], cudaEventDisableTiming));
        cudaCheck(cudaEventCreateWithFlags(&g.consumed[s], cudaEventDisableTiming));
    }
}

// At least n token slots (one more than the micro-batches of a step: then no slot is reused inside
// a step, so the host never waits in one). Before training, never inside a step.
inline void reserve_token_slots(int n) {
    if (n > g_ctx.nslots) {
        g_ctx.nslots = n;
        if (g_ctx.ready) make_token_slots(n);
    }
}

// Upload one micro-batch's ids and targets (targets may be null: no loss) into the next slot's
// device buffers idx[slot], tgt[slot] (nslots slots of max_N ints each), and build that slot's
// embedding backward plan from the host ids, both on the copy stream; returns the slot the forward
// must read. The host waits only when a slot is reused before its last upload finished (never
// inside a training step, see reserve_token_slots).
inline int set_tokens(int* const* idx, int* const* tgt, int nslots, const int* h_idx, const int* h_tgt, int N) {
    Context& g = g_ctx;
    LLMC_CHECK(g.ready && N <= g.max_N && nslots == g.nslots, "internal: set_tokens with N=%d, %d slots (set up for %d, %d)", N,
               nslots, g.max_N, g.nslots);
    // everything that read the current slot is enqueued by now: mark it, then move to the next slot
    cudaCheck(cudaEventRecord(g.consumed[g.slot], g.stream));
    g.slot_used[g.slot] = 1;
    int s = (g.slot + 1) % g.nslots;
    if (g.slot_used[s]) cudaCheck(cudaEventSynchronize(g.uploaded[s]));  // the slot's previous upload is done
    int* pin = g.pinned[s];
    memcpy(pin, h_idx, (size_t)N * sizeof(int));
    if (h_tgt) memcpy(pin + N, h_tgt, (size_t)N * sizeof(int));
    else std::fill(pin + N, pin + 2 * N, -1);
    if (g.slot_used[s]) cudaCheck(cudaStreamWaitEvent(g.copy_stream, g.consumed[s], 0));
    cudaCheck(cudaMemcpyAsync(idx[s], pin, (size_t)N * sizeof(int), cudaMemcpyHostToDevice, g.copy_stream));
    cudaCheck(cudaMemcpyAsync(tgt[s], pin + N, (size_t)N * sizeof(int), cudaMemcpyHostToDevice, g.copy_stream));
    embedding_plan_build(&g.plans[s], h_idx, N, g.copy_stream);
    cudaCheck(cudaEventRecord(g.uploaded[s], g.copy_stream));
    cudaCheck(cudaStreamWaitEvent(g.stream, g.uploaded[s], 0));
    g.slot = s;
    return s;
}

// ---- per-op timing (--profile): each op call is bracketed by two CUDA events on the compute
// stream; after a step (which ends with a synchronising read anyway) the pairs are read and summed
// per op name. Off by default: then an OpTimer costs one branch. The event pool is made once.
struct OpProfile {
    bool on = false;
    std::vector<cudaEvent_t> ev;
    std::vector<const char*> names;  // one per recorded call
    int used = 0;
    std::vector<std::pair<std::string, std::pair<double, long>>> total;  // name -> (ms, calls), first-seen order
};
inline OpProfile g_prof;
inline void profile_enable(int max_calls_per_step) {
    g_prof.on = true;
    g_prof.ev.resize(2 * (size_t)max_calls_per_step);
    for (auto& e : g_prof.ev) cudaCheck(cudaEventCreate(&e));
    g_prof.names.reserve(max_calls_per_step);
}
struct OpTimer {
    int k = -1;
    explicit OpTimer(const char* name) {
        if (!g_prof.on || g_prof.used + 2 > (int)g_prof.ev.size()) return;
        k = g_prof.used;
        g_prof.used += 2;
        g_prof.names.push_back(name);
        cudaCheck(cudaEventRecord(g_prof.ev[k], g_ctx.stream));
    }
    ~OpTimer() { if (k >= 0) cudaCheck(cudaEventRecord(g_prof.ev[k + 1], g_ctx.stream)); }
};
// add the recorded calls of this step to the totals (waits for the device)
inline void profile_collect() {
    if (!g_prof.on || g_prof.used == 0) return;
    cudaCheck(cudaStreamSynchronize(g_ctx.stream));
    for (int c = 0; c < g_prof.used / 2; c++) {
        float ms = 0;
        cudaCheck(cudaEventElapsedTime(&ms, g_prof.ev[2 * c], g_prof.ev[2 * c + 1]));
        auto it = std::find_if(g_prof.total.begin(), g_prof.total.end(), [&](const auto& t) { return t.first == g_prof.names[c]; });
        if (it == g_prof.total.end()) { g_prof.total.push_back({g_prof.names[c], {0.0, 0}}); it = g_prof.total.end() - 1; }
        it->second.first += ms;
        it->second.second++;
    }
    g_prof.used = 0;
    g_prof.names.clear();
}
inline void profile_discard() { g_prof.used = 0; g_prof.names.clear(); }

// ---- the ops, in the signatures of llmc/ops_cpu.h ----
inline void embedding_forward(floatX* out, const int* idx, const floatX* table, int N, int C) {
    OpTimer t_("embedding_forward");
    ::embedding_forward(out, idx, table, N, C, g_ctx.stream);
}
inline void embedding_backward(float* dtable, const floatX* dout, const int* idx, int N, int C) {
    OpTimer t_("embedding_backward");
    ::embedding_backward(dtable, dout, idx, N, C, g_ctx.plans[g_ctx.slot], g_ctx.stream);
}
inline void rmsnorm_forward(floatX* out, float* rstd, const floatX* inp, int N, int C) {
    OpTimer t_("rmsnorm_forward");
    ::rmsnorm_forward(out, rstd, inp, N, C, g_ctx.stream);
}
inline void rmsnorm_backward(floatX* dinp, const floatX* dout, const floatX* out, const float* rstd, int N, int C) {
    OpTimer t_("rmsnorm_backward");
    ::rmsnorm_backward(dinp, dout, out, rstd, N, C, g_ctx.stream);
}
inline void smear_forward(floatX* out, const floatX* e, const float* w, const float* lambda, int B, int T, int C) {
    OpTimer t_("smear_forward");
    ::smear_forward(out, e, w, lambda, B, T, C, g_ctx.stream);
}
inline void smear_backward(floatX* de, float* dw, float* dlambda, const floatX* dout, const floatX* e, const float* w, const float* lambda,
                           int B, int T, int C) {
    OpTimer t_("smear_backward");
    ::smear_backward(de, dw, dlambda, dout, e, w, lambda, B, T, C, g_ctx.scratch, g_ctx.stream);
}
inline void lambdas_forward(floatX* out, const floatX* x, const floatX* x0, const float* alpha, const float* beta, long n) {
    OpTimer t_("lambdas_forward");
    ::lambdas_forward(out, x, x0, alpha, beta, n, g_ctx.stream);
}
inline void lambdas_backward(floatX* dx, floatX* dx0, float* dalpha, float* dbeta, const floatX* dout, const floatX* x, const floatX* x0,
                             const float* alpha, const float* beta, long n) {
    OpTimer t_("lambdas_backward");
    ::lambdas_backward(dx, dx0, dalpha, dbeta, dout, x, x0, alpha, beta, n, g_ctx.scratch, g_ctx.stream);
}
inline void matmul_forward(floatX* out, const floatX* inp, const floatX* weight, int N, int IC, int OC) {
    OpTimer t_("matmul_forward");
    ::matmul_forward(out, inp, weight, N, IC, OC, g_ctx.stream);
}
inline void matmul_backward(floatX* dinp, float* dweight, const floatX* dout, const floatX* inp, const floatX* weight, int N, int IC, int OC,
                            bool accumulate_dinp) {
    OpTimer t_("matmul_backward");
    ::matmul_backward(dinp, dweight, dout, inp, weight, N, IC, OC, g_ctx.stream, accumulate_dinp ? MM_ACCUMULATE : MM_OVERWRITE,
                      MM_ACCUMULATE);
}
inline void ve_gate_forward(floatX* v, float* gamma, const floatX* u, const floatX* ve, const float* wg, int N, int C, int Hkv, int D,
                            long ldv = 0) {
    OpTimer t_("ve_gate_forward");
    ::ve_gate_forward(v, gamma, u, ve, wg, N, C, Hkv, D, g_ctx.stream, ldv);
}
inline void ve_gate_backward(floatX* du, floatX* dve, float* dwg, const floatX* dv, const floatX* u, const floatX* ve, const float* gamma,
                             const float* wg, int N, int C, int Hkv, int D, long ldv = 0) {
    OpTimer t_("ve_gate_backward");
    ::ve_gate_backward(du, dve, dwg, dv, u, ve, gamma, wg, N, C, Hkv, D, g_ctx.scratch, g_ctx.stream, ldv);
}
inline void rope_qknorm_forward(floatX* qn, float* rstd_q, floatX* kn, float* rstd_k, floatX* q, floatX* k, const floatX* cos,
                                const floatX* sin, int B, int T, int H, int Hkv, int D, long ldq = 0, long ldk = 0) {
    OpTimer t_("rope_qknorm_forward");
    ::rope_qknorm_forward(qn, rstd_q, kn, rstd_k, q, k, cos, sin, B, T, H, Hkv, D, 0, g_ctx.stream, ldq, ldk);
}
inline void rope_qknorm_backward(floatX* dq, floatX* dk, const floatX* dqn, const floatX* dkn, const floatX* qn, const floatX* kn,
                                 const float* rstd_q, const float* rstd_k, const floatX* cos, const floatX* sin, int B, int T, int H, int Hkv,
                                 int D, long ldq = 0, long ldk = 0) {
    OpTimer t_("rope_qknorm_backward");
    ::rope_qknorm_backward(dq, dk, dqn, dkn, qn, kn, rstd_q, rstd_k, cos, sin, B, T, H, Hkv, D, 0, g_ctx.stream, ldq, ldk);
}
inline void attention_forward(floatX* out, float* lse, const floatX* q, const floatX* k, const floatX* v, int B, int T, int H, int Hkv, int D,
                              int window, long ldq = 0, long ldkv = 0) {
    OpTimer t_("attention_forward");
    ::attention_forward(out, lse, q, k, v, B, T, H, Hkv, D, window, g_ctx.stream, ldq, ldkv);
}
inline void attention_backward(floatX* dq, floatX* dk, floatX* dv, const floatX* dout, const floatX* out, const float* lse, const floatX* q,
                               const floatX* k, const floatX* v, int B, int T, int H, int Hkv, int D, int window, long ldq = 0,
                               long ldkv = 0) {
    OpTimer t_("attention_backward");
    LLMC_CHECK(attention_backward_scratch_floats(B, H, T) <= g_ctx.att_scratch_floats, "internal: attention scratch too small");
    ::attention_backward(dq, dk, dv, dout, out, lse, q, k, v, B, T, H, Hkv, D, window, g_ctx.att_scratch, g_ctx.stream, ldq, ldkv);
}
inline void residual_forward(floatX* out, const floatX* a, const floatX* b, long n) { OpTimer t_("residual_forward"); ::residual_forward(out, a, b, n, g_ctx.stream); }
inline void add_inplace(floatX* a, const floatX* b, long n) { OpTimer t_("add_inplace"); ::residual_forward(a, a, b, n, g_ctx.stream); }
inline void relu2_forward(floatX* out, const floatX* inp, long n) { OpTimer t_("relu2_forward"); ::relu2_forward(out, inp, n, g_ctx.stream); }
inline void relu2_backward(floatX* dinp, const floatX* dout, const floatX* inp, long n) { OpTimer t_("relu2_backward"); ::relu2_backward(dinp, dout, inp, n, g_ctx.stream); }
inline void backout_forward(floatX* out, const floatX* x, const floatX* xmid, const float* lambda, long n) {
    OpTimer t_("backout_forward");
    ::backout_forward(out, x, xmid, lambda, n, g_ctx.stream);
}
inline void backout_backward(floatX* dxmid, float* dlambda, const floatX* dout, const floatX* xmid, const float* lambda, long n) {
    OpTimer t_("backout_backward");
    ::backout_backward(dxmid, dlambda, dout, xmid, lambda, n, g_ctx.scratch, g_ctx.stream);
}
inline void crossentropy(float* losses, floatX* dlogits, const floatX* logits, const int* targets, int N, int V, int Vp, float dloss_scale) {
    OpTimer t_("crossentropy");
    ::softcap_crossentropy_forward_backward(losses, dlogits, logits, targets, N, V, Vp, 15.0f, dloss_scale, g_ctx.stream);
}
inline void loss_sum(double* out, const float* losses, int N) { OpTimer t_("loss_sum"); ::loss_sum(out, losses, N, g_ctx.stream); }
// *out (device fp32) = sum of g^2 (double inside, rounded once)
inline void sum_squares(float* out, const float* g, size_t n) { OpTimer t_("sum_squares"); global_norm_squared(out, g, n, g_ctx.scratch, g_ctx.stream); }

// ---- the hybrid layers (train_moe; docs/model.md#hybrid): llmc/cuda/lightning.cuh and
// llmc/cuda/moe.cuh, with their own saved and workspace sizes (the model sizes its buffers by these)
// their shape limits, checked when the model sizes its activations (before a step runs or a file is written)
inline void check_hybrid_shapes(const MoeConfig* moe, int n_lightning, int B, int T, int C, int H, int D, int blk) {
    if (moe) llmc::moe_check_cuda(*moe, B, T);
    if (n_lightning) {
        ::lightning_check_args_cuda_("lightning attention", B, T, C, H, D, blk);
        LLMC_CHECK((H * D) % 8 == 0, "lightning attention (CUDA): n_head x head_dim = %d must be a multiple of 8 (16-byte aligned GEMM operands)",
                   H * D);
    }
}
inline LightningSizes lightning_sizes(int B, int T, int H, int D) { return ::lightning_sizes_cuda(B, T, H, D); }
inline MoeSavedSize moe_saved_numel(const MoeConfig& c, int B, int T) { return ::moe_saved_numel_cuda(c, B, T); }
inline size_t moe_workspace_numel(const MoeConfig& c, int B, int T) { return ::moe_workspace_numel_cuda(c, B, T); }
inline void lightning_forward(floatX* out, floatX* p, floatX* o, float* r, floatX* a, const floatX* u, const floatX* wq, const floatX* wk,
                              const floatX* wv, const floatX* wgate, const floatX* wo, const float* w, const float* slopes, int B, int T,
                              int C, int H, int D, int blk, floatX* work) {
    OpTimer t_("lightning_forward");
    ::lightning_forward(out, p, o, r, a, u, wq, wk, wv, wgate, wo, w, slopes, B, T, C, H, D, blk, work, g_ctx.stream);
}
inline void lightning_backward(floatX* du, float* dwq, float* dwk, float* dwv, float* dwgate, float* dwo, float* dw, const floatX* dout,
                               const floatX* u, const floatX* p, const floatX* o, const float* r, const floatX* a, const floatX* wq,
                               const floatX* wk, const floatX* wv, const floatX* wgate, const floatX* wo, const float* w, const float* slopes,
                               int B, int T, int C, int H, int D, int blk, floatX* work) {
    OpTimer t_("lightning_backward");
    ::lightning_backward(du, dwq, dwk, dwv, dwgate, dwo, dw, dout, u, p, o, r, a, wq, wk, wv, wgate, wo, w, slopes, B, T, C, H, D, blk, work,
                         g_ctx.stream);
}
inline void moe_forward(floatX* out, floatX* saved, int* saved_int, floatX* work, const floatX* u, const float* router, const float* bias,
                        const floatX* w1, const floatX* w3, const floatX* w2, const floatX* s1, const floatX* s3, const floatX* s2,
                        const MoeConfig& c, int B, int T, int64_t* load, double* aux, const int* idx_override) {
    OpTimer t_("moe_forward");
    ::moe_forward(out, saved, saved_int, work, u, router, bias, w1, w3, w2, s1, s3, s2, c, B, T, load, aux, idx_override, g_ctx.stream);
}
inline void moe_backward(floatX* du, float* drouter, float* dw1, float* dw3, float* dw2, float* ds1, float* ds3, float* ds2, floatX* work,
                         const floatX* dout, const floatX* u, const float* router, const float* bias, const floatX* w1, const floatX* w3,
                         const floatX* w2, const floatX* s1, const floatX* s3, const floatX* s2, floatX* saved, int* saved_int,
                         const MoeConfig& c, int B, int T, float daux) {
    OpTimer t_("moe_backward");
    ::moe_backward(du, drouter, dw1, dw3, dw2, ds1, ds3, ds2, work, dout, u, router, bias, w1, w3, w2, s1, s3, s2, saved, saved_int, c, B, T,
                   daux, g_ctx.stream);
}
inline void moe_bias_update(float* b, int64_t* load, int E, double gamma) {
    OpTimer t_("moe_bias_update");
    ::moe_bias_update(b, load, E, gamma, g_ctx.stream);
}

}  // namespace op
