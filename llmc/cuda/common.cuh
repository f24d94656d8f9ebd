// common.cuh: the one header every kernel file includes first. It picks the toolchain so that a
// kernel file is plain CUDA that compiles unchanged two ways:
//   - nvcc (__CUDACC__): the real CUDA headers; LAUNCH is a real <<<...>>> launch.
//   - g++ with -DLLMC_SIM: llmc/sim/sim.h, the CUDA-on-CPU runtime (README.md#sim); LAUNCH
//     runs the grid on the CPU, block after block, the threads of a block as cooperative fibers.
//
// What a kernel file may rely on (both builds):
//   cudaCheck(expr)          check a cudaError_t; on error throw llmc::Error naming file:line and
//                            cudaGetErrorString
//   LAUNCH(kernel, grid, block, smem_bytes, stream, args...)
//                            launch and check. A template kernel whose name has a comma must be
//                            parenthesized: LAUNCH((k<float, 4>), ...), or use an alias.
//   DYNAMIC_SMEM(type, name) inside a kernel: `type* name` = this block's dynamic shared memory
//                            (as many bytes as the launch asked for; 16-byte aligned)
//   STATIC_SMEM(type, name)  static shared memory, e.g. STATIC_SMEM(float[32][33], tile); gives
//                            `tile` of that array type. Prefer it to a plain `__shared__` array: under
//                            SIM it is one exact-size allocation per kernel site, filled with a poison
//                            pattern (0xFF bytes: NaN for float/bf16) at every block start, so a read
//                            before any thread wrote shows up, and AddressSanitizer sees its bounds.
//   __shared__ T buf[N];     also works unchanged (SIM: a function-local static, one instance for the
//                            block), but is NOT poisoned and has no ASan bounds (g++ cannot place
//                            template-instantiated statics where the runtime could find them).
//   floatX                   the activation / GEMM-operand type: __nv_bfloat16, or float when built
//                            with -DLLMC_FP32 (llm.c's PRECISION=FP32: every kernel then computes in
//                            fp32 and rounds nothing to bf16; LLMC_FLOATX_FP32 / LLMC_PRECISION_NAME
//                            tell which); llmc::to_float / llmc::to_floatX convert (host, device, SIM)
//   XPACK                    floatX elements in one 16-byte pack (8 bf16 or 4 fp32)
//   CEIL_DIV(a, b), WARP_SIZE
// Rules SIM enforces (each is undefined behaviour in CUDA; SIM throws llmc::Error naming the kernel
// and block instead of hanging or silently working):
//   - every thread of the block reaches each __syncthreads(), at the same source line: a thread must
//     not `return` early past a barrier the others reach (guard the work with `if` instead);
//   - every lane named in a warp collective's mask calls the same collective with the same mask
//     (a lane that has exited, or is beyond blockDim, must not be named).
// plus the CUDA device API (threadIdx..., __syncthreads, warp collectives, atomics, bf16/half,
// vector types, math intrinsics) and the runtime API subset listed in llmc/sim/sim.h.
#pragma once

#include "llmc/utils.h"

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#elif defined(LLMC_SIM)
#include "llmc/sim/sim.h"
#else
#error "llmc/cuda/*.cuh needs nvcc, or g++ with -DLLMC_SIM (the CUDA-on-CPU runtime, llmc/sim/sim.h)"
#endif

#ifndef WARP_SIZE
#define WARP_SIZE 32
#endif
#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

namespace llmc {
template <class T> using smem_t = T;  // lets STATIC_SMEM take an array type like float[32][33]
}

// The activation type. Kernels never convert floatX with the bf16 intrinsics: those would compile
// in the fp32 build too (bf16 converts implicitly to and from float) and silently round to bf16.
// The kernel files describe the default build: where they say a floatX tensor is "bf16" or is
// "rounded to bf16", the fp32 build stores fp32 and rounds nothing (its packed paths take XPACK = 4
// elements per 16-byte access instead of 8); only the tensor-core kernels (mma.cuh, the bf16 path of
// attention.cuh) are bf16 in both builds, and they name __nv_bfloat16 explicitly.
#ifdef LLMC_FP32
typedef float floatX;
#define LLMC_FLOATX_FP32 1
#define LLMC_PRECISION_NAME "fp32"
#else
typedef __nv_bfloat16 floatX;
#define LLMC_FLOATX_FP32 0
#define LLMC_PRECISION_NAME "bf16"
#endif

// floatX elements per 16-byte (128-bit) vector access: the W of the packed kernel paths (reduce.cuh)
constexpr int XPACK = 16 / (int)sizeof(floatX);

namespace llmc {
__host__ __device__ __forceinline__ float to_float(float x) { return x; }
__host__ __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
// round-to-nearest to floatX (the identity in the fp32 build)
__host__ __device__ __forceinline__ floatX to_floatX(float x) {
#if LLMC_FLOATX_FP32
    return x;
#else
    return __float2bfloat16(x);
#endif
}
}  // namespace llmc

namespace llmc {
inline void cuda_check(cudaError_t err, const char* file, int line) {
    if (err != cudaSuccess) LLMC_FAIL("CUDA error at %s:%d: %s", file, line, cudaGetErrorString(err));
}
}  // namespace llmc
#define cudaCheck(err) ::llmc::cuda_check((err), __FILE__, __LINE__)

#if defined(__CUDACC__)
// A launch error (bad configuration, too much shared memory) is reported by cudaGetLastError right
// away; errors inside the kernel surface at the next synchronizing call, which is also checked.
#define LAUNCH(kernel, grid, block, smem_bytes, stream, ...)                            \
    do {                                                                                \
        kernel<<<(grid), (block), (smem_bytes), (stream)>>>(__VA_ARGS__);               \
        cudaCheck(cudaGetLastError());                                                  \
    } while (0)
// One byte array for every kernel (not one typed array per kernel): nvcc requires all extern
// __shared__ declarations of the same name to agree in type.
#define DYNAMIC_SMEM(type, name)                                                        \
    extern __shared__ __align__(16) unsigned char llmc_dynamic_smem_[];                \
    type* name = reinterpret_cast<type*>(llmc_dynamic_smem_)
#define STATIC_SMEM(type, name) __shared__ ::llmc::smem_t<type> name
#else
// SIM: runs the whole grid before returning (launches are synchronous); a misuse inside the
// kernel (divergent barrier, bad shuffle mask) throws llmc::Error naming the kernel and block.
// (grid, block, smem_bytes, stream, args...) all travel in __VA_ARGS__, so a kernel without
// arguments needs no comma elision.
#define LAUNCH(kernel, ...) ::llmc::sim::launch(#kernel, __FILE__, kernel, __VA_ARGS__)
#define DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(::llmc::sim::dynamic_smem())
// One site object per declaration (per template instantiation); every thread of the block gets a
// reference to the same per-block instance.
#define STATIC_SMEM(type, name)                                                         \
    static ::llmc::sim::SmemSite llmc_smem_site_##name;                                 \
    ::llmc::smem_t<type>& name = ::llmc::sim::static_smem<::llmc::smem_t<type>>(llmc_smem_site_##name, #name)
#endif
