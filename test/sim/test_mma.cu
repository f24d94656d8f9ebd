// test_mma.cu: llmc/cuda/mma.cuh (mma.sync m16n8k16, ldmatrix, cp.async) under SIM and, built with
// nvcc, on a GPU (build/gpu/test_mma), against layouts and products computed here on the host.
// The instructions are bf16/fp16 by definition and mma.cuh names those types explicitly (never
// floatX): the fp32 build (-DLLMC_FP32) compiles and runs exactly this test, unchanged.
//
// Independence: the kernels below load and store fragments element by element with the formulas
// exactly as the PTX ISA states them (a_i: row = groupID for i < 2 or 4 <= i < 6, ...), and the host
// expectations for ldmatrix are written from the ISA's description; the SIM implementation in
// mma.cuh works the other way round (it inverts the layouts to find which lane holds A[m][k]). A
// layout mistake in either shows as a mismatch, and the ldmatrix -> mma test checks that the two
// instructions' layouts fit together as the ISA designs them to.
//
// Tolerances. Exact tests use small integers (|a|, |b| <= 8, |c| <= 64): every product and partial
// sum is an integer below 2^24, exact in fp32 for any summation order or internal precision, so the
// check is bit-exact. Random-normal tests compare with a double reference with, per element,
// tol = 2^-18 * S, S = |c| + sum_k |a_k * b_k| (16 products). Why: products of bf16/fp16 values are
// exact in fp32; 16 fp32 additions that round to nearest (SIM) err by at most 16 * 2^-24 * S =
// 2^-20 * S, and hardware that truncates instead errs by at most twice that; 2^-18 leaves 2x more.
// A layout bug moves whole elements and gives errors of order S, far above it.
//
// SIM-only (#ifdef LLMC_SIM): cp.async destinations read before their wait show the poison, the
// planted "forgot the wait" and "forgot the barrier" bugs give NaN, and misuse (half a warp in an
// mma, two call sites, misaligned rows) is an error naming the kernel.
#include <doctest/doctest.h>

#include "llmc/cuda/mma.cuh"
#include "test/sim/test_util.h"

#include <string>

using namespace testutil;

namespace {

// ------------------------------------------------------------------------------------------------
// host helpers

uint16_t bits_of(float x, bool f16) {
    uint16_t b;
    if (f16) {
        const __half h = __float2half(x);
        memcpy(&b, &h, 2);
    } else {
        const __nv_bfloat16 h = __float2bfloat16(x);
        memcpy(&b, &h, 2);
    }
    return b;
}
float value_of(uint16_t b, bool f16) {
    if (f16) {
        __half h;
        memcpy(&h, &b, 2);
        return __half2float(h);
    }
    __nv_bfloat16 h;
    memcpy(&h, &b, 2);
    return __bfloat162float(h);
}

// A tile problem: A 16x16 row-major, B 16x8 given as Bt[n][k] (the .col operand), C 16x8 row-major.
struct Tiles {
    int n;
    std::vector<uint16_t> A, Bt;
    std::vector<float> C;
};

// exact: integers in [-8, 8] for A and B, [-64, 64] for C; else normals (A, B ~ N(0,1), C ~ N(0,4))
Tiles make_tiles(int n, bool f16, bool exact, uint64_t seed) {
    llmc::Rng rng(seed);
    Tiles T{n, std::vector<uint16_t>((size_t)n * 256), std::vector<uint16_t>((size_t)n * 128), std::vector<float>((size_t)n * 128)};
    auto draw = [&](double scale, int range) {
        return exact ? (float)((int)rng.below((uint64_t)(2 * range + 1)) - range) : (float)rng.normal(0.0, scale);
    };
    for (auto& v : T.A) v = bits_of(draw(1.0, 8), f16);
    for (auto& v : T.Bt) v = bits_of(draw(1.0, 8), f16);
    for (auto& v : T.C) v = draw(2.0, 64);
    return T;
}

// D = A·B + C in double from the 16-bit inputs; mag = |C| + sum |a·b| for the tolerance
void reference(const Tiles& T, bool f16, std::vector<double>& D, std::vector<double>& mag) {
    D.assign((size_t)T.n * 128, 0.0);
    mag.assign((size_t)T.n * 128, 0.0);
    for (int w = 0; w < T.n; w++)
        for (int m = 0; m < 16; m++)
            for (int n = 0; n < 8; n++) {
                double s = T.C[(size_t)w * 128 + m * 8 + n], a = std::fabs(s);
                for (int k = 0; k < 16; k++) {
                    const double p = (double)value_of(T.A[(size_t)w * 256 + m * 16 + k], f16) *
                                     (double)value_of(T.Bt[(size_t)w * 128 + n * 16 + k], f16);
                    s += p;
                    a += std::fabs(p);
                }
                D[(size_t)w * 128 + m * 8 + n] = s;
                mag[(size_t)w * 128 + m * 8 + n] = a;
            }
}

long count_bad_silent(const std::vector<float>& got, const std::vector<double>& want) {
    long bad = 0;
    for (size_t i = 0; i < got.size(); i++) bad += !((double)got[i] == want[i]);
    return bad;
}


}  // namespace

