// bench_kernels.cu: time the CUDA kernels of llmc/cuda/ at GPT-sized shapes (a d20-like model:
// n_embd 1280, MLP 5120, vocab 32768, 32 x 2048 tokens) and print achieved GB/s for the memory-bound
// kernels and TFLOP/s for the GEMMs, each also as a fraction of the device's peak.
//
// Plain CUDA: built with nvcc (make build/gpu/bench_kernels) and, like the kernel tests, with g++
// under SIM (make build/sim/bench_kernels), where it is a smoke test of this program only: the SIM
// figures measure the CPU simulation and say nothing about a GPU. There is no correctness check
// here; test/sim/test_*.cu do that.
//
// Timing: one warm-up call, then `reps` calls queued back to back on the stream with an event
// recorded after each (one synchronization at the end). best = the fastest call (its event
// interval), mean = total / reps; rates are computed from best. Host work inside a call (the
// host-side plan build) is part of the time when the GPU waits for it; cuBLASLt plans (descriptors
// and the heuristic's algorithm) are cached per shape by matmul.cuh, so their one-time cost falls
// in the warm-up call.
//
// Rates. GB/s = bytes / best time, where bytes is the least DRAM traffic the kernel must do (each
// input read once, each output written once; the formulas are next to each call). A re-read that
// hits L2 (rmsnorm's and the cross-entropy's second pass over a row) is not counted, so the
// figure is comparable with the peak. TFLOP/s = 2 * N * IC * OC per product / best time.
// Peaks (GPU only): memory = memory clock * 2 (DDR) * bus width / 8; bf16 tensor = SMs * max SM
// clock * dense bf16 FLOP per clock per SM (4096 on sm_90, 2048 on sm_80; other archs: not shown).
// The max clock is the boost limit, above the clock datasheets quote (H100 SXM: 1980 vs 1830 MHz),
// so the tensor peak is an upper bound and the percentage a lower bound.
//
// Usage: bench_kernels [--small] [--reps N]
//   --small   tiny shapes and 1 rep: runs in seconds under SIM (the default there, #ifdef LLMC_SIM);
//             also selected by the environment variable BENCH_SMALL=1
//   --reps N  timed calls per kernel (default 20; 1 with --small)
// The last lines printed are a markdown table: kernel | shape | best ms | mean ms | rate | % of peak.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include "dev/cuda/bench_timing.h"
#include "llmc/cuda/adamw.cuh"
#include "llmc/cuda/backout.cuh"
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/crossentropy.cuh"
#include "llmc/cuda/embedding.cuh"
#include "llmc/cuda/global_norm.cuh"
#include "llmc/cuda/matmul.cuh"
#include "llmc/cuda/lightning.cuh"
#include "llmc/cuda/moe.cuh"
#include "llmc/cuda/muon.cuh"
#include "llmc/cuda/relu2.cuh"
#include "llmc/cuda/residual.cuh"
#include "llmc/cuda/rmsnorm.cuh"
#include "llmc/cuda/rope.cuh"
#include "llmc/cuda/smear.cuh"
#include "llmc/cuda/value_embed.cuh"
#include "llmc/rng.h"
#include "llmc/utils.h"

namespace {

// ---------------------------------------------------------------------------------------------
// device buffers and random fills

template <typename T>
T* dalloc(size_t n) {
    T* p = nullptr;
    cudaCheck(cudaMalloc((void**)&p, std::max<size_t>(n, 1) * sizeof(T)));
    return p;
}

template <typename T>
void dfree(T*& p) {
    if (p) cudaCheck(cudaFree(p));
    p = nullptr;
}

// p[i] = uniform in [-scale, scale) from a hash of (seed, i): filling on the device keeps the
// set-up of the 0.5-1 GiB tensors fast (a host RNG would take seconds per tensor).
__global__ void fill_uniform_kernel(floatX* p, size_t n, uint64_t seed, float scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = i + seed * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const float u = (float)(z >> 40) * (1.0f / 16777216.0f);  // 24 bits -> [0, 1)
        p[i] = __float2bfloat16(scale * (2.0f * u - 1.0f));
    }
}

void fill_uniform(floatX* p, size_t n, uint64_t seed, float scale, cudaStream_t stream) {
    const unsigned grid = (unsigned)std::min<size_t>(CEIL_DIV(n, (size_t)256), 8192);
    LAUNCH(fill_uniform_kernel, std::max(grid, 1u), 256, 0, stream, p, n, seed, scale);
}

// the same values in fp32 (gradients, optimizer state)
__global__ void fill_uniform_f32_kernel(float* p, size_t n, uint64_t seed, float scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = i + seed * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const float u = (float)(z >> 40) * (1.0f / 16777216.0f);
        p[i] = scale * (2.0f * u - 1.0f);
    }
}

void fill_uniform(float* p, size_t n, uint64_t seed, float scale, cudaStream_t stream) {
    const unsigned grid = (unsigned)std::min<size_t>(CEIL_DIV(n, (size_t)256), 8192);
    LAUNCH(fill_uniform_f32_kernel, std::max(grid, 1u), 256, 0, stream, p, n, seed, scale);
}

