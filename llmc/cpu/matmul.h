// matmul.h: the linear layer without bias, out = inp · weightᵀ, weight (OC, IC) like PyTorch.
//
//   forward:  out(N,OC)       = inp(N,IC) · W(OC,IC)ᵀ
//   backward: dinp(N,IC)     += dout(N,OC) · W(OC,IC)      (skipped if dinp == nullptr)
//             dweight(OC,IC) += dout(N,OC)ᵀ · inp(N,IC)    (skipped if dweight == nullptr)
//
// Two implementations:
//  * plain loops (matmul_*_naive): every precision; the double path of the finite-difference
//    tests and the baseline of dev/bench_matmul.cpp.
//  * float: all three products go through one blocked GEMM, C (=|+=) A·B with A and B given by
//    strides, so a transposed operand costs nothing but a different packing loop.
//    Packing (as in GotoBLAS/BLIS) copies A into MR-tall and B into NR-wide micro-panels, each
//    KC deep and contiguous, so the micro-kernel reads both with unit stride. The micro-kernel
//    keeps an MR x NR tile of C in vector registers for a whole depth block: per k it loads one
//    NR-wide row of B and broadcasts MR values of A (MR*NR/VL FMAs per NR/VL + MR loads).
//    It is written with GCC/Clang vector extensions (no intrinsics), so the compiler picks the
//    instructions: with -march=native on AVX-512 a 12 x 32 tile (24 zmm accumulators), on AVX2
//    6 x 16, elsewhere 6 x 8. Edges: packing zero-pads partial panels; partial tiles are
//    written through a small buffer.
//    Cache plan: the smaller operand ("shared") is packed once, up front, by all threads into
//    one buffer; the larger one ("streamed") is packed piece by piece by the task that uses it,
//    so it crosses the memory bus about once (for the lm_head, B = W is the big one in the
//    forward, A = doutᵀ in dweight). Inside a task: for each NC-wide column chunk, for each group
//    of rows whose C block stays in L2, for each depth block: for each MC-row block: tiles.
//
// Threads: C is cut into rectangles (tasks) along the streamed operand's dimension, ~3 per
// thread, scheduled dynamically so a core slowed by another process does not hold up the
// product. No two tasks write the same C element, and every C element is computed as: for each
// depth block in order, acc = sum over its k in order (in registers), C += acc (= for the first
// block of the forward). KC is a constant, so results are bitwise independent of the thread
// count and of the task split (deterministic parameter gradients). Only the first phase
// (packing the shared operand) ends in a barrier.
// Accuracy: fp32 sums of at most KC products, then one add per depth block; the tests hold
// every element to the rigorous bound gamma_{K+1} * sum |terms| against a double reference.
//
// Optional: built with -DLLMC_OPENBLAS (make train_gpt_cpu_openblas, needs Debian's
// libopenblas-dev), the float products call cblas_sgemm instead: a comparison point for the
// benchmark. OpenBLAS is deterministic for a fixed thread count but not across thread counts.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef LLMC_OPENBLAS
#include <cblas.h>
#endif

// ---- plain loops ----
// Each output element is owned by one thread and summed in a fixed order, so these are
// deterministic for any thread count too.

template <typename Real>
void matmul_forward_naive(Real* out, const Real* inp, const Real* weight, int N, int IC, int OC) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const Real* x = inp + (long)n * IC;
        for (int o = 0; o < OC; o++) {
            const Real* w = weight + (long)o * IC;
            Real acc = 0;
            for (int k = 0; k < IC; k++) acc += x[k] * w[k];
            out[(long)n * OC + o] = acc;
        }
    }
}

