// checksum.h: a fast 64-bit checksum of a byte stream, for checkpoint files.
//
// The checkpoint meta records the checksum of the model and optimizer files it belongs to, and resume
// recomputes it: a file that was truncated, overwritten by another run or damaged on disk no longer
// matches. This guards against accidents, not attackers (it is not a cryptographic hash).
//
// Definition ("llmc64"): the stream is read as little-endian 64-bit words, in groups of four; word
// k of a group goes to lane k, and each lane does h = rotl(h ^ (w * K1), 31) * K2. The last partial
// group is zero-padded to whole words (the total length is mixed in at the end, so padding cannot
// collide with real zero bytes). The digest folds the four lanes and the length through
// MurmurHash3's 64-bit finalizer. Four independent lanes keep four multiplies in flight: several
// GB/s on one core, so hashing a multi-GB checkpoint costs little next to writing it.
// Streaming and one-shot hashing give the same value for any split of the input (tested).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "llmc/utils.h"

namespace llmc {

struct Checksum64 {
    static constexpr uint64_t K1 = 0x9E3779B97F4A7C15ULL, K2 = 0xC2B2AE3D27D4EB4FULL;
    uint64_t lane[4] = {0x243F6A8885A308D3ULL, 0x13198A2E03707344ULL, 0xA4093822299F31D0ULL, 0x082EFA98EC4E6C89ULL};
    uint64_t total = 0;           // bytes seen
    unsigned char pend[32];       // a partial group carried to the next update()
    size_t npend = 0;

    static uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
    static uint64_t load64(const unsigned char* p) {
        uint64_t w;
        memcpy(&w, p, 8);  // little-endian host (x86, arm64), as every file format here assumes
        return w;
    }
    void group(const unsigned char* p) {
        for (int k = 0; k < 4; k++) lane[k] = rotl(lane[k] ^ (load64(p + 8 * k) * K1), 31) * K2;
    }
    void update(const void* data, size_t n) {
        const unsigned char* p = (const unsigned char*)data;
        total += n;
        if (npend) {
            size_t take = n < 32 - npend ? n : 32 - npend;
            memcpy(pend + npend, p, take);
            npend += take; p += take; n -= take;
            if (npend < 32) return;
            group(pend);
            npend = 0;
        }
        for (; n >= 32; p += 32, n -= 32) group(p);
        memcpy(pend, p, n);
        npend = n;
    }
    static uint64_t fmix(uint64_t h) {
        h ^= h >> 33; h *= 0xFF51AFD7ED558CCDULL;
        h ^= h >> 33; h *= 0xC4CEB9FE1A85EC53ULL;
        h ^= h >> 33;
        return h;
    }
    uint64_t digest() const {
        Checksum64 c = *this;  // digest() does not end the stream
        if (c.npend) {
            memset(c.pend + c.npend, 0, 32 - c.npend);
            c.group(c.pend);
        }
        uint64_t h = c.total * K1;
        for (int k = 0; k < 4; k++) h = fmix(h ^ c.lane[k]) + K2;
        return fmix(h);
    }
};

inline uint64_t checksum64(const void* data, size_t n) {
    Checksum64 c;
    c.update(data, n);
    return c.digest();
}

// The form written to JSON: "llmc64:" and 16 lower-case hex digits.
inline std::string checksum_str(uint64_t h) { return strfmt("llmc64:%016llx", (unsigned long long)h); }

}  // namespace llmc
