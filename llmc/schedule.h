// schedule.h: the per-step schedules of the training recipe (docs/model.md#schedules), in double.
//
// N = num_iterations optimizer steps, it = 0 .. N-1. Warmdown length Dw = round(warmdown_ratio * N)
// with Python's round (half to even), so e.g. N = 10 gives Dw = round(6.5) = 6, not 7.
//   lr multiplier:  it < Nw: (it+1)/Nw;  it <= N-Dw: 1;  else p = (N-it)/Dw, p + (1-p)*final_lr_frac
//   Muon momentum:  it < 400: (1-phi)*0.85 + phi*0.97 with phi = it/400;
//                   it >= N-Dw: 0.97*(1-p) + 0.90*p with p = (it-(N-Dw))/Dw;  else 0.97
//   Muon wd:        wd_scaled * 0.5 * (1 + cos(pi * it / N))
// The checks are made in the order written (a short run can be in warmup and warmdown at once; the
// first matching branch wins, as in nanochat's base_train.py).
#pragma once
#include <cmath>

namespace llmc {

// Python 3 round(x) for a double: nearest integer, ties to even.
inline long round_half_even(double x) {
    double f = std::floor(x);
    double d = x - f; // exact for the magnitudes used here
    long r = (long)f;
    if (d > 0.5) return r + 1;
    if (d < 0.5) return r;
    return (r % 2 == 0) ? r : r + 1;
}

inline long warmdown_steps(int num_iterations, double warmdown_ratio) {
    return round_half_even(warmdown_ratio * (double)num_iterations);
}

// multiplier applied to every group's initial_lr at step it
inline double lr_multiplier(int it, int num_iterations, int warmup_steps = 40, double warmdown_ratio = 0.65,
                            double final_lr_frac = 0.05) {
    const long N = num_iterations;
    const long Dw = warmdown_steps(num_iterations, warmdown_ratio);
    if (it < warmup_steps) return (double)(it + 1) / (double)warmup_steps;
    if (it <= N - Dw) return 1.0;
    const double p = (double)(N - it) / (double)Dw; // Dw > 0 here since it < N
    return p * 1.0 + (1.0 - p) * final_lr_frac;
}

// Muon momentum mu at step it (warmup over the first 400 steps, decay to 0.90 during warmdown)
inline double muon_momentum(int it, int num_iterations, double warmdown_ratio = 0.65, int momentum_warmup = 400,
                            double mu_start = 0.85, double mu_peak = 0.97, double mu_end = 0.90) {
    const long N = num_iterations;
    const long Dw = warmdown_steps(num_iterations, warmdown_ratio);
    const long start = N - Dw;
    if (it < momentum_warmup) {
        const double phi = (double)it / (double)momentum_warmup;
        return (1.0 - phi) * mu_start + phi * mu_peak;
    }
    if (it >= start && Dw > 0) {
        const double p = (double)(it - start) / (double)Dw;
        return mu_peak * (1.0 - p) + mu_end * p;
    }
    return mu_peak;
}

// Muon weight decay at step it: cosine from wd_scaled (it = 0) towards 0 (it = N)
inline double muon_weight_decay(int it, int num_iterations, double wd_scaled) {
    return wd_scaled * 0.5 * (1.0 + std::cos(M_PI * (double)it / (double)num_iterations));
}

} // namespace llmc
