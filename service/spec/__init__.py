"""The job spec: what a user submits, parsed from JSON or YAML and checked before a GPU is touched.

`parse_spec_text` (parsing) turns a request body into a mapping, `validate_spec` (validation)
turns the mapping into a `ValidatedSpec` or raises `SpecInvalid` (problems) carrying every
problem at once: first pydantic's per-field checks (field_errors), then the cross-field rules
in `rules.RULES`, each a small function that yields `Problem`s naming the field to change and
the numbers involved, then the warnings in `warning_rules.WARNINGS`.

The sections of a pretraining `JobSpec` (job) live by concern: model (and its preset
resolution), resources, layout (parallelism, precision, recompute), training (batch, optimizer,
schedule), stages, data, supervision (checkpoints, evaluation, watchdog). A `kind: tokenizer`
spec has its own schema and rules (tokenizer), and so has a `kind: data` spec (data_job). Every public name is re-exported here, so
`from service.spec import X` is the one import callers need.
"""

from __future__ import annotations

from service.spec.context import Rule
from service.spec.data import (
    EMBEDDED_CORPORA,
    EMBEDDED_CORPUS_PREFIXES,
    CorpusName,
    CorpusPath,
    DataSource,
)
from service.spec.data_job import (
    DataJobSpec,
    DataResourcesSpec,
    ValidatedDataSpec,
    validate_data_spec,
)
from service.spec.evaluation import (
    BenchmarkSpec,
    EvaluationCheckpointsSpec,
    EvaluationResourcesSpec,
    EvaluationSpec,
)
from service.spec.fields import (
    IDENTIFIER_MAX_LENGTH,
    IDENTIFIER_PATTERN,
    MAX_COUNT,
    MAX_GPUS_PER_NODE,
    MAX_NODES,
    MAX_PATH_LENGTH,
    MAX_REAL,
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)
from service.spec.job import (
    BATCH_KINDS,
    DATA_KIND,
    JOB_KINDS,
    PRETRAIN_KIND,
    TOKENIZER_KIND,
    JobSpec,
)
from service.spec.layout import (
    Dtype,
    LossScaleSpec,
    ParallelismSpec,
    PrecisionSpec,
    RecomputeMode,
    RecomputeSpec,
)
from service.spec.model import VOCAB_PADDING_MULTIPLE, ModelSpec, MoESpec, TokenizerSpec
from service.spec.parsing import (
    MAX_DOCUMENT_DEPTH,
    MAX_DOCUMENT_NODES,
    MAX_INTEGER_DIGITS,
    Budget,
    ParseLimits,
    SpecFormat,
    parse_spec_text,
)
from service.spec.paths import PathPolicy
from service.spec.problems import Problem, SpecInvalid, format_loc
from service.spec.resources import (
    BF16_UNSUPPORTED_GPU_TYPES,
    FP8_GPU_TYPES,
    PEAK_BF16_TFLOPS,
    GpuType,
    ResourcesSpec,
)
from service.spec.rules import WEIGHT_SUM_TOLERANCE
from service.spec.stages import StagePlan, StageSpec
from service.spec.supervision import CheckpointSpec, EvalSpec, WatchdogSpec
from service.spec.tokenizer import (
    BANNED_REGEX_PREFIX,
    EXPAND_ONLY_OPTIONS,
    TRAIN_ONLY_OPTIONS,
    TokenizerJobSpec,
    TokenizerOptionsSpec,
    TokenizerResourcesSpec,
    ValidatedTokenizerSpec,
    validate_tokenizer_spec,
)
from service.spec.training import BatchSpec, OptimizerSpec, ScheduleSpec
from service.spec.validation import Derived, ValidatedSpec, validate_spec

__all__ = [
    "BANNED_REGEX_PREFIX",
    "BF16_UNSUPPORTED_GPU_TYPES",
    "BatchSpec",
    "BenchmarkSpec",
    "Budget",
    "CheckpointSpec",
    "CorpusName",
    "CorpusPath",
    "BATCH_KINDS",
    "DATA_KIND",
    "DataJobSpec",
    "DataResourcesSpec",
    "DataSource",
    "Derived",
    "Dtype",
    "EMBEDDED_CORPORA",
    "EMBEDDED_CORPUS_PREFIXES",
    "EXPAND_ONLY_OPTIONS",
    "EvalSpec",
    "EvaluationCheckpointsSpec",
    "EvaluationResourcesSpec",
    "EvaluationSpec",
    "FP8_GPU_TYPES",
    "GpuType",
    "IDENTIFIER_MAX_LENGTH",
    "IDENTIFIER_PATTERN",
    "JOB_KINDS",
    "JobSpec",
    "LossScaleSpec",
    "MAX_COUNT",
    "MAX_DOCUMENT_DEPTH",
    "MAX_DOCUMENT_NODES",
    "MAX_GPUS_PER_NODE",
    "MAX_NODES",
    "MAX_PATH_LENGTH",
    "MAX_INTEGER_DIGITS",
    "MAX_REAL",
    "MoESpec",
    "ModelSpec",
    "NAME_MAX_LENGTH",
    "NAME_PATTERN",
    "NonNegativeFloat",
    "NonNegativeInt",
    "OptimizerSpec",
    "PEAK_BF16_TFLOPS",
    "ParseLimits",
    "PRETRAIN_KIND",
    "PathPolicy",
    "ParallelismSpec",
    "PositiveFloat",
    "PositiveInt",
    "PrecisionSpec",
    "Problem",
    "RecomputeMode",
    "RecomputeSpec",
    "ResourcesSpec",
    "Rule",
    "ScheduleSpec",
    "SpecFormat",
    "SpecInvalid",
    "StagePlan",
    "StageSpec",
    "TOKENIZER_KIND",
    "TRAIN_ONLY_OPTIONS",
    "TokenizerJobSpec",
    "TokenizerOptionsSpec",
    "TokenizerResourcesSpec",
    "TokenizerSpec",
    "VOCAB_PADDING_MULTIPLE",
    "ValidatedDataSpec",
    "ValidatedSpec",
    "ValidatedTokenizerSpec",
    "WEIGHT_SUM_TOLERANCE",
    "WatchdogSpec",
    "format_loc",
    "parse_spec_text",
    "validate_data_spec",
    "validate_spec",
    "validate_tokenizer_spec",
]
