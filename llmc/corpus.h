// corpus.h: raw inputs -> documents, for prepare_data (docs/tokenizer.md#inputs).
//
// Inputs are text files, JSON files and directories of them. A directory is walked recursively:
// entries sorted by name in each directory, a subdirectory's files where its name sorts, names
// starting with '.' skipped (and counted), symlinked directories followed once (a loop is skipped),
// and the output directory of the run (with its staging siblings) never read. Files whose name ends
// in .jsonl or .json are JSON: JSON Lines (one object per line, document = its "text") or, when
// the first character is '[', one array of strings or of objects with "text" (read whole).
//
// Text is cut into documents at blank lines by default: split the text into lines at "\n"; a line
// holding only spaces, tabs and "\r" is blank; a document is a maximal run of non-blank lines, its
// text those lines with their line breaks, without the break ("\n" or "\r\n") that ends its last
// line. So "\r\n\r\n" (Windows), "\n  \n" and "\n\n\n" all separate documents, and no document
// starts or ends with a stray newline. --doc-sep STRING cuts at an exact string instead (empty
// pieces dropped), --doc-sep none keeps each file whole. A UTF-8 byte order mark at the start of a
// file is not text and is dropped.
//
// Everything streams in blocks of read_bytes (16 MB; tests use 1..7 to put every separator across
// a block boundary), except JSON arrays, which are read whole.
//
// A document that cannot be read (a JSON line that does not parse, has no "text" or a "text" that
// is not a string; an array element of the wrong type) is an error naming the file, line or
// element and byte offset, or with skip_bad is skipped and counted. A broken array structure is
// always an error: nothing after it could be trusted.
//
// Documents: a DocStream with one document of look-ahead. When the whole input is ONE document and
// there is a validation split (val_every >= 2), it is split by bytes into two documents (the split
// rule, docs/tokenizer.md#val-split, then sends the first to val, the second to train): validation
// gets the text through the first line break at or after byte floor(n / val_every), or, without
// one, up to the first character boundary there. Otherwise a one-document corpus would put
// everything in val and leave nothing to train on.
#pragma once
#include <dirent.h>
#include <sys/stat.h>
#include <climits>
#include <cstdlib>

#include <algorithm>
#include <deque>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "llmc/json.h"
#include "llmc/utils.h"

