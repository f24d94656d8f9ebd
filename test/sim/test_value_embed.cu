// test_value_embed.cu: llmc/cuda/value_embed.cuh against the CPU reference (llmc/cpu/value_embed.h)
// run in fp32 on the same bf16 inputs (Wg fp32 in both; the backward gets the CPU forward's gamma).
//
// Tolerances (ref = the fp32 CPU result). The gate logit b is the same 12-term fp32 sum in both
// (same order; nvcc may contract it into FMAs) and sigmoid uses the GPU's fast exp and division:
// gamma agrees to ~1e-6 relative. The dot product <G_h, ve_h> is summed in fp32 by the kernel
// (D/lpr terms per lane, then log2(lpr) butterfly levels: <= (D + 5) 2^-24 of sum|G e|) and in double
// by the CPU op. With M_h = gamma (1 - gamma/3) sum_d |G_h[d] ve_h[d]| (a bound on |db_h| and the
// scale of its error):
//  - gamma (fp32): 1e-5 relative;
//  - v (bf16, +=): 2^-8 |ref| + 1e-5 |gamma ve| + 2^-22 (|v| + |gamma ve|);
//  - dve = bf16(gamma G): none: one fp32 product from the same gamma, as the CPU op, then rounded;
//  - du[c] (bf16, +=) for c < 12: 2^-8 |ref| + 1e-5 sum_h |Wg[h,c]| M_h + 2^-22 |du_old|;
//    channels c >= 12 must be untouched (bitwise);
//  - dWg[h,c] (fp32, +=): 1e-5 sum_n M_h |u[n,c]| + 2^-22 |ref|.
// FP32 build (-DLLMC_FP32, floatX = float): unrounded inputs, X_ROUND = 2^-24 for 2^-8, so v and du
// are held to their fp32 terms (a stray bf16 rounding, 2^-8, would fail), dve stays bitwise; lanes
// per row double (4 fp32 per 16-byte pack).
// Shapes (lanes per row for bf16): D = 128 (16 lanes per row, 2 heads per warp step), 64 with 3 heads (a group past the last
// head), 32, 8 (one lane per row, 32 heads per warp step), D % 8 != 0 (scalar path), Hkv = 1,
// tokens not a multiple of the 8 per block, more tokens than the fixed grid's warps (8192), a
// misaligned pointer.
//
// Row stride ldv: v (and dv) inside a packed [q | k | v] buffer (token row stride (H + 2 Hkv) D,
// here plus a pad), against the dense call on the same values: bitwise (see check_packed), with q, k
// and the pad poisoned and required to keep their bits.
#include <doctest/doctest.h>
#include "llmc/cuda/value_embed.cuh"
#include "llmc/cpu/value_embed.h"
#include "test/sim/test_util.h"

using namespace testutil;

