// test_rope.cu: llmc/cuda/rope.cuh (RoPE + QK-norm fused, q and k in one launch) against the CPU
// reference ops composed as the CPU trainer calls them: rope_forward then qknorm_forward
// (llmc/cpu/rope.h, llmc/cpu/qknorm.h), and qknorm_backward then rope_backward, run in fp32 on
// the same bf16 inputs and the same bf16 RoPE tables (converted to fp32 for the CPU ops).
//
// Tolerances (per element; ref = the fp32 CPU result, r = the row's rstd, f = 1.2 r):
//  - rstd (fp32): 1e-5 relative. The kernel sums D squares in fp32 (each lane D/lpr terms, then
//    log2(lpr) butterfly levels: <= (D/2 + 5) 2^-24 ~ 4e-6 relative for D = 128) and rsqrtf adds ~2^-22.
//  - out (bf16): 2^-8 |ref| (the final rounding) + 1e-5 |ref| (r as above) + f 2^-21 (|x1| + |x2|):
//    each rotated value a cos + b sin may be computed with an FMA on the GPU (one rounding fewer
//    than the CPU's), so the two differ by <= 2^-22 (|a| + |b|) before the scale f; 2x margin.
//  - dinp (bf16): 2^-8 |ref| + 1e-5 * mag, mag = f (|G1| + |G2| + (|y1| + |y2|) sum|G y| / (1.44 D)),
//    the magnitudes of the two fp32 terms of dy that are rotated into the element: the dot product
//    <G, y> is summed in fp32 (<= 4e-6 of sum|G y| as above) and the few remaining fp32 operations
//    add a few ulps.
// FP32 build (-DLLMC_FP32, floatX = float): fp32 inputs and fp32 tables (rope_table's values, not
// rounded to bf16), fp32 outputs: X_ROUND = 2^-24 for 2^-8, so out and dinp are held to 1e-5 relative
// plus the FMA term (a rounding to bf16 anywhere, 2^-8, would fail); the 16-byte path there needs
// D % 8 == 0 (4 fp32 per pack), so D = 10, 6, 2 stay scalar and lanes per row double.
// Shapes (lanes per row for bf16): D = 128 (the model's head_dim: 8 lanes per row, 4 rows per warp), 64, 32, 16 (one lane
// per row, 32 rows per warp), 256, 96 (6 packs per half: 2 idle lanes in each group), D % 16 != 0
// (10, 6, 2: the scalar path), odd head counts, GQA (Hkv < H), row counts that end inside a warp
// and inside a block, pos0 > 0, a misaligned pointer (scalar path with D % 16 == 0), in place.
//
// Row strides (ldq, ldk): the GPU trainer's call, in place on a packed [q | k | v] buffer (token row
// stride (H + 2 Hkv) D, here plus a pad), against the dense call on the same values: bitwise (see
// check_packed), with v and the pad poisoned and required to keep their bits.
#include <doctest/doctest.h>
#include "llmc/cuda/rope.cuh"
#include "llmc/cpu/rope.h"
#include "llmc/cpu/qknorm.h"
#include "test/sim/test_util.h"

using namespace testutil;

