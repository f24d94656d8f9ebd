// crossentropy.cuh: logit softcap + cross-entropy + its gradient, fused (docs/model.md#softcap-loss;
// CPU twin: llmc/cpu/crossentropy.h, same name and argument order plus the stream).
//
//   z_v = s * tanh(l_v / s)  (s = softcap), v < V        (l: bf16 logits from the lm_head GEMM)
//   losses[i] = logsumexp_v z_v - z_y                    (0 where y == -1)
//   dlogits[i, v] = dloss_scale * (p_v - [v == y]) * (1 - (z_v/s)^2)   for v < V,
//                   0 for the padded columns v in [V, Vp) and for ignored rows (overwrite, bf16)
//
// Strategy (llm.c's fused classifier): one 512-thread block per row. Pass 1 streams the row once
// with 16-byte loads and keeps a per-thread ONLINE softmax state (running max m, running sum of
// exp(z - m)): each 8-wide pack is folded in with one rescale of the sum at most, so max and sum
// come out of a single read. The (m, sum) pairs are merged across the warp by xor-shuffles and
// across warps through shared memory; every thread merges the per-warp pairs in the same order,
// so all threads hold the same logsumexp bitwise. Pass 2 re-reads the row (mostly from L2: a row
// is Vp*2 bytes, 64-128 KB) and writes the gradient with 16-byte streaming stores. The (N, Vp)
// probabilities are never stored; the logits' memory may be reused for the gradient.
//
// Precision: everything after the bf16 load is fp32. tanh is computed through exp (see
// softcap_tanh): with --use_fast_math, tanhf compiles to tanh.approx.f32 whose 2^-11 relative
// error would move z = 15*tanh by up to ~7e-3, i.e. every probability by ~0.7%.
//
// In place: dlogits may alias logits. Every element is read and then written by the same thread;
// the only cross-thread read is thread 0's read of l[y] for the loss, done before the block
// reduction's barrier, and pass 2 (the only writer) starts after that barrier.
//
// Targets: y == -1 ignores the row (loss 0, gradient row 0). A target outside [0, V) that is not
// -1 cannot throw from the device (the CPU op throws; the host-side data loader validates every
// token before upload). The kernel never reads out of bounds for it: it treats the row like an
// ignored one for the gradient (zeros) and writes loss = NaN, so the mean loss the trainer logs
// turns NaN and the bad batch cannot go unnoticed.
#pragma once
#include <cfloat>
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/reduce.cuh"

constexpr int CE_BLOCK = 512;

// tanh(x) = 1 - 2 / (exp(2x) + 1), absolute error ~1e-7 with the fast exp and division.
// |x| is clamped at 9 (tanh(9) = 1 - 3e-8 rounds to 1 in fp32) so exp(2x) stays finite; the
// comparisons are false for NaN, which therefore passes through to the loss.
__device__ __forceinline__ float softcap_tanh(float x) {
    x = x > 9.0f ? 9.0f : (x < -9.0f ? -9.0f : x);
    return 1.0f - 2.0f / (__expf(2.0f * x) + 1.0f);
}

