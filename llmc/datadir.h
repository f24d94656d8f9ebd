// datadir.h: a prepare_data output directory ("data directory") as one unit: the manifest that
// lists what it holds, the staged write that replaces it whole, and the check the trainer runs.
//
// manifest.json (written last, inside the staging directory) records the tokenizer (name, n_vocab,
// BOS id, the --vocab-size asked for, and a fingerprint of its ranks, pattern and specials), the
// token width, and every shard of each split with its token and document counts. The trainer, when
// it reads a data directory's shards through the default globs, checks them against it: a shard
// the glob finds but the manifest does not list (a leftover of an earlier run, another prefix) or a
// listed one that is missing or has a different token count is an error, and so is a tokenizer
// whose fingerprint differs from the one the shards were encoded with (which would otherwise give
// garbage silently, or a wrong bits-per-byte).
//
// The write (DataDirStage): everything goes to a fresh sibling "<out>.tmp.<pid>" and only a
// finished run swaps it in (renameat2 RENAME_EXCHANGE where the file system has it, else two
// renames), then deletes the old contents. A run that fails at any point (bad input, full disk,
// an exception) removes its staging directory and leaves <out> exactly as it was; a fresh
// directory swapped in cannot hold stale shards. Because the old directory is replaced whole, an
// existing <out> may only hold what prepare_data writes (the files its manifest lists, shards,
// tokenizer files, temporaries); anything else (the user's corpus, say) makes the run stop at
// start, before any work, rather than be deleted. A staging directory left by a killed run (its
// pid no longer running) is removed at the next run.
#pragma once
#include <dirent.h>
#include <fnmatch.h>
#include <glob.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "llmc/json.h"
#include "llmc/shard.h"
#include "llmc/tokenizer.h"
#include "llmc/utils.h"

