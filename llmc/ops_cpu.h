// ops_cpu.h: the op set train_gpt.cu's model calls, bound to the CPU reference ops (llmc/cpu/*.h).
//
// The model (forward, backward) is written once, as calls op::name(...). This header and
// llmc/ops_cuda.cuh each define namespace `op` with the same signatures; the build includes one:
//   g++ (train_gpt_cpu, the tests)  -> this file: fp32 (double in the gradient tests), host memory
//   nvcc / g++ -DLLMC_SIM           -> ops_cuda.cuh: the CUDA kernels (bf16, or fp32 with LLMC_FP32)
// Element types come from op::Types<Real>: `act` activations and matmul weights, `stat` per-row
// statistics (rstd, lse, gates, losses), `master` weights/gradients/optimizer state, `rope` the
// RoPE tables. Here every one is Real (the tables fp32), so the CPU build is exactly the fp32 model.
// Where an op below only forwards to the llmc/cpu op, the CPU op is the definition; the adapters
// exist where the GPU kernels have a different shape (fused RoPE + QK-norm, scalars passed by
// pointer because on a GPU they live in device memory, an overwrite flag for matmul's dinp).
#pragma once
#include <cstdlib>
#include <algorithm>
#include <string>
#include <vector>
#include <cstring>
#include <new>

#include "llmc/cpu/attention.h"
#include "llmc/cpu/backout.h"
#include "llmc/cpu/crossentropy.h"
#include "llmc/cpu/embedding.h"
#include "llmc/cpu/lightning.h"
#include "llmc/cpu/matmul.h"
#include "llmc/cpu/moe.h"
#include "llmc/cpu/qknorm.h"
#include "llmc/cpu/relu2.h"
#include "llmc/cpu/residual.h"
#include "llmc/cpu/rmsnorm.h"
#include "llmc/cpu/rope.h"
#include "llmc/cpu/smear.h"
#include "llmc/cpu/value_embed.h"

namespace op {

template <typename Real>
struct Types {
    typedef Real act, stat, master;
    typedef float rope;
    typedef double norm;  // the gradient norm's sum of squares
};
constexpr bool kDevice = false;  // tensors live in host memory: host pointers may be read directly
// q, k, v by three GEMMs into three contiguous tensors (train_gpt.cu: GPT::qkv_view); the token
// strides the ops below take are then always the contiguous ones
constexpr bool kPackedQKV = false;
inline const char* backend_name() { return "CPU (fp32 reference ops, OpenMP)"; }

// ---- memory: "device" memory is host memory here (64-byte aligned, zeroed) ----
template <typename T>
T* alloc(size_t n) {
    size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
    void* p = bytes ? std::aligned_alloc(64, bytes) : nullptr;
    if (bytes && !p) throw std::bad_alloc();
    if (p) memset(p, 0, bytes);
    return (T*)p;
}
inline void release(void* p) { std::free(p); }
template <typename T> void zero(T* p, size_t n) { if (n) memset((void*)p, 0, n * sizeof(T)); }
template <typename T> void copy(T* dst, const T* src, size_t n) { if (n && dst != src) memcpy((void*)dst, (const void*)src, n * sizeof(T)); }
template <typename T> void to_host(T* host, const T* dev, size_t n) { copy(host, dev, n); }
template <typename T> void to_device(T* dev, const T* host, size_t n) { copy(dev, host, n); }
inline void synchronize() {}
// the matmul copy of the master weights: the same buffer here (the model never calls this then)
template <typename Real> void to_weights(Real* w, const Real* master, size_t n) { copy(w, master, n); }
inline void setup(int max_N, int V, int C, int H, int Hkv) {}
inline void reserve_token_slots(int n) {}
// a micro-batch's ids and targets (targets may be null: no loss) into slot 0 (the CPU needs no
// ring of slots: nothing runs ahead of the host); returns the slot
inline int set_tokens(int* const* idx, int* const* tgt, int nslots, const int* h_idx, const int* h_tgt, int N) {
    copy(idx[0], h_idx, (size_t)N);
    if (h_tgt) copy(tgt[0], h_tgt, (size_t)N);
    else std::fill(tgt[0], tgt[0] + N, -1);
    return 0;
}
inline double device_memory_used() { return 0.0; }
inline double peak_allocated() { return 0.0; }
inline double peak_flops() { return 0.0; }  // MFU is a GPU figure

// ---- per-op timing (--profile) is the GPU build's (llmc/ops_cuda.cuh); here it is off: the CPU
// trainer's time per op is measured by `perf` or `make bench` instead.
struct OpProfile {
    bool on = false;
    std::vector<std::pair<std::string, std::pair<double, long>>> total;
};
inline OpProfile g_prof;
inline void profile_enable(int) {}
inline void profile_collect() {}
inline void profile_discard() {}

// ---- the ops whose CPU definition has the model's signature ----
using ::embedding_backward;
using ::embedding_forward;
using ::lightning_backward;
using ::lightning_forward;
using ::matmul_forward;
using ::relu2_backward;
using ::relu2_forward;
using ::residual_forward;
using ::rmsnorm_backward;
using ::rmsnorm_forward;

// ---- adapters ----
// a += b
template <typename Real>
void add_inplace(Real* a, const Real* b, long n) {
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) a[i] += b[i];
}

