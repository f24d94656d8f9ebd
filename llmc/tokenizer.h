// tokenizer.h: byte-level BPE (docs/tokenizer.md#bpe): pre-tokenization split, training exactly as
// rustbpe, encoding exactly as tiktoken, decoding, and the .tiktoken + JSON sidecar files.
//
// Split (docs/tokenizer.md#split). The regex of nanochat/GPT-4 is implemented as a hand-written
// scanner over bytes: at each position the seven rules A1..A7 are tried in order and the first
// match gives the piece. Code points are classified L / N / S(White_Space) / O from generated
// Unicode 16.0 tables (the version tiktoken and rustbpe use; unicode_tables.h): a flat table covers
// the BMP, above it a binary search. Ill-formed UTF-8 is consumed one maximal ill-formed
// subsequence at a time, each counted as one O code point that keeps its bytes
// (docs/tokenizer.md#invalid-utf8).
//
// Training (docs/tokenizer.md#bpe-training). Distinct chunks are counted (OpenMP, one hash map per
// thread, merged), each chunk becomes a word of byte ids weighted by its count, and merges are
// chosen by the highest pair count with ties to the smallest (left, right). As in rustbpe, a
// max-heap holds (count, pair) entries that may be stale: a popped entry whose count no longer
// matches is re-pushed with the current count. This yields the exact argmax because counts of
// existing pairs only ever decrease (a merge creates only pairs that contain the new id, and those
// are pushed fresh). Each pair keeps the list of words that contained it when it was created, so a
// merge touches only those words: no quadratic rescan.
//
// Encoding (docs/tokenizer.md#encode-ordinary). Each piece: whole-piece lookup first (tiktoken's
// fast path), else tiktoken's _byte_pair_merge: repeatedly merge the adjacent part pair whose
// concatenated BYTES have the lowest rank, leftmost on ties. Short pieces use tiktoken's linear
// scan; long pieces (a 100 KB whitespace run would be quadratic) use a heap + linked list that
// makes the same choices. Ranks are looked up through an open-addressing hash table over the token
// byte strings, never assuming rank == byte. A small per-thread cache maps recent short multi-token
// pieces to their ids. Many documents are encoded in parallel (OpenMP over documents).
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "llmc/json.h"
#include "llmc/unicode_tables.h"
#include "llmc/utils.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace llmc {

// ------------------------------------------------------------------------------------------------
// Patterns (docs/tokenizer.md#patterns): the exact strings accepted in sidecars.

static const char* const kPatternNanochat =
    R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+)";
static const char* const kPatternGPT4 =
    R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+)";
static const char* const kPatternGPT2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class SplitPattern { Nanochat, GPT4, GPT2 };

inline const char* pattern_string(SplitPattern p) {
    switch (p) {
        case SplitPattern::Nanochat: return kPatternNanochat;
        case SplitPattern::GPT4: return kPatternGPT4;
        case SplitPattern::GPT2: return kPatternGPT2;
    }
    return kPatternNanochat;
}
// Returns false for a pattern whose rules are not implemented.
inline bool pattern_from_string(const std::string& s, SplitPattern* out) {
    if (s == kPatternNanochat) { *out = SplitPattern::Nanochat; return true; }
    if (s == kPatternGPT4) { *out = SplitPattern::GPT4; return true; }
    if (s == kPatternGPT2) { *out = SplitPattern::GPT2; return true; }
    return false;
}

// nanochat's SPECIAL_TOKENS, in id order (docs/tokenizer.md#special-tokens)
inline std::vector<std::string> nanochat_special_tokens() {
    return {"<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
            "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"};
}

// ------------------------------------------------------------------------------------------------
// Code point classes (docs/tokenizer.md#char-classes) and UTF-8 decoding
// (docs/tokenizer.md#invalid-utf8, docs/tokenizer.md#decoding)

enum CpClass : uint8_t { CP_O = 0, CP_L = 1, CP_N = 2, CP_S = 3 };

struct CpClassTable {
    uint8_t bmp[0x10000];
    CpClassTable() {
        memset(bmp, CP_O, sizeof(bmp));
        auto fill = [&](const UnicodeRange* r, size_t n, uint8_t cls) {
            for (size_t k = 0; k < n; k++)
                for (uint32_t c = r[k].lo; c <= r[k].hi && c < 0x10000; c++) bmp[c] = cls;
        };
        fill(kUnicodeLetter, sizeof(kUnicodeLetter) / sizeof(UnicodeRange), CP_L);
        fill(kUnicodeNumber, sizeof(kUnicodeNumber) / sizeof(UnicodeRange), CP_N);
        fill(kUnicodeWhiteSpace, sizeof(kUnicodeWhiteSpace) / sizeof(UnicodeRange), CP_S);
    }
};
inline const CpClassTable g_cp_class_table;  // built once at program start (64 KB)

inline bool in_ranges(const UnicodeRange* r, size_t n, uint32_t c) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (r[mid].hi < c) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && r[lo].lo <= c;
}

inline uint8_t cp_class(uint32_t c) {
    if (c < 0x10000) return g_cp_class_table.bmp[c];
    // no White_Space above the BMP
    if (in_ranges(kUnicodeLetter, sizeof(kUnicodeLetter) / sizeof(UnicodeRange), c)) return CP_L;
    if (in_ranges(kUnicodeNumber, sizeof(kUnicodeNumber) / sizeof(UnicodeRange), c)) return CP_N;
    return CP_O;
}

// One decoded unit: a well-formed code point, or one maximal ill-formed subsequence (cp = 0xFFFD,
// class O, len = its byte count).
struct CpUnit {
    uint32_t cp;
    uint32_t len;
    uint8_t cls;
    bool valid;
};

// Decode at s[i] (i < n) following Unicode Table 3-7 (no overlongs, no surrogates, <= U+10FFFF).
// For an ill-formed sequence the unit is the maximal subpart: a valid lead byte plus as many
// continuation bytes as still fit its allowed ranges, or a lone bad byte.
inline CpUnit utf8_decode(const uint8_t* s, size_t n, size_t i) {
    uint32_t c = s[i];
    if (c < 0x80) return {c, 1, g_cp_class_table.bmp[c], true};
    uint32_t need;
    uint32_t lo = 0x80, hi = 0xBF;  // allowed range of the first continuation byte
    if (c >= 0xC2 && c <= 0xDF) { need = 1; c &= 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
        c &= 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
        c &= 0x07;
    } else {
        return {0xFFFD, 1, CP_O, false};
    }
    for (uint32_t k = 1; k <= need; k++) {
        if (i + k >= n) return {0xFFFD, k, CP_O, false};
        uint32_t b = s[i + k];
        if (b < lo || b > hi) return {0xFFFD, k, CP_O, false};
        c = (c << 6) | (b & 0x3F);
        lo = 0x80; hi = 0xBF;
    }
    return {c, need + 1, cp_class(c), true};
}

