// test_prepare_data.cpp: the data preparation traps of issues 12 and 13, each with a test.
//
// Unit tests of llmc/corpus.h (inputs -> documents) and llmc/datadir.h (manifest, staged output,
// the trainer's check), then ./prepare_data and ./train_gpt_cpu as subprocesses (built by
// `make test` first; run from the repo root). Expected documents come from hand-worked examples
// and from a line-by-line reference of the blank-line rule written here from its definition (not
// the streaming code under test); expected file states are snapshots taken before a run.
// A full disk is simulated with RLIMIT_FSIZE (SIGXFSZ ignored, so writes fail with EFBIG), which
// needs no root.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <string>
#include <vector>

#include "llmc/corpus.h"
#include "llmc/datadir.h"
#include "llmc/json.h"
#include "llmc/rng.h"
#include "llmc/shard.h"
#include "llmc/tokenizer.h"

using namespace llmc;
using Docs = std::vector<std::string>;

// ------------------------------------------------------------------------------------------------
// helpers

static std::string tmpdir() {
    static std::string d;
    if (d.empty()) {
        char tmpl[] = "/tmp/llmc_test_prep_XXXXXX";
        char* r = mkdtemp(tmpl);
        REQUIRE(r != nullptr);
        d = r;
    }
    return d;
}

static std::string fresh_dir(const std::string& name) {
    std::string d = tmpdir() + "/" + name;
    REQUIRE(system(("rm -rf '" + d + "' && mkdir -p '" + d + "'").c_str()) == 0);
    return d;
}

static void write_text(const std::string& path, const std::string& s) { write_file_atomic(path, s); }

static Docs read_docs(const std::vector<CorpusInput>& files, DocOptions o) {
    DocStream ds(files, o);
    Docs out;
    std::string d;
    while (ds.next(d)) out.push_back(d);
    return out;
}

static Docs text_docs(const std::string& path, size_t read_bytes, DocSep sep = DocSep::Blank, const std::string& s = "") {
    DocOptions o;
    o.sep = sep;
    o.sep_string = s;
    o.read_bytes = read_bytes;
    return read_docs({{path, false}}, o);
}

// The blank-line rule straight from its definition: lines at "\n"; a line of only " \t\r" is
// blank; a document is a maximal run of non-blank lines joined with "\n", minus a final "\r".
static Docs reference_blank_docs(const std::string& text) {
    Docs docs;
    std::vector<std::string> cur;
    auto close = [&]() {
        if (cur.empty()) return;
        std::string d;
        for (size_t i = 0; i < cur.size(); i++) d += (i ? "\n" : "") + cur[i];
        if (!d.empty() && d.back() == '\r') d.pop_back();
        docs.push_back(d);
        cur.clear();
    };
    size_t p = 0;
    for (;;) {
        size_t e = text.find('\n', p);
        std::string line = text.substr(p, e == std::string::npos ? std::string::npos : e - p);
        if (line.find_first_not_of(" \t\r") == std::string::npos) close();
        else cur.push_back(line);
        if (e == std::string::npos) break;
        p = e + 1;
    }
    close();
    return docs;
}

struct Run { int status; std::string out; };

// Run argv[0] with argv, stdout+stderr captured through a pipe; fsize_limit >= 0 caps the size of
// any file it writes (RLIMIT_FSIZE) with SIGXFSZ ignored, so an over-long write fails with EFBIG
// exactly as on a full disk.
static Run run_argv(const std::vector<std::string>& argv, long long fsize_limit = -1) {
    int fd[2];
    REQUIRE(pipe(fd) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        dup2(fd[1], 1);
        dup2(fd[1], 2);
        close(fd[0]);
        close(fd[1]);
        if (fsize_limit >= 0) {
            struct rlimit rl;
            rl.rlim_cur = rl.rlim_max = (rlim_t)fsize_limit;
            if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(126);
        }
        signal(SIGXFSZ, SIG_IGN);
        std::vector<char*> a;
        for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
        a.push_back(nullptr);
        execv(a[0], a.data());
        _exit(127);
    }
    close(fd[1]);
    Run r;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd[0], buf, sizeof buf)) > 0) r.out.append(buf, (size_t)n);
    close(fd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return r;
}

static Run prep(std::vector<std::string> args, long long fsize_limit = -1) {
    args.insert(args.begin(), "./prepare_data");
    return run_argv(args, fsize_limit);
}

static int count_lines_starting(const std::string& out, const std::string& head) {
    int n = 0;
    size_t p = 0;
    while (p < out.size()) {
        size_t e = out.find('\n', p);
        if (e == std::string::npos) e = out.size();
        if (out.compare(p, head.size(), head) == 0) n++;
        p = e + 1;
    }
    return n;
}

// Every plain file of a directory with its bytes; subdirectories as "name/".
static std::map<std::string, std::string> snapshot(const std::string& dir) {
    std::map<std::string, std::string> m;
    for (auto& n : list_dir_names(dir)) {
        struct stat st;
        std::string p = dir + "/" + n;
        REQUIRE(lstat(p.c_str(), &st) == 0);
        if (S_ISREG(st.st_mode)) m[n] = read_file(p);
        else m[n + "/"] = "";
    }
    return m;
}