namespace {

struct Shape { int N, C, Hkv, D; };

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

// The kernels' outputs against the CPU op's (tolerances at the top). tag names the run in messages.
// Forward: gamma and v (= v0 + gamma ve) from the CPU's gamma_ref and v_ref.
void check_forward(const std::string& tag, const std::vector<float>& gamma, const std::vector<float>& v_out, const std::vector<float>& gamma_ref,
                   const std::vector<float>& v_ref, const std::vector<float>& v0, const std::vector<float>& ve, int D) {
    CHECK(count_mismatches(("gamma" + tag).c_str(), gamma, gamma_ref, [&](size_t i) { return 1e-5 * gamma_ref[i]; }) == 0);
    CHECK(count_mismatches(("v" + tag).c_str(), v_out, v_ref, [&](size_t i) {
        const double ge = std::fabs(gamma_ref[i / D] * ve[i]);
        return X_ROUND * std::fabs(v_ref[i]) + 1e-5 * ge + 0x1p-22 * (std::fabs(v0[i]) + ge);
    }) == 0);
}
// Backward: dve (exact: one product, rounded once), du and dWg, against the CPU op run from the same
// gamma; the bounds scale with M = |db| per (token, head) = sum_d |g ve| gamma (1 - gamma/3).
void check_backward(const std::string& tag, const std::vector<float>& du, const std::vector<float>& dve, const std::vector<float>& dwg,
                    const std::vector<float>& du_ref, const std::vector<float>& dve_ref, const std::vector<float>& dwg_ref,
                    const std::vector<float>& g, const std::vector<float>& ve, const std::vector<float>& gamma, const std::vector<float>& u,
                    const std::vector<float>& wg, const std::vector<float>& du_old, int N, int C, int Hkv, int D) {
    std::vector<double> M((size_t)N * Hkv, 0.0);
    for (size_t r = 0; r < M.size(); r++) {
        for (int d = 0; d < D; d++) M[r] += std::fabs((double)g[r * D + d] * ve[r * D + d]);
        M[r] *= gamma[r] * (1.0 - gamma[r] / 3.0);
    }
    CHECK(count_mismatches(("dve" + tag).c_str(), dve, dve_ref, [](size_t) { return 0.0; }) == 0);
    CHECK(count_mismatches(("du" + tag).c_str(), du, du_ref, [&](size_t i) {
        const size_t n = i / C, c = i % C;
        if (c >= (size_t)VE_GATE_CHANNELS) return 0.0;
        double mag = 0.0;
        for (int h = 0; h < Hkv; h++) mag += std::fabs(wg[h * VE_GATE_CHANNELS + c]) * M[n * Hkv + h];
        return X_ROUND * std::fabs(du_ref[i]) + 1e-5 * mag + 0x1p-22 * std::fabs(du_old[i]);
    }) == 0);
    CHECK(count_mismatches(("dwg" + tag).c_str(), dwg, dwg_ref, [&](size_t k) {
        const size_t h = k / VE_GATE_CHANNELS, c = k % VE_GATE_CHANNELS;
        double mag = 0.0;
        for (int n = 0; n < N; n++) mag += M[(size_t)n * Hkv + h] * std::fabs(u[(size_t)n * C + c]);
        return 1e-5 * mag + 0x1p-22 * std::fabs(dwg_ref[k]);
    }) == 0);
}

void check(const Shape& s, int offset, uint64_t seed) {
    CAPTURE(s.N); CAPTURE(s.C); CAPTURE(s.Hkv); CAPTURE(s.D); CAPTURE(offset);
    const int N = s.N, C = s.C, Hkv = s.Hkv, D = s.D;
    const size_t nv = (size_t)N * Hkv * D, K = (size_t)Hkv * VE_GATE_CHANNELS;
    llmc::Rng rng(seed);
    std::vector<float> u = x_round(randn((size_t)N * C, rng, 1.0));
    std::vector<float> v = x_round(randn(nv, rng, 0.5)), ve = x_round(randn(nv, rng, 0.5));
    std::vector<float> wg = randn(K, rng, 0.5);
    std::vector<float> g = x_round(randn(nv, rng, 1.0));
    std::vector<float> du_old = x_round(randn((size_t)N * C, rng, 0.3));
    std::vector<float> dwg0 = randn(K, rng, 0.1);

    // forward
    std::vector<float> v_ref = v, gamma_ref((size_t)N * Hkv);
    ve_gate_forward<float>(v_ref.data(), gamma_ref.data(), u.data(), ve.data(), wg.data(), N, C, Hkv, D);
    DeviceBuffer<floatX> d_u(to_x(u)), d_v(padded(v, offset)), d_ve(padded(ve, offset));
    DeviceBuffer<float> d_wg(wg), d_gamma((size_t)N * Hkv);
    d_gamma.poison();
    ve_gate_forward(d_v.ptr + offset, d_gamma.ptr, d_u.ptr, d_ve.ptr + offset, d_wg.ptr, N, C, Hkv, D, 0);
    const std::vector<float> gamma = d_gamma.download(), v_out = unpad(d_v.download(), offset);
    check_forward("", gamma, v_out, gamma_ref, v_ref, v, ve, D);

    // backward, from the CPU forward's gamma
    std::vector<float> du_ref = du_old, dve_ref(nv), dwg_ref = dwg0;
    ve_gate_backward<float>(du_ref.data(), dve_ref.data(), dwg_ref.data(), g.data(), u.data(), ve.data(),
                            gamma_ref.data(), wg.data(), N, C, Hkv, D);
    dve_ref = x_round(dve_ref);
    DeviceBuffer<floatX> d_g(padded(g, offset)), d_dve(nv + offset), d_du(to_x(du_old));
    DeviceBuffer<float> d_gamma_ref(gamma_ref), d_dwg(dwg0), d_scratch(reduce_scratch_floats(ve_gate_partials(Hkv)));
    d_dve.poison();
    d_scratch.poison();
    ve_gate_backward(d_du.ptr, d_dve.ptr + offset, d_dwg.ptr, d_g.ptr + offset, d_u.ptr, d_ve.ptr + offset,
                     d_gamma_ref.ptr, d_wg.ptr, N, C, Hkv, D, d_scratch.ptr, 0);
    const std::vector<float> du = to_f32(d_du.download()), dve = unpad(d_dve.download(), offset), dwg = d_dwg.download();
    check_backward("", du, dve, dwg, du_ref, dve_ref, dwg_ref, g, ve, gamma_ref, u, wg, du_old, N, C, Hkv, D);

    // deterministic rerun from the same state
    DeviceBuffer<floatX> d_du2(to_x(du_old));
    DeviceBuffer<float> d_dwg2(dwg0);
    d_dve.poison();
    d_scratch.poison();
    ve_gate_backward(d_du2.ptr, d_dve.ptr + offset, d_dwg2.ptr, d_g.ptr + offset, d_u.ptr, d_ve.ptr + offset,
                     d_gamma_ref.ptr, d_wg.ptr, N, C, Hkv, D, d_scratch.ptr, 0);
    CHECK(bits_equal(d_dwg2.download(), dwg));
    CHECK(bits_equal(to_f32(d_du2.download()), du));
    CHECK(bits_equal(unpad(d_dve.download(), offset), dve));
}

template <typename T>
std::vector<T> drop(const std::vector<T>& v, int off) { return std::vector<T>(v.begin() + off, v.end()); }


// v (forward, in place) and dv (backward) as the v part of packed buffers of N token rows
// [q (H*D) | k (Hkv*D) | v (Hkv*D) | pad], ldv = (H + 2 Hkv) D + pad, against the dense calls on the
// same values. Bitwise: the stride changes only where a row of v/dv starts (n*ldv + h*D instead of
// (n*Hkv + h)*D); the gate, the lanes per row, the elements each lane takes and so the order of every
// fp32 sum (the dot products, du, the dWg partials) follow from W, D, Hkv and N alone, so with the same
// W every value goes through the same operations. W = XPACK needs ldv % XPACK == 0: where the pad
// breaks that, the dense calls get v, ve (dv, dve) at a 1-element offset so that they take W = 1 too.
// The rest of each row (q, k, pad) is poisoned (NaN) and must keep its bits; reading it would also
// turn results into NaN.
void check_packed(const Shape& s, int H, int pad, uint64_t seed) {
    CAPTURE(s.N); CAPTURE(s.C); CAPTURE(H); CAPTURE(s.Hkv); CAPTURE(s.D); CAPTURE(pad);
    const int N = s.N, C = s.C, Hkv = s.Hkv, D = s.D;
    const long vw = (long)Hkv * D, v0 = (long)(H + Hkv) * D, ld = v0 + vw + pad;
    const size_t nv = (size_t)N * vw, K = (size_t)Hkv * VE_GATE_CHANNELS;
    const int off = ld % XPACK != 0 ? 1 : 0;
    CAPTURE(off);
    llmc::Rng rng(seed);
    const std::vector<float> u = x_round(randn((size_t)N * C, rng, 1.0));
    const std::vector<float> v = x_round(randn(nv, rng, 0.5)), ve = x_round(randn(nv, rng, 0.5));
    const std::vector<float> wg = randn(K, rng, 0.5), g = x_round(randn(nv, rng, 1.0));
    const std::vector<float> du_old = x_round(randn((size_t)N * C, rng, 0.3)), dwg0 = randn(K, rng, 0.1);
    DeviceBuffer<floatX> d_u(to_x(u));
    DeviceBuffer<float> d_wg(wg);

    // forward: dense (held to the CPU op), then v inside the packed buffer
    std::vector<float> v_ref = v, gamma_ref((size_t)N * Hkv);
    ve_gate_forward<float>(v_ref.data(), gamma_ref.data(), u.data(), ve.data(), wg.data(), N, C, Hkv, D);
    DeviceBuffer<floatX> d_v(padded(v, off)), d_ve(padded(ve, off));
    DeviceBuffer<float> d_gamma((size_t)N * Hkv), d_gamma2((size_t)N * Hkv);
    d_gamma.poison(); d_gamma2.poison();
    ve_gate_forward(d_v.ptr + off, d_gamma.ptr, d_u.ptr, d_ve.ptr + off, d_wg.ptr, N, C, Hkv, D, 0);
    const std::vector<floatX> v_dense = drop(d_v.download(), off);
    const std::vector<float> gamma_dense = d_gamma.download();
    check_forward(" (dense)", gamma_dense, to_f32(v_dense), gamma_ref, v_ref, v, ve, D);

    DeviceBuffer<floatX> d_buf((size_t)N * ld), d_ve2(to_x(ve));
    d_buf.poison();
    std::vector<floatX> buf = d_buf.download();
    put_cols(buf, to_x(v), N, ld, v0, vw);
    d_buf.upload(buf);
    ve_gate_forward(d_buf.ptr + v0, d_gamma2.ptr, d_u.ptr, d_ve2.ptr, d_wg.ptr, N, C, Hkv, D, 0, ld);
    buf = d_buf.download();
    CHECK(bits_equal(get_cols(buf, N, ld, v0, vw), v_dense));
    CHECK(bits_equal(d_gamma2.download(), gamma_dense));
    CHECK(gaps_changed(buf, N, ld, v0, v0 + vw) == 0);

    // backward from the dense forward's gamma: dense (dv, dve at the offset), then dv in a packed buffer
    DeviceBuffer<floatX> d_g(padded(g, off)), d_dve(nv + off), d_du(to_x(du_old));
    DeviceBuffer<float> d_dwg(dwg0), d_scratch(reduce_scratch_floats(ve_gate_partials(Hkv)));
    d_dve.poison();
    ve_gate_backward(d_du.ptr, d_dve.ptr + off, d_dwg.ptr, d_g.ptr + off, d_u.ptr, d_ve.ptr + off, d_gamma.ptr, d_wg.ptr,
                     N, C, Hkv, D, d_scratch.ptr, 0);
    const std::vector<floatX> dve_dense = drop(d_dve.download(), off), du_dense = d_du.download();
    const std::vector<float> dwg_dense = d_dwg.download();
    {  // held to the CPU op (tolerances at the top; gamma here is the GPU's, so the reference uses it)
        std::vector<float> du_ref = du_old, dve_ref(nv), dwg_ref = dwg0;
        ve_gate_backward<float>(du_ref.data(), dve_ref.data(), dwg_ref.data(), g.data(), u.data(), ve.data(),
                                gamma_dense.data(), wg.data(), N, C, Hkv, D);
        check_backward(" (dense)", to_f32(du_dense), to_f32(dve_dense), dwg_dense, du_ref, x_round(dve_ref), dwg_ref, g, ve, gamma_dense, u, wg,
                       du_old, N, C, Hkv, D);
    }

    DeviceBuffer<floatX> d_gbuf((size_t)N * ld), d_dve2(nv), d_du2(to_x(du_old));
    DeviceBuffer<float> d_dwg2(dwg0);
    d_gbuf.poison(); d_dve2.poison(); d_scratch.poison();
    std::vector<floatX> gbuf = d_gbuf.download();
    put_cols(gbuf, to_x(g), N, ld, v0, vw);
    d_gbuf.upload(gbuf);
    ve_gate_backward(d_du2.ptr, d_dve2.ptr, d_dwg2.ptr, d_gbuf.ptr + v0, d_u.ptr, d_ve2.ptr, d_gamma.ptr, d_wg.ptr, N, C,
                     Hkv, D, d_scratch.ptr, 0, ld);
    CHECK(bits_equal(d_dve2.download(), dve_dense));
    CHECK(bits_equal(d_du2.download(), du_dense));
    CHECK(bits_equal(d_dwg2.download(), dwg_dense));
    CHECK(bits_equal(d_gbuf.download(), gbuf));  // dv is read only; q, k and the pad keep the poison
}

}  // namespace