// bytes -> valid UTF-8, each maximal ill-formed subsequence replaced by one U+FFFD
// (docs/tokenizer.md#decoding).
inline std::string utf8_replace_invalid(const std::string& bytes) {
    std::string out;
    out.reserve(bytes.size());
    const uint8_t* s = (const uint8_t*)bytes.data();
    size_t n = bytes.size();
    for (size_t i = 0; i < n;) {
        CpUnit u = utf8_decode(s, n, i);
        if (u.valid) out.append(bytes, i, u.len);
        else out += "\xEF\xBF\xBD";
        i += u.len;
    }
    return out;
}

// ------------------------------------------------------------------------------------------------
// The pre-tokenization splitter (docs/tokenizer.md#split-rules)

namespace tok_detail {

inline bool is_nl(uint32_t c) { return c == '\r' || c == '\n'; }
inline uint32_t ascii_lower(uint32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

// Maximal run of class `cls` starting at q; returns its end.
inline size_t run_of(const uint8_t* s, size_t n, size_t q, uint8_t cls) {
    while (q < n) {
        // ASCII fast path: most text is ASCII and this is the hot loop of the splitter
        if (s[q] < 0x80) {
            if (g_cp_class_table.bmp[s[q]] != cls) break;
            q++;
            continue;
        }
        CpUnit u = utf8_decode(s, n, q);
        if (u.cls != cls) break;
        q += u.len;
    }
    return q;
}

// The rules of the whitespace tail, shared by all patterns: A5 (if newline_rule), A6, A7.
inline size_t whitespace_piece(const uint8_t* s, size_t n, size_t p, size_t p1, bool newline_rule) {
    size_t e = p, last_nl = SIZE_MAX, last_start = p, count = 0;
    while (e < n) {
        CpUnit u = utf8_decode(s, n, e);
        if (u.cls != CP_S) break;
        if (is_nl(u.cp)) last_nl = e;
        last_start = e;
        count++;
        e += u.len;
    }
    if (newline_rule && last_nl != SIZE_MAX) return last_nl + 1;  // A5: through the last newline
    if (e == n) return n;                                           // A6 at end of text
    if (count >= 2) return last_start;                              // A6: leave the last one
    return p1;                                                      // A7: one code point
}

// nanochat / GPT-4 rules A1..A7; max_digits is 2 (nanochat) or 3 (GPT-4).
inline size_t next_piece_gpt4(const uint8_t* s, size_t n, size_t p, int max_digits) {
    CpUnit c = utf8_decode(s, n, p);
    size_t p1 = p + c.len;
    // A1 contractions: '(?i:[sdmt]|ll|ve|re). Case folding adds U+017F (long s) to 's'.
    if (c.cp == '\'' && p1 < n) {
        CpUnit d = utf8_decode(s, n, p1);
        uint32_t x = ascii_lower(d.cp);
        if (x == 's' || x == 'd' || x == 'm' || x == 't' || d.cp == 0x17F) return p1 + d.len;
        size_t p2 = p1 + d.len;
        if (p2 < n && s[p2] < 0x80) {
            uint32_t y = ascii_lower(s[p2]);
            if ((x == 'l' && y == 'l') || (x == 'v' && y == 'e') || (x == 'r' && y == 'e')) return p2 + 1;
        }
    }
    // A2 words: [^\r\n\p{L}\p{N}]?+\p{L}+
    if (c.cls == CP_L) return run_of(s, n, p1, CP_L);
    if (c.cls != CP_N && !is_nl(c.cp) && p1 < n) {
        CpUnit d = utf8_decode(s, n, p1);
        if (d.cls == CP_L) return run_of(s, n, p1 + d.len, CP_L);
    }
    // A3 digits: \p{N}{1,max_digits}
    if (c.cls == CP_N) {
        size_t q = p1;
        for (int k = 1; k < max_digits && q < n; k++) {
            CpUnit d = utf8_decode(s, n, q);
            if (d.cls != CP_N) break;
            q += d.len;
        }
        return q;
    }
    // A4 punctuation: ' ?[^\s\p{L}\p{N}]++[\r\n]*'
    {
        size_t q = SIZE_MAX;
        if (c.cls == CP_O) q = p1;
        else if (c.cp == ' ' && p1 < n) {
            CpUnit d = utf8_decode(s, n, p1);
            if (d.cls == CP_O) q = p1 + d.len;
        }
        if (q != SIZE_MAX) {
            q = run_of(s, n, q, CP_O);
            while (q < n && (s[q] == '\r' || s[q] == '\n')) q++;
            return q;
        }
    }
    // c is whitespace here: A5, A6, A7
    return whitespace_piece(s, n, p, p1, true);
}

// GPT-2 (r50k_base): 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
inline size_t next_piece_gpt2(const uint8_t* s, size_t n, size_t p) {
    CpUnit c = utf8_decode(s, n, p);
    size_t p1 = p + c.len;
    if (c.cp == '\'' && p1 < n) {
        uint8_t x = s[p1];
        if (x == 's' || x == 't' || x == 'm' || x == 'd') return p1 + 1;
        if (p1 + 1 < n) {
            uint8_t y = s[p1 + 1];
            if ((x == 'r' && y == 'e') || (x == 'v' && y == 'e') || (x == 'l' && y == 'l')) return p1 + 2;
        }
    }
    // ' ?X+' for X = L, N, O in that order
    CpUnit d = {0, 0, 255, false};
    if (c.cp == ' ' && p1 < n) d = utf8_decode(s, n, p1);
    const uint8_t order[3] = {CP_L, CP_N, CP_O};
    for (uint8_t cls : order) {
        if (c.cls == cls) return run_of(s, n, p1, cls);
        if (d.cls == cls) return run_of(s, n, p1 + d.len, cls);
    }
    return whitespace_piece(s, n, p, p1, false);
}

}  // namespace tok_detail

// End of the piece that starts at p (p < n).
inline size_t next_piece(SplitPattern pat, const uint8_t* s, size_t n, size_t p) {
    switch (pat) {
        case SplitPattern::Nanochat: return tok_detail::next_piece_gpt4(s, n, p, 2);
        case SplitPattern::GPT4: return tok_detail::next_piece_gpt4(s, n, p, 3);
        case SplitPattern::GPT2: return tok_detail::next_piece_gpt2(s, n, p);
    }
    return n;
}

// Split into pieces (copies; for tests and tools — the hot paths call next_piece directly).
inline std::vector<std::string> split_text(const std::string& text, SplitPattern pat = SplitPattern::Nanochat) {
    std::vector<std::string> out;
    const uint8_t* s = (const uint8_t*)text.data();
    for (size_t p = 0, n = text.size(); p < n;) {
        size_t q = next_piece(pat, s, n, p);
        out.emplace_back(text, p, q - p);
        p = q;
    }
    return out;
}

// ------------------------------------------------------------------------------------------------
// Vocabulary: the mergeable tokens' bytes and a hash table from bytes to rank.

inline uint64_t hash_bytes(const uint8_t* p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ ((uint64_t)n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0x9FB21C651E98DF25ull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, p, n);
    h = (h ^ v) * 0x9FB21C651E98DF25ull;
    h ^= h >> 32;
    return h;
}

struct Vocab {
    std::string arena;            // all token bytes, concatenated in rank order
    std::vector<uint32_t> off;    // token r is arena[off[r], off[r+1])
    std::vector<uint64_t> slots;  // (hash high 32 bits << 32) | (rank + 1); 0 = empty
    uint64_t mask = 0;
    uint64_t uid = 0;             // changes with every added token; copies share it (the encoder's
                                  // per-thread piece cache is valid only for one uid)