static std::vector<std::string> staging_leftovers(const std::string& out) {
    std::vector<std::string> v;
    std::string base = manifest_basename(out) + ".tmp.";
    for (auto& n : list_dir_names(dir_of(out)))
        if (n.compare(0, base.size(), base) == 0) v.push_back(n);
    return v;
}

// The documents of a shard, split at BOS, decoded to bytes.
static Docs shard_docs(const Tokenizer& t, const std::string& path) {
    ShardInfo s = shard_open_check(path);
    std::vector<uint32_t> ids = shard_read_tokens(s, 0, s.ntok);
    Docs docs;
    std::vector<uint32_t> cur;
    for (size_t i = 0; i <= ids.size(); i++) {
        if (i == ids.size() || ids[i] == t.bos_id) {
            if (i > 0) docs.push_back(decode_bytes(t, cur));
            cur.clear();
        } else {
            cur.push_back(ids[i]);
        }
    }
    return docs;
}

// A deterministic English-like corpus: `paras` paragraphs of a few lines, separated by `sep`.
static std::string paragraphs(int paras, const std::string& eol, const std::string& sep, uint64_t seed = 1) {
    static const char* words[] = {"the", "king", "shall", "speak", "of", "swords", "and", "roses", "tomorrow", "my", "lord",
                                  "good", "night", "sweet", "prince", "whither", "goest", "thou", "fair", "maid"};
    Rng rng(seed, 3);
    std::string t;
    for (int p = 0; p < paras; p++) {
        if (p) t += sep;
        int lines = 1 + (int)(rng.next_u64() % 3);
        for (int l = 0; l < lines; l++) {
            if (l) t += eol;
            int nw = 3 + (int)(rng.next_u64() % 8);
            for (int w = 0; w < nw; w++) t += std::string(w ? " " : "") + words[rng.next_u64() % 20];
        }
    }
    return t + eol;
}

// ================================================================================================
// Issue 12.1: blank lines with CRLF, spaces and tabs separate documents

TEST_CASE("documents: blank-line rule, hand-worked cases") {
    std::string d = fresh_dir("blank");
    struct Case { std::string text; Docs want; };
    std::vector<Case> cases = {
        {"one\r\nline two\r\n\r\ndoc two\r\n \t\r\ndoc three\r\n", {"one\r\nline two", "doc two", "doc three"}},
        {"a\n\nb", {"a", "b"}},
        {"a\n\n\n\nb\n", {"a", "b"}},                   // no stray "\n" at the start of b (the old \n\n rule gave "\nb\n")
        {"a  \n \t \nb", {"a  ", "b"}},                 // a line's own trailing spaces stay; the blank line goes
        {"\n\n  \nfirst\nsecond\n\n\n", {"first\nsecond"}},
        {"  indented\n\n\tx", {"  indented", "\tx"}},   // indentation of a non-blank line is text
        {"x\r", {"x"}},                                 // a final CR counts as the line break
        {"\xEF\xBB\xBFhello\r\n\r\nworld", {"hello", "world"}},  // the BOM is not text
        {" \r\n\t\n", {}},
        {"", {}},
    };
    for (auto& c : cases) {
        write_text(d + "/in.txt", c.text);
        for (size_t rb : {(size_t)1, (size_t)2, (size_t)3, (size_t)5, (size_t)1 << 20}) {
            INFO("text: " << json_dump(Json(utf8_replace_invalid(c.text)), -1) << ", read_bytes " << rb);
            CHECK(text_docs(d + "/in.txt", rb) == c.want);
        }
        if (c.text.compare(0, 3, "\xEF\xBB\xBF") != 0) CHECK(reference_blank_docs(c.text) == c.want);  // the reference agrees
    }
}

TEST_CASE("documents: blank-line rule matches the line-by-line reference on random text at every block size") {
    std::string d = fresh_dir("blank_rand");
    static const char* frags[] = {"ab", "c d", "x", " ", "  ", "\t", "\r", "\n", "\n", "\r\n", "\r\n", "\n \n", "\r\n\t\r\n", "\xC3\xA9", "\n\n"};
    Rng rng(5, 1);
    int nonempty = 0;
    for (int it = 0; it < 60; it++) {
        std::string text;
        size_t n = rng.next_u64() % 200;
        while (text.size() < n) text += frags[rng.next_u64() % (sizeof(frags) / sizeof(frags[0]))];
        write_text(d + "/r.txt", text);
        Docs want = reference_blank_docs(text);
        nonempty += want.size() > 1;
        for (size_t rb : {(size_t)1, (size_t)3, (size_t)7, (size_t)64}) {
            INFO("iteration " << it << ", read_bytes " << rb);
            CHECK(text_docs(d + "/r.txt", rb) == want);
        }
    }
    CHECK(nonempty > 20);  // the texts really had several documents
}

