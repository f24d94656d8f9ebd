// sim.h: SIM, the CUDA-on-CPU runtime (README.md#sim). Included by llmc/cuda/common.cuh when
// g++ compiles kernel source with -DLLMC_SIM; never include it directly from a kernel file.
//
// How a launch runs. LAUNCH(k, grid, block, smem, stream, args...) calls llmc::sim::launch, which
// runs the blocks one after another on the calling OS thread. The threads of a block are
// cooperative fibers: each runs on its own stack until it reaches a __syncthreads() or a warp
// collective (or returns), then hands control back to the block scheduler. When every thread is
// blocked the scheduler completes what can be completed (warp collectives whose mask's lanes have
// all arrived; a barrier every thread of the block has reached) and runs the released threads on.
// A switch costs a few nanoseconds (a hand-written x86-64 stack switch; ucontext elsewhere), and
// happens only at those points, so straight-line kernel code runs at native speed.
//
// Rules (CUDA leaves each of these undefined; SIM throws llmc::Error naming kernel and block):
//   - __syncthreads(): every thread of the block must reach it, at the same source line. A thread
//     that has returned from the kernel does NOT count as having arrived (stricter than the
//     hardware, which lets exited warps pass; this is what makes "only half the threads call
//     __syncthreads" detectable at all, because the other half always exits eventually).
//   - warp collectives: every lane named in the mask must call the same collective with the same
//     mask; the caller must be in its own mask; a lane that has exited or that does not exist
//     (blockDim not a multiple of 32) must not be named. A shuffle that reads a lane outside the
//     mask gets the poison value (0xFF bytes), as its result is undefined in CUDA.
//
// Shared memory. Dynamic shared memory (DYNAMIC_SMEM) is one malloc of exactly the launched size;
// STATIC_SMEM arrays are one exact-size malloc per declaration site. Both are filled with 0xFF
// bytes (a NaN for float and bf16, -1 for ints) at every block start, so a read that races ahead
// of the write shows as a wrong result, and AddressSanitizer sees their exact bounds. A plain
// `__shared__ T x[N]` is a function-local static: one instance (blocks run sequentially), correct,
// but neither poisoned nor bounds-checked by ASan (UBSan still checks constant-size indexing).
// Blocks alternate the order in which their threads first run (even blocks thread 0 first, odd
// blocks the last thread first), so a missing barrier shows in either direction.
//
// Global memory. cudaMalloc returns host memory (256-byte aligned, filled with 0xFF like
// uninitialized device memory). Without ASan each block carries guard bytes before and after it
// that are checked after every launch and at cudaFree: a kernel writing out of bounds is named. In
// the ASan build the block is exactly the requested size and ASan reports the faulting access.
//
// Limits: launch from one host thread at a time (a concurrent launch is an error). A thread that
// spins waiting for another thread or block to write something (without a barrier in between)
// never sees it: fibers switch only at barriers and collectives, and blocks run in order, so such a
// kernel hangs under SIM. `extern __shared__` arrays do not compile: use DYNAMIC_SMEM.
// __CUDA_ARCH__ is not defined (as in nvcc's host pass): inline PTX belongs behind a wrapper with
// a SIM path (`#ifdef LLMC_SIM`). Each fiber has a 256 KiB stack (1 MiB under ASan; the
// environment variable LLMC_SIM_STACK_KB overrides); overflowing it faults on a guard page.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <cctype>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "llmc/utils.h"

#if defined(__SANITIZE_ADDRESS__)
#define LLMC_SIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LLMC_SIM_ASAN 1
#endif
#endif
#ifndef LLMC_SIM_ASAN
#define LLMC_SIM_ASAN 0
#endif
#if defined(__SANITIZE_THREAD__)
#define LLMC_SIM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LLMC_SIM_TSAN 1
#endif
#endif
#ifndef LLMC_SIM_TSAN
#define LLMC_SIM_TSAN 0
#endif
#if LLMC_SIM_TSAN
#include <sanitizer/tsan_interface.h>
// The runtime's own bookkeeping (fiber states, collective arguments and results, scheduler tables)
// is shared between the scheduler and the fibers by design; ThreadSanitizer must see only the
// kernel's accesses, so every runtime function that touches it is left uninstrumented.
#define LLMC_SIM_NOTSAN __attribute__((no_sanitize_thread, noinline))
// dynamic annotations exported by libtsan: the host's accesses while it schedules a grid are ignored
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
extern "C" void AnnotateIgnoreWritesBegin(const char* file, int line);
extern "C" void AnnotateIgnoreWritesEnd(const char* file, int line);
#else
#define LLMC_SIM_NOTSAN
#endif
#if LLMC_SIM_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__) && !defined(LLMC_SIM_UCONTEXT)
#define LLMC_SIM_UCONTEXT 1
#endif
#ifdef LLMC_SIM_UCONTEXT
#include <ucontext.h>
#endif

// ------------------------------------------------------------------------------------------------
// CUDA keywords

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __constant__
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))
// A plain __shared__ variable becomes a function-local static: one instance for the block, as the
// blocks run one at a time. `used` keeps g++ from assuming that no other code (another fiber)
// changes it across a __syncthreads() call.
#define __shared__ static __attribute__((used))

// ------------------------------------------------------------------------------------------------
// vector types

struct __attribute__((aligned(8))) float2 { float x, y; };
struct float3 { float x, y, z; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(16))) double2 { double x, y; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct int3 { int x, y, z; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned int x, y; };
struct uint3 { unsigned int x, y, z; };
struct __attribute__((aligned(16))) uint4 { unsigned int x, y, z, w; };
struct __attribute__((aligned(4))) short2 { short x, y; };
struct __attribute__((aligned(4))) ushort2 { unsigned short x, y; };
struct __attribute__((aligned(4))) char4 { signed char x, y, z, w; };
struct __attribute__((aligned(4))) uchar4 { unsigned char x, y, z, w; };
struct __attribute__((aligned(16))) longlong2 { long long x, y; };
struct __attribute__((aligned(16))) ulonglong2 { unsigned long long x, y; };

inline float2 make_float2(float x, float y) { return {x, y}; }
inline float3 make_float3(float x, float y, float z) { return {x, y, z}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int3 make_int3(int x, int y, int z) { return {x, y, z}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return {x, y, z}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline short2 make_short2(short x, short y) { return {x, y}; }
inline ushort2 make_ushort2(unsigned short x, unsigned short y) { return {x, y}; }
inline char4 make_char4(signed char x, signed char y, signed char z, signed char w) { return {x, y, z, w}; }
inline uchar4 make_uchar4(unsigned char x, unsigned char y, unsigned char z, unsigned char w) { return {x, y, z, w}; }
inline longlong2 make_longlong2(long long x, long long y) { return {x, y}; }
inline ulonglong2 make_ulonglong2(unsigned long long x, unsigned long long y) { return {x, y}; }

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return {x, y, z}; }
};

// The built-in index variables. The scheduler stores the running fiber's indices here before it
// switches to that fiber (the only way a fiber starts running), so kernel code reads its own.
inline uint3 threadIdx = {0, 0, 0};
inline uint3 blockIdx = {0, 0, 0};
inline dim3 blockDim = {1, 1, 1};
inline dim3 gridDim = {1, 1, 1};
constexpr int warpSize = 32;

// ------------------------------------------------------------------------------------------------
// bit-exact __nv_bfloat16 and __half conversions

namespace llmc {
namespace sim {

inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// float -> bf16, round to nearest even. Adding 0x7FFF plus the lowest kept bit rounds the 16
// dropped bits to nearest, ties to the even kept value; a carry ripples into the exponent
// correctly (up to inf for values at or past the largest bf16 plus half an ulp). NaN becomes the
// canonical NaN 0x7FFF, as the hardware conversion (cvt.rn.bf16.f32) produces. Subnormals need no
// special case: bf16 has float's exponent range, so their bits round the same way.
inline uint16_t float_to_bf16_bits(float f) {
    uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
// float -> bf16 rounding toward zero (truncation), NaN canonical
inline uint16_t float_to_bf16_bits_rz(float f) {
    uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    return (uint16_t)(u >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return u2f((uint32_t)b << 16); }

// double -> bf16 in one rounding: first to float rounding to odd (a float that is inexact gets its
// last bit set, so it can never look like an exact tie), then float -> bf16 to nearest even. With
// 16 spare bits this equals rounding the double directly.
inline uint16_t double_to_bf16_bits(double d) {
    if (std::isnan(d)) return 0x7fffu;
    float f = (float)d;
    if (std::isfinite(d) && (double)f != d) {
        if (std::fabs((double)f) > std::fabs(d)) f = std::nextafter(f, 0.0f);  // truncate
        f = u2f(f2u(f) | 1u);
    }
    return float_to_bf16_bits(f);
}

// float -> IEEE half, round to nearest even, subnormals kept, overflow to inf, NaN -> 0x7FFF
inline uint16_t float_to_half_bits(float f) {
    uint32_t u = f2u(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return 0x7fffu;
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // >= 65520 = 65504 + half ulp: inf
    if (a >= 0x38800000u) {                                    // >= 2^-14: normal half
        uint32_t h = (a >> 13) - (112u << 10);                 // rebias exponent 127 -> 15
        uint32_t rem = a & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    // subnormal half: units of 2^-24. value = m * 2^(e-150), so units = m >> (126 - e)
    uint32_t e = a >> 23;
    if (e < 102) return (uint16_t)sign;  // below 2^-25: rounds to zero (2^-25 itself is a tie to 0)
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;  // 14..24
    uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}
inline float half_bits_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        float v = ldexpf((float)m, -24);  // exact: at most 10 significant bits
        return sign ? -v : v;
    }
    if (e == 31) return u2f(sign | 0x7f800000u | (m << 13));
    return u2f(sign | ((e + 112u) << 23) | (m << 13));
}

}  // namespace sim
}  // namespace llmc

struct __align__(2) __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(llmc::sim::float_to_bf16_bits(f)) {}
    __nv_bfloat16(double d) : __x(llmc::sim::double_to_bf16_bits(d)) {}
    __nv_bfloat16(int v) : __x(llmc::sim::double_to_bf16_bits((double)v)) {}
    __nv_bfloat16(unsigned int v) : __x(llmc::sim::double_to_bf16_bits((double)v)) {}
    __nv_bfloat16(long long v) : __x(llmc::sim::double_to_bf16_bits((double)v)) {}
    __nv_bfloat16(unsigned long long v) : __x(llmc::sim::double_to_bf16_bits((double)v)) {}
    operator float() const { return llmc::sim::bf16_bits_to_float(__x); }
};
struct __align__(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
    __nv_bfloat162() = default;
    __nv_bfloat162(const __nv_bfloat16& a, const __nv_bfloat16& b) : x(a), y(b) {}
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

struct __align__(2) __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(llmc::sim::float_to_half_bits(f)) {}
    __half(double d) : __x(llmc::sim::float_to_half_bits((float)d)) {}  // double rounding; rare
    __half(int v) : __x(llmc::sim::float_to_half_bits((float)v)) {}
    __half(unsigned int v) : __x(llmc::sim::float_to_half_bits((float)v)) {}
    operator float() const { return llmc::sim::half_bits_to_float(__x); }
};
struct __align__(4) __half2 {
    __half x, y;
    __half2() = default;
    __half2(const __half& a, const __half& b) : x(a), y(b) {}
};
typedef __half half;
typedef __half2 half2;

// bf16 API (cuda_bf16.h subset). Arithmetic is done in float and rounded once to bf16: for + - * /
// of two bf16 values the float result carries more than 2*8+2 bits, so rounding it again to bf16
// gives the correctly rounded bf16 result, which is what the hardware instructions return.
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rz(float f) { __nv_bfloat16 r; r.__x = llmc::sim::float_to_bf16_bits_rz(f); return r; }
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }
inline __nv_bfloat16 __int2bfloat16_rn(int v) { return __nv_bfloat16(v); }
inline float __bfloat162float(__nv_bfloat16 b) { return (float)b; }
inline int __bfloat162int_rn(__nv_bfloat16 b) { return (int)nearbyintf((float)b); }
inline int __bfloat162int_rz(__nv_bfloat16 b) { return (int)(float)b; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline short __bfloat16_as_short(__nv_bfloat16 b) { return (short)b.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 r; r.__x = u; return r; }
inline __nv_bfloat16 __short_as_bfloat16(short u) { __nv_bfloat16 r; r.__x = (unsigned short)u; return r; }
inline __nv_bfloat162 __float2bfloat162_rn(float f) { return {__nv_bfloat16(f), __nv_bfloat16(f)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return {__nv_bfloat16(f.x), __nv_bfloat16(f.y)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {(float)h.x, (float)h.y}; }
inline float __low2float(__nv_bfloat162 h) { return (float)h.x; }
inline float __high2float(__nv_bfloat162 h) { return (float)h.y; }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return {a, b}; }
inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 a) { return {a, a}; }
inline __nv_bfloat162 __lows2bfloat162(__nv_bfloat162 a, __nv_bfloat162 b) { return {a.x, b.x}; }
inline __nv_bfloat162 __highs2bfloat162(__nv_bfloat162 a, __nv_bfloat162 b) { return {a.y, b.y}; }
inline __nv_bfloat162 __lowhigh2highlow(__nv_bfloat162 a) { return {a.y, a.x}; }

inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat16((float)a + (float)b); }
inline __nv_bfloat16 __hsub(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat16((float)a - (float)b); }
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat16((float)a * (float)b); }
inline __nv_bfloat16 __hdiv(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat16((float)a / (float)b); }
// a*b is exact in double and the sum is rounded once to double, then to bf16 (53 >= 2*8+2 bits)
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) { return __nv_bfloat16((double)(float)a * (double)(float)b + (double)(float)c); }
inline __nv_bfloat16 __hneg(__nv_bfloat16 a) { a.__x ^= 0x8000u; return a; }
inline __nv_bfloat16 __habs(__nv_bfloat16 a) { a.__x &= 0x7fffu; return a; }
inline __nv_bfloat16 __hmax(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat16(fmaxf((float)a, (float)b)); }
inline __nv_bfloat16 __hmin(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat16(fminf((float)a, (float)b)); }
inline bool __heq(__nv_bfloat16 a, __nv_bfloat16 b) { return (float)a == (float)b; }
inline bool __hne(__nv_bfloat16 a, __nv_bfloat16 b) { return (float)a != (float)b && !std::isnan((float)a) && !std::isnan((float)b); }
inline bool __hlt(__nv_bfloat16 a, __nv_bfloat16 b) { return (float)a < (float)b; }
inline bool __hle(__nv_bfloat16 a, __nv_bfloat16 b) { return (float)a <= (float)b; }
inline bool __hgt(__nv_bfloat16 a, __nv_bfloat16 b) { return (float)a > (float)b; }
inline bool __hge(__nv_bfloat16 a, __nv_bfloat16 b) { return (float)a >= (float)b; }
inline bool __hisnan(__nv_bfloat16 a) { return (a.__x & 0x7fffu) > 0x7f80u; }
inline int __hisinf(__nv_bfloat16 a) { return a.__x == 0x7f80u ? 1 : a.__x == 0xff80u ? -1 : 0; }
inline __nv_bfloat16 hsqrt(__nv_bfloat16 a) { return __nv_bfloat16(sqrtf((float)a)); }
inline __nv_bfloat16 hrsqrt(__nv_bfloat16 a) { return __nv_bfloat16(1.0f / sqrtf((float)a)); }
inline __nv_bfloat16 hrcp(__nv_bfloat16 a) { return __nv_bfloat16(1.0f / (float)a); }
inline __nv_bfloat16 hexp(__nv_bfloat16 a) { return __nv_bfloat16(expf((float)a)); }
inline __nv_bfloat16 hlog(__nv_bfloat16 a) { return __nv_bfloat16(logf((float)a)); }
inline __nv_bfloat16 htanh(__nv_bfloat16 a) { return __nv_bfloat16(tanhf((float)a)); }
inline __nv_bfloat162 __hadd2(__nv_bfloat162 a, __nv_bfloat162 b) { return {__hadd(a.x, b.x), __hadd(a.y, b.y)}; }
inline __nv_bfloat162 __hsub2(__nv_bfloat162 a, __nv_bfloat162 b) { return {__hsub(a.x, b.x), __hsub(a.y, b.y)}; }
inline __nv_bfloat162 __hmul2(__nv_bfloat162 a, __nv_bfloat162 b) { return {__hmul(a.x, b.x), __hmul(a.y, b.y)}; }
inline __nv_bfloat162 __h2div(__nv_bfloat162 a, __nv_bfloat162 b) { return {__hdiv(a.x, b.x), __hdiv(a.y, b.y)}; }
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) { return {__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)}; }
inline __nv_bfloat162 __hneg2(__nv_bfloat162 a) { return {__hneg(a.x), __hneg(a.y)}; }
inline __nv_bfloat162 __habs2(__nv_bfloat162 a) { return {__habs(a.x), __habs(a.y)}; }
inline __nv_bfloat162 __hmax2(__nv_bfloat162 a, __nv_bfloat162 b) { return {__hmax(a.x, b.x), __hmax(a.y, b.y)}; }
inline __nv_bfloat162 __hmin2(__nv_bfloat162 a, __nv_bfloat162 b) { return {__hmin(a.x, b.x), __hmin(a.y, b.y)}; }