template <typename Real>
void matmul_backward_naive(Real* dinp, Real* dweight, const Real* dout, const Real* inp, const Real* weight,
                           int N, int IC, int OC) {
    if (dinp) {
        #pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const Real* g = dout + (long)n * OC;
            Real* dx = dinp + (long)n * IC;
            for (int o = 0; o < OC; o++) {
                const Real* w = weight + (long)o * IC;
                Real go = g[o];
                for (int k = 0; k < IC; k++) dx[k] += go * w[k];
            }
        }
    }
    if (dweight) {
        #pragma omp parallel for schedule(static)
        for (int o = 0; o < OC; o++) {
            Real* dw = dweight + (long)o * IC;
            for (int n = 0; n < N; n++) {
                Real go = dout[(long)n * OC + o];
                const Real* x = inp + (long)n * IC;
                for (int k = 0; k < IC; k++) dw[k] += go * x[k];
            }
        }
    }
}

// ---- blocked float GEMM ----

#if defined(__AVX512F__)
constexpr int MM_VL = 16, MM_MR = 12;
#elif defined(__AVX__)
constexpr int MM_VL = 8, MM_MR = 6;
#else
constexpr int MM_VL = 4, MM_MR = 6;
#endif
constexpr int MM_NV = 2;                   // vectors per tile row
constexpr int MM_NR = MM_NV * MM_VL;       // tile width
constexpr int MM_KC = 256;                 // depth block: fixed (it defines the summation order)
constexpr int MM_MC = 8 * MM_MR;           // row block: A block MC x KC (~100 KB on AVX-512) in L2
constexpr int MM_NC = (512 + MM_NR - 1) / MM_NR * MM_NR;  // column chunk (whole panels): B chunk KC x NC (512 KB) in L2
constexpr long MM_L2_HALF = 1l << 20;      // bytes of C kept hot across depth blocks
constexpr long MM_SHARED_BIG = 4l << 20;   // a shared operand this big is re-read as few times as possible
static_assert(MM_MC % MM_MR == 0 && MM_NC % MM_NR == 0, "row blocks and column chunks must be whole panels");

typedef float mm_vec __attribute__((vector_size(MM_VL * sizeof(float))));

// A(i,k) = A[i*ars + k*acs], B(k,j) = B[k*brs + j*bcs]; C row-major with leading dimension ldc.
struct MatmulOperands {
    const float* A; long ars, acs;
    const float* B; long brs, bcs;
    float* C; long ldc;
};

// Pack rows [i0, i0+mc) x depth [k0, k0+kc) of A into MR-tall panels: Ap[p][k][i] (zero-padded).
inline void mm_pack_A(float* Ap, const MatmulOperands& op, int i0, int mc, int k0, int kc) {
    if (op.ars == 1) {
        // transposed operand (doutᵀ in dweight): each k holds the block's mc rows as one contiguous
        // run, so walk k outermost and cut that run into the panels (one pass over each source
        // row instead of one per panel: the lm_head's doutᵀ rows are 128 KB apart)
        const int np = (mc + MM_MR - 1) / MM_MR;
        for (int k = 0; k < kc; k++) {
            const float* src = op.A + (long)i0 + (long)(k0 + k) * op.acs;
            for (int p = 0; p < np; p++) {
                int mr = std::min(MM_MR, mc - p * MM_MR);
                float* dst = Ap + (long)p * MM_MR * kc + (long)k * MM_MR;
                memcpy(dst, src + p * MM_MR, sizeof(float) * mr);
                for (int i = mr; i < MM_MR; i++) dst[i] = 0.0f;
            }
        }
        return;
    }
    for (int p = 0; p < mc; p += MM_MR) {
        int mr = std::min(MM_MR, mc - p);
        float* dst = Ap + (long)p * kc;
        const float* src = op.A + (long)(i0 + p) * op.ars + (long)k0 * op.acs;
        if (op.acs == 1) {  // rows contiguous in k: read each row, scatter into the panel
            for (int i = 0; i < mr; i++)
                for (int k = 0; k < kc; k++) dst[k * MM_MR + i] = src[i * op.ars + k];
        } else {  // general strides (ars == 1 is handled above)
            for (int k = 0; k < kc; k++)
                for (int i = 0; i < mr; i++) dst[k * MM_MR + i] = src[(long)k * op.acs + i * op.ars];
        }
        if (mr < MM_MR)
            for (int k = 0; k < kc; k++)
                for (int i = mr; i < MM_MR; i++) dst[k * MM_MR + i] = 0.0f;
    }
}