// ------------------------------------------------------------------------------------------------
// mma: fragments loaded and stored element by element with the ISA's formulas

// Each warp computes one 16x8 tile: D = A·B + C. bug = 1 swaps the registers a[1] and a[2] (a
// planted fragment-layout bug: A[g+8][2t..] and A[g][2t+8..] trade places).
__global__ void mma_tile_kernel(float* D, const uint16_t* A, const uint16_t* Bt, const float* C, int f16, int bug) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    const int groupID = lane >> 2, tig = lane % 4;  // threadID_in_group
    A += warp * 256;
    Bt += warp * 128;
    C += warp * 128;
    D += warp * 128;
    uint16_t a[8], b[4];
    for (int i = 0; i < 8; i++) {
        const int row = (i < 2 || (i >= 4 && i < 6)) ? groupID : groupID + 8;
        const int col = i < 4 ? tig * 2 + (i & 1) : tig * 2 + (i & 1) + 8;
        a[i] = A[row * 16 + col];
    }
    for (int i = 0; i < 4; i++) {
        const int row = i < 2 ? tig * 2 + (i & 1) : tig * 2 + (i & 1) + 8;  // k
        const int col = groupID;                                           // n
        b[i] = Bt[col * 16 + row];
    }
    float c[4];
    for (int i = 0; i < 4; i++) {
        const int row = i < 2 ? groupID : groupID + 8, col = tig * 2 + (i & 1);
        c[i] = C[row * 8 + col];
    }
    uint32_t ar[4], br[2];
    for (int j = 0; j < 4; j++) ar[j] = (uint32_t)a[2 * j] | ((uint32_t)a[2 * j + 1] << 16);  // a0 in the low half
    for (int j = 0; j < 2; j++) br[j] = (uint32_t)b[2 * j] | ((uint32_t)b[2 * j + 1] << 16);
    if (bug) {
        const uint32_t x = ar[1];
        ar[1] = ar[2];
        ar[2] = x;
    }
    if (f16) mma_m16n8k16_f16(c, ar, br);
    else mma_m16n8k16_bf16(c, ar, br);
    for (int i = 0; i < 4; i++) {
        const int row = i < 2 ? groupID : groupID + 8, col = tig * 2 + (i & 1);
        D[row * 8 + col] = c[i];
    }
}

static std::vector<float> run_mma_tiles(const Tiles& T, bool f16, bool bug) {
    REQUIRE(T.n % 2 == 0);
    DeviceBuffer<uint16_t> dA(T.A), dB(T.Bt);
    DeviceBuffer<float> dC(T.C), dD((size_t)T.n * 128);
    dD.poison();
    LAUNCH(mma_tile_kernel, T.n / 2, 64, 0, 0, dD.ptr, dA.ptr, dB.ptr, dC.ptr, f16 ? 1 : 0, bug ? 1 : 0);
    return dD.download();
}