namespace {

struct Shape { int B, T, H, Hkv, D, pos0; };
const Shape kShapes[] = {
    {2, 5, 3, 1, 128, 0}, {1, 7, 2, 2, 64, 3}, {3, 3, 5, 5, 32, 0}, {2, 4, 3, 3, 16, 1}, {4, 33, 3, 1, 128, 7},
    {2, 70, 1, 1, 16, 0}, {1, 2, 2, 1, 256, 0}, {2, 3, 1, 1, 96, 5},  {2, 3, 3, 1, 10, 0}, {1, 5, 1, 1, 6, 2},
    {1, 3, 1, 1, 2, 0},
};

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

// rows of D values with per-row scales; row 0 all zero (r = 1/sqrt(eps) exercises eps)
std::vector<float> make_rows(long rows, int D, llmc::Rng& rng) {
    std::vector<float> x((size_t)rows * D);
    for (long i = 0; i < rows; i++)
        for (int d = 0; d < D; d++) x[(size_t)i * D + d] = i == 0 ? 0.0f : (float)rng.normal(0.0, 0.2 * (1 + i % 4));
    return x_round(x);
}

struct Tensor {  // one of q, k: the CPU-side data and references
    int NH;
    long rows;
    std::vector<float> x, out_ref, rstd_ref, g, dx_ref, out_bf16;
};

// CPU forward and backward of one tensor
void reference(Tensor& X, const Shape& s, const std::vector<float>& cosf, const std::vector<float>& sinf, llmc::Rng& rng) {
    X.rows = (long)s.B * s.T * X.NH;
    X.x = make_rows(X.rows, s.D, rng);
    std::vector<float> rot(X.x.size());
    rope_forward<float>(rot.data(), X.x.data(), cosf.data(), sinf.data(), s.B, s.T, X.NH, s.D, s.pos0);
    X.out_ref.resize(X.x.size());
    X.rstd_ref.resize(X.rows);
    qknorm_forward<float>(X.out_ref.data(), X.rstd_ref.data(), rot.data(), (int)X.rows, s.D);
    // backward from the stored (floatX) output and the fp32 rstd, as the kernel gets them
    X.out_bf16 = x_round(X.out_ref);
    X.g = x_round(randn(X.x.size(), rng, 1.0));
    std::vector<float> dy(X.x.size());
    qknorm_backward<float>(dy.data(), X.g.data(), X.out_bf16.data(), X.rstd_ref.data(), (int)X.rows, s.D);
    X.dx_ref.resize(X.x.size());
    rope_backward<float>(X.dx_ref.data(), dy.data(), cosf.data(), sinf.data(), s.B, s.T, X.NH, s.D, s.pos0);
}

void check_forward_result(const char* what, const Tensor& X, int D, const std::vector<float>& out, const std::vector<float>& rstd) {
    const int half = D / 2;
    CHECK(count_mismatches((std::string(what) + " rstd").c_str(), rstd, X.rstd_ref,
                           [&](size_t i) { return 1e-5 * X.rstd_ref[i]; }) == 0);
    CHECK(count_mismatches((std::string(what) + " out").c_str(), out, X.out_ref, [&](size_t i) {
        const size_t row = i / D, j = (i % D) % half;
        const double f = 1.2 * X.rstd_ref[row];
        const double ab = std::fabs(X.x[row * D + j]) + std::fabs(X.x[row * D + half + j]);
        return (X_ROUND + 1e-5) * std::fabs(X.out_ref[i]) + f * 0x1p-21 * ab;
    }) == 0);
}

void check_backward_result(const char* what, const Tensor& X, int D, const std::vector<float>& dx) {
    const int half = D / 2;
    std::vector<double> mabs(X.rows, 0.0);
    for (long r = 0; r < X.rows; r++) {
        for (int d = 0; d < D; d++) mabs[r] += std::fabs((double)X.g[r * D + d] * X.out_bf16[r * D + d]);
        mabs[r] /= 1.44 * D;
    }
    CHECK(count_mismatches((std::string(what) + " dinp").c_str(), dx, X.dx_ref, [&](size_t i) {
        const size_t row = i / D, j = (i % D) % half, i1 = row * D + j, i2 = i1 + half;
        const double f = 1.2 * X.rstd_ref[row];
        const double mag = f * (std::fabs(X.g[i1]) + std::fabs(X.g[i2]) +
                                (std::fabs(X.out_bf16[i1]) + std::fabs(X.out_bf16[i2])) * mabs[row]);
        return X_ROUND * std::fabs(X.dx_ref[i]) + 1e-5 * mag;
    }) == 0);
}

void check(const Shape& s, int offset, bool in_place, uint64_t seed) {
    CAPTURE(s.B); CAPTURE(s.T); CAPTURE(s.H); CAPTURE(s.Hkv); CAPTURE(s.D); CAPTURE(s.pos0);
    CAPTURE(offset);
    CAPTURE(in_place);
    llmc::Rng rng(seed);
    const int max_pos = s.pos0 + s.T + 3, half = s.D / 2;
    std::vector<float> cos32((size_t)max_pos * half), sin32((size_t)max_pos * half);
    rope_table(cos32.data(), sin32.data(), max_pos, s.D, 100000.0);
    const std::vector<float> cosf = x_round(cos32), sinf = x_round(sin32);  // the GPU's floatX tables

    Tensor Q{s.H}, K{s.Hkv};
    reference(Q, s, cosf, sinf, rng);
    reference(K, s, cosf, sinf, rng);

    DeviceBuffer<floatX> d_cos(padded(cosf, offset)), d_sin(padded(sinf, offset));
    DeviceBuffer<floatX> d_q(padded(Q.x, offset)), d_k(padded(K.x, offset));
    DeviceBuffer<floatX> d_qn(Q.x.size() + offset), d_kn(K.x.size() + offset);
    DeviceBuffer<float> d_rq(Q.rows), d_rk(K.rows);
    d_qn.poison(); d_kn.poison(); d_rq.poison(); d_rk.poison();
    floatX* qn = in_place ? d_q.ptr : d_qn.ptr;
    floatX* kn = in_place ? d_k.ptr : d_kn.ptr;
    rope_qknorm_forward(qn + offset, d_rq.ptr, kn + offset, d_rk.ptr, d_q.ptr + offset, d_k.ptr + offset,
                        d_cos.ptr + offset, d_sin.ptr + offset, s.B, s.T, s.H, s.Hkv, s.D, s.pos0, 0);
    const std::vector<float> q_out = unpad(in_place ? d_q.download() : d_qn.download(), offset);
    const std::vector<float> k_out = unpad(in_place ? d_k.download() : d_kn.download(), offset);
    check_forward_result("q", Q, s.D, q_out, d_rq.download());
    check_forward_result("k", K, s.D, k_out, d_rk.download());
    CHECK(d_rq.download()[0] == doctest::Approx(1.0 / std::sqrt(LLMC_RMSNORM_EPS)).epsilon(1e-5));

    // backward from the CPU's (bf16-rounded) outputs and rstd
    DeviceBuffer<floatX> d_gq(padded(Q.g, offset)), d_gk(padded(K.g, offset));
    DeviceBuffer<floatX> d_oq(padded(Q.out_bf16, offset)), d_ok(padded(K.out_bf16, offset));
    DeviceBuffer<float> d_rq_ref(Q.rstd_ref), d_rk_ref(K.rstd_ref);
    DeviceBuffer<floatX> d_dq(Q.x.size() + offset), d_dk(K.x.size() + offset);
    d_dq.poison(); d_dk.poison();
    floatX* dq = in_place ? d_gq.ptr : d_dq.ptr;
    floatX* dk = in_place ? d_gk.ptr : d_dk.ptr;
    rope_qknorm_backward(dq + offset, dk + offset, d_gq.ptr + offset, d_gk.ptr + offset, d_oq.ptr + offset,
                         d_ok.ptr + offset, d_rq_ref.ptr, d_rk_ref.ptr, d_cos.ptr + offset, d_sin.ptr + offset, s.B, s.T,
                         s.H, s.Hkv, s.D, s.pos0, 0);
    const std::vector<float> dq_got = unpad(in_place ? d_gq.download() : d_dq.download(), offset);
    const std::vector<float> dk_got = unpad(in_place ? d_gk.download() : d_dk.download(), offset);
    check_backward_result("q", Q, s.D, dq_got);
    check_backward_result("k", K, s.D, dk_got);

    // deterministic: a second run into fresh (poisoned) outputs gives the same bits
    if (!in_place) {
        d_qn.poison(); d_rq.poison();
        rope_qknorm_forward(d_qn.ptr + offset, d_rq.ptr, d_kn.ptr + offset, d_rk.ptr, d_q.ptr + offset, d_k.ptr + offset,
                            d_cos.ptr + offset, d_sin.ptr + offset, s.B, s.T, s.H, s.Hkv, s.D, s.pos0, 0);
        CHECK(bits_equal(unpad(d_qn.download(), offset), q_out));
        d_dk.poison();
        rope_qknorm_backward(d_dq.ptr + offset, d_dk.ptr + offset, d_gq.ptr + offset, d_gk.ptr + offset,
                             d_oq.ptr + offset, d_ok.ptr + offset, d_rq_ref.ptr, d_rk_ref.ptr, d_cos.ptr + offset,
                             d_sin.ptr + offset, s.B, s.T, s.H, s.Hkv, s.D, s.pos0, 0);
        CHECK(bits_equal(unpad(d_dk.download(), offset), dk_got));
    }
}

// v without its first off elements (the misalignment offset)
template <typename T>
std::vector<T> drop(const std::vector<T>& v, int off) { return std::vector<T>(v.begin() + off, v.end()); }



// In place on a packed buffer of N = B*T token rows [q (H*D) | k (Hkv*D) | v (Hkv*D) | pad], row stride
// ld = (H + 2 Hkv) D + pad, q = buf, k = buf + H*D, ldq = ldk = ld (the trainer's call), against the
// dense call (checked against the CPU ops first) on the same values. Bitwise: a stride changes only
// where a row starts (n*ld + h*D instead of (n*NH + h)*D); the lanes per row, the elements each lane
// takes and so the order of every fp32 sum follow from W and D alone, so with the same W each value
// goes through the same operations. W = XPACK needs ld % XPACK == 0: where the pad breaks that, the
// dense call gets its tensors at a 1-element offset (misaligned) so that it takes W = 1 as well.
// v and the pad are poisoned (NaN) before each call and must keep their bits; a kernel reading them
// would also turn results into NaN.
void check_packed(const Shape& s, int pad, uint64_t seed) {
    CAPTURE(s.B); CAPTURE(s.T); CAPTURE(s.H); CAPTURE(s.Hkv); CAPTURE(s.D); CAPTURE(s.pos0);
    CAPTURE(pad);
    llmc::Rng rng(seed);
    const int max_pos = s.pos0 + s.T + 3, half = s.D / 2;
    std::vector<float> cos32((size_t)max_pos * half), sin32((size_t)max_pos * half);
    rope_table(cos32.data(), sin32.data(), max_pos, s.D, 100000.0);
    const std::vector<float> cosf = x_round(cos32), sinf = x_round(sin32);
    Tensor Q{s.H}, K{s.Hkv};
    reference(Q, s, cosf, sinf, rng);
    reference(K, s, cosf, sinf, rng);
    const long N = (long)s.B * s.T, qw = (long)s.H * s.D, kw = (long)s.Hkv * s.D, ld = qw + 2 * kw + pad;
    const int off = ld % XPACK != 0 ? 1 : 0;
    CAPTURE(off);

    // dense forward (out of place), held to the CPU ops
    DeviceBuffer<floatX> d_cos(padded(cosf, off)), d_sin(padded(sinf, off));
    DeviceBuffer<floatX> d_q(padded(Q.x, off)), d_k(padded(K.x, off)), d_qn(Q.x.size() + off), d_kn(K.x.size() + off);
    DeviceBuffer<float> d_rq(Q.rows), d_rk(K.rows);
    d_qn.poison(); d_kn.poison();
    rope_qknorm_forward(d_qn.ptr + off, d_rq.ptr, d_kn.ptr + off, d_rk.ptr, d_q.ptr + off, d_k.ptr + off, d_cos.ptr + off,
                        d_sin.ptr + off, s.B, s.T, s.H, s.Hkv, s.D, s.pos0, 0);
    const std::vector<floatX> qn_dense = drop(d_qn.download(), off);
    const std::vector<floatX> kn_dense = drop(d_kn.download(), off);
    const std::vector<float> rq_dense = d_rq.download(), rk_dense = d_rk.download();
    check_forward_result("q (dense)", Q, s.D, to_f32(qn_dense), rq_dense);
    check_forward_result("k (dense)", K, s.D, to_f32(kn_dense), rk_dense);

    // strided forward, in place on the packed buffer
    DeviceBuffer<floatX> d_buf((size_t)(N * ld)), d_tab_c(to_x(cosf)), d_tab_s(to_x(sinf));
    DeviceBuffer<float> d_rq2(Q.rows), d_rk2(K.rows);
    d_buf.poison(); d_rq2.poison(); d_rk2.poison();
    std::vector<floatX> buf = d_buf.download();
    put_cols(buf, to_x(Q.x), N, ld, 0, qw);
    put_cols(buf, to_x(K.x), N, ld, qw, kw);
    d_buf.upload(buf);
    rope_qknorm_forward(d_buf.ptr, d_rq2.ptr, d_buf.ptr + qw, d_rk2.ptr, d_buf.ptr, d_buf.ptr + qw, d_tab_c.ptr, d_tab_s.ptr,
                        s.B, s.T, s.H, s.Hkv, s.D, s.pos0, 0, ld, ld);
    buf = d_buf.download();
    CHECK(bits_equal(get_cols(buf, N, ld, 0, qw), qn_dense));
    CHECK(bits_equal(get_cols(buf, N, ld, qw, kw), kn_dense));
    CHECK(bits_equal(d_rq2.download(), rq_dense));
    CHECK(bits_equal(d_rk2.download(), rk_dense));
    CHECK(gaps_changed(buf, N, ld, 0, qw + kw) == 0);

    // backward from the CPU's outputs and rstd: dense out of place (held to the CPU ops), then in
    // place on a packed gradient buffer with the saved outputs in a packed buffer too
    DeviceBuffer<floatX> d_gq(padded(Q.g, off)), d_gk(padded(K.g, off));
    DeviceBuffer<floatX> d_oq(padded(Q.out_bf16, off)), d_ok(padded(K.out_bf16, off));
    DeviceBuffer<float> d_rq_ref(Q.rstd_ref), d_rk_ref(K.rstd_ref);
    DeviceBuffer<floatX> d_dq(Q.x.size() + off), d_dk(K.x.size() + off);
    d_dq.poison(); d_dk.poison();
    rope_qknorm_backward(d_dq.ptr + off, d_dk.ptr + off, d_gq.ptr + off, d_gk.ptr + off, d_oq.ptr + off, d_ok.ptr + off,
                         d_rq_ref.ptr, d_rk_ref.ptr, d_cos.ptr + off, d_sin.ptr + off, s.B, s.T, s.H, s.Hkv, s.D, s.pos0, 0);
    const std::vector<floatX> dq_dense = drop(d_dq.download(), off);
    const std::vector<floatX> dk_dense = drop(d_dk.download(), off);
    check_backward_result("q (dense)", Q, s.D, to_f32(dq_dense));
    check_backward_result("k (dense)", K, s.D, to_f32(dk_dense));

    DeviceBuffer<floatX> d_gbuf((size_t)(N * ld)), d_obuf((size_t)(N * ld));
    d_gbuf.poison(); d_obuf.poison();
    std::vector<floatX> gbuf = d_gbuf.download(), obuf = d_obuf.download();
    put_cols(gbuf, to_x(Q.g), N, ld, 0, qw);
    put_cols(gbuf, to_x(K.g), N, ld, qw, kw);
    put_cols(obuf, to_x(Q.out_bf16), N, ld, 0, qw);
    put_cols(obuf, to_x(K.out_bf16), N, ld, qw, kw);
    d_gbuf.upload(gbuf);
    d_obuf.upload(obuf);
    rope_qknorm_backward(d_gbuf.ptr, d_gbuf.ptr + qw, d_gbuf.ptr, d_gbuf.ptr + qw, d_obuf.ptr, d_obuf.ptr + qw, d_rq_ref.ptr,
                         d_rk_ref.ptr, d_tab_c.ptr, d_tab_s.ptr, s.B, s.T, s.H, s.Hkv, s.D, s.pos0, 0, ld, ld);
    gbuf = d_gbuf.download();
    CHECK(bits_equal(get_cols(gbuf, N, ld, 0, qw), dq_dense));
    CHECK(bits_equal(get_cols(gbuf, N, ld, qw, kw), dk_dense));
    CHECK(gaps_changed(gbuf, N, ld, 0, qw + kw) == 0);
    CHECK(bits_equal(d_obuf.download(), obuf));  // the saved outputs: read only
}

}  // namespace

