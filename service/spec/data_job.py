"""The data job: text into a Megatron `.bin/.idx` pair with a run's tokenizer; its spec and rules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from service.spec.data import CorpusPath, embedded_corpus_problems
from service.spec.field_errors import problems_from_validation_error
from service.spec.fields import (
    IDENTIFIER_MAX_LENGTH,
    IDENTIFIER_PATTERN,
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    Section,
    SpecPath,
    integer,
    real,
)
from service.spec.paths import PathPolicy, data_job_path_problems
from service.spec.problems import Problem, SpecInvalid

BYTE_TOKENIZER = "byte"


class DataResourcesSpec(Section):
    """The one CPU machine (a pod) a data job runs on."""

    cpu: integer(gt=0, le=1024) = Field(
        8, description="CPU cores, requested and the limit; the default number of workers."
    )
    memory_gib: real(gt=0, le=16384) = Field(
        16.0, description="Memory in GiB, requested and the limit: a batch of documents a worker."
    )


class DataJobSpec(Section):
    """A data job: tokenize text into a Megatron `.bin/.idx` pair on a CPU machine.

    It writes `<checkpoint_root>/<name>-<id>/data/<output>.bin`, `.idx` and `.json` (the
    sidecar: tokenizer fingerprint, vocab_size, eod_id, documents, tokens, dtype, inputs) on
    the checkpoint volume, which trainers read as well as write, and stores the prefix with the
    sidecar as the job's `result`. It has no memory plan, watchdog or rollback.
    """

    name: str = Field(
        max_length=NAME_MAX_LENGTH,
        pattern=NAME_PATTERN,
        description="Job name: lowercase letters, digits and '-', starting with a letter.",
    )
    kind: Literal["data"] = Field(description="`data` for this kind of job.")
    inputs: list[CorpusPath] = Field(
        min_length=1,
        description="JSONL files (one object a line), text files (one document each), Parquet "
        "files (text_field a column), folders of those, or `embedded:NAME`; "
        "relative paths are under the data root. Prepared in this order.",
    )
    output: str = Field(
        "data",
        max_length=IDENTIFIER_MAX_LENGTH,
        pattern=IDENTIFIER_PATTERN,
        description="The pair's file name (`<output>.bin/.idx/.json`) in the job's data folder: "
        "a name, never a path.",
    )
    tokenizer: SpecPath = Field(
        BYTE_TOKENIZER,
        description="`byte`, or a Hugging Face tokenizer.json (or its folder): relative paths "
        "are under the checkpoint root, where tokenizer jobs write theirs "
        "(`<name>-<id>/tokenizer`). Use the run's own.",
    )
    text_field: str = Field(
        "text",
        min_length=1,
        max_length=IDENTIFIER_MAX_LENGTH,
        description="The JSONL (and Parquet) field holding each document's text.",
    )
    workers: integer(gt=0, le=1024) | None = Field(
        None, description="Processes tokenizing at once (default: resources.cpu)."
    )
    resources: DataResourcesSpec = Field(
        default_factory=DataResourcesSpec,
        description="CPU and memory (default 8 cores, 16 GiB).",
    )


class ValidatedDataSpec(BaseModel):
    """A data job spec that passed every rule."""

    spec: DataJobSpec = Field(description="The spec as submitted, with defaults filled in.")
    warnings: list[Problem] = Field(
        default_factory=list, description="Things that will work, but perhaps not as intended."
    )


def validate_data_spec(raw: dict, paths: PathPolicy | None = None) -> ValidatedDataSpec:
    """Parse and check a data job spec; SpecInvalid lists every problem found.

    With `paths`, every path must be one the install allows (`paths.PathPolicy`).
    """
    try:
        spec = DataJobSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecInvalid(problems_from_validation_error(error, DataJobSpec)) from None
    problems = list(_data_problems(spec))
    if paths is not None:
        problems += data_job_path_problems(spec, paths)
    if problems:
        raise SpecInvalid(problems)
    warnings = []
    if spec.workers is not None and spec.workers > spec.resources.cpu:
        warnings.append(
            Problem(
                loc=["workers"],
                msg=f"workers {spec.workers} exceeds resources.cpu {spec.resources.cpu}: the "
                "processes will share the cores",
                type="warning",
            )
        )
    return ValidatedDataSpec(spec=spec, warnings=warnings)


def _data_problems(spec: DataJobSpec) -> Iterator[Problem]:
    for index, source in enumerate(spec.inputs):
        yield from embedded_corpus_problems(["inputs", index], source)
