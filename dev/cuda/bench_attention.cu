// bench_attention.cu: the flash-attention kernels of llmc/cuda/attention.cuh: a correctness check
// against the CPU op (llmc/cpu/attention.h, in double) on a small shape, then the time and TFLOP/s
// of the forward and of forward + backward at long-context shapes and at a d20-like shape with
// sliding windows.
//
// FLOPs. A visible (query, key) pair costs 4 D FLOPs in the forward (QKᵀ and PV, 2 D each) and
// 2.5x that in the backward (the conventional count of FlashAttention papers: the recomputed S,
// dP, dV, dQ, dK); fwd+bwd counts 3.5x the forward. This backward computes S and dP twice (once
// per pass), 3.5x the forward by itself, so the tensor cores do more work than the rate credits. Pairs are counted exactly: sum_i (min(i, w) + 1) per (b, h), about T²/2 when
// causal (the 4 B H T² D / 2 of the usual formula). TFLOP/s = FLOPs / best time. The peak (dense
// bf16 tensor, SMs x max clock x 4096 FLOP/clk/SM on sm_90, 2048 on sm_80) is an upper bound, as in
// mma_gemm and bench_kernels.
//
// Timing (dev/cuda/bench_timing.h): one warm-up, then `reps` calls with an event after each; best = the
// fastest interval. "fwd+bwd" times attention_forward followed by attention_backward.
// cuDNN (build/gpu/bench_attention_cudnn, make USE_CUDNN=1; README.md#cudnn): the same check and, under
// each shape's row, a "cuDNN" row timing llmc/cuda/attention_cudnn.cuh on the same inputs in the same
// run (its plan is built in the warm-up call, outside the timing; its backward needs no scratch). The
// FLOP counts are the same, so the TFLOP/s compare directly. A shape cuDNN has no engine for says so.
//
// Shapes: B 4, H 32 (= Hkv), D 128, causal, T = 2K .. 32K (--max-t caps T); d20-like: B 16, T 2048,
// H 10 (= Hkv), D 128, window 512 (nanochat's short window at T 2048) and causal (its long layers).
// Under SIM (build/sim/bench_attention) tiny shapes only: a smoke test of this program, the times
// measure the simulation.
//
//   build/gpu/bench_attention [--small] [--reps N] [--max-t T]
// Exit status 1 if the correctness check fails.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "llmc/cuda/attention.cuh"
#include "llmc/cpu/attention.h"
#include "llmc/rng.h"
#include "llmc/utils.h"
#include "dev/cuda/bench_timing.h"
#ifdef LLMC_CUDNN
#include "llmc/cuda/attention_cudnn.cuh"
#endif

