#!/usr/bin/env bash
# `make bench`: the benchmarks. Throughput is measured here, never asserted by a test. These
# machines are noisy, so every figure that matters is printed next to a baseline run in the same
# invocation (ratios), and the last lines are a short table.
#
#  1. CPU trainer throughput, issue #2's fixed config: depth 4, n_embd 256 (4 heads of 64),
#     sequence 256, batch 4, vocab 32768; tokens/s and model GFLOP/s (FLOPs/token from docs/model.md#flops:
#     6 x matmul params + attention). Run with the nanochat extras on and with --arch core.
#     Baseline for the ratio: the dense matmul rate of this machine (bench_matmul, same run).
#     Also with OpenBLAS matmuls (train_gpt_cpu_openblas) when libopenblas-dev is installed.
#  1b. The hybrid trainer (train_moe_cpu: Lightning Attention + MoE, docs/model.md#hybrid) against
#     the dense one at about equal active FLOPs per token, same fixed config: mixers L L L S (3
#     lightning layers, one softmax layer with full context), FFNs D M M M (a dense first layer, then
#     MoE: 8 experts, top 2, one shared, F 341, so the active FFN width 3 x 341 = 1023 is the dense
#     4C = 1024). The dense baseline runs with --windows 0 (full context, as the hybrid's softmax
#     layer): 72.35 vs 72.4 MFLOPs per token (both printed). Same run, same machine state.
#  2. bench_matmul: our CPU sgemm in the three layouts the model uses.
#  3. bench_tokenizer: encode MB/s per core and 32k-vocabulary training time.
#
# Knobs (environment): STEPS (timed trainer steps, default 10), THREADS (default: all cores),
# QUICK=1 (skip the tokenizer benchmark).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
STEPS=${STEPS:-10}
THREADS=${THREADS:--1}
tmp=$(mktemp -d /tmp/llmc_bench.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# Token data: tinyshakespeare with a 4096-token BPE (the ids are valid in a 32768-token model; the
# compute per token does not depend on which ids they are). Falls back to a synthetic corpus.
corpus=../shared/data/tinyshakespeare.txt
[ -f "$corpus" ] || corpus=data/tinyshakespeare.txt
if [ ! -f "$corpus" ]; then
  corpus=$tmp/synthetic.txt
  for i in $(seq 1 4000); do echo "the quick brown fox $i jumps over the lazy dog $((i * 7919 % 1000))."; echo; done > "$corpus"
fi
./prepare_data --input "$corpus" --out "$tmp/data" --prefix bench --vocab-size 4096 > "$tmp/prep.log"
# the BOS id as prepare_data reports it ("... bos 4087, uint16 shards)"): smaller than 4087 when the
# corpus is too small for all 4096 - 9 merges
bos=$(grep -o 'bos [0-9]*' "$tmp/prep.log" | head -1 | cut -d' ' -f2 || true)
[ -n "$bos" ] || { echo "bench.sh: no BOS id in prepare_data's output ($tmp/prep.log)" >&2; exit 1; }

train() {  # $1 = label, $2 = binary, rest = extra flags; prints the trainer's throughput line
  local label=$1 bin=$2; shift 2
  $bin --data-dir "$tmp/data" --tokenizer none --vocab-size 32768 --bos-id "$bos" \
    --out-dir "$tmp/out_$label" --depth 4 --aspect-ratio 64 --head-dim 64 --max-seq-len 256 \
    --device-batch-size 4 --total-batch-size 1024 --num-iterations $((STEPS + 1)) \
    --eval-every -1 --eval-tokens 1024 --num-samples 0 --threads "$THREADS" "$@" > "$tmp/$label.log"
  grep -E '^(parameters|throughput)' "$tmp/$label.log" | sed "s/^/  [$label] /"
}

echo
echo "== 1. CPU trainer: depth 4, n_embd 256, T 256, B 4, vocab 32768 ($STEPS timed steps after one warm-up)"
train nanochat ./train_gpt_cpu
train core ./train_gpt_cpu --arch core
# Optional: the same with the matmuls in OpenBLAS (built only where libopenblas-dev is installed).
have_blas=0
if make -s train_gpt_cpu_openblas >/dev/null 2>&1; then
  have_blas=1
  # Debian's OpenBLAS 0.3.21 does not recognise recent Xeons (Sapphire Rapids is detected as
  # "Prescott", plain SSE3: 4x slower); name the kernel family from the CPU flags unless the user did.
  if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
    if grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
    elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell; fi
  fi
  echo "  (OpenBLAS kernels: OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-auto})"
  OPENBLAS_NUM_THREADS=$([ "$THREADS" -gt 0 ] 2>/dev/null && echo "$THREADS" || nproc) train openblas ./train_gpt_cpu_openblas
else
  echo "  (OpenBLAS comparison skipped: apt-get install libopenblas-dev to build train_gpt_cpu_openblas)"
fi
echo
echo "== 1b. hybrid MoE trainer vs dense at about equal active FLOPs (same config; dense with --windows 0)"
train dense_full ./train_gpt_cpu --windows 0
train moe ./train_moe_cpu --attn-period 4 --moe-dense-layers 1 --moe-experts 8 --moe-topk 2 --moe-shared 1 --moe-hidden 341
echo
echo "== 2. matmul (build/dev/bench_matmul)"
build/dev/bench_matmul | tee "$tmp/matmul.log"
if [ "${QUICK:-0}" != 1 ]; then
  echo
  echo "== 3. tokenizer (build/dev/bench_tokenizer)"
  build/dev/bench_tokenizer || echo "(bench_tokenizer failed)"
fi

# On a GPU machine: the GPU trainer at nanochat's shapes (d12, d20, d24; its own table)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo
  echo "== 4. GPU trainer (scripts/bench_train_gpu.sh)"
  scripts/bench_train_gpu.sh || echo "(bench_train_gpu failed)"
fi

# Summary table. llm.c's train_gpt2.c on a 2-core machine of this kind (4-layer, 256-channel GPT-2,
# B 4, T 256): ~309 tokens/s = ~30 model GFLOP/s (issue #2); the goal is 2x that in GFLOP/s.
tps() { grep -o 'throughput: [0-9]* tokens/s, [0-9.]*' "$tmp/$1.log" | awk '{print $2, $4}'; }
read -r nt ng <<< "$(tps nanochat)"
read -r ct cg <<< "$(tps core)"
# our sgemm rate: the mean of bench_matmul's "fast" column over the model's 12 products
mm=$(awk '$2 ~ /^(forward|dinp|dweight)$/ { s += $3; n++ } END { if (n) printf "%.0f", s / n }' "$tmp/matmul.log" || true)
echo
echo "| run | tokens/s | model GFLOP/s | vs llm.c CPU (30 GFLOP/s) | fraction of our mean sgemm rate (${mm:-?} GFLOP/s) |"
echo "|---|---|---|---|---|"
rows=("nanochat $nt $ng" "core $ct $cg")
if [ $have_blas = 1 ]; then read -r bt bg <<< "$(tps openblas)"; rows+=("nanochat+OpenBLAS $bt $bg"); fi
for row in "${rows[@]}"; do
  set -- $row
  awk -v n="$1" -v t="$2" -v g="$3" -v m="${mm:-0}" 'BEGIN {
    printf "| %s | %d | %.1f | %.2fx | %s |\n", n, t, g, g / 30.0, (m > 0 ? sprintf("%.2f", g / m) : "?") }'
done
# the hybrid against the dense model at about equal FLOPs per token
fpt() { grep -o '[0-9.e+]* FLOPs/token' "$tmp/$1.log" | head -1 | cut -d' ' -f1; }
read -r dt dg <<< "$(tps dense_full)"
read -r mt mg <<< "$(tps moe)"
echo
echo "| run (d4, T 256, B 4, V 32768) | FLOPs/token | tokens/s | model GFLOP/s | tokens/s vs dense |"
echo "|---|---|---|---|---|"
awk -v f="$(fpt dense_full)" -v t="$dt" -v g="$dg" 'BEGIN { printf "| dense, full context (train_gpt_cpu --windows 0) | %s | %d | %.1f | 1.00x |\n", f, t, g }'
awk -v f="$(fpt moe)" -v t="$mt" -v g="$mg" -v d="$dt" 'BEGIN { printf "| hybrid: 3 lightning + 1 softmax, 3 MoE FFNs E 8 K 2 + shared (train_moe_cpu) | %s | %d | %.1f | %.2fx |\n", f, t, g, t / d }'
