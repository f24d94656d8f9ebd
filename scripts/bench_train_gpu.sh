#!/usr/bin/env bash
# bench_train_gpu.sh: the GPU trainer's throughput at nanochat's shapes (issue #10's benchmark).
# For d12, d20 and d24 at sequence 2048 (vocab 32768, 524288 tokens per step): ms per step,
# tokens/s, MFU (FLOPs per token as docs/model.md#flops counts them, over the card's dense bf16
# peak), the device memory the trainer allocated, and its table of time per op (--profile 1: CUDA
# events around every op call, mean over the steps after the first). Run by `make bench` and by
# scripts/gpu_check.sh when there is a GPU.
# Then the hybrid trainer (build/gpu/train_moe: Lightning + MoE, its d16 defaults; first-version
# kernels, docs/moe.md#cuda, docs/lightning.md#lightning-cuda) the same way.
# Knobs: STEPS (timed steps, default 3), DEPTHS (default "12 20 24"), BATCH_<depth> (device batch,
# defaults 32 / 32 / 16), MOE_DEPTHS (hybrid depths, default "16"; empty: none), MOE_BATCH (16).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "bench_train_gpu: no GPU (nvidia-smi): skipped"; exit 0
fi
STEPS=${STEPS:-3}
DEPTHS=${DEPTHS:-"12 20 24"}
MOE_DEPTHS=${MOE_DEPTHS-16}
make -s prepare_data build/gpu/train_gpt $([ -n "$MOE_DEPTHS" ] && echo build/gpu/train_moe)
tmp=$(mktemp -d /tmp/llmc_bench_gpu.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
corpus=../shared/data/tinyshakespeare.txt
[ -f "$corpus" ] || corpus=data/tinyshakespeare.txt
if [ ! -f "$corpus" ]; then
  corpus=$tmp/synthetic.txt
  for i in $(seq 1 20000); do echo "the quick brown fox $i jumps over the lazy dog $((i * 7919 % 1000))."; echo; done > "$corpus"
fi
# Token ids from a 4096-token BPE, trained as a 32768-token model: the compute per token does not
# depend on which ids they are. The contiguous loader needs no BOS id.
./prepare_data --input "$corpus" --out "$tmp/data" --prefix bench --vocab-size 4096 > "$tmp/prep.log"
summary=()
run() {  # $1 = label, $2 = binary, $3 = depth, $4 = device batch
  local name=$1 bin=$2 d=$3 B=$4
  echo "== $name, T 2048, device batch $B, 524288 tokens per step, $STEPS timed steps after one warm-up"
  if $bin --data-dir "$tmp/data" --tokenizer none --vocab-size 32768 --loader contiguous \
       --depth "$d" --max-seq-len 2048 --device-batch-size "$B" --total-batch-size 524288 \
       --num-iterations $((STEPS + 1)) --eval-every -1 --eval-tokens 2048 --num-samples 0 --save-every -1 \
       --out-dir "$tmp/out_$name" --profile 1 > "$tmp/$name.log" 2>&1; then
    grep -E '^(parameters|layers|device memory|throughput|profile|  )' "$tmp/$name.log"
    tps=$(grep -o 'throughput: [0-9]* tokens/s' "$tmp/$name.log" | awk '{print $2}')
    mfu=$(grep -o 'MFU [0-9.]*%' "$tmp/$name.log" | tail -1 | awk '{print $2}')
    ms=$(grep -o 'mean over [0-9]* steps ([0-9.]* ms per step' "$tmp/$name.log" | awk '{print $5}' | tr -d '(')
    mem=$(grep -o 'peak allocated by the trainer [0-9.]* GiB' "$tmp/$name.log" | awk '{print $6}')
    summary+=("| $name | $B | ${ms:-?} | ${tps:-?} | ${mfu:-?} | ${mem:-?} |")
  else
    tail -n 5 "$tmp/$name.log"
    summary+=("| $name | $B | failed: $(tail -n 1 "$tmp/$name.log" | cut -c1-80) | | | |")
  fi
}
for d in $DEPTHS; do
  bvar=BATCH_$d
  case $d in 24) bdef=16 ;; *) bdef=32 ;; esac
  run "d$d" build/gpu/train_gpt "$d" "${!bvar:-$bdef}"
done
for d in $MOE_DEPTHS; do
  run "moe_d$d" build/gpu/train_moe "$d" "${MOE_BATCH:-16}"
done
echo
echo "| model | device batch | ms/step | tokens/s | MFU | peak allocated (GiB) |"
echo "|---|---|---|---|---|---|"
for r in "${summary[@]}"; do echo "$r"; done