namespace llmc {

constexpr const char* kManifestName = "manifest.json";

struct ManifestShard {
    std::string file;  // name inside the directory
    int64_t tokens = 0, documents = 0;
};

struct DataManifest {
    std::string tokenizer_name, tokenizer_fingerprint, token_type = "uint16";
    int64_t n_vocab = 0, bos_id = 0, vocab_size_requested = -1;  // -1: the tokenizer was loaded, not trained
    std::vector<ManifestShard> train, val;
};

inline uint64_t fnv1a64(const std::string& s, uint64_t h = 1469598103934665603ULL) {
    for (unsigned char c : s) { h ^= c; h *= 1099511628211ULL; }
    return h;
}

// What decides a tokenizer's ids: the ranks, the split pattern, the specials and n_vocab (not its
// name). FNV-1a 64 is no cryptographic hash; it tells an accidental mix-up, which is all it is for.
inline std::string tokenizer_fingerprint(const Tokenizer& t) {
    Json side = sidecar_json(t);
    side.set("name", "");
    uint64_t h = fnv1a64(tiktoken_text(t.vocab));
    h = fnv1a64(json_dump(side, -1), h);
    return strfmt("fnv1a64:%016llx", (unsigned long long)h);
}

inline Json manifest_json(const DataManifest& m) {
    Json j = Json::object();
    j.set("format", "llmc-data-manifest");
    j.set("version", 1);
    Json t = Json::object();
    t.set("files", Json::array({"tokenizer.tiktoken", "tokenizer.json"}));
    t.set("name", m.tokenizer_name);
    t.set("n_vocab", m.n_vocab);
    t.set("bos_id", m.bos_id);
    if (m.vocab_size_requested >= 0) t.set("vocab_size_requested", m.vocab_size_requested);
    t.set("fingerprint", m.tokenizer_fingerprint);
    j.set("tokenizer", t);
    j.set("token_type", m.token_type);
    for (int s = 0; s < 2; s++) {
        const auto& v = s == 0 ? m.train : m.val;
        Json arr = Json::array();
        int64_t tok = 0, docs = 0;
        for (auto& sh : v) {
            Json e = Json::object();
            e.set("file", sh.file);
            e.set("tokens", sh.tokens);
            e.set("documents", sh.documents);
            arr.push(e);
            tok += sh.tokens;
            docs += sh.documents;
        }
        Json split = Json::object();
        split.set("tokens", tok);
        split.set("documents", docs);
        split.set("shards", arr);
        j.set(s == 0 ? "train" : "val", split);
    }
    return j;
}

inline DataManifest manifest_load(const std::string& path) {
    Json j = json_parse(read_file(path), path);
    auto need = [&](const Json& o, const char* key, Json::Type type, const char* where) -> const Json& {
        if (!o.is_object()) LLMC_FAIL("%s: '%s' must be an object", path.c_str(), where);
        const Json* v = o.find(key);
        if (!v) LLMC_FAIL("%s: missing key '%s%s'", path.c_str(), where, key);
        if (v->type != type) LLMC_FAIL("%s: key '%s%s' has type %s, expected %s", path.c_str(), where, key, v->type_name(), Json::type_name(type));
        return *v;
    };
    if (need(j, "format", Json::String, "").s != "llmc-data-manifest") LLMC_FAIL("%s: key 'format' is not 'llmc-data-manifest'", path.c_str());
    if (need(j, "version", Json::Int, "").i != 1) LLMC_FAIL("%s: key 'version': only version 1 is supported", path.c_str());
    DataManifest m;
    const Json& t = need(j, "tokenizer", Json::Object, "");
    m.tokenizer_name = need(t, "name", Json::String, "tokenizer.").s;
    m.n_vocab = need(t, "n_vocab", Json::Int, "tokenizer.").i;
    m.bos_id = need(t, "bos_id", Json::Int, "tokenizer.").i;
    m.tokenizer_fingerprint = need(t, "fingerprint", Json::String, "tokenizer.").s;
    if (const Json* r = t.find("vocab_size_requested")) m.vocab_size_requested = r->as_int();
    m.token_type = need(j, "token_type", Json::String, "").s;
    for (int s = 0; s < 2; s++) {
        const char* name = s == 0 ? "train" : "val";
        std::string where = std::string(name) + ".";
        const Json& split = need(j, name, Json::Object, "");
        const Json& arr = need(split, "shards", Json::Array, where.c_str());
        auto& v = s == 0 ? m.train : m.val;
        std::string ew = where + "shards[].";
        for (auto& e : arr.arr) {
            ManifestShard sh;
            sh.file = need(e, "file", Json::String, ew.c_str()).s;
            sh.tokens = need(e, "tokens", Json::Int, ew.c_str()).i;
            sh.documents = need(e, "documents", Json::Int, ew.c_str()).i;
            if (sh.file.empty() || sh.file.find('/') != std::string::npos)
                LLMC_FAIL("%s: shard name '%s' must be a plain file name", path.c_str(), sh.file.c_str());
            v.push_back(sh);
        }
    }
    return m;
}

inline std::vector<std::string> list_dir_names(const std::string& dir) {
    std::vector<std::string> names;
    DIR* d = opendir(dir.c_str());
    if (!d) LLMC_FAIL("cannot read directory '%s': %s", dir.c_str(), strerror(errno));
    while (dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") names.push_back(n);
    }
    closedir(d);
    std::sort(names.begin(), names.end());
    return names;
}

// ------------------------------------------------------------------------------------------------
// The trainer's check

inline std::string manifest_basename(const std::string& p) {
    size_t s = p.rfind('/');
    return s == std::string::npos ? p : p.substr(s + 1);
}

// Check the data directory `dir` against its manifest. train_glob / val_glob: the globs the trainer
// reads (empty: that split is not checked); tok: the tokenizer in use (null: none), tok_what names
// it. Returns false (checks nothing) when the directory has no manifest.
inline bool manifest_check(const std::string& dir, const std::string& train_glob, const std::string& val_glob, const Tokenizer* tok,
                           const std::string& tok_what) {
    std::string mpath = dir + "/" + kManifestName;
    if (!file_exists(mpath)) return false;
    DataManifest m = manifest_load(mpath);
    for (int s = 0; s < 2; s++) {
        const std::string& pattern = s == 0 ? train_glob : val_glob;
        if (pattern.empty()) continue;
        const auto& listed = s == 0 ? m.train : m.val;
        const char* split = s == 0 ? "train" : "val";
        glob_t g;
        memset(&g, 0, sizeof(g));
        std::vector<std::string> found;
        if (glob(pattern.c_str(), 0, nullptr, &g) == 0)
            for (size_t i = 0; i < g.gl_pathc; i++) found.emplace_back(g.gl_pathv[i]);
        globfree(&g);
        std::set<std::string> names;
        for (auto& sh : listed) names.insert(sh.file);
        for (auto& f : found)
            if (!names.count(manifest_basename(f)))
                LLMC_FAIL("'%s' is not one of the %zu %s shards listed in '%s': a leftover of another run? The shards of one "
                          "prepare_data run are exactly those its manifest lists; remove the file or re-run prepare_data",
                          f.c_str(), listed.size(), split, mpath.c_str());
        for (auto& sh : listed) {
            std::string p = dir + "/" + sh.file;
            if (!file_exists(p)) LLMC_FAIL("'%s' lists %s shard '%s', which is missing", mpath.c_str(), split, p.c_str());
            ShardInfo si = shard_open_check(p);
            if (si.ntok != sh.tokens)
                LLMC_FAIL("'%s' holds %lld tokens but '%s' says %lld: the file changed after prepare_data wrote it", p.c_str(),
                          (long long)si.ntok, mpath.c_str(), (long long)sh.tokens);
        }
    }
    if (tok) {
        std::string fp = tokenizer_fingerprint(*tok);
        if (fp != m.tokenizer_fingerprint || (int64_t)tok->n_vocab != m.n_vocab || (int64_t)tok->bos_id != m.bos_id)
            LLMC_FAIL("the tokenizer %s ('%s', n_vocab %u, bos %u, %s) is not the one the shards in '%s' were encoded with "
                      "('%s', n_vocab %lld, bos %lld, %s, per '%s')",
                      tok_what.c_str(), tok->name.c_str(), tok->n_vocab, tok->bos_id, fp.c_str(), dir.c_str(), m.tokenizer_name.c_str(),
                      (long long)m.n_vocab, (long long)m.bos_id, m.tokenizer_fingerprint.c_str(), mpath.c_str());
    }
    return true;
}

// ------------------------------------------------------------------------------------------------
// The staged write

// Names prepare_data writes into a data directory (or that its manifest lists).
inline bool datadir_own_name(const std::string& n, const std::set<std::string>& listed) {
    if (n == kManifestName || n == "tokenizer.tiktoken" || n == "tokenizer.json" || listed.count(n)) return true;
    if (n.size() > 4 && n.compare(n.size() - 4, 4, ".tmp") == 0) return true;  // an AtomicFile temporary
    return fnmatch("*_train_*.bin", n.c_str(), 0) == 0 || fnmatch("*_val_*.bin", n.c_str(), 0) == 0;
}

// The names in dir that prepare_data did not write (subdirectories included).
inline std::vector<std::string> datadir_foreign(const std::string& dir) {
    std::set<std::string> listed;
    std::string mpath = dir + "/" + kManifestName;
    if (file_exists(mpath)) {
        try {
            DataManifest m = manifest_load(mpath);
            for (auto* v : {&m.train, &m.val})
                for (auto& sh : *v) listed.insert(sh.file);
        } catch (const Error&) {}  // unreadable: judge by names alone
    }
    std::vector<std::string> foreign;
    for (auto& n : list_dir_names(dir)) {
        struct stat st;
        std::string p = dir + "/" + n;
        bool regular = lstat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
        if (!regular || !datadir_own_name(n, listed)) foreign.push_back(n);
    }
    return foreign;
}

// Delete a directory whose entries prepare_data wrote; whatever else it holds is kept (and so is
// the directory then). Returns whether the directory is gone.
inline bool datadir_remove(const std::string& dir) {
    std::vector<std::string> names;
    try { names = list_dir_names(dir); } catch (const Error&) { return false; }
    for (auto& n : datadir_foreign(dir)) names.erase(std::remove(names.begin(), names.end(), n), names.end());
    for (auto& n : names) unlink((dir + "/" + n).c_str());
    return rmdir(dir.c_str()) == 0;
}

struct DataDirStage {
    std::string out;     // the final directory (symlinks resolved when it exists)
    std::string tmp;     // "<out>.tmp.<pid>", where everything is written
    bool existed = false, committed = false;
    std::vector<std::string> notes;

