// test_attention.cu: llmc/cuda/attention.cuh (tensor-core flash attention, forward and backward, and
// the fp32 variant) against the CPU op (llmc/cpu/attention.h) run in double on the same
// bf16-rounded inputs. The backward of both is fed the same O and lse (the double forward's,
// rounded to bf16 and fp32 as the model stores them), so each pass is checked on its own.
//
// Shapes (B, T, H, Hkv, D, window) cover T = 1, tails (17, 255, 300: T not a multiple of the
// 64-row tiles), exact tiles (64), several tiles, B = 1 and 3, D = 64 and 128, H/Hkv = 1, 2, 4, 8,
// and windows 0 (each query sees itself only), 1, 63, 128 and >= T (plain causal). The TSan build
// (each warp collective ~75x slower than in the plain build) runs a few small shapes that still
// have a tail, GQA, a window, several tiles per block and both D.
// Every output is poisoned (NaN) before each launch, so an element never written fails. For the
// first and third shapes (the first under TSan, and every fp32 shape) each kernel runs twice and must give the same bits; in
// the plain SIM flavor (LLMC_SIM_DETERMINISM=1) SIM itself reruns every launch of every shape in
// reverse block and warp order and compares all device memory bitwise; on a GPU the two runs
// race differently (scripts/gpu_check.sh also runs every test binary twice).
// Row strides (ldq, ldkv; the trainer's packed [q | k | v] GEMM output): both kernel families on q,
// k, v and dq, dk, dv as strided views of one buffer each must give bitwise the contiguous call's
// results, and leave every other column of the gradient buffer untouched (see check_packed); strides
// below the row width, or not multiples of 8 for the tensor cores, are an error.
//
// Tolerances, per element, from what each kernel rounds (the reference is double, its own error
// is negligible). Notation: p_ij = exp(s_ij - lse_i), N = number of terms of a sum over keys
// (or over the group's queries), "dot" = error of a length-D dot product per unit of sum_d |a_d b_d|:
//   bf16 tensor-core kernels: mma.sync chains accumulate in fp32 with at most K 2^-22 sum|ab|
//   (llmc/cuda/mma.cuh: K exact products summed in fp32, x4 for tensor cores that truncate), so
//   dot = (D + 2) 2^-22 and a sum over N keys errs by (N + 16) 2^-22 of its sum of |terms| (+16:
//   the few rescales, the division by l, the final scale). P (forward, dV) and dS (dQ, dK) are
//   rounded to bf16 before they enter a product: 2^-8 of each term; the stored O, dq, dk, dv are
//   bf16: 2^-8 of the value. A score error e moves the exponent by e, and so p by a relative
//   e^e - 1 <= 2e; the exponent's own error is dot * scale * sum|q k| + 2^-22 (|s| + |lse|)
//   (fp32 roundings of the scaled score, of lse and of their difference) + 2^-21 (exp2 of
//   --use_fast_math). Hence, with A = sum_j p_ij |v_jd| (forward), etc.:
//     O:   2^-8 |O| + (2^-8 + 2 E_i + 2 (N+16) 2^-22) A          E_i = max_j exponent error of row i
//     lse: E_i + (N+16) 2^-22 + 2^-22 |lse|
//     dV:  2^-8 |dV| + sum (2^-8 + 2E_ij) p |dO| + (N+16) 2^-22 sum p |dO|
//     dK:  2^-8 |dK| + scale (sum dds_ij |q| + (N+16) 2^-22 sum |ds| |q|), dQ likewise with |k|,
//          dds_ij = (2^-8 + 2E_ij) p (|dP| + |D_i|) + p dot (sum|dO v| + sum|dO o|)
//   fp32 variant: nothing rounded to bf16; a dot product is per-lane sequential sums (D/32 terms)
//   then a 5-level butterfly, dot = (D/32 + 8) 2^-24; sums over keys are sequential fp32 FMAs with
//   a rescale per step, 2 2^-24 per term; outputs fp32: 2^-23 of the value. The worst
//   err/tol of each output is printed (MESSAGE) for every shape. Its inputs are floatX values:
//   bf16-rounded in the default build, plain fp32 in the fp32 build, where each product of a dot
//   product rounds once too (+1 in dot).
// FP32 build (-DLLMC_FP32): attention_forward / attention_backward on floatX = float are the fp32
// variant, so the fp32 case goes through them (the model's entry points); the tensor-core case is
// skipped there: its kernels are explicitly bf16 (att_bf16), the same code as in the default build,
// where it runs.
#include <doctest/doctest.h>
#include <climits>
#include "llmc/cuda/attention.cuh"
#include "llmc/cpu/attention.h"
#include "test/sim/test_util.h"
#ifdef LLMC_CUDNN  // build/gpu/test_attention_cudnn only (make USE_CUDNN=1): the cuDNN section at the end
#include "llmc/cuda/attention_cudnn.cuh"
#endif

using namespace testutil;