// dinp (+)= dout·W (accumulate: add; else overwrite), dweight += doutᵀ·inp
template <typename Real>
void matmul_backward(Real* dinp, Real* dweight, const Real* dout, const Real* inp, const Real* weight, int N, int IC, int OC,
                     bool accumulate_dinp) {
    if (!accumulate_dinp) zero(dinp, (size_t)N * IC);
    ::matmul_backward(dinp, dweight, dout, inp, weight, N, IC, OC);
}

template <typename Real>
void smear_forward(Real* out, const Real* e, const Real* w, const Real* lambda, int B, int T, int C) {
    ::smear_forward(out, e, w, *lambda, B, T, C);
}
template <typename Real>
void smear_backward(Real* de, Real* dw, Real* dlambda, const Real* dout, const Real* e, const Real* w, const Real* lambda, int B, int T,
                    int C) {
    ::smear_backward(de, dw, dlambda, dout, e, w, *lambda, B, T, C);
}
template <typename Real>
void lambdas_forward(Real* out, const Real* x, const Real* x0, const Real* alpha, const Real* beta, long n) {
    ::lambdas_forward(out, x, x0, *alpha, *beta, n);
}
template <typename Real>
void lambdas_backward(Real* dx, Real* dx0, Real* dalpha, Real* dbeta, const Real* dout, const Real* x, const Real* x0, const Real* alpha,
                      const Real* beta, long n) {
    ::lambdas_backward(dx, dx0, dalpha, dbeta, dout, x, x0, *alpha, *beta, n);
}
template <typename Real>
void backout_forward(Real* out, const Real* x, const Real* xmid, const Real* lambda, long n) {
    ::backout_forward(out, x, xmid, *lambda, n);
}
template <typename Real>
void backout_backward(Real* dxmid, Real* dlambda, const Real* dout, const Real* xmid, const Real* lambda, long n) {
    ::backout_backward(dxmid, dlambda, dout, xmid, *lambda, n);
}

