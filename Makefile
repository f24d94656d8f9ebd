# llmc-nano: the build. Everything a user or CI needs is a target here.
#   make run         train a small model on tinyshakespeare and sample from it (CPU unless a GPU build exists)
#   make test        build and run every test (CPU ops, tokenizer, loader, optimizer, SIM kernels, ASan)
#   make bench       benchmarks (throughput figures are measured here, never asserted in tests)
#   make test_gpu    the kernel tests built with nvcc, run on a real GPU
#
# Layout of build products: build/<kind>/<name>. Every llmc header is a dependency of everything
# (the project is header-only by design, so this is both simple and correct).

MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 2) --no-print-directory
CXX ?= g++
OPT ?= -O3 -march=native
CXXFLAGS ?= -std=c++17 $(OPT) -fopenmp -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -I.
LDLIBS ?= -lm
BUILD := build

HEADERS := $(shell find llmc -name '*.h' -o -name '*.cuh' 2>/dev/null)

# ---- nvcc (optional): GPU builds are compiled whenever it exists, run only on a GPU ----
NVCC := $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
# sm_90 (H100/H200) always; plus the local GPU's arch when nvidia-smi can tell it.
LOCAL_SM := $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
GPU_ARCH := -gencode arch=compute_90,code=sm_90 $(if $(filter-out 90,$(LOCAL_SM)),$(if $(LOCAL_SM),-gencode arch=compute_$(LOCAL_SM),code=sm_$(LOCAL_SM)))
NVCCFLAGS ?= -std=c++17 -O3 --use_fast_math -I. $(GPU_ARCH) -Xcompiler -fopenmp
NVLDLIBS := -lcublasLt -lcublas

# ---- cuDNN (optional, README.md#cudnn): USE_CUDNN=1 adds the cuDNN fused-attention comparison ----
# (llmc/cuda/attention_cudnn.cuh: cuDNN's C graph API, no frontend headers) to gpu_build and test_gpu.
# Headers: the directory of cudnn_graph.h, CUDNN_INC, else the first of $(CUDNN_HOME)/include, the CUDA
# toolkit's include directory, /usr/local/include, /usr/include/x86_64-linux-gnu. Library: CUDNN_LIB,
# else the first of $(CUDNN_HOME)/lib(64), the toolkit's lib64, /usr/local/lib, /usr/lib/x86_64-linux-gnu
# holding libcudnn.so (or only libcudnn.so.9, as pip's nvidia-cudnn-cu* ships it).
USE_CUDNN ?= 0
CUDNN_HOME ?=
CUDA_HOME_DIR := $(if $(NVCC),$(patsubst %/bin/,%,$(dir $(realpath $(NVCC)))))
CUDNN_INC ?= $(patsubst %/cudnn_graph.h,%,$(firstword $(wildcard $(if $(CUDNN_HOME),$(CUDNN_HOME)/include/cudnn_graph.h) \
    $(CUDA_HOME_DIR)/include/cudnn_graph.h /usr/local/include/cudnn_graph.h /usr/include/x86_64-linux-gnu/cudnn_graph.h /usr/include/cudnn_graph.h)))
CUDNN_LIB ?= $(patsubst %/,%,$(dir $(firstword $(wildcard $(if $(CUDNN_HOME),$(CUDNN_HOME)/lib64/libcudnn.so* $(CUDNN_HOME)/lib/libcudnn.so*) \
    $(CUDA_HOME_DIR)/lib64/libcudnn.so* $(CUDA_HOME_DIR)/lib/libcudnn.so* /usr/local/lib/libcudnn.so* /usr/lib/x86_64-linux-gnu/libcudnn.so*))))
# -I only for a directory nvcc does not search already; -lcudnn, or the versioned name when there is no libcudnn.so
CUDNN_FLAGS := -DLLMC_CUDNN $(addprefix -I,$(filter-out $(CUDA_HOME_DIR)/include /usr/include,$(CUDNN_INC)))
CUDNN_LDLIBS := $(if $(CUDNN_LIB),-L$(CUDNN_LIB) -Xlinker -rpath=$(CUDNN_LIB)) \
    $(if $(CUDNN_LIB),$(if $(wildcard $(CUDNN_LIB)/libcudnn.so),-lcudnn,-l:libcudnn.so.9),-lcudnn)
CUDNN_TESTS := $(BUILD)/gpu/test_attention_cudnn
CUDNN_BINS := $(CUDNN_TESTS) $(BUILD)/gpu/bench_attention_cudnn $(BUILD)/gpu/cudnn_graph_check

