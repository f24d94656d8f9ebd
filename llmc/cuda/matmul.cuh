// matmul.cuh: bf16 GEMMs with fp32 accumulation: the linear layer without bias (out = inp · weightᵀ,
// weight (OC, IC) like PyTorch Linear; CPU twin llmc/cpu/matmul.h, same names and argument order plus
// the stream) and the general strided-batched product underneath it (Muon's stacks of same-shape
// matrices now, MoE experts later).
//
//   matmul_forward:   out(N,OC)       = inp(N,IC) · W(OC,IC)ᵀ          bf16 out, overwritten
//   matmul_backward:  dinp(N,IC)     (+)= dout(N,OC) · W(OC,IC)        bf16   (skipped if dinp == nullptr)
//                     dweight(OC,IC) (+)= dout(N,OC)ᵀ · inp(N,IC)      fp32   (skipped if dweight == nullptr)
//                     each output MM_ACCUMULATE (the default, like the CPU op) or MM_OVERWRITE
//   matmul_batched:   D[b] = alpha · op(A[b]) · op(B[b]) + beta · C[b],  b = 0..batch-1, all row-major,
//                     op(A) M x K, op(B) K x N, D and C M x N, bf16 or fp32 D (C of D's type)
//
// Precision (docs/model.md#precision): operands bf16, accumulation and scaling fp32, and each output element is
// rounded once: D = round(alpha · A·B + beta · C). An accumulating output passes C = D, beta = 1, so the
// old value joins the fp32 sum before the single rounding to bf16.
// FP32 build (-DLLMC_FP32, floatX = float): operands and outputs fp32, cuBLASLt types CUDA_R_32F with
// CUBLAS_COMPUTE_32F, which is true fp32 (TF32 tensor cores only with CUBLAS_COMPUTE_32F_FAST_TF32,
// never asked for): the products match the CPU reference to fp32 rounding, as that build promises.
// Overwrite or accumulate: beta = 0 does not read C at all (cuBLASLt's contract, and SIM's), so the
// first contributor to a gradient buffer overwrites it (no memset beforehand, no read of the old
// value: N*IC*2 bytes less traffic for dinp) and the later ones accumulate. Examples: the q, k and v
// projections' input gradients go into one dln buffer: q overwrites, k and v accumulate; a weight
// gradient is overwritten by the first micro-batch and accumulated by the others.
//
// GPU: cuBLASLt, one global handle and a 32 MiB workspace made by matmul_init() (call once at start-up;
// matmul_destroy() at exit frees the handle, the workspace and the plan cache). cuBLAS is column-major;
// a row-major (R, C) matrix is a column-major (C, R) one with leading dimension C, so D = op(A)·op(B)
// (row-major) is computed as Dᵀ = op(B)ᵀ·op(A)ᵀ (column-major): cuBLAS' first operand is B, its second
// A, with m = N, n = M, and every leading dimension tight. The three layer products are:
//   forward:  A = inp,  B = W (trans_b)        M = N,  N = OC, K = IC
//   dinp:     A = dout, B = W                  M = N,  N = IC, K = OC
//   dweight:  A = dout (trans_a), B = inp      M = OC, N = IC, K = N
// Plans: the matmul descriptor, the layouts and the heuristic's algorithm are made once per
// (shape, transposes, output type, batch and strides) and cached (a linear list: a model has a few
// dozen shapes); the first call with a new shape pays for the heuristic query, later calls only launch.
// For a fixed shape, library version and GPU model the choice and the result are the same every run
// (cuBLAS "Results reproducibility").
// Alignment: the heuristic is told that every operand is (only) 16-byte aligned (its default assumes
// 256), so the cached algorithm is valid for any 16-byte-aligned pointers; a pointer, or a batch
// stride, that breaks 16-byte alignment is refused with an error naming the call and the operand
// (in both builds) instead of faulting or silently failing inside cuBLASLt.
// Every cuBLASLt status is checked and an error names the call and the shape.
//
// SIM: the same contract on the CPU: the floatX operands are converted to fp32, the product of each
// batch entry goes through the project's blocked fp32 GEMM (mm_gemm, llmc/cpu/matmul.h) into a
// temporary, then D = round(alpha · acc + beta · C), C untouched when beta == 0. The operands must
// lie inside cudaMalloc'ed blocks (checked) and the work honours streams: with
// LLMC_SIM_STREAMS=async it is queued on its stream like a kernel, so it sees the results of the
// kernels queued before it.
#pragma once
#include <cstdint>
#include <type_traits>
#include "llmc/cuda/common.cuh"

