// value_embed.cuh: the gated value-embedding add of the VE layers, forward and backward
// (docs/model.md#value-embeds; CPU twin: llmc/cpu/value_embed.h, same names
// and argument order plus scratch and the stream).
//
//   b_h = sum_{c<12} u[c] Wg[h,c],  gamma_h = 3 sigmoid(b_h),  v_h += gamma_h ve_h
// u (N, C): the normed attention input (bf16; only channels 0..11 are read); v, ve (N, Hkv*D) bf16
// (ve looked up from value_embeds by token id); Wg (Hkv, 12) fp32 master weights on the device;
// gamma (N, Hkv) fp32, saved for the backward. Backward (G = dv, which passes through unchanged):
//   dve_h = gamma_h G_h                                       (bf16, overwrite)
//   db_h = <G_h, ve_h> gamma_h (1 - gamma_h / 3)
//   du[c] += sum_h db_h Wg[h,c] for c < 12                     (bf16, accumulates onto the q/k/v
//                                                              matmuls' input gradient)
//   dWg[h,c] += sum_n db_h u[c]                                (fp32 parameter gradient, accumulates)
//
// Strategy. A row here is one head of one token (D = 128 values), smaller than a warp's 16-byte
// loads, so (as in rope.cuh) lpr lanes (a power of two <= 32) share a row and a warp covers
// 32/lpr rows. Forward: every lane of a row's group computes the 12-term gate itself (u and Wg
// reads are broadcasts, the same value for the group), so no lane waits on another; W-wide packs
// of v and ve. Backward: one WARP PER TOKEN, so that the 12 du[c] of a token (a sum over its heads)
// are owned by one warp: its groups take the token's heads 32/lpr at a time; each group's dot
// product <G_h, ve_h> is an xor-shuffle reduction inside the group; the groups' db_h are then
// broadcast to the warp (__shfl_sync, in head order) and lane c < 12 adds db_h Wg[h,c] to its du
// register and db_h u[c] to the warp's dWg accumulators, which live in shared memory (Hkv*12
// floats per warp; entry (h, c) is only ever touched by lane c of its warp). At the end each block
// adds its warps' accumulators in warp order into Hkv*12 partials (after a barrier) and
// reduce_partials sums the P blocks' partials in a fixed order: deterministic, no float atomics.
// W = XPACK (16-byte packs) needs D % XPACK == 0, 16-byte aligned v, ve (dv, dve in the backward)
// and ldv % XPACK == 0; otherwise W = 1.
//
// Row stride ldv: the GPU trainer's v is the last part of the packed [q | k | v] rows that one GEMM
// writes, so the token rows of v (forward, updated in place) and of dv (backward) are ldv elements
// apart (head h of token n at n*ldv + h*D; 0 means dense, Hkv*D). Only the addresses change (the
// same arithmetic on the same values: a strided call gives the dense call's bits), and elements
// between the rows (q and k there) are never read or written.
#pragma once
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/reduce.cuh"

constexpr int VE_GATE_BLOCK = 256;
constexpr int VE_GATE_CHANNELS = 12;

// smallest power of two >= the packs of a row, at most 32
inline int ve_gate_lanes_per_row(int D, int W) {
    const int packs = CEIL_DIV(D, W);
    int lpr = 1;
    while (lpr < packs && lpr < WARP_SIZE) lpr *= 2;
    return lpr;
}

template <int W>
__global__ void __launch_bounds__(VE_GATE_BLOCK)
ve_gate_forward_kernel(floatX* v, float* gamma, const floatX* u, const floatX* ve, const float* wg, int C, int Hkv,
                       int D, long ldv, long rows, int lpr) {
    const int lane = threadIdx.x % WARP_SIZE, sub = lane % lpr;
    const long row = ((long)blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE) * (WARP_SIZE / lpr) + lane / lpr;
    if (row >= rows) return;  // no barrier or collective in this kernel
    const long n = row / Hkv;
    const int h = (int)(row % Hkv);
    const floatX* un = u + n * C;
    const float* wh = wg + h * VE_GATE_CHANNELS;
    float b = 0.0f;
    #pragma unroll
    for (int c = 0; c < VE_GATE_CHANNELS; c++) b += llmc::to_float(un[c]) * wh[c];
    const float gam = 3.0f / (1.0f + __expf(-b));
    if (sub == 0) gamma[row] = gam;
    floatX* vr = v + n * ldv + (long)h * D;  // v: token rows ldv apart, heads D apart
    const floatX* er = ve + row * D;          // ve: dense (N, Hkv*D)
    for (int j = sub * W; j < D; j += lpr * W) {
        PackX<W> pv = load_pack<floatX, W>(vr + j), pe = load_pack<floatX, W>(er + j);
        #pragma unroll
        for (int k = 0; k < W; k++) pv.v[k] = llmc::to_floatX(llmc::to_float(pv.v[k]) + gam * llmc::to_float(pe.v[k]));
        store_pack<floatX, W>(vr + j, pv);
    }
}

