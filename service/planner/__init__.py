"""Before launch, from the spec alone: parameters, memory per GPU, FLOPs, time and batch advice.

Pure arithmetic over a `ValidatedSpec`: no I/O. The memory model follows Megatron-LM's
`megatron/training/theoretical_memory_usage.py` (weights and optimizer per most-loaded shard)
and Korthikanti et al. 2022 (arXiv 2205.05198, Table 2) for activations, generalised to
grouped-query attention and SwiGLU; the FLOP count follows Megatron-LM's
`num_floating_point_operations`. The advice uses published fits: Hoffmann et al. 2022
(Chinchilla loss), MiniCPM (critical batch size) and Llama 3 (compute-optimal tokens).

One module per part of the plan: params, memory, compute, advice (scaling laws), inverse
(questions read backwards), data (tokens planned per source and the epochs they are of its
size; the sizes are read by `service.sources` and passed in), plan (`plan_job`, the entry point) and fit (`memory_problems`, what
refuses a plan that does not fit). Every public name is re-exported here.

Modelling choices, each stated once here and used everywhere in the package:

- Parameters are counted exactly, with the model's `vocab_size` (the published totals);
  memory and FLOPs use the embedding rows actually allocated (`Vocab.allocated`).
- 6ND uses N = active parameters (all of them for a dense model, as Hoffmann et al. count;
  only the routed-to experts for MoE), D = tokens actually trained (whole steps).
- Megatron-core (since mid-2025, so in the 0.16 era) halves the attention-score FLOPs for the
  causal mask; `compute.flops` does too.
- Dense weights shard their optimizer state over data × context parallel ranks (megatron-core's
  `dp_cp` group); routed experts over the expert-data-parallel group, data × context / expert.
- Overhead = a fixed figure (CUDA context, NCCL communicators and buffers, cuBLAS/TE
  workspaces) plus a share of everything else for allocator fragmentation and temporaries.
"""

from __future__ import annotations

from service.planner.advice import (
    BATCH_RATIO_HIGH,
    BATCH_RATIO_LOW,
    CHINCHILLA_A,
    CHINCHILLA_ALPHA,
    CHINCHILLA_B,
    CHINCHILLA_BETA,
    CHINCHILLA_E,
    GENERAL_WORDS,
    INSTRUCTION_WORDS,
    LLAMA3_TOKENS_COEFFICIENT,
    LLAMA3_TOKENS_EXPONENT,
    MINICPM_BATCH_COEFFICIENT,
    MINICPM_BATCH_EXPONENT,
    MIXTURE_TARGET,
    MIXTURE_TOLERANCE,
    Advice,
    MixtureSplit,
    chinchilla_loss,
    compute_optimal_tokens,
    critical_batch_tokens,
)
from service.planner.checkpoint import (
    CHECKPOINT_BYTES_PER_PARAMETER,
    MAX_TERMINATION_GRACE_S,
    MIN_TERMINATION_GRACE_S,
    WRITE_GIB_PER_S_PER_NODE,
    CheckpointEstimate,
    estimate_checkpoint,
    grace_period_s,
)
from service.planner.compute import (
    SECONDS_PER_DAY,
    Compute,
    StageEstimate,
    budget_flops,
    flops_per_token,
    split_warmup,
)
from service.planner.data import DataPlan, SourcePlan, SourceTotal, StageData
from service.planner.fit import LONG_SEQUENCE, MAX_SUGGESTED_FIXES, memory_problems
from service.planner.inverse import GpusForDeadline, Inverse, TokensForBudget
from service.planner.memory import (
    FIT_FRACTION,
    GIB,
    GRADIENT_BYTES,
    OPTIMIZER_BYTES,
    OVERHEAD_FIXED_GIB,
    OVERHEAD_FRAGMENTATION,
    WEIGHT_BYTES,
    HostMemory,
    Memory,
    MemoryBreakdown,
    ModelStateView,
    ModelStateViews,
    StageMemory,
)
from service.planner.params import Params, Vocab, pad_vocab
from service.planner.plan import MIN_SPARE_VOCAB, Plan, plan_job

__all__ = [
    "Advice",
    "BATCH_RATIO_HIGH",
    "BATCH_RATIO_LOW",
    "CHECKPOINT_BYTES_PER_PARAMETER",
    "CheckpointEstimate",
    "CHINCHILLA_A",
    "CHINCHILLA_ALPHA",
    "CHINCHILLA_B",
    "CHINCHILLA_BETA",
    "CHINCHILLA_E",
    "Compute",
    "DataPlan",
    "FIT_FRACTION",
    "GENERAL_WORDS",
    "GIB",
    "GRADIENT_BYTES",
    "GpusForDeadline",
    "HostMemory",
    "INSTRUCTION_WORDS",
    "Inverse",
    "LLAMA3_TOKENS_COEFFICIENT",
    "LLAMA3_TOKENS_EXPONENT",
    "LONG_SEQUENCE",
    "MAX_SUGGESTED_FIXES",
    "MAX_TERMINATION_GRACE_S",
    "MIN_TERMINATION_GRACE_S",
    "MINICPM_BATCH_COEFFICIENT",
    "MINICPM_BATCH_EXPONENT",
    "MIN_SPARE_VOCAB",
    "MIXTURE_TARGET",
    "MIXTURE_TOLERANCE",
    "Memory",
    "MemoryBreakdown",
    "MixtureSplit",
    "ModelStateView",
    "ModelStateViews",
    "OPTIMIZER_BYTES",
    "OVERHEAD_FIXED_GIB",
    "OVERHEAD_FRAGMENTATION",
    "Params",
    "Plan",
    "SECONDS_PER_DAY",
    "SourcePlan",
    "SourceTotal",
    "StageData",
    "StageEstimate",
    "StageMemory",
    "TokensForBudget",
    "Vocab",
    "WEIGHT_BYTES",
    "WRITE_GIB_PER_S_PER_NODE",
    "budget_flops",
    "chinchilla_loss",
    "compute_optimal_tokens",
    "critical_batch_tokens",
    "estimate_checkpoint",
    "flops_per_token",
    "grace_period_s",
    "memory_problems",
    "pad_vocab",
    "plan_job",
    "split_warmup",
]
