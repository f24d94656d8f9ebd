// matmul.cuh: the linear layer without bias, out = inp · weightᵀ, weight (OC, IC) like PyTorch
// Linear (CPU twin: llmc/cpu/matmul.h, same names and argument order plus the stream).
//
//   forward:  out(N,OC)       = inp(N,IC) · W(OC,IC)ᵀ            bf16 out (overwrite)
//   backward: dinp(N,IC)     += dout(N,OC) · W(OC,IC)            bf16, ACCUMULATES like the CPU op
//                                                                (skipped if dinp == nullptr)
//             dweight(OC,IC) += dout(N,OC)ᵀ · inp(N,IC)          fp32, accumulates (param grad)
//                                                                (skipped if dweight == nullptr)
// Operands bf16, accumulation and scaling fp32 (docs/model.md#precision). Each output element is rounded once:
// D = round(alpha * A·B + beta * C) with beta = 1 for the accumulating outputs, so the existing
// dinp value is added in fp32 before the single rounding to bf16. Accumulating dinp (instead of
// overwriting) mirrors the CPU op and lets the q/k/v projections (and the MLP/attention inputs) sum
// their input gradients without extra add kernels; the caller zeroes a dinp buffer before its first
// contribution. Cost: cuBLASLt reads C, one extra N*IC*2-byte read per call.
//
// GPU: cuBLASLt, one global handle and a 32 MiB workspace made by matmul_init() (call once at
// start-up; matmul_destroy() at exit). cuBLAS is column-major; a row-major (R, C) matrix is a
// column-major (C, R) one with leading dimension C, so every call below is the row-major formula
// transposed, with all leading dimensions tight:
//   forward:  outᵀ (OC x N) = op(A)·op(B), A = W    stored IC x OC, op T;  B = inp  stored IC x N, op N
//   dinp:     dinpᵀ(IC x N) = op(A)·op(B), A = W    stored IC x OC, op N;  B = dout stored OC x N, op N
//   dweight:  dWᵀ  (IC x OC)= op(A)·op(B), A = inp  stored IC x N,  op N;  B = dout stored OC x N, op T
// The algorithm comes from cuBLASLt's heuristic for the shape; for a fixed shape, library version and
// GPU model the choice and the result are the same every run (cuBLAS "Results reproducibility").
// Every cuBLASLt status is checked and an error names the call and the shape.
//
// SIM: the same contract on the CPU: bf16 operands converted to fp32, the fp32 CPU reference op
// (llmc/cpu/matmul.h) accumulates, and the bf16 outputs are rounded once at the end.
#pragma once
#include "llmc/cuda/common.cuh"

#if defined(__CUDACC__)
#include <cublasLt.h>

namespace llmc {
inline void cublas_check(cublasStatus_t status, const char* what, const char* file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS)
        LLMC_FAIL("cuBLASLt error at %s:%d (%s): %s", file, line, what, cublasLtGetStatusString(status));
}
}  // namespace llmc
#define cublasCheck(expr) ::llmc::cublas_check((expr), #expr, __FILE__, __LINE__)

constexpr size_t MATMUL_WORKSPACE_BYTES = (size_t)32 << 20;  // cuBLAS' recommendation for Hopper
inline cublasLtHandle_t g_cublaslt = nullptr;
inline void* g_cublaslt_workspace = nullptr;

inline void matmul_init() {
    if (g_cublaslt) return;
    cublasCheck(cublasLtCreate(&g_cublaslt));
    cudaCheck(cudaMalloc(&g_cublaslt_workspace, MATMUL_WORKSPACE_BYTES));
}

inline void matmul_destroy() {
    if (g_cublaslt_workspace) cudaCheck(cudaFree(g_cublaslt_workspace));
    if (g_cublaslt) cublasCheck(cublasLtDestroy(g_cublaslt));
    g_cublaslt_workspace = nullptr;
    g_cublaslt = nullptr;
}

