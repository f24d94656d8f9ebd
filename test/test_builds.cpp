// test_builds.cpp: the three builds of train_gpt.cu against each other (docs/model.md#builds).
// train_gpt_cpu is the reference; build/sim/train_gpt_fp32 and build/sim/train_gpt are the CUDA
// path (the GPU trainer's kernels, fp32 and bf16) run by SIM on the CPU. They run as a user runs
// them, on the same data and flags, and must agree:
//   fp32:  the losses of 5 steps to 1e-5 relative; the whole gradient of step 1, and of step 3
//          (after a resume, when no weight is zero any more), to 1e-4 relative per tensor.
//   bf16:  the step-1 loss and gradients, and a 20-step loss curve, within bounds derived from
//          bf16 rounding (see the test).
//   files: a CPU checkpoint resumes under SIM and a SIM one on the CPU; a SIM run resumed from
//          its own checkpoint is bit-identical; two SIM runs in different schedule orders too.
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

// LLMC_TRAIN_GPT / LLMC_TRAIN_GPT_FP32 name other builds of the CUDA path: `make test_gpu` runs these
// tests with the nvcc builds on a GPU (there the schedule-order case compares two GPU runs).
std::string env_or(const char* name, const char* dflt) {
    const char* v = getenv(name);
    return v && *v ? v : dflt;
}
const std::string kCpu = "./train_gpt_cpu";
const std::string kSim = env_or("LLMC_TRAIN_GPT", "./build/sim/train_gpt");
const std::string kSim32 = env_or("LLMC_TRAIN_GPT_FP32", "./build/sim/train_gpt_fp32");
// the hybrid trainer (train_moe.cu: train_gpt.cu's model with Lightning mixers and MoE FFNs)
const std::string kCpuMoe = "./train_moe_cpu";
const std::string kSimMoe32 = env_or("LLMC_TRAIN_MOE_FP32", "./build/sim/train_moe_fp32");
const std::string kSimMoe = env_or("LLMC_TRAIN_MOE", "./build/sim/train_moe");

std::string data_dir() {
    static std::string dir = make_data_dir("test_builds", 512);
    return dir;
}

// Tiny model: depth 2, n_embd 64, T 64, windows 16 and 64; 2 micro-batches of 2 x 64 per step
// (gradient accumulation). fp32 (head_dim 32): 2 query heads, sharing 1 KV head (GQA) with every
// extra, 2 KV heads in core (so c_q, c_k, c_v have one shape: the GPU's Muon updates them as one
// stack, the CPU matrix by matrix). bf16 (head_dim 64, the tensor-core attention kernel's
// smallest): 1 head. Small, because SIM runs every CUDA thread of every kernel on the CPU.
// arch: "nanochat" (every extra) or "core" (none).
std::string flags(const std::string& arch, int steps, int head_dim) {
    return " --data-dir " + data_dir() + "/data --arch " + arch + " --head-dim " + std::to_string(head_dim) +
           " --depth 2 --aspect-ratio 32 --n-kv-head " + (arch == "core" && head_dim == 32 ? "2" : "1") +
           " --max-seq-len 64 --short-window 16"
           " --device-batch-size 2 --total-batch-size 256 --eval-every -1 --eval-tokens 128 --num-samples 0"
           " --num-iterations " + std::to_string(steps);
}
std::string fp32_flags(const std::string& arch, int steps) { return flags(arch, steps, 32); }
// the hybrid: depth 2, n_embd 64, 2 heads of 32 (bf16: 1 head of 64), T 64; mixers L S, FFNs D M
// (E 4, K 2, one shared expert, F 64, aux loss on); lightning blocks of 16; the same batches as above
std::string hybrid_flags(int steps, int head_dim = 32) {
    return " --data-dir " + data_dir() + "/data --depth 2 --aspect-ratio 32 --head-dim " + std::to_string(head_dim) +
           " --max-seq-len 64 --attn-period 2"
           " --moe-dense-layers 1 --moe-experts 4 --moe-topk 2 --moe-shared 1 --moe-hidden 64 --moe-aux-alpha 0.01 --la-block 16"
           " --device-batch-size 2 --total-batch-size 256 --eval-every -1 --eval-tokens 128 --num-samples 0 --num-iterations " +
           std::to_string(steps);
}
std::string bf16_flags(const std::string& arch, int steps) { return flags(arch, steps, 64); }

