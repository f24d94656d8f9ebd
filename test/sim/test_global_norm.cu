// test_global_norm.cu: llmc/cuda/global_norm.cuh against the CPU trainer's formula, the sum of
// (double)g*g over the buffer (train_gpt.cu), computed here in long double in index order.
//
// Tolerance: 2^-23 |ref|. The kernel's products are exact in double and its sum of n <= ~2M
// positive terms is off by at most ~(n/P/256 + 20) 2^-53 relative (recursive-summation bound over
// the per-thread chains and both trees), far below one fp32 ulp; the result is rounded once to fp32
// (<= 2^-24 relative). So the result is within one fp32 rounding of the exact sum; 2x margin.
// Sizes: n % 4 == 0 (16-byte path), odd n (scalar path), a misaligned pointer, more packs than
// the fixed grid's threads (the grid-stride loop runs), n = 0; rerun bitwise.
#include <doctest/doctest.h>
#include "llmc/cuda/global_norm.cuh"
#include "test/sim/test_util.h"

using namespace testutil;

namespace {

void check(size_t n, int offset, uint64_t seed) {
    CAPTURE(n);
    CAPTURE(offset);
    llmc::Rng rng(seed);
    std::vector<float> g(n + offset, 0.0f);
    for (size_t i = 0; i < n; i++) g[offset + i] = (float)rng.normal(0.0, i % 3 == 0 ? 1e-3 : 1.0);  // mixed scales
    long double ref = 0.0L;
    for (size_t i = 0; i < n; i++) ref += (long double)g[offset + i] * g[offset + i];

    DeviceBuffer<float> d_g(g), d_out(1), d_scratch(global_norm_scratch_floats());
    d_out.poison();
    d_scratch.poison();
    global_norm_squared(d_out.ptr, d_g.ptr + offset, n, d_scratch.ptr, 0);
    const std::vector<float> out = d_out.download();
    CHECK(count_mismatches("norm^2", out, std::vector<double>{(double)ref},
                           [&](size_t) { return 0x1p-23 * (double)ref; }) == 0);
    d_out.poison();
    d_scratch.poison();
    global_norm_squared(d_out.ptr, d_g.ptr + offset, n, d_scratch.ptr, 0);
    CHECK(bits_equal(d_out.download(), out));
}

}  // namespace

TEST_CASE("global_norm_squared matches the double sum (vector and scalar paths)") {
    const size_t sizes[] = {4, 4096 + 12, 1, 7, 10001};
    uint64_t seed = 1;
    for (size_t n : sizes) check(n, 0, seed++);
    check(1024, 1, seed++);
}

TEST_CASE("global_norm_squared with more packs than the fixed grid has threads") {
    check(4 * ((size_t)REDUCE_MAX_BLOCKS * GLOBAL_NORM_BLOCK + 777), 0, 21);
}

TEST_CASE("global_norm_squared of an empty buffer is 0") {
    DeviceBuffer<float> d_out(1), d_scratch(global_norm_scratch_floats());
    d_out.poison();
    global_norm_squared(d_out.ptr, nullptr, 0, d_scratch.ptr, 0);
    CHECK(d_out.download()[0] == 0.0f);
}