inline __nv_bfloat16 operator+(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __hadd(a, b); }
inline __nv_bfloat16 operator-(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __hsub(a, b); }
inline __nv_bfloat16 operator*(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __hmul(a, b); }
inline __nv_bfloat16 operator/(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __hdiv(a, b); }
inline __nv_bfloat16& operator+=(__nv_bfloat16& a, const __nv_bfloat16& b) { return a = __hadd(a, b); }
inline __nv_bfloat16& operator-=(__nv_bfloat16& a, const __nv_bfloat16& b) { return a = __hsub(a, b); }
inline __nv_bfloat16& operator*=(__nv_bfloat16& a, const __nv_bfloat16& b) { return a = __hmul(a, b); }
inline __nv_bfloat16& operator/=(__nv_bfloat16& a, const __nv_bfloat16& b) { return a = __hdiv(a, b); }
inline __nv_bfloat16 operator+(const __nv_bfloat16& a) { return a; }
inline __nv_bfloat16 operator-(const __nv_bfloat16& a) { return __hneg(a); }
inline bool operator==(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __heq(a, b); }
inline bool operator!=(const __nv_bfloat16& a, const __nv_bfloat16& b) { return !((float)a == (float)b); }
inline bool operator<(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __hlt(a, b); }
inline bool operator<=(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __hle(a, b); }
inline bool operator>(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __hgt(a, b); }
inline bool operator>=(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __hge(a, b); }
inline __nv_bfloat162 operator+(const __nv_bfloat162& a, const __nv_bfloat162& b) { return __hadd2(a, b); }
inline __nv_bfloat162 operator-(const __nv_bfloat162& a, const __nv_bfloat162& b) { return __hsub2(a, b); }
inline __nv_bfloat162 operator*(const __nv_bfloat162& a, const __nv_bfloat162& b) { return __hmul2(a, b); }
inline __nv_bfloat162 operator/(const __nv_bfloat162& a, const __nv_bfloat162& b) { return __h2div(a, b); }
inline __nv_bfloat162& operator+=(__nv_bfloat162& a, const __nv_bfloat162& b) { return a = __hadd2(a, b); }
inline __nv_bfloat162& operator*=(__nv_bfloat162& a, const __nv_bfloat162& b) { return a = __hmul2(a, b); }

// half API (cuda_fp16.h subset), same scheme (11-bit significand: float's 24 >= 2*11+2)
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return (float)h; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { __half r; r.__x = u; return r; }
inline __half2 __float2half2_rn(float f) { return {__half(f), __half(f)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline __half2 __float22half2_rn(float2 f) { return {__half(f.x), __half(f.y)}; }
inline float2 __half22float2(__half2 h) { return {(float)h.x, (float)h.y}; }
inline float __low2float(__half2 h) { return (float)h.x; }
inline float __high2float(__half2 h) { return (float)h.y; }
inline __half2 __halves2half2(__half a, __half b) { return {a, b}; }
inline __half __hadd(__half a, __half b) { return __half((float)a + (float)b); }
inline __half __hsub(__half a, __half b) { return __half((float)a - (float)b); }
inline __half __hmul(__half a, __half b) { return __half((float)a * (float)b); }
inline __half __hdiv(__half a, __half b) { return __half((float)a / (float)b); }
inline __half __hfma(__half a, __half b, __half c) { return __half((float)((double)(float)a * (double)(float)b + (double)(float)c)); }
inline __half __hneg(__half a) { a.__x ^= 0x8000u; return a; }
inline __half __habs(__half a) { a.__x &= 0x7fffu; return a; }
inline __half __hmax(__half a, __half b) { return __half(fmaxf((float)a, (float)b)); }
inline __half __hmin(__half a, __half b) { return __half(fminf((float)a, (float)b)); }
inline bool __hisnan(__half a) { return (a.__x & 0x7fffu) > 0x7c00u; }
inline int __hisinf(__half a) { return a.__x == 0x7c00u ? 1 : a.__x == 0xfc00u ? -1 : 0; }
inline __half2 __hadd2(__half2 a, __half2 b) { return {__hadd(a.x, b.x), __hadd(a.y, b.y)}; }
inline __half2 __hmul2(__half2 a, __half2 b) { return {__hmul(a.x, b.x), __hmul(a.y, b.y)}; }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) { return {__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)}; }
inline __half operator+(const __half& a, const __half& b) { return __hadd(a, b); }
inline __half operator-(const __half& a, const __half& b) { return __hsub(a, b); }
inline __half operator*(const __half& a, const __half& b) { return __hmul(a, b); }
inline __half operator/(const __half& a, const __half& b) { return __hdiv(a, b); }
inline __half& operator+=(__half& a, const __half& b) { return a = __hadd(a, b); }
inline __half& operator*=(__half& a, const __half& b) { return a = __hmul(a, b); }
inline __half operator-(const __half& a) { return __hneg(a); }
inline bool operator==(const __half& a, const __half& b) { return (float)a == (float)b; }
inline bool operator!=(const __half& a, const __half& b) { return !((float)a == (float)b); }
inline bool operator<(const __half& a, const __half& b) { return (float)a < (float)b; }
inline bool operator>(const __half& a, const __half& b) { return (float)a > (float)b; }
inline bool operator<=(const __half& a, const __half& b) { return (float)a <= (float)b; }
inline bool operator>=(const __half& a, const __half& b) { return (float)a >= (float)b; }
inline __half2 operator+(const __half2& a, const __half2& b) { return __hadd2(a, b); }
inline __half2 operator*(const __half2& a, const __half2& b) { return __hmul2(a, b); }

// ------------------------------------------------------------------------------------------------
// math and bit intrinsics. The fast-math intrinsics (__expf, __logf, __fdividef, ...) are
// approximations on the GPU; SIM uses the accurate libm function, so tests comparing a GPU run
// against SIM need the tolerance they would need against the fp32 CPU reference anyway.

inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return std::isnan(x) ? 0.0f : fminf(fmaxf(x, 0.0f), 1.0f); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline int __float2int_rd(float x) { return (int)floorf(x); }
inline int __float2int_ru(float x) { return (int)ceilf(x); }
inline unsigned __float2uint_rn(float x) { return (unsigned)nearbyintf(x); }
inline float __int2float_rn(int x) { return (float)x; }
inline float __uint2float_rn(unsigned x) { return (float)x; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline long long __double_as_longlong(double d) { long long i; memcpy(&i, &d, 8); return i; }
inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
    return (x >> 16) | (x << 16);
}
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline int __mul24(int a, int b) { return a * b; }

// CUDA's device min/max accept mixed int/unsigned/long arguments (result in the common type);
// for floats they are fminf/fmaxf (a NaN argument loses)
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) { typedef std::common_type_t<A, B> C; return (C)b < (C)a ? (C)b : (C)a; }
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) { typedef std::common_type_t<A, B> C; return (C)a < (C)b ? (C)b : (C)a; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// cache-hinted loads/stores are plain accesses on the CPU
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }
// blocks run one at a time on one OS thread: every write is already visible to every later read
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

// ------------------------------------------------------------------------------------------------
// atomics. Fibers switch only at barriers and collectives, never inside one of these calls, so any
// read-modify-write is atomic here; they are written with the compiler's relaxed __atomic builtins
// anyway so that ThreadSanitizer sees them as atomics (atomic with each other, a race with a plain
// access, and no ordering: CUDA's atomics are relaxed).

namespace llmc {
namespace sim {
template <class T> inline T atomic_load(T* a) { return __atomic_load_n(a, __ATOMIC_RELAXED); }
// read-modify-write of any 2/4/8-byte type through a compare-and-swap loop on its bits
template <class T, class F> inline T atomic_rmw(T* a, F f) {
    typedef std::conditional_t<sizeof(T) == 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>> U;
    static_assert(sizeof(T) == sizeof(U), "atomic_rmw: 2, 4 or 8 bytes");
    U* p = reinterpret_cast<U*>(a);
    U old = __atomic_load_n(p, __ATOMIC_RELAXED);
    for (;;) {
        T o;
        memcpy(&o, &old, sizeof(T));
        T n = f(o);
        U nu;
        memcpy(&nu, &n, sizeof(T));
        if (__atomic_compare_exchange_n(p, &old, nu, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return o;
    }
}
}  // namespace sim
}  // namespace llmc

inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline float atomicAdd(float* a, float v) { return llmc::sim::atomic_rmw(a, [v](float o) { return o + v; }); }
inline double atomicAdd(double* a, double v) { return llmc::sim::atomic_rmw(a, [v](double o) { return o + v; }); }
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* a, __nv_bfloat16 v) { return llmc::sim::atomic_rmw(a, [v](__nv_bfloat16 o) { return __hadd(o, v); }); }
inline __nv_bfloat162 atomicAdd(__nv_bfloat162* a, __nv_bfloat162 v) { return llmc::sim::atomic_rmw(a, [v](__nv_bfloat162 o) { return __hadd2(o, v); }); }
inline __half atomicAdd(__half* a, __half v) { return llmc::sim::atomic_rmw(a, [v](__half o) { return __hadd(o, v); }); }
inline __half2 atomicAdd(__half2* a, __half2 v) { return llmc::sim::atomic_rmw(a, [v](__half2 o) { return __hadd2(o, v); }); }
inline int atomicSub(int* a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicSub(unsigned* a, unsigned v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline int atomicExch(int* a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned* a, unsigned v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicExch(unsigned long long* a, unsigned long long v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
inline float atomicExch(float* a, float v) { return llmc::sim::atomic_rmw(a, [v](float) { return v; }); }
#define LLMC_SIM_MINMAX(T)                                                                                   \
    inline T atomicMin(T* a, T v) { return llmc::sim::atomic_rmw(a, [v](T o) { return v < o ? v : o; }); } \
    inline T atomicMax(T* a, T v) { return llmc::sim::atomic_rmw(a, [v](T o) { return v > o ? v : o; }); }
LLMC_SIM_MINMAX(int)
LLMC_SIM_MINMAX(unsigned)
LLMC_SIM_MINMAX(long long)
LLMC_SIM_MINMAX(unsigned long long)
#undef LLMC_SIM_MINMAX
inline unsigned atomicInc(unsigned* a, unsigned v) { return llmc::sim::atomic_rmw(a, [v](unsigned o) { return (o >= v) ? 0u : o + 1u; }); }
inline unsigned atomicDec(unsigned* a, unsigned v) { return llmc::sim::atomic_rmw(a, [v](unsigned o) { return (o == 0u || o > v) ? v : o - 1u; }); }
template <class T> inline T atomic_cas_(T* a, T cmp, T v) {
    __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;  // the old value either way
}
inline int atomicCAS(int* a, int cmp, int v) { return atomic_cas_(a, cmp, v); }
inline unsigned atomicCAS(unsigned* a, unsigned cmp, unsigned v) { return atomic_cas_(a, cmp, v); }
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long cmp, unsigned long long v) { return atomic_cas_(a, cmp, v); }
inline unsigned short atomicCAS(unsigned short* a, unsigned short cmp, unsigned short v) { return atomic_cas_(a, cmp, v); }
#define LLMC_SIM_BITOPS(T)                                                                              \
    inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }               \
    inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }                 \
    inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }
LLMC_SIM_BITOPS(int)
LLMC_SIM_BITOPS(unsigned)
LLMC_SIM_BITOPS(unsigned long long)
#undef LLMC_SIM_BITOPS

// ------------------------------------------------------------------------------------------------
// the runtime API subset (over host memory; everything synchronous)

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};
enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};
enum cudaDeviceAttr {
    cudaDevAttrMaxThreadsPerBlock = 1,
    cudaDevAttrMaxSharedMemoryPerBlock = 8,
    cudaDevAttrWarpSize = 10,
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
// Streams: with LLMC_SIM_STREAMS=async, work on a created stream (copies, memsets, launches) is queued
// and runs only where CUDA guarantees it has completed: cudaStreamSynchronize, cudaEventSynchronize
// on an event recorded after it, cudaDeviceSynchronize, a synchronous cudaMemcpy/cudaMemset or
// default-stream work (the legacy default stream waits for the blocking streams), or a
// cudaStreamWaitEvent that makes another stream wait for it. So a host buffer changed before the
// synchronization, a result read too early, or a stream that reads another stream's result without
// an event wait gives a wrong result. Default-stream work runs at once (as if the host waited).
struct CUstream_st {
    int id = 0;
    bool nonblocking = false;
    std::deque<std::function<void()>> q;  // queued work, run in order
    uint64_t issued = 0, done = 0;        // operations queued / run so far
};
struct CUevent_st {
    double t_ms = 0;
    bool recorded = false;
    CUstream_st* stream = nullptr;  // where it was recorded (async mode) ...
    uint64_t seq = 0;               // ... as that stream's seq-th operation
};
typedef CUstream_st* cudaStream_t;
typedef CUevent_st* cudaEvent_t;
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02
#define cudaHostAllocDefault 0x00

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    int regsPerBlock;
    int warpSize;
    size_t memPitch;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    size_t totalConstMem;
    int major;
    int minor;
    int multiProcessorCount;
    int concurrentKernels;
    int memoryBusWidth;
    int l2CacheSize;
    int maxThreadsPerMultiProcessor;
    size_t sharedMemPerMultiprocessor;
    int regsPerMultiprocessor;
    size_t sharedMemPerBlockOptin;
    int maxBlocksPerMultiProcessor;
};

