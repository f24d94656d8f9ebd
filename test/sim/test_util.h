// test_util.h: helpers shared by the kernel tests in test/sim/ (built under SIM with g++, and with
// nvcc for a real GPU; everything here is host code over the CUDA runtime API, so it works in both).
//   DeviceBuffer<T>   cudaMalloc'd array with upload / download / poison (NaN fill)
//   randn              random inputs
//   to_x, x_round, X_ROUND   the build's activation type floatX (bf16, or fp32 with -DLLMC_FP32):
//                      conversion, the values a floatX tensor holds, one rounding's relative error
//   to_bf16, bf16_round, BF16_ROUND   the same for explicit bf16 (the tensor-core tests)
//   to_f32             floatX or bf16 back to float
//   count_mismatches  element-wise compare against a reference with a per-element tolerance;
//                     NaN in the result always counts as a mismatch (so a poisoned, never written
//                     element fails), and the first few mismatches are printed with their index.
// Include after <doctest/doctest.h>.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>
#include "llmc/cuda/common.cuh"
#include "llmc/rng.h"

namespace testutil {

// the sanitizer flavors (Makefile: build/sim_tsan, build/sim_asan), where each launch costs more:
// tests run lighter shapes there
#if defined(LLMC_SIM_TSAN) && LLMC_SIM_TSAN
constexpr bool kTsan = true;
#else
constexpr bool kTsan = false;
#endif
#if defined(LLMC_SIM_ASAN) && LLMC_SIM_ASAN
constexpr bool kAsan = true;
#else
constexpr bool kAsan = false;
#endif

template <typename T>
struct DeviceBuffer {
    T* ptr = nullptr;
    size_t n = 0;
    explicit DeviceBuffer(size_t n_) : n(n_) {
        cudaCheck(cudaMalloc((void**)&ptr, std::max<size_t>(n, 1) * sizeof(T)));
    }
    explicit DeviceBuffer(const std::vector<T>& h) : DeviceBuffer(h.size()) { upload(h); }
    ~DeviceBuffer() { if (ptr) cudaFree(ptr); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    void upload(const std::vector<T>& h) {
        REQUIRE(h.size() == n);
        cudaCheck(cudaMemcpy(ptr, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    }
    std::vector<T> download() const {
        std::vector<T> h(n);
        cudaCheck(cudaDeviceSynchronize());  // a kernel fault surfaces here, checked
        cudaCheck(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
        return h;
    }
    // all-ones bytes: 0xFFFF is a NaN bf16 and 0xFFFFFFFF a NaN fp32
    void poison() { cudaCheck(cudaMemset(ptr, 0xFF, n * sizeof(T))); }
};

inline std::vector<float> randn(size_t n, llmc::Rng& rng, double std = 1.0) {
    std::vector<float> v(n);
    for (auto& x : v) x = (float)rng.normal(0.0, std);
    return v;
}

inline std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& v) {
    std::vector<__nv_bfloat16> r(v.size());
    for (size_t i = 0; i < v.size(); i++) r[i] = __float2bfloat16(v[i]);
    return r;
}

inline std::vector<float> to_f32(const std::vector<__nv_bfloat16>& v) {
    std::vector<float> r(v.size());
    for (size_t i = 0; i < v.size(); i++) r[i] = __bfloat162float(v[i]);
    return r;
}
inline std::vector<float> to_f32(const std::vector<float>& v) { return v; }

// the fp32 values a bf16 tensor holds: the inputs the CPU reference sees
inline std::vector<float> bf16_round(const std::vector<float>& v) { return to_f32(to_bf16(v)); }

// floatX: the kernels' activation type in this build. Converted here, not with llmc::to_floatX (the
// kernels' helper), so that an expected value never shares the code under test.
inline floatX host_to_x(float f) {
#if LLMC_FLOATX_FP32
    return f;
#else
    return __float2bfloat16(f);
#endif
}
inline std::vector<floatX> to_x(const std::vector<float>& v) {
    std::vector<floatX> r(v.size());
    for (size_t i = 0; i < v.size(); i++) r[i] = host_to_x(v[i]);
    return r;
}
// the fp32 values a floatX tensor holds (unchanged in the fp32 build)
inline std::vector<float> x_round(const std::vector<float>& v) { return to_f32(to_x(v)); }

// bitwise equality (two empty vectors are equal: memcmp never sees their null data)
template <typename T>
bool bits_equal(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// runs f, returns the llmc::Error message ("" if nothing was thrown), and a substring test for it
template <class F>
std::string error_of(F f) {
    try {
        f();
    } catch (const llmc::Error& e) {
        return e.what();
    }
    return "";
}
inline bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// Strided tensors (the GPU trainer's packed [q | k | v] rows): columns [c0, c0 + w) of the N rows of
// a row-major (N, ld) array as a dense (N, w) array, and back
template <typename T>
std::vector<T> get_cols(const std::vector<T>& buf, long N, long ld, long c0, long w) {
    std::vector<T> out((size_t)(N * w));
    for (long n = 0; n < N; n++) std::memcpy(&out[n * w], &buf[n * ld + c0], w * sizeof(T));
    return out;
}
template <typename T>
void put_cols(std::vector<T>& buf, const std::vector<T>& src, long N, long ld, long c0, long w) {
    for (long n = 0; n < N; n++) std::memcpy(&buf[n * ld + c0], &src[n * w], w * sizeof(T));
}
// elements of the (N, ld) buffer outside columns [lo, hi) that lost DeviceBuffer::poison's bits
template <typename T>
long gaps_changed(const std::vector<T>& buf, long N, long ld, long lo, long hi) {
    T poison;
    std::memset(&poison, 0xFF, sizeof poison);
    long bad = 0;
    for (long n = 0; n < N; n++)
        for (long c = 0; c < ld; c++)
            if ((c < lo || c >= hi) && std::memcmp(&buf[n * ld + c], &poison, sizeof poison) != 0) bad++;
    return bad;
}

// 2^-8: the largest relative error of one round-to-nearest to bf16 (8 significant bits: half an
// ulp is 2^-8 of the leading power of two, which is <= |value|).
constexpr double BF16_ROUND = 1.0 / 256.0;
// 2^-24: the same for fp32 (24 significant bits, the unit roundoff)
constexpr double FP32_ROUND = 1.0 / 16777216.0;
// one rounding to floatX: BF16_ROUND, or FP32_ROUND in the fp32 build
constexpr double X_ROUND = LLMC_FLOATX_FP32 ? FP32_ROUND : BF16_ROUND;
constexpr bool kFP32 = LLMC_FLOATX_FP32;

// Number of i with |got[i] - ref[i]| > tol(i) (NaN in got or ref counts). Prints up to 5 of them.
template <typename G, typename R, typename Tol>
long count_mismatches(const char* what, const std::vector<G>& got, const std::vector<R>& ref, Tol tol) {
    REQUIRE(got.size() == ref.size());
    long bad = 0;
    for (size_t i = 0; i < got.size(); i++) {
        const double g = (double)got[i], r = (double)ref[i], t = tol(i);
        const double err = std::fabs(g - r);
        const bool ok = !std::isnan(g) && !std::isnan(r) && err <= t;
        if (!ok) {
            if (bad < 5) std::printf("  %s[%zu]: got %.9g, want %.9g (|err| %.3g > tol %.3g)\n", what, i, g, r, err, t);
            bad++;
        }
    }
    if (bad) std::printf("  %s: %ld of %zu elements out of tolerance\n", what, bad, got.size());
    return bad;
}

#ifdef LLMC_SIM
// A SIM-only test that reads memory no thread wrote, or races, on purpose (a planted bug, a look at
// a pending cp.async destination): for its scope the LLMC_SIM_DETERMINISM rerun is off (the result
// depends on the order by design) and, in the ThreadSanitizer flavor, its races are expected
// rather than fatal.
struct PlantedOnPurpose {
    bool saved = llmc::sim::config().determinism;
#if LLMC_SIM_TSAN
    llmc::sim::ExpectRaces races;
#endif
    PlantedOnPurpose() { llmc::sim::config().determinism = false; }
    ~PlantedOnPurpose() { llmc::sim::config().determinism = saved; }
};
// one of SIM's two shared-memory poison patterns, or arithmetic on them (NaN, inf, |x| > 1e38)
inline bool from_poison(float v) { return !std::isfinite(v) || std::fabs(v) > 1e38f; }
#endif

}  // namespace testutil
