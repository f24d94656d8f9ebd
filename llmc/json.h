// json.h: a small JSON value, parser and printer for the project's own files (tokenizer sidecars,
// checkpoint meta, safetensors headers).
//
// Json is a plain tagged struct: null, bool, integer (int64, kept exactly when the text is an
// integer literal that fits), double, string (UTF-8), array, object. Objects keep their keys in
// insertion order (a vector of pairs) because the files we write have a fixed, documented key order
// and a human diffing two checkpoints wants the same order back; lookups are linear, which is fine
// for objects of a few dozen keys.
//
// json_parse is strict RFC 8259 (no comments, no trailing commas, no NaN, duplicate keys rejected,
// strings must be valid UTF-8, \uXXXX surrogate pairs combined, lone surrogates rejected) and
// throws llmc::Error naming the source and the byte offset of the problem. Nesting is capped so a
// hostile file cannot overflow the stack. json_dump writes doubles with %.17g so they read back
// bit-identical (the shortest of %.15g..%.17g that does), and always marks a double with '.' or 'e'
// so its type survives a round trip (1.0 is written "1.0", not "1"). Pretty output (indent >= 0)
// puts an array of scalars on one line.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "llmc/utils.h"

namespace llmc {

struct Json {
    enum Type { Null, Bool, Int, Double, String, Array, Object };
    Type type = Null;
    bool b = false;
    int64_t i = 0;
    double d = 0.0;
    std::string s;
    std::vector<Json> arr;
    std::vector<std::pair<std::string, Json>> obj;

    // ---- builders (implicit so that j.set("lr", 0.02) and Json::array({1, "a"}) read naturally) ----
    Json() = default;
    Json(std::nullptr_t) {}
    Json(bool v) : type(Bool), b(v) {}
    Json(int v) : type(Int), i(v) {}
    Json(long v) : type(Int), i(v) {}
    Json(long long v) : type(Int), i(v) {}
    Json(unsigned v) : type(Int), i(v) {}
    Json(unsigned long v) : type(Int), i((int64_t)v) {}
    Json(unsigned long long v) : type(Int), i((int64_t)v) {}
    Json(double v) : type(Double), d(v) {}
    Json(float v) : type(Double), d(v) {}
    Json(const char* v) : type(String), s(v) {}
    Json(const std::string& v) : type(String), s(v) {}
    Json(std::string&& v) : type(String), s(std::move(v)) {}
    static Json array(std::vector<Json> items = {}) { Json j; j.type = Array; j.arr = std::move(items); return j; }
    static Json object() { Json j; j.type = Object; return j; }

    static const char* type_name(Type t) {
        switch (t) {
            case Null: return "null"; case Bool: return "bool"; case Int: return "integer";
            case Double: return "number"; case String: return "string"; case Array: return "array";
            case Object: return "object";
        }
        return "?";
    }
    const char* type_name() const { return type_name(type); }

    bool is_null() const { return type == Null; }
    bool is_bool() const { return type == Bool; }
    bool is_int() const { return type == Int; }
    bool is_number() const { return type == Int || type == Double; }
    bool is_string() const { return type == String; }
    bool is_array() const { return type == Array; }
    bool is_object() const { return type == Object; }

    // ---- typed access: a wrong type is an error naming both types ----
    bool as_bool() const {
        if (type != Bool) LLMC_FAIL("JSON: expected bool, got %s", type_name());
        return b;
    }
    // An integer; a double is accepted only if it is integral and in range (e.g. 1e3).
    int64_t as_int() const {
        if (type == Int) return i;
        if (type == Double && std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.2e18) return (int64_t)d;
        if (type == Double) LLMC_FAIL("JSON: expected integer, got non-integral number %.17g", d);
        LLMC_FAIL("JSON: expected integer, got %s", type_name());
    }
    double as_double() const {
        if (type == Double) return d;
        if (type == Int) return (double)i;
        LLMC_FAIL("JSON: expected number, got %s", type_name());
    }
    const std::string& as_string() const {
        if (type != String) LLMC_FAIL("JSON: expected string, got %s", type_name());
        return s;
    }
    const std::vector<Json>& as_array() const {
        if (type != Array) LLMC_FAIL("JSON: expected array, got %s", type_name());
        return arr;
    }
    std::vector<Json>& as_array() {
        if (type != Array) LLMC_FAIL("JSON: expected array, got %s", type_name());
        return arr;
    }
    const std::vector<std::pair<std::string, Json>>& as_object() const {
        if (type != Object) LLMC_FAIL("JSON: expected object, got %s", type_name());
        return obj;
    }

