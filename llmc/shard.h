// shard.h: llm.c-format token shards (.bin): open + validate, read, write, glob.
//
// Layout (docs/tokenizer.md#shard-format): a header of 256 little-endian int32 (1024 bytes), then ntok
// tokens. Two variants, told apart by the magic number:
//   magic 20240520, version 1: uint16 tokens (llm.c's GPT-2 shards)
//   magic 20240801, version 7: uint32 tokens (llm.c's llama-3 shards, vocabularies > 65536)
// Header slots 3..255 are zero, so a shard we write is byte-identical to llm.c's for the same tokens.
// File size is exactly 1024 + ntok*width; anything else (truncated body, trailing bytes) is an
// error at open, never silently-garbage tokens.
//
// Reading goes through a read-only private mmap (ShardMap): a 100M-token shard is 200-400 MB and
// the loader touches it sequentially, so letting the page cache do the work beats copying the
// whole file into the heap. Every error message names the file and, where it applies, the byte
// offset, the value found and the accepted values (docs/tokenizer.md#bad-input).
//
// Tokens are stored little-endian; the body is read with plain loads, so the host must be
// little-endian too (every platform this project targets is; the static_assert says so loudly).
#pragma once
#include <glob.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "llmc/utils.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "shard.h assumes a little-endian host");