namespace {


// heavy: skipped in the ASan build (~3x slower than plain), where the other shapes still cover
// tails, both D and the other windows (0, 63, 128, none)
struct Shape { int B, T, H, Hkv, D, window; bool heavy = false; };
constexpr int kNone = INT_MAX;  // no window: plain causal

// the bf16 tensor-core kernels (D = 64, 128)
const Shape kShapes[] = {
    {1, 1, 2, 1, 64, kNone},    // one token
    {3, 17, 4, 1, 64, kNone},   // B = 3, one partial tile, GQA 4
    {1, 64, 8, 1, 64, 63},      // one exact tile, GQA 8, window = T-1
    {1, 255, 2, 2, 64, 128},    // MHA, window 128 over 4 tiles, tail of 63
    {3, 65, 2, 1, 128, 0},      // window 0: each query sees only itself; a tile of one row
    {1, 300, 2, 1, 128, 1, true},    // window 1 (most tiles skipped), GQA 2, tail of 44
    {1, 255, 2, 1, 64, 63},     // window 63: the band crosses every tile pair it touches
    {1, 200, 1, 1, 128, kNone, true}, // causal over 4 tiles, D = 128, tail of 8
};
// TSan: ~2 ms per warp collective (mma, ldmatrix, shuffle), ~75x the plain build, so a few small
// shapes that still run every kernel through its double-buffered pipeline (several tiles per
// block), GQA, a window and a tail, and D = 128 once
const Shape kShapesTsan[] = {
    {1, 17, 2, 1, 64, kNone},   // one partial tile, GQA 2 (the dk/dv pass walks 2 heads)
    {1, 80, 2, 1, 64, 20},      // window 20 across two tiles, tail of 16
    {1, 65, 1, 1, 128, 0},      // D = 128, a tile of one row
};
// the fp32 variant (any D): small, since SIM runs its per-key warp reductions slowly
const Shape kShapesFp32[] = {
    {3, 17, 4, 2, 64, kNone},
    {1, 40, 4, 1, 40, 7},       // D not a multiple of 32, window
    {1, 33, 2, 2, 128, 0},
    {1, 24, 2, 1, 200, kNone},  // D > 128
};
const Shape kShapesFp32Tsan[] = {
    {1, 9, 2, 1, 40, 3},
};

struct Precision {
    double out;  // relative rounding of a stored output
    double p;    // relative rounding of p / ds before they enter a product
    double dot;  // error of a length-D dot product, per unit of sum |a b|
    double sum;  // error of a sum over keys or queries, per term, per unit of sum |terms|
};
Precision bf16_precision(int D) { return {BF16_ROUND, BF16_ROUND, (D + 2) * std::ldexp(1.0, -22), std::ldexp(1.0, -22)}; }
Precision fp32_precision(int D) { return {std::ldexp(1.0, -23), 0.0, (D / 32 + 9) * std::ldexp(1.0, -24), 2 * std::ldexp(1.0, -24)}; }

// One problem: rounded inputs (to bf16 for the tensor cores, to floatX for the fp32 variant), the CPU
// op's results in double, and per-element tolerances.
struct Problem {
    Shape sh;
    int w;
    double scale;
    std::vector<float> q, k, v, dout;          // inputs (bf16 or floatX values)
    std::vector<double> o_ref, lse_ref;        // forward in double
    std::vector<float> o_in, lse_in;           // what the backward is fed: o rounded to bf16, lse to fp32
    std::vector<double> dq_ref, dk_ref, dv_ref;
    std::vector<double> tol_o, tol_lse, tol_dq, tol_dk, tol_dv;
};

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// round: the values the kernel's input type holds (bf16_round, or x_round for the fp32 variant)
Problem make_problem(const Shape& sh, uint64_t seed, std::vector<float> (*round)(const std::vector<float>&)) {
    Problem P;
    P.sh = sh;
    const int B = sh.B, T = sh.T, H = sh.H, Hkv = sh.Hkv, D = sh.D;
    P.w = std::min(sh.window, T - 1);
    P.scale = 1.0 / std::sqrt((double)D);
    llmc::Rng rng(seed);
    // q with std 2: scores ~ N(0, 4), so row maxima change from tile to tile (online rescaling)
    P.q = round(randn((size_t)B * T * H * D, rng, 2.0));
    P.k = round(randn((size_t)B * T * Hkv * D, rng));
    P.v = round(randn((size_t)B * T * Hkv * D, rng));
    P.dout = round(randn((size_t)B * T * H * D, rng));
    const std::vector<double> qd = to_double(P.q), kd = to_double(P.k), vd = to_double(P.v), gd = to_double(P.dout);
    P.o_ref.resize(qd.size());
    P.lse_ref.resize((size_t)B * H * T);
    attention_forward<double>(P.o_ref.data(), P.lse_ref.data(), qd.data(), kd.data(), vd.data(), B, T, H, Hkv, D, sh.window);
    P.o_in = bf16_round(std::vector<float>(P.o_ref.begin(), P.o_ref.end()));
    P.lse_in = std::vector<float>(P.lse_ref.begin(), P.lse_ref.end());
    const std::vector<double> oi = to_double(P.o_in), li = to_double(P.lse_in);
    P.dq_ref.resize(qd.size());
    P.dk_ref.resize(kd.size());
    P.dv_ref.resize(vd.size());
    attention_backward<double>(P.dq_ref.data(), P.dk_ref.data(), P.dv_ref.data(), gd.data(), oi.data(), li.data(), qd.data(), kd.data(),
                               vd.data(), B, T, H, Hkv, D, sh.window);
    return P;
}

// The tolerances of the header comment for one precision (magnitudes only; the expected values are
// the CPU op's).
void set_tolerances(Problem& P, const Precision& pr) {
    const int B = P.sh.B, T = P.sh.T, H = P.sh.H, Hkv = P.sh.Hkv, D = P.sh.D, w = P.w, group = H / Hkv;
    const double scale = P.scale, e22 = std::ldexp(1.0, -22), e21 = std::ldexp(1.0, -21);
    const size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * Hkv * D;
    std::vector<double> A(nq, 0.0), Adq(nq, 0.0), Sdq(nq, 0.0), Adk(nk, 0.0), Sdk(nk, 0.0), Adv(nk, 0.0), Sdv(nk, 0.0);
    std::vector<double> Erow((size_t)B * H * T, 0.0);
    std::vector<int> Nq((size_t)B * T * H, 0), Nk((size_t)B * T * Hkv, 0);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const int kvh = h / group;
            for (int i = 0; i < T; i++) {
                const size_t qi = (((size_t)b * T + i) * H + h) * D;
                const double lse = P.lse_in[((size_t)b * H + h) * T + i];
                double Di = 0.0, aDi = 0.0;
                for (int d = 0; d < D; d++) {
                    Di += (double)P.dout[qi + d] * P.o_in[qi + d];
                    aDi += std::fabs((double)P.dout[qi + d] * P.o_in[qi + d]);
                }
                double Emax = 0.0;
                for (int j = std::max(0, i - w); j <= i; j++) {
                    const size_t kj = (((size_t)b * T + j) * Hkv + kvh) * D;
                    double sqk = 0.0, aqk = 0.0, dp = 0.0, adp = 0.0;
                    for (int d = 0; d < D; d++) {
                        sqk += (double)P.q[qi + d] * P.k[kj + d];
                        aqk += std::fabs((double)P.q[qi + d] * P.k[kj + d]);
                        dp += (double)P.dout[qi + d] * P.v[kj + d];
                        adp += std::fabs((double)P.dout[qi + d] * P.v[kj + d]);
                    }
                    const double s = sqk * scale, p = std::exp(s - lse);
                    const double E = pr.dot * scale * aqk + e22 * (std::fabs(s) + std::fabs(lse)) + e21;
                    Emax = std::max(Emax, E);
                    const double ep = pr.p + 2 * E;  // relative error of p as it enters a product
                    const double ds = std::fabs(p * (dp - Di));
                    const double dds = ep * p * (std::fabs(dp) + std::fabs(Di)) + p * pr.dot * (adp + aDi);
                    for (int d = 0; d < D; d++) {
                        const double av = std::fabs((double)P.v[kj + d]), ag = std::fabs((double)P.dout[qi + d]);
                        const double aq = std::fabs((double)P.q[qi + d]), ak = std::fabs((double)P.k[kj + d]);
                        A[qi + d] += p * av;
                        Adv[kj + d] += ep * p * ag;
                        Sdv[kj + d] += p * ag;
                        Adk[kj + d] += dds * aq;
                        Sdk[kj + d] += ds * aq;
                        Adq[qi + d] += dds * ak;
                        Sdq[qi + d] += ds * ak;
                    }
                    Nq[qi / D]++;
                    Nk[kj / D]++;
                }
                Erow[((size_t)b * H + h) * T + i] = Emax;
            }
        }
    P.tol_o.resize(nq);
    P.tol_dq.resize(nq);
    P.tol_lse.resize(Erow.size());
    P.tol_dk.resize(nk);
    P.tol_dv.resize(nk);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const size_t r = ((size_t)b * T + i) * H + h, li = ((size_t)b * H + h) * T + i;
                const double n = Nq[r] + 16, E = Erow[li];
                P.tol_lse[li] = E + n * pr.sum + e22 * std::fabs(P.lse_ref[li]);
                for (int d = 0; d < D; d++) {
                    const size_t x = r * D + d;
                    P.tol_o[x] = pr.out * std::fabs(P.o_ref[x]) + (pr.p + 2 * E + 2 * n * pr.sum) * A[x];
                    P.tol_dq[x] = pr.out * std::fabs(P.dq_ref[x]) + scale * (Adq[x] + n * pr.sum * Sdq[x]);
                }
            }
    for (size_t r = 0; r < Nk.size(); r++) {
        const double n = Nk[r] + 16;
        for (int d = 0; d < D; d++) {
            const size_t x = r * D + d;
            P.tol_dk[x] = pr.out * std::fabs(P.dk_ref[x]) + scale * (Adk[x] + n * pr.sum * Sdk[x]);
            P.tol_dv[x] = pr.out * std::fabs(P.dv_ref[x]) + Adv[x] + n * pr.sum * Sdv[x];
        }
    }
    (void)group;
}