// grid P (fixed by N); dynamic smem: NWARPS * Hkv * 12 floats; partials[k * P + block], k = h*12 + c
template <int W>
__global__ void __launch_bounds__(VE_GATE_BLOCK)
ve_gate_backward_kernel(floatX* du, floatX* dve, float* partials, const floatX* dv, const floatX* u, const floatX* ve,
                        const float* gamma, const float* wg, int N, int C, int Hkv, int D, long ldv, int lpr) {
    constexpr int NWARPS = VE_GATE_BLOCK / WARP_SIZE;
    DYNAMIC_SMEM(float, s_acc);
    const int K = Hkv * VE_GATE_CHANNELS;
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int sub = lane % lpr, grp = lane / lpr, hpw = WARP_SIZE / lpr;
    float* acc = s_acc + warp * K;  // this warp's dWg accumulators; (h, c) touched only by lane c
    if (lane < VE_GATE_CHANNELS)
        for (int h = 0; h < Hkv; h++) acc[h * VE_GATE_CHANNELS + lane] = 0.0f;

    for (long n = (long)blockIdx.x * NWARPS + warp; n < N; n += (long)gridDim.x * NWARPS) {
        const float uc = lane < VE_GATE_CHANNELS ? llmc::to_float(u[n * C + lane]) : 0.0f;
        float du_acc = 0.0f;
        for (int h0 = 0; h0 < Hkv; h0 += hpw) {  // warp-uniform loop: the shuffles below see all lanes
            const int h = h0 + grp;
            float dot = 0.0f, gam = 0.0f;
            if (h < Hkv) {
                const long row = n * Hkv + h;
                gam = gamma[row];
                const floatX* gr = dv + n * ldv + (long)h * D;  // dv strided like v
                const floatX* er = ve + row * D;
                floatX* dr = dve + row * D;
                for (int j = sub * W; j < D; j += lpr * W) {
                    PackX<W> pg = load_pack<floatX, W>(gr + j), pe = load_pack<floatX, W>(er + j);
                    PackX<W> o;
                    #pragma unroll
                    for (int k = 0; k < W; k++) {
                        const float g = llmc::to_float(pg.v[k]);
                        dot += g * llmc::to_float(pe.v[k]);
                        o.v[k] = llmc::to_floatX(gam * g);
                    }
                    store_pack<floatX, W>(dr + j, o);
                }
            }
            for (int offset = lpr / 2; offset > 0; offset >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
            const float db = dot * gam * (1.0f - gam / 3.0f);  // 0 for a group past the last head
            for (int gi = 0; gi < hpw; gi++) {  // the groups' db in head order, to every lane
                const float dbi = __shfl_sync(0xffffffffu, db, gi * lpr);
                const int hi = h0 + gi;
                if (hi < Hkv && lane < VE_GATE_CHANNELS) {
                    du_acc += dbi * wg[hi * VE_GATE_CHANNELS + lane];
                    acc[hi * VE_GATE_CHANNELS + lane] += dbi * uc;
                }
            }
        }
        if (lane < VE_GATE_CHANNELS) {
            floatX* p = du + n * C + lane;
            *p = llmc::to_floatX(llmc::to_float(*p) + du_acc);
        }
    }
    __syncthreads();  // every warp's accumulators are complete
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        float s = 0.0f;
        for (int wi = 0; wi < NWARPS; wi++) s += s_acc[wi * K + k];
        partials[(size_t)k * gridDim.x + blockIdx.x] = s;
    }
}

