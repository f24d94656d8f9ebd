// attention_cudnn.cuh: the attention of llmc/cuda/attention.cuh (same semantics, layouts, argument
// order and lse convention; docs/model.md#attention) through cuDNN's fused flash attention. It is a
// comparison for our kernels (dev/cuda/bench_attention.cu times both) and a fallback for shapes they
// refuse (head dims other than 64 and 128), never a requirement: only the USE_CUDNN=1 build compiles
// it (nvcc with -DLLMC_CUDNN, linked with -lcudnn; README.md#cudnn). The default build and SIM never
// include it.
//
//   q, out: (B, T, H, D) bf16; k, v: (B, T, Hkv, D) bf16; lse: (B, H, T) fp32; causal, GQA (query
//   head h reads kv head h / (H/Hkv)), query i sees key j iff j <= i and i - j <= window.
//   attention_forward_cudnn / attention_backward_cudnn return true when cuDNN ran, false when the
//   installed cuDNN has no engine for the shape (reported once per shape on stderr): the caller then
//   uses attention_forward / attention_backward. Bad arguments are an error, as in attention.cuh.
//
// API: the C backend graph API of the installed cuDNN 9 (cudnn_graph.h: descriptors, attributes,
// heuristics, execution plans), no cudnn-frontend headers. cuDNN 9.13+ also has a one-descriptor SDPA
// operation, but before 9.21 it cannot take a mask, so the graph here is the one cuDNN's fused
// attention engine has recognized since 9.x, the node-by-node lowering of cudnn-frontend's composite
// SDPA (matmul, pointwise, reduction and reshape operations; read there for the pattern, written
// here from the backend declarations). Tensors are cuDNN's (b, h, s, d) dims over our memory:
//   Q, O, dO, dQ   dims (B, H, T, D)   strides (T H D, D, H D, 1)
//   Kᵀ, Vᵀ         dims (B, Hkv, D, T) strides (T Hkv D, D, 1, Hkv D)   (K, V read transposed)
//   V, dK, dV      dims (B, Hkv, T, D) strides (T Hkv D, D, Hkv D, 1)
//   Stats (= lse)  dims (B, H, T, 1)   strides (H T, T, 1, 1)
// GQA is the engine's: batched matmuls whose head dims are H and Hkv broadcast the kv head over its
// group, and the dK, dV of the H query heads are summed into the Hkv heads by a reduction node.
//
// Forward graph: S = Q Kᵀ (fp32), S *= scale (by-value scalar), causal mask (row index >= column
// index, else the lowest float), window mask, softmax as max / sub / exp / sum / div with
// Stats = max + log(sum) written out, P (bf16) V -> O.
// Masks (the same subgraph in both directions): GEN_INDEX of the row (axis 2) and column (axis 3)
// of the score tensor, CMP_GE(row, col) -> BINARY_SELECT(S, lowest, keep) for causality; for a
// window, cuDNN's "left bound" (its sliding window): keep iff col + left > row, i.e. i - j < left,
// so left = window + 1 (a window 0 keeps the diagonal only), and a window >= T-1 adds no left bound.
// Stats is natural-log log-sum-exp of the scaled scores, exactly our lse: no conversion, and each
// path's backward can take the other's lse.
// Backward graph: softmax_sum = rowsum(dO * O) (fp32, non-virtual), S recomputed as above minus
// Stats, masked, E = exp(S) (= P); dV = Eᵀ dO (Eᵀ a bf16 reshape: same memory, transposed strides),
// dP = dO Vᵀ, dS = E (dP - softmax_sum) scale, dK = dSᵀ Q, dQ = dS K into an fp32 accumulator
// (non-virtual) copied to bf16 dQ. softmax_sum and the dQ accumulator are tensors we allocate with
// the plan; before cuDNN 9.6 the accumulator had to be zeroed by the caller (done here then).
//
// Plans: the operation graph, the heuristic's engine (mode A, then FALLBACK; the first config that
// finalizes), the workspace and the backward's buffers are made once per (direction, B, T, H, Hkv, D,
// effective window) and cached, like matmul.cuh's cuBLASLt plans; the first call with a new shape
// pays for the build (cuDNN compiles the fused kernel at run time: up to seconds), later calls only
// make the variant pack (the pointers) and execute. attention_cudnn_destroy() frees everything.
//
// Versions (cudnnGetVersion() at run time): the backward with T % 128 != 0 needs cuDNN > 9.15.0
// (older ones need an extra padding mask, not built here); 9.10.0 and 9.10.1 have known SDPA bugs;
// both are reported as "no engine". Determinism: cuDNN's dQ accumulates with atomics, so its dq may
// differ in the last bits between runs (ours is bitwise deterministic). Not thread-safe (one handle,
// one cache), like matmul.cuh.
// Details that follow cudnn-frontend rather than necessity, since the engine matches a pattern:
// virtual tensors' types (fp32 unless a product operand: P, Pᵀ, dSᵀ and the GQA per-head dK, dV are
// bf16; the reshaped K is fp32-typed, as the frontend leaves it), the by-value scalars (lowest float
// for causality, -2^30 outside the window, 1 for the softmax_sum product), alpha1 = alpha2 = 1 on
// every pointwise operation. The scalars are 4-d (1,1,1,1): cuDNN refuses pointwise operands of
// different ranks.
// Verified without a GPU (dev/cuda/cudnn_graph_check.cu, cuDNN 9.19, an H100 described to the
// heuristics): every graph of the tests and the benchmark gets an engine that passes cuDNN's support
// checks and compiles its kernel. Unmeasured: nothing here has run on a GPU yet; the test
// (build/gpu/test_attention_cudnn) and the benchmark say what it computes and how fast.
#pragma once
#if !defined(__CUDACC__) || !defined(LLMC_CUDNN)
#error "llmc/cuda/attention_cudnn.cuh is for the USE_CUDNN=1 build only: nvcc with -DLLMC_CUDNN, linked with -lcudnn (README.md#cudnn)"
#endif
#include <cudnn_graph.h>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>
#include "llmc/cuda/attention.cuh"