    static uint64_t next_uid() {
        static std::atomic<uint64_t> counter{1};
        return counter.fetch_add(1);
    }

    size_t size() const { return off.empty() ? 0 : off.size() - 1; }
    std::string_view bytes(uint32_t r) const { return std::string_view(arena.data() + off[r], off[r + 1] - off[r]); }

    // Rank of the byte string, or -1.
    int64_t find(const uint8_t* p, size_t n) const { return find_hashed(p, n, hash_bytes(p, n)); }
    int64_t find_hashed(const uint8_t* p, size_t n, uint64_t h) const {
        if (slots.empty()) return -1;
        uint64_t tag = h >> 32;
        for (uint64_t i = h & mask;; i = (i + 1) & mask) {
            uint64_t e = slots[i];
            if (e == 0) return -1;
            if ((e >> 32) == tag) {
                uint32_t r = (uint32_t)e - 1;
                if (off[r + 1] - off[r] == n && memcmp(arena.data() + off[r], p, n) == 0) return r;
            }
        }
    }
    int64_t find(std::string_view b) const { return find((const uint8_t*)b.data(), b.size()); }

    // Append a token with the next rank; returns the rank of an existing identical token instead
    // (and appends nothing) when the bytes are already present.
    int64_t add(std::string_view b) {
        if (off.empty()) off.push_back(0);
        if ((size() + 1) * 2 > slots.size()) grow();
        uint64_t h = hash_bytes((const uint8_t*)b.data(), b.size());
        uint64_t i = h & mask;
        for (;; i = (i + 1) & mask) {
            uint64_t e = slots[i];
            if (e == 0) break;
            if ((e >> 32) == (h >> 32)) {
                uint32_t r = (uint32_t)e - 1;
                if (bytes(r) == b) return r;
            }
        }
        uint32_t r = (uint32_t)size();
        uid = next_uid();
        arena.append(b.data(), b.size());
        off.push_back((uint32_t)arena.size());
        slots[i] = ((h >> 32) << 32) | (uint64_t)(r + 1);
        return -1;
    }
    void grow() {
        size_t cap = slots.empty() ? 1024 : slots.size() * 2;
        slots.assign(cap, 0);
        mask = cap - 1;
        for (uint32_t r = 0; r < size(); r++) {
            uint64_t h = hash_bytes((const uint8_t*)arena.data() + off[r], off[r + 1] - off[r]);
            uint64_t i = h & mask;
            while (slots[i]) i = (i + 1) & mask;
            slots[i] = ((h >> 32) << 32) | (uint64_t)(r + 1);
        }
    }
};

// ------------------------------------------------------------------------------------------------
// The tokenizer

struct Tokenizer {
    std::string name;
    SplitPattern pattern = SplitPattern::Nanochat;
    Vocab vocab;                                               // ranks 0..N-1
    std::vector<std::pair<std::string, uint32_t>> specials;   // (name, id), in id order
    std::string bos_token;
    uint32_t bos_id = 0;
    uint32_t n_vocab = 0;                                      // 1 + the largest id
    std::vector<int32_t> special_of_id;                        // id -> index into specials, -1 if none
    std::vector<int32_t> token_bytes;                          // byte length per id, 0 for specials and holes
                                                               // (docs/tokenizer.md#token-bytes)

