// test_crossentropy.cu: llmc/cuda/crossentropy.cuh against the CPU reference
// (llmc/cpu/crossentropy.h) run in fp32 on the same bf16 logits. Shapes cover the 16-byte path
// (Vp % 8 == 0: 8 bf16 or 4 fp32 per pack, padded columns V < Vp, more packs than threads) and the scalar path (Vp % 8 != 0);
// logits reach the saturated part of the softcap (|l| up to 40*softcap, beyond the kernel's clamp).
//
// Tolerances. The kernel computes z = s*tanh(l/s) through exp (absolute error of tanh ~1e-7 in
// fp32, ~2e-6 with the GPU's fast exp/division), so |dz| <= 3e-5 for s = 15, and the fp32 sums of
// exp add ~1e-6 relative:
//  - loss (fp32): 1e-4 + 1e-5*|ref|   (lse and z_y each off by <= ~3e-5 + rounding)
//  - dlogits (bf16): 2^-8*|ref| for the rounding to bf16, plus 2e-4*|scale|*(p + [v == y]) for the
//    error of p (relative ~1e-4: exp of z - lse with both as above) and of 1 - t^2 (~1e-5 absolute),
//    where p is the probability computed independently in double in this test.
//  - padded columns, ignored rows, and the loss of ignored rows: exactly 0.
// FP32 build (-DLLMC_FP32, floatX = float): fp32 logits, fp32 dlogits: X_ROUND = 2^-24 for 2^-8, so
// dlogits is held to the 2e-4 relative error of p alone (~20x tighter; a rounding to bf16 fails it);
// the loss tolerance is already the fp32 kernel's own.
#include <doctest/doctest.h>
#include "llmc/cuda/crossentropy.cuh"
#include "llmc/cpu/crossentropy.h"
#include "test/sim/test_util.h"

using namespace testutil;

namespace {

constexpr float kSoftcap = 15.0f;

struct Case {
    int N, V, Vp;
    std::vector<float> logits;  // (N, Vp), bf16 values; padded columns hold junk
    std::vector<int> targets;
};

Case make_case(int N, int V, int Vp, uint64_t seed) {
    llmc::Rng rng(seed);
    Case c{N, V, Vp, {}, {}};
    c.logits.resize((size_t)N * Vp);
    for (int i = 0; i < N; i++) {
        for (int v = 0; v < Vp; v++) {
            double l = rng.normal(0.0, 2.0 + 3.0 * (i % 3));    // up to |l| ~ 30: well into the softcap
            if (rng.uniform() < 0.01) l = rng.uniform(-600, 600); // a few saturated ones (|l/s| > 9)
            if (v >= V) l = 1e4 * (rng.uniform() - 0.5);          // padding junk must not matter
            c.logits[(size_t)i * Vp + v] = (float)l;
        }
        c.targets.push_back((int)rng.below(V));
    }
    c.logits = x_round(c.logits);
    // edge targets and ignored rows
    c.targets[0] = V - 1;
    if (N > 1) c.targets[1] = -1;
    if (N > 2) c.targets[2] = 0;
    if (N > 4) c.targets[N - 1] = -1;
    return c;
}

// p_v in double, independently of both implementations (for the gradient tolerance)
std::vector<double> probs_double(const Case& c) {
    std::vector<double> p((size_t)c.N * c.Vp, 0.0);
    for (int i = 0; i < c.N; i++) {
        const float* l = &c.logits[(size_t)i * c.Vp];
        double mx = -1e300, sum = 0.0;
        for (int v = 0; v < c.V; v++) mx = std::max(mx, kSoftcap * std::tanh((double)l[v] / kSoftcap));
        for (int v = 0; v < c.V; v++) sum += std::exp(kSoftcap * std::tanh((double)l[v] / kSoftcap) - mx);
        for (int v = 0; v < c.V; v++) p[(size_t)i * c.Vp + v] = std::exp(kSoftcap * std::tanh((double)l[v] / kSoftcap) - mx) / sum;
    }
    return p;
}

void check_case(int N, int V, int Vp, uint64_t seed) {
    CAPTURE(N);
    CAPTURE(V);
    CAPTURE(Vp);
    Case c = make_case(N, V, Vp, seed);
    int n_valid = 0;
    for (int t : c.targets) n_valid += t != -1;
    const float scale = 1.0f / (float)n_valid;

    std::vector<float> loss_ref(N), dl_ref(c.logits.size());
    softcap_crossentropy_forward_backward<float>(loss_ref.data(), dl_ref.data(), c.logits.data(), c.targets.data(), N,
                                                 V, Vp, kSoftcap, scale);
    const std::vector<double> p = probs_double(c);

    DeviceBuffer<floatX> d_logits(to_x(c.logits)), d_dl(c.logits.size());
    DeviceBuffer<int> d_t(c.targets);
    DeviceBuffer<float> d_loss(N);
    d_dl.poison();
    d_loss.poison();
    softcap_crossentropy_forward_backward(d_loss.ptr, d_dl.ptr, d_logits.ptr, d_t.ptr, N, V, Vp, kSoftcap, scale, 0);
    const std::vector<float> loss = d_loss.download();
    const std::vector<float> dl = to_f32(d_dl.download());

    CHECK(count_mismatches("loss", loss, loss_ref, [&](size_t i) { return 1e-4 + 1e-5 * std::fabs(loss_ref[i]); }) == 0);
    CHECK(count_mismatches("dlogits", dl, dl_ref, [&](size_t k) {
              const int i = (int)(k / Vp), v = (int)(k % Vp);
              const double ind = (v == c.targets[i]) ? 1.0 : 0.0;
              return X_ROUND * std::fabs(dl_ref[k]) + 2e-4 * scale * (p[k] + ind);
          }) == 0);
    // exact zeros: padded columns, ignored rows (and their loss)
    long nonzero = 0;
    for (int i = 0; i < N; i++)
        for (int v = 0; v < Vp; v++)
            if ((v >= V || c.targets[i] == -1) && dl[(size_t)i * Vp + v] != 0.0f) nonzero++;
    CHECK(nonzero == 0);
    for (int i = 0; i < N; i++)
        if (c.targets[i] == -1) CHECK(loss[i] == 0.0f);

    // forward only (dlogits == nullptr): the same losses bitwise, logits untouched
    d_loss.poison();
    softcap_crossentropy_forward_backward(d_loss.ptr, nullptr, d_logits.ptr, d_t.ptr, N, V, Vp, kSoftcap, scale, 0);
    CHECK(bits_equal(d_loss.download(), loss));
    CHECK(bits_equal(to_f32(d_logits.download()), c.logits));

    // in place (dlogits == logits): bitwise the same as out of place
    d_loss.poison();
    softcap_crossentropy_forward_backward(d_loss.ptr, d_logits.ptr, d_logits.ptr, d_t.ptr, N, V, Vp, kSoftcap, scale, 0);
    CHECK(bits_equal(d_loss.download(), loss));
    CHECK(bits_equal(to_f32(d_logits.download()), dl));
}

}  // namespace