// a device copy of a few host floats (scalar parameters, gate weights)
float* dupload(const std::vector<float>& h) {
    float* p = dalloc<float>(h.size());
    cudaCheck(cudaMemcpy(p, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
    return p;
}

// Token ids with a heavy head, roughly like text: id = floor(V^u) - 1, u uniform, so id 0 is
// about ln 2 / ln V of all positions (7% for V = 32768) and most ids repeat.
std::vector<int> make_ids(int N, int V, llmc::Rng& rng) {
    std::vector<int> ids(N);
    for (auto& t : ids) t = std::min(V - 1, (int)std::floor(std::pow((double)V, rng.uniform())) - 1);
    return ids;
}

// ---------------------------------------------------------------------------------------------
// timing and the results table


struct Row {
    std::string kernel, shape;
    Timing t;
    double rate;       // GB/s or TFLOP/s; < 0: none
    const char* unit;  // "GB/s", "TFLOP/s" or ""
    double peak;       // same unit; <= 0: unknown
};

struct Bench {
    int reps = 20;
    cudaStream_t stream = 0;
    double peak_gbs = 0.0, peak_tflops = 0.0;
    std::vector<Row> rows;

    void add_bytes(const std::string& kernel, const std::string& shape, Timing t, double bytes) {
        rows.push_back({kernel, shape, t, bytes / (t.best_ms * 1e-3) / 1e9, "GB/s", peak_gbs});
        print_last();
    }
    void add_flops(const std::string& kernel, const std::string& shape, Timing t, double flops) {
        rows.push_back({kernel, shape, t, flops / (t.best_ms * 1e-3) / 1e12, "TFLOP/s", peak_tflops});
        print_last();
    }
    void add_time(const std::string& kernel, const std::string& shape, Timing t) {
        rows.push_back({kernel, shape, t, -1.0, "", 0.0});
        print_last();
    }
    void print_last() const {
        const Row& r = rows.back();
        printf("  %-34s %-28s best %9.4f ms  mean %9.4f ms", r.kernel.c_str(), r.shape.c_str(), r.t.best_ms, r.t.mean_ms);
        if (r.rate >= 0) printf("  %9.1f %s", r.rate, r.unit);
        printf("\n");
    }
    void print_table() const {
        printf("\n| kernel | shape | best ms | mean ms | GB/s or TFLOP/s | %% of peak |\n");
        printf("|---|---|---:|---:|---:|---:|\n");
        for (const Row& r : rows) {
            char rate[48] = "-", pct[16] = "-";
            if (r.rate >= 0) snprintf(rate, sizeof(rate), "%.1f %s", r.rate, r.unit);
            if (r.rate >= 0 && r.peak > 0) snprintf(pct, sizeof(pct), "%.0f%%", 100.0 * r.rate / r.peak);
            printf("| %s | %s | %.4f | %.4f | %s | %s |\n", r.kernel.c_str(), r.shape.c_str(), r.t.best_ms, r.t.mean_ms,
                   rate, pct);
        }
    }
};

std::string fmt(const char* f, long a, long b = -1, long c = -1) {
    char buf[96];
    if (c >= 0) snprintf(buf, sizeof(buf), f, a, b, c);
    else if (b >= 0) snprintf(buf, sizeof(buf), f, a, b);
    else snprintf(buf, sizeof(buf), f, a);
    return buf;
}

// ---------------------------------------------------------------------------------------------
// the benchmarks

void bench_rmsnorm(Bench& B, int N, int C) {
    floatX* inp = dalloc<floatX>((size_t)N * C);
    floatX* out = dalloc<floatX>((size_t)N * C);
    floatX* dout = dalloc<floatX>((size_t)N * C);
    floatX* dinp = dalloc<floatX>((size_t)N * C);
    float* rstd = dalloc<float>(N);
    fill_uniform(inp, (size_t)N * C, 1, 2.0f, B.stream);
    fill_uniform(dout, (size_t)N * C, 2, 1.0f, B.stream);
    cudaCheck(cudaMemset(dinp, 0, (size_t)N * C * sizeof(floatX)));
    const std::string shape = fmt("N=%ld C=%ld", N, C);
    const double NC = (double)N * C;

    // forward: read inp (2NC), write out (2NC) and rstd (4N)
    Timing t = time_it([&] { rmsnorm_forward(out, rstd, inp, N, C, B.stream); }, B.reps, B.stream);
    B.add_bytes("rmsnorm_forward", shape, t, 4.0 * NC + 4.0 * N);
    // backward: read dout, out and dinp (2NC each) and rstd (4N), write dinp (2NC)
    t = time_it([&] { rmsnorm_backward(dinp, dout, out, rstd, N, C, B.stream); }, B.reps, B.stream);
    B.add_bytes("rmsnorm_backward", shape, t, 8.0 * NC + 4.0 * N);

    dfree(inp); dfree(out); dfree(dout); dfree(dinp); dfree(rstd);
}

void bench_crossentropy(Bench& B, int N, int V) {
    const int Vp = (V + 63) / 64 * 64;  // padded as the model pads (llmc/scaling.h)
    llmc::Rng rng(3, 0);
    std::vector<int> targets(N);
    for (auto& y : targets) y = (int)rng.below(V);
    floatX* logits = dalloc<floatX>((size_t)N * Vp);
    floatX* dlogits = dalloc<floatX>((size_t)N * Vp);
    float* losses = dalloc<float>(N);
    int* d_targets = dalloc<int>(N);
    fill_uniform(logits, (size_t)N * Vp, 3, 4.0f, B.stream);
    cudaCheck(cudaMemcpy(d_targets, targets.data(), (size_t)N * sizeof(int), cudaMemcpyHostToDevice));
    const std::string shape = fmt("N=%ld V=%ld Vp=%ld", N, V, Vp);
    const float softcap = 15.0f, scale = 1.0f / N;
    const double NV = (double)N * Vp;

    // forward only (dlogits = nullptr, the model's forward pass): read logits (2 N Vp) and targets
    // (4N), write losses (4N)
    Timing t = time_it([&] {
        softcap_crossentropy_forward_backward(losses, nullptr, logits, d_targets, N, V, Vp, softcap, 0.0f, B.stream);
    }, B.reps, B.stream);
    B.add_bytes("softcap_crossentropy (fwd)", shape, t, 2.0 * NV + 8.0 * N);
    // forward + gradient into a separate buffer (the model's backward): plus write dlogits (2 N Vp)
    t = time_it([&] {
        softcap_crossentropy_forward_backward(losses, dlogits, logits, d_targets, N, V, Vp, softcap, scale, B.stream);
    }, B.reps, B.stream);
    B.add_bytes("softcap_crossentropy (fwd+bwd)", shape, t, 4.0 * NV + 8.0 * N);

    dfree(logits); dfree(dlogits); dfree(losses); dfree(d_targets);
}

void bench_embedding(Bench& B, int N, int C, int V) {
    llmc::Rng rng(4, 0);
    const std::vector<int> ids = make_ids(N, V, rng);
    floatX* table = dalloc<floatX>((size_t)V * C);
    float* dtable = dalloc<float>((size_t)V * C);
    floatX* out = dalloc<floatX>((size_t)N * C);
    floatX* dout = dalloc<floatX>((size_t)N * C);
    int* d_ids = dalloc<int>(N);
    fill_uniform(table, (size_t)V * C, 5, 1.0f, B.stream);
    fill_uniform(dout, (size_t)N * C, 6, 1.0f, B.stream);
    cudaCheck(cudaMemset(dtable, 0, (size_t)V * C * sizeof(float)));
    cudaCheck(cudaMemcpy(d_ids, ids.data(), (size_t)N * sizeof(int), cudaMemcpyHostToDevice));
    const std::string shape = fmt("N=%ld C=%ld V=%ld", N, C, V);
    const double NC = (double)N * C;

    // forward: read ids (4N) and N table rows (2NC), write out (2NC)
    Timing t = time_it([&] { embedding_forward(out, d_ids, table, N, C, B.stream); }, B.reps, B.stream);
    B.add_bytes("embedding_forward", shape, t, 4.0 * NC + 4.0 * N);

    EmbeddingBackwardPlan plan;
    embedding_plan_create(&plan, N, V, C);
    // the plan build: host counting sort + upload, once per batch (shared by wte and value_embeds)
    t = time_it([&] { embedding_plan_build(&plan, ids.data(), N, B.stream); }, B.reps, B.stream);
    B.add_time("embedding_plan_build (host+upload)", shape, t);
    const double nb = plan.n_buckets;
    // backward: read dout (2NC), order (4N), offsets and one id per bucket (~8 nb); read and write
    // the nb touched dtable rows (8 nb C)
    t = time_it([&] { embedding_backward(dtable, dout, d_ids, N, C, plan, B.stream); }, B.reps, B.stream);
    B.add_bytes("embedding_backward", shape + fmt(" (%ld ids)", plan.n_buckets), t, 2.0 * NC + 8.0 * nb * C + 4.0 * N + 8.0 * nb);
    embedding_plan_destroy(&plan);

    dfree(table); dfree(dtable); dfree(out); dfree(dout); dfree(d_ids);
}

// RoPE + QK-norm on q (B,T,H,D) and k (B,T,Hkv,D) in one launch per direction
void bench_rope(Bench& B, int Bsz, int T, int H, int Hkv, int D) {
    const size_t nq = (size_t)Bsz * T * H * D, nk = (size_t)Bsz * T * Hkv * D, rows = (size_t)Bsz * T * (H + Hkv);
    floatX* q = dalloc<floatX>(nq);
    floatX* k = dalloc<floatX>(nk);
    floatX* qn = dalloc<floatX>(nq);
    floatX* kn = dalloc<floatX>(nk);
    float* rq = dalloc<float>((size_t)Bsz * T * H);
    float* rk = dalloc<float>((size_t)Bsz * T * Hkv);
    floatX* cosb = dalloc<floatX>((size_t)T * D / 2);
    floatX* sinb = dalloc<floatX>((size_t)T * D / 2);
    fill_uniform(q, nq, 11, 1.0f, B.stream);
    fill_uniform(k, nk, 12, 1.0f, B.stream);
    fill_uniform(cosb, (size_t)T * D / 2, 13, 1.0f, B.stream);
    fill_uniform(sinb, (size_t)T * D / 2, 14, 1.0f, B.stream);
    const std::string shape = fmt("B=%ld T=%ld H=%ld", Bsz, T, H) + fmt(" Hkv=%ld D=%ld", Hkv, D);
    const double elems = (double)(nq + nk);
    // forward: read q, k (2 bytes each element), write qn, kn (2) and rstd (4 per row); the tables
    // (T x D/2, shared by all rows) are not counted
    Timing t = time_it([&] { rope_qknorm_forward(qn, rq, kn, rk, q, k, cosb, sinb, Bsz, T, H, Hkv, D, 0, B.stream); },
                       B.reps, B.stream);
    B.add_bytes("rope_qknorm_forward", shape, t, 4.0 * elems + 4.0 * rows);
    // backward: read dqn, dkn, qn, kn and rstd, write dq, dk (here in place over q, k as gradients)
    t = time_it([&] { rope_qknorm_backward(q, k, q, k, qn, kn, rq, rk, cosb, sinb, Bsz, T, H, Hkv, D, 0, B.stream); },
                B.reps, B.stream);
    B.add_bytes("rope_qknorm_backward", shape, t, 6.0 * elems + 4.0 * rows);
    dfree(q); dfree(k); dfree(qn); dfree(kn); dfree(rq); dfree(rk); dfree(cosb); dfree(sinb);
}

void bench_relu2(Bench& B, long n) {
    floatX* x = dalloc<floatX>(n);
    floatX* y = dalloc<floatX>(n);
    floatX* g = dalloc<floatX>(n);
    fill_uniform(x, n, 15, 1.0f, B.stream);
    fill_uniform(g, n, 16, 1.0f, B.stream);
    const std::string shape = fmt("n=%ld", n);
    // forward: read x, write y (2 bytes each); backward (in place over g): read x and g, write dx
    Timing t = time_it([&] { relu2_forward(y, x, n, B.stream); }, B.reps, B.stream);
    B.add_bytes("relu2_forward", shape, t, 4.0 * n);
    t = time_it([&] { relu2_backward(g, g, x, n, B.stream); }, B.reps, B.stream);
    B.add_bytes("relu2_backward", shape, t, 6.0 * n);
    // the backward that also recomputes relu(x)^2 for c_proj's weight gradient: plus write act
    t = time_it([&] { relu2_backward_recompute(g, y, g, x, n, B.stream); }, B.reps, B.stream);
    B.add_bytes("relu2_backward_recompute", shape, t, 8.0 * n);
    dfree(x); dfree(y); dfree(g);
}

// the residual-stream ops over N x C: residual add, lambdas, backout
void bench_residual(Bench& B, int N, int C, float* scratch) {
    const long n = (long)N * C;
    floatX* a = dalloc<floatX>(n);
    floatX* b = dalloc<floatX>(n);
    floatX* out = dalloc<floatX>(n);
    floatX* g = dalloc<floatX>(n);
    floatX* d0 = dalloc<floatX>(n);
    fill_uniform(a, n, 17, 1.0f, B.stream);
    fill_uniform(b, n, 18, 1.0f, B.stream);
    fill_uniform(g, n, 19, 1.0f, B.stream);
    cudaCheck(cudaMemset(d0, 0, n * sizeof(floatX)));
    float* scalars = dupload({1.1f, 0.2f, 0.2f, 0.0f, 0.0f, 0.0f});  // alpha, beta, lambda, dalpha, dbeta, dlambda
    const std::string shape = fmt("N=%ld C=%ld", N, C);
    // residual and lambdas forward, backout forward: read two tensors, write one (2 bytes each)
    Timing t = time_it([&] { residual_forward(out, a, b, n, B.stream); }, B.reps, B.stream);
    B.add_bytes("residual_forward", shape, t, 6.0 * n);
    t = time_it([&] { lambdas_forward(out, a, b, scalars, scalars + 1, n, B.stream); }, B.reps, B.stream);
    B.add_bytes("lambdas_forward", shape, t, 6.0 * n);
    // lambdas backward: read dout, x, x0, dx0; write dx, dx0 (dx into a separate buffer here)
    t = time_it([&] { lambdas_backward(out, d0, scalars + 3, scalars + 4, g, a, b, scalars, scalars + 1, n, scratch, B.stream); },
                B.reps, B.stream);
    B.add_bytes("lambdas_backward (+dalpha,dbeta)", shape, t, 12.0 * n);
    t = time_it([&] { backout_forward(out, a, b, scalars + 2, n, B.stream); }, B.reps, B.stream);
    B.add_bytes("backout_forward", shape, t, 6.0 * n);
    // backout backward: read dout, xmid, dxmid; write dxmid
    t = time_it([&] { backout_backward(d0, scalars + 5, g, b, scalars + 2, n, scratch, B.stream); }, B.reps, B.stream);
    B.add_bytes("backout_backward (+dlambda)", shape, t, 8.0 * n);
    dfree(a); dfree(b); dfree(out); dfree(g); dfree(d0); dfree(scalars);
}

void bench_smear(Bench& B, int Bsz, int T, int C, float* scratch) {
    const long n = (long)Bsz * T * C;
    floatX* e = dalloc<floatX>(n);
    floatX* out = dalloc<floatX>(n);
    floatX* g = dalloc<floatX>(n);
    fill_uniform(e, n, 20, 1.0f, B.stream);
    fill_uniform(g, n, 21, 1.0f, B.stream);
    std::vector<float> h(SMEAR_GATE_CHANNELS + 1, 0.01f);  // w[0..24), then lambda
    h[SMEAR_GATE_CHANNELS] = 0.5f;
    float* w = dupload(h);
    float* dw = dupload(std::vector<float>(SMEAR_GATE_CHANNELS + 1, 0.0f));  // dw, then dlambda
    const std::string shape = fmt("B=%ld T=%ld C=%ld", Bsz, T, C);
    // forward: read e (row t-1 again: an L2 hit, not counted), write out
    Timing t = time_it([&] { smear_forward(out, e, w, w + SMEAR_GATE_CHANNELS, Bsz, T, C, B.stream); }, B.reps, B.stream);
    B.add_bytes("smear_forward", shape, t, 4.0 * n);
    // backward: read dout and e (G_{t+1}, e_{t-1} again: L2 hits), write de
    t = time_it([&] {
        smear_backward(out, dw, dw + SMEAR_GATE_CHANNELS, g, e, w, w + SMEAR_GATE_CHANNELS, Bsz, T, C, scratch, B.stream);
    }, B.reps, B.stream);
    B.add_bytes("smear_backward (+dw,dlambda)", shape, t, 6.0 * n);
    dfree(e); dfree(out); dfree(g); dfree(w); dfree(dw);
}

void bench_ve_gate(Bench& B, int N, int C, int Hkv, int D, float* scratch) {
    const long nv = (long)N * Hkv * D;
    floatX* u = dalloc<floatX>((size_t)N * C);
    floatX* v = dalloc<floatX>(nv);
    floatX* ve = dalloc<floatX>(nv);
    floatX* dve = dalloc<floatX>(nv);
    float* gamma = dalloc<float>((size_t)N * Hkv);
    fill_uniform(u, (size_t)N * C, 22, 1.0f, B.stream);
    fill_uniform(v, nv, 23, 1.0f, B.stream);
    fill_uniform(ve, nv, 24, 1.0f, B.stream);
    float* wg = dupload(std::vector<float>((size_t)Hkv * VE_GATE_CHANNELS, 0.01f));
    float* dwg = dupload(std::vector<float>((size_t)Hkv * VE_GATE_CHANNELS, 0.0f));
    const std::string shape = fmt("N=%ld Hkv=%ld D=%ld", N, Hkv, D);
    // forward: read v and ve, write v (2 bytes each), write gamma (4 per head); u's 12 channels
    // (24 bytes per token) are not counted
    Timing t = time_it([&] { ve_gate_forward(v, gamma, u, ve, wg, N, C, Hkv, D, B.stream); }, B.reps, B.stream);
    B.add_bytes("ve_gate_forward", shape, t, 6.0 * nv + 4.0 * N * Hkv);
    // backward: read dv and ve, write dve, read gamma; (du's 12 channels not counted; u as dv here)
    t = time_it([&] { ve_gate_backward(u, dve, dwg, v, u, ve, gamma, wg, N, C, Hkv, D, scratch, B.stream); }, B.reps,
                B.stream);
    B.add_bytes("ve_gate_backward (+dWg)", shape, t, 6.0 * nv + 4.0 * N * Hkv);
    dfree(u); dfree(v); dfree(ve); dfree(dve); dfree(gamma); dfree(wg); dfree(dwg);
}

// AdamW over an n-element range (e.g. wte: Vp x C)
void bench_adamw(Bench& B, long n, const char* what) {
    float* p = dalloc<float>(n);
    float* g = dalloc<float>(n);
    float* m = dalloc<float>(n);
    float* v = dalloc<float>(n);
    floatX* pb = dalloc<floatX>(n);
    cudaCheck(cudaMemset(p, 0, n * sizeof(float)));
    cudaCheck(cudaMemset(g, 0, n * sizeof(float)));
    cudaCheck(cudaMemset(m, 0, n * sizeof(float)));
    cudaCheck(cudaMemset(v, 0, n * sizeof(float)));
    const std::string shape = fmt("n=%ld ", n) + what;
    // read p, g, m, v (4 bytes each); write p, m, v (4) and the bf16 copy (2)
    Timing t = time_it([&] { adamw_update(p, pb, m, v, g, n, 0.3f, 0.8f, 0.995f, 1e-10f, 0.001f, 1, B.stream); }, B.reps,
                       B.stream);
    B.add_bytes("adamw_update (+bf16 copy)", shape, t, 30.0 * n);
    dfree(p); dfree(g); dfree(m); dfree(v); dfree(pb);
}

// squared L2 norm of an n-float gradient buffer (d20: ~897M parameters)
void bench_global_norm(Bench& B, size_t n, float* scratch) {
    float* g = dalloc<float>(n);
    float* out = dalloc<float>(1);
    cudaCheck(cudaMemset(g, 0, n * sizeof(float)));
    // read every gradient once (4 bytes)
    Timing t = time_it([&] { global_norm_squared(out, g, n, scratch, B.stream); }, B.reps, B.stream);
    B.add_bytes("global_norm_squared", fmt("n=%ld", (long)n), t, 4.0 * n);
    dfree(g); dfree(out);
}

void bench_matmul(Bench& B, int N, int IC, int OC, const char* what) {
    floatX* inp = dalloc<floatX>((size_t)N * IC);
    floatX* weight = dalloc<floatX>((size_t)OC * IC);
    floatX* out = dalloc<floatX>((size_t)N * OC);  // also serves as dout in the backward
    floatX* dinp = dalloc<floatX>((size_t)N * IC);
    float* dweight = dalloc<float>((size_t)OC * IC);
    fill_uniform(inp, (size_t)N * IC, 7, 1.0f, B.stream);
    fill_uniform(weight, (size_t)OC * IC, 8, 0.03f, B.stream);
    cudaCheck(cudaMemset(dinp, 0, (size_t)N * IC * sizeof(floatX)));
    cudaCheck(cudaMemset(dweight, 0, (size_t)OC * IC * sizeof(float)));
    const std::string shape = fmt("N=%ld %ld->%ld", N, IC, OC) + " " + what;
    const double flops = 2.0 * N * IC * OC;  // one product

    Timing t = time_it([&] { matmul_forward(out, inp, weight, N, IC, OC, B.stream); }, B.reps, B.stream);
    B.add_flops("matmul_forward", shape, t, flops);
    // backward: dinp += dout · W and dweight += doutᵀ · inp, two products
    t = time_it([&] { matmul_backward(dinp, dweight, out, inp, weight, N, IC, OC, B.stream); }, B.reps, B.stream);
    B.add_flops("matmul_backward (dinp+dweight)", shape, t, 2.0 * flops);

    dfree(inp); dfree(weight); dfree(out); dfree(dinp); dfree(dweight);
}

// One Muon step over every matrix of the model, as the trainer runs it (train_gpt.cu Optimizer::step:
// one muon_update per tensor, on its stack over the layers): c_q, c_k, c_v (L each of C x C when
// Hkv = H, interleaved per layer as docs/model.md#qkv lays them out: stacks with stride 3 C^2), attn
// c_proj (L of C x C), c_fc (L of 4C x C), mlp c_proj (L of C x 4C), ve_gate ((L+1)/2 VE layers of
// Hkv x 12). Time for the whole step (all stacks, one after another on the stream); the rate is the
// Polar Express GEMMs' FLOPs per matrix, 5 x (4 q^2 p + 2 q^3) with q = min(m, n), p = max(m, n)
// (Gram matrix, its square, the product with X), over that time, so the elementwise kernels count
// as overhead.
void bench_muon(Bench& B, int L, int C, int Hkv) {
    struct Buf { size_t n; float* P; floatX* Pb; float* M; float* G; };
    struct Group { int buf; size_t off, ldm; int K, m, n; float* S; };
    const size_t cc = (size_t)C * C;
    std::vector<Buf> bufs = {{(size_t)L * 3 * cc}, {(size_t)L * cc}, {(size_t)L * 4 * cc}, {(size_t)L * 4 * cc}, {(size_t)(L + 1) / 2 * Hkv * 12}};
    std::vector<Group> groups = {{0, 0, 3 * cc, L, C, C},      {0, cc, 3 * cc, L, C, C}, {0, 2 * cc, 3 * cc, L, C, C},
                                 {1, 0, cc, L, C, C},          {2, 0, 4 * cc, L, 4 * C, C}, {3, 0, 4 * cc, L, C, 4 * C},
                                 {4, 0, (size_t)Hkv * 12, (L + 1) / 2, Hkv, 12}};
    MuonGPUScratch scr;
    double flops = 0.0;
    uint64_t seed = 20;
    for (Buf& b : bufs) {
        b.P = dalloc<float>(b.n); b.Pb = dalloc<floatX>(b.n); b.M = dalloc<float>(b.n); b.G = dalloc<float>(b.n);
        fill_uniform(b.P, b.n, seed++, 0.02f, B.stream);
        fill_uniform(b.G, b.n, seed++, 1e-3f, B.stream);
        cudaCheck(cudaMemsetAsync(b.M, 0, b.n * sizeof(float), B.stream));
    }
    for (Group& g : groups) {
        const size_t ns = (size_t)g.K * llmc::muon_second_moment_size(g.m, g.n);
        g.S = dalloc<float>(ns);
        cudaCheck(cudaMemsetAsync(g.S, 0, ns * sizeof(float), B.stream));
        muon_scratch_reserve(scr, g.K, g.m, g.n);
        const double q = std::min(g.m, g.n), p = std::max(g.m, g.n);
        flops += (double)g.K * llmc::MUON_NS_STEPS * (4.0 * q * q * p + 2.0 * q * q * q);
    }
    muon_scratch_alloc(scr);
    const std::string shape = fmt("L=%ld C=%ld Hkv=%ld", L, C, Hkv) + fmt(" (scratch %ld MiB)", (long)(muon_scratch_bytes(scr) >> 20));
    Timing t = time_it([&] {
        for (Group& g : groups) {
            Buf& b = bufs[g.buf];
            muon_update(b.P + g.off, b.Pb + g.off, b.M + g.off, g.S, b.G + g.off, g.K, g.m, g.n, 0.02f, 0.95f, 0.1f, scr, B.stream,
                        (long long)g.ldm);
        }
    }, B.reps, B.stream);
    B.add_flops("muon step (all matrices, 7 stacks)", shape, t, flops);
    for (Buf& b : bufs) { dfree(b.P); dfree(b.Pb); dfree(b.M); dfree(b.G); }
    for (Group& g : groups) dfree(g.S);
    muon_scratch_free(scr);
}

// The hybrid layers (train_moe; first-version kernels, docs/lightning.md#lightning-cuda and
// docs/moe.md#cuda), at train_moe's d16 defaults. Their rates count the FLOPs of the MFU convention
// (docs/lightning.md#cost, docs/moe.md#flops): Lightning's five projections (2·5·N·C per token forward, twice that backward) and
// its core (12·H·D·(64 + D) per token for forward + backward, a third of it forward); MoE's router
// (2·C·E) and the active experts' two GEMMs (4·C·(K·F + Fs)) per token forward, twice that backward.
void bench_lightning(Bench& B, int Bsz, int T, int C, int H, int D, int blk) {
    const size_t N = (size_t)Bsz * T, NW = (size_t)H * D;
    LightningSizes z = lightning_sizes_cuda(Bsz, T, H, D);
    floatX *u = dalloc<floatX>(N * C), *out = dalloc<floatX>(N * C), *du = dalloc<floatX>(N * C);
    floatX *wq = dalloc<floatX>(NW * C), *wk = dalloc<floatX>(NW * C), *wv = dalloc<floatX>(NW * C), *wg = dalloc<floatX>(NW * C);
    floatX* wo = dalloc<floatX>(NW * C);
    floatX *p = dalloc<floatX>(z.p), *o = dalloc<floatX>(z.o), *a = dalloc<floatX>(z.a);
    floatX* work = dalloc<floatX>(std::max(z.work_forward, z.work_backward));
    float* r = dalloc<float>(z.r);
    float *dwq = dalloc<float>(NW * C), *dwk = dalloc<float>(NW * C), *dwv = dalloc<float>(NW * C), *dwg = dalloc<float>(NW * C);
    float* dwo = dalloc<float>(NW * C);
    float* dw = dupload(std::vector<float>(NW, 0.0f));
    float* w = dupload(std::vector<float>(NW, 1.0f));
    std::vector<float> sl(H);
    lightning_slopes(sl.data(), H, 0, 16);
    float* slopes = dupload(sl);
    fill_uniform(u, N * C, 40, 1.0f, B.stream);
    const float ws = 1.0f / std::sqrt((float)C);
    fill_uniform(wq, NW * C, 41, ws, B.stream); fill_uniform(wk, NW * C, 42, ws, B.stream);
    fill_uniform(wv, NW * C, 43, ws, B.stream); fill_uniform(wg, NW * C, 44, ws, B.stream);
    fill_uniform(wo, NW * C, 45, ws, B.stream);
    for (float* g : {dwq, dwk, dwv, dwg, dwo}) cudaCheck(cudaMemsetAsync(g, 0, NW * C * sizeof(float), B.stream));
    const std::string shape = fmt("B=%ld T=%ld C=%ld", Bsz, T, C) + fmt(" H=%ld D=%ld", H, D) + fmt(" blk=%ld", blk);
    const double proj = 2.0 * 5 * NW * C, core = 12.0 * H * D * (64 + D);
    Timing t = time_it([&] { lightning_forward(out, p, o, r, a, u, wq, wk, wv, wg, wo, w, slopes, Bsz, T, C, H, D, blk, work, B.stream); },
                       B.reps, B.stream);
    B.add_flops("lightning_forward", shape, t, N * (proj + core / 3));
    t = time_it([&] {
        lightning_backward(du, dwq, dwk, dwv, dwg, dwo, dw, out, u, p, o, r, a, wq, wk, wv, wg, wo, w, slopes, Bsz, T, C, H, D, blk, work,
                           B.stream);
    }, B.reps, B.stream);
    B.add_flops("lightning_backward", shape, t, N * (2 * proj + 2 * core / 3));
    for (floatX* x : {u, out, du, wq, wk, wv, wg, wo, p, o, a, work}) dfree(x);
    for (float* x : {r, dwq, dwk, dwv, dwg, dwo, dw, w, slopes}) dfree(x);
}

void bench_moe(Bench& B, int Bsz, int T, const MoeConfig& c) {
    const size_t N = (size_t)Bsz * T, EFC = (size_t)c.E * c.F * c.C, SC = (size_t)c.Fs * c.C;
    MoeSavedSize z = moe_saved_numel_cuda(c, Bsz, T);
    floatX *u = dalloc<floatX>(N * c.C), *out = dalloc<floatX>(N * c.C), *du = dalloc<floatX>(N * c.C);
    floatX *w1 = dalloc<floatX>(EFC), *w2 = dalloc<floatX>(EFC), *s1 = dalloc<floatX>(SC), *s2 = dalloc<floatX>(SC);
    floatX* saved = dalloc<floatX>(z.real);
    int* saved_int = dalloc<int>(z.ints);
    floatX* work = dalloc<floatX>(moe_workspace_numel_cuda(c, Bsz, T));
    float *dw1 = dalloc<float>(EFC), *dw2 = dalloc<float>(EFC), *ds1 = dalloc<float>(SC), *ds2 = dalloc<float>(SC);
    float *router = dalloc<float>((size_t)c.E * c.C), *drouter = dalloc<float>((size_t)c.E * c.C);
    float* bias = dupload(std::vector<float>(c.E, 0.0f));
    int64_t* load = dalloc<int64_t>(c.E);
    double* aux = dalloc<double>(1);
    fill_uniform(u, N * c.C, 50, 1.0f, B.stream);
    const float ws = 1.0f / std::sqrt((float)c.C);
    fill_uniform(router, (size_t)c.E * c.C, 51, ws, B.stream);
    fill_uniform(w1, EFC, 52, ws, B.stream); fill_uniform(w2, EFC, 53, ws, B.stream);
    fill_uniform(s1, SC, 54, ws, B.stream); fill_uniform(s2, SC, 55, ws, B.stream);
    for (float* g : {dw1, dw2}) cudaCheck(cudaMemsetAsync(g, 0, EFC * sizeof(float), B.stream));
    for (float* g : {ds1, ds2}) cudaCheck(cudaMemsetAsync(g, 0, SC * sizeof(float), B.stream));
    cudaCheck(cudaMemsetAsync(drouter, 0, (size_t)c.E * c.C * sizeof(float), B.stream));
    cudaCheck(cudaMemsetAsync(load, 0, c.E * sizeof(int64_t), B.stream));
    const std::string shape = fmt("N=%ld C=%ld", N, c.C) + fmt(" E=%ld K=%ld", c.E, c.K) + fmt(" F=%ld Fs=%ld", c.F, c.Fs);
    const double fwd = 2.0 * c.C * c.E + 4.0 * c.C * ((double)c.K * c.F + c.Fs);
    Timing t = time_it([&] {
        moe_forward(out, saved, saved_int, work, u, router, bias, w1, nullptr, w2, s1, nullptr, s2, c, Bsz, T, load, aux, nullptr, B.stream);
    }, B.reps, B.stream);
    B.add_flops("moe_forward (sync for the offsets)", shape, t, N * fwd);
    t = time_it([&] {
        moe_backward(du, drouter, dw1, nullptr, dw2, ds1, nullptr, ds2, work, out, u, router, bias, w1, nullptr, w2, s1, nullptr, s2, saved,
                     saved_int, c, Bsz, T, 1.0f, B.stream);
    }, B.reps, B.stream);
    B.add_flops("moe_backward (sync for the offsets)", shape, t, N * 2 * fwd);
    for (floatX* x : {u, out, du, w1, w2, s1, s2, saved, work}) dfree(x);
    for (float* x : {dw1, dw2, ds1, ds2, router, drouter, bias}) dfree(x);
    dfree(saved_int); dfree(load); dfree(aux);
}

void print_device(Bench& B) {
    int dev = 0;
    cudaCheck(cudaGetDevice(&dev));
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, dev));
#ifdef LLMC_SIM
    printf("device: SIM (CPU) [%s]: the times measure the simulation, not a GPU; no peaks\n", prop.name);
#else
    // memoryClockRate and clockRate left cudaDeviceProp in CUDA 13: ask for the attributes
    int mem_khz = 0, bus_bits = 0, sm_khz = 0, sms = 0, major = 0, minor = 0;
    cudaCheck(cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, dev));
    cudaCheck(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev));
    cudaCheck(cudaDeviceGetAttribute(&sm_khz, cudaDevAttrClockRate, dev));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    cudaCheck(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    cudaCheck(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    B.peak_gbs = (double)mem_khz * 1e3 * 2.0 * (bus_bits / 8.0) / 1e9;
    const int flop_per_clk = (major == 9 && minor == 0) ? 4096 : (major == 8 && minor == 0) ? 2048 : 0;
    B.peak_tflops = (double)sms * sm_khz * 1e3 * flop_per_clk / 1e12;
    printf("device: %s, sm_%d%d, %d SMs, %.1f GiB\n", prop.name, major, minor, sms,
           prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    printf("peak memory bandwidth: %.0f GB/s (memory clock %d MHz x 2 x %d-bit bus / 8)\n", B.peak_gbs, mem_khz / 1000,
           bus_bits);
    if (B.peak_tflops > 0)
        printf("peak dense bf16 tensor: %.0f TFLOP/s (%d SMs x %d MHz max clock x %d FLOP/clk/SM; upper bound)\n",
               B.peak_tflops, sms, sm_khz / 1000, flop_per_clk);
    else
        printf("peak dense bf16 tensor: unknown for sm_%d%d (GEMM %% of peak not shown)\n", major, minor);
#endif
}

int run(int argc, char** argv) {
#ifdef LLMC_SIM
    bool small = true;
#else
    const char* env = getenv("BENCH_SMALL");
    bool small = env && env[0] && strcmp(env, "0") != 0;
#endif
    int reps = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--small") == 0) {
            small = true;
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
            LLMC_CHECK(reps > 0, "--reps must be a positive integer, got '%s'", argv[i]);
        } else {
            LLMC_FAIL("unknown argument '%s' (usage: bench_kernels [--small] [--reps N])", argv[i]);
        }
    }
    Bench B;
    B.reps = reps > 0 ? reps : (small ? 1 : 20);
    print_device(B);
    printf("shapes: %s; warm-up + %d timed call%s each (best = fastest call, mean = total / calls)\n",
           small ? "small (smoke test)" : "d20-like (n_embd 1280, MLP 5120, vocab 32768, 32 x 2048 tokens)", B.reps,
           B.reps == 1 ? "" : "s");
    matmul_init();

    // d20-like: 32 sequences x 2048 tokens for the row-wise kernels, 16384 rows for the GEMMs and
    // 8192 for the cross-entropy (a micro-batch's logits are N x Vp bf16: 0.5 GiB at N = 8192)
    const int rows = small ? 64 : 32 * 2048;
    const int C = small ? 256 : 1280, H = 4 * C;
    const int V = small ? 1000 : 32768;
    const int ce_rows = small ? 8 : 8192;
    const int mm_rows = small ? 64 : 16384;

    const int Bsz = small ? 2 : 32, T = small ? 32 : 2048, D = 128, NH = C / D;  // d20: 10 heads of 128
    float* scratch = dalloc<float>(std::max(reduce_scratch_floats(std::max(SMEAR_PARTIALS, ve_gate_partials(NH))),
                                            global_norm_scratch_floats()));

    bench_rmsnorm(B, rows, C);
    bench_rope(B, Bsz, T, NH, NH, D);
    bench_relu2(B, (long)rows * H);
    bench_residual(B, rows, C, scratch);
    bench_smear(B, Bsz, T, C, scratch);
    bench_ve_gate(B, rows, C, NH, D, scratch);
    bench_crossentropy(B, ce_rows, V);
    bench_embedding(B, rows, C, V);
    bench_adamw(B, (long)((V + 63) / 64 * 64) * C, "(wte)");
    bench_global_norm(B, small ? 100000 : 896533746, scratch);  // d20's parameter count (docs/model.md#scaling)
    dfree(scratch);
    // q, k, v: one of the three GEMMs the CPU does, and the GPU trainer's one packed GEMM
    // (docs/model.md#qkv); three times the first against the second is what packing gains
    bench_matmul(B, mm_rows, C, C, "(c_q alone)");
    bench_matmul(B, mm_rows, C, 3 * C, "(c_q|c_k|c_v packed)");
    bench_matmul(B, mm_rows, C, H, "(c_fc)");
    bench_matmul(B, mm_rows, H, C, "(c_proj)");
    bench_matmul(B, mm_rows, C, (V + 63) / 64 * 64, "(lm_head)");  // OC = Vp, as in the model
    // d20: 20 layers, C = 1280, Hkv = 10 (small: 2 layers of C = 64, Hkv = 2)
    if (small) bench_muon(B, 2, 64, 2);
    else bench_muon(B, 20, C, NH);
    // train_moe's d16 defaults: n_embd 1024, 8 heads of 128, blocks of 64; 32 experts, top 4, one
    // shared, F 768 (small: n_embd 64, 2 heads of 32; 4 experts, top 2, F 64)
    if (small) {
        bench_lightning(B, 2, 32, 64, 2, 32, 16);
        MoeConfig mc; mc.C = 64; mc.E = 4; mc.K = 2; mc.F = 64; mc.Fs = 64; mc.alpha = 1e-4;
        bench_moe(B, 2, 32, mc);
    } else {
        bench_lightning(B, 16, 2048, 1024, 8, 128, 64);
        MoeConfig mc; mc.C = 1024; mc.E = 32; mc.K = 4; mc.F = 768; mc.Fs = 768; mc.alpha = 1e-4;
        bench_moe(B, 16, 2048, mc);
    }

    matmul_destroy();
    cudaCheck(cudaDeviceSynchronize());
    B.print_table();
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    LLMC_MAIN_GUARD(return run(argc, argv);)
}
