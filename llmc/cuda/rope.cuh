// rope.cuh: rotary position embedding followed by QK-norm (x1.2), fused, for q and k together,
// forward and backward (docs/model.md#rope, docs/model.md#qknorm). CPU twins: rope_forward/backward
// (llmc/cpu/rope.h) then qknorm_forward/backward (llmc/cpu/qknorm.h), called there once for q
// and once for k; here one launch per direction covers both tensors.
//
// Per row (one head of one token, D values; rows of q are (b, t, h), of k (b, t, hk)):
//   forward:  y = rotate(x, -theta_t)  (half-split pairs (x[j], x[j + D/2]):
//                                       y1 = x1 cos + x2 sin,  y2 = -x1 sin + x2 cos)
//             r = 1/sqrt(mean(y^2) + eps),  out = bf16(1.2 r y),  rstd = r (fp32, without the 1.2)
//   backward: with G = dout and the stored out (= 1.2 n):
//             dy = 1.2 r (G - n <G, n>/D) = 1.2 r (G - out <G, out> / (1.44 D))
//             dinp = rotate(dy, +theta_t)  (dx1 = dy1 cos - dy2 sin,  dx2 = dy1 sin + dy2 cos)
//             (overwrite; dinp == dout allowed)
// t is the row's position in its sequence, table row pos0 + t. The tables cos, sin are floatX
// (max_pos, D/2): bf16 as nanochat keeps them (docs/model.md#precision), fp32 in the fp32 build; the
// caller guarantees pos0 + T <= max_pos.
//
// Fusion: the rotated row never leaves registers, so the forward reads x once and writes out once
// (rope then qknorm would write and re-read it), and it is not rounded to bf16 in between (nanochat
// rounds the RoPE output; this keeps it fp32: one rounding fewer).
//
// Strategy: a row is only D = 128 values (256 bytes), less than a warp's 16-byte loads cover, so a
// warp works on 32/lpr rows at once, lpr ("lanes per row", a power of two <= 32) lanes each. A lane
// handles W pairs at a time: the W-wide packs of x1 at j and of x2 at j + D/2, and the matching
// packs of the cos and sin rows (shared by all heads and batch rows at position t, so mostly L1/L2
// hits). The row's sum of squares (dot product in the backward) is reduced with xor-shuffles over
// offsets lpr/2 .. 1, which stay inside the lane's aligned group; all 32 lanes execute them (lanes
// whose row is past the end contribute 0), so the full mask is always correct. Each lane reads its
// elements twice (reduction pass, then the output pass, an L1 hit), and only ever writes elements
// it has already read, so in-place calls are safe. W = XPACK (16-byte accesses) needs D/2 % XPACK == 0
// (each half row starts 16-byte aligned), 16-byte aligned pointers and row strides that are
// multiples of XPACK; otherwise W = 1.
//
// Row strides (ldq, ldk): the GPU trainer computes q, k and v with one GEMM whose output rows are
// [q | k | v] per token, and runs both directions in place on that packed buffer, so the token rows
// of the q-shaped tensors (q, qn; dq, dqn, qn) are ldq elements apart and those of the k-shaped ones
// ldk (head h of token n at n*ld + h*D; 0 means dense, H*D or Hkv*D). Only the row's address
// changes: every value goes through the same arithmetic, so a strided call gives the dense call's
// bits, and elements outside the rows (v, in the trainer) are never touched.
#pragma once
#include "llmc/cuda/common.cuh"
#include "llmc/cuda/reduce.cuh"
#include "llmc/cuda/rmsnorm.cuh"  // LLMC_RMSNORM_EPS_F

constexpr int ROPE_BLOCK = 256;
constexpr float ROPE_QKNORM_SCALE = 1.2f;

// smallest power of two >= the packs in half a row, at most 32
inline int rope_lanes_per_row(int half, int W) {
    const int packs = CEIL_DIV(half, W);
    int lpr = 1;
    while (lpr < packs && lpr < WARP_SIZE) lpr *= 2;
    return lpr;
}

// The row this lane works on; false if past the end. Gives the row's tensor (q or k), its index r
// within that tensor (for rstd), its element offset in the (strided) tensors and the position t.
struct RopeRow {
    long row;   // global row (q rows first, then k rows)
    bool is_q;
    long r;     // row within its tensor: token n = r / NH, head r % NH
    long off;   // n * ld + (r % NH) * D: where the row starts in its tensors
    int t;      // position in the sequence
    bool valid;
};

