// cli.h: a small command-line parser shared by the programs.
//
// Flags are registered with a pointer to their variable, whose initial value is the default that
// --help prints. Both "--name value" and "--name=value" are accepted. An unknown flag, a missing
// value or a value that does not parse as the flag's type is one clear error naming the flag.
// A bool flag may also stand alone ("--eval-only" = "--eval-only 1"). given(name) tells whether a
// flag was on the command line (a program may then take the others from a checkpoint).
#pragma once
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "llmc/utils.h"

namespace llmc {

struct Cli {
    enum Kind { INT, INT64, DOUBLE, STRING, BOOL };
    struct Flag { std::string name; Kind kind; void* ptr; std::string help; std::string def; };
    std::string program, summary;
    std::vector<Flag> flags;
    bool help_requested = false;
    std::vector<std::string> given_names;  // flags set on the command line, in order

    bool given(const std::string& name) const {
        for (auto& g : given_names) if (g == name) return true;
        return false;
    }
    Flag* find(const std::string& name) {
        for (auto& fl : flags) if (fl.name == name) return &fl;
        return nullptr;
    }
    static bool is_bool_word(const std::string& v) {
        return v == "1" || v == "0" || v == "true" || v == "false" || v == "on" || v == "off";
    }

    Cli(std::string prog, std::string sum) : program(std::move(prog)), summary(std::move(sum)) {}

    static std::string show(Kind k, void* p) {
        switch (k) {
            case INT: return std::to_string(*(int*)p);
            case INT64: return std::to_string(*(long long*)p);
            case DOUBLE: return strfmt("%g", *(double*)p);
            case STRING: return "\"" + *(std::string*)p + "\"";
            case BOOL: return *(bool*)p ? "1" : "0";
        }
        return "";
    }
    void add(const std::string& name, int* p, const std::string& help) { flags.push_back({name, INT, p, help, show(INT, p)}); }
    void add(const std::string& name, long long* p, const std::string& help) { flags.push_back({name, INT64, p, help, show(INT64, p)}); }
    void add(const std::string& name, double* p, const std::string& help) { flags.push_back({name, DOUBLE, p, help, show(DOUBLE, p)}); }
    void add(const std::string& name, std::string* p, const std::string& help) { flags.push_back({name, STRING, p, help, show(STRING, p)}); }
    void add(const std::string& name, bool* p, const std::string& help) { flags.push_back({name, BOOL, p, help, show(BOOL, p)}); }

    void print_help(FILE* out = stdout) const {
        fprintf(out, "usage: %s [flags]\n%s\n\nflags (default in brackets):\n", program.c_str(), summary.c_str());
        for (auto& f : flags) fprintf(out, "  --%-26s %s [%s]\n", f.name.c_str(), f.help.c_str(), f.def.c_str());
    }

    static void set_value(const Flag& f, const std::string& v) {
        char* end = nullptr;
        errno = 0;
        switch (f.kind) {
            case INT: case INT64: {
                long long x = strtoll(v.c_str(), &end, 10);
                if (v.empty() || *end || errno) LLMC_FAIL("flag --%s expects an integer, got '%s'", f.name.c_str(), v.c_str());
                if (f.kind == INT) {
                    if (x < -2147483647LL || x > 2147483647LL) LLMC_FAIL("flag --%s: %s is out of range", f.name.c_str(), v.c_str());
                    *(int*)f.ptr = (int)x;
                } else *(long long*)f.ptr = x;
                break;
            }
            case DOUBLE: {
                double x = strtod(v.c_str(), &end);
                if (v.empty() || *end || errno) LLMC_FAIL("flag --%s expects a number, got '%s'", f.name.c_str(), v.c_str());
                *(double*)f.ptr = x;
                break;
            }
            case STRING: *(std::string*)f.ptr = v; break;
            case BOOL:
                if (v == "1" || v == "true" || v == "on") *(bool*)f.ptr = true;
                else if (v == "0" || v == "false" || v == "off") *(bool*)f.ptr = false;
                else LLMC_FAIL("flag --%s expects 0/1 (or true/false, on/off), got '%s'", f.name.c_str(), v.c_str());
                break;
        }
    }

    // Parse argv. Returns false if --help was given (help printed to stdout).
    bool parse(int argc, char** argv) {
        for (int i = 1; i < argc; i++) {
            std::string a = argv[i];
            if (a == "--help" || a == "-h") { print_help(); help_requested = true; return false; }
            if (a.rfind("--", 0) != 0) LLMC_FAIL("unexpected argument '%s' (flags start with --; see --help)", a.c_str());
            std::string name = a.substr(2), value;
            bool has_value = false;
            size_t eq = name.find('=');
            if (eq != std::string::npos) { value = name.substr(eq + 1); name = name.substr(0, eq); has_value = true; }
            for (auto& c : name) if (c == '_') c = '-';
            const Flag* f = nullptr;
            for (auto& fl : flags) if (fl.name == name) f = &fl;
            if (!f) LLMC_FAIL("unknown flag '--%s' (see --help for the list)", name.c_str());
            if (!has_value && f->kind == BOOL && (i + 1 >= argc || !is_bool_word(argv[i + 1]))) {
                value = "1";  // a bare bool flag
            } else if (!has_value) {
                if (i + 1 >= argc) LLMC_FAIL("flag --%s needs a value", name.c_str());
                value = argv[++i];
            }
            set_value(*f, value);
            given_names.push_back(name);
        }
        return true;
    }
};

}  // namespace llmc