// Run a trainer; its output directory is dir/name. Returns the training losses by step (1-based).
std::vector<double> train(const std::string& bin, const std::string& args, const std::string& name, const std::string& env = "") {
    std::string out = data_dir() + "/" + name;
    // One thread: SIM runs its kernels on one anyway, and the tiny CPU steps gain nothing from two
    // (on a busy 2-core machine an OpenMP barrier waiting for a descheduled thread made them 100x
    // slower); the CPU build's results do not depend on the thread count (test_ops checks it).
    Run r = run(env + bin + args + " --threads 1 --out-dir " + out);
    INFO("command: " << bin << args << "\n" << r.out);
    REQUIRE(r.status == 0);
    std::vector<double> loss(1, NAN);
    for (auto& j : read_log(out + "/log.jsonl"))
        if (j.has("loss")) {
            int s = (int)j["step"].as_int();
            if ((int)loss.size() <= s) loss.resize(s + 1, NAN);
            loss[s] = j["loss"].as_double();
        }
    return loss;
}

std::string ckpt(const std::string& name, int step) {
    char buf[32];
    snprintf(buf, sizeof buf, "/meta_%06d.json", step);
    return data_dir() + "/" + name + buf;
}

// Per tensor: ||a - b|| / max(||b||, rms·sqrt(n)) (b the reference, n the tensor's size, rms the
// reference gradient's RMS element over all tensors). The floor is for tensors whose true gradient
// is (near) zero, where a relative error means nothing: at init the projections are zero, so every
// layer's output is a multiple of x0 and the final RMSNorm makes the loss invariant to the lambdas
// (their fp32 gradient is ~1e-10, rounding noise). A tensor exactly zero in the reference (e.g.
// c_q at step 1) must then be within the same floor, i.e. essentially zero, in a too.
struct GradDiff { double worst = 0; std::string where; int tensors = 0, zero = 0; };
GradDiff compare_grads(const std::string& a_path, const std::string& b_path) {
    llmc::SafetensorsFile a(a_path), b(b_path);
    REQUIRE(a.tensors.size() == b.tensors.size());
    struct T { std::string name; std::vector<float> x, y; };
    std::vector<T> ts;
    double total_sq = 0, total_n = 0;
    for (auto& kv : b.tensors) {
        REQUIRE(a.has(kv.first));
        size_t n = 1;
        for (int64_t s : kv.second.shape) n *= (size_t)s;
        T t{kv.first, std::vector<float>(n), std::vector<float>(n)};
        a.read(kv.first, kv.second.shape, t.x.data());
        b.read(kv.first, kv.second.shape, t.y.data());
        for (float v : t.y) total_sq += (double)v * v;
        total_n += (double)n;
        ts.push_back(std::move(t));
    }
    const double rms = std::sqrt(total_sq / total_n);
    GradDiff d;
    for (auto& t : ts) {
        double num = 0, den = 0;
        for (size_t i = 0; i < t.y.size(); i++) {
            num += ((double)t.x[i] - t.y[i]) * ((double)t.x[i] - t.y[i]);
            den += (double)t.y[i] * t.y[i];
        }
        d.tensors++;
        // (the MoE balancing bias is a buffer: in the file, never a gradient)
        d.zero += den == 0 && t.name.find("e_score_correction_bias") == std::string::npos;
        double scale = std::max(std::sqrt(den), rms * std::sqrt((double)t.y.size()));
        double rel = scale > 0 ? std::sqrt(num) / scale : (num == 0 ? 0 : INFINITY);
        if (d.where.empty() || rel > d.worst) { d.worst = rel; d.where = t.name; }
    }
    return d;
}

// The optimizer steps: per matrix, ||(a - w0) - (b - w0)|| / ||b - w0||, the two builds' weights a,
// b after the same steps from the same weights w0, relative to the update b made (b the reference).
// A matrix the optimizer skipped, or updated with another's state, is off by ~1. Matrices only: the
// scalars (lambdas) have gradients that are rounding noise at these steps (see compare_grads), which
// AdamW normalises to steps of +-lr, so their updates legitimately differ between builds.
GradDiff compare_updates(const std::string& w0_path, const std::string& a_path, const std::string& b_path) {
    llmc::SafetensorsFile w0(w0_path), a(a_path), b(b_path);
    REQUIRE(a.tensors.size() == b.tensors.size());
    GradDiff d;
    for (auto& kv : b.tensors) {
        if (kv.second.shape.size() < 2) continue;
        size_t n = 1;
        for (int64_t s : kv.second.shape) n *= (size_t)s;
        std::vector<float> x(n), y(n), z(n);
        w0.read(kv.first, kv.second.shape, z.data());
        a.read(kv.first, kv.second.shape, x.data());
        b.read(kv.first, kv.second.shape, y.data());
        double num = 0, den = 0;
        for (size_t i = 0; i < n; i++) {
            num += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
            den += ((double)y[i] - z[i]) * ((double)y[i] - z[i]);
        }
        d.tensors++;
        if (den == 0) { d.zero++; continue; }
        double r = std::sqrt(num / den);
        if (d.where.empty() || r > d.worst) { d.worst = r; d.where = kv.first; }
    }
    return d;
}

