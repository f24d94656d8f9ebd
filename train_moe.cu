/*
train_moe.cu: the hybrid trainer. The dense backbone of train_gpt.cu with two additions:
Lightning Attention (MiniMax-01) as the mixer of most layers, with one softmax attention layer in
every --attn-period, and DeepSeek-V3-style mixture-of-experts FFNs after the first
--moe-dense-layers (docs/model.md#hybrid, docs/lightning.md, docs/moe.md).

There is no second copy of anything here: the model (GPT<Real> with its per-layer mixer and FFN
kinds), the op layer, the optimizer, the checkpoints, the training loop and the command line are
train_gpt.cu's. This file switches on its hybrid flags (LLMC_TRAIN_MOE) and sets their defaults.

Builds (see Makefile):
  make train_moe_cpu   g++ (this file), OpenMP, fp32 CPU reference ops, llmc/cpu/lightning.h and
                       llmc/cpu/moe.h for the hybrid layers
  make train_moe       nvcc: the CUDA kernels, llmc/cuda/lightning.cuh and llmc/cuda/moe.cuh for the
                       hybrid layers (bf16, or PRECISION=FP32)
  make train_moe_sim   the same CUDA code under SIM, on the CPU
*/
#define LLMC_TRAIN_MOE 1
#include "train_gpt.cu"

// The hybrid defaults (docs/model.md#hybrid): depth 16 (d = 1024, 8 heads of 128), softmax
// attention at layers 7 and 15 and lightning elsewhere, a dense first layer, then MoE layers of
// 32 experts, top 4, one shared expert, F = 768 (ReLU²); softmax layers see the full context.
void program_defaults(TrainerOptions& o) {
    o.depth = 16;
    o.attn_period = 8;
    o.moe_dense_layers = 1;
    o.moe_experts = 32;
    o.moe_topk = 4;
    o.moe_shared = 1;
    o.windows = 0;
}
