// relu2.h: the MLP nonlinearity, ReLU squared (docs/model.md#mlp).
//
//   y = relu(x)^2,   dx = 2 relu(x) G
// Elementwise, so in-place backward (dinp == dout) is safe: each element reads its G before
// writing the same element. Plain loops over a flat length; the compiler vectorizes them.
#pragma once

template <typename Real>
void relu2_forward(Real* out, const Real* inp, long n) {
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        Real r = inp[i] > 0 ? inp[i] : (Real)0;
        out[i] = r * r;
    }
}

// dinp = 2 relu(inp) * dout   (overwrite; dinp == dout allowed)
template <typename Real>
void relu2_backward(Real* dinp, const Real* dout, const Real* inp, long n) {
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        Real r = inp[i] > 0 ? inp[i] : (Real)0;
        dinp[i] = (Real)2 * r * dout[i];
    }
}
