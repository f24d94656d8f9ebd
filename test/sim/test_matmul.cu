// test_matmul.cu: llmc/cuda/matmul.cuh (cuBLASLt on a GPU, the CPU path under SIM) against the CPU
// reference op (llmc/cpu/matmul.h) instantiated in double on the same floatX inputs, so the
// reference error is negligible and the tolerance covers only the implementation under test.
// Shapes: odd sizes in every dimension (7 x 77 x 33), multiples of 8/16, and N < 8.
//
// Tolerances, per output element, with S = sum_k |a_k * b_k| over the K products of the element:
//  - fp32 accumulation of K exact products (bf16 x bf16 fits in fp32): error <= K * 2^-24 * S for
//    any summation order; tensor cores may align/truncate within a block of products, so the bound
//    used is K * 2^-22 * S (4x).
//  - outputs rounded to bf16 (out, dinp): plus 2^-8 * |ref| (one rounding, relative).
//  - accumulating outputs: the old value enters the fp32 sum, so S includes |old|.
//  - the general product D = alpha A·B + beta C: S = |alpha| sum_k |a_k b_k| + |beta C|, with K + 2
//    roundings (the products' sum, alpha·, beta·C and the add).
// FP32 build (-DLLMC_FP32, floatX = float; cuBLASLt CUDA_R_32F with CUBLAS_COMPUTE_32F: no tensor cores,
// no TF32): operands fp32, so each product rounds once too, and nothing truncates: the bound is the
// plain recursive-summation one, (terms + 1) * 2^-24 * S (gemm_tol below), and X_ROUND = 2^-24 for the
// output rounding: ~1e-5 of S for these K, which an operand or output rounded to bf16 (2^-8) fails.
// Overwrite (beta = 0) is checked on outputs poisoned with NaN: any read of the old value shows.
// Batched products are checked against the double reference per entry and against a loop of single
// calls (bitwise under SIM, where both run the same CPU GEMM per entry; within both bounds on a GPU,
// where cuBLASLt may pick another algorithm for the batched shape).
#include <doctest/doctest.h>
#include "llmc/cuda/matmul.cuh"
#include "llmc/cpu/matmul.h"
#include "test/sim/test_util.h"

using namespace testutil;

namespace {

struct Shape { int N, IC, OC; };
const Shape kShapes[] = {{7, 77, 33}, {33, 256, 64}, {16, 64, 100}, {3, 40, 8}};

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// error of a sum of `terms` products (or scaled terms) per unit of S (see the top of the file)
double gemm_tol(int terms) { return kFP32 ? (terms + 1) * 0x1p-24 : terms * 0x1p-22; }

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
    const std::vector<float> x = x_round(randn((size_t)N * IC, rng, 1.0));
    const std::vector<float> w = x_round(randn((size_t)OC * IC, rng, 1.0 / std::sqrt((double)IC)));
    const std::vector<float> g = x_round(randn((size_t)N * OC, rng, 1.0));
    const std::vector<float> dx_old = x_round(randn((size_t)N * IC, rng, 0.5));
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
    DeviceBuffer<floatX> d_x(to_x(x)), d_w(to_x(w)), d_g(to_x(g)), d_y((size_t)N * OC);
    DeviceBuffer<floatX> d_dx(to_x(dx_old));
    DeviceBuffer<float> d_dw(dw_old);

    d_y.poison();
    matmul_forward(d_y.ptr, d_x.ptr, d_w.ptr, N, IC, OC, 0);
    const double k_fwd = gemm_tol(IC);
    CHECK(count_mismatches("out", to_f32(d_y.download()), y_ref,
                           [&](size_t i) { return X_ROUND * std::fabs(y_ref[i]) + k_fwd * y_mag[i]; }) == 0);