TEST_CASE("mma m16n8k16 bf16 and fp16: fragment layout against a scalar product, small integers, bit-exact") {
    for (bool f16 : {false, true}) {
        CAPTURE(f16);
        const Tiles T = make_tiles(8, f16, true, f16 ? 11 : 12);
        std::vector<double> want, mag;
        reference(T, f16, want, mag);
        const std::vector<float> got = run_mma_tiles(T, f16, false);
        CHECK(count_mismatches("D", got, want, [](size_t) { return 0.0; }) == 0);
    }
}

TEST_CASE("mma m16n8k16 bf16 and fp16: random normals within 2^-18 * (|c| + sum |a b|) of a double reference") {
    for (bool f16 : {false, true}) {
        CAPTURE(f16);
        const Tiles T = make_tiles(16, f16, false, f16 ? 21 : 22);
        std::vector<double> want, mag;
        reference(T, f16, want, mag);
        const std::vector<float> got = run_mma_tiles(T, f16, false);
        CHECK(count_mismatches("D", got, want, [&](size_t i) { return std::ldexp(mag[i], -18); }) == 0);
        // the inputs are not degenerate: the fp32 result is not trivially exact everywhere
        long inexact = 0;
        for (size_t i = 0; i < got.size(); i++) inexact += (double)(float)want[i] != want[i];
        CHECK(inexact > (long)got.size() / 2);
    }
}

TEST_CASE("planted fragment-layout bug: swapping a[1] and a[2] gives a wrong product, and the check sees it") {
    for (bool f16 : {false, true}) {
        CAPTURE(f16);
        const Tiles T = make_tiles(4, f16, true, 31);
        std::vector<double> want, mag;
        reference(T, f16, want, mag);
        const std::vector<float> good = run_mma_tiles(T, f16, false);
        const std::vector<float> bad = run_mma_tiles(T, f16, true);
        CHECK(count_bad_silent(good, want) == 0);
        const long wrong = count_bad_silent(bad, want);
        MESSAGE("a[1]/a[2] swapped: " << wrong << " of " << bad.size() << " elements wrong");
        CHECK(wrong > (long)bad.size() / 2);  // half of every k-sum uses the wrong A elements
    }
}

TEST_CASE("pack_bf16x2 / pack_f16x2: the first element in the low half") {
    CHECK(pack_bf16x2(__float2bfloat16(1.0f), __float2bfloat16(-2.0f)) == 0xC0003F80u);  // bf16 1 = 0x3F80, -2 = 0xC000
    CHECK(pack_f16x2(__float2half(1.0f), __float2half(-2.0f)) == 0xC0003C00u);          // fp16 1 = 0x3C00, -2 = 0xC000
}

// ------------------------------------------------------------------------------------------------
// ldmatrix: every variant against the ISA's description

constexpr int LDM_ROWS = 32, LDM_STRIDE = 24;  // 32 rows of 8 elements, 48 bytes apart (16-byte aligned)

__global__ void ldmatrix_kernel(uint32_t* out, const uint16_t* src, const int* row_of_lane, int variant) {
    DYNAMIC_SMEM(uint16_t, s);
    const int lane = threadIdx.x;
    for (int i = lane; i < LDM_ROWS * LDM_STRIDE; i += 32) s[i] = src[i];
    __syncwarp();
    const void* p = &s[row_of_lane[lane] * LDM_STRIDE];
    uint32_t r[4] = {0xdeadbeefu, 0xdeadbeefu, 0xdeadbeefu, 0xdeadbeefu};
    switch (variant) {
        case 0: ldmatrix_x1(r, p); break;
        case 1: ldmatrix_x2(r, p); break;
        case 2: ldmatrix_x4(r, p); break;
        case 3: ldmatrix_x1_trans(r, p); break;
        case 4: ldmatrix_x2_trans(r, p); break;
        default: ldmatrix_x4_trans(r, p); break;
    }
    for (int i = 0; i < 4; i++) out[lane * 4 + i] = r[i];
}