    // ---- objects ----
    bool has(const std::string& key) const {
        if (type != Object) return false;
        for (auto& kv : obj) if (kv.first == key) return true;
        return false;
    }
    const Json* find(const std::string& key) const {
        if (type != Object) return nullptr;
        for (auto& kv : obj) if (kv.first == key) return &kv.second;
        return nullptr;
    }
    const Json& operator[](const std::string& key) const {
        if (type != Object) LLMC_FAIL("JSON: cannot look up key '%s' in a %s", key.c_str(), type_name());
        const Json* v = find(key);
        if (!v) LLMC_FAIL("JSON: missing key '%s'", key.c_str());
        return *v;
    }
    const Json& operator[](const char* key) const { return (*this)[std::string(key)]; }
    // Set (replace in place, keeping its position) or append a key. A null Json becomes an object.
    Json& set(const std::string& key, Json value) {
        if (type == Null) type = Object;
        if (type != Object) LLMC_FAIL("JSON: cannot set key '%s' on a %s", key.c_str(), type_name());
        for (auto& kv : obj) if (kv.first == key) { kv.second = std::move(value); return *this; }
        obj.emplace_back(key, std::move(value));
        return *this;
    }

    // ---- arrays ----
    size_t size() const {
        if (type == Array) return arr.size();
        if (type == Object) return obj.size();
        LLMC_FAIL("JSON: size() of a %s", type_name());
    }
    const Json& operator[](size_t k) const {
        if (type != Array) LLMC_FAIL("JSON: cannot index a %s", type_name());
        if (k >= arr.size()) LLMC_FAIL("JSON: index %zu out of range (array of %zu)", k, arr.size());
        return arr[k];
    }
    const Json& operator[](int k) const { return (*this)[(size_t)k]; }
    Json& push(Json value) {
        if (type == Null) type = Array;
        if (type != Array) LLMC_FAIL("JSON: cannot append to a %s", type_name());
        arr.push_back(std::move(value));
        return *this;
    }

    // structural equality (Int 1 and Double 1.0 differ: the type is part of the value)
    bool operator==(const Json& o) const {
        if (type != o.type) return false;
        switch (type) {
            case Null: return true;
            case Bool: return b == o.b;
            case Int: return i == o.i;
            case Double: return d == o.d || (std::isnan(d) && std::isnan(o.d));
            case String: return s == o.s;
            case Array: return arr == o.arr;
            case Object: return obj == o.obj;
        }
        return false;
    }
    bool operator!=(const Json& o) const { return !(*this == o); }
};

// ------------------------------------------------------------------------------------------------
// Parser

namespace json_detail {

struct Parser {
    const std::string& t;
    const std::string& what;
    size_t p = 0;
    int depth = 0;
    size_t base = 0;  // added to offsets in messages: where t starts in its file (a line of a JSON Lines file)
    static constexpr int kMaxDepth = 512;

