// dataloader.h: the training/validation data loader over llm.c token shards (docs/tokenizer.md#loader).
//
// Per call, next_batch() writes inputs and targets, both (B, T) int32, for one rank. The output is a
// pure function of (files, B, T, world size W, rank, mode, saved state): no randomness, no threads.
//
// Two modes:
//  - BESTFIT (default, nanochat's BOS-aligned best-fit packing,
//    docs/tokenizer.md#bestfit). A document is a run of tokens
//    from a BOS up to (not including) the next BOS or the end of its file; tokens before a file's
//    first BOS are skipped. Each file's documents are dealt to ranks in groups of 1024 (group g ->
//    rank g mod W); a rank walks files in sorted order, its groups in order, documents in order, and
//    wraps to the first file (epoch + 1) after the last. Pending documents wait in an ordered buffer
//    topped up to 1000 before every placement. A row has room for T+1 tokens; while it has room, the
//    longest buffered document that fits is appended whole (first in buffer order on ties), and when
//    none fits the shortest one (first on ties) is cropped to fill the row. inputs = row[0:T],
//    targets = row[1:T+1], so every row starts with BOS.
//  - CONTIGUOUS (llm.c's DataLoader, docs/tokenizer.md#contiguous). In the current file, sample k
//    of rank r is the B*T+1 tokens at offset k*W*B*T + r*B*T; floor((ntok-1)/(W*B*T)) samples per
//    file, the tail skipped.
//
// Files are checked (header, exact size) at init and mapped read-only on first use; the first use
// of a file also scans it once to check every id < vocab_size and, in best-fit mode, to record the
// offsets of its BOS tokens (the document index: 4 bytes per document). Nothing else is kept in
// memory: buffered documents are (file, document) pairs and are copied out of the mapping only when
// placed, so a loader over terabytes of shards costs a few MB of RAM.
//
// State (for bit-exact resume): epoch, file index, next document index (best-fit) or sample index
// k (contiguous), and the buffer as (file, document) pairs. get_state()/set_state(); the state
// serializes to a flat list of int64 for the checkpoint's JSON meta. set_state() checks every index
// against the files and fails with a clear message instead of reading out of range.
#pragma once
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "llmc/shard.h"
#include "llmc/utils.h"

