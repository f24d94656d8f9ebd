// test_lightning.cu: llmc/cuda/lightning.cuh (the Lightning Attention layer, forward and backward)
// against the CPU op (llmc/cpu/lightning.h) run in double on the same floatX-rounded inputs (spec
// test L6).
//
// Forward: out and the saved p, a, o, r against the double forward. Backward: both sides are fed
// the same saved tensors (the double forward's p, o, a rounded to floatX, r to fp32, as the GPU
// stores them), so the backward is checked on its own; du and every parameter gradient compared.
// The parameter gradients start from nonzero values `old` (RMS equal to the expected increment's)
// and must come out as old + increment (+=); du is poisoned and must be overwritten. Every output
// and the work area are poisoned (NaN) before each launch, so an element never written fails (NaN
// never passes a comparison). Each case runs forward + backward twice and must give the same bits
// (the plain SIM flavor also reruns every launch in reverse block/warp order by itself).
//
// Shapes: B = 2, T not a multiple of the block (70 with blk 32: two full blocks and a tail of 6;
// 17 with blk 32: one partial block), blk 256 (clamped to the kernel's chunk, which must not change
// the function), D = 64 and D = 128 (the 32-token chunk and the 64 KiB state), D = 32; H = 1..4;
// slopes (lightning_slopes) of the first layer (fast decay: s = 2^(-8(h+1)/H), 0.25 for head 0 of
// H = 4, 2^-8 for the last head) and of the last (s = base·1e-5: almost no decay, so |o| grows with
// T); heads 0..H-1 span the fastest and the slowest slope of each layer.
//
// Metric: relative L2 error ||got - ref|| / ||ref|| (for the accumulated gradients the norm of the
// increment ref - old). Bounds, bf16 build (spec L6): raw o <= 2e-2 (o is computed from p rounded
// to bf16, each of q, k, v then carries a relative error ~2^-9 that the core's sums keep; o itself
// is rounded once more), everything after the norm and all gradients <= 1e-2 (a chain of 2-4
// bf16 roundings of intermediates: dz, do, dp, du's four accumulating GEMM outputs; RMS relative
// error of one rounding ~2^-9/sqrt(3) ~ 1.1e-3, so a few of them stay well below 1e-2).
// FP32 build (floatX = float): nothing is rounded to bf16; the remaining error is fp32 arithmetic:
// sequential sums of at most K ~ max(C, N, T) <= 256 terms with random signs: a random walk of
// roundings, ~sqrt(K) 2^-24 ~ 1e-6 of the sum's scale (the worst case K 2^-24 ~ 1.5e-5 needs every
// rounding in the same direction). Bound 1e-5: 10x that typical error (measured: at most 4.2e-7
// over all cases and outputs), 100x below one bf16 rounding's RMS (1.1e-3), so a stray rounding
// to bf16 fails it.
// Measured, bf16 build: o <= 3.1e-3, the rest <= 4.7e-3 (out); the errors of every case are printed
// (MESSAGE).
#include <doctest/doctest.h>
#include "llmc/cuda/lightning.cuh"
#include "llmc/cpu/lightning.h"
#include "test/sim/test_util.h"

using namespace testutil;