namespace llmc {
namespace cudnn_att {

// A backend call that failed while a graph or plan was being built: the shape is unsupported (the
// entry points return false). While executing, failures are errors (llmc::Error).
struct BuildFailure {
    std::string what;
};

inline std::string status_text(cudnnStatus_t s) {
    char last[1024] = {0};
    cudnnGetLastErrorString(last, sizeof last);  // cuDNN's own account of the last failure, often the useful part
    std::string text = cudnnGetErrorString(s);
    if (last[0]) text += strfmt(" (%s)", last);
    return text;
}

inline void build_check(cudnnStatus_t s, const char* what) {
    if (s != CUDNN_STATUS_SUCCESS) throw BuildFailure{strfmt("%s: %s", what, status_text(s).c_str())};
}

inline void run_check(cudnnStatus_t s, const char* what) {
    if (s != CUDNN_STATUS_SUCCESS) LLMC_FAIL("attention_cudnn: %s failed: %s", what, status_text(s).c_str());
}

// owner of one backend descriptor
class Desc {
   public:
    explicit Desc(cudnnBackendDescriptorType_t type) { build_check(cudnnBackendCreateDescriptor(type, &d_), "cudnnBackendCreateDescriptor"); }
    ~Desc() {
        if (d_) cudnnBackendDestroyDescriptor(d_);
    }
    Desc(const Desc&) = delete;
    Desc& operator=(const Desc&) = delete;
    cudnnBackendDescriptor_t get() const { return d_; }

   private:
    cudnnBackendDescriptor_t d_ = nullptr;
};

inline void set_attr(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count,
                     const void* values, const char* what) {
    build_check(cudnnBackendSetAttribute(d, name, type, count, values), what);
}
inline void set_desc(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendDescriptor_t value, const char* what) {
    set_attr(d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value, what);
}
inline void finalize(cudnnBackendDescriptor_t d, const char* what) { build_check(cudnnBackendFinalize(d), what); }

// Unique ids of the tensors a variant pack binds (the virtual ones count up from kFirstVirtualUid).
enum Uid : int64_t {
    UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_DO, UID_DQ, UID_DK, UID_DV,  // our tensors
    UID_SOFTMAX_SUM, UID_DQ_ACCUM,                                               // the plan's buffers
    UID_SCALE, UID_NEG_INF, UID_WINDOW, UID_NEG_BIG, UID_ONE                      // by-value scalars
};
constexpr int64_t kFirstVirtualUid = 100;

typedef std::vector<int64_t> Dims;

// One operation graph under construction: every descriptor it makes stays alive (and is destroyed
// in reverse order) with the graph, since operations refer to tensors and plans to the graph.
struct Graph {
    std::vector<std::unique_ptr<Desc>> keep;
    std::vector<cudnnBackendDescriptor_t> ops;
    int64_t next_uid = kFirstVirtualUid;

    Graph() = default;
    Graph(const Graph&) = delete;
    Graph& operator=(const Graph&) = delete;
    ~Graph() { clear(); }
    void clear() {
        while (!keep.empty()) keep.pop_back();
        ops.clear();
    }

    cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t type) {
        keep.push_back(std::make_unique<Desc>(type));
        return keep.back()->get();
    }