    uint32_t n_mergeable() const { return (uint32_t)vocab.size(); }
    int64_t special_id(const std::string& s) const {
        for (auto& sp : specials) if (sp.first == s) return sp.second;
        return -1;
    }
};

static const uint32_t kMaxVocab = 1u << 24;  // 16.7M ids; the largest public vocabularies have ~200k

// Check invariants and build the derived tables. `what` names the source in errors.
inline void tokenizer_finalize(Tokenizer& t, const std::string& what) {
    uint32_t N = t.n_mergeable();
    uint32_t maxid = N ? N - 1 : 0;
    for (size_t i = 0; i < t.specials.size(); i++) {
        const auto& sp = t.specials[i];
        if (sp.first.empty()) LLMC_FAIL("%s: special token %zu has an empty name", what.c_str(), i);
        if (sp.second < N)
            LLMC_FAIL("%s: special token '%s' has id %u, which collides with a mergeable rank (ranks are 0..%u)",
                      what.c_str(), sp.first.c_str(), sp.second, N - 1);
        for (size_t j = 0; j < i; j++) {
            const auto& o = t.specials[j];
            if (o.second == sp.second)
                LLMC_FAIL("%s: special tokens '%s' and '%s' share id %u", what.c_str(), o.first.c_str(), sp.first.c_str(), sp.second);
            if (o.first == sp.first) LLMC_FAIL("%s: special token '%s' appears twice", what.c_str(), sp.first.c_str());
            if (sp.first.compare(0, o.first.size(), o.first) == 0 || o.first.compare(0, sp.first.size(), sp.first) == 0)
                LLMC_FAIL("%s: special token '%s' is a prefix of '%s' (not supported)", what.c_str(),
                          (o.first.size() < sp.first.size() ? o.first : sp.first).c_str(),
                          (o.first.size() < sp.first.size() ? sp.first : o.first).c_str());
        }
        maxid = std::max(maxid, sp.second);
    }
    // a sane bound: per-id tables are allocated below, and a corrupt sidecar must not ask for GBs
    if (maxid >= kMaxVocab) LLMC_FAIL("%s: token id %u is too large (ids must be < %u)", what.c_str(), maxid, kMaxVocab);
    if (t.n_vocab == 0) t.n_vocab = maxid + 1;
    if (t.n_vocab != maxid + 1) LLMC_FAIL("%s: n_vocab is %u but the largest id is %u (expected n_vocab %u)", what.c_str(), t.n_vocab, maxid, maxid + 1);
    int64_t bos = t.special_id(t.bos_token);
    if (bos < 0) LLMC_FAIL("%s: bos_token '%s' is not one of the special tokens", what.c_str(), t.bos_token.c_str());
    t.bos_id = (uint32_t)bos;
    for (int b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        if (t.vocab.find(&c, 1) < 0) LLMC_FAIL("%s: missing single byte: byte 0x%02X has no token", what.c_str(), b);
    }
    t.special_of_id.assign(t.n_vocab, -1);
    t.token_bytes.assign(t.n_vocab, 0);
    for (uint32_t r = 0; r < N; r++) t.token_bytes[r] = (int32_t)t.vocab.bytes(r).size();
    for (size_t i = 0; i < t.specials.size(); i++) t.special_of_id[t.specials[i].second] = (int32_t)i;
}

// ------------------------------------------------------------------------------------------------
// Encoding (docs/tokenizer.md#encode-ordinary)

namespace tok_detail {

static const uint32_t kNoRank = UINT32_MAX;

// Direct-mapped cache of short pieces that are not single tokens -> their ids. Frequent words
// outside the vocabulary ("Citizen:" style pieces, inflections) then cost one hash and one memcmp
// instead of a full merge loop. One per thread; emptied when used with a different vocabulary.
struct PieceCache {
    static constexpr size_t kSlots = 4096, kMaxBytes = 22, kMaxIds = 11;
    struct Slot {
        uint8_t len = 0;  // 0: empty (cached pieces have >= 2 bytes)
        uint8_t nids = 0;
        char bytes[kMaxBytes];
        uint32_t ids[kMaxIds];
    };
    std::vector<Slot> slots;
    uint64_t uid = 0;
    Slot& slot(uint64_t vocab_uid, uint64_t h) {
        if (uid != vocab_uid || slots.empty()) { slots.assign(kSlots, Slot()); uid = vocab_uid; }
        return slots[(h >> 20) & (kSlots - 1)];  // bits not used by the vocab table's first probe
    }
};

struct MergeScratch {
    std::vector<uint32_t> pos, rank;                      // linear-scan version
    std::vector<uint32_t> next, prev, cur;                // heap version
    std::vector<std::pair<uint32_t, uint32_t>> heap;      // (rank, start)
    PieceCache cache;
};

inline uint32_t rank_of(const Vocab& v, const uint8_t* s, size_t a, size_t b) {
    int64_t r = v.find(s + a, b - a);
    return r < 0 ? kNoRank : (uint32_t)r;
}

// tiktoken's _byte_pair_merge, literally: boundaries pos[0..m), rank[i] = rank of the bytes of
// parts i and i+1 together; merge the lowest (leftmost on ties) until none is a token.
inline void bpe_linear(const Vocab& v, const uint8_t* s, size_t n, std::vector<uint32_t>& out, MergeScratch& sc) {
    auto& pos = sc.pos;
    auto& rank = sc.rank;
    pos.resize(n + 1);
    rank.resize(n + 1);
    for (size_t i = 0; i <= n; i++) pos[i] = (uint32_t)i;
    size_t m = n + 1;  // boundaries; parts = m - 1; pairs = m - 2
    for (size_t i = 0; i + 2 < m; i++) rank[i] = rank_of(v, s, pos[i], pos[i + 2]);
    while (m > 2) {
        uint32_t best = kNoRank;
        size_t bi = 0;
        for (size_t i = 0; i + 2 < m; i++)
            if (rank[i] < best) { best = rank[i]; bi = i; }
        if (best == kNoRank) break;
        // merge parts bi and bi+1: drop boundary bi+1
        for (size_t k = bi + 1; k + 1 < m; k++) { pos[k] = pos[k + 1]; rank[k] = rank[k + 1]; }
        m--;
        rank[bi] = bi + 2 < m ? rank_of(v, s, pos[bi], pos[bi + 2]) : kNoRank;
        if (bi > 0) rank[bi - 1] = rank_of(v, s, pos[bi - 1], pos[bi + 1]);
    }
    for (size_t i = 0; i + 1 < m; i++) {
        uint32_t r = rank_of(v, s, pos[i], pos[i + 1]);
        out.push_back(r);
    }
}

// The same choices with a min-heap of (rank, start) over a linked list of parts: O(n log n).
// An entry is current iff its part is still alive and its pair rank still equals the entry's rank
// (a part's span only grows, and distinct byte strings have distinct ranks, so an old rank can
// never reappear for the same part).
inline void bpe_heap(const Vocab& v, const uint8_t* s, size_t n, std::vector<uint32_t>& out, MergeScratch& sc) {
    auto& next = sc.next;
    auto& prev = sc.prev;
    auto& cur = sc.cur;  // current pair rank of the part starting here; kNoRank if none; dead parts: kNoRank - 1
    auto& heap = sc.heap;
    next.resize(n + 1);
    prev.resize(n + 1);
    cur.resize(n + 1);
    heap.clear();
    for (size_t i = 0; i <= n; i++) { next[i] = (uint32_t)i + 1; prev[i] = (uint32_t)i - 1; }
    auto pair_rank = [&](uint32_t i) -> uint32_t {
        uint32_t j = next[i];
        if (j >= n) return kNoRank;
        return rank_of(v, s, i, next[j]);
    };
    auto greater = [](const std::pair<uint32_t, uint32_t>& a, const std::pair<uint32_t, uint32_t>& b) { return a > b; };
    for (uint32_t i = 0; i < n; i++) {
        cur[i] = pair_rank(i);
        if (cur[i] != kNoRank) heap.push_back({cur[i], i});
    }
    std::make_heap(heap.begin(), heap.end(), greater);
    const uint32_t kDead = kNoRank - 1;
    while (!heap.empty()) {
        std::pop_heap(heap.begin(), heap.end(), greater);
        auto top = heap.back();
        heap.pop_back();
        uint32_t i = top.second;
        if (cur[i] != top.first) continue;  // stale
        uint32_t j = next[i];               // merge part j into part i
        cur[j] = kDead;
        next[i] = next[j];
        if (next[j] < n) prev[next[j]] = i;
        cur[i] = pair_rank(i);
        if (cur[i] != kNoRank) { heap.push_back({cur[i], i}); std::push_heap(heap.begin(), heap.end(), greater); }
        if (i > 0) {
            uint32_t p = prev[i];
            cur[p] = pair_rank(p);
            if (cur[p] != kNoRank) { heap.push_back({cur[p], p}); std::push_heap(heap.begin(), heap.end(), greater); }
        }
    }
    for (uint32_t i = 0; i < n; i = next[i]) out.push_back(rank_of(v, s, i, next[i]));
}

}  // namespace tok_detail

// Encode one piece (docs/tokenizer.md#encode-ordinary, steps 1-2), appending ids.
inline void encode_piece(const Tokenizer& t, const uint8_t* s, size_t n, std::vector<uint32_t>& out,
                         tok_detail::MergeScratch& sc) {
    using tok_detail::PieceCache;
    uint64_t h = hash_bytes(s, n);
    int64_t r = t.vocab.find_hashed(s, n, h);
    if (r >= 0) { out.push_back((uint32_t)r); return; }
    // n >= 2 here: every single byte is a token (checked at load)
    if (n <= PieceCache::kMaxBytes) {
        PieceCache::Slot& sl = sc.cache.slot(t.vocab.uid, h);
        if (sl.len == n && memcmp(sl.bytes, s, n) == 0) {
            out.insert(out.end(), sl.ids, sl.ids + sl.nids);
            return;
        }
        size_t before = out.size();
        tok_detail::bpe_linear(t.vocab, s, n, out, sc);
        size_t k = out.size() - before;
        if (k <= PieceCache::kMaxIds) {
            sl.len = (uint8_t)n;
            sl.nids = (uint8_t)k;
            memcpy(sl.bytes, s, n);
            memcpy(sl.ids, out.data() + before, k * sizeof(uint32_t));
        }
        return;
    }
    if (n <= 128) tok_detail::bpe_linear(t.vocab, s, n, out, sc);
    else tok_detail::bpe_heap(t.vocab, s, n, out, sc);
}

// encode_ordinary: split, then BPE each piece; never emits specials. Appends to out.
inline void encode_ordinary(const Tokenizer& t, const char* text, size_t n, std::vector<uint32_t>& out) {
    static thread_local tok_detail::MergeScratch sc;
    LLMC_CHECK(t.n_mergeable() >= 256, "encode: tokenizer '%s' has no vocabulary (was it loaded or trained?)", t.name.c_str());
    const uint8_t* s = (const uint8_t*)text;
    for (size_t p = 0; p < n;) {
        size_t q = next_piece(t.pattern, s, n, p);
        encode_piece(t, s + p, q - p, out, sc);
        p = q;
    }
}
inline std::vector<uint32_t> encode_ordinary(const Tokenizer& t, const std::string& text) {
    std::vector<uint32_t> out;
    encode_ordinary(t, text.data(), text.size(), out);
    return out;
}

// Cut at each occurrence of an allowed special (leftmost first), encode the stretches between
// (docs/tokenizer.md#encode-specials).
inline std::vector<uint32_t> encode_with_specials(const Tokenizer& t, const std::string& text,
                                                  const std::vector<std::string>& allowed) {
    std::vector<std::pair<std::string, uint32_t>> sp;
    for (auto& a : allowed) {
        int64_t id = t.special_id(a);
        if (id < 0) LLMC_FAIL("encode_with_specials: '%s' is not a special token of tokenizer '%s'", a.c_str(), t.name.c_str());
        sp.push_back({a, (uint32_t)id});
    }
    std::vector<uint32_t> out;
    size_t p = 0;
    while (p < text.size()) {
        size_t best = std::string::npos;
        int which = -1;
        for (size_t k = 0; k < sp.size(); k++) {
            size_t f = text.find(sp[k].first, p);
            if (f < best) { best = f; which = (int)k; }
        }
        size_t end = which < 0 ? text.size() : best;
        encode_ordinary(t, text.data() + p, end - p, out);
        if (which < 0) break;
        out.push_back(sp[which].second);
        p = best + sp[which].first.size();
    }
    return out;
}
inline std::vector<uint32_t> encode_with_specials(const Tokenizer& t, const std::string& text) {
    std::vector<std::string> all;
    for (auto& s : t.specials) all.push_back(s.first);
    return encode_with_specials(t, text, all);
}

// Encode many documents in parallel (OpenMP over documents). out[i] = [BOS] (if prepend_bos) +
// encode_ordinary(docs[i]).
inline void encode_batch(const Tokenizer& t, const std::vector<std::string>& docs, std::vector<std::vector<uint32_t>>& out,
                         bool prepend_bos, int nthreads = 0) {
    out.resize(docs.size());
#ifdef _OPENMP
    if (nthreads <= 0) nthreads = omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 16) num_threads(nthreads)
#endif
    for (int64_t i = 0; i < (int64_t)docs.size(); i++) {
        auto& o = out[i];
        o.clear();
        if (prepend_bos) o.push_back(t.bos_id);
        encode_ordinary(t, docs[i].data(), docs[i].size(), o);
    }
}