// Pack depth [k0, k0+kc) x columns [j0, j0+nc) of B into NR-wide panels: Bp[q][k][j] (zero-padded).
inline void mm_pack_B(float* Bp, const MatmulOperands& op, int k0, int kc, int j0, int nc) {
    for (int q = 0; q < nc; q += MM_NR) {
        int nr = std::min(MM_NR, nc - q);
        float* dst = Bp + (long)q * kc;
        const float* src = op.B + (long)k0 * op.brs + (long)(j0 + q) * op.bcs;
        if (op.bcs == 1) {  // rows of B contiguous in j
            for (int k = 0; k < kc; k++) {
                const float* s = src + (long)k * op.brs;
                float* d = dst + k * MM_NR;
                for (int j = 0; j < nr; j++) d[j] = s[j];
                for (int j = nr; j < MM_NR; j++) d[j] = 0.0f;
            }
        } else {            // B = Wᵀ: columns of B contiguous in k
            for (int j = 0; j < nr; j++) {
                const float* s = src + (long)j * op.bcs;
                for (int k = 0; k < kc; k++) dst[k * MM_NR + j] = s[(long)k * op.brs];
            }
            for (int k = 0; k < kc; k++)
                for (int j = nr; j < MM_NR; j++) dst[k * MM_NR + j] = 0.0f;
        }
    }
}

// C tile (mr x nr valid of MR x NR) = or += (Ap panel)·(Bp panel) over depth kc.
inline void mm_micro_kernel(int kc, const float* __restrict__ Ap, const float* __restrict__ Bp, float* C, long ldc,
                            int mr, int nr, bool overwrite) {
    // start fetching the C tile now; it is needed only after the depth loop (on the big
    // products C comes from memory, and this hides that latency behind kc steps of FMAs)
    for (int i = 0; i < mr; i++) {
        __builtin_prefetch(C + i * ldc, 1);
        __builtin_prefetch(C + i * ldc + MM_NR - 1, 1);
    }
    mm_vec acc[MM_MR][MM_NV];
    for (int i = 0; i < MM_MR; i++)
        for (int v = 0; v < MM_NV; v++) acc[i][v] = (mm_vec){} ;
    for (int k = 0; k < kc; k++) {
        mm_vec b[MM_NV];
        for (int v = 0; v < MM_NV; v++) memcpy(&b[v], Bp + k * MM_NR + v * MM_VL, sizeof(mm_vec));
        for (int i = 0; i < MM_MR; i++) {
            float a = Ap[k * MM_MR + i];  // scalar * vector: the compiler broadcasts it
            for (int v = 0; v < MM_NV; v++) acc[i][v] += a * b[v];
        }
    }
    if (mr == MM_MR && nr == MM_NR) {
        for (int i = 0; i < MM_MR; i++)
            for (int v = 0; v < MM_NV; v++) {
                float* c = C + i * ldc + v * MM_VL;
                mm_vec cv = acc[i][v];
                if (!overwrite) { mm_vec old; memcpy(&old, c, sizeof(mm_vec)); cv = old + cv; }
                memcpy(c, &cv, sizeof(mm_vec));
            }
    } else {
        float tile[MM_MR][MM_NR];
        memcpy(tile, acc, sizeof(tile));
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++) {
                float* c = C + i * ldc + j;
                *c = overwrite ? tile[i][j] : *c + tile[i][j];
            }
    }
}

