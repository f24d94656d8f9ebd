// common.h: small helpers shared by the CPU reference ops (not an op itself).
//
// * cpu_scratch<T>(n): a grow-only per-host-thread buffer, so ops that need a little temporary
//   memory (attention's per-row statistics, the partial sums below) do not allocate on every call.
//   It is thread_local: two host threads (e.g. in-process ranks in a test) never share it. A
//   pointer taken on the calling thread may be handed to that call's OpenMP workers.
//   Each `slot` is a separate buffer, so one op can hold several at once.
// * cpu_chunked_sum: deterministic parallel sums for parameter gradients of scalar/small
//   parameters (lambdas, gates). [0, n) is split into a number of chunks that depends on n only
//   (never on the thread count); each chunk sums its elements in order into K double partials,
//   chunks run in parallel, and the partials are added chunk by chunk in order. The result is
//   therefore bitwise the same for any number of threads.
#pragma once
#include <vector>

template <typename T, int slot = 0>
T* cpu_scratch(size_t n) {
    static thread_local std::vector<T> buf;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
}

// body(begin, end, partial) adds the contributions of elements [begin, end) into partial[0..K).
// On return result[k] holds the total of partial k over all chunks (overwritten).
template <typename Body>
void cpu_chunked_sum(long n, int K, double* result, Body body) {
    const long max_chunks = 64;
    long nchunks = n < max_chunks ? (n > 0 ? n : 1) : max_chunks;
    double* partial = cpu_scratch<double, 1>((size_t)(nchunks * K));
    for (long i = 0; i < nchunks * K; i++) partial[i] = 0.0;
    #pragma omp parallel for schedule(static)
    for (long ch = 0; ch < nchunks; ch++) {
        long begin = n * ch / nchunks, end = n * (ch + 1) / nchunks;
        body(begin, end, partial + ch * K);
    }
    for (int k = 0; k < K; k++) result[k] = 0.0;
    for (long ch = 0; ch < nchunks; ch++)
        for (int k = 0; k < K; k++) result[k] += partial[ch * K + k];
}
