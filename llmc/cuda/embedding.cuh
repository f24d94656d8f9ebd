// embedding.cuh: token embedding lookup (wte, value_embeds) and its deterministic scatter-add
// backward (model.md §3.2 step 1, §3.3 step 2, §5 "Embeddings"; CPU twin: llmc/cpu/embedding.h,
// same names and argument order plus the backward's plan and the stream).
//
//   forward:  out[i, :] = table[idx[i], :]             (bf16 copy of the fp32 master table)
//   backward: dtable[idx[i], :] += dout[i, :]          (fp32 parameter gradient, accumulates)
//
// Forward: one thread per 16-byte pack of the output (8 bf16); consecutive threads cover a row,
// so both the table row read and the output write are fully coalesced.
//
// Backward design (no floating-point atomics, bitwise deterministic, design.md §3):
// several positions carry the same token, so a thread per position would race on dtable rows.
// Once per batch the HOST builds an EmbeddingBackwardPlan from the token ids it already has (the
// data loader reads them there): a stable counting sort groups the positions by token id into
// buckets, positions ascending inside a bucket; the buckets are ordered by size, largest first, so
// that the block for the most frequent token (BOS, "the", ...) starts first instead of forming
// the tail of the launch. One upload of (order | bucket offsets) per batch, into a device buffer
// allocated once by embedding_plan_create (nothing is allocated per step). The same plan serves
// wte and every value_embeds table, since they are indexed by the same ids.
// The kernel runs one block per (bucket, chunk of channels); each thread owns 8 channels
// (16-byte dout loads, two float4 read-modify-writes of dtable), starts from the current dtable
// values and adds the bucket's rows in position order. That is exactly the order of the CPU
// reference op (dtable[idx[i]] += dout[i] for i = 0..N-1), so the result is bitwise equal to the
// CPU op on the same (bf16) inputs, and independent of the launch configuration.
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
    if (C % 8 == 0 && aligned16(out) && aligned16(table)) {
        const size_t total = (size_t)N * (C / 8);
        LAUNCH(embedding_forward_kernel<8>, (unsigned)CEIL_DIV(total, (size_t)EMBEDDING_BLOCK), EMBEDDING_BLOCK, 0,
               stream, out, idx, table, N, C);
    } else {
        const size_t total = (size_t)N * C;
        LAUNCH(embedding_forward_kernel<1>, (unsigned)CEIL_DIV(total, (size_t)EMBEDDING_BLOCK), EMBEDDING_BLOCK, 0,
               stream, out, idx, table, N, C);
    }
}

// ---------------------------------------------------------------------------------------------
// backward plan: positions grouped by token id, built on the host once per batch

struct EmbeddingBackwardPlan {
    int max_N = 0;       // capacity (positions per batch)
    int V = 0;           // number of table rows; ids must be in [0, V)
    int N = 0;           // positions in the batch the plan was last built for
    int n_buckets = 0;   // distinct ids in that batch
    // device, one buffer: order[0..N) = positions grouped by id (buckets largest first, positions
    // ascending inside a bucket), then offsets[0..n_buckets] into order (bucket b = [off[b], off[b+1]))
    int* d_buf = nullptr;
    // host scratch, sized once
    std::vector<int> count;   // (V) occurrences per id, all zero between builds
    std::vector<int> next;    // (V) write cursor per id during the scatter
    std::vector<int> buckets; // distinct ids, in launch order
    std::vector<int> h_buf;   // staging for d_buf
};

inline void embedding_plan_create(EmbeddingBackwardPlan* plan, int max_N, int V) {
    LLMC_CHECK(max_N > 0 && V > 0, "embedding_plan_create: bad sizes max_N=%d V=%d", max_N, V);
    plan->max_N = max_N;
    plan->V = V;
    plan->N = 0;
    plan->n_buckets = 0;
    plan->count.assign(V, 0);
    plan->next.assign(V, 0);
    plan->buckets.reserve(std::min(max_N, V));
    plan->h_buf.assign(2 * (size_t)max_N + 1, 0);
    cudaCheck(cudaMalloc((void**)&plan->d_buf, (2 * (size_t)max_N + 1) * sizeof(int)));
}

inline void embedding_plan_destroy(EmbeddingBackwardPlan* plan) {
    if (plan->d_buf) cudaCheck(cudaFree(plan->d_buf));
    plan->d_buf = nullptr;
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
    int* offsets = order + N;
    int off = 0;
    for (int b = 0; b < nb; b++) {
        offsets[b] = off;
        next[buckets[b]] = off;
        off += count[buckets[b]];
    }
    offsets[nb] = off;
    for (int i = 0; i < N; i++) order[next[idx_host[i]]++] = i;  // stable: positions ascending per bucket
    for (int b = 0; b < nb; b++) count[buckets[b]] = 0;        // leave count all-zero for the next build
    plan->N = N;
    plan->n_buckets = nb;
    cudaCheck(cudaMemcpyAsync(plan->d_buf, plan->h_buf.data(), (size_t)(N + nb + 1) * sizeof(int),
                              cudaMemcpyHostToDevice, stream));
}

// ---------------------------------------------------------------------------------------------
// backward

// grid (n_buckets, channel chunks); order/offsets as in the plan. W channels per thread.
template <int W>
__global__ void __launch_bounds__(EMBEDDING_BLOCK)
embedding_backward_kernel(float* dtable, const floatX* dout, const int* idx, const int* order, const int* offsets,
                          int C) {
    const int c = (blockIdx.y * blockDim.x + threadIdx.x) * W;
    if (c >= C) return;
    const int start = offsets[blockIdx.x], end = offsets[blockIdx.x + 1];
    const int tok = idx[order[start]];
    float* dst = dtable + (size_t)tok * C + c;
    Pack<float, W> acc = load_pack<float, W>(dst);
    // The sum's order is the position order (fixed): the CPU op's order. The loop is unrolled so
    // the loads of several rows are in flight at once; the adds stay sequential.
    #pragma unroll 4
    for (int j = start; j < end; j++) {
        PackX<W> g = load_pack<floatX, W>(dout + (size_t)order[j] * C + c);
        #pragma unroll
        for (int k = 0; k < W; k++) acc.v[k] += __bfloat162float(g.v[k]);
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
    if (N == 0) return;
    const int* order = plan.d_buf;
    const int* offsets = plan.d_buf + N;
    const bool vec = C % 8 == 0 && aligned16(dtable) && aligned16(dout);
    const int W = vec ? 8 : 1;
    // threads per block: enough to cover a row's packs (rounded to whole warps), at most 256
    const int packs = C / W;
    const int threads = std::min(EMBEDDING_BLOCK, CEIL_DIV(packs, WARP_SIZE) * WARP_SIZE);
    dim3 grid(plan.n_buckets, CEIL_DIV(packs, threads));
    if (vec) {
        LAUNCH(embedding_backward_kernel<8>, grid, threads, 0, stream, dtable, dout, idx, order, offsets, C);
    } else {
        LAUNCH(embedding_backward_kernel<1>, grid, threads, 0, stream, dtable, dout, idx, order, offsets, C);
    }
}
