// attention.cuh: causal sliding-window attention with GQA, flash-attention style on tensor cores,
// forward and backward (docs/model.md#attention; CPU twin: llmc/cpu/attention.h, same semantics,
// names and argument order, plus scratch for the backward and the stream).
//
//   q, out: (B, T, H, D) bf16; k, v: (B, T, Hkv, D) bf16; lse: (B, H, T) fp32.
//   Query head h reads kv head h / (H/Hkv). Query i sees key j iff j <= i and i - j <= window
//   (window >= T-1 is plain causal, window 0 sees only itself). s_ij = <q_i, k_j> / sqrt(D),
//   p = softmax over the visible keys, o_i = sum_j p_ij v_j, lse_i = log sum_j exp(s_ij).
//   Backward (overwrites dq, dk, dv): D_i = <dO_i, o_i>, p_ij = exp(s_ij - lse_i),
//   ds_ij = p_ij (<dO_i, v_j> - D_i), dq_i = sum_j ds_ij k_j / sqrt(D),
//   dk_j = sum_{h in group, i} ds_ij q_i / sqrt(D), dv_j = sum_{h in group, i} p_ij dO_i.
//
// Row strides (the trailing ldq, ldkv of every entry point; 0 = contiguous, H*D and Hkv*D): the
// trainer computes q, k, v with one GEMM whose output rows are [q | k | v] per token ((H + 2 Hkv) D
// elements), and its backward GEMM reads dq, dk, dv as one such matrix, so q, k, v and dq, dk, dv are
// strided views into one buffer each and are read and written in place, never copied: head h of
// token n starts at q + n ldq + h D (dq likewise; k, v, dk, dv with ldkv). out, dout and lse stay
// contiguous. Every store writes exactly the D elements of a head's row, because in that layout the
// dq pass and the dk/dv pass write interleaved columns of one buffer (and a caller's gap columns,
// if ld exceeds the packed width, are not ours either). dq, dk, dv must not overlap q, k, v.
//
// Strategy (FlashAttention-2 on mma.sync m16n8k16 bf16 -> fp32, llmc/cuda/mma.cuh). A block is 4
// warps; each warp owns 16 rows of the block's 64-row tile (queries in the forward and the dq pass,
// keys in the dk/dv pass) and keeps everything about its rows in registers: the accumulators
// (fp32 C fragments), the running max and sum of the online softmax. The other operand streams
// through shared memory in tiles, double-buffered with cp.async (tile t+1 is in flight while tile t
// is multiplied; one barrier after the wait publishes it, one after the math frees the stage).
// Products: S = Q Kᵀ with Q's A fragments (ldmatrix.x4 of the warp's rows) against K rows
// (non-transposed ldmatrix: K stored key-major with d contiguous is exactly mma's .col B); the
// probabilities then feed the next product straight from registers: the C fragments of two
// adjacent n8 tiles, rounded to bf16 and packed in pairs, are the A fragment of one k16 step
// (c0,c1 | c2,c3 of tile 2c and of tile 2c+1 = a0 | a1 | a2 | a3), so P never touches memory;
// V (key-major, d contiguous) is the k-major B operand and loads with ldmatrix.x4.trans. No T x T
// matrix exists anywhere. Shared rows are padded by 16 bytes (D+8 elements: 144 or 272 bytes, 9
// or 17 16-byte units) so the 8 rows of one ldmatrix phase fall in 8 distinct bank groups.
//
// Band: a tile of keys entirely before the window of every query of the block, or entirely after
// its last query, is never loaded (the loop runs over the band's tiles only); a tile that the band
// crosses, or that holds rows past T, is masked element by element (p = 0), the others not at all.
// Rows past T are zero-filled in shared memory (never read from global) and never stored. Causal
// blocks have very different amounts of work: the forward and dq grids run the last query tiles
// (the longest rows) first, the dk/dv grid the first key tiles.
//
// Softmax in base 2: scores are scaled by scale*log2(e) once, p = exp2(s - m). A row can see no
// key of a whole tile (a window): its max stays -inf and exp2 is taken against 0 instead, so it
// contributes exact zeros, never NaN. The row sum l accumulates the fp32 p (before rounding to
// bf16 for the PV product), per thread, and is reduced across the 4 lanes of the row once at the
// end; lse = (m + log2 l) * ln 2.
//
// Backward, deterministic (no floating-point atomics; every output element is owned by one warp
// and summed in a fixed order, so gradients are bitwise the same on every run):
//   1. prep: D_i = <dO_i, o_i> (fp32, one warp per row) into scratch (B, H, T).
//   2. dk/dv pass, key-major: a block owns 64 keys of one kv head and walks the group's query heads
//      and, per head, the query tiles of the band (one double-buffered stream of (Q, dO, lse, D)
//      tiles). Per tile it recomputes Sᵀ = K Qᵀ and dPᵀ = V dOᵀ, Pᵀ = exp2(Sᵀ - lse), dSᵀ = Pᵀ (dPᵀ - D),
//      then dV += Pᵀ dO and dK += dSᵀ Q with Pᵀ, dSᵀ as A fragments from registers.
//   3. dq pass, query-major: like the forward (a block owns 64 queries of one head, streams the
//      band's K and V tiles), recomputes S, dP, P from lse, dS, and dQ += dS K.
//   S and dP are computed twice (passes 2 and 3): 7 tile products instead of 5, the price of
//   having neither atomics nor a dQ accumulator shared between blocks.
// Registers: forward D=128 holds O (64 fp32) + Q fragments (32) + S (32); dk/dv D=128 dK 64 + dV 64
// + Sᵀ and dPᵀ 16 each, so its query tile is 32 rows for D=128 (64 for D=64); dq D=128 dQ 64 + S 32
// + dP 32, with the Q and dO fragments reloaded from shared memory. nvcc 13 -Xptxas -v for sm_90
// (D = 64 / 128): forward 133 / 251 registers, dk/dv 181 / 238, dq 166 / 242, no spills; at D = 128
// that is 2 blocks (8 warps) per SM.
//
// fp32 variant (attention_forward_fp32 / attention_backward_fp32): plain fp32 tensors, one warp per
// query row (forward, dq) or key row (dk/dv), lanes split d and reduce each dot product with
// shuffles, online softmax per key, fp32 FMAs, any D <= 256. Simple, slow, deterministic: for an fp32
// build that checks the whole model against the CPU reference, not for training.
//
// Entry points: attention_forward / attention_backward take floatX and are the tensor-core kernels
// (attention_forward_bf16 / attention_backward_bf16, explicitly bf16) in the default build, the fp32
// variant in the fp32 build (-DLLMC_FP32, common.cuh), which rounds nothing to bf16.
//
// Limits (checked): bf16 path D = 64 or 128, all pointers 16-byte aligned, ldq and ldkv multiples of
// 8 (16-byte rows); ldq >= H*D, ldkv >= Hkv*D, both < 2^31; any T, H, Hkv with
// H % Hkv == 0, H and B <= 65535. Shared memory per block (opted in with cudaFuncSetAttribute):
// forward 45 / 85 KiB (D = 64 / 128), dk/dv 55 / 68.5 KiB, dq 54 / 102 KiB.
#pragma once
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/mma.cuh"
#include "llmc/cuda/reduce.cuh"

