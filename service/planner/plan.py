"""The plan of a validated spec: every figure the planner works out, and its warnings."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, Field

from service.planner.advice import Advice, advise
from service.planner.checkpoint import CheckpointEstimate, estimate_checkpoint
from service.planner.compute import Compute, StageEstimate, estimate_compute, estimate_stages
from service.planner.data import DataPlan, plan_data
from service.planner.inverse import Inverse, answer_inverse
from service.planner.memory import FIT_FRACTION, Memory, estimate_memory
from service.planner.params import Params, Vocab, count_params, vocab_for
from service.sources import SourceSize
from service.spec import ValidatedSpec

# Fewer spare embedding rows than this leaves little room for tokens added in later alignment.
MIN_SPARE_VOCAB = 1000


class Plan(BaseModel):
    """Everything the planner works out for a spec before launch."""

    params: Params
    vocab: Vocab
    memory: Memory
    compute: Compute
    stages: list[StageEstimate]
    advice: Advice
    inverse: Inverse
    # None in plans stored before the data accounting existed.
    data: DataPlan | None = Field(
        None, description="Tokens planned per stage and data source, sizes and epochs."
    )
    # None in plans stored before the grace period was sized.
    checkpoint: CheckpointEstimate | None = Field(
        None,
        description="Checkpoint size and write time, and the pods' grace period after SIGTERM.",
    )
    warnings: list[str]


def plan_job(
    validated: ValidatedSpec,
    *,
    gpus: int | None = None,
    days: float | None = None,
    token_budget: int | None = None,
    deadline_days: float | None = None,
    source_sizes: Mapping[str, SourceSize] | None = None,
) -> Plan:
    """The plan of a validated spec; `gpus`/`days` and `deadline_days` add inverse answers.

    `source_sizes` (by spec path, from `service.sources`) sizes the data sources; without it
    every size is unknown and the data plan has no epochs.
    """
    for name, value in (
        ("gpus", gpus),
        ("days", days),
        ("token_budget", token_budget),
        ("deadline_days", deadline_days),
    ):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    params = count_params(validated.model)
    vocab = vocab_for(validated)
    memory = estimate_memory(validated, params, vocab)
    stages = estimate_stages(validated, params, vocab)
    compute = estimate_compute(validated, params, stages)
    warnings = []
    # Without a tokenizer size the spare rows are unknown, not zero: say nothing then.
    tokenizer_known = bool(validated.spec.tokenizer and validated.spec.tokenizer.vocab_size)
    if tokenizer_known and vocab.spare < MIN_SPARE_VOCAB:
        warnings.append(
            f"only {vocab.spare} spare embedding rows ({vocab.allocated} allocated for "
            f"{vocab.tokenizer} tokenizer + {vocab.extra} extra tokens); fewer than "
            f"{MIN_SPARE_VOCAB} are left for tokens added in later alignment stages, so raise "
            f"model.vocab_size to at least {vocab.tokenizer + vocab.extra + MIN_SPARE_VOCAB} now"
        )
    if not memory.fits and validated.spec.allow_over_memory:
        warnings.append(
            f"memory estimate {memory.per_gpu_gib:.1f} GiB exceeds {FIT_FRACTION:.0%} of "
            f"{memory.capacity_gib:g} GiB; accepted because allow_over_memory is set"
        )
    data, data_warnings = plan_data(validated, source_sizes or {})
    warnings += data_warnings
    return Plan(
        params=params,
        vocab=vocab,
        memory=memory,
        compute=compute,
        stages=stages,
        advice=advise(validated, params, compute),
        inverse=answer_inverse(
            validated,
            compute,
            gpus=gpus,
            days=days,
            token_budget=token_budget,
            deadline_days=deadline_days,
        ),
        data=data,
        checkpoint=estimate_checkpoint(params, stages, nodes=validated.spec.resources.nodes),
        warnings=warnings,
    )