namespace llmc {

enum class LoaderMode : int { BESTFIT = 0, CONTIGUOUS = 1 };

constexpr int LOADER_BUFFER_SIZE = 1000;  // documents held for best-fit choices (nanochat: 1000-1127)
constexpr int LOADER_GROUP_DOCS = 1024;   // documents per rank-sharding group (a nanochat row group)

// ---- loader state: plain data, saved in the checkpoint meta ----

struct LoaderState {
    LoaderMode mode = LoaderMode::BESTFIT;
    // the configuration the state belongs to (checked on restore)
    int64_t world = 1, rank = 0, B = 0, T = 0, nfiles = 0;
    // position in the rank's stream
    int64_t epoch = 0;
    int64_t file = 0;
    int64_t pos = 0;  // best-fit: next document index in `file`; contiguous: next sample index k in `file`
    std::vector<std::pair<int64_t, int64_t>> buffer;  // best-fit: (file index, document index), buffer order
};

// Flat form: [tag, format version, mode, world, rank, B, T, nfiles, epoch, file, pos, nbuf,
//             file_0, doc_0, file_1, doc_1, ...]
constexpr int64_t LOADER_STATE_TAG = 0x4c4f4144;  // "LOAD": catches a list that is not a loader state
constexpr int64_t LOADER_STATE_VERSION = 1;
constexpr size_t LOADER_STATE_FIXED = 12;

inline std::vector<int64_t> loader_state_to_ints(const LoaderState& s) {
    std::vector<int64_t> v = {LOADER_STATE_TAG, LOADER_STATE_VERSION, (int64_t)s.mode, s.world, s.rank, s.B, s.T,
                              s.nfiles, s.epoch, s.file, s.pos, (int64_t)s.buffer.size()};
    for (const auto& d : s.buffer) { v.push_back(d.first); v.push_back(d.second); }
    return v;
}

// Structural checks only; set_state() checks the indices against the files.
inline LoaderState loader_state_from_ints(const std::vector<int64_t>& v) {
    LLMC_CHECK(v.size() >= LOADER_STATE_FIXED, "loader state: %zu numbers, a loader state has at least %zu", v.size(),
               LOADER_STATE_FIXED);
    LLMC_CHECK(v[0] == LOADER_STATE_TAG, "loader state: element 0 is %lld, not the loader state tag %lld", (long long)v[0],
               (long long)LOADER_STATE_TAG);
    LLMC_CHECK(v[1] == LOADER_STATE_VERSION, "loader state: format version %lld, this build reads version %lld",
               (long long)v[1], (long long)LOADER_STATE_VERSION);
    LLMC_CHECK(v[2] == 0 || v[2] == 1, "loader state: mode %lld, expected 0 (best-fit) or 1 (contiguous)", (long long)v[2]);
    int64_t nbuf = v[11];
    LLMC_CHECK(nbuf >= 0 && nbuf <= LOADER_BUFFER_SIZE && v.size() == LOADER_STATE_FIXED + 2 * (size_t)nbuf,
               "loader state: buffer length %lld does not match the %zu numbers given (expected %zu + 2 x length, length <= %d)",
               (long long)nbuf, v.size(), LOADER_STATE_FIXED, LOADER_BUFFER_SIZE);
    LoaderState s;
    s.mode = (LoaderMode)v[2];
    s.world = v[3]; s.rank = v[4]; s.B = v[5]; s.T = v[6]; s.nfiles = v[7];
    s.epoch = v[8]; s.file = v[9]; s.pos = v[10];
    for (int64_t i = 0; i < nbuf; i++) s.buffer.emplace_back(v[LOADER_STATE_FIXED + 2 * i], v[LOADER_STATE_FIXED + 2 * i + 1]);
    return s;
}

// The same numbers as a comma-separated string (for a meta file that prefers strings).
inline std::string loader_state_to_string(const LoaderState& s) {
    std::string out;
    for (int64_t x : loader_state_to_ints(s)) {
        if (!out.empty()) out += ',';
        out += std::to_string(x);
    }
    return out;
}

inline LoaderState loader_state_from_string(const std::string& str) {
    std::vector<int64_t> v;
    size_t i = 0;
    while (i < str.size()) {
        size_t j = str.find(',', i);
        if (j == std::string::npos) j = str.size();
        std::string tok = str.substr(i, j - i);
        char* end = nullptr;
        errno = 0;
        long long x = strtoll(tok.c_str(), &end, 10);
        LLMC_CHECK(!tok.empty() && end && *end == '\0' && errno == 0,
                   "loader state: element %zu ('%s') is not an integer", v.size(), tok.c_str());
        v.push_back(x);
        i = j + 1;
    }
    return loader_state_from_ints(v);
}

// ---- the loader ----

struct DataLoader {
    // configuration
    std::vector<ShardInfo> files;  // sorted by path
    int B = 0, T = 0, rank = 0, world = 1;
    LoaderMode mode = LoaderMode::BESTFIT;
    int bos_id = -1;
    int vocab_size = 0;
    std::string name = "train";  // used in notes and warnings ("train", "val")
    bool quiet = false;          // suppress notes (never errors)
    bool warn_on_wrap = false;   // validation loader: warn once if the requested batches need a second pass

    // per file, filled on first use
    struct FileData {
        ShardMap map;
        bool scanned = false;
        std::vector<uint32_t> starts;  // best-fit: token offsets of the BOS tokens = document starts
    };
    std::vector<FileData> fd;
    int64_t skipped_prefix_tokens = 0;  // total tokens before first BOS in the files scanned so far

    // stream position (see LoaderState)
    int64_t epoch = 0, file = 0, pos = 0;
    struct BufDoc { int32_t file, doc, len; };
    std::vector<BufDoc> buffer;  // best-fit: pending documents, in insertion order
    std::vector<int> row;        // scratch: one row (best-fit, T+1) or one sample (contiguous, B*T+1)
    bool warned_wrap = false;
    bool noted_prefix = false;

    int64_t ndocs(int64_t f) const { return (int64_t)fd[f].starts.size(); }
    int64_t doc_len(int64_t f, int64_t d) const {
        const auto& st = fd[f].starts;
        int64_t end = d + 1 < (int64_t)st.size() ? (int64_t)st[d + 1] : files[f].ntok;
        return end - (int64_t)st[d];
    }
    int64_t samples_per_file(int64_t f) const { return (files[f].ntok - 1) / ((int64_t)world * B * T); }