inline float* mm_align64_(float* p) { return (float*)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

// C(M,N) (=|+=) A(M,K)·B(K,N), threads over tiles of C (see top of file).
inline void mm_gemm(const MatmulOperands& op, int M, int N, int K, bool overwrite) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {  // empty sum: = writes zeros, += leaves C alone
        if (overwrite) for (int i = 0; i < M; i++) memset(op.C + (long)i * op.ldc, 0, sizeof(float) * N);
        return;
    }
    int nth = 1;
#ifdef _OPENMP
    if (!omp_in_parallel()) nth = omp_get_max_threads();
#endif
    if (2.0 * M * N * K < 4e6) nth = 1;  // not worth waking threads for tiny products
    // The smaller operand is packed once, up front, into a buffer all threads read ("shared");
    // the larger one is packed piece by piece by the task that uses it ("streamed"), so it is
    // read from memory about once. M >= N: A streams, B is shared; else the reverse.
    const bool share_B = M >= N;
    const int mpanels = (M + MM_MR - 1) / MM_MR, npanels = (N + MM_NR - 1) / MM_NR;
    const long Mpad = (long)mpanels * MM_MR, Npad = (long)npanels * MM_NR;
    const int kblocks = (K + MM_KC - 1) / MM_KC;
    // Tasks: the streamed operand's dimension is cut into ranges of whole panels, about 3 per
    // thread (dynamic scheduling then evens out a core that another process slows down), but
    // only one per thread when the shared operand is big, because every task re-reads all of it.
    // If that dimension is too short, the other one is cut as well.
    const long shared_bytes = 4l * K * (share_B ? Npad : Mpad);
    int want = nth == 1 ? 1 : (shared_bytes > MM_SHARED_BIG ? nth : 3 * nth);
    int units_long = share_B ? mpanels : npanels, units_short = share_B ? npanels : mpanels;
    int t_long = std::min(want, units_long);
    int t_short = std::min(units_short, (want + t_long - 1) / t_long);
    const int tr = share_B ? t_long : t_short, tc = share_B ? t_short : t_long;
    static thread_local std::vector<float> sbuf;  // the shared packed operand (caller's thread)
    size_t ssz = (size_t)K * (share_B ? Npad : Mpad) + 16;
    if (sbuf.size() < ssz) sbuf.resize(ssz);
    float* S = mm_align64_(sbuf.data());
    #pragma omp parallel num_threads(nth) if (nth > 1)
    {
        // 1. pack the shared operand: depth block pb starts at pc*Npad (or pc*Mpad); its panels follow
        const int spanels = share_B ? npanels : mpanels;
        #pragma omp for schedule(static) collapse(2)
        for (int pb = 0; pb < kblocks; pb++) {
            for (int q = 0; q < spanels; q++) {
                const int pc = pb * MM_KC, kc = std::min(MM_KC, K - pc);
                if (share_B) mm_pack_B(S + (long)pc * Npad + (long)q * MM_NR * kc, op, pc, kc, q * MM_NR, std::min(MM_NR, N - q * MM_NR));
                else mm_pack_A(S + (long)pc * Mpad + (long)q * MM_MR * kc, op, q * MM_MR, std::min(MM_MR, M - q * MM_MR), pc, kc);
            }
        }
        // (implicit barrier: the shared operand is complete before anyone multiplies with it)
        static thread_local std::vector<float> pbuf;  // this thread's piece of the streamed operand
        size_t psz = (size_t)MM_KC * (share_B ? MM_MC : MM_NC) + 16;
        if (pbuf.size() < psz) pbuf.resize(psz);
        float* P = mm_align64_(pbuf.data());
        // 2. tasks, each a rectangle of C: rows [r0, r1) x columns [c0, c1)
        #pragma omp for schedule(dynamic, 1) collapse(2)
        for (int ti = 0; ti < tr; ti++) {
            for (int tj = 0; tj < tc; tj++) {
                const int r0 = (int)((long)mpanels * ti / tr) * MM_MR, r1 = std::min(M, (int)((long)mpanels * (ti + 1) / tr) * MM_MR);
                const int c0 = (int)((long)npanels * tj / tc) * MM_NR, c1 = std::min(N, (int)((long)npanels * (tj + 1) / tc) * MM_NR);
                for (int jc = c0; jc < c1; jc += MM_NC) {
                    const int nc = std::min(MM_NC, c1 - jc);
                    // rows whose C block (rows x nc) stays in L2 while the depth blocks pass over it
                    int rs_rows = kblocks == 1 ? M : std::max(MM_MC, (int)(MM_L2_HALF / (4l * nc)) / MM_MC * MM_MC);
                    for (int rs = r0; rs < r1; rs += rs_rows) {
                        const int rs_end = std::min(r1, rs + rs_rows);
                        for (int pc = 0; pc < K; pc += MM_KC) {
                            const int kc = std::min(MM_KC, K - pc);
                            const bool first = overwrite && pc == 0;
                            const float* Bblk;  // panels of columns [jc, jc+nc), panel j at Bblk + j*kc
                            if (share_B) {
                                Bblk = S + (long)pc * Npad + (long)jc * kc;
                            } else {
                                mm_pack_B(P, op, pc, kc, jc, nc);
                                Bblk = P;
                            }
                            for (int ic = rs; ic < rs_end; ic += MM_MC) {
                                const int mc = std::min(MM_MC, rs_end - ic);
                                const float* Ablk;  // panels of rows [ic, ic+mc), panel i at Ablk + i*kc
                                if (share_B) {
                                    mm_pack_A(P, op, ic, mc, pc, kc);
                                    Ablk = P;
                                } else {
                                    Ablk = S + (long)pc * Mpad + (long)ic * kc;
                                }
                                for (int jr = 0; jr < nc; jr += MM_NR) {
                                    const int nr = std::min(MM_NR, nc - jr);
                                    for (int ir = 0; ir < mc; ir += MM_MR)
                                        mm_micro_kernel(kc, Ablk + (long)ir * kc, Bblk + (long)jr * kc,
                                                        op.C + (long)(ic + ir) * op.ldc + jc + jr, op.ldc,
                                                        std::min(MM_MR, mc - ir), nr, first);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---- the op ----

template <typename Real>
void matmul_forward(Real* out, const Real* inp, const Real* weight, int N, int IC, int OC) {
    if constexpr (std::is_same<Real, float>::value) {
        // out(N,OC) = inp(N,IC) · Wᵀ: A = inp, B(k,j) = W[j*IC + k]
#ifdef LLMC_OPENBLAS
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC, 1.0f, inp, IC, weight, IC, 0.0f, out, OC);
#else
        MatmulOperands op{inp, IC, 1, weight, 1, IC, out, OC};
        mm_gemm(op, N, OC, IC, true);
#endif
    } else {
        matmul_forward_naive(out, inp, weight, N, IC, OC);
    }
}

template <typename Real>
void matmul_backward(Real* dinp, Real* dweight, const Real* dout, const Real* inp, const Real* weight,
                     int N, int IC, int OC) {
    if constexpr (std::is_same<Real, float>::value) {
        if (dinp) {
            // dinp(N,IC) += dout(N,OC) · W(OC,IC)
#ifdef LLMC_OPENBLAS
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1.0f, dout, OC, weight, IC, 1.0f, dinp, IC);
#else
            MatmulOperands op{dout, OC, 1, weight, IC, 1, dinp, IC};
            mm_gemm(op, N, IC, OC, false);
#endif
        }
        if (dweight) {
            // dweight(OC,IC) += doutᵀ · inp: A(i,k) = dout[k*OC + i], B = inp
#ifdef LLMC_OPENBLAS
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
#else
            MatmulOperands op{dout, 1, OC, inp, IC, 1, dweight, IC};
            mm_gemm(op, OC, IC, N, false);
#endif
        }
    } else {
        matmul_backward_naive(dinp, dweight, dout, inp, weight, N, IC, OC);
    }
}
