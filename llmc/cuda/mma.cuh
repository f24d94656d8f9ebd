// mma.cuh: tensor cores (mma.sync), their shared-memory loads (ldmatrix) and asynchronous copies
// (cp.async), sm_80+, as thin wrappers that a kernel calls instead of writing inline PTX, so that
// the same kernel runs under SIM (README.md#sim) with the exact per-lane layouts of the PTX
// ISA: a kernel that puts an element in the wrong lane or register computes a wrong result under
// SIM just as it does on the GPU.
//
//   mma_m16n8k16_bf16(c, a, b)    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: c = A·B + c
//   mma_m16n8k16_f16(c, a, b)     the same with fp16 A and B (fp32 accumulators)
//                                 float c[4]: the C/D fragment; uint32_t a[4], b[2]: the A and B
//                                 fragments, each register two 16-bit values (pack_bf16x2/pack_f16x2)
//   ldmatrix_x1/_x2/_x4(r, p)     ldmatrix.sync.aligned.m8n8.{x1,x2,x4}.shared.b16: r[i] from matrix i
//   ldmatrix_x1/_x2/_x4_trans     the same with .trans
//   cp_async_4/_8/_16(dst, src)   cp.async.ca.shared.global, 4/8/16 bytes, smem dst <- global src
//   cp_async_16_cg(dst, src)      cp.async.cg.shared.global (bypasses L1; .cg takes 16 bytes only)
//   cp_async_commit()             cp.async.commit_group
//   cp_async_wait<N>()            cp.async.wait_group N: until at most the N newest groups are pending
//   cp_async_wait_all()           cp.async.wait_all (also covers copies not yet committed)
//
// Fragment layouts (PTX ISA 9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with floating point type",
// and "ldmatrix"). g = lane >> 2 (groupID), t = lane % 4 (threadID_in_group); a register holds two
// 16-bit elements, the lower-numbered one (a0 of a0,a1) in its low half.
//   A, 16x16 (.row):   a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]
//                      a[2] = A[g][2t+8, 2t+9]    a[3] = A[g+8][2t+8, 2t+9]
//   B, 16x8  (.col):   b[0] = B[2t, 2t+1][g]      b[1] = B[2t+8, 2t+9][g]
//   C/D, 16x8 fp32:    c[0] = C[g][2t]  c[1] = C[g][2t+1]  c[2] = C[g+8][2t]  c[3] = C[g+8][2t+1]
//   ldmatrix (8x8 matrices of 16-bit elements): lanes 8i..8i+7 give the addresses of rows 0..7 of
//   matrix i (x1 uses lanes 0-7, x2 lanes 0-15; the other lanes' addresses are ignored); a row is
//   16 contiguous bytes at a 16-byte aligned shared-memory address. Lane gets
//   r[i] = M_i[g][2t, 2t+1], or with .trans r[i] = (M_i[2t][g], M_i[2t+1][g]).
// So: an A tile row-major in smem (row stride ld) loads as its fragment with ldmatrix_x4 where lane l
// points at &A[l % 16][8 * (l / 16)]; a B tile stored as Bᵀ (n-major, k contiguous: the .col layout,
// like a weight W(out, in)) gives b[0], b[1] of an n8 tile with ldmatrix_x2 at &Bt[l % 8][8 * ((l / 8) % 2)];
// a B tile stored k-major (row-major K x N) gives them with ldmatrix_x2_trans at &B[l % 16][0].
//
// Under nvcc: inline PTX for __CUDA_ARCH__ >= 800 (ldmatrix exists from sm_75 but mma.m16n8k16 and
// cp.async need sm_80; one threshold keeps it simple); compiled for an older arch a call traps.
// Shared addresses are converted with __cvta_generic_to_shared. The PTX statements that read or
// write memory carry a "memory" clobber so the compiler keeps them in order with ordinary loads and
// stores of shared memory.
//
// What SIM models (#ifdef LLMC_SIM):
//   - mma and ldmatrix are warp collectives (llmc::sim::warp_gather): all 32 lanes of the warp meet,
//     each contributes its registers (mma) or its 16-byte row (ldmatrix), and each lane then takes
//     its own elements from the gathered data by the layouts above. All 32 lanes must execute the
//     same wrapper at the same call site (PTX .sync.aligned); a lane that calls another one, or has
//     exited, or does not exist (blockDim not a multiple of 32) is an error naming the kernel, the
//     thread and the source lines.
//   - mma arithmetic: every product of two bf16 (8-bit significands) or fp16 (11-bit) values is
//     exact in fp32 (barring underflow below 2^-149); SIM sums d = c, then d += A[m][k]·B[k][n] for
//     k = 0..15 in that order, each addition rounded to nearest even in fp32. The hardware's order
//     and internal precision are NOT specified by PTX (published measurements, e.g. Fasi et al. 2021
//     "Numerical behavior of NVIDIA tensor cores", found V100..A100 aligning a block of products to
//     the largest exponent and truncating), so SIM and a GPU can differ in the last bits: tests use
//     exactly representable sums for bit-exact checks and, for general inputs, a tolerance of
//     K·2^-22·(|c| + Σ|a·b|), above the error of either model. NaN and inf propagate as IEEE says;
//     SIM keeps subnormal inputs and results (what the tensor cores do with them is not modeled).
//   - ldmatrix: each lane whose address is used reads its row when it reaches the instruction (a
//     row written by another lane without a __syncwarp() in between may not be seen: a race on
//     the GPU too); a row address that is not 16-byte aligned is an error. SIM cannot tell whether
//     an address points into shared memory (CUDA: undefined behaviour if not); AddressSanitizer
//     (build/sim_asan) reports a row that runs past a shared or global buffer.
//   - cp.async (llmc::sim::cp_async): the source is read at issue, the destination is poisoned
//     (0xFF bytes: NaN as float or bf16) at issue and written at the wait that covers it, so a
//     read of the destination before its wait_group sees NaN, and so may another thread's read
//     that no __syncthreads() orders after the wait. .ca and .cg (cache hints) behave the same;
//     timing and the overlap that makes cp.async fast are not modeled. Misaligned addresses are an
//     error.
//   - Not caught: a cp.async that refills a buffer another warp may still be reading (a missing
//     barrier after the math of a double-buffered loop). SIM's scheduler moves all warps of a
//     block from one collective to the next together, so no warp reaches the refill before the
//     others' last ldmatrix of that buffer; on the GPU it is a race.
#pragma once
#include <stdint.h>
#include "llmc/cuda/common.cuh"