// what a backward output does with its old contents
enum MatmulAcc : int { MM_OVERWRITE = 0, MM_ACCUMULATE = 1 };

namespace llmc {
// cuBLASLt (and SIM) need 16-byte-aligned operands, and batch strides that keep every entry aligned
inline void matmul_check_align(const char* name, const char* what, const void* p, long long stride_elems, size_t elem,
                               int batch) {
    LLMC_CHECK((reinterpret_cast<uintptr_t>(p) & 15u) == 0,
               "%s: operand %s at %p is not 16-byte aligned (cuBLASLt needs 16-byte-aligned operands)", name, what, p);
    LLMC_CHECK(batch <= 1 || ((unsigned long long)stride_elems * elem) % 16 == 0,
               "%s: batch stride of %s (%lld elements of %zu bytes) breaks 16-byte alignment", name, what, stride_elems,
               elem);
}
}  // namespace llmc

#if defined(__CUDACC__)
#include <cublasLt.h>
#include <vector>

namespace llmc {
inline void cublas_check(cublasStatus_t status, const char* what, const char* file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS)
        LLMC_FAIL("cuBLASLt error at %s:%d (%s): %s", file, line, what, cublasLtGetStatusString(status));
}
}  // namespace llmc
#define cublasCheck(expr) ::llmc::cublas_check((expr), #expr, __FILE__, __LINE__)

constexpr size_t MATMUL_WORKSPACE_BYTES = (size_t)32 << 20;  // cuBLAS' recommendation for Hopper
// the cuBLASLt type of the floatX operands
constexpr cudaDataType_t MATMUL_FLOATX_TYPE = LLMC_FLOATX_FP32 ? CUDA_R_32F : CUDA_R_16BF;
inline cublasLtHandle_t g_cublaslt = nullptr;
inline void* g_cublaslt_workspace = nullptr;

// One cached cuBLASLt plan: everything a call needs except the pointers and the scalars.
struct MatmulPlan {
    // key (column-major terms, as cuBLAS sees the call)
    int m, n, k;
    bool trans_a, trans_b;
    cudaDataType_t d_type;
    int batch;
    long long stride_a, stride_b, stride_d;
    // the plan
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a_layout, b_layout, d_layout;  // C has D's layout
    cublasLtMatmulAlgo_t algo;
};
inline std::vector<MatmulPlan> g_matmul_plans;

inline void matmul_init() {
    if (g_cublaslt) return;
    cublasCheck(cublasLtCreate(&g_cublaslt));
    cudaCheck(cudaMalloc(&g_cublaslt_workspace, MATMUL_WORKSPACE_BYTES));
    g_matmul_plans.reserve(64);
}

inline void matmul_destroy() {
    for (MatmulPlan& p : g_matmul_plans) {
        cublasCheck(cublasLtMatrixLayoutDestroy(p.d_layout));
        cublasCheck(cublasLtMatrixLayoutDestroy(p.b_layout));
        cublasCheck(cublasLtMatrixLayoutDestroy(p.a_layout));
        cublasCheck(cublasLtMatmulDescDestroy(p.desc));
    }
    g_matmul_plans.clear();
    if (g_cublaslt_workspace) cudaCheck(cudaFree(g_cublaslt_workspace));
    if (g_cublaslt) cublasCheck(cublasLtDestroy(g_cublaslt));
    g_cublaslt_workspace = nullptr;
    g_cublaslt = nullptr;
}

