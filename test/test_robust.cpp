// Robustness of the trainer (issue 13) and its run-management features (issue 12), end to end:
// train_gpt_cpu is run as a user runs it, then disturbed the way a hostile user does: files damaged
// between runs, a full disk (a small RLIMIT_FSIZE in the child, SIGXFSZ ignored, so writes fail with
// EFBIG exactly as on a full file system), a second run on the same directory, SIGTERM/SIGINT mid-run,
// a shard truncated under the running trainer, diverging learning rates, bad flags, a closed stdout.
// Each case checks what must hold afterwards: one clear message, the exit status, the newest
// checkpoint still complete and verified, and a resume that continues bit-identically.
// Plus unit checks of the pieces (checksum, /proc/self/maps parsing, log truncation, BOS stop), and
// scripts/plot_log.py's argument and missing-matplotlib handling.
// The binaries are built by `make test` before this runs; paths are relative to the repo root.
#define TESTING
#include "train_gpt.cu"

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "test/train_test_util.h"

namespace {
using namespace traintest;

// A child process with stdout and stderr on a pipe, read as it runs. fsize_limit >= 0 sets
// RLIMIT_FSIZE in the child (with SIGXFSZ ignored, so an oversized write fails with EFBIG).
struct Child {
    pid_t pid = -1;
    int fd = -1;
    std::string out;
};

Child spawn(const std::string& cmd, long long fsize_limit = -1) {
    int p[2];
    REQUIRE(pipe(p) == 0);
    Child c;
    c.pid = fork();
    REQUIRE(c.pid >= 0);
    if (c.pid == 0) {
        dup2(p[1], 1);
        dup2(p[1], 2);
        close(p[0]);
        close(p[1]);
        if (fsize_limit >= 0) {
            struct rlimit rl;
            rl.rlim_cur = rl.rlim_max = (rlim_t)fsize_limit;
            setrlimit(RLIMIT_FSIZE, &rl);
            signal(SIGXFSZ, SIG_IGN);
        }
        std::string sh = "exec " + cmd;  // exec: the child's pid is the trainer's
        execl("/bin/sh", "sh", "-c", sh.c_str(), (char*)nullptr);
        _exit(127);
    }
    close(p[1]);
    c.fd = p[0];
    return c;
}

// Read the child's output until it contains needle (true) or the child ends / timeout_s passes.
bool read_until(Child& c, const std::string& needle, double timeout_s = 60) {
    double t0 = now_seconds();
    while (c.out.find(needle) == std::string::npos) {
        double left = timeout_s - (now_seconds() - t0);
        if (left <= 0) return false;
        struct pollfd pf = {c.fd, POLLIN, 0};
        int rc = poll(&pf, 1, (int)(left * 1000) + 1);
        if (rc <= 0) continue;
        char buf[4096];
        ssize_t n = read(c.fd, buf, sizeof buf);
        if (n <= 0) return false;
        c.out.append(buf, (size_t)n);
    }
    return true;
}

Run finish(Child& c) {
    char buf[4096];
    ssize_t n;
    while ((n = read(c.fd, buf, sizeof buf)) > 0) c.out.append(buf, (size_t)n);
    close(c.fd);
    int st = 0;
    waitpid(c.pid, &st, 0);
    return {decode_status(st), c.out};
}

void sh(const std::string& cmd) {
    INFO(cmd);
    REQUIRE(system(cmd.c_str()) == 0);
}

int count(const std::string& s, const std::string& needle) {
    int n = 0;
    for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + 1)) n++;
    return n;
}

// One temporary directory per test process, with data prepared once (BPE vocabulary 1024); about
// 150 MB of checkpoints by the end, removed by main() when every test passed.
std::string g_tmp;
std::string tmp_dir() {
    if (g_tmp.empty()) g_tmp = make_data_dir("test_robust", 1024);
    return g_tmp;
}

// the tiny model of test_train: depth 2, n_embd 64, T 64, 512 tokens per step
const std::string kTiny = " --depth 2 --aspect-ratio 32 --head-dim 32 --max-seq-len 64 --device-batch-size 8 --total-batch-size 512"
                          " --warmup-steps 10 --matrix-lr 0.04 --embedding-lr 0.6 --unembedding-lr 0.02 --threads 2";

std::string trainer(const std::string& out, const std::string& extra) {
    return "./train_gpt_cpu --data-dir " + tmp_dir() + "/data --out-dir " + out + " --num-samples 0 --eval-tokens 2048" + kTiny + " " + extra;
}

// The reference run: 12 steps, checkpoints at 4, 8 and 12, validation at the end only.
const std::string kRef = "--num-iterations 12 --save-every 4 --eval-every -1";
std::string ref_dir() {
    static std::string dir;
    if (!dir.empty()) return dir;
    dir = tmp_dir() + "/ref";
    Run r = run(trainer(dir, kRef));
    INFO(r.out);
    REQUIRE(r.status == 0);
    return dir;
}