TEST_CASE("ldmatrix x1/x2/x4 and .trans: each lane's registers as the PTX ISA lays them out") {
    // element (row, col) of the smem rows holds a unique value; padding holds 0x7777
    std::vector<uint16_t> src((size_t)LDM_ROWS * LDM_STRIDE, 0x7777);
    for (int r = 0; r < LDM_ROWS; r++)
        for (int c = 0; c < 8; c++) src[(size_t)r * LDM_STRIDE + c] = (uint16_t)(0x100 * r + c + 1);
    // lanes name rows in a scrambled order (row addresses need not be adjacent or sorted); the lanes
    // whose addresses an x1 / x2 ignores point at rows that no used lane names
    std::vector<int> row_of_lane(32);
    for (int l = 0; l < 32; l++) row_of_lane[l] = (l * 13 + 5) % 32;
    DeviceBuffer<uint16_t> dsrc(src);
    DeviceBuffer<int> drow(row_of_lane);
    DeviceBuffer<uint32_t> dout(32 * 4);
    for (int variant = 0; variant < 6; variant++) {
        const int num = variant % 3 == 0 ? 1 : variant % 3 == 1 ? 2 : 4;
        const bool trans = variant >= 3;
        CAPTURE(num);
        CAPTURE(trans);
        dout.poison();
        LAUNCH(ldmatrix_kernel, 1, 32, LDM_ROWS * LDM_STRIDE * sizeof(uint16_t), 0, dout.ptr, dsrc.ptr, drow.ptr, variant);
        const std::vector<uint32_t> got = dout.download();
        // PTX ISA: threads 8i..8i+7 give rows 0..7 of matrix i; each thread receives, for matrix i,
        // row = laneid >> 2, elements col = (laneid % 4) * 2 + {0, 1} (low half first); with .trans
        // the matrix is read column-major: elements (row (laneid % 4) * 2 + {0, 1}, col laneid >> 2).
        auto M = [&](int i, int row, int col) { return (uint32_t)src[(size_t)row_of_lane[8 * i + row] * LDM_STRIDE + col]; };
        long bad = 0;
        for (int lane = 0; lane < 32; lane++)
            for (int i = 0; i < 4; i++) {
                const int g = lane >> 2, t = lane % 4;
                uint32_t want = 0xdeadbeefu;  // registers past .num are not written
                if (i < num) want = trans ? M(i, 2 * t, g) | (M(i, 2 * t + 1, g) << 16) : M(i, g, 2 * t) | (M(i, g, 2 * t + 1) << 16);
                if (got[lane * 4 + i] != want) {
                    if (bad < 5) printf("  lane %d r[%d]: got 0x%08x, want 0x%08x\n", lane, i, got[lane * 4 + i], want);
                    bad++;
                }
            }
        CHECK(bad == 0);
    }
}

// ldmatrix feeding mma, as a GEMM does: A row-major through x4, B through x2 from Bt (n-major) or
// through x2.trans from B stored k-major. The two layouts must fit together.
constexpr int LM_LDA = 24, LM_LDBT = 24, LM_LDB = 16;  // smem row strides in elements (all rows 16-byte aligned)

__global__ void ldmatrix_mma_kernel(float* D, const uint16_t* A, const uint16_t* Bt, int use_trans) {
    DYNAMIC_SMEM(uint16_t, s);
    uint16_t* As = s;                    // [16][LM_LDA]
    uint16_t* Bts = As + 16 * LM_LDA;    // [8][LM_LDBT]   Bt[n][k]
    uint16_t* Bks = Bts + 8 * LM_LDBT;   // [16][LM_LDB]   B[k][n], n = 0..7 used
    const int lane = threadIdx.x;
    for (int i = lane; i < 256; i += 32) As[(i / 16) * LM_LDA + i % 16] = A[i];
    for (int i = lane; i < 128; i += 32) {
        const int n = i / 16, k = i % 16;
        Bts[n * LM_LDBT + k] = Bt[i];
        Bks[k * LM_LDB + n] = Bt[i];
    }
    __syncwarp();
    uint32_t a[4], b[2];
    ldmatrix_x4(a, &As[(lane % 16) * LM_LDA + 8 * (lane / 16)]);
    if (use_trans) ldmatrix_x2_trans(b, &Bks[(lane % 16) * LM_LDB]);
    else ldmatrix_x2(b, &Bts[(lane % 8) * LM_LDBT + 8 * ((lane / 8) % 2)]);
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_m16n8k16_bf16(c, a, b);
    const int g = lane >> 2, t = lane % 4;
    D[g * 8 + 2 * t] = c[0];
    D[g * 8 + 2 * t + 1] = c[1];
    D[(g + 8) * 8 + 2 * t] = c[2];
    D[(g + 8) * 8 + 2 * t + 1] = c[3];
}

