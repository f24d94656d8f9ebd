// fuzz_tokenizer.cpp: libFuzzer target for the tokenizer (llmc/tokenizer.h) and its file parsers.
// Built with clang++ -fsanitize=fuzzer,address,undefined when clang is present (Makefile:
// build/fuzz/fuzz_tokenizer) and run for a bounded time by `make test`; without clang the
// randomized "fuzz:" test case of test/test_tokenizer.cpp covers the same ground.
//
// The first input byte picks what the rest of the input is fed to:
//   0  text:  split (all three patterns) must cut it into pieces that concatenate back to it;
//             encode_ordinary then decode_bytes must round-trip; decode_text must be valid UTF-8;
//             encode_with_specials must decode back to the text too.
//   1  a .tiktoken ranks file (parsed in memory): it loads or throws llmc::Error.
//   2  a sidecar JSON applied to a good vocabulary: it loads or throws llmc::Error.
//   3  token ids (4 bytes each, reduced modulo n_vocab + 16): decode or throw llmc::Error.
// Anything else (a crash, a sanitizer report, a broken invariant -> abort) is a finding.
//   run by hand: build/fuzz/fuzz_tokenizer -max_total_time=600 build/fuzz/corpus
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "llmc/json.h"
#include "llmc/tokenizer.h"

using namespace llmc;

static void require(bool ok, const char* what) {
    if (!ok) { fprintf(stderr, "fuzz_tokenizer: invariant broken: %s\n", what); abort(); }
}

// A small tokenizer trained once on a fixed text, with merges across letters, spaces and digits.
static const Tokenizer& base() {
    static Tokenizer t = [] {
        TrainOptions o;
        o.vocab_size = 256 + 9 + 120;
        o.name = "fuzz";
        o.threads = 1;
        std::string text;
        for (int i = 0; i < 40; i++)
            text += "The quick brown fox jumps over the lazy dog " + std::to_string(i * 37) + "; it's fine, isn't it?\n\n";
        return tokenizer_train({text}, o);
    }();
    return t;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    const Tokenizer& t = base();
    const std::string in((const char*)data + 1, size - 1);
    switch (data[0] % 4) {
        case 0: {
            for (SplitPattern p : {SplitPattern::Nanochat, SplitPattern::GPT4, SplitPattern::GPT2}) {
                std::string cat;
                for (const auto& piece : split_text(in, p)) { require(!piece.empty(), "empty piece"); cat += piece; }
                require(cat == in, "split pieces do not concatenate to the input");
            }
            std::vector<uint32_t> ids = encode_ordinary(t, in);
            for (uint32_t id : ids) require(id < t.n_mergeable(), "encode_ordinary emitted a special token");
            require(decode_bytes(t, ids) == in, "decode_bytes(encode_ordinary(s)) != s");
            std::string txt = decode_text(t, ids);
            require(utf8_replace_invalid(txt) == txt, "decode_text output is not valid UTF-8");
            require(decode_bytes(t, encode_with_specials(t, in)) == in, "decode(encode_with_specials(s)) != s");
            break;
        }
        case 1: {
            try {
                Tokenizer u;
                u.vocab = parse_tiktoken(in, "fuzz.tiktoken");
                Json side = sidecar_json(t);
                side.set("n_mergeable", (int64_t)u.vocab.size());
                apply_sidecar(u, side, "fuzz.json");
            } catch (const Error&) {}
            break;
        }
        case 2: {
            try {
                Tokenizer u;
                u.vocab = t.vocab;
                apply_sidecar(u, json_parse(in, "fuzz.json"), "fuzz.json");
                (void)decode_text(u, encode_ordinary(u, "fuzz text 123"));
            } catch (const Error&) {}
            break;
        }
        default: {
            std::vector<uint32_t> ids;
            for (size_t i = 0; i + 4 <= in.size(); i += 4) {
                uint32_t v;
                memcpy(&v, in.data() + i, 4);
                ids.push_back(v % (t.n_vocab + 16));
            }
            try { (void)decode_text(t, ids); } catch (const Error&) {}
            break;
        }
    }
    return 0;
}
