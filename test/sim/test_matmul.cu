// test_matmul.cu: llmc/cuda/matmul.cuh (cuBLASLt on a GPU, the CPU path under SIM) against the CPU
// reference op (llmc/cpu/matmul.h) instantiated in double on the same bf16 inputs, so the
// reference error is negligible and the tolerance covers only the implementation under test.
// Shapes: odd sizes in every dimension (7 x 77 x 33), multiples of 8/16, and N < 8.
//
// Tolerances, per output element, with S = sum_k |a_k * b_k| over the K products of the element:
//  - fp32 accumulation of K exact products (bf16 x bf16 fits in fp32): error <= K * 2^-24 * S for
//    any summation order; tensor cores may align/truncate within a block of products, so the bound
//    used is K * 2^-22 * S (4x).
//  - outputs rounded to bf16 (out, dinp): plus 2^-8 * |ref| (one rounding, relative).
//  - accumulating outputs: the old value enters the fp32 sum, so S includes |old|.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include "llmc/cuda/matmul.cuh"
#include "llmc/cpu/matmul.h"
#include "test/sim/test_util.h"

using namespace testutil;

namespace {

struct Shape { int N, IC, OC; };
const Shape kShapes[] = {{7, 77, 33}, {33, 256, 64}, {16, 64, 100}, {3, 40, 8}};

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// |a|·|b|ᵀ-style magnitude sums for the tolerances (same index pattern as the op)
std::vector<double> abs_v(const std::vector<float>& v) {
    std::vector<double> r(v.size());
    for (size_t i = 0; i < v.size(); i++) r[i] = std::fabs((double)v[i]);
    return r;
}

void check_shape(int N, int IC, int OC, uint64_t seed) {
    CAPTURE(N);
    CAPTURE(IC);
    CAPTURE(OC);
    llmc::Rng rng(seed);
    const std::vector<float> x = bf16_round(randn((size_t)N * IC, rng, 1.0));
    const std::vector<float> w = bf16_round(randn((size_t)OC * IC, rng, 1.0 / std::sqrt((double)IC)));
    const std::vector<float> g = bf16_round(randn((size_t)N * OC, rng, 1.0));
    const std::vector<float> dx_old = bf16_round(randn((size_t)N * IC, rng, 0.5));
    const std::vector<float> dw_old = randn((size_t)OC * IC, rng, 0.5);

    // double references and their magnitude sums S (the same op on |values|)
    const std::vector<double> xd = to_double(x), wd = to_double(w), gd = to_double(g);
    const std::vector<double> xa = abs_v(x), wa = abs_v(w), ga = abs_v(g);
    std::vector<double> y_ref((size_t)N * OC), y_mag((size_t)N * OC);
    matmul_forward<double>(y_ref.data(), xd.data(), wd.data(), N, IC, OC);
    matmul_forward<double>(y_mag.data(), xa.data(), wa.data(), N, IC, OC);
    std::vector<double> dx_ref = to_double(dx_old), dw_ref = to_double(dw_old);
    std::vector<double> dx_mag = abs_v(dx_old), dw_mag = abs_v(dw_old);
    matmul_backward<double>(dx_ref.data(), dw_ref.data(), gd.data(), xd.data(), wd.data(), N, IC, OC);
    matmul_backward<double>(dx_mag.data(), dw_mag.data(), ga.data(), xa.data(), wa.data(), N, IC, OC);

    matmul_init();
    DeviceBuffer<floatX> d_x(to_bf16(x)), d_w(to_bf16(w)), d_g(to_bf16(g)), d_y((size_t)N * OC);
    DeviceBuffer<floatX> d_dx(to_bf16(dx_old));
    DeviceBuffer<float> d_dw(dw_old);

    d_y.poison();
    matmul_forward(d_y.ptr, d_x.ptr, d_w.ptr, N, IC, OC, 0);
    const double k_fwd = IC * std::ldexp(1.0, -22);
    CHECK(count_mismatches("out", to_f32(d_y.download()), y_ref,
                           [&](size_t i) { return BF16_ROUND * std::fabs(y_ref[i]) + k_fwd * y_mag[i]; }) == 0);

    matmul_backward(d_dx.ptr, d_dw.ptr, d_g.ptr, d_x.ptr, d_w.ptr, N, IC, OC, 0);
    const double k_dx = (OC + 1) * std::ldexp(1.0, -22), k_dw = (N + 1) * std::ldexp(1.0, -22);
    const std::vector<float> dx1 = to_f32(d_dx.download());
    const std::vector<float> dw1 = d_dw.download();
    CHECK(count_mismatches("dinp", dx1, dx_ref,
                           [&](size_t i) { return BF16_ROUND * std::fabs(dx_ref[i]) + k_dx * dx_mag[i]; }) == 0);
    CHECK(count_mismatches("dweight", dw1, dw_ref, [&](size_t i) { return k_dw * dw_mag[i]; }) == 0);

    // null outputs are skipped: dinp only leaves dweight alone, and the reverse
    matmul_backward(d_dx.ptr, nullptr, d_g.ptr, d_x.ptr, d_w.ptr, N, IC, OC, 0);
    CHECK(bits_equal(d_dw.download(), dw1));
    std::vector<double> dx_ref2(dx1.begin(), dx1.end()), dx_mag2 = abs_v(dx1);
    matmul_backward<double>(dx_ref2.data(), nullptr, gd.data(), nullptr, wd.data(), N, IC, OC);
    matmul_backward<double>(dx_mag2.data(), nullptr, ga.data(), nullptr, wa.data(), N, IC, OC);
    CHECK(count_mismatches("dinp (2nd call)", to_f32(d_dx.download()), dx_ref2,
                           [&](size_t i) { return BF16_ROUND * std::fabs(dx_ref2[i]) + k_dx * dx_mag2[i]; }) == 0);

    const std::vector<float> dx2 = to_f32(d_dx.download());
    matmul_backward(nullptr, d_dw.ptr, d_g.ptr, d_x.ptr, d_w.ptr, N, IC, OC, 0);
    CHECK(bits_equal(to_f32(d_dx.download()), dx2));
    std::vector<double> dw_ref2(dw1.begin(), dw1.end()), dw_mag2 = abs_v(dw1);
    matmul_backward<double>(nullptr, dw_ref2.data(), gd.data(), xd.data(), nullptr, N, IC, OC);
    matmul_backward<double>(nullptr, dw_mag2.data(), ga.data(), xa.data(), nullptr, N, IC, OC);
    CHECK(count_mismatches("dweight (2nd call)", d_dw.download(), dw_ref2,
                           [&](size_t i) { return k_dw * dw_mag2[i]; }) == 0);
}

}  // namespace

TEST_CASE("matmul forward and backward match the CPU reference, backward accumulates") {
    uint64_t seed = 1;
    for (const Shape& s : kShapes) check_shape(s.N, s.IC, s.OC, seed++);
}

TEST_CASE("matmul launchers reject bad shapes") {
    matmul_init();
    CHECK_THROWS_AS(matmul_forward(nullptr, nullptr, nullptr, 4, 0, 8, 0), llmc::Error);
    CHECK_THROWS_AS(matmul_backward(nullptr, nullptr, nullptr, nullptr, nullptr, -1, 8, 8, 0), llmc::Error);
}
