// rng.h: the project's own seeded random number generator.
//
// Initialization must give identical bits on every build (CPU, GPU, SIM) and must not depend on
// thread count or on which features are on (docs/model.md#init). So each tensor draws from its own stream,
// keyed by (seed, stream id), and fills its elements row-major on the host.
// Generator: xoshiro256** (Blackman & Vigna), state seeded by splitmix64 of (seed, stream).
// Normals: Box-Muller in double, rounded once to the destination type.
#pragma once
#include <cmath>
#include <cstdint>

namespace llmc {

inline uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

struct Rng {
    uint64_t s[4];
    // spare normal from Box-Muller (the second value of each pair)
    double spare = 0.0;
    bool has_spare = false;

    explicit Rng(uint64_t seed = 42, uint64_t stream = 0) { reseed(seed, stream); }
    void reseed(uint64_t seed, uint64_t stream) {
        uint64_t x = seed ^ (stream * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull);
        for (int i = 0; i < 4; i++) s[i] = splitmix64(x);
        has_spare = false;
    }
    static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    uint64_t next_u64() {
        uint64_t r = rotl(s[1] * 5, 7) * 9;
        uint64_t t = s[1] << 17;
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
        s[2] ^= t; s[3] = rotl(s[3], 45);
        return r;
    }
    // uniform double in [0, 1) with 53 random bits
    double uniform() { return (double)(next_u64() >> 11) * 0x1.0p-53; }
    // uniform in [lo, hi)
    double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
    // standard normal, Box-Muller in double
    double normal() {
        if (has_spare) { has_spare = false; return spare; }
        double u1;
        do { u1 = uniform(); } while (u1 <= 0.0);
        double u2 = uniform();
        double r = std::sqrt(-2.0 * std::log(u1));
        spare = r * std::sin(2.0 * M_PI * u2);
        has_spare = true;
        return r * std::cos(2.0 * M_PI * u2);
    }
    double normal(double mean, double std) { return mean + std * normal(); }
    // uniform integer in [0, n)
    uint64_t below(uint64_t n) { return n ? next_u64() % n : 0; }
};

}  // namespace llmc