// count_mismatches plus the worst err/tol, printed for the record
template <typename G>
long check_close(const char* what, const std::vector<G>& got, const std::vector<double>& ref, const std::vector<double>& tol) {
    double worst = 0.0;
    for (size_t i = 0; i < got.size(); i++) {
        const double e = std::fabs((double)got[i] - ref[i]);
        worst = std::max(worst, std::isnan(e) ? 1e30 : e / std::max(tol[i], 1e-300));
    }
    MESSAGE(std::string(what) << ": worst |err|/tol " << worst);
    return count_mismatches(what, got, ref, [&](size_t i) { return tol[i]; });
}

std::string shape_name(const Shape& s) {
    char buf[96];
    snprintf(buf, sizeof buf, "B=%d T=%d H=%d Hkv=%d D=%d window=%s", s.B, s.T, s.H, s.Hkv, s.D,
             s.window == kNone ? "none" : std::to_string(s.window).c_str());
    return buf;
}

void check_bf16(const Shape& sh, uint64_t seed, int runs) {
    const std::string name = shape_name(sh);
    CAPTURE(name);
    Problem P = make_problem(sh, seed, bf16_round);
    set_tolerances(P, bf16_precision(sh.D));
    const int B = sh.B, T = sh.T, H = sh.H, Hkv = sh.Hkv, D = sh.D;
    DeviceBuffer<att_bf16> dq_in(to_bf16(P.q)), dk_in(to_bf16(P.k)), dv_in(to_bf16(P.v)), dg(to_bf16(P.dout)), dO_in(to_bf16(P.o_in));
    DeviceBuffer<float> dlse_in(P.lse_in);
    DeviceBuffer<att_bf16> dout(P.q.size()), ddq(P.q.size()), ddk(P.k.size()), ddv(P.v.size());
    DeviceBuffer<float> dlse((size_t)B * H * T), scratch(attention_backward_scratch_floats(B, H, T));

    // forward, twice
    std::vector<float> o[2], lse[2];
    for (int run = 0; run < runs; run++) {
        dout.poison();
        dlse.poison();
        attention_forward_bf16(dout.ptr, dlse.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, B, T, H, Hkv, D, sh.window, 0);
        o[run] = to_f32(dout.download());
        lse[run] = dlse.download();
    }
    CHECK(check_close("bf16 O", o[0], P.o_ref, P.tol_o) == 0);
    CHECK(check_close("bf16 lse", lse[0], P.lse_ref, P.tol_lse) == 0);
    if (runs == 2) {
        CHECK(bits_equal(o[0], o[1]));
        CHECK(bits_equal(lse[0], lse[1]));
    }
    if (P.w == 0) {  // p = exp2(0) = 1, l = 1: O is v of the same position, exactly
        long bad = 0;
        for (int b = 0; b < B; b++)
            for (int i = 0; i < T; i++)
                for (int h = 0; h < H; h++)
                    for (int d = 0; d < D; d++)
                        bad += o[0][(((size_t)b * T + i) * H + h) * D + d] != P.v[(((size_t)b * T + i) * Hkv + h / (H / Hkv)) * D + d];
        CHECK(bad == 0);
    }

    // backward on the reference's O and lse, twice
    std::vector<float> gq[2], gk[2], gv[2];
    for (int run = 0; run < runs; run++) {
        ddq.poison();
        ddk.poison();
        ddv.poison();
        scratch.poison();
        attention_backward_bf16(ddq.ptr, ddk.ptr, ddv.ptr, dg.ptr, dO_in.ptr, dlse_in.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, B, T, H, Hkv,
                                D, sh.window, scratch.ptr, 0);
        gq[run] = to_f32(ddq.download());
        gk[run] = to_f32(ddk.download());
        gv[run] = to_f32(ddv.download());
    }
    CHECK(check_close("bf16 dq", gq[0], P.dq_ref, P.tol_dq) == 0);
    CHECK(check_close("bf16 dk", gk[0], P.dk_ref, P.tol_dk) == 0);
    CHECK(check_close("bf16 dv", gv[0], P.dv_ref, P.tol_dv) == 0);
    if (runs == 2) {
        CHECK(bits_equal(gq[0], gq[1]));
        CHECK(bits_equal(gk[0], gk[1]));
        CHECK(bits_equal(gv[0], gv[1]));
    }
}

