// test_dataloader.cpp: token shards (llmc/shard.h) and the data loader (llmc/dataloader.h).
//
// Every test writes its shards into a fresh temporary directory. Expected values come from bytes
// built by hand in this file, from rows worked out by hand from the rules in docs/tokenizer.md#loader
// (the reasoning is in the comments), or from a deliberately naive reference packer written here
// independently of the loader.
#include <doctest/doctest.h>

#include <dirent.h>
#include <stdlib.h>
#include <unistd.h>

#include <deque>
#include <string>
#include <vector>

#include "llmc/dataloader.h"
#include "llmc/rng.h"
#include "llmc/shard.h"

using namespace llmc;

// ---------------------------------------------------------------------------------------------
// helpers (independent of shard.h: they build and read files byte by byte)

struct TmpDir {
    std::string path;
    TmpDir() {
        char tmpl[] = "/tmp/llmc_test_dataloader_XXXXXX";
        char* p = mkdtemp(tmpl);
        REQUIRE(p != nullptr);
        path = p;
    }
    ~TmpDir() {
        DIR* d = opendir(path.c_str());
        if (d) {
            while (dirent* e = readdir(d)) {
                std::string n = e->d_name;
                if (n != "." && n != "..") unlink((path + "/" + n).c_str());
            }
            closedir(d);
        }
        rmdir(path.c_str());
    }
    std::string operator/(const std::string& name) const { return path + "/" + name; }
};

static void put_le32(std::string& s, uint32_t v) {
    for (int i = 0; i < 4; i++) s.push_back((char)((v >> (8 * i)) & 0xFF));
}
static void put_le16(std::string& s, uint32_t v) {
    s.push_back((char)(v & 0xFF));
    s.push_back((char)((v >> 8) & 0xFF));
}

// An llm.c shard built by hand; magic/version/ntok can be overridden to make broken files.
static std::string shard_bytes(const std::vector<uint32_t>& toks, int width, int64_t magic = -1, int64_t version = -1,
                               int64_t ntok = -1) {
    std::string s;
    put_le32(s, (uint32_t)(magic >= 0 ? magic : (width == 2 ? 20240520 : 20240801)));
    put_le32(s, (uint32_t)(version >= 0 ? version : (width == 2 ? 1 : 7)));
    put_le32(s, (uint32_t)(ntok != -1 ? ntok : (int64_t)toks.size()));
    s.append(1024 - 12, '\0');
    for (uint32_t t : toks) {
        if (width == 2) put_le16(s, t);
        else put_le32(s, t);
    }
    return s;
}

static void write_raw(const std::string& path, const std::string& bytes) {
    FILE* f = fopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    REQUIRE(fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size());
    fclose(f);
}

static std::string read_raw(const std::string& path) {
    FILE* f = fopen(path.c_str(), "rb");
    REQUIRE(f != nullptr);
    std::string s;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) s.append(buf, n);
    fclose(f);
    return s;
}

