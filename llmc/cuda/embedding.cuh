// embedding.cuh: token embedding lookup (wte, value_embeds) and its deterministic scatter-add
// backward (docs/model.md#embedding; CPU twin: llmc/cpu/embedding.h,
// same names and argument order plus the backward's plan and the stream).
//
//   forward:  out[i, :] = table[idx[i], :]             (bf16 copy of the fp32 master table)
//   backward: dtable[idx[i], :] += dout[i, :]          (fp32 parameter gradient, accumulates)
//
// Forward: one thread per 16-byte pack of the output (8 bf16); consecutive threads cover a row,
// so both the table row read and the output write are fully coalesced.
//
// Backward design (no floating-point atomics, bitwise deterministic, docs/model.md#determinism):
// several positions carry the same token, so a thread per position would race on dtable rows.
// Once per batch the HOST builds an EmbeddingBackwardPlan from the token ids it already has (the
// data loader reads them there): a stable counting sort groups the positions by token id into
// buckets, positions ascending inside a bucket, buckets ordered by size, largest first. One upload
// per batch into a device buffer allocated once by embedding_plan_create (nothing is allocated per
// step). The same plan serves wte and every value_embeds table, since they are indexed by the same
// ids.
// Token frequencies are very skewed (BOS, "the", ",": the most frequent id is several % of a
// batch, thousands of rows), and a bucket summed by one thread is a chain of dependent loads that
// alone would take longer than the whole rest of the kernel. So the plan cuts each bucket into
// SEGMENTS of at most EMBEDDING_SEG positions, and the backward runs two kernels:
//   1. one block per (segment, chunk of channels); each thread owns W channels (16-byte dout
//      loads) and adds the segment's rows in position order. A bucket that is a single segment
//      (most of them) starts from the current dtable values and stores the result straight into
//      dtable; a segment of a split bucket starts from 0 and stores its partial sum into the
//      plan's scratch (one row per split segment; split buckets come first, being the largest).
//   2. one block per (split bucket, chunk): dtable[id] += the bucket's segment partials, in
//      segment order.
// Every sum is in a fixed order that depends on the ids only, never on the launch or scheduling:
// the result is bitwise reproducible. For a single-segment bucket the order is exactly the CPU
// reference's (dtable[idx[i]] += dout[i] for i = 0..N-1), so those rows are bitwise equal to the
// CPU op on the same (bf16) inputs; a split bucket's rows differ from it only by the rounding of
// the regrouped fp32 sum.
// Token ids are validated (0 <= id < V) when the plan is built; the kernels trust them.
#pragma once
#include <algorithm>
#include <vector>
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/reduce.cuh"

constexpr int EMBEDDING_BLOCK = 256;

// ---------------------------------------------------------------------------------------------
// forward

template <int W>
__global__ void __launch_bounds__(EMBEDDING_BLOCK)
embedding_forward_kernel(floatX* out, const int* idx, const floatX* table, int N, int C) {
    const int packs_per_row = C / W;
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * packs_per_row) return;
    const int row = (int)(i / packs_per_row);
    const int c = (int)(i % packs_per_row) * W;
    const int tok = idx[row];
    store_pack<floatX, W>(out + (size_t)row * C + c, load_pack<floatX, W>(table + (size_t)tok * C + c));
}

// out(N,C) = table[idx] (overwrite). Ids are trusted (validated by the data loader / plan build).
inline void embedding_forward(floatX* out, const int* idx, const floatX* table, int N, int C, cudaStream_t stream) {
    LLMC_CHECK(N >= 0 && C > 0, "embedding_forward: bad shape N=%d C=%d", N, C);
    if (N == 0) return;
    if (C % XPACK == 0 && aligned16(out) && aligned16(table)) {
        const size_t total = (size_t)N * (C / XPACK);
        LAUNCH(embedding_forward_kernel<XPACK>, (unsigned)CEIL_DIV(total, (size_t)EMBEDDING_BLOCK), EMBEDDING_BLOCK, 0,
               stream, out, idx, table, N, C);
    } else {
        const size_t total = (size_t)N * C;
        LAUNCH(embedding_forward_kernel<1>, (unsigned)CEIL_DIV(total, (size_t)EMBEDDING_BLOCK), EMBEDDING_BLOCK, 0,
               stream, out, idx, table, N, C);
    }
}