// two 16-bit values in one 32-bit register, `lo` (the lower-numbered element) in the low half
__host__ __device__ __forceinline__ uint32_t pack_bf16x2(__nv_bfloat16 lo, __nv_bfloat16 hi) {
    return (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
}
__host__ __device__ __forceinline__ uint32_t pack_f16x2(__half lo, __half hi) {
    return (uint32_t)__half_as_ushort(lo) | ((uint32_t)__half_as_ushort(hi) << 16);
}

#if defined(__CUDACC__)

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define LLMC_MMA_PTX 1
#elif defined(__CUDA_ARCH__)
#define LLMC_MMA_PTX 0
#endif
// the host pass (no __CUDA_ARCH__) leaves the bodies empty: they are device code only

__device__ __forceinline__ uint32_t smem_addr_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mma_m16n8k16_bf16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(LLMC_MMA_PTX) && LLMC_MMA_PTX
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

__device__ __forceinline__ void mma_m16n8k16_f16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(LLMC_MMA_PTX) && LLMC_MMA_PTX
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

#if defined(LLMC_MMA_PTX) && LLMC_MMA_PTX
#define LLMC_LDMATRIX_X1(suffix)                                                                      \
    asm volatile("ldmatrix.sync.aligned.m8n8.x1" suffix ".shared.b16 {%0}, [%1];\n"                   \
                 : "=r"(r[0]) : "r"(smem_addr_u32(row)) : "memory")
#define LLMC_LDMATRIX_X2(suffix)                                                                      \
    asm volatile("ldmatrix.sync.aligned.m8n8.x2" suffix ".shared.b16 {%0, %1}, [%2];\n"               \
                 : "=r"(r[0]), "=r"(r[1]) : "r"(smem_addr_u32(row)) : "memory")
#define LLMC_LDMATRIX_X4(suffix)                                                                      \
    asm volatile("ldmatrix.sync.aligned.m8n8.x4" suffix ".shared.b16 {%0, %1, %2, %3}, [%4];\n"       \
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr_u32(row)) : "memory")
#elif defined(__CUDA_ARCH__)
#define LLMC_LDMATRIX_X1(suffix) __trap()
#define LLMC_LDMATRIX_X2(suffix) __trap()
#define LLMC_LDMATRIX_X4(suffix) __trap()
#else
#define LLMC_LDMATRIX_X1(suffix) (void)0
#define LLMC_LDMATRIX_X2(suffix) (void)0
#define LLMC_LDMATRIX_X4(suffix) (void)0
#endif
__device__ __forceinline__ void ldmatrix_x1(uint32_t r[1], const void* row) { LLMC_LDMATRIX_X1(""); }
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* row) { LLMC_LDMATRIX_X2(""); }
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) { LLMC_LDMATRIX_X4(""); }
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t r[1], const void* row) { LLMC_LDMATRIX_X1(".trans"); }
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* row) { LLMC_LDMATRIX_X2(".trans"); }
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row) { LLMC_LDMATRIX_X4(".trans"); }
#undef LLMC_LDMATRIX_X1
#undef LLMC_LDMATRIX_X2
#undef LLMC_LDMATRIX_X4