// The tensor-core path is bf16 by construction (mma.sync bf16 operands, P and dS rounded to bf16),
// so it names its type explicitly rather than floatX: it is the same code in both builds.
typedef __nv_bfloat16 att_bf16;

constexpr int ATT_THREADS = 128;  // 4 warps x 16 rows
constexpr int ATT_BQ = 64;        // query rows per block (forward, dq)
constexpr int ATT_BK = 64;        // key rows per streamed tile (forward, dq) and per block (dk/dv)
#define ATT_LOG2E 1.4426950408889634f
#define ATT_LN2 0.69314718055994531f

// query rows per streamed tile of the dk/dv pass (see the register budget above)
template <int D> __host__ __device__ constexpr int att_bq_dkdv() { return D == 128 ? 32 : 64; }

template <int D> __host__ __device__ constexpr size_t att_forward_smem() { return (size_t)(ATT_BQ + 4 * ATT_BK) * (D + 8) * sizeof(att_bf16); }
template <int D> __host__ __device__ constexpr size_t att_dkdv_smem() {
    return (size_t)(2 * ATT_BK + 4 * att_bq_dkdv<D>()) * (D + 8) * sizeof(att_bf16) + 4 * att_bq_dkdv<D>() * sizeof(float);
}
template <int D> __host__ __device__ constexpr size_t att_dq_smem() { return (size_t)(2 * ATT_BQ + 4 * ATT_BK) * (D + 8) * sizeof(att_bf16); }

// two fp32 values rounded to bf16 and packed as one 32-bit mma operand register (lo = lower element)
__device__ __forceinline__ uint32_t att_pack(float lo, float hi) {
    return pack_bf16x2(__float2bfloat16(lo), __float2bfloat16(hi));
}

// Rows [r0, r0 + R) of one head's (T rows, `stride` elements apart) slice into shared memory (row
// stride D + 8): cp.async for rows < T, zeros (plain stores) for rows past T. Not committed here.
template <int D, int R>
__device__ __forceinline__ void att_load_rows(att_bf16* dst, const att_bf16* src, long stride, int r0, int T) {
    constexpr int CH = D / 8;  // 16-byte chunks per row
    static_assert((R * CH) % ATT_THREADS == 0, "att_load_rows: chunks must split evenly over the block");
    #pragma unroll
    for (int n = 0; n < R * CH / ATT_THREADS; n++) {
        const int c = threadIdx.x + n * ATT_THREADS;
        const int r = c / CH, col = (c % CH) * 8;
        att_bf16* d = dst + r * (D + 8) + col;
        if (r0 + r < T) cp_async_16_cg(d, src + (long)(r0 + r) * stride + col);
        else *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
    }
}