// ------------------------------------------------------------------------------------------------
// Decoding (docs/tokenizer.md#decoding)

inline void decode_bytes_append(const Tokenizer& t, uint32_t id, std::string& out) {
    if (id < t.n_mergeable()) { out += t.vocab.bytes(id); return; }
    if (id < t.n_vocab && t.special_of_id[id] >= 0) { out += t.specials[t.special_of_id[id]].first; return; }
    LLMC_FAIL("decode: token id %u is not in the vocabulary of '%s' (n_vocab %u)", id, t.name.c_str(), t.n_vocab);
}
inline std::string decode_bytes(const Tokenizer& t, const std::vector<uint32_t>& ids) {
    std::string out;
    for (uint32_t id : ids) decode_bytes_append(t, id, out);
    return out;
}
inline std::string decode_text(const Tokenizer& t, const std::vector<uint32_t>& ids) {
    return utf8_replace_invalid(decode_bytes(t, ids));
}

// ------------------------------------------------------------------------------------------------
// Training (docs/tokenizer.md#bpe-training)

struct TrainOptions {
    int64_t vocab_size = 32768;
    int64_t doc_cap = 10000;           // code points per document (0 or less: no cap)
    int64_t max_chars = 2000000000;    // stop after the document that makes the total exceed this
    std::vector<std::string> specials = nanochat_special_tokens();
    std::string bos_token = "<|bos|>"; // ignored when there are no specials
    SplitPattern pattern = SplitPattern::Nanochat;
    std::string name = "llmc-bpe";
    bool verbose = false;
    int threads = 0;                   // 0: all
};

namespace tok_detail {

// Open-addressing map from a pair (left << 32 | right) to a dense pair index.
struct PairMap {
    std::vector<uint64_t> keys;
    std::vector<uint32_t> vals;
    uint64_t mask = 0;
    size_t count = 0;
    static constexpr uint64_t kEmpty = ~0ull;
    static uint64_t h(uint64_t k) { k ^= k >> 33; k *= 0xFF51AFD7ED558CCDull; k ^= k >> 33; return k; }
    PairMap() { rehash(1 << 16); }
    void rehash(size_t cap) {
        std::vector<uint64_t> ok = std::move(keys);
        std::vector<uint32_t> ov = std::move(vals);
        keys.assign(cap, kEmpty);
        vals.assign(cap, 0);
        mask = cap - 1;
        for (size_t i = 0; i < ok.size(); i++)
            if (ok[i] != kEmpty) {
                uint64_t j = h(ok[i]) & mask;
                while (keys[j] != kEmpty) j = (j + 1) & mask;
                keys[j] = ok[i];
                vals[j] = ov[i];
            }
    }
    // index of key, inserting `fresh` if absent (sets inserted)
    uint32_t get(uint64_t key, uint32_t fresh, bool& inserted) {
        if ((count + 1) * 2 > keys.size()) rehash(keys.size() * 2);
        uint64_t j = h(key) & mask;
        while (keys[j] != kEmpty) {
            if (keys[j] == key) { inserted = false; return vals[j]; }
            j = (j + 1) & mask;
        }
        keys[j] = key;
        vals[j] = fresh;
        count++;
        inserted = true;
        return fresh;
    }
};

struct HeapEntry {
    int64_t count;
    uint32_t left, right;
    uint32_t idx;
    // priority: higher count first; on ties the smaller (left, right) first
    bool operator<(const HeapEntry& o) const {
        if (count != o.count) return count < o.count;
        if (left != o.left) return left > o.left;
        return right > o.right;
    }
};

}  // namespace tok_detail

