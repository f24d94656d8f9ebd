// smear.cuh: the smear gate, mixing each token's normed embedding with the previous token's,
// forward and backward (docs/model.md#smear; CPU twin: llmc/cpu/smear.h, same names
// and argument order plus scratch and the stream).
//
// For each sequence b and t >= 1 (e = the normed embedding (B,T,C), w = smear_gate.weight[0], 24
// values, lambda = smear_lambda; both fp32 device values read by pointer):
//   a_t = sum_{c<24} e_t[c] w[c],  g_t = lambda sigmoid(a_t),  out_t = e_t + g_t e_{t-1};  out_0 = e_0
// Backward (G = dout):
//   de_t = G_t + g_{t+1} G_{t+1} (when t+1 < T) + da_t w[c] for c < 24, t >= 1     (bf16, overwrite)
//   h_t = <G_t, e_{t-1}>,  da_t = h_t lambda sigmoid(a_t) (1 - sigmoid(a_t))
//   dw[c] += sum_t da_t e_t[c],  dlambda += sum_t h_t sigmoid(a_t)                    (fp32, accumulate)
// de must not alias dout (row t reads G_{t+1}); out never aliases e (row t reads e_{t-1}).
//
// Strategy: one warp per token row, as rmsnorm.cuh: 16-byte packs (W = 8; W = 1 when C % 8 != 0
// or a pointer is misaligned) and shuffle reductions only. The gate needs just the row's first 24
// channels: lanes 0..23 each multiply one, a warp butterfly sums them (every lane gets the same
// a). The backward recomputes the gates (its own and the next token's: 24 multiply-adds each)
// instead of storing them, reads G_t, G_{t+1} (the latter again as the next row's G_t: an L2 hit)
// and e_{t-1}, and writes de_t. The 25 parameter-gradient sums use a fixed grid of P blocks
// (reduce.cuh): warps stride over the rows; lane c < 24 accumulates dw[c], lane 24 dlambda, in
// registers; each block adds its warps' values in warp order into 25 partials, and
// reduce_partials adds the P partials in a fixed order. Deterministic, no float atomics.
#pragma once
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/reduce.cuh"

constexpr int SMEAR_BLOCK = 256;  // 8 warps = 8 rows at a time
constexpr int SMEAR_GATE_CHANNELS = 24;
inline constexpr int SMEAR_PARTIALS = SMEAR_GATE_CHANNELS + 1;  // dw[0..23], dlambda

__device__ __forceinline__ float smear_sigmoid(float a) { return 1.0f / (1.0f + __expf(-a)); }

// a = sum_{c<24} row[c] w[c], every lane of the warp gets it (all 32 lanes must call). wl = w[lane]
// for lanes < 24, unused otherwise.
__device__ __forceinline__ float smear_gate_logit(const floatX* row, float wl, int lane) {
    return warp_reduce_sum(lane < SMEAR_GATE_CHANNELS ? llmc::to_float(row[lane]) * wl : 0.0f);
}

template <int W>
__global__ void __launch_bounds__(SMEAR_BLOCK)
smear_forward_kernel(floatX* out, const floatX* e, const float* w, const float* lambda, int T, int C, long rows) {
    const int lane = threadIdx.x % WARP_SIZE;
    const long row = (long)blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= rows) return;  // the whole warp: no barrier follows
    const int t = (int)(row % T);
    const floatX* et = e + row * C;
    floatX* xt = out + row * C;
    if (t == 0) {  // warp-uniform
        for (int c = lane * W; c < C; c += WARP_SIZE * W) store_pack<floatX, W>(xt + c, load_pack<floatX, W>(et + c));
        return;
    }
    const float wl = lane < SMEAR_GATE_CHANNELS ? w[lane] : 0.0f;
    const float g = *lambda * smear_sigmoid(smear_gate_logit(et, wl, lane));
    const floatX* ep = et - C;
    for (int c = lane * W; c < C; c += WARP_SIZE * W) {
        PackX<W> pe = load_pack<floatX, W>(et + c), pp = load_pack<floatX, W>(ep + c);
        PackX<W> o;
        #pragma unroll
        for (int k = 0; k < W; k++) o.v[k] = llmc::to_floatX(llmc::to_float(pe.v[k]) + g * llmc::to_float(pp.v[k]));
        store_pack<floatX, W>(xt + c, o);
    }
}