TEST_CASE("documents: --doc-sep exact string and none keep their old meaning") {
    std::string d = fresh_dir("exact");
    write_text(d + "/in.txt", "a\n\n\nb\n\nc");
    CHECK(text_docs(d + "/in.txt", 2, DocSep::Exact, "\n\n") == Docs{"a", "\nb", "c"});
    CHECK(text_docs(d + "/in.txt", 2, DocSep::None) == Docs{"a\n\n\nb\n\nc"});
    DocOptions o = corpus_doc_options("\\n\\n", 16, "error");
    CHECK(o.sep == DocSep::Exact);
    CHECK(o.sep_string == "\n\n");
    CHECK(corpus_doc_options("blank", 16, "error").sep == DocSep::Blank);
    CHECK(corpus_doc_options("none", 16, "skip").skip_bad);
    CHECK_THROWS_WITH_AS(corpus_doc_options("blank", 16, "ignore"), "--on-bad-doc must be error or skip, got 'ignore'", Error);
}

TEST_CASE("prepare_data: a Windows (CRLF) file is many documents, not one that goes to val") {
    std::string d = fresh_dir("crlf");
    std::string crlf = paragraphs(40, "\r\n", "\r\n\r\n");
    // and blank lines holding spaces or tabs
    std::string ws = paragraphs(40, "\n", "\n \t \n", 2);
    write_text(d + "/win.txt", crlf);
    write_text(d + "/ws.txt", ws);
    for (const char* name : {"win", "ws"}) {
        Run r = prep({"--input", d + "/" + name + ".txt", "--out", d + "/o_" + name, "--vocab-size", "400"});
        INFO(r.out);
        REQUIRE(r.status == 0);
        DataManifest m = manifest_load(d + "/o_" + name + "/manifest.json");
        int64_t docs = 0;
        for (auto& s : m.train) docs += s.documents;
        for (auto& s : m.val) docs += s.documents;
        CHECK(docs == 40);
        // documents 0, 10, 20, 30 are validation
        int64_t vdocs = 0;
        for (auto& s : m.val) vdocs += s.documents;
        CHECK(vdocs == 4);
    }
    // the documents themselves: CRLF inside a paragraph kept, no CRLF at either end
    Tokenizer t = tokenizer_load(d + "/o_win/tokenizer");
    Docs tr = shard_docs(t, d + "/o_win/win_train_000000.bin");
    REQUIRE(tr.size() == 36);
    Docs want = reference_blank_docs(crlf);
    REQUIRE(want.size() == 40);
    CHECK(tr[0] == want[1]);
    CHECK(tr[35] == want[39]);
    for (auto& doc : tr) {
        CHECK(doc.find("\r\n\r\n") == std::string::npos);
        CHECK(doc.back() != '\n');
        CHECK(doc.back() != '\r');
    }
}

// ================================================================================================
// Issue 12.2 and 13.7: stale shards, the manifest, a failed run leaves the old output

TEST_CASE("prepare_data: a re-run that writes fewer shards leaves none of the old ones") {
    std::string d = fresh_dir("rerun");
    write_text(d + "/in.txt", paragraphs(300, "\n", "\n\n"));
    Run a = prep({"--input", d + "/in.txt", "--out", d + "/o", "--vocab-size", "400", "--shard-size", "600"});
    INFO(a.out);
    REQUIRE(a.status == 0);
    REQUIRE(file_exists(d + "/o/in_train_000003.bin"));
    Run b = prep({"--input", d + "/in.txt", "--out", d + "/o", "--vocab-size", "300", "--prefix", "again"});
    INFO(b.out);
    REQUIRE(b.status == 0);
    auto snap = snapshot(d + "/o");
    std::vector<std::string> names;
    for (auto& kv : snap) names.push_back(kv.first);
    CHECK(names == std::vector<std::string>{"again_train_000000.bin", "again_val_000000.bin", "manifest.json", "tokenizer.json",
                                            "tokenizer.tiktoken"});
    CHECK(staging_leftovers(d + "/o").empty());
    DataManifest m = manifest_load(d + "/o/manifest.json");
    REQUIRE(m.train.size() == 1);
    CHECK(m.train[0].file == "again_train_000000.bin");
    CHECK(m.train[0].tokens == shard_open_check(d + "/o/again_train_000000.bin").ntok);
    CHECK(m.tokenizer_fingerprint == tokenizer_fingerprint(tokenizer_load(d + "/o/tokenizer")));
}

TEST_CASE("prepare_data: an --out holding other files is refused at start, untouched") {
    std::string d = fresh_dir("foreign");
    write_text(d + "/in.txt", paragraphs(30, "\n", "\n\n"));
    REQUIRE(system(("mkdir -p " + d + "/o && cp " + d + "/in.txt " + d + "/o/notes.txt").c_str()) == 0);
    auto before = snapshot(d + "/o");
    Run r = prep({"--input", d + "/in.txt", "--out", d + "/o", "--vocab-size", "300"});
    INFO(r.out);
    CHECK(r.status == 1);
    CHECK(count_lines_starting(r.out, "error: ") == 1);
    CHECK(r.out.find("holds 'notes.txt'") != std::string::npos);
    CHECK(snapshot(d + "/o") == before);
    CHECK(staging_leftovers(d + "/o").empty());
}