// The CUDA ops' token strides (ldq for q-shaped tensors, ldkv for k and v; 0 = contiguous): the
// CPU ops are contiguous only, which is what the model passes them (kPackedQKV false)
inline void check_contiguous(const char* op, long ldq, long ldkv, int H, int Hkv, int D) {
    LLMC_CHECK((ldq == 0 || ldq == (long)H * D) && (ldkv == 0 || ldkv == (long)Hkv * D),
               "internal: %s: the CPU op takes contiguous tensors only (token strides %ld, %ld)", op, ldq, ldkv);
}
template <typename Real>
void attention_forward(Real* out, Real* lse, const Real* q, const Real* k, const Real* v, int B, int T, int H, int Hkv, int D, int window,
                       long ldq = 0, long ldkv = 0) {
    check_contiguous("attention_forward", ldq, ldkv, H, Hkv, D);
    ::attention_forward(out, lse, q, k, v, B, T, H, Hkv, D, window);
}
template <typename Real>
void attention_backward(Real* dq, Real* dk, Real* dv, const Real* dout, const Real* out, const Real* lse, const Real* q, const Real* k,
                        const Real* v, int B, int T, int H, int Hkv, int D, int window, long ldq = 0, long ldkv = 0) {
    check_contiguous("attention_backward", ldq, ldkv, H, Hkv, D);
    ::attention_backward(dq, dk, dv, dout, out, lse, q, k, v, B, T, H, Hkv, D, window);
}
template <typename Real>
void ve_gate_forward(Real* v, Real* gamma, const Real* u, const Real* ve, const Real* wg, int N, int C, int Hkv, int D, long ldv = 0) {
    check_contiguous("ve_gate_forward", 0, ldv, 1, Hkv, D);
    ::ve_gate_forward(v, gamma, u, ve, wg, N, C, Hkv, D);
}
template <typename Real>
void ve_gate_backward(Real* du, Real* dve, Real* dwg, const Real* dv, const Real* u, const Real* ve, const Real* gamma, const Real* wg, int N,
                      int C, int Hkv, int D, long ldv = 0) {
    check_contiguous("ve_gate_backward", 0, ldv, 1, Hkv, D);
    ::ve_gate_backward(du, dve, dwg, dv, u, ve, gamma, wg, N, C, Hkv, D);
}

// q, k (B,T,H|Hkv,D) -> qn = norm(rope(q)), kn = norm(rope(k)) (docs/model.md#attention). q and k
// are rotated in place here (the CUDA kernel does both in one pass); qn == q, kn == k allowed.
template <typename Real>
void rope_qknorm_forward(Real* qn, Real* rstd_q, Real* kn, Real* rstd_k, Real* q, Real* k, const float* cos, const float* sin, int B, int T,
                         int H, int Hkv, int D, long ldq = 0, long ldk = 0) {
    check_contiguous("rope_qknorm_forward", ldq, ldk, H, Hkv, D);
    ::rope_forward(q, q, cos, sin, B, T, H, D, 0);
    ::rope_forward(k, k, cos, sin, B, T, Hkv, D, 0);
    ::qknorm_forward(qn, rstd_q, q, B * T * H, D);
    ::qknorm_forward(kn, rstd_k, k, B * T * Hkv, D);
}
// dq, dk = gradients of q, k from dqn, dkn (overwrite; dq may alias dqn, dk may alias dkn)
template <typename Real>
void rope_qknorm_backward(Real* dq, Real* dk, const Real* dqn, const Real* dkn, const Real* qn, const Real* kn, const Real* rstd_q,
                          const Real* rstd_k, const float* cos, const float* sin, int B, int T, int H, int Hkv, int D, long ldq = 0,
                          long ldk = 0) {
    check_contiguous("rope_qknorm_backward", ldq, ldk, H, Hkv, D);
    ::qknorm_backward(dq, dqn, qn, rstd_q, B * T * H, D);
    ::qknorm_backward(dk, dkn, kn, rstd_k, B * T * Hkv, D);
    ::rope_backward(dq, dq, cos, sin, B, T, H, D, 0);
    ::rope_backward(dk, dk, cos, sin, B, T, Hkv, D, 0);
}

// losses(N) =, dlogits (N,Vp) = (overwrite; may alias logits; null = forward only), softcap 15
template <typename Real>
void crossentropy(Real* losses, Real* dlogits, const Real* logits, const int* targets, int N, int V, int Vp, float dloss_scale) {
    ::softcap_crossentropy_forward_backward(losses, dlogits, logits, targets, N, V, Vp, 15.0f, dloss_scale);
}

// *out = sum of losses[0..N) in double, in index order (ignored rows hold 0)
template <typename Real>
void loss_sum(double* out, const Real* losses, int N) {
    double s = 0.0;
    for (int i = 0; i < N; i++) s += (double)losses[i];
    *out = s;
}