__device__ __forceinline__ float att_f32(att_bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float att_f32(float x) { return x; }

// A fragment (16 x 16, rows row0.., columns k0..) of a row-major shared tile
template <int LD>
__device__ __forceinline__ void att_ldm_a(uint32_t a[4], const att_bf16* tile, int row0, int k0) {
    const int lane = threadIdx.x % WARP_SIZE;
    ldmatrix_x4(a, &tile[(row0 + lane % 16) * LD + k0 + (lane / 16) * 8]);
}
// B fragments of two n8 tiles (n0.., n0+8..) at k0.. from a tile stored n-major, k contiguous (.col)
template <int LD>
__device__ __forceinline__ void att_ldm_b(uint32_t b0[2], uint32_t b1[2], const att_bf16* tile, int n0, int k0) {
    const int lane = threadIdx.x % WARP_SIZE;
    uint32_t r[4];
    ldmatrix_x4(r, &tile[(n0 + lane % 8 + (lane / 16) * 8) * LD + k0 + ((lane / 8) % 2) * 8]);
    b0[0] = r[0]; b0[1] = r[1]; b1[0] = r[2]; b1[1] = r[3];
}
// B fragments of two n8 tiles (n0.., n0+8..) at k0.. from a tile stored k-major, n contiguous (row-major K x N)
template <int LD>
__device__ __forceinline__ void att_ldm_bt(uint32_t b0[2], uint32_t b1[2], const att_bf16* tile, int k0, int n0) {
    const int lane = threadIdx.x % WARP_SIZE;
    uint32_t r[4];
    ldmatrix_x4_trans(r, &tile[(k0 + lane % 16) * LD + n0 + (lane / 16) * 8]);
    b0[0] = r[0]; b0[1] = r[1]; b1[0] = r[2]; b1[1] = r[3];
}
// A fragment of k16 step kc from the C fragments of n8 tiles 2kc and 2kc+1, rounded to bf16
__device__ __forceinline__ void att_c_to_a(uint32_t a[4], const float c0[4], const float c1[4]) {
    a[0] = att_pack(c0[0], c0[1]);
    a[1] = att_pack(c0[2], c0[3]);
    a[2] = att_pack(c1[0], c1[1]);
    a[3] = att_pack(c1[2], c1[3]);
}

// Store a warp's 16 rows x D fp32 C fragments (times mul) as bf16 rows: staged through the warp's
// own 16 rows of a shared tile `st` (which no other warp reads), then 16-byte global stores of the
// rows < T. dst(r) = address of row r0 + r.
template <int D>
__device__ __forceinline__ void att_store_rows(att_bf16* st, const float acc[][4], float mul0, float mul1, att_bf16* dst, long stride,
                                               int r0, int T) {
    constexpr int LD = D + 8;
    const int lane = threadIdx.x % WARP_SIZE, g = lane >> 2, t = lane & 3;
    #pragma unroll
    for (int dn = 0; dn < D / 8; dn++) {
        *reinterpret_cast<uint32_t*>(&st[g * LD + dn * 8 + 2 * t]) = att_pack(acc[dn][0] * mul0, acc[dn][1] * mul0);
        *reinterpret_cast<uint32_t*>(&st[(g + 8) * LD + dn * 8 + 2 * t]) = att_pack(acc[dn][2] * mul1, acc[dn][3] * mul1);
    }
    __syncwarp();
    #pragma unroll
    for (int n = 0; n < 16 * (D / 8) / WARP_SIZE; n++) {
        const int c = lane + n * WARP_SIZE;
        const int r = c / (D / 8), col = (c % (D / 8)) * 8;
        if (r0 + r < T) *reinterpret_cast<uint4*>(dst + (long)(r0 + r) * stride + col) = *reinterpret_cast<const uint4*>(&st[r * LD + col]);
    }
}

// ------------------------------------------------------------------------------------------------
// forward

// grid (ceil(T/64), H, B). sc = log2(e)/sqrt(D), w = min(window, T-1). qstride, kstride: token row
// strides of q and of k, v (elements); out is contiguous (H*D).
template <int D>
__global__ void __launch_bounds__(ATT_THREADS)
attention_forward_kernel(att_bf16* out, float* lse, const att_bf16* q, const att_bf16* k, const att_bf16* v, int T, int H, int Hkv, int w,
                         float sc, int qstride, int kstride) {
    constexpr int LD = D + 8, TILE = ATT_BK * LD;
    DYNAMIC_SMEM(att_bf16, smem);
    att_bf16* Qs = smem;                // ATT_BQ x LD
    att_bf16* KV = smem + ATT_BQ * LD;  // stage s: K tile at KV + 2*s*TILE, V tile right after
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, b = blockIdx.z, kvh = h / (H / Hkv);
    const int q0 = (gridDim.x - 1 - blockIdx.x) * ATT_BQ, q_last = min(q0 + ATT_BQ, T) - 1;
    const long ostride = (long)H * D;
    const att_bf16* qh = q + (long)b * T * qstride + (long)h * D;
    const att_bf16* kh = k + (long)b * T * kstride + (long)kvh * D;
    const att_bf16* vh = v + (long)b * T * kstride + (long)kvh * D;
    const int kt_lo = max(0, q0 - w) / ATT_BK, kt_hi = q_last / ATT_BK;
    const int i_row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};

    att_load_rows<D, ATT_BQ>(Qs, qh, qstride, q0, T);
    att_load_rows<D, ATT_BK>(KV, kh, kstride, kt_lo * ATT_BK, T);
    att_load_rows<D, ATT_BK>(KV + TILE, vh, kstride, kt_lo * ATT_BK, T);
    cp_async_commit();

    uint32_t qf[D / 16][4];
    float o[D / 8][4];
    #pragma unroll
    for (int dn = 0; dn < D / 8; dn++) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    for (int kt = kt_lo; kt <= kt_hi; kt++) {
        const int st = (kt - kt_lo) & 1;
        if (kt < kt_hi) {
            att_bf16* nxt = KV + 2 * (st ^ 1) * TILE;
            att_load_rows<D, ATT_BK>(nxt, kh, kstride, (kt + 1) * ATT_BK, T);
            att_load_rows<D, ATT_BK>(nxt + TILE, vh, kstride, (kt + 1) * ATT_BK, T);
            cp_async_commit();
            cp_async_wait<1>();  // tile kt (and Q) landed; kt+1 may still be in flight
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // every thread's copies of tile kt are visible to every warp
        if (kt == kt_lo) {
            #pragma unroll
            for (int kk = 0; kk < D / 16; kk++) att_ldm_a<LD>(qf[kk], Qs, warp * 16, kk * 16);
        }
        const att_bf16* Ks = KV + 2 * st * TILE;
        const att_bf16* Vs = Ks + TILE;

        // S = Q Kᵀ for the warp's 16 queries x 64 keys
        float s[ATT_BK / 8][4];
        #pragma unroll
        for (int nt = 0; nt < ATT_BK / 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
        #pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            #pragma unroll
            for (int nj = 0; nj < ATT_BK / 16; nj++) {
                uint32_t b0[2], b1[2];
                att_ldm_b<LD>(b0, b1, Ks, nj * 16, kk * 16);
                mma_m16n8k16_bf16(s[2 * nj], qf[kk], b0);
                mma_m16n8k16_bf16(s[2 * nj + 1], qf[kk], b1);
            }
        }

        // scale, mask (only where the band crosses the tile), online softmax
        const int k0 = kt * ATT_BK;
        const bool full = k0 + ATT_BK - 1 <= q0 && q0 + ATT_BQ - 1 - k0 <= w;
        float mx[2] = {m[0], m[1]};
        #pragma unroll
        for (int nt = 0; nt < ATT_BK / 8; nt++) {
            #pragma unroll
            for (int c = 0; c < 4; c++) {
                float x = s[nt][c] * sc;
                if (!full) {
                    const int i = i_row[c >> 1], j = k0 + nt * 8 + 2 * t + (c & 1);
                    if (j > i || i - j > w) x = -INFINITY;
                }
                s[nt][c] = x;
                mx[c >> 1] = fmaxf(mx[c >> 1], x);
            }
        }
        float base[2];
        #pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            base[r] = mx[r] == -INFINITY ? 0.0f : mx[r];  // nothing visible yet: exact zeros, not NaN
            const float alpha = exp2f(m[r] - base[r]);    // 0 while m is still -inf
            m[r] = mx[r];
            l[r] *= alpha;
            #pragma unroll
            for (int dn = 0; dn < D / 8; dn++) {
                o[dn][2 * r] *= alpha;
                o[dn][2 * r + 1] *= alpha;
            }
        }
        #pragma unroll
        for (int nt = 0; nt < ATT_BK / 8; nt++) {
            #pragma unroll
            for (int c = 0; c < 4; c++) {
                const float p = exp2f(s[nt][c] - base[c >> 1]);
                s[nt][c] = p;
                l[c >> 1] += p;
            }
        }

        // O += P V: P's C fragments are the A operand (bf16), V rows the k-major B operand
        #pragma unroll
        for (int kc = 0; kc < ATT_BK / 16; kc++) {
            uint32_t a[4];
            att_c_to_a(a, s[2 * kc], s[2 * kc + 1]);
            #pragma unroll
            for (int dj = 0; dj < D / 16; dj++) {
                uint32_t b0[2], b1[2];
                att_ldm_bt<LD>(b0, b1, Vs, kc * 16, dj * 16);
                mma_m16n8k16_bf16(o[2 * dj], a, b0);
                mma_m16n8k16_bf16(o[2 * dj + 1], a, b1);
            }
        }
        __syncthreads();  // all warps are done with this stage before the next iteration refills it
    }

    #pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        if (t == 0 && i_row[r] < T) lse[((long)b * H + h) * T + i_row[r]] = (m[r] + log2f(l[r])) * ATT_LN2;
    }
    // the warp's own 16 rows of Qs were read only by its own ldmatrix (first iteration)
    att_store_rows<D>(Qs + warp * 16 * LD, o, 1.0f / l[0], 1.0f / l[1], out + (long)b * T * ostride + (long)h * D, ostride,
                      q0 + warp * 16, T);
}

// ------------------------------------------------------------------------------------------------
// backward

// D_i = <dO_i, o_i> for every row (b, i, h), into Dbuf (B, H, T); one warp per row, 8 per block.
template <typename Tx>
__global__ void __launch_bounds__(256)
attention_backward_prep_kernel(float* Dbuf, const Tx* dout, const Tx* out, int B, int T, int H, int D) {
    const long row = (long)blockIdx.x * 8 + threadIdx.x / WARP_SIZE;  // row of (B, T, H)
    if (row >= (long)B * T * H) return;  // whole warp leaves together; no barrier follows
    const int lane = threadIdx.x % WARP_SIZE;
    const Tx* g = dout + row * D;
    const Tx* o = out + row * D;
    float acc = 0.0f;
    for (int d = lane; d < D; d += WARP_SIZE) acc += att_f32(g[d]) * att_f32(o[d]);
    acc = warp_reduce_sum(acc);
    if (lane == 0) {
        const int h = (int)(row % H);
        const long bt = row / H;
        Dbuf[(bt / T * H + h) * T + bt % T] = acc;
    }
}