std::string model_file(const std::string& name, int step) {
    char buf[40];
    snprintf(buf, sizeof buf, "/model_%06d.safetensors", step);
    return data_dir() + "/" + name + buf;
}

double rel(double a, double b) { return std::fabs(a - b) / std::fabs(b); }

// SIM fp32 against the CPU: losses, gradients, both resumes, the optimizer's updates. flags_of(arch,
// steps): the flags (fp32_flags: the dense model); cpu, sim: the CPU and SIM fp32 binaries.
void fp32_matches_cpu(const std::string& arch, std::string (*flags_of)(const std::string&, int) = fp32_flags, const std::string& cpu = kCpu,
                      const std::string& sim = kSim32) {
    const std::string c = "cpu_" + arch, s = "sim32_" + arch;
    std::string d = data_dir();
    std::vector<double> lc = train(cpu, flags_of(arch, 5) + " --save-every 2 --dump-grads " + d + "/" + c + ".g1", c);
    std::vector<double> ls = train(sim, flags_of(arch, 5) + " --save-every 2 --dump-grads " + d + "/" + s + ".g1", s);
    // fp32 vs fp32: the builds differ only in summation order (GEMM blocking, the reductions'
    // trees) and in exp/tanh implementations, each ~1e-7 relative per operation; a loss is a
    // mean of terms each accumulating such errors over a few dozen ops, and 5 steps of training at
    // these learning rates do not amplify them measurably. 1e-5 leaves 10-100x headroom.
    REQUIRE(lc.size() == 6);
    REQUIRE(ls.size() == 6);
    for (int k = 1; k <= 5; k++) {
        INFO("step " << k << ": cpu " << lc[k] << " sim fp32 " << ls[k]);
        CHECK(rel(ls[k], lc[k]) <= 1e-5);
    }
    // The gradient: each element is a sum of products along the backward; per-tensor norm-wise
    // relative error is ~1e-6 from the same reordering; 1e-4 (the bound) flags any term
    // computed differently.
    GradDiff g1 = compare_grads(d + "/" + s + ".g1", d + "/" + c + ".g1");
    MESSAGE(arch << " step-1 gradient: worst per-tensor relative difference " << g1.worst << " (" << g1.where << "), " << g1.zero
                 << " of " << g1.tensors << " tensors exactly zero in the reference");
    CHECK(g1.worst <= 1e-4);
    // Step 3, resumed from the CPU's checkpoint of step 2 in both builds (so the SIM build reads a
    // CPU checkpoint): every weight is nonzero now, so every gradient path is compared.
    std::vector<double> rc = train(cpu, flags_of(arch, 5) + " --save-every 2 --resume " + ckpt(c, 2) + " --dump-grads " + d + "/" + c + ".g3",
                                   c + "_r");
    std::vector<double> rs = train(sim, flags_of(arch, 5) + " --save-every 2 --resume " + ckpt(c, 2) + " --dump-grads " + d + "/" + s + ".g3",
                                   s + "_r");
    GradDiff g3 = compare_grads(d + "/" + s + ".g3", d + "/" + c + ".g3");
    MESSAGE(arch << " step-3 gradient: worst " << g3.worst << " (" << g3.where << "), " << g3.zero << " tensors exactly zero");
    CHECK(g3.worst <= 1e-4);
    CHECK(g3.zero == 0);
    // The optimizer: steps 3 and 4 from the same weights and state (the CPU's step-2 checkpoint).
    // Each update is a function of gradients equal to ~1e-7 and of fp32 optimizer math (Polar
    // Express: 15 GEMMs whose summation orders differ between the builds, ~1e-6 relative each);
    // 1e-3 of the update leaves 100x headroom and still flags a matrix updated wrongly or not at all.
    GradDiff u = compare_updates(model_file(c, 2), model_file(s + "_r", 4), model_file(c + "_r", 4));
    MESSAGE(arch << " steps 3-4 weight updates: worst " << u.worst << " of the update (" << u.where << "), " << u.zero << " of " << u.tensors
                 << " matrices not updated");
    CHECK(u.worst <= 1e-3);
    CHECK(u.zero == 0);
    for (int k = 3; k <= 5; k++) {
        INFO("step " << k << " after CPU -> SIM resume: cpu " << lc[k] << " sim " << rs[k]);
        CHECK(rc[k] == lc[k]);  // the CPU's own resume is bit-identical
        CHECK(rel(rs[k], lc[k]) <= 1e-5);
    }
    // SIM -> CPU: the CPU resumes from the SIM build's checkpoint of step 2
    std::vector<double> rsc = train(cpu, flags_of(arch, 5) + " --resume " + ckpt(s, 2), s + "_to_cpu");
    for (int k = 3; k <= 5; k++) {
        INFO("step " << k << " after SIM -> CPU resume: sim " << ls[k] << " cpu " << rsc[k]);
        CHECK(rel(rsc[k], ls[k]) <= 1e-5);
    }
}

}  // namespace

