// End-to-end tests of train_moe_cpu, the hybrid trainer (docs/model.md#hybrid), run as a user runs
// it: prepare_data on the bundled corpus (or a synthetic one where it is absent), then a tiny model
// with 2 lightning layers and 1 softmax layer (3 heads: non-power-of-two slopes), a dense first FFN
// and 2 MoE FFNs (8 experts, top 2, one shared). It must learn (val loss far below uniform), keep
// its routing balanced (maxvio bounded, no dead expert), resume bit-identically (the balancing bias
// is in the model file, the load counters are zero at step boundaries), and refuse bad input with
// one clear error.
// The binaries are built by `make test` before this runs; paths are relative to the repo root.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "llmc/json.h"
#include "llmc/safetensors.h"
#include "llmc/utils.h"

#include "test/train_test_util.h"

namespace {
using namespace traintest;

std::string data_dir() {
    static std::string dir;
    if (!dir.empty()) return dir;
    char tmpl[] = "/tmp/llmc_test_train_moe_XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    dir = tmpl;
    Run r = run("./prepare_data --input " + corpus_path(dir) + " --out " + dir + "/data --vocab-size 1024 --prefix ts");
    INFO(r.out);
    REQUIRE(r.status == 0);
    return dir;
}

// depth 3, n_embd 96, 3 heads of 32, T 64; mixers L L S, FFNs D M M (E 8, K 2, N_s 1, F 128);
// lightning blocks of 16 (4 per row); 512 tokens per step in 2 micro-batches
const std::string kTiny = " --depth 3 --aspect-ratio 32 --head-dim 32 --max-seq-len 64 --device-batch-size 4 --total-batch-size 512"
                          " --attn-period 3 --moe-dense-layers 1 --moe-experts 8 --moe-topk 2 --moe-shared 1 --la-block 16"
                          " --warmup-steps 10 --matrix-lr 0.04 --embedding-lr 0.6 --unembedding-lr 0.02 --threads 1";

}  // namespace

// per-step maxvio (worst layer) of a run's log, averaged over its last n steps
double mean_maxvio(const std::vector<llmc::Json>& log, int n) {
    std::vector<double> v;
    for (auto& j : log) if (j.has("maxvio")) v.push_back(j["maxvio"].as_double());
    REQUIRE((int)v.size() >= n);
    double s = 0;
    for (int i = (int)v.size() - n; i < (int)v.size(); i++) s += v[i];
    return s / n;
}

