// test_smear.cu: llmc/cuda/smear.cuh against the CPU reference (llmc/cpu/smear.h) run in fp32 on the
// same bf16 inputs (w and lambda fp32 in both).
//
// Tolerances (ref = the fp32 CPU result). The gate logit a is a 24-term fp32 sum in both (in a
// different order), sigmoid uses the GPU's fast exp: g = lambda sigmoid(a) agrees to ~1e-6
// relative. The per-row dot product h = <G_t, e_{t-1}> is summed in fp32 by the kernel
// (C/32 terms per lane, then 5 butterfly levels: <= (C/32 + 5) 2^-24 ~ 1e-6 of sum|G e| for the
// test's C <= 256) and in double by the CPU op. With M_t = |lambda| s (1 - s) sum_c |G_t[c] e_{t-1}[c]|
// (a bound on |da_t| and the scale of its error):
//  - out (bf16): 2^-8 |ref| + 1e-5 |g e_{t-1}| + 2^-22 (|e_t| + |g e_{t-1}|)   (the bf16 rounding;
//    the gate's error; one fp32 rounding / a contracted FMA)
//  - de (bf16): 2^-8 |ref| + 1e-5 (|G_t| + |g_{t+1} G_{t+1}| + |w[c]| M_t for c < 24)
//  - dw[c] (fp32): 1e-5 sum_t M_t |e_t[c]| + 2^-22 |ref|   (the relative error of each da_t, plus
//    the fp32 sums over rows: a few terms per warp, 8 warps, the partials tree)
//  - dlambda (fp32): 1e-5 sum_t s_t sum_c |G_t[c] e_{t-1}[c]| + 2^-22 |ref|
// FP32 build (-DLLMC_FP32, floatX = float): unrounded inputs and X_ROUND = 2^-24 for 2^-8, so out and
// de are held to the fp32 terms (1e-5 of the gate products, against 2^-8 = 4e-3 of a bf16 rounding);
// the fp32 products in h add one 2^-24 per term, well inside the 1e-5.
// Shapes: C = 24 (the gate reads the whole row), C % 8 != 0 (scalar path), T = 1 (no gate),
// rows not a multiple of the 8 rows per block, more rows than the fixed grid's warps (8192: the
// grid-stride loop runs), a misaligned pointer.
#include <doctest/doctest.h>
#include "llmc/cuda/smear.cuh"
#include "llmc/cpu/smear.h"
#include "test/sim/test_util.h"

using namespace testutil;