void check_fp32(const Shape& sh, uint64_t seed) {
    const std::string name = shape_name(sh);
    CAPTURE(name);
    Problem P = make_problem(sh, seed, x_round);
    set_tolerances(P, fp32_precision(sh.D));
    const int B = sh.B, T = sh.T, H = sh.H, Hkv = sh.Hkv, D = sh.D;
    DeviceBuffer<float> dq_in(P.q), dk_in(P.k), dv_in(P.v), dg(P.dout);
    DeviceBuffer<float> dO_in(std::vector<float>(P.o_ref.begin(), P.o_ref.end())), dlse_in(P.lse_in);
    DeviceBuffer<float> dout(P.q.size()), dlse((size_t)B * H * T), ddq(P.q.size()), ddk(P.k.size()), ddv(P.v.size());
    DeviceBuffer<float> scratch(attention_backward_scratch_floats(B, H, T));
    std::vector<float> o[2], lse[2], gq[2], gk[2], gv[2];
    for (int run = 0; run < 2; run++) {
        dout.poison();
        dlse.poison();
        ddq.poison();
        ddk.poison();
        ddv.poison();
        scratch.poison();
#if LLMC_FLOATX_FP32
        // the model's entry points, which are the fp32 variant in this build
        attention_forward(dout.ptr, dlse.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, B, T, H, Hkv, D, sh.window, 0);
        attention_backward(ddq.ptr, ddk.ptr, ddv.ptr, dg.ptr, dO_in.ptr, dlse_in.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, B, T, H, Hkv, D,
                           sh.window, scratch.ptr, 0);
#else
        attention_forward_fp32(dout.ptr, dlse.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, B, T, H, Hkv, D, sh.window, 0);
        attention_backward_fp32(ddq.ptr, ddk.ptr, ddv.ptr, dg.ptr, dO_in.ptr, dlse_in.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, B, T, H, Hkv, D,
                                sh.window, scratch.ptr, 0);
#endif
        o[run] = dout.download();
        lse[run] = dlse.download();
        gq[run] = ddq.download();
        gk[run] = ddk.download();
        gv[run] = ddv.download();
    }
    // the backward reference was fed O rounded to bf16; this backward gets the unrounded fp32 O
    // (what an fp32 build stores), so compare it against a reference fed the same
    const std::vector<double> qd = to_double(P.q), kd = to_double(P.k), vd = to_double(P.v), gd = to_double(P.dout);
    const std::vector<double> ld = to_double(P.lse_in);
    std::vector<double> dq_ref(qd.size()), dk_ref(kd.size()), dv_ref(vd.size());
    const std::vector<float> of(P.o_ref.begin(), P.o_ref.end());
    const std::vector<double> ofd = to_double(of);
    attention_backward<double>(dq_ref.data(), dk_ref.data(), dv_ref.data(), gd.data(), ofd.data(), ld.data(), qd.data(), kd.data(), vd.data(),
                               B, T, H, Hkv, D, sh.window);
    CHECK(check_close("fp32 O", o[0], P.o_ref, P.tol_o) == 0);
    CHECK(check_close("fp32 lse", lse[0], P.lse_ref, P.tol_lse) == 0);
    CHECK(check_close("fp32 dq", gq[0], dq_ref, P.tol_dq) == 0);
    CHECK(check_close("fp32 dk", gk[0], dk_ref, P.tol_dk) == 0);
    CHECK(check_close("fp32 dv", gv[0], dv_ref, P.tol_dv) == 0);
    CHECK(bits_equal(o[0], o[1]));
    CHECK(bits_equal(lse[0], lse[1]));
    CHECK(bits_equal(gq[0], gq[1]));
    CHECK(bits_equal(gk[0], gk[1]));
    CHECK(bits_equal(gv[0], gv[1]));
}

// ---- the packed layout: row strides ldq, ldkv ----
// The trainer's q, k, v are the [q | k | v] rows of one GEMM output (QKV = (H + 2 Hkv) D elements per
// token) and its dq, dk, dv the same columns of one gradient buffer. A call on such buffers with
// ldq = ldkv = ld must give BITWISE the results of the contiguous call on the same values: the strides
// change only the addresses rows are copied from and stored to (the same 16-byte chunks land in the
// same shared-memory tiles, or the fp32 variant's lanes read the same values), while the grid, the
// tiles, the fragments, the mma / FMA sequence and every summation order are the same, so not one
// arithmetic operation differs. The backward's dqkv is poisoned whole first and every element checked
// afterwards: the q / k / v columns against the contiguous dq / dk / dv, the gap columns (ld > QKV)
// still poison; so a store spilling past its D elements into a neighbour's columns (the dq pass and
// the dk/dv pass write interleaved columns of one buffer) or into the gap fails. The inputs' gap columns
// are NaN, so reading them would show in the results. The contiguous results must be finite (they are
// checked against the CPU op above), so the bitwise comparison is not one of poison against poison.
struct PackedCase { Shape sh; int gap; bool heavy = false; };

// the tensor-core kernels: GQA 4 and 1, D 64 and 128, tails, B > 1 (the batch offset), windows, gaps
// (and none: the packed width exactly). ASan runs the first (everything but D = 128 and several
// tiles, in one small shape), TSan one smaller still.
const PackedCase kPacked[] = {
    {{2, 17, 4, 1, 64, 5}, 8},               // B = 2, one partial tile, GQA 4, window 5, a gap of 8 columns
    {{1, 130, 2, 2, 64, 63}, 0, true},       // MHA, window 63 over 3 tiles, tail of 2
    {{1, 300, 1, 1, 128, 40}, 0, true},      // MHA, D = 128, window 40 over 5 tiles, tail of 44
    {{1, 70, 4, 1, 128, kNone}, 8, true},    // GQA 4, D = 128, tail of 6, a gap
};
const PackedCase kPackedTsan[] = {
    {{1, 17, 2, 1, 64, kNone}, 8},
};
// the fp32 variant (any ld: an odd gap)
const PackedCase kPackedFp32[] = {
    {{2, 17, 4, 1, 40, 5}, 3},         // GQA 4, D not a multiple of 32, window, odd gap
    {{1, 33, 2, 2, 64, kNone}, 0},     // MHA, one row past a warp's multiple
    {{1, 20, 4, 2, 128, kNone}, 0},    // GQA 2, D = 128
};
const PackedCase kPackedFp32Tsan[] = {
    {{1, 9, 4, 1, 40, 3}, 3},
};

template <typename Tx> Tx poison_value() {
    Tx x;
    std::memset(&x, 0xFF, sizeof x);  // what DeviceBuffer::poison writes: NaN in bf16 and fp32
    return x;
}
template <typename Tx> std::vector<Tx> to_type(const std::vector<float>& v);
template <> std::vector<att_bf16> to_type<att_bf16>(const std::vector<float>& v) { return to_bf16(v); }
template <> std::vector<float> to_type<float>(const std::vector<float>& v) { return v; }