// D(m,n) = op(A)(m,k) · op(B)(k,n) + beta * D, column-major, bf16 A and B, D of type d_type
// (bf16 or fp32), fp32 compute. `name` identifies the caller in error messages.
inline void matmul_cublaslt(const char* name, void* d, cudaDataType_t d_type, const floatX* a, bool trans_a,
                            const floatX* b, bool trans_b, int m, int n, int k, float beta, cudaStream_t stream) {
    LLMC_CHECK(g_cublaslt != nullptr, "%s: matmul_init() was not called", name);
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a_layout, b_layout, d_layout;
    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    // stored shapes: A is (m,k) or, transposed, (k,m); B is (k,n) or (n,k); leading dim = stored rows
    cublasCheck(cublasLtMatrixLayoutCreate(&a_layout, CUDA_R_16BF, trans_a ? k : m, trans_a ? m : k, trans_a ? k : m));
    cublasCheck(cublasLtMatrixLayoutCreate(&b_layout, CUDA_R_16BF, trans_b ? n : k, trans_b ? k : n, trans_b ? n : k));
    cublasCheck(cublasLtMatrixLayoutCreate(&d_layout, d_type, m, n, m));
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = MATMUL_WORKSPACE_BYTES;
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    cublasCheck(cublasLtMatmulAlgoGetHeuristic(g_cublaslt, desc, a_layout, b_layout, d_layout, d_layout, pref, 1,
                                               &heur, &found));
    if (found == 0)
        LLMC_FAIL("%s: cuBLASLt has no algorithm for m=%d n=%d k=%d (transA=%d transB=%d)", name, m, n, k, (int)trans_a,
                  (int)trans_b);
    const float alpha = 1.0f;
    cublasCheck(cublasLtMatmul(g_cublaslt, desc, &alpha, a, a_layout, b, b_layout, &beta, d, d_layout, d, d_layout,
                               &heur.algo, g_cublaslt_workspace, MATMUL_WORKSPACE_BYTES, stream));
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    cublasCheck(cublasLtMatrixLayoutDestroy(d_layout));
    cublasCheck(cublasLtMatrixLayoutDestroy(b_layout));
    cublasCheck(cublasLtMatrixLayoutDestroy(a_layout));
    cublasCheck(cublasLtMatmulDescDestroy(desc));
}

// out(N,OC) = inp(N,IC) · weight(OC,IC)ᵀ   (overwrite)
inline void matmul_forward(floatX* out, const floatX* inp, const floatX* weight, int N, int IC, int OC,
                           cudaStream_t stream) {
    LLMC_CHECK(N >= 0 && IC > 0 && OC > 0, "matmul_forward: bad shape N=%d IC=%d OC=%d", N, IC, OC);
    if (N == 0) return;
    matmul_cublaslt("matmul_forward", out, CUDA_R_16BF, weight, true, inp, false, OC, N, IC, 0.0f, stream);
}

// dinp(N,IC) += dout · weight (bf16), dweight(OC,IC) += doutᵀ · inp (fp32); either may be nullptr
inline void matmul_backward(floatX* dinp, float* dweight, const floatX* dout, const floatX* inp, const floatX* weight,
                            int N, int IC, int OC, cudaStream_t stream) {
    LLMC_CHECK(N >= 0 && IC > 0 && OC > 0, "matmul_backward: bad shape N=%d IC=%d OC=%d", N, IC, OC);
    if (N == 0) return;
    if (dinp) matmul_cublaslt("matmul_backward dinp", dinp, CUDA_R_16BF, weight, false, dout, false, IC, N, OC, 1.0f, stream);
    if (dweight) matmul_cublaslt("matmul_backward dweight", dweight, CUDA_R_32F, inp, false, dout, true, IC, OC, N, 1.0f, stream);
}

#else  // SIM: CPU implementation with the same rounding points

#include <vector>
#include "llmc/cpu/matmul.h"

inline void matmul_init() {}
inline void matmul_destroy() {}

namespace llmc {
inline void bf16_to_float(std::vector<float>& dst, const floatX* src, size_t n) {
    dst.resize(n);
    for (size_t i = 0; i < n; i++) dst[i] = __bfloat162float(src[i]);
}
}  // namespace llmc

inline void matmul_forward(floatX* out, const floatX* inp, const floatX* weight, int N, int IC, int OC,
                           cudaStream_t stream) {
    LLMC_CHECK(N >= 0 && IC > 0 && OC > 0, "matmul_forward: bad shape N=%d IC=%d OC=%d", N, IC, OC);
    if (N == 0) return;
    std::vector<float> x, w, y((size_t)N * OC);
    llmc::bf16_to_float(x, inp, (size_t)N * IC);
    llmc::bf16_to_float(w, weight, (size_t)OC * IC);
    matmul_forward<float>(y.data(), x.data(), w.data(), N, IC, OC);
    for (size_t i = 0; i < y.size(); i++) out[i] = __float2bfloat16(y[i]);
}

inline void matmul_backward(floatX* dinp, float* dweight, const floatX* dout, const floatX* inp, const floatX* weight,
                            int N, int IC, int OC, cudaStream_t stream) {
    LLMC_CHECK(N >= 0 && IC > 0 && OC > 0, "matmul_backward: bad shape N=%d IC=%d OC=%d", N, IC, OC);
    if (N == 0) return;
    std::vector<float> g, x, w, dx;
    llmc::bf16_to_float(g, dout, (size_t)N * OC);
    if (dinp) {
        llmc::bf16_to_float(w, weight, (size_t)OC * IC);
        llmc::bf16_to_float(dx, dinp, (size_t)N * IC);  // the existing value joins the fp32 sum
        matmul_backward<float>(dx.data(), nullptr, g.data(), nullptr, w.data(), N, IC, OC);
        for (size_t i = 0; i < dx.size(); i++) dinp[i] = __float2bfloat16(dx[i]);
    }
    if (dweight) {
        llmc::bf16_to_float(x, inp, (size_t)N * IC);
        matmul_backward<float>(nullptr, dweight, g.data(), x.data(), nullptr, N, IC, OC);
    }
}

#endif