TEST_CASE("ve_gate forward and backward match the CPU op (vector and scalar paths)") {
    const Shape shapes[] = {{10, 16, 2, 128}, {7, 12, 3, 64}, {5, 20, 5, 32}, {6, 12, 3, 8},
                            {9, 13, 1, 10},   {4, 30, 2, 6},  {300, 24, 4, 16}};
    uint64_t seed = 1;
    for (const Shape& s : shapes) check(s, 0, seed++);
}

TEST_CASE("ve_gate with pointers not 16-byte aligned (scalar path, D % 8 == 0)") {
    check({6, 12, 2, 32}, 1, 11);
}

TEST_CASE("ve_gate_backward with more tokens than the fixed grid's warps") {
    check({8500, 12, 1, 8}, 0, 21);  // 8500 > 1024 blocks x 8 warps
}

TEST_CASE("ve_gate launchers reject bad shapes") {
    CHECK_THROWS_AS(ve_gate_forward(nullptr, nullptr, nullptr, nullptr, nullptr, 4, 11, 1, 8, 0), llmc::Error);
    CHECK_THROWS_AS(ve_gate_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 4, 12, 0, 8,
                                     nullptr, 0),
                    llmc::Error);
    CHECK_THROWS_AS(ve_gate_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 4, 12, 200,
                                     8, nullptr, 0),
                    llmc::Error);  // too much shared memory
}

