// prepare_data: raw text -> tokenizer + llm.c token shards (tokenizer_data.md §3.1, §6).
//
//   ./prepare_data --input data/tinyshakespeare.txt --out data/tinyshakespeare --vocab-size 4096
//
// Inputs are plain text files, directories of them (read in sorted name order), or JSON Lines files
// (.jsonl / .json: one document per line from its "text" field). Plain text is cut into documents at
// "\n\n" (--doc-sep; "none" keeps each file whole); empty documents are dropped.
//
// Two streaming passes over the input, so corpora larger than memory work:
//   1. (unless --tokenizer is given) collect training text and train the BPE tokenizer. Document i is
//      a validation candidate iff i % val_every == 0; candidates never train the tokenizer (whether a
//      candidate really lands in val depends on token counts, known only after training), so the
//      tokenizer sees train documents only. Each document is capped at --doc-cap code points and
//      collection stops after the document that takes the total past --max-chars (nanochat's rule).
//   2. encode documents in batches (OpenMP over documents), each as [BOS] + encode_ordinary(text),
//      assign each whole document to val or train in input order (§6.3) and append it to that
//      split's current shard; a shard is written (uint16 when the vocabulary fits, else uint32)
//      before a document that would push it past --shard-size, so no document spans two shards.
// The tokenizer is saved next to the shards as <out>/tokenizer.tiktoken + <out>/tokenizer.json.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "llmc/cli.h"
#include "llmc/json.h"
#include "llmc/shard.h"
#include "llmc/tokenizer.h"
#include "llmc/utils.h"

using namespace llmc;

// ------------------------------------------------------------------------------------------------
// Input: files -> documents, streamed in 16 MB reads

struct InputFile {
    std::string path;
    bool jsonl;
};

static bool ends_with(const std::string& s, const std::string& suf) {
    return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

static std::vector<InputFile> list_inputs(const std::string& spec, const std::string& format) {
    if (format != "auto" && format != "text" && format != "jsonl")
        LLMC_FAIL("--format must be auto, text or jsonl, got '%s'", format.c_str());
    std::vector<std::string> paths;
    size_t p = 0;
    while (p <= spec.size()) {
        size_t c = spec.find(',', p);
        if (c == std::string::npos) c = spec.size();
        std::string item = spec.substr(p, c - p);
        p = c + 1;
        if (item.empty()) continue;
        struct stat st;
        if (stat(item.c_str(), &st) != 0) LLMC_FAIL("--input: '%s' does not exist", item.c_str());
        if (S_ISDIR(st.st_mode)) {
            DIR* d = opendir(item.c_str());
            if (!d) LLMC_FAIL("--input: cannot read directory '%s'", item.c_str());
            std::vector<std::string> names;
            while (dirent* e = readdir(d)) {
                std::string n = e->d_name;
                if (n.empty() || n[0] == '.') continue;  // hidden files, . and ..
                std::string full = item + "/" + n;
                struct stat fs;
                if (stat(full.c_str(), &fs) == 0 && S_ISREG(fs.st_mode)) names.push_back(full);
            }
            closedir(d);
            std::sort(names.begin(), names.end());
            if (names.empty()) LLMC_FAIL("--input: directory '%s' has no files", item.c_str());
            paths.insert(paths.end(), names.begin(), names.end());
        } else {
            paths.push_back(item);
        }
    }
    if (paths.empty()) LLMC_FAIL("--input is required: a text file, a directory or a .jsonl file (comma-separated for several)");
    std::vector<InputFile> out;
    for (auto& path : paths) {
        bool jl = format == "jsonl" || (format == "auto" && (ends_with(path, ".jsonl") || ends_with(path, ".json")));
        out.push_back({path, jl});
    }
    return out;
}

// "\n\n" as typed on a command line -> the two newline characters.
static std::string unescape(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] != '\\' || i + 1 == s.size()) { out += s[i]; continue; }
        char c = s[++i];
        if (c == 'n') out += '\n';
        else if (c == 'r') out += '\r';
        else if (c == 't') out += '\t';
        else if (c == '\\') out += '\\';
        else LLMC_FAIL("--doc-sep: unknown escape '\\%c' (use \\n, \\r, \\t or \\\\)", c);
    }
    return out;
}