    matmul_backward(d_dx.ptr, d_dw.ptr, d_g.ptr, d_x.ptr, d_w.ptr, N, IC, OC, 0);
    const double k_dx = gemm_tol(OC + 1), k_dw = gemm_tol(N + 1);
    const std::vector<float> dx1 = to_f32(d_dx.download());
    const std::vector<float> dw1 = d_dw.download();
    CHECK(count_mismatches("dinp", dx1, dx_ref,
                           [&](size_t i) { return X_ROUND * std::fabs(dx_ref[i]) + k_dx * dx_mag[i]; }) == 0);
    CHECK(count_mismatches("dweight", dw1, dw_ref, [&](size_t i) { return k_dw * dw_mag[i]; }) == 0);

    // null outputs are skipped: dinp only leaves dweight alone, and the reverse
    matmul_backward(d_dx.ptr, nullptr, d_g.ptr, d_x.ptr, d_w.ptr, N, IC, OC, 0);
    CHECK(bits_equal(d_dw.download(), dw1));
    std::vector<double> dx_ref2(dx1.begin(), dx1.end()), dx_mag2 = abs_v(dx1);
    matmul_backward<double>(dx_ref2.data(), nullptr, gd.data(), nullptr, wd.data(), N, IC, OC);
    matmul_backward<double>(dx_mag2.data(), nullptr, ga.data(), nullptr, wa.data(), N, IC, OC);
    CHECK(count_mismatches("dinp (2nd call)", to_f32(d_dx.download()), dx_ref2,
                           [&](size_t i) { return X_ROUND * std::fabs(dx_ref2[i]) + k_dx * dx_mag2[i]; }) == 0);

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

// ---------------------------------------------------------------------------------------------
// overwrite vs accumulate

TEST_CASE("matmul_backward: MM_OVERWRITE replaces the output without reading it, MM_ACCUMULATE adds") {
    const int N = 33, IC = 40, OC = 24;
    llmc::Rng rng(11);
    const std::vector<float> x = x_round(randn((size_t)N * IC, rng, 1.0));
    const std::vector<float> w = x_round(randn((size_t)OC * IC, rng, 0.2));
    const std::vector<float> g = x_round(randn((size_t)N * OC, rng, 1.0));
    const std::vector<double> xd = to_double(x), wd = to_double(w), gd = to_double(g);
    const std::vector<double> xa = abs_v(x), wa = abs_v(w), ga = abs_v(g);
    // references of the bare products (zero start)
    std::vector<double> dx_ref((size_t)N * IC, 0.0), dw_ref((size_t)OC * IC, 0.0), dx_mag = dx_ref, dw_mag = dw_ref;
    matmul_backward<double>(dx_ref.data(), dw_ref.data(), gd.data(), xd.data(), wd.data(), N, IC, OC);
    matmul_backward<double>(dx_mag.data(), dw_mag.data(), ga.data(), xa.data(), wa.data(), N, IC, OC);
    const double k_dx = gemm_tol(OC + 1), k_dw = gemm_tol(N + 1);

    matmul_init();
    DeviceBuffer<floatX> d_x(to_x(x)), d_w(to_x(w)), d_g(to_x(g)), d_dx((size_t)N * IC);
    DeviceBuffer<float> d_dw((size_t)OC * IC);
    d_dx.poison();  // NaN: an overwrite that reads the old value gives NaN
    d_dw.poison();
    matmul_backward(d_dx.ptr, d_dw.ptr, d_g.ptr, d_x.ptr, d_w.ptr, N, IC, OC, 0, MM_OVERWRITE, MM_OVERWRITE);
    const std::vector<float> dx1 = to_f32(d_dx.download()), dw1 = d_dw.download();
    CHECK(count_mismatches("dinp (overwrite)", dx1, dx_ref,
                           [&](size_t i) { return X_ROUND * std::fabs(dx_ref[i]) + k_dx * dx_mag[i]; }) == 0);
    CHECK(count_mismatches("dweight (overwrite)", dw1, dw_ref, [&](size_t i) { return k_dw * dw_mag[i]; }) == 0);

    // a second contributor accumulates onto the first: 2x the product (plus one bf16 rounding of dinp)
    matmul_backward(d_dx.ptr, d_dw.ptr, d_g.ptr, d_x.ptr, d_w.ptr, N, IC, OC, 0, MM_ACCUMULATE, MM_ACCUMULATE);
    std::vector<double> dx2(dx1.begin(), dx1.end()), dw2(dw1.begin(), dw1.end());
    for (size_t i = 0; i < dx2.size(); i++) dx2[i] += dx_ref[i];
    for (size_t i = 0; i < dw2.size(); i++) dw2[i] += dw_ref[i];
    CHECK(count_mismatches("dinp (accumulate)", to_f32(d_dx.download()), dx2, [&](size_t i) {
              return X_ROUND * std::fabs(dx2[i]) + k_dx * (dx_mag[i] + std::fabs(dx1[i]));
          }) == 0);
    CHECK(count_mismatches("dweight (accumulate)", d_dw.download(), dw2,
                           [&](size_t i) { return k_dw * (dw_mag[i] + std::fabs(dw1[i])); }) == 0);

    // overwrite again: back to the bare product (the old 2x value is not read)
    matmul_backward(d_dx.ptr, d_dw.ptr, d_g.ptr, d_x.ptr, d_w.ptr, N, IC, OC, 0, MM_OVERWRITE, MM_OVERWRITE);
    CHECK(count_mismatches("dinp (overwrite again)", to_f32(d_dx.download()), dx_ref,
                           [&](size_t i) { return X_ROUND * std::fabs(dx_ref[i]) + k_dx * dx_mag[i]; }) == 0);
    CHECK(count_mismatches("dweight (overwrite again)", d_dw.download(), dw_ref,
                           [&](size_t i) { return k_dw * dw_mag[i]; }) == 0);

    // the modes are per output: dinp accumulates while dweight is overwritten
    const std::vector<float> dx3 = to_f32(d_dx.download());
    d_dw.poison();
    matmul_backward(d_dx.ptr, d_dw.ptr, d_g.ptr, d_x.ptr, d_w.ptr, N, IC, OC, 0, MM_ACCUMULATE, MM_OVERWRITE);
    std::vector<double> dx4(dx3.begin(), dx3.end());
    for (size_t i = 0; i < dx4.size(); i++) dx4[i] += dx_ref[i];
    CHECK(count_mismatches("dinp (accumulate, dweight overwritten)", to_f32(d_dx.download()), dx4, [&](size_t i) {
              return X_ROUND * std::fabs(dx4[i]) + k_dx * (dx_mag[i] + std::fabs(dx3[i]));
          }) == 0);
    CHECK(count_mismatches("dweight (overwrite, dinp accumulated)", d_dw.download(), dw_ref,
                           [&](size_t i) { return k_dw * dw_mag[i]; }) == 0);

    // no tokens: an overwritten dweight is the empty sum (zeros), an accumulated one is unchanged
    d_dw.poison();
    matmul_backward(nullptr, d_dw.ptr, d_g.ptr, d_x.ptr, d_w.ptr, 0, IC, OC, 0, MM_ACCUMULATE, MM_OVERWRITE);
    CHECK(bits_equal(d_dw.download(), std::vector<float>((size_t)OC * IC, 0.0f)));
    d_dw.upload(dw1);
    matmul_backward(nullptr, d_dw.ptr, d_g.ptr, d_x.ptr, d_w.ptr, 0, IC, OC, 0);
    CHECK(bits_equal(d_dw.download(), dw1));
}

// ---------------------------------------------------------------------------------------------
// the general strided-batched product

namespace {

// D = alpha op(A) op(B) + beta C in double, row-major, and its magnitude sum S for the tolerance
void ref_gemm(std::vector<double>& D, std::vector<double>& S, const float* A, bool ta, const float* B, bool tb,
              const float* C, int M, int N, int K, double alpha, double beta) {
    D.assign((size_t)M * N, 0.0);
    S.assign((size_t)M * N, 0.0);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0.0, mag = 0.0;
            for (int k = 0; k < K; k++) {
                const double a = ta ? A[(size_t)k * M + i] : A[(size_t)i * K + k];
                const double b = tb ? B[(size_t)j * K + k] : B[(size_t)k * N + j];
                acc += a * b;
                mag += std::fabs(a * b);
            }
            const double c = C ? (double)C[(size_t)i * N + j] : 0.0;
            D[(size_t)i * N + j] = alpha * acc + beta * c;
            S[(size_t)i * N + j] = std::fabs(alpha) * mag + std::fabs(beta * c);
        }
}

std::vector<float> slice(const std::vector<float>& v, size_t off, size_t n) {
    return std::vector<float>(v.begin() + off, v.begin() + off + n);
}

// One configuration: `batch` entries of D (M x N, type TD) at stride sd >= M*N (gaps stay poisoned),
// A and B at strides sa, sb (0: one matrix shared by every entry), C a separate matrix or D itself.
template <typename TD>
void check_batched(int M, int N, int K, bool ta, bool tb, float alpha, float beta, bool c_is_d, int batch, long long sa,
                   long long sb, long long sd, uint64_t seed) {
    CAPTURE(M); CAPTURE(N); CAPTURE(K); CAPTURE(ta); CAPTURE(tb); CAPTURE(alpha); CAPTURE(beta); CAPTURE(c_is_d);
    CAPTURE(batch); CAPTURE(sa); CAPTURE(sb); CAPTURE(sd);
    const bool x_out = std::is_same<TD, floatX>::value;  // rounded to floatX (bf16 or, in the fp32 build, fp32)
    llmc::Rng rng(seed);
    const size_t na = (size_t)(batch - 1) * sa + (size_t)M * K, nb = (size_t)(batch - 1) * sb + (size_t)K * N;
    const size_t nd = (size_t)(batch - 1) * sd + (size_t)M * N;
    const std::vector<float> a = x_round(randn(na, rng, 1.0)), b = x_round(randn(nb, rng, 0.3));
    std::vector<float> c = randn(nd, rng, 1.0);
    if (x_out) c = x_round(c);
    auto to_dev = [](const std::vector<float>& v) {
        if constexpr (std::is_same<TD, floatX>::value) return to_x(v);
        else return v;
    };
    auto to_host = [](const std::vector<TD>& v) {
        if constexpr (std::is_same<TD, floatX>::value) return to_f32(v);
        else return v;
    };
    matmul_init();
    DeviceBuffer<floatX> d_a(to_x(a)), d_b(to_x(b));
    DeviceBuffer<TD> d_c(to_dev(c)), d_d(nd), d_loop(nd);
    TD* dst = c_is_d ? d_c.ptr : d_d.ptr;
    const TD* src = beta != 0.0f ? d_c.ptr : nullptr;
    if (!c_is_d) d_d.poison();
    // C == D in place: the gaps between entries of D hold C's values, which must survive
    matmul_batched<TD>("test batched", dst, src, d_a.ptr, ta, d_b.ptr, tb, M, N, K, alpha, beta, batch, sa, sb, sd, 0);
    const std::vector<float> got = to_host(c_is_d ? d_c.download() : d_d.download());

    // the same entries one call at a time (into a separate output when D == C is not asked for)
    if (c_is_d) d_c.upload(to_dev(c));
    TD* dst1 = c_is_d ? d_c.ptr : d_loop.ptr;
    if (!c_is_d) d_loop.poison();
    for (int e = 0; e < batch; e++)
        matmul_batched<TD>("test single", dst1 + e * sd, src ? src + e * sd : nullptr, d_a.ptr + e * sa, ta,
                           d_b.ptr + e * sb, tb, M, N, K, alpha, beta, 1, 0, 0, 0, 0);
    const std::vector<float> loop = to_host(c_is_d ? d_c.download() : d_loop.download());

    const double kf = gemm_tol(K + 2);
    std::vector<double> R, S;
    for (int e = 0; e < batch; e++) {
        CAPTURE(e);
        ref_gemm(R, S, a.data() + e * sa, ta, b.data() + e * sb, tb, beta != 0.0f ? c.data() + e * sd : nullptr, M, N, K,
                 alpha, beta);
        auto tol = [&](size_t i) { return (x_out ? X_ROUND * std::fabs(R[i]) : 0.0) + kf * S[i]; };
        CHECK(count_mismatches("batched", slice(got, e * sd, (size_t)M * N), R, tol) == 0);
        CHECK(count_mismatches("single", slice(loop, e * sd, (size_t)M * N), R, tol) == 0);
        // the gap after entry e (stride > M*N) is not written: still poison (NaN), or C's values in place
        for (size_t i = (size_t)e * sd + (size_t)M * N; i < (size_t)(e + 1) * sd && i < nd; i++) {
            if (c_is_d) CHECK(got[i] == c[i]);
            else CHECK(std::isnan(got[i]));
        }
    }
#ifdef LLMC_SIM
    // SIM runs the same CPU GEMM per entry either way: a batched call is bitwise the loop
    CHECK(std::memcmp(got.data(), loop.data(), got.size() * sizeof(float)) == 0);
#endif
}

}  // namespace

