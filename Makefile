# llmc-nano: the build. Everything a user or CI needs is a target here.
#   make run         train a small model on tinyshakespeare and sample from it (CPU unless a GPU build exists);
#                    MODEL=moe: the hybrid Lightning + MoE model (train_moe_cpu)
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
# the kernel test binaries: host code (the test harness, the CPU references) at -O1, which halves
# their nvcc time in make test's compile check; nvcc's -O is the host's: device code is optimized
# by ptxas either way
NVCC_TESTFLAGS := $(subst -O3,-O1,$(NVCCFLAGS))

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
# (no -g: SIM reports name file and line themselves; the ASan/TSan flavors add -g for their stacks)
SIMFLAGS ?= -std=c++17 -O1 -I. -DLLMC_SIM -Wall -Wno-unused-parameter -Wno-sign-compare -Wno-unknown-pragmas -fopenmp
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
# FP32 build (-DLLMC_FP32: floatX = float, llm.c's PRECISION=FP32). `make test` builds and runs (SIM)
# and compiles with nvcc (gpu_build) the tests of the kernels whose code depends on floatX; the
# others (global_norm: fp32 only; mma, mma_gemm: explicitly bf16; the SIM runtime's own tests) are
# the same code as in the default build: they compile and pass with -DLLMC_FP32 too, built by
# `make test_gpu` (all of them, run on a GPU) or by name (build/sim_fp32/test_mma, ...).
FP32_KERNEL_TESTS := adamw attention backout crossentropy embedding lightning matmul moe_cuda muon relu2 residual rmsnorm rope smear value_embed
SIM_FP32_TESTS := $(patsubst %,$(BUILD)/sim_fp32/test_%,$(FP32_KERNEL_TESTS))
GPU_FP32_KERNEL_TESTS := $(patsubst %,$(BUILD)/gpu_fp32/test_%,$(FP32_KERNEL_TESTS))
GPU_FP32_TESTS := $(patsubst test/sim/%.cu,$(BUILD)/gpu_fp32/%,$(wildcard test/sim/test_*.cu))
DEV_BINS := $(patsubst dev/%.cpp,$(BUILD)/dev/%,$(wildcard dev/*.cpp))

PROGRAMS := train_gpt_cpu train_moe_cpu prepare_data

# PRECISION=FP32 builds the CUDA path (train_gpt, train_gpt_sim) in fp32 instead of bf16 mixed
# precision (llm.c's switch): every activation, weight copy and GEMM operand fp32. The output names
# do not say the precision: after changing it, rebuild (make -B train_gpt).
PRECISION ?= BF16
PRECISION_FLAGS := $(if $(filter FP32,$(PRECISION)),-DLLMC_FP32,$(if $(filter BF16,$(PRECISION)),,$(error PRECISION must be BF16 or FP32)))
# the trainer under SIM runs whole training steps: optimized (-O2), unlike the kernel tests
TRAIN_SIMFLAGS := $(subst -O1,-O2,$(SIMFLAGS))

.PHONY: all test test_gpu gpu_build bench run clean programs
all: programs
programs: $(PROGRAMS)

# ---- programs ----
train_gpt_cpu: train_gpt.cu $(HEADERS)
	$(CXX) $(CXXFLAGS) -x c++ $< -o $@ $(LDLIBS)

# The hybrid trainer (Lightning Attention + MoE): train_gpt.cu's model and program with its flags on.
train_moe_cpu: train_moe.cu train_gpt.cu $(HEADERS)
	$(CXX) $(CXXFLAGS) -x c++ $< -o $@ $(LDLIBS)

# Optional comparison build: the CPU matmuls through OpenBLAS (apt-get install libopenblas-dev).
OPENBLAS_INC ?= $(firstword $(wildcard /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas /usr/include/x86_64-linux-gnu))
train_gpt_cpu_openblas: train_gpt.cu $(HEADERS)
	$(CXX) $(CXXFLAGS) -DLLMC_OPENBLAS -I$(OPENBLAS_INC) -x c++ $< -o $@ $(LDLIBS) -lopenblas

# The GPU trainer: the same train_gpt.cu with nvcc (the CUDA kernels; bf16, or PRECISION=FP32).
train_gpt: train_gpt.cu $(HEADERS)
	$(if $(NVCC),,$(error nvcc not found: the GPU trainer needs the CUDA toolkit (train_gpt_cpu runs on the CPU)))
	$(NVCC) $(NVCCFLAGS) $(PRECISION_FLAGS) -x cu $< -o $@ $(NVLDLIBS)

# The same CUDA path compiled by g++ against SIM (llmc/sim): the GPU trainer, run on the CPU.
train_gpt_sim: train_gpt.cu $(HEADERS) $(SIM_SRCS)
	$(CXX) $(TRAIN_SIMFLAGS) $(PRECISION_FLAGS) -x c++ $< -x none $(SIM_SRCS) -o $@ $(LDLIBS)

# what test/test_builds.cpp runs: the SIM trainer in both precisions (own names, so both exist)
$(BUILD)/sim/train_gpt: train_gpt.cu $(HEADERS) $(SIM_SRCS)
	@mkdir -p $(@D)
	$(CXX) $(TRAIN_SIMFLAGS) -x c++ $< -x none $(SIM_SRCS) -o $@ $(LDLIBS)
$(BUILD)/sim/train_gpt_fp32: train_gpt.cu $(HEADERS) $(SIM_SRCS)
	@mkdir -p $(@D)
	$(CXX) $(TRAIN_SIMFLAGS) -DLLMC_FP32 -x c++ $< -x none $(SIM_SRCS) -o $@ $(LDLIBS)
$(BUILD)/gpu/train_gpt: train_gpt.cu $(HEADERS)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -x cu $< -o $@ $(NVLDLIBS)
$(BUILD)/gpu/train_gpt_fp32: train_gpt.cu $(HEADERS)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -DLLMC_FP32 -x cu $< -o $@ $(NVLDLIBS)

# The hybrid trainer on the CUDA path (llmc/cuda/lightning.cuh, llmc/cuda/moe.cuh): nvcc, or SIM
train_moe: train_moe.cu train_gpt.cu $(HEADERS)
	$(if $(NVCC),,$(error nvcc not found: the GPU trainer needs the CUDA toolkit (train_moe_cpu runs on the CPU)))
	$(NVCC) $(NVCCFLAGS) $(PRECISION_FLAGS) -x cu $< -o $@ $(NVLDLIBS)
train_moe_sim: train_moe.cu train_gpt.cu $(HEADERS) $(SIM_SRCS)
	$(CXX) $(TRAIN_SIMFLAGS) $(PRECISION_FLAGS) -x c++ $< -x none $(SIM_SRCS) -o $@ $(LDLIBS)
$(BUILD)/sim/train_moe_fp32: train_moe.cu train_gpt.cu $(HEADERS) $(SIM_SRCS)
	@mkdir -p $(@D)
	$(CXX) $(TRAIN_SIMFLAGS) -DLLMC_FP32 -x c++ $< -x none $(SIM_SRCS) -o $@ $(LDLIBS)
$(BUILD)/sim/train_moe: train_moe.cu train_gpt.cu $(HEADERS) $(SIM_SRCS)
	@mkdir -p $(@D)
	$(CXX) $(TRAIN_SIMFLAGS) -x c++ $< -x none $(SIM_SRCS) -o $@ $(LDLIBS)
$(BUILD)/gpu/train_moe: train_moe.cu train_gpt.cu $(HEADERS)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -x cu $< -o $@ $(NVLDLIBS)
$(BUILD)/gpu/train_moe_fp32: train_moe.cu train_gpt.cu $(HEADERS)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -DLLMC_FP32 -x cu $< -o $@ $(NVLDLIBS)

prepare_data: prepare_data.cpp $(HEADERS)
	$(CXX) $(CXXFLAGS) $< -o $@ $(LDLIBS)

# ---- tests ----
# doctest's main, compiled once per flavor (test/doctest_main.cpp says why) and linked into each test
DT := $(BUILD)/doctest
DOCTEST_MAIN_SRC := test/doctest_main.cpp
$(DT)/cpu.o: $(DOCTEST_MAIN_SRC)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -c $< -o $@
$(DT)/sim.o: $(DOCTEST_MAIN_SRC)
	@mkdir -p $(@D)
	$(CXX) $(SIMFLAGS) -c $< -o $@
$(DT)/sim_asan.o: $(DOCTEST_MAIN_SRC)
	@mkdir -p $(@D)
	$(CXX) $(SIMFLAGS) -g $(ASANFLAGS) -c $< -o $@
$(DT)/sim_tsan.o: $(DOCTEST_MAIN_SRC)
	@mkdir -p $(@D)
	$(CXX) $(SIMFLAGS) -g $(TSANFLAGS) -c $< -o $@
$(DT)/gpu.o: $(DOCTEST_MAIN_SRC)
	@mkdir -p $(@D)
	$(CXX) -std=c++17 -O1 -c $< -o $@

$(BUILD)/test/%: test/%.cpp $(HEADERS) $(DT)/cpu.o
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $< $(DOCTEST_MAIN) -o $@ $(LDLIBS)
DOCTEST_MAIN = $(DT)/cpu.o
$(BUILD)/test/test_robust: DOCTEST_MAIN :=  # its own main

# these include train_gpt.cu itself (#define TESTING)
$(BUILD)/test/test_model $(BUILD)/test/test_moe_model $(BUILD)/test/test_robust: train_gpt.cu
# the end-to-end tests share their runner, corpus and log reader
$(BUILD)/test/test_train $(BUILD)/test/test_robust $(BUILD)/test/test_builds: test/train_test_util.h

$(BUILD)/fuzz/%: test/fuzz/%.cpp $(HEADERS)
	@mkdir -p $(@D)
	$(CLANGXX) $(FUZZFLAGS) $< -o $@

$(BUILD)/sim/%: test/sim/%.cu $(HEADERS) $(SIM_SRCS) $(DT)/sim.o
	@mkdir -p $(@D)
	$(CXX) $(SIMFLAGS) -x c++ $< -x none $(SIM_SRCS) $(DT)/sim.o -o $@ $(LDLIBS)

$(BUILD)/sim_asan/%: test/sim/%.cu $(HEADERS) $(SIM_SRCS) $(DT)/sim_asan.o
	@mkdir -p $(@D)
	$(CXX) $(SIMFLAGS) -g $(ASANFLAGS) -x c++ $< -x none $(SIM_SRCS) $(DT)/sim_asan.o -o $@ $(LDLIBS)

$(BUILD)/sim_tsan/%: test/sim/%.cu $(HEADERS) $(SIM_SRCS) $(DT)/sim_tsan.o
	@mkdir -p $(@D)
	$(CXX) $(SIMFLAGS) -g $(TSANFLAGS) -x c++ $< -x none $(SIM_SRCS) $(DT)/sim_tsan.o -o $@ $(LDLIBS)

$(BUILD)/gpu/%: test/sim/%.cu $(HEADERS) $(DT)/gpu.o
	@mkdir -p $(@D)
	$(NVCC) $(NVCC_TESTFLAGS) $< $(DT)/gpu.o -o $@ $(NVLDLIBS)

# (the doctest main has no floatX: sim's object serves the fp32 flavor too)
$(BUILD)/sim_fp32/%: test/sim/%.cu $(HEADERS) $(SIM_SRCS) $(DT)/sim.o
	@mkdir -p $(@D)
	$(CXX) $(SIMFLAGS) -DLLMC_FP32 -x c++ $< -x none $(SIM_SRCS) $(DT)/sim.o -o $@ $(LDLIBS)

$(BUILD)/gpu_fp32/%: test/sim/%.cu $(HEADERS) $(DT)/gpu.o
	@mkdir -p $(@D)
	$(NVCC) $(NVCC_TESTFLAGS) -DLLMC_FP32 $< $(DT)/gpu.o -o $@ $(NVLDLIBS)

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
$(BUILD)/sim_fp32/test_mma_gemm $(BUILD)/gpu_fp32/test_mma_gemm: dev/cuda/mma_gemm.cu

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
$(BUILD)/gpu/test_attention_cudnn: test/sim/test_attention.cu $(HEADERS) $(DT)/gpu.o
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) $(CUDNN_FLAGS) $< $(DT)/gpu.o -o $@ $(NVLDLIBS) $(CUDNN_LDLIBS)

$(BUILD)/gpu/bench_attention_cudnn: dev/cuda/bench_attention.cu $(HEADERS) dev/cuda/bench_timing.h
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) $(CUDNN_FLAGS) $< -o $@ $(NVLDLIBS) $(CUDNN_LDLIBS)

$(BUILD)/gpu/cudnn_graph_check: dev/cuda/cudnn_graph_check.cu $(HEADERS)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) $(CUDNN_FLAGS) $< -o $@ $(NVLDLIBS) $(CUDNN_LDLIBS) -ldl

# GPU targets compile whenever nvcc exists (CI catches code only one compiler accepts).
gpu_build: $(if $(NVCC),$(GPU_TESTS) $(BUILD)/gpu/bench_kernels $(BUILD)/gpu/mma_gemm $(BUILD)/gpu/bench_attention $(BUILD)/gpu/train_gpt $(BUILD)/gpu/train_gpt_fp32 $(BUILD)/gpu/train_moe $(if $(filter 1,$(USE_CUDNN)),$(CUDNN_BINS)))
	@$(if $(NVCC),echo "GPU test binaries + bench_kernels + mma_gemm + bench_attention + train_gpt (bf16, fp32) + train_moe$(if $(filter 1,$(USE_CUDNN)), + the cuDNN variants) compiled with $(NVCC)",echo "nvcc not found: GPU build skipped")

# test_builds runs the trainer's SIM builds against the CPU one
TRAINER_BUILDS := $(BUILD)/sim/train_gpt $(BUILD)/sim/train_gpt_fp32 $(BUILD)/sim/train_moe $(BUILD)/sim/train_moe_fp32
test: programs $(TRAINER_BUILDS) $(CPU_TESTS) $(SIM_TESTS) $(SIM_ASAN_TESTS) $(SIM_TSAN_TESTS) $(SIM_FP32_TESTS) $(FUZZ_TESTS) gpu_build
	@$(if $(FUZZ_TESTS),,echo "clang++ with libFuzzer not found: fuzz targets skipped (test_tokenizer's randomized fuzz case still runs)")
	@ASAN_OPTIONS=detect_leaks=0 scripts/run_tests.sh $(CPU_TESTS) $(SIM_TESTS) $(SIM_ASAN_TESTS) $(SIM_TSAN_TESTS) $(SIM_FP32_TESTS) $(FUZZ_TESTS)

# on a GPU: every kernel test with nvcc (bf16 and fp32; the cuDNN comparison with USE_CUDNN=1), then
# the trainer tests with the nvcc trainers in place of SIM's
test_gpu: programs $(GPU_TESTS) $(GPU_FP32_TESTS) $(if $(filter 1,$(USE_CUDNN)),$(CUDNN_TESTS)) $(BUILD)/gpu/train_gpt $(BUILD)/gpu/train_gpt_fp32 $(BUILD)/gpu/train_moe_fp32 $(BUILD)/test/test_builds
	@scripts/run_tests.sh $(GPU_TESTS) $(GPU_FP32_TESTS) $(if $(filter 1,$(USE_CUDNN)),$(CUDNN_TESTS))
	@LLMC_TRAIN_GPT=$(BUILD)/gpu/train_gpt LLMC_TRAIN_GPT_FP32=$(BUILD)/gpu/train_gpt_fp32 LLMC_TRAIN_MOE_FP32=$(BUILD)/gpu/train_moe_fp32 \
	  scripts/run_tests.sh $(BUILD)/test/test_builds

bench: programs $(DEV_BINS)
	@scripts/bench.sh

# MODEL=moe: the hybrid trainer (train_moe_cpu) instead of the dense one
run: programs
	@MODEL=$(MODEL) scripts/run_demo.sh

clean:
	rm -rf $(BUILD) $(PROGRAMS) train_gpt train_gpt_sim train_moe train_moe_sim train_gpt_cpu_openblas