// grid (ceil(T/64), Hkv, B): dk, dv of 64 keys of one kv head, summed over the group's query heads.
// qstride: token row stride of q; kstride: of k, v, dk, dv; dout is contiguous (H*D).
template <int D>
__global__ void __launch_bounds__(ATT_THREADS)
attention_backward_dkdv_kernel(att_bf16* dk, att_bf16* dv, const att_bf16* dout, const float* lse, const float* Dbuf, const att_bf16* q,
                               const att_bf16* k, const att_bf16* v, int T, int H, int Hkv, int w, float sc, float scale, int qstride,
                               int kstride) {
    constexpr int LD = D + 8, BQ = att_bq_dkdv<D>(), QT = BQ * LD;
    DYNAMIC_SMEM(att_bf16, smem);
    att_bf16* Ks = smem;               // ATT_BK x LD, loaded once
    att_bf16* Vs = Ks + ATT_BK * LD;   // ATT_BK x LD, loaded once
    att_bf16* QG = Vs + ATT_BK * LD;   // stage s: Q tile at QG + 2*s*QT, dO tile right after
    float* LS = reinterpret_cast<float*>(QG + 4 * QT);  // stage s: lse*log2(e) at LS + 2*s*BQ, D_i right after
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, g = lane >> 2, t = lane & 3;
    const int kvh = blockIdx.y, b = blockIdx.z, group = H / Hkv;
    const int k0 = blockIdx.x * ATT_BK, k_last = min(k0 + ATT_BK, T) - 1;
    const long gstride = (long)H * D;
    // query tiles that see a key of the block: i in [k0, k_last + w]
    const int qt_lo = k0 / BQ, nqt = min(T - 1, k_last + w) / BQ - qt_lo + 1, nsteps = group * nqt;
    const int j_row[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};

    // step n: query head kvh*group + n/nqt, query tile qt_lo + n%nqt, into stage st
    auto load_step = [&](int n, int st) {
        const int h = kvh * group + n / nqt, qq = (qt_lo + n % nqt) * BQ;
        att_load_rows<D, BQ>(QG + 2 * st * QT, q + (long)b * T * qstride + (long)h * D, qstride, qq, T);
        att_load_rows<D, BQ>(QG + 2 * st * QT + QT, dout + (long)b * T * gstride + (long)h * D, gstride, qq, T);
        float* ls = LS + 2 * st * BQ;
        for (int x = threadIdx.x; x < BQ; x += ATT_THREADS) {
            const int i = qq + x;
            const long bh = ((long)b * H + h) * T;
            ls[x] = i < T ? lse[bh + i] * ATT_LOG2E : 0.0f;
            ls[BQ + x] = i < T ? Dbuf[bh + i] : 0.0f;
        }
        cp_async_commit();
    };

    att_load_rows<D, ATT_BK>(Ks, k + (long)b * T * kstride + (long)kvh * D, kstride, k0, T);
    att_load_rows<D, ATT_BK>(Vs, v + (long)b * T * kstride + (long)kvh * D, kstride, k0, T);
    load_step(0, 0);  // one group with K and V

    float dK[D / 8][4], dV[D / 8][4];
    #pragma unroll
    for (int dn = 0; dn < D / 8; dn++) {
        dK[dn][0] = dK[dn][1] = dK[dn][2] = dK[dn][3] = 0.0f;
        dV[dn][0] = dV[dn][1] = dV[dn][2] = dV[dn][3] = 0.0f;
    }

    for (int n = 0; n < nsteps; n++) {
        const int st = n & 1;
        if (n + 1 < nsteps) {
            load_step(n + 1, st ^ 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const int q0 = (qt_lo + n % nqt) * BQ;
        const att_bf16* Qs = QG + 2 * st * QT;
        const att_bf16* Gs = Qs + QT;
        const float* Ls = LS + 2 * st * BQ;
        const float* Ds = Ls + BQ;

        // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ for the warp's 16 keys x BQ queries
        float s[BQ / 8][4], dp[BQ / 8][4];
        #pragma unroll
        for (int nt = 0; nt < BQ / 8; nt++)
            #pragma unroll
            for (int c = 0; c < 4; c++) s[nt][c] = dp[nt][c] = 0.0f;
        #pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t ka[4], va[4];
            att_ldm_a<LD>(ka, Ks, warp * 16, kk * 16);
            att_ldm_a<LD>(va, Vs, warp * 16, kk * 16);
            #pragma unroll
            for (int nj = 0; nj < BQ / 16; nj++) {
                uint32_t b0[2], b1[2];
                att_ldm_b<LD>(b0, b1, Qs, nj * 16, kk * 16);
                mma_m16n8k16_bf16(s[2 * nj], ka, b0);
                mma_m16n8k16_bf16(s[2 * nj + 1], ka, b1);
                att_ldm_b<LD>(b0, b1, Gs, nj * 16, kk * 16);
                mma_m16n8k16_bf16(dp[2 * nj], va, b0);
                mma_m16n8k16_bf16(dp[2 * nj + 1], va, b1);
            }
        }
        // Pᵀ = exp2(Sᵀ sc - lse log2 e) (0 outside the band), dSᵀ = Pᵀ (dPᵀ - D)
        const bool full = k0 + ATT_BK - 1 <= q0 && q0 + BQ - 1 - k0 <= w && q0 + BQ <= T;
        #pragma unroll
        for (int nt = 0; nt < BQ / 8; nt++) {
            #pragma unroll
            for (int c = 0; c < 4; c++) {
                const int x = nt * 8 + 2 * t + (c & 1);  // query within the tile
                float p = exp2f(s[nt][c] * sc - Ls[x]);
                if (!full) {
                    const int i = q0 + x, j = j_row[c >> 1];
                    if (j > i || i - j > w || i >= T) p = 0.0f;
                }
                s[nt][c] = p;
                dp[nt][c] = p * (dp[nt][c] - Ds[x]);
            }
        }
        // dV += Pᵀ dO, dK += dSᵀ Q (m = key, k = query, n = d)
        #pragma unroll
        for (int kc = 0; kc < BQ / 16; kc++) {
            uint32_t pa[4], da[4];
            att_c_to_a(pa, s[2 * kc], s[2 * kc + 1]);
            att_c_to_a(da, dp[2 * kc], dp[2 * kc + 1]);
            #pragma unroll
            for (int dj = 0; dj < D / 16; dj++) {
                uint32_t b0[2], b1[2];
                att_ldm_bt<LD>(b0, b1, Gs, kc * 16, dj * 16);
                mma_m16n8k16_bf16(dV[2 * dj], pa, b0);
                mma_m16n8k16_bf16(dV[2 * dj + 1], pa, b1);
                att_ldm_bt<LD>(b0, b1, Qs, kc * 16, dj * 16);
                mma_m16n8k16_bf16(dK[2 * dj], da, b0);
                mma_m16n8k16_bf16(dK[2 * dj + 1], da, b1);
            }
        }
        __syncthreads();  // the stage is free for the next refill
    }
    // the warp's own 16 rows of Ks and Vs were read only by its own ldmatrix
    const long off = (long)b * T * kstride + (long)kvh * D;
    att_store_rows<D>(Ks + warp * 16 * LD, dK, scale, scale, dk + off, kstride, k0 + warp * 16, T);
    att_store_rows<D>(Vs + warp * 16 * LD, dV, 1.0f, 1.0f, dv + off, kstride, k0 + warp * 16, T);
}

// grid (ceil(T/64), H, B): dq of 64 queries of one head. qstride: token row stride of q and dq;
// kstride: of k, v; dout is contiguous (H*D).
template <int D>
__global__ void __launch_bounds__(ATT_THREADS)
attention_backward_dq_kernel(att_bf16* dq, const att_bf16* dout, const float* lse, const float* Dbuf, const att_bf16* q, const att_bf16* k,
                             const att_bf16* v, int T, int H, int Hkv, int w, float sc, float scale, int qstride, int kstride) {
    constexpr int LD = D + 8, TILE = ATT_BK * LD;
    DYNAMIC_SMEM(att_bf16, smem);
    att_bf16* Qs = smem;                   // ATT_BQ x LD
    att_bf16* Gs = Qs + ATT_BQ * LD;       // dO, ATT_BQ x LD
    att_bf16* KV = Gs + ATT_BQ * LD;       // stage s: K tile at KV + 2*s*TILE, V tile right after
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, b = blockIdx.z, kvh = h / (H / Hkv);
    const int q0 = (gridDim.x - 1 - blockIdx.x) * ATT_BQ, q_last = min(q0 + ATT_BQ, T) - 1;
    const long gstride = (long)H * D;
    const long qoff = (long)b * T * qstride + (long)h * D, koff = (long)b * T * kstride + (long)kvh * D;
    const int kt_lo = max(0, q0 - w) / ATT_BK, kt_hi = q_last / ATT_BK;
    const int i_row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    float lse2[2], Di[2];
    #pragma unroll
    for (int r = 0; r < 2; r++) {
        const long bh = ((long)b * H + h) * T;
        lse2[r] = i_row[r] < T ? lse[bh + i_row[r]] * ATT_LOG2E : 0.0f;
        Di[r] = i_row[r] < T ? Dbuf[bh + i_row[r]] : 0.0f;
    }

    att_load_rows<D, ATT_BQ>(Qs, q + qoff, qstride, q0, T);
    att_load_rows<D, ATT_BQ>(Gs, dout + (long)b * T * gstride + (long)h * D, gstride, q0, T);
    att_load_rows<D, ATT_BK>(KV, k + koff, kstride, kt_lo * ATT_BK, T);
    att_load_rows<D, ATT_BK>(KV + TILE, v + koff, kstride, kt_lo * ATT_BK, T);
    cp_async_commit();

    float dQ[D / 8][4];
    #pragma unroll
    for (int dn = 0; dn < D / 8; dn++) dQ[dn][0] = dQ[dn][1] = dQ[dn][2] = dQ[dn][3] = 0.0f;

    for (int kt = kt_lo; kt <= kt_hi; kt++) {
        const int st = (kt - kt_lo) & 1;
        if (kt < kt_hi) {
            att_bf16* nxt = KV + 2 * (st ^ 1) * TILE;
            att_load_rows<D, ATT_BK>(nxt, k + koff, kstride, (kt + 1) * ATT_BK, T);
            att_load_rows<D, ATT_BK>(nxt + TILE, v + koff, kstride, (kt + 1) * ATT_BK, T);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const att_bf16* Ks = KV + 2 * st * TILE;
        const att_bf16* Vs = Ks + TILE;

        // S = Q Kᵀ, dP = dO Vᵀ for the warp's 16 queries x 64 keys
        float s[ATT_BK / 8][4], dp[ATT_BK / 8][4];
        #pragma unroll
        for (int nt = 0; nt < ATT_BK / 8; nt++)
            #pragma unroll
            for (int c = 0; c < 4; c++) s[nt][c] = dp[nt][c] = 0.0f;
        #pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t qa[4], ga[4];
            att_ldm_a<LD>(qa, Qs, warp * 16, kk * 16);
            att_ldm_a<LD>(ga, Gs, warp * 16, kk * 16);
            #pragma unroll
            for (int nj = 0; nj < ATT_BK / 16; nj++) {
                uint32_t b0[2], b1[2];
                att_ldm_b<LD>(b0, b1, Ks, nj * 16, kk * 16);
                mma_m16n8k16_bf16(s[2 * nj], qa, b0);
                mma_m16n8k16_bf16(s[2 * nj + 1], qa, b1);
                att_ldm_b<LD>(b0, b1, Vs, nj * 16, kk * 16);
                mma_m16n8k16_bf16(dp[2 * nj], ga, b0);
                mma_m16n8k16_bf16(dp[2 * nj + 1], ga, b1);
            }
        }
        const int k0 = kt * ATT_BK;
        const bool full = k0 + ATT_BK - 1 <= q0 && q0 + ATT_BQ - 1 - k0 <= w && q0 + ATT_BQ <= T;
        #pragma unroll
        for (int nt = 0; nt < ATT_BK / 8; nt++) {
            #pragma unroll
            for (int c = 0; c < 4; c++) {
                const int r = c >> 1;
                float p = exp2f(s[nt][c] * sc - lse2[r]);
                if (!full) {
                    const int i = i_row[r], j = k0 + nt * 8 + 2 * t + (c & 1);
                    if (j > i || i - j > w || i >= T) p = 0.0f;
                }
                dp[nt][c] = p * (dp[nt][c] - Di[r]);  // dS
            }
        }
        // dQ += dS K (m = query, k = key, n = d): K rows are the k-major B operand
        #pragma unroll
        for (int kc = 0; kc < ATT_BK / 16; kc++) {
            uint32_t a[4];
            att_c_to_a(a, dp[2 * kc], dp[2 * kc + 1]);
            #pragma unroll
            for (int dj = 0; dj < D / 16; dj++) {
                uint32_t b0[2], b1[2];
                att_ldm_bt<LD>(b0, b1, Ks, kc * 16, dj * 16);
                mma_m16n8k16_bf16(dQ[2 * dj], a, b0);
                mma_m16n8k16_bf16(dQ[2 * dj + 1], a, b1);
            }
        }
        __syncthreads();
    }
    // the warp's own 16 rows of Qs were read only by its own ldmatrix
    att_store_rows<D>(Qs + warp * 16 * LD, dQ, scale, scale, dq + qoff, qstride, q0 + warp * 16, T);
}

// ------------------------------------------------------------------------------------------------
// fp32 variant: one warp per row, lanes split d (element d = lane + 32u, u < NV = ceil(D/32))

template <int NV>
__device__ __forceinline__ float att32_dot(const float (&a)[NV], const float* x, int D) {
    const int lane = threadIdx.x % WARP_SIZE;
    float part = 0.0f;
    #pragma unroll
    for (int u = 0; u < NV; u++) {
        const int d = lane + WARP_SIZE * u;
        if (d < D) part += a[u] * x[d];
    }
    return warp_reduce_sum(part);
}

// one warp per query row (b, i, h), 8 rows per block; keys in increasing order. ldq, ldkv: token row
// strides of q (and dq) and of k, v (and dk, dv); out, dout are contiguous (row * D).
template <int NV>
__global__ void __launch_bounds__(256)
attention_forward_fp32_kernel(float* out, float* lse, const float* q, const float* k, const float* v, int B, int T, int H, int Hkv, int D,
                              int w, float scale, int ldq, int ldkv) {
    const long row = (long)blockIdx.x * 8 + threadIdx.x / WARP_SIZE;
    if (row >= (long)B * T * H) return;
    const int lane = threadIdx.x % WARP_SIZE;
    const int h = (int)(row % H), i = (int)(row / H % T), b = (int)(row / H / T), kvh = h / (H / Hkv);
    const float* qr = q + (row / H) * ldq + (long)h * D;
    float qv[NV], acc[NV];
    #pragma unroll
    for (int u = 0; u < NV; u++) {
        const int d = lane + WARP_SIZE * u;
        qv[u] = d < D ? qr[d] : 0.0f;
        acc[u] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int j = max(0, i - w); j <= i; j++) {
        const long kr = ((long)b * T + j) * ldkv + (long)kvh * D;
        const float s = att32_dot<NV>(qv, k + kr, D) * scale;
        const float mn = fmaxf(m, s);
        const float alpha = expf(m - mn), p = expf(s - mn);
        l = l * alpha + p;
        #pragma unroll
        for (int u = 0; u < NV; u++) {
            const int d = lane + WARP_SIZE * u;
            if (d < D) acc[u] = acc[u] * alpha + p * v[kr + d];
        }
        m = mn;
    }
    const float inv = 1.0f / l;
    #pragma unroll
    for (int u = 0; u < NV; u++) {
        const int d = lane + WARP_SIZE * u;
        if (d < D) out[row * D + d] = acc[u] * inv;
    }
    if (lane == 0) lse[((long)b * H + h) * T + i] = m + logf(l);
}

// one warp per query row: dq_i = scale * sum_j ds_ij k_j
template <int NV>
__global__ void __launch_bounds__(256)
attention_backward_dq_fp32_kernel(float* dq, const float* dout, const float* lse, const float* Dbuf, const float* q, const float* k,
                                  const float* v, int B, int T, int H, int Hkv, int D, int w, float scale, int ldq, int ldkv) {
    const long row = (long)blockIdx.x * 8 + threadIdx.x / WARP_SIZE;
    if (row >= (long)B * T * H) return;
    const int lane = threadIdx.x % WARP_SIZE;
    const int h = (int)(row % H), i = (int)(row / H % T), b = (int)(row / H / T), kvh = h / (H / Hkv);
    const float lse_i = lse[((long)b * H + h) * T + i], D_i = Dbuf[((long)b * H + h) * T + i];
    const long qr = (row / H) * ldq + (long)h * D;  // this row in q and dq
    float qv[NV], gv[NV], acc[NV];
    #pragma unroll
    for (int u = 0; u < NV; u++) {
        const int d = lane + WARP_SIZE * u;
        qv[u] = d < D ? q[qr + d] : 0.0f;
        gv[u] = d < D ? dout[row * D + d] : 0.0f;
        acc[u] = 0.0f;
    }
    for (int j = max(0, i - w); j <= i; j++) {
        const long kr = ((long)b * T + j) * ldkv + (long)kvh * D;
        const float p = expf(att32_dot<NV>(qv, k + kr, D) * scale - lse_i);
        const float ds = p * (att32_dot<NV>(gv, v + kr, D) - D_i);
        #pragma unroll
        for (int u = 0; u < NV; u++) {
            const int d = lane + WARP_SIZE * u;
            if (d < D) acc[u] += ds * k[kr + d];
        }
    }
    #pragma unroll
    for (int u = 0; u < NV; u++) {
        const int d = lane + WARP_SIZE * u;
        if (d < D) dq[qr + d] = acc[u] * scale;
    }
}

// one warp per key row (b, j, kvh): the group's query heads in order, queries i = j .. j + w in order.
// (minimum 1 block per SM: without it ptxas caps NV = 8 at 64 registers and spills)
template <int NV>
__global__ void __launch_bounds__(256, 1)
attention_backward_dkdv_fp32_kernel(float* dk, float* dv, const float* dout, const float* lse, const float* Dbuf, const float* q,
                                    const float* k, const float* v, int B, int T, int H, int Hkv, int D, int w, float scale, int ldq,
                                    int ldkv) {
    const long row = (long)blockIdx.x * 8 + threadIdx.x / WARP_SIZE;
    if (row >= (long)B * T * Hkv) return;
    const int lane = threadIdx.x % WARP_SIZE;
    const int kvh = (int)(row % Hkv), j = (int)(row / Hkv % T), b = (int)(row / Hkv / T), group = H / Hkv;
    const long kr = (row / Hkv) * ldkv + (long)kvh * D;  // this row in k, v, dk, dv
    float kv[NV], vv[NV], ak[NV], av[NV];
    #pragma unroll
    for (int u = 0; u < NV; u++) {
        const int d = lane + WARP_SIZE * u;
        kv[u] = d < D ? k[kr + d] : 0.0f;
        vv[u] = d < D ? v[kr + d] : 0.0f;
        ak[u] = av[u] = 0.0f;
    }
    const int i_end = min(T - 1, j + w);
    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        for (int i = j; i <= i_end; i++) {
            const long qr = ((long)b * T + i) * ldq + (long)h * D, gr = (((long)b * T + i) * H + h) * D, bh = ((long)b * H + h) * T;
            const float p = expf(att32_dot<NV>(kv, q + qr, D) * scale - lse[bh + i]);
            const float ds = p * (att32_dot<NV>(vv, dout + gr, D) - Dbuf[bh + i]);
            #pragma unroll
            for (int u = 0; u < NV; u++) {
                const int d = lane + WARP_SIZE * u;
                if (d < D) {
                    av[u] += p * dout[gr + d];
                    ak[u] += ds * q[qr + d];
                }
            }
        }
    }
    #pragma unroll
    for (int u = 0; u < NV; u++) {
        const int d = lane + WARP_SIZE * u;
        if (d < D) {
            dk[kr + d] = ak[u] * scale;
            dv[kr + d] = av[u];
        }
    }
}

