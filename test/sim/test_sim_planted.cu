// test_sim_planted.cu: planted bugs, one per class of mistake SIM must report (issue: "SIM catches
// what a GPU would"), each next to its correct twin, which must pass cleanly. Built in every SIM
// flavor; each class is asserted in the flavors that can see it:
//
//   class                                          | sim / sim_asan (order rerun)  | sim_tsan (race)
//   -----------------------------------------------+-------------------------------+-----------------
//   missing __syncthreads() (reader after writer)   | result depends on the order   | data race
//   __syncwarp() where __syncthreads() is needed    | result depends on the order   | data race
//   cross-warp read right after a shuffle reduction | result depends on the order   | data race
//   one __shared__ scalar as every thread's temp    | (invisible: no switch)        | data race
//   non-atomic += by many threads, one block        | (invisible: no switch)        | data race
//   non-atomic += across blocks                     | (invisible: blocks in turn)   | data race
//   a block reading another block's result          | result depends on the order   | data race
//   lane 0 broadcast without __syncwarp()           | result depends on the order   | data race
//   uninitialized shared read through fmaxf         | poison 3.4e38 / order rerun   | -
//   __launch_bounds__(256) launched with 512        | launch error                  | launch error
//   cudaMemcpyDefault past the allocation           | runtime error                 | runtime error
//   128-bit load from a 2-byte-aligned pointer      | vector-load check (+ UBSan)   | vector-load check
//   host buffer changed before the stream sync      | wrong result (LLMC_SIM_STREAMS=async)
//
// "result depends on the order" is LLMC_SIM_DETERMINISM's rerun (the launch again in the opposite
// order, device memory compared bitwise), switched on here for each planted launch.
#include <doctest/doctest.h>

#include "llmc/cuda/common.cuh"
#include "llmc/cuda/reduce.cuh"

#include <string>
#include <vector>

#ifdef LLMC_SIM
#include <unistd.h>

static bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// What SIM says about running f(): under TSan, the race reports of a child process running it
// (TSan reports at the access and goes on; the child's stderr is the report); otherwise the error
// f() throws with the determinism rerun switched on. Empty: nothing reported.
template <class F> static std::string report_of(F f) {
#if LLMC_SIM_TSAN
    // the reports go to stderr: catch them in a file for the scope of f()
    llmc::sim::ExpectRaces expect;
    fflush(stderr);
    FILE* tmp = tmpfile();
    REQUIRE(tmp);
    int saved_fd = dup(2);
    dup2(fileno(tmp), 2);
    std::string err;
    try { f(); } catch (const std::exception& e) { err = std::string("error: ") + e.what() + "\n"; }
    fflush(stderr);
    dup2(saved_fd, 2);
    close(saved_fd);
    std::string out;
    rewind(tmp);
    char buf[4096];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, tmp)) > 0) out.append(buf, k);
    fclose(tmp);
    return out + err;
#else
    bool saved = llmc::sim::config().determinism;
    llmc::sim::config().determinism = true;
    std::string e;
    try {
        f();
    } catch (const llmc::Error& err) {
        e = err.what();
    }
    llmc::sim::config().determinism = saved;
    return e;
#endif
}

// the report names a race (TSan) or an order dependence (rerun), in the planted kernel
static void check_reported(const std::string& r, const char* kernel) {
    INFO(r);
#if LLMC_SIM_TSAN
    CHECK(has(r, "ThreadSanitizer: data race"));
    CHECK(has(r, kernel));               // the kernel's frame in both stacks, and SIM's note
    CHECK(has(r, "SIM: race found in kernel"));
    CHECK(has(r, "block ("));            // both threads are named by block and thread
#else
    CHECK(has(r, "depends on the order the threads ran in"));
    CHECK(has(r, kernel));
#endif
}
static void check_clean(const std::string& r) {
    INFO(r);
    CHECK(r.empty());
}