TEST_CASE("SIM fp32 build = CPU build, every nanochat extra on (GQA, windows, smear, value embeddings, lambdas, backout)") {
    fp32_matches_cpu("nanochat");
}

TEST_CASE("SIM fp32 train_moe = CPU train_moe: Lightning mixers and MoE FFNs") {
    fp32_matches_cpu("hybrid", [](const std::string&, int steps) { return hybrid_flags(steps); }, kCpuMoe, kSimMoe32);
}

TEST_CASE("SIM bf16 train_moe: 16 steps that track train_moe_cpu's") {
    // As the dense bf16 curve below: bf16 noise in each update moves the losses by far less than
    // 1e-3 relative; a routing decision that flips between the builds (scores within bf16 rounding
    // of a tie) changes one token's experts, a loss change of the same order. The learning rates
    // are raised so that the curve moves (measured: 6.238 -> 6.214 in 16 steps; worst step 1.1e-5).
    const std::string lr = " --matrix-lr 0.04 --embedding-lr 0.6";
    std::vector<double> lc = train(kCpuMoe, hybrid_flags(16, 64) + lr, "bf_moe_cpu");
    std::vector<double> lb = train(kSimMoe, hybrid_flags(16, 64) + lr, "bf_moe_sim");
    REQUIRE(lc.size() == 17);
    REQUIRE(lb.size() == 17);
    double worst = 0;
    for (int k = 1; k <= 16; k++) {
        INFO("step " << k << ": cpu " << lc[k] << " sim bf16 " << lb[k]);
        CHECK(rel(lb[k], lc[k]) <= 1e-3);
        worst = std::max(worst, rel(lb[k], lc[k]));
    }
    MESSAGE("hybrid bf16 16-step curve: worst relative difference " << worst << "; loss " << lc[1] << " -> " << lc[16] << " (cpu)");
    CHECK(lc[16] < lc[1] - 0.005);
}

TEST_CASE("SIM fp32 build = CPU build, --arch core") {
    fp32_matches_cpu("core");
}

TEST_CASE("SIM bf16 build: the step-1 loss and gradient within bf16 rounding of the CPU's, and 20 steps that track it") {
    std::string d = data_dir();
    std::vector<double> lc = train(kCpu, bf16_flags("nanochat", 20) + " --dump-grads " + d + "/bf_cpu.g1", "bf_cpu");
    std::vector<double> lb = train(kSim, bf16_flags("nanochat", 20) + " --dump-grads " + d + "/bf_sim.g1", "bf_sim");
    // bf16 keeps 8 significant bits: each rounding is a relative error of at most 2^-9 = 0.2%.
    // At init the logits are ~1e-3 (lm_head ~ N(0, 0.001)), so the loss is ln V minus terms of
    // 1e-3: even a 1% error in every logit moves it by ~1e-5 relative. Bound: 1e-4.
    INFO("step 1: cpu " << lc[1] << " sim bf16 " << lb[1]);
    CHECK(rel(lb[1], lc[1]) <= 1e-4);
    // The gradient reaches each weight through ~10-20 bf16 roundings (activations stored in bf16,
    // the bf16 weight copy, dlogits, the backward's activation gradients), independent errors of
    // <= 0.2% each: ~sqrt(20) x 0.2% ~ 1% norm-wise. Bound 5%: a wrong term is an O(1) error.
    GradDiff g = compare_grads(d + "/bf_sim.g1", d + "/bf_cpu.g1");
    MESSAGE("bf16 step-1 gradient: worst per-tensor relative difference " << g.worst << " (" << g.where << ")");
    CHECK(g.worst <= 0.05);
    // The curve: the weights after each step differ by bf16 noise in the update (~1% of an update,
    // itself ~lr x the weight scale), so the losses differ by far less than the per-step change.
    // Bound: 1e-3 relative at every step (the loss falls by ~1e-2 relative over these 20 steps,
    // so a build that trained differently, e.g. a wrong optimizer step, leaves the band).
    double worst = 0;
    for (int k = 1; k <= 20; k++) {
        INFO("step " << k << ": cpu " << lc[k] << " sim bf16 " << lb[k]);
        CHECK(rel(lb[k], lc[k]) <= 1e-3);
        worst = std::max(worst, rel(lb[k], lc[k]));
    }
    MESSAGE("bf16 20-step curve: worst relative difference " << worst << "; loss " << lc[1] << " -> " << lc[20] << " (cpu)");
    CHECK(lc[20] < lc[1] - 0.01);  // the curve moves, so tracking it means something
}