    // Glob form: the pattern's matches, sorted.
    void init(const std::string& pattern, int B_, int T_, int rank_, int world_, LoaderMode mode_, int bos_id_,
              int vocab_size_, const std::string& bos_source = "--bos-id") {
        init(glob_files(pattern), B_, T_, rank_, world_, mode_, bos_id_, vocab_size_, bos_source);
    }

    // List form: the files are used in sorted order whatever order they are given in
    // (docs/tokenizer.md#loader).
    // bos_source names where bos_id came from, for the error message (e.g. "tokenizer 'x.json' bos_token").
    void init(std::vector<std::string> paths, int B_, int T_, int rank_, int world_, LoaderMode mode_, int bos_id_,
              int vocab_size_, const std::string& bos_source = "--bos-id") {
        LLMC_CHECK(!paths.empty(), "%s loader: no input files given", name.c_str());
        LLMC_CHECK(B_ >= 1 && T_ >= 1, "%s loader: B=%d and T=%d must both be >= 1", name.c_str(), B_, T_);
        LLMC_CHECK(world_ >= 1 && rank_ >= 0 && rank_ < world_, "%s loader: rank %d is not in [0, world size %d)",
                   name.c_str(), rank_, world_);
        LLMC_CHECK(vocab_size_ >= 1, "%s loader: vocab_size %d must be >= 1", name.c_str(), vocab_size_);
        B = B_; T = T_; rank = rank_; world = world_; mode = mode_; bos_id = bos_id_; vocab_size = vocab_size_;
        std::sort(paths.begin(), paths.end());
        files.clear();
        fd.clear();
        for (const auto& p : paths) files.push_back(shard_open_check(p));
        fd.resize(files.size());
        skipped_prefix_tokens = 0;
        noted_prefix = false;
        warned_wrap = false;

        if (bos_id >= vocab_size)
            LLMC_FAIL("BOS id %d (from %s) is not below the vocabulary size %d", bos_id, bos_source.c_str(), vocab_size);
        if (mode == LoaderMode::BESTFIT) {
            LLMC_CHECK(bos_id >= 0, "%s loader: best-fit packing needs a BOS id (from %s), got %d", name.c_str(),
                       bos_source.c_str(), bos_id);
            // Find a file that gives this rank a document: its first group is group `rank` of some file.
            // Usually that is the first file, so start-up scans one file, not the whole data set.
            bool found = false;
            for (int64_t f = 0; f < (int64_t)files.size() && !found; f++) {
                scan_file(f);
                found = ndocs(f) > (int64_t)rank * LOADER_GROUP_DOCS;
            }
            if (!found) {
                int64_t total_docs = 0, total_groups = 0, max_groups = 0;
                for (int64_t f = 0; f < (int64_t)files.size(); f++) {
                    int64_t g = (ndocs(f) + LOADER_GROUP_DOCS - 1) / LOADER_GROUP_DOCS;
                    total_docs += ndocs(f);
                    total_groups += g;
                    max_groups = std::max(max_groups, g);
                }
                if (total_docs == 0) {
                    std::string list;
                    for (size_t i = 0; i < files.size() && i < 3; i++) list += (i ? ", '" : "'") + files[i].path + "'";
                    if (files.size() > 3) list += strfmt(" and %zu more", files.size() - 3);
                    LLMC_FAIL("%s loader: no BOS token (id %d) in any of the %zu files (%s); best-fit packing needs "
                              "documents that start with BOS (check --bos-id or use --loader contiguous)",
                              name.c_str(), bos_id, files.size(), list.c_str());
                }
                LLMC_FAIL("%s loader: rank %d of world size %d gets no documents: the files hold %lld documents in %lld "
                          "groups of %d (at most %lld groups in one file, and group g of a file goes to rank g mod %d)",
                          name.c_str(), rank, world, (long long)total_docs, (long long)total_groups, LOADER_GROUP_DOCS,
                          (long long)max_groups, world);
            }
            row.assign((size_t)T + 1, 0);
        } else {
            int64_t need = (int64_t)world * B * T + 1;
            for (const auto& s : files)
                if (s.ntok < need)
                    LLMC_FAIL("'%s': %lld tokens, too few for one batch in contiguous mode: need W*B*T+1 = %d*%d*%d+1 = %lld",
                              s.path.c_str(), (long long)s.ntok, world, B, T, (long long)need);
            row.assign((size_t)B * T + 1, 0);
        }
        buffer.reserve(LOADER_BUFFER_SIZE);
        reset();
    }