    // Every tensor 16-byte aligned (what the entry points check), as cudnn-frontend declares them.
    cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t type, const Dims& dims, const Dims& strides, bool is_virtual,
                                    bool by_value = false) {
        cudnnBackendDescriptor_t t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
        const int64_t align = 16;
        set_attr(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, "tensor data type");
        set_attr(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, (int64_t)dims.size(), dims.data(), "tensor dimensions");
        set_attr(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, (int64_t)strides.size(), strides.data(), "tensor strides");
        set_attr(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor uid");
        set_attr(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, "tensor alignment");
        if (is_virtual) {
            const bool v = true;
            set_attr(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &v, "tensor is_virtual");
        }
        if (by_value) {
            const bool v = true;
            set_attr(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &v, "tensor is_by_value");
        }
        finalize(t, "tensor");
        return t;
    }
    cudnnBackendDescriptor_t virt(cudnnDataType_t type, const Dims& dims, const Dims& strides) {
        return tensor(next_uid++, type, dims, strides, true);
    }
    // a host scalar passed by value at execution (the variant pack points at host memory); 4-d like
    // every other tensor of the graph (a pointwise operation needs all its operands of one rank)
    cudnnBackendDescriptor_t scalar(int64_t uid, cudnnDataType_t type) { return tensor(uid, type, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true); }

    // y = mode(x [, b [, t]]); math precision `prec`; axis only for GEN_INDEX
    void pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t prec, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                   cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y, int64_t axis = -1) {
        cudnnBackendDescriptor_t pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
        set_attr(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
        set_attr(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, "pointwise math precision");
        if (mode == CUDNN_POINTWISE_GEN_INDEX) set_attr(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
        finalize(pw, "pointwise descriptor");
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw, "pointwise op descriptor");
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x, "pointwise x");
        if (b) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b, "pointwise b");
        if (t) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t, "pointwise t");
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y, "pointwise y");
        const float one = 1.0f;
        set_attr(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one, "pointwise alpha1");
        set_attr(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one, "pointwise alpha2");
        finalize(op, "pointwise operation");
        ops.push_back(op);
    }
    // c = a b over the last two dims, batched over the others (fp32 compute)
    void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c) {
        cudnnBackendDescriptor_t mm = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
        const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
        set_attr(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, "matmul compute type");
        finalize(mm, "matmul descriptor");
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a, "matmul a");
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b, "matmul b");
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c, "matmul c");
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, mm, "matmul op descriptor");
        finalize(op, "matmul operation");
        ops.push_back(op);
    }
    // y = reduce(x) over the dims where y is smaller (fp32 compute)
    void reduction(cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
        cudnnBackendDescriptor_t rd = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
        const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
        set_attr(rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode, "reduction operator");
        set_attr(rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, "reduction compute type");
        finalize(rd, "reduction descriptor");
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x, "reduction x");
        set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y, "reduction y");
        set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, rd, "reduction op descriptor");
        finalize(op, "reduction operation");
        ops.push_back(op);
    }
    // y = x seen through y's dims and strides (here: a transpose of the same memory)
    void reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x, "reshape x");
        set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y, "reshape y");
        finalize(op, "reshape operation");
        ops.push_back(op);
    }
};

// One cached plan: its key, the graph and execution plan, and the host and device memory a call binds.
struct Plan {
    bool backward = false;
    int B = 0, T = 0, H = 0, Hkv = 0, D = 0, w = 0;  // w = min(window, T-1)
    bool supported = false;
    Graph graph;
    cudnnBackendDescriptor_t exec = nullptr;  // the execution plan (owned by graph.keep)
    void* workspace = nullptr;                // cuDNN's workspace, then (backward) softmax_sum and the dQ accumulator
    int64_t workspace_bytes = 0;
    float* softmax_sum = nullptr;
    float* dq_accum = nullptr;
    size_t dq_accum_bytes = 0;
    // the by-value scalars: host memory the variant pack points at, and which of them the graph uses
    float scale = 0.0f, neg_inf = 0.0f, window_len = 0.0f, neg_big = 0.0f, one = 1.0f;
    std::vector<std::pair<int64_t, void*>> scalars;

    ~Plan() {
        graph.clear();
        if (workspace) cudaFree(workspace);
    }
};

inline cudnnHandle_t g_handle = nullptr;
inline std::vector<std::unique_ptr<Plan>> g_plans;
inline int g_plans_built = 0;  // graphs built and planned (not cache hits), for the tests

inline size_t runtime_version() { return cudnnGetVersion(); }

// dims / strides of one problem in cuDNN's (b, h, s, d) terms
struct Layout {
    Dims q_dim, q_str, kt_dim, kt_str, kv_dim, kv_str, st_dim, st_str, s_dim, s_str, full_dim, full_str;
    Layout(int B, int T, int H, int Hkv, int D) {
        const int64_t b = B, s = T, h = H, hk = Hkv, d = D;
        q_dim = {b, h, s, d};
        q_str = {s * h * d, d, h * d, 1};
        kt_dim = {b, hk, d, s};
        kt_str = {s * hk * d, d, 1, hk * d};
        kv_dim = {b, hk, s, d};
        kv_str = {s * hk * d, d, hk * d, 1};
        st_dim = {b, h, s, 1};
        st_str = {h * s, s, 1, 1};
        s_dim = {b, h, s, s};
        s_str = {h * s * s, s * s, s, 1};
        full_dim = {b, h, s, d};         // packed (b, h, s, d): the GQA per-query-head dK, dV and the dQ accumulator
        full_str = {h * s * d, s * d, d, 1};
    }
};

