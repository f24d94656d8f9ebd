#!/usr/bin/env bash
# gpu_check.sh: one command for a machine with an NVIDIA GPU. Builds the kernel tests with nvcc
# (test/sim/test_*.cu -> build/gpu/test_*, the same sources the SIM build runs on the CPU), runs
# each one, then builds and runs the kernel benchmark (dev/cuda/bench_kernels.cu ->
# build/gpu/bench_kernels). Prints last: the tests' table (test binary, test cases passed / failed,
# seconds), then the benchmark's markdown table (kernel, shape, ms, GB/s or TFLOP/s, % of peak).
# When cuDNN is installed (the Makefile finds cudnn_graph.h and libcudnn: README.md#cudnn), the
# USE_CUDNN=1 variants too: build/gpu/test_attention_cudnn (cuDNN's fused attention against ours) joins
# the tests, and build/gpu/bench_attention_cudnn (ours and cuDNN timed in the same run) prints its
# table after the benchmark's. CUDNN=0 skips them; so does naming tests on the command line.
# Exit status 0 only if every test binary ran, every test case passed and the benchmark ran.
#   usage: scripts/gpu_check.sh [name ...]     (default: all tests and the benchmark; a name is a
#          test, e.g. test_matmul, or bench_kernels; BENCH=0 skips the benchmark; each test also
#          runs as its fp32 build, build/gpu_fp32/test_* (-DLLMC_FP32), unless FP32=0; the
#          compute-sanitizer pass covers the default build only)
set -u
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no usable GPU (nvidia-smi missing or failing); nothing to run" >&2
  exit 2
fi
echo "GPU: $(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | head -1)"

bench=${BENCH:-1}
if [ "$#" -gt 0 ]; then
  names=(); want_bench=0
  for n in "$@"; do
    if [ "$n" = bench_kernels ]; then want_bench=1; else names+=("$n"); fi
  done
  [ "$want_bench" -eq 1 ] || bench=0
else
  names=()
  for f in test/sim/test_*.cu; do names+=("$(basename "$f" .cu)"); done
fi
targets=(); fp32_targets=()
for n in ${names[@]+"${names[@]}"}; do targets+=("build/gpu/$n"); done
if [ "${FP32:-1}" != 0 ]; then
  for n in ${names[@]+"${names[@]}"}; do fp32_targets+=("build/gpu_fp32/$n"); done
fi

# cuDNN: present when the Makefile's search finds both its header and its library
cudnn=0
if [ "${CUDNN:-1}" != 0 ] && [ "$#" -eq 0 ]; then
  found=$(printf 'cudnn_found:\n\t@echo "$(CUDNN_INC)|$(CUDNN_LIB)"\n' | make -s --no-print-directory USE_CUDNN=1 -f Makefile -f - cudnn_found 2>/dev/null)
  if [ -n "${found%%|*}" ] && [ -n "${found##*|}" ]; then
    cudnn=1
    echo "cuDNN: headers in ${found%%|*}, library in ${found##*|}: the USE_CUDNN=1 variants are built and run"
    targets+=("build/gpu/test_attention_cudnn")
  else
    echo "cuDNN: not found (cudnn_graph.h and libcudnn.so): the USE_CUDNN=1 variants are skipped"
  fi
fi

if [ "$(( ${#targets[@]} + ${#fp32_targets[@]} ))" -gt 0 ]; then
  echo "== building: ${targets[*]} ${fp32_targets[*]}"
  if ! make USE_CUDNN=$cudnn "${targets[@]}" ${fp32_targets[@]+"${fp32_targets[@]}"}; then
    echo "gpu_check: build failed" >&2
    exit 1
  fi
fi