namespace llmc {
namespace sim {

// limits of the simulated device (an sm_90-class part with few SMs, so that grids sized by the SM
// count stay small on a CPU)
constexpr size_t kSmemDefault = 48 * 1024;         // dynamic smem allowed without opt-in
constexpr size_t kSmemOptin = 227 * 1024;          // per block with cudaFuncSetAttribute
constexpr int kMultiProcessors = 8;
constexpr size_t kGuard = 256;                     // cudaMalloc guard bytes (non-ASan builds)
constexpr unsigned char kPoison = 0xff;

struct Alloc { size_t bytes; char* base; };

struct Runtime {
    std::map<const char*, Alloc> allocs;        // cudaMalloc'ed blocks by user pointer
    std::map<const void*, size_t> smem_optin;  // cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
    cudaError_t last_error = cudaSuccess;
    std::string last_error_detail;
    CUstream_st default_stream;
    std::vector<CUstream_st*> streams;  // created streams (async mode queues)
    std::string async_error;            // the first error of queued work, reported at the next sync
};
// Never destroyed: kernels may still be launched from static destructors, and LeakSanitizer must
// still see the live cudaMalloc blocks through it at exit.
inline Runtime& rt() { static Runtime* r = new Runtime; return *r; }

inline cudaError_t set_error(cudaError_t e, const std::string& detail) {
    rt().last_error = e;
    rt().last_error_detail = detail;
    return e;
}
inline double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline bool async_streams_enabled();  // LLMC_SIM_STREAMS=async (config(), below)
// work for stream s is queued (async mode, a created stream) rather than run now
inline bool deferred(cudaStream_t st) { return st && st != &rt().default_stream && async_streams_enabled(); }
inline void enqueue(cudaStream_t st, std::function<void()> op) {
    st->q.push_back(std::move(op));
    st->issued++;
}
// run stream st's queued work up to its upto-th operation; an error is kept for the next sync call
inline void drain(cudaStream_t st, uint64_t upto) {
    while (st->done < upto && !st->q.empty()) {
        std::function<void()> op = std::move(st->q.front());
        st->q.pop_front();
        st->done++;
        try {
            op();
        } catch (const std::exception& e) {
            if (rt().async_error.empty()) rt().async_error = e.what();
        }
    }
}
// what the legacy default stream waits for: all work queued on the blocking streams
inline void drain_blocking() {
    for (size_t i = 0; i < rt().streams.size(); i++)
        if (!rt().streams[i]->nonblocking) drain(rt().streams[i], rt().streams[i]->issued);
}
inline void drain_all() {
    for (size_t i = 0; i < rt().streams.size(); i++) drain(rt().streams[i], rt().streams[i]->issued);
}
inline cudaError_t async_status() {
    if (rt().async_error.empty()) return cudaSuccess;
    std::string e;
    e.swap(rt().async_error);
    return set_error(cudaErrorLaunchFailure, e);
}

// The live allocation containing [p, p+n), or nullptr.
inline const Alloc* find_alloc(const void* p, size_t n) {
    auto& m = rt().allocs;
    auto it = m.upper_bound((const char*)p);
    if (it == m.begin()) return nullptr;
    --it;
    const char* c = (const char*)p;
    if (c >= it->first && c + n <= it->first + it->second.bytes) return &it->second;
    return nullptr;
}

// Guard bytes on both sides of every cudaMalloc'ed block (non-ASan builds): a kernel that writes
// out of bounds changes them, and check_guards names the block and the byte.
inline std::string check_block_guards(const char* p, size_t n) {
#if !LLMC_SIM_ASAN
    const unsigned char* user = (const unsigned char*)p;
    for (size_t i = 0; i < kGuard; i++) {
        if (user[n + i] != 0xA5)
            return ::llmc::strfmt("write past the end of a cudaMalloc'ed block of %zu bytes at %p (byte %zu after its end changed)", n, (const void*)user, i);
        if (user[-(ptrdiff_t)kGuard + (ptrdiff_t)(kGuard - 1 - i)] != 0xA5)
            return ::llmc::strfmt("write before the start of a cudaMalloc'ed block of %zu bytes at %p (byte %zu before its start changed)", n, (const void*)user, i + 1);
    }
#endif
    return "";
}
inline std::string check_guards() {
    for (auto& kv : rt().allocs) {
        std::string e = check_block_guards(kv.first, kv.second.bytes);
        if (!e.empty()) return e;
    }
    return "";
}

}  // namespace sim
}  // namespace llmc

inline const char* cudaGetErrorName(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
        case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
        case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
        case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
        case cudaErrorNotReady: return "cudaErrorNotReady";
        case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}
// The generic text for the code, followed by SIM's detail of the most recent error of that code.
inline const char* cudaGetErrorString(cudaError_t e) {
    const char* base = "unknown error";
    switch (e) {
        case cudaSuccess: base = "no error"; break;
        case cudaErrorInvalidValue: base = "invalid argument"; break;
        case cudaErrorMemoryAllocation: base = "out of memory"; break;
        case cudaErrorInvalidConfiguration: base = "invalid configuration argument"; break;
        case cudaErrorInvalidDevicePointer: base = "invalid device pointer"; break;
        case cudaErrorInvalidMemcpyDirection: base = "invalid copy direction for memcpy"; break;
        case cudaErrorInvalidResourceHandle: base = "invalid resource handle"; break;
        case cudaErrorNotReady: base = "device not ready"; break;
        case cudaErrorLaunchFailure: base = "unspecified launch failure"; break;
    }
    static thread_local std::string s;
    auto& r = llmc::sim::rt();
    s = base;
    if (e != cudaSuccess && e == r.last_error && !r.last_error_detail.empty()) s += " (SIM: " + r.last_error_detail + ")";
    return s.c_str();
}
inline cudaError_t cudaGetLastError() {
    cudaError_t e = llmc::sim::rt().last_error;
    llmc::sim::rt().last_error = cudaSuccess;
    return e;
}
inline cudaError_t cudaPeekAtLastError() { return llmc::sim::rt().last_error; }

inline cudaError_t cudaMalloc(void** p, size_t n) {
    using namespace llmc::sim;
    if (!p) return set_error(cudaErrorInvalidValue, "cudaMalloc: null result pointer");
    void* base = nullptr;
#if LLMC_SIM_ASAN
    // exactly n bytes, so ASan reports the first byte past the end
    if (posix_memalign(&base, 256, n ? n : 1) != 0) return set_error(cudaErrorMemoryAllocation, ::llmc::strfmt("cudaMalloc(%zu bytes) failed", n));
    char* user = (char*)base;
#else
    if (posix_memalign(&base, 256, n + 2 * kGuard) != 0) return set_error(cudaErrorMemoryAllocation, ::llmc::strfmt("cudaMalloc(%zu bytes) failed", n));
    char* user = (char*)base + kGuard;
    memset(base, 0xA5, kGuard);
    memset(user + n, 0xA5, kGuard);
#endif
    memset(user, kPoison, n);  // device memory starts out as garbage, not zeros
    rt().allocs[user] = Alloc{n, (char*)base};
    *p = user;
    return cudaSuccess;
}
template <class T> inline cudaError_t cudaMalloc(T** p, size_t n) { return cudaMalloc((void**)p, n); }
inline cudaError_t cudaFree(void* p) {
    using namespace llmc::sim;
    if (!p) return cudaSuccess;
    auto it = rt().allocs.find((const char*)p);
    if (it == rt().allocs.end()) return set_error(cudaErrorInvalidDevicePointer, ::llmc::strfmt("cudaFree(%p): not a pointer returned by cudaMalloc (or freed twice)", p));
    std::string bad = check_block_guards(it->first, it->second.bytes);
    char* base = it->second.base;
    rt().allocs.erase(it);
    free(base);
    if (!bad.empty()) return set_error(cudaErrorLaunchFailure, bad);
    return cudaSuccess;
}
inline cudaError_t cudaMallocHost(void** p, size_t n) { *p = malloc(n ? n : 1); return *p ? cudaSuccess : cudaErrorMemoryAllocation; }
template <class T> inline cudaError_t cudaMallocHost(T** p, size_t n) { return cudaMallocHost((void**)p, n); }
inline cudaError_t cudaFreeHost(void* p) { free(p); return cudaSuccess; }

namespace llmc {
namespace sim {
// A device-side range of a copy or memset must lie inside one live cudaMalloc'ed block.
inline cudaError_t check_device_range(const char* what, const char* side, const void* p, size_t n) {
    if (n == 0 || find_alloc(p, n)) return cudaSuccess;
    return set_error(cudaErrorInvalidValue, ::llmc::strfmt("%s: %s range [%p, +%zu bytes) is not inside a cudaMalloc'ed block", what, side, p, n));
}
}  // namespace sim
}  // namespace llmc

inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
    using namespace llmc::sim;
    cudaError_t e = cudaSuccess;
    if ((unsigned)kind > 4u) return set_error(cudaErrorInvalidMemcpyDirection, ::llmc::strfmt("cudaMemcpy: kind %d", (int)kind));
    // cudaMemcpyDefault infers each side from the pointer: one that starts inside a cudaMalloc'ed
    // block is device memory, and the whole range must then lie inside that block
    bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice || (kind == cudaMemcpyDefault && n && find_alloc(dst, 1));
    bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice || (kind == cudaMemcpyDefault && n && find_alloc(src, 1));
    if (dst_dev) e = check_device_range("cudaMemcpy", "destination", dst, n);
    if (e == cudaSuccess && src_dev) e = check_device_range("cudaMemcpy", "source", src, n);
    if (e != cudaSuccess) return e;
    drain_blocking();  // a synchronous copy waits for the work queued before it
    if (n) memmove(dst, src, n);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t st = nullptr) {
    using namespace llmc::sim;
    if (!deferred(st)) return cudaMemcpy(dst, src, n, kind);
    // the ranges are checked now (an argument error is immediate); the bytes move when the stream runs
    bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice || (kind == cudaMemcpyDefault && n && find_alloc(dst, 1));
    bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice || (kind == cudaMemcpyDefault && n && find_alloc(src, 1));
    cudaError_t e = (unsigned)kind > 4u ? set_error(cudaErrorInvalidMemcpyDirection, "cudaMemcpyAsync: bad kind") : cudaSuccess;
    if (e == cudaSuccess && dst_dev) e = check_device_range("cudaMemcpyAsync", "destination", dst, n);
    if (e == cudaSuccess && src_dev) e = check_device_range("cudaMemcpyAsync", "source", src, n);
    if (e != cudaSuccess) return e;
    enqueue(st, [=] { if (n) memmove(dst, src, n); });
    return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int v, size_t n) {
    using namespace llmc::sim;
    cudaError_t e = check_device_range("cudaMemset", "destination", p, n);
    if (e != cudaSuccess) return e;
    drain_blocking();
    if (n) memset(p, v, n);
    return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t st = nullptr) {
    using namespace llmc::sim;
    if (!deferred(st)) return cudaMemset(p, v, n);
    cudaError_t e = check_device_range("cudaMemsetAsync", "destination", p, n);
    if (e != cudaSuccess) return e;
    enqueue(st, [=] { if (n) memset(p, v, n); });
    return cudaSuccess;
}
inline cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t) { return cudaMalloc(p, n); }
template <class T> inline cudaError_t cudaMallocAsync(T** p, size_t n, cudaStream_t s) { return cudaMallocAsync((void**)p, n, s); }
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
// __constant__ variables are ordinary globals under SIM
template <class T> inline cudaError_t cudaMemcpyToSymbol(T& symbol, const void* src, size_t n, size_t offset = 0, cudaMemcpyKind = cudaMemcpyHostToDevice) {
    if (offset + n > sizeof(T)) return llmc::sim::set_error(cudaErrorInvalidValue, llmc::strfmt("cudaMemcpyToSymbol: %zu bytes at offset %zu into a %zu-byte symbol", n, offset, sizeof(T)));
    memcpy((char*)&symbol + offset, src, n);
    return cudaSuccess;
}
template <class T> inline cudaError_t cudaMemcpyFromSymbol(void* dst, const T& symbol, size_t n, size_t offset = 0, cudaMemcpyKind = cudaMemcpyDeviceToHost) {
    if (offset + n > sizeof(T)) return llmc::sim::set_error(cudaErrorInvalidValue, llmc::strfmt("cudaMemcpyFromSymbol: %zu bytes at offset %zu from a %zu-byte symbol", n, offset, sizeof(T)));
    memcpy(dst, (const char*)&symbol + offset, n);
    return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
    long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES), ps = sysconf(_SC_PAGE_SIZE);
    *total_b = (size_t)pages * (size_t)ps;
    *free_b = (size_t)avail * (size_t)ps;
    return cudaSuccess;
}