template <class T> struct Dev {
    T* p = nullptr;
    size_t n;
    explicit Dev(size_t count, T init = T()) : n(count) {
        cudaCheck(cudaMalloc(&p, n * sizeof(T)));
        std::vector<T> h(n, init);
        cudaCheck(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    }
    ~Dev() { CHECK(cudaFree(p) == cudaSuccess); }
    std::vector<T> get() const {
        std::vector<T> h(n);
        cudaCheck(cudaDeviceSynchronize());
        cudaCheck(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
        return h;
    }
};

// ---- 1. missing __syncthreads() between a shared write and another thread's read ----
template <bool BUG> __global__ void planted_missing_barrier(float* out, const float* in) {
    STATIC_SMEM(float[128], buf);
    int t = threadIdx.x;
    buf[t] = in[t];
    if (!BUG) __syncthreads();
    out[t] = buf[127 - t];
}
TEST_CASE("planted: missing __syncthreads()") {
    Dev<float> in(128, 1.0f), out(128);
    check_reported(report_of([&] { LAUNCH(planted_missing_barrier<true>, 1, 128, 0, 0, out.p, in.p); }), "planted_missing_barrier");
    check_clean(report_of([&] { LAUNCH(planted_missing_barrier<false>, 1, 128, 0, 0, out.p, in.p); }));
    for (float v : out.get()) CHECK(v == 1.0f);
}

// ---- 2. __syncwarp() where __syncthreads() is needed (reading another warp's slot) ----
template <bool BUG> __global__ void planted_syncwarp_not_enough(float* out, const float* in) {
    STATIC_SMEM(float[64], buf);
    int t = threadIdx.x;
    buf[t] = in[t] * 2.0f;
    if (BUG) __syncwarp();
    else __syncthreads();
    out[t] = buf[(t + 32) % 64];  // the other warp's slot
}
TEST_CASE("planted: __syncwarp() used where __syncthreads() is needed") {
    Dev<float> in(64, 1.5f), out(64);
    check_reported(report_of([&] { LAUNCH(planted_syncwarp_not_enough<true>, 1, 64, 0, 0, out.p, in.p); }), "planted_syncwarp_not_enough");
    check_clean(report_of([&] { LAUNCH(planted_syncwarp_not_enough<false>, 1, 64, 0, 0, out.p, in.p); }));
    for (float v : out.get()) CHECK(v == 3.0f);
}

// ---- 3. cross-warp read right after a warp-shuffle reduction, no barrier ----
template <bool BUG> __global__ void planted_read_after_shuffle(float* out, const float* in) {
    STATIC_SMEM(float[8], partial);
    int t = threadIdx.x, w = t / 32;
    float v = warp_reduce_sum(in[t]);
    if ((t & 31) == 0) partial[w] = v;
    if (!BUG) __syncthreads();
    if (t == 0) {
        float s = 0.0f;
        for (int i = 0; i < (int)blockDim.x / 32; i++) s += partial[i];
        out[0] = s;
    }
}
TEST_CASE("planted: cross-warp read right after a warp-shuffle reduction without a barrier") {
    Dev<float> in(256, 1.0f), out(1);
    check_reported(report_of([&] { LAUNCH(planted_read_after_shuffle<true>, 1, 256, 0, 0, out.p, in.p); }), "planted_read_after_shuffle");
    check_clean(report_of([&] { LAUNCH(planted_read_after_shuffle<false>, 1, 256, 0, 0, out.p, in.p); }));
    CHECK(out.get()[0] == 256.0f);
}

// ---- 4. one __shared__ scalar used by every thread as a private temporary ----
template <bool BUG> __global__ void planted_shared_temp(float* out, const float* in) {
    STATIC_SMEM(float[64], tmp);
    int t = threadIdx.x;
    float* mine = BUG ? &tmp[0] : &tmp[t];  // BUG: every thread's "private" slot is the same word
    *mine = in[t] + 1.0f;
    out[t] = *mine * 2.0f;
}
TEST_CASE("planted: one shared scalar used by every thread as a private temporary") {
    Dev<float> in(64, 1.0f), out(64);
    std::string r = report_of([&] { LAUNCH(planted_shared_temp<true>, 1, 64, 0, 0, out.p, in.p); });
#if LLMC_SIM_TSAN
    check_reported(r, "planted_shared_temp");
#else
    MESSAGE("not visible without TSan (threads run one after another between barriers): build/sim_tsan reports it");
#endif
    check_clean(report_of([&] { LAUNCH(planted_shared_temp<false>, 1, 64, 0, 0, out.p, in.p); }));
    for (float v : out.get()) CHECK(v == 4.0f);
}

// ---- 5. non-atomic += on one global address by many threads, in one block and across blocks ----
template <bool BUG> __global__ void planted_nonatomic_add(float* sum, const float* in) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (BUG) *sum += in[i];
    else atomicAdd(sum, in[i]);
}
// one thread per block: the only race is between blocks
__global__ void planted_nonatomic_add_blocks(float* sum, const float* in) {
    if (threadIdx.x == 0) *sum += in[blockIdx.x];
}
TEST_CASE("planted: non-atomic += on one address, within a block and across blocks") {
    Dev<float> in(256, 1.0f), sum(1, 0.0f);
    std::string r1 = report_of([&] { LAUNCH(planted_nonatomic_add<true>, 1, 64, 0, 0, sum.p, in.p); });
    Dev<float> sum_b(1, 0.0f);  // another address: TSan reports one race per address
    std::string r2 = report_of([&] { LAUNCH(planted_nonatomic_add_blocks, 4, 32, 0, 0, sum_b.p, in.p); });
#if LLMC_SIM_TSAN
    check_reported(r1, "planted_nonatomic_add");
    check_reported(r2, "planted_nonatomic_add_blocks");
#else
    MESSAGE("not visible without TSan: build/sim_tsan reports it");
#endif
    // atomics are atomic: no report, and the sum is exact (small integers)
    Dev<float> sum2(1, 0.0f);
    check_clean(report_of([&] { LAUNCH(planted_nonatomic_add<false>, 4, 64, 0, 0, sum2.p, in.p); }));
    CHECK(sum2.get()[0] == 256.0f);  // (the determinism rerun starts again from the same memory)
}

// ---- 6. a block reading another block's result in the same launch ----
template <bool BUG> __global__ void planted_read_other_block(float* part, float* out) {
    int b = blockIdx.x;
    if (threadIdx.x == 0) {
        part[b] = (float)(b + 1);
        if (BUG && b > 0) out[b] = part[b - 1];  // block b-1 may not have run yet
        if (!BUG) out[b] = (float)(b + 1);
    }
}
TEST_CASE("planted: a block reads another block's result in the same launch") {
    Dev<float> part(8, 0.0f), out(8, 0.0f);
    check_reported(report_of([&] { LAUNCH(planted_read_other_block<true>, 8, 32, 0, 0, part.p, out.p); }), "planted_read_other_block");
    check_clean(report_of([&] { LAUNCH(planted_read_other_block<false>, 8, 32, 0, 0, part.p, out.p); }));
}

// ---- 7. lane 0 broadcasting through shared memory without __syncwarp() ----
template <bool BUG> __global__ void planted_lane0_broadcast(float* out, const float* in) {
    STATIC_SMEM(float[2], bcast);
    int t = threadIdx.x, w = t / 32;
    if ((t & 31) == 0) bcast[w] = in[w] * 3.0f;
    if (!BUG) __syncwarp();
    out[t] = bcast[w];
}
TEST_CASE("planted: lane 0 broadcasts through shared memory without __syncwarp()") {
    Dev<float> in(2, 2.0f), out(64);
    check_reported(report_of([&] { LAUNCH(planted_lane0_broadcast<true>, 1, 64, 0, 0, out.p, in.p); }), "planted_lane0_broadcast");
    check_clean(report_of([&] { LAUNCH(planted_lane0_broadcast<false>, 1, 64, 0, 0, out.p, in.p); }));
    for (float v : out.get()) CHECK(v == 6.0f);
}

// ---- 8. an uninitialized shared read that goes through fmaxf ----
template <bool BUG> __global__ void planted_uninit_fmax(float* out, const float* in) {
    STATIC_SMEM(float[64], m);
    int t = threadIdx.x;
    if (!BUG || t < 32) m[t] = in[t];  // BUG: the second warp's slots are never written
    __syncthreads();
    if (t == 0) {
        float mx = -INFINITY;
        for (int i = 0; i < 64; i++) mx = fmaxf(mx, m[i]);  // a NaN would vanish here; 3.4e38 does not
        out[0] = mx;
    }
}
TEST_CASE("planted: uninitialized shared memory read through fmaxf") {
    Dev<float> in(64, 1.0f), out(1);
    // the NaN pattern is swallowed by fmaxf, the huge finite one is not: over two launches (the
    // poison alternates) the result is wrong at least once, and the order rerun sees both
    float r0, r1;
    {
        bool saved = llmc::sim::config().determinism;  // the plain launches: no rerun
        llmc::sim::config().determinism = false;
        LAUNCH(planted_uninit_fmax<true>, 1, 64, 0, 0, out.p, in.p);
        r0 = out.get()[0];
        LAUNCH(planted_uninit_fmax<true>, 1, 64, 0, 0, out.p, in.p);
        r1 = out.get()[0];
        llmc::sim::config().determinism = saved;
    }
    CHECK((r0 != 1.0f || r1 != 1.0f));
#if !LLMC_SIM_TSAN
    std::string r = report_of([&] { LAUNCH(planted_uninit_fmax<true>, 1, 64, 0, 0, out.p, in.p); });
    INFO(r);
    CHECK(has(r, "depends on the order"));
#endif
    check_clean(report_of([&] { LAUNCH(planted_uninit_fmax<false>, 1, 64, 0, 0, out.p, in.p); }));
    CHECK(out.get()[0] == 1.0f);
}

// ---- 9. a __launch_bounds__(256) kernel launched with 512 threads ----
__global__ void __launch_bounds__(256) planted_bounded(float* out) { out[threadIdx.x] = 1.0f; }
TEST_CASE("planted: a __launch_bounds__(256) kernel launched with 512 threads") {
    Dev<float> out(512);
    std::string e;
    try { LAUNCH(planted_bounded, 1, 512, 0, 0, out.p); } catch (const llmc::Error& err) { e = err.what(); }
    INFO(e);
    CHECK(has(e, "planted_bounded"));
    CHECK(has(e, "512 threads"));
    CHECK(has(e, "__launch_bounds__(256)"));
    LAUNCH(planted_bounded, 1, 256, 0, 0, out.p);  // within its bound: fine
}

// ---- 10. cudaMemcpy(..., cudaMemcpyDefault) larger than the allocation ----
TEST_CASE("planted: cudaMemcpyDefault past the end of the allocation") {
    Dev<float> d(16);
    std::vector<float> h(32, 1.0f);
    cudaError_t e = cudaMemcpy(d.p, h.data(), 32 * sizeof(float), cudaMemcpyDefault);
    CHECK(e == cudaErrorInvalidValue);
    CHECK(has(cudaGetErrorString(e), "not inside a cudaMalloc'ed block"));
    e = cudaMemcpy(h.data(), d.p, 32 * sizeof(float), cudaMemcpyDefault);
    CHECK(e == cudaErrorInvalidValue);
    cudaGetLastError();
    CHECK(cudaMemcpy(d.p, h.data(), 16 * sizeof(float), cudaMemcpyDefault) == cudaSuccess);
}

// ---- 11. a 128-bit vector load from a 2-byte-aligned pointer ----
// (explicitly bf16, not floatX: the same 2-byte misalignment in the fp32 build)
__global__ void planted_misaligned_load(float* out, const __nv_bfloat16* in, int offset) {
    Pack<__nv_bfloat16, 8> p = load_pack<__nv_bfloat16, 8>(in + offset);  // offset 1: 2-byte aligned
    out[threadIdx.x] = (float)p.v[0];
}
TEST_CASE("planted: a 128-bit vector load from a 2-byte-aligned pointer") {
    Dev<__nv_bfloat16> in(64, __float2bfloat16(1.0f));
    Dev<float> out(32);
    std::string e;
    try { LAUNCH(planted_misaligned_load, 1, 32, 0, 0, out.p, in.p, 1); } catch (const llmc::Error& err) { e = err.what(); }
    INFO(e);
    CHECK(has(e, "planted_misaligned_load"));
    CHECK(has(e, "not 16-byte aligned"));
    LAUNCH(planted_misaligned_load, 1, 32, 0, 0, out.p, in.p, 8);  // aligned: fine
    CHECK(out.get()[0] == 1.0f);
}

// ---- 12. a pinned host buffer changed after cudaMemcpyAsync, before the stream is synchronized ----
__global__ void planted_scale(float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= 2.0f;
}
TEST_CASE("planted: a host buffer changed before the stream is synchronized (LLMC_SIM_STREAMS=async)") {
    if (!llmc::sim::config().async_streams) {
        MESSAGE("copies are synchronous in this run; the async-streams run (LLMC_SIM_STREAMS=async) checks this");
        return;
    }
    cudaStream_t st;
    cudaCheck(cudaStreamCreate(&st));
    Dev<float> d(64);
    float* h = nullptr;
    cudaCheck(cudaMallocHost(&h, 64 * sizeof(float)));
    for (int i = 0; i < 64; i++) h[i] = 1.0f;
    cudaCheck(cudaMemcpyAsync(d.p, h, 64 * sizeof(float), cudaMemcpyHostToDevice, st));
    LAUNCH(planted_scale, 1, 64, 0, st, d.p, 64);
    for (int i = 0; i < 64; i++) h[i] = 5.0f;  // BUG: the copy may not have read h yet
    cudaCheck(cudaMemcpyAsync(h, d.p, 64 * sizeof(float), cudaMemcpyDeviceToHost, st));
    CHECK(h[0] == 5.0f);  // not copied back yet either: the stream has not run
    cudaCheck(cudaStreamSynchronize(st));
    CHECK(h[0] == 10.0f);  // the copy read the changed buffer: the bug shows as a wrong result
    // correct twin: synchronize before touching the buffer
    for (int i = 0; i < 64; i++) h[i] = 1.0f;
    cudaCheck(cudaMemcpyAsync(d.p, h, 64 * sizeof(float), cudaMemcpyHostToDevice, st));
    LAUNCH(planted_scale, 1, 64, 0, st, d.p, 64);
    cudaCheck(cudaMemcpyAsync(h, d.p, 64 * sizeof(float), cudaMemcpyDeviceToHost, st));
    cudaCheck(cudaStreamSynchronize(st));
    CHECK(h[0] == 2.0f);
    cudaCheck(cudaFreeHost(h));
    cudaCheck(cudaStreamDestroy(st));
}

// ---- the kernels in llmc/cuda use STATIC_SMEM / DYNAMIC_SMEM, never a plain __shared__ ----
TEST_CASE("no plain __shared__ in llmc/cuda and dev/cuda (it is neither poisoned nor bounds-checked under SIM)") {
    FILE* p = popen("grep -rnE '(^|[^_A-Za-z])__shared__' llmc/cuda dev/cuda --include='*.cuh' --include='*.cu' | grep -v 'llmc/cuda/common.cuh'", "r");
    REQUIRE(p);
    std::string found;
    char buf[512];
    while (fgets(buf, sizeof buf, p)) found += buf;
    pclose(p);
    INFO(found);
    CHECK(found.empty());
}
#else
TEST_CASE("planted-bug tests run only under SIM") {}
#endif