// ---------------------------------------------------------------------------------------------
// backward plan: positions grouped by token id and cut into segments, built on the host per batch

constexpr int EMBEDDING_SEG = 64;  // positions per segment: a block's sequential chain in pass 1

struct EmbeddingBackwardPlan {
    int max_N = 0;       // capacity (positions per batch)
    int V = 0;           // number of table rows; ids must be in [0, V)
    int max_C = 0;       // widest row any table using the plan has (scratch row length)
    int N = 0;           // positions in the batch the plan was last built for
    int n_buckets = 0;   // distinct ids in that batch
    int n_segs = 0;      // segments (one per bucket of <= EMBEDDING_SEG positions, more for larger ones)
    int n_split = 0;     // segments that belong to split buckets (they come first: segments 0..n_split)
    int n_multi = 0;     // split buckets
    // device, one buffer of ints:
    //   order[0..N)           positions grouped by id (buckets largest first, positions ascending)
    //   seg_start[0..n_segs]  segment s = order[seg_start[s] .. seg_start[s+1])
    //   multi_seg[0..n_multi] split bucket m = segments [multi_seg[m], multi_seg[m+1])
    int* d_buf = nullptr;
    float* d_scratch = nullptr;  // (max split segments, max_C) fp32 partial sums
    // host scratch, sized once
    std::vector<int> count;   // (V) occurrences per id, all zero between builds
    std::vector<int> next;    // (V) write cursor per id during the scatter
    std::vector<int> buckets; // distinct ids, in launch order
    std::vector<int> h_buf;   // staging for d_buf
};

// Bounds for the buffers: every bucket has >= 1 position, so n_segs <= N; a split bucket has
// c > SEG positions and ceil(c/SEG) < c/SEG + 1 < 2c/SEG segments, so n_split < 2N/SEG, and
// n_multi < N/SEG.
inline size_t embedding_plan_max_split(int max_N) { return 2 * (size_t)max_N / EMBEDDING_SEG + 1; }
inline size_t embedding_plan_buf_ints(int max_N) {
    return (size_t)max_N + ((size_t)max_N + 1) + ((size_t)max_N / EMBEDDING_SEG + 1);
}

// max_C: the widest table row the plan will be used with (wte: n_embd; value_embeds: Hkv*D <= n_embd)
inline void embedding_plan_create(EmbeddingBackwardPlan* plan, int max_N, int V, int max_C) {
    LLMC_CHECK(max_N > 0 && V > 0 && max_C > 0, "embedding_plan_create: bad sizes max_N=%d V=%d max_C=%d", max_N, V, max_C);
    plan->max_N = max_N;
    plan->V = V;
    plan->max_C = max_C;
    plan->N = plan->n_buckets = plan->n_segs = plan->n_split = plan->n_multi = 0;
    plan->count.assign(V, 0);
    plan->next.assign(V, 0);
    plan->buckets.reserve(std::min(max_N, V));
    plan->h_buf.assign(embedding_plan_buf_ints(max_N), 0);
    cudaCheck(cudaMalloc((void**)&plan->d_buf, embedding_plan_buf_ints(max_N) * sizeof(int)));
    cudaCheck(cudaMalloc((void**)&plan->d_scratch, embedding_plan_max_split(max_N) * (size_t)max_C * sizeof(float)));
}

inline void embedding_plan_destroy(EmbeddingBackwardPlan* plan) {
    if (plan->d_buf) cudaCheck(cudaFree(plan->d_buf));
    if (plan->d_scratch) cudaCheck(cudaFree(plan->d_scratch));
    plan->d_buf = nullptr;
    plan->d_scratch = nullptr;
}

