// test_embedding.cu: llmc/cuda/embedding.cuh against the CPU reference (llmc/cpu/embedding.h).
//
// Tolerances: none. The forward is a copy (bitwise equal to the table rows). The backward adds the
// same fp32 values (the bf16 gradients, exactly representable in fp32) in the same order as the
// CPU op (dtable[id] += dout[i] for i ascending), so it must be bitwise equal to the CPU op run in
// fp32 on the bf16 gradients, and bitwise equal to itself on a rerun.
// Shapes: C = 77 (scalar path), C = 256 and 24 (16-byte path), positions with many repeated ids,
// one id far more frequent than the rest (the largest bucket), ids used once.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
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
    std::vector<float> table = bf16_round(randn((size_t)V * C, rng, 0.8));
    std::vector<int> idx = make_ids(N, V, rng);
    std::vector<float> ref((size_t)N * C);
    embedding_forward<float>(ref.data(), idx.data(), table.data(), N, C);

    DeviceBuffer<floatX> d_table(to_bf16(table)), d_out((size_t)N * C);
    DeviceBuffer<int> d_idx(idx);
    d_out.poison();
    embedding_forward(d_out.ptr, d_idx.ptr, d_table.ptr, N, C, 0);
    CHECK(bits_equal(to_f32(d_out.download()), ref));
}

void check_backward(int N, int C, int V, uint64_t seed) {
    CAPTURE(N);
    CAPTURE(C);
    llmc::Rng rng(seed);
    std::vector<int> idx = make_ids(N, V, rng);
    std::vector<float> dout = bf16_round(randn((size_t)N * C, rng, 1.0));
    std::vector<float> dtable0 = randn((size_t)V * C, rng, 0.1);  // nonzero: the op accumulates

    EmbeddingBackwardPlan plan;
    embedding_plan_create(&plan, N + 5, V);
    embedding_plan_build(&plan, idx.data(), N, 0);
    DeviceBuffer<floatX> d_dout(to_bf16(dout));
    DeviceBuffer<int> d_idx(idx);

    // once: equal to the CPU op
    std::vector<float> ref = dtable0;
    embedding_backward<float>(ref.data(), dout.data(), idx.data(), N, C);
    DeviceBuffer<float> d_dtable(dtable0);
    embedding_backward(d_dtable.ptr, d_dout.ptr, d_idx.ptr, N, C, plan, 0);
    const std::vector<float> got = d_dtable.download();
    CHECK(bits_equal(got, ref));

    // twice on the same buffer: accumulates, still equal to the CPU op applied twice
    embedding_backward<float>(ref.data(), dout.data(), idx.data(), N, C);
    embedding_backward(d_dtable.ptr, d_dout.ptr, d_idx.ptr, N, C, plan, 0);
    CHECK(bits_equal(d_dtable.download(), ref));

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

TEST_CASE("embedding_backward is bitwise equal to the CPU op, accumulates, and is deterministic") {
    check_backward(300, 77, 20, 4);
    check_backward(200, 256, 37, 5);
    check_backward(64, 24, 1000, 6);  // sparse: many ids used once or not at all
}

TEST_CASE("embedding plan: buckets largest first, positions ascending inside, a permutation of all positions") {
    const int N = 500, V = 64;
    llmc::Rng rng(7);
    std::vector<int> idx = make_ids(N, V, rng);
    EmbeddingBackwardPlan plan;
    embedding_plan_create(&plan, N, V);
    embedding_plan_build(&plan, idx.data(), N, 0);
    const int nb = plan.n_buckets;
    const int* order = plan.h_buf.data();
    const int* off = order + N;
    std::vector<int> distinct = idx;
    std::sort(distinct.begin(), distinct.end());
    CHECK(nb == (int)(std::unique(distinct.begin(), distinct.end()) - distinct.begin()));
    CHECK(off[0] == 0);
    CHECK(off[nb] == N);
    std::vector<int> seen(N, 0);
    long bad_order = 0, bad_id = 0, bad_size = 0;
    for (int b = 0; b < nb; b++) {
        if (b > 0 && off[b + 1] - off[b] > off[b] - off[b - 1]) bad_size++;
        for (int j = off[b]; j < off[b + 1]; j++) {
            seen[order[j]]++;
            if (idx[order[j]] != idx[order[off[b]]]) bad_id++;
            if (j > off[b] && order[j] <= order[j - 1]) bad_order++;
        }
    }
    CHECK(bad_size == 0);
    CHECK(bad_id == 0);
    CHECK(bad_order == 0);
    CHECK(std::count(seen.begin(), seen.end(), 1) == N);
    CHECK(idx[order[0]] == 3);  // the most frequent id comes first
    // the device copy is what the kernel reads
    std::vector<int> dev(N + nb + 1);
    cudaCheck(cudaMemcpy(dev.data(), plan.d_buf, dev.size() * sizeof(int), cudaMemcpyDeviceToHost));
    CHECK(std::equal(dev.begin(), dev.end(), plan.h_buf.begin()));
    embedding_plan_destroy(&plan);
}

TEST_CASE("embedding plan rejects bad ids and sizes with an error naming the position") {
    EmbeddingBackwardPlan plan;
    embedding_plan_create(&plan, 8, 10);
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
    embedding_plan_destroy(&plan);
}
