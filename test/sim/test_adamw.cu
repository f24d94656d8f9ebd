// test_adamw.cu: llmc/cuda/adamw.cuh against the CPU closed form llmc::adamw_update (llmc/adamw.h).
//
// Each step starts the CPU op from the kernel's previous state (param, m, v downloaded), so every
// comparison measures one step's error instead of a drift. Per element, with the step's inputs
// (p, m, v, g) and outputs (p', m', v'), U = step_size (|m| + |w1 (g - m)|) / denom (the update's
// magnitude including its cancelling parts):
//  - m': 2^-23 (|m'| + |w1 (g - m)|)           a contracted FMA skips one rounding of the product
//  - v': 2^-21 (|v'| + w2 (g^2 + |v|))          the same for g*g - v and w2 * (.)
//  - p': 2^-22 |p decay| + 2^-20 U             m' is off by <= 2^-23 of the mass in U, the
//    denominator by <= 2^-22 relative (sqrt halves v's relative error; plus the division, sqrt, add),
//    then the quotient, product and subtraction: ~2^-21 of U; 2x margin
//  - param_bf16: exactly floatX(p') of the kernel's own fp32 result (bitwise; in the fp32 build,
//    -DLLMC_FP32, the copy is p' itself, and 16-byte stores: the 16-byte path needs it 16-byte aligned).
// Division and sqrt are IEEE-rounded in the kernel, so without contraction (SIM) the results are
// typically bitwise equal; the tolerances cover the GPU build.
// Sizes: n % 4 == 0 (16-byte path, several blocks), odd n (scalar path), a misaligned pointer, a
// null bf16 copy; three steps with different gradients, including zero gradients (v = 0 at t = 1,
// denominator eps).
#include <doctest/doctest.h>
#include "llmc/cuda/adamw.cuh"
#include "llmc/adamw.h"
#include "test/sim/test_util.h"

using namespace testutil;

namespace {

struct Hyper { float lr, beta1, beta2, eps, wd; };

template <typename T>
std::vector<T> unpad(const std::vector<T>& h, int offset) {
    return std::vector<T>(h.begin() + offset, h.end());
}

template <typename T>
std::vector<T> padded(const std::vector<T>& v, int offset) {
    std::vector<T> h(offset, T(0.0f));
    h.insert(h.end(), v.begin(), v.end());
    return h;
}

void check(long n, int offset, bool with_copy, const Hyper& hp, uint64_t seed) {
    CAPTURE(n);
    CAPTURE(offset);
    CAPTURE(with_copy);
    llmc::Rng rng(seed);
    std::vector<float> p = randn(n, rng, 0.5);
    std::vector<float> m(n, 0.0f), v(n, 0.0f);
    DeviceBuffer<float> d_p(padded(p, offset)), d_m(padded(m, offset)), d_v(padded(v, offset)), d_g(n + offset);
    DeviceBuffer<floatX> d_pb(n + offset);

    const float w1 = 1.0f - hp.beta1, w2 = 1.0f - hp.beta2, decay = 1.0f - hp.lr * hp.wd;
    for (int t = 1; t <= 3; t++) {
        CAPTURE(t);
        std::vector<float> g = randn(n, rng, t == 2 ? 1e-3 : 1.0);
        for (long i = 0; i < n; i += 7) g[i] = 0.0f;  // zero gradients (at t = 1: v = 0, denom = eps)
        d_g.upload(padded(g, offset));
        d_pb.poison();
        adamw_update(d_p.ptr + offset, with_copy ? d_pb.ptr + offset : nullptr, d_m.ptr + offset, d_v.ptr + offset,
                     d_g.ptr + offset, n, hp.lr, hp.beta1, hp.beta2, hp.eps, hp.wd, t, 0);
        const std::vector<float> p_got = unpad(d_p.download(), offset), m_got = unpad(d_m.download(), offset);
        const std::vector<float> v_got = unpad(d_v.download(), offset);

        std::vector<float> p_ref = p, m_ref = m, v_ref = v;
        llmc::adamw_update(p_ref.data(), m_ref.data(), v_ref.data(), g.data(), n, hp.lr, hp.beta1, hp.beta2, hp.eps, hp.wd,
                           t);
        const float bias1 = 1.0f - powf(hp.beta1, (float)t), bias2 = 1.0f - powf(hp.beta2, (float)t);
        const double step = hp.lr / bias1;
        CHECK(count_mismatches("m", m_got, m_ref, [&](size_t i) {
            return 0x1p-23 * (std::fabs(m_ref[i]) + std::fabs(w1 * (g[i] - m[i])));
        }) == 0);
        CHECK(count_mismatches("v", v_got, v_ref, [&](size_t i) {
            return 0x1p-21 * (std::fabs(v_ref[i]) + w2 * ((double)g[i] * g[i] + std::fabs(v[i])));
        }) == 0);
        CHECK(count_mismatches("param", p_got, p_ref, [&](size_t i) {
            const double denom = std::sqrt((double)v_ref[i] / bias2) + hp.eps;
            const double U = step * (std::fabs(m[i]) + std::fabs(w1 * (g[i] - m[i]))) / denom;
            return 0x1p-22 * std::fabs(p[i] * decay) + 0x1p-20 * U;
        }) == 0);
        if (with_copy) {
            const std::vector<floatX> pb = unpad(d_pb.download(), offset);
            long bad = 0;
            for (long i = 0; i < n; i++) {
                const floatX want = host_to_x(p_got[i]);
                bad += std::memcmp(&pb[i], &want, sizeof(floatX)) != 0;
            }
            CHECK(bad == 0);
        }
        p = p_got;
        m = m_got;
        v = v_got;
    }
}

const Hyper kLmHead{0.008f, 0.8f, 0.96f, 1e-10f, 0.01f};
const Hyper kX0{0.5f, 0.96f, 0.95f, 1e-10f, 0.0f};

}  // namespace