TEST_CASE("matmul_batched: every transpose, alpha/beta, C separate or in place, bf16 and fp32 D, vs a loop of single calls") {
    uint64_t seed = 100;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            // bf16 D, C separate, strides padded past the entries (gaps), odd K
            check_batched<floatX>(24, 40, 37, ta, tb, 1.5f, -0.75f, false, 3, 24 * 37 + 8, 37 * 40 + 16, 24 * 40 + 8, seed++);
            // fp32 D accumulating in place (C == D, beta = 1), tight strides
            check_batched<float>(16, 24, 64, ta, tb, 1.0f, 1.0f, true, 4, 16 * 64, 64 * 24, 16 * 24, seed++);
        }
    // beta = 0 overwrites a poisoned D without reading it; alpha scales
    check_batched<floatX>(32, 16, 48, false, true, -2.0f, 0.0f, false, 2, 32 * 48, 48 * 16, 32 * 16, seed++);
    check_batched<float>(8, 8, 8, true, false, 0.5f, 0.0f, false, 5, 64, 64, 64, seed++);
    // B shared by every entry (stride 0), as a weight applied to a stack of inputs
    check_batched<floatX>(16, 32, 24, false, false, 1.0f, 0.0f, false, 3, 16 * 24, 0, 16 * 32, seed++);
    // Muon's shapes: X·Xᵀ (wide), a·X + Bm·X with C a different buffer, a single entry
    check_batched<floatX>(8, 8, 24, false, true, 1.0f, 0.0f, false, 2, 8 * 24, 8 * 24, 64, seed++);
    check_batched<floatX>(8, 24, 8, false, false, 1.0f, 3.5f, false, 2, 64, 8 * 24, 8 * 24, seed++);
    check_batched<floatX>(9, 7, 5, true, true, 1.0f, 0.25f, false, 1, 0, 0, 0, seed++);
}