struct DocStream {
    std::vector<InputFile> files;
    std::string sep;  // empty: the whole file is one document
    size_t fi = 0;
    std::unique_ptr<File> f;  // File is move-only without assignment: hold it by pointer
    bool eof = true;
    std::string buf;
    size_t pos = 0, scan = 0;
    int64_t line = 0;         // jsonl line number in the current file
    int64_t bytes_read = 0;
    size_t read_size;  // bytes per read (16 MB; tests use a few bytes to exercise block boundaries)

    DocStream(std::vector<InputFile> fs, std::string s, size_t read_bytes)
        : files(std::move(fs)), sep(std::move(s)), read_size(read_bytes) { open_current(); }

    void open_current() {
        buf.clear();
        pos = scan = 0;
        line = 0;
        if (fi < files.size()) {
            f.reset(new File(files[fi].path, "rb"));
            eof = false;
        }
    }
    bool fill() {
        if (eof) return false;
        buf.erase(0, pos);
        scan -= std::min(scan, pos);
        pos = 0;
        size_t old = buf.size();
        buf.resize(old + read_size);
        size_t got = fread(&buf[old], 1, read_size, f->f);
        buf.resize(old + got);
        bytes_read += (int64_t)got;
        if (got < read_size) {
            if (ferror(f->f)) LLMC_FAIL("'%s': read error", f->path.c_str());
            eof = true;
        }
        return got > 0;
    }
    // Next raw record of the current file (a document for text, a line for jsonl); false at EOF.
    bool next_record(std::string& rec, const std::string& delim) {
        for (;;) {
            if (!delim.empty()) {
                size_t at = buf.find(delim, std::max(pos, scan));
                if (at != std::string::npos) {
                    rec.assign(buf, pos, at - pos);
                    pos = at + delim.size();
                    scan = pos;
                    return true;
                }
                // a separator may straddle the end of the buffer: rescan its last delim-1 bytes
                scan = buf.size() >= delim.size() ? std::max(pos, buf.size() - delim.size() + 1) : pos;
            }
            if (!fill()) break;
        }
        if (pos < buf.size()) {
            rec.assign(buf, pos, buf.size() - pos);
            pos = buf.size();
            return true;
        }
        return false;
    }
    // Next non-empty document; false when every input is exhausted.
    bool next(std::string& doc) {
        std::string rec;
        while (fi < files.size()) {
            const InputFile& in = files[fi];
            if (in.jsonl) {
                while (next_record(rec, "\n")) {
                    line++;
                    if (!rec.empty() && rec.back() == '\r') rec.pop_back();
                    if (rec.find_first_not_of(" \t") == std::string::npos) continue;
                    std::string what = strfmt("%s line %lld", in.path.c_str(), (long long)line);
                    Json j = json_parse(rec, what);
                    const Json* t = j.is_object() ? j.find("text") : nullptr;
                    if (!t) LLMC_FAIL("%s: no \"text\" field (expected a JSON object with a string \"text\")", what.c_str());
                    if (!t->is_string()) LLMC_FAIL("%s: \"text\" has type %s, expected string", what.c_str(), t->type_name());
                    if (t->s.empty()) continue;
                    doc = t->s;
                    return true;
                }
            } else {
                while (next_record(rec, sep)) {
                    if (rec.empty()) continue;
                    doc.swap(rec);
                    return true;
                }
            }
            f.reset();
            fi++;
            open_current();
        }
        return false;
    }
};

// ------------------------------------------------------------------------------------------------
// Output: one writer per split

