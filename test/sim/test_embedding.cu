// test_embedding.cu: llmc/cuda/embedding.cuh against the CPU reference (llmc/cpu/embedding.h).
//
// Tolerances. The forward is a copy: bitwise equal to the table rows. The backward, for an id with
// at most EMBEDDING_SEG positions, adds the same fp32 values (the floatX gradients, exact in fp32) in
// the same order as the CPU op (dtable[id] += dout[i] for i ascending): those rows must be bitwise
// equal to the CPU op run in fp32 on the bf16 gradients. An id with c > EMBEDDING_SEG positions is
// summed in segments of EMBEDDING_SEG (partials from 0), then dtable + partial_0 + partial_1 + ...:
// a regrouping of the same sum, whose difference from the CPU's sequential sum is bounded by the
// recursive-summation bound: each result is a chain of at most SEG + ceil(c/SEG) + 1 roundings,
// |err| <= (SEG + ceil(c/SEG) + 1) 2^-24 (|dtable_old| + sum_i |dout_i|); the test allows 2x that.
// Every run is bitwise equal to itself (rerun from the same state, rebuilt plan).
// FP32 build (-DLLMC_FP32, floatX = float): the same checks on unrounded fp32 tables and gradients
// (the argument above never used the bf16-ness of the values, only that they are exact in fp32).
// Shapes: C = 77 (scalar path), C = 256 and 24 (16-byte path), positions with many repeated ids,
// one id far more frequent than the rest (split into several segments when N is large enough),
// ids used once.
#include <doctest/doctest.h>
#include "llmc/cuda/embedding.cuh"
#include "llmc/cpu/embedding.h"
#include "test/sim/test_util.h"

using namespace testutil;

