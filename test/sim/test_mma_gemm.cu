// test_mma_gemm.cu: the tensor-core GEMM example (dev/cuda/mma_gemm.cu: cp.async double buffering,
// ldmatrix, mma.sync) against a double-precision CPU reference, under SIM and with nvcc on a GPU.
//
// Shapes: tile multiples that are not powers of two and not square, a single k-step (K = 32) and
// an odd number of k-steps (the double buffer ends on either stage), one block and many.
// C is poisoned (NaN) before each launch, so an element the kernel never writes fails.
// Tolerances: small integers (|a|, |b| <= 8; every partial sum an integer below 2^24) must match
// bit for bit, whatever the summation order; random normals within K * 2^-22 * S per element,
// S = sum_k |a_k b_k|: K exact products summed in fp32 err by at most K * 2^-24 * S for any order,
// x4 for tensor cores that truncate (the same bound as test_matmul.cu).
// The example is a bf16 tensor-core GEMM with explicit __nv_bfloat16 operands (not floatX): the fp32
// build (-DLLMC_FP32) compiles and runs exactly this test, unchanged.
#include <doctest/doctest.h>

#define MMA_GEMM_NO_MAIN
#include "dev/cuda/mma_gemm.cu"
#include "test/sim/test_util.h"

using namespace testutil;

namespace {

struct Shape { int M, N, K; };
const Shape kShapes[] = {{64, 64, 32}, {192, 128, 96}, {64, 320, 224}, {128, 192, 160}, {192, 128, 352}};

void check_gemm(int M, int N, int K, bool exact, uint64_t seed) {
    CAPTURE(M);
    CAPTURE(N);
    CAPTURE(K);
    CAPTURE(exact);
    llmc::Rng rng(seed);
    auto draw = [&](size_t n) {
        std::vector<float> v(n);
        for (auto& x : v) x = exact ? (float)((int)rng.below(17) - 8) : (float)rng.normal(0.0, 1.0);
        return bf16_round(v);
    };
    const std::vector<float> a = draw((size_t)M * K), b = draw((size_t)N * K);
    std::vector<double> ref((size_t)M * N), mag((size_t)M * N);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0.0, t = 0.0;
            for (int k = 0; k < K; k++) {
                const double p = (double)a[(size_t)m * K + k] * (double)b[(size_t)n * K + k];
                s += p;
                t += std::fabs(p);
            }
            ref[(size_t)m * N + n] = s;
            mag[(size_t)m * N + n] = t;
        }
    DeviceBuffer<__nv_bfloat16> dA(to_bf16(a)), dB(to_bf16(b));
    DeviceBuffer<float> dC((size_t)M * N);
    dC.poison();
    mma_gemm(dC.ptr, dA.ptr, dB.ptr, M, N, K, 0);
    const std::vector<float> c = dC.download();
    if (exact) CHECK(count_mismatches("C", c, ref, [](size_t) { return 0.0; }) == 0);
    else CHECK(count_mismatches("C", c, ref, [&](size_t i) { return K * std::ldexp(mag[i], -22); }) == 0);
}

}  // namespace

TEST_CASE("mma_gemm: small integers, bit-exact against the CPU product") {
    uint64_t seed = 100;
    for (const Shape& s : kShapes) check_gemm(s.M, s.N, s.K, true, seed++);
}

TEST_CASE("mma_gemm: random normals within K * 2^-22 * sum |a b| of a double reference") {
    uint64_t seed = 200;
    for (const Shape& s : kShapes) check_gemm(s.M, s.N, s.K, false, seed++);
}

TEST_CASE("mma_gemm: shapes that are not tile multiples are an error, not a wrong result") {
    DeviceBuffer<__nv_bfloat16> a(64 * 64), b(64 * 64);
    DeviceBuffer<float> c(64 * 64);
    CHECK_THROWS_AS(mma_gemm(c.ptr, a.ptr, b.ptr, 48, 64, 32, 0), llmc::Error);
    CHECK_THROWS_AS(mma_gemm(c.ptr, a.ptr, b.ptr, 64, 64, 40, 0), llmc::Error);
    CHECK_THROWS_AS(mma_gemm(c.ptr, a.ptr, b.ptr, 64, 0, 32, 0), llmc::Error);
    CHECK_THROWS_AS(mma_gemm(c.ptr, a.ptr + 1, b.ptr, 64, 64, 32, 0), llmc::Error);  // 2-byte offset
}