inline void add_scalar(Plan& p, Graph& g, int64_t uid, float* value, cudnnBackendDescriptor_t* out) {
    *out = g.scalar(uid, CUDNN_DATA_FLOAT);
    p.scalars.push_back({uid, value});
}

// the causal (and window) mask of scores x (dims `dim`, strides `str`): cudnn-frontend's composite
// diagonal band, right bound 0 and, for a window, left bound w + 1
inline cudnnBackendDescriptor_t band_mask(Plan& p, Graph& g, cudnnBackendDescriptor_t x, const Dims& dim, const Dims& str) {
    cudnnBackendDescriptor_t row = g.virt(CUDNN_DATA_INT32, dim, str), col = g.virt(CUDNN_DATA_INT32, dim, str);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, x, nullptr, nullptr, row, 2);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, x, nullptr, nullptr, col, 3);
    cudnnBackendDescriptor_t keep = g.virt(CUDNN_DATA_BOOLEAN, dim, str);
    g.pointwise(CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, nullptr, keep);
    cudnnBackendDescriptor_t neg_inf;
    add_scalar(p, g, UID_NEG_INF, &p.neg_inf, &neg_inf);
    cudnnBackendDescriptor_t y = g.virt(CUDNN_DATA_FLOAT, dim, str);
    g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, x, neg_inf, keep, y);
    if (p.w >= p.T - 1) return y;
    // window: keep iff col + (w + 1) > row
    cudnnBackendDescriptor_t row2 = g.virt(CUDNN_DATA_FLOAT, dim, str), col2 = g.virt(CUDNN_DATA_FLOAT, dim, str);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, y, nullptr, nullptr, row2, 2);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, y, nullptr, nullptr, col2, 3);
    cudnnBackendDescriptor_t wlen;
    add_scalar(p, g, UID_WINDOW, &p.window_len, &wlen);
    cudnnBackendDescriptor_t col3 = g.virt(CUDNN_DATA_FLOAT, dim, str);
    g.pointwise(CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, col2, wlen, nullptr, col3);
    cudnnBackendDescriptor_t keep2 = g.virt(CUDNN_DATA_BOOLEAN, dim, str);
    g.pointwise(CUDNN_POINTWISE_CMP_GT, CUDNN_DATA_BOOLEAN, col3, row2, nullptr, keep2);
    cudnnBackendDescriptor_t neg_big;
    add_scalar(p, g, UID_NEG_BIG, &p.neg_big, &neg_big);
    cudnnBackendDescriptor_t y2 = g.virt(CUDNN_DATA_FLOAT, dim, str);
    g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, y, neg_big, keep2, y2);
    return y2;
}

inline void build_forward(Plan& p) {
    Graph& g = p.graph;
    const Layout L(p.B, p.T, p.H, p.Hkv, p.D);
    cudnnBackendDescriptor_t Q = g.tensor(UID_Q, CUDNN_DATA_BFLOAT16, L.q_dim, L.q_str, false);
    cudnnBackendDescriptor_t KT = g.tensor(UID_K, CUDNN_DATA_BFLOAT16, L.kt_dim, L.kt_str, false);
    cudnnBackendDescriptor_t V = g.tensor(UID_V, CUDNN_DATA_BFLOAT16, L.kv_dim, L.kv_str, false);
    cudnnBackendDescriptor_t O = g.tensor(UID_O, CUDNN_DATA_BFLOAT16, L.q_dim, L.q_str, false);
    cudnnBackendDescriptor_t STATS = g.tensor(UID_STATS, CUDNN_DATA_FLOAT, L.st_dim, L.st_str, false);
    cudnnBackendDescriptor_t scale;
    add_scalar(p, g, UID_SCALE, &p.scale, &scale);

    cudnnBackendDescriptor_t S = g.virt(CUDNN_DATA_FLOAT, L.s_dim, L.s_str);
    g.matmul(Q, KT, S);
    cudnnBackendDescriptor_t S1 = g.virt(CUDNN_DATA_FLOAT, L.s_dim, L.s_str);
    g.pointwise(CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, S, scale, nullptr, S1);
    cudnnBackendDescriptor_t Sm = band_mask(p, g, S1, L.s_dim, L.s_str);
    // softmax, with Stats = max + log(sum) out
    cudnnBackendDescriptor_t mx = g.virt(CUDNN_DATA_FLOAT, L.st_dim, L.st_str);
    g.reduction(CUDNN_REDUCE_TENSOR_MAX, Sm, mx);
    cudnnBackendDescriptor_t sub = g.virt(CUDNN_DATA_FLOAT, L.s_dim, L.s_str);
    g.pointwise(CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, Sm, mx, nullptr, sub);
    cudnnBackendDescriptor_t e = g.virt(CUDNN_DATA_FLOAT, L.s_dim, L.s_str);
    g.pointwise(CUDNN_POINTWISE_EXP, CUDNN_DATA_FLOAT, sub, nullptr, nullptr, e);
    cudnnBackendDescriptor_t sum = g.virt(CUDNN_DATA_FLOAT, L.st_dim, L.st_str);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, sum);
    cudnnBackendDescriptor_t lg = g.virt(CUDNN_DATA_FLOAT, L.st_dim, L.st_str);
    g.pointwise(CUDNN_POINTWISE_LOG, CUDNN_DATA_FLOAT, sum, nullptr, nullptr, lg);
    g.pointwise(CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, mx, lg, nullptr, STATS);
    cudnnBackendDescriptor_t P = g.virt(CUDNN_DATA_BFLOAT16, L.s_dim, L.s_str);  // bf16: the PV product's operand
    g.pointwise(CUDNN_POINTWISE_DIV, CUDNN_DATA_FLOAT, e, sum, nullptr, P);
    g.matmul(P, V, O);
}