namespace {

// ids in [0, V): about 40% are id 3, the rest spread over all ids (so most repeat)
std::vector<int> make_ids(int N, int V, llmc::Rng& rng) {
    std::vector<int> idx(N);
    for (auto& t : idx) t = rng.uniform() < 0.4 ? 3 : (int)rng.below(V);
    idx[N - 1] = V - 1;  // the last table row
    return idx;
}

void check_forward(int N, int C, int V, uint64_t seed) {
    CAPTURE(N);
    CAPTURE(C);
    llmc::Rng rng(seed);
    std::vector<float> table = x_round(randn((size_t)V * C, rng, 0.8));
    std::vector<int> idx = make_ids(N, V, rng);
    std::vector<float> ref((size_t)N * C);
    embedding_forward<float>(ref.data(), idx.data(), table.data(), N, C);

    DeviceBuffer<floatX> d_table(to_x(table)), d_out((size_t)N * C);
    DeviceBuffer<int> d_idx(idx);
    d_out.poison();
    embedding_forward(d_out.ptr, d_idx.ptr, d_table.ptr, N, C, 0);
    CHECK(bits_equal(to_f32(d_out.download()), ref));
}

// rows of got and want compared: bitwise for ids with <= EMBEDDING_SEG positions, within the
// regrouping bound (see the top) for split ids. start: the table before the call.
long count_backward_mismatches(const char* what, const std::vector<float>& got, const std::vector<float>& want,
                               const std::vector<float>& start, const std::vector<float>& dout, const std::vector<int>& idx,
                               int C) {
    const int V = (int)(start.size() / C);
    std::vector<int> count(V, 0);
    std::vector<double> mass(start.size(), 0.0);
    for (size_t i = 0; i < start.size(); i++) mass[i] = std::fabs(start[i]);
    for (size_t i = 0; i < idx.size(); i++) {
        count[idx[i]]++;
        for (int c = 0; c < C; c++) mass[(size_t)idx[i] * C + c] += std::fabs(dout[i * C + c]);
    }
    return count_mismatches(what, got, want, [&](size_t k) {
        const int c = count[k / C];
        if (c <= EMBEDDING_SEG) return 0.0;
        return 2.0 * (EMBEDDING_SEG + CEIL_DIV(c, EMBEDDING_SEG) + 1) * 0x1p-24 * mass[k];
    });
}

void check_backward(int N, int C, int V, uint64_t seed) {
    CAPTURE(N);
    CAPTURE(C);
    llmc::Rng rng(seed);
    std::vector<int> idx = make_ids(N, V, rng);
    std::vector<float> dout = x_round(randn((size_t)N * C, rng, 1.0));
    std::vector<float> dtable0 = randn((size_t)V * C, rng, 0.1);  // nonzero: the op accumulates

    EmbeddingBackwardPlan plan;
    embedding_plan_create(&plan, N + 5, V, C + 3);
    embedding_plan_build(&plan, idx.data(), N, 0);
    DeviceBuffer<floatX> d_dout(to_x(dout));
    DeviceBuffer<int> d_idx(idx);

    // once: equal to the CPU op
    std::vector<float> ref = dtable0;
    embedding_backward<float>(ref.data(), dout.data(), idx.data(), N, C);
    DeviceBuffer<float> d_dtable(dtable0);
    embedding_backward(d_dtable.ptr, d_dout.ptr, d_idx.ptr, N, C, plan, 0);
    const std::vector<float> got = d_dtable.download();
    CHECK(count_backward_mismatches("dtable", got, ref, dtable0, dout, idx, C) == 0);

    // twice on the same buffer: accumulates onto the first result like the CPU op
    std::vector<float> ref2 = got;
    embedding_backward<float>(ref2.data(), dout.data(), idx.data(), N, C);
    embedding_backward(d_dtable.ptr, d_dout.ptr, d_idx.ptr, N, C, plan, 0);
    CHECK(count_backward_mismatches("dtable (2nd call)", d_dtable.download(), ref2, got, dout, idx, C) == 0);

    // deterministic: a fresh run from the same start gives the same bits, also with a rebuilt plan
    embedding_plan_build(&plan, idx.data(), N, 0);
    DeviceBuffer<float> d_dtable2(dtable0);
    embedding_backward(d_dtable2.ptr, d_dout.ptr, d_idx.ptr, N, C, plan, 0);
    CHECK(bits_equal(d_dtable2.download(), got));
    embedding_plan_destroy(&plan);
}

}  // namespace

TEST_CASE("embedding_forward copies table rows (16-byte and scalar paths)") {
    check_forward(7, 77, 13, 1);
    check_forward(33, 256, 50, 2);
    check_forward(10, 24, 5, 3);
}

TEST_CASE("embedding_backward matches the CPU op, accumulates, and is deterministic") {
    check_backward(300, 77, 20, 4);     // id 3: ~120 positions, 2 segments
    check_backward(200, 256, 37, 5);
    check_backward(64, 24, 1000, 6);    // sparse: many ids used once or not at all; nothing split
    check_backward(2000, 24, 30, 7);    // id 3: ~800 positions (13 segments), the others ~40 each
    check_backward(1500, 40, 5, 8);     // five ids, all split
}