// *out = sum of g[0..n)^2 in double (deterministic: fixed chunks, 8 lanes each so it vectorizes;
// a serial double loop over every parameter was ~3% of a d4 step)
template <typename Real>
void sum_squares(double* out, const Real* g, size_t n) {
    double gn = 0.0;
    cpu_chunked_sum((long)n, 1, &gn, [g](long a, long b, double* part) {
        double acc[8] = {0};
        long i = a;
        for (; i + 8 <= b; i += 8)
            for (int k = 0; k < 8; k++) acc[k] += (double)g[i + k] * (double)g[i + k];
        for (; i < b; i++) acc[0] += (double)g[i] * (double)g[i];
        for (int k = 0; k < 8; k++) part[0] += acc[k];
    });
    *out = gn;
}

// ---- the hybrid layers (train_moe; docs/model.md#hybrid) ----
// the kernels' shape limits (the CUDA build's; the CPU ops take any shape)
inline void check_hybrid_shapes(const MoeConfig* moe, int n_lightning, int B, int T, int C, int H, int D, int blk) {}
// the sizes of their saved tensors and workspaces (the CUDA ops have their own)
inline LightningSizes lightning_sizes(int B, int T, int H, int D) { return ::lightning_sizes(B, T, H, D); }
inline MoeSavedSize moe_saved_numel(const MoeConfig& c, int B, int T) { return ::moe_saved_numel(c, B, T); }
inline size_t moe_workspace_numel(const MoeConfig& c, int B, int T) { return ::moe_workspace_numel(c, B, T); }

// out (=) the MoE FFN of u (docs/moe.md#api). saved, saved_int: this layer's moe_saved_numel()
// elements; work: the shared workspace. load (+=) the selection counts (training; null: not
// counted). aux (=) the layer's aux loss. idx_override: a fixed routing (tests), else null.
template <typename Real>
void moe_forward(Real* out, Real* saved, int* saved_int, Real* work, const Real* u, const Real* router, const Real* bias, const Real* w1,
                 const Real* w3, const Real* w2, const Real* s1, const Real* s3, const Real* s2, const MoeConfig& c, int B, int T,
                 int64_t* load, double* aux, const int* idx_override) {
    MoeSaved<Real> sv = moe_saved_bind(c, B, T, saved, saved_int);
    MoeWeights<Real> w;
    w.router = router; w.bias = bias; w.w1 = w1; w.w3 = w3; w.w2 = w2; w.s1 = s1; w.s3 = s3; w.s2 = s2;
    *aux = ::moe_forward(out, sv, work, u, w, c, B, T, load, idx_override);
}
// du (=) dL/du; the parameter gradients (+=); dout = dL/d(out), daux = dL/d(aux loss)
template <typename Real>
void moe_backward(Real* du, Real* drouter, Real* dw1, Real* dw3, Real* dw2, Real* ds1, Real* ds3, Real* ds2, Real* work, const Real* dout,
                  const Real* u, const Real* router, const Real* bias, const Real* w1, const Real* w3, const Real* w2, const Real* s1,
                  const Real* s3, const Real* s2, Real* saved, int* saved_int, const MoeConfig& c, int B, int T, float daux) {
    MoeSaved<Real> sv = moe_saved_bind(c, B, T, saved, saved_int);
    MoeWeights<Real> w;
    w.router = router; w.bias = bias; w.w1 = w1; w.w3 = w3; w.w2 = w2; w.s1 = s1; w.s3 = s3; w.s2 = s2;
    MoeGrads<Real> g;
    g.router = drouter; g.w1 = dw1; g.w3 = dw3; g.w2 = dw2; g.s1 = ds1; g.s3 = ds3; g.s2 = ds2;
    ::moe_backward(du, g, work, dout, u, w, sv, c, B, T, (Real)daux);
}
// b += gamma·sign(sum(load) − E·load), load = 0 (docs/moe.md#bias)
template <typename Real>
void moe_bias_update(Real* b, int64_t* load, int E, double gamma) {
    ::moe_bias_update(b, load, E, gamma);
}

}  // namespace op
