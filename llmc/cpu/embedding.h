// embedding.h: token embedding lookup (wte, value_embeds) and its scatter-add backward.
//
//   forward:  out[i, :] = table[idx[i], :]
//   backward: dtable[idx[i], :] += dout[i, :]   for every row i
//
// The backward must be deterministic (docs/model.md#embedding: no floating-point atomics).
// Several rows may carry the same token id, so splitting rows across threads would race on
// dtable rows. Instead each thread owns a contiguous range of channels and walks ALL rows in
// order: every dtable element receives its contributions in row order 0..N-1 whatever the
// thread count, so the result is bitwise independent of OpenMP's thread count.
// The table size is not passed, so ids cannot be range-checked here; the caller (data loader)
// validates token ids against the vocabulary.
#pragma once
#ifdef _OPENMP
#include <omp.h>
#endif

// out(N,C) = table[idx]  (overwrite)
template <typename Real>
void embedding_forward(Real* out, const int* idx, const Real* table, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const Real* src = table + (long)idx[i] * C;
        Real* dst = out + (long)i * C;
        for (int c = 0; c < C; c++) dst[c] = src[c];
    }
}

// dtable[idx[i]] += dout[i]  (accumulate; deterministic, see top of file)
template <typename Real>
void embedding_backward(Real* dtable, const Real* dout, const int* idx, int N, int C) {
    #pragma omp parallel
    {
        #ifdef _OPENMP
        int nth = omp_get_num_threads(), tid = omp_get_thread_num();
        #else
        int nth = 1, tid = 0;
        #endif
        // channel range of this thread, in chunks of 16 so threads do not share cache lines
        int nchunk = (C + 15) / 16;
        int c0 = (int)((long)nchunk * tid / nth) * 16;
        int c1 = (int)((long)nchunk * (tid + 1) / nth) * 16;
        if (c1 > C) c1 = C;
        for (int i = 0; i < N; i++) {
            const Real* g = dout + (long)i * C;
            Real* dst = dtable + (long)idx[i] * C;
            for (int c = c0; c < c1; c++) dst[c] += g[c];
        }
    }
}