#if defined(LLMC_MMA_PTX) && LLMC_MMA_PTX
#define LLMC_CP_ASYNC(cache, bytes)                                                                   \
    asm volatile("cp.async." cache ".shared.global [%0], [%1], " #bytes ";\n"                         \
                 :: "r"(smem_addr_u32(smem)), "l"(gmem) : "memory")
#elif defined(__CUDA_ARCH__)
#define LLMC_CP_ASYNC(cache, bytes) __trap()
#else
#define LLMC_CP_ASYNC(cache, bytes) (void)0
#endif
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem) { LLMC_CP_ASYNC("ca", 4); }
__device__ __forceinline__ void cp_async_8(void* smem, const void* gmem) { LLMC_CP_ASYNC("ca", 8); }
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) { LLMC_CP_ASYNC("ca", 16); }
__device__ __forceinline__ void cp_async_16_cg(void* smem, const void* gmem) { LLMC_CP_ASYNC("cg", 16); }
#undef LLMC_CP_ASYNC

__device__ __forceinline__ void cp_async_commit() {
#if defined(LLMC_MMA_PTX) && LLMC_MMA_PTX
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
    static_assert(N >= 0, "cp_async_wait<N>: N is the number of groups left pending, >= 0");
#if defined(LLMC_MMA_PTX) && LLMC_MMA_PTX
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(LLMC_MMA_PTX) && LLMC_MMA_PTX
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

#else  // LLMC_SIM

// Every wrapper takes the caller's source position as defaulted trailing arguments (g++ evaluates
// __builtin_FILE/__builtin_LINE at the call site), so a misuse message names the kernel's line.
namespace llmc {
namespace sim_mma {

enum Kind : int { kMmaBf16 = 1, kMmaF16, kLdmX1, kLdmX2, kLdmX4, kLdmX1T, kLdmX2T, kLdmX4T };
inline const char* kind_name(int k) {
    switch (k) {
        case kMmaBf16: return "mma_m16n8k16_bf16";
        case kMmaF16: return "mma_m16n8k16_f16";
        case kLdmX1: return "ldmatrix_x1";
        case kLdmX2: return "ldmatrix_x2";
        case kLdmX4: return "ldmatrix_x4";
        case kLdmX1T: return "ldmatrix_x1_trans";
        case kLdmX2T: return "ldmatrix_x2_trans";
        case kLdmX4T: return "ldmatrix_x4_trans";
        default: return "?";
    }
}

// What one lane brings to a warp-matrix instruction: which instruction at which call site (to check
// .aligned), and its operand bytes (mma: a[0..3], b[0..1]; ldmatrix: its 16-byte row).
struct Contribution {
    const char* file;
    int line;
    int kind;
    unsigned char data[24];
};

inline void gather(int kind, const char* file, int line, const void* data, int bytes, Contribution all[32]) {
    Contribution mine;
    memset(&mine, 0, sizeof mine);
    mine.file = file;
    mine.line = line;
    mine.kind = kind;
    memcpy(mine.data, data, (size_t)bytes);
    ::llmc::sim::warp_gather(file, line, 0xffffffffu, &mine, (int)sizeof mine, all);
    for (int k = 0; k < 32; k++)
        if (all[k].kind != kind || all[k].line != line || strcmp(all[k].file, file) != 0)
            LLMC_FAIL("%s at %s:%d: lane %d of the warp executed %s at %s:%d instead (all 32 lanes must execute the same "
                      "warp-matrix instruction together: .sync.aligned)",
                      kind_name(kind), file, line, k, kind_name(all[k].kind), all[k].file, all[k].line);
}

inline uint32_t reg_of(const Contribution* all, int lane, int j) {
    uint32_t r;
    memcpy(&r, all[lane].data + 4 * j, 4);
    return r;
}
template <bool F16> inline float elem(uint32_t reg, int k) {
    const uint16_t bits = (uint16_t)((k & 1) ? reg >> 16 : reg & 0xffffu);
    return F16 ? ::llmc::sim::half_bits_to_float(bits) : ::llmc::sim::bf16_bits_to_float(bits);
}

template <bool F16> inline void mma_m16n8k16(float c[4], const uint32_t a[4], const uint32_t b[2], const char* file, int line) {
    const uint32_t regs[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    Contribution all[32];
    gather(F16 ? kMmaF16 : kMmaBf16, file, line, regs, (int)sizeof regs, all);
    // The layouts inverted: which lane, register and half hold A[m][k] and B[k][n].
    //   A[m][k]: lane 4*(m%8) + (k%8)/2, register a[2*(k/8) + m/8], half k%2
    //   B[k][n]: lane 4*n + (k%8)/2, register b[k/8] (= regs[4 + k/8]), half k%2
    auto A = [&](int m, int k) { return elem<F16>(reg_of(all, 4 * (m % 8) + (k % 8) / 2, 2 * (k / 8) + m / 8), k); };
    auto B = [&](int k, int n) { return elem<F16>(reg_of(all, 4 * n + (k % 8) / 2, 4 + k / 8), k); };
    const int lane = ::llmc::sim::laneid(), g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; i++) {
        const int m = g + 8 * (i >> 1), n = 2 * t + (i & 1);
        float d = c[i];
        for (int k = 0; k < 16; k++) d += A(m, k) * B(k, n);  // the product is exact; one rounding per add
        c[i] = d;
    }
}

template <int NUM, bool TRANS> inline void ldmatrix(uint32_t* r, const void* row, const char* file, int line) {
    const int kind = NUM == 1 ? (TRANS ? kLdmX1T : kLdmX1) : NUM == 2 ? (TRANS ? kLdmX2T : kLdmX2) : (TRANS ? kLdmX4T : kLdmX4);
    const int lane = ::llmc::sim::laneid();
    unsigned char mine[16];
    if (lane < 8 * NUM) {  // the other lanes' addresses are ignored, as on the GPU
        if (row == nullptr || (uintptr_t)row % 16 != 0)
            LLMC_FAIL("%s at %s:%d: lane %d's row address %p is not a 16-byte aligned shared-memory address", kind_name(kind), file, line,
                      lane, row);
        memcpy(mine, row, 16);
    } else {
        memset(mine, ::llmc::sim::kPoison, 16);
    }
    Contribution all[32];
    gather(kind, file, line, mine, 16, all);
    // M_i[row][col] is lane (8i + row)'s row, element col
    auto M = [&](int i, int rr, int cc) {
        uint16_t v;
        memcpy(&v, all[8 * i + rr].data + 2 * cc, 2);
        return (uint32_t)v;
    };
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < NUM; i++)
        r[i] = TRANS ? M(i, 2 * t, g) | (M(i, 2 * t + 1, g) << 16) : M(i, g, 2 * t) | (M(i, g, 2 * t + 1) << 16);
}

inline void cp_async(void* smem, const void* gmem, int bytes, const char* file, int line) {
    if (smem == nullptr || gmem == nullptr || ((uintptr_t)smem | (uintptr_t)gmem) % (uintptr_t)bytes != 0)
        LLMC_FAIL("cp.async of %d bytes at %s:%d: from %p to %p: both addresses must be non-null and %d-byte aligned", bytes, file,
                  line, gmem, smem, bytes);
    ::llmc::sim::cp_async(smem, gmem, bytes);
}

}  // namespace sim_mma
}  // namespace llmc