TEST_CASE("ve_gate with v inside a packed [q | k | v] buffer (row stride ldv): bitwise the dense call") {
    check_packed({10, 16, 2, 128}, 4, 0, 31);  // the trainer's layout, GQA (H = 4, Hkv = 2), 16-byte path
    check_packed({7, 12, 3, 64}, 3, 8, 32);    // rows padded, 16-byte path
    check_packed({9, 13, 1, 10}, 2, 0, 33);    // D % 8 != 0: scalar path in both calls
    check_packed({6, 12, 2, 32}, 2, 1, 34);    // ldv % XPACK != 0: the stride forces the scalar path
    check_packed({300, 24, 4, 16}, 6, 4, 35);  // ldv = 228: scalar in bf16, 16-byte in fp32; many tokens
}

TEST_CASE("ve_gate launchers reject row strides shorter than a row") {
    // Hkv = 2, D = 8: v rows of 16 elements
    CHECK_THROWS_AS(ve_gate_forward(nullptr, nullptr, nullptr, nullptr, nullptr, 4, 12, 2, 8, 0, 15), llmc::Error);
    CHECK_THROWS_AS(ve_gate_forward(nullptr, nullptr, nullptr, nullptr, nullptr, 4, 12, 2, 8, 0, -16), llmc::Error);
    CHECK_THROWS_AS(ve_gate_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 4, 12, 2, 8,
                                     nullptr, 0, 15),
                    llmc::Error);
}