rows=(); total_fail=0
for t in ${targets[@]+"${targets[@]}"} ${fp32_targets[@]+"${fp32_targets[@]}"}; do
  echo "=== $t"
  start=$(date +%s.%N)
  out=$("$t" 2>&1); rc=$?
  end=$(date +%s.%N)
  echo "$out" | tail -n 40
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
  line=$(echo "$out" | grep -E '^\[doctest\] test cases:' | tail -n 1)
  if [ -z "$line" ]; then
    p="-"; f="-"; status="CRASH (exit $rc)"; total_fail=$((total_fail + 1))
  else
    p=$(echo "$line" | sed -E 's/.*\|[[:space:]]*([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/.*\|[[:space:]]*([0-9]+) failed.*/\1/')
    if [ "$f" -ne 0 ] || [ "$rc" -ne 0 ]; then status="FAIL"; total_fail=$((total_fail + 1)); else status="ok"; fi
  fi
  name=$(basename "$t"); case "$t" in */gpu_fp32/*) name="fp32/$name";; esac
  rows+=("$(printf '%-28s %7s %7s %8s  %s' "$name" "$p" "$f" "$secs" "$status")")
done

# What SIM cannot model, on the real GPU: every kernel test under compute-sanitizer's racecheck
# (shared-memory hazards), synccheck (barrier misuse), initcheck (reads of uninitialized device
# memory) and memcheck (out-of-bounds, misaligned); SAN=0 skips this. The tests themselves run
# each kernel twice and compare the outputs bitwise (determinism).
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ "${SAN:-1}" != 0 ] && [ -x "$CS" ]; then
  for tool in racecheck synccheck initcheck memcheck; do
    for t in ${targets[@]+"${targets[@]}"}; do
      # not the cuDNN variant: its kernels are cuDNN's (ours run under the sanitizers in test_attention)
      case "$t" in *_cudnn) continue ;; esac
      echo "=== compute-sanitizer --tool $tool $t"
      if "$CS" --tool "$tool" --error-exitcode 3 --print-limit 10 "$t" >/tmp/gpu_check_san.log 2>&1; then s=ok; else s="FAIL (exit $?)"; total_fail=$((total_fail + 1)); tail -n 30 /tmp/gpu_check_san.log; fi
      rows+=("$(printf '%-28s %-10s %s' "$(basename "$t")" "$tool" "$s")")
    done
  done
elif [ "${SAN:-1}" != 0 ]; then
  rows+=("compute-sanitizer not found: sanitizer pass skipped")
fi

# A benchmark: build it (make arguments before the target), run it, print its lines now and keep
# its header lines (matching $3) and markdown table for the very end, in $bench_out.
run_bench() {
  local target=$1 make_args=$2 head=$3 out rc
  echo "=== $target"
  if ! make $make_args "$target"; then
    bench_out="$(basename "$target"): build failed"; total_fail=$((total_fail + 1)); return
  fi
  out=$("$target" 2>&1); rc=$?
  echo "$out" | grep -v -e '^|' -e '^$'
  if [ "$rc" -ne 0 ]; then
    bench_out="$(basename "$target"): FAILED (exit $rc): $(echo "$out" | tail -n 1)"; total_fail=$((total_fail + 1))
  else
    bench_out=$(echo "$out" | grep -E "$head"; echo; echo "$out" | grep -E '^\|')
  fi
}

# the kernel benchmark (device, peaks, one line per kernel), then ours and cuDNN's attention timed
# in the same run
bench_table=""
cudnn_table=""
if [ "$bench" != 0 ]; then
  run_bench build/gpu/bench_kernels "" '^(device|peak)'; bench_table=$bench_out
  if [ "$cudnn" = 1 ]; then
    run_bench build/gpu/bench_attention_cudnn USE_CUDNN=1 '^(device|correctness)'; cudnn_table=$bench_out
  fi
fi

# the trainer: test/test_builds.cpp with the nvcc builds in place of SIM's (fp32 against the CPU to
# 1e-5, bf16 within its bounds, resume across builds, two GPU runs bitwise equal), then its benchmark
if [ "$#" -eq 0 ]; then
  echo "=== trainer tests (make test_gpu's test_builds)"
  if make programs build/gpu/train_gpt build/gpu/train_gpt_fp32 build/gpu/train_moe_fp32 build/test/test_builds && \
     LLMC_TRAIN_GPT=build/gpu/train_gpt LLMC_TRAIN_GPT_FP32=build/gpu/train_gpt_fp32 LLMC_TRAIN_MOE_FP32=build/gpu/train_moe_fp32 \
       build/test/test_builds; then
    rows+=("$(printf '%-28s %s' test_builds ok)")
  else
    rows+=("$(printf '%-28s %s' test_builds FAIL)"); total_fail=$((total_fail + 1))
  fi
  if [ "$bench" != 0 ]; then
    echo "=== scripts/bench_train_gpu.sh"
    train_table=$(scripts/bench_train_gpu.sh 2>&1 | tee /dev/stderr | grep -E '^\|') || total_fail=$((total_fail + 1))
    bench_table="$bench_table
$train_table"
  fi
fi

if [ "${#rows[@]}" -gt 0 ]; then
  echo
  printf '%-28s %7s %7s %8s  %s\n' "test binary" "passed" "failed" "seconds" "status"
  for r in "${rows[@]}"; do echo "$r"; done
fi
if [ -n "$bench_table" ]; then
  echo
  echo "$bench_table"
fi
if [ -n "$cudnn_table" ]; then
  echo
  echo "$cudnn_table"
fi
[ "$total_fail" -eq 0 ]