namespace llmc {

constexpr int64_t SHARD_HEADER_BYTES = 1024;
constexpr int32_t SHARD_MAGIC_U16 = 20240520;
constexpr int32_t SHARD_VERSION_U16 = 1;
constexpr int32_t SHARD_MAGIC_U32 = 20240801;
constexpr int32_t SHARD_VERSION_U32 = 7;
constexpr int64_t SHARD_MAX_TOKENS = 2147483647;  // ntok < 2^31 (llm.c's writer asserts the same)

struct ShardInfo {
    std::string path;
    int width = 0;    // bytes per token: 2 (uint16) or 4 (uint32)
    int64_t ntok = 0; // number of tokens in the body
};

inline int64_t shard_token_offset(const ShardInfo& s, int64_t index) { return SHARD_HEADER_BYTES + index * s.width; }

inline uint32_t shard_le32(const unsigned char* p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// Open a shard, check its header and exact size, return what it holds. Reads only the header
// (and stat()s the file), so checking every file of a glob at start is cheap.
inline ShardInfo shard_open_check(const std::string& path) {
    File f(path, "rb");
    struct stat st;
    if (fstat(fileno(f.f), &st) != 0) LLMC_FAIL("'%s': cannot stat: %s", path.c_str(), strerror(errno));
    if (!S_ISREG(st.st_mode)) LLMC_FAIL("'%s': not a regular file", path.c_str());
    int64_t size = (int64_t)st.st_size;
    if (size < SHARD_HEADER_BYTES)
        LLMC_FAIL("'%s': file is %lld bytes, shorter than the 1024-byte shard header", path.c_str(), (long long)size);
    unsigned char h[12];
    f.read(h, sizeof(h));
    int32_t magic = (int32_t)shard_le32(h + 0);
    int32_t version = (int32_t)shard_le32(h + 4);
    uint32_t ntok_raw = shard_le32(h + 8);
    ShardInfo s;
    s.path = path;
    if (magic == SHARD_MAGIC_U16) {
        s.width = 2;
        if (version != SHARD_VERSION_U16)
            LLMC_FAIL("'%s': offset 4: version %d does not match magic %d (uint16 shards have version %d)",
                      path.c_str(), version, magic, SHARD_VERSION_U16);
    } else if (magic == SHARD_MAGIC_U32) {
        s.width = 4;
        if (version != SHARD_VERSION_U32)
            LLMC_FAIL("'%s': offset 4: version %d does not match magic %d (uint32 shards have version %d)",
                      path.c_str(), version, magic, SHARD_VERSION_U32);
    } else {
        LLMC_FAIL("'%s': offset 0: bad magic %d (accepted: %d = uint16 tokens, %d = uint32 tokens); not an llm.c token shard",
                  path.c_str(), magic, SHARD_MAGIC_U16, SHARD_MAGIC_U32);
    }
    // The header is int32: a count >= 2^31 shows up negative there; report both readings.
    if (ntok_raw == 0 || ntok_raw > (uint32_t)SHARD_MAX_TOKENS)
        LLMC_FAIL("'%s': offset 8: token count %d (as uint32: %u) out of range, need 0 < ntok < 2^31",
                  path.c_str(), (int32_t)ntok_raw, ntok_raw);
    s.ntok = (int64_t)ntok_raw;
    int64_t expect = SHARD_HEADER_BYTES + s.ntok * s.width;
    if (size < expect)
        LLMC_FAIL("'%s': truncated: header says %lld tokens of %d bytes, so the file should be %lld bytes, but it is %lld; "
                  "first missing byte at offset %lld",
                  path.c_str(), (long long)s.ntok, s.width, (long long)expect, (long long)size, (long long)size);
    if (size > expect)
        LLMC_FAIL("'%s': %lld trailing bytes: header says %lld tokens of %d bytes, so the file should be %lld bytes, but it is %lld",
                  path.c_str(), (long long)(size - expect), (long long)s.ntok, s.width, (long long)expect, (long long)size);
    return s;
}

// Read-only view of a checked shard's tokens through mmap (MAP_PRIVATE, PROT_READ).
struct ShardMap {
    ShardInfo info;
    const unsigned char* base = nullptr;  // start of the mapping (the header)
    size_t len = 0;

    ShardMap() = default;
    explicit ShardMap(const ShardInfo& s) { open(s); }
    ShardMap(const ShardMap&) = delete;
    ShardMap& operator=(const ShardMap&) = delete;
    ShardMap(ShardMap&& o) noexcept : info(std::move(o.info)), base(o.base), len(o.len) { o.base = nullptr; o.len = 0; }
    ShardMap& operator=(ShardMap&& o) noexcept {
        if (this != &o) { close(); info = std::move(o.info); base = o.base; len = o.len; o.base = nullptr; o.len = 0; }
        return *this;
    }
    ~ShardMap() { close(); }

    void open(const ShardInfo& s) {
        close();
        info = s;
        int fd = ::open(s.path.c_str(), O_RDONLY);
        if (fd < 0) LLMC_FAIL("cannot open '%s': %s", s.path.c_str(), strerror(errno));
        struct stat st;
        if (fstat(fd, &st) != 0) { int e = errno; ::close(fd); LLMC_FAIL("'%s': cannot stat: %s", s.path.c_str(), strerror(e)); }
        // The file may have changed since shard_open_check; never map past its real end.
        int64_t expect = SHARD_HEADER_BYTES + s.ntok * s.width;
        if ((int64_t)st.st_size != expect) {
            ::close(fd);
            LLMC_FAIL("'%s': size changed since it was checked: now %lld bytes, expected %lld", s.path.c_str(),
                      (long long)st.st_size, (long long)expect);
        }
        void* p = mmap(nullptr, (size_t)expect, PROT_READ, MAP_PRIVATE, fd, 0);
        int e = errno;
        ::close(fd);  // the mapping keeps the file alive
        if (p == MAP_FAILED) LLMC_FAIL("'%s': mmap of %lld bytes failed: %s", s.path.c_str(), (long long)expect, strerror(e));
        base = (const unsigned char*)p;
        len = (size_t)expect;
        madvise(p, len, MADV_SEQUENTIAL);  // hint only; the loader reads front to back
    }
    void close() {
        if (base) munmap((void*)base, len);
        base = nullptr;
        len = 0;
    }
    bool is_open() const { return base != nullptr; }
    const unsigned char* body() const { return base + SHARD_HEADER_BYTES; }
    uint32_t token(int64_t i) const {
        if (info.width == 2) { uint16_t v; memcpy(&v, body() + 2 * i, 2); return v; }
        uint32_t v; memcpy(&v, body() + 4 * i, 4); return v;
    }
    // copy tokens [start, start+count) into dst as int (ids are < 2^31 after validation)
    void copy_tokens(int64_t start, int64_t count, int* dst) const {
        if (info.width == 2) {
            const uint16_t* p = (const uint16_t*)(body()) + start;  // body is 1024-byte aligned in the mapping
            for (int64_t i = 0; i < count; i++) dst[i] = (int)p[i];
        } else {
            const uint32_t* p = (const uint32_t*)(body()) + start;
            for (int64_t i = 0; i < count; i++) dst[i] = (int)p[i];
        }
    }
};

// Read tokens [start, start+count) of a checked shard into dst (uint32, widened from uint16).
inline void shard_read_tokens(const ShardInfo& s, int64_t start, int64_t count, uint32_t* dst) {
    LLMC_CHECK(start >= 0 && count >= 0 && start + count <= s.ntok,
               "'%s': read of tokens [%lld, %lld) is outside the file's %lld tokens", s.path.c_str(), (long long)start,
               (long long)(start + count), (long long)s.ntok);
    File f(s.path, "rb");
    f.seek(shard_token_offset(s, start));
    if (s.width == 4) {
        if (count) f.read(dst, (size_t)count * 4);
        return;
    }
    std::vector<uint16_t> tmp((size_t)std::min<int64_t>(count, 1 << 20));
    for (int64_t done = 0; done < count;) {
        int64_t n = std::min<int64_t>(count - done, (int64_t)tmp.size());
        f.read(tmp.data(), (size_t)n * 2);
        for (int64_t i = 0; i < n; i++) dst[done + i] = tmp[i];
        done += n;
    }
}

inline std::vector<uint32_t> shard_read_tokens(const ShardInfo& s, int64_t start, int64_t count) {
    std::vector<uint32_t> v((size_t)std::max<int64_t>(count, 0));
    shard_read_tokens(s, start, count, v.data());
    return v;
}

// The error for a token id outside the model's vocabulary (docs/tokenizer.md#bad-input): file,
// token index, byte offset, id, vocab.
[[noreturn]] inline void shard_fail_bad_token(const ShardInfo& s, int64_t index, uint32_t id, int vocab_size) {
    LLMC_FAIL("'%s': token %lld (byte offset %lld) has id %u, not below the vocabulary size %d", s.path.c_str(),
              (long long)index, (long long)shard_token_offset(s, index), id, vocab_size);
}

// Scan a mapped shard: every id < vocab_size. Calls on_bos(i) for every position i holding bos_id
// (pass bos_id < 0 to skip that), so the loader builds its document index in the same single pass.
template <typename F>
inline void shard_scan(const ShardMap& m, int vocab_size, int64_t bos_id, F&& on_bos) {
    const ShardInfo& s = m.info;
    const uint32_t lim = (uint32_t)vocab_size;
    if (s.width == 2) {
        const uint16_t* p = (const uint16_t*)m.body();
        for (int64_t i = 0; i < s.ntok; i++) {
            uint32_t t = p[i];
            if (t >= lim) shard_fail_bad_token(s, i, t, vocab_size);
            if ((int64_t)t == bos_id) on_bos(i);
        }
    } else {
        const uint32_t* p = (const uint32_t*)m.body();
        for (int64_t i = 0; i < s.ntok; i++) {
            uint32_t t = p[i];
            if (t >= lim) shard_fail_bad_token(s, i, t, vocab_size);
            if ((int64_t)t == bos_id) on_bos(i);
        }
    }
}

// Check every token id of a shard is < vocab_size (the model's, unpadded).
inline void shard_validate_tokens(const ShardInfo& s, int vocab_size) {
    ShardMap m(s);
    shard_scan(m, vocab_size, -1, [](int64_t) {});
}

// Write tokens as an llm.c shard: uint32 body (magic 20240801/7) if use_u32, else uint16
// (20240520/1, every id must be < 65536). Written to "<path>.tmp" and renamed, so a reader never
// sees a half-written shard under the real name.
inline void shard_write(const std::string& path, const uint32_t* tokens, int64_t ntok, bool use_u32) {
    LLMC_CHECK(ntok >= 1 && ntok <= SHARD_MAX_TOKENS, "'%s': cannot write a shard of %lld tokens (need 1 <= ntok < 2^31)",
               path.c_str(), (long long)ntok);
    if (!use_u32) {
        for (int64_t i = 0; i < ntok; i++)
            if (tokens[i] > 0xFFFF)
                LLMC_FAIL("'%s': token %lld has id %u, which does not fit a uint16 shard (use the uint32 variant)",
                          path.c_str(), (long long)i, tokens[i]);
    }
    int32_t header[256] = {0};
    header[0] = use_u32 ? SHARD_MAGIC_U32 : SHARD_MAGIC_U16;
    header[1] = use_u32 ? SHARD_VERSION_U32 : SHARD_VERSION_U16;
    header[2] = (int32_t)ntok;
    AtomicFile f(path);
    f.write(header, sizeof(header));
    if (use_u32) {
        f.write(tokens, (size_t)ntok * 4);
    } else {
        std::vector<uint16_t> buf((size_t)std::min<int64_t>(ntok, 1 << 20));
        for (int64_t done = 0; done < ntok;) {
            int64_t n = std::min<int64_t>(ntok - done, (int64_t)buf.size());
            for (int64_t i = 0; i < n; i++) buf[i] = (uint16_t)tokens[done + i];
            f.write(buf.data(), (size_t)n * 2);
            done += n;
        }
    }
    f.commit();
}

inline void shard_write(const std::string& path, const std::vector<uint32_t>& tokens, bool use_u32) {
    shard_write(path, tokens.data(), (int64_t)tokens.size(), use_u32);
}

// Files matching a glob pattern, sorted bytewise (glob's own order follows the locale). A pattern
// matching nothing is an error naming the pattern.
inline std::vector<std::string> glob_files(const std::string& pattern) {
    glob_t g;
    memset(&g, 0, sizeof(g));
    int rc = glob(pattern.c_str(), 0, nullptr, &g);
    std::vector<std::string> out;
    if (rc == 0)
        for (size_t i = 0; i < g.gl_pathc; i++) out.emplace_back(g.gl_pathv[i]);
    globfree(&g);
    if (rc == GLOB_NOSPACE) LLMC_FAIL("glob '%s': out of memory", pattern.c_str());
    if (rc == GLOB_ABORTED) LLMC_FAIL("glob '%s': read error while matching", pattern.c_str());
    if (out.empty()) LLMC_FAIL("no file matches '%s'", pattern.c_str());
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace llmc