namespace llmc {
inline void ve_gate_check_shape(const char* name, int N, int C, int Hkv, int D) {
    LLMC_CHECK(N >= 0 && Hkv > 0 && D > 0, "%s: bad shape N=%d C=%d Hkv=%d D=%d", name, N, C, Hkv, D);
    LLMC_CHECK(C >= VE_GATE_CHANNELS, "%s: n_embd %d < %d channels read by the gate", name, C, VE_GATE_CHANNELS);
}
// v's token row stride: 0 -> dense; else at least a row (a smaller one would overlap the next token's heads)
inline long ve_gate_resolve_ldv(const char* name, int Hkv, int D, long ldv) {
    const long dense = (long)Hkv * D;
    if (ldv == 0) return dense;
    LLMC_CHECK(ldv >= dense, "%s: ldv=%ld is less than Hkv*D=%ld (v rows would overlap)", name, ldv, dense);
    return ldv;
}
}  // namespace llmc

// partial sums of the backward: K = Hkv * 12 (dWg)
inline int ve_gate_partials(int Hkv) { return Hkv * VE_GATE_CHANNELS; }

// v(N, Hkv*D) += gamma * ve, gamma(N, Hkv) = 3 sigmoid(u[:, :12] Wg^T) (overwritten, fp32).
// ldv: elements between consecutive tokens' rows of v (0: Hkv*D); the rest of v's rows untouched.
inline void ve_gate_forward(floatX* v, float* gamma, const floatX* u, const floatX* ve, const float* wg, int N, int C,
                            int Hkv, int D, cudaStream_t stream, long ldv = 0) {
    llmc::ve_gate_check_shape("ve_gate_forward", N, C, Hkv, D);
    ldv = llmc::ve_gate_resolve_ldv("ve_gate_forward", Hkv, D, ldv);
    const long rows = (long)N * Hkv;
    if (rows == 0) return;
    const bool vec = D % XPACK == 0 && ldv % XPACK == 0 && aligned16(v) && aligned16(ve);
    const int lpr = ve_gate_lanes_per_row(D, vec ? XPACK : 1);
    const long rows_per_block = (long)(VE_GATE_BLOCK / WARP_SIZE) * (WARP_SIZE / lpr);
    const unsigned grid = (unsigned)CEIL_DIV(rows, rows_per_block);
    if (vec) {
        LAUNCH(ve_gate_forward_kernel<XPACK>, grid, VE_GATE_BLOCK, 0, stream, v, gamma, u, ve, wg, C, Hkv, D, ldv, rows,
               lpr);
    } else {
        LAUNCH(ve_gate_forward_kernel<1>, grid, VE_GATE_BLOCK, 0, stream, v, gamma, u, ve, wg, C, Hkv, D, ldv, rows, lpr);
    }
}

// du(N,C) += (channels < 12), dve(N, Hkv*D) = (overwrite), dwg(Hkv,12) += (fp32). dv = G, token
// rows ldv apart (0: Hkv*D). scratch: reduce_scratch_floats(ve_gate_partials(Hkv)) floats of device memory.
inline void ve_gate_backward(floatX* du, floatX* dve, float* dwg, const floatX* dv, const floatX* u, const floatX* ve,
                             const float* gamma, const float* wg, int N, int C, int Hkv, int D, float* scratch,
                             cudaStream_t stream, long ldv = 0) {
    llmc::ve_gate_check_shape("ve_gate_backward", N, C, Hkv, D);
    ldv = llmc::ve_gate_resolve_ldv("ve_gate_backward", Hkv, D, ldv);
    if (N == 0) return;
    const int K = ve_gate_partials(Hkv);
    const size_t smem = (size_t)(VE_GATE_BLOCK / WARP_SIZE) * K * sizeof(float);
    LLMC_CHECK(smem <= 48 * 1024, "ve_gate_backward: Hkv=%d needs %zu bytes of shared memory (max 48 KiB)", Hkv, smem);
    const bool vec = D % XPACK == 0 && ldv % XPACK == 0 && aligned16(dve) && aligned16(dv) && aligned16(ve);
    const int lpr = ve_gate_lanes_per_row(D, vec ? XPACK : 1);
    const int P = reduce_grid((size_t)N, VE_GATE_BLOCK / WARP_SIZE);
    if (vec) {
        LAUNCH(ve_gate_backward_kernel<XPACK>, P, VE_GATE_BLOCK, smem, stream, du, dve, scratch, dv, u, ve, gamma, wg, N, C,
               Hkv, D, ldv, lpr);
    } else {
        LAUNCH(ve_gate_backward_kernel<1>, P, VE_GATE_BLOCK, smem, stream, du, dve, scratch, dv, u, ve, gamma, wg, N, C,
               Hkv, D, ldv, lpr);
    }
    reduce_partials(dwg, K, nullptr, 0, scratch, P, stream);
}
