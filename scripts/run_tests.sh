#!/usr/bin/env bash
# Run each test executable given (doctest, or libFuzzer targets under */fuzz/), show its output, and
# print the totals over all of them as the last line: "N passed, N failed" (test cases; a fuzz
# target counts as one). Exit non-zero if any test failed or any executable crashed or printed no
# doctest summary.
set -u
# OpenMP threads that spin while waiting collapse throughput on a loaded 2-core machine (CI shares
# the cores with the build); passive waiting costs nothing when the machine is idle.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
passed=0; failed=0; bad=0
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
for exe in "$@"; do
  echo "=== $exe"
  case "$exe" in */fuzz/*)
    # a libFuzzer target: bounded run from a fixed seed; one test case, passed iff it exits 0
    # (a crash, sanitizer report or broken invariant exits non-zero and leaves the input in build/fuzz/)
    out=$("$exe" -seed=1 -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -artifact_prefix="$(dirname "$exe")/" 2>&1); rc=$?
    echo "$out" | tail -n 4
    if [ "$rc" -eq 0 ]; then passed=$((passed+1)); else echo "!!! $exe found a failing input (exit $rc)"; failed=$((failed+1)); fi
    continue;;
  esac
  # SIM flavors run in different schedule orders (llmc/sim/sim.h): the plain build forward with the
  # determinism rerun (every launch again in reverse order, device memory compared bitwise), the
  # ASan build in a seeded shuffle, the TSan build (libgomp is not instrumented: one OpenMP thread)
  # in reverse with the streams queued asynchronously.
  flavor_env=()
  case "$exe" in
    */sim/test_*) flavor_env=(LLMC_SIM_ORDER=forward LLMC_SIM_DETERMINISM=1);;
    */sim_asan/test_*) flavor_env=(LLMC_SIM_ORDER=shuffle:1);;
    */sim_tsan/test_*) flavor_env=(LLMC_SIM_ORDER=reverse LLMC_SIM_STREAMS=async OMP_NUM_THREADS=1);;
    */sim_fp32/test_*) flavor_env=(LLMC_SIM_ORDER=shuffle:2);;
  esac
  [ ${#flavor_env[@]} -gt 0 ] && echo "(${flavor_env[*]})"
  t0=$(date +%s.%N)
  out=$(env "${flavor_env[@]}" "$exe" 2>&1); rc=$?
  echo "$out" | tail -n 40
  echo "--- $exe: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
  line=$(echo "$out" | grep -E '^\[doctest\] test cases:' | tail -n 1)
  if [ -z "$line" ]; then
    echo "!!! $exe printed no doctest summary (exit $rc)"; bad=$((bad+1)); failed=$((failed+1)); continue
  fi
  p=$(echo "$line" | sed -E 's/.*\|[[:space:]]*([0-9]+) passed.*/\1/')
  f=$(echo "$line" | sed -E 's/.*\|[[:space:]]*([0-9]+) failed.*/\1/')
  passed=$((passed+p)); failed=$((failed+f))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then echo "!!! $exe exited $rc"; failed=$((failed+1)); fi
done
echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
