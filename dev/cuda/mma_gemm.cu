// mma_gemm.cu: a tensor-core GEMM written on llmc/cuda/mma.cuh, the worked example of mma.sync,
// ldmatrix and cp.async; plus its benchmark (main, below).
//
//   C(M,N) fp32 = A(M,K) · Bᵀ,  A (M,K) row-major bf16, B (N,K) row-major bf16
// B stored (N,K) is the K x N operand stored column-major, which is what mma's .col wants and how a
// Linear weight W(out, in) is stored: this is the model's out = inp · Wᵀ with an fp32 output.
//
// Strategy. A block of 4 warps (2 x 2) computes a 64x64 tile of C, each warp a 32x32 sub-tile as
// 2 x 4 mma.m16n8k16 tiles (32 fp32 accumulators per thread). K is walked in steps of 32. Each step,
// every thread copies two 16-byte chunks of A and two of B from global to shared memory with
// cp.async.cg (no register staging; .cg skips L1, which a streamed operand does not reuse). Two
// stages: the copy of step k+1 is issued before the math of step k, then cp.async.wait_group 1 plus
// __syncthreads() make step k+1's tile visible for the next iteration, and a second barrier keeps a
// stage from being overwritten while another warp still reads it. Fragments come from ldmatrix.x4:
// one per 16x16 A tile, one per pair of n8 B tiles (B's rows are n, k contiguous: the
// non-transposed load gives b[0], b[1] directly). Shared rows are padded from 64 to 80 bytes so the
// 8 rows that one ldmatrix phase reads fall in 8 distinct 16-byte bank groups (row r starts at bank
// group 5r mod 8, distinct for r = 0..7): no bank conflicts.
//
// Limits (checked by mma_gemm): M and N positive multiples of 64, K of 32, all pointers 16-byte
// aligned. No bounds handling, epilogue fusion, split-K or block swizzle: the example to read, not
// the fastest GEMM. Compiled with nvcc -Xptxas -v for sm_90: 128 threads, no spills.
//
// Benchmark (unless MMA_GEMM_NO_MAIN is defined, as test/sim/test_mma_gemm.cu does):
//   build/gpu/mma_gemm [--small] [--reps N]
// times mma_gemm and cuBLASLt (the same bf16 operands, fp32 output, fp32 compute; matmul_cublaslt
// of llmc/cuda/matmul.cuh, whose plan and heuristic query are made once per shape, in the warm-up) at a
// square shape and the d20 MLP shapes (best of --reps calls, default 20), prints TFLOP/s for both, mma_gemm as a fraction of cuBLASLt and of the
// dense bf16 tensor peak (SMs x max clock x 4096 FLOP/clk/SM on sm_90, 2048 on sm_80; the boost
// clock makes it an upper bound), and checks sampled rows of both against a double-precision host
// reference (tolerance K * 2^-22 * sum_k |a_k b_k| per element, as test_mma_gemm): exit status 1
// on a mismatch. Under SIM (build/sim/mma_gemm) it runs tiny shapes as a smoke test; the times
// measure the simulation.
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/mma.cuh"

constexpr int MMA_GEMM_BM = 64, MMA_GEMM_BN = 64, MMA_GEMM_BK = 32;
constexpr int MMA_GEMM_LD = MMA_GEMM_BK + 8;  // shared row stride in elements: 80 bytes (see above)
constexpr int MMA_GEMM_THREADS = 128;
constexpr int MMA_GEMM_STAGE = (MMA_GEMM_BM + MMA_GEMM_BN) * MMA_GEMM_LD;  // elements per stage (A then B)
constexpr size_t MMA_GEMM_SMEM = 2 * MMA_GEMM_STAGE * sizeof(__nv_bfloat16);       // 20 KiB