namespace llmc {
inline void matmul_layout_batch(cublasLtMatrixLayout_t layout, int batch, long long stride) {
    if (batch <= 1) return;
    const int32_t count = batch;
    const int64_t offset = stride;
    cublasCheck(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
    cublasCheck(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &offset,
                                                 sizeof(offset)));
}

// The cached plan for this call, made (descriptor, layouts, heuristic query) on the first call.
inline const MatmulPlan& matmul_plan(const char* name, int m, int n, int k, bool trans_a, bool trans_b,
                                     cudaDataType_t d_type, int batch, long long stride_a, long long stride_b,
                                     long long stride_d) {
    for (const MatmulPlan& p : g_matmul_plans)
        if (p.m == m && p.n == n && p.k == k && p.trans_a == trans_a && p.trans_b == trans_b && p.d_type == d_type &&
            p.batch == batch && p.stride_a == stride_a && p.stride_b == stride_b && p.stride_d == stride_d)
            return p;
    MatmulPlan p{m, n, k, trans_a, trans_b, d_type, batch, stride_a, stride_b, stride_d, nullptr, nullptr, nullptr,
                 nullptr, {}};
    cublasCheck(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    cublasCheck(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    // stored shapes: A is (m,k) or, transposed, (k,m); B is (k,n) or (n,k); leading dim = stored rows
    cublasCheck(cublasLtMatrixLayoutCreate(&p.a_layout, MATMUL_FLOATX_TYPE, trans_a ? k : m, trans_a ? m : k, trans_a ? k : m));
    cublasCheck(cublasLtMatrixLayoutCreate(&p.b_layout, MATMUL_FLOATX_TYPE, trans_b ? n : k, trans_b ? k : n, trans_b ? n : k));
    cublasCheck(cublasLtMatrixLayoutCreate(&p.d_layout, d_type, m, n, m));
    matmul_layout_batch(p.a_layout, batch, stride_a);
    matmul_layout_batch(p.b_layout, batch, stride_b);
    matmul_layout_batch(p.d_layout, batch, stride_d);
    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = MATMUL_WORKSPACE_BYTES;
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    const uint32_t align = 16;  // what the callers guarantee (checked per call); the default assumes 256
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align, sizeof(align)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align, sizeof(align)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align, sizeof(align)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align, sizeof(align)));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    cublasCheck(cublasLtMatmulAlgoGetHeuristic(g_cublaslt, p.desc, p.a_layout, p.b_layout, p.d_layout, p.d_layout, pref,
                                               1, &heur, &found));
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    if (found == 0) {
        cublasLtMatrixLayoutDestroy(p.d_layout);
        cublasLtMatrixLayoutDestroy(p.b_layout);
        cublasLtMatrixLayoutDestroy(p.a_layout);
        cublasLtMatmulDescDestroy(p.desc);
        LLMC_FAIL("%s: cuBLASLt has no algorithm for m=%d n=%d k=%d (transA=%d transB=%d, batch %d)", name, m, n, k,
                  (int)trans_a, (int)trans_b, batch);
    }
    p.algo = heur.algo;
    g_matmul_plans.push_back(p);
    return g_matmul_plans.back();
}
}  // namespace llmc

// D = alpha * op(A)·op(B) + beta * C, column-major (cuBLAS' view), floatX A and B, D and C of type
// d_type (floatX or fp32), fp32 compute; strided batch when batch > 1. `name` identifies the caller.
inline void matmul_cublaslt(const char* name, void* d, const void* c, cudaDataType_t d_type, const floatX* a,
                            bool trans_a, const floatX* b, bool trans_b, int m, int n, int k, float alpha, float beta,
                            int batch, long long stride_a, long long stride_b, long long stride_d, cudaStream_t stream) {
    LLMC_CHECK(g_cublaslt != nullptr, "%s: matmul_init() was not called", name);
    const MatmulPlan& p =
        llmc::matmul_plan(name, m, n, k, trans_a, trans_b, d_type, batch, stride_a, stride_b, stride_d);
    cublasCheck(cublasLtMatmul(g_cublaslt, p.desc, &alpha, a, p.a_layout, b, p.b_layout, &beta, c ? c : d, p.d_layout, d,
                               p.d_layout, &p.algo, g_cublaslt_workspace, MATMUL_WORKSPACE_BYTES, stream));
}

#else  // SIM: CPU implementation with the same rounding points

#include <vector>
#include "llmc/cpu/matmul.h"

inline void matmul_init() {}
inline void matmul_destroy() {}