TEST_CASE("embedding plan: buckets largest first, positions ascending, segments of <= EMBEDDING_SEG") {
    const int N = 500, V = 64;
    llmc::Rng rng(7);
    std::vector<int> idx = make_ids(N, V, rng);
    EmbeddingBackwardPlan plan;
    embedding_plan_create(&plan, N, V, 8);
    embedding_plan_build(&plan, idx.data(), N, 0);
    const int ns = plan.n_segs, nm = plan.n_multi;
    const int* order = plan.h_buf.data();
    const int* seg = order + N;
    const int* multi = seg + ns + 1;
    std::vector<int> distinct = idx;
    std::sort(distinct.begin(), distinct.end());
    CHECK(plan.n_buckets == (int)(std::unique(distinct.begin(), distinct.end()) - distinct.begin()));
    // order: a permutation of the positions, grouped by id, ascending inside a group
    std::vector<int> seen(N, 0);
    for (int j = 0; j < N; j++) seen[order[j]]++;
    CHECK(std::count(seen.begin(), seen.end(), 1) == N);
    CHECK(idx[order[0]] == 3);  // the most frequent id comes first
    // segments tile order; each lies inside one id's group, has 1..SEG positions ascending
    CHECK(seg[0] == 0);
    CHECK(seg[ns] == N);
    long bad_seg = 0, bad_order = 0, bad_size = 0;
    std::vector<int> segs_of(V, 0), count(V, 0);
    for (int i = 0; i < N; i++) count[idx[i]]++;
    int prev_size = N + 1;
    for (int s = 0; s < ns; s++) {
        const int a = seg[s], b = seg[s + 1], id = idx[order[a]];
        if (b - a < 1 || b - a > EMBEDDING_SEG) bad_seg++;
        for (int j = a; j < b; j++) {
            if (idx[order[j]] != id) bad_seg++;
            if (j > a && order[j] <= order[j - 1]) bad_order++;
        }
        if (segs_of[id]++ == 0) {  // the first segment of a bucket: buckets by size, descending
            if (count[id] > prev_size) bad_size++;
            prev_size = count[id];
        }
    }
    CHECK(bad_seg == 0);
    CHECK(bad_order == 0);
    CHECK(bad_size == 0);
    // split buckets: exactly the ids with more than SEG positions, first, their segments 0..n_split
    int expect_multi = 0, expect_split = 0;
    for (int v = 0; v < V; v++) {
        CHECK(segs_of[v] == CEIL_DIV(count[v], EMBEDDING_SEG));
        if (count[v] > EMBEDDING_SEG) { expect_multi++; expect_split += segs_of[v]; }
    }
    CHECK(nm == expect_multi);
    CHECK(nm >= 1);  // id 3 has ~200 positions
    CHECK(plan.n_split == expect_split);
    CHECK(multi[0] == 0);
    CHECK(multi[nm] == plan.n_split);
    for (int m = 0; m < nm; m++) CHECK(multi[m + 1] - multi[m] == CEIL_DIV(count[idx[order[seg[multi[m]]]]], EMBEDDING_SEG));
    // the device copy is what the kernels read
    const size_t used = (size_t)N + ns + 1 + nm + 1;
    std::vector<int> dev(used);
    cudaCheck(cudaMemcpy(dev.data(), plan.d_buf, used * sizeof(int), cudaMemcpyDeviceToHost));
    CHECK(std::equal(dev.begin(), dev.end(), plan.h_buf.begin()));
    embedding_plan_destroy(&plan);
}

TEST_CASE("embedding plan rejects bad ids and sizes with an error naming the position") {
    EmbeddingBackwardPlan plan;
    embedding_plan_create(&plan, 8, 10, 8);
    std::vector<int> idx = {1, 2, 10, 3};
    try {
        embedding_plan_build(&plan, idx.data(), 4, 0);
        FAIL("expected an error");
    } catch (const llmc::Error& e) {
        CHECK(std::string(e.what()).find("position 2") != std::string::npos);
    }
    idx[2] = -1;
    CHECK_THROWS_AS(embedding_plan_build(&plan, idx.data(), 4, 0), llmc::Error);
    std::vector<int> many(9, 0);
    CHECK_THROWS_AS(embedding_plan_build(&plan, many.data(), 9, 0), llmc::Error);
    // a plan built for another N is refused by the backward
    idx[2] = 4;
    embedding_plan_build(&plan, idx.data(), 4, 0);
    CHECK_THROWS_AS(embedding_backward(nullptr, nullptr, nullptr, 5, 8, plan, 0), llmc::Error);
    // a row wider than the plan's scratch rows is refused
    CHECK_THROWS_AS(embedding_backward(nullptr, nullptr, nullptr, 4, 9, plan, 0), llmc::Error);
    embedding_plan_destroy(&plan);
}
