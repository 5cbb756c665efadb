"""Where training text comes from: corpora, embedded corpora and a stage's data channels."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from pydantic import Field

from service.spec.fields import (
    IDENTIFIER_MAX_LENGTH,
    IDENTIFIER_PATTERN,
    MAX_PATH_LENGTH,
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


def embedded_corpus_problems(loc: list[str | int], corpus: str) -> Iterator[Problem]:
    for prefix in EMBEDDED_CORPUS_PREFIXES:
        if corpus.startswith(prefix):
            name = corpus[len(prefix) :]
            if name not in EMBEDDED_CORPORA:
                choices = ", ".join(f"embedded:{known}" for known in EMBEDDED_CORPORA)
                yield problem(loc, f"unknown embedded corpus {name!r}; use one of {choices}")
            return