// grid P (fixed by the row count); partials[k * P + block], k < 24: dw[k], k = 24: dlambda
template <int W>
__global__ void __launch_bounds__(SMEAR_BLOCK)
smear_backward_kernel(floatX* de, float* partials, const floatX* dout, const floatX* e, const float* w,
                      const float* lambda, int T, int C, long rows) {
    constexpr int NWARPS = SMEAR_BLOCK / WARP_SIZE;
    STATIC_SMEM(float[NWARPS][SMEAR_PARTIALS], s_acc);
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const float wl = lane < SMEAR_GATE_CHANNELS ? w[lane] : 0.0f;
    const float lam = *lambda;
    float acc = 0.0f;  // lane c < 24: dw[c]; lane 24: dlambda; others unused
    for (long row = (long)blockIdx.x * NWARPS + warp; row < rows; row += (long)gridDim.x * NWARPS) {
        const int t = (int)(row % T);  // warp-uniform, so are the branches below
        const floatX* gt = dout + row * C;
        const floatX* et = e + row * C;
        float gn = 0.0f;  // the next token's gate g_{t+1}: it read e_t as its "previous"
        if (t + 1 < T) gn = lam * smear_sigmoid(smear_gate_logit(et + C, wl, lane));
        float da = 0.0f;
        if (t >= 1) {
            const float sg = smear_sigmoid(smear_gate_logit(et, wl, lane));
            const floatX* ep = et - C;
            float h = 0.0f;
            for (int c = lane * W; c < C; c += WARP_SIZE * W) {
                PackX<W> pg = load_pack<floatX, W>(gt + c), pp = load_pack<floatX, W>(ep + c);
                #pragma unroll
                for (int k = 0; k < W; k++) h += llmc::to_float(pg.v[k]) * llmc::to_float(pp.v[k]);
            }
            h = warp_reduce_sum(h);
            da = h * lam * sg * (1.0f - sg);
            if (lane < SMEAR_GATE_CHANNELS) acc += da * llmc::to_float(et[lane]);
            else if (lane == SMEAR_GATE_CHANNELS) acc += h * sg;
        }
        floatX* dt = de + row * C;
        for (int c = lane * W; c < C; c += WARP_SIZE * W) {
            PackX<W> pg = load_pack<floatX, W>(gt + c);
            float v[W];
            #pragma unroll
            for (int k = 0; k < W; k++) v[k] = llmc::to_float(pg.v[k]);
            if (t + 1 < T) {
                PackX<W> pn = load_pack<floatX, W>(gt + C + c);
                #pragma unroll
                for (int k = 0; k < W; k++) v[k] += gn * llmc::to_float(pn.v[k]);
            }
            if (c < SMEAR_GATE_CHANNELS) {  // the gate's own input channels (only when t >= 1: da = 0 else)
                #pragma unroll
                for (int k = 0; k < W; k++)
                    if (c + k < SMEAR_GATE_CHANNELS) v[k] += da * w[c + k];
            }
            PackX<W> o;
            #pragma unroll
            for (int k = 0; k < W; k++) o.v[k] = llmc::to_floatX(v[k]);
            store_pack<floatX, W>(dt + c, o);
        }
    }
    if (lane < SMEAR_PARTIALS) s_acc[warp][lane] = acc;
    __syncthreads();
    if (threadIdx.x < SMEAR_PARTIALS) {
        float s = 0.0f;
        for (int wi = 0; wi < NWARPS; wi++) s += s_acc[wi][threadIdx.x];
        partials[(size_t)threadIdx.x * gridDim.x + blockIdx.x] = s;
    }
}

namespace llmc {
inline void smear_check_shape(const char* name, int B, int T, int C) {
    LLMC_CHECK(B >= 0 && T >= 0, "%s: bad shape B=%d T=%d C=%d", name, B, T, C);
    LLMC_CHECK(C >= SMEAR_GATE_CHANNELS, "%s: n_embd %d < %d channels read by the gate", name, C, SMEAR_GATE_CHANNELS);
}
}  // namespace llmc

// out(B,T,C) = smear(e) (overwrite; must not alias e). w: 24 fp32, lambda: 1 fp32 (device).
inline void smear_forward(floatX* out, const floatX* e, const float* w, const float* lambda, int B, int T, int C,
                          cudaStream_t stream) {
    llmc::smear_check_shape("smear_forward", B, T, C);
    LLMC_CHECK(out != e, "smear_forward: out must not alias e");
    const long rows = (long)B * T;
    if (rows == 0) return;
    const unsigned grid = (unsigned)CEIL_DIV(rows, (long)(SMEAR_BLOCK / WARP_SIZE));
    if (C % XPACK == 0 && aligned16(out) && aligned16(e)) {
        LAUNCH(smear_forward_kernel<XPACK>, grid, SMEAR_BLOCK, 0, stream, out, e, w, lambda, T, C, rows);
    } else {
        LAUNCH(smear_forward_kernel<1>, grid, SMEAR_BLOCK, 0, stream, out, e, w, lambda, T, C, rows);
    }
}

// de(B,T,C) = (overwrite; must not alias dout), dw(24) +=, dlambda(1) += (fp32, device).
// scratch: reduce_scratch_floats(SMEAR_PARTIALS) floats of device memory.
inline void smear_backward(floatX* de, float* dw, float* dlambda, const floatX* dout, const floatX* e, const float* w,
                           const float* lambda, int B, int T, int C, float* scratch, cudaStream_t stream) {
    llmc::smear_check_shape("smear_backward", B, T, C);
    LLMC_CHECK(de != dout, "smear_backward: de must not alias dout");
    const long rows = (long)B * T;
    if (rows == 0) return;
    const int P = reduce_grid((size_t)rows, SMEAR_BLOCK / WARP_SIZE);
    if (C % XPACK == 0 && aligned16(de) && aligned16(dout) && aligned16(e)) {
        LAUNCH(smear_backward_kernel<XPACK>, P, SMEAR_BLOCK, 0, stream, de, scratch, dout, e, w, lambda, T, C, rows);
    } else {
        LAUNCH(smear_backward_kernel<1>, P, SMEAR_BLOCK, 0, stream, de, scratch, dout, e, w, lambda, T, C, rows);
    }
    reduce_partials(dw, SMEAR_GATE_CHANNELS, dlambda, 1, scratch, P, stream);
}