#define LLMC_SIM_AT const char* file = __builtin_FILE(), int line = __builtin_LINE()
inline void mma_m16n8k16_bf16(float c[4], const uint32_t a[4], const uint32_t b[2], LLMC_SIM_AT) {
    ::llmc::sim_mma::mma_m16n8k16<false>(c, a, b, file, line);
}
inline void mma_m16n8k16_f16(float c[4], const uint32_t a[4], const uint32_t b[2], LLMC_SIM_AT) {
    ::llmc::sim_mma::mma_m16n8k16<true>(c, a, b, file, line);
}
inline void ldmatrix_x1(uint32_t r[1], const void* row, LLMC_SIM_AT) { ::llmc::sim_mma::ldmatrix<1, false>(r, row, file, line); }
inline void ldmatrix_x2(uint32_t r[2], const void* row, LLMC_SIM_AT) { ::llmc::sim_mma::ldmatrix<2, false>(r, row, file, line); }
inline void ldmatrix_x4(uint32_t r[4], const void* row, LLMC_SIM_AT) { ::llmc::sim_mma::ldmatrix<4, false>(r, row, file, line); }
inline void ldmatrix_x1_trans(uint32_t r[1], const void* row, LLMC_SIM_AT) { ::llmc::sim_mma::ldmatrix<1, true>(r, row, file, line); }
inline void ldmatrix_x2_trans(uint32_t r[2], const void* row, LLMC_SIM_AT) { ::llmc::sim_mma::ldmatrix<2, true>(r, row, file, line); }
inline void ldmatrix_x4_trans(uint32_t r[4], const void* row, LLMC_SIM_AT) { ::llmc::sim_mma::ldmatrix<4, true>(r, row, file, line); }
inline void cp_async_4(void* smem, const void* gmem, LLMC_SIM_AT) { ::llmc::sim_mma::cp_async(smem, gmem, 4, file, line); }
inline void cp_async_8(void* smem, const void* gmem, LLMC_SIM_AT) { ::llmc::sim_mma::cp_async(smem, gmem, 8, file, line); }
inline void cp_async_16(void* smem, const void* gmem, LLMC_SIM_AT) { ::llmc::sim_mma::cp_async(smem, gmem, 16, file, line); }
inline void cp_async_16_cg(void* smem, const void* gmem, LLMC_SIM_AT) { ::llmc::sim_mma::cp_async(smem, gmem, 16, file, line); }
inline void cp_async_commit() { ::llmc::sim::cp_async_commit(); }
template <int N> inline void cp_async_wait() {
    static_assert(N >= 0, "cp_async_wait<N>: N is the number of groups left pending, >= 0");
    ::llmc::sim::cp_async_wait(N);
}
inline void cp_async_wait_all() { ::llmc::sim::cp_async_wait(-1); }
#undef LLMC_SIM_AT

#endif