// Build the plan for the host ids idx_host[0..N) and upload it (ordered on `stream`, before the
// backward kernels that read it). Throws llmc::Error naming the position of an id outside [0, V).
// The staging buffer is pageable, so the copy has been staged when cudaMemcpyAsync returns and the
// next build may overwrite it.
inline void embedding_plan_build(EmbeddingBackwardPlan* plan, const int* idx_host, int N, cudaStream_t stream) {
    LLMC_CHECK(N >= 0 && N <= plan->max_N, "embedding_plan_build: N=%d exceeds the plan's capacity %d", N, plan->max_N);
    for (int i = 0; i < N; i++) {
        if (idx_host[i] < 0 || idx_host[i] >= plan->V)
            LLMC_FAIL("embedding_plan_build: token id %d at position %d is outside [0, %d)", idx_host[i], i, plan->V);
    }
    int* count = plan->count.data();
    int* next = plan->next.data();
    std::vector<int>& buckets = plan->buckets;
    buckets.clear();
    for (int i = 0; i < N; i++) {
        if (count[idx_host[i]]++ == 0) buckets.push_back(idx_host[i]);
    }
    // largest bucket first; ties by id, so the launch order is a function of the ids alone
    std::sort(buckets.begin(), buckets.end(), [count](int a, int b) {
        return count[a] != count[b] ? count[a] > count[b] : a < b;
    });
    const int nb = (int)buckets.size();
    int* order = plan->h_buf.data();
    int* seg_start = order + N;
    int off = 0, ns = 0, nm = 0, n_split = 0;
    for (int b = 0; b < nb; b++) {
        const int c = count[buckets[b]];
        next[buckets[b]] = off;
        if (c > EMBEDDING_SEG) nm++;
        for (int k = 0; k < c; k += EMBEDDING_SEG) seg_start[ns++] = off + k;
        if (c > EMBEDDING_SEG) n_split = ns;  // split buckets are a prefix (sizes are descending)
        off += c;
    }
    seg_start[ns] = off;
    int* multi_seg = seg_start + ns + 1;
    {
        int s = 0, m = 0;
        for (int b = 0; b < nm; b++) {
            multi_seg[m++] = s;
            s += CEIL_DIV(count[buckets[b]], EMBEDDING_SEG);
        }
        multi_seg[m] = s;
    }
    for (int i = 0; i < N; i++) order[next[idx_host[i]]++] = i;  // stable: positions ascending per bucket
    for (int b = 0; b < nb; b++) count[buckets[b]] = 0;        // leave count all-zero for the next build
    plan->N = N;
    plan->n_buckets = nb;
    plan->n_segs = ns;
    plan->n_split = n_split;
    plan->n_multi = nm;
    cudaCheck(cudaMemcpyAsync(plan->d_buf, plan->h_buf.data(), (size_t)(N + ns + 1 + nm + 1) * sizeof(int),
                              cudaMemcpyHostToDevice, stream));
}

// ---------------------------------------------------------------------------------------------
// backward

// pass 1, grid (n_segs, channel chunks): segment s's rows summed in position order, into dtable
// (a whole bucket: starting from dtable) or into its scratch row (a split bucket's segment: from 0)
template <int W>
__global__ void __launch_bounds__(EMBEDDING_BLOCK)
embedding_backward_segments_kernel(float* dtable, float* partials, const floatX* dout, const int* idx, const int* order,
                                   const int* seg_start, int n_split, int C) {
    const int c = (blockIdx.y * blockDim.x + threadIdx.x) * W;
    if (c >= C) return;
    const int s = blockIdx.x;
    const int start = seg_start[s], end = seg_start[s + 1];
    float* dst;
    Pack<float, W> acc;
    if (s < n_split) {
        dst = partials + (size_t)s * C + c;
        #pragma unroll
        for (int k = 0; k < W; k++) acc.v[k] = 0.0f;
    } else {
        dst = dtable + (size_t)idx[order[start]] * C + c;
        acc = load_pack<float, W>(dst);
    }
    // The loop is unrolled so the loads of several rows are in flight at once; the adds stay
    // sequential, in position order.
    #pragma unroll 4
    for (int j = start; j < end; j++) {
        PackX<W> g = load_pack<floatX, W>(dout + (size_t)order[j] * C + c);
        #pragma unroll
        for (int k = 0; k < W; k++) acc.v[k] += llmc::to_float(g.v[k]);
    }
    store_pack<float, W>(dst, acc);
}

