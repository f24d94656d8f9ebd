// prepare_data: raw text -> tokenizer + llm.c token shards (docs/tokenizer.md#prepare-data).
//
//   ./prepare_data --input data/tinyshakespeare.txt --vocab-size 4096     (writes data/tinyshakespeare/)
//
// Inputs (llmc/corpus.h): text files, JSON files (JSON Lines with a "text" field, or one array of
// strings / of objects with "text") and directories of them, walked recursively in sorted order.
// Text is cut into documents at blank lines (CRLF and whitespace-only lines included; --doc-sep
// sets an exact separator, "none" keeps each file whole); empty documents are dropped.
//
// Two streaming passes over the input, so corpora larger than memory work:
//   1. (unless --tokenizer is given) collect training text and train the BPE tokenizer. Document i is
//      a validation candidate iff i % val_every == 0; candidates never train the tokenizer (whether a
//      candidate really lands in val depends on token counts, known only after training), so the
//      tokenizer sees train documents only. Each document is capped at --doc-cap code points and
//      collection stops after the document that takes the total past --max-chars (nanochat's rule).
//      A corpus that is one single document is split by bytes into a val part and a train part.
//   2. encode documents in batches (OpenMP over documents), each as [BOS] + encode_ordinary(text),
//      assign each whole document to val or train in input order (docs/tokenizer.md#val-split)
//      and append it to that split's current shard; a shard is written (uint16 when the vocabulary
//      fits, else uint32) before a document that would push it past --shard-size, so no document
//      spans two shards.
// Output (llmc/datadir.h): the tokenizer (tokenizer.tiktoken + tokenizer.json), the shards and a
// manifest.json listing them all are written to "<out>.tmp.<pid>" and swapped in for <out> only when
// everything succeeded: a failed run (bad input, full disk) leaves the previous <out> untouched, and
// shards of an earlier run can never mix with this one's.
#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "llmc/cli.h"
#include "llmc/corpus.h"
#include "llmc/datadir.h"
#include "llmc/json.h"
#include "llmc/shard.h"
#include "llmc/tokenizer.h"
#include "llmc/utils.h"

using namespace llmc;

// ------------------------------------------------------------------------------------------------
// Output: one writer per split

struct ShardWriter {
    std::string dir, prefix, split;
    int64_t shard_size;
    bool use_u32;
    std::vector<uint32_t> buf;
    int64_t buf_docs = 0;
    int index = 0;
    int64_t total_tokens = 0, total_docs = 0;
    std::vector<ManifestShard> written;  // file names (inside dir), tokens, documents

    ShardWriter(std::string d, std::string p, std::string s, int64_t size, bool u32)
        : dir(std::move(d)), prefix(std::move(p)), split(std::move(s)), shard_size(size), use_u32(u32) {}

    void add(const std::vector<uint32_t>& doc) {
        if (!buf.empty() && (int64_t)(buf.size() + doc.size()) > shard_size) flush();
        buf.insert(buf.end(), doc.begin(), doc.end());
        buf_docs++;
        total_tokens += (int64_t)doc.size();
        total_docs++;
    }
    void flush() {
        if (buf.empty()) return;
        std::string name = strfmt("%s_%s_%06d.bin", prefix.c_str(), split.c_str(), index++);
        shard_write(dir + "/" + name, buf.data(), (int64_t)buf.size(), use_u32);
        written.push_back({name, (int64_t)buf.size(), buf_docs});
        buf.clear();
        buf_docs = 0;
    }
};