inline void build_backward(Plan& p) {
    Graph& g = p.graph;
    const Layout L(p.B, p.T, p.H, p.Hkv, p.D);
    const int64_t s = p.T, h = p.H, d = p.D;
    cudnnBackendDescriptor_t Q = g.tensor(UID_Q, CUDNN_DATA_BFLOAT16, L.q_dim, L.q_str, false);
    cudnnBackendDescriptor_t KT = g.tensor(UID_K, CUDNN_DATA_BFLOAT16, L.kt_dim, L.kt_str, false);
    cudnnBackendDescriptor_t VT = g.tensor(UID_V, CUDNN_DATA_BFLOAT16, L.kt_dim, L.kt_str, false);
    cudnnBackendDescriptor_t O = g.tensor(UID_O, CUDNN_DATA_BFLOAT16, L.q_dim, L.q_str, false);
    cudnnBackendDescriptor_t dO = g.tensor(UID_DO, CUDNN_DATA_BFLOAT16, L.q_dim, L.q_str, false);
    cudnnBackendDescriptor_t STATS = g.tensor(UID_STATS, CUDNN_DATA_FLOAT, L.st_dim, L.st_str, false);
    cudnnBackendDescriptor_t dQ = g.tensor(UID_DQ, CUDNN_DATA_BFLOAT16, L.q_dim, L.q_str, false);
    cudnnBackendDescriptor_t dK = g.tensor(UID_DK, CUDNN_DATA_BFLOAT16, L.kv_dim, L.kv_str, false);
    cudnnBackendDescriptor_t dV = g.tensor(UID_DV, CUDNN_DATA_BFLOAT16, L.kv_dim, L.kv_str, false);
    cudnnBackendDescriptor_t SSUM = g.tensor(UID_SOFTMAX_SUM, CUDNN_DATA_FLOAT, L.st_dim, L.st_str, false);
    cudnnBackendDescriptor_t DQA = g.tensor(UID_DQ_ACCUM, CUDNN_DATA_FLOAT, L.full_dim, L.full_str, false);
    cudnnBackendDescriptor_t scale, one;
    add_scalar(p, g, UID_SCALE, &p.scale, &scale);
    add_scalar(p, g, UID_ONE, &p.one, &one);
    const Dims st_dim_t = L.s_dim, st_str_t = {h * s * s, s * s, 1, s};  // a (b, h, T, T) score tensor read transposed

    // softmax_sum = rowsum(dO * O)
    cudnnBackendDescriptor_t t0 = g.virt(CUDNN_DATA_FLOAT, L.q_dim, Dims{h * s * d, s * d, h * d, 1});
    g.pointwise(CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, dO, O, nullptr, t0);
    cudnnBackendDescriptor_t t1 = g.virt(CUDNN_DATA_FLOAT, L.st_dim, L.st_str);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, t0, t1);
    g.pointwise(CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, t1, one, nullptr, SSUM);
    // P = exp(S * scale - Stats), masked
    cudnnBackendDescriptor_t S = g.virt(CUDNN_DATA_FLOAT, L.s_dim, L.s_str);
    g.matmul(Q, KT, S);
    cudnnBackendDescriptor_t S1 = g.virt(CUDNN_DATA_FLOAT, L.s_dim, L.s_str);
    g.pointwise(CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, S, scale, nullptr, S1);
    cudnnBackendDescriptor_t S2 = g.virt(CUDNN_DATA_FLOAT, L.s_dim, L.s_str);
    g.pointwise(CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, S1, STATS, nullptr, S2);
    cudnnBackendDescriptor_t S3 = band_mask(p, g, S2, L.s_dim, L.s_str);
    cudnnBackendDescriptor_t E = g.virt(CUDNN_DATA_FLOAT, L.s_dim, L.s_str);
    g.pointwise(CUDNN_POINTWISE_EXP, CUDNN_DATA_FLOAT, S3, nullptr, nullptr, E);
    // out = A B for a kv-head tensor (dK, dV): per query head, then summed over each kv head's group
    auto kv_matmul = [&](cudnnBackendDescriptor_t A, cudnnBackendDescriptor_t B, cudnnBackendDescriptor_t out) {
        if (p.H == p.Hkv) {
            g.matmul(A, B, out);
        } else {
            cudnnBackendDescriptor_t full = g.virt(CUDNN_DATA_BFLOAT16, L.full_dim, L.full_str);
            g.matmul(A, B, full);
            g.reduction(CUDNN_REDUCE_TENSOR_ADD, full, out);
        }
    };
    // dV = Pᵀ dO
    cudnnBackendDescriptor_t Pt = g.virt(CUDNN_DATA_BFLOAT16, st_dim_t, st_str_t);
    g.reshape(E, Pt);
    kv_matmul(Pt, dO, dV);
    // dS = P (dO Vᵀ - softmax_sum) scale
    cudnnBackendDescriptor_t dP = g.virt(CUDNN_DATA_FLOAT, L.s_dim, L.s_str);
    g.matmul(dO, VT, dP);
    cudnnBackendDescriptor_t t2 = g.virt(CUDNN_DATA_FLOAT, L.s_dim, L.s_str);
    g.pointwise(CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, dP, SSUM, nullptr, t2);
    cudnnBackendDescriptor_t t3 = g.virt(CUDNN_DATA_FLOAT, L.s_dim, L.s_str);
    g.pointwise(CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, t2, E, nullptr, t3);
    cudnnBackendDescriptor_t dS = g.virt(CUDNN_DATA_FLOAT, L.s_dim, L.s_str);
    g.pointwise(CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, t3, scale, nullptr, dS);
    // dK = dSᵀ Q
    cudnnBackendDescriptor_t dSt = g.virt(CUDNN_DATA_BFLOAT16, st_dim_t, st_str_t);
    g.reshape(dS, dSt);
    kv_matmul(dSt, Q, dK);
    // dQ = dS K, accumulated in fp32, then rounded to bf16
    cudnnBackendDescriptor_t Kr = g.virt(CUDNN_DATA_FLOAT, L.kv_dim, L.kv_str);
    g.reshape(KT, Kr);
    g.matmul(dS, Kr, DQA);
    g.pointwise(CUDNN_POINTWISE_IDENTITY, CUDNN_DATA_FLOAT, DQA, nullptr, nullptr, dQ);
}

