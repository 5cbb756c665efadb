"""The tokenizer job: train or expand a tokenizer on a CPU machine; its spec and its rules."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError

from service.spec.data import CorpusName, CorpusPath, embedded_corpus_problems
from service.spec.field_errors import problems_from_validation_error
from service.spec.fields import (
    MAX_VOCAB_SIZE,
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    PositiveInt,
    Section,
    SpecPath,
    integer,
    real,
)
from service.spec.paths import PathPolicy, tokenizer_path_problems
from service.spec.problems import Problem, SpecInvalid, problem

# Options only one mode reads; the tokenizer library refuses them in the other.
TRAIN_ONLY_OPTIONS = ("vocab_size", "model", "domain_tokens", "spare", "limit_alphabet")
EXPAND_ONLY_OPTIONS = ("base", "add")
BANNED_REGEX_PREFIX = "re:"


class TokenizerOptionsSpec(Section):
    """The tokenizer library's options (`trainer.tokenizer.job`); unset means its default."""

    vocab_size: integer(gt=0, le=MAX_VOCAB_SIZE) | None = Field(
        None, description="train: the vocabulary, specials + alphabet + learned (default 32000)."
    )
    model: Literal["byte-bpe", "bpe", "wordpiece"] | None = Field(
        None, description="train: byte-bpe (default), bpe or wordpiece."
    )
    min_frequency: PositiveInt | None = Field(
        None, description="Least occurrences of a pair for it to be merged (default 2)."
    )
    domain_tokens: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, description="train: strings that must each be one token."
    )
    banned: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None,
        description="Ban lines: a literal (every token containing it) or `re:REGEX`; those "
        "tokens and their merges are removed.",
    )
    spare: integer(ge=0, le=MAX_VOCAB_SIZE) | None = Field(
        None, description="train: reserved special tokens <|reserved_i|> (default 1000)."
    )
    pad_to_multiple_of: integer(gt=0, le=MAX_VOCAB_SIZE) | None = Field(
        None,
        description="Embedding rows are rounded up to this (default 128; expand: the base's).",
    )
    limit_alphabet: integer(gt=0, le=MAX_VOCAB_SIZE) | None = Field(
        None, description="train, bpe and wordpiece: most characters in the alphabet."
    )
    base: SpecPath | None = Field(
        None,
        description="expand (required): the tokenizer to grow, a directory or tokenizer.json; "
        "a relative path is under the checkpoint root, where tokenizer jobs write theirs "
        "(`<name>-<id>/tokenizer`).",
    )
    add: integer(gt=0, le=MAX_VOCAB_SIZE) | None = Field(
        None, description="expand (required): tokens to add."
    )
    max_bytes_per_corpus: PositiveInt | None = Field(
        None, description="Read at most this many UTF-8 bytes of each corpus (default: all)."
    )
    report_corpora: dict[CorpusName, CorpusPath] | None = Field(
        None,
        description="Corpora to measure the result on, by name (paths as in corpora); adds "
        "compression per corpus to the report.",
    )
    probes: list[str] | None = Field(
        None, description="Strings whose split into tokens the report shows."
    )


class TokenizerResourcesSpec(Section):
    """The one CPU machine (a pod) a tokenizer job runs on."""

    cpu: integer(gt=0, le=1024) = Field(8, description="CPU cores, requested and the limit.")
    memory_gib: real(gt=0, le=16384) = Field(
        64.0,
        description="Memory in GiB, requested and the limit: the corpora and merge tables.",
    )


class TokenizerJobSpec(Section):
    """A tokenizer job: train a tokenizer on corpora, or expand one, on a CPU machine.

    It writes the tokenizer to `<checkpoint_root>/<name>-<id>/tokenizer` (the checkpoint
    volume, beside the checkpoints of pretraining jobs) and stores that path with the
    library's report as the job's `result`. It has no memory plan, watchdog or rollback.
    """

    name: str = Field(
        max_length=NAME_MAX_LENGTH,
        pattern=NAME_PATTERN,
        description="Job name: lowercase letters, digits and '-', starting with a letter.",
    )
    kind: Literal["tokenizer"] = Field(description="`tokenizer` for this kind of job.")
    mode: Literal["train", "expand"] = Field(
        description="train a new tokenizer, or expand options.base by options.add tokens "
        "(its ids unchanged)."
    )
    corpora: list[CorpusPath] = Field(
        min_length=1, description="The text to train (or expand) on, all corpora together."
    )
    options: TokenizerOptionsSpec = Field(
        default_factory=TokenizerOptionsSpec, description="The tokenizer library's options."
    )
    resources: TokenizerResourcesSpec = Field(
        default_factory=TokenizerResourcesSpec,
        description="CPU and memory (default 8 cores, 64 GiB).",
    )


class ValidatedTokenizerSpec(BaseModel):
    """A tokenizer job spec that passed every rule."""

    spec: TokenizerJobSpec = Field(description="The spec as submitted, with defaults filled in.")
    warnings: list[Problem] = Field(
        default_factory=list, description="Things that will work, but perhaps not as intended."
    )


def validate_tokenizer_spec(raw: dict, paths: PathPolicy | None = None) -> ValidatedTokenizerSpec:
    """Parse and check a tokenizer job spec; SpecInvalid lists every problem found.

    With `paths`, every path must be one the install allows (`paths.PathPolicy`).
    """
    try:
        spec = TokenizerJobSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecInvalid(problems_from_validation_error(error, TokenizerJobSpec)) from None
    problems = list(_tokenizer_problems(spec))
    if paths is not None:
        problems += tokenizer_path_problems(spec, paths)
    if problems:
        raise SpecInvalid(problems)
    return ValidatedTokenizerSpec(spec=spec)


def _tokenizer_problems(spec: TokenizerJobSpec) -> Iterator[Problem]:
    options = spec.options
    for index, corpus in enumerate(spec.corpora):
        yield from embedded_corpus_problems(["corpora", index], corpus)
    for name, corpus in (options.report_corpora or {}).items():
        yield from embedded_corpus_problems(["options", "report_corpora", name], corpus)
    other = "train" if spec.mode == "expand" else "expand"
    for key in TRAIN_ONLY_OPTIONS if spec.mode == "expand" else EXPAND_ONLY_OPTIONS:
        if getattr(options, key) is not None:
            yield problem(
                ["options", key],
                f"{key} applies to mode {other} only; remove it, or set mode to {other}",
            )
    if spec.mode == "expand":
        needed = {"base": "the tokenizer to grow", "add": "how many tokens to add"}
        for key, what in needed.items():
            if getattr(options, key) is None:
                yield Problem(
                    loc=["options", key],
                    msg=f"options.{key} is required with mode expand: {what}",
                    type="missing",
                )
    for index, line in enumerate(options.banned or []):
        if line.startswith(BANNED_REGEX_PREFIX):
            try:
                re.compile(line[len(BANNED_REGEX_PREFIX) :])
            except re.error as error:
                yield problem(
                    ["options", "banned", index],
                    f"{line!r} is not a valid regular expression: {error}",
                )
