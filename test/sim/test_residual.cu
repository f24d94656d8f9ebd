// test_residual.cu: llmc/cuda/residual.cuh against the CPU reference (llmc/cpu/residual.h) run in
// fp32 on the same bf16 inputs (alpha, beta are fp32 in both).
//
// Tolerances (ref = the fp32 CPU result):
//  - residual_forward, and lambdas_backward's dx = floatX(alpha G): none. Each element is one fp32
//    operation, the same one in the kernel and the CPU op, then the kernel rounds to bf16: the
//    output must equal bf16(ref) bitwise.
//  - lambdas_forward, dx0 (+=): two products and a sum, which nvcc may contract into an FMA (one
//    rounding fewer than the CPU op): |err| <= 2^-8 |ref| (bf16 rounding) + 2^-22 (|t1| + |t2|) for
//    the two terms t1, t2 (one fp32 rounding each, at most).
//  - dalpha, dbeta (fp32 sums over n; the CPU op sums in double): each thread adds its K = W *
//    ceil(packs / threads) products in order, then 5 + 5 butterfly levels in the block, <= 4
//    sequential adds and 5 + 5 levels over the partials, and the final += : by the standard
//    recursive-summation bound, |err| <= (K + 25) * 2^-24 * sum|terms| + 2^-24 |ref|; the test
//    allows 2x that.
// FP32 build (-DLLMC_FP32, floatX = float): the same checks with X_ROUND = 2^-24 for 2^-8: the
// bitwise ones stay bitwise (the same fp32 operation, no rounding after it), the others shrink to
// their fp32 terms, ~1e-7 relative, which any stray rounding to bf16 (2^-8) would fail. The fp32
// products G x of dalpha, dbeta are no longer exact: one more 2^-24 per term (K + 26).
// Sizes: multiples of 8 (16-byte path: 8 bf16 or 4 fp32 per pack), odd n (scalar path), a
// misaligned pointer, and one n with more packs than the fixed grid's threads (each thread loops,
// so the grid-stride path runs).
#include <doctest/doctest.h>
#include "llmc/cuda/residual.cuh"
#include "llmc/cpu/residual.h"
#include "test/sim/test_util.h"

using namespace testutil;