namespace llmc {
inline void matmul_to_float(std::vector<float>& dst, const floatX* src, size_t n) {
    dst.resize(n);
    for (size_t i = 0; i < n; i++) dst[i] = llmc::to_float(src[i]);
}
// an output element of type TD (float, or bf16 in the bf16 build), rounded once from fp32
template <typename TD> inline void matmul_store(TD* p, size_t i, float v) {
    if constexpr (std::is_same<TD, float>::value) p[i] = v;
    else p[i] = llmc::to_floatX(v);
}

// the operand range [p, p + bytes) must be device memory (one cudaMalloc'ed block), as for cuBLASLt
inline void matmul_check_range(const char* name, const char* what, const void* p, size_t bytes) {
    cudaError_t e = ::llmc::sim::check_device_range(name, what, p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();  // the error is raised here; do not leave it sticky for the next check
        LLMC_FAIL("%s: operand %s [%p, +%zu bytes) is not inside a cudaMalloc'ed block", name, what, p, bytes);
    }
}
}  // namespace llmc

// Row-major D[b] = alpha * op(A[b])·op(B[b]) + beta * C[b] on the CPU (the SIM stand-in for cuBLASLt).
template <typename TD>
inline void matmul_sim(TD* d, const TD* c, const floatX* a, bool trans_a, const floatX* b, bool trans_b, int M, int N,
                       int K, float alpha, float beta, int batch, long long stride_a, long long stride_b,
                       long long stride_d) {
    std::vector<float> fa, fb, acc((size_t)M * N);
    for (int e = 0; e < batch; e++) {
        llmc::matmul_to_float(fa, a + e * stride_a, (size_t)M * K);
        llmc::matmul_to_float(fb, b + e * stride_b, (size_t)K * N);
        // op(A)(i,k) = A[i*K + k] or, transposed (stored K x M), A[k*M + i]; op(B)(k,j) likewise
        MatmulOperands op{fa.data(), trans_a ? 1 : K, trans_a ? M : 1, fb.data(), trans_b ? 1 : N, trans_b ? K : 1,
                          acc.data(), N};
        mm_gemm(op, M, N, K, true);
        TD* de = d + e * stride_d;
        const TD* ce = beta != 0.0f ? c + e * stride_d : nullptr;  // beta == 0: C is not read (may be null)
        for (size_t i = 0; i < acc.size(); i++) {
            float v = alpha * acc[i];
            if (ce) v += beta * llmc::to_float(ce[i]);
            llmc::matmul_store(de, i, v);
        }
    }
}

#endif

// D[b] = alpha · op(A[b])·op(B[b]) + beta · C[b] for b = 0..batch-1 (see the top of the file).
// Row-major with tight leading dimensions: A is stored M x K (K x M if trans_a), B K x N (N x K if
// trans_b), C and D M x N; entry b of X starts at X + b * stride_X (elements), C sharing D's stride.
// D is floatX or float, C of the same type; C == D accumulates in place; beta == 0 never reads C (it
// may be nullptr). Every pointer 16-byte aligned; with batch > 1 every stride keeps that alignment,
// stride_d >= M*N (entries of D do not overlap; A and B may be shared with stride 0).
template <typename TD>
inline void matmul_batched(const char* name, TD* d, const TD* c, const floatX* a, bool trans_a, const floatX* b,
                           bool trans_b, int M, int N, int K, float alpha, float beta, int batch, long long stride_a,
                           long long stride_b, long long stride_d, cudaStream_t stream) {
    static_assert(std::is_same<TD, floatX>::value || std::is_same<TD, float>::value,
                  "matmul_batched: D and C are floatX or fp32");
    LLMC_CHECK(M > 0 && N > 0 && K > 0 && batch >= 1, "%s: bad shape M=%d N=%d K=%d batch=%d", name, M, N, K, batch);
    LLMC_CHECK(batch == 1 || (stride_a >= 0 && stride_b >= 0 && stride_d >= (long long)M * N),
               "%s: bad batch strides a=%lld b=%lld d=%lld for M=%d N=%d (D entries must not overlap)", name, stride_a,
               stride_b, stride_d, M, N);
    LLMC_CHECK(d != nullptr && a != nullptr && b != nullptr && (beta == 0.0f || c != nullptr),
               "%s: null operand (D %p, A %p, B %p, C %p with beta %g)", name, (void*)d, (const void*)a, (const void*)b,
               (const void*)c, beta);
    llmc::matmul_check_align(name, "A", a, stride_a, sizeof(floatX), batch);
    llmc::matmul_check_align(name, "B", b, stride_b, sizeof(floatX), batch);
    llmc::matmul_check_align(name, "D", d, stride_d, sizeof(TD), batch);
    if (beta != 0.0f) llmc::matmul_check_align(name, "C", c, stride_d, sizeof(TD), batch);
    if (batch == 1) stride_a = stride_b = stride_d = 0;  // one entry: the strides mean nothing (one plan)
#if defined(__CUDACC__)
    // column-major: Dᵀ (N x M) = op(B)ᵀ · op(A)ᵀ, cuBLAS' first operand B, its second A
    const cudaDataType_t d_type = std::is_same<TD, float>::value ? CUDA_R_32F : MATMUL_FLOATX_TYPE;
    matmul_cublaslt(name, d, beta != 0.0f ? c : d, d_type, b, trans_b, a, trans_a, N, M, K, alpha, beta, batch,
                    stride_b, stride_a, stride_d, stream);
#else
    // every operand inside device memory (cuBLASLt would fault on a bad pointer)
    const size_t last = (size_t)(batch - 1);
    llmc::matmul_check_range(name, "A", a, (last * stride_a + (size_t)M * K) * sizeof(floatX));
    llmc::matmul_check_range(name, "B", b, (last * stride_b + (size_t)K * N) * sizeof(floatX));
    llmc::matmul_check_range(name, "D", d, (last * stride_d + (size_t)M * N) * sizeof(TD));
    if (beta != 0.0f) llmc::matmul_check_range(name, "C", c, (last * stride_d + (size_t)M * N) * sizeof(TD));
    auto work = [=] { matmul_sim<TD>(d, c, a, trans_a, b, trans_b, M, N, K, alpha, beta, batch, stride_a, stride_b, stride_d); };
    if (llmc::sim::deferred(stream)) {
        llmc::sim::enqueue(stream, work);  // LLMC_SIM_STREAMS=async: runs in stream order, like a kernel
    } else {
        llmc::sim::drain_blocking();  // default-stream work waits for the blocking streams' queued work
        work();
    }
#endif
}