// Issue the copies of k-step kt into stage `st` and commit them as one group. Each of the 64 rows
// of the A and B tiles is 4 chunks of 16 bytes; 128 threads take 2 chunks of each.
__device__ __forceinline__ void mma_gemm_load_stage(__nv_bfloat16* st, const __nv_bfloat16* A, const __nv_bfloat16* B, int K, int kt) {
    __nv_bfloat16* as = st;
    __nv_bfloat16* bs = st + MMA_GEMM_BM * MMA_GEMM_LD;
    for (int i = 0; i < 2; i++) {
        const int c = threadIdx.x + i * MMA_GEMM_THREADS;
        const int r = c / 4, col = (c % 4) * 8;
        cp_async_16_cg(&as[r * MMA_GEMM_LD + col], A + (size_t)r * K + kt * MMA_GEMM_BK + col);
        cp_async_16_cg(&bs[r * MMA_GEMM_LD + col], B + (size_t)r * K + kt * MMA_GEMM_BK + col);
    }
    cp_async_commit();
}

__global__ void __launch_bounds__(MMA_GEMM_THREADS)
mma_gemm_kernel(float* C, const __nv_bfloat16* A, const __nv_bfloat16* B, int M, int N, int K) {
    DYNAMIC_SMEM(__nv_bfloat16, smem);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;  // the warp's 32x32 sub-tile in the block tile
    const int m0 = blockIdx.y * MMA_GEMM_BM, n0 = blockIdx.x * MMA_GEMM_BN;
    A += (size_t)m0 * K;
    B += (size_t)n0 * K;
    const int KT = K / MMA_GEMM_BK;

    float acc[2][4][4];
    for (int mi = 0; mi < 2; mi++)
        for (int ni = 0; ni < 4; ni++)
            for (int i = 0; i < 4; i++) acc[mi][ni][i] = 0.0f;

    mma_gemm_load_stage(smem, A, B, K, 0);
    for (int kt = 0; kt < KT; kt++) {
        if (kt + 1 < KT) {
            mma_gemm_load_stage(smem + ((kt + 1) & 1) * MMA_GEMM_STAGE, A, B, K, kt + 1);
            cp_async_wait<1>();  // step kt's group has landed (kt+1's may still be in flight)
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // every thread's copies of step kt are visible to every warp
        const __nv_bfloat16* as = smem + (kt & 1) * MMA_GEMM_STAGE;
        const __nv_bfloat16* bs = as + MMA_GEMM_BM * MMA_GEMM_LD;
        for (int kk = 0; kk < MMA_GEMM_BK; kk += 16) {
            uint32_t af[2][4], bf[4][2];
            // A 16x16 tile: lanes 0-15 point at rows 0-15, column kk; lanes 16-31 at the same rows,
            // column kk + 8 -> matrices (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15)
            // = a[0], a[1], a[2], a[3]
            for (int mi = 0; mi < 2; mi++)
                ldmatrix_x4(af[mi], &as[(wm + mi * 16 + lane % 16) * MMA_GEMM_LD + kk + (lane / 16) * 8]);
            // two n8 tiles of B per x4: matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7),
            // (n 8-15, k 8-15) = b[0], b[1] of the first tile, b[0], b[1] of the second
            for (int nj = 0; nj < 2; nj++) {
                uint32_t r[4];
                ldmatrix_x4(r, &bs[(wn + nj * 16 + lane % 8 + (lane / 16) * 8) * MMA_GEMM_LD + kk + ((lane / 8) % 2) * 8]);
                bf[2 * nj][0] = r[0];
                bf[2 * nj][1] = r[1];
                bf[2 * nj + 1][0] = r[2];
                bf[2 * nj + 1][1] = r[3];
            }
            for (int mi = 0; mi < 2; mi++)
                for (int ni = 0; ni < 4; ni++) mma_m16n8k16_bf16(acc[mi][ni], af[mi], bf[ni]);
        }
        __syncthreads();  // all warps are done with this stage before the next iteration refills it
    }

    // C fragment: c[0], c[1] at (row g, cols 2t, 2t+1), c[2], c[3] at row g + 8
    const int g = lane >> 2, t = lane & 3;
    for (int mi = 0; mi < 2; mi++)
        for (int ni = 0; ni < 4; ni++) {
            const int row = m0 + wm + mi * 16 + g, col = n0 + wn + ni * 8 + 2 * t;
            *reinterpret_cast<float2*>(&C[(size_t)row * N + col]) = make_float2(acc[mi][ni][0], acc[mi][ni][1]);
            *reinterpret_cast<float2*>(&C[(size_t)(row + 8) * N + col]) = make_float2(acc[mi][ni][2], acc[mi][ni][3]);
        }
}

// C(M,N) = A(M,K) · B(N,K)ᵀ, fp32 out (overwrite)
inline void mma_gemm(float* C, const __nv_bfloat16* A, const __nv_bfloat16* B, int M, int N, int K, cudaStream_t stream) {
    LLMC_CHECK(M > 0 && N > 0 && K > 0 && M % MMA_GEMM_BM == 0 && N % MMA_GEMM_BN == 0 && K % MMA_GEMM_BK == 0,
               "mma_gemm: M=%d N=%d K=%d: M and N must be positive multiples of %d, K of %d", M, N, K, MMA_GEMM_BM,
               MMA_GEMM_BK);
    LLMC_CHECK((((uintptr_t)C | (uintptr_t)A | (uintptr_t)B) & 15) == 0, "mma_gemm: C, A and B must be 16-byte aligned");
    LLMC_CHECK(M / MMA_GEMM_BM <= 65535, "mma_gemm: M=%d is above %d", M, 65535 * MMA_GEMM_BM);
    const dim3 grid(N / MMA_GEMM_BN, M / MMA_GEMM_BM);
    LAUNCH(mma_gemm_kernel, grid, MMA_GEMM_THREADS, MMA_GEMM_SMEM, stream, C, A, B, M, N, K);
}

#ifndef MMA_GEMM_NO_MAIN
#if LLMC_FLOATX_FP32
#error "mma_gemm's benchmark compares against the bf16 cuBLASLt path (matmul_batched on floatX): build it without -DLLMC_FP32"
#endif
// ------------------------------------------------------------------------------------------------
// benchmark

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "llmc/cuda/matmul.cuh"
#include "llmc/utils.h"
#include "dev/cuda/bench_timing.h"

namespace {

// uniform in [-1, 1) from a hash of (seed, i), rounded to bf16
std::vector<__nv_bfloat16> random_bf16(size_t n, uint64_t seed) {
    std::vector<__nv_bfloat16> v(n);
    for (size_t i = 0; i < n; i++) {
        uint64_t z = i + seed * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        v[i] = __float2bfloat16((float)(z >> 40) * (2.0f / 16777216.0f) - 1.0f);
    }
    return v;
}


// rows of C checked against a double reference: 16 spread over M; returns the worst |err| / tol
double check_rows(const std::vector<float>& C, const std::vector<__nv_bfloat16>& A, const std::vector<__nv_bfloat16>& B, int M, int N, int K) {
    double worst = 0.0;
    for (int s = 0; s < 16; s++) {
        const int m = (int)((long)s * (M - 1) / 15);
        for (int n = 0; n < N; n++) {
            double ref = 0.0, mag = 0.0;
            for (int k = 0; k < K; k++) {
                const double p = (double)__bfloat162float(A[(size_t)m * K + k]) * (double)__bfloat162float(B[(size_t)n * K + k]);
                ref += p;
                mag += std::fabs(p);
            }
            const double tol = K * std::ldexp(mag, -22), err = std::fabs((double)C[(size_t)m * N + n] - ref);
            worst = std::max(worst, std::isnan(err) ? 1e30 : err / std::max(tol, 1e-30));
        }
    }
    return worst;
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
            LLMC_FAIL("unknown argument '%s' (usage: mma_gemm [--small] [--reps N])", argv[i]);
        }
    }
    if (reps < 0) reps = small ? 1 : 20;
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    const double peak = peak_tflops();
#ifdef LLMC_SIM
    printf("device: SIM (CPU) [%s]: the times measure the simulation, not a GPU; no cuBLASLt, no peak\n", prop.name);
#else
    printf("device: %s; dense bf16 tensor peak %.0f TFLOP/s (upper bound)\n", prop.name, peak);
#endif
    struct Shape { int M, N, K; const char* what; };
    std::vector<Shape> shapes;
    if (small) shapes = {{128, 128, 64, "square"}, {64, 192, 96, "wide"}};
    else shapes = {{4096, 4096, 4096, "square"}, {16384, 5120, 1280, "d20 c_fc"}, {16384, 1280, 5120, "d20 c_proj"}};
    matmul_init();
    cudaStream_t stream = 0;
    bool ok = true;
    printf("\n| shape (M x N x K) | mma_gemm ms | TFLOP/s | cuBLASLt ms | TFLOP/s | mma_gemm / cuBLASLt | %% of peak | check (worst err/tol) |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|---|\n");
    for (const Shape& s : shapes) {
        const size_t nA = (size_t)s.M * s.K, nB = (size_t)s.N * s.K, nC = (size_t)s.M * s.N;
        const std::vector<__nv_bfloat16> hA = random_bf16(nA, 1), hB = random_bf16(nB, 2);
        __nv_bfloat16 *dA = nullptr, *dB = nullptr;
        float *dC = nullptr, *dC2 = nullptr;
        cudaCheck(cudaMalloc((void**)&dA, nA * sizeof(__nv_bfloat16)));
        cudaCheck(cudaMalloc((void**)&dB, nB * sizeof(__nv_bfloat16)));
        cudaCheck(cudaMalloc((void**)&dC, nC * sizeof(float)));
        cudaCheck(cudaMalloc((void**)&dC2, nC * sizeof(float)));
        cudaCheck(cudaMemcpy(dA, hA.data(), nA * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(dB, hB.data(), nB * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
        const double flops = 2.0 * s.M * s.N * s.K;
        std::vector<float> hC(nC);

        const double t_mma = time_it([&] { mma_gemm(dC, dA, dB, s.M, s.N, s.K, stream); }, reps, stream).best_ms;
        cudaCheck(cudaMemcpy(hC.data(), dC, nC * sizeof(float), cudaMemcpyDeviceToHost));
        const double err_mma = check_rows(hC, hA, hB, s.M, s.N, s.K);
        double t_lt = -1.0, err_lt = 0.0;
#ifndef LLMC_SIM
        // row-major C (M,N) = A (M,K) · Bᵀ, B stored (N,K): cuBLASLt through matmul_batched (overwrite)
        t_lt = time_it([&] { matmul_batched<float>("cuBLASLt", dC2, nullptr, dA, false, dB, true, s.M, s.N, s.K, 1.0f, 0.0f, 1, 0, 0, 0, stream); }, reps, stream).best_ms;
        cudaCheck(cudaMemcpy(hC.data(), dC2, nC * sizeof(float), cudaMemcpyDeviceToHost));
        err_lt = check_rows(hC, hA, hB, s.M, s.N, s.K);
#endif
        const bool good = err_mma <= 1.0 && err_lt <= 1.0;
        ok = ok && good;
        const double tf_mma = flops / (t_mma * 1e-3) / 1e12;
        char lt[96] = "- | - | -", pct[16] = "-";
        if (t_lt > 0) {
            const double tf_lt = flops / (t_lt * 1e-3) / 1e12;
            snprintf(lt, sizeof lt, "%.4f | %.1f | %.0f%%", t_lt, tf_lt, 100.0 * tf_mma / tf_lt);
        }
        if (peak > 0) snprintf(pct, sizeof pct, "%.0f%%", 100.0 * tf_mma / peak);
        char errs[64];
        if (t_lt > 0) snprintf(errs, sizeof errs, "mma %.3f, cuBLASLt %.3f", err_mma, err_lt);
        else snprintf(errs, sizeof errs, "mma %.3f", err_mma);
        printf("| %d x %d x %d (%s) | %.4f | %.1f | %s | %s | %s (%s) |\n", s.M, s.N, s.K, s.what, t_mma, tf_mma, lt, pct,
               good ? "ok" : "MISMATCH", errs);
        cudaCheck(cudaFree(dA));
        cudaCheck(cudaFree(dB));
        cudaCheck(cudaFree(dC));
        cudaCheck(cudaFree(dC2));
    }
    matmul_destroy();
    if (!ok) fprintf(stderr, "error: mma_gemm or cuBLASLt is outside K * 2^-22 * sum|a b| of the double reference (see the table)\n");
    return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    LLMC_MAIN_GUARD(return run(argc, argv);)
}
#endif  // MMA_GEMM_NO_MAIN