// N token rows of ld elements: [q (qw) | k (kw) | v (kw) | fill ...]
template <typename Tx>
std::vector<Tx> pack_rows(const std::vector<Tx>& q, const std::vector<Tx>& k, const std::vector<Tx>& v, size_t N, int qw, int kw, int ld) {
    std::vector<Tx> r(N * ld, poison_value<Tx>());
    for (size_t n = 0; n < N; n++) {
        std::copy(q.begin() + n * qw, q.begin() + (n + 1) * qw, r.begin() + n * ld);
        std::copy(k.begin() + n * kw, k.begin() + (n + 1) * kw, r.begin() + n * ld + qw);
        std::copy(v.begin() + n * kw, v.begin() + (n + 1) * kw, r.begin() + n * ld + qw + kw);
    }
    return r;
}
float as_float(att_bf16 x) { return __bfloat162float(x); }
float as_float(float x) { return x; }
template <typename Tx> bool all_finite(const std::vector<Tx>& a) {
    for (const Tx& x : a)
        if (!std::isfinite(as_float(x))) return false;
    return true;
}

// fwd(out, lse, q, k, v, ldq, ldkv) and bwd(dq, dk, dv, dout, out, lse, q, k, v, scratch, ldq, ldkv):
// one of the two families of entry points on this shape
template <typename Tx, typename Fwd, typename Bwd>
void check_packed(const PackedCase& pc, uint64_t seed, Fwd fwd, Bwd bwd) {
    const Shape& sh = pc.sh;
    const std::string name = shape_name(sh) + " gap=" + std::to_string(pc.gap);
    CAPTURE(name);
    const int B = sh.B, T = sh.T, H = sh.H, Hkv = sh.Hkv, D = sh.D;
    const size_t N = (size_t)B * T;
    const int QW = H * D, KW = Hkv * D, ld = QW + 2 * KW + pc.gap;
    llmc::Rng rng(seed);
    const std::vector<Tx> q = to_type<Tx>(randn(N * QW, rng, 2.0)), k = to_type<Tx>(randn(N * KW, rng)), v = to_type<Tx>(randn(N * KW, rng)),
                          g = to_type<Tx>(randn(N * QW, rng));

    // contiguous
    DeviceBuffer<Tx> qc(q), kc(k), vc(v), gc(g), oc(N * QW), dqc(N * QW), dkc(N * KW), dvc(N * KW);
    DeviceBuffer<float> lsec((size_t)B * H * T), scratch(attention_backward_scratch_floats(B, H, T));
    fwd(oc.ptr, lsec.ptr, qc.ptr, kc.ptr, vc.ptr, 0L, 0L);
    bwd(dqc.ptr, dkc.ptr, dvc.ptr, gc.ptr, oc.ptr, lsec.ptr, qc.ptr, kc.ptr, vc.ptr, scratch.ptr, 0L, 0L);
    const std::vector<Tx> o_c = oc.download(), dq_c = dqc.download(), dk_c = dkc.download(), dv_c = dvc.download();
    const std::vector<float> lse_c = lsec.download();
    REQUIRE(all_finite(o_c));
    REQUIRE(all_finite(lse_c));
    REQUIRE(all_finite(dq_c));
    REQUIRE(all_finite(dk_c));
    REQUIRE(all_finite(dv_c));

    // packed: the same values as strided views of one buffer (the backward fed the same O and lse)
    DeviceBuffer<Tx> qkv(pack_rows(q, k, v, N, QW, KW, ld)), op(N * QW), dqkv(N * ld);
    DeviceBuffer<float> lsep((size_t)B * H * T);
    op.poison();
    lsep.poison();
    dqkv.poison();
    scratch.poison();
    fwd(op.ptr, lsep.ptr, qkv.ptr, qkv.ptr + QW, qkv.ptr + QW + KW, (long)ld, (long)ld);
    bwd(dqkv.ptr, dqkv.ptr + QW, dqkv.ptr + QW + KW, gc.ptr, oc.ptr, lsec.ptr, qkv.ptr, qkv.ptr + QW, qkv.ptr + QW + KW, scratch.ptr,
        (long)ld, (long)ld);
    CHECK(bits_equal(op.download(), o_c));
    CHECK(bits_equal(lsep.download(), lse_c));
    const std::vector<Tx> got = dqkv.download(), want = pack_rows(dq_c, dk_c, dv_c, N, QW, KW, ld);
    long bad = 0;
    for (size_t x = 0; x < got.size(); x++) {
        if (std::memcmp(&got[x], &want[x], sizeof(Tx)) == 0) continue;
        const int col = (int)(x % ld);
        if (bad++ < 5)
            std::printf("  dqkv[token %zu, column %d] (%s): got %.9g, want %.9g\n", x / ld, col,
                        col < QW ? "dq" : col < QW + KW ? "dk" : col < QW + 2 * KW ? "dv" : "gap, must stay poison", as_float(got[x]),
                        as_float(want[x]));
    }
    if (bad) std::printf("  dqkv: %ld of %zu elements differ\n", bad, got.size());
    CHECK(bad == 0);
}


}  // namespace

// skipped in the fp32 build: the tensor-core kernels are explicitly bf16 (att_bf16) and do not depend on
// floatX, so this is the same code the default build tests
TEST_CASE("attention (tensor cores): forward O, lse and backward dq, dk, dv against the CPU op in double" * doctest::skip(kFP32)) {
    // twice: the bitwise comparison of two runs (SIM's own rerun in the plain flavor covers every shape)
    uint64_t seed = 1000;
    if (kTsan) {
        for (size_t i = 0; i < sizeof(kShapesTsan) / sizeof(kShapesTsan[0]); i++) check_bf16(kShapesTsan[i], seed++, i == 0 ? 2 : 1);
    } else {
        for (size_t i = 0; i < sizeof(kShapes) / sizeof(kShapes[0]); i++, seed++)
            if (!(kAsan && kShapes[i].heavy)) check_bf16(kShapes[i], seed, i == 0 || i == 2 ? 2 : 1);
    }
}

TEST_CASE("attention fp32 variant: forward and backward against the CPU op in double") {
    uint64_t seed = 2000;
    if (kTsan) {
        for (const Shape& s : kShapesFp32Tsan) check_fp32(s, seed++);
    } else {
        for (const Shape& s : kShapesFp32) check_fp32(s, seed++);
    }
}