    explicit DataDirStage(const std::string& out_arg) {
        out = out_arg;
        while (out.size() > 1 && out.back() == '/') out.pop_back();
        struct stat st;
        if (stat(out.c_str(), &st) == 0) {
            if (!S_ISDIR(st.st_mode)) LLMC_FAIL("--out: '%s' exists and is not a directory", out.c_str());
            char buf[PATH_MAX];
            if (realpath(out.c_str(), buf)) out = buf;  // replace the directory a symlink points to, not the link
            std::vector<std::string> foreign = datadir_foreign(out);
            if (!foreign.empty())
                LLMC_FAIL("--out: '%s' holds '%s'%s, which prepare_data did not write; a run replaces the whole directory, so give "
                          "a new or empty one (the default is data/<prefix>)",
                          out_arg.c_str(), foreign[0].c_str(),
                          foreign.size() > 1 ? strfmt(" and %zu more", foreign.size() - 1).c_str() : "");
            existed = !list_dir_names(out).empty();
        } else {
            make_dirs(dir_of(out), "--out");
        }
        clean_stale();
        tmp = strfmt("%s.tmp.%d", out.c_str(), (int)getpid());
        if (mkdir(tmp.c_str(), 0755) != 0) LLMC_FAIL("--out: cannot create '%s': %s", tmp.c_str(), strerror(errno));
    }
    DataDirStage(const DataDirStage&) = delete;
    DataDirStage& operator=(const DataDirStage&) = delete;
    ~DataDirStage() {
        if (!committed && !tmp.empty()) datadir_remove(tmp);
    }
    std::string path(const std::string& name) const { return tmp + "/" + name; }