// ------------------------------------------------------------------------------------------------
// launchers

inline void attention_check_args_cuda_(const char* what, int B, int T, int H, int Hkv, int D, int window) {
    LLMC_CHECK(B > 0 && T > 0 && D > 0, "%s: bad shape B=%d T=%d D=%d", what, B, T, D);
    LLMC_CHECK(H > 0 && Hkv > 0 && H % Hkv == 0, "%s: n_head %d must be a positive multiple of n_kv_head %d", what, H, Hkv);
    LLMC_CHECK(window >= 0, "%s: window must be >= 0, got %d", what, window);
    LLMC_CHECK(B <= 65535 && H <= 65535, "%s: B=%d and H=%d must be <= 65535 (grid y/z)", what, B, H);
}

// Token row strides (elements): ldq of q and dq, ldkv of k, v, dk, dv; 0 is contiguous (H*D, Hkv*D).
// Resolved in place. vec16: the tensor-core kernels move rows in 16-byte chunks (cp.async, uint4 stores).
inline void attention_resolve_ld_(const char* what, int H, int Hkv, int D, long& ldq, long& ldkv, bool vec16) {
    if (ldq == 0) ldq = (long)H * D;
    if (ldkv == 0) ldkv = (long)Hkv * D;
    LLMC_CHECK(ldq >= (long)H * D && ldkv >= (long)Hkv * D,
               "%s: row strides ldq=%ld, ldkv=%ld must be at least H*D=%ld and Hkv*D=%ld (0 means contiguous)", what, ldq, ldkv, (long)H * D,
               (long)Hkv * D);
    LLMC_CHECK(ldq <= INT_MAX && ldkv <= INT_MAX, "%s: row strides ldq=%ld, ldkv=%ld must fit in an int", what, ldq, ldkv);
    LLMC_CHECK(!vec16 || (ldq % 8 == 0 && ldkv % 8 == 0), "%s: row strides ldq=%ld, ldkv=%ld must be multiples of 8 (16-byte rows)", what,
               ldq, ldkv);
}