TEST_CASE("datadir: the manifest round-trips; the check catches stale, missing and changed shards and another tokenizer") {
    std::string d = fresh_dir("check");
    Tokenizer t;
    {
        TrainOptions o;
        o.vocab_size = 300;
        t = tokenizer_train({"the king shall speak of swords and roses", "good night sweet prince"}, o);
    }
    tokenizer_save(t, d + "/tokenizer");
    std::vector<uint32_t> a{t.bos_id, 1, 2, 3}, b{t.bos_id, 4, 5};
    shard_write(d + "/x_train_000000.bin", a, false);
    shard_write(d + "/x_val_000000.bin", b, false);
    CHECK_FALSE(manifest_check(d, d + "/*_train_*.bin", d + "/*_val_*.bin", &t, "t"));  // no manifest: nothing checked
    DataManifest m;
    m.tokenizer_name = t.name;
    m.tokenizer_fingerprint = tokenizer_fingerprint(t);
    m.n_vocab = t.n_vocab;
    m.bos_id = t.bos_id;
    m.vocab_size_requested = 300;
    m.train = {{"x_train_000000.bin", 4, 1}};
    m.val = {{"x_val_000000.bin", 3, 1}};
    write_text(d + "/manifest.json", json_dump(manifest_json(m), 2));
    DataManifest back = manifest_load(d + "/manifest.json");
    CHECK(json_dump(manifest_json(back)) == json_dump(manifest_json(m)));
    CHECK(manifest_check(d, d + "/*_train_*.bin", d + "/*_val_*.bin", &t, "t"));
    CHECK(manifest_check(d, d + "/*_train_*.bin", "", nullptr, ""));
    // a stale shard of an earlier run
    shard_write(d + "/old_train_000007.bin", a, false);
    CHECK_THROWS_WITH_AS(manifest_check(d, d + "/*_train_*.bin", "", nullptr, ""),
                         doctest::Contains("old_train_000007.bin' is not one of the 1 train shards listed in"), Error);
    unlink((d + "/old_train_000007.bin").c_str());
    // a listed shard that changed
    shard_write(d + "/x_val_000000.bin", a, false);
    CHECK_THROWS_WITH_AS(manifest_check(d, d + "/*_train_*.bin", d + "/*_val_*.bin", nullptr, ""),
                         doctest::Contains("x_val_000000.bin' holds 4 tokens but"), Error);
    // a listed shard that is missing
    unlink((d + "/x_val_000000.bin").c_str());
    CHECK_THROWS_WITH_AS(manifest_check(d, d + "/*_train_*.bin", d + "/*_val_*.bin", nullptr, ""),
                         doctest::Contains("lists val shard"), Error);
    // another tokenizer: other merges, same size
    TrainOptions o2;
    o2.vocab_size = 300;
    Tokenizer t2 = tokenizer_train({"completely different words here, many of them", "zzz yyy xxx www"}, o2);
    CHECK_THROWS_WITH_AS(manifest_check(d, d + "/*_train_*.bin", "", &t2, "'other'"),
                         doctest::Contains("the tokenizer 'other'"), Error);
    // a renamed copy of the same tokenizer is the same tokenizer
    Tokenizer t3 = t;
    t3.name = "renamed";
    CHECK(manifest_check(d, d + "/*_train_*.bin", "", &t3, "t3"));
    // a broken manifest names itself and the key
    write_text(d + "/manifest.json", "{\"format\": \"llmc-data-manifest\", \"version\": 1}");
    CHECK_THROWS_WITH_AS(manifest_check(d, d + "/*_train_*.bin", "", nullptr, ""), doctest::Contains("missing key 'tokenizer'"), Error);
}

TEST_CASE("datadir: staging replaces the directory whole; a stage never committed leaves it as it was") {
    std::string d = fresh_dir("stage");
    std::string out = d + "/o";
    {
        DataDirStage s(out);
        CHECK_FALSE(s.existed);
        write_text(s.path("tokenizer.json"), "v1");
        write_text(s.path("p_train_000000.bin"), "shard1");
        write_text(s.path("p_train_000001.bin"), "shard2");
        CHECK_FALSE(file_exists(out + "/tokenizer.json"));  // nothing visible before the commit
        s.commit();
    }
    auto v1 = snapshot(out);
    CHECK(v1.size() == 3);
    {
        DataDirStage s(out);  // never committed (an error half-way)
        CHECK(s.existed);
        write_text(s.path("tokenizer.json"), "v2");
        write_text(s.path("q_train_000000.bin"), "new");
    }
    CHECK(snapshot(out) == v1);
    CHECK(staging_leftovers(out).empty());
    {
        DataDirStage s(out);
        write_text(s.path("tokenizer.json"), "v3");
        write_text(s.path("q_train_000000.bin"), "new");
        s.commit();
    }
    CHECK(snapshot(out) == std::map<std::string, std::string>{{"q_train_000000.bin", "new"}, {"tokenizer.json", "v3"}});
    CHECK(staging_leftovers(out).empty());
    // a staging directory of a killed run (its pid gone) is removed by the next run
    pid_t child = fork();
    if (child == 0) _exit(0);
    REQUIRE(child > 0);
    waitpid(child, nullptr, 0);
    std::string stale = strfmt("%s.tmp.%d", out.c_str(), (int)child);
    REQUIRE(mkdir(stale.c_str(), 0755) == 0);
    write_text(stale + "/q_train_000000.bin", "half");
    {
        DataDirStage s(out);
        REQUIRE(s.notes.size() == 1);
        CHECK(s.notes[0].find("left by an interrupted run") != std::string::npos);
    }
    CHECK_FALSE(file_exists(stale + "/q_train_000000.bin"));
    CHECK(staging_leftovers(out).empty());
    // foreign entries: refused before anything is created
    write_text(out + "/my_corpus.txt", "mine");
    CHECK_THROWS_WITH_AS(DataDirStage{out}, doctest::Contains("holds 'my_corpus.txt', which prepare_data did not write"), Error);
    CHECK(staging_leftovers(out).empty());
}