namespace {

std::vector<floatX> padded(const std::vector<float>& v, int offset) {
    std::vector<floatX> h = to_x(v);
    h.insert(h.begin(), offset, host_to_x(0.0f));
    return h;
}

std::vector<float> unpad(const std::vector<floatX>& h, int offset) {
    std::vector<float> v = to_f32(h);
    v.erase(v.begin(), v.begin() + offset);
    return v;
}

auto exact() { return [](size_t) { return 0.0; }; }

void check_residual(long n, int offset, uint64_t seed) {
    CAPTURE(n);
    CAPTURE(offset);
    llmc::Rng rng(seed);
    std::vector<float> a = x_round(randn(n, rng, 1.0)), b = x_round(randn(n, rng, 0.1));
    std::vector<float> ref(n);
    residual_forward<float>(ref.data(), a.data(), b.data(), n);
    ref = x_round(ref);
    DeviceBuffer<floatX> d_a(padded(a, offset)), d_b(padded(b, offset)), d_out(n + offset);
    d_out.poison();
    residual_forward(d_out.ptr + offset, d_a.ptr + offset, d_b.ptr + offset, n, 0);
    CHECK(count_mismatches("out", unpad(d_out.download(), offset), ref, exact()) == 0);
    // in place: out == a
    residual_forward(d_a.ptr + offset, d_a.ptr + offset, d_b.ptr + offset, n, 0);
    CHECK(count_mismatches("out (in place)", unpad(d_a.download(), offset), ref, exact()) == 0);
}

void check_lambdas(long n, int offset, uint64_t seed) {
    CAPTURE(n);
    CAPTURE(offset);
    llmc::Rng rng(seed);
    const float alpha = 1.15f - 0.0371f * (float)(seed % 7), beta = 0.2f - 0.0513f * (float)(seed % 5);
    std::vector<float> x = x_round(randn(n, rng, 1.0)), x0 = x_round(randn(n, rng, 0.7));
    std::vector<float> g = x_round(randn(n, rng, 1.0)), dx0_old = x_round(randn(n, rng, 0.3));
    const float dalpha0 = 0.25f, dbeta0 = -1.5f;  // the op accumulates

    // forward
    std::vector<float> y_ref(n);
    lambdas_forward<float>(y_ref.data(), x.data(), x0.data(), alpha, beta, n);
    DeviceBuffer<floatX> d_x(padded(x, offset)), d_x0(padded(x0, offset)), d_y(n + offset);
    DeviceBuffer<float> d_ab(std::vector<float>{alpha, beta});
    d_y.poison();
    lambdas_forward(d_y.ptr + offset, d_x.ptr + offset, d_x0.ptr + offset, d_ab.ptr, d_ab.ptr + 1, n, 0);
    CHECK(count_mismatches("out", unpad(d_y.download(), offset), y_ref, [&](size_t i) {
        return X_ROUND * std::fabs(y_ref[i]) + 0x1p-22 * (std::fabs(alpha * x[i]) + std::fabs(beta * x0[i]));
    }) == 0);

    // backward
    std::vector<float> dx_ref(n), dx0_ref = dx0_old;
    float dalpha_ref = dalpha0, dbeta_ref = dbeta0;
    lambdas_backward<float>(dx_ref.data(), dx0_ref.data(), &dalpha_ref, &dbeta_ref, g.data(), x.data(), x0.data(), alpha,
                            beta, n);
    dx_ref = x_round(dx_ref);
    double abs_a = 0.0, abs_b = 0.0;
    for (long i = 0; i < n; i++) {
        abs_a += std::fabs((double)g[i] * x[i]);
        abs_b += std::fabs((double)g[i] * x0[i]);
    }

    DeviceBuffer<floatX> d_g(padded(g, offset)), d_dx(n + offset), d_dx0(padded(dx0_old, offset));
    DeviceBuffer<float> d_grads(std::vector<float>{dalpha0, dbeta0});
    DeviceBuffer<float> d_scratch(reduce_scratch_floats(LAMBDAS_PARTIALS));
    d_dx.poison();
    d_scratch.poison();
    lambdas_backward(d_dx.ptr + offset, d_dx0.ptr + offset, d_grads.ptr, d_grads.ptr + 1, d_g.ptr + offset,
                     d_x.ptr + offset, d_x0.ptr + offset, d_ab.ptr, d_ab.ptr + 1, n, d_scratch.ptr, 0);
    const std::vector<float> dx = unpad(d_dx.download(), offset), dx0 = unpad(d_dx0.download(), offset);
    const std::vector<float> grads = d_grads.download();
    CHECK(count_mismatches("dx", dx, dx_ref, exact()) == 0);
    CHECK(count_mismatches("dx0", dx0, dx0_ref, [&](size_t i) {
        return X_ROUND * std::fabs(dx0_ref[i]) + 0x1p-22 * (std::fabs(dx0_old[i]) + std::fabs(beta * g[i]));
    }) == 0);
    const bool vec = n % XPACK == 0 && offset == 0;
    const size_t packs = vec ? n / XPACK : n;
    const double K = (vec ? (double)XPACK : 1.0) * (double)CEIL_DIV(packs, (size_t)REDUCE_MAX_BLOCKS * RESIDUAL_BLOCK) +
                     (kFP32 ? 1.0 : 0.0);  // fp32 inputs: each product rounds once
    auto sum_tol = [&](double abs_terms, double ref) { return 2.0 * ((K + 25) * 0x1p-24 * abs_terms + 0x1p-24 * std::fabs(ref)); };
    CHECK(count_mismatches("dalpha", std::vector<float>{grads[0]}, std::vector<float>{dalpha_ref},
                           [&](size_t) { return sum_tol(abs_a, dalpha_ref); }) == 0);
    CHECK(count_mismatches("dbeta", std::vector<float>{grads[1]}, std::vector<float>{dbeta_ref},
                           [&](size_t) { return sum_tol(abs_b, dbeta_ref); }) == 0);

    // deterministic: the same call from the same state gives the same bits
    DeviceBuffer<float> d_grads2(std::vector<float>{dalpha0, dbeta0});
    DeviceBuffer<floatX> d_dx0b(padded(dx0_old, offset));
    d_scratch.poison();
    lambdas_backward(d_dx.ptr + offset, d_dx0b.ptr + offset, d_grads2.ptr, d_grads2.ptr + 1, d_g.ptr + offset,
                     d_x.ptr + offset, d_x0.ptr + offset, d_ab.ptr, d_ab.ptr + 1, n, d_scratch.ptr, 0);
    CHECK(bits_equal(d_grads2.download(), grads));
    CHECK(bits_equal(unpad(d_dx0b.download(), offset), dx0));

    // in place: dx == dout (the trainer's call), same results
    DeviceBuffer<float> d_grads3(std::vector<float>{dalpha0, dbeta0});
    DeviceBuffer<floatX> d_dx0c(padded(dx0_old, offset));
    lambdas_backward(d_g.ptr + offset, d_dx0c.ptr + offset, d_grads3.ptr, d_grads3.ptr + 1, d_g.ptr + offset,
                     d_x.ptr + offset, d_x0.ptr + offset, d_ab.ptr, d_ab.ptr + 1, n, d_scratch.ptr, 0);
    CHECK(bits_equal(unpad(d_g.download(), offset), dx));
    CHECK(bits_equal(d_grads3.download(), grads));
}

}  // namespace

TEST_CASE("residual_forward equals the CPU op rounded to bf16") {
    const long sizes[] = {8, 2048 + 8, 1, 77, 3001};
    uint64_t seed = 1;
    for (long n : sizes) check_residual(n, 0, seed++);
    check_residual(64, 1, seed++);
}

TEST_CASE("lambdas forward and backward match the CPU op (vector and scalar paths)") {
    const long sizes[] = {8, 4096 + 40, 1, 77, 5003};
    uint64_t seed = 11;
    for (long n : sizes) check_lambdas(n, 0, seed++);
    check_lambdas(512, 1, seed++);
}

TEST_CASE("lambdas_backward with more packs than the fixed grid has threads") {
    // 1024 blocks x 256 threads = 262144 packs per sweep; 8 * 262144 + 8 * 1000 elements: 2 sweeps
    check_lambdas(8L * (REDUCE_MAX_BLOCKS * RESIDUAL_BLOCK + 1000), 0, 31);
}

TEST_CASE("residual launchers reject bad sizes") {
    CHECK_THROWS_AS(residual_forward(nullptr, nullptr, nullptr, -1, 0), llmc::Error);
    CHECK_THROWS_AS(lambdas_forward(nullptr, nullptr, nullptr, nullptr, nullptr, -2, 0), llmc::Error);
    CHECK_THROWS_AS(lambdas_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, -1,
                                     nullptr, 0),
                    llmc::Error);
}