TEST_CASE("matmul rejects misaligned operands and batch strides") {
    matmul_init();
    const int M = 16, N = 16, K = 16;
    DeviceBuffer<floatX> a(4 * M * K + 8), b(4 * K * N + 8), d(4 * M * N + 8);
    DeviceBuffer<float> f(4 * M * N + 8);
    a.poison(); b.poison(); d.poison(); f.poison();
    auto call = [&](floatX* dd, const floatX* cc, const floatX* aa, const floatX* bb, float beta, int batch, long long sa,
                    long long sb, long long sd) {
        matmul_batched<floatX>("misaligned test", dd, cc, aa, false, bb, false, M, N, K, 1.0f, beta, batch, sa, sb, sd, 0);
    };
    CHECK_NOTHROW(call(d.ptr, nullptr, a.ptr, b.ptr, 0.0f, 1, 0, 0, 0));
    const int e8 = 8 / (int)sizeof(floatX);  // floatX elements in 8 bytes
    CHECK_NOTHROW(call(d.ptr + XPACK, nullptr, a.ptr + XPACK, b.ptr + XPACK, 0.0f, 1, 0, 0, 0));  // 16 bytes further: fine
    CHECK_THROWS_AS(call(d.ptr, nullptr, a.ptr + 1, b.ptr, 0.0f, 1, 0, 0, 0), llmc::Error);   // A one element off
    CHECK_THROWS_AS(call(d.ptr, nullptr, a.ptr, b.ptr + e8, 0.0f, 1, 0, 0, 0), llmc::Error);  // B 8 bytes off
    CHECK_THROWS_AS(call(d.ptr + 1, nullptr, a.ptr, b.ptr, 0.0f, 1, 0, 0, 0), llmc::Error);   // D
    CHECK_THROWS_AS(call(d.ptr, d.ptr + 2, a.ptr, b.ptr, 1.0f, 1, 0, 0, 0), llmc::Error);     // C (read: beta != 0)
    // batch strides: 16*16 + 1 elements put entry 1 one element off
    CHECK_NOTHROW(call(d.ptr, nullptr, a.ptr, b.ptr, 0.0f, 2, M * K + XPACK, K * N, M * N));
    CHECK_THROWS_AS(call(d.ptr, nullptr, a.ptr, b.ptr, 0.0f, 2, M * K + 1, K * N, M * N), llmc::Error);
    CHECK_THROWS_AS(call(d.ptr, nullptr, a.ptr, b.ptr, 0.0f, 2, M * K, K * N + e8, M * N), llmc::Error);
    CHECK_THROWS_AS(call(d.ptr, nullptr, a.ptr, b.ptr, 0.0f, 2, M * K, K * N, M * N + 3), llmc::Error);
    // fp32 output: 4-byte elements, a stride of M*N + 2 floats is 8 bytes off
    CHECK_THROWS_AS(matmul_batched<float>("misaligned fp32", f.ptr + 1, nullptr, a.ptr, false, b.ptr, false, M, N, K,
                                          1.0f, 0.0f, 1, 0, 0, 0, 0), llmc::Error);
    CHECK_THROWS_AS(matmul_batched<float>("misaligned fp32", f.ptr, nullptr, a.ptr, false, b.ptr, false, M, N, K, 1.0f,
                                          0.0f, 2, M * K, K * N, M * N + 2, 0), llmc::Error);
    // overlapping D entries, bad shapes, a missing C for beta != 0
    CHECK_THROWS_AS(call(d.ptr, nullptr, a.ptr, b.ptr, 0.0f, 2, M * K, K * N, M * N - 8), llmc::Error);
    CHECK_THROWS_AS(call(d.ptr, nullptr, a.ptr, b.ptr, 0.0f, 0, 0, 0, 0), llmc::Error);
    CHECK_THROWS_AS(call(d.ptr, nullptr, a.ptr, b.ptr, 1.0f, 1, 0, 0, 0), llmc::Error);
    // the layer entry points check their operands the same way
    DeviceBuffer<floatX> x(8 * 16 + 8), w(16 * 16 + 8), y(8 * 16 + 8);
    CHECK_THROWS_AS(matmul_forward(y.ptr, x.ptr + 1, w.ptr, 8, 16, 16, 0), llmc::Error);
    CHECK_THROWS_AS(matmul_backward(y.ptr + 3, nullptr, x.ptr, x.ptr, w.ptr, 8, 16, 16, 0), llmc::Error);
#ifdef LLMC_SIM
    // SIM also refuses an operand range past the end of its cudaMalloc'ed block (cuBLASLt would fault)
    CHECK_THROWS_AS(call(d.ptr, nullptr, a.ptr, b.ptr, 0.0f, 5, M * K, K * N, M * N), llmc::Error);
#endif
}