TEST_CASE("SIM bf16 build: --resume continues bit-identically, and schedule orders and deferred streams do not change a bit") {
    std::string d = data_dir();
    std::vector<double> a = train(kSim, bf16_flags("nanochat", 4) + " --save-every 2", "det_a", "LLMC_SIM_ORDER=forward ");
    std::vector<double> r = train(kSim, bf16_flags("nanochat", 4) + " --resume " + ckpt("det_a", 2), "det_r", "LLMC_SIM_ORDER=forward ");
    // ... and with SIM's deferred streams: work on the copy and compute streams runs only when an
    // event, a synchronisation or a copy makes it, so a missing wait between the token upload and
    // the forward that reads it would feed the forward stale tokens and change the losses
    std::vector<double> b = train(kSim, bf16_flags("nanochat", 4), "det_b", "LLMC_SIM_ORDER=shuffle:7 LLMC_SIM_STREAMS=async ");
    for (int k = 1; k <= 4; k++) {
        INFO("step " << k << ": " << a[k] << " " << b[k] << (k > 2 ? " resumed " + std::to_string(r[k]) : ""));
        CHECK(a[k] == b[k]);
        if (k > 2) CHECK(r[k] == a[k]);
    }
    // the final weights too, tensor by tensor (the files' metadata hold the run ids)
    GradDiff w = compare_grads(d + "/det_r/model_000004.safetensors", d + "/det_a/model_000004.safetensors");
    CHECK(w.worst == 0);
    GradDiff wb = compare_grads(d + "/det_b/model_000004.safetensors", d + "/det_a/model_000004.safetensors");
    CHECK(wb.worst == 0);
}

TEST_CASE("SIM build: bad input gives one clear error, as the CPU build does") {
    std::string d = data_dir();
    expect_error(kSim + bf16_flags("nanochat", 2) + " --data-dir /nonexistent/llmc --out-dir " + d + "/bad1", "/nonexistent/llmc");
    // more memory than there is: the error names the sizes (on a GPU build: the GPU's free memory)
    expect_error(kSim + bf16_flags("nanochat", 2) + " --device-batch-size 4000000 --total-batch-size 256000000 --out-dir " + d + "/bad2",
                 "GiB");
    // shapes the hybrid layers' kernels do not take (the CPU build trains them): one error before a
    // step runs, naming the limit
    expect_error(kSimMoe32 + hybrid_flags(2) + " --moe-hidden 60 --out-dir " + d + "/bad3", "must be multiples of 8");
    expect_error(kSimMoe32 + hybrid_flags(2) + " --head-dim 256 --aspect-ratio 256 --out-dir " + d + "/bad4", "D <= 128");
}

TEST_CASE("the nvcc build on a machine without a GPU: one clear error, no log or checkpoint written") {
    const std::string gpu = "./build/gpu/train_gpt";
    if (!llmc::file_exists(gpu)) {
        MESSAGE("skipped: " << gpu << " not built (no nvcc)");
        return;
    }
    if (run("nvidia-smi -L").status == 0) {
        MESSAGE("skipped: this machine has a GPU (make test_gpu runs the trainer tests on it)");
        return;
    }
    std::string d = data_dir();
    expect_error(gpu + bf16_flags("nanochat", 2) + " --out-dir " + d + "/nogpu", "no CUDA GPU found");
    CHECK(!llmc::file_exists(d + "/nogpu/log.jsonl"));
}
