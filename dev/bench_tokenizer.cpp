// bench_tokenizer: throughput of the tokenizer (llmc/tokenizer.h). Measured here, never asserted.
//
//   build/dev/bench_tokenizer [--corpus PATH] [--mb 50] [--vocab 32768] [--dump-synthetic PATH]
//   (--dump-synthetic: write the synthetic documents of 2(b), one per line, and exit; used by
//   dev/data/bench_reference.py to time rustbpe and tiktoken on the same text)
//
// 1. Encoding: the corpus (default tinyshakespeare) split at "\n\n" into documents, repeated until
//    it is >= --mb MB, encoded with a tokenizer of --vocab trained on the corpus; MB/s with 1 and
//    2 threads (OpenMP over documents), and the splitter alone on 1 thread. Since that tokenizer
//    has nearly every word of the corpus as one token, the synthetic text of 2(b) is encoded too
//    with the tokenizer trained on it (many pieces need real merges).
// 2. Training a --vocab tokenizer on ~--mb MB, twice: (a) the corpus repeated, which has few
//    distinct chunks (tinyshakespeare: ~25k), so the merge loop is cheap and chunk counting
//    dominates; (b) synthetic text of words drawn from a Zipf distribution over 400k random words,
//    which has many distinct chunks like real web text. Time and peak RSS (VmHWM, which includes
//    the corpus held in memory) are printed.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "llmc/rng.h"
#include "llmc/tokenizer.h"

using namespace llmc;

static double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// user + system CPU seconds of the whole process (all threads)
static double cpu_s() {
    rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + 1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static long status_kb(const char* key) {
    FILE* f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, key, kl) == 0) v = atol(line + kl + 1);
    fclose(f);
    return v;
}

static std::vector<std::string> split_docs(const std::string& text) {
    std::vector<std::string> docs;
    for (size_t p = 0; p < text.size();) {
        size_t e = text.find("\n\n", p);
        if (e == std::string::npos) e = text.size();
        if (e > p) docs.push_back(text.substr(p, e - p));
        p = e + 2;
    }
    return docs;
}

static std::vector<std::string> repeat_to(const std::vector<std::string>& docs, size_t bytes, size_t* total) {
    std::vector<std::string> out;
    *total = 0;
    while (*total < bytes)
        for (auto& d : docs) { out.push_back(d); *total += d.size(); }
    return out;
}

