// cudnn_graph_check.cu: checks, without a GPU, that cuDNN accepts the attention graphs of
// llmc/cuda/attention_cudnn.cuh. For each shape (the GPU test's and the benchmark's) it builds the
// forward and the backward operation graph exactly as the library does, runs cuDNN's heuristics for a
// described device instead of a live one (cuDNN >= 9.8: a device-properties descriptor made from
// JSON, by default an H100 SXM) and tries to finalize an execution plan from each engine config.
// Outcome per graph:
//   plan       an execution plan finalized (only where a CUDA driver is installed)
//   compiled   an engine config passed cuDNN's support checks for the graph and cuDNN compiled its
//              fused kernel (NVRTC); only loading the module failed, for want of a driver and a GPU
//   REJECTED   no engine config got that far; the reasons are printed (CUDNN_LOGLEVEL_DBG=2
//              CUDNN_LOGDEST_DBG=stderr shows cuDNN's own account of each heuristics result)
// Exit status 1 if any graph is rejected.
//
// Without a driver, cuDNN's run-time-compiled engines (the fused attention ones) refuse to even try
// unless libcuda.so.1 can be loaded, so the tool loads the toolkit's driver stub (stubs/libcuda.so,
// soname libcuda.so.1) when no real driver is found. The device JSON's keys are cuDNN's own, found
// from its error messages: the schema is undocumented and may change between cuDNN versions
// (--device-json FILE replaces the built-in one). What this cannot check: the numbers (the GPU test
// does), and whether the engines the heuristics rank first for a real H100/H200 are the same.
//
//   build/gpu/cudnn_graph_check [--device-json FILE] [--stub PATH]
#include <dlfcn.h>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include "llmc/cuda/attention_cudnn.cuh"

namespace {

using namespace llmc::cudnn_att;

// H100 SXM5 80GB (sm_90, 132 SMs); cudnnVersion is replaced by the running library's
const char* kH100Json =
    "{\"cudnnVersion\": %zu, \"schemaVersion\": 4, \"maxGridSize\": [2147483647, 65535, 65535], \"maxBlockSize\": [1024, 1024, 64], "
    "\"regsPerBlock\": 65536, \"multiProcessorCount\": 132, \"warpSize\": 32, \"maxSharedMemoryPerBlock\": 49152, "
    "\"maxSharedMemoryPerBlockOptin\": 232448, \"reservedSharedMemoryPerBlock\": 1024, \"maxRegistersPerSM\": 65536, "
    "\"maxCtasPerSM\": 32, \"maxThreadsPerBlock\": 1024, \"maxThreadsPerSM\": 2048, \"pciDeviceId\": 0, \"isTccDriver\": 0, "
    "\"supportCoopLaunch\": 1, \"smClockRateKHz\": 1980000, \"memClockRateKHz\": 2619000, \"l2CacheSize\": 52428800, "
    "\"deviceName\": \"NVIDIA H100 80GB HBM3\", \"totalGlobalMem\": 85028634624, \"deviceVer\": 900, \"driverVer\": 13000, "
    "\"cudaDeviceId\": 0}";

struct Case {
    int B, T, H, Hkv, D, window;
};
// test/sim/test_attention.cu's kShapes, its D = 96 and plan-cache shapes, then dev/cuda/bench_attention.cu's
const Case kCases[] = {
    {1, 1, 2, 1, 64, INT_MAX},    {3, 17, 4, 1, 64, INT_MAX},    {1, 64, 8, 1, 64, 63},          {1, 255, 2, 2, 64, 128},
    {3, 65, 2, 1, 128, 0},        {1, 300, 2, 1, 128, 1},        {1, 255, 2, 1, 64, 63},         {1, 200, 1, 1, 128, INT_MAX},
    {2, 130, 4, 2, 96, 40},       {2, 40, 4, 2, 64, 9},          {2, 150, 4, 2, 128, 40},        {4, 2048, 32, 32, 128, INT_MAX},
    {4, 4096, 32, 32, 128, INT_MAX}, {4, 8192, 32, 32, 128, INT_MAX}, {4, 16384, 32, 32, 128, INT_MAX},
    {4, 32768, 32, 32, 128, INT_MAX}, {16, 2048, 10, 10, 128, 512}, {16, 2048, 10, 10, 128, INT_MAX},
};

int run(int argc, char** argv) {
    std::string json, stub = "/usr/local/cuda/lib64/stubs/libcuda.so";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--device-json") == 0 && i + 1 < argc) {
            std::ifstream f(argv[++i]);
            LLMC_CHECK(f.good(), "cannot open the device JSON '%s'", argv[i]);
            std::stringstream ss;
            ss << f.rdbuf();
            json = ss.str();
        } else if (strcmp(argv[i], "--stub") == 0 && i + 1 < argc) {
            stub = argv[++i];
        } else {
            LLMC_FAIL("unknown argument '%s' (usage: cudnn_graph_check [--device-json FILE] [--stub PATH])", argv[i]);
        }
    }
    const size_t ver = cudnnGetVersion();
    printf("cuDNN %zu\n", ver);
    LLMC_CHECK(ver >= 90800, "cuDNN %zu: device-properties descriptors (deviceless planning) need 9.8 or newer", ver);
    if (dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL)) {
        printf("driver: libcuda.so.1 found (a real driver: plans may finalize)\n");
    } else if (dlopen(stub.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
        printf("driver: none; loaded the stub %s, so kernels compile but cannot load\n", stub.c_str());
    } else {
        printf("driver: none, and no stub at %s: cuDNN's run-time-compiled engines will all decline\n", stub.c_str());
    }
    if (json.empty()) json = llmc::strfmt(kH100Json, ver);

    int rejected = 0;
    for (const Case& c : kCases) {
        for (int backward = 0; backward < 2; backward++) {
            Plan p;
            p.backward = backward != 0;
            p.B = c.B, p.T = c.T, p.H = c.H, p.Hkv = c.Hkv, p.D = c.D;
            p.w = c.window < c.T - 1 ? c.window : c.T - 1;
            printf("%-8s B=%-2d T=%-5d H=%-2d Hkv=%-2d D=%-3d window=%-5s: ", backward ? "backward" : "forward", c.B, c.T, c.H, c.Hkv,
                   c.D, p.w >= c.T - 1 ? "none" : std::to_string(p.w).c_str());
            std::vector<std::string> failures;
            std::string outcome;
            try {
                cudnnBackendDescriptor_t dp = p.graph.make(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR);
                set_attr(dp, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR, (int64_t)json.size(), json.data(), "device JSON");
                finalize(dp, "device properties");
                if (backward) build_backward(p);
                else build_forward(p);
                make_execution_plan(p, dp, &failures);
            } catch (const BuildFailure& f) {
                failures.push_back(f.what);
            }
            bool compiled = false;
            for (const std::string& f : failures)
                if (f.find("cuLibraryLoadData") != std::string::npos || f.find("EXECUTION_FAILED_CUDA_DRIVER") != std::string::npos)
                    compiled = true;
            if (p.exec) {
                printf("plan (%zu ops, workspace %lld bytes)\n", p.graph.ops.size(), (long long)p.workspace_bytes);
            } else if (compiled) {
                printf("compiled (%zu ops; the module load needs a GPU)\n", p.graph.ops.size());
            } else {
                rejected++;
                printf("REJECTED\n");
                for (const std::string& f : failures) printf("    %s\n", f.c_str());
            }
        }
    }
    printf("%d of %d graphs rejected\n", rejected, (int)(2 * sizeof(kCases) / sizeof(kCases[0])));
    return rejected ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
    LLMC_MAIN_GUARD(return run(argc, argv);)
}