// The operation graph, then the first engine config of the heuristics (mode A, then FALLBACK)
// that finalizes into an execution plan. With `deviceprop` (a CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR)
// instead of the handle, heuristics and plan are made for that device without one (cuDNN >= 9.8;
// dev/cuda/cudnn_graph_check.cu uses it to check the graphs on a machine without a GPU). Returns
// the last failure's text when no config finalizes; `failures`, if given, receives every one.
inline std::string make_execution_plan(Plan& p, cudnnBackendDescriptor_t deviceprop = nullptr, std::vector<std::string>* failures = nullptr) {
    Graph& g = p.graph;
    cudnnBackendDescriptor_t opgraph = g.make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    set_attr(opgraph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, (int64_t)g.ops.size(), g.ops.data(), "graph ops");
    if (!deviceprop) set_attr(opgraph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &g_handle, "graph handle");
    finalize(opgraph, "operation graph");
    std::string why = "the heuristics returned no engine config";
    for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
        cudnnBackendDescriptor_t heur = g.make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
        set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, opgraph, "heuristics graph");
        set_attr(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
        if (deviceprop) set_desc(heur, CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, deviceprop, "heuristics device");
        const cudnnStatus_t hs = cudnnBackendFinalize(heur);
        if (hs != CUDNN_STATUS_SUCCESS) {
            why = strfmt("heuristics mode %d: %s", (int)mode, status_text(hs).c_str());
            if (failures) failures->push_back(why);
            continue;
        }
        int64_t count = 0;
        build_check(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr),
                    "heuristics result count");
        if (count <= 0) continue;
        std::vector<cudnnBackendDescriptor_t> cfgs((size_t)count);
        for (auto& c : cfgs) c = g.make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
        // `got` counts the configs that pass cuDNN's support checks (the others are not filled in)
        int64_t got = 0;
        build_check(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, cfgs.data()),
                    "heuristics results");
        if (got <= 0) {
            why = strfmt("heuristics mode %d: none of %lld engine configs is viable here", (int)mode, (long long)count);
            if (failures) failures->push_back(why);
        }
        for (int64_t i = 0; i < got && i < count; i++) {
            cudnnBackendDescriptor_t plan = g.make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
            if (deviceprop) set_desc(plan, CUDNN_ATTR_EXECUTION_PLAN_DEVICEPROP, deviceprop, "plan device");
            else set_attr(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &g_handle, "plan handle");
            set_desc(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfgs[(size_t)i], "plan engine config");
            const cudnnStatus_t ps = cudnnBackendFinalize(plan);
            if (ps != CUDNN_STATUS_SUCCESS) {
                why = strfmt("engine config %lld of heuristics mode %d: %s", (long long)i, (int)mode, status_text(ps).c_str());
                if (failures) failures->push_back(why);
                continue;
            }
            int64_t n = 0, ws = 0;
            build_check(cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &ws),
                        "plan workspace size");
            p.exec = plan;
            p.workspace_bytes = ws;
            return "";
        }
    }
    return why;
}