struct ShardWriter {
    std::string dir, prefix, split;
    int64_t shard_size;
    bool use_u32;
    std::vector<uint32_t> buf;
    int index = 0;
    int64_t total_tokens = 0, total_docs = 0;
    std::vector<std::pair<std::string, int64_t>> written;

    ShardWriter(std::string d, std::string p, std::string s, int64_t size, bool u32)
        : dir(std::move(d)), prefix(std::move(p)), split(std::move(s)), shard_size(size), use_u32(u32) {}

    void add(const std::vector<uint32_t>& doc) {
        if (!buf.empty() && (int64_t)(buf.size() + doc.size()) > shard_size) flush();
        buf.insert(buf.end(), doc.begin(), doc.end());
        total_tokens += (int64_t)doc.size();
        total_docs++;
    }
    void flush() {
        if (buf.empty()) return;
        std::string path = strfmt("%s/%s_%s_%06d.bin", dir.c_str(), prefix.c_str(), split.c_str(), index++);
        shard_write(path, buf.data(), (int64_t)buf.size(), use_u32);
        written.push_back({path, (int64_t)buf.size()});
        buf.clear();
    }
};

static double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static std::string file_stem(const std::string& path) {
    std::string base = path;
    while (base.size() > 1 && base.back() == '/') base.pop_back();
    size_t sl = base.rfind('/');
    if (sl != std::string::npos) base = base.substr(sl + 1);
    size_t dot = base.find('.');
    if (dot != std::string::npos && dot > 0) base = base.substr(0, dot);
    return base.empty() ? std::string("data") : base;
}