    [[noreturn]] void fail_at(size_t off, const char* msg) {
        LLMC_FAIL("%s: invalid JSON at byte offset %zu: %s", what.c_str(), base + off, msg);
    }
    void ws() {
        while (p < t.size() && (t[p] == ' ' || t[p] == '\t' || t[p] == '\n' || t[p] == '\r')) p++;
    }
    bool lit(const char* w) {
        size_t n = strlen(w);
        if (t.compare(p, n, w) == 0) { p += n; return true; }
        return false;
    }
    static void put_utf8(std::string& out, uint32_t cp) {
        if (cp < 0x80) out += (char)cp;
        else if (cp < 0x800) { out += (char)(0xC0 | (cp >> 6)); out += (char)(0x80 | (cp & 0x3F)); }
        else if (cp < 0x10000) {
            out += (char)(0xE0 | (cp >> 12)); out += (char)(0x80 | ((cp >> 6) & 0x3F)); out += (char)(0x80 | (cp & 0x3F));
        } else {
            out += (char)(0xF0 | (cp >> 18)); out += (char)(0x80 | ((cp >> 12) & 0x3F));
            out += (char)(0x80 | ((cp >> 6) & 0x3F)); out += (char)(0x80 | (cp & 0x3F));
        }
    }
    uint32_t hex4() {
        if (p + 4 > t.size()) fail_at(p, "truncated \\u escape");
        uint32_t v = 0;
        for (int k = 0; k < 4; k++) {
            char c = t[p + k];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
            else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
            else fail_at(p + k, "bad hex digit in \\u escape");
        }
        p += 4;
        return v;
    }
    // Length of the well-formed UTF-8 sequence at t[q] (Unicode Table 3-7), or 0 if ill-formed.
    size_t utf8_len(size_t q) const {
        const unsigned char* u = (const unsigned char*)t.data();
        size_t n = t.size();
        unsigned c = u[q];
        if (c < 0x80) return 1;
        auto cont = [&](size_t k, unsigned lo, unsigned hi) { return q + k < n && u[q + k] >= lo && u[q + k] <= hi; };
        if (c >= 0xC2 && c <= 0xDF) return cont(1, 0x80, 0xBF) ? 2 : 0;
        if (c >= 0xE0 && c <= 0xEF) {
            unsigned lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
            return cont(1, lo, hi) && cont(2, 0x80, 0xBF) ? 3 : 0;
        }
        if (c >= 0xF0 && c <= 0xF4) {
            unsigned lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
            return cont(1, lo, hi) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) ? 4 : 0;
        }
        return 0;
    }
    std::string str() {
        // at the opening quote
        size_t start = p;
        p++;
        std::string out;
        for (;;) {
            if (p >= t.size()) fail_at(start, "unterminated string");
            unsigned char c = (unsigned char)t[p];
            if (c == '"') { p++; return out; }
            if (c < 0x20) fail_at(p, "control character in string (must be escaped)");
            if (c == '\\') {
                if (p + 1 >= t.size()) fail_at(p, "truncated escape");
                char e = t[p + 1];
                size_t esc = p;
                p += 2;
                switch (e) {
                    case '"': out += '"'; break;
                    case '\\': out += '\\'; break;
                    case '/': out += '/'; break;
                    case 'b': out += '\b'; break;
                    case 'f': out += '\f'; break;
                    case 'n': out += '\n'; break;
                    case 'r': out += '\r'; break;
                    case 't': out += '\t'; break;
                    case 'u': {
                        uint32_t cp = hex4();
                        if (cp >= 0xDC00 && cp <= 0xDFFF) fail_at(esc, "lone low surrogate in \\u escape");
                        if (cp >= 0xD800 && cp <= 0xDBFF) {
                            if (!(p + 1 < t.size() && t[p] == '\\' && t[p + 1] == 'u'))
                                fail_at(esc, "high surrogate not followed by a low surrogate");
                            p += 2;
                            uint32_t lo = hex4();
                            if (lo < 0xDC00 || lo > 0xDFFF) fail_at(esc, "high surrogate not followed by a low surrogate");
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        }
                        put_utf8(out, cp);
                        break;
                    }
                    default: fail_at(esc, "unknown escape");
                }
                continue;
            }
            size_t n = utf8_len(p);
            if (n == 0) fail_at(p, "invalid UTF-8 in string");
            out.append(t, p, n);
            p += n;
        }
    }
    Json number() {
        size_t start = p;
        bool integral = true;
        if (t[p] == '-') p++;
        auto digit = [&](size_t q) { return q < t.size() && t[q] >= '0' && t[q] <= '9'; };
        if (!digit(p)) fail_at(start, "bad number");
        if (t[p] == '0') {
            p++;
            if (digit(p)) fail_at(start, "leading zero in number");
        } else {
            while (digit(p)) p++;
        }
        if (p < t.size() && t[p] == '.') {
            integral = false;
            p++;
            if (!digit(p)) fail_at(p, "expected digit after '.'");
            while (digit(p)) p++;
        }
        if (p < t.size() && (t[p] == 'e' || t[p] == 'E')) {
            integral = false;
            p++;
            if (p < t.size() && (t[p] == '+' || t[p] == '-')) p++;
            if (!digit(p)) fail_at(p, "expected digit in exponent");
            while (digit(p)) p++;
        }
        std::string lit_text = t.substr(start, p - start);
        if (integral) {
            errno = 0;
            char* end = nullptr;
            long long v = strtoll(lit_text.c_str(), &end, 10);
            if (errno == 0 && end && *end == 0) return Json((int64_t)v);
            // out of int64 range: fall through to double
        }
        return Json(strtod(lit_text.c_str(), nullptr));
    }
    Json value() {
        ws();
        if (p >= t.size()) fail_at(p, "unexpected end of input, expected a value");
        char c = t[p];
        if (c == '{' || c == '[') {
            if (++depth > kMaxDepth) fail_at(p, "nesting too deep");
            Json j = c == '{' ? object() : array();
            depth--;
            return j;
        }
        if (c == '"') return Json(str());
        if (c == '-' || (c >= '0' && c <= '9')) return number();
        if (lit("true")) return Json(true);
        if (lit("false")) return Json(false);
        if (lit("null")) return Json();
        fail_at(p, "unexpected character, expected a value");
    }
    Json array() {
        Json j = Json::array();
        p++;
        ws();
        if (p < t.size() && t[p] == ']') { p++; return j; }
        for (;;) {
            j.arr.push_back(value());
            ws();
            if (p >= t.size()) fail_at(p, "unterminated array");
            if (t[p] == ',') { p++; continue; }
            if (t[p] == ']') { p++; return j; }
            fail_at(p, "expected ',' or ']' in array");
        }
    }
    Json object() {
        Json j = Json::object();
        p++;
        ws();
        if (p < t.size() && t[p] == '}') { p++; return j; }
        for (;;) {
            ws();
            if (p >= t.size() || t[p] != '"') fail_at(p, "expected a string key in object");
            size_t kpos = p;
            std::string key = str();
            if (j.has(key)) fail_at(kpos, ("duplicate key '" + key + "'").c_str());
            ws();
            if (p >= t.size() || t[p] != ':') fail_at(p, "expected ':' after object key");
            p++;
            j.obj.emplace_back(std::move(key), value());
            ws();
            if (p >= t.size()) fail_at(p, "unterminated object");
            if (t[p] == ',') { p++; continue; }
            if (t[p] == '}') { p++; return j; }
            fail_at(p, "expected ',' or '}' in object");
        }
    }
};

inline void dump_string(std::string& out, const std::string& s) {
    out += '"';
    for (unsigned char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            default:
                if (c < 0x20) out += strfmt("\\u%04x", c);
                else out += (char)c;  // UTF-8 passes through unchanged
        }
    }
    out += '"';
}