// Prepare training text (docs/tokenizer.md#training-text): cap each document to doc_cap code
// points, stop after the document that makes the running total exceed max_chars. Returns views
// into docs.
// Byte length of the first max_cps code points of s (all of s if max_cps <= 0); *cps gets their
// count. An ill-formed UTF-8 subsequence counts as one code point, as in the splitter.
inline size_t utf8_prefix(const char* text, size_t n, int64_t max_cps, int64_t* cps) {
    const uint8_t* s = (const uint8_t*)text;
    size_t i = 0;
    int64_t c = 0;
    while (i < n && (max_cps <= 0 || c < max_cps)) {
        i += s[i] < 0x80 ? 1 : utf8_decode(s, n, i).len;
        c++;
    }
    *cps = c;
    return i;
}

inline std::vector<std::string_view> training_texts(const std::vector<std::string>& docs, int64_t doc_cap, int64_t max_chars) {
    std::vector<std::string_view> out;
    int64_t total = 0;
    for (auto& d : docs) {
        int64_t cps;
        out.emplace_back(d.data(), utf8_prefix(d.data(), d.size(), doc_cap, &cps));
        total += cps;
        if (total > max_chars) break;
    }
    return out;
}

inline Tokenizer tokenizer_train(const std::vector<std::string>& docs, const TrainOptions& opt) {
    using namespace tok_detail;
    const int64_t nspecial = (int64_t)opt.specials.size();
    if (opt.vocab_size < 256 + nspecial)
        LLMC_FAIL("--vocab-size %lld is too small: it must be at least 256 + %lld special tokens = %lld",
                  (long long)opt.vocab_size, (long long)nspecial, (long long)(256 + nspecial));
    if (opt.vocab_size > (int64_t)kMaxVocab) LLMC_FAIL("--vocab-size %lld is too large (max %u)", (long long)opt.vocab_size, kMaxVocab);
    const int64_t num_merges = opt.vocab_size - 256 - nspecial;

    // 1. count chunks (one map per thread, merged)
    std::vector<std::string_view> texts = training_texts(docs, opt.doc_cap, opt.max_chars);
    int nthreads = 1;
#ifdef _OPENMP
    nthreads = opt.threads > 0 ? opt.threads : omp_get_max_threads();
#endif
    std::vector<std::unordered_map<std::string_view, int64_t>> local((size_t)nthreads);
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 64) num_threads(nthreads)
#endif
    for (int64_t d = 0; d < (int64_t)texts.size(); d++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        auto& m = local[(size_t)tid];
        const uint8_t* s = (const uint8_t*)texts[d].data();
        size_t n = texts[d].size();
        for (size_t p = 0; p < n;) {
            size_t q = next_piece(opt.pattern, s, n, p);
            m[std::string_view((const char*)s + p, q - p)]++;
            p = q;
        }
    }
    std::unordered_map<std::string_view, int64_t> chunks = std::move(local[0]);
    for (int k = 1; k < nthreads; k++)
        for (auto& kv : local[(size_t)k]) chunks[kv.first] += kv.second;
    local.clear();
    if (chunks.empty())
        LLMC_FAIL("tokenizer training: empty corpus (%zu training documents, no text in them)", docs.size());

    // 2. words as byte ids, stored flat; a merge shrinks a word in place
    size_t nw = chunks.size();
    std::vector<uint32_t> ids;
    std::vector<uint64_t> wstart(nw);
    std::vector<uint32_t> wlen(nw);
    std::vector<int64_t> wcount(nw);
    {
        size_t total = 0;
        for (auto& kv : chunks) total += kv.first.size();
        ids.reserve(total);
        size_t w = 0;
        for (auto& kv : chunks) {
            wstart[w] = ids.size();
            wlen[w] = (uint32_t)kv.first.size();
            wcount[w] = kv.second;
            for (unsigned char c : kv.first) ids.push_back(c);
            w++;
        }
    }
    chunks.clear();

    // 3. pair counts and, per pair, the words containing it
    PairMap pmap;
    std::vector<int64_t> pcount;
    std::vector<std::vector<uint32_t>> pwords;
    std::vector<uint64_t> pkey;
    auto pair_index = [&](uint32_t a, uint32_t b) -> uint32_t {
        bool ins;
        uint64_t key = ((uint64_t)a << 32) | b;
        uint32_t idx = pmap.get(key, (uint32_t)pcount.size(), ins);
        if (ins) { pcount.push_back(0); pwords.emplace_back(); pkey.push_back(key); }
        return idx;
    };
    for (uint32_t w = 0; w < nw; w++) {
        const uint32_t* x = &ids[wstart[w]];
        for (uint32_t k = 0; k + 1 < wlen[w]; k++) {
            uint32_t idx = pair_index(x[k], x[k + 1]);
            pcount[idx] += wcount[w];
            auto& pw = pwords[idx];
            if (pw.empty() || pw.back() != w) pw.push_back(w);
        }
    }
    std::vector<HeapEntry> heap;
    for (uint32_t idx = 0; idx < pcount.size(); idx++)
        if (pcount[idx] > 0) heap.push_back({pcount[idx], (uint32_t)(pkey[idx] >> 32), (uint32_t)pkey[idx], idx});
    std::make_heap(heap.begin(), heap.end());

    // 4. merges
    std::vector<std::pair<uint32_t, uint32_t>> merges;
    merges.reserve((size_t)num_merges);
    std::vector<uint32_t> created;       // pair indices created in this step
    std::vector<uint8_t> is_created;
    while ((int64_t)merges.size() < num_merges) {
        if (heap.empty()) break;
        std::pop_heap(heap.begin(), heap.end());
        HeapEntry top = heap.back();
        heap.pop_back();
        int64_t current = pcount[top.idx];
        if (top.count != current) {  // stale: re-queue with the current count (counts only decrease)
            if (current > 0) { top.count = current; heap.push_back(top); std::push_heap(heap.begin(), heap.end()); }
            continue;
        }
        const uint32_t a = top.left, b = top.right;
        const uint32_t new_id = 256 + (uint32_t)merges.size();
        merges.push_back({a, b});
        std::vector<uint32_t> words = std::move(pwords[top.idx]);
        pwords[top.idx] = {};
        created.clear();
        for (uint32_t w : words) {
            uint32_t* x = &ids[wstart[w]];
            uint32_t n = wlen[w];
            int64_t c = wcount[w];
            auto add = [&](uint32_t l, uint32_t r, int64_t delta) {
                uint32_t idx = pair_index(l, r);
                pcount[idx] += delta * c;
                if (delta > 0) {
                    auto& pw = pwords[idx];
                    if (pw.empty() || pw.back() != w) pw.push_back(w);
                    if (idx >= is_created.size()) is_created.resize(pcount.size() + 1024, 0);
                    if (!is_created[idx]) { is_created[idx] = 1; created.push_back(idx); }
                }
            };
            // rustbpe's Word::merge_pair: left to right, non-overlapping, in place (o <= i)
            uint32_t o = 0, i = 0;
            while (i < n) {
                if (i + 1 < n && x[i] == a && x[i + 1] == b) {
                    if (o > 0) { add(x[o - 1], a, -1); add(x[o - 1], new_id, +1); }
                    add(a, b, -1);
                    if (i + 2 < n) { add(b, x[i + 2], -1); add(new_id, x[i + 2], +1); }
                    x[o++] = new_id;
                    i += 2;
                } else {
                    x[o++] = x[i++];
                }
            }
            wlen[w] = o;
        }
        for (uint32_t idx : created) {
            is_created[idx] = 0;
            if (pcount[idx] > 0) {
                heap.push_back({pcount[idx], (uint32_t)(pkey[idx] >> 32), (uint32_t)pkey[idx], idx});
                std::push_heap(heap.begin(), heap.end());
            }
        }
        if (opt.verbose && (merges.size() % 1000 == 0 || (int64_t)merges.size() == num_merges))
            fprintf(stderr, "%straining: %zu / %lld merges%s", progress_begin(), merges.size(), (long long)num_merges, progress_end());
    }
    if (opt.verbose) progress_done();
    if ((int64_t)merges.size() < num_merges)
        fprintf(stderr, "warning: tokenizer training stopped early after %zu of %lld merges (no pair left); vocabulary is smaller\n",
                merges.size(), (long long)num_merges);

    // 5. the tokenizer: bytes, merges in order, then the specials
    Tokenizer t;
    t.name = opt.name;
    t.pattern = opt.pattern;
    std::vector<std::string> tb(256 + merges.size());
    for (int c = 0; c < 256; c++) tb[c] = std::string(1, (char)c);
    for (size_t k = 0; k < merges.size(); k++) tb[256 + k] = tb[merges[k].first] + tb[merges[k].second];
    for (size_t r = 0; r < tb.size(); r++)
        if (t.vocab.add(tb[r]) >= 0) LLMC_FAIL("tokenizer training: merge %zu produced a duplicate token (internal error)", r);
    uint32_t next = (uint32_t)tb.size();
    for (auto& s : opt.specials) t.specials.push_back({s, next++});
    if (!opt.specials.empty()) t.bos_token = opt.bos_token;
    if (t.specials.empty()) {
        // zero specials (tests, the worked examples of docs/tokenizer.md#bpe-training): no BOS;
        // finalize's checks except bos
        t.n_vocab = next;
        t.special_of_id.assign(t.n_vocab, -1);
        t.token_bytes.assign(t.n_vocab, 0);
        for (uint32_t r = 0; r < t.n_mergeable(); r++) t.token_bytes[r] = (int32_t)t.vocab.bytes(r).size();
        return t;
    }
    tokenizer_finalize(t, "trained tokenizer");
    return t;
}

