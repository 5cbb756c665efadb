"""Where training text comes from: corpora, embedded corpora and a stage's data channels."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from pydantic import Field, field_validator

from service.spec.fields import (
    IDENTIFIER_MAX_LENGTH,
    IDENTIFIER_PATTERN,
    MAX_PATH_LENGTH,
    Flag,
    NonNegativeSteps,
    PositiveFloat,
    PositiveSteps,
    Section,
    SpecPath,
)
from service.spec.problems import Problem, problem

# The trainer's embedded corpora (`trainer.data.EMBEDDED_CORPORA`; a test holds them equal).
EMBEDDED_CORPORA = ("code", "en", "zh")
EMBEDDED_CORPUS_PREFIXES = ("embedded://", "embedded:")

CorpusPath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="`embedded:code`, `embedded:en` or `embedded:zh`; an absolute path under an "
        "allowed root; or a path relative to the data root (the data volume, settings.data_root). "
        'A file (.jsonl: one {"text": ...} a line; any other file is one document) or a folder '
        "of such files.",
    ),
]
CorpusName = Annotated[
    str, Field(min_length=1, max_length=IDENTIFIER_MAX_LENGTH, pattern=IDENTIFIER_PATTERN)
]


class DataSource(Section):
    """One channel of a stage's data mixture."""

    channel: str = Field(
        min_length=1,
        max_length=IDENTIFIER_MAX_LENGTH,
        pattern=IDENTIFIER_PATTERN,
        description="Short name the loss is reported under, e.g. en, zh, code.",
    )
    path: SpecPath = Field(
        description="Dataset prefix or URI, e.g. s3://corpus/en or embedded://code; a local path "
        "lies under an allowed root (relative: under the data root)."
    )
    weight: PositiveFloat = Field(
        description="Share of the stage's tokens; a stage's weights sum to 1."
    )
    corrupt_steps: list[tuple[NonNegativeSteps, PositiveSteps]] = Field(
        default_factory=list,
        description="Fault injection for demos and on-call drills: half-open [start, end) step "
        "ranges (steps of the run as first planned) in which this channel's samples are "
        "replaced by random tokens. Every plan of such a spec carries a warning.",
    )


# Megatron-LM's default: 96.9% of each source's documents train, 3% are held out for evaluation.
DEFAULT_SPLIT = "969,30,1"
SPLIT_PATTERN = r"^\s*\d+(\.\d*)?(\s*,\s*\d+(\.\d*)?){0,2}\s*$"


class DataSpec(Section):
    """How every source's documents are split, packed into sequences and masked: Megatron's
    options of the same names, with its defaults."""

    split: str = Field(
        DEFAULT_SPLIT,
        max_length=64,
        pattern=SPLIT_PATTERN,
        description="train,valid,test shares of each source's documents (Megatron's --split). "
        "Evaluation reads only valid documents, which are never trained on.",
    )
    reset_position_ids: Flag = Field(
        False, description="Positions restart at 0 after each end-of-document token in a sequence."
    )
    reset_attention_mask: Flag = Field(
        False, description="Tokens attend only within their own document in a packed sequence."
    )
    eod_mask_loss: Flag = Field(
        False, description="No loss on the prediction made from an end-of-document token."
    )
    mmap_bin_files: Flag = Field(
        True, description="Memory-map the sources' .bin files; false reads them on demand."
    )
    credentials_secret: str | None = Field(
        None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="For s3:// sources: the name of a Kubernetes Secret in the jobs' namespace "
        "whose keys become the trainer pods' environment (AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION…). Never the credentials "
        "themselves. The local backend passes PRETRAIN_TRAINER_PASSTHROUGH_ENV instead.",
    )

    @field_validator("split")
    @classmethod
    def _train_share(cls, split: str) -> str:
        shares = [float(share) for share in split.split(",")]
        if shares[0] <= 0:
            raise ValueError("the train share (the first) must be positive")
        if len(shares) > 1 and shares[1] <= 0:
            raise ValueError("the valid share (the second) must be positive: evaluation reads it")
        return split


def embedded_corpus_problems(loc: list[str | int], corpus: str) -> Iterator[Problem]:
    for prefix in EMBEDDED_CORPUS_PREFIXES:
        if corpus.startswith(prefix):
            name = corpus[len(prefix) :]
            if name not in EMBEDDED_CORPORA:
                choices = ", ".join(f"embedded:{known}" for known in EMBEDDED_CORPORA)
                yield problem(loc, f"unknown embedded corpus {name!r}; use one of {choices}")
            return