namespace {


struct Case { int B, T, C, H, D, blk, layer, n_layer; };

const Case kCases[] = {
    {2, 70, 64, 2, 64, 32, 0, 4},             // first layer: fastest decays; two blocks and a tail of 6
    {2, 70, 64, 2, 64, 32, 3, 4},             // last layer: slowest decays
    {2, 17, 96, 4, 32, 32, 0, 6},             // one partial block, H = 4, D = 32
    {2, 70, 128, 1, 128, 32, 5, 6},     // D = 128 (32-token chunks, 64 KiB state), last layer
    {2, 70, 64, 2, 64, 256, 1, 3},      // blk 256 > T: the kernel chunks by 64, the CPU by 256
};
// TSan (every fiber switch and shared access instrumented): small shapes only, that keep a
// multi-chunk row with a tail and both directions of the scans
const Case kCasesLight[] = {
    {2, 20, 64, 2, 32, 8, 0, 4},              // 3 chunks, tail of 4
    {1, 9, 64, 1, 64, 16, 3, 4},              // one partial chunk, slow decay
};

double rel_l2(const std::vector<float>& got, const std::vector<double>& ref, const std::vector<double>* old = nullptr) {
    REQUIRE(got.size() == ref.size());
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < got.size(); i++) {
        const double d = (double)got[i] - ref[i];
        const double inc = old ? ref[i] - (*old)[i] : ref[i];
        num += d * d;
        den += inc * inc;
    }
    if (std::isnan(num)) return NAN;
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }
std::vector<float> to_float(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

template <typename T>
std::vector<float> download_f(const DeviceBuffer<T>& b) { return to_f32(b.download()); }

bool all_finite(const std::vector<float>& v) {
    for (float x : v)
        if (!std::isfinite(x)) return false;
    return true;
}

// the device side of one case: inputs, saved tensors, outputs
struct GpuRun {
    std::vector<float> out, p, o, r, a, du, dwq, dwk, dwv, dwgate, dwo, dw;
};

void run_case(const Case& cs, uint64_t seed) {
    const int B = cs.B, T = cs.T, C = cs.C, H = cs.H, D = cs.D, blk = cs.blk, N = H * D;
    const size_t BT = (size_t)B * T;
    llmc::Rng rng(seed);
    // p ~ N(0, 1) (u unit normal, weights 1/sqrt(C)), the gate pre-activation likewise
    const std::vector<float> u = x_round(randn(BT * C, rng, 1.0));
    const std::vector<float> wq = x_round(randn((size_t)N * C, rng, 1.0 / std::sqrt((double)C)));
    const std::vector<float> wk = x_round(randn((size_t)N * C, rng, 1.0 / std::sqrt((double)C)));
    const std::vector<float> wv = x_round(randn((size_t)N * C, rng, 1.0 / std::sqrt((double)C)));
    const std::vector<float> wg = x_round(randn((size_t)N * C, rng, 1.0 / std::sqrt((double)C)));
    const std::vector<float> wo = x_round(randn((size_t)C * N, rng, 1.0 / std::sqrt((double)N)));
    std::vector<float> w = randn(N, rng, 0.2);
    for (float& x : w) x += 1.0f;  // fp32 (the master weight), around 1
    std::vector<float> slopes(H);
    lightning_slopes(slopes.data(), H, cs.layer, cs.n_layer);
    const std::vector<float> dout = x_round(randn(BT * C, rng, 1.0));

    // ---- CPU reference in double ----
    const LightningSizes sz = lightning_sizes(B, T, H, D);
    std::vector<double> ru = to_double(u), rwq = to_double(wq), rwk = to_double(wk), rwv = to_double(wv), rwg = to_double(wg),
                        rwo = to_double(wo), rw = to_double(w), rs = to_double(slopes), rdout = to_double(dout);
    std::vector<double> out_ref(BT * C), p_ref(sz.p), o_ref(sz.o), r_ref(sz.r), a_ref(sz.a), work(std::max(sz.work_forward, sz.work_backward));
    lightning_forward<double>(out_ref.data(), p_ref.data(), o_ref.data(), r_ref.data(), a_ref.data(), ru.data(), rwq.data(), rwk.data(),
                              rwv.data(), rwg.data(), rwo.data(), rw.data(), rs.data(), B, T, C, H, D, blk, work.data());
    // what the backward is fed (both sides): the saved tensors as the GPU stores them
    const std::vector<float> p_in = x_round(to_float(p_ref)), o_in = x_round(to_float(o_ref)), a_in = x_round(to_float(a_ref)),
                             r_in = to_float(r_ref);
    // increments first (from zero), to size `old`
    std::vector<double> du_ref(BT * C), dwq_ref((size_t)N * C, 0.0), dwk_ref(dwq_ref), dwv_ref(dwq_ref), dwg_ref(dwq_ref),
        dwo_ref((size_t)C * N, 0.0), dw_ref(N, 0.0);
    {
        std::vector<double> pi = to_double(p_in), oi = to_double(o_in), ai = to_double(a_in), ri = to_double(r_in);
        lightning_backward<double>(du_ref.data(), dwq_ref.data(), dwk_ref.data(), dwv_ref.data(), dwg_ref.data(), dwo_ref.data(),
                                   dw_ref.data(), rdout.data(), ru.data(), pi.data(), oi.data(), ri.data(), ai.data(), rwq.data(),
                                   rwk.data(), rwv.data(), rwg.data(), rwo.data(), rw.data(), rs.data(), B, T, C, H, D, blk, work.data());
    }
    // old gradients with the increment's RMS; the expected results are old + increment
    auto make_old = [&](std::vector<double>& ref) {
        double ss = 0.0;
        for (double x : ref) ss += x * x;
        const double rms = std::sqrt(ss / ref.size());
        std::vector<float> old = randn(ref.size(), rng, rms > 0 ? rms : 1.0);
        for (size_t i = 0; i < ref.size(); i++) ref[i] += (double)old[i];
        return old;
    };
    const std::vector<float> old_wq = make_old(dwq_ref), old_wk = make_old(dwk_ref), old_wv = make_old(dwv_ref),
                             old_wg = make_old(dwg_ref), old_wo = make_old(dwo_ref), old_w = make_old(dw_ref);

    // ---- GPU ----
    const LightningSizes gs = lightning_sizes_cuda(B, T, H, D);
    CHECK(gs.p == sz.p);
    CHECK(gs.o == sz.o);
    CHECK(gs.r == sz.r);
    CHECK(gs.a == sz.a);
    DeviceBuffer<floatX> d_u(to_x(u)), d_wq(to_x(wq)), d_wk(to_x(wk)), d_wv(to_x(wv)), d_wg(to_x(wg)), d_wo(to_x(wo)), d_dout(to_x(dout));
    DeviceBuffer<float> d_w(w), d_s(slopes);
    DeviceBuffer<floatX> d_out(BT * C), d_p(gs.p), d_o(gs.o), d_a(gs.a), d_work(std::max(gs.work_forward, gs.work_backward));
    DeviceBuffer<float> d_r(gs.r);
    DeviceBuffer<floatX> d_pin(to_x(p_in)), d_oin(to_x(o_in)), d_ain(to_x(a_in)), d_du(BT * C);
    DeviceBuffer<float> d_rin(r_in), d_dwq(old_wq.size()), d_dwk(old_wk.size()), d_dwv(old_wv.size()), d_dwg(old_wg.size()),
        d_dwo(old_wo.size()), d_dw(old_w.size());

    auto run = [&]() {
        GpuRun g;
        d_out.poison(); d_p.poison(); d_o.poison(); d_a.poison(); d_r.poison(); d_work.poison();
        lightning_forward(d_out.ptr, d_p.ptr, d_o.ptr, d_r.ptr, d_a.ptr, d_u.ptr, d_wq.ptr, d_wk.ptr, d_wv.ptr, d_wg.ptr, d_wo.ptr, d_w.ptr,
                          d_s.ptr, B, T, C, H, D, blk, d_work.ptr, 0);
        g.out = download_f(d_out); g.p = download_f(d_p); g.o = download_f(d_o); g.a = download_f(d_a); g.r = d_r.download();
        d_du.poison(); d_work.poison();
        d_dwq.upload(old_wq); d_dwk.upload(old_wk); d_dwv.upload(old_wv); d_dwg.upload(old_wg); d_dwo.upload(old_wo); d_dw.upload(old_w);
        lightning_backward(d_du.ptr, d_dwq.ptr, d_dwk.ptr, d_dwv.ptr, d_dwg.ptr, d_dwo.ptr, d_dw.ptr, d_dout.ptr, d_u.ptr, d_pin.ptr,
                           d_oin.ptr, d_rin.ptr, d_ain.ptr, d_wq.ptr, d_wk.ptr, d_wv.ptr, d_wg.ptr, d_wo.ptr, d_w.ptr, d_s.ptr, B, T, C, H,
                           D, blk, d_work.ptr, 0);
        g.du = download_f(d_du); g.dwq = d_dwq.download(); g.dwk = d_dwk.download(); g.dwv = d_dwv.download();
        g.dwgate = d_dwg.download(); g.dwo = d_dwo.download(); g.dw = d_dw.download();
        return g;
    };
    const GpuRun g = run();

    const double tol_o = kFP32 ? 1e-5 : 2e-2, tol = kFP32 ? 1e-5 : 1e-2;
    std::vector<double> dold_wq = to_double(old_wq), dold_wk = to_double(old_wk), dold_wv = to_double(old_wv), dold_wg = to_double(old_wg),
                        dold_wo = to_double(old_wo), dold_w = to_double(old_w);
    const std::vector<double>* olds[] = {&dold_wq, &dold_wk, &dold_wv, &dold_wg, &dold_wo, &dold_w};
    struct Cmp { const char* name; const std::vector<float>& got; const std::vector<double>& ref; const std::vector<double>* old; double tol; };
    const Cmp cmps[] = {
        {"p", g.p, p_ref, nullptr, tol}, {"a", g.a, a_ref, nullptr, tol}, {"o", g.o, o_ref, nullptr, tol_o},
        {"r", g.r, r_ref, nullptr, tol}, {"out", g.out, out_ref, nullptr, tol}, {"du", g.du, du_ref, nullptr, tol},
        {"dwq", g.dwq, dwq_ref, olds[0], tol}, {"dwk", g.dwk, dwk_ref, olds[1], tol}, {"dwv", g.dwv, dwv_ref, olds[2], tol},
        {"dwgate", g.dwgate, dwg_ref, olds[3], tol}, {"dwo", g.dwo, dwo_ref, olds[4], tol}, {"dw", g.dw, dw_ref, olds[5], tol},
    };
    std::string msg;
    for (const Cmp& c : cmps) {
        CAPTURE(c.name);
        CHECK(all_finite(c.got));
        const double e = rel_l2(c.got, c.ref, c.old);
        CHECK(e <= c.tol);
        char buf[64];
        std::snprintf(buf, sizeof buf, " %s %.2e", c.name, e);
        msg += buf;
    }
    MESSAGE("B=" << B << " T=" << T << " C=" << C << " H=" << H << " D=" << D << " blk=" << blk << " layer " << cs.layer << "/"
                 << cs.n_layer << " (" LLMC_PRECISION_NAME ") rel. L2:" << msg);

    // bitwise determinism: a second run gives the same bits everywhere
    const GpuRun g2 = run();
    const std::vector<float>* first[] = {&g.out, &g.p, &g.o, &g.r, &g.a, &g.du, &g.dwq, &g.dwk, &g.dwv, &g.dwgate, &g.dwo, &g.dw};
    const std::vector<float>* second[] = {&g2.out, &g2.p, &g2.o, &g2.r, &g2.a, &g2.du, &g2.dwq, &g2.dwk, &g2.dwv, &g2.dwgate, &g2.dwo, &g2.dw};
    for (int i = 0; i < 12; i++) {
        CAPTURE(i);
        CHECK(bits_equal(*first[i], *second[i]));
    }
}

}  // namespace

TEST_CASE("lightning forward and backward match the CPU op (spec L6), deterministic, gradients accumulate") {
    matmul_init();
    uint64_t seed = 100;
    if (kTsan) {
        for (const Case& cs : kCasesLight) run_case(cs, seed++);
    } else {
        for (const Case& cs : kCases) run_case(cs, seed++);
        for (const Case& cs : kCasesLight) run_case(cs, seed++);
    }
}

TEST_CASE("lightning: a head dim above 128 is refused with an error") {
    matmul_init();
    DeviceBuffer<floatX> d(16);
    DeviceBuffer<float> f(16);
    CHECK_THROWS_AS(lightning_forward(d.ptr, d.ptr, d.ptr, f.ptr, d.ptr, d.ptr, d.ptr, d.ptr, d.ptr, d.ptr, d.ptr, f.ptr, f.ptr, 1, 1, 8, 1,
                                      256, 64, d.ptr, 0),
                    llmc::Error);
}