// ------------------------------------------------------------------------------------------------
// Files (docs/tokenizer.md#tokenizer-files): <stem>.tiktoken (base64 bytes, space, rank) and
// <stem>.json (the sidecar)

namespace tok_detail {

static const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

inline std::string base64_encode(std::string_view b) {
    std::string out;
    size_t i = 0;
    for (; i + 3 <= b.size(); i += 3) {
        uint32_t v = ((uint8_t)b[i] << 16) | ((uint8_t)b[i + 1] << 8) | (uint8_t)b[i + 2];
        out += kB64[v >> 18]; out += kB64[(v >> 12) & 63]; out += kB64[(v >> 6) & 63]; out += kB64[v & 63];
    }
    if (b.size() - i == 1) {
        uint32_t v = (uint8_t)b[i] << 16;
        out += kB64[v >> 18]; out += kB64[(v >> 12) & 63]; out += "==";
    } else if (b.size() - i == 2) {
        uint32_t v = ((uint8_t)b[i] << 16) | ((uint8_t)b[i + 1] << 8);
        out += kB64[v >> 18]; out += kB64[(v >> 12) & 63]; out += kB64[(v >> 6) & 63]; out += '=';
    }
    return out;
}

// Strict RFC 4648 decoding with '=' padding; false on any bad character, length or padding.
inline bool base64_decode(const char* s, size_t n, std::string& out) {
    out.clear();
    if (n == 0 || n % 4 != 0) return false;
    auto val = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+') return 62;
        if (c == '/') return 63;
        return -1;
    };
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            char c = s[i + k];
            if (c == '=') {
                if (i + 4 != n || k < 2) return false;  // padding only in the last group, at most 2
                pad++;
                v[k] = 0;
            } else {
                if (pad) return false;  // data after padding
                v[k] = val(c);
                if (v[k] < 0) return false;
            }
        }
        uint32_t x = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
        out += (char)(x >> 16);
        if (pad < 2) out += (char)((x >> 8) & 0xFF);
        if (pad < 1) out += (char)(x & 0xFF);
    }
    return true;
}

}  // namespace tok_detail

