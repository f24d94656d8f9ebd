// test_backout.cu: llmc/cuda/backout.cuh against the CPU reference (llmc/cpu/backout.h) run in fp32
// on the same bf16 inputs (lambda fp32 in both).
//
// Tolerances (ref = the fp32 CPU result):
//  - out = x - lambda xmid and dxmid += -lambda G: one product and one sum, which nvcc may contract
//    into an FMA (one rounding fewer than the CPU op): |err| <= 2^-8 |ref| (the bf16 rounding)
//    + 2^-22 (|t1| + |t2|) for the two terms.
//  - dlambda (fp32 sum over n; the CPU op sums in double): each thread adds its K = W *
//    ceil(packs / threads) products in order, then 10 butterfly levels in the block, <= 4 sequential
//    adds and 10 levels over the partials, and the final += : |err| <= (K + 25) 2^-24 sum|G xmid|
//    + 2^-24 |ref| by the recursive-summation bound; the test allows 2x that.
// FP32 build (-DLLMC_FP32, floatX = float): X_ROUND = 2^-24 replaces 2^-8, so out and dxmid are held
// to their fp32 terms (~1e-7 relative; a stray bf16 rounding would fail), and dlambda's fp32
// products G xmid round once each (no longer exact): K + 1.
#include <doctest/doctest.h>
#include "llmc/cuda/backout.cuh"
#include "llmc/cpu/backout.h"
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

void check(long n, int offset, uint64_t seed) {
    CAPTURE(n);
    CAPTURE(offset);
    llmc::Rng rng(seed);
    const float lambda = 0.2f + 0.0173f * (float)(seed % 9);
    std::vector<float> x = x_round(randn(n, rng, 1.0)), xmid = x_round(randn(n, rng, 0.8));
    std::vector<float> g = x_round(randn(n, rng, 1.0)), dxmid_old = x_round(randn(n, rng, 0.2));
    const float dlambda0 = 0.75f;

    std::vector<float> y_ref(n);
    backout_forward<float>(y_ref.data(), x.data(), xmid.data(), lambda, n);
    DeviceBuffer<floatX> d_x(padded(x, offset)), d_xmid(padded(xmid, offset)), d_y(n + offset);
    DeviceBuffer<float> d_lambda(std::vector<float>{lambda});
    d_y.poison();
    backout_forward(d_y.ptr + offset, d_x.ptr + offset, d_xmid.ptr + offset, d_lambda.ptr, n, 0);
    const std::vector<float> y = unpad(d_y.download(), offset);
    CHECK(count_mismatches("out", y, y_ref, [&](size_t i) {
        return X_ROUND * std::fabs(y_ref[i]) + 0x1p-22 * (std::fabs(x[i]) + std::fabs(lambda * xmid[i]));
    }) == 0);
    // in place (out == x)
    backout_forward(d_x.ptr + offset, d_x.ptr + offset, d_xmid.ptr + offset, d_lambda.ptr, n, 0);
    CHECK(bits_equal(unpad(d_x.download(), offset), y));

    std::vector<float> dxmid_ref = dxmid_old;
    float dlambda_ref = dlambda0;
    backout_backward<float>(dxmid_ref.data(), &dlambda_ref, g.data(), xmid.data(), lambda, n);
    double abs_terms = 0.0;
    for (long i = 0; i < n; i++) abs_terms += std::fabs((double)g[i] * xmid[i]);

    DeviceBuffer<floatX> d_g(padded(g, offset)), d_dxmid(padded(dxmid_old, offset));
    DeviceBuffer<float> d_dlambda(std::vector<float>{dlambda0}), d_scratch(reduce_scratch_floats(BACKOUT_PARTIALS));
    d_scratch.poison();
    backout_backward(d_dxmid.ptr + offset, d_dlambda.ptr, d_g.ptr + offset, d_xmid.ptr + offset, d_lambda.ptr, n,
                     d_scratch.ptr, 0);
    const std::vector<float> dxmid = unpad(d_dxmid.download(), offset), dlambda = d_dlambda.download();
    CHECK(count_mismatches("dxmid", dxmid, dxmid_ref, [&](size_t i) {
        return X_ROUND * std::fabs(dxmid_ref[i]) + 0x1p-22 * (std::fabs(dxmid_old[i]) + std::fabs(lambda * g[i]));
    }) == 0);
    const bool vec = n % XPACK == 0 && offset == 0;
    const size_t packs = vec ? n / XPACK : n;
    const double K = (vec ? (double)XPACK : 1.0) * (double)CEIL_DIV(packs, (size_t)REDUCE_MAX_BLOCKS * BACKOUT_BLOCK) +
                     (kFP32 ? 1.0 : 0.0);  // fp32 inputs: each product rounds once
    const double tol = 2.0 * ((K + 25) * 0x1p-24 * abs_terms + 0x1p-24 * std::fabs(dlambda_ref));
    CHECK(count_mismatches("dlambda", dlambda, std::vector<float>{dlambda_ref}, [&](size_t) { return tol; }) == 0);

    // deterministic rerun from the same state
    DeviceBuffer<floatX> d_dxmid2(padded(dxmid_old, offset));
    DeviceBuffer<float> d_dlambda2(std::vector<float>{dlambda0});
    d_scratch.poison();
    backout_backward(d_dxmid2.ptr + offset, d_dlambda2.ptr, d_g.ptr + offset, d_xmid.ptr + offset, d_lambda.ptr, n,
                     d_scratch.ptr, 0);
    CHECK(bits_equal(d_dlambda2.download(), dlambda));
    CHECK(bits_equal(unpad(d_dxmid2.download(), offset), dxmid));
}

}  // namespace

TEST_CASE("backout forward and backward match the CPU op (vector and scalar paths)") {
    const long sizes[] = {8, 4096 + 24, 1, 99, 4001};
    uint64_t seed = 1;
    for (long n : sizes) check(n, 0, seed++);
    check(256, 1, seed++);
}

TEST_CASE("backout_backward with more packs than the fixed grid has threads") {
    check(8L * (REDUCE_MAX_BLOCKS * BACKOUT_BLOCK + 333), 0, 21);
}

TEST_CASE("backout launchers reject bad sizes") {
    CHECK_THROWS_AS(backout_forward(nullptr, nullptr, nullptr, nullptr, -1, 0), llmc::Error);
    CHECK_THROWS_AS(backout_backward(nullptr, nullptr, nullptr, nullptr, nullptr, -1, nullptr, 0), llmc::Error);
}
