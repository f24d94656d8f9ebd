// matmul.h: the linear layer without bias, out = inp · weightᵀ, weight (OC, IC) like PyTorch.
//
//   forward:  out(N,OC)      = inp(N,IC) · W(OC,IC)ᵀ
//   backward: dinp(N,IC)    += dout(N,OC) · W(OC,IC)        (skipped if dinp == nullptr)
//             dweight(OC,IC) += dout(N,OC)ᵀ · inp(N,IC)     (skipped if dweight == nullptr)
//
// (step 1: plain loops; the blocked float path follows.)
#pragma once

// ---- plain loops: the double path (finite-difference tests) and the baseline of the benchmark ----
// Each output element is owned by one thread and summed in a fixed order, so these are
// deterministic for any thread count.

template <typename Real>
void matmul_forward_naive(Real* out, const Real* inp, const Real* weight, int N, int IC, int OC) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const Real* x = inp + (long)n * IC;
        for (int o = 0; o < OC; o++) {
            const Real* w = weight + (long)o * IC;
            Real acc = 0;
            for (int k = 0; k < IC; k++) acc += x[k] * w[k];
            out[(long)n * OC + o] = acc;
        }
    }
}

template <typename Real>
void matmul_backward_naive(Real* dinp, Real* dweight, const Real* dout, const Real* inp, const Real* weight,
                           int N, int IC, int OC) {
    if (dinp) {
        #pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const Real* g = dout + (long)n * OC;
            Real* dx = dinp + (long)n * IC;
            for (int o = 0; o < OC; o++) {
                const Real* w = weight + (long)o * IC;
                Real go = g[o];
                for (int k = 0; k < IC; k++) dx[k] += go * w[k];
            }
        }
    }
    if (dweight) {
        #pragma omp parallel for schedule(static)
        for (int o = 0; o < OC; o++) {
            Real* dw = dweight + (long)o * IC;
            for (int n = 0; n < N; n++) {
                Real go = dout[(long)n * OC + o];
                const Real* x = inp + (long)n * IC;
                for (int k = 0; k < IC; k++) dw[k] += go * x[k];
            }
        }
    }
}

template <typename Real>
void matmul_forward(Real* out, const Real* inp, const Real* weight, int N, int IC, int OC) {
    matmul_forward_naive(out, inp, weight, N, IC, OC);
}

template <typename Real>
void matmul_backward(Real* dinp, Real* dweight, const Real* dout, const Real* inp, const Real* weight,
                     int N, int IC, int OC) {
    matmul_backward_naive(dinp, dweight, dout, inp, weight, N, IC, OC);
}