# ---- SIM: the CUDA kernel sources compiled by g++ against llmc/sim (README.md#sim) ----
SIM_SRCS := $(wildcard llmc/sim/*.cpp)
SIMFLAGS ?= -std=c++17 -O1 -g -I. -DLLMC_SIM -Wall -Wno-unused-parameter -Wno-sign-compare -Wno-unknown-pragmas -fopenmp
ASANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# ThreadSanitizer flavor: each CUDA thread a TSan fiber, the CUDA memory model's ordering told to TSan
# (llmc/sim/sim.h), so races in shared and global memory are reported with both source lines.
TSANFLAGS := -fsanitize=thread -fno-omit-frame-pointer

# ---- fuzzing (optional): libFuzzer targets when clang++ can link -fsanitize=fuzzer ----
CLANGXX := $(shell command -v clang++ 2>/dev/null)
HAVE_LIBFUZZER := $(if $(CLANGXX),$(shell printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' | \
    $(CLANGXX) -x c++ -fsanitize=fuzzer -fopenmp - -o /tmp/llmc_fuzz_probe.$$$$ >/dev/null 2>&1 && echo 1; rm -f /tmp/llmc_fuzz_probe.$$$$))
FUZZFLAGS := -std=c++17 -O1 -g -I. -fopenmp -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer
FUZZ_TESTS := $(if $(HAVE_LIBFUZZER),$(patsubst test/fuzz/%.cpp,$(BUILD)/fuzz/%,$(wildcard test/fuzz/fuzz_*.cpp)))

CPU_TESTS := $(patsubst test/%.cpp,$(BUILD)/test/%,$(wildcard test/test_*.cpp))
SIM_TESTS := $(patsubst test/sim/%.cu,$(BUILD)/sim/%,$(wildcard test/sim/test_*.cu))
SIM_ASAN_TESTS := $(patsubst test/sim/%.cu,$(BUILD)/sim_asan/%,$(wildcard test/sim/test_*.cu))
SIM_TSAN_TESTS := $(patsubst test/sim/%.cu,$(BUILD)/sim_tsan/%,$(wildcard test/sim/test_*.cu))
GPU_TESTS := $(patsubst test/sim/%.cu,$(BUILD)/gpu/%,$(wildcard test/sim/test_*.cu))
DEV_BINS := $(patsubst dev/%.cpp,$(BUILD)/dev/%,$(wildcard dev/*.cpp))

PROGRAMS := train_gpt_cpu prepare_data

.PHONY: all test test_gpu gpu_build bench run clean programs
all: programs
programs: $(PROGRAMS)

# ---- programs ----
train_gpt_cpu: train_gpt.cu $(HEADERS)
	$(CXX) $(CXXFLAGS) -x c++ $< -o $@ $(LDLIBS)

# Optional comparison build: the CPU matmuls through OpenBLAS (apt-get install libopenblas-dev).
OPENBLAS_INC ?= $(firstword $(wildcard /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas /usr/include/x86_64-linux-gnu))
train_gpt_cpu_openblas: train_gpt.cu $(HEADERS)
	$(CXX) $(CXXFLAGS) -DLLMC_OPENBLAS -I$(OPENBLAS_INC) -x c++ $< -o $@ $(LDLIBS) -lopenblas

prepare_data: prepare_data.cpp $(HEADERS)
	$(CXX) $(CXXFLAGS) $< -o $@ $(LDLIBS)

# ---- tests ----
$(BUILD)/test/%: test/%.cpp $(HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $< -o $@ $(LDLIBS)

# these include train_gpt.cu itself (#define TESTING)
$(BUILD)/test/test_model $(BUILD)/test/test_robust: train_gpt.cu
# the end-to-end tests share their runner, corpus and log reader
$(BUILD)/test/test_train $(BUILD)/test/test_robust: test/train_test_util.h

$(BUILD)/fuzz/%: test/fuzz/%.cpp $(HEADERS)
	@mkdir -p $(@D)
	$(CLANGXX) $(FUZZFLAGS) $< -o $@

$(BUILD)/sim/%: test/sim/%.cu $(HEADERS) $(SIM_SRCS)
	@mkdir -p $(@D)
	$(CXX) $(SIMFLAGS) -x c++ $< -x none $(SIM_SRCS) -o $@ $(LDLIBS)

$(BUILD)/sim_asan/%: test/sim/%.cu $(HEADERS) $(SIM_SRCS)
	@mkdir -p $(@D)
	$(CXX) $(SIMFLAGS) $(ASANFLAGS) -x c++ $< -x none $(SIM_SRCS) -o $@ $(LDLIBS)

$(BUILD)/sim_tsan/%: test/sim/%.cu $(HEADERS) $(SIM_SRCS)
	@mkdir -p $(@D)
	$(CXX) $(SIMFLAGS) $(TSANFLAGS) -x c++ $< -x none $(SIM_SRCS) -o $@ $(LDLIBS)

$(BUILD)/gpu/%: test/sim/%.cu $(HEADERS)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) $< -o $@ $(NVLDLIBS)

$(BUILD)/dev/%: dev/%.cpp $(HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $< -o $@ $(LDLIBS)

# Kernel benchmark (dev/cuda/bench_kernels.cu): nvcc for a GPU (scripts/gpu_check.sh runs it); the
# SIM build runs tiny shapes on the CPU as a smoke test of the program itself.
$(BUILD)/gpu/bench_kernels: dev/cuda/bench_kernels.cu $(HEADERS) dev/cuda/bench_timing.h
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) $< -o $@ $(NVLDLIBS)

$(BUILD)/sim/bench_kernels: dev/cuda/bench_kernels.cu $(HEADERS) dev/cuda/bench_timing.h $(SIM_SRCS)
	@mkdir -p $(@D)
	$(CXX) $(SIMFLAGS) -x c++ $< -x none $(SIM_SRCS) -o $@ $(LDLIBS)

# Tensor-core GEMM example (dev/cuda/mma_gemm.cu, on llmc/cuda/mma.cuh): the benchmark against
# cuBLASLt on a GPU; under SIM tiny shapes as a smoke test. test_mma_gemm includes the .cu file.
$(BUILD)/gpu/mma_gemm: dev/cuda/mma_gemm.cu $(HEADERS) dev/cuda/bench_timing.h
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) $< -o $@ $(NVLDLIBS)

$(BUILD)/sim/mma_gemm: dev/cuda/mma_gemm.cu $(HEADERS) dev/cuda/bench_timing.h $(SIM_SRCS)
	@mkdir -p $(@D)
	$(CXX) $(SIMFLAGS) -x c++ $< -x none $(SIM_SRCS) -o $@ $(LDLIBS)

$(BUILD)/sim/test_mma_gemm $(BUILD)/sim_asan/test_mma_gemm $(BUILD)/sim_tsan/test_mma_gemm $(BUILD)/gpu/test_mma_gemm: dev/cuda/mma_gemm.cu

# Flash-attention benchmark (dev/cuda/bench_attention.cu, llmc/cuda/attention.cuh): a correctness
# check against the CPU op, then ms and TFLOP/s on a GPU; under SIM tiny shapes as a smoke test.
$(BUILD)/gpu/bench_attention: dev/cuda/bench_attention.cu $(HEADERS) dev/cuda/bench_timing.h
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) $< -o $@ $(NVLDLIBS)

$(BUILD)/sim/bench_attention: dev/cuda/bench_attention.cu $(HEADERS) dev/cuda/bench_timing.h $(SIM_SRCS)
	@mkdir -p $(@D)
	$(CXX) $(SIMFLAGS) -x c++ $< -x none $(SIM_SRCS) -o $@ $(LDLIBS)

# The cuDNN variants (USE_CUDNN=1; these targets can also be named directly): the attention test with
# its cuDNN section (cuDNN against ours), the benchmark timing both, and the deviceless graph check.
$(BUILD)/gpu/test_attention_cudnn: test/sim/test_attention.cu $(HEADERS)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) $(CUDNN_FLAGS) $< -o $@ $(NVLDLIBS) $(CUDNN_LDLIBS)

$(BUILD)/gpu/bench_attention_cudnn: dev/cuda/bench_attention.cu $(HEADERS) dev/cuda/bench_timing.h
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) $(CUDNN_FLAGS) $< -o $@ $(NVLDLIBS) $(CUDNN_LDLIBS)

$(BUILD)/gpu/cudnn_graph_check: dev/cuda/cudnn_graph_check.cu $(HEADERS)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) $(CUDNN_FLAGS) $< -o $@ $(NVLDLIBS) $(CUDNN_LDLIBS) -ldl

# GPU targets compile whenever nvcc exists (CI catches code only one compiler accepts).
gpu_build: $(if $(NVCC),$(GPU_TESTS) $(BUILD)/gpu/bench_kernels $(BUILD)/gpu/mma_gemm $(BUILD)/gpu/bench_attention $(if $(filter 1,$(USE_CUDNN)),$(CUDNN_BINS)))
	@$(if $(NVCC),echo "GPU test binaries + bench_kernels + mma_gemm + bench_attention$(if $(filter 1,$(USE_CUDNN)), + the cuDNN variants) compiled with $(NVCC)",echo "nvcc not found: GPU build skipped")

test: programs $(CPU_TESTS) $(SIM_TESTS) $(SIM_ASAN_TESTS) $(SIM_TSAN_TESTS) $(FUZZ_TESTS) gpu_build
	@$(if $(FUZZ_TESTS),,echo "clang++ with libFuzzer not found: fuzz targets skipped (test_tokenizer's randomized fuzz case still runs)")
	@ASAN_OPTIONS=detect_leaks=0 scripts/run_tests.sh $(CPU_TESTS) $(SIM_TESTS) $(SIM_ASAN_TESTS) $(SIM_TSAN_TESTS) $(FUZZ_TESTS)

test_gpu: $(GPU_TESTS) $(if $(filter 1,$(USE_CUDNN)),$(CUDNN_TESTS))
	@scripts/run_tests.sh $(GPU_TESTS) $(if $(filter 1,$(USE_CUDNN)),$(CUDNN_TESTS))

bench: programs $(DEV_BINS)
	@scripts/bench.sh

run: programs
	@scripts/run_demo.sh

clean:
	rm -rf $(BUILD) $(PROGRAMS) train_gpt_cpu_openblas