static double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char** argv) {
    LLMC_MAIN_GUARD({
        std::string input, out, prefix, format = "auto", doc_sep = "blank", tokenizer_stem, name, on_bad_doc = "error";
        long long vocab_size = 32768, doc_cap = 10000, max_chars = 2000000000LL, val_every = 10,
                  val_max_tokens = 1LL << 26, shard_size = 100000000LL, read_bytes = 16LL << 20;
        int threads = 0;
        Cli cli("prepare_data", "Train (or load) a BPE tokenizer and write llm.c token shards from raw text.\n"
                                "Writes <out>/<prefix>_train_NNNNNN.bin, <out>/<prefix>_val_NNNNNN.bin, <out>/tokenizer.tiktoken,\n"
                                "<out>/tokenizer.json and <out>/manifest.json; a run replaces <out> whole, and only when it succeeds.");
        cli.add("input", &input, "text file(s), JSON Lines / JSON array files (.jsonl/.json, \"text\" field), director(ies) of them (recursive); comma-separated");
        cli.add("out", &out, "output directory, replaced as a whole (default: data/<prefix>)");
        cli.add("prefix", &prefix, "shard name prefix (default: the first input's name without its last extension)");
        cli.add("format", &format, "auto (.jsonl/.json -> JSON, else text), text or jsonl");
        cli.add("doc-sep", &doc_sep, "text documents end at: blank (blank lines, CRLF and spaces/tabs allowed), none (one per file), or an exact string (escapes \\n \\r \\t \\\\)");
        cli.add("on-bad-doc", &on_bad_doc, "a JSON document that cannot be read: error (stop, naming file, line and byte) or skip (count and go on)");
        cli.add("tokenizer", &tokenizer_stem, "load <stem>.tiktoken + <stem>.json instead of training");
        cli.add("vocab-size", &vocab_size, "vocabulary size when training, including the 9 special tokens (smaller if the corpus runs out of pairs)");
        cli.add("doc-cap", &doc_cap, "training: cap each document to this many code points (0: no cap)");
        cli.add("max-chars", &max_chars, "training: stop after the document that takes the total past this many code points");
        cli.add("name", &name, "tokenizer name in the sidecar (default: <prefix>-<n_vocab>)");
        cli.add("val-every", &val_every, "document i is a validation document iff i % K == 0 (0: no validation split); a lone document is split by bytes");
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
        DocOptions dopt = corpus_doc_options(doc_sep, (size_t)read_bytes, on_bad_doc);
#ifdef _OPENMP
        if (threads > 0) omp_set_num_threads(threads);
        int nthreads = omp_get_max_threads();
#else
        int nthreads = 1;
#endif
        if (input.empty()) LLMC_FAIL("--input is required: a text file, a directory or a .jsonl file (comma-separated for several)");
        if (prefix.empty()) prefix = corpus_default_prefix(input.substr(0, input.find(',')));
        if (prefix.find('/') != std::string::npos) LLMC_FAIL("--prefix '%s' must not contain '/'", prefix.c_str());
        if (out.empty()) out = "data/" + prefix;
        // the tokenizer is loaded before anything is staged: it may live in <out> itself
        Tokenizer tok;
        bool trained = tokenizer_stem.empty();
        if (!trained) {
            tok = tokenizer_load(tokenizer_stem);
            fprintf(stderr, "loaded tokenizer '%s' from %s: %u mergeable tokens, n_vocab %u, bos %s = %u\n", tok.name.c_str(),
                    tokenizer_stem.c_str(), tok.n_mergeable(), tok.n_vocab, tok.bos_token.c_str(), tok.bos_id);
        }
        CorpusListing listing = corpus_list(input, format, {corpus_abs_path(out)});
        for (auto& n : listing.notes) fprintf(stderr, "%s\n", n.c_str());
        const std::vector<CorpusInput>& files = listing.files;
        DataDirStage stage(out);  // refuses an <out> holding files that are not ours, before any work
        for (auto& n : stage.notes) fprintf(stderr, "note: %s\n", n.c_str());
        stage.notes.clear();

        try {
            // ---- pass 1: the tokenizer ----
            double t0 = now_s();
            if (trained) {
                Documents ds(files, dopt, val_every);
                std::vector<std::string> train_docs;
                std::string doc;
                int64_t i = 0, chars = 0, bytes = 0, capped = 0;
                while (ds.next(doc)) {
                    bool val_candidate = val_every > 0 && i % val_every == 0;
                    i++;
                    if (val_candidate) continue;
                    // apply the doc cap now so at most doc_cap code points per document are held
                    int64_t cps;
                    size_t keep = utf8_prefix(doc.data(), doc.size(), doc_cap, &cps);
                    if (keep < doc.size()) capped++;
                    doc.resize(keep);
                    chars += cps;
                    bytes += (int64_t)doc.size();
                    train_docs.push_back(std::move(doc));
                    doc.clear();
                    if (chars > max_chars) break;
                }
                if (train_docs.empty())
                    LLMC_FAIL("no training documents for the tokenizer in '%s': the input is empty or every document is a validation "
                              "candidate (--val-every %lld); pass --tokenizer to use an existing one", input.c_str(), val_every);
                std::string held = val_every > 0 ? strfmt("every %lld-th document held out for val", val_every) : std::string("no val split");
                fprintf(stderr, "training tokenizer: vocab %lld on %zu documents (%.1f MB, %lld code points; %s) with %d threads\n",
                        vocab_size, train_docs.size(), bytes / 1e6, (long long)chars, held.c_str(), nthreads);
                if (capped)
                    fprintf(stderr, "note: %lld of %zu training documents were longer than --doc-cap %lld code points; the tokenizer "
                            "trained on their first %lld only (--doc-cap 0: no cap; the shards always hold whole documents)\n",
                            (long long)capped, train_docs.size(), doc_cap, doc_cap);
                TrainOptions o;
                o.vocab_size = vocab_size;
                o.doc_cap = doc_cap;
                o.max_chars = max_chars;
                o.name = "tokenizer";
                o.verbose = true;
                o.threads = nthreads;
                tok = tokenizer_train(train_docs, o);
                fprintf(stderr, "trained in %.1f s: %u merges, n_vocab %u\n", now_s() - t0, tok.n_mergeable() - 256, tok.n_vocab);
                if (tok.n_vocab < vocab_size)
                    fprintf(stderr, "warning: this corpus supports only %u merges, so n_vocab is %u, not --vocab-size %lld; tokenizer.json "
                            "and manifest.json record %u and the trainer takes it from there\n",
                            tok.n_mergeable() - 256, tok.n_vocab, vocab_size, tok.n_vocab);
                tok.name = strfmt("%s-%u", prefix.c_str(), tok.n_vocab);
            }
            if (!name.empty()) tok.name = name;
            tokenizer_save(tok, stage.path("tokenizer"));

            // ---- pass 2: encode and write shards ----
            bool use_u32 = tok.n_vocab > 65536;
            ShardWriter train{stage.tmp, prefix, "train", shard_size, use_u32};
            ShardWriter val{stage.tmp, prefix, "val", shard_size, use_u32};
            Documents ds(files, dopt, val_every);
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
                            llmc::progress_begin(), text_bytes / 1e6, text_bytes / 1e6 / std::max(1e-9, t - t1), (long long)doc_index,
                            (long long)total_tokens, (long long)train.total_tokens, (long long)val.total_tokens, llmc::progress_end());
                }
            }
            llmc::progress_done();
            train.flush();
            val.flush();
            if (doc_index == 0) LLMC_FAIL("--input: no documents found in '%s' (all empty?)", input.c_str());
            if (train.total_docs == 0)
                LLMC_FAIL("every document went to the validation split (%lld documents, --val-every %lld): nothing to train on",
                          (long long)doc_index, val_every);
            for (auto& m : ds.ds.bad_examples) fprintf(stderr, "skipped: %s\n", m.c_str());
            if (ds.ds.bad_docs)
                fprintf(stderr, "warning: --on-bad-doc skip: skipped %lld unreadable document(s)%s\n", (long long)ds.ds.bad_docs,
                        ds.ds.bad_docs > (int64_t)ds.ds.bad_examples.size() ? " (the first ones are listed above)" : "");

            // ---- manifest last, then swap the directory in ----
            DataManifest man;
            man.tokenizer_name = tok.name;
            man.tokenizer_fingerprint = tokenizer_fingerprint(tok);
            man.n_vocab = tok.n_vocab;
            man.bos_id = tok.bos_id;
            man.vocab_size_requested = trained ? vocab_size : -1;
            man.token_type = use_u32 ? "uint32" : "uint16";
            man.train = train.written;
            man.val = val.written;
            write_file_atomic(stage.path(kManifestName), json_dump(manifest_json(man), 2) + "\n");
            stage.commit();
            for (auto& n : stage.notes) fprintf(stderr, "note: %s\n", n.c_str());

            // ---- summary ----
            std::string asked = trained && tok.n_vocab != vocab_size ? strfmt(" (--vocab-size %lld asked; the corpus ran out of pairs)", vocab_size) : "";
            printf("tokenizer: %s/tokenizer.tiktoken + %s/tokenizer.json ('%s', n_vocab %u%s, bos %u, %s shards)\n", out.c_str(),
                   out.c_str(), tok.name.c_str(), tok.n_vocab, asked.c_str(), tok.bos_id, use_u32 ? "uint32" : "uint16");
            for (ShardWriter* w : {&train, &val}) {
                for (auto& s : w->written) printf("  %s/%s: %lld tokens\n", out.c_str(), s.file.c_str(), (long long)s.tokens);
                printf("%s: %lld documents, %lld tokens in %zu shard(s)\n", w->split.c_str(), (long long)w->total_docs,
                       (long long)w->total_tokens, w->written.size());
            }
            if (ds.lone_val_bytes >= 0)
                printf("note: the input is a single document: its first %lld bytes went to val, the other %lld "
                       "bytes to train (--val-every 0: all of it to train)\n", (long long)ds.lone_val_bytes, (long long)ds.lone_train_bytes);
            if (val.total_docs == 0) printf("warning: the validation split is empty\n");
            int64_t text_tokens = total_tokens - doc_index;  // without the BOS of each document
            printf("%lld documents, %.1f MB of text, %lld tokens: %.3f bytes per token (BOS excluded); %s/%s; %.1f s\n", (long long)doc_index,
                   text_bytes / 1e6, (long long)total_tokens, text_tokens > 0 ? (double)text_bytes / text_tokens : 0.0, out.c_str(),
                   kManifestName, now_s() - t0);
        } catch (const Error& e) {
            if (stage.committed) throw;
            fail(std::string(e.what()) + (stage.existed ? strfmt(" ('%s' keeps its previous contents)", out.c_str())
                                                        : strfmt(" (nothing was written to '%s')", out.c_str())));
        }
    });
    return 0;
}
