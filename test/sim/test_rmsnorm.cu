// test_rmsnorm.cu: llmc/cuda/rmsnorm.cuh against the CPU reference (llmc/cpu/rmsnorm.h) run in
// fp32 on the same floatX inputs. Shapes cover the 16-byte path (C % 8 == 0, 4 in fp32, rows not a multiple of
// the 8 rows per block, C not a multiple of the 256 channels a warp covers per step) and the
// scalar path (C % 8 != 0, or a pointer that is not 16-byte aligned).
//
// Tolerances (per element, relative to the fp32 reference, which accumulates in double):
//  - rstd (fp32): 1e-5 relative. The kernel sums C squares in fp32: each lane ~C/32 sequential adds
//    then 5 butterfly levels, worst-case relative error (C/32 + 5)*2^-24 ~ 4e-6 for C = 2048;
//    rsqrtf adds ~2^-23 (fast-math rsqrt.approx); r inherits half the sum's relative error.
//  - out (bf16): (2^-8 + 1e-5)*|ref|: one rounding to bf16 (<= 2^-8 relative) of x*r, with r as above.
//  - dinp (bf16, +=): 2^-8*|ref| for the final rounding, plus 1e-5 of the magnitudes that enter the
//    fp32 update (|old|, |r*g|, |r*y|*mean|g*y|): the dot product <g, y> is summed in fp32 like the
//    square sum above (<= 4e-6 of sum|g*y|) and the few remaining fp32 operations add a few ulps.
// FP32 build (-DLLMC_FP32, floatX = float): unrounded inputs, fp32 outputs, X_ROUND = 2^-24 for 2^-8:
// out and dinp are held to the 1e-5 fp32 terms (a rounding to bf16, 2^-8, fails them); the products
// x*x, g*y now round once each, which adds 2^-24 per term to the sums above, inside the 1e-5.
#include <doctest/doctest.h>
#include "llmc/cuda/rmsnorm.cuh"
#include "llmc/cpu/rmsnorm.h"
#include "test/sim/test_util.h"

using namespace testutil;

namespace {

struct Shape { int N, C; };
const Shape kShapes[] = {{7, 77}, {33, 256}, {5, 8}, {3, 1000}, {2, 2050}, {9, 24}};

// offset: elements added to every device pointer (1 makes them 2-byte but not 16-byte aligned)
void check_forward(int N, int C, int offset, uint64_t seed) {
    llmc::Rng rng(seed);
    // rows with different scales; row 0 all zero (r = 1/sqrt(eps) exercises eps)
    std::vector<float> x(N * (size_t)C);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) x[(size_t)i * C + c] = i == 0 ? 0.0f : (float)rng.normal(0.0, 0.1 * (1 + i % 5));
    x = x_round(x);

    std::vector<float> y_ref(x.size()), r_ref(N);
    rmsnorm_forward<float>(y_ref.data(), r_ref.data(), x.data(), N, C);

    std::vector<floatX> xh = to_x(x);
    xh.insert(xh.begin(), offset, host_to_x(0.0f));
    DeviceBuffer<floatX> d_x(xh), d_y(x.size() + offset);
    DeviceBuffer<float> d_r(N);
    d_y.poison();
    d_r.poison();
    rmsnorm_forward(d_y.ptr + offset, d_r.ptr, d_x.ptr + offset, N, C, 0);
    std::vector<float> y = to_f32(d_y.download());
    y.erase(y.begin(), y.begin() + offset);
    std::vector<float> r = d_r.download();

    CHECK(count_mismatches("rstd", r, r_ref, [&](size_t i) { return 1e-5 * r_ref[i]; }) == 0);
    CHECK(count_mismatches("out", y, y_ref, [&](size_t i) { return (X_ROUND + 1e-5) * std::fabs(y_ref[i]); }) == 0);
    CHECK(r[0] == doctest::Approx(1.0 / std::sqrt(LLMC_RMSNORM_EPS)).epsilon(1e-5));
}