// skipped in the fp32 build (as above). The default build calls the floatX entry points (these kernels
// there), so their passing ldq, ldkv on is covered too; the fp32 build compiles the explicit ones.
TEST_CASE("attention (tensor cores): packed [q | k | v] rows (ldq, ldkv) give bitwise the contiguous results; no store leaves its row"
          * doctest::skip(kFP32)) {
    auto fwd = [&](const PackedCase& pc) {
        return [&pc](att_bf16* o, float* l, const att_bf16* q, const att_bf16* k, const att_bf16* v, long ldq, long ldkv) {
#if LLMC_FLOATX_FP32
            attention_forward_bf16(o, l, q, k, v, pc.sh.B, pc.sh.T, pc.sh.H, pc.sh.Hkv, pc.sh.D, pc.sh.window, 0, ldq, ldkv);
#else
            attention_forward(o, l, q, k, v, pc.sh.B, pc.sh.T, pc.sh.H, pc.sh.Hkv, pc.sh.D, pc.sh.window, 0, ldq, ldkv);
#endif
        };
    };
    auto bwd = [&](const PackedCase& pc) {
        return [&pc](att_bf16* dq, att_bf16* dk, att_bf16* dv, const att_bf16* g, const att_bf16* o, const float* l, const att_bf16* q,
                     const att_bf16* k, const att_bf16* v, float* s, long ldq, long ldkv) {
#if LLMC_FLOATX_FP32
            attention_backward_bf16(dq, dk, dv, g, o, l, q, k, v, pc.sh.B, pc.sh.T, pc.sh.H, pc.sh.Hkv, pc.sh.D, pc.sh.window, s, 0, ldq,
                                    ldkv);
#else
            attention_backward(dq, dk, dv, g, o, l, q, k, v, pc.sh.B, pc.sh.T, pc.sh.H, pc.sh.Hkv, pc.sh.D, pc.sh.window, s, 0, ldq, ldkv);
#endif
        };
    };
    uint64_t seed = 4000;
    if (kTsan) {
        for (const PackedCase& pc : kPackedTsan) check_packed<att_bf16>(pc, seed++, fwd(pc), bwd(pc));
    } else {
        for (const PackedCase& pc : kPacked)
            if (!(kAsan && pc.heavy)) check_packed<att_bf16>(pc, seed++, fwd(pc), bwd(pc));
    }
}

// the fp32 variant: the floatX entry points in the fp32 build (where they are this variant), the
// explicit *_fp32 ones in the default build
TEST_CASE("attention fp32 variant: packed [q | k | v] rows (ldq, ldkv) give bitwise the contiguous results; no store leaves its row") {
    auto fwd = [&](const PackedCase& pc) {
        return [&pc](float* o, float* l, const float* q, const float* k, const float* v, long ldq, long ldkv) {
#if LLMC_FLOATX_FP32
            attention_forward(o, l, q, k, v, pc.sh.B, pc.sh.T, pc.sh.H, pc.sh.Hkv, pc.sh.D, pc.sh.window, 0, ldq, ldkv);
#else
            attention_forward_fp32(o, l, q, k, v, pc.sh.B, pc.sh.T, pc.sh.H, pc.sh.Hkv, pc.sh.D, pc.sh.window, 0, ldq, ldkv);
#endif
        };
    };
    auto bwd = [&](const PackedCase& pc) {
        return [&pc](float* dq, float* dk, float* dv, const float* g, const float* o, const float* l, const float* q, const float* k,
                     const float* v, float* s, long ldq, long ldkv) {
#if LLMC_FLOATX_FP32
            attention_backward(dq, dk, dv, g, o, l, q, k, v, pc.sh.B, pc.sh.T, pc.sh.H, pc.sh.Hkv, pc.sh.D, pc.sh.window, s, 0, ldq, ldkv);
#else
            attention_backward_fp32(dq, dk, dv, g, o, l, q, k, v, pc.sh.B, pc.sh.T, pc.sh.H, pc.sh.Hkv, pc.sh.D, pc.sh.window, s, 0, ldq,
                                    ldkv);
#endif
        };
    };
    uint64_t seed = 5000;
    if (kTsan) {
        for (const PackedCase& pc : kPackedFp32Tsan) check_packed<float>(pc, seed++, fwd(pc), bwd(pc));
    } else {
        for (const PackedCase& pc : kPackedFp32) check_packed<float>(pc, seed++, fwd(pc), bwd(pc));
    }
}

TEST_CASE("attention: a row stride narrower than the row, or (tensor cores) not a multiple of 8 elements, is an error") {
    const int B = 1, T = 16, H = 4, Hkv = 1, D = 64;  // H*D = 256, Hkv*D = 64
    const long QW = (long)H * D, KW = (long)Hkv * D;
    DeviceBuffer<float> l(H * T), s(H * T);
    {  // the tensor-core kernels (both builds)
        DeviceBuffer<att_bf16> a((size_t)T * 2 * (QW + 2 * KW) + 8);
        auto fwd = [&](long ldq, long ldkv) {
            return error_of([&] { attention_forward_bf16(a.ptr, l.ptr, a.ptr, a.ptr, a.ptr, B, T, H, Hkv, D, kNone, 0, ldq, ldkv); });
        };
        auto bwd = [&](long ldq, long ldkv) {
            return error_of([&] {
                attention_backward_bf16(a.ptr, a.ptr, a.ptr, a.ptr, a.ptr, l.ptr, a.ptr, a.ptr, a.ptr, B, T, H, Hkv, D, kNone, s.ptr, 0, ldq,
                                        ldkv);
            });
        };
        for (const std::string& e : {fwd(QW - 8, 0), fwd(0, KW - 8), fwd(-QW, 0), bwd(QW - 8, 0), bwd(0, KW - 8)}) {
            CHECK(has(e, "row strides"));
            CHECK(has(e, "must be at least H*D=256 and Hkv*D=64"));
        }
        for (const std::string& e : {fwd(QW + 4, 0), fwd(0, KW + 12), bwd(QW + 2, 0), bwd(QW, KW + 4)}) {
            CHECK(has(e, "row strides"));
            CHECK(has(e, "multiples of 8"));
        }
        CHECK(has(fwd(QW - 8, 0), "attention_forward: row strides ldq=248, ldkv=64"));  // 0 reads as contiguous
        CHECK(has(bwd(1L << 31, 0), "must fit in an int"));
    }
    {  // the fp32 variant (both builds): any stride from the row width up
        DeviceBuffer<float> f((size_t)T * 2 * (QW + 2 * KW) + 8);
        CHECK(has(error_of([&] { attention_forward_fp32(f.ptr, l.ptr, f.ptr, f.ptr, f.ptr, B, T, H, Hkv, D, kNone, 0, QW - 1, 0); }),
                  "attention_forward_fp32: row strides ldq=255"));
        CHECK(has(error_of([&] {
                      attention_backward_fp32(f.ptr, f.ptr, f.ptr, f.ptr, f.ptr, l.ptr, f.ptr, f.ptr, f.ptr, B, T, H, Hkv, D, kNone, s.ptr, 0, 0,
                                              KW - 1);
                  }),
                  "must be at least H*D=256 and Hkv*D=64"));
    }
    // the floatX entry points
    DeviceBuffer<floatX> x((size_t)T * 2 * (QW + 2 * KW) + 8);
    CHECK(has(error_of([&] { attention_forward(x.ptr, l.ptr, x.ptr, x.ptr, x.ptr, B, T, H, Hkv, D, kNone, 0, QW - 8, 0); }),
              "must be at least"));
    CHECK(has(error_of([&] {
                  attention_backward(x.ptr, x.ptr, x.ptr, x.ptr, x.ptr, l.ptr, x.ptr, x.ptr, x.ptr, B, T, H, Hkv, D, kNone, s.ptr, 0, 0, KW - 8);
              }),
              "must be at least"));
}

