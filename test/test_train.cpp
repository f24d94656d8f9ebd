// End-to-end tests of the programs as a user runs them: prepare_data on the bundled corpus (or a
// synthetic one where it is absent), then train_gpt_cpu. A tiny model must learn (loss far below
// uniform), save/resume must continue bit-identically, and every kind of bad input must give one
// clear error and a non-zero exit.
// The binaries are built by `make test` before this runs; paths are relative to the repo root.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "llmc/json.h"
#include "llmc/rng.h"
#include "llmc/safetensors.h"
#include "llmc/utils.h"

#include "test/train_test_util.h"

namespace {
using namespace traintest;

std::string data_dir() {
    static std::string dir = make_data_dir("test_train", 1024);
    return dir;
}

// tiny model: depth 2, n_embd 64, 2 heads, T 64; 512 tokens per step
const std::string kTiny = " --depth 2 --aspect-ratio 32 --head-dim 32 --max-seq-len 64 --device-batch-size 8 --total-batch-size 512"
                          " --warmup-steps 10 --matrix-lr 0.04 --embedding-lr 0.6 --unembedding-lr 0.02 --threads 2";

}  // namespace

TEST_CASE("a tiny model trained for 200 steps ends far below the uniform loss ln(V)") {
    std::string d = data_dir();
    Run r = run("./train_gpt_cpu --data-dir " + d + "/data --out-dir " + d + "/learn --num-iterations 200 --eval-every 100"
                " --eval-tokens 8192 --num-samples 1 --sample-tokens 16" + kTiny);
    INFO(r.out);
    REQUIRE(r.status == 0);
    auto log = read_log(d + "/learn/log.jsonl");
    double first = -1, last = -1;
    for (auto& j : log) if (j.has("val_loss")) { if (first < 0) first = j["val_loss"].as_double(); last = j["val_loss"].as_double(); }
    // At init the loss is ln(V) (lm_head ~ N(0, 0.001)). Bound: 2 nats below uniform, i.e. a
    // perplexity 7.4x smaller than guessing; a model that learns nothing stays at ln(1024) = 6.93.
    MESSAGE("val loss " << first << " -> " << last << " (ln V = " << std::log(1024.0) << ")");
    CHECK(first == doctest::Approx(std::log(1024.0)).epsilon(0.01));
    CHECK(last < std::log(1024.0) - 2.0);
    CHECK(r.out.find("--- sample 1 ---") != std::string::npos);
}

TEST_CASE("save, resume, continue: losses after resuming are bit-identical") {
    std::string d = data_dir();
    std::string common = " --data-dir " + d + "/data --num-iterations 12 --eval-every -1 --eval-tokens 1024 --num-samples 0" + kTiny;
    Run a = run("./train_gpt_cpu --out-dir " + d + "/full --save-every 6" + common);
    INFO(a.out);
    REQUIRE(a.status == 0);
    Run b = run("./train_gpt_cpu --out-dir " + d + "/resumed --resume " + d + "/full/meta_000006.json" + common);
    INFO(b.out);
    REQUIRE(b.status == 0);
    CHECK(b.out.find("resumed from") != std::string::npos);
    auto la = read_log(d + "/full/log.jsonl"), lb = read_log(d + "/resumed/log.jsonl");
    std::vector<double> tail_a, tail_b;
    for (auto& j : la) if (j.has("loss") && j["step"].as_int() > 6) tail_a.push_back(j["loss"].as_double());
    for (auto& j : lb) if (j.has("loss")) tail_b.push_back(j["loss"].as_double());
    REQUIRE(tail_a.size() == 6);
    REQUIRE(tail_b.size() == 6);
    for (int i = 0; i < 6; i++) CHECK(tail_a[i] == tail_b[i]);  // exact: %.17g round-trips doubles
    // and the final weights are the same bytes (the tensor data: the headers differ in the run id)
    llmc::SafetensorsFile fa(d + "/full/model_000012.safetensors"), fb(d + "/resumed/model_000012.safetensors");
    CHECK(fa.tensors.size() == fb.tensors.size());
    CHECK(fa.bytes.substr(fa.data_start) == fb.bytes.substr(fb.data_start));
}