TEST_CASE("a tiny hybrid MoE model learns, and the balancing bias keeps its routing balanced") {
    std::string d = data_dir();
    // gamma 0.01: the default 1e-3 is for runs of thousands of steps (the bias moves at most
    // steps x gamma: 0.12 in 120 steps, not enough to settle here); the rule is the same
    std::string common = " --data-dir " + d + "/data --num-iterations 120 --num-samples 1 --sample-tokens 16 --moe-log-every 20" + kTiny;
    Run r = run("./train_moe_cpu --out-dir " + d + "/learn --eval-every 60 --eval-tokens 8192 --moe-bias-rate 0.01" + common);
    INFO(r.out);
    REQUIRE(r.status == 0);
    CHECK(r.out.find("layers: mixers LLS") != std::string::npos);
    CHECK(r.out.find("FFNs DMM") != std::string::npos);
    auto log = read_log(d + "/learn/log.jsonl");
    double first = -1, last = -1;
    for (auto& j : log) if (j.has("val_loss")) { if (first < 0) first = j["val_loss"].as_double(); last = j["val_loss"].as_double(); }
    // At init the loss is ln(V). Bound: 1.5 nats below uniform after 120 steps (61k tokens), a
    // perplexity 4.5x smaller than guessing (measured: 4.94); a model that learns nothing stays at
    // ln(1024) = 6.93.
    MESSAGE("val loss " << first << " -> " << last << " (ln V = " << std::log(1024.0) << ")");
    CHECK(first == doctest::Approx(std::log(1024.0)).epsilon(0.01));
    CHECK(last < std::log(1024.0) - 1.5);
    // routing metrics: every step logs its aux loss and maxvio; every 20th step the per-layer
    // metrics (docs/moe.md#metrics)
    int metric_lines = 0;
    const llmc::Json* final_moe = nullptr;
    for (auto& j : log) {
        if (!j.has("loss")) continue;
        CHECK(j.has("aux"));
        CHECK(j.has("maxvio"));
        if (j.has("moe")) { metric_lines++; final_moe = &j["moe"]; }
    }
    CHECK(metric_lines == 6);
    REQUIRE(final_moe != nullptr);
    REQUIRE(final_moe->size() == 2);
    double worst = 0;
    for (auto& x : final_moe->as_array()) {
        int64_t sum = 0;
        for (auto& v : x["load"].as_array()) sum += v.as_int();
        CHECK(sum == 512 * 2);  // the loads count every selection of the step, summed over its micro-batches
        worst = std::max(worst, x["maxvio"].as_double());
        CHECK(x["dead"].as_int() == 0);  // every expert was used in the last 20 steps
        CHECK(x["entropy_norm"].as_double() > 0.5);
        CHECK(x["entropy_norm"].as_double() <= 1.0);
        CHECK(x["bias_max"].as_double() <= 120 * 0.01 + 1e-5);  // |b| <= steps x gamma
        CHECK(x["bias_min"].as_double() >= -120 * 0.01 - 1e-5);
        CHECK(x["bias_std"].as_double() > 0);
        CHECK(x["aux"].as_double() > 0);
    }
    CHECK(r.out.find("moe maxvio (worst layer) at step 120") != std::string::npos);
    CHECK(r.out.find("--- sample 1 ---") != std::string::npos);

    // Balance. 512 tokens x K = 2 selections over E = 8 experts: a mean load of 128 per expert.
    // maxvio = max load / mean - 1 is at most E/K - 1 = 3 (one expert picked by every token, a
    // collapsed router). The same run without the balancing bias (gamma 0, the aux loss alone at
    // alpha 1e-4) is the contrast: measured mean maxvio over the last 60 steps 1.15 without the
    // bias, 0.22 with it (final step 0.16; the worst single step of the last 60: 0.45).
    // Bounds: final maxvio < 0.75 (no expert near twice its share) and the last-60 mean below 0.5
    // and below half the contrast's: a bias rule with the wrong sign, or none, fails them.
    Run z = run("./train_moe_cpu --out-dir " + d + "/nobias --eval-every -1 --eval-tokens 1024 --moe-bias-rate 0" + common);
    INFO(z.out);
    REQUIRE(z.status == 0);
    double with_bias = mean_maxvio(log, 60), without = mean_maxvio(read_log(d + "/nobias/log.jsonl"), 60);
    MESSAGE("maxvio: final step (worst MoE layer) " << worst << "; mean of the last 60 steps " << with_bias << " with the bias, "
            << without << " without");
    CHECK(worst < 0.75);
    CHECK(with_bias < 0.5);
    CHECK(with_bias < 0.5 * without);
}

TEST_CASE("save, resume, continue: losses, routing and weights after resuming are bit-identical") {
    std::string d = data_dir();
    std::string common = " --data-dir " + d + "/data --num-iterations 12 --eval-every -1 --eval-tokens 1024 --num-samples 0 --moe-log-every 1" + kTiny;
    Run a = run("./train_moe_cpu --out-dir " + d + "/full --save-every 6" + common);
    INFO(a.out);
    REQUIRE(a.status == 0);
    Run b = run("./train_moe_cpu --out-dir " + d + "/resumed --resume " + d + "/full/meta_000006.json" + common);
    INFO(b.out);
    REQUIRE(b.status == 0);
    CHECK(b.out.find("resumed from") != std::string::npos);
    auto la = read_log(d + "/full/log.jsonl"), lb = read_log(d + "/resumed/log.jsonl");
    std::vector<llmc::Json> tail_a, tail_b;
    for (auto& j : la) if (j.has("loss") && j["step"].as_int() > 6) tail_a.push_back(j);
    for (auto& j : lb) if (j.has("loss")) tail_b.push_back(j);
    REQUIRE(tail_a.size() == 6);
    REQUIRE(tail_b.size() == 6);
    for (int i = 0; i < 6; i++) {
        CHECK(tail_a[i]["loss"].as_double() == tail_b[i]["loss"].as_double());  // exact: %.17g round-trips doubles
        CHECK(tail_a[i]["aux"].as_double() == tail_b[i]["aux"].as_double());
        // the same routing: every layer's loads of every step, and the bias after it
        for (int l = 0; l < 2; l++) {
            const llmc::Json &xa = tail_a[i]["moe"].as_array()[l], &xb = tail_b[i]["moe"].as_array()[l];
            CHECK(llmc::json_dump(xa["load"], -1) == llmc::json_dump(xb["load"], -1));
            CHECK(xa["bias_std"].as_double() == xb["bias_std"].as_double());
        }
    }
    // and the final weights, biases included, are the same bytes (the headers differ in the run id)
    llmc::SafetensorsFile fa(d + "/full/model_000012.safetensors"), fb(d + "/resumed/model_000012.safetensors");
    CHECK(fa.tensors.size() == fb.tensors.size());
    CHECK(fa.bytes.substr(fa.data_start) == fb.bytes.substr(fb.data_start));
    // the checkpoint holds the hybrid tensors under their names: a lightning layer, an expert stack, the bias
    std::vector<float> norm(96), bias(8);
    fa.read("transformer.h.0.attn.norm.weight", {96}, norm.data());
    fa.read("transformer.h.2.mlp.router.e_score_correction_bias", {8}, bias.data());
    CHECK(fa.tensors.count("transformer.h.1.mlp.experts.c_fc") == 1);
    CHECK(fa.tensors.count("transformer.h.2.attn.c_q.weight") == 1);   // the softmax layer
    CHECK(fa.tensors.count("transformer.h.0.mlp.c_fc.weight") == 1);   // the dense FFN
    CHECK(fa.tensors.count("transformer.h.1.mlp.c_fc.weight") == 0);   // an MoE layer has no dense MLP
    double babs = 0;
    for (float x : bias) babs += std::fabs(x);
    CHECK(babs > 0);  // 12 bias updates happened
    // --eval-only reads the model flags back from the checkpoint
    Run e = run("./train_moe_cpu --data-dir " + d + "/data --eval-only --resume " + d + "/full --eval-tokens 1024 --threads 2");
    INFO(e.out);
    CHECK(e.status == 0);
    CHECK(e.out.find("eval-only:") != std::string::npos);
}

