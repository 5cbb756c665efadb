"""Data accounting before the run: tokens planned from each source, its size, the epochs.

Per stage and source: tokens planned = the stage's tokens trained (whole steps) × the
source's weight normalised over the stage; epochs = planned / the source's size in tokens,
when the size is known (`service.sources` finds it; this module only does the arithmetic).
The run's total per source adds the stages up: sources are the same when they resolve to the
same place, whatever channel names them. A source past `max_source_epochs` over the run is
flagged and warned about (Muennighoff et al. 2023: repeated tokens lose their worth past
about four epochs).

The size counts the whole source, EOD tokens included; epochs are of its training share, the
spec's `data.split` train part (the trainer splits by document, so this is the share of
documents, taken as the share of tokens).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import BaseModel, Field

from service.sources import Basis, SourceSize
from service.spec import ValidatedSpec


class SourcePlan(BaseModel):
    """What one stage takes from one of its sources."""

    channel: str = Field(description="The channel the source's loss is reported under.")
    path: str = Field(description="The source as the spec names it.")
    weight: float = Field(description="The source's share of the stage, weights normalised to sum to 1.")
    tokens_planned: int = Field(description="The stage's tokens trained × weight.")
    size_tokens: int | None = Field(description="The source's size in tokens; null when unknown.")
    size_basis: Basis = Field(
        description="Where the size came from: the data job's sidecar, the .idx's sequence "
        "lengths, the embedded corpora's table, or unknown."
    )
    size_note: str = Field(description="Why the size is unknown, or what it was counted from.")
    epochs: float | None = Field(
        description="tokens_planned / (size_tokens × the split's train share); null when the size is unknown."
    )


class StageData(BaseModel):
    """One stage's mixture in tokens."""

    stage: str
    tokens: int = Field(description="The stage's tokens trained (whole steps).")
    sources: list[SourcePlan]


class SourceTotal(BaseModel):
    """One source over the whole run, all stages together."""

    path: str = Field(description="The source as the spec names it (first spelling).")
    channels: list[str] = Field(description="Channels it is trained under.")
    tokens_planned: int
    size_tokens: int | None
    epochs: float | None
    over_limit: bool = Field(description="epochs > max_source_epochs.")


class DataPlan(BaseModel):
    """Tokens planned per stage and source, sizes, epochs, and the run's total per source."""

    max_source_epochs: float = Field(description="The spec's limit on epochs of one source.")
    train_share: float = Field(1.0, description="The share of each source trained on: data.split's train part.")
    tokens: int = Field(description="Tokens trained over the run, all stages.")
    stages: list[StageData]
    sources: list[SourceTotal]


def source_key(path: str, size: SourceSize) -> str:
    """What makes two spec paths the same source: the resolved prefix the size was read from
    for local sources, else the path itself."""
    return size.key or path


def plan_data(validated: ValidatedSpec, sizes: Mapping[str, SourceSize]) -> tuple[DataPlan, list[str]]:
    """The data plan and its warnings; `sizes` maps each spec source path to its size (a path
    missing from it is of unknown size)."""
    spec = validated.spec
    train_share = data_train_share(spec.data.split)
    stages: list[StageData] = []
    totals: dict[str, SourceTotal] = {}
    by_stage: dict[str, list[str]] = {}
    for stage, planned in zip(spec.stages, validated.derived.stages, strict=True):
        weights = math.fsum(source.weight for source in stage.data)
        sources = []
        for source in stage.data:
            size = sizes.get(source.path) or SourceSize(None, None, "unknown", "not sized")
            weight = source.weight / weights
            tokens = round(planned.tokens_trained * weight)
            sources.append(
                SourcePlan(
                    channel=source.channel,
                    path=source.path,
                    weight=weight,
                    tokens_planned=tokens,
                    size_tokens=size.tokens,
                    size_basis=size.basis,
                    size_note=size.note,
                    epochs=_epochs(tokens, size.tokens, train_share),
                )
            )
            key = source_key(source.path, size)
            total = totals.setdefault(
                key,
                SourceTotal(
                    path=source.path, channels=[], tokens_planned=0, size_tokens=size.tokens, epochs=None, over_limit=False
                ),
            )
            total.tokens_planned += tokens
            if size.tokens:
                by_stage.setdefault(key, []).append(f"{stage.name} {_epochs(tokens, size.tokens, train_share):.2f}")
            if source.channel not in total.channels:
                total.channels.append(source.channel)
        stages.append(StageData(stage=stage.name, tokens=planned.tokens_trained, sources=sources))
    warnings = []
    for key, total in totals.items():
        total.epochs = _epochs(total.tokens_planned, total.size_tokens, train_share)
        total.over_limit = total.epochs is not None and total.epochs > spec.max_source_epochs
        if total.over_limit:
            warnings.append(_over_limit(total, by_stage.get(key, []), spec.max_source_epochs))
        elif total.size_tokens == 0:
            warnings.append(f"data source {total.path!r} (channel {', '.join(total.channels)}) holds no tokens")
    plan = DataPlan(
        max_source_epochs=spec.max_source_epochs,
        train_share=train_share,
        tokens=sum(stage.tokens for stage in stages),
        stages=stages,
        sources=list(totals.values()),
    )
    return plan, warnings


def _epochs(tokens: int, size: int | None, train_share: float) -> float | None:
    """Epochs of a source's training share; None when its size is unknown or zero."""
    return tokens / (size * train_share) if size else None


def data_train_share(split: str) -> float:
    """The train part of a Megatron split string, normalised: "969,30,1" -> 0.969."""
    shares = [float(share) for share in split.split(",")]
    return shares[0] / sum(shares)


def _over_limit(total: SourceTotal, by_stage: list[str], limit: float) -> str:
    per_stage = ", ".join(by_stage)
    channels = ", ".join(total.channels)
    return (
        f"data source {total.path!r} (channel {channels}) is trained for {total.epochs:.1f} epochs "
        f"({total.tokens_planned:,} tokens planned of {total.size_tokens:,}; by stage: {per_stage}), "
        f"more than max_source_epochs {limit:g}: past about 4 epochs repeated tokens are worth "
        "rapidly less than new ones (Muennighoff et al. 2023); add data, lower its weight or "
        "the stage's tokens, or raise max_source_epochs if the repetition is meant"
    )