int main(int argc, char** argv) {
    LLMC_MAIN_GUARD({
        std::string input, out = "data", prefix, format = "auto", doc_sep = "\\n\\n", tokenizer_stem, name;
        long long vocab_size = 32768, doc_cap = 10000, max_chars = 2000000000LL, val_every = 10,
                  val_max_tokens = 1LL << 26, shard_size = 100000000LL, read_bytes = 16LL << 20;
        int threads = 0;
        Cli cli("prepare_data", "Train (or load) a BPE tokenizer and write llm.c token shards from raw text.\n"
                                "Outputs <out>/<prefix>_train_NNNNNN.bin, <out>/<prefix>_val_NNNNNN.bin and\n"
                                "<out>/tokenizer.tiktoken + <out>/tokenizer.json.");
        cli.add("input", &input, "text file(s), director(ies) of them, or .jsonl files with a \"text\" field; comma-separated");
        cli.add("out", &out, "output directory (created if missing)");
        cli.add("prefix", &prefix, "shard name prefix (default: the first input's name without extension)");
        cli.add("format", &format, "auto (.jsonl/.json -> JSON Lines, else text), text or jsonl");
        cli.add("doc-sep", &doc_sep, "document separator in text files (escapes \\n \\r \\t \\\\), or none (one document per file)");
        cli.add("tokenizer", &tokenizer_stem, "load <stem>.tiktoken + <stem>.json instead of training");
        cli.add("vocab-size", &vocab_size, "vocabulary size when training, including the 9 special tokens");
        cli.add("doc-cap", &doc_cap, "training: cap each document to this many code points (0: no cap)");
        cli.add("max-chars", &max_chars, "training: stop after the document that takes the total past this many code points");
        cli.add("name", &name, "tokenizer name in the sidecar (default: <prefix>-<vocab-size>)");
        cli.add("val-every", &val_every, "document i is a validation document iff i % K == 0 (0: no validation split)");
        cli.add("val-max-tokens", &val_max_tokens, "stop adding validation documents once val holds this many tokens");
        cli.add("shard-size", &shard_size, "maximum tokens per shard (a longer document gets a shard of its own)");
        cli.add("threads", &threads, "threads for training and encoding (0: all cores)");
        cli.add("read-bytes", &read_bytes, "input read block size in bytes (tests use tiny blocks to exercise boundaries)");
        if (!cli.parse(argc, argv)) return 0;

        if (vocab_size < 1) LLMC_FAIL("--vocab-size must be positive, got %lld", vocab_size);
        if (doc_cap < 0) LLMC_FAIL("--doc-cap must be >= 0, got %lld", doc_cap);
        if (max_chars < 1) LLMC_FAIL("--max-chars must be positive, got %lld", max_chars);
        if (val_every < 0) LLMC_FAIL("--val-every must be >= 0, got %lld", val_every);
        if (val_max_tokens < 0) LLMC_FAIL("--val-max-tokens must be >= 0, got %lld", val_max_tokens);
        if (shard_size < 1 || shard_size > SHARD_MAX_TOKENS)
            LLMC_FAIL("--shard-size must be in 1..%lld, got %lld", (long long)SHARD_MAX_TOKENS, shard_size);
        if (read_bytes < 1 || read_bytes > (1LL << 30)) LLMC_FAIL("--read-bytes must be in 1..2^30, got %lld", read_bytes);
        if (threads < 0) LLMC_FAIL("--threads must be >= 0, got %d", threads);
#ifdef _OPENMP
        if (threads > 0) omp_set_num_threads(threads);
        int nthreads = omp_get_max_threads();
#else
        int nthreads = 1;
#endif
        std::vector<InputFile> files = list_inputs(input, format);
        std::string sep = doc_sep == "none" ? std::string() : unescape(doc_sep);
        if (doc_sep != "none" && sep.empty()) LLMC_FAIL("--doc-sep is empty (use none for one document per file)");
        if (prefix.empty()) prefix = file_stem(input.substr(0, input.find(',')));
        make_dirs(out, "--out");

        // ---- pass 1: the tokenizer ----
        Tokenizer tok;
        double t0 = now_s();
        if (!tokenizer_stem.empty()) {
            tok = tokenizer_load(tokenizer_stem);
            fprintf(stderr, "loaded tokenizer '%s' from %s: %u mergeable tokens, n_vocab %u, bos %s = %u\n", tok.name.c_str(),
                    tokenizer_stem.c_str(), tok.n_mergeable(), tok.n_vocab, tok.bos_token.c_str(), tok.bos_id);
        } else {
            DocStream ds(files, sep, (size_t)read_bytes);
            std::vector<std::string> train_docs;
            std::string doc;
            int64_t i = 0, chars = 0, bytes = 0;
            while (ds.next(doc)) {
                bool val_candidate = val_every > 0 && i % val_every == 0;
                i++;
                if (val_candidate) continue;
                // apply the doc cap now so at most doc_cap code points per document are held
                int64_t cps;
                doc.resize(utf8_prefix(doc.data(), doc.size(), doc_cap, &cps));
                chars += cps;
                bytes += (int64_t)doc.size();
                train_docs.push_back(std::move(doc));
                doc.clear();
                if (chars > max_chars) break;
            }
            if (train_docs.empty())
                LLMC_FAIL("no training documents for the tokenizer in '%s': the input is empty or every document is a validation "
                          "candidate (--val-every %lld); pass --tokenizer to use an existing one", input.c_str(), val_every);
            fprintf(stderr, "training tokenizer: vocab %lld on %zu documents (%.1f MB, %lld code points; every %lld-th document held out for val) with %d threads\n",
                    vocab_size, train_docs.size(), bytes / 1e6, (long long)chars, val_every, nthreads);
            TrainOptions o;
            o.vocab_size = vocab_size;
            o.doc_cap = doc_cap;
            o.max_chars = max_chars;
            o.name = name.empty() ? strfmt("%s-%lld", prefix.c_str(), vocab_size) : name;
            o.verbose = true;
            o.threads = nthreads;
            tok = tokenizer_train(train_docs, o);
            fprintf(stderr, "trained in %.1f s: %u merges, n_vocab %u\n", now_s() - t0, tok.n_mergeable() - 256, tok.n_vocab);
        }
        if (!name.empty()) tok.name = name;
        tokenizer_save(tok, out + "/tokenizer");

        // ---- pass 2: encode and write shards ----
        bool use_u32 = tok.n_vocab > 65536;
        ShardWriter train{out, prefix, "train", shard_size, use_u32};
        ShardWriter val{out, prefix, "val", shard_size, use_u32};
        DocStream ds(files, sep, (size_t)read_bytes);
        std::vector<std::string> batch;
        std::vector<std::vector<uint32_t>> enc;
        int64_t doc_index = 0, text_bytes = 0, total_tokens = 0;
        double t1 = now_s(), last_print = 0;
        const size_t kBatchBytes = 32 << 20;
        bool more = true;
        while (more) {
            batch.clear();
            size_t bb = 0;
            std::string doc;
            while (bb < kBatchBytes && batch.size() < 200000 && (more = ds.next(doc))) {
                bb += doc.size();
                batch.push_back(std::move(doc));
                doc.clear();
            }
            if (batch.empty()) break;
            encode_batch(tok, batch, enc, true, nthreads);
            for (size_t k = 0; k < batch.size(); k++, doc_index++) {
                if ((int64_t)enc[k].size() > SHARD_MAX_TOKENS)
                    LLMC_FAIL("document %lld has %zu tokens, more than a shard can hold (2^31 - 1)", (long long)doc_index, enc[k].size());
                bool to_val = val_every > 0 && doc_index % val_every == 0 && val.total_tokens < val_max_tokens;
                (to_val ? val : train).add(enc[k]);
                total_tokens += (int64_t)enc[k].size();
            }
            text_bytes += (int64_t)bb;
            double t = now_s();
            if (t - last_print > 1.0 || !more) {
                last_print = t;
                fprintf(stderr, "%sencoding: %.1f MB at %.1f MB/s, %lld documents, %lld tokens (train %lld, val %lld)   %s",
                        llmc::progress_begin(), text_bytes / 1e6, text_bytes / 1e6 / std::max(1e-9, t - t1), (long long)doc_index, (long long)total_tokens,
                        (long long)train.total_tokens, (long long)val.total_tokens, llmc::progress_end());
            }
        }
        llmc::progress_done();
        train.flush();
        val.flush();
        if (doc_index == 0) LLMC_FAIL("--input: no documents found in '%s' (all empty?)", input.c_str());
        if (train.total_docs == 0) LLMC_FAIL("every document went to the validation split (%lld documents, --val-every %lld): nothing to train on",
                                             (long long)doc_index, val_every);

        // ---- summary ----
        printf("tokenizer: %s/tokenizer.tiktoken + %s/tokenizer.json ('%s', n_vocab %u, bos %u, %s shards)\n", out.c_str(),
               out.c_str(), tok.name.c_str(), tok.n_vocab, tok.bos_id, use_u32 ? "uint32" : "uint16");
        for (ShardWriter* w : {&train, &val}) {
            for (auto& s : w->written) printf("  %s: %lld tokens\n", s.first.c_str(), (long long)s.second);
            printf("%s: %lld documents, %lld tokens in %zu shard(s)\n", w->split.c_str(), (long long)w->total_docs,
                   (long long)w->total_tokens, w->written.size());
        }
        if (val.total_docs == 0) printf("warning: the validation split is empty\n");
        int64_t text_tokens = total_tokens - doc_index;  // without the BOS of each document
        printf("%lld documents, %.1f MB of text, %lld tokens: %.3f bytes per token (BOS excluded); %.1f s\n", (long long)doc_index,
               text_bytes / 1e6, (long long)total_tokens, text_tokens > 0 ? (double)text_bytes / text_tokens : 0.0, now_s() - t0);
    });
    return 0;
}