// Zipf-distributed words over a vocabulary of random lowercase strings, with punctuation, digits,
// capitals and paragraph breaks sprinkled in.
static std::vector<std::string> synthetic_docs(size_t bytes, size_t* total) {
    Rng rng(5, 0);
    const int V = 400000;
    std::vector<std::string> words(V);
    for (auto& w : words) {
        int len = 1 + (int)(rng.next_u64() % 10) + (int)(rng.next_u64() % 4);
        for (int k = 0; k < len; k++) w += (char)('a' + (rng.next_u64() % 26 < 20 ? rng.next_u64() % 8 : rng.next_u64() % 26));
    }
    // inverse CDF of Zipf(1) by table lookup
    std::vector<double> cdf(V);
    double s = 0;
    for (int i = 0; i < V; i++) { s += 1.0 / (i + 1); cdf[i] = s; }
    std::vector<std::string> docs;
    *total = 0;
    std::string doc;
    while (*total < bytes) {
        double u = rng.uniform() * s;
        int i = (int)(std::lower_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
        if (i >= V) i = V - 1;
        uint64_t r = rng.next_u64() % 100;
        if (!doc.empty()) doc += ' ';
        if (r < 3) doc += std::to_string(rng.next_u64() % 2000);
        else if (r < 8) { std::string w = words[i]; w[0] = (char)(w[0] - 32); doc += w; }
        else doc += words[i];
        if (r >= 90 && r < 96) doc += ",";
        if (r >= 96) doc += ".";
        if (doc.size() > 2000 + rng.next_u64() % 2000) {
            *total += doc.size();
            docs.push_back(std::move(doc));
            doc.clear();
        }
    }
    return docs;
}

static void bench_encode(const char* label, const Tokenizer& tok, const std::vector<std::string>& docs, size_t bytes) {
    std::vector<std::vector<uint32_t>> out;
    for (int th : {1, 2}) {
        double t = now_s(), c = cpu_s();
        encode_batch(tok, docs, out, true, th);
        double dt = now_s() - t, dc = cpu_s() - c;
        size_t ntok = 0;
        for (auto& v : out) ntok += v.size();
        // MB per CPU-second separates a loaded machine (threads waiting for a core) from poor scaling
        printf("encode %-26s %d thread%s: %7.1f MB/s total, %6.1f MB/s per thread, %6.1f MB per CPU-second, CPU use %3.0f%% "
               "(%zu tokens, %.3f bytes/token)\n", label, th, th > 1 ? "s" : " ", bytes / 1e6 / dt, bytes / 1e6 / dt / th,
               bytes / 1e6 / dc, 100 * dc / dt, ntok, (double)bytes / (ntok - docs.size()));
    }
}

static Tokenizer bench_train(const char* label, const std::vector<std::string>& docs, size_t bytes, int64_t vocab) {
    TrainOptions o;
    o.vocab_size = vocab;
    o.doc_cap = 0;  // measure on all the text
    double t0 = now_s();
    Tokenizer t = tokenizer_train(docs, o);
    double dt = now_s() - t0;
    printf("train %-32s %6.1f MB, vocab %lld: %u merges in %6.2f s; peak RSS %.0f MB (corpus %.0f MB held)\n", label, bytes / 1e6,
           (long long)vocab, t.n_mergeable() - 256, dt, status_kb("VmHWM:") / 1024.0, bytes / 1e6);
    return t;
}

int main(int argc, char** argv) {
    std::string corpus = "";
    double mb = 50;
    long long vocab = 32768;
    std::string dump;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string a = argv[i];
        if (a == "--corpus") corpus = argv[i + 1];
        else if (a == "--mb") mb = atof(argv[i + 1]);
        else if (a == "--vocab") vocab = atoll(argv[i + 1]);
        else if (a == "--dump-synthetic") dump = argv[i + 1];
        else { fprintf(stderr, "unknown flag %s\n", a.c_str()); return 1; }
    }
    if (!dump.empty()) {
        LLMC_MAIN_GUARD({
            size_t sb = 0;
            std::string all;
            for (auto& d : synthetic_docs((size_t)(mb * 1e6), &sb)) { all += d; all += '\n'; }  // documents have no newlines
            write_file_atomic(dump, all);
            printf("wrote %.1f MB of synthetic documents to %s\n", sb / 1e6, dump.c_str());
        });
        return 0;
    }
    if (corpus.empty())
        for (const char* p : {"../shared/data/tinyshakespeare.txt", "data/tinyshakespeare.txt", "/work/shared/data/tinyshakespeare.txt"})
            if (file_exists(p)) { corpus = p; break; }
    if (corpus.empty()) { fprintf(stderr, "no corpus found: pass --corpus PATH\n"); return 1; }
    LLMC_MAIN_GUARD({
        std::string text = read_file(corpus);
        std::vector<std::string> base = split_docs(text);
        size_t bytes = 0;
        std::vector<std::string> docs = repeat_to(base, (size_t)(mb * 1e6), &bytes);
        printf("corpus %s: %.2f MB, %zu documents; repeated to %.1f MB, %zu documents\n", corpus.c_str(), text.size() / 1e6,
               base.size(), bytes / 1e6, docs.size());

        // tokenizer for encoding: trained on the corpus itself
        TrainOptions o;
        o.vocab_size = vocab;
        double t0 = now_s();
        Tokenizer tok = tokenizer_train(base, o);
        printf("encoding tokenizer: %u mergeable tokens (trained on %.2f MB in %.2f s)\n", tok.n_mergeable(), text.size() / 1e6, now_s() - t0);

        // splitter alone
        {
            double t = now_s();
            size_t pieces = 0;
            for (auto& d : docs) {
                const uint8_t* s = (const uint8_t*)d.data();
                for (size_t p = 0; p < d.size(); pieces++) p = next_piece(tok.pattern, s, d.size(), p);
            }
            double dt = now_s() - t;
            printf("split    1 thread : %7.1f MB/s (%zu pieces)\n", bytes / 1e6 / dt, pieces);
        }
        bench_encode("corpus (own tokenizer)", tok, docs, bytes);
        tok = Tokenizer();

        bench_train("(a) corpus repeated", docs, bytes, vocab);
        docs.clear();
        docs.shrink_to_fit();
        size_t sb = 0;
        std::vector<std::string> syn = synthetic_docs((size_t)(mb * 1e6), &sb);
        Tokenizer st = bench_train("(b) synthetic Zipf words", syn, sb, vocab);
        bench_encode("synthetic (its tokenizer)", st, syn, sb);
    });
    return 0;
}