TEST_CASE("ldmatrix x4 (A) and x2 / x2.trans (B) produce mma fragments: product bit-exact on small integers") {
    Tiles T = make_tiles(1, false, true, 41);
    T.C.assign(128, 0.0f);
    std::vector<double> want, mag;
    reference(T, false, want, mag);
    DeviceBuffer<uint16_t> dA(T.A), dB(T.Bt);
    DeviceBuffer<float> dD(128);
    const size_t smem = (16 * LM_LDA + 8 * LM_LDBT + 16 * LM_LDB) * sizeof(uint16_t);
    for (int use_trans : {0, 1}) {
        CAPTURE(use_trans);
        dD.poison();
        LAUNCH(ldmatrix_mma_kernel, 1, 32, smem, 0, dD.ptr, dA.ptr, dB.ptr, use_trans);
        CHECK(count_mismatches("D", dD.download(), want, [](size_t) { return 0.0; }) == 0);
    }
}

// ------------------------------------------------------------------------------------------------
// cp.async

constexpr int CPA_FLOATS = 12;  // per thread: [0,4) group 0, [4,7) group 1, [8,12) group 2, [7] uncommitted

// Each thread copies its 12 floats in three committed groups plus one uncommitted copy, then waits
// step by step, taking a snapshot of its destination after each wait (4 snapshots of 12 floats).
__global__ void cp_async_kernel(float* snap, const float* in) {
    DYNAMIC_SMEM(float, s);
    float* my = s + threadIdx.x * CPA_FLOATS;  // 48 bytes per thread: 16-byte aligned
    const float* src = in + threadIdx.x * CPA_FLOATS;
    float* out = snap + threadIdx.x * 4 * CPA_FLOATS;
    cp_async_16(my + 0, src + 0);
    cp_async_commit();  // group 0
    cp_async_8(my + 4, src + 4);
    cp_async_4(my + 6, src + 6);
    cp_async_commit();  // group 1
    cp_async_16_cg(my + 8, src + 8);
    cp_async_commit();  // group 2
    cp_async_4(my + 7, src + 7);  // not committed: wait_group does not cover it, wait_all does
    cp_async_wait<2>();
    for (int i = 0; i < CPA_FLOATS; i++) out[i] = my[i];
    cp_async_wait<1>();
    for (int i = 0; i < CPA_FLOATS; i++) out[CPA_FLOATS + i] = my[i];
    cp_async_wait<0>();
    for (int i = 0; i < CPA_FLOATS; i++) out[2 * CPA_FLOATS + i] = my[i];
    cp_async_wait_all();
    for (int i = 0; i < CPA_FLOATS; i++) out[3 * CPA_FLOATS + i] = my[i];
}