namespace {

template <typename T>
T* dalloc(size_t n) {
    T* p = nullptr;
    cudaCheck(cudaMalloc((void**)&p, std::max<size_t>(n, 1) * sizeof(T)));
    return p;
}

// uniform in [-a, a) from a hash of (seed, i), rounded to bf16, on the host
std::vector<floatX> random_bf16(size_t n, uint64_t seed, float a) {
    std::vector<floatX> v(n);
    for (size_t i = 0; i < n; i++) {
        uint64_t z = i + seed * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        v[i] = __float2bfloat16(((float)(z >> 40) * (2.0f / 16777216.0f) - 1.0f) * a);
    }
    return v;
}


double peak_tflops() {
#ifdef LLMC_SIM
    return 0.0;
#else
    int dev = 0, sm_khz = 0, sms = 0, major = 0, minor = 0;
    cudaCheck(cudaGetDevice(&dev));
    cudaCheck(cudaDeviceGetAttribute(&sm_khz, cudaDevAttrClockRate, dev));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    cudaCheck(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    cudaCheck(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    const int flop_per_clk = (major == 9 && minor == 0) ? 4096 : (major == 8 && minor == 0) ? 2048 : 0;
    return (double)sms * sm_khz * 1e3 * flop_per_clk / 1e12;
#endif
}

// visible (query, key) pairs of one (b, h): sum_i min(i, w) + 1
double visible_pairs(int T, int window) {
    const double w = std::min(window, T - 1);
    // i = 0..w-1 see i+1 keys, i = w..T-1 see w+1
    return w * (w + 1) / 2 + (T - w) * (w + 1);
}

struct Shape { int B, T, H, Hkv, D, window; const char* what; };

// Forward and backward of one small shape against the CPU op in double, through our kernels or
// (use_cudnn) cuDNN's; returns the worst |err| / (2^-6 max|ref|) over all five outputs, or -1 when
// cuDNN has no engine for the shape. The bound is a sanity gate (bf16 P, dS and outputs err by ~2^-8
// of their magnitudes); test/sim/test_attention.cu holds the per-element tolerances.
double check_small(const Shape& s, bool use_cudnn) {
    const size_t nq = (size_t)s.B * s.T * s.H * s.D, nk = (size_t)s.B * s.T * s.Hkv * s.D, nl = (size_t)s.B * s.H * s.T;
    const std::vector<floatX> hq = random_bf16(nq, 1, 2.0f), hk = random_bf16(nk, 2, 1.5f), hv = random_bf16(nk, 3, 1.5f),
                              hg = random_bf16(nq, 4, 1.0f);
    auto dbl = [](const std::vector<floatX>& v) {
        std::vector<double> r(v.size());
        for (size_t i = 0; i < v.size(); i++) r[i] = (double)__bfloat162float(v[i]);
        return r;
    };
    const std::vector<double> q = dbl(hq), k = dbl(hk), v = dbl(hv), g = dbl(hg);
    std::vector<double> o(nq), lse(nl), dq(nq), dk(nk), dv(nk);
    attention_forward<double>(o.data(), lse.data(), q.data(), k.data(), v.data(), s.B, s.T, s.H, s.Hkv, s.D, s.window);

    floatX *dQ = dalloc<floatX>(nq), *dK = dalloc<floatX>(nk), *dV = dalloc<floatX>(nk), *dG = dalloc<floatX>(nq), *dO = dalloc<floatX>(nq);
    floatX *gQ = dalloc<floatX>(nq), *gK = dalloc<floatX>(nk), *gV = dalloc<floatX>(nk);
    float *dL = dalloc<float>(nl), *scratch = dalloc<float>(attention_backward_scratch_floats(s.B, s.H, s.T));
    cudaCheck(cudaMemcpy(dQ, hq.data(), nq * sizeof(floatX), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(dK, hk.data(), nk * sizeof(floatX), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(dV, hv.data(), nk * sizeof(floatX), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(dG, hg.data(), nq * sizeof(floatX), cudaMemcpyHostToDevice));
    bool ran = true;
    if (use_cudnn) {
#ifdef LLMC_CUDNN
        ran = attention_forward_cudnn(dO, dL, dQ, dK, dV, s.B, s.T, s.H, s.Hkv, s.D, s.window, 0) &&
              attention_backward_cudnn(gQ, gK, gV, dG, dO, dL, dQ, dK, dV, s.B, s.T, s.H, s.Hkv, s.D, s.window, 0);
#else
        ran = false;
#endif
    } else {
        attention_forward(dO, dL, dQ, dK, dV, s.B, s.T, s.H, s.Hkv, s.D, s.window, 0);
        attention_backward(gQ, gK, gV, dG, dO, dL, dQ, dK, dV, s.B, s.T, s.H, s.Hkv, s.D, s.window, scratch, 0);
    }
    cudaCheck(cudaDeviceSynchronize());
    if (!ran) {
        for (void* p : {(void*)dQ, (void*)dK, (void*)dV, (void*)dG, (void*)dO, (void*)gQ, (void*)gK, (void*)gV, (void*)dL, (void*)scratch})
            cudaCheck(cudaFree(p));
        return -1.0;
    }
    std::vector<floatX> ho(nq), hgq(nq), hgk(nk), hgv(nk);
    std::vector<float> hl(nl);
    cudaCheck(cudaMemcpy(ho.data(), dO, nq * sizeof(floatX), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(hl.data(), dL, nl * sizeof(float), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(hgq.data(), gQ, nq * sizeof(floatX), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(hgk.data(), gK, nk * sizeof(floatX), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(hgv.data(), gV, nk * sizeof(floatX), cudaMemcpyDeviceToHost));
    // the reference backward gets the kernel's own O and lse (what the model's backward sees)
    const std::vector<double> od = dbl(ho), ld(hl.begin(), hl.end());
    attention_backward<double>(dq.data(), dk.data(), dv.data(), g.data(), od.data(), ld.data(), q.data(), k.data(), v.data(), s.B, s.T, s.H,
                               s.Hkv, s.D, s.window);
    double worst = 0.0;
    auto cmp = [&](const char* what, const std::vector<double>& ref, auto get, size_t n) {
        double mx = 0.0, err = 0.0;
        for (size_t i = 0; i < n; i++) mx = std::max(mx, std::fabs(ref[i]));
        for (size_t i = 0; i < n; i++) {
            const double e = std::fabs(get(i) - ref[i]);
            err = std::max(err, std::isnan(e) ? 1e30 : e);
        }
        const double r = err / (std::ldexp(mx, -6) + 1e-30);
        printf("  %-4s max |err| %.3g, max |ref| %.3g: %.3f of the bound\n", what, err, mx, r);
        worst = std::max(worst, r);
    };
    cmp("O", o, [&](size_t i) { return (double)__bfloat162float(ho[i]); }, nq);
    cmp("lse", lse, [&](size_t i) { return (double)hl[i]; }, nl);
    cmp("dq", dq, [&](size_t i) { return (double)__bfloat162float(hgq[i]); }, nq);
    cmp("dk", dk, [&](size_t i) { return (double)__bfloat162float(hgk[i]); }, nk);
    cmp("dv", dv, [&](size_t i) { return (double)__bfloat162float(hgv[i]); }, nk);
    for (void* p : {(void*)dQ, (void*)dK, (void*)dV, (void*)dG, (void*)dO, (void*)gQ, (void*)gK, (void*)gV, (void*)dL, (void*)scratch})
        cudaCheck(cudaFree(p));
    return worst;
}

int run(int argc, char** argv) {
#ifdef LLMC_SIM
    bool small = true;
#else
    const char* env = getenv("BENCH_SMALL");
    bool small = env && env[0] && strcmp(env, "0") != 0;
#endif
    int reps = -1, max_t = 32768;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--small") == 0) {
            small = true;
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
            LLMC_CHECK(reps > 0, "--reps must be a positive integer, got '%s'", argv[i]);
        } else if (strcmp(argv[i], "--max-t") == 0 && i + 1 < argc) {
            max_t = atoi(argv[++i]);
            LLMC_CHECK(max_t > 0, "--max-t must be a positive integer, got '%s'", argv[i]);
        } else {
            LLMC_FAIL("unknown argument '%s' (usage: bench_attention [--small] [--reps N] [--max-t T])", argv[i]);
        }
    }
    if (reps < 0) reps = small ? 1 : 10;
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    const double peak = peak_tflops();
#ifdef LLMC_SIM
    printf("device: SIM (CPU) [%s]: the times measure the simulation, not a GPU; no peak\n", prop.name);
#else
    printf("device: %s; dense bf16 tensor peak %.0f TFLOP/s (upper bound)\n", prop.name, peak);
#endif

    const Shape check = {2, 150, 4, 2, 128, 40, "check"};
    printf("correctness: B=%d T=%d H=%d Hkv=%d D=%d window=%d against the CPU op in double (bound 2^-6 max|ref|)\n", check.B, check.T,
           check.H, check.Hkv, check.D, check.window);
    const double worst = check_small(check, false);
    bool ok = worst <= 1.0;
    printf("correctness: %s\n", ok ? "ok" : "MISMATCH");
#ifdef LLMC_CUDNN
    printf("correctness of the cuDNN path, same shape and bound:\n");
    const double worst_cudnn = check_small(check, true);
    const bool ok_cudnn = worst_cudnn >= 0.0 && worst_cudnn <= 1.0;
    printf("correctness (cuDNN): %s\n", worst_cudnn < 0.0 ? "NO ENGINE" : ok_cudnn ? "ok" : "MISMATCH");
    ok = ok && ok_cudnn;
#endif

    std::vector<Shape> shapes;
    if (small) {
        shapes = {{1, 128, 2, 2, 128, INT_MAX, "causal"}, {1, 192, 2, 1, 64, 64, "window 64, GQA 2"}};
    } else {
        for (int T = 2048; T <= std::min(max_t, 32768); T *= 2) shapes.push_back({4, T, 32, 32, 128, INT_MAX, "causal"});
        shapes.push_back({16, 2048, 10, 10, 128, 512, "d20 short window"});
        shapes.push_back({16, 2048, 10, 10, 128, INT_MAX, "d20 long (causal)"});
    }
    printf("\n| shape (B, T, H/Hkv, D) | window | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | fwd %% of peak |\n");
    printf("|---|---|---:|---:|---:|---:|---:|\n");
    cudaStream_t stream = 0;
    for (const Shape& s : shapes) {
        const size_t nq = (size_t)s.B * s.T * s.H * s.D, nk = (size_t)s.B * s.T * s.Hkv * s.D, nl = (size_t)s.B * s.H * s.T;
        floatX *q = dalloc<floatX>(nq), *k = dalloc<floatX>(nk), *v = dalloc<floatX>(nk), *o = dalloc<floatX>(nq), *g = dalloc<floatX>(nq);
        floatX *gq = dalloc<floatX>(nq), *gk = dalloc<floatX>(nk), *gv = dalloc<floatX>(nk);
        float *lse = dalloc<float>(nl), *scratch = dalloc<float>(attention_backward_scratch_floats(s.B, s.H, s.T));
        {
            const std::vector<floatX> hq = random_bf16(nq, 11, 2.0f), hk = random_bf16(nk, 12, 1.5f), hv = random_bf16(nk, 13, 1.5f);
            cudaCheck(cudaMemcpy(q, hq.data(), nq * sizeof(floatX), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(k, hk.data(), nk * sizeof(floatX), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(v, hv.data(), nk * sizeof(floatX), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(g, hq.data(), nq * sizeof(floatX), cudaMemcpyHostToDevice));  // any values will do
        }
        const double flops_fwd = 4.0 * s.D * visible_pairs(s.T, s.window) * s.B * s.H, flops_all = 3.5 * flops_fwd;
        const double t_fwd = time_it([&] { attention_forward(o, lse, q, k, v, s.B, s.T, s.H, s.Hkv, s.D, s.window, stream); }, reps, stream).best_ms;
        const double t_all = time_it(
            [&] {
                attention_forward(o, lse, q, k, v, s.B, s.T, s.H, s.Hkv, s.D, s.window, stream);
                attention_backward(gq, gk, gv, g, o, lse, q, k, v, s.B, s.T, s.H, s.Hkv, s.D, s.window, scratch, stream);
            },
            reps, stream).best_ms;
        const double tf_fwd = flops_fwd / (t_fwd * 1e-3) / 1e12, tf_all = flops_all / (t_all * 1e-3) / 1e12;
        char pct[16] = "-", win[16] = "none";
        if (peak > 0) snprintf(pct, sizeof pct, "%.0f%%", 100.0 * tf_fwd / peak);
        if (s.window < s.T - 1) snprintf(win, sizeof win, "%d", s.window);
        printf("| %d, %d, %d/%d, %d (%s) | %s | %.3f | %.1f | %.3f | %.1f | %s |\n", s.B, s.T, s.H, s.Hkv, s.D, s.what, win, t_fwd, tf_fwd, t_all,
               tf_all, pct);
#ifdef LLMC_CUDNN
        // the same inputs through cuDNN; its plans (and their buffers) are freed after the shape
        if (!attention_forward_cudnn(o, lse, q, k, v, s.B, s.T, s.H, s.Hkv, s.D, s.window, stream)) {
            printf("| %d, %d, %d/%d, %d (%s) cuDNN | %s | no engine | | | | |\n", s.B, s.T, s.H, s.Hkv, s.D, s.what, win);
        } else {
            const double c_fwd =
                time_it([&] { attention_forward_cudnn(o, lse, q, k, v, s.B, s.T, s.H, s.Hkv, s.D, s.window, stream); }, reps, stream).best_ms;
            bool bwd_ok = true;
            const double c_all = time_it(
                [&] {
                    attention_forward_cudnn(o, lse, q, k, v, s.B, s.T, s.H, s.Hkv, s.D, s.window, stream);
                    bwd_ok = attention_backward_cudnn(gq, gk, gv, g, o, lse, q, k, v, s.B, s.T, s.H, s.Hkv, s.D, s.window, stream) && bwd_ok;
                },
                reps, stream).best_ms;
            const double cf = flops_fwd / (c_fwd * 1e-3) / 1e12, ca = flops_all / (c_all * 1e-3) / 1e12;
            char cpct[16] = "-", call_ms[32] = "no engine", call_tf[32] = "";
            if (peak > 0) snprintf(cpct, sizeof cpct, "%.0f%%", 100.0 * cf / peak);
            if (bwd_ok) {
                snprintf(call_ms, sizeof call_ms, "%.3f", c_all);
                snprintf(call_tf, sizeof call_tf, "%.1f", ca);
            }
            printf("| %d, %d, %d/%d, %d (%s) cuDNN | %s | %.3f | %.1f | %s | %s | %s |\n", s.B, s.T, s.H, s.Hkv, s.D, s.what, win, c_fwd, cf,
                   call_ms, call_tf, cpct);
        }
        attention_cudnn_destroy();
#endif
        for (void* p : {(void*)q, (void*)k, (void*)v, (void*)o, (void*)g, (void*)gq, (void*)gk, (void*)gv, (void*)lse, (void*)scratch})
            cudaCheck(cudaFree(p));
    }
    if (!ok) fprintf(stderr, "error: attention differs from the CPU op by more than 2^-6 max|ref| (see the check above)\n");
    return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    LLMC_MAIN_GUARD(return run(argc, argv);)
}