// Issue 13.1 + 13.7: disk full (RLIMIT_FSIZE) at the tokenizer and at a shard: exit 1, one error
// line, the previous output byte-identical, no staging directory left.
TEST_CASE("prepare_data: a full disk leaves the previous output unchanged and one error line") {
    std::string d = fresh_dir("diskfull");
    write_text(d + "/in.txt", paragraphs(400, "\n", "\n\n"));  // ~25 KB of text: shards of ~15-30 KB
    Run a = prep({"--input", d + "/in.txt", "--out", d + "/o", "--vocab-size", "300"});
    INFO(a.out);
    REQUIRE(a.status == 0);
    auto before = snapshot(d + "/o");
    REQUIRE(before.size() == 5);
    size_t biggest = 0, tiktoken = before["tokenizer.tiktoken"].size();
    for (auto& kv : before) biggest = std::max(biggest, kv.second.size());
    REQUIRE(tiktoken > 1000);
    REQUIRE(biggest > 8000);
    // 1000 bytes: the tokenizer's .tiktoken cannot be written; 8000: the tokenizer can, the train shard cannot
    for (long long limit : {1000LL, 8000LL}) {
        Run b = prep({"--input", d + "/in.txt", "--out", d + "/o", "--vocab-size", "280", "--prefix", "other"}, limit);
        INFO("limit " << limit << "\n" << b.out);
        CHECK(b.status == 1);
        CHECK(count_lines_starting(b.out, "error: ") == 1);
        CHECK(b.out.find("File too large") != std::string::npos);
        CHECK(b.out.find("keeps its previous contents") != std::string::npos);
        CHECK(snapshot(d + "/o") == before);
        CHECK(staging_leftovers(d + "/o").empty());
    }
    // into a directory that does not exist yet: nothing appears
    Run c = prep({"--input", d + "/in.txt", "--out", d + "/new", "--vocab-size", "280"}, 8000);
    INFO(c.out);
    CHECK(c.status == 1);
    CHECK(count_lines_starting(c.out, "error: ") == 1);
    CHECK_FALSE(file_exists(d + "/new/manifest.json"));
    CHECK(list_dir_names(d) == std::vector<std::string>{"in.txt", "o"});
    // the same run with room for its files succeeds (the failures above were the limit)
    Run e = prep({"--input", d + "/in.txt", "--out", d + "/o", "--vocab-size", "280", "--prefix", "other"}, 10 << 20);
    INFO(e.out);
    CHECK(e.status == 0);
    CHECK(file_exists(d + "/o/other_train_000000.bin"));
    CHECK_FALSE(file_exists(d + "/o/in_train_000000.bin"));
}

// ================================================================================================
// Issue 12.3: subdirectories are walked

TEST_CASE("inputs: directories are walked recursively in sorted order; hidden, special and output entries skipped and counted") {
    std::string d = fresh_dir("walk");
    std::string r = d + "/root";
    REQUIRE(system(("mkdir -p " + r + "/a " + r + "/sub/deeper " + r + "/.git " + r + "/out").c_str()) == 0);
    write_text(r + "/b.txt", "b");
    write_text(r + "/a-c.txt", "a-c");
    write_text(r + "/a/x.txt", "x");
    write_text(r + "/a/.hidden.txt", "h");
    write_text(r + "/.git/y.txt", "y");
    write_text(r + "/sub/deeper/z.JSONL", "{\"text\": \"z\"}\n");
    write_text(r + "/out/s_train_000000.bin", "not text");
    REQUIRE(symlink("..", (r + "/a/loop").c_str()) == 0);
    REQUIRE(mkfifo((r + "/fifo").c_str(), 0644) == 0);
    CorpusListing l = corpus_list(r, "auto", {corpus_abs_path(r + "/out")});
    std::vector<std::string> got;
    for (auto& f : l.files) got.push_back(f.path.substr(r.size() + 1) + (f.json ? " (json)" : ""));
    // per directory by name: "a" < "a-c.txt" < "b.txt" < "sub"; a/loop leads back to root (skipped)
    CHECK(got == std::vector<std::string>{"a/x.txt", "a-c.txt", "b.txt", "sub/deeper/z.JSONL (json)"});
    REQUIRE(l.notes.size() == 1);
    INFO(l.notes[0]);
    CHECK(l.notes[0].find("4 files") != std::string::npos);
    CHECK(l.notes[0].find("2 hidden") != std::string::npos);
    CHECK(l.notes[0].find("1 output director") != std::string::npos);
    CHECK(l.notes[0].find("1 directory symlink loop") != std::string::npos);
    CHECK(l.notes[0].find("1 special file") != std::string::npos);
    CHECK_THROWS_WITH_AS(corpus_list(r + "/out", "auto", {corpus_abs_path(r + "/out")}), doctest::Contains("is the output directory"), Error);
    // end to end: the nested files' documents are in the shards
    REQUIRE(unlink((r + "/fifo").c_str()) == 0);
    Run run = prep({"--input", r, "--out", r + "/out", "--vocab-size", "270", "--val-every", "0"});
    INFO(run.out);
    REQUIRE(run.status == 0);
    Tokenizer t = tokenizer_load(r + "/out/tokenizer");
    CHECK(shard_docs(t, r + "/out/root_train_000000.bin") == Docs{"x", "a-c", "b", "z"});
}

