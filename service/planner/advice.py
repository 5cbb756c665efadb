"""What published scaling laws say about the batch size, the token budget and the data mixture."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field

from service.planner.compute import Compute
from service.planner.params import Params
from service.spec import JobSpec, ValidatedSpec

# Hoffmann et al. 2022, approach 3: L(N, D) = E + A / N^alpha + B / D^beta.
CHINCHILLA_E, CHINCHILLA_A, CHINCHILLA_B = 1.69, 406.4, 410.7
CHINCHILLA_ALPHA, CHINCHILLA_BETA = 0.34, 0.28
# MiniCPM (Hu et al. 2024): critical batch size in tokens = 1.2110e9 / L^6.2393.
MINICPM_BATCH_COEFFICIENT, MINICPM_BATCH_EXPONENT = 1.2110e9, 6.2393
# Llama 3 (Dubey et al. 2024): compute-optimal training tokens N*(C) = 0.299 C^0.537.
LLAMA3_TOKENS_COEFFICIENT, LLAMA3_TOKENS_EXPONENT = 0.299, 0.537
# The spec's batch is "far" from the critical batch outside these ratios.
BATCH_RATIO_LOW, BATCH_RATIO_HIGH = 0.25, 4.0
# Continued pretraining mixes general : domain : instruction data near 7 : 2 : 1.
MIXTURE_TARGET = {"general": 0.7, "domain": 0.2, "instruction": 0.1}
MIXTURE_TOLERANCE = 0.1
INSTRUCTION_WORDS = frozenset({"instruct", "instruction", "instructions", "sft", "chat", "qa"})
GENERAL_WORDS = frozenset({"general", "web", "en", "zh", "code", "books", "book", "wiki"})


class MixtureSplit(BaseModel):
    """One later stage's data mixture by kind of data."""

    stage: str
    general: float
    domain: float
    instruction: float
    channels: dict[str, Literal["general", "domain", "instruction"]]


class Advice(BaseModel):
    """What the scaling laws say about the batch size, the token budget and the mixture."""

    target_loss: float
    target_loss_source: Literal["spec", "chinchilla"]
    critical_batch_tokens: float
    batch_tokens: int = Field(description="global_batch_size × seq_length of the first stage.")
    batch_ratio: float = Field(description="batch_tokens / critical_batch_tokens.")
    compute_budget: Literal["flops_6nd"] = "flops_6nd"
    compute_optimal_tokens: float
    compute_optimal_params: float
    notes: list[str]
    mixture: list[str]
    mixture_splits: list[MixtureSplit]


def chinchilla_loss(params: float, tokens: float) -> float:
    """Predicted final loss, Hoffmann et al. 2022: E + A/N^α + B/D^β."""
    return (
        CHINCHILLA_E
        + CHINCHILLA_A / params**CHINCHILLA_ALPHA
        + CHINCHILLA_B / tokens**CHINCHILLA_BETA
    )


def critical_batch_tokens(loss: float) -> float:
    """MiniCPM's critical batch size in tokens for a target loss."""
    return MINICPM_BATCH_COEFFICIENT / loss**MINICPM_BATCH_EXPONENT


def compute_optimal_tokens(flops: float) -> float:
    """Llama 3's compute-optimal training tokens for a FLOP budget."""
    return LLAMA3_TOKENS_COEFFICIENT * flops**LLAMA3_TOKENS_EXPONENT


def _classify_channel(name: str) -> Literal["general", "domain", "instruction"]:
    words = set(re.split(r"[-_]+", name))
    if words & INSTRUCTION_WORDS:
        return "instruction"
    if words & GENERAL_WORDS:
        return "general"
    return "domain"


def _mixture(spec: JobSpec) -> tuple[list[MixtureSplit], list[str]]:
    splits, notes = [], []
    for stage in spec.stages[1:]:
        shares = {"general": 0.0, "domain": 0.0, "instruction": 0.0}
        channels = {}
        for source in stage.data:
            kind = _classify_channel(source.channel)
            channels[source.channel] = kind
            shares[kind] += source.weight
        split = MixtureSplit(stage=stage.name, channels=channels, **shares)
        splits.append(split)
        ratio = " : ".join(f"{shares[kind] * 10:.1f}" for kind in MIXTURE_TARGET)
        far = [
            kind
            for kind, target in MIXTURE_TARGET.items()
            if abs(shares[kind] - target) > MIXTURE_TOLERANCE
        ]
        verdict = (
            f"far from 7 : 2 : 1 in {', '.join(far)}" if far else "near the 7 : 2 : 1 guideline"
        )
        notes.append(
            f"stage {stage.name!r}: general : domain : instruction = {ratio}, {verdict} for "
            "continued pretraining (channels classified by name)"
        )
    return splits, notes


def advise(validated: ValidatedSpec, params: Params, compute: Compute) -> Advice:
    spec = validated.spec
    target = getattr(spec, "target_loss", None)
    source: Literal["spec", "chinchilla"] = "spec"
    notes = []
    if target is None:
        target = chinchilla_loss(params.active, compute.tokens)
        source = "chinchilla"
        notes.append(
            f"target loss {target:.3f} predicted by Hoffmann et al.'s fit with N = "
            f"{params.active:,} {'active' if validated.model.moe else 'total'} parameters (they "
            f"counted all parameters) and D = {compute.tokens:,} tokens; set target_loss to "
            "size the batch for another goal"
        )
    critical = critical_batch_tokens(target)
    first = spec.stages[0]
    batch = spec.batch.global_batch_size * first.seq_length
    ratio = batch / critical
    if ratio < BATCH_RATIO_LOW:
        notes.append(
            f"batch of {batch:,} tokens is {ratio:.2f}× the critical batch {critical:,.0f} "
            f"(MiniCPM, at loss {target:.3f}): far below, so more data parallelism per step would "
            "cost little in tokens"
        )
    elif ratio > BATCH_RATIO_HIGH:
        notes.append(
            f"batch of {batch:,} tokens is {ratio:.1f}× the critical batch {critical:,.0f} "
            f"(MiniCPM, at loss {target:.3f}): far above, so tokens are spent inefficiently"
        )
    optimal_tokens = compute_optimal_tokens(compute.flops_6nd)
    optimal_params = compute.flops_6nd / (6 * optimal_tokens)
    notes.append(
        f"for C = 6ND = {compute.flops_6nd:.3g} FLOPs the Llama 3 fit suggests "
        f"{optimal_tokens:.3g} tokens on {optimal_params:.3g} parameters; this job trains "
        f"{compute.tokens:.3g} tokens ({compute.tokens / optimal_tokens:.2g}×) on "
        f"{params.active:.3g} ({params.active / optimal_params:.2g}×)"
    )
    splits, mixture = _mixture(spec)
    return Advice(
        target_loss=target,
        target_loss_source=source,
        critical_batch_tokens=critical,
        batch_tokens=batch,
        batch_ratio=ratio,
        compute_optimal_tokens=optimal_tokens,
        compute_optimal_params=optimal_params,
        notes=notes,
        mixture=mixture,
        mixture_splits=splits,
    )