TEST_CASE("softcap cross-entropy, 16-byte path: V=100 padded to Vp=128") { check_case(5, 100, 128, 1); }

TEST_CASE("softcap cross-entropy, 16-byte path: more packs than threads (V=5000, Vp=5008)") { check_case(3, 5000, 5008, 2); }

TEST_CASE("softcap cross-entropy, 16-byte path: V == Vp") { check_case(4, 64, 64, 3); }

TEST_CASE("softcap cross-entropy, scalar path: Vp % 8 != 0") {
    check_case(7, 77, 77, 4);
    check_case(6, 1000, 1003, 5);
}

TEST_CASE("softcap cross-entropy: all rows ignored gives zero loss and zero gradient") {
    const int N = 3, V = 20, Vp = 24;
    llmc::Rng rng(6);
    std::vector<float> logits = x_round(randn((size_t)N * Vp, rng, 3.0));
    DeviceBuffer<floatX> d_logits(to_x(logits));
    DeviceBuffer<int> d_t(std::vector<int>(N, -1));
    DeviceBuffer<float> d_loss(N);
    d_loss.poison();
    softcap_crossentropy_forward_backward(d_loss.ptr, d_logits.ptr, d_logits.ptr, d_t.ptr, N, V, Vp, kSoftcap, 1.0f, 0);
    for (float l : d_loss.download()) CHECK(l == 0.0f);
    for (float g : to_f32(d_logits.download())) CHECK(g == 0.0f);
}

TEST_CASE("softcap cross-entropy: an out-of-range target gives a NaN loss, zero gradient, no out-of-bounds read") {
    // (the CPU op throws instead; the kernel cannot, see crossentropy.cuh)
    const int N = 4, V = 40, Vp = 40;
    llmc::Rng rng(7);
    std::vector<float> logits = x_round(randn((size_t)N * Vp, rng, 3.0));
    std::vector<int> targets = {3, 1 << 20, -7, 5};  // rows 1 and 2 invalid; 1<<20 would be far out of bounds
    DeviceBuffer<floatX> d_logits(to_x(logits)), d_dl(logits.size());
    DeviceBuffer<int> d_t(targets);
    DeviceBuffer<float> d_loss(N);
    d_dl.poison();
    d_loss.poison();
    softcap_crossentropy_forward_backward(d_loss.ptr, d_dl.ptr, d_logits.ptr, d_t.ptr, N, V, Vp, kSoftcap, 0.5f, 0);
    std::vector<float> loss = d_loss.download();
    std::vector<float> dl = to_f32(d_dl.download());
    CHECK(std::isnan(loss[1]));
    CHECK(std::isnan(loss[2]));
    CHECK(std::isfinite(loss[0]));
    CHECK(std::isfinite(loss[3]));
    for (int i : {1, 2})
        for (int v = 0; v < Vp; v++) CHECK(dl[(size_t)i * Vp + v] == 0.0f);
    // the valid rows are unaffected: they match the CPU op on those rows alone
    std::vector<float> ref_loss(1), ref_dl(Vp);
    for (int i : {0, 3}) {
        softcap_crossentropy_forward_backward<float>(ref_loss.data(), ref_dl.data(), &logits[(size_t)i * Vp], &targets[i],
                                                     1, V, Vp, kSoftcap, 0.5f);
        CHECK(loss[i] == doctest::Approx(ref_loss[0]).epsilon(1e-4));
    }
}

TEST_CASE("softcap cross-entropy launcher rejects bad shapes and softcap") {
    CHECK_THROWS_AS(softcap_crossentropy_forward_backward(nullptr, nullptr, nullptr, nullptr, 2, 10, 8, 15.0f, 1.0f, 0),
                    llmc::Error);
    CHECK_THROWS_AS(softcap_crossentropy_forward_backward(nullptr, nullptr, nullptr, nullptr, 2, 10, 16, 0.0f, 1.0f, 0),
                    llmc::Error);
}