TEST_CASE("rope_qknorm forward and backward match rope + qknorm on the CPU") {
    uint64_t seed = 1;
    for (const Shape& s : kShapes) check(s, 0, false, seed++);
}

TEST_CASE("rope_qknorm with pointers not 16-byte aligned (scalar path, D % 16 == 0)") {
    check({2, 3, 3, 1, 32, 1}, 1, false, 21);
    check({1, 4, 2, 1, 128, 0}, 1, false, 22);
}

TEST_CASE("rope_qknorm in place (qn == q, dq == dqn)") {
    check({2, 5, 3, 1, 128, 0}, 0, true, 31);
    check({2, 3, 3, 1, 10, 2}, 0, true, 32);
}

TEST_CASE("rope_qknorm with row strides, in place on a packed [q | k | v] buffer: bitwise the dense call") {
    check_packed({2, 5, 3, 1, 128, 0}, 0, 41);  // the trainer's layout, GQA, 16-byte path
    check_packed({2, 4, 4, 2, 64, 3}, 8, 42);   // rows padded, 16-byte path
    check_packed({2, 3, 3, 1, 10, 2}, 0, 43);   // D % 16 != 0: scalar path in both calls
    check_packed({1, 4, 2, 1, 32, 1}, 1, 44);   // ld % XPACK != 0: the stride forces the scalar path
    check_packed({1, 3, 2, 2, 16, 0}, 4, 45);   // ld = 100: scalar in bf16, 16-byte in fp32
}

