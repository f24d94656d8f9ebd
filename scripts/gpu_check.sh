#!/usr/bin/env bash
# gpu_check.sh: one command for a machine with an NVIDIA GPU. Builds the kernel tests with nvcc
# (test/sim/test_*.cu -> build/gpu/test_*, the same sources the SIM build runs on the CPU), runs
# each one, and prints a table last: test binary, test cases passed / failed, seconds.
# Exit status 0 only if every binary ran and every test case passed.
#   usage: scripts/gpu_check.sh [test_name ...]     (default: all; e.g. scripts/gpu_check.sh test_matmul)
set -u
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no usable GPU (nvidia-smi missing or failing); nothing to run" >&2
  exit 2
fi
echo "GPU: $(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | head -1)"

if [ "$#" -gt 0 ]; then
  names=("$@")
else
  names=()
  for f in test/sim/test_*.cu; do names+=("$(basename "$f" .cu)"); done
fi
targets=()
for n in "${names[@]}"; do targets+=("build/gpu/$n"); done

echo "== building: ${targets[*]}"
if ! make "${targets[@]}"; then
  echo "gpu_check: build failed" >&2
  exit 1
fi

rows=(); total_fail=0
for t in "${targets[@]}"; do
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
  rows+=("$(printf '%-28s %7s %7s %8s  %s' "$(basename "$t")" "$p" "$f" "$secs" "$status")")
done

echo
printf '%-28s %7s %7s %8s  %s\n' "test binary" "passed" "failed" "seconds" "status"
for r in "${rows[@]}"; do echo "$r"; done
[ "$total_fail" -eq 0 ]