// Run f, return the llmc::Error message ("" if it did not throw).
template <typename F>
static std::string error_of(F&& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

static bool has(const std::string& msg, const std::string& part) { return msg.find(part) != std::string::npos; }

#define CHECK_HAS(msg, part) CHECK_MESSAGE(has(msg, part), "message: ", msg, "\n  lacks: ", part)

// ---------------------------------------------------------------------------------------------
// shards

TEST_CASE("shard: tiny uint16 shard is byte-identical to hand-built llm.c bytes") {
    TmpDir dir;
    std::string path = dir / "tiny.bin";
    shard_write(path, std::vector<uint32_t>{0, 1, 258, 65535}, false);
    // 20240520 = 0x0134D888 -> little-endian bytes 88 D8 34 01; version 1; ntok 4; 1012 zero bytes;
    // tokens 0, 1, 258 = 0x0102, 65535 = 0xFFFF as little-endian uint16.
    std::string expect = {'\x88', '\xD8', '\x34', '\x01', 1, 0, 0, 0, 4, 0, 0, 0};
    expect.append(1012, '\0');
    expect += std::string{0, 0, 1, 0, 2, 1, '\xFF', '\xFF'};
    std::string got = read_raw(path);
    CHECK(got.size() == 1032);
    CHECK(got == expect);
    CHECK(!file_exists(path + ".tmp"));  // written under a temporary name, then renamed
}

TEST_CASE("shard: round trip uint16 and uint32") {
    TmpDir dir;
    Rng rng(7, 0);
    for (int width : {2, 4}) {
        CAPTURE(width);
        std::vector<uint32_t> toks(3001);
        uint32_t lim = width == 2 ? 65536u : 4000000000u;
        for (auto& t : toks) t = (uint32_t)(rng.uniform() * (double)lim) % lim;
        toks[5] = lim - 1;  // largest id of the format
        std::string path = dir / (width == 2 ? "u16.bin" : "u32.bin");
        shard_write(path, toks, width == 4);
        std::string raw = read_raw(path);
        // header: magic, version, ntok, zeros; total size
        CHECK(raw == shard_bytes(toks, width));
        CHECK(raw.size() == 1024 + toks.size() * width);
        ShardInfo s = shard_open_check(path);
        CHECK(s.width == width);
        CHECK(s.ntok == 3001);
        CHECK(shard_read_tokens(s, 0, s.ntok) == toks);
        std::vector<uint32_t> mid(toks.begin() + 100, toks.begin() + 117);
        CHECK(shard_read_tokens(s, 100, 17) == mid);
        ShardMap m(s);
        bool same = true;
        for (int64_t i = 0; i < s.ntok; i++) same = same && m.token(i) == toks[i];
        CHECK(same);
        if (width == 2) CHECK(error_of([&] { shard_validate_tokens(s, 65536); }) == "");  // every uint16 id is < 65536
    }
}

TEST_CASE("shard: writer refuses ids that do not fit uint16 and empty shards") {
    TmpDir dir;
    std::string msg = error_of([&] { shard_write(dir / "x.bin", std::vector<uint32_t>{1, 70000}, false); });
    CHECK_HAS(msg, "x.bin");
    CHECK_HAS(msg, "token 1");
    CHECK_HAS(msg, "70000");
    msg = error_of([&] { shard_write(dir / "e.bin", std::vector<uint32_t>{}, false); });
    CHECK_HAS(msg, "e.bin");
    CHECK_HAS(msg, "0 tokens");
}

TEST_CASE("shard: glob is sorted and names the pattern when nothing matches") {
    TmpDir dir;
    for (const char* n : {"b_001.bin", "a_002.bin", "b_000.bin"}) shard_write(dir / n, std::vector<uint32_t>{1}, false);
    auto v = glob_files(dir / "*.bin");
    REQUIRE(v.size() == 3);
    CHECK(v[0] == dir / "a_002.bin");
    CHECK(v[1] == dir / "b_000.bin");
    CHECK(v[2] == dir / "b_001.bin");
    std::string pat = dir / "nothing_*.bin";
    std::string msg = error_of([&] { glob_files(pat); });
    CHECK_HAS(msg, pat);
}

// ---------------------------------------------------------------------------------------------
// bad shards: one test each; messages name the file and the offset/value (docs/tokenizer.md#bad-input)

TEST_CASE("bad shard: missing file") {
    TmpDir dir;
    std::string p = dir / "missing.bin";
    CHECK_HAS(error_of([&] { shard_open_check(p); }), p);
    DataLoader L;
    CHECK_HAS(error_of([&] { L.init(std::vector<std::string>{p}, 1, 4, 0, 1, LoaderMode::BESTFIT, 0, 64); }), p);
}

TEST_CASE("bad shard: shorter than the 1024-byte header") {
    TmpDir dir;
    std::string p = dir / "short.bin";
    write_raw(p, std::string(100, '\0'));
    std::string msg = error_of([&] { shard_open_check(p); });
    CHECK_HAS(msg, p);
    CHECK_HAS(msg, "100 bytes");
}

TEST_CASE("bad shard: wrong magic") {
    TmpDir dir;
    std::string p = dir / "magic.bin";
    write_raw(p, shard_bytes({1, 2, 3}, 2, 12345));
    std::string msg = error_of([&] { shard_open_check(p); });
    CHECK_HAS(msg, p);
    CHECK_HAS(msg, "offset 0");
    CHECK_HAS(msg, "12345");
    CHECK_HAS(msg, "20240520");
    CHECK_HAS(msg, "20240801");
}

TEST_CASE("bad shard: version does not match the magic") {
    TmpDir dir;
    std::string p = dir / "version.bin";
    write_raw(p, shard_bytes({1, 2, 3}, 2, 20240520, 7));  // 7 belongs to the uint32 magic
    std::string msg = error_of([&] { shard_open_check(p); });
    CHECK_HAS(msg, p);
    CHECK_HAS(msg, "offset 4");
    CHECK_HAS(msg, "version 7");
    std::string q = dir / "version32.bin";
    write_raw(q, shard_bytes({1, 2, 3}, 4, 20240801, 1));
    msg = error_of([&] { shard_open_check(q); });
    CHECK_HAS(msg, q);
    CHECK_HAS(msg, "offset 4");
    CHECK_HAS(msg, "version 1");
}

TEST_CASE("bad shard: token count <= 0 or >= 2^31") {
    TmpDir dir;
    std::string p = dir / "zero.bin";
    write_raw(p, shard_bytes({}, 2, -1, -1, 0));
    std::string msg = error_of([&] { shard_open_check(p); });
    CHECK_HAS(msg, p);
    CHECK_HAS(msg, "offset 8");
    CHECK_HAS(msg, "token count 0");
    std::string q = dir / "neg.bin";
    write_raw(q, shard_bytes({1, 2}, 2, -1, -1, (int64_t)(uint32_t)-5));  // int32 -5 in the header
    msg = error_of([&] { shard_open_check(q); });
    CHECK_HAS(msg, q);
    CHECK_HAS(msg, "offset 8");
    CHECK_HAS(msg, "token count -5");
}

TEST_CASE("bad shard: truncated body") {
    TmpDir dir;
    std::string p = dir / "trunc.bin";
    std::string b = shard_bytes({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 2);  // 1024 + 20 bytes
    b.resize(b.size() - 5);                                          // 1039 bytes left
    write_raw(p, b);
    std::string msg = error_of([&] { shard_open_check(p); });
    CHECK_HAS(msg, p);
    CHECK_HAS(msg, "1044");          // expected size
    CHECK_HAS(msg, "1039");          // actual size
    CHECK_HAS(msg, "offset 1039");   // first missing byte
}

TEST_CASE("bad shard: trailing bytes") {
    TmpDir dir;
    std::string p = dir / "trail.bin";
    std::string b = shard_bytes({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 4);  // 1024 + 40 bytes
    b += "xyz";
    write_raw(p, b);
    std::string msg = error_of([&] { shard_open_check(p); });
    CHECK_HAS(msg, p);
    CHECK_HAS(msg, "3 trailing bytes");
    CHECK_HAS(msg, "1064");
    CHECK_HAS(msg, "1067");
}

TEST_CASE("bad shard: token id >= vocab size names index, byte offset, id, vocab") {
    TmpDir dir;
    // uint16: token index 3 sits at byte 1024 + 3*2 = 1030
    std::string p = dir / "vocab16.bin";
    write_raw(p, shard_bytes({0, 1, 2, 70, 5}, 2));
    std::string msg = error_of([&] { shard_validate_tokens(shard_open_check(p), 64); });
    CHECK_HAS(msg, p);
    CHECK_HAS(msg, "token 3");
    CHECK_HAS(msg, "byte offset 1030");
    CHECK_HAS(msg, "id 70");
    CHECK_HAS(msg, "64");
    // the loader scans a file before its first use: best-fit scans the first file at init
    DataLoader L;
    L.quiet = true;
    msg = error_of([&] { L.init(p, 1, 4, 0, 1, LoaderMode::BESTFIT, 0, 64); });
    CHECK_HAS(msg, "byte offset 1030");
    // uint32: token index 4 sits at byte 1024 + 4*4 = 1040
    std::string q = dir / "vocab32.bin";
    write_raw(q, shard_bytes({0, 1, 2, 3, 100000, 5}, 4));
    msg = error_of([&] { shard_validate_tokens(shard_open_check(q), 65536); });
    CHECK_HAS(msg, q);
    CHECK_HAS(msg, "token 4");
    CHECK_HAS(msg, "byte offset 1040");
    CHECK_HAS(msg, "id 100000");
    CHECK_HAS(msg, "65536");
    // contiguous mode checks the whole file at its first batch, not only the tokens it reads
    std::vector<uint32_t> toks(40, 1);
    toks[39] = 99;  // never read by the first sample (tokens 0..8), still rejected
    std::string r = dir / "vocabc.bin";
    write_raw(r, shard_bytes(toks, 2));
    DataLoader C;
    C.init(r, 1, 8, 0, 1, LoaderMode::CONTIGUOUS, -1, 64);
    std::vector<int> in(8), tg(8);
    msg = error_of([&] { C.next_batch(in.data(), tg.data()); });
    CHECK_HAS(msg, r);
    CHECK_HAS(msg, "token 39");
    CHECK_HAS(msg, "byte offset 1102");
}

TEST_CASE("bad input: BOS id >= vocab size") {
    TmpDir dir;
    std::string p = dir / "a.bin";
    write_raw(p, shard_bytes({0, 1, 2}, 2));
    DataLoader L;
    std::string msg = error_of([&] { L.init(p, 1, 2, 0, 1, LoaderMode::BESTFIT, 100, 64, "tokenizer 'tok.json' bos_token"); });
    CHECK_HAS(msg, "BOS id 100");
    CHECK_HAS(msg, "tokenizer 'tok.json' bos_token");
    CHECK_HAS(msg, "64");
}

TEST_CASE("bad input: no BOS in any file (best-fit)") {
    TmpDir dir;
    write_raw(dir / "a.bin", shard_bytes({1, 2, 3}, 2));
    write_raw(dir / "b.bin", shard_bytes({4, 5, 6}, 2));
    DataLoader L;
    L.quiet = true;
    std::string msg = error_of([&] { L.init(dir / "*.bin", 1, 2, 0, 1, LoaderMode::BESTFIT, 0, 64); });
    CHECK_HAS(msg, "no BOS");
    CHECK_HAS(msg, "id 0");
    CHECK_HAS(msg, dir / "a.bin");
    CHECK_HAS(msg, dir / "b.bin");
}

TEST_CASE("bad input: a rank with no documents") {
    TmpDir dir;
    // 10 one-token documents = one group of 1024 (partial) -> group 0 -> rank 0; rank 1 of 2 gets nothing
    write_raw(dir / "a.bin", shard_bytes(std::vector<uint32_t>(10, 0), 2));
    DataLoader L0, L1;
    L0.init(dir / "a.bin", 1, 2, 0, 2, LoaderMode::BESTFIT, 0, 64);  // rank 0 is fine
    std::string msg = error_of([&] { L1.init(dir / "a.bin", 1, 2, 1, 2, LoaderMode::BESTFIT, 0, 64); });
    CHECK_HAS(msg, "rank 1");
    CHECK_HAS(msg, "world size 2");
    CHECK_HAS(msg, "1 groups");
}

TEST_CASE("bad input: too few tokens for one contiguous batch") {
    TmpDir dir;
    std::string p = dir / "small.bin";
    write_raw(p, shard_bytes(std::vector<uint32_t>(16, 1), 2));
    DataLoader L;
    // W*B*T+1 = 2*1*8+1 = 17 > 16
    std::string msg = error_of([&] { L.init(p, 1, 8, 0, 2, LoaderMode::CONTIGUOUS, -1, 64); });
    CHECK_HAS(msg, p);
    CHECK_HAS(msg, "16 tokens");
    CHECK_HAS(msg, "17");
    DataLoader ok;  // 16 tokens are enough for W=1: 1*1*8+1 = 9
    ok.init(p, 1, 8, 0, 1, LoaderMode::CONTIGUOUS, -1, 64);
}

TEST_CASE("bad input: loader state with out-of-range indices") {
    TmpDir dir;
    // file a: 5 documents of 3 tokens; file b: 2 documents
    std::vector<uint32_t> a, b;
    for (int i = 0; i < 5; i++) a.insert(a.end(), {0, 1, 2});
    for (int i = 0; i < 2; i++) b.insert(b.end(), {0, 3, 4});
    write_raw(dir / "a.bin", shard_bytes(a, 2));
    write_raw(dir / "b.bin", shard_bytes(b, 2));
    DataLoader L;
    L.init(dir / "*.bin", 2, 4, 0, 1, LoaderMode::BESTFIT, 0, 64);
    std::vector<int> in(8), tg(8);
    L.next_batch(in.data(), tg.data());
    LoaderState good = L.get_state();
    CHECK(good.nfiles == 2);

    LoaderState s = good;
    s.file = 2;
    std::string msg = error_of([&] { L.set_state(s); });
    CHECK_HAS(msg, "file index 2 out of range");

    s = good;
    s.file = 1;
    s.pos = 3;  // b has 2 documents; 2 (= end of file) is allowed, 3 is not
    msg = error_of([&] { L.set_state(s); });
    CHECK_HAS(msg, "document index 3 out of range");
    CHECK_HAS(msg, dir / "b.bin");
    CHECK_HAS(msg, "2 documents");

    s = good;
    REQUIRE(!s.buffer.empty());
    s.buffer[4] = {0, 7};
    msg = error_of([&] { L.set_state(s); });
    CHECK_HAS(msg, "buffer entry 4");
    CHECK_HAS(msg, "document index 7 out of range");

    s = good;
    s.buffer[0] = {9, 0};
    msg = error_of([&] { L.set_state(s); });
    CHECK_HAS(msg, "buffer entry 0");
    CHECK_HAS(msg, "file index 9 out of range");

    // structural problems in the flat form
    std::vector<int64_t> v = loader_state_to_ints(good);
    v.pop_back();
    CHECK_HAS(error_of([&] { L.state_from_ints(v); }), "buffer length");
    CHECK_HAS(error_of([&] { L.state_from_ints({1, 2, 3}); }), "at least");
    CHECK_HAS(error_of([&] { loader_state_from_string("1,x,3"); }), "element 1");

    // a failed restore leaves the loader where it was: the next batch is the one after `good`
    std::vector<int> in2(8), tg2(8);
    DataLoader R;
    R.init(dir / "*.bin", 2, 4, 0, 1, LoaderMode::BESTFIT, 0, 64);
    R.set_state(good);
    L.next_batch(in.data(), tg.data());
    R.next_batch(in2.data(), tg2.data());
    CHECK(in == in2);
    CHECK(tg == tg2);

    // contiguous: sample index out of range
    DataLoader C;
    C.init(dir / "a.bin", 1, 4, 0, 1, LoaderMode::CONTIGUOUS, -1, 64);  // 15 tokens: floor(14/4) = 3 samples
    LoaderState cs = C.get_state();
    cs.pos = 3;
    CHECK_HAS(error_of([&] { C.set_state(cs); }), "sample index 3 out of range");
    // a state of the other mode / another rank
    CHECK_HAS(error_of([&] { C.set_state(good); }), "best-fit");
    LoaderState other = good;
    other.world = 2;
    CHECK_HAS(error_of([&] { L.set_state(other); }), "world size 2");
}

// ---------------------------------------------------------------------------------------------
// best-fit packing, worked by hand

// Run one batch and return its rows (B rows of T+1 tokens, rebuilt from inputs and the last target)
// after checking that targets are inputs shifted by one.
static std::vector<std::vector<int>> batch_rows(DataLoader& L) {
    std::vector<int> in((size_t)L.B * L.T), tg((size_t)L.B * L.T);
    L.next_batch(in.data(), tg.data());
    std::vector<std::vector<int>> rows;
    for (int b = 0; b < L.B; b++) {
        for (int t = 0; t + 1 < L.T; t++) CHECK(tg[b * L.T + t] == in[b * L.T + t + 1]);
        std::vector<int> r(in.begin() + b * L.T, in.begin() + (b + 1) * L.T);
        r.push_back(tg[b * L.T + L.T - 1]);
        rows.push_back(r);
    }
    return rows;
}

TEST_CASE("best-fit: hand-worked rows with fit ties (T=7)") {
    TmpDir dir;
    // BOS = 0. Documents in file order: P (6 tokens), Q (2), R (2), S (3). Rows hold T+1 = 8.
    // The file holds only 4 documents, so topping the buffer up to 1000 wraps the stream many times:
    // the buffer is P Q R S P' Q' R' S' P'' ... (primes = later epochs, same tokens).
    //  row 0: remaining 8: every document fits, the longest is P (6)          -> P, remaining 2
    //         remaining 2: Q and R fit (S=3 does not), tie at 2 -> first: Q    -> row = P Q
    //         buffer now R S P' Q' R' S' ...
    //  row 1: remaining 8: longest fitting is P' (6)                           -> P'
    //         remaining 2: R (buffer index 0) and Q' tie -> first in buffer: R  -> row = P' R
    //         buffer now S Q' R' S' P'' ...
    //  row 2: P'' then Q' (index 1, ahead of R')                               -> row = P'' Q'
    std::vector<uint32_t> P = {0, 11, 12, 13, 14, 15}, Q = {0, 21}, R = {0, 31}, S = {0, 41, 42};
    std::vector<uint32_t> toks;
    for (auto* d : {&P, &Q, &R, &S}) toks.insert(toks.end(), d->begin(), d->end());
    write_raw(dir / "f.bin", shard_bytes(toks, 2));
    DataLoader L;
    L.init(dir / "f.bin", 3, 7, 0, 1, LoaderMode::BESTFIT, 0, 64);
    auto rows = batch_rows(L);
    std::vector<std::vector<int>> expect = {
        {0, 11, 12, 13, 14, 15, 0, 21},
        {0, 11, 12, 13, 14, 15, 0, 31},
        {0, 11, 12, 13, 14, 15, 0, 21},
    };
    CHECK(rows == expect);
    for (auto& r : rows) CHECK(r[0] == 0);  // every row starts with BOS
    CHECK(L.epoch > 0);                     // 4 documents cannot fill a 1000 buffer without wrapping
}

TEST_CASE("best-fit: hand-worked rows with crops and a skipped prefix (T=7)") {
    TmpDir dir;
    // File: 3 tokens before the first BOS (skipped, reported), then P (6), Q (4), R (4), S (9).
    //  row 0: remaining 8: fits P, Q, R (S=9 never fits a row); longest P      -> P, remaining 2
    //         remaining 2: nothing fits (shortest is 4) -> crop the shortest, tie Q/R -> first: Q,
    //         first 2 tokens, the rest of Q is discarded                          -> row = P Q[0:2]
    //         buffer now R S P' Q' R' S' ...
    //  row 1: P' then crop: shortest 4 is R (index 0) ahead of Q'              -> row = P' R[0:2]
    //  row 2: P'' then crop Q' (index 1 in S Q' R' ...)                         -> row = P'' Q'[0:2]
    std::vector<uint32_t> prefix = {5, 6, 7}, P = {0, 11, 12, 13, 14, 15}, Q = {0, 21, 22, 23}, R = {0, 31, 32, 33},
                          S = {0, 41, 42, 43, 44, 45, 46, 47, 48};
    std::vector<uint32_t> toks;
    for (auto* d : {&prefix, &P, &Q, &R, &S}) toks.insert(toks.end(), d->begin(), d->end());
    write_raw(dir / "f.bin", shard_bytes(toks, 4));  // the uint32 variant, for coverage
    DataLoader L;
    L.quiet = true;
    L.init(dir / "f.bin", 3, 7, 0, 1, LoaderMode::BESTFIT, 0, 64);
    CHECK(L.skipped_prefix_tokens == 3);
    auto rows = batch_rows(L);
    std::vector<std::vector<int>> expect = {
        {0, 11, 12, 13, 14, 15, 0, 21},
        {0, 11, 12, 13, 14, 15, 0, 31},
        {0, 11, 12, 13, 14, 15, 0, 21},
    };
    CHECK(rows == expect);
}

TEST_CASE("best-fit: nothing fits an empty row -> crop the shortest, first on ties") {
    TmpDir dir;
    // X (10), Y (9), Z (9), W (12); rows of T+1 = 5: no document fits.
    //  row 0: shortest 9, tie Y/Z -> Y[0:5]               buffer: X Z W X' Y' Z' W' ...
    //  row 1: shortest 9: Z (index 1) ahead of Y'         -> Z[0:5]
    //  row 2: buffer X W X' Y' Z' ... -> Y'[0:5]
    std::vector<uint32_t> X = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, Y = {0, 11, 12, 13, 14, 15, 16, 17, 18},
                          Z = {0, 21, 22, 23, 24, 25, 26, 27, 28}, W = {0, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41};
    std::vector<uint32_t> toks;
    for (auto* d : {&X, &Y, &Z, &W}) toks.insert(toks.end(), d->begin(), d->end());
    write_raw(dir / "f.bin", shard_bytes(toks, 2));
    DataLoader L;
    L.init(dir / "f.bin", 3, 4, 0, 1, LoaderMode::BESTFIT, 0, 64);
    auto rows = batch_rows(L);
    std::vector<std::vector<int>> expect = {{0, 11, 12, 13, 14}, {0, 21, 22, 23, 24}, {0, 11, 12, 13, 14}};
    CHECK(rows == expect);
}

// ---------------------------------------------------------------------------------------------
// rank sharding

TEST_CASE("best-fit: rank sharding by groups of 1024 documents (W=2)") {
    TmpDir dir;
    // 2100 documents [BOS, 1+i]: groups 0 = docs 0..1023 -> rank 0, 1 = 1024..2047 -> rank 1,
    // 2 = 2048..2099 -> rank 0. All documents have length 2 and rows hold T+1 = 4, so each row is
    // the first two buffered documents (the longest fitting, first in buffer order): rows follow the
    // rank's stream order exactly.
    std::vector<uint32_t> toks;
    for (int i = 0; i < 2100; i++) toks.insert(toks.end(), {0u, (uint32_t)(1 + i)});
    write_raw(dir / "f.bin", shard_bytes(toks, 2));
    std::vector<std::vector<int>> seen(2);
    for (int r = 0; r < 2; r++) {
        DataLoader L;
        L.init(dir / "f.bin", 2, 3, r, 2, LoaderMode::BESTFIT, 0, 4096);
        // rank 0 has 1024 + 52 = 1076 documents per epoch, rank 1 has 1024: 4 documents per batch
        int nb = r == 0 ? 1076 / 4 : 1024 / 4;
        for (int k = 0; k < nb; k++)
            for (auto& row : batch_rows(L)) {
                REQUIRE(row.size() == 4);
                CHECK(row[0] == 0);
                CHECK(row[2] == 0);
                seen[r].push_back(row[1] - 1);
                seen[r].push_back(row[3] - 1);
            }
        CHECK(L.epoch == 1);  // the buffer (1000 ahead) has already wrapped into the next epoch
    }
    std::vector<int> expect0, expect1;
    for (int i = 0; i < 1024; i++) expect0.push_back(i);
    for (int i = 2048; i < 2100; i++) expect0.push_back(i);
    for (int i = 1024; i < 2048; i++) expect1.push_back(i);
    CHECK(seen[0] == expect0);
    CHECK(seen[1] == expect1);
}

// ---------------------------------------------------------------------------------------------
// best-fit against a naive reference written from the rules in docs/tokenizer.md#bestfit

struct RefPacker {
    // documents of every file, as token lists (own reader, own document split)
    std::vector<std::vector<std::vector<int>>> docs;
    std::vector<std::pair<int, int>> epoch_stream;  // (file, doc) for one epoch of this rank
    size_t next = 0;
    std::deque<std::pair<int, int>> buf;
    int T;

    RefPacker(const std::vector<std::string>& paths, int T_, int rank, int world, int bos) : T(T_) {
        for (const auto& p : paths) {
            std::string raw = read_raw(p);
            int width = (unsigned char)raw[0] == 0x88 ? 2 : 4;
            size_t n = (raw.size() - 1024) / width;
            std::vector<std::vector<int>> ds;
            for (size_t i = 0; i < n; i++) {
                uint32_t t = 0;
                for (int k = 0; k < width; k++) t |= (uint32_t)(unsigned char)raw[1024 + i * width + k] << (8 * k);
                if ((int)t == bos) ds.emplace_back();
                if (!ds.empty()) ds.back().push_back((int)t);  // before the first BOS: dropped
            }
            docs.push_back(ds);
        }
        for (int f = 0; f < (int)docs.size(); f++)
            for (int d = 0; d < (int)docs[f].size(); d++)
                if ((d / 1024) % world == rank) epoch_stream.push_back({f, d});
    }
    std::vector<int> row() {
        std::vector<int> r;
        while ((int)r.size() < T + 1) {
            while (buf.size() < 1000) { buf.push_back(epoch_stream[next % epoch_stream.size()]); next++; }
            int remaining = T + 1 - (int)r.size();
            // longest fitting length, then its first occurrence
            int best_len = 0;
            for (auto& e : buf) {
                int L = (int)docs[e.first][e.second].size();
                if (L <= remaining) best_len = std::max(best_len, L);
            }
            size_t pick = 0;
            if (best_len > 0) {
                while ((int)docs[buf[pick].first][buf[pick].second].size() != best_len) pick++;
            } else {
                int min_len = INT_MAX;
                for (auto& e : buf) min_len = std::min(min_len, (int)docs[e.first][e.second].size());
                while ((int)docs[buf[pick].first][buf[pick].second].size() != min_len) pick++;
            }
            const auto& d = docs[buf[pick].first][buf[pick].second];
            int take = std::min((int)d.size(), remaining);
            r.insert(r.end(), d.begin(), d.begin() + take);
            buf.erase(buf.begin() + pick);
        }
        return r;
    }
};

static std::vector<std::string> write_random_corpus(const TmpDir& dir, uint64_t seed) {
    // Three files: a prefix before the first BOS, documents of 1..40 tokens (many ties and crops),
    // 1100 / 1500 / 300 documents so groups of 1024 split unevenly across ranks.
    Rng rng(seed, 0);
    std::vector<std::string> paths;
    int counts[3] = {1100, 1500, 300};
    for (int f = 0; f < 3; f++) {
        std::vector<uint32_t> toks;
        int pre = f;  // 0, 1, 2 prefix tokens
        for (int i = 0; i < pre; i++) toks.push_back(1 + (uint32_t)(rng.uniform() * 500));
        for (int d = 0; d < counts[f]; d++) {
            int len = 1 + (int)(rng.uniform() * 40);
            toks.push_back(0);
            for (int i = 1; i < len; i++) toks.push_back(1 + (uint32_t)(rng.uniform() * 500));
        }
        std::string p = dir / strfmt("c_%06d.bin", f);
        shard_write(p, toks, f == 1);
        paths.push_back(p);
    }
    return paths;
}

TEST_CASE("best-fit: matches a naive reference over many batches (W=2, 3 files, wrap-around)") {
    TmpDir dir;
    auto paths = write_random_corpus(dir, 123);
    const int B = 3, T = 24;
    for (int r = 0; r < 2; r++) {
        CAPTURE(r);
        DataLoader L;
        L.quiet = true;
        L.init(dir / "c_*.bin", B, T, r, 2, LoaderMode::BESTFIT, 0, 512);
        RefPacker ref(paths, T, r, 2, 0);
        // rank 1 has 76 + 476 documents per epoch (~20 tokens each): 400 batches of 75 tokens wrap it
        // several times; rank 0 has 1024 + 1024 + 300.
        int mismatches = 0;
        for (int k = 0; k < 400; k++) {
            auto rows = batch_rows(L);
            for (int b = 0; b < B; b++)
                if (rows[b] != ref.row()) mismatches++;
        }
        CHECK(mismatches == 0);
        CHECK(L.epoch >= 1);
        CHECK(L.skipped_prefix_tokens == 0 + 1 + 2);  // files are scanned on first use: all used by now
    }
}

// ---------------------------------------------------------------------------------------------
// contiguous mode

TEST_CASE("contiguous: offsets for W=2 and wrap to the next epoch") {
    TmpDir dir;
    // file a: 50 tokens with id = index; file b: 40 tokens with id = 1000 + index (uint32).
    // B=2, T=4: B*T = 8, W*B*T = 16. Samples: a: floor(49/16) = 3, b: floor(39/16) = 2.
    // Rank r, sample k reads 9 tokens from k*16 + r*8.
    std::vector<uint32_t> a(50), b(40);
    for (int i = 0; i < 50; i++) a[i] = i;
    for (int i = 0; i < 40; i++) b[i] = 1000 + i;
    shard_write(dir / "a.bin", a, true);
    shard_write(dir / "b.bin", b, true);
    for (int r = 0; r < 2; r++) {
        CAPTURE(r);
        DataLoader L;
        L.init(dir / "*.bin", 2, 4, r, 2, LoaderMode::CONTIGUOUS, -1, 1 << 20);
        // expected start ids: a k=0,1,2 then b k=0,1, then a again (epoch 1)
        std::vector<int> starts = {0 + 8 * r, 16 + 8 * r, 32 + 8 * r, 1000 + 8 * r, 1016 + 8 * r, 0 + 8 * r};
        std::vector<int> epochs = {0, 0, 0, 0, 0, 1};
        for (size_t s = 0; s < starts.size(); s++) {
            CHECK(L.epoch == epochs[s]);
            std::vector<int> in(8), tg(8);
            L.next_batch(in.data(), tg.data());
            for (int i = 0; i < 8; i++) {
                CHECK(in[i] == starts[s] + i);
                CHECK(tg[i] == starts[s] + i + 1);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// resume and reset

static std::vector<int> run_batches(DataLoader& L, int n) {
    std::vector<int> all;
    std::vector<int> in((size_t)L.B * L.T), tg((size_t)L.B * L.T);
    for (int k = 0; k < n; k++) {
        L.next_batch(in.data(), tg.data());
        all.insert(all.end(), in.begin(), in.end());
        all.insert(all.end(), tg.begin(), tg.end());
    }
    return all;
}

TEST_CASE("resume: restoring the state reproduces the following batches exactly; reset restarts") {
    TmpDir dir;
    write_random_corpus(dir, 99);
    for (LoaderMode mode : {LoaderMode::BESTFIT, LoaderMode::CONTIGUOUS}) {
        for (int r = 0; r < 2; r++) {
            CAPTURE((int)mode);
            CAPTURE(r);
            const int B = 2, T = 32;
            DataLoader A;
            A.quiet = true;
            A.init(dir / "c_*.bin", B, T, r, 2, mode, 0, 512);
            std::vector<int> first = run_batches(A, 1);
            run_batches(A, 59);  // N = 60 batches in all: crosses files (and epochs for rank 1)
            std::vector<int64_t> saved = A.state_to_ints();
            std::string saved_str = loader_state_to_string(A.get_state());
            std::vector<int> cont = run_batches(A, 40);  // M = 40

            DataLoader Bl;
            Bl.quiet = true;
            Bl.init(dir / "c_*.bin", B, T, r, 2, mode, 0, 512);
            Bl.state_from_ints(saved);
            CHECK(run_batches(Bl, 40) == cont);

            DataLoader Cl;
            Cl.quiet = true;
            Cl.init(dir / "c_*.bin", B, T, r, 2, mode, 0, 512);
            Cl.set_state(loader_state_from_string(saved_str));
            CHECK(run_batches(Cl, 40) == cont);

            A.reset();
            CHECK(run_batches(A, 1) == first);
        }
    }
}