    // Back to the initial state (the validation loader restarts here at every evaluation).
    void reset() {
        epoch = 0;
        file = 0;
        pos = 0;
        buffer.clear();
    }

    // First use of a file: map it, check every token id, index its documents (best-fit).
    void scan_file(int64_t f) {
        FileData& d = fd[f];
        if (d.scanned) return;
        d.map.open(files[f]);
        d.starts.clear();
        int64_t bos = mode == LoaderMode::BESTFIT ? bos_id : -1;
        shard_scan(d.map, vocab_size, bos, [&](int64_t i) { d.starts.push_back((uint32_t)i); });
        d.starts.shrink_to_fit();
        d.scanned = true;
        if (mode == LoaderMode::BESTFIT) {
            int64_t skipped = d.starts.empty() ? files[f].ntok : (int64_t)d.starts[0];
            skipped_prefix_tokens += skipped;
            if (skipped > 0 && !noted_prefix && !quiet && rank == 0)
                fprintf(stderr, "note: %s loader: '%s' has %lld tokens before its first BOS (id %d) (the tail of a document "
                        "split across files); they are skipped, as are such tokens in other files (no further notes)\n",
                        name.c_str(), files[f].path.c_str(), (long long)skipped, bos_id);
            if (skipped > 0) noted_prefix = true;
        }
    }

    void on_wrap() {
        epoch++;
        if (warn_on_wrap && !warned_wrap) {
            fprintf(stderr, "warning: %s loader (rank %d): wrapped around to the first file; the requested batches need "
                    "more than one pass over the %s data\n", name.c_str(), rank, name.c_str());
            warned_wrap = true;
        }
    }

    // Best-fit: the next document of this rank's stream (files in order, this rank's groups, documents
    // in order, wrapping around). Terminates because init() found at least one document for this rank.
    BufDoc next_doc() {
        for (;;) {
            scan_file(file);
            int64_t n = ndocs(file);
            if (pos < n) {
                int64_t g = pos / LOADER_GROUP_DOCS;
                int64_t owner = g % world;
                if (owner == rank) {
                    BufDoc d{(int32_t)file, (int32_t)pos, (int32_t)doc_len(file, pos)};
                    pos++;
                    return d;
                }
                pos = (g + (rank - owner + world) % world) * LOADER_GROUP_DOCS;  // skip to this rank's next group
                continue;
            }
            file++;
            pos = 0;
            if (file == (int64_t)files.size()) { file = 0; on_wrap(); }
        }
    }

    void next_batch(int* inputs, int* targets) {
        if (mode == LoaderMode::BESTFIT) next_batch_bestfit(inputs, targets);
        else next_batch_contiguous(inputs, targets);
    }

    void next_batch_bestfit(int* inputs, int* targets) {
        const int cap = T + 1;
        int* r = row.data();
        for (int b = 0; b < B; b++) {
            int n = 0;
            while (n < cap) {
                while ((int)buffer.size() < LOADER_BUFFER_SIZE) buffer.push_back(next_doc());
                const int remaining = cap - n;
                // One pass finds both candidates. Strict comparisons keep the first in buffer order on ties.
                int best = -1, best_len = -1, shortest = 0, short_len = INT_MAX;
                for (int i = 0; i < (int)buffer.size(); i++) {
                    int len = buffer[i].len;
                    if (len <= remaining && len > best_len) { best = i; best_len = len; }
                    if (len < short_len) { shortest = i; short_len = len; }
                }
                int pick = best >= 0 ? best : shortest;
                const BufDoc d = buffer[pick];
                int take = best >= 0 ? d.len : remaining;  // crop: the rest of the document is discarded
                fd[d.file].map.copy_tokens(fd[d.file].starts[d.doc], take, r + n);
                n += take;
                buffer.erase(buffer.begin() + pick);
            }
            std::copy(r, r + T, inputs + (size_t)b * T);
            std::copy(r + 1, r + T + 1, targets + (size_t)b * T);
        }
    }

    void next_batch_contiguous(int* inputs, int* targets) {
        scan_file(file);  // validates the file's ids on first use
        const int64_t BT = (int64_t)B * T;
        int64_t off = pos * world * BT + (int64_t)rank * BT;
        fd[file].map.copy_tokens(off, BT + 1, row.data());
        std::copy(row.data(), row.data() + BT, inputs);
        std::copy(row.data() + 1, row.data() + BT + 1, targets);
        pos++;
        if (pos >= samples_per_file(file)) {
            pos = 0;
            file++;
            if (file == (int64_t)files.size()) { file = 0; on_wrap(); }
        }
    }