template <int W>
__global__ void __launch_bounds__(CE_BLOCK)
softcap_crossentropy_kernel(float* losses, floatX* dlogits, const floatX* logits, const int* targets,
                            int V, int Vp, float softcap, float dloss_scale) {
    STATIC_SMEM(float[32], s_max);  // per-warp (max, sum) pairs
    STATIC_SMEM(float[32], s_sum);
    const int row = blockIdx.x;
    const int y = targets[row];
    const floatX* l = logits + (size_t)row * Vp;
    floatX* dl = dlogits ? dlogits + (size_t)row * Vp : nullptr;

    // Ignored (or invalid) row: uniform across the block, so the whole block leaves before any
    // barrier. Zero the gradient row with the same pack width as the normal path.
    if (y < 0 || y >= V) {
        if (threadIdx.x == 0) losses[row] = (y == -1) ? 0.0f : NAN;
        if (dl) {
            PackX<W> zero;
            #pragma unroll
            for (int k = 0; k < W; k++) zero.v[k] = llmc::to_floatX(0.0f);
            for (int p = threadIdx.x; p < Vp / W; p += blockDim.x) store_pack_cs<floatX, W>(dl + p * W, zero);
        }
        return;
    }

    const float inv_s = 1.0f / softcap;
    // read before the barrier below: with dlogits == logits, pass 2 overwrites l[y]
    const float ly = llmc::to_float(l[y]);

    // pass 1: online softmax state over this thread's packs of the V real columns
    float m = -FLT_MAX, sum = 0.0f;  // z >= -softcap, so -FLT_MAX is below every real value
    const int npack = CEIL_DIV(V, W);
    for (int p = threadIdx.x; p < npack; p += blockDim.x) {
        PackX<W> x = load_pack<floatX, W>(l + p * W);
        float z[W];
        float pm = -FLT_MAX;
        #pragma unroll
        for (int k = 0; k < W; k++) {
            z[k] = softcap * softcap_tanh(llmc::to_float(x.v[k]) * inv_s);
            if (p * W + k < V) pm = fmaxf(pm, z[k]);
        }
        if (pm > m) { sum *= __expf(m - pm); m = pm; }
        #pragma unroll
        for (int k = 0; k < W; k++) if (p * W + k < V) sum += __expf(z[k] - m);
    }
    // merge (m, sum) pairs: warp butterfly (symmetric, so all lanes agree bitwise), then warps
    #pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) {
        float om = __shfl_xor_sync(0xffffffffu, m, offset);
        float os = __shfl_xor_sync(0xffffffffu, sum, offset);
        float M = fmaxf(m, om);
        sum = sum * __expf(m - M) + os * __expf(om - M);
        m = M;
    }
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int nwarps = blockDim.x / WARP_SIZE;
    if (lane == 0) { s_max[warp] = m; s_sum[warp] = sum; }
    __syncthreads();
    float M = -FLT_MAX;
    for (int w = 0; w < nwarps; w++) M = fmaxf(M, s_max[w]);
    float S = 0.0f;
    for (int w = 0; w < nwarps; w++) S += s_sum[w] * __expf(s_max[w] - M);
    const float lse = M + logf(S);

    if (threadIdx.x == 0) losses[row] = lse - softcap * softcap_tanh(ly * inv_s);
    if (!dl) return;

    // pass 2: gradient, overwriting (possibly in place: each element read, then written, by this thread)
    for (int p = threadIdx.x; p < Vp / W; p += blockDim.x) {
        PackX<W> x = load_pack_cs<floatX, W>(l + p * W);
        PackX<W> o;
        #pragma unroll
        for (int k = 0; k < W; k++) {
            const int v = p * W + k;
            float g = 0.0f;
            if (v < V) {
                float t = softcap_tanh(llmc::to_float(x.v[k]) * inv_s);
                float prob = __expf(softcap * t - lse);
                float ind = (v == y) ? 1.0f : 0.0f;
                g = dloss_scale * (prob - ind) * (1.0f - t * t);
            }
            o.v[k] = llmc::to_floatX(g);
        }
        store_pack_cs<floatX, W>(dl + p * W, o);
    }
}

// losses(N) =, dlogits(N,Vp) = (overwrite; may alias logits; nullptr = forward only).
// logits (N,Vp) bf16, only the first V columns real. See the top of the file for invalid targets.
inline void softcap_crossentropy_forward_backward(float* losses, floatX* dlogits, const floatX* logits,
                                                  const int* targets, int N, int V, int Vp, float softcap,
                                                  float dloss_scale, cudaStream_t stream) {
    LLMC_CHECK(V > 0 && V <= Vp, "softcap_crossentropy: need 0 < V <= Vp, got V=%d Vp=%d", V, Vp);
    LLMC_CHECK(softcap > 0.0f, "softcap_crossentropy: softcap must be > 0, got %g", (double)softcap);
    LLMC_CHECK(N >= 0, "softcap_crossentropy: bad N=%d", N);
    if (N == 0) return;
    if (Vp % XPACK == 0 && aligned16(logits) && (dlogits == nullptr || aligned16(dlogits))) {
        LAUNCH(softcap_crossentropy_kernel<XPACK>, N, CE_BLOCK, 0, stream, losses, dlogits, logits, targets, V, Vp,
               softcap, dloss_scale);
    } else {
        LAUNCH(softcap_crossentropy_kernel<1>, N, CE_BLOCK, 0, stream, losses, dlogits, logits, targets, V, Vp,
               softcap, dloss_scale);
    }
}