inline cudaError_t cudaDeviceSynchronize() {
    llmc::sim::drain_all();
    return llmc::sim::async_status();
}
inline cudaError_t cudaDeviceReset() { return cudaSuccess; }
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : llmc::sim::set_error(cudaErrorInvalidValue, "cudaSetDevice: SIM has one device (0)"); }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int dev) {
    using namespace llmc::sim;
    if (dev != 0) return set_error(cudaErrorInvalidValue, "cudaGetDeviceProperties: SIM has one device (0)");
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "llmc SIM (CUDA on CPU)");
    size_t fr, tot;
    cudaMemGetInfo(&fr, &tot);
    p->totalGlobalMem = tot;
    p->sharedMemPerBlock = kSmemDefault;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->memPitch = (size_t)1 << 31;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = 1024; p->maxThreadsDim[1] = 1024; p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 2147483647; p->maxGridSize[1] = 65535; p->maxGridSize[2] = 65535;
    p->totalConstMem = 65536;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = kMultiProcessors;
    p->concurrentKernels = 1;
    p->memoryBusWidth = 5120;
    p->l2CacheSize = 50 * 1024 * 1024;
    p->maxThreadsPerMultiProcessor = 2048;
    p->sharedMemPerMultiprocessor = 228 * 1024;
    p->regsPerMultiprocessor = 65536;
    p->sharedMemPerBlockOptin = kSmemOptin;
    p->maxBlocksPerMultiProcessor = 32;
    return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int dev) {
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, dev);
    switch (a) {
        case cudaDevAttrMaxThreadsPerBlock: *v = p.maxThreadsPerBlock; break;
        case cudaDevAttrMaxSharedMemoryPerBlock: *v = (int)p.sharedMemPerBlock; break;
        case cudaDevAttrWarpSize: *v = 32; break;
        case cudaDevAttrMultiProcessorCount: *v = p.multiProcessorCount; break;
        case cudaDevAttrComputeCapabilityMajor: *v = p.major; break;
        case cudaDevAttrComputeCapabilityMinor: *v = p.minor; break;
        case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = (int)p.sharedMemPerBlockOptin; break;
        default: return llmc::sim::set_error(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute not simulated");
    }
    return cudaSuccess;
}
// Records the opt-in so that a launch asking for more than 48 KiB of dynamic shared memory without
// it fails under SIM as it would on the GPU.
template <class F> inline cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || (size_t)value > llmc::sim::kSmemOptin)
            return llmc::sim::set_error(cudaErrorInvalidValue, llmc::strfmt("cudaFuncSetAttribute: %d bytes of dynamic shared memory is above the device's %zu", value, llmc::sim::kSmemOptin));
        llmc::sim::rt().smem_optin[reinterpret_cast<const void*>(func)] = (size_t)value;
    }
    return cudaSuccess;
}

inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
    static int n = 0;
    *s = new CUstream_st;
    (*s)->id = ++n;
    (*s)->nonblocking = (flags & cudaStreamNonBlocking) != 0;
    llmc::sim::rt().streams.push_back(*s);
    return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s) return cudaSuccess;
    llmc::sim::drain(s, s->issued);  // queued work still completes, as on the GPU
    auto& v = llmc::sim::rt().streams;
    v.erase(std::remove(v.begin(), v.end(), s), v.end());
    delete s;
    return llmc::sim::async_status();
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (llmc::sim::deferred(s)) llmc::sim::drain(s, s->issued);
    else llmc::sim::drain_blocking();  // the legacy default stream
    return llmc::sim::async_status();
}
inline cudaError_t cudaStreamQuery(cudaStream_t s) { return llmc::sim::deferred(s) && s->done < s->issued ? cudaErrorNotReady : cudaSuccess; }
inline cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = new CUevent_st; return cudaSuccess; }
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr) {
    if (llmc::sim::deferred(s)) {
        e->recorded = false;
        e->stream = s;
        e->seq = s->issued + 1;
        llmc::sim::enqueue(s, [e] { e->t_ms = llmc::sim::now_ms(); e->recorded = true; });
    } else {
        e->stream = nullptr;
        e->t_ms = llmc::sim::now_ms();
        e->recorded = true;
    }
    return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (e->stream) llmc::sim::drain(e->stream, e->seq);
    return llmc::sim::async_status();
}
inline cudaError_t cudaEventQuery(cudaEvent_t e) { return e->stream && e->stream->done < e->seq ? cudaErrorNotReady : cudaSuccess; }
// stream s waits for the work before the event: queued as an operation that first runs the other
// stream up to the event (in async mode); a default-stream wait runs it now
inline cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned = 0) {
    if (!e->stream) return cudaSuccess;
    CUstream_st* es = e->stream;
    uint64_t seq = e->seq;
    if (llmc::sim::deferred(s)) llmc::sim::enqueue(s, [es, seq] { llmc::sim::drain(es, seq); });
    else llmc::sim::drain(es, seq);
    return cudaSuccess;
}
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
    if (!a->recorded || !b->recorded) return llmc::sim::set_error(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: event not recorded");
    *ms = (float)(b->t_ms - a->t_ms);
    return cudaSuccess;
}

// ------------------------------------------------------------------------------------------------
// fibers and the block scheduler

#ifndef LLMC_SIM_UCONTEXT
// llmc_sim_switch(save, to): push the callee-saved registers on the current stack, store the stack
// pointer in *save, load `to`, pop the same from there, return into the other fiber. The FP
// control words (MXCSR, x87 CW) are not switched: all fibers share the thread's FP environment
// (kernel code cannot change it), and fldcw alone would double the cost of a switch. llmc_sim_fiber_start is where a fresh fiber's first switch returns to: it
// calls the function in r12 with the fiber in rbx. `.cfi_undefined rip` marks it the outermost
// frame, so gdb and the unwinder stop there. Weak, so the header may be in several objects.
__asm__(R"(
    .text
    .weak llmc_sim_switch
    .type llmc_sim_switch,@function
llmc_sim_switch:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size llmc_sim_switch, .-llmc_sim_switch

    .weak llmc_sim_fiber_start
    .type llmc_sim_fiber_start,@function
llmc_sim_fiber_start:
    .cfi_startproc
    .cfi_undefined rip
    movq %rbx, %rdi
    call *%r12
    ud2
    .cfi_endproc
    .size llmc_sim_fiber_start, .-llmc_sim_fiber_start
)");
extern "C" void llmc_sim_switch(void** save_sp, void* to_sp);
extern "C" void llmc_sim_fiber_start();
#endif