// out(N,OC) = inp(N,IC) · weight(OC,IC)ᵀ   (overwrite)
inline void matmul_forward(floatX* out, const floatX* inp, const floatX* weight, int N, int IC, int OC,
                           cudaStream_t stream) {
    LLMC_CHECK(N >= 0 && IC > 0 && OC > 0, "matmul_forward: bad shape N=%d IC=%d OC=%d", N, IC, OC);
    if (N == 0) return;
    matmul_batched<floatX>("matmul_forward", out, nullptr, inp, false, weight, true, N, OC, IC, 1.0f, 0.0f, 1, 0, 0, 0,
                           stream);
}

// dinp(N,IC) (+)= dout · weight (bf16), dweight(OC,IC) (+)= doutᵀ · inp (fp32); either may be nullptr.
// dinp_mode / dweight_mode: MM_ACCUMULATE adds to the old contents, MM_OVERWRITE replaces them
// without reading them (with N == 0 an overwritten dweight becomes zero: the empty sum).
inline void matmul_backward(floatX* dinp, float* dweight, const floatX* dout, const floatX* inp, const floatX* weight,
                            int N, int IC, int OC, cudaStream_t stream, MatmulAcc dinp_mode = MM_ACCUMULATE,
                            MatmulAcc dweight_mode = MM_ACCUMULATE) {
    LLMC_CHECK(N >= 0 && IC > 0 && OC > 0, "matmul_backward: bad shape N=%d IC=%d OC=%d", N, IC, OC);
    if (N == 0) {
        if (dweight && dweight_mode == MM_OVERWRITE)
            cudaCheck(cudaMemsetAsync(dweight, 0, (size_t)OC * IC * sizeof(float), stream));
        return;
    }
    if (dinp)
        matmul_batched<floatX>("matmul_backward dinp", dinp, dinp, dout, false, weight, false, N, IC, OC, 1.0f,
                               dinp_mode == MM_ACCUMULATE ? 1.0f : 0.0f, 1, 0, 0, 0, stream);
    if (dweight)
        matmul_batched<float>("matmul_backward dweight", dweight, dweight, dout, true, inp, false, OC, IC, N, 1.0f,
                              dweight_mode == MM_ACCUMULATE ? 1.0f : 0.0f, 1, 0, 0, 0, stream);
}
