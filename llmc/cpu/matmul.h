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
//    The structure is the classic GotoBLAS/BLIS one:
//      for each column block jc (NC wide) / depth block pc (KC deep):
//        pack B[pc.., jc..] into NR-wide micro-panels   (stays in L2/L3, re-read for every row block)
//        for each row block ic (MC tall): pack A[ic.., pc..] into MR-tall micro-panels (L2)
//          for each NR x MR tile: micro-kernel: MR x NR accumulators live in vector registers for
//          the whole depth KC; per k it loads one NR-wide row of B and broadcasts MR values of A
//          (MR*NR/VL FMAs per 2 + MR loads).
//    The micro-kernel is written with GCC/Clang vector extensions (no intrinsics), so the
//    compiler picks the instructions: with -march=native on AVX-512 a 12 x 32 tile (24 zmm
//    accumulators), on AVX2 a 6 x 16 tile, elsewhere 6 x 8.
//    Edges: packing zero-pads partial panels, partial tiles are written through a small buffer.
//
// Threads: the output C is split into one rectangle per thread (rows if M >= N else columns,
// rounded to whole micro-tiles) and each thread runs the blocked GEMM on its rectangle with its
// own packing buffers: no barriers, no shared writes. Every C element is computed by one thread
// as: for each depth block in order, acc = sum over k in order (in registers), C += acc.
// The depth blocking KC is fixed, so the result is bitwise independent of the thread count and
// of how C was split (deterministic parameter gradients).
// Accuracy: fp32 sums of KC products then one add per depth block; the tests bound the error
// against a double reference.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
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

typedef float mm_vec __attribute__((vector_size(MM_VL * sizeof(float))));

// A(i,k) = A[i*ars + k*acs], B(k,j) = B[k*brs + j*bcs]; C row-major with leading dimension ldc.
struct MatmulOperands {
    const float* A; long ars, acs;
    const float* B; long brs, bcs;
    float* C; long ldc;
};

// Pack rows [i0, i0+mc) x depth [k0, k0+kc) of A into MR-tall panels: Ap[p][k][i] (zero-padded).
inline void mm_pack_A(float* Ap, const MatmulOperands& op, int i0, int mc, int k0, int kc) {
    for (int p = 0; p < mc; p += MM_MR) {
        int mr = std::min(MM_MR, mc - p);
        float* dst = Ap + (long)p * kc;
        const float* src = op.A + (long)(i0 + p) * op.ars + (long)k0 * op.acs;
        if (op.acs == 1) {  // rows contiguous in k: read each row, scatter into the panel
            for (int i = 0; i < mr; i++)
                for (int k = 0; k < kc; k++) dst[k * MM_MR + i] = src[i * op.ars + k];
        } else if (op.ars == 1) {  // transposed operand (doutᵀ): each k is mr contiguous floats
            for (int k = 0; k < kc; k++) memcpy(dst + k * MM_MR, src + (long)k * op.acs, sizeof(float) * mr);
        } else {
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
    const int npanels = (N + MM_NR - 1) / MM_NR;
    const long Npad = (long)npanels * MM_NR;
    const int kblocks = (K + MM_KC - 1) / MM_KC;
    const int mblocks = (M + MM_MC - 1) / MM_MC;
    // Tasks are (row block, column chunk). Whole rows (chunk = all of N) are best: A is packed
    // once per row block. Only when there are too few row blocks to keep the threads busy are
    // the columns cut, into chunks of at least 4 panels so the re-packing of A per chunk stays
    // small (it moves 1/(2*chunk width) elements per flop).
    int chunk_panels = npanels;
    if (nth > 1 && mblocks < 4 * nth) {
        int want = (4 * nth + mblocks - 1) / mblocks;
        chunk_panels = std::max(4, (npanels + want - 1) / want);
    }
    const int nchunks = (npanels + chunk_panels - 1) / chunk_panels;
    // All of B is packed once, up front, into a buffer shared by the threads: depth block pb
    // starts at pb*KC*Npad and holds its panels [q][k][j]. It belongs to the calling thread and
    // grows once (for the 256->32768 lm_head it is 32 MB).
    static thread_local std::vector<float> bbuf;
    size_t bsz = (size_t)K * Npad + 16;
    if (bbuf.size() < bsz) bbuf.resize(bsz);
    float* Bp = mm_align64_(bbuf.data());
    #pragma omp parallel num_threads(nth) if (nth > 1)
    {
        #pragma omp for schedule(static) collapse(2)
        for (int pb = 0; pb < kblocks; pb++) {
            for (int q = 0; q < npanels; q++) {
                const int pc = pb * MM_KC, kc = std::min(MM_KC, K - pc);
                mm_pack_B(Bp + (long)pc * Npad + (long)q * MM_NR * kc, op, pc, kc, q * MM_NR, std::min(MM_NR, N - q * MM_NR));
            }
        }
        // (implicit barrier: B is complete before anyone multiplies with it)
        static thread_local std::vector<float> abuf;  // this thread's packed A block
        size_t asz = (size_t)MM_MC * MM_KC + 16;
        if (abuf.size() < asz) abuf.resize(asz);
        float* Ap = mm_align64_(abuf.data());
        // dynamic: a core slowed down by another process does not hold up the whole product
        #pragma omp for schedule(dynamic, 1) collapse(2)
        for (int mb = 0; mb < mblocks; mb++) {
            for (int ch = 0; ch < nchunks; ch++) {
                const int ic = mb * MM_MC, mc = std::min(MM_MC, M - ic);
                const int j0 = ch * chunk_panels * MM_NR, j1 = std::min(N, j0 + chunk_panels * MM_NR);
                for (int pc = 0; pc < K; pc += MM_KC) {
                    const int kc = std::min(MM_KC, K - pc);
                    const bool first = overwrite && pc == 0;
                    const float* Bblock = Bp + (long)pc * Npad;
                    mm_pack_A(Ap, op, ic, mc, pc, kc);
                    for (int jr = j0; jr < j1; jr += MM_NR) {
                        const int nr = std::min(MM_NR, N - jr);
                        for (int ir = 0; ir < mc; ir += MM_MR)
                            mm_micro_kernel(kc, Ap + (long)ir * kc, Bblock + (long)jr * kc,
                                            op.C + (long)(ic + ir) * op.ldc + jr, op.ldc, std::min(MM_MR, mc - ir), nr, first);
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
        MatmulOperands op{inp, IC, 1, weight, 1, IC, out, OC};
        mm_gemm(op, N, OC, IC, true);
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
            MatmulOperands op{dout, OC, 1, weight, IC, 1, dinp, IC};
            mm_gemm(op, N, IC, OC, false);
        }
        if (dweight) {
            // dweight(OC,IC) += doutᵀ · inp: A(i,k) = dout[k*OC + i], B = inp
            MatmulOperands op{dout, 1, OC, inp, IC, 1, dweight, IC};
            mm_gemm(op, OC, IC, N, false);
        }
    } else {
        matmul_backward_naive(dinp, dweight, dout, inp, weight, N, IC, OC);
    }
}