TEST_CASE("adamw_update matches the CPU op over three steps (vector and scalar paths)") {
    const long sizes[] = {4, 4096 + 12, 1, 7, 1001};
    uint64_t seed = 1;
    for (long n : sizes) {
        check(n, 0, true, kLmHead, seed++);
        check(n, 0, true, kX0, seed++);
    }
}

TEST_CASE("adamw_update with a misaligned range and without the bf16 copy") {
    check(256, 1, true, kLmHead, 21);
    check(256, 0, false, kLmHead, 22);
}

TEST_CASE("adamw_update is deterministic") {
    llmc::Rng rng(31);
    const long n = 2048 + 4;
    std::vector<float> p = randn(n, rng, 0.5), g = randn(n, rng, 1.0), z(n, 0.0f);
    std::vector<float> first;
    for (int run = 0; run < 2; run++) {
        DeviceBuffer<float> d_p(p), d_m(z), d_v(z), d_g(g);
        DeviceBuffer<floatX> d_pb(n);
        for (int t = 1; t <= 2; t++) adamw_update(d_p.ptr, d_pb.ptr, d_m.ptr, d_v.ptr, d_g.ptr, n, 0.01f, 0.8f, 0.95f, 1e-10f, 0.1f, t, 0);
        if (run == 0) first = d_p.download();
        else CHECK(bits_equal(d_p.download(), first));
    }
}

TEST_CASE("adamw_update rejects bad arguments") {
    CHECK_THROWS_AS(adamw_update(nullptr, nullptr, nullptr, nullptr, nullptr, -1, 0.1f, 0.9f, 0.95f, 1e-8f, 0.0f, 1, 0),
                    llmc::Error);
    CHECK_THROWS_AS(adamw_update(nullptr, nullptr, nullptr, nullptr, nullptr, 4, 0.1f, 0.9f, 0.95f, 1e-8f, 0.0f, 0, 0),
                    llmc::Error);
}