// ================================================================================================
// Issue 12.4: a .json file holding an array

TEST_CASE("inputs: JSON arrays of strings or objects; JSON Lines; a pretty-printed object is named as such") {
    std::string d = fresh_dir("jsonarr");
    write_text(d + "/a.json", "\xEF\xBB\xBF \n [\"first doc\", {\"id\": 2, \"text\": \"second\\ndoc\"}, \"\", {\"text\": \"third\"}]\n");
    for (size_t rb : {(size_t)1, (size_t)4, (size_t)1 << 20}) {
        DocOptions o;
        o.read_bytes = rb;
        CHECK(read_docs({{d + "/a.json", true}}, o) == Docs{"first doc", "second\ndoc", "third"});
    }
    write_text(d + "/e.json", "[]");
    CHECK(read_docs({{d + "/e.json", true}}, DocOptions()).empty());
    // an element of the wrong type: error naming it, or skipped and counted
    write_text(d + "/bad.json", "[\"ok\", 5, {\"title\": \"x\"}, \"fine\"]");
    CHECK_THROWS_WITH_AS(read_docs({{d + "/bad.json", true}}, DocOptions()),
                         doctest::Contains("bad.json' array element 1 (byte offset 7): type integer, expected a string or an object"), Error);
    DocOptions skip;
    skip.skip_bad = true;
    {
        DocStream ds({{d + "/bad.json", true}}, skip);
        Docs got;
        std::string doc;
        while (ds.next(doc)) got.push_back(doc);
        CHECK(got == Docs{"ok", "fine"});
        CHECK(ds.bad_docs == 2);
    }
    // a broken array is an error even when skipping: nothing after it can be trusted
    write_text(d + "/cut.json", "[\"a\", \"b\"");
    CHECK_THROWS_WITH_AS(read_docs({{d + "/cut.json", true}}, skip), doctest::Contains("missing ']'"), Error);
    write_text(d + "/comma.json", "[\"a\" \"b\"]");
    CHECK_THROWS_WITH_AS(read_docs({{d + "/comma.json", true}}, skip), doctest::Contains("byte offset 5: expected ',' or ']'"), Error);
    // a pretty-printed single object is neither: say what a .json file may hold
    write_text(d + "/pretty.json", "{\n  \"text\": \"hello\"\n}\n");
    CHECK_THROWS_WITH_AS(read_docs({{d + "/pretty.json", true}}, DocOptions()),
                         doctest::Contains("must be JSON Lines, one object per line, or one JSON array"), Error);
    // end to end
    Run r = prep({"--input", d + "/a.json", "--out", d + "/o", "--vocab-size", "270", "--val-every", "0"});
    INFO(r.out);
    REQUIRE(r.status == 0);
    Tokenizer t = tokenizer_load(d + "/o/tokenizer");
    CHECK(shard_docs(t, d + "/o/a_train_000000.bin") == Docs{"first doc", "second\ndoc", "third"});
}

// ================================================================================================
// Issue 12.5: a single-document corpus