void check_backward(int N, int C, int offset, uint64_t seed) {
    llmc::Rng rng(seed);
    std::vector<float> x = x_round(randn(N * (size_t)C, rng, 0.5));
    std::vector<float> y(x.size()), r(N);
    rmsnorm_forward<float>(y.data(), r.data(), x.data(), N, C);
    y = x_round(y);  // the kernel's backward reads the stored floatX output
    std::vector<float> g = x_round(randn(x.size(), rng, 1.0));
    std::vector<float> old = x_round(randn(x.size(), rng, 0.3));

    auto pad = [&](std::vector<floatX> v) { v.insert(v.begin(), offset, host_to_x(0.0f)); return v; };
    DeviceBuffer<floatX> d_g(pad(to_x(g))), d_y(pad(to_x(y))), d_dx(pad(to_x(old)));
    DeviceBuffer<float> d_r(r);

    // per-element magnitude scale of the fp32 update, for the tolerance
    std::vector<double> mean_gy(N, 0.0);
    for (int i = 0; i < N; i++) {
        for (int c = 0; c < C; c++) mean_gy[i] += std::fabs((double)g[(size_t)i * C + c] * y[(size_t)i * C + c]);
        mean_gy[i] /= C;
    }
    auto tol_for = [&](const std::vector<float>& before, const std::vector<float>& ref) {
        return [&, before, ref](size_t k) {
            const size_t i = k / C;
            const double mag = std::fabs(before[k]) + r[i] * (std::fabs(g[k]) + std::fabs(y[k]) * mean_gy[i]);
            return X_ROUND * std::fabs(ref[k]) + 1e-5 * mag;
        };
    };

    // first call: dinp = old + update
    std::vector<float> ref1 = old;
    rmsnorm_backward<float>(ref1.data(), g.data(), y.data(), r.data(), N, C);
    rmsnorm_backward(d_dx.ptr + offset, d_g.ptr + offset, d_y.ptr + offset, d_r.ptr, N, C, 0);
    std::vector<float> got1 = to_f32(d_dx.download());
    got1.erase(got1.begin(), got1.begin() + offset);
    CHECK(count_mismatches("dinp", got1, ref1, tol_for(old, ref1)) == 0);

    // second call accumulates onto the (bf16) result of the first
    std::vector<float> ref2 = got1;
    rmsnorm_backward<float>(ref2.data(), g.data(), y.data(), r.data(), N, C);
    rmsnorm_backward(d_dx.ptr + offset, d_g.ptr + offset, d_y.ptr + offset, d_r.ptr, N, C, 0);
    std::vector<float> got2 = to_f32(d_dx.download());
    got2.erase(got2.begin(), got2.begin() + offset);
    CHECK(count_mismatches("dinp (2nd call)", got2, ref2, tol_for(got1, ref2)) == 0);
}

}  // namespace

TEST_CASE("rmsnorm_forward matches the CPU reference (vector and scalar paths)") {
    uint64_t seed = 1;
    for (const Shape& s : kShapes) {
        CAPTURE(s.N);
        CAPTURE(s.C);
        check_forward(s.N, s.C, 0, seed++);
    }
}

TEST_CASE("rmsnorm_forward with pointers not 16-byte aligned (scalar path, C % 8 == 0)") {
    check_forward(5, 64, 1, 11);
}

TEST_CASE("rmsnorm_backward accumulates into dinp like the CPU reference") {
    uint64_t seed = 21;
    for (const Shape& s : kShapes) {
        CAPTURE(s.N);
        CAPTURE(s.C);
        check_backward(s.N, s.C, 0, seed++);
    }
}

TEST_CASE("rmsnorm_backward with pointers not 16-byte aligned (scalar path, C % 8 == 0)") {
    check_backward(5, 64, 1, 31);
}

TEST_CASE("rmsnorm launchers reject bad shapes") {
    CHECK_THROWS_AS(rmsnorm_forward(nullptr, nullptr, nullptr, 4, 0, 0), llmc::Error);
    CHECK_THROWS_AS(rmsnorm_backward(nullptr, nullptr, nullptr, nullptr, -1, 8, 0), llmc::Error);
}