// floats of scratch attention_backward needs: D_i for every (b, h, i)
inline size_t attention_backward_scratch_floats(int B, int H, int T) { return (size_t)B * H * T; }

template <int D>
inline void attention_forward_d_(att_bf16* out, float* lse, const att_bf16* q, const att_bf16* k, const att_bf16* v, int B, int T, int H,
                                 int Hkv, int w, int ldq, int ldkv, cudaStream_t stream) {
    constexpr size_t smem = att_forward_smem<D>();
    cudaCheck(cudaFuncSetAttribute(attention_forward_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const float sc = (float)(1.4426950408889634 / sqrt((double)D));
    LAUNCH(attention_forward_kernel<D>, dim3(CEIL_DIV(T, ATT_BQ), H, B), ATT_THREADS, smem, stream, out, lse, q, k, v, T, H, Hkv, w, sc,
           ldq, ldkv);
}

// out (B,T,H,D) bf16 and lse (B,H,T) fp32, both overwritten. D = 64 or 128. ldq, ldkv: token row
// strides of q and of k, v (0: contiguous; multiples of 8).
inline void attention_forward_bf16(att_bf16* out, float* lse, const att_bf16* q, const att_bf16* k, const att_bf16* v, int B, int T, int H,
                                   int Hkv, int D, int window, cudaStream_t stream, long ldq = 0, long ldkv = 0) {
    attention_check_args_cuda_("attention_forward", B, T, H, Hkv, D, window);
    LLMC_CHECK(D == 64 || D == 128, "attention_forward: head dim %d: the tensor-core kernel supports 64 and 128", D);
    LLMC_CHECK(aligned16(out) && aligned16(q) && aligned16(k) && aligned16(v), "attention_forward: out, q, k, v must be 16-byte aligned");
    attention_resolve_ld_("attention_forward", H, Hkv, D, ldq, ldkv, true);
    const int w = window < T - 1 ? window : T - 1;
    if (D == 64) attention_forward_d_<64>(out, lse, q, k, v, B, T, H, Hkv, w, (int)ldq, (int)ldkv, stream);
    else attention_forward_d_<128>(out, lse, q, k, v, B, T, H, Hkv, w, (int)ldq, (int)ldkv, stream);
}

template <int D>
inline void attention_backward_d_(att_bf16* dq, att_bf16* dk, att_bf16* dv, const att_bf16* dout, const float* lse, const float* Dbuf,
                                  const att_bf16* q, const att_bf16* k, const att_bf16* v, int B, int T, int H, int Hkv, int w, int ldq,
                                  int ldkv, cudaStream_t stream) {
    constexpr size_t smem1 = att_dkdv_smem<D>(), smem2 = att_dq_smem<D>();
    cudaCheck(cudaFuncSetAttribute(attention_backward_dkdv_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem1));
    cudaCheck(cudaFuncSetAttribute(attention_backward_dq_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem2));
    const float scale = (float)(1.0 / sqrt((double)D)), sc = (float)(1.4426950408889634 / sqrt((double)D));
    LAUNCH(attention_backward_dkdv_kernel<D>, dim3(CEIL_DIV(T, ATT_BK), Hkv, B), ATT_THREADS, smem1, stream, dk, dv, dout, lse, Dbuf, q, k, v,
           T, H, Hkv, w, sc, scale, ldq, ldkv);
    LAUNCH(attention_backward_dq_kernel<D>, dim3(CEIL_DIV(T, ATT_BQ), H, B), ATT_THREADS, smem2, stream, dq, dout, lse, Dbuf, q, k, v, T, H,
           Hkv, w, sc, scale, ldq, ldkv);
}

// dq (B,T,H,D), dk, dv (B,T,Hkv,D) bf16, overwritten (only the D elements of each head's row: the
// columns between rows are not touched). scratch: attention_backward_scratch_floats(B, H, T). ldq:
// token row stride of q and dq, ldkv of k, v, dk, dv (0: contiguous; multiples of 8).
inline void attention_backward_bf16(att_bf16* dq, att_bf16* dk, att_bf16* dv, const att_bf16* dout, const att_bf16* out, const float* lse,
                                    const att_bf16* q, const att_bf16* k, const att_bf16* v, int B, int T, int H, int Hkv, int D, int window,
                                    float* scratch, cudaStream_t stream, long ldq = 0, long ldkv = 0) {
    attention_check_args_cuda_("attention_backward", B, T, H, Hkv, D, window);
    LLMC_CHECK(D == 64 || D == 128, "attention_backward: head dim %d: the tensor-core kernel supports 64 and 128", D);
    LLMC_CHECK(aligned16(dq) && aligned16(dk) && aligned16(dv) && aligned16(dout) && aligned16(q) && aligned16(k) && aligned16(v),
               "attention_backward: dq, dk, dv, dout, q, k, v must be 16-byte aligned");
    attention_resolve_ld_("attention_backward", H, Hkv, D, ldq, ldkv, true);
    const int w = window < T - 1 ? window : T - 1;
    const long rows = (long)B * T * H;
    LAUNCH(attention_backward_prep_kernel<att_bf16>, (unsigned)CEIL_DIV(rows, 8), 256, 0, stream, scratch, dout, out, B, T, H, D);
    if (D == 64) attention_backward_d_<64>(dq, dk, dv, dout, lse, scratch, q, k, v, B, T, H, Hkv, w, (int)ldq, (int)ldkv, stream);
    else attention_backward_d_<128>(dq, dk, dv, dout, lse, scratch, q, k, v, B, T, H, Hkv, w, (int)ldq, (int)ldkv, stream);
}

// fp32 variant: same semantics and layouts (row strides included), fp32 tensors, any D <= 256.
inline void attention_forward_fp32(float* out, float* lse, const float* q, const float* k, const float* v, int B, int T, int H, int Hkv, int D,
                                   int window, cudaStream_t stream, long ldq = 0, long ldkv = 0) {
    attention_check_args_cuda_("attention_forward_fp32", B, T, H, Hkv, D, window);
    LLMC_CHECK(D <= 256, "attention_forward_fp32: head dim %d is above 256", D);
    attention_resolve_ld_("attention_forward_fp32", H, Hkv, D, ldq, ldkv, false);
    const int w = window < T - 1 ? window : T - 1;
    const float scale = (float)(1.0 / sqrt((double)D));
    const unsigned grid = (unsigned)CEIL_DIV((long)B * T * H, 8);
    const int lq = (int)ldq, lkv = (int)ldkv;
    if (D <= 64) LAUNCH(attention_forward_fp32_kernel<2>, grid, 256, 0, stream, out, lse, q, k, v, B, T, H, Hkv, D, w, scale, lq, lkv);
    else if (D <= 128) LAUNCH(attention_forward_fp32_kernel<4>, grid, 256, 0, stream, out, lse, q, k, v, B, T, H, Hkv, D, w, scale, lq, lkv);
    else LAUNCH(attention_forward_fp32_kernel<8>, grid, 256, 0, stream, out, lse, q, k, v, B, T, H, Hkv, D, w, scale, lq, lkv);
}

template <int NV>
inline void attention_backward_fp32_nv_(float* dq, float* dk, float* dv, const float* dout, const float* lse, const float* Dbuf, const float* q,
                                        const float* k, const float* v, int B, int T, int H, int Hkv, int D, int w, float scale, int ldq,
                                        int ldkv, cudaStream_t stream) {
    LAUNCH(attention_backward_dq_fp32_kernel<NV>, (unsigned)CEIL_DIV((long)B * T * H, 8), 256, 0, stream, dq, dout, lse, Dbuf, q, k, v, B, T,
           H, Hkv, D, w, scale, ldq, ldkv);
    LAUNCH(attention_backward_dkdv_fp32_kernel<NV>, (unsigned)CEIL_DIV((long)B * T * Hkv, 8), 256, 0, stream, dk, dv, dout, lse, Dbuf, q, k,
           v, B, T, H, Hkv, D, w, scale, ldq, ldkv);
}

// dq, dk, dv overwritten (only the D elements of each head's row). scratch:
// attention_backward_scratch_floats(B, H, T).
inline void attention_backward_fp32(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse, const float* q,
                                    const float* k, const float* v, int B, int T, int H, int Hkv, int D, int window, float* scratch,
                                    cudaStream_t stream, long ldq = 0, long ldkv = 0) {
    attention_check_args_cuda_("attention_backward_fp32", B, T, H, Hkv, D, window);
    LLMC_CHECK(D <= 256, "attention_backward_fp32: head dim %d is above 256", D);
    attention_resolve_ld_("attention_backward_fp32", H, Hkv, D, ldq, ldkv, false);
    const int w = window < T - 1 ? window : T - 1;
    const float scale = (float)(1.0 / sqrt((double)D));
    LAUNCH(attention_backward_prep_kernel<float>, (unsigned)CEIL_DIV((long)B * T * H, 8), 256, 0, stream, scratch, dout, out, B, T, H, D);
    const int lq = (int)ldq, lkv = (int)ldkv;
    if (D <= 64) attention_backward_fp32_nv_<2>(dq, dk, dv, dout, lse, scratch, q, k, v, B, T, H, Hkv, D, w, scale, lq, lkv, stream);
    else if (D <= 128) attention_backward_fp32_nv_<4>(dq, dk, dv, dout, lse, scratch, q, k, v, B, T, H, Hkv, D, w, scale, lq, lkv, stream);
    else attention_backward_fp32_nv_<8>(dq, dk, dv, dout, lse, scratch, q, k, v, B, T, H, Hkv, D, w, scale, lq, lkv, stream);
}

// ------------------------------------------------------------------------------------------------
// the model's entry points, on floatX: the tensor-core kernels in the bf16 build, the fp32 variant in
// the fp32 build (-DLLMC_FP32), where nothing may be rounded to bf16 (the tensor-core path rounds P
// and dS to bf16 by design, so it has no fp32 form).

// out (B,T,H,D) floatX and lse (B,H,T) fp32, both overwritten. bf16 build: D = 64 or 128, pointers
// 16-byte aligned, row strides multiples of 8; fp32 build: any D <= 256. ldq, ldkv: token row strides
// of q and of k, v in elements (0: contiguous, H*D and Hkv*D; see the header comment).
inline void attention_forward(floatX* out, float* lse, const floatX* q, const floatX* k, const floatX* v, int B, int T, int H, int Hkv, int D,
                              int window, cudaStream_t stream, long ldq = 0, long ldkv = 0) {
#if LLMC_FLOATX_FP32
    attention_forward_fp32(out, lse, q, k, v, B, T, H, Hkv, D, window, stream, ldq, ldkv);
#else
    attention_forward_bf16(out, lse, q, k, v, B, T, H, Hkv, D, window, stream, ldq, ldkv);
#endif
}

// dq (B,T,H,D), dk, dv (B,T,Hkv,D) floatX, overwritten (only the D elements of each head's row).
// scratch: attention_backward_scratch_floats(B, H, T). ldq: token row stride of q and dq, ldkv of k,
// v, dk, dv (0: contiguous). dq, dk, dv must not overlap q, k, v.
inline void attention_backward(floatX* dq, floatX* dk, floatX* dv, const floatX* dout, const floatX* out, const float* lse, const floatX* q,
                               const floatX* k, const floatX* v, int B, int T, int H, int Hkv, int D, int window, float* scratch,
                               cudaStream_t stream, long ldq = 0, long ldkv = 0) {
#if LLMC_FLOATX_FP32
    attention_backward_fp32(dq, dk, dv, dout, out, lse, q, k, v, B, T, H, Hkv, D, window, scratch, stream, ldq, ldkv);
#else
    attention_backward_bf16(dq, dk, dv, dout, out, lse, q, k, v, B, T, H, Hkv, D, window, scratch, stream, ldq, ldkv);
#endif
}