__device__ __forceinline__ RopeRow rope_row(int lpr, int T, int H, int Hkv, int D, long ldq, long ldk, long q_rows,
                                            long total_rows) {
    const int lane = threadIdx.x % WARP_SIZE;
    RopeRow R;
    R.row = ((long)blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE) * (WARP_SIZE / lpr) + lane / lpr;
    R.valid = R.row < total_rows;
    R.is_q = R.row < q_rows;
    R.r = R.is_q ? R.row : R.row - q_rows;
    const int NH = R.is_q ? H : Hkv;
    const long n = R.r / NH;
    R.off = n * (R.is_q ? ldq : ldk) + (R.r - n * NH) * D;
    R.t = (int)(n % T);
    return R;
}

// sum over the lpr lanes of this lane's group (all 32 lanes must call it)
__device__ __forceinline__ float rope_group_sum(float v, int lpr) {
    for (int offset = lpr / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

template <int W>
__global__ void __launch_bounds__(ROPE_BLOCK)
rope_qknorm_forward_kernel(floatX* qn, float* rstd_q, floatX* kn, float* rstd_k, const floatX* q, const floatX* k,
                           const floatX* cos, const floatX* sin, int T, int H, int Hkv, int D, int pos0, long ldq,
                           long ldk, long q_rows, long total_rows, int lpr) {
    const RopeRow R = rope_row(lpr, T, H, Hkv, D, ldq, ldk, q_rows, total_rows);
    const int sub = threadIdx.x % lpr;
    const int half = D / 2;
    const floatX* x = R.valid ? (R.is_q ? q : k) + R.off : nullptr;
    floatX* y = R.valid ? (R.is_q ? qn : kn) + R.off : nullptr;
    const floatX* cr = cos + (size_t)(pos0 + R.t) * half;
    const floatX* sr = sin + (size_t)(pos0 + R.t) * half;

    float ss = 0.0f;
    if (R.valid) {
        for (int j = sub * W; j < half; j += lpr * W) {
            PackX<W> x1 = load_pack<floatX, W>(x + j), x2 = load_pack<floatX, W>(x + half + j);
            PackX<W> c = load_pack<floatX, W>(cr + j), s = load_pack<floatX, W>(sr + j);
            #pragma unroll
            for (int i = 0; i < W; i++) {
                const float a = llmc::to_float(x1.v[i]), b = llmc::to_float(x2.v[i]);
                const float cf = llmc::to_float(c.v[i]), sf = llmc::to_float(s.v[i]);
                const float y1 = a * cf + b * sf, y2 = -a * sf + b * cf;
                ss += y1 * y1 + y2 * y2;
            }
        }
    }
    ss = rope_group_sum(ss, lpr);
    const float r = rsqrtf(ss / (float)D + LLMC_RMSNORM_EPS_F);
    const float f = ROPE_QKNORM_SCALE * r;
    if (!R.valid) return;  // no barrier or collective follows
    for (int j = sub * W; j < half; j += lpr * W) {
        PackX<W> x1 = load_pack<floatX, W>(x + j), x2 = load_pack<floatX, W>(x + half + j);
        PackX<W> c = load_pack<floatX, W>(cr + j), s = load_pack<floatX, W>(sr + j);
        PackX<W> o1, o2;
        #pragma unroll
        for (int i = 0; i < W; i++) {
            const float a = llmc::to_float(x1.v[i]), b = llmc::to_float(x2.v[i]);
            const float cf = llmc::to_float(c.v[i]), sf = llmc::to_float(s.v[i]);
            o1.v[i] = llmc::to_floatX((a * cf + b * sf) * f);
            o2.v[i] = llmc::to_floatX((-a * sf + b * cf) * f);
        }
        store_pack<floatX, W>(y + j, o1);
        store_pack<floatX, W>(y + half + j, o2);
    }
    if (sub == 0) (R.is_q ? rstd_q : rstd_k)[R.r] = r;
}

template <int W>
__global__ void __launch_bounds__(ROPE_BLOCK)
rope_qknorm_backward_kernel(floatX* dq, floatX* dk, const floatX* dqn, const floatX* dkn, const floatX* qn,
                            const floatX* kn, const float* rstd_q, const float* rstd_k, const floatX* cos,
                            const floatX* sin, int T, int H, int Hkv, int D, int pos0, long ldq, long ldk, long q_rows,
                            long total_rows, int lpr) {
    const RopeRow R = rope_row(lpr, T, H, Hkv, D, ldq, ldk, q_rows, total_rows);
    const int sub = threadIdx.x % lpr;
    const int half = D / 2;
    const floatX* g = R.valid ? (R.is_q ? dqn : dkn) + R.off : nullptr;
    const floatX* y = R.valid ? (R.is_q ? qn : kn) + R.off : nullptr;
    floatX* dx = R.valid ? (R.is_q ? dq : dk) + R.off : nullptr;

    float dot = 0.0f;
    if (R.valid) {
        // the same elements per lane as the output pass below, so that in place (dq == dqn) every
        // element is read and written by one lane only
        for (int j = sub * W; j < half; j += lpr * W) {
            PackX<W> g1 = load_pack<floatX, W>(g + j), g2 = load_pack<floatX, W>(g + half + j);
            PackX<W> y1 = load_pack<floatX, W>(y + j), y2 = load_pack<floatX, W>(y + half + j);
            #pragma unroll
            for (int i = 0; i < W; i++)
                dot += llmc::to_float(g1.v[i]) * llmc::to_float(y1.v[i]) +
                       llmc::to_float(g2.v[i]) * llmc::to_float(y2.v[i]);
        }
    }
    dot = rope_group_sum(dot, lpr);
    if (!R.valid) return;  // no barrier or collective follows
    const float m = dot / (ROPE_QKNORM_SCALE * ROPE_QKNORM_SCALE * (float)D);
    const float f = ROPE_QKNORM_SCALE * (R.is_q ? rstd_q : rstd_k)[R.r];
    const floatX* cr = cos + (size_t)(pos0 + R.t) * half;
    const floatX* sr = sin + (size_t)(pos0 + R.t) * half;
    for (int j = sub * W; j < half; j += lpr * W) {
        PackX<W> g1 = load_pack<floatX, W>(g + j), g2 = load_pack<floatX, W>(g + half + j);
        PackX<W> y1 = load_pack<floatX, W>(y + j), y2 = load_pack<floatX, W>(y + half + j);
        PackX<W> c = load_pack<floatX, W>(cr + j), s = load_pack<floatX, W>(sr + j);
        PackX<W> o1, o2;
        #pragma unroll
        for (int i = 0; i < W; i++) {
            const float d1 = f * (llmc::to_float(g1.v[i]) - llmc::to_float(y1.v[i]) * m);
            const float d2 = f * (llmc::to_float(g2.v[i]) - llmc::to_float(y2.v[i]) * m);
            const float cf = llmc::to_float(c.v[i]), sf = llmc::to_float(s.v[i]);
            o1.v[i] = llmc::to_floatX(d1 * cf - d2 * sf);
            o2.v[i] = llmc::to_floatX(d1 * sf + d2 * cf);
        }
        store_pack<floatX, W>(dx + j, o1);
        store_pack<floatX, W>(dx + half + j, o2);
    }
}

namespace llmc {
inline void rope_check_shape(const char* name, int B, int T, int H, int Hkv, int D, int pos0) {
    LLMC_CHECK(B >= 0 && T >= 0 && H > 0 && Hkv > 0 && D >= 2 && D % 2 == 0 && pos0 >= 0,
               "%s: bad shape B=%d T=%d H=%d Hkv=%d D=%d pos0=%d (D must be even)", name, B, T, H, Hkv, D, pos0);
}
// the row strides: 0 -> dense; else at least a row (a smaller one would overlap the next token's heads)
inline void rope_resolve_strides(const char* name, int H, int Hkv, int D, long& ldq, long& ldk) {
    const long dq = (long)H * D, dk = (long)Hkv * D;
    if (ldq == 0) ldq = dq;
    if (ldk == 0) ldk = dk;
    LLMC_CHECK(ldq >= dq, "%s: ldq=%ld is less than H*D=%ld (q rows would overlap)", name, ldq, dq);
    LLMC_CHECK(ldk >= dk, "%s: ldk=%ld is less than Hkv*D=%ld (k rows would overlap)", name, ldk, dk);
}
}  // namespace llmc

// q (B,T,H,D), k (B,T,Hkv,D) -> qn, kn (same shapes; may alias q, k), rstd_q (B,T,H), rstd_k
// (B,T,Hkv) (all overwritten; rstd dense). cos, sin: floatX tables (max_pos, D/2), rows pos0 ..
// pos0+T-1 used. ldq: elements between consecutive tokens' rows of q and qn (0: H*D); ldk: of k and
// kn (0: Hkv*D). Elements between the rows are not touched.
inline void rope_qknorm_forward(floatX* qn, float* rstd_q, floatX* kn, float* rstd_k, const floatX* q, const floatX* k,
                                const floatX* cos, const floatX* sin, int B, int T, int H, int Hkv, int D, int pos0,
                                cudaStream_t stream, long ldq = 0, long ldk = 0) {
    llmc::rope_check_shape("rope_qknorm_forward", B, T, H, Hkv, D, pos0);
    llmc::rope_resolve_strides("rope_qknorm_forward", H, Hkv, D, ldq, ldk);
    const long q_rows = (long)B * T * H, total = q_rows + (long)B * T * Hkv;
    if (total == 0) return;
    const bool vec = D % (2 * XPACK) == 0 && ldq % XPACK == 0 && ldk % XPACK == 0 && aligned16(qn) && aligned16(kn) &&
                     aligned16(q) && aligned16(k) && aligned16(cos) && aligned16(sin);
    const int W = vec ? XPACK : 1;
    const int lpr = rope_lanes_per_row(D / 2, W);
    const long rows_per_block = (long)(ROPE_BLOCK / WARP_SIZE) * (WARP_SIZE / lpr);
    const unsigned grid = (unsigned)CEIL_DIV(total, rows_per_block);
    if (vec) {
        LAUNCH(rope_qknorm_forward_kernel<XPACK>, grid, ROPE_BLOCK, 0, stream, qn, rstd_q, kn, rstd_k, q, k, cos, sin, T, H,
               Hkv, D, pos0, ldq, ldk, q_rows, total, lpr);
    } else {
        LAUNCH(rope_qknorm_forward_kernel<1>, grid, ROPE_BLOCK, 0, stream, qn, rstd_q, kn, rstd_k, q, k, cos, sin, T, H,
               Hkv, D, pos0, ldq, ldk, q_rows, total, lpr);
    }
}

// dq (B,T,H,D), dk (B,T,Hkv,D) = the gradients of the forward's inputs (overwrite; dq may alias
// dqn, dk may alias dkn), from dqn, dkn (gradients of its outputs), the outputs qn, kn and rstd.
// ldq: token row stride of dq, dqn and qn (0: H*D); ldk: of dk, dkn and kn (0: Hkv*D).
inline void rope_qknorm_backward(floatX* dq, floatX* dk, const floatX* dqn, const floatX* dkn, const floatX* qn,
                                 const floatX* kn, const float* rstd_q, const float* rstd_k, const floatX* cos,
                                 const floatX* sin, int B, int T, int H, int Hkv, int D, int pos0, cudaStream_t stream,
                                 long ldq = 0, long ldk = 0) {
    llmc::rope_check_shape("rope_qknorm_backward", B, T, H, Hkv, D, pos0);
    llmc::rope_resolve_strides("rope_qknorm_backward", H, Hkv, D, ldq, ldk);
    const long q_rows = (long)B * T * H, total = q_rows + (long)B * T * Hkv;
    if (total == 0) return;
    const bool vec = D % (2 * XPACK) == 0 && ldq % XPACK == 0 && ldk % XPACK == 0 && aligned16(dq) && aligned16(dk) &&
                     aligned16(dqn) && aligned16(dkn) && aligned16(qn) && aligned16(kn) && aligned16(cos) && aligned16(sin);
    const int W = vec ? XPACK : 1;
    const int lpr = rope_lanes_per_row(D / 2, W);
    const long rows_per_block = (long)(ROPE_BLOCK / WARP_SIZE) * (WARP_SIZE / lpr);
    const unsigned grid = (unsigned)CEIL_DIV(total, rows_per_block);
    if (vec) {
        LAUNCH(rope_qknorm_backward_kernel<XPACK>, grid, ROPE_BLOCK, 0, stream, dq, dk, dqn, dkn, qn, kn, rstd_q, rstd_k, cos,
               sin, T, H, Hkv, D, pos0, ldq, ldk, q_rows, total, lpr);
    } else {
        LAUNCH(rope_qknorm_backward_kernel<1>, grid, ROPE_BLOCK, 0, stream, dq, dk, dqn, dkn, qn, kn, rstd_q, rstd_k, cos,
               sin, T, H, Hkv, D, pos0, ldq, ldk, q_rows, total, lpr);
    }
}
