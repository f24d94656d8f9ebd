// test_relu2.cu: llmc/cuda/relu2.cuh against the CPU reference (llmc/cpu/relu2.h) run in fp32 on
// the same bf16 inputs.
//
// Tolerance: none (bitwise). For bf16 x and G (8 significant bits), relu(x)^2 and 2 relu(x) G are
// exact in fp32 (<= 16 significant bits; the inputs here are far from the fp32 denormal range the
// GPU flushes), so kernel and CPU op differ only by the kernel's final rounding to bf16: the kernel
// output must equal bf16(CPU output) bit for bit. FP32 build (-DLLMC_FP32): kernel and CPU op do the
// same fp32 operations (r*r, (2r)*G) and the kernel rounds nothing after them: bitwise equal too.
// Sizes: multiples of 8 (16-byte path: 8 bf16 or 4 fp32 per pack, more than one block), odd sizes (scalar path), a pointer
// offset by one element (scalar path with n % 8 == 0), in-place backward (dinp == dout). The
// recomputing backward (relu2_backward_recompute) must give the same dinp and, as act, exactly the
// forward's output.
#include <doctest/doctest.h>
#include "llmc/cuda/relu2.cuh"
#include "llmc/cpu/relu2.h"
#include "test/sim/test_util.h"

using namespace testutil;

namespace {

const long kSizes[] = {8, 4096 + 64, 1, 7, 1001, 3 * 2048 + 5};

// v with `offset` leading zero elements, as floatX (offset 1: device pointer + 1 is not 16-byte aligned)
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

void check(long n, int offset, bool in_place, uint64_t seed) {
    CAPTURE(n);
    CAPTURE(offset);
    CAPTURE(in_place);
    llmc::Rng rng(seed);
    std::vector<float> x = x_round(randn(n, rng, 1.5));
    x[0] = 0.0f;  // relu's kink: both sides give 0
    if (n > 1) x[1] = -0.0f;
    std::vector<float> g = x_round(randn(n, rng, 1.0));

    std::vector<float> y_ref(n), dx_ref(n);
    relu2_forward<float>(y_ref.data(), x.data(), n);
    relu2_backward<float>(dx_ref.data(), g.data(), x.data(), n);
    y_ref = x_round(y_ref);
    dx_ref = x_round(dx_ref);

    DeviceBuffer<floatX> d_x(padded(x, offset)), d_y(n + offset), d_g(padded(g, offset)), d_dx(n + offset);
    d_y.poison();
    d_dx.poison();
    relu2_forward(d_y.ptr + offset, d_x.ptr + offset, n, 0);
    const std::vector<float> y = unpad(d_y.download(), offset);
    CHECK(count_mismatches("out", y, y_ref, [](size_t) { return 0.0; }) == 0);

    floatX* dinp = in_place ? d_g.ptr : d_dx.ptr;
    relu2_backward(dinp + offset, d_g.ptr + offset, d_x.ptr + offset, n, 0);
    const std::vector<float> dx = unpad(in_place ? d_g.download() : d_dx.download(), offset);
    CHECK(count_mismatches("dinp", dx, dx_ref, [](size_t) { return 0.0; }) == 0);
    // the recomputing backward: the same dinp, and act bitwise equal to the forward's output
    DeviceBuffer<floatX> d_g2(padded(g, offset)), d_dx2(n + offset), d_act(n + offset);
    d_dx2.poison();
    d_act.poison();
    floatX* dinp2 = in_place ? d_g2.ptr : d_dx2.ptr;
    relu2_backward_recompute(dinp2 + offset, d_act.ptr + offset, d_g2.ptr + offset, d_x.ptr + offset, n, 0);
    const std::vector<float> dx2 = unpad(in_place ? d_g2.download() : d_dx2.download(), offset);
    CHECK(count_mismatches("dinp (recompute)", dx2, dx_ref, [](size_t) { return 0.0; }) == 0);
    CHECK(count_mismatches("act (recompute)", unpad(d_act.download(), offset), y_ref, [](size_t) { return 0.0; }) == 0);
    // rerun: bitwise the same
    if (!in_place) {
        d_dx.poison();
        relu2_backward(d_dx.ptr + offset, d_g.ptr + offset, d_x.ptr + offset, n, 0);
        CHECK(bits_equal(unpad(d_dx.download(), offset), dx));
    }
}

}  // namespace

TEST_CASE("relu2 forward and backward equal the CPU op rounded to bf16 (vector and scalar paths)") {
    uint64_t seed = 1;
    for (long n : kSizes) check(n, 0, false, seed++);
}

TEST_CASE("relu2 with pointers not 16-byte aligned (scalar path, n % 8 == 0)") {
    check(64, 1, false, 11);
}

TEST_CASE("relu2_backward in place (dinp == dout)") {
    check(4096 + 64, 0, true, 21);
    check(1001, 0, true, 22);
}

TEST_CASE("relu2 launchers reject bad sizes and accept n = 0") {
    CHECK_THROWS_AS(relu2_forward(nullptr, nullptr, -1, 0), llmc::Error);
    CHECK_THROWS_AS(relu2_backward(nullptr, nullptr, nullptr, -1, 0), llmc::Error);
    floatX* p = reinterpret_cast<floatX*>(16);
    CHECK_THROWS_AS(relu2_backward_recompute(p, p, nullptr, nullptr, 8, 0), llmc::Error);   // act aliases dinp
    CHECK_THROWS_AS(relu2_backward_recompute(p, nullptr, p, nullptr, 8, 0), llmc::Error);   // no act
    relu2_forward(nullptr, nullptr, 0, 0);
}