TEST_CASE("documents: a lone document is split by bytes so that training has data") {
    // hand-worked cuts: target floor(n / K), then through the next line break
    CHECK(corpus_lone_cut("0123456789\nabcdefghij\nKLMNOPQRSTUVWXYZ", 10) == 11);  // n 38, target 3, "\n" at 10
    CHECK(corpus_lone_cut("abcdefghijklmnopqrst", 10) == 2);                      // no line break: at byte 2
    CHECK(corpus_lone_cut("\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9", 10) == 2);   // byte 1 is inside an é: next boundary
    CHECK(corpus_lone_cut("ab", 10) == 1);
    CHECK(corpus_lone_cut("a", 10) == 0);
    CHECK(corpus_lone_cut("aaaa\n", 2) == 2);  // the only line break is the last byte: cut at the target
    std::string d = fresh_dir("lone");
    write_text(d + "/one.txt", "0123456789\nabcdefghij\nKLMNOPQRSTUVWXYZ");
    {
        Documents ds({{d + "/one.txt", false}}, DocOptions(), 10);
        Docs got;
        std::string doc;
        while (ds.next(doc)) got.push_back(doc);
        CHECK(got == Docs{"0123456789\n", "abcdefghij\nKLMNOPQRSTUVWXYZ"});
        CHECK(ds.lone_val_bytes == 11);
        CHECK(ds.lone_train_bytes == 27);
    }
    {
        Documents ds({{d + "/one.txt", false}}, DocOptions(), 0);  // no val split: left whole
        std::string doc;
        REQUIRE(ds.next(doc));
        CHECK(doc.size() == 38);
        CHECK_FALSE(ds.next(doc));
    }
    write_text(d + "/two.txt", "x\n\ny");
    {
        Documents ds({{d + "/two.txt", false}}, DocOptions(), 10);  // two documents: unchanged
        Docs got;
        std::string doc;
        while (ds.next(doc)) got.push_back(doc);
        CHECK(got == Docs{"x", "y"});
        CHECK(ds.lone_val_bytes == -1);
    }
    // end to end: one paragraph (no blank line) trains a tokenizer and gives both splits
    std::string text = paragraphs(1, "\n", "") + paragraphs(60, "\n", "\n", 3);  // lines, no blank line
    write_text(d + "/single.txt", text);
    Run r = prep({"--input", d + "/single.txt", "--out", d + "/o", "--vocab-size", "300"});
    INFO(r.out);
    REQUIRE(r.status == 0);
    CHECK(r.out.find("the input is a single document") != std::string::npos);
    Tokenizer t = tokenizer_load(d + "/o/tokenizer");
    Docs val = shard_docs(t, d + "/o/single_val_000000.bin"), train = shard_docs(t, d + "/o/single_train_000000.bin");
    REQUIRE(val.size() == 1);
    REQUIRE(train.size() == 1);
    std::string whole = reference_blank_docs(text).at(0);
    CHECK(val[0] + train[0] == whole);
    CHECK(val[0].back() == '\n');
    CHECK(val[0].size() >= whole.size() / 10);
    // too short to split: a clear error that says what to do
    write_text(d + "/tiny.txt", "a");
    Run s = prep({"--input", d + "/tiny.txt", "--out", d + "/o2", "--vocab-size", "300"});
    CHECK(s.status == 1);
    CHECK(s.out.find("single document of 1 bytes, too short") != std::string::npos);
    CHECK(s.out.find("--val-every 0") != std::string::npos);
}

// ================================================================================================
// Issue 12.6, 12.7, 12.9: doc cap said, final vocabulary everywhere, prefix at the last dot

TEST_CASE("prepare_data: --doc-cap says how many documents it cut") {
    std::string d = fresh_dir("cap");
    write_text(d + "/in.txt", "short\n\na much longer document here\n\nanother long one, too long\n\nok\n\nmid size");
    // documents 1..4 train the tokenizer (0 is a val candidate); longer than 8 code points: 1 and 2
    Run r = prep({"--input", d + "/in.txt", "--out", d + "/o", "--vocab-size", "270", "--doc-cap", "8"});
    INFO(r.out);
    REQUIRE(r.status == 0);
    CHECK(r.out.find("note: 2 of 4 training documents were longer than --doc-cap 8 code points") != std::string::npos);
    Run q = prep({"--input", d + "/in.txt", "--out", d + "/o", "--vocab-size", "270"});
    CHECK(q.out.find("--doc-cap") == std::string::npos);  // nothing cut, nothing said
}

TEST_CASE("prepare_data + trainer: a vocabulary smaller than asked is the one in the summary, tokenizer.json, manifest and model") {
    std::string d = fresh_dir("vocab");
    write_text(d + "/in.txt", paragraphs(60, "\n", "\n\n"));
    Run r = prep({"--input", d + "/in.txt", "--out", d + "/o", "--vocab-size", "5000"});
    INFO(r.out);
    REQUIRE(r.status == 0);
    Tokenizer t = tokenizer_load(d + "/o/tokenizer");
    REQUIRE(t.n_vocab < 5000);
    std::string nv = std::to_string(t.n_vocab);
    CHECK(r.out.find("n_vocab " + nv + " (--vocab-size 5000 asked") != std::string::npos);
    CHECK(json_parse(read_file(d + "/o/tokenizer.json"), "sidecar")["n_vocab"].as_int() == t.n_vocab);
    DataManifest m = manifest_load(d + "/o/manifest.json");
    CHECK(m.n_vocab == t.n_vocab);
    CHECK(m.vocab_size_requested == 5000);
    CHECK(t.name == "in-" + nv);
    std::vector<std::string> train = {"./train_gpt_cpu", "--data-dir", d + "/o", "--out-dir", d + "/run", "--depth", "1", "--aspect-ratio",
                                      "32", "--head-dim", "32", "--max-seq-len", "16", "--device-batch-size", "2", "--total-batch-size",
                                      "32", "--num-iterations", "1", "--eval-every", "-1", "--eval-tokens", "32", "--num-samples", "0",
                                      "--threads", "1"};
    Run tr = run_argv(train);
    INFO(tr.out);
    CHECK(tr.status == 0);
    CHECK(tr.out.find(", vocab " + nv + " (padded") != std::string::npos);
    // a --vocab-size that contradicts the tokenizer is an error, not a silent override
    train.push_back("--vocab-size");
    train.push_back("5000");
    Run bad = run_argv(train);
    CHECK(bad.status == 1);
    CHECK(bad.out.find("--vocab-size 5000 differs from n_vocab " + nv) != std::string::npos);
}