namespace llmc {
namespace sim {

// ---- schedule orders (LLMC_SIM_ORDER) and the other run-time switches of SIM ----
// A correct kernel gives the same bits whatever order its blocks, warps and lanes run in; SIM can
// run them forward, reverse or in a seeded shuffle so that a kernel that depends on one order
// (a missing barrier, a read of another block's result) shows up as a wrong or changed result.
//   LLMC_SIM_ORDER=forward|reverse|shuffle[:SEED]   (default forward)
//   LLMC_SIM_DETERMINISM=1  run every launch twice, in the given order and in its opposite (reverse
//                           for forward, and back; shuffle with the next seed), from the same device
//                           memory, and fail if any cudaMalloc'ed byte differs between the two
//   LLMC_SIM_STREAMS=async  queue copies, memsets and launches per stream and run them only where
//                           CUDA guarantees completion (see "streams" below); default sync
enum class Order : uint8_t { Forward, Reverse, Shuffle };
struct Config {
    Order order = Order::Forward;
    uint64_t seed = 1;
    bool determinism = false;
    bool async_streams = false;
};
inline const char* order_name(Order o) { return o == Order::Forward ? "forward" : o == Order::Reverse ? "reverse" : "shuffle"; }
inline Config read_config() {
    Config c;
    if (const char* e = getenv("LLMC_SIM_ORDER")) {
        std::string v = e;
        if (v == "forward" || v.empty()) c.order = Order::Forward;
        else if (v == "reverse") c.order = Order::Reverse;
        else if (v.rfind("shuffle", 0) == 0) {
            c.order = Order::Shuffle;
            if (v.size() > 7) {
                char* end = nullptr;
                if (v[7] != ':' || (c.seed = strtoull(v.c_str() + 8, &end, 10), !end || *end))
                    LLMC_FAIL("LLMC_SIM_ORDER='%s': expected forward, reverse, shuffle or shuffle:SEED", e);
            }
        } else {
            LLMC_FAIL("LLMC_SIM_ORDER='%s': expected forward, reverse, shuffle or shuffle:SEED", e);
        }
    }
    if (const char* e = getenv("LLMC_SIM_DETERMINISM")) c.determinism = strcmp(e, "0") != 0 && *e;
    if (const char* e = getenv("LLMC_SIM_STREAMS")) {
        if (!strcmp(e, "async")) c.async_streams = true;
        else if (strcmp(e, "sync") && *e) LLMC_FAIL("LLMC_SIM_STREAMS='%s': expected sync or async", e);
    }
    return c;
}
inline Config& config() { static Config c = read_config(); return c; }
inline bool async_streams_enabled() { return config().async_streams; }

// splitmix64: the shuffles' generator
inline uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
// p = a permutation of 0..n-1 in the configured order; `salt` makes each shuffle different
inline void make_order(std::vector<int>& p, int n, Order order, uint64_t seed, uint64_t salt) {
    p.resize((size_t)n);
    for (int i = 0; i < n; i++) p[(size_t)i] = order == Order::Reverse ? n - 1 - i : i;
    if (order == Order::Shuffle) {
        uint64_t st = mix64(seed * 0x100000001B3ull ^ salt);
        for (int i = n - 1; i > 0; i--) {
            st = mix64(st);
            std::swap(p[(size_t)i], p[(size_t)(st % (uint64_t)(i + 1))]);
        }
    }
}

// Copies and fills of the runtime's own data, invisible to ThreadSanitizer (its interceptors would
// report the scheduler and a fiber touching the same bookkeeping as a race).
LLMC_SIM_NOTSAN inline void raw_copy(void* dst, const void* src, size_t n) {
#if LLMC_SIM_TSAN
    volatile unsigned char* d = (volatile unsigned char*)dst;
    const volatile unsigned char* q = (const volatile unsigned char*)src;
    for (size_t i = 0; i < n; i++) d[i] = q[i];
#else
    memcpy(dst, src, n);  // (the warp_gather of every mma and ldmatrix goes through here)
#endif
}
LLMC_SIM_NOTSAN inline void raw_fill(void* dst, unsigned char v, size_t n) {
    volatile unsigned char* d = (volatile unsigned char*)dst;
    for (size_t i = 0; i < n; i++) d[i] = v;
}

// Shared memory is poisoned at every block start, alternately with 0xFF bytes (NaN for float and
// bf16, -1 for ints) and 0x7F bytes (3.4e38 for float and bf16, a large positive int): a NaN can be
// swallowed (fmaxf(NaN, x) is x), a huge finite value cannot, and the reverse holds for code that
// would clamp a huge value; between the two, a read of memory no thread wrote changes the result.

enum class St : uint8_t { Runnable, AtBarrier, AtWarp, Exited };
enum class Op : uint8_t { SyncWarp, ShflIdx, ShflUp, ShflDown, ShflXor, Gather, Ballot, Any, All, RedAdd, RedMinU, RedMaxU, RedMinI, RedMaxI };
enum class Bar : uint8_t { Plain, Count, And, Or };

inline const char* op_name(Op op) {
    switch (op) {
        case Op::SyncWarp: return "__syncwarp";
        case Op::ShflIdx: return "__shfl_sync";
        case Op::ShflUp: return "__shfl_up_sync";
        case Op::ShflDown: return "__shfl_down_sync";
        case Op::ShflXor: return "__shfl_xor_sync";
        case Op::Gather: return "warp_gather";
        case Op::Ballot: return "__ballot_sync";
        case Op::Any: return "__any_sync";
        case Op::All: return "__all_sync";
        case Op::RedAdd: return "__reduce_add_sync";
        case Op::RedMinU: case Op::RedMinI: return "__reduce_min_sync";
        case Op::RedMaxU: case Op::RedMaxI: return "__reduce_max_sync";
    }
    return "?";
}

struct Fiber {
    void* sp = nullptr;  // saved stack pointer while switched out
#ifdef LLMC_SIM_UCONTEXT
    ucontext_t ctx;
#endif
    char* stack = nullptr;  // usable stack [stack, stack + stack_size)
    size_t stack_size = 0;
    void* asan_fake_stack = nullptr;
    St st = St::Exited;
    uint3 tid{0, 0, 0};
    int linear = 0;
    // where it waits (barrier or collective), for the error messages
    const char* file = "";
    int line = 0;
    // barrier
    Bar bar = Bar::Plain;
    int pred = 0;
    int bar_result = 0;
    // warp collective: op, mask, argument (lane / delta / lane mask), width, value
    Op op = Op::SyncWarp;
    unsigned mask = 0;
    int arg = 0, width = 32;
    unsigned char in[16], out[16];
    int size = 0;
    // warp_gather: this lane's bytes, and where every lane's bytes go (both on the fiber's stack,
    // which stays put while the fiber waits)
    const void* gather_in = nullptr;
    void* gather_out = nullptr;
    // cp.async copies issued and not yet waited for; group = the commit-group number (-1: not
    // committed yet). The source is read at issue; the destination is written at the wait. A fixed
    // table (no heap container: the scheduler resets it, and under TSan it must stay invisible).
    struct AsyncCopy { void* dst; unsigned char src[16]; int bytes; int group; };
    static constexpr int kMaxAsync = 128;
    AsyncCopy async_copies[kMaxAsync];
    int n_async = 0;
    int async_groups = 0;  // groups committed so far
    std::exception_ptr err;
#if LLMC_SIM_TSAN
    void* tsan = nullptr;       // this thread's ThreadSanitizer fiber (one per thread and block slot)
    unsigned arrivals = 0;      // collectives reached in this block (picks the release object)
    unsigned barriers = 0;      // barriers reached in this block
    unsigned full_warp = 0;     // full-mask warp collectives reached in this block
    unsigned acq_mask = 0;      // lanes to acquire from when a collective completes ...
    unsigned char acq_idx[32];  // ... and which of their two release objects
#endif
};

// Blocks run one at a time. Under ThreadSanitizer, each block runs in one of a few "slots": a slot
// has its own TSan fibers (one per thread), its own shared memory and its own sync objects, and one
// block of a slot is ordered before the next block of the same slot (they reuse its memory). Blocks
// in different slots are not ordered at all, so a race between two blocks is reported when they
// fall in different slots (the b-th and (b+1)-th block run always do). Without TSan there is one slot.
constexpr int kMaxSlots = 2;  // the TSan build uses both (tsan_prepare_slots), the others one

struct Slot {
    unsigned char* dyn = nullptr;  // this launch's dynamic shared memory for the slot's blocks
#if LLMC_SIM_TSAN
    std::vector<void*> fibers;         // TSan fiber of each thread
    std::vector<uint64_t> launch_seen; // the launch whose start each fiber has acquired
    uint64_t* seen = nullptr;          // launch_seen.data(), read by the fibers without a std:: call
    char* objs = nullptr;              // sync objects: [0,1] barriers, [2,3] ends of the slot's blocks
    size_t nobjs = 0;                  // (alternating), then 2 per thread (collectives)
    uint64_t nblocks = 0;              // blocks run in this slot
#endif
};

struct Sched {
    // launch
    const char* kernel = nullptr;
    void (*body)(void*) = nullptr;
    void* args = nullptr;
    size_t dyn_bytes = 0;
    size_t static_bytes = 0;  // STATIC_SMEM bytes touched by the current block
    uint64_t block_serial = 0;
    uint64_t launch_serial = 0;
    int nthreads = 0;
    int nslots = 1;
    int slot = 0;             // slot of the running block
    Order order = Order::Forward;
    uint64_t seed = 1;
    std::vector<Fiber> fibers;
    std::vector<int> warp_order, lane_order, block_order;
    Slot slots[kMaxSlots];
    Fiber* cur = nullptr;
    bool in_launch = false;
    bool dirty_stacks = false;  // an aborted block left frames (and ASan stack poison) behind
    // host side of the switch
    void* host_sp = nullptr;
#ifdef LLMC_SIM_UCONTEXT
    ucontext_t host_ctx;
#endif
    void* host_fake_stack = nullptr;
    const void* host_stack_bottom = nullptr;
    size_t host_stack_size = 0;
#if LLMC_SIM_TSAN
    void* host_tsan = nullptr;  // the host thread's TSan context during a launch
    char launch_obj = 0;        // released by the host at each launch, acquired by every thread
#endif
    // stacks, allocated once and reused by every later launch
    std::vector<char*> stacks;
    size_t stack_size = 0;
};
inline Sched& sched() { static Sched* s = new Sched; return *s; }

inline unsigned char poison_byte() { return (sched().block_serial & 1) ? 0x7f : kPoison; }
LLMC_SIM_NOTSAN inline void poison(void* p, size_t n) { raw_fill(p, poison_byte(), n); }

inline size_t fiber_stack_bytes() {
    const char* e = getenv("LLMC_SIM_STACK_KB");
    size_t kb = e ? (size_t)atol(e) : (LLMC_SIM_ASAN ? 1024 : 256);
    return (kb < 32 ? 32 : kb) * 1024;
}

inline void ensure_stacks(int n) {
    Sched& s = sched();
    if (s.stack_size == 0) s.stack_size = fiber_stack_bytes();
    const size_t page = (size_t)sysconf(_SC_PAGE_SIZE);
    while ((int)s.stacks.size() < n) {
        // one PROT_NONE page below each stack: an overflow faults instead of corrupting a neighbour
        size_t total = s.stack_size + page;
        void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) LLMC_FAIL("SIM: cannot map a %zu KiB fiber stack", s.stack_size / 1024);
        mprotect(m, page, PROT_NONE);
        s.stacks.push_back((char*)m + page);
    }
}

inline void asan_start_switch(void** fake_save, const void* bottom, size_t size) {
#if LLMC_SIM_ASAN
    __sanitizer_start_switch_fiber(fake_save, bottom, size);
#endif
}
inline void asan_finish_switch(void* fake, const void** bottom_old, size_t* size_old) {
#if LLMC_SIM_ASAN
    __sanitizer_finish_switch_fiber(fake, bottom_old, size_old);
#endif
}

// ---- ThreadSanitizer: what the CUDA memory model orders ----
// Each CUDA thread runs as its own TSan fiber and every stack switch is a no-sync switch, so TSan
// sees no order between threads except the edges made here:
//   - launch: the host releases a launch object before the grid and each thread acquires it when it
//     first runs; each thread releases its slot's end object when it exits, and the host acquires
//     every slot's end objects after the grid (while it schedules, its own accesses are ignored);
//   - blocks of one slot: a block's threads acquire the end object of the slot's previous block
//     (they reuse its shared memory and stacks); blocks of different slots stay unordered;
//   - __syncthreads(): every thread of the block releases into the barrier's object on arrival and
//     acquires it when released (two objects used alternately: a thread can be one barrier ahead);
//   - a warp collective (shuffle, vote, __syncwarp, warp_gather, mma): with a full mask the same
//     scheme per warp; with a partial mask each lane releases into its own object and, when the
//     collective completes, acquires those of exactly the lanes in the mask (no order with others);
//   - atomics are relaxed atomics (atomic with each other, no order), as CUDA's are.
#if LLMC_SIM_TSAN
}  // namespace sim
}  // namespace llmc
// ThreadSanitizer calls this (a weak hook of its runtime) when it prints a report: SIM adds the
// kernel and the CUDA thread that made the second access (the report itself names both threads as
// "block (..) thread (..)" and gives both source lines).
// A report is fatal (exit status 66 right after it is printed) unless a test planted the race on
// purpose and said so (llmc::sim::ExpectRaces), so a race fails `make test` at the first report.
namespace llmc { namespace sim {
inline int tsan_expecting = 0;  // > 0: inside ExpectRaces
inline int tsan_reports = 0;    // reports printed so far
struct ExpectRaces {
    ExpectRaces() { tsan_expecting++; }
    ~ExpectRaces() { tsan_expecting--; }
};
} }
extern "C" __attribute__((weak, no_sanitize_thread)) void __tsan_on_report(const void*) {
    auto& s = ::llmc::sim::sched();
    ::llmc::sim::tsan_reports++;
    if (s.in_launch && s.cur)
        fprintf(stderr, "SIM: race found in kernel '%s' (grid (%u,%u,%u), block (%u,%u,%u)), at block (%u,%u,%u), thread (%u,%u,%u)\n", s.kernel,
                gridDim.x, gridDim.y, gridDim.z, blockDim.x, blockDim.y, blockDim.z, blockIdx.x, blockIdx.y, blockIdx.z, s.cur->tid.x,
                s.cur->tid.y, s.cur->tid.z);
    if (!::llmc::sim::tsan_expecting) {
        fprintf(stderr, "SIM: stopping at the first data race (ThreadSanitizer flavor)\n");
        fflush(stderr);
        _exit(66);
    }
}
// planted races reported inside ExpectRaces must not turn the exit status into a failure
extern "C" __attribute__((weak)) const char* __tsan_default_options() { return "exitcode=0:history_size=4"; }
namespace llmc {
namespace sim {
inline void* tsan_barrier_obj(Sched& s, unsigned k) { return s.slots[s.slot].objs + (k & 1); }
// the k-th block of a slot releases into end object k&1 and its threads acquire end object (k-1)&1
// at their start: the slot's earlier blocks, never a sibling thread of the same block that exited
inline void* tsan_end_obj(Sched& s, int slot, uint64_t k) { return s.slots[slot].objs + 2 + (k & 1); }
inline void* tsan_coll_obj(Sched& s, int linear, unsigned k) { return s.slots[s.slot].objs + 4 + 2 * (size_t)linear + (k & 1); }
// full-mask collectives of warp w: like a barrier of the warp, two objects used alternately
inline void* tsan_warp_obj(Sched& s, int w, unsigned k) { return s.slots[s.slot].objs + 4 + 2 * (size_t)s.nthreads + 2 * (size_t)w + (k & 1); }
LLMC_SIM_NOTSAN inline void tsan_prepare_slots(Sched& s) {
    // Two slots: every pair of blocks run one after the other is unordered (in each schedule order
    // a different set of pairs), and TSan's cost stays low: its vector clocks (and so every acquire
    // and release) grow with the number of TSan threads ever created, here 2 per CUDA thread.
    s.nslots = kMaxSlots;
    for (int k = 0; k < s.nslots; k++) {
        Slot& sl = s.slots[k];
        while ((int)sl.fibers.size() < s.nthreads) sl.fibers.push_back(__tsan_create_fiber(0));
        sl.launch_seen.resize(sl.fibers.size(), 0);
        sl.seen = sl.launch_seen.data();
        size_t need = 4 + 2 * (size_t)s.nthreads + 2 * (size_t)((s.nthreads + 31) / 32);
        if (sl.nobjs < need) {
            free(sl.objs);  // never accessed as memory: only addresses for acquire/release
            sl.objs = (char*)malloc(need);
            sl.nobjs = need;
        }
    }
}
#endif

// First code a fiber runs: the kernel body, with anything it throws kept for the scheduler (an
// exception cannot cross from the fiber's stack to the scheduler's).
LLMC_SIM_NOTSAN inline void fiber_main(Fiber* f) {
    Sched& s = sched();
    asan_finish_switch(nullptr, &s.host_stack_bottom, &s.host_stack_size);
#if LLMC_SIM_TSAN
    uint64_t& seen = s.slots[s.slot].seen[f->linear];
    if (seen != s.launch_serial) {  // the host's past before the grid, once per TSan fiber and launch
        __tsan_acquire(&s.launch_obj);  // (the fiber keeps it for its later blocks)
        seen = s.launch_serial;
    }
    __tsan_acquire(tsan_end_obj(s, s.slot, s.slots[s.slot].nblocks - 1));  // the slot's earlier blocks before this one
#endif
    try {
        s.body(s.args);
    } catch (...) {
#if LLMC_SIM_TSAN
        AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
        AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
#endif
        f->err = std::current_exception();
#if LLMC_SIM_TSAN
        AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
        AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
#endif
    }
    f->st = St::Exited;
    f->n_async = 0;  // copies never waited for are dropped
    asan_start_switch(nullptr, s.host_stack_bottom, s.host_stack_size);  // nullptr: this fiber ends
#if LLMC_SIM_TSAN
    __tsan_release(tsan_end_obj(s, s.slot, s.slots[s.slot].nblocks));  // this thread before the slot's next block and the host
    __tsan_switch_to_fiber(s.host_tsan, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef LLMC_SIM_UCONTEXT
    setcontext(&s.host_ctx);
#else
    llmc_sim_switch(&f->sp, s.host_sp);
#endif
    __builtin_trap();  // never resumed
}

#ifdef LLMC_SIM_UCONTEXT
inline void ucontext_entry() { fiber_main(sched().cur); }
#endif

// The stacks are page-aligned and equally spaced, so their tops would all fall in the same cache
// sets; starting each fiber a few cache lines lower spreads them (a 3x speedup of short kernels).
inline size_t stack_stagger(int linear) { return (size_t)(linear % 256) * 320; }

LLMC_SIM_NOTSAN inline void init_fiber(Fiber* f) {
#ifdef LLMC_SIM_UCONTEXT
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = f->stack;
    f->ctx.uc_stack.ss_size = f->stack_size - stack_stagger(f->linear);
    f->ctx.uc_link = nullptr;
    makecontext(&f->ctx, (void (*)())ucontext_entry, 0);
#else
    // the frame llmc_sim_switch pops: r15..r12, rbx, rbp, return address
    uintptr_t top = ((uintptr_t)(f->stack + f->stack_size - stack_stagger(f->linear))) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)(top - 72);  // llmc_sim_fiber_start then runs with rsp = top - 16
    sp[0] = 0;                                   // r15
    sp[1] = 0;                                   // r14
    sp[2] = 0;                                   // r13
    sp[3] = (uint64_t)(uintptr_t)&fiber_main;    // r12: function to call
    sp[4] = (uint64_t)(uintptr_t)f;              // rbx: its argument
    sp[5] = 0;                                   // rbp: end of the frame-pointer chain
    sp[6] = (uint64_t)(uintptr_t)&llmc_sim_fiber_start;
    sp[7] = 0;
    sp[8] = 0;
    f->sp = sp;
#endif
}

// scheduler -> fiber, until the fiber blocks or exits
LLMC_SIM_NOTSAN inline void run_fiber(Fiber* f) {
    Sched& s = sched();
    s.cur = f;
    threadIdx = f->tid;
    asan_start_switch(&s.host_fake_stack, f->stack, f->stack_size);
#if LLMC_SIM_TSAN
    __tsan_switch_to_fiber(f->tsan, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef LLMC_SIM_UCONTEXT
    swapcontext(&s.host_ctx, &f->ctx);
#else
    llmc_sim_switch(&s.host_sp, f->sp);
#endif
    asan_finish_switch(s.host_fake_stack, nullptr, nullptr);
    s.cur = nullptr;
}

// fiber -> scheduler; returns when the scheduler runs this fiber again
LLMC_SIM_NOTSAN inline void yield_to_scheduler(Fiber* f) {
    Sched& s = sched();
    asan_start_switch(&f->asan_fake_stack, s.host_stack_bottom, s.host_stack_size);
#if LLMC_SIM_TSAN
    __tsan_switch_to_fiber(s.host_tsan, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef LLMC_SIM_UCONTEXT
    swapcontext(&f->ctx, &s.host_ctx);
#else
    llmc_sim_switch(&f->sp, s.host_sp);
#endif
    asan_finish_switch(f->asan_fake_stack, &s.host_stack_bottom, &s.host_stack_size);
}

LLMC_SIM_NOTSAN inline Fiber* current_fiber(const char* what) {
    Fiber* f = sched().cur;
    if (!f) LLMC_FAIL("SIM: %s called outside a kernel launched with LAUNCH", what);
    return f;
}

inline std::string tid_str(const Fiber& f) { return ::llmc::strfmt("thread (%u,%u,%u)", f.tid.x, f.tid.y, f.tid.z); }
inline std::string where_str(const Fiber& f) { return ::llmc::strfmt("%s:%d", f.file, f.line); }

// ---- device-side entry points (called from kernel code through the macros below) ----

LLMC_SIM_NOTSAN inline int barrier(Bar kind, int pred, const char* file, int line) {
    Fiber* f = current_fiber("__syncthreads");
    f->bar = kind;
    f->pred = pred;
    f->file = file;
    f->line = line;
    f->st = St::AtBarrier;
#if LLMC_SIM_TSAN
    Sched& s = sched();
    unsigned k = f->barriers++;
    __tsan_release(tsan_barrier_obj(s, k));
    yield_to_scheduler(f);
    __tsan_acquire(tsan_barrier_obj(s, k));
#else
    yield_to_scheduler(f);
#endif
    return f->bar_result;
}

LLMC_SIM_NOTSAN inline void collective(Op op, unsigned mask, const void* val, int size, int arg, int width, const char* file, int line) {
    Fiber* f = current_fiber(op_name(op));
    int lane = f->linear & 31;
    if (!((mask >> lane) & 1u))
        LLMC_FAIL("%s at %s:%d: the calling lane %d is not in its mask 0x%08x", op_name(op), file, line, lane, mask);
    if (width < 1 || width > 32 || (width & (width - 1)))
        LLMC_FAIL("%s at %s:%d: width %d is not a power of two in [1, 32]", op_name(op), file, line, width);
    f->op = op;
    f->mask = mask;
    f->arg = arg;
    f->width = width;
    f->size = size;
    if (size && val) raw_copy(f->in, val, (size_t)size);
    f->file = file;
    f->line = line;
    f->st = St::AtWarp;
#if LLMC_SIM_TSAN
    Sched& s = sched();
    if (mask == 0xffffffffu) {
        // the whole warp meets: one object for all 32 lanes (as a barrier does for the block); a
        // lane can be at most one full-warp collective ahead of another, so two objects suffice
        unsigned k = f->full_warp++;
        __tsan_release(tsan_warp_obj(s, f->linear / 32, k));
        yield_to_scheduler(f);
        __tsan_acquire(tsan_warp_obj(s, f->linear / 32, k));
        return;
    }
    // a partial mask: each lane releases into its own object and acquires exactly those of the
    // lanes named in the mask
    __tsan_release(tsan_coll_obj(s, f->linear, f->arrivals++));
    yield_to_scheduler(f);
    int base = f->linear & ~31;
    for (int j = 0; j < 32; j++)
        if ((f->acq_mask >> j) & 1u) __tsan_acquire(tsan_coll_obj(s, base + j, f->acq_idx[j]));
#else
    yield_to_scheduler(f);
#endif
}

// Source lane of a shuffle, as the PTX shfl.sync instruction defines it: within segments of
// `width` lanes; a lane whose source falls outside its segment (past its end for idx/down/xor,
// before its start for up) reads its own value.
inline int shfl_source(Op op, int lane, int arg, int width) {
    int seg_start = lane & ~(width - 1), seg_end = seg_start + width - 1;
    int j = lane;
    switch (op) {
        case Op::ShflIdx: j = seg_start + (arg & (width - 1)); break;
        case Op::ShflUp: j = lane - (arg & 31); if (j < seg_start) j = lane; break;
        case Op::ShflDown: j = lane + (arg & 31); if (j > seg_end) j = lane; break;
        case Op::ShflXor: j = lane ^ (arg & 31); if (j > seg_end) j = lane; break;
        default: break;
    }
    return j;
}

// Complete every collective of warp w whose mask's lanes have all arrived with the same op, mask
// and size. Returns whether any completed. Warps resolve independently: a warp runs on past its
// collectives while the other warps of the block have not started (only __syncthreads() meets).
LLMC_SIM_NOTSAN inline bool resolve_warp(int w) {
    Sched& s = sched();
    bool progress = false;
    Fiber* warp = &s.fibers[(size_t)w * 32];
    int nlanes = std::min(32, s.nthreads - w * 32);
    for (int l = 0; l < nlanes; l++) {
        Fiber& a = warp[l];
        if (a.st != St::AtWarp) continue;
        unsigned m = a.mask;
        bool ready = true;
        for (int j = 0; j < 32 && ready; j++) {
            if (!((m >> j) & 1u)) continue;
            if (j >= nlanes) { ready = false; break; }
            Fiber& b = warp[j];
            ready = b.st == St::AtWarp && b.op == a.op && b.mask == m && b.size == a.size;
        }
        if (!ready) continue;
        // every lane of the group reads the inputs; results go to `out`, so order is irrelevant
        unsigned ballot = 0;
        unsigned long long uadd = 0;
        unsigned umin = 0xffffffffu, umax = 0;
        int imin = 0x7fffffff, imax = (int)0x80000000;
        for (int j = 0; j < 32; j++) {
            if (!((m >> j) & 1u)) continue;
            Fiber& b = warp[j];
            int v;
            raw_copy(&v, b.in, 4);
            if (a.op == Op::Ballot || a.op == Op::Any || a.op == Op::All) ballot |= (v != 0 ? 1u : 0u) << j;
            uadd += (unsigned)v;
            umin = std::min(umin, (unsigned)v);
            umax = std::max(umax, (unsigned)v);
            imin = std::min(imin, v);
            imax = std::max(imax, v);
        }
        for (int j = 0; j < 32; j++) {
            if (!((m >> j) & 1u)) continue;
            Fiber& b = warp[j];
            unsigned r = 0;
            switch (a.op) {
                case Op::SyncWarp: break;
                case Op::ShflIdx: case Op::ShflUp: case Op::ShflDown: case Op::ShflXor: {
                    int src = shfl_source(a.op, j, b.arg, b.width);
                    if ((m >> src) & 1u) raw_copy(b.out, warp[src].in, (size_t)b.size);
                    else raw_fill(b.out, kPoison, (size_t)b.size);  // undefined in CUDA
                    break;
                }
                case Op::Gather:
                    for (int k = 0; k < 32; k++) {
                        unsigned char* dst = (unsigned char*)b.gather_out + (size_t)k * (size_t)b.size;
                        if ((m >> k) & 1u) raw_copy(dst, warp[k].gather_in, (size_t)b.size);
                        else raw_fill(dst, kPoison, (size_t)b.size);
                    }
                    break;
                case Op::Ballot: r = ballot; break;
                case Op::Any: r = ballot != 0; break;
                case Op::All: r = ballot == m; break;
                case Op::RedAdd: r = (unsigned)uadd; break;
                case Op::RedMinU: r = umin; break;
                case Op::RedMaxU: r = umax; break;
                case Op::RedMinI: r = (unsigned)imin; break;
                case Op::RedMaxI: r = (unsigned)imax; break;
            }
            if (a.op >= Op::Ballot) raw_copy(b.out, &r, 4);
#if LLMC_SIM_TSAN
            b.acq_mask = m;
            for (int k = 0; k < 32; k++)
                if ((m >> k) & 1u) b.acq_idx[k] = (unsigned char)((warp[k].arrivals - 1) & 1u);
#endif
            b.st = St::Runnable;
        }
        progress = true;
    }
    return progress;
}

// Nothing can run and nothing completes: explain the first stuck thread.
LLMC_SIM_NOTSAN inline std::string diagnose_stuck() {
    Sched& s = sched();
    for (int i = 0; i < s.nthreads; i++) {
        Fiber& a = s.fibers[(size_t)i];
        if (a.st != St::AtWarp) continue;
        int w = i / 32, lane = i & 31;
        int nlanes = std::min(32, s.nthreads - w * 32);
        std::string head = ::llmc::strfmt("%s (warp %d, lane %d) in %s(mask 0x%08x) at %s cannot complete: ", tid_str(a).c_str(), w, lane,
                                  op_name(a.op), a.mask, where_str(a).c_str());
        for (int j = 0; j < 32; j++) {
            if (!((a.mask >> j) & 1u)) continue;
            if (j >= nlanes)
                return head + ::llmc::strfmt("the mask names lane %d, which does not exist (the block has %d threads, so warp %d has %d lanes)", j, s.nthreads, w, nlanes);
            Fiber& b = s.fibers[(size_t)(w * 32 + j)];
            if (b.st == St::Exited) return head + ::llmc::strfmt("the mask names lane %d, which has exited", j);
            if (b.st == St::AtBarrier) return head + ::llmc::strfmt("lane %d is waiting at __syncthreads() at %s instead", j, where_str(b).c_str());
            if (b.op != a.op || b.mask != a.mask)
                return head + ::llmc::strfmt("lane %d is in %s(mask 0x%08x) at %s instead", j, op_name(b.op), b.mask, where_str(b).c_str());
        }
        return head + "(no reason found)";
    }
    // all live threads are at a barrier: some thread exited, or they wait at different lines
    const Fiber* first = nullptr;
    int arrived = 0;
    for (int i = 0; i < s.nthreads; i++) {
        const Fiber& f = s.fibers[(size_t)i];
        if (f.st == St::AtBarrier) { arrived++; if (!first) first = &f; }
    }
    for (int i = 0; i < s.nthreads; i++) {
        const Fiber& f = s.fibers[(size_t)i];
        if (f.st == St::Exited)
            return ::llmc::strfmt("divergent __syncthreads(): %d of %d threads wait at %s, but %s has exited without reaching it "
                          "(every thread of the block must reach each barrier; do not return early before one)",
                          arrived, s.nthreads, where_str(*first).c_str(), tid_str(f).c_str());
    }
    return "(no reason found)";
}

// All live threads are at a barrier. Release them if they all are (no thread exited) at one line.
LLMC_SIM_NOTSAN inline std::string release_barrier() {
    Sched& s = sched();
    const Fiber* first = nullptr;
    int count = 0;
    for (int i = 0; i < s.nthreads; i++) {
        Fiber& f = s.fibers[(size_t)i];
        if (f.st == St::Exited) return diagnose_stuck();
        if (!first) first = &f;
        if (f.line != first->line || (f.file != first->file && strcmp(f.file, first->file) != 0) || f.bar != first->bar)
            return ::llmc::strfmt("divergent __syncthreads(): %s waits at %s while %s waits at %s (all threads must reach the same barrier)",
                          tid_str(*first).c_str(), where_str(*first).c_str(), tid_str(f).c_str(), where_str(f).c_str());
        count += f.pred != 0;
    }
    int result = 0;
    switch (first->bar) {
        case Bar::Plain: break;
        case Bar::Count: result = count; break;
        case Bar::And: result = count == s.nthreads; break;
        case Bar::Or: result = count != 0; break;
    }
    for (int i = 0; i < s.nthreads; i++) { s.fibers[(size_t)i].bar_result = result; s.fibers[(size_t)i].st = St::Runnable; }
    return "";
}


// ---- __launch_bounds__ at launch ----
// On the GPU a launch with more threads per block than the kernel's __launch_bounds__ fails
// (cudaErrorInvalidValue / too many resources requested). g++ has no attribute that would carry
// the number to where the launcher could see it, so SIM reads it from the source: at the first
// launch of each kernel it looks for `__launch_bounds__(N[, ...]) NAME` in the file whose LAUNCH
// started it and in the files that file includes with #include "..." (two levels, paths relative to
// the working directory or to the including file). N may be an integer, or a name defined in those
// files as `constexpr int NAME = integer` or `#define NAME integer`, or a product of such. A bound
// SIM cannot find or evaluate (a template parameter, a file not found) is not checked.
inline bool read_text(const std::string& path, std::string* out) {
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) return false;
    out->clear();
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out->append(buf, n);
    fclose(f);
    return true;
}
inline bool ident_char(char c) { return isalnum((unsigned char)c) || c == '_'; }
inline void collect_sources(const std::string& path, int depth, std::vector<std::string>& texts, std::vector<std::string>& seen) {
    if (std::find(seen.begin(), seen.end(), path) != seen.end()) return;
    seen.push_back(path);
    std::string t;
    if (!read_text(path, &t)) return;
    texts.push_back(t);
    if (depth == 0) return;
    std::string dir = path.rfind('/') == std::string::npos ? "" : path.substr(0, path.rfind('/') + 1);
    for (size_t p = t.find("#include \""); p != std::string::npos; p = t.find("#include \"", p + 1)) {
        size_t a = p + 10, b = t.find('"', a);
        if (b == std::string::npos) break;
        std::string inc = t.substr(a, b - a);
        std::string dummy;
        if (read_text(inc, &dummy)) collect_sources(inc, depth - 1, texts, seen);
        else if (!dir.empty() && read_text(dir + inc, &dummy)) collect_sources(dir + inc, depth - 1, texts, seen);
    }
}
// value of an integer literal or of a constant defined in the texts; -1 if unknown
inline long long eval_bound(std::string e, const std::vector<std::string>& texts, int depth = 0) {
    while (!e.empty() && isspace((unsigned char)e.front())) e.erase(e.begin());
    while (!e.empty() && isspace((unsigned char)e.back())) e.pop_back();
    while (e.size() > 1 && e.front() == '(' && e.back() == ')') e = e.substr(1, e.size() - 2);
    if (e.empty() || depth > 4) return -1;
    size_t star = e.find('*');
    if (star != std::string::npos) {
        long long a = eval_bound(e.substr(0, star), texts, depth + 1), b = eval_bound(e.substr(star + 1), texts, depth + 1);
        return a < 0 || b < 0 ? -1 : a * b;
    }
    if (isdigit((unsigned char)e[0])) {
        char* end = nullptr;
        long long v = strtoll(e.c_str(), &end, 0);
        while (end && (*end == 'u' || *end == 'U' || *end == 'l' || *end == 'L')) end++;
        return end && !*end ? v : -1;
    }
    for (char c : e) if (!ident_char(c)) return -1;
    for (const std::string& t : texts) {
        for (size_t p = t.find(e); p != std::string::npos; p = t.find(e, p + 1)) {
            if ((p > 0 && ident_char(t[p - 1])) || (p + e.size() < t.size() && ident_char(t[p + e.size()]))) continue;
            size_t line = t.rfind('\n', p);
            line = line == std::string::npos ? 0 : line + 1;
            std::string before = t.substr(line, p - line);
            size_t q = p + e.size();
            if (before.find("#define") != std::string::npos) {
                size_t eol = t.find('\n', q);
                return eval_bound(t.substr(q, eol == std::string::npos ? std::string::npos : eol - q), texts, depth + 1);
            }
            if (before.find("constexpr") != std::string::npos) {
                size_t eq = t.find('=', q), semi = t.find(';', q);
                if (eq != std::string::npos && semi != std::string::npos && eq < semi) return eval_bound(t.substr(eq + 1, semi - eq - 1), texts, depth + 1);
            }
        }
    }
    return -1;
}
inline void check_launch_bounds(const char* name, const char* launch_file, const void* kfunc, int nthreads) {
    static std::map<const void*, std::pair<long long, std::string>> cache;  // kernel -> (bound or -1, where)
    auto it = cache.find(kfunc);
    if (it == cache.end()) {
        std::string kn = name;
        kn.erase(std::remove(kn.begin(), kn.end(), '('), kn.end());
        kn.erase(std::remove(kn.begin(), kn.end(), ')'), kn.end());
        kn = kn.substr(0, kn.find('<'));
        if (kn.rfind("::") != std::string::npos) kn = kn.substr(kn.rfind("::") + 2);
        while (!kn.empty() && isspace((unsigned char)kn.back())) kn.pop_back();
        std::vector<std::string> texts, seen;
        if (launch_file) collect_sources(launch_file, 2, texts, seen);
        long long bound = -1;
        std::string where;
        for (size_t ti = 0; ti < texts.size() && bound < 0; ti++) {
            const std::string& t = texts[ti];
            for (size_t p = t.find("__launch_bounds__"); p != std::string::npos && bound < 0; p = t.find("__launch_bounds__", p + 1)) {
                size_t a = t.find('(', p);
                if (a == std::string::npos) break;
                int d = 0;
                size_t b = a;
                for (; b < t.size(); b++) {
                    if (t[b] == '(') d++;
                    else if (t[b] == ')' && --d == 0) break;
                }
                if (b >= t.size()) break;
                size_t q = b + 1;
                while (q < t.size() && isspace((unsigned char)t[q])) q++;
                size_t r = q;
                while (r < t.size() && ident_char(t[r])) r++;
                if (t.compare(q, r - q, kn) != 0 || r - q != kn.size()) continue;
                std::string args = t.substr(a + 1, b - a - 1);
                int depth = 0;
                size_t comma = std::string::npos;
                for (size_t k = 0; k < args.size(); k++) {
                    if (args[k] == '(') depth++;
                    else if (args[k] == ')') depth--;
                    else if (args[k] == ',' && depth == 0) { comma = k; break; }
                }
                bound = eval_bound(args.substr(0, comma), texts);
                where = ::llmc::strfmt("__launch_bounds__(%s) in %s", args.c_str(), seen[ti].c_str());
            }
        }
        it = cache.emplace(kfunc, std::make_pair(bound, where)).first;
    }
    if (it->second.first > 0 && nthreads > it->second.first)
        LLMC_FAIL("SIM: kernel '%s' is launched with %d threads per block, above its %s (on a GPU the launch fails: too many "
                  "resources requested for launch)", name, nthreads, it->second.second.c_str());
}

// Run one block to completion; returns an error message (empty if fine). Warps run in the
// configured order, each as far as it can go (through its own collectives) before the next starts;
// the lanes of a warp run in the configured order up to their next collective; only a
// __syncthreads() that every thread has reached sends the scheduler back to the first warp.
LLMC_SIM_NOTSAN inline std::string run_block(uint3 bidx, uint64_t blin) {
    Sched& s = sched();
    blockIdx = bidx;
    s.block_serial++;
    s.static_bytes = 0;
    s.slot = (int)(blin % (uint64_t)s.nslots);
    Slot& sl = s.slots[s.slot];
    if (s.dyn_bytes) poison(sl.dyn, s.dyn_bytes);
    int nwarps = (s.nthreads + 31) / 32;
    make_order(s.warp_order, nwarps, s.order, s.seed, blin * 2 + 0x5eed);
    make_order(s.lane_order, 32, s.order, s.seed, blin * 2 + 1);
    for (int i = 0; i < s.nthreads; i++) {
        Fiber& f = s.fibers[(size_t)i];
        f.st = St::Runnable;
        f.err = nullptr;
        f.asan_fake_stack = nullptr;
        f.n_async = 0;
        f.async_groups = 0;
        f.stack = s.stacks[(size_t)s.slot * (size_t)s.nthreads + (size_t)i];
#if LLMC_SIM_TSAN
        f.tsan = sl.fibers[(size_t)i];
        f.arrivals = f.barriers = f.full_warp = 0;
        f.acq_mask = 0;
        // a race report names both threads by these names (the kernel: tsan_report_note)
        char nm[64];
        snprintf(nm, sizeof nm, "block (%u,%u,%u) thread (%u,%u,%u)", bidx.x, bidx.y, bidx.z, f.tid.x, f.tid.y, f.tid.z);
        __tsan_set_fiber_name(f.tsan, nm);
#endif
        init_fiber(&f);
    }
    std::string err;
    for (;;) {
        for (int w : s.warp_order) {
            for (;;) {
                for (int l : s.lane_order) {
                    int i = w * 32 + l;
                    if (i >= s.nthreads) continue;
                    Fiber& f = s.fibers[(size_t)i];
                    if (f.st == St::Runnable) run_fiber(&f);
                    if (f.err) {
                        s.dirty_stacks = true;
                        try {
                            std::rethrow_exception(f.err);
                        } catch (const std::exception& e) {
                            err = tid_str(f) + ": " + e.what();
                        } catch (...) {
                            err = tid_str(f) + ": unknown exception";
                        }
                        break;
                    }
                }
                if (!err.empty() || !resolve_warp(w)) break;
            }
            if (!err.empty()) break;
        }
        if (!err.empty()) break;
        bool any_live = false, all_at_barrier = true;
        for (int i = 0; i < s.nthreads; i++) {
            St st = s.fibers[(size_t)i].st;
            any_live |= st != St::Exited;
            all_at_barrier &= st == St::AtBarrier || st == St::Exited;
        }
        if (!any_live) break;
        err = all_at_barrier ? release_barrier() : diagnose_stuck();
        if (!err.empty()) { s.dirty_stacks = true; break; }
    }
#if LLMC_SIM_TSAN
    sl.nblocks++;
    // an aborted block: its unfinished threads never released; order them before the host by a
    // sync switch there and back (the launch fails anyway)
    if (!err.empty())
        for (int i = 0; i < s.nthreads; i++)
            if (s.fibers[(size_t)i].st != St::Exited) {
                __tsan_switch_to_fiber(s.fibers[(size_t)i].tsan, 0);
                __tsan_switch_to_fiber(s.host_tsan, 0);
            }
#endif
    return err;
}

#if LLMC_SIM_ASAN
// AddressSanitizer's report names the kernel's source line; this adds which block and thread.
inline void asan_death_note() {
    Sched& s = sched();
    if (s.cur)
        fprintf(stderr, "SIM: the bad access was made in kernel '%s', block (%u,%u,%u), thread (%u,%u,%u)\n", s.kernel, blockIdx.x, blockIdx.y,
                blockIdx.z, s.cur->tid.x, s.cur->tid.y, s.cur->tid.z);
}
#endif

// The whole grid once, blocks in the configured order. Returns an error message (empty if fine).
LLMC_SIM_NOTSAN inline std::string run_blocks(dim3 grid, uint3* bad) {
    Sched& s = sched();
    uint64_t nb = (uint64_t)grid.x * grid.y * grid.z;
    if (s.order == Order::Forward || nb > (1u << 26)) {
        s.block_order.clear();  // forward (and huge grids): no table
    } else {
        make_order(s.block_order, (int)nb, s.order, s.seed, s.launch_serial);
    }
#if LLMC_SIM_TSAN
    __tsan_release(&s.launch_obj);  // the host's past before every thread of the grid
    // the scheduler's own accesses (host side) are not the kernel's: TSan ignores them
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
#endif
    std::string err;
    for (uint64_t n = 0; n < nb && err.empty(); n++) {
        uint64_t b = s.block_order.empty() ? n : (uint64_t)s.block_order[(size_t)n];
        uint3 bidx{(unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y), (unsigned)(b / ((uint64_t)grid.x * grid.y))};
        err = run_block(bidx, n);
        if (!err.empty()) *bad = bidx;
    }
#if LLMC_SIM_TSAN
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
    for (int k = 0; k < s.nslots; k++) {  // the grid before the host's future
        __tsan_acquire(tsan_end_obj(s, k, 0));
        __tsan_acquire(tsan_end_obj(s, k, 1));
    }
#endif
    return err;
}

// Every live cudaMalloc'ed block's bytes (the determinism check's snapshot)
inline std::vector<std::string> snapshot_device() {
    std::vector<std::string> v;
    for (auto& kv : rt().allocs) v.emplace_back(kv.first, kv.second.bytes);
    return v;
}
inline void restore_device(const std::vector<std::string>& v) {
    size_t i = 0;
    for (auto& kv : rt().allocs) { memcpy((void*)kv.first, v[i].data(), kv.second.bytes); i++; }
}

LLMC_SIM_NOTSAN inline void run_grid(const char* name, const char* launch_file, const void* kfunc, dim3 grid, dim3 block, size_t smem, void (*body)(void*), void* args) {
    Sched& s = sched();
    if (s.in_launch && s.cur) LLMC_FAIL("SIM: kernel '%s' launched from inside kernel '%s' (dynamic parallelism is not simulated)", name, s.kernel);
    static std::atomic<bool> busy{false};
    if (busy.exchange(true)) LLMC_FAIL("SIM: kernel '%s' launched while another launch is running on another host thread (SIM runs one launch at a time)", name);
    struct Release { ~Release() { busy = false; } } release;
    unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64)
        LLMC_FAIL("SIM: kernel '%s': invalid block (%u,%u,%u): 1..1024 threads, z <= 64", name, block.x, block.y, block.z);
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
        LLMC_FAIL("SIM: kernel '%s': invalid grid (%u,%u,%u)", name, grid.x, grid.y, grid.z);
    size_t allowed = kSmemDefault;
    auto it = rt().smem_optin.find(kfunc);
    if (it != rt().smem_optin.end()) allowed = std::max(allowed, it->second);
    if (smem > allowed)
        LLMC_FAIL("SIM: kernel '%s': %zu bytes of dynamic shared memory, above the %zu allowed (over 48 KiB needs "
                  "cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), up to %zu)",
                  name, smem, allowed, kSmemOptin);
    check_launch_bounds(name, launch_file, kfunc, (int)nthreads);

#if LLMC_SIM_ASAN
    static bool death_note = (__sanitizer_set_death_callback(asan_death_note), true);
    (void)death_note;
#endif
    s.kernel = name;
    s.body = body;
    s.args = args;
    s.nthreads = (int)nthreads;
    s.dyn_bytes = smem;
    s.launch_serial++;
#if LLMC_SIM_TSAN
    s.host_tsan = __tsan_get_current_fiber();
    tsan_prepare_slots(s);
#else
    s.nslots = 1;
#endif
    ensure_stacks((int)nthreads * s.nslots);  // each slot its own stacks (under TSan a stack is memory too)
    for (int k = 0; k < s.nslots; k++) s.slots[k].dyn = (unsigned char*)malloc(smem ? smem : 1);  // exactly the launched size: ASan sees the end
    if (s.fibers.size() < nthreads) s.fibers.resize(nthreads);
    if (s.dirty_stacks) {
        // a previous launch was aborted mid-block: the frames of its unfinished threads were never
        // unwound, so ASan's shadow for those stacks may still mark redzones; clear it before reuse
#if LLMC_SIM_ASAN
        for (auto& f : s.fibers)
            if (f.st != St::Exited && f.stack) __asan_unpoison_memory_region(f.stack, f.stack_size);
#endif
        for (auto& f : s.fibers) f.st = St::Exited;
        s.dirty_stacks = false;
    }
    for (int i = 0; i < (int)nthreads; i++) {
        Fiber& f = s.fibers[(size_t)i];
        f.stack = s.stacks[(size_t)i];  // slot 0's; run_block picks the block's slot's
        f.stack_size = s.stack_size;
        f.linear = i;
        f.tid = {(unsigned)(i % block.x), (unsigned)((i / block.x) % block.y), (unsigned)(i / (block.x * block.y))};
    }
    s.in_launch = true;
    dim3 saved_grid = gridDim, saved_block = blockDim;
    gridDim = grid;
    blockDim = block;
    const Config& cfg = config();
    s.order = cfg.order;
    s.seed = cfg.seed;
    std::string err, det, g;
    uint3 bad{0, 0, 0};
    if (!cfg.determinism) {
        err = run_blocks(grid, &bad);
    } else {
        // the same launch twice from the same device memory, in two opposite orders
        std::vector<std::string> before = snapshot_device();
        err = run_blocks(grid, &bad);
        g = check_guards();  // an out-of-bounds write is named as such, not as a difference
        if (err.empty() && g.empty()) {
            std::vector<std::string> first = snapshot_device();
            restore_device(before);
            Order o1 = s.order;
            s.order = o1 == Order::Forward ? Order::Reverse : o1 == Order::Reverse ? Order::Forward : Order::Shuffle;
            s.seed = cfg.seed + 1;
            err = run_blocks(grid, &bad);
            if (err.empty()) {
                size_t i = 0;
                for (auto& kv : rt().allocs) {
                    const std::string& a = first[i++];
                    const unsigned char* b = (const unsigned char*)kv.first;
                    for (size_t k = 0; k < kv.second.bytes; k++)
                        if ((unsigned char)a[k] != b[k]) {
                            det = ::llmc::strfmt("the result depends on the order the threads ran in: byte %zu of the cudaMalloc'ed block at %p "
                                                 "(%zu bytes) is 0x%02x after a %s run and 0x%02x after a %s run (a missing barrier, a race, an "
                                                 "order-dependent atomic, or a read of shared memory no thread wrote)",
                                                 k, (const void*)kv.first, kv.second.bytes, (unsigned char)a[k], order_name(o1), b[k], order_name(s.order));
                            break;
                        }
                    if (!det.empty()) break;
                }
            }
        }
    }
    s.in_launch = false;
    s.cur = nullptr;
    gridDim = saved_grid;
    blockDim = saved_block;
    threadIdx = {0, 0, 0};
    blockIdx = {0, 0, 0};
    for (int k = 0; k < s.nslots; k++) { free(s.slots[k].dyn); s.slots[k].dyn = nullptr; }
    s.dyn_bytes = 0;
    if (!err.empty())
        LLMC_FAIL("SIM: kernel '%s' (grid (%u,%u,%u), block (%u,%u,%u)), block (%u,%u,%u): %s", name, grid.x, grid.y, grid.z, block.x,
                  block.y, block.z, bad.x, bad.y, bad.z, err.c_str());
    if (g.empty()) g = check_guards();
    if (!g.empty()) LLMC_FAIL("SIM: kernel '%s' (grid (%u,%u,%u), block (%u,%u,%u)): %s", name, grid.x, grid.y, grid.z, block.x, block.y, block.z, g.c_str());
    if (!det.empty()) LLMC_FAIL("SIM: kernel '%s' (grid (%u,%u,%u), block (%u,%u,%u)): %s", name, grid.x, grid.y, grid.z, block.x, block.y, block.z, det.c_str());
}

template <class Call> inline void call_kernel(void* p) {
    Call* c = (Call*)p;
    std::apply(c->kernel, c->args);
}

// LAUNCH under SIM. Arguments are converted to the kernel's parameter types once, as a real launch
// copies them into parameter space; every thread then gets its own by-value copies.
template <class... KArgs, class... Args>
inline void launch(const char* name, const char* launch_file, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
    static_assert(sizeof...(KArgs) == sizeof...(Args), "LAUNCH: the number of arguments does not match the kernel's parameters");
    struct Call {
        void (*kernel)(KArgs...);
        std::tuple<std::decay_t<KArgs>...> args;
    };
    if (deferred(stream)) {  // LLMC_SIM_STREAMS=async: runs when the stream is synchronized
        auto c = std::make_shared<Call>(Call{kernel, std::tuple<std::decay_t<KArgs>...>(std::forward<Args>(args)...)});
        enqueue(stream, [=] { run_grid(name, launch_file, reinterpret_cast<const void*>(kernel), grid, block, smem, &call_kernel<Call>, c.get()); });
        return;
    }
    drain_blocking();  // default-stream work waits for the blocking streams' queued work
    Call c{kernel, std::tuple<std::decay_t<KArgs>...>(std::forward<Args>(args)...)};
    run_grid(name, launch_file, reinterpret_cast<const void*>(kernel), grid, block, smem, &call_kernel<Call>, &c);
}

LLMC_SIM_NOTSAN inline void* dynamic_smem() {
    Sched& s = sched();
    current_fiber("DYNAMIC_SMEM");
    return s.slots[s.slot].dyn;
}

// One per STATIC_SMEM declaration (a function-local static of the kernel); the buffer is allocated
// on first use and poisoned the first time any thread of a block reaches the declaration, which
// comes before any use in that block.
struct SmemSite {
    void* buf[kMaxSlots] = {};  // one instance per slot (under TSan blocks of different slots overlap)
    uint64_t block_serial[kMaxSlots] = {};
};
template <class T> LLMC_SIM_NOTSAN inline T& static_smem(SmemSite& site, const char* name) {
    Sched& s = sched();
    current_fiber("STATIC_SMEM");
    void*& buf = site.buf[s.slot];
    if (!buf) {
#if LLMC_SIM_TSAN
        // TSan counts a new allocation as written by the allocating thread: hide that write, the
        // memory belongs to the block, not to whichever thread reached the declaration first
        AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
#endif
        int rc = posix_memalign(&buf, 16 > alignof(T) ? 16 : alignof(T), sizeof(T));
#if LLMC_SIM_TSAN
        AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
#endif
        if (rc != 0) LLMC_FAIL("SIM: cannot allocate shared memory '%s'", name);
    }
    if (site.block_serial[s.slot] != s.block_serial) {
        site.block_serial[s.slot] = s.block_serial;
        poison(buf, sizeof(T));
        s.static_bytes += sizeof(T);
        if (s.static_bytes > kSmemDefault)
            LLMC_FAIL("static shared memory of the block reaches %zu bytes with '%s', above the 48 KiB limit", s.static_bytes, name);
        if (s.static_bytes + s.dyn_bytes > kSmemOptin)
            LLMC_FAIL("static (%zu) + dynamic (%zu) shared memory is above the %zu bytes a block can have", s.static_bytes, s.dyn_bytes, kSmemOptin);
    }
    return *reinterpret_cast<T*>(buf);
}

template <class T> struct is_shfl_type : std::false_type {};
template <> struct is_shfl_type<int> : std::true_type {};
template <> struct is_shfl_type<unsigned int> : std::true_type {};
template <> struct is_shfl_type<long> : std::true_type {};
template <> struct is_shfl_type<unsigned long> : std::true_type {};
template <> struct is_shfl_type<long long> : std::true_type {};
template <> struct is_shfl_type<unsigned long long> : std::true_type {};
template <> struct is_shfl_type<float> : std::true_type {};
template <> struct is_shfl_type<double> : std::true_type {};
template <> struct is_shfl_type<__nv_bfloat16> : std::true_type {};
template <> struct is_shfl_type<__nv_bfloat162> : std::true_type {};
template <> struct is_shfl_type<__half> : std::true_type {};
template <> struct is_shfl_type<__half2> : std::true_type {};

template <class T>
LLMC_SIM_NOTSAN inline auto shfl(Op op, const char* file, int line, unsigned mask, T var_in, int arg, int width = 32) {
    // small integer types promote to int / unsigned, as they would pick those CUDA overloads
    typedef std::conditional_t<is_shfl_type<T>::value, T,
                               std::conditional_t<std::is_integral<T>::value && sizeof(T) < 4,
                                                  std::conditional_t<std::is_signed<T>::value, int, unsigned>, void>>
        U;
    static_assert(!std::is_void<U>::value, "SIM: __shfl*_sync takes the types CUDA overloads it for (int, unsigned, long long, float, double, bf16, half and their pairs)");
    U var = (U)var_in;
    Fiber* f = current_fiber(op_name(op));
    collective(op, mask, &var, (int)sizeof(U), arg, width, file, line);
    U r;
    raw_copy(&r, f->out, sizeof(U));
    return r;
}
LLMC_SIM_NOTSAN inline unsigned vote(Op op, const char* file, int line, unsigned mask, int v) {
    Fiber* f = current_fiber(op_name(op));
    collective(op, mask, &v, 4, 0, 32, file, line);
    unsigned r;
    raw_copy(&r, f->out, 4);
    return r;
}
inline void syncwarp(const char* file, int line, unsigned mask = 0xffffffffu) { collective(Op::SyncWarp, mask, nullptr, 0, 0, 32, file, line); }
inline unsigned reduce_add(const char* file, int line, unsigned mask, unsigned v) { return vote(Op::RedAdd, file, line, mask, (int)v); }
inline int reduce_add(const char* file, int line, unsigned mask, int v) { return (int)vote(Op::RedAdd, file, line, mask, v); }
inline unsigned reduce_min(const char* file, int line, unsigned mask, unsigned v) { return vote(Op::RedMinU, file, line, mask, (int)v); }
inline int reduce_min(const char* file, int line, unsigned mask, int v) { return (int)vote(Op::RedMinI, file, line, mask, v); }
inline unsigned reduce_max(const char* file, int line, unsigned mask, unsigned v) { return vote(Op::RedMaxU, file, line, mask, (int)v); }
inline int reduce_max(const char* file, int line, unsigned mask, int v) { return (int)vote(Op::RedMaxI, file, line, mask, v); }

// warp_gather: the building block of SIM's warp-wide matrix instructions (llmc/cuda/mma.cuh). Every
// lane named in `mask` calls it with the same mask and size; each receives all 32 lanes' `bytes`
// bytes in `all` (lane k's at all + k*bytes; lanes outside the mask read as poison). A collective
// like a shuffle: the lanes meet, so the result never depends on the order the lanes ran in.
LLMC_SIM_NOTSAN inline void warp_gather(const char* file, int line, unsigned mask, const void* mine, int bytes, void* all) {
    Fiber* f = current_fiber("warp_gather");
    if (bytes <= 0) LLMC_FAIL("warp_gather at %s:%d: %d bytes", file, line, bytes);
    f->gather_in = mine;
    f->gather_out = all;
    collective(Op::Gather, mask, nullptr, bytes, 0, 32, file, line);
}

// cp.async (sm_80+): an asynchronous global -> shared copy of 4, 8 or 16 bytes by one thread. The
// GPU may complete it at any time up to the cp.async.wait_group that covers it; SIM completes it
// as late as allowed: the destination is poisoned at issue and written at the wait, so a read of
// the destination before its wait sees poison (NaN for float and bf16). Groups, as in PTX: the
// copies issued since the last commit form the next group; wait_group(n) waits until at most the n
// most recent groups are pending. Copies still pending when the thread exits are dropped (the
// kernel never waited for them; on the GPU their data would arrive at an unknown time).
LLMC_SIM_NOTSAN inline void cp_async(void* smem_dst, const void* gmem_src, int bytes) {
    Fiber* f = current_fiber("cp.async");
    if (bytes != 4 && bytes != 8 && bytes != 16) LLMC_FAIL("cp.async of %d bytes (4, 8 or 16)", bytes);
    if (((uintptr_t)smem_dst | (uintptr_t)gmem_src) % (uintptr_t)bytes)
        LLMC_FAIL("cp.async of %d bytes from %p to %p: both addresses must be %d-byte aligned", bytes, gmem_src, smem_dst, bytes);
    if (f->n_async == Fiber::kMaxAsync) LLMC_FAIL("cp.async: more than %d copies of one thread pending (wait_group missing?)", Fiber::kMaxAsync);
    Fiber::AsyncCopy& c = f->async_copies[f->n_async++];
    c.dst = smem_dst;
    unsigned char tmp[16];
    memcpy(tmp, gmem_src, (size_t)bytes);  // the kernel's read of the source (TSan sees it) ...
    raw_copy(c.src, tmp, (size_t)bytes);   // ... kept in the runtime's record, which TSan must not see
    c.bytes = bytes;
    c.group = -1;
    raw_fill(smem_dst, poison_byte(), (size_t)bytes);
}
LLMC_SIM_NOTSAN inline void cp_async_commit() {
    Fiber* f = current_fiber("cp.async.commit_group");
    for (int i = 0; i < f->n_async; i++)
        if (f->async_copies[i].group < 0) f->async_copies[i].group = f->async_groups;
    f->async_groups++;
}
// n < 0: wait for all (cp.async.wait_all, which also covers uncommitted copies)
LLMC_SIM_NOTSAN inline void cp_async_wait(int n) {
    Fiber* f = current_fiber("cp.async.wait_group");
    int keep = 0;
    for (int i = 0; i < f->n_async; i++) {
        Fiber::AsyncCopy c;
        raw_copy(&c, &f->async_copies[i], sizeof c);  // the runtime's record: out of TSan's sight
        bool done = n < 0 || (c.group >= 0 && c.group < f->async_groups - n);
        if (done) memcpy(c.dst, c.src, (size_t)c.bytes);  // the thread's write of the destination
        else raw_copy(&f->async_copies[keep++], &c, sizeof c);
    }
    f->n_async = keep;
}

// The lanes of the warp that have not exited (SIM cannot see branch divergence, so this is an
// upper bound of the hardware's answer).
LLMC_SIM_NOTSAN inline unsigned activemask() {
    Sched& s = sched();
    Fiber* f = current_fiber("__activemask");
    int w = f->linear / 32;
    unsigned m = 0;
    for (int j = 0; j < 32 && w * 32 + j < s.nthreads; j++)
        if (s.fibers[(size_t)(w * 32 + j)].st != St::Exited) m |= 1u << j;
    return m;
}

// Source position of a barrier-free collective call, so that the width / mask default arguments
// of the CUDA signatures keep working behind a macro.
struct At {
    const char* file;
    int line;
    void syncwarp(unsigned mask = 0xffffffffu) const { ::llmc::sim::syncwarp(file, line, mask); }
    template <class T> auto shfl_idx(unsigned mask, T var, int lane, int width = 32) const { return shfl(Op::ShflIdx, file, line, mask, var, lane, width); }
    template <class T> auto shfl_up(unsigned mask, T var, unsigned delta, int width = 32) const { return shfl(Op::ShflUp, file, line, mask, var, (int)delta, width); }
    template <class T> auto shfl_down(unsigned mask, T var, unsigned delta, int width = 32) const { return shfl(Op::ShflDown, file, line, mask, var, (int)delta, width); }
    template <class T> auto shfl_xor(unsigned mask, T var, int lane_mask, int width = 32) const { return shfl(Op::ShflXor, file, line, mask, var, lane_mask, width); }
};

LLMC_SIM_NOTSAN inline int laneid() { return current_fiber("lane id")->linear & 31; }

}  // namespace sim
}  // namespace llmc