// A fresh copy of (some checkpoints of) the reference run; steps empty = all.
std::string copy_ref(const std::string& name, std::vector<int> steps = {}) {
    std::string d = tmp_dir() + "/" + name;
    sh("rm -rf " + d + " && mkdir -p " + d + " && cp " + ref_dir() + "/log.jsonl " + d + "/");
    if (steps.empty()) steps = {4, 8, 12};
    for (int s : steps) sh(llmc::strfmt("cp %s/*_%06d.* %s/", ref_dir().c_str(), s, d.c_str()));
    return d;
}

// The tensor data of a safetensors file (the header differs between runs: it carries the run id).
std::string tensor_bytes(const std::string& path) {
    llmc::SafetensorsFile f(path);
    return f.bytes.substr(f.data_start);
}

// Each training step 1..N appears exactly once in the log, and nothing past N.
void check_log_steps_once(const std::string& path, int N) {
    std::vector<int> seen(N + 2, 0);
    for (auto& j : read_log(path))
        if (j.has("loss")) {
            int s = (int)j["step"].as_int();
            REQUIRE(s >= 1);
            REQUIRE(s <= N);
            seen[s]++;
        }
    for (int s = 1; s <= N; s++) {
        INFO("step " << s << " of " << path);
        CHECK(seen[s] == 1);
    }
}