    // staging directories of killed runs: "<out>.tmp.<pid>" whose pid is gone
    void clean_stale() {
        std::string parent = dir_of(out), base = manifest_basename(out) + ".tmp.";
        std::vector<std::string> names;
        try { names = list_dir_names(parent); } catch (const Error&) { return; }
        for (auto& n : names) {
            if (n.compare(0, base.size(), base) != 0 || n.size() == base.size()) continue;
            std::string digits = n.substr(base.size());
            if (digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 9) continue;
            pid_t pid = (pid_t)atol(digits.c_str());
            if (kill(pid, 0) == 0 || errno != ESRCH) continue;  // still running (or not ours to judge)
            std::string p = parent + "/" + n;
            if (datadir_remove(p)) notes.push_back(strfmt("removed '%s', left by an interrupted run", p.c_str()));
            else notes.push_back(strfmt("'%s' was left by an interrupted run and holds other files; remove it by hand", p.c_str()));
        }
    }

    // Swap the staging directory in. After this the old contents are gone and <out> is the new run.
    void commit() {
        fsync_dir(tmp);
        std::string parent = dir_of(out);
        struct stat st;
        if (stat(out.c_str(), &st) != 0) {
            if (rename(tmp.c_str(), out.c_str()) != 0) LLMC_FAIL("cannot rename '%s' to '%s': %s", tmp.c_str(), out.c_str(), strerror(errno));
            committed = true;
            fsync_dir(parent);
            return;
        }
        // Atomic exchange where the file system supports it: <out> is always a complete run.
        if (renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, out.c_str(), RENAME_EXCHANGE) == 0) {
            committed = true;
            fsync_dir(parent);
            if (!datadir_remove(tmp)) notes.push_back(strfmt("could not remove all of the previous output, now in '%s'", tmp.c_str()));
            return;
        }
        if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
            LLMC_FAIL("cannot exchange '%s' and '%s': %s", tmp.c_str(), out.c_str(), strerror(errno));
        // Two renames: between them <out> is briefly missing (never mixed); the old run is in <old>.
        std::string old = strfmt("%s.old.%d", out.c_str(), (int)getpid());
        if (rename(out.c_str(), old.c_str()) != 0) LLMC_FAIL("cannot rename '%s' to '%s': %s", out.c_str(), old.c_str(), strerror(errno));
        if (rename(tmp.c_str(), out.c_str()) != 0) {
            int e = errno;
            rename(old.c_str(), out.c_str());  // put the old run back
            LLMC_FAIL("cannot rename '%s' to '%s': %s", tmp.c_str(), out.c_str(), strerror(e));
        }
        committed = true;
        fsync_dir(parent);
        if (!datadir_remove(old)) notes.push_back(strfmt("could not remove all of the previous output, now in '%s'", old.c_str()));
    }
};

}  // namespace llmc