namespace llmc {

// ------------------------------------------------------------------------------------------------
// Listing the inputs

struct CorpusInput {
    std::string path;
    bool json;  // JSON Lines or a JSON array; else text
};

struct CorpusListing {
    std::vector<CorpusInput> files;
    std::vector<std::string> notes;  // what was skipped and why, for the user
};

inline bool corpus_ends_with_ci(const std::string& s, const char* suf) {
    size_t n = strlen(suf);
    if (s.size() < n) return false;
    for (size_t i = 0; i < n; i++) {
        char a = s[s.size() - n + i];
        if (a >= 'A' && a <= 'Z') a = (char)(a - 'A' + 'a');
        if (a != suf[i]) return false;
    }
    return true;
}

inline std::string corpus_basename(std::string p) {
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    size_t s = p.rfind('/');
    return s == std::string::npos ? p : p.substr(s + 1);
}

// An absolute, symlink-free form of a path that may not exist yet (its parent usually does).
inline std::string corpus_abs_path(const std::string& p) {
    char buf[PATH_MAX];
    if (realpath(p.c_str(), buf)) return buf;
    std::string q = p;
    while (q.size() > 1 && q.back() == '/') q.pop_back();
    std::string dir = dir_of(q), base = corpus_basename(q);
    if (realpath(dir.c_str(), buf)) return std::string(buf) + (std::string(buf) == "/" ? "" : "/") + base;
    return q;
}

// The default shard prefix: the first input's name without its last extension ("my.corpus.v2.txt"
// -> "my.corpus.v2"); a directory keeps its whole name. A leading dot is not an extension.
inline std::string corpus_default_prefix(const std::string& first_input) {
    std::string base = corpus_basename(first_input);
    struct stat st;
    bool is_dir = stat(first_input.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
    if (!is_dir) {
        size_t dot = base.rfind('.');
        if (dot != std::string::npos && dot > 0) base = base.substr(0, dot);
    }
    if (base.empty() || base == "." || base == ".." || base == "/") return "data";
    return base;
}

namespace corpus_detail {

struct Walk {
    std::vector<std::string> exclude;  // absolute directory paths never read (the run's own output)
    std::set<std::pair<dev_t, ino_t>> seen;
    std::vector<std::string> files;
    int64_t hidden = 0, other = 0, broken = 0, loops = 0, excluded = 0, subdirs = 0;

    bool is_excluded(const std::string& abs) const {
        for (auto& e : exclude)
            if (abs == e || abs.compare(0, e.size() + 5, e + ".tmp.") == 0) return true;
        return false;
    }
    void dir(const std::string& path, const struct stat& st) {
        if (!seen.insert({st.st_dev, st.st_ino}).second) { loops++; return; }
        DIR* d = opendir(path.c_str());
        if (!d) LLMC_FAIL("--input: cannot read directory '%s': %s", path.c_str(), strerror(errno));
        std::vector<std::string> names;
        while (dirent* e = readdir(d)) {
            std::string n = e->d_name;
            if (n == "." || n == "..") continue;
            if (n[0] == '.') { hidden++; continue; }
            names.push_back(n);
        }
        closedir(d);
        std::sort(names.begin(), names.end());
        for (auto& n : names) {
            std::string full = path + "/" + n;
            struct stat es;
            if (stat(full.c_str(), &es) != 0) { broken++; continue; }  // a dangling symlink
            if (S_ISDIR(es.st_mode)) {
                if (is_excluded(corpus_abs_path(full))) { excluded++; continue; }
                subdirs++;
                dir(full, es);
            } else if (S_ISREG(es.st_mode)) {
                files.push_back(full);
            } else {
                other++;
            }
        }
    }
};

}  // namespace corpus_detail

// spec: comma-separated files and directories. format: auto (by extension), text or jsonl (JSON).
// exclude: output directories (absolute, as from corpus_abs_path) not to read when walking.
inline CorpusListing corpus_list(const std::string& spec, const std::string& format, const std::vector<std::string>& exclude = {}) {
    if (format != "auto" && format != "text" && format != "jsonl")
        LLMC_FAIL("--format must be auto, text or jsonl, got '%s'", format.c_str());
    CorpusListing out;
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
        if (!S_ISDIR(st.st_mode)) {
            if (!S_ISREG(st.st_mode)) LLMC_FAIL("--input: '%s' is not a regular file or a directory", item.c_str());
            paths.push_back(item);
            continue;
        }
        while (item.size() > 1 && item.back() == '/') item.pop_back();
        corpus_detail::Walk w;
        for (auto& e : exclude) w.exclude.push_back(e);
        if (w.is_excluded(corpus_abs_path(item))) LLMC_FAIL("--input: '%s' is the output directory of this run", item.c_str());
        w.dir(item, st);
        if (w.files.empty())
            LLMC_FAIL("--input: directory '%s' has no files (hidden names, starting with '.', are skipped)", item.c_str());
        std::string skipped;
        auto add = [&](int64_t n, const char* what) {
            if (n) skipped += strfmt("%s%lld %s", skipped.empty() ? "" : ", ", (long long)n, what);
        };
        add(w.hidden, "hidden (name starts with '.')");
        add(w.excluded, "output director(ies) of this run");
        add(w.loops, "directory symlink loop(s)");
        add(w.broken, "dangling symlink(s)");
        add(w.other, "special file(s) (not regular files)");
        std::string sub = w.subdirs ? strfmt(" (%lld subdirectories walked)", (long long)w.subdirs) : std::string();
        out.notes.push_back(strfmt("--input '%s': %zu files%s%s%s", item.c_str(), w.files.size(), sub.c_str(),
                                   skipped.empty() ? "" : "; skipped ", skipped.c_str()));
        paths.insert(paths.end(), w.files.begin(), w.files.end());
    }
    if (paths.empty()) LLMC_FAIL("--input is required: a text file, a directory or a .jsonl file (comma-separated for several)");
    for (auto& path : paths) {
        bool js = format == "jsonl" || (format == "auto" && (corpus_ends_with_ci(path, ".jsonl") || corpus_ends_with_ci(path, ".json")));
        out.files.push_back({path, js});
    }
    return out;
}

// "\n\n" as typed on a command line -> the two newline characters.
inline std::string corpus_unescape(const std::string& s) {
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

// ------------------------------------------------------------------------------------------------
// Documents

enum class DocSep { Blank, Exact, None };

struct DocOptions {
    DocSep sep = DocSep::Blank;
    std::string sep_string;         // for DocSep::Exact
    size_t read_bytes = 16u << 20;  // bytes per read
    bool skip_bad = false;          // skip unreadable JSON documents (and count them) instead of failing
};

// Parse the --doc-sep flag: "blank" (default), "none" or an exact string with escapes.
inline DocOptions corpus_doc_options(const std::string& doc_sep, size_t read_bytes, const std::string& on_bad_doc) {
    DocOptions o;
    o.read_bytes = read_bytes;
    if (doc_sep == "blank") o.sep = DocSep::Blank;
    else if (doc_sep == "none") o.sep = DocSep::None;
    else {
        o.sep = DocSep::Exact;
        o.sep_string = corpus_unescape(doc_sep);
        if (o.sep_string.empty()) LLMC_FAIL("--doc-sep is empty (use blank, none, or a separator string)");
    }
    if (on_bad_doc != "error" && on_bad_doc != "skip") LLMC_FAIL("--on-bad-doc must be error or skip, got '%s'", on_bad_doc.c_str());
    o.skip_bad = on_bad_doc == "skip";
    return o;
}

struct DocStream {
    std::vector<CorpusInput> files;
    DocOptions opt;
    size_t fi = 0;
    std::unique_ptr<File> f;
    bool eof = true;
    std::string buf;
    int64_t base = 0;  // file offset of buf[0]
    // indices into buf; fill() shifts them all when it drops the consumed prefix [0, pos)
    size_t pos = 0;      // start of the data still needed
    size_t scan = 0;     // exact separator: where to resume the search
    size_t cur = 0;      // blank-line mode: start of the current line
    size_t nl_from = 0;  // blank-line mode: where to resume the search for "\n"
    size_t doc_end = 0;  // blank-line mode: end of the last non-blank line of the current document
    bool in_doc = false;
    int64_t line = 0;  // JSON Lines: line number in the current file
    // JSON arrays
    bool array_mode = false, array_done = false;
    int64_t array_index = 0;
    std::string what;  // names the file in array parse errors (the parser holds a reference)
    std::unique_ptr<json_detail::Parser> parser;
    // counters
    int64_t bytes_read = 0;
    int64_t bad_docs = 0;
    std::vector<std::string> bad_examples;  // the first few skipped documents' messages

    DocStream(std::vector<CorpusInput> fs, DocOptions o) : files(std::move(fs)), opt(std::move(o)) { open_current(); }

    void open_current() {
        buf.clear();
        buf.shrink_to_fit();
        base = 0;
        pos = scan = cur = nl_from = doc_end = 0;
        in_doc = false;
        line = 0;
        array_mode = array_done = false;
        array_index = 0;
        parser.reset();
        if (fi >= files.size()) return;
        f.reset(new File(files[fi].path, "rb"));
        eof = false;
        // a UTF-8 byte order mark is not text (RFC 8259 lets JSON parsers ignore it too)
        while (buf.size() < 3 && fill()) {}
        if (buf.compare(0, 3, "\xEF\xBB\xBF") == 0) pos = scan = cur = nl_from = 3;
        if (files[fi].json) {
            // a JSON array instead of JSON Lines? look at the first non-whitespace byte
            size_t rel = 0;  // relative to pos, which fill() may move
            for (;;) {
                while (pos + rel < buf.size() && strchr(" \t\n\r", buf[pos + rel]) && buf[pos + rel]) rel++;
                if (pos + rel < buf.size() || !fill()) break;
            }
            if (pos + rel < buf.size() && buf[pos + rel] == '[') {
                while (fill()) {}  // read whole: the parser needs the text in one piece
                size_t k = pos + rel;
                what = strfmt("'%s' (a JSON array)", files[fi].path.c_str());
                parser.reset(new json_detail::Parser{buf, what});
                parser->base = (size_t)base;
                parser->p = k + 1;
                array_mode = true;
            }
        }
    }
    // Read one more block; keeps buf[pos..] (indices shift by the dropped prefix). false at EOF.
    bool fill() {
        if (eof) return false;
        if (!array_mode && pos > 0) {
            size_t shift = pos;
            buf.erase(0, shift);
            base += (int64_t)shift;
            auto sub = [shift](size_t& x) { x = x >= shift ? x - shift : 0; };
            sub(pos); sub(scan); sub(cur); sub(nl_from); sub(doc_end);
        }
        size_t old = buf.size();
        buf.resize(old + opt.read_bytes);
        size_t got = fread(&buf[old], 1, opt.read_bytes, f->f);
        buf.resize(old + got);
        bytes_read += (int64_t)got;
        if (got < opt.read_bytes) {
            if (ferror(f->f)) LLMC_FAIL("'%s': read error", f->path.c_str());
            eof = true;
        }
        return got > 0;
    }
    // Next piece of the current file up to `delim` (the rest of the file when delim is empty);
    // off gets its file offset. false at EOF.
    bool next_record(std::string& rec, const std::string& delim, int64_t* off) {
        for (;;) {
            if (!delim.empty()) {
                size_t at = buf.find(delim, std::max(pos, scan));
                if (at != std::string::npos) {
                    *off = base + (int64_t)pos;
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
            *off = base + (int64_t)pos;
            rec.assign(buf, pos, buf.size() - pos);
            pos = buf.size();
            return true;
        }
        return false;
    }
    // Blank-line mode: the next document of the current file (see the top of this file).
    bool next_blank(std::string& doc) {
        for (;;) {
            size_t nl = buf.find('\n', nl_from);
            if (nl == std::string::npos && !eof) {
                nl_from = buf.size();
                fill();
                continue;
            }
            bool has_nl = nl != std::string::npos;
            size_t line_end = has_nl ? nl : buf.size();
            if (!has_nl && cur == line_end) {  // end of the file
                if (!in_doc) return false;
                emit_blank(doc);
                pos = cur = nl_from = buf.size();
                return true;
            }
            bool blank = true;
            for (size_t k = cur; k < line_end && blank; k++) blank = buf[k] == ' ' || buf[k] == '\t' || buf[k] == '\r';
            size_t next = has_nl ? nl + 1 : line_end;
            if (blank) {
                bool had = in_doc;
                if (had) emit_blank(doc);
                pos = cur = nl_from = next;
                if (had) return true;
            } else {
                if (!in_doc) { in_doc = true; pos = cur; }
                doc_end = line_end;
                cur = nl_from = next;
            }
        }
    }
    void emit_blank(std::string& doc) {
        doc.assign(buf, pos, doc_end - pos);
        if (!doc.empty() && doc.back() == '\r') doc.pop_back();  // the CR of the last line's CRLF
        in_doc = false;
    }
    // A document that cannot be read: an error, or with skip_bad counted and skipped.
    void bad_doc(const std::string& msg) {
        if (!opt.skip_bad) fail(msg + " (--on-bad-doc skip skips and counts such documents)");
        bad_docs++;
        if (bad_examples.size() < 3) bad_examples.push_back(msg);
    }
    // Document text from a JSON value, or false (after bad_doc) when it holds none.
    bool doc_from_json(const Json& j, const std::string& where, bool strings_ok, std::string& doc) {
        if (strings_ok && j.is_string()) { doc = j.s; return true; }
        const Json* t = j.is_object() ? j.find("text") : nullptr;
        if (!j.is_object()) {
            bad_doc(strfmt("%s: type %s, expected %s", where.c_str(), j.type_name(),
                           strings_ok ? "a string or an object with a string \"text\"" : "an object with a string \"text\""));
        } else if (!t) {
            bad_doc(strfmt("%s: no \"text\" field (expected a JSON object with a string \"text\")", where.c_str()));
        } else if (!t->is_string()) {
            bad_doc(strfmt("%s: \"text\" has type %s, expected string", where.c_str(), t->type_name()));
        } else {
            doc = t->s;
            return true;
        }
        return false;
    }
    bool next_array(std::string& doc) {
        json_detail::Parser& ps = *parser;
        while (!array_done) {
            ps.ws();
            if (ps.p >= buf.size()) ps.fail_at(ps.p, "unexpected end of input inside the array (missing ']')");
            if (buf[ps.p] == ']') {
                ps.p++;
                ps.ws();
                if (ps.p != buf.size()) ps.fail_at(ps.p, "trailing characters after the JSON array");
                array_done = true;
                break;
            }
            if (array_index > 0) {
                if (buf[ps.p] != ',') ps.fail_at(ps.p, "expected ',' or ']' after an array element");
                ps.p++;
                ps.ws();
            }
            size_t at = ps.p;
            Json j = ps.value();
            std::string where = strfmt("'%s' array element %lld (byte offset %lld)", files[fi].path.c_str(), (long long)array_index,
                                       (long long)(base + (int64_t)at));
            array_index++;
            if (!doc_from_json(j, where, true, doc) || doc.empty()) continue;
            return true;
        }
        return false;
    }
    // Next non-empty document; false when every input is exhausted.
    bool next(std::string& doc) {
        std::string rec;
        int64_t off = 0;
        while (fi < files.size()) {
            const CorpusInput& in = files[fi];
            if (array_mode) {
                if (next_array(doc)) return true;
            } else if (in.json) {
                while (next_record(rec, "\n", &off)) {
                    line++;
                    if (!rec.empty() && rec.back() == '\r') rec.pop_back();
                    if (rec.find_first_not_of(" \t") == std::string::npos) continue;
                    std::string where = strfmt("'%s' line %lld", in.path.c_str(), (long long)line);
                    Json j;
                    try {
                        j = json_parse(rec, where, (size_t)off);
                    } catch (const Error& e) {
                        std::string msg = e.what();
                        // a pretty-printed object spans lines; say what a .json file may hold
                        if (line == 1 && !corpus_ends_with_ci(in.path, ".jsonl"))
                            msg += " (a .json file must be JSON Lines, one object per line, or one JSON array of strings or of objects with \"text\")";
                        bad_doc(msg);
                        continue;
                    }
                    if (!doc_from_json(j, where, false, doc) || doc.empty()) continue;
                    return true;
                }
            } else if (opt.sep == DocSep::Blank) {
                if (next_blank(doc)) return true;
            } else {
                const std::string& delim = opt.sep == DocSep::None ? std::string() : opt.sep_string;
                while (next_record(rec, delim, &off)) {
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

// Where to cut a lone document of n bytes for a validation split of 1/val_every: the cut c gives
// val = [0, c), train = [c, n). 0 when the document is too short to give both a byte.
inline size_t corpus_lone_cut(const std::string& doc, int64_t val_every) {
    size_t n = doc.size();
    if (n < 2 || val_every < 2) return 0;
    size_t target = std::max<size_t>(1, n / (size_t)val_every);
    size_t nl = doc.find('\n', target - 1);
    if (nl != std::string::npos && nl + 1 < n) return nl + 1;
    // no line break after the target: cut at the next UTF-8 character boundary
    size_t c = target;
    while (c < n && ((unsigned char)doc[c] & 0xC0) == 0x80) c++;
    return c < n ? c : 0;
}

// The documents of a corpus in input order, with the lone-document split described at the top.
struct Documents {
    DocStream ds;
    int64_t val_every;
    std::deque<std::string> queue;
    bool started = false;
    int64_t lone_val_bytes = -1, lone_train_bytes = -1;  // set when a lone document was split

    Documents(std::vector<CorpusInput> fs, DocOptions o, int64_t val_every_) : ds(std::move(fs), std::move(o)), val_every(val_every_) {}

    bool next(std::string& doc) {
        if (!started) {
            started = true;
            std::string a, b;
            if (!ds.next(a)) return false;
            if (val_every >= 2 && !ds.next(b)) {
                size_t c = corpus_lone_cut(a, val_every);
                if (c == 0)
                    LLMC_FAIL("the input is a single document of %zu bytes, too short to split into validation and training text; "
                              "add text, or pass --val-every 0 to train on all of it without a validation split", a.size());
                lone_val_bytes = (int64_t)c;
                lone_train_bytes = (int64_t)(a.size() - c);
                queue.push_back(a.substr(0, c));
                queue.push_back(a.substr(c));
            } else {
                queue.push_back(std::move(a));
                if (!b.empty()) queue.push_back(std::move(b));
            }
        }
        if (!queue.empty()) {
            doc = std::move(queue.front());
            queue.pop_front();
            return true;
        }
        return ds.next(doc);
    }
};

}  // namespace llmc
