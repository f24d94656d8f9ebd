// common.h: small helpers shared by the CPU reference ops (not an op itself).
//
// * cpu_exp_, cpu_tanh_: exp and tanh that the compiler can vectorize in float (glibc's expf /
//   tanhf are calls it cannot), accurate to a few ulps; in double they are std::exp / std::tanh.
// * cpu_scratch<T>(n): a grow-only per-host-thread buffer, so ops that need a little temporary
//   memory (attention's per-row statistics, the partial sums below) do not allocate on every call.
//   It is thread_local: two host threads (e.g. in-process ranks in a test) never share it. A
//   pointer taken on the calling thread may be handed to that call's OpenMP workers.
//   Each `slot` is a separate buffer, so one op can hold several at once.
// * cpu_chunked_sum: deterministic parallel sums for parameter gradients of scalar/small
//   parameters (lambdas, gates). [0, n) is split into a number of chunks that depends on n only
//   (never on the thread count); each chunk sums its elements in order into K double partials,
//   chunks run in parallel, and the partials are added chunk by chunk in order. The result is
//   therefore bitwise the same for any number of threads.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// cpu_exp_: exp for softmaxes. float: exp(x) = 2^n * e^r, n = round(x / ln2), r = x - n ln2 in
// [-ln2/2, ln2/2] (ln2 split in two parts so r is exact to ~1e-11), e^r by its Taylor
// polynomial to degree 7 (truncation < 3e-9 relative), 2^n by building the exponent bits.
// Inputs below -87.3 give 0 (exp would be a denormal, < 2^-126), above 88 are clamped (never
// happens here: arguments are s - max <= 0 or s - lse <= ~0). Branch-free, so it vectorizes.
template <typename Real>
inline Real cpu_exp_(Real x) { return std::exp(x); }
template <>
inline float cpu_exp_<float>(float x_in) {
    float x = std::min(std::max(x_in, -87.33654f), 88.0f);
    float n = std::nearbyint(x * 1.44269504088896341f);
    float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(float));
    return x_in < -87.33654f ? 0.0f : p * scale;
}

// cpu_tanh_: tanh for the logit softcap. float, branch-free (both halves are computed and one
// is selected, so loops over it vectorize):
//   |x| < 0.55: the odd Taylor series to x^17 (truncation < 5e-8 relative);
//   |x| >= 0.55: 1 - 2 / (exp(2|x|) + 1) with cpu_exp_ (tanh >= 0.5 there, so the subtraction
//   loses at most one bit); |x| is clamped to 10, where tanh rounds to 1 in float.
// double uses std::tanh.
template <typename Real>
inline Real cpu_tanh_(Real x) { return std::tanh(x); }
template <>
inline float cpu_tanh_<float>(float x) {
    float a = std::min(std::fabs(x), 10.0f);
    float a2 = a * a;
    float p = 6404582.0f / 10854718875.0f;
    p = p * a2 - 929569.0f / 638512875.0f;
    p = p * a2 + 21844.0f / 6081075.0f;
    p = p * a2 - 1382.0f / 155925.0f;
    p = p * a2 + 62.0f / 2835.0f;
    p = p * a2 - 17.0f / 315.0f;
    p = p * a2 + 2.0f / 15.0f;
    p = p * a2 - 1.0f / 3.0f;
    float small = a + a * a2 * p;
    float big = 1.0f - 2.0f / (cpu_exp_<float>(2.0f * a) + 1.0f);
    float t = a < 0.55f ? small : big;
    return std::copysign(t, x);
}


template <typename T, int slot = 0>
T* cpu_scratch(size_t n) {
    static thread_local std::vector<T> buf;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
}

// body(begin, end, partial) adds the contributions of elements [begin, end) into partial[0..K).
// On return result[k] holds the total of partial k over all chunks (overwritten).
template <typename Body>
void cpu_chunked_sum(long n, int K, double* result, Body body) {
    const long max_chunks = 64;
    long nchunks = n < max_chunks ? (n > 0 ? n : 1) : max_chunks;
    double* partial = cpu_scratch<double, 1>((size_t)(nchunks * K));
    for (long i = 0; i < nchunks * K; i++) partial[i] = 0.0;
    #pragma omp parallel for schedule(static)
    for (long ch = 0; ch < nchunks; ch++) {
        long begin = n * ch / nchunks, end = n * (ch + 1) / nchunks;
        body(begin, end, partial + ch * K);
    }
    for (int k = 0; k < K; k++) result[k] = 0.0;
    for (long ch = 0; ch < nchunks; ch++)
        for (int k = 0; k < K; k++) result[k] += partial[ch * K + k];
}
