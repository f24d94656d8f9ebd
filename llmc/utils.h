// utils.h: errors, checked file I/O, small helpers shared by every program and test.
//
// Errors are exceptions (llmc::Error) rather than exit() calls so that tests can check that bad
// input produces the right message (CHECK_THROWS_WITH_AS) without killing the test runner.
// Every program's main() wraps its body in LLMC_MAIN_GUARD, which prints the one-line message
// and exits with status 1: the user sees one clear sentence, never a crash.
#pragma once
#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace llmc {

struct Error : std::runtime_error {
    explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// printf-style formatting into a std::string
inline std::string strfmt(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string strfmt(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(nullptr, 0, fmt, ap);
    va_end(ap);
    std::string s(n > 0 ? (size_t)n : 0, '\0');
    if (n > 0) vsnprintf(&s[0], (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    return s;
}

// throw llmc::Error with a formatted message
[[noreturn]] inline void fail(const std::string& msg) { throw Error(msg); }
#define LLMC_FAIL(...) ::llmc::fail(::llmc::strfmt(__VA_ARGS__))
#define LLMC_CHECK(cond, ...) do { if (!(cond)) LLMC_FAIL(__VA_ARGS__); } while (0)

// ---- checked file I/O: every error names the file (and offset where it applies) ----

struct File {
    FILE* f = nullptr;
    std::string path;
    File() = default;
    File(const std::string& p, const char* mode) : path(p) {
        f = fopen(p.c_str(), mode);
        if (!f) LLMC_FAIL("cannot open '%s' (%s): %s", p.c_str(), mode, strerror(errno));
    }
    File(const File&) = delete;
    File& operator=(const File&) = delete;
    File(File&& o) noexcept : f(o.f), path(std::move(o.path)) { o.f = nullptr; }
    ~File() { if (f) fclose(f); }
    int64_t size() {
        long cur = ftell(f);
        fseek(f, 0, SEEK_END);
        int64_t s = ftell(f);
        fseek(f, cur, SEEK_SET);
        return s;
    }
    void seek(int64_t off) {
        if (fseek(f, (long)off, SEEK_SET) != 0) LLMC_FAIL("'%s': cannot seek to offset %lld", path.c_str(), (long long)off);
    }
    // read exactly n bytes at the current position, or fail naming the offset
    void read(void* dst, size_t n) {
        long off = ftell(f);
        size_t got = fread(dst, 1, n, f);
        if (got != n) LLMC_FAIL("'%s': truncated: wanted %zu bytes at offset %ld, got %zu", path.c_str(), n, off, got);
    }
    void write(const void* src, size_t n) {
        if (n && fwrite(src, 1, n, f) != n) LLMC_FAIL("'%s': write failed: %s", path.c_str(), strerror(errno));
    }
    void close() {
        if (f && fclose(f) != 0) { f = nullptr; LLMC_FAIL("'%s': close failed: %s", path.c_str(), strerror(errno)); }
        f = nullptr;
    }
};

inline std::string read_file(const std::string& path) {
    File f(path, "rb");
    int64_t n = f.size();
    std::string s((size_t)n, '\0');
    if (n) f.read(&s[0], (size_t)n);
    return s;
}

inline bool file_exists(const std::string& path) {
    FILE* f = fopen(path.c_str(), "rb");
    if (f) fclose(f);
    return f != nullptr;
}

// The directory part of a path ("." when it has none), for fsync_dir.
inline std::string dir_of(const std::string& path) {
    size_t s = path.rfind('/');
    if (s == std::string::npos) return ".";
    return s == 0 ? "/" : path.substr(0, s);
}

// fsync a directory, so that a rename or a new file in it survives a power loss.
inline void fsync_dir(const std::string& dir) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd < 0) LLMC_FAIL("cannot open directory '%s' to sync it: %s", dir.c_str(), strerror(errno));
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    // EINVAL: the file system cannot sync directories (some FUSE/network mounts); nothing to do then
    if (rc != 0 && err != EINVAL) LLMC_FAIL("cannot sync directory '%s': %s", dir.c_str(), strerror(err));
}

// A file written under "<path>.tmp" and renamed to <path> by commit(), so that <path> holds either
// its old complete content or the new complete content, never a prefix. Every step is checked
// (each write, fflush, fsync, fclose, rename; a full disk usually shows only at the flush or the
// close), and the directory is synced after the rename. If commit() is never reached (an error,
// an exception) the destructor removes the temporary: a failed save leaves only what was there.
struct AtomicFile {
    std::string path, tmp;
    File file;
    bool done = false;
    explicit AtomicFile(const std::string& p) : path(p), tmp(p + ".tmp"), file(tmp, "wb") {}
    AtomicFile(const AtomicFile&) = delete;
    AtomicFile& operator=(const AtomicFile&) = delete;
    ~AtomicFile() {
        if (done) return;
        if (file.f) { fclose(file.f); file.f = nullptr; }
        unlink(tmp.c_str());
    }
    void write(const void* src, size_t n) { file.write(src, n); }
    void commit() {
        if (fflush(file.f) != 0) LLMC_FAIL("'%s': write failed: %s", tmp.c_str(), strerror(errno));
        if (fsync(fileno(file.f)) != 0 && errno != EINVAL) LLMC_FAIL("'%s': fsync failed: %s", tmp.c_str(), strerror(errno));
        file.close();
        if (rename(tmp.c_str(), path.c_str()) != 0) LLMC_FAIL("cannot rename '%s' to '%s': %s", tmp.c_str(), path.c_str(), strerror(errno));
        done = true;
        fsync_dir(dir_of(path));
    }
};

// Write a whole file atomically (AtomicFile).
inline void write_file_atomic(const std::string& path, const std::string& data) {
    AtomicFile f(path);
    f.write(data.data(), data.size());
    f.commit();
}

// Progress lines: on a terminal one line rewritten in place ("\r"), in a log file one line each.
inline bool progress_tty() {
    static const bool tty = isatty(fileno(stderr));
    return tty;
}
inline const char* progress_begin() { return progress_tty() ? "\r" : ""; }
inline const char* progress_end() { return progress_tty() ? "" : "\n"; }
// after the last progress line: end the rewritten line on a terminal
inline void progress_done() { if (progress_tty()) fputc('\n', stderr); }

// mkdir -p: create dir and its missing parents; `what` names the flag or input in the error.
inline void make_dirs(const std::string& dir, const char* what) {
    size_t p = 0;
    while (p <= dir.size()) {
        size_t s = dir.find('/', p);
        if (s == std::string::npos) s = dir.size();
        std::string cur = dir.substr(0, s);
        p = s + 1;
        if (cur.empty()) continue;
        struct stat st;
        if (stat(cur.c_str(), &st) == 0) {
            if (!S_ISDIR(st.st_mode)) LLMC_FAIL("%s: '%s' exists and is not a directory", what, cur.c_str());
            continue;
        }
        if (mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) LLMC_FAIL("%s: cannot create '%s': %s", what, cur.c_str(), strerror(errno));
    }
}

}  // namespace llmc

// Wrap a program's main body: any llmc::Error (or other exception) becomes one line on stderr and
// exit status 1.
#define LLMC_MAIN_GUARD(...)                                                \
    try { __VA_ARGS__ } catch (const std::exception& e__) {                         \
        fprintf(stderr, "error: %s\n", e__.what());                          \
        return 1;                                                            \
    }