TEST_CASE("attention: unsupported shapes and misaligned pointers are an error, not a wrong result") {
    DeviceBuffer<float> l(4 * 64), s(4 * 64);
    {  // the tensor-core kernels (both builds)
        DeviceBuffer<att_bf16> a(4 * 64 * 128 + 8);
        CHECK_THROWS_AS(attention_forward_bf16(a.ptr, l.ptr, a.ptr, a.ptr, a.ptr, 1, 64, 2, 1, 96, kNone, 0), llmc::Error);      // D = 96
        CHECK_THROWS_AS(attention_forward_bf16(a.ptr, l.ptr, a.ptr, a.ptr, a.ptr, 1, 64, 3, 2, 64, kNone, 0), llmc::Error);      // H % Hkv
        CHECK_THROWS_AS(attention_forward_bf16(a.ptr, l.ptr, a.ptr, a.ptr, a.ptr, 1, 64, 2, 1, 64, -1, 0), llmc::Error);         // window < 0
        CHECK_THROWS_AS(attention_forward_bf16(a.ptr + 1, l.ptr, a.ptr, a.ptr, a.ptr, 1, 64, 2, 1, 64, kNone, 0), llmc::Error);  // 2-byte offset
        CHECK_THROWS_AS(attention_backward_bf16(a.ptr, a.ptr, a.ptr, a.ptr, a.ptr, l.ptr, a.ptr, a.ptr + 4, a.ptr, 1, 64, 2, 1, 64, kNone,
                                                s.ptr, 0),
                        llmc::Error);
        CHECK_THROWS_AS(attention_backward_bf16(a.ptr, a.ptr, a.ptr, a.ptr, a.ptr, l.ptr, a.ptr, a.ptr, a.ptr, 1, 64, 2, 1, 32, kNone, s.ptr, 0),
                        llmc::Error);
    }
    // the floatX entry points (the tensor cores' limits in the default build, the fp32 variant's in the fp32 build)
    DeviceBuffer<floatX> x(4 * 64 * 300 + 8);
    const int bad_D = kFP32 ? 300 : 96;  // fp32 variant: D <= 256
    CHECK_THROWS_AS(attention_forward(x.ptr, l.ptr, x.ptr, x.ptr, x.ptr, 1, 64, 2, 1, bad_D, kNone, 0), llmc::Error);
    CHECK_THROWS_AS(attention_forward(x.ptr, l.ptr, x.ptr, x.ptr, x.ptr, 1, 64, 3, 2, 64, kNone, 0), llmc::Error);  // H % Hkv
    CHECK_THROWS_AS(attention_forward(x.ptr, l.ptr, x.ptr, x.ptr, x.ptr, 1, 64, 2, 1, 64, -1, 0), llmc::Error);     // window < 0
    CHECK_THROWS_AS(attention_backward(x.ptr, x.ptr, x.ptr, x.ptr, x.ptr, l.ptr, x.ptr, x.ptr, x.ptr, 1, 64, 2, 1, bad_D, kNone, s.ptr, 0),
                    llmc::Error);
}