namespace {

struct Shape { int B, T, C; };

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

double sigmoid(double a) { return 1.0 / (1.0 + std::exp(-a)); }

void check(const Shape& s, int offset, uint64_t seed) {
    CAPTURE(s.B); CAPTURE(s.T); CAPTURE(s.C); CAPTURE(offset);
    const int B = s.B, T = s.T, C = s.C;
    const long rows = (long)B * T;
    const size_t n = (size_t)rows * C;
    llmc::Rng rng(seed);
    std::vector<float> e = x_round(randn(n, rng, 1.0));
    std::vector<float> w = randn(SMEAR_GATE_CHANNELS, rng, 0.4);
    const float lambda = 0.7f + 0.05f * (float)(seed % 5);
    std::vector<float> g = x_round(randn(n, rng, 1.0));
    std::vector<float> dw0 = randn(SMEAR_GATE_CHANNELS, rng, 0.1);  // the op accumulates
    const float dlambda0 = -0.3f;

    // per-row gates (double) for the tolerances
    std::vector<double> gate(rows, 0.0), sg(rows, 0.0), M(rows, 0.0), habs(rows, 0.0);
    for (long r = 0; r < rows; r++) {
        double a = 0.0;
        for (int c = 0; c < SMEAR_GATE_CHANNELS; c++) a += (double)e[r * C + c] * w[c];
        sg[r] = sigmoid(a);
        gate[r] = lambda * sg[r];
        if (r % T == 0) continue;
        for (int c = 0; c < C; c++) habs[r] += std::fabs((double)g[r * C + c] * e[(r - 1) * C + c]);
        M[r] = std::fabs(lambda) * sg[r] * (1 - sg[r]) * habs[r];
    }

    // forward
    std::vector<float> out_ref(n);
    smear_forward<float>(out_ref.data(), e.data(), w.data(), lambda, B, T, C);
    DeviceBuffer<floatX> d_e(padded(e, offset)), d_out(n + offset);
    DeviceBuffer<float> d_w(w), d_lambda(std::vector<float>{lambda});
    d_out.poison();
    smear_forward(d_out.ptr + offset, d_e.ptr + offset, d_w.ptr, d_lambda.ptr, B, T, C, 0);
    const std::vector<float> out = unpad(d_out.download(), offset);
    CHECK(count_mismatches("out", out, out_ref, [&](size_t i) {
        const long r = (long)(i / C);
        const double ge = r % T == 0 ? 0.0 : std::fabs(gate[r] * e[i - C]);
        return X_ROUND * std::fabs(out_ref[i]) + 1e-5 * ge + 0x1p-22 * (std::fabs(e[i]) + ge);
    }) == 0);

    // backward
    std::vector<float> de_ref(n), dw_ref = dw0;
    float dlambda_ref = dlambda0;
    smear_backward<float>(de_ref.data(), dw_ref.data(), &dlambda_ref, g.data(), e.data(), w.data(), lambda, B, T, C);
    DeviceBuffer<floatX> d_g(padded(g, offset)), d_de(n + offset);
    DeviceBuffer<float> d_dw(dw0), d_dlambda(std::vector<float>{dlambda0});
    DeviceBuffer<float> d_scratch(reduce_scratch_floats(SMEAR_PARTIALS));
    d_de.poison();
    d_scratch.poison();
    smear_backward(d_de.ptr + offset, d_dw.ptr, d_dlambda.ptr, d_g.ptr + offset, d_e.ptr + offset, d_w.ptr,
                   d_lambda.ptr, B, T, C, d_scratch.ptr, 0);
    const std::vector<float> de = unpad(d_de.download(), offset), dw = d_dw.download(), dl = d_dlambda.download();
    CHECK(count_mismatches("de", de, de_ref, [&](size_t i) {
        const long r = (long)(i / C);
        const int c = (int)(i % C);
        double mag = std::fabs(g[i]);
        if (r % T + 1 < T) mag += std::fabs(gate[r + 1] * g[i + C]);
        if (c < SMEAR_GATE_CHANNELS) mag += std::fabs(w[c]) * M[r];
        return X_ROUND * std::fabs(de_ref[i]) + 1e-5 * mag;
    }) == 0);
    CHECK(count_mismatches("dw", dw, dw_ref, [&](size_t c) {
        double mag = 0.0;
        for (long r = 0; r < rows; r++) mag += M[r] * std::fabs(e[r * C + c]);
        return 1e-5 * mag + 0x1p-22 * std::fabs(dw_ref[c]);
    }) == 0);
    double lmag = 0.0;
    for (long r = 0; r < rows; r++) lmag += sg[r] * habs[r];
    CHECK(count_mismatches("dlambda", dl, std::vector<float>{dlambda_ref},
                           [&](size_t) { return 1e-5 * lmag + 0x1p-22 * std::fabs(dlambda_ref); }) == 0);

    // deterministic rerun from the same state
    DeviceBuffer<float> d_dw2(dw0), d_dlambda2(std::vector<float>{dlambda0});
    d_de.poison();
    d_scratch.poison();
    smear_backward(d_de.ptr + offset, d_dw2.ptr, d_dlambda2.ptr, d_g.ptr + offset, d_e.ptr + offset, d_w.ptr,
                   d_lambda.ptr, B, T, C, d_scratch.ptr, 0);
    CHECK(bits_equal(d_dw2.download(), dw));
    CHECK(bits_equal(d_dlambda2.download(), dl));
    CHECK(bits_equal(unpad(d_de.download(), offset), de));
}

}  // namespace

TEST_CASE("smear forward and backward match the CPU op (vector and scalar paths)") {
    const Shape shapes[] = {{2, 5, 24}, {3, 7, 256}, {2, 9, 77}, {1, 1, 32}, {4, 33, 40}, {2, 300, 64}, {1, 4, 25}};
    uint64_t seed = 1;
    for (const Shape& s : shapes) check(s, 0, seed++);
}

TEST_CASE("smear with a pointer not 16-byte aligned (scalar path, C % 8 == 0)") {
    check({2, 6, 48}, 1, 11);
}

TEST_CASE("smear_backward with more rows than the fixed grid's warps") {
    check({2, REDUCE_MAX_BLOCKS * 4 + 104, 24}, 0, 21);  // 2 x (4 x max + 104) rows > max blocks x 8 warps
}

TEST_CASE("smear launchers reject bad shapes and aliasing") {
    floatX* p = reinterpret_cast<floatX*>(16);
    CHECK_THROWS_AS(smear_forward(nullptr, nullptr, nullptr, nullptr, 1, 2, 23, 0), llmc::Error);
    CHECK_THROWS_AS(smear_forward(p, p, nullptr, nullptr, 1, 2, 24, 0), llmc::Error);
    CHECK_THROWS_AS(smear_backward(p, nullptr, nullptr, p, nullptr, nullptr, nullptr, 1, 2, 24, nullptr, 0), llmc::Error);
}