TEST_CASE("bad input: one clear error and exit status 1, never a crash") {
    std::string d = data_dir();
    std::string base = "./train_moe_cpu --data-dir " + d + "/data --out-dir " + d + "/bad --num-iterations 2 --num-samples 0";
    expect_error(base + kTiny + " --moe-topk 9", "--moe-topk 9 must be in [1, min(--moe-experts 8, 64)]");
    expect_error(base + kTiny + " --moe-act gelu", "--moe-act must be relu2 or swiglu");
    expect_error(base + kTiny + " --attn-period -1", "--attn-period must be >= 0");
    expect_error(base + kTiny + " --windows 1", "use --windows 0");
    expect_error(base + kTiny + " --moe-groups 3", "--moe-groups 3 must divide --moe-experts 8");
    expect_error(base + kTiny + " --moe-bias-freeze-frac 2", "--moe-bias-freeze-frac must be in [0, 1]");
    expect_error(base + kTiny + " --la-block 0", "--la-block must be >= 1");
    expect_error(base + kTiny + " --router-lr -1", "--router-lr must be a finite number >= 0");
    // a checkpoint of a hybrid model does not resume as another model, nor in the dense trainer
    Run a = run("./train_moe_cpu --data-dir " + d + "/data --out-dir " + d + "/ck --num-iterations 2 --eval-every -1 --num-samples 0" + kTiny);
    REQUIRE(a.status == 0);
    expect_error(base + kTiny + " --moe-experts 4 --resume " + d + "/ck", "model_config.n_experts");
    expect_error("./train_gpt_cpu --data-dir " + d + "/data --out-dir " + d + "/bad2 --num-iterations 2 --num-samples 0 --depth 3"
                 " --aspect-ratio 32 --head-dim 32 --max-seq-len 64 --device-batch-size 4 --total-batch-size 512 --windows 0 --resume " + d + "/ck",
                 "model_config.attn_period");
}

TEST_CASE("--help lists the hybrid flags with the hybrid defaults") {
    Run r = run("./train_moe_cpu --help");
    CHECK(r.status == 0);
    CHECK(r.out.find("usage: train_moe") != std::string::npos);
    for (const char* f : {"--attn-period", "--moe-dense-layers", "--moe-experts", "--moe-topk", "--moe-shared", "--moe-act", "--moe-bias-rate",
                          "--moe-aux-alpha", "--router-lr", "--la-norm-lr", "--la-block", "--resume"})
        CHECK(r.out.find(f) != std::string::npos);
    CHECK(r.out.find("--depth                      model depth: every other size and hyperparameter derives from it [16]") != std::string::npos);
    CHECK(r.out.find("[8]") != std::string::npos);   // attn-period
    CHECK(r.out.find("[32]") != std::string::npos);  // experts
    // the dense trainer has none of them
    Run g = run("./train_gpt_cpu --help");
    CHECK(g.out.find("--moe-experts") == std::string::npos);
}