TEST_CASE("cp.async 4/8/16 bytes (.ca and .cg): data arrives by the wait_group that covers its group") {
    const int B = 64;
    std::vector<float> in((size_t)B * CPA_FLOATS);
    for (size_t i = 0; i < in.size(); i++) in[i] = (float)(i + 1);
    DeviceBuffer<float> din(in), dsnap((size_t)B * 4 * CPA_FLOATS);
    dsnap.poison();
    {
#ifdef LLMC_SIM
        PlantedOnPurpose reads_pending;  // the snapshots read pending destinations (poison) on purpose
#endif
        LAUNCH(cp_async_kernel, 1, B, B * CPA_FLOATS * sizeof(float), 0, dsnap.ptr, din.ptr);
    }
    const std::vector<float> snap = dsnap.download();
    // after snapshot j, which floats are guaranteed: group 0 from j = 0, group 1 from j = 1,
    // group 2 from j = 2, the uncommitted copy at j = 3 only
    auto arrived = [](int j, int i) { return i < 4 ? j >= 0 : i < 7 ? j >= 1 : i == 7 ? j >= 3 : j >= 2; };
    long bad = 0, poison_ok = 0, pending = 0;
    for (int t = 0; t < B; t++)
        for (int j = 0; j < 4; j++)
            for (int i = 0; i < CPA_FLOATS; i++) {
                const float v = snap[((size_t)t * 4 + j) * CPA_FLOATS + i];
                if (arrived(j, i)) {
                    bad += v != in[(size_t)t * CPA_FLOATS + i];
                } else {
                    pending++;
                    uint32_t u;
                    memcpy(&u, &v, 4);
                    poison_ok += u == 0xffffffffu || u == 0x7f7f7f7fu;  // SIM's two poison patterns
                }
            }
    CHECK(bad == 0);
#ifdef LLMC_SIM
    // SIM writes a copy's destination at its wait and poisons it at issue: every pending read is poison
    CHECK(pending == (long)B * (8 + 5 + 1));  // per thread: [4,12) after wait<2>, [7,12) after wait<1>, [7] after wait<0>
    CHECK(poison_ok == pending);
#else
    (void)poison_ok;  // on a GPU a pending destination holds whatever it holds
#endif
}

// Copy through shared memory to a neighbour: each thread's destination is read by the next thread
// after the wait and a barrier (correct), or after the wait only (bug = 1: a race).
__global__ void cp_async_neighbour(float* out, const float* in, int bug) {
    DYNAMIC_SMEM(float, s);
    const int t = threadIdx.x, B = blockDim.x;
    cp_async_16(&s[4 * t], &in[4 * t]);
    cp_async_commit();
    cp_async_wait<0>();
    if (!bug) __syncthreads();  // BUG when skipped: the neighbour's copy may not have landed
    const int u = (t + 1) % B;
    out[t] = s[4 * u] + s[4 * u + 1] + s[4 * u + 2] + s[4 * u + 3];
}
#ifdef LLMC_SIM
// The planted bug: the destination is read before any wait.
__global__ void cp_async_forgot_wait(float* out, const float* in) {
    DYNAMIC_SMEM(float, s);
    const int t = threadIdx.x;
    cp_async_16(&s[4 * t], &in[4 * t]);
    cp_async_commit();
    out[t] = s[4 * t] + s[4 * t + 1] + s[4 * t + 2] + s[4 * t + 3];  // BUG: no cp_async_wait before the read
    cp_async_wait_all();
}
#endif

TEST_CASE("cp.async through shared memory to another thread: wait + __syncthreads() is correct") {
    const int B = 96;
    std::vector<float> in((size_t)B * 4);
    for (size_t i = 0; i < in.size(); i++) in[i] = (float)(i % 7) - 3.0f;
    std::vector<double> want(B);
    for (int t = 0; t < B; t++) {
        const int u = (t + 1) % B;
        want[t] = (double)in[4 * u] + in[4 * u + 1] + in[4 * u + 2] + in[4 * u + 3];
    }
    DeviceBuffer<float> din(in), dout(B);
    dout.poison();
    LAUNCH(cp_async_neighbour, 1, B, B * 4 * sizeof(float), 0, dout.ptr, din.ptr, 0);
    CHECK(count_mismatches("out", dout.download(), want, [](size_t) { return 0.0; }) == 0);
#ifdef LLMC_SIM
    SUBCASE("SIM planted bugs: a read before the wait, or another thread's copy read without a barrier, sees poison") {
        PlantedOnPurpose planted;
        dout.poison();
        LAUNCH(cp_async_forgot_wait, 1, B, B * 4 * sizeof(float), 0, dout.ptr, din.ptr);
        std::vector<float> got = dout.download();
        long nan = 0;
        for (float v : got) nan += from_poison(v);
        CHECK(nan == B);  // every thread read its own poisoned destination
        dout.poison();
        LAUNCH(cp_async_neighbour, 1, B, B * 4 * sizeof(float), 0, dout.ptr, din.ptr, 1);
        got = dout.download();
        nan = 0;
        for (float v : got) nan += from_poison(v);
        MESSAGE("missing barrier: " << nan << " of " << B << " threads read a neighbour's copy that had not landed");
        CHECK(nan > 0);
    }
#endif
}