inline void ensure_handle() {
    if (g_handle) return;
    const cudnnStatus_t s = cudnnCreate(&g_handle);
    if (s != CUDNN_STATUS_SUCCESS) {
        g_handle = nullptr;
        LLMC_FAIL("attention_cudnn: cudnnCreate failed: %s (is libcudnn's engine library installed next to libcudnn.so?)",
                  status_text(s).c_str());
    }
}

// The cached plan for this problem, built on first use. A shape cuDNN cannot run is cached too
// (supported = false), reported once.
inline Plan& get_plan(bool backward, int B, int T, int H, int Hkv, int D, int w) {
    for (auto& q : g_plans)
        if (q->backward == backward && q->B == B && q->T == T && q->H == H && q->Hkv == Hkv && q->D == D && q->w == w) return *q;
    ensure_handle();
    auto pp = std::make_unique<Plan>();
    Plan& p = *pp;
    p.backward = backward;
    p.B = B, p.T = T, p.H = H, p.Hkv = Hkv, p.D = D, p.w = w;
    p.scale = (float)(1.0 / sqrt((double)D));
    p.neg_inf = -3.40282346638528859812e+38f;  // the lowest float, as cudnn-frontend's causal mask
    p.window_len = (float)(w + 1);              // exact: w < 2^24
    p.neg_big = -1073741824.0f;                 // -2^30, as cudnn-frontend's sliding-window mask
    const size_t ver = runtime_version();
    try {
        if (ver < 90000) throw BuildFailure{strfmt("cuDNN %zu is older than 9.0", ver)};
        if (D % 8 != 0) throw BuildFailure{strfmt("head dim %d is not a multiple of 8", D)};
        if (!backward && (ver == 91000 || ver == 91001)) throw BuildFailure{"cuDNN 9.10.0/9.10.1 have known SDPA forward bugs"};
        if (backward && ver <= 91500 && T % 128 != 0)
            throw BuildFailure{"before cuDNN 9.15.1 the backward needs T % 128 == 0 (or a padding mask, not built here)"};
        if (backward) build_backward(p);
        else build_forward(p);
        const std::string why = make_execution_plan(p);
        if (!p.exec) throw BuildFailure{why};
        size_t bytes = ((size_t)p.workspace_bytes + 255) / 256 * 256;
        size_t ssum_off = bytes, dqa_off = bytes;
        if (backward) {
            ssum_off = bytes;
            bytes += ((size_t)B * H * T * sizeof(float) + 255) / 256 * 256;
            dqa_off = bytes;
            p.dq_accum_bytes = (size_t)B * H * T * D * sizeof(float);
            bytes += p.dq_accum_bytes;
        }
        if (bytes > 0) cudaCheck(cudaMalloc(&p.workspace, bytes));
        if (backward) {
            p.softmax_sum = reinterpret_cast<float*>(static_cast<char*>(p.workspace) + ssum_off);
            p.dq_accum = reinterpret_cast<float*>(static_cast<char*>(p.workspace) + dqa_off);
        }
        p.supported = true;
        g_plans_built++;
    } catch (const BuildFailure& f) {
        fprintf(stderr,
                "attention_cudnn: cuDNN %zu has no %s engine for B=%d T=%d H=%d Hkv=%d D=%d window=%d: %s; the caller falls back\n",
                ver, backward ? "backward" : "forward", B, T, H, Hkv, D, w, f.what.c_str());
        p.graph.clear();
        p.exec = nullptr;
        p.scalars.clear();
    }
    g_plans.push_back(std::move(pp));
    return *g_plans.back();
}