inline void dump(std::string& out, const Json& j, int indent, int level) {
    auto newline = [&](int lv) {
        if (indent < 0) return;
        out += '\n';
        out.append((size_t)(indent * lv), ' ');
    };
    switch (j.type) {
        case Json::Null: out += "null"; break;
        case Json::Bool: out += j.b ? "true" : "false"; break;
        case Json::Int: out += strfmt("%lld", (long long)j.i); break;
        case Json::Double: {
            if (!std::isfinite(j.d)) LLMC_FAIL("JSON: cannot write non-finite number %g", j.d);
            // shortest of %.15g/%.16g/%.17g that reads back bit-identical (0.02 stays "0.02")
            std::string n;
            for (int prec = 15; prec <= 17; prec++) {
                n = strfmt("%.*g", prec, j.d);
                if (strtod(n.c_str(), nullptr) == j.d) break;
            }
            if (n.find_first_of(".eE") == std::string::npos) n += ".0";  // keep it a double on re-read
            out += n;
            break;
        }
        case Json::String: dump_string(out, j.s); break;
        case Json::Array: {
            if (j.arr.empty()) { out += "[]"; break; }
            // an array of scalars stays on one line even when pretty-printing ([name, id] pairs,
            // shapes, loss curves): one element per line would only make files long
            bool flat = indent >= 0;
            for (auto& e : j.arr) flat = flat && e.type != Json::Array && e.type != Json::Object;
            if (flat) {
                out += '[';
                for (size_t k = 0; k < j.arr.size(); k++) {
                    if (k) out += ", ";
                    dump(out, j.arr[k], indent, level + 1);
                }
                out += ']';
                break;
            }
            out += '[';
            for (size_t k = 0; k < j.arr.size(); k++) {
                if (k) out += ',';
                newline(level + 1);
                dump(out, j.arr[k], indent, level + 1);
            }
            newline(level);
            out += ']';
            break;
        }
        case Json::Object:
            if (j.obj.empty()) { out += "{}"; break; }
            out += '{';
            for (size_t k = 0; k < j.obj.size(); k++) {
                if (k) out += ',';
                newline(level + 1);
                dump_string(out, j.obj[k].first);
                out += indent < 0 ? ":" : ": ";
                dump(out, j.obj[k].second, indent, level + 1);
            }
            newline(level);
            out += '}';
            break;
    }
}

}  // namespace json_detail

// Parse a whole document; `what` names the source (a file path) in error messages, and byte
// offsets in them are counted from base_offset (the position of `text` in its file).
inline Json json_parse(const std::string& text, const std::string& what, size_t base_offset = 0) {
    json_detail::Parser ps{text, what};
    ps.base = base_offset;
    Json j = ps.value();
    ps.ws();
    if (ps.p != text.size()) ps.fail_at(ps.p, "trailing characters after the JSON value");
    return j;
}

// indent >= 0: pretty-printed with that many spaces per level; indent < 0: compact, one line.
inline std::string json_dump(const Json& j, int indent = 2) {
    std::string out;
    json_detail::dump(out, j, indent, 0);
    return out;
}

}  // namespace llmc
