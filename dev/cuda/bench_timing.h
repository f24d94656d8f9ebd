// bench_timing.h: the event timing every GPU benchmark in dev/cuda/ uses. One warm-up call (first-call
// costs: cuBLASLt kernel selection and loading, caches), then `reps` calls queued back to back on
// the stream with an event recorded after each and one synchronization at the end. best = the
// fastest call (its event interval), mean = total / reps.
#pragma once
#include <algorithm>
#include <vector>
#include "llmc/cuda/common.cuh"

struct Timing { double best_ms, mean_ms; };

template <typename F>
Timing time_it(F&& f, int reps, cudaStream_t stream) {
    f();  // warm-up: first-call costs (cuBLASLt kernel selection and loading, caches)
    cudaCheck(cudaDeviceSynchronize());
    std::vector<cudaEvent_t> ev(reps + 1);
    for (auto& e : ev) cudaCheck(cudaEventCreate(&e));
    cudaCheck(cudaEventRecord(ev[0], stream));
    for (int r = 0; r < reps; r++) {
        f();
        cudaCheck(cudaEventRecord(ev[r + 1], stream));
    }
    cudaCheck(cudaEventSynchronize(ev[reps]));
    Timing t{1e30, 0.0};
    for (int r = 0; r < reps; r++) {
        float ms = 0.0f;
        cudaCheck(cudaEventElapsedTime(&ms, ev[r], ev[r + 1]));
        t.best_ms = std::min(t.best_ms, (double)ms);
    }
    float total = 0.0f;
    cudaCheck(cudaEventElapsedTime(&total, ev[0], ev[reps]));
    t.mean_ms = total / reps;
    for (auto& e : ev) cudaCheck(cudaEventDestroy(e));
    return t;
}
