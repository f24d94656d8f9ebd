// bench_matmul.cpp: GFLOP/s of the CPU matmul (llmc/cpu/matmul.h), blocked float path vs the
// plain loops, for the three products of a linear layer at the benchmark model's shapes
// (N = 1024 rows, C = 256: 256x256 attention projections, 256->1024 c_fc, 1024->256 c_proj,
// 256->32768 lm_head).
//
//   forward  out  = inp · Wᵀ     (N x OC, depth IC)
//   dinp    += dout · W          (N x IC, depth OC)
//   dweight += doutᵀ · inp       (OC x IC, depth N)
//
// Each fast figure is the best of several timed repetitions (the machine is shared: best-of is
// the least noisy estimate of what the code can do). The plain loops are slow, so they run once,
// on at most 4096 output features (for the lm_head, a 4096-column slice: the rate, not the time,
// is what is compared). Also printed: the fast path on 1 thread, and the max |fast - naive|
// relative to max |naive| as a sanity check.
// Usage: build/dev/bench_matmul [N]     (threads from OMP_NUM_THREADS, default all cores)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "llmc/cpu/matmul.h"
#include "llmc/rng.h"
#include "llmc/utils.h"

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// run f once to warm up, then time repetitions until ~min_time seconds; return best seconds
template <typename F>
static double best_time(F f, double min_time, int max_reps = 50) {
    f();
    double best = 1e30, start = now();
    for (int r = 0; r < max_reps; r++) {
        double t0 = now();
        f();
        best = std::min(best, now() - t0);
        if (now() - start > min_time && r >= 2) break;
    }
    return best;
}

static void fill(std::vector<float>& v, llmc::Rng& rng) { for (auto& x : v) x = (float)rng.normal(); }

int main(int argc, char** argv) {
    LLMC_MAIN_GUARD(
        int N = argc > 1 ? atoi(argv[1]) : 1024;
        LLMC_CHECK(N > 0, "N must be positive, got '%s'", argv[1]);
        int nth = 1;
#ifdef _OPENMP
        nth = omp_get_max_threads();
#endif
        printf("matmul GFLOP/s, N=%d rows, %d threads (fast: best of reps; naive: one run, <=4096 output features)\n", N, nth);
        double load[1] = {0};
        if (getloadavg(load, 1) < 1) load[0] = -1;
        printf("micro-tile %dx%d floats, KC=%d MC=%d; load average at start %.2f (other processes share the cores)\n",
               MM_MR, MM_NR, MM_KC, MM_MC, load[0]);
        const char* wp = getenv("OMP_WAIT_POLICY");
        printf("OMP_WAIT_POLICY=%s%s\n\n", wp ? wp : "(unset)",
               wp ? "" : "  (on a loaded machine, spinning workers lose their core and each parallel call can"
                         " wait a whole time slice; try OMP_WAIT_POLICY=passive)");
        printf("%-12s %-8s %10s %10s %10s %9s %10s\n", "shape", "product", "fast", "fast 1thr", "naive", "speedup", "rel diff");
        struct Shape { int IC, OC; const char* name; };
        Shape shapes[] = {{256, 256, "256x256"}, {256, 1024, "256->1024"}, {1024, 256, "1024->256"}, {256, 32768, "lm_head"}};
        llmc::Rng rng(1337, 0);
        for (const Shape& s : shapes) {
            const int IC = s.IC, OC = s.OC;
            std::vector<float> inp((size_t)N * IC), W((size_t)OC * IC), dout((size_t)N * OC), out((size_t)N * OC);
            std::vector<float> dinp((size_t)N * IC, 0.0f), dW((size_t)OC * IC, 0.0f);
            fill(inp, rng); fill(W, rng); fill(dout, rng);
            const int OCn = std::min(OC, 4096);  // naive sub-problem: first OCn output features
            std::vector<float> outn((size_t)N * OCn), doutn((size_t)N * OCn), dinpn((size_t)N * IC), dWn((size_t)OCn * IC);
            for (int n = 0; n < N; n++)
                for (int o = 0; o < OCn; o++) doutn[(size_t)n * OCn + o] = dout[(size_t)n * OC + o];
            for (int prod = 0; prod < 3; prod++) {
                const char* pname = prod == 0 ? "forward" : prod == 1 ? "dinp" : "dweight";
                auto fast = [&]() {
                    if (prod == 0) matmul_forward(out.data(), inp.data(), W.data(), N, IC, OC);
                    else if (prod == 1) matmul_backward(dinp.data(), (float*)nullptr, dout.data(), inp.data(), W.data(), N, IC, OC);
                    else matmul_backward((float*)nullptr, dW.data(), dout.data(), inp.data(), W.data(), N, IC, OC);
                };
                double flops = 2.0 * N * IC * OC, flops_n = 2.0 * N * IC * OCn;
                double tf = best_time(fast, 0.5);
                double tf1 = tf;
#ifdef _OPENMP
                omp_set_num_threads(1);
                tf1 = best_time(fast, 0.3);
                omp_set_num_threads(nth);
#endif
                // naive (on the OCn slice) vs fast on the same slice, for the sanity diff
                std::fill(dinpn.begin(), dinpn.end(), 0.0f);
                std::fill(dWn.begin(), dWn.end(), 0.0f);
                double t0 = now();
                if (prod == 0) matmul_forward_naive(outn.data(), inp.data(), W.data(), N, IC, OCn);
                else if (prod == 1) matmul_backward_naive(dinpn.data(), (float*)nullptr, doutn.data(), inp.data(), W.data(), N, IC, OCn);
                else matmul_backward_naive((float*)nullptr, dWn.data(), doutn.data(), inp.data(), W.data(), N, IC, OCn);
                double tn = now() - t0;
                std::vector<float> ref = prod == 0 ? outn : prod == 1 ? dinpn : dWn;
                std::vector<float> got(ref.size(), 0.0f);
                if (prod == 0) matmul_forward(got.data(), inp.data(), W.data(), N, IC, OCn);
                else if (prod == 1) matmul_backward(got.data(), (float*)nullptr, doutn.data(), inp.data(), W.data(), N, IC, OCn);
                else matmul_backward((float*)nullptr, got.data(), doutn.data(), inp.data(), W.data(), N, IC, OCn);
                double md = 0, mr = 0;
                for (size_t i = 0; i < ref.size(); i++) { md = std::max(md, (double)std::fabs(got[i] - ref[i])); mr = std::max(mr, (double)std::fabs(ref[i])); }
                printf("%-12s %-8s %10.1f %10.1f %10.1f %8.1fx %10.1e\n", s.name, pname, flops / tf / 1e9, flops / tf1 / 1e9,
                       flops_n / tn / 1e9, (flops / tf) / (flops_n / tn), md / mr);
                fflush(stdout);
            }
        }
        return 0;
    )
}