TEST_CASE("rope_qknorm launchers reject bad shapes") {
    CHECK_THROWS_AS(rope_qknorm_forward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 1, 1, 1,
                                        7, 0, 0),
                    llmc::Error);  // odd D
    CHECK_THROWS_AS(rope_qknorm_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                         nullptr, 1, 1, 0, 1, 8, 0, 0),
                    llmc::Error);  // H = 0
}

TEST_CASE("rope_qknorm launchers reject row strides shorter than a row") {
    // B=1, T=1, H=2, Hkv=1, D=8: rows of 16 (q) and 8 (k) elements
    CHECK_THROWS_AS(rope_qknorm_forward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 1, 2, 1,
                                        8, 0, 0, 15, 0),
                    llmc::Error);
    CHECK_THROWS_AS(rope_qknorm_forward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 1, 2, 1,
                                        8, 0, 0, 0, 7),
                    llmc::Error);
    CHECK_THROWS_AS(rope_qknorm_forward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 1, 2, 1,
                                        8, 0, 0, -32, 32),
                    llmc::Error);
    CHECK_THROWS_AS(rope_qknorm_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                         nullptr, 1, 1, 2, 1, 8, 0, 0, 15, 32),
                    llmc::Error);
    CHECK_THROWS_AS(rope_qknorm_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                         nullptr, 1, 1, 2, 1, 8, 0, 0, 32, 7),
                    llmc::Error);
}