// ------------------------------------------------------------------------------------------------
// SIM: misuse is an error naming the kernel and the source line

#ifdef LLMC_SIM
__global__ void mma_half_warp(float* out) {
    const uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float c[4] = {0, 0, 0, 0};
    if (threadIdx.x % 32 < 16) mma_m16n8k16_bf16(c, a, b);  // BUG: lanes 16..31 skip it and exit
    out[threadIdx.x] = c[0];
}
__global__ void mma_two_sites(float* out) {
    const uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float c[4] = {0, 0, 0, 0};
    if (threadIdx.x % 32 < 16) mma_m16n8k16_bf16(c, a, b);
    else mma_m16n8k16_bf16(c, a, b);  // BUG: .aligned needs one instruction for the whole warp
    out[threadIdx.x] = c[0];
}
__global__ void mma_vs_ldmatrix(float* out) {
    DYNAMIC_SMEM(uint16_t, s);
    uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float c[4] = {0, 0, 0, 0};
    if (threadIdx.x % 32 < 16) mma_m16n8k16_f16(c, a, b);
    else ldmatrix_x4(a, &s[8 * (threadIdx.x % 32)]);  // BUG
    out[threadIdx.x] = c[0];
}
__global__ void ldmatrix_misaligned(float* out) {
    DYNAMIC_SMEM(uint16_t, s);
    uint32_t r[1];
    ldmatrix_x1(r, &s[8 * (threadIdx.x % 8) + 1]);  // BUG: rows 2 bytes off a 16-byte boundary
    out[threadIdx.x] = (float)r[0];
}
__global__ void cp_async_misaligned(float* out, const float* in) {
    DYNAMIC_SMEM(float, s);
    cp_async_16(&s[4 * threadIdx.x + 2], &in[4 * threadIdx.x]);  // BUG: 8-byte aligned destination
    cp_async_wait_all();
    out[threadIdx.x] = s[4 * threadIdx.x];
}

TEST_CASE("SIM: warp-matrix misuse is an error naming the kernel and the source line, not a wrong result") {
    DeviceBuffer<float> d(256);
    std::string e;
    e = error_of([&] { LAUNCH(mma_half_warp, 1, 32, 0, 0, d.ptr); });
    INFO(e);
    CHECK(has(e, "kernel 'mma_half_warp'"));
    CHECK(has(e, "test_mma.cu"));
    CHECK(has(e, "has exited"));

    e = error_of([&] { LAUNCH(mma_half_warp, 1, 48, 0, 0, d.ptr); });  // and a warp of 16 lanes
    CHECK(has(e, "kernel 'mma_half_warp'"));

    e = error_of([&] { LAUNCH(mma_two_sites, 1, 64, 0, 0, d.ptr); });
    CHECK(has(e, "kernel 'mma_two_sites'"));
    CHECK(has(e, ".sync.aligned"));
    CHECK(has(e, "executed mma_m16n8k16_bf16 at"));

    e = error_of([&] { LAUNCH(mma_vs_ldmatrix, 1, 32, 1024, 0, d.ptr); });
    CHECK(has(e, "kernel 'mma_vs_ldmatrix'"));
    CHECK(has(e, ".sync.aligned"));
    CHECK(has(e, "ldmatrix_x4"));
    CHECK(has(e, "mma_m16n8k16_f16"));

    e = error_of([&] { LAUNCH(ldmatrix_misaligned, 1, 32, 1024, 0, d.ptr); });
    CHECK(has(e, "kernel 'ldmatrix_misaligned'"));
    CHECK(has(e, "ldmatrix_x1 at"));
    CHECK(has(e, "test_mma.cu"));
    CHECK(has(e, "16-byte aligned"));

    DeviceBuffer<float> in(256);
    e = error_of([&] { LAUNCH(cp_async_misaligned, 1, 32, 1024, 0, d.ptr, in.ptr); });
    CHECK(has(e, "kernel 'cp_async_misaligned'"));
    CHECK(has(e, "cp.async of 16 bytes at"));
    CHECK(has(e, "test_mma.cu"));
}
#endif
