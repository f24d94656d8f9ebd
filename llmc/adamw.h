// adamw.h: the AdamW update of one parameter tensor, fp32, CPU (docs/model.md#adamw).
//
// This is torch.optim.AdamW as nanochat's fused step writes it, in this order:
//   1. p <- p * (1 - lr*wd)                                   decoupled weight decay, first
//   2. m <- m + (1-b1)*(g - m);  v <- v + (1-b2)*(g*g - v)    PyTorch's lerp form (weight < 0.5)
//   3. p <- p - (lr / (1 - b1^t)) * m / (sqrt(v / (1 - b2^t)) + eps)
// with the step counter t starting at 1.
//
// Scalar precision: nanochat keeps lr, betas, eps, wd and the step count in 0-d fp32 tensors, so
// every scalar expression above is evaluated in fp32: (1 - lr*wd), (1 - b1), (1 - b2) and the bias
// corrections 1 - powf(b1, t), 1 - powf(b2, t) and lr / (1 - b1^t) are each rounded to fp32 exactly
// once per operation, as PyTorch's fp32 tensor arithmetic does. The caller passes the hyperparameters
// as float (the trainer computes initial_lr * lrm in double and rounds once, as nanochat's
// tensor.fill_() does). powf(b, (float)t) is glibc's powf (error < 1 ulp), PyTorch CPU uses std::pow
// on floats as well; bit equality of that one rounding is not promised. Nor is bit equality of the
// element loop: g++ may contract a + w*(b - a) into an FMA (C++ defaults to -ffp-contract=fast),
// one rounding fewer than PyTorch's unfused kernel; the difference is <= 1 ulp per operation.
//
// The element loop is embarrassingly parallel: OpenMP over elements, no state besides m and v.
#pragma once
#include <cmath>

namespace llmc {

// Update n elements of param in place. m, v: first and second moments (fp32, zero before t = 1).
// t: this step's count (1 for the first update).
inline void adamw_update(float* param, float* m, float* v, const float* grad, long n, float lr,
                         float beta1, float beta2, float eps, float weight_decay, int t) {
    // the per-tensor scalars, each rounded to fp32 like PyTorch's 0-d fp32 tensors
    const float decay = 1.0f - lr * weight_decay;          // p.mul_(1 - lr_t*wd_t)
    const float w1 = 1.0f - beta1;                          // exp_avg.lerp_(g, 1 - beta1_t)
    const float w2 = 1.0f - beta2;                          // exp_avg_sq.lerp_(g^2, 1 - beta2_t)
    const float bias1 = 1.0f - powf(beta1, (float)t);       // 1 - beta1_t ** step_t
    const float bias2 = 1.0f - powf(beta2, (float)t);
    const float step_size = lr / bias1;                     // lr_t / bias1
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        float g = grad[i];
        float p = param[i] * decay;
        float mi = m[i] + w1 * (g - m[i]);
        float vi = v[i] + w2 * (g * g - v[i]);
        float denom = sqrtf(vi / bias2) + eps;
        param[i] = p - step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

} // namespace llmc