TEST_CASE("prefix: the default cuts the last extension only") {
    std::string d = fresh_dir("prefix");
    CHECK(corpus_default_prefix("x/my.corpus.v2.txt") == "my.corpus.v2");
    CHECK(corpus_default_prefix("corpus.txt") == "corpus");
    CHECK(corpus_default_prefix("README") == "README");
    CHECK(corpus_default_prefix(".hidden") == ".hidden");
    REQUIRE(mkdir((d + "/set.v1").c_str(), 0755) == 0);
    CHECK(corpus_default_prefix(d + "/set.v1/") == "set.v1");  // a directory keeps its whole name
    write_text(d + "/my.corpus.v2.txt", paragraphs(20, "\n", "\n\n"));
    Run r = prep({"--input", d + "/my.corpus.v2.txt", "--out", d + "/o", "--vocab-size", "270"});
    INFO(r.out);
    REQUIRE(r.status == 0);
    CHECK(file_exists(d + "/o/my.corpus.v2_train_000000.bin"));
    CHECK(file_exists(d + "/o/my.corpus.v2_val_000000.bin"));
}

// ================================================================================================
// Issue 12.8: one bad JSON line

TEST_CASE("prepare_data: a bad JSON line names file, line and byte; --on-bad-doc skip skips and counts") {
    std::string d = fresh_dir("badline");
    std::string l1 = "{\"text\": \"good one\"}\n", l2 = "{\"text\": \"broken \\ud800 surrogate\"}\n";
    std::string jl = l1 + l2;
    for (int i = 0; i < 30; i++) jl += "{\"text\": \"document number " + std::to_string(i) + " is fine\"}\n";
    write_text(d + "/in.jsonl", jl);
    size_t at = l1.size() + l2.find('\\');  // the lone surrogate's escape, as a file offset
    Run r = prep({"--input", d + "/in.jsonl", "--out", d + "/o", "--vocab-size", "280"});
    INFO(r.out);
    CHECK(r.status == 1);
    CHECK(count_lines_starting(r.out, "error: ") == 1);
    CHECK(r.out.find("in.jsonl' line 2: invalid JSON at byte offset " + std::to_string(at) + ": high surrogate not followed by a low surrogate") !=
          std::string::npos);
    CHECK(r.out.find("--on-bad-doc skip") != std::string::npos);
    CHECK_FALSE(file_exists(d + "/o"));
    Run s = prep({"--input", d + "/in.jsonl", "--out", d + "/o", "--vocab-size", "280", "--on-bad-doc", "skip"});
    INFO(s.out);
    REQUIRE(s.status == 0);
    CHECK(s.out.find("skipped 1 unreadable document") != std::string::npos);
    CHECK(s.out.find("in.jsonl' line 2") != std::string::npos);  // the skipped one is named
    DataManifest m = manifest_load(d + "/o/manifest.json");
    int64_t docs = 0;
    for (auto* v : {&m.train, &m.val})
        for (auto& sh : *v) docs += sh.documents;
    CHECK(docs == 31);
}

// ================================================================================================
// The trainer refuses a data directory that does not match its manifest

TEST_CASE("trainer: a stale shard or another tokenizer in --data-dir is an error, not a silent mix") {
    std::string d = fresh_dir("trainer");
    write_text(d + "/in.txt", paragraphs(80, "\n", "\n\n"));
    Run a = prep({"--input", d + "/in.txt", "--out", d + "/o", "--vocab-size", "300"});
    INFO(a.out);
    REQUIRE(a.status == 0);
    Run b = prep({"--input", d + "/in.txt", "--out", d + "/o2", "--vocab-size", "280"});
    REQUIRE(b.status == 0);
    std::vector<std::string> train = {"./train_gpt_cpu", "--data-dir", d + "/o", "--out-dir", d + "/run", "--depth", "1", "--aspect-ratio",
                                      "32", "--head-dim", "32", "--max-seq-len", "16", "--device-batch-size", "2", "--total-batch-size",
                                      "32", "--num-iterations", "1", "--eval-every", "-1", "--eval-tokens", "32", "--num-samples", "0",
                                      "--threads", "1"};
    // a shard of another run dropped into the directory
    write_text(d + "/o/old_train_000001.bin", read_file(d + "/o2/in_train_000000.bin"));
    Run r = run_argv(train);
    INFO(r.out);
    CHECK(r.status == 1);
    CHECK(count_lines_starting(r.out, "error: ") == 1);
    CHECK(r.out.find("old_train_000001.bin' is not one of the 1 train shards listed") != std::string::npos);
    unlink((d + "/o/old_train_000001.bin").c_str());
    // the other run's tokenizer next to these shards
    std::vector<std::string> other = train;
    other.push_back("--tokenizer");
    other.push_back(d + "/o2/tokenizer");
    Run t = run_argv(other);
    INFO(t.out);
    CHECK(t.status == 1);
    CHECK(t.out.find("is not the one the shards in") != std::string::npos);
}