#ifdef LLMC_CUDNN
// ---- the cuDNN path (llmc/cuda/attention_cudnn.cuh; build/gpu/test_attention_cudnn, README.md#cudnn) ----
// cuDNN's fused attention against ours on the same bf16 inputs: forward O and lse, and the backward
// dq, dk, dv with both fed the same O and lse (the reference's, as check_bf16 does), on every shape of
// kShapes, plus D = 96, a head dim only cuDNN serves (checked against the CPU op alone). cuDNN must run
// (not fall back) on all of them: they are causal, windowed and GQA shapes its fused engine covers.
// Tolerances: cuDNN's graph rounds what ours rounds (P to bf16 before P·V and Pᵀ·dO, dS to bf16
// before dSᵀ·Q, the outputs to bf16) and accumulates in fp32, so the bound tol of set_tolerances is
// taken as its bound too, with one addition: under GQA its graph rounds each query head's dK and dV
// to bf16 before summing the group, 2^-8 of sum_h |dK_h| more, which is at most the P / dS rounding
// term already in tol, so cuDNN's dk, dv bound is 2 tol when H > Hkv. Then cuDNN vs the CPU op is
// held to cuDNN's bound and cuDNN vs ours to the sum of the two bounds (each within its bound of the
// exact value). The worst err/tol of each comparison is printed.
namespace {

std::vector<double> scaled(const std::vector<double>& tol, double f) {
    std::vector<double> r(tol);
    for (double& x : r) x *= f;
    return r;
}

void check_cudnn(const Shape& sh, uint64_t seed, bool compare_ours) {
    const std::string name = shape_name(sh);
    CAPTURE(name);
    Problem P = make_problem(sh, seed, bf16_round);
    set_tolerances(P, bf16_precision(sh.D));
    const int B = sh.B, T = sh.T, H = sh.H, Hkv = sh.Hkv, D = sh.D;
    const double kv_factor = H > Hkv ? 2.0 : 1.0;  // cuDNN's extra bf16 rounding of the per-head dK, dV under GQA
    DeviceBuffer<floatX> dq_in(to_bf16(P.q)), dk_in(to_bf16(P.k)), dv_in(to_bf16(P.v)), dg(to_bf16(P.dout)), dO_in(to_bf16(P.o_in));
    DeviceBuffer<float> dlse_in(P.lse_in);
    DeviceBuffer<floatX> dout(P.q.size()), ddq(P.q.size()), ddk(P.k.size()), ddv(P.v.size());
    DeviceBuffer<float> dlse((size_t)B * H * T);

    dout.poison();
    dlse.poison();
    const bool ran_fwd = attention_forward_cudnn(dout.ptr, dlse.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, B, T, H, Hkv, D, sh.window, 0);
    CHECK_MESSAGE(ran_fwd, "cuDNN has no forward engine for this shape (its reason is on stderr)");
    if (!ran_fwd) return;
    const std::vector<float> o = to_f32(dout.download()), lse = dlse.download();
    ddq.poison();
    ddk.poison();
    ddv.poison();
    const bool ran_bwd = attention_backward_cudnn(ddq.ptr, ddk.ptr, ddv.ptr, dg.ptr, dO_in.ptr, dlse_in.ptr, dq_in.ptr, dk_in.ptr,
                                                  dv_in.ptr, B, T, H, Hkv, D, sh.window, 0);
    CHECK_MESSAGE(ran_bwd, "cuDNN has no backward engine for this shape (its reason is on stderr)");
    if (!ran_bwd) return;
    const std::vector<float> gq = to_f32(ddq.download()), gk = to_f32(ddk.download()), gv = to_f32(ddv.download());

    CHECK(check_close("cuDNN O vs CPU", o, P.o_ref, P.tol_o) == 0);
    CHECK(check_close("cuDNN lse vs CPU", lse, P.lse_ref, P.tol_lse) == 0);
    CHECK(check_close("cuDNN dq vs CPU", gq, P.dq_ref, P.tol_dq) == 0);
    CHECK(check_close("cuDNN dk vs CPU", gk, P.dk_ref, scaled(P.tol_dk, kv_factor)) == 0);
    CHECK(check_close("cuDNN dv vs CPU", gv, P.dv_ref, scaled(P.tol_dv, kv_factor)) == 0);
    if (!compare_ours) return;

    // ours on the same inputs
    DeviceBuffer<floatX> oo(P.q.size()), oq(P.q.size()), ok(P.k.size()), ov(P.v.size());
    DeviceBuffer<float> ol((size_t)B * H * T), scratch(attention_backward_scratch_floats(B, H, T));
    attention_forward(oo.ptr, ol.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, B, T, H, Hkv, D, sh.window, 0);
    attention_backward(oq.ptr, ok.ptr, ov.ptr, dg.ptr, dO_in.ptr, dlse_in.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, B, T, H, Hkv, D, sh.window,
                       scratch.ptr, 0);
    const std::vector<float> o2 = to_f32(oo.download()), l2 = ol.download(), q2 = to_f32(oq.download()), k2 = to_f32(ok.download()),
                             v2 = to_f32(ov.download());
    auto as_double = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
    CHECK(check_close("cuDNN O vs ours", o, as_double(o2), scaled(P.tol_o, 2.0)) == 0);
    CHECK(check_close("cuDNN lse vs ours", lse, as_double(l2), scaled(P.tol_lse, 2.0)) == 0);
    CHECK(check_close("cuDNN dq vs ours", gq, as_double(q2), scaled(P.tol_dq, 2.0)) == 0);
    CHECK(check_close("cuDNN dk vs ours", gk, as_double(k2), scaled(P.tol_dk, 1.0 + kv_factor)) == 0);
    CHECK(check_close("cuDNN dv vs ours", gv, as_double(v2), scaled(P.tol_dv, 1.0 + kv_factor)) == 0);
}

}  // namespace

TEST_CASE("attention, cuDNN path: forward O, lse and backward dq, dk, dv against ours and the CPU op") {
    uint64_t seed = 3000;
    for (const Shape& s : kShapes) check_cudnn(s, seed++, true);
    check_cudnn({2, 130, 4, 2, 96, 40}, seed++, false);  // D = 96: ours refuses it, cuDNN is the fallback
    attention_cudnn_destroy();
}

TEST_CASE("attention, cuDNN path: one plan per shape and direction, reused by later calls; no engine is false, not an error") {
    const int B = 2, T = 40, H = 4, Hkv = 2, D = 64, window = 9;
    DeviceBuffer<floatX> q((size_t)B * T * H * D), kv((size_t)B * T * Hkv * D), o((size_t)B * T * H * D), g((size_t)B * T * H * D);
    DeviceBuffer<floatX> gq((size_t)B * T * H * D), gk((size_t)B * T * Hkv * D), gv((size_t)B * T * Hkv * D);
    DeviceBuffer<float> lse((size_t)B * H * T);
    llmc::Rng rng(77);
    q.upload(to_bf16(randn(q.n, rng)));
    kv.upload(to_bf16(randn(kv.n, rng)));
    g.upload(to_bf16(randn(g.n, rng)));
    const int before = attention_cudnn_plans_built();
    for (int run = 0; run < 3; run++) {
        REQUIRE(attention_forward_cudnn(o.ptr, lse.ptr, q.ptr, kv.ptr, kv.ptr, B, T, H, Hkv, D, window, 0));
        REQUIRE(attention_backward_cudnn(gq.ptr, gk.ptr, gv.ptr, g.ptr, o.ptr, lse.ptr, q.ptr, kv.ptr, kv.ptr, B, T, H, Hkv, D, window, 0));
    }
    cudaCheck(cudaDeviceSynchronize());
    CHECK(attention_cudnn_plans_built() - before == 2);
    // a window beyond T is the same problem as no window: same plan
    REQUIRE(attention_forward_cudnn(o.ptr, lse.ptr, q.ptr, kv.ptr, kv.ptr, B, T, H, Hkv, D, T - 1, 0));
    REQUIRE(attention_forward_cudnn(o.ptr, lse.ptr, q.ptr, kv.ptr, kv.ptr, B, T, H, Hkv, D, kNone, 0));
    CHECK(attention_cudnn_plans_built() - before == 3);
    // a head dim that is not a multiple of 8: cuDNN has no engine, and the call says so instead of failing
    DeviceBuffer<floatX> small((size_t)B * T * H * 12);
    DeviceBuffer<float> small_lse((size_t)B * H * T);
    small.poison();
    CHECK_FALSE(attention_forward_cudnn(small.ptr, small_lse.ptr, small.ptr, small.ptr, small.ptr, B, T, H, H, 12, kNone, 0));
    CHECK(attention_cudnn_plans_built() - before == 3);
    // bad arguments are an error, as in attention.cuh
    CHECK_THROWS_AS(attention_forward_cudnn(o.ptr, lse.ptr, q.ptr, kv.ptr, kv.ptr, B, T, 3, 2, D, kNone, 0), llmc::Error);  // H % Hkv
    CHECK_THROWS_AS(attention_forward_cudnn(o.ptr + 1, lse.ptr, q.ptr, kv.ptr, kv.ptr, B, T, H, Hkv, D, kNone, 0), llmc::Error);  // misaligned
    attention_cudnn_destroy();
}
#endif  // LLMC_CUDNN