// The device API as macros, so that every barrier and collective knows its source line (for the
// misuse messages and for the "same barrier" check).
#define __syncthreads() ::llmc::sim::barrier(::llmc::sim::Bar::Plain, 0, __FILE__, __LINE__)
#define __syncthreads_count(p) ::llmc::sim::barrier(::llmc::sim::Bar::Count, (p), __FILE__, __LINE__)
#define __syncthreads_and(p) ::llmc::sim::barrier(::llmc::sim::Bar::And, (p), __FILE__, __LINE__)
#define __syncthreads_or(p) ::llmc::sim::barrier(::llmc::sim::Bar::Or, (p), __FILE__, __LINE__)
#define __syncwarp(...) ::llmc::sim::At{__FILE__, __LINE__}.syncwarp(__VA_ARGS__)
#define __shfl_sync(...) ::llmc::sim::At{__FILE__, __LINE__}.shfl_idx(__VA_ARGS__)
#define __shfl_up_sync(...) ::llmc::sim::At{__FILE__, __LINE__}.shfl_up(__VA_ARGS__)
#define __shfl_down_sync(...) ::llmc::sim::At{__FILE__, __LINE__}.shfl_down(__VA_ARGS__)
#define __shfl_xor_sync(...) ::llmc::sim::At{__FILE__, __LINE__}.shfl_xor(__VA_ARGS__)
#define __ballot_sync(mask, pred) ::llmc::sim::vote(::llmc::sim::Op::Ballot, __FILE__, __LINE__, (mask), (pred) ? 1 : 0)
#define __any_sync(mask, pred) ((int)::llmc::sim::vote(::llmc::sim::Op::Any, __FILE__, __LINE__, (mask), (pred) ? 1 : 0))
#define __all_sync(mask, pred) ((int)::llmc::sim::vote(::llmc::sim::Op::All, __FILE__, __LINE__, (mask), (pred) ? 1 : 0))
#define __reduce_add_sync(mask, v) ::llmc::sim::reduce_add(__FILE__, __LINE__, (mask), (v))
#define __reduce_min_sync(mask, v) ::llmc::sim::reduce_min(__FILE__, __LINE__, (mask), (v))
#define __reduce_max_sync(mask, v) ::llmc::sim::reduce_max(__FILE__, __LINE__, (mask), (v))
#define __activemask() ::llmc::sim::activemask()
#define __trap() LLMC_FAIL("__trap() in a kernel")