// bind the pointers (ours, the plan's buffers, the scalars) and run the plan on `stream`
inline void execute(Plan& p, std::vector<std::pair<int64_t, void*>> bind, cudaStream_t stream) {
    for (const auto& sc : p.scalars) bind.push_back(sc);
    std::vector<int64_t> uids;
    std::vector<void*> ptrs;
    for (const auto& b : bind) {
        uids.push_back(b.first);
        ptrs.push_back(b.second);
    }
    run_check(cudnnSetStream(g_handle, stream), "cudnnSetStream");
    try {
        Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
        set_attr(pack.get(), CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, (int64_t)uids.size(), uids.data(), "variant pack uids");
        set_attr(pack.get(), CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, (int64_t)ptrs.size(), ptrs.data(),
                 "variant pack pointers");
        set_attr(pack.get(), CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &p.workspace, "variant pack workspace");
        finalize(pack.get(), "variant pack");
        run_check(cudnnBackendExecute(g_handle, p.exec, pack.get()), "cudnnBackendExecute");
    } catch (const BuildFailure& f) {
        LLMC_FAIL("attention_cudnn: %s", f.what.c_str());
    }
}

}  // namespace cudnn_att
}  // namespace llmc

// Plans built so far (cache misses that produced a plan): a test checks that a repeated shape reuses its plan.
inline int attention_cudnn_plans_built() { return llmc::cudnn_att::g_plans_built; }

// Frees every cached plan, its buffers and the cuDNN handle (call after the last use, or between
// benchmark shapes to give the memory back).
inline void attention_cudnn_destroy() {
    cudaCheck(cudaDeviceSynchronize());  // no plan may be freed while a launch of it is in flight
    llmc::cudnn_att::g_plans.clear();
    if (llmc::cudnn_att::g_handle) cudnnDestroy(llmc::cudnn_att::g_handle);
    llmc::cudnn_att::g_handle = nullptr;
}

// out (B,T,H,D) bf16 and lse (B,H,T) fp32, both overwritten, as attention_forward. Returns false
// (nothing written) when cuDNN has no engine for the shape; any D that is a multiple of 8 may work.
inline bool attention_forward_cudnn(floatX* out, float* lse, const floatX* q, const floatX* k, const floatX* v, int B, int T, int H,
                                    int Hkv, int D, int window, cudaStream_t stream) {
    attention_check_args_cuda_("attention_forward_cudnn", B, T, H, Hkv, D, window);
    LLMC_CHECK(aligned16(out) && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(lse),
               "attention_forward_cudnn: out, lse, q, k, v must be 16-byte aligned");
    const int w = window < T - 1 ? window : T - 1;
    llmc::cudnn_att::Plan& p = llmc::cudnn_att::get_plan(false, B, T, H, Hkv, D, w);
    if (!p.supported) return false;
    using namespace llmc::cudnn_att;
    execute(p,
            {{UID_Q, const_cast<floatX*>(q)}, {UID_K, const_cast<floatX*>(k)}, {UID_V, const_cast<floatX*>(v)}, {UID_O, out}, {UID_STATS, lse}},
            stream);
    return true;
}

// dq (B,T,H,D), dk, dv (B,T,Hkv,D) bf16, overwritten, as attention_backward (which also takes a
// scratch buffer: cuDNN's lives with the plan). lse: the forward's, from either path. Returns false
// (nothing written) when cuDNN has no engine for the shape.
inline bool attention_backward_cudnn(floatX* dq, floatX* dk, floatX* dv, const floatX* dout, const floatX* out, const float* lse,
                                     const floatX* q, const floatX* k, const floatX* v, int B, int T, int H, int Hkv, int D, int window,
                                     cudaStream_t stream) {
    attention_check_args_cuda_("attention_backward_cudnn", B, T, H, Hkv, D, window);
    LLMC_CHECK(aligned16(dq) && aligned16(dk) && aligned16(dv) && aligned16(dout) && aligned16(out) && aligned16(lse) && aligned16(q) &&
                   aligned16(k) && aligned16(v),
               "attention_backward_cudnn: dq, dk, dv, dout, out, lse, q, k, v must be 16-byte aligned");
    const int w = window < T - 1 ? window : T - 1;
    llmc::cudnn_att::Plan& p = llmc::cudnn_att::get_plan(true, B, T, H, Hkv, D, w);
    if (!p.supported) return false;
    using namespace llmc::cudnn_att;
    if (runtime_version() < 90600) cudaCheck(cudaMemsetAsync(p.dq_accum, 0, p.dq_accum_bytes, stream));  // newer cuDNN zeroes it itself
    execute(p,
            {{UID_Q, const_cast<floatX*>(q)},
             {UID_K, const_cast<floatX*>(k)},
             {UID_V, const_cast<floatX*>(v)},
             {UID_O, const_cast<floatX*>(out)},
             {UID_DO, const_cast<floatX*>(dout)},
             {UID_STATS, const_cast<float*>(lse)},
             {UID_DQ, dq},
             {UID_DK, dk},
             {UID_DV, dv},
             {UID_SOFTMAX_SUM, p.softmax_sum},
             {UID_DQ_ACCUM, p.dq_accum}},
            stream);
    return true;
}
