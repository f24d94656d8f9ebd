// test_docs.cpp: the documentation references in the source tree resolve.
//
// Comments and docs cite the project's own documentation by file and anchor, for example
// docs/model.md#adamw; a section's anchor is an explicit `<a id="adamw"></a>` placed before its
// heading (explicit ids do not change when a heading is reworded, and need no slug rules). This test
// scans the sources (llmc/, test/, dev/, scripts/, docs/, .ci/ and the top-level files) and checks:
//   1. every <path>.md#<anchor> in a source file names an existing file (path relative to the
//      repository root) that defines the anchor, and every docs/<name>.md mentioned without an
//      anchor exists;
//   2. every relative markdown link [text](target) in a .md file points at an existing file
//      (relative to that .md file) and, with an #anchor, at a defined anchor (a bare #anchor: in
//      the same file);
//   3. no .md file defines the same anchor twice;
//   4. nothing cites the design notes the project was written from, which live outside the
//      repository (a user's clone has no such folder): no path into that shared folder, no
//      model, tokenizer_data, design or moe_lightning .md file except under docs/, and no section
//      sign (for an outside work's section, write "section 3.1").
// Tests run from the repository root. The checker is also run on a small tree built here with one
// planted mistake of each kind, so a broken reference is shown to fail; this file, which spells out
// those mistakes, is the one source file the scan skips.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <stdlib.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace {

bool ends_with(const std::string& s, const std::string& suf) {
    return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::string read_text(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::vector<std::string> split_lines(const std::string& s) {
    std::vector<std::string> out;
    size_t a = 0;
    while (a <= s.size()) {
        size_t b = s.find('\n', a);
        if (b == std::string::npos) b = s.size();
        out.push_back(s.substr(a, b - a));
        a = b + 1;
    }
    return out;
}

// The files to scan, as paths relative to root, sorted.
std::vector<std::string> source_files(const fs::path& root) {
    static const std::vector<std::string> exts = {".h", ".cuh", ".cu", ".cpp", ".c", ".py", ".sh", ".md", ".txt"};
    auto wanted = [&](const fs::path& p, bool in_ci) {
        std::string name = p.filename().string();
        if (in_ci || name == "Makefile") return true;
        for (const auto& e : exts)
            if (ends_with(name, e)) return true;
        return false;
    };
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(root))
        if (e.is_regular_file() && wanted(e.path(), false)) out.push_back(e.path().filename().string());
    for (const char* dir : {"llmc", "test", "dev", "scripts", "docs", ".ci"}) {
        fs::path d = root / dir;
        if (!fs::is_directory(d)) continue;
        for (const auto& e : fs::recursive_directory_iterator(d))
            if (e.is_regular_file() && wanted(e.path(), std::string(dir) == ".ci"))
                out.push_back(fs::relative(e.path(), root).generic_string());
    }
    std::sort(out.begin(), out.end());
    return out;
}

struct Checker {
    fs::path root;
    std::vector<std::string> problems;
    std::map<std::string, std::set<std::string>> anchors_cache;  // normalized path -> anchors

    void problem(const std::string& where, const std::string& what) { problems.push_back(where + ": " + what); }

    // Anchors defined in a file (path relative to root, normalized); duplicates are reported once,
    // when the file is first read.
    const std::set<std::string>& anchors_of(const std::string& rel) {
        auto it = anchors_cache.find(rel);
        if (it != anchors_cache.end()) return it->second;
        std::set<std::string>& a = anchors_cache[rel];
        static const std::regex def("<a id=\"([^\"]*)\"></a>");
        std::vector<std::string> lines = split_lines(read_text(root / rel));
        for (size_t i = 0; i < lines.size(); i++) {
            for (std::sregex_iterator m(lines[i].begin(), lines[i].end(), def), end; m != end; ++m) {
                std::string id = (*m)[1];
                if (!a.insert(id).second) problem(rel + ":" + std::to_string(i + 1), "anchor '" + id + "' is defined twice in this file");
            }
        }
        return a;
    }

    // Normalize a relative path ("docs/../README.md" -> "README.md"); "" if it leaves the root.
    static std::string normalize(const fs::path& p) {
        std::string s = p.lexically_normal().generic_string();
        if (s.empty() || s == "." || s.rfind("..", 0) == 0 || p.is_absolute()) return "";
        return s;
    }

    void check_target(const std::string& where, const std::string& shown, const std::string& rel, const std::string& anchor) {
        if (rel.empty() || !fs::is_regular_file(root / rel)) {
            problem(where, "'" + shown + "': no such file" + (rel.empty() ? "" : " (" + rel + ")"));
            return;
        }
        if (anchor.empty()) return;
        if (!ends_with(rel, ".md")) {
            problem(where, "'" + shown + "': an anchor into a file that is not markdown");
            return;
        }
        if (!anchors_of(rel).count(anchor))
            problem(where, "'" + shown + "': " + rel + " has no anchor '" + anchor + "' (define it as <a id=\"" + anchor + "\"></a>)");
    }

    void check_file(const std::string& rel) {
        const bool is_md = ends_with(rel, ".md");
        if (is_md) (void)anchors_of(rel);  // reports duplicate anchors
        const fs::path dir = fs::path(rel).parent_path();
        static const std::string shared_dir = "shared/spec";
        static const std::string section_sign = "\xC2\xA7";  // U+00A7 in UTF-8
        static const std::regex link("\\]\\(([^()\\s]*)\\)");
        static const std::regex ref("(^|[^A-Za-z0-9_./-])((?:[A-Za-z0-9_.-]+/)*[A-Za-z0-9_-][A-Za-z0-9_.-]*\\.md)(#([A-Za-z0-9_-]+))?");
            static const std::regex notes("(^|[^A-Za-z0-9_.-])((?:[A-Za-z0-9_.-]+/)*)(model|tokenizer_data|design|moe_lightning)\\.md");
        std::vector<std::string> lines = split_lines(read_text(root / rel));
        for (size_t i = 0; i < lines.size(); i++) {
            std::string line = lines[i];
            const std::string where = rel + ":" + std::to_string(i + 1);
            if (line.find(shared_dir) != std::string::npos) problem(where, "cites the shared design notes (" + shared_dir + "), which a clone does not have");
            if (line.find(section_sign) != std::string::npos)
                problem(where, "section sign: cite docs/<name>.md#<anchor> (or write 'section N' for an outside work)");
            // markdown links (.md files): checked relative to the file, then blanked for the plain scan
            if (is_md && line.find("](") != std::string::npos) {
                std::string rest;
                size_t last = 0;
                for (std::sregex_iterator m(line.begin(), line.end(), link), end; m != end; ++m) {
                    std::string target = (*m)[1];
                    rest += line.substr(last, m->position(0) - last) + "]()";
                    last = m->position(0) + m->length(0);
                    if (target.empty() || target.find("://") != std::string::npos || target.rfind("mailto:", 0) == 0) continue;
                    size_t hash = target.find('#');
                    std::string path = target.substr(0, hash), anchor = hash == std::string::npos ? "" : target.substr(hash + 1);
                    std::string resolved = path.empty() ? rel : normalize(dir / path);
                    check_target(where, target, resolved, anchor);
                }
                line = rest + line.substr(last);
            }
            // plain references, relative to the repository root
            if (line.find(".md") != std::string::npos) {
                for (std::sregex_iterator m(line.begin(), line.end(), ref), end; m != end; ++m) {
                    std::string path = (*m)[2], anchor = (*m)[4];
                    if (!anchor.empty()) check_target(where, path + "#" + anchor, normalize(path), anchor);
                    else if (path.rfind("docs/", 0) == 0) check_target(where, path, normalize(path), "");
                }
                for (std::sregex_iterator m(line.begin(), line.end(), notes), end; m != end; ++m)
                    if (std::string((*m)[2]) != "docs/")
                        problem(where, "'" + std::string((*m)[2]) + std::string((*m)[3]) +
                                           ".md': the design notes are not in the repository; cite docs/<name>.md#<anchor>");
            }
        }
    }

    void check_tree(const std::string& skip = "") {
        for (const auto& f : source_files(root))
            if (f != skip) check_file(f);
    }
};

std::string joined(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += x + "\n";
    return s;
}

struct TmpTree {
    fs::path path;
    TmpTree() {
        char tmpl[] = "/tmp/llmc_test_docs_XXXXXX";
        char* p = mkdtemp(tmpl);
        REQUIRE(p != nullptr);
        path = p;
    }
    ~TmpTree() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    void put(const std::string& rel, const std::string& text) {
        fs::create_directories((path / rel).parent_path());
        std::ofstream(path / rel, std::ios::binary) << text;
    }
};

// How many problems mention every one of the given substrings.
int count_with(const std::vector<std::string>& problems, const std::vector<std::string>& subs) {
    int n = 0;
    for (const auto& p : problems) {
        bool all = true;
        for (const auto& s : subs) all = all && p.find(s) != std::string::npos;
        n += all;
    }
    return n;
}

}  // namespace

