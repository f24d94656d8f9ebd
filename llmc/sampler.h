// sampler.h: next-token sampling from softcapped logits (docs/model.md#sampling).
//
// temperature 0 -> argmax (lowest id among exact ties); top_k > 0 -> keep the min(top_k, V)
// largest logits (ties broken by lower id), divide by the temperature, softmax (max-subtracted, in
// fp32), sample; otherwise sample from the softmax over all V. Uses the project's seeded RNG.
#pragma once
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "llmc/rng.h"

namespace llmc {

inline int sample_next_token(const float* logits, int V, float temperature, int top_k, Rng& rng) {
    if (temperature <= 0.0f) {
        int best = 0;
        for (int i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }
    std::vector<int> ids(V);
    std::iota(ids.begin(), ids.end(), 0);
    int k = V;
    if (top_k > 0 && top_k < V) {
        k = top_k;
        // largest logits first; equal logits keep the lower id first
        std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                          [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    }
    float mx = -INFINITY;
    for (int i = 0; i < k; i++) mx = std::max(mx, logits[ids[i]] / temperature);
    std::vector<float> p(k);
    float sum = 0.0f;
    for (int i = 0; i < k; i++) { p[i] = std::exp(logits[ids[i]] / temperature - mx); sum += p[i]; }
    double u = rng.uniform() * sum, acc = 0.0;
    for (int i = 0; i < k; i++) {
        acc += p[i];
        if (u < acc) return ids[i];
    }
    return ids[k - 1];  // u landed on the rounding slack at the top
}

}  // namespace llmc