namespace {
// a kernel that writes a value the product then reads: stream order must hold
__global__ void fill_kernel(floatX* p, int n, float v) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) p[i] = llmc::to_floatX(v);
}
}  // namespace

TEST_CASE("matmul on a created stream runs after the kernels queued before it") {
    // Under SIM with LLMC_SIM_STREAMS=async (the TSan flavor) work on a created stream is queued; a
    // product that ran at once would read A before fill_kernel wrote it (a non-blocking stream: no
    // default-stream work in between drains it).
    matmul_init();
    const int M = 8, N = 8, K = 16;
    cudaStream_t st;
    cudaCheck(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    DeviceBuffer<floatX> a(M * K), b(to_x(std::vector<float>(K * N, 1.0f))), d(M * N);
    a.poison();
    d.poison();
    LAUNCH(fill_kernel, 1, 128, 0, st, a.ptr, M * K, 0.5f);
    matmul_batched<floatX>("stream test", d.ptr, nullptr, a.ptr, false, b.ptr, false, M, N, K, 1.0f, 0.0f, 1, 0, 0, 0, st);
    cudaCheck(cudaStreamSynchronize(st));
    CHECK(bits_equal(to_f32(d.download()), std::vector<float>(M * N, 8.0f)));  // 16 * 0.5 * 1, exact
    cudaCheck(cudaStreamDestroy(st));
}

#ifndef LLMC_SIM
// GPU only (SIM has no plans): the plan (descriptor, layouts, algorithm) is made once per key
TEST_CASE("cuBLASLt plans are cached per (shape, transposes, output type, batch, strides)") {
    matmul_init();
    const int M = 48, N = 40, K = 56;  // a shape no other test here uses
    DeviceBuffer<floatX> a(2 * M * K), b(2 * K * N), d(2 * M * N);
    DeviceBuffer<float> f(M * N);
    a.poison(); b.poison(); d.poison(); f.poison();
    const size_t before = g_matmul_plans.size();
    for (int r = 0; r < 3; r++)
        matmul_batched<floatX>("cache", d.ptr, nullptr, a.ptr, false, b.ptr, false, M, N, K, 1.0f, 0.0f, 1, 0, 0, 0, 0);
    CHECK(g_matmul_plans.size() == before + 1);
    // alpha, beta and C are call arguments, not part of the plan
    matmul_batched<floatX>("cache", d.ptr, d.ptr, a.ptr, false, b.ptr, false, M, N, K, 2.0f, 1.0f, 1, 0, 0, 0, 0);
    CHECK(g_matmul_plans.size() == before + 1);
    // another transpose, output type or batch is another plan
    matmul_batched<floatX>("cache", d.ptr, nullptr, a.ptr, true, b.ptr, false, M, N, K, 1.0f, 0.0f, 1, 0, 0, 0, 0);
    matmul_batched<float>("cache", f.ptr, nullptr, a.ptr, false, b.ptr, false, M, N, K, 1.0f, 0.0f, 1, 0, 0, 0, 0);
    matmul_batched<floatX>("cache", d.ptr, nullptr, a.ptr, false, b.ptr, false, M, N, K, 1.0f, 0.0f, 2, M * K, K * N, M * N, 0);
    CHECK(g_matmul_plans.size() == before + (kFP32 ? 3 : 4));  // fp32 build: float D is floatX D, one plan
    matmul_batched<floatX>("cache", d.ptr, nullptr, a.ptr, false, b.ptr, false, M, N, K, 1.0f, 0.0f, 2, M * K, K * N, M * N, 0);
    CHECK(g_matmul_plans.size() == before + (kFP32 ? 3 : 4));
    cudaCheck(cudaDeviceSynchronize());
}
#endif
