// train_test_util.h: what the end-to-end tests of the programs share (test_train, test_robust):
// running a command and reading its output and exit status, the bad-input check, the corpus
// (bundled or synthetic) and the JSON Lines log. Include after <doctest/doctest.h>.
#pragma once
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "llmc/json.h"
#include "llmc/rng.h"
#include "llmc/utils.h"

namespace traintest {

struct Run { int status; std::string out; };

inline int decode_status(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); }

// Run a shell command, collecting its stdout (redirections are the caller's).
inline Run run_raw(const std::string& cmd) {
    Run r;
    FILE* p = popen(cmd.c_str(), "r");
    REQUIRE(p != nullptr);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
    r.status = decode_status(pclose(p));
    return r;
}
inline Run run(const std::string& cmd) { return run_raw(cmd + " 2>&1"); }


// A bad-input run: exit status 1 (not a signal), an "error:" line containing needle.
inline void expect_error(const std::string& cmd, const std::string& needle) {
    Run r = run(cmd);
    INFO("command: " << cmd << "\noutput:\n" << r.out);
    CHECK(r.status == 1);
    CHECK(r.out.find("error: ") != std::string::npos);
    CHECK(r.out.find(needle) != std::string::npos);
}


// A synthetic stand-in for the bundled corpus, so these tests run (and can fail) on a checkout
// without ../shared/data: words of a 300-word vocabulary where each word is followed by one of 3
// successors (a first-order Markov chain), ~600 KB in paragraphs. Its entropy is ~ln 3 = 1.1 nats
// per word, so a model that learns anything gets far below ln V; one that learns nothing does not.
inline std::string synthetic_corpus(const std::string& dir) {
    llmc::Rng rng(7, 3);
    const int W = 300;
    std::vector<std::string> words(W);
    for (auto& w : words) {
        int len = 3 + (int)(rng.next_u64() % 5);
        for (int k = 0; k < len; k++) w += (char)('a' + rng.next_u64() % 26);
    }
    std::vector<int> next(3 * W);
    for (auto& x : next) x = (int)(rng.next_u64() % W);
    std::string text;
    int w = 0;
    while (text.size() < 600000) {
        for (int sent = 0; sent < 4; sent++) {
            for (int k = 0; k < 10; k++) {
                text += words[w];
                text += k == 9 ? ".\n" : " ";
                w = next[3 * w + (int)(rng.next_u64() % 3)];
            }
        }
        text += "\n";
    }
    std::string path = dir + "/synthetic.txt";
    llmc::write_file_atomic(path, text);
    return path;
}

// The bundled corpus when present (../shared/data or data/), else the synthetic one in dir
// (LLMC_TEST_SYNTHETIC=1 forces the synthetic one, to test that path).
inline std::string corpus_path(const std::string& dir) {
    const char* force = getenv("LLMC_TEST_SYNTHETIC");
    if (!(force && force[0] == '1'))
        for (const char* p : {"../shared/data/tinyshakespeare.txt", "data/tinyshakespeare.txt"})
            if (llmc::file_exists(p)) return p;
    MESSAGE("using a synthetic Markov-chain corpus (tinyshakespeare.txt not in ../shared/data or data/, or LLMC_TEST_SYNTHETIC=1)");
    return synthetic_corpus(dir);
}

// A new temporary directory /tmp/llmc_<tag>_XXXXXX holding prepare_data's output for the corpus
// above in <dir>/data (BPE vocabulary `vocab`, prefix ts); returns the directory. Callers keep one
// per test process (a function-local static).
inline std::string make_data_dir(const std::string& tag, int vocab) {
    std::string tmpl = "/tmp/llmc_" + tag + "_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    REQUIRE(mkdtemp(buf.data()) != nullptr);
    std::string dir = buf.data();
    Run r = run("./prepare_data --input " + corpus_path(dir) + " --out " + dir + "/data --vocab-size " + std::to_string(vocab) + " --prefix ts");
    INFO(r.out);
    REQUIRE(r.status == 0);
    return dir;
}


inline std::vector<llmc::Json> read_log(const std::string& path) {
    std::vector<llmc::Json> v;
    std::string s = llmc::read_file(path);
    size_t a = 0;
    while (a < s.size()) {
        size_t b = s.find('\n', a);
        if (b == std::string::npos) b = s.size();
        if (b > a) v.push_back(llmc::json_parse(s.substr(a, b - a), path));
        a = b + 1;
    }
    return v;
}

}  // namespace traintest