// pass 2, grid (n_multi, channel chunks): dtable[id] += the split bucket's partials, in segment order
template <int W>
__global__ void __launch_bounds__(EMBEDDING_BLOCK)
embedding_backward_combine_kernel(float* dtable, const float* partials, const int* idx, const int* order,
                                  const int* seg_start, const int* multi_seg, int C) {
    const int c = (blockIdx.y * blockDim.x + threadIdx.x) * W;
    if (c >= C) return;
    const int s0 = multi_seg[blockIdx.x], s1 = multi_seg[blockIdx.x + 1];
    float* dst = dtable + (size_t)idx[order[seg_start[s0]]] * C + c;
    Pack<float, W> acc = load_pack<float, W>(dst);
    #pragma unroll 4
    for (int s = s0; s < s1; s++) {
        Pack<float, W> p = load_pack<float, W>(partials + (size_t)s * C + c);
        #pragma unroll
        for (int k = 0; k < W; k++) acc.v[k] += p.v[k];
    }
    store_pack<float, W>(dst, acc);
}

// dtable(V,C) += scatter of dout(N,C) by idx (accumulates, deterministic; see the top of the file).
// idx: the device copy of the ids; plan: built by embedding_plan_build from the same ids.
inline void embedding_backward(float* dtable, const floatX* dout, const int* idx, int N, int C,
                               const EmbeddingBackwardPlan& plan, cudaStream_t stream) {
    LLMC_CHECK(N >= 0 && C > 0, "embedding_backward: bad shape N=%d C=%d", N, C);
    LLMC_CHECK(plan.N == N && plan.d_buf != nullptr,
               "embedding_backward: the plan was built for N=%d positions, called with N=%d", plan.N, N);
    LLMC_CHECK(C <= plan.max_C, "embedding_backward: C=%d exceeds the plan's max_C=%d", C, plan.max_C);
    if (N == 0) return;
    const int* order = plan.d_buf;
    const int* seg_start = order + N;
    const int* multi_seg = seg_start + plan.n_segs + 1;
    const bool vec = C % XPACK == 0 && aligned16(dtable) && aligned16(dout);
    const int W = vec ? XPACK : 1;
    // threads per block: enough to cover a row's packs (rounded to whole warps), at most 256
    const int packs = C / W;
    const int threads = std::min(EMBEDDING_BLOCK, CEIL_DIV(packs, WARP_SIZE) * WARP_SIZE);
    const int chunks = CEIL_DIV(packs, threads);
    const dim3 grid1(plan.n_segs, chunks), grid2(plan.n_multi, chunks);
    if (vec) {
        LAUNCH(embedding_backward_segments_kernel<XPACK>, grid1, threads, 0, stream, dtable, plan.d_scratch, dout, idx, order,
               seg_start, plan.n_split, C);
        if (plan.n_multi > 0)
            LAUNCH(embedding_backward_combine_kernel<XPACK>, grid2, threads, 0, stream, dtable, plan.d_scratch, idx, order,
                   seg_start, multi_seg, C);
    } else {
        LAUNCH(embedding_backward_segments_kernel<1>, grid1, threads, 0, stream, dtable, plan.d_scratch, dout, idx, order,
               seg_start, plan.n_split, C);
        if (plan.n_multi > 0)
            LAUNCH(embedding_backward_combine_kernel<1>, grid2, threads, 0, stream, dtable, plan.d_scratch, idx, order,
                   seg_start, multi_seg, C);
    }
}