// Parse the text of a .tiktoken file into a vocabulary. `what` is the file name for errors.
inline Vocab parse_tiktoken(const std::string& text, const std::string& what) {
    using namespace tok_detail;
    // count lines first so that ranks can be checked against N while reading
    std::vector<std::pair<size_t, size_t>> lines;
    for (size_t p = 0; p < text.size();) {
        size_t e = text.find('\n', p);
        if (e == std::string::npos) e = text.size();
        size_t end = e;
        if (end > p && text[end - 1] == '\r') end--;
        lines.push_back({p, end});
        p = e + 1;
    }
    if (lines.empty()) LLMC_FAIL("%s: empty .tiktoken file", what.c_str());
    size_t N = lines.size();
    std::vector<std::string> tok(N);
    std::vector<size_t> line_of_rank(N, 0);
    std::string bytes;
    for (size_t ln = 0; ln < N; ln++) {
        const char* s = text.data() + lines[ln].first;
        size_t n = lines[ln].second - lines[ln].first;
        size_t sp = std::string_view(s, n).find(' ');
        if (n == 0) LLMC_FAIL("%s: line %zu: empty line (expected '<base64> <rank>')", what.c_str(), ln + 1);
        if (sp == std::string::npos || std::string_view(s + sp + 1, n - sp - 1).find(' ') != std::string::npos || sp == 0 || sp + 1 == n)
            LLMC_FAIL("%s: line %zu: expected exactly two fields '<base64> <rank>' separated by one space", what.c_str(), ln + 1);
        if (!base64_decode(s, sp, bytes))
            LLMC_FAIL("%s: line %zu: bad base64 '%.*s'", what.c_str(), ln + 1, (int)std::min<size_t>(sp, 64), s);
        uint64_t r = 0;
        for (size_t k = sp + 1; k < n; k++) {
            if (s[k] < '0' || s[k] > '9' || r > (uint64_t)INT32_MAX)
                LLMC_FAIL("%s: line %zu: bad integer rank '%.*s'", what.c_str(), ln + 1, (int)std::min<size_t>(n - sp - 1, 32), s + sp + 1);
            r = r * 10 + (uint64_t)(s[k] - '0');
        }
        if (r >= N)
            LLMC_FAIL("%s: line %zu: rank gap: rank %llu but the file has %zu tokens, so the ranks are not exactly 0..%zu",
                      what.c_str(), ln + 1, (unsigned long long)r, N, N - 1);
        if (line_of_rank[r])
            LLMC_FAIL("%s: line %zu: duplicate rank %llu (also on line %zu)", what.c_str(), ln + 1, (unsigned long long)r, line_of_rank[r]);
        line_of_rank[r] = ln + 1;
        tok[r] = bytes;
    }
    // N lines, distinct ranks < N: every rank 0..N-1 is present (no gap possible here)
    Vocab v;
    for (size_t r = 0; r < N; r++) {
        int64_t dup = v.add(tok[r]);
        if (dup >= 0)
            LLMC_FAIL("%s: line %zu: duplicate bytes: rank %zu has the same bytes as rank %lld (line %zu)", what.c_str(),
                      line_of_rank[r], r, (long long)dup, line_of_rank[dup]);
    }
    for (int b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        if (v.find(&c, 1) < 0) LLMC_FAIL("%s: missing single byte: byte 0x%02X has no token", what.c_str(), b);
    }
    return v;
}

inline std::string tiktoken_text(const Vocab& v) {
    std::string out;
    for (uint32_t r = 0; r < v.size(); r++) {
        out += tok_detail::base64_encode(v.bytes(r));
        out += ' ';
        out += std::to_string(r);
        out += '\n';
    }
    return out;
}

inline Json sidecar_json(const Tokenizer& t) {
    Json j = Json::object();
    j.set("format", "tiktoken-sidecar");
    j.set("version", 1);
    j.set("name", t.name);
    j.set("pattern", pattern_string(t.pattern));
    j.set("n_mergeable", (int64_t)t.n_mergeable());
    Json sp = Json::array();
    for (auto& s : t.specials) sp.push(Json::array({s.first, (int64_t)s.second}));
    j.set("special_tokens", sp);
    j.set("bos_token", t.bos_token);
    j.set("n_vocab", (int64_t)t.n_vocab);
    return j;
}

// Apply a parsed sidecar to a tokenizer whose vocab is loaded. `what` names the sidecar file.
inline void apply_sidecar(Tokenizer& t, const Json& j, const std::string& what) {
    if (!j.is_object()) LLMC_FAIL("%s: the sidecar must be a JSON object, got %s", what.c_str(), j.type_name());
    auto get = [&](const char* key, Json::Type type) -> const Json& {
        const Json* v = j.find(key);
        if (!v) LLMC_FAIL("%s: missing key '%s'", what.c_str(), key);
        if (v->type != type) LLMC_FAIL("%s: key '%s' has type %s, expected %s", what.c_str(), key, v->type_name(), Json::type_name(type));
        return *v;
    };
    const std::string& fmt = get("format", Json::String).s;
    if (fmt != "tiktoken-sidecar") LLMC_FAIL("%s: key 'format' is '%s', expected 'tiktoken-sidecar'", what.c_str(), fmt.c_str());
    int64_t ver = get("version", Json::Int).i;
    if (ver != 1) LLMC_FAIL("%s: key 'version' is %lld, only version 1 is supported", what.c_str(), (long long)ver);
    t.name = get("name", Json::String).s;
    const std::string& pat = get("pattern", Json::String).s;
    if (!pattern_from_string(pat, &t.pattern))
        LLMC_FAIL("%s: key 'pattern': unimplemented split pattern '%s' (accepted: nanochat's, GPT-4's, GPT-2's)", what.c_str(), pat.c_str());
    int64_t nm = get("n_mergeable", Json::Int).i;
    if (nm != (int64_t)t.n_mergeable())
        LLMC_FAIL("%s: key 'n_mergeable' is %lld but the .tiktoken file has %u tokens", what.c_str(), (long long)nm, t.n_mergeable());
    const Json& sp = get("special_tokens", Json::Array);
    t.specials.clear();
    for (size_t k = 0; k < sp.arr.size(); k++) {
        const Json& e = sp.arr[k];
        if (!e.is_array() || e.arr.size() != 2 || !e.arr[0].is_string() || !e.arr[1].is_int())
            LLMC_FAIL("%s: key 'special_tokens': entry %zu must be a [name, id] pair (string, integer)", what.c_str(), k);
        int64_t id = e.arr[1].i;
        if (id < 0 || id > (int64_t)INT32_MAX) LLMC_FAIL("%s: key 'special_tokens': entry %zu has bad id %lld", what.c_str(), k, (long long)id);
        t.specials.push_back({e.arr[0].s, (uint32_t)id});
    }
    std::sort(t.specials.begin(), t.specials.end(), [](auto& x, auto& y) { return x.second < y.second; });
    t.bos_token = get("bos_token", Json::String).s;
    int64_t nv = get("n_vocab", Json::Int).i;
    if (nv <= 0 || nv > (int64_t)kMaxVocab) LLMC_FAIL("%s: key 'n_vocab' has bad value %lld (must be 1..%u)", what.c_str(), (long long)nv, kMaxVocab);
    t.n_vocab = (uint32_t)nv;
    tokenizer_finalize(t, what);
}

// Load <stem>.tiktoken + <stem>.json (or explicit paths).
inline Tokenizer tokenizer_load_files(const std::string& tiktoken_path, const std::string& sidecar_path) {
    Tokenizer t;
    t.vocab = parse_tiktoken(read_file(tiktoken_path), tiktoken_path);
    apply_sidecar(t, json_parse(read_file(sidecar_path), sidecar_path), sidecar_path);
    return t;
}
inline Tokenizer tokenizer_load(const std::string& stem) {
    return tokenizer_load_files(stem + ".tiktoken", stem + ".json");
}

inline void tokenizer_save(const Tokenizer& t, const std::string& stem) {
    if (t.specials.empty()) LLMC_FAIL("tokenizer_save: '%s' has no special tokens (a sidecar needs a bos_token)", stem.c_str());
    write_file_atomic(stem + ".tiktoken", tiktoken_text(t.vocab));
    write_file_atomic(stem + ".json", json_dump(sidecar_json(t), 2) + "\n");
}

}  // namespace llmc