TEST_CASE("bad input: one clear error and exit status 1, never a crash") {
    std::string d = data_dir();
    std::string base = "./train_gpt_cpu --data-dir " + d + "/data --out-dir " + d + "/bad --num-iterations 2 --num-samples 0";
    expect_error(base + " --no-such-flag 3", "unknown flag '--no-such-flag'");
    expect_error(base + " --depth x", "expects an integer");
    expect_error(base + kTiny + " --total-batch-size 1000", "not a positive multiple");
    expect_error(base + kTiny + " --n-kv-head 3", "must divide n_head");
    expect_error(base + kTiny + " --arch foo", "--arch must be nanochat or core");
    expect_error(base + kTiny + " --depth 0", "--depth must be >= 1");
    expect_error(base + kTiny + " --head-dim 7", "head_dim 7 must be even");
    expect_error(base + kTiny + " --temperature -1", "--temperature must be >= 0");
    expect_error(base + kTiny + " --tokenizer " + d + "/no_such_tokenizer", "no_such_tokenizer.tiktoken' not found");
    expect_error(base + kTiny + " --train-data '" + d + "/nothing_*.bin'", "nothing_*.bin");
    // token ids >= vocab: the 1024-token shards read with a 100-token vocabulary
    expect_error(base + kTiny + " --tokenizer none --vocab-size 100 --bos-id 5", "vocab");
    // a shard with the wrong magic number
    {
        std::string bad = d + "/badmagic";
        REQUIRE(system(("mkdir -p " + bad).c_str()) == 0);
        std::vector<int32_t> header(256, 0);
        header[0] = 12345; header[1] = 1; header[2] = 4;
        std::string bytes((const char*)header.data(), 1024);
        bytes += std::string(8, '\0');
        llmc::write_file_atomic(bad + "/x_train_000000.bin", bytes);
        expect_error(base + kTiny + " --train-data '" + bad + "/x_train_*.bin'", "magic");
    }
    // a truncated checkpoint
    {
        Run a = run("./train_gpt_cpu --data-dir " + d + "/data --out-dir " + d + "/ck --num-iterations 2 --eval-every -1 --num-samples 0" + kTiny);
        REQUIRE(a.status == 0);
        std::string m = llmc::read_file(d + "/ck/model_000002.safetensors");
        llmc::write_file_atomic(d + "/ck/model_000002.safetensors", m.substr(0, m.size() / 2));
        expect_error(base + kTiny + " --resume " + d + "/ck", "model_000002.safetensors");
        // a meta file that is not JSON
        llmc::write_file_atomic(d + "/ck/meta_000002.json", "{\"step\": 2,");
        expect_error(base + kTiny + " --resume " + d + "/ck", "meta_000002.json");
    }
    // a model flag that differs from the checkpoint's
    {
        Run a = run("./train_gpt_cpu --data-dir " + d + "/data --out-dir " + d + "/ck2 --num-iterations 2 --eval-every -1 --num-samples 0" + kTiny);
        REQUIRE(a.status == 0);
        expect_error(base + kTiny + " --smear 0 --resume " + d + "/ck2", "model_config.smear");
    }
}

TEST_CASE("a diverging run stops with a clear error and keeps the checkpoints already saved") {
    std::string d = data_dir();
    // an absurd learning rate overflows the weights to inf within a few steps
    Run r = run("./train_gpt_cpu --data-dir " + d + "/data --out-dir " + d + "/nan --num-iterations 40 --save-every 1 --eval-every -1"
                " --num-samples 0" + kTiny + " --warmup-steps 1 --unembedding-lr 1e30 --embedding-lr 1e30");
    INFO(r.out);
    CHECK(r.status == 1);
    CHECK(r.out.find("error: training diverged") != std::string::npos);
    CHECK(llmc::file_exists(d + "/nan/meta_000001.json"));
}

TEST_CASE("--help lists every flag with its default") {
    Run r = run("./train_gpt_cpu --help");
    CHECK(r.status == 0);
    for (const char* f : {"--depth", "--device-batch-size", "--total-batch-size", "--max-seq-len", "--resume", "--arch", "--short-window"})
        CHECK(r.out.find(f) != std::string::npos);
    CHECK(r.out.find("[20]") != std::string::npos);  // depth default
}