    // ---- state ----

    LoaderState get_state() const {
        LoaderState s;
        s.mode = mode;
        s.world = world; s.rank = rank; s.B = B; s.T = T; s.nfiles = (int64_t)files.size();
        s.epoch = epoch; s.file = file; s.pos = pos;
        for (const auto& d : buffer) s.buffer.emplace_back(d.file, d.doc);
        return s;
    }

    // Restore a saved state. Every field is checked against this loader's configuration and files
    // before anything changes, so a mismatched checkpoint fails with a message instead of reading
    // out of range (or silently continuing on different data).
    void set_state(const LoaderState& s) {
        const char* mname = mode == LoaderMode::BESTFIT ? "best-fit" : "contiguous";
        LLMC_CHECK(s.mode == mode, "loader state: saved for %s mode, this %s loader is %s",
                   s.mode == LoaderMode::BESTFIT ? "best-fit" : "contiguous", name.c_str(), mname);
        LLMC_CHECK(s.world == world && s.rank == rank,
                   "loader state: saved by rank %lld of world size %lld, this is rank %d of %d (the data split differs; "
                   "resume with the same number of ranks)", (long long)s.rank, (long long)s.world, rank, world);
        LLMC_CHECK(s.nfiles == (int64_t)files.size(), "loader state: saved over %lld files, the %s inputs are %zu files",
                   (long long)s.nfiles, name.c_str(), files.size());
        LLMC_CHECK(s.epoch >= 0, "loader state: epoch %lld is negative", (long long)s.epoch);
        LLMC_CHECK(s.file >= 0 && s.file < (int64_t)files.size(), "loader state: file index %lld out of range [0, %zu)",
                   (long long)s.file, files.size());
        std::vector<BufDoc> nb;
        if (mode == LoaderMode::BESTFIT) {
            scan_file(s.file);
            LLMC_CHECK(s.pos >= 0 && s.pos <= ndocs(s.file),
                       "loader state: document index %lld out of range for file %lld '%s', which has %lld documents",
                       (long long)s.pos, (long long)s.file, files[s.file].path.c_str(), (long long)ndocs(s.file));
            for (size_t i = 0; i < s.buffer.size(); i++) {
                int64_t f = s.buffer[i].first, d = s.buffer[i].second;
                LLMC_CHECK(f >= 0 && f < (int64_t)files.size(), "loader state: buffer entry %zu: file index %lld out of range [0, %zu)",
                           i, (long long)f, files.size());
                scan_file(f);
                LLMC_CHECK(d >= 0 && d < ndocs(f),
                           "loader state: buffer entry %zu: document index %lld out of range for file %lld '%s', which has %lld documents",
                           i, (long long)d, (long long)f, files[f].path.c_str(), (long long)ndocs(f));
                LLMC_CHECK((d / LOADER_GROUP_DOCS) % world == rank,
                           "loader state: buffer entry %zu: document %lld of file %lld belongs to rank %lld, not rank %d", i,
                           (long long)d, (long long)f, (long long)((d / LOADER_GROUP_DOCS) % world), rank);
                nb.push_back(BufDoc{(int32_t)f, (int32_t)d, (int32_t)doc_len(f, d)});
            }
        } else {
            LLMC_CHECK(s.B == B && s.T == T, "loader state: saved with B=%lld T=%lld, this loader has B=%d T=%d (contiguous "
                       "sample offsets depend on B*T)", (long long)s.B, (long long)s.T, B, T);
            LLMC_CHECK(s.pos >= 0 && s.pos < samples_per_file(s.file),
                       "loader state: sample index %lld out of range for file %lld '%s', which has %lld samples",
                       (long long)s.pos, (long long)s.file, files[s.file].path.c_str(), (long long)samples_per_file(s.file));
            LLMC_CHECK(s.buffer.empty(), "loader state: contiguous mode has no buffer, but the state lists %zu entries",
                       s.buffer.size());
        }
        epoch = s.epoch;
        file = s.file;
        pos = s.pos;
        buffer = std::move(nb);
    }

    std::vector<int64_t> state_to_ints() const { return loader_state_to_ints(get_state()); }
    void state_from_ints(const std::vector<int64_t>& v) { set_state(loader_state_from_ints(v)); }
};

}  // namespace llmc