TEST_CASE("docs: every docs/...#anchor and markdown link in the source tree resolves; no citation of the design notes") {
    REQUIRE_MESSAGE(fs::is_regular_file("docs/model.md"), "run from the repository root");
    Checker c;
    c.root = ".";
    std::vector<std::string> files = source_files(c.root);
    // the scan must see the places the references live, or it would pass vacuously
    for (const char* f : {"train_gpt.cu", "README.md", "Makefile", "docs/model.md", "docs/tokenizer.md", "llmc/muon.h",
                          "llmc/cuda/rmsnorm.cuh", "llmc/cpu/README.md", "test/test_docs.cpp", "dev/gen_unicode_tables.py"})
        CHECK_MESSAGE(std::find(files.begin(), files.end(), f) != files.end(), f);
    c.check_tree("test/test_docs.cpp");
    INFO(joined(c.problems));
    CHECK(c.problems.empty());
    // and it found the anchors it checks against
    CHECK(c.anchors_of("docs/model.md").count("adamw") == 1);
    CHECK(c.anchors_of("docs/model.md").size() >= 30);
    CHECK(c.anchors_of("docs/tokenizer.md").count("bestfit") == 1);
}

TEST_CASE("docs checker: each planted mistake is reported, and only those") {
    TmpTree t;
    t.put("README.md", "<a id=\"top\"></a>\n# x\nSee [the docs](docs/a.md#one) and [gone](docs/b.md#none).\n");
    t.put("docs/a.md",
          "<a id=\"one\"></a>\n## One\n[two](#two) [self-missing](#three) [other](b.md#x) [up](../README.md#top) "
          "[web](https://example.com/a.md#q)\n<a id=\"two\"></a>\n## Two\n");
    t.put("docs/b.md", "<a id=\"x\"></a>\n<a id=\"x\"></a>\n");
    t.put("llmc/good.h", "// see docs/a.md#one, docs/b.md#x and README.md#top; docs/a.md as a whole\n");
    t.put("llmc/bad.h", "// see docs/a.md#nope\n// and docs/missing.md#one\n// and docs/missing2.md\n");
    t.put("test/old.cpp", "// (model.md \xC2\xA7" "3.2)\n// the math is in ../shared/spec/design.md\n");
    t.put("dev/ok.py", "# docs/a.md#two: not a design-notes citation\n");
    t.put("scripts/x.txt", "text files are scanned too: docs/model.md#anything\n");
    t.put("build/ignored.h", "// docs/nothing.md#here (build/ is not scanned)\n");

    Checker c;
    c.root = t.path;
    c.check_tree();
    const auto& p = c.problems;
    INFO(joined(p));
    CHECK(count_with(p, {"README.md:3", "docs/b.md#none", "no anchor 'none'"}) == 1);
    CHECK(count_with(p, {"docs/a.md:3", "#three", "no anchor 'three'"}) == 1);
    CHECK(count_with(p, {"docs/b.md:2", "anchor 'x' is defined twice"}) == 1);
    CHECK(count_with(p, {"llmc/bad.h:1", "docs/a.md#nope", "no anchor 'nope'"}) == 1);
    CHECK(count_with(p, {"llmc/bad.h:2", "docs/missing.md#one", "no such file"}) == 1);
    CHECK(count_with(p, {"llmc/bad.h:3", "docs/missing2.md", "no such file"}) == 1);
    CHECK(count_with(p, {"test/old.cpp:1", "section sign"}) == 1);
    CHECK(count_with(p, {"test/old.cpp:1", "'model.md'", "not in the repository"}) == 1);
    CHECK(count_with(p, {"test/old.cpp:2", "shared design notes"}) == 1);
    CHECK(count_with(p, {"test/old.cpp:2", "design.md'", "not in the repository"}) == 1);
    CHECK(count_with(p, {"scripts/x.txt:1", "docs/model.md#anything", "no such file"}) == 1);
    CHECK(p.size() == 11);  // nothing else: the good references and the skipped build/ file are silent
}
