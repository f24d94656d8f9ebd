// rope.h: rotary position embeddings, nanochat's half-split layout and sign (docs/model.md#rope).
//
// Each head's D values are split in halves x1 = x[0:D/2], x2 = x[D/2:D]; pair j is (x1[j], x2[j]):
//   y1 = x1 cos + x2 sin,   y2 = -x1 sin + x2 cos
// i.e. a rotation by -theta (the transpose of the textbook one), kept because nanochat's
// checkpoints were trained with it. The backward is the inverse rotation (+theta) of G:
//   dx1 = G1 cos - G2 sin,  dx2 = G1 sin + G2 cos
// Tables (max_pos, D/2) are built in fp32 exactly as nanochat builds them with torch fp32 ops:
//   inv_freq_j = 1 / base^(2j/D)  (exponent, power and reciprocal each rounded to fp32),
//   theta = fl32(t * inv_freq_j), cos/sin evaluated on that fp32 angle.
// The tables stay fp32 in both precisions (they are data, not parameters: the double gradcheck
// perturbs the input, never the angle). Position t of a sequence uses table row pos0 + t.
// Both passes read x1[j], x2[j] into registers before writing, so out == inp is allowed.
#pragma once
#include <cmath>

inline void rope_table(float* cos, float* sin, int max_pos, int D, double base) {
    const int half = D / 2;
    for (int j = 0; j < half; j++) {
        float ex = (float)(2 * j) / (float)D;
        float inv_freq = 1.0f / std::pow((float)base, ex);
        for (int t = 0; t < max_pos; t++) {
            float theta = (float)t * inv_freq;
            cos[(long)t * half + j] = std::cos(theta);
            sin[(long)t * half + j] = std::sin(theta);
        }
    }
}

// The rotation shared by forward and backward: per pair (x1, x2) = (x[j], x[j + D/2]),
//   y1 = x1 cos + sign x2 sin,   y2 = -sign x1 sin + x2 cos
// sign = +1 rotates by -theta (forward), sign = -1 by +theta (the transpose: backward).
// out == inp allowed (each pair is read before it is written).
template <typename Real>
void rope_rotate_(Real* out, const Real* inp, const float* cos, const float* sin, int B, int T, int NH, int D, int pos0, Real sign) {
    const int half = D / 2;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            const float* c = cos + (long)(pos0 + t) * half;
            const float* s = sin + (long)(pos0 + t) * half;
            for (int h = 0; h < NH; h++) {
                long off = (((long)b * T + t) * NH + h) * D;
                const Real* x = inp + off;
                Real* y = out + off;
                for (int j = 0; j < half; j++) {
                    Real x1 = x[j], x2 = x[j + half];
                    Real cj = (Real)c[j], sj = sign * (Real)s[j];
                    y[j] = x1 * cj + x2 * sj;
                    y[j + half] = -x1 * sj + x2 * cj;
                }
            }
        }
    }
}

// inp/out (B,T,NH,D); out = rotate(inp, -theta)
template <typename Real>
void rope_forward(Real* out, const Real* inp, const float* cos, const float* sin, int B, int T, int NH, int D, int pos0) {
    rope_rotate_(out, inp, cos, sin, B, T, NH, D, pos0, (Real)1);
}

// dinp = rotate(dout, +theta)  (overwrite; dinp == dout allowed)
template <typename Real>
void rope_backward(Real* dinp, const Real* dout, const float* cos, const float* sin, int B, int T, int NH, int D, int pos0) {
    rope_rotate_(dinp, dout, cos, sin, B, T, NH, D, pos0, (Real)-1);
}