std::vector<std::string> glob_or_empty(const std::string& pattern) {
    try { return llmc::glob_files(pattern); } catch (const llmc::Error&) { return {}; }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// unit checks

TEST_CASE("checksum64: streaming equals one-shot for any split; every change of content or length changes it") {
    llmc::Rng rng(1, 2);
    std::string data(10007, '\0');
    for (auto& ch : data) ch = (char)(rng.next_u64() & 0xFF);
    uint64_t whole = llmc::checksum64(data.data(), data.size());
    for (int trial = 0; trial < 50; trial++) {
        llmc::Checksum64 c;
        size_t p = 0;
        while (p < data.size()) {
            size_t n = std::min<size_t>(data.size() - p, rng.next_u64() % 70);
            c.update(data.data() + p, n);
            p += n;
        }
        CHECK(c.digest() == whole);
    }
    // one flipped bit anywhere, a truncation, an appended zero byte: all different
    for (size_t pos : {(size_t)0, (size_t)31, (size_t)32, (size_t)5000, data.size() - 1}) {
        std::string d = data;
        d[pos] ^= 1;
        CHECK(llmc::checksum64(d.data(), d.size()) != whole);
    }
    CHECK(llmc::checksum64(data.data(), data.size() - 1) != whole);
    std::string longer = data + std::string(1, '\0');
    CHECK(llmc::checksum64(longer.data(), longer.size()) != whole);
    // zero bytes of different lengths differ (the length is mixed in, so padding cannot collide)
    std::string z(64, '\0');
    std::vector<uint64_t> hs;
    for (size_t n = 0; n <= 64; n++) hs.push_back(llmc::checksum64(z.data(), n));
    std::sort(hs.begin(), hs.end());
    CHECK(std::unique(hs.begin(), hs.end()) == hs.end());
    CHECK(llmc::checksum_str(0x1234) == "llmc64:0000000000001234");
}

TEST_CASE("SIGBUS handler: a /proc/self/maps line is matched by address and gives the file's path") {
    char path[64];
    const char* line = "7f12a0000000-7f12a0010000 r--p 00000000 08:01 1234567                    /tmp/x y/ts_train_000000.bin";
    CHECK(maps_line_covers(line, (uintptr_t)0x7f12a0000000ULL, path, sizeof path));
    CHECK(std::string(path) == "/tmp/x y/ts_train_000000.bin");
    CHECK(maps_line_covers(line, (uintptr_t)0x7f12a000ffffULL, path, sizeof path));
    CHECK_FALSE(maps_line_covers(line, (uintptr_t)0x7f12a0010000ULL, path, sizeof path));  // end is exclusive
    CHECK_FALSE(maps_line_covers(line, (uintptr_t)0x7f129fffffffULL, path, sizeof path));
    CHECK(maps_line_covers("00400000-00452000 r-xp 00000000 00:00 0 ", (uintptr_t)0x00400001, path, sizeof path));
    CHECK(std::string(path).empty());  // an anonymous mapping has no path
}

TEST_CASE("resume log: lines past the resumed step and torn lines are dropped, the rest kept in order") {
    std::string p = tmp_dir() + "/unit_log.jsonl";
    llmc::write_file_atomic(p, "{\"event\":\"start\",\"step\":0}\n{\"step\":1,\"loss\":5.0}\n{\"step\":2,\"loss\":4.0}\n"
                               "{\"step\":2,\"val_loss\":4.5}\n{\"step\":3,\"loss\":3.0}\n{\"step\":4,\"lo");
    CHECK(truncate_log_after(p, 2) == 2);
    CHECK(llmc::read_file(p) == "{\"event\":\"start\",\"step\":0}\n{\"step\":1,\"loss\":5.0}\n{\"step\":2,\"loss\":4.0}\n{\"step\":2,\"val_loss\":4.5}\n");
    CHECK(truncate_log_after(p, 2) == 0);  // nothing more to drop
    CHECK(truncate_log_after(tmp_dir() + "/no_such_log.jsonl", 2) == 0);
}

TEST_CASE("sampling stops at the first BOS, which is not emitted") {
    llmc::ModelOptions mo;
    mo.depth = 1; mo.aspect_ratio = 32; mo.head_dim = 16; mo.vocab_size = 20; mo.sequence_len = 8;
    GPT<float> m;
    m.init(llmc::derive_model_shape(mo));
    m.init_weights(1);
    // lm_head = 0: every logit is exactly 0, so greedy sampling picks the lowest id, 0, every time
    std::fill(m.param(P_LM_HEAD), m.param(P_LM_HEAD) + m.spec[P_LM_HEAD].numel(), 0.0f);
    llmc::Rng rng(1, 1);
    bool ended = false;
    std::vector<uint32_t> prompt = {3, 4};
    auto out = generate(m, prompt, 5, 0.0f, 0, rng, {0}, &ended);
    CHECK(out == prompt);  // stopped at once, BOS (id 0 here) not appended
    CHECK(ended);
    out = generate(m, prompt, 5, 0.0f, 0, rng, {7}, &ended);
    CHECK(out == std::vector<uint32_t>{3, 4, 0, 0, 0, 0, 0});  // no stop token: all 5 tokens
    CHECK_FALSE(ended);
}

// ---------------------------------------------------------------------------------------------
// checkpoints: verification and fallback

TEST_CASE("checkpoint meta: checksums, run id and the whole derived recipe and options are recorded") {
    std::string d = ref_dir();
    llmc::Json meta = llmc::json_parse(llmc::read_file(d + "/meta_000012.json"), "meta");
    CHECK(meta["step"].as_int() == 12);
    std::string run_id = meta["run_id"].as_string();
    CHECK(run_id.size() == 16);
    for (const char* kind : {"model", "optim"}) {
        std::string path = ckpt_path(d, kind, 12, "safetensors");
        std::string bytes = llmc::read_file(path);
        CHECK(meta["files"][kind]["bytes"].as_int() == (long long)bytes.size());
        CHECK(meta["files"][kind]["checksum"].as_string() == llmc::checksum_str(llmc::checksum64(bytes.data(), bytes.size())));
        llmc::SafetensorsFile f(path);
        CHECK(f.metadata["llmc_run_id"] == run_id);
        CHECK(f.metadata["llmc_step"] == "12");
    }
    // the recipe in the meta is what scaling.h derives for these flags (tokenizer vocabulary 1024)
    llmc::ModelOptions mo;
    mo.depth = 2; mo.aspect_ratio = 32; mo.head_dim = 32; mo.sequence_len = 64; mo.vocab_size = 1024;
    llmc::RecipeOptions ro;
    ro.num_iterations = 12; ro.total_batch_size = 512; ro.device_batch_size = 8; ro.warmup_steps = 10;
    ro.matrix_lr = 0.04; ro.embedding_lr = 0.6; ro.unembedding_lr = 0.02;
    llmc::Recipe r = llmc::derive_recipe(mo, ro);
    const llmc::Json& rec = meta["recipe"];
    CHECK(rec["muon"]["lr"].as_double() == r.muon_lr);
    CHECK(rec["muon"]["weight_decay_scaled"].as_double() == r.weight_decay_scaled);
    CHECK(rec["muon"]["lr_by_matrix"]["mlp.c_fc"].as_double() == r.muon_lr * 2.0);  // 4C x C: sqrt(4)
    CHECK(rec["grad_accum_steps"].as_int() == r.grad_accum_steps);
    CHECK(rec["schedule"]["warmdown_steps"].as_int() == llmc::warmdown_steps(12, 0.65));
    REQUIRE(rec["adamw"].size() == (size_t)llmc::ADAM_NUM_GROUPS);
    for (int g = 0; g < llmc::ADAM_NUM_GROUPS; g++) {
        CHECK(rec["adamw"][g]["group"].as_string() == r.adam[g].name);
        CHECK(rec["adamw"][g]["lr"].as_double() == r.adam[g].lr);
        CHECK(rec["adamw"][g]["weight_decay"].as_double() == r.adam[g].weight_decay);
        CHECK(rec["adamw"][g]["beta2"].as_double() == r.adam[g].beta2);
    }
    CHECK(meta["options"]["matrix-lr"].as_double() == 0.04);
    CHECK(meta["options"]["num-iterations"].as_int() == 12);
    // the loss of the last step, as logged
    double logged = -1;
    for (auto& j : read_log(d + "/log.jsonl")) if (j.has("loss") && j["step"].as_int() == 12) logged = j["loss"].as_double();
    CHECK(meta["train_loss"].as_double() == logged);
}

TEST_CASE("--resume DIR skips damaged or mixed checkpoints, says why, and continues bit-identically from the newest good one") {
    std::string d = copy_ref("fallback");
    // step 12: one byte of the weights flipped, same size (only the checksum can tell)
    {
        std::string m = llmc::read_file(d + "/model_000012.safetensors");
        m[m.size() - 100] ^= 0x40;
        llmc::write_file_atomic(d + "/model_000012.safetensors", m);
    }
    // step 8: the optimizer file of another run's step 8 (same size, same shapes)
    std::string other = tmp_dir() + "/other_run";
    Run o = run(trainer(other, kRef + " --seed 7"));
    REQUIRE(o.status == 0);
    sh("cp " + other + "/optim_000008.safetensors " + d + "/");
    Run r = run(trainer(d, kRef + " --resume " + d));
    INFO(r.out);
    REQUIRE(r.status == 0);
    CHECK(r.out.find("skipped checkpoint '" + d + "/meta_000012.json'") != std::string::npos);
    CHECK(r.out.find("model_000012.safetensors': checksum") != std::string::npos);
    CHECK(r.out.find("skipped checkpoint '" + d + "/meta_000008.json'") != std::string::npos);
    CHECK(r.out.find("optim_000008.safetensors': checksum") != std::string::npos);
    CHECK(r.out.find("resumed from " + d + "/meta_000004.json at step 4") != std::string::npos);
    CHECK(tensor_bytes(d + "/model_000012.safetensors") == tensor_bytes(ref_dir() + "/model_000012.safetensors"));
    // the log had the reference run's steps 5..12: dropped on resume, so each step is there once
    CHECK(r.out.find("dropped") != std::string::npos);
    check_log_steps_once(d + "/log.jsonl", 12);

    // a meta file named explicitly gets no fallback: one error naming the problem
    std::string e = copy_ref("explicit", {8, 12});
    {
        std::string m = llmc::read_file(e + "/optim_000012.safetensors");
        llmc::write_file_atomic(e + "/optim_000012.safetensors", m.substr(0, m.size() - 8));
    }
    expect_error(trainer(e, kRef + " --resume " + e + "/meta_000012.json"), "optim_000012.safetensors' is");

    // files that verify on their own but belong to another run (the meta rewritten to match them):
    // the run id in the safetensors metadata gives them away
    std::string x = copy_ref("mixed", {4});
    sh("cp " + other + "/model_000004.safetensors " + other + "/optim_000004.safetensors " + x + "/");
    llmc::Json meta = llmc::json_parse(llmc::read_file(x + "/meta_000004.json"), "meta");
    llmc::Json theirs = llmc::json_parse(llmc::read_file(other + "/meta_000004.json"), "meta");
    meta.set("files", theirs["files"]);
    llmc::write_file_atomic(x + "/meta_000004.json", llmc::json_dump(meta, 2));
    expect_error(trainer(x, kRef + " --resume " + x), "files of different checkpoints are mixed");
}

// ---------------------------------------------------------------------------------------------
// a full disk

TEST_CASE("disk full (RLIMIT_FSIZE): the failed save says so, leaves no partial files, and the previous checkpoint stays the newest") {
    long long model_size = (long long)llmc::read_file(ref_dir() + "/model_000004.safetensors").size();
    // limit 1: the model file fits, the optimizer file (larger) does not; limit 2: not even the model
    for (long long limit : {model_size + 4096, model_size / 2}) {
        CAPTURE(limit);
        std::string d = copy_ref(llmc::strfmt("full_%lld", limit), {4});
        Child c = spawn(trainer(d, kRef + " --resume " + d), limit);
        Run r = finish(c);
        INFO(r.out);
        CHECK(r.status == 1);
        CHECK(count(r.out, "error: ") == 1);
        CHECK(r.out.find("saving the checkpoint of step 8") != std::string::npos);
        CHECK(r.out.find("File too large") != std::string::npos);
        CHECK(r.out.find("the newest checkpoint is still '" + d + "/meta_000004.json'") != std::string::npos);
        CHECK(r.out.find("saved checkpoint") == std::string::npos);
        CHECK(glob_or_empty(d + "/*.tmp").empty());
        CHECK(glob_or_empty(d + "/*_000008.*").empty());
        auto list = list_checkpoints(d);
        REQUIRE(list.size() == 1);
        CHECK(list[0].first == 4);
        // and nothing was lost: with room again, the run resumes and ends as the reference did
        Run again = run(trainer(d, kRef + " --resume " + d));
        INFO(again.out);
        REQUIRE(again.status == 0);
        CHECK(tensor_bytes(d + "/model_000012.safetensors") == tensor_bytes(ref_dir() + "/model_000012.safetensors"));
    }
}

// ---------------------------------------------------------------------------------------------
// two runs, one directory

TEST_CASE("a second run on a locked --out-dir is refused with a clear error") {
    std::string d = tmp_dir() + "/locked";
    sh("rm -rf " + d + " && mkdir -p " + d);
    // the lock held by this process
    int fd = open((d + "/train_gpt.lock").c_str(), O_RDWR | O_CREAT, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(flock(fd, LOCK_EX) == 0);
    REQUIRE(pwrite(fd, "4242\n", 5, 0) == 5);
    expect_error(trainer(d, "--num-iterations 1 --eval-every -1"), "is in use by another train_gpt run (pid 4242 holds");
    close(fd);  // released: now it runs
    Run ok = run(trainer(d, "--num-iterations 1 --eval-every -1"));
    INFO(ok.out);
    CHECK(ok.status == 0);

    // two real trainers: the second fails at once, the first is undisturbed
    std::string w = tmp_dir() + "/two_runs";
    sh("rm -rf " + w);
    Child a = spawn(trainer(w, "--num-iterations 400 --eval-every -1"));
    REQUIRE(read_until(a, "step     1/400"));
    Run b = run(trainer(w, "--num-iterations 400 --eval-every -1"));
    INFO(b.out);
    CHECK(b.status == 1);
    CHECK(b.out.find(llmc::strfmt("is in use by another train_gpt run (pid %d holds", (int)a.pid)) != std::string::npos);
    kill(a.pid, SIGTERM);
    Run ra = finish(a);
    INFO(ra.out);
    CHECK(ra.status == 128 + SIGTERM);
    // every log line is the first run's (the second never opened the log)
    auto log = read_log(w + "/log.jsonl");
    REQUIRE(!log.empty());
    CHECK(log[0]["event"].as_string() == "start");
    int starts = 0;
    for (auto& j : log) starts += j.has("event");
    CHECK(starts == 1);
}

TEST_CASE("at start: temporaries of a killed save are removed, safetensors files without a meta pointed out") {
    std::string d = copy_ref("tidy", {4});
    llmc::write_file_atomic(d + "/optim_000008.safetensors.tmp", "partial");
    llmc::write_file_atomic(d + "/meta_000008.json.tmp", "{\"st");
    sh("cp " + d + "/model_000004.safetensors " + d + "/model_000008.safetensors");  // no meta_000008.json
    Run r = run(trainer(d, kRef + " --resume " + d));
    INFO(r.out);
    CHECK(r.status == 0);
    CHECK(r.out.find("note: removed 2 temporary file(s)") != std::string::npos);
    CHECK(r.out.find("have no meta file (a save that did not finish), e.g. model_000008.safetensors") != std::string::npos);
    CHECK(glob_or_empty(d + "/*.tmp").empty());
    CHECK(r.out.find("resumed from " + d + "/meta_000004.json at step 4") != std::string::npos);  // the orphan is never read
    CHECK(tensor_bytes(d + "/model_000012.safetensors") == tensor_bytes(ref_dir() + "/model_000012.safetensors"));
}

// ---------------------------------------------------------------------------------------------
// signals

TEST_CASE("SIGTERM mid-run: the step finishes, a checkpoint is saved, exit 143; the resumed run ends bit-identical") {
    std::string full = tmp_dir() + "/sig_full", d = tmp_dir() + "/sig";
    const std::string cfg = "--num-iterations 40 --eval-every -1";
    sh("rm -rf " + full + " " + d);
    Run f = run(trainer(full, cfg));
    REQUIRE(f.status == 0);
    Child c = spawn(trainer(d, cfg));
    REQUIRE(read_until(c, "step     5/40"));
    kill(c.pid, SIGTERM);
    Run r = finish(c);
    INFO(r.out);
    CHECK(r.status == 128 + SIGTERM);
    CHECK(r.out.find("train_gpt: stopped by SIGTERM at step ") != std::string::npos);
    CHECK(r.out.find("continue with --resume " + d) != std::string::npos);
    auto list = list_checkpoints(d);
    REQUIRE(list.size() == 1);
    int k = list[0].first;
    CHECK(k >= 5);
    CHECK(k < 40);
    CHECK(r.out.find(llmc::strfmt("saved checkpoint %s/meta_%06d.json", d.c_str(), k)) != std::string::npos);
    CHECK(r.out.find(llmc::strfmt("step %5d/40 | loss", k + 1)) == std::string::npos);  // stopped after step k
    Run again = run(trainer(d, cfg + " --resume " + d));
    INFO(again.out);
    REQUIRE(again.status == 0);
    CHECK(tensor_bytes(d + "/model_000040.safetensors") == tensor_bytes(full + "/model_000040.safetensors"));
    check_log_steps_once(d + "/log.jsonl", 40);
}

TEST_CASE("a second signal exits at once") {
    std::string d = tmp_dir() + "/sig2";
    sh("rm -rf " + d);
    Child c = spawn(trainer(d, "--num-iterations 400 --eval-every -1"));
    REQUIRE(read_until(c, "step     2/400"));
    kill(c.pid, SIGINT);
    kill(c.pid, SIGTERM);
    Run r = finish(c);
    INFO(r.out);
    // the exit status is 128 + whichever signal the process took second (threads may take them in
    // either order); and it did not wait to save
    CHECK((r.status == 128 + SIGTERM || r.status == 128 + SIGINT));
    CHECK(r.out.find("second signal: exiting at once") != std::string::npos);
    CHECK(r.out.find("saved checkpoint") == std::string::npos);
}

TEST_CASE("a shard truncated under the running trainer: one error naming the file, not a bare SIGBUS") {
    std::string d = tmp_dir() + "/shrink";
    sh("rm -rf " + d + " && mkdir -p " + d + "/data && cp " + tmp_dir() + "/data/* " + d + "/data/");
    std::string shard = d + "/data/ts_train_000000.bin";
    Child c = spawn("./train_gpt_cpu --data-dir " + d + "/data --out-dir " + d + "/out --num-samples 0 --num-iterations 400 --eval-every -1" + kTiny);
    REQUIRE(read_until(c, "step     2/400"));
    REQUIRE(truncate(shard.c_str(), 1024 + 2 * 1000) == 0);
    Run r = finish(c);
    INFO(r.out);
    CHECK(r.status == 1);
    CHECK(r.out.find("error: '" + shard + "' shrank while the trainer was reading it") != std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// divergence

TEST_CASE("divergence: the NaN is reported with the step lines' numbering, the checkpoint of the bad weights is marked, resume skips it") {
    std::string d = tmp_dir() + "/nan_train";
    sh("rm -rf " + d);
    // Muon at lr 1e12 (x 1/32 batch scale): the weights after step 2 are finite (~1e10) but their
    // forward pass overflows to NaN; step 2's own loss (on the weights after step 1) is still finite
    const std::string wild = "--num-iterations 10 --save-every 1 --eval-every -1 --warmup-steps 1 --matrix-lr 1e12";
    Run r = run(trainer(d, wild));
    INFO(r.out);
    CHECK(r.status == 1);
    CHECK(count(r.out, "error: ") == 1);
    CHECK(r.out.find("step     2/10 | loss") != std::string::npos);
    CHECK(r.out.find("step     3/10 | loss") == std::string::npos);
    // (printf writes a NaN as "nan" or "-nan" depending on its sign bit)
    CHECK(r.out.find("error: training diverged: the training loss is ") != std::string::npos);
    CHECK(r.out.find("nan at step 3/10 (the forward pass on the weights after step 2)") != std::string::npos);
    CHECK(r.out.find("'" + d + "/meta_000002.json' holds these weights and is now marked diverged") != std::string::npos);
    CHECK(r.out.find("resume from '" + d + "/meta_000001.json', the newest checkpoint with a finite loss") != std::string::npos);
    CHECK(llmc::json_parse(llmc::read_file(d + "/meta_000002.json"), "meta").has("diverged"));
    // resume DIR passes over the marked checkpoint; with a sane lr the run completes
    Run again = run(trainer(d, "--num-iterations 10 --save-every 1 --eval-every -1 --warmup-steps 1 --resume " + d));
    INFO(again.out);
    CHECK(again.status == 0);
    CHECK(again.out.find("skipped checkpoint '" + d + "/meta_000002.json': marked diverged") != std::string::npos);
    CHECK(again.out.find("resumed from " + d + "/meta_000001.json at step 1") != std::string::npos);
    // an explicitly named diverged checkpoint is refused
    std::string e = tmp_dir() + "/nan_explicit";
    sh("rm -rf " + e);
    std::string x = tmp_dir() + "/nan_x";
    sh("rm -rf " + x);
    REQUIRE(run(trainer(x, "--num-iterations 2 --eval-every -1")).status == 0);
    sh("mkdir -p " + e + " && cp " + x + "/*_000002.* " + e + "/");
    mark_diverged(e + "/meta_000002.json", "a test");
    expect_error(trainer(e, "--num-iterations 2 --eval-every -1 --resume " + e + "/meta_000002.json"), "marked diverged (a test)");

    // the same weights met first by an evaluation: a NaN validation loss stops the same way (it
    // used to be "JSON: cannot write non-finite number"), and the log stays valid JSON
    std::string v = tmp_dir() + "/nan_val";
    sh("rm -rf " + v);
    Run rv = run(trainer(v, "--num-iterations 10 --save-every 1 --eval-every 1 --warmup-steps 1 --matrix-lr 1e12"));
    INFO(rv.out);
    CHECK(rv.status == 1);
    CHECK(rv.out.find("error: training diverged: the validation loss is ") != std::string::npos);
    CHECK(rv.out.find("nan at step 2/10") != std::string::npos);
    CHECK(rv.out.find("JSON") == std::string::npos);
    CHECK(rv.out.find("resume from '" + v + "/meta_000001.json'") != std::string::npos);
    CHECK_FALSE(llmc::file_exists(v + "/meta_000002.json"));
    CHECK(read_log(v + "/log.jsonl").size() >= 4);  // parses: start, val 0, step 1, val 1, step 2
}

// ---------------------------------------------------------------------------------------------
// bad arguments and broken outputs

TEST_CASE("bad arguments: clear errors, never a crash") {
    std::string d = tmp_dir() + "/args";
    const std::string one = " --num-iterations 1 --eval-every -1";
    expect_error(trainer("''", one), "--out-dir must not be empty");
    expect_error(trainer(d, one + " --matrix-lr -0.02"), "--matrix-lr must be a finite number >= 0");
    expect_error(trainer(d, one + " --embedding-lr nan"), "--embedding-lr must be a finite number >= 0");
    expect_error(trainer(d, one + " --unembedding-lr -1"), "--unembedding-lr must be a finite number >= 0");
    expect_error(trainer(d, one + " --final-lr-frac 1.5"), "--final-lr-frac must be in [0, 1]");
    expect_error(trainer(d, one + " --final-lr-frac -0.1"), "--final-lr-frac must be in [0, 1]");
    expect_error(trainer(d, one + " --warmdown-ratio 2"), "--warmdown-ratio must be in [0, 1]");
    expect_error(trainer(d, one + " --threads 0"), "--threads must be >= 1");
    expect_error(trainer(d, one + " --save-every 0"), "--save-every must be >= 1");
    // depth 400: n_embd 12800, ~8e11 parameters: the memory it needs, not a bare std::bad_alloc
    expect_error(trainer(d, one + " --depth 400"), "GiB of memory (weights and gradients");
    // more threads than cores: capped, and the run works
    Run r = run(trainer(d, one + " --threads 100000"));
    INFO(r.out);
    CHECK(r.status == 0);
    CHECK(r.out.find("note: --threads 100000 is more than the") != std::string::npos);
    // --eval-only without a checkpoint
    expect_error(trainer(d, " --eval-only"), "--eval-only needs --resume");
}

TEST_CASE("write errors on stdout and the log stop the run with a message; a closed stdout still gets its checkpoint saved") {
    std::string d = tmp_dir() + "/io";
    sh("rm -rf " + d);
    // stdout on a full device: stderr (to the pipe) says so
    Run full = run_raw(trainer(d, "--num-iterations 3 --eval-every -1") + " 2>&1 >/dev/full");
    INFO(full.out);
    CHECK(full.status == 1);
    CHECK(full.out.find("error: writing to stdout failed: No space left on device") != std::string::npos);
    // the log on a full device
    expect_error(trainer(d, "--num-iterations 3 --eval-every -1 --log-file /dev/full"), "'/dev/full': write failed: No space left on device");
    // stdout closed mid-run (a pipe whose reader went away): EPIPE, a checkpoint, exit 1
    std::string p = tmp_dir() + "/epipe";
    sh("rm -rf " + p + " && mkdir -p " + p);
    Run r = run_raw("(" + trainer(p, "--num-iterations 400 --eval-every -1") + " 2>" + p + "/err; echo $? > " + p +
                    "/status) | head -c 1500 > /dev/null");
    std::string err = llmc::read_file(p + "/err");
    INFO(err);
    CHECK(llmc::read_file(p + "/status") == "1\n");
    CHECK(err.find("error: writing to stdout failed: Broken pipe") != std::string::npos);
    CHECK(err.find("the newest checkpoint is '" + p + "/meta_") != std::string::npos);
    CHECK(list_checkpoints(p).size() == 1);
}

TEST_CASE("a validation split smaller than one batch: the trainer says the evaluation repeats documents") {
    std::string d = tmp_dir() + "/smallval";
    sh("rm -rf " + d + " && mkdir -p " + d);
    llmc::ShardInfo s = llmc::shard_open_check(tmp_dir() + "/data/ts_val_000000.bin");
    llmc::shard_write(d + "/x_val_000000.bin", llmc::shard_read_tokens(s, 0, 100), false);  // starts with BOS
    Run r = run(trainer(d + "/out", "--num-iterations 1 --eval-every -1 --val-data '" + d + "/x_val_*.bin'"));
    INFO(r.out);
    CHECK(r.status == 0);
    CHECK(r.out.find("note: the validation split has 100 tokens, fewer than one evaluation batch (8 x 64 = 512)") != std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// issue 12: initial checkpoint, evaluation-only mode, the plot script

TEST_CASE("--save-init checkpoints step 0, and a run resumed from it ends bit-identical") {
    std::string a = tmp_dir() + "/init_a", b = tmp_dir() + "/init_b";
    sh("rm -rf " + a + " " + b);
    const std::string cfg = "--num-iterations 6 --eval-every 3 --save-init";
    Run r = run(trainer(a, cfg));
    INFO(r.out);
    REQUIRE(r.status == 0);
    CHECK(r.out.find("saved checkpoint " + a + "/meta_000000.json") != std::string::npos);
    llmc::Json m0 = llmc::json_parse(llmc::read_file(a + "/meta_000000.json"), "meta");
    CHECK(m0["step"].as_int() == 0);
    CHECK(m0.has("val_loss"));  // the step-0 evaluation runs before the save
    Run rb = run(trainer(b, cfg + " --resume " + a + "/meta_000000.json"));
    INFO(rb.out);
    REQUIRE(rb.status == 0);
    CHECK(tensor_bytes(b + "/model_000006.safetensors") == tensor_bytes(a + "/model_000006.safetensors"));
}

TEST_CASE("--eval-only: a checkpoint's val loss and bpb, printed and logged, equal to what training measured on the same weights") {
    std::string d = copy_ref("evalonly");
    // no model flags: they come from the checkpoint
    Run r = run("./train_gpt_cpu --data-dir " + tmp_dir() + "/data --eval-only --resume " + d + " --eval-tokens 2048 --threads 2");
    INFO(r.out);
    REQUIRE(r.status == 0);
    CHECK(r.out.find("eval-only: " + d + "/meta_000012.json (step 12) | val loss ") != std::string::npos);
    auto log = read_log(d + "/log.jsonl");
    REQUIRE(log.back().has("eval_only"));
    CHECK(log.back()["step"].as_int() == 12);
    CHECK(log.back()["checkpoint"].as_string() == "meta_000012.json");
    double trained = -1, trained_bpb = -1;
    for (size_t i = 0; i + 1 < log.size(); i++)
        if (log[i].has("val_loss") && log[i]["step"].as_int() == 12) { trained = log[i]["val_loss"].as_double(); trained_bpb = log[i]["val_bpb"].as_double(); }
    // the same weights, val batches and thread count: the same bits
    CHECK(log.back()["val_loss"].as_double() == trained);
    CHECK(log.back()["val_bpb"].as_double() == trained_bpb);
    CHECK(r.out.find("saved checkpoint") == std::string::npos);
    CHECK(list_checkpoints(d).size() == 3);
    // a model flag given explicitly must match
    expect_error("./train_gpt_cpu --data-dir " + tmp_dir() + "/data --eval-only --resume " + d + " --depth 3", "model_config.n_layer");
}

TEST_CASE("scripts/plot_log.py: arguments checked and logs read before matplotlib is needed; a PNG when it is there") {
    if (system("python3 -c 'import json' >/dev/null 2>&1") != 0) {
        MESSAGE("python3 not found: plot_log.py not tested");
        return;
    }
    Run help = run("python3 scripts/plot_log.py --help");
    CHECK(help.status == 0);
    CHECK(help.out.find("--output") != std::string::npos);
    expect_error("python3 scripts/plot_log.py " + tmp_dir() + "/no_such_log.jsonl", "cannot read");
    std::string bad = tmp_dir() + "/not_a_log.jsonl";
    llmc::write_file_atomic(bad, "{\"hello\": 1}\n");
    expect_error("python3 scripts/plot_log.py " + bad, "has no training or validation loss lines");
    expect_error("python3 scripts/plot_log.py " + ref_dir() + "/log.jsonl --labels a b", "--labels gives 2 labels for 1 logs");
    // matplotlib made unimportable (a package on PYTHONPATH that raises ImportError), whether or not
    // it is installed: the message says how to get it
    std::string fake = tmp_dir() + "/fake_mpl/matplotlib";
    sh("mkdir -p " + fake);
    llmc::write_file_atomic(fake + "/__init__.py", "raise ImportError('hidden by test_robust')\n");
    expect_error("PYTHONPATH=" + tmp_dir() + "/fake_mpl python3 scripts/plot_log.py " + ref_dir() + "/log.jsonl -o " + tmp_dir() + "/x.png",
                 "plot_log.py needs matplotlib: pip install matplotlib");
    if (system("python3 -c 'import matplotlib' >/dev/null 2>&1") != 0) {
        MESSAGE("matplotlib not installed: plot_log.py's PNG output not tested here");
        return;
    }
    std::string png = tmp_dir() + "/loss.png";
    Run r = run("python3 scripts/plot_log.py " + ref_dir() + "/log.jsonl " + ref_dir() + " -o " + png);
    INFO(r.out);
    CHECK(r.status == 0);
    std::string bytes = llmc::read_file(png);
    CHECK(bytes.substr(0, 8) == std::string("\x89PNG\r\n\x1a\n", 8));
}

int main(int argc, char** argv) {
    doctest::Context ctx(argc, argv);
    int rc = ctx.run();
    if (ctx.shouldExit()) return rc;
    if (!g_tmp.empty()) {
        if (rc == 0 && !getenv("LLMC_KEEP_TEST_FILES")) rc = system(("rm -rf " + g_tmp).c_str()) == 0 ? 0 : 1;
        else fprintf(stderr, "test files kept in %s\n", g_tmp.c_str());
    }
    return rc;
}
