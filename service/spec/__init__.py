"""The job spec: what a user submits, parsed from JSON or YAML and checked before a GPU is touched.

`parse_spec_text` turns a request body into a mapping, `validate_spec` turns the mapping into a
`ValidatedSpec` or raises `SpecInvalid` carrying every problem at once: first pydantic's
per-field checks, then the cross-field rules in `_RULES`, each a small function that yields
`Problem`s naming the field to change and the numbers involved.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from service.errors import ServiceError
from service.presets import PRESETS, ModelArch, MoEArch

# Becomes the Kubernetes name `<name>-a<attempt>`: a DNS-1123 label, with room for the suffix.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX_LENGTH = 48
# Stage and channel names end up in metric labels and file names.
IDENTIFIER_PATTERN = r"^[a-z][a-z0-9_-]*$"
IDENTIFIER_MAX_LENGTH = 32

GpuType = Literal[
    "H100",
    "H200",
    "H800",
    "H20",
    "A100",
    "A800",
    "V100",
    "L40S",
    "L4",
    "B100",
    "B200",
    "GB200",
    "cpu",
]
# Peak dense bf16 tensor TFLOPS of one device (SXM parts where there is a choice); V100 has no
# bf16, so its fp16 figure stands in. `cpu` is a nominal figure so that estimates stay finite.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100": 989.0,
    "H200": 989.0,
    "H800": 989.0,
    "H20": 148.0,
    "A100": 312.0,
    "A800": 312.0,
    "V100": 125.0,
    "L40S": 362.0,
    "L4": 121.0,
    "B100": 1750.0,
    "B200": 2250.0,
    "GB200": 2500.0,
    "cpu": 1.0,
}
# FP8 tensor cores arrived with Ada and Hopper; Ampere, Volta and CPUs have none.
FP8_GPU_TYPES = frozenset({"H100", "H200", "H800", "H20", "L40S", "L4", "B100", "B200", "GB200"})
BF16_UNSUPPORTED_GPU_TYPES = frozenset({"V100"})
# Megatron pads the embedding table to a multiple of this (times the tensor size).
VOCAB_PADDING_MULTIPLE = 128
WEIGHT_SUM_TOLERANCE = 1e-6
# Upper bounds keep every derived figure finite and every count inside a database bigint;
# nothing real comes near them (2**53 tokens is ~9e15).
MAX_COUNT = 2**53
MAX_REAL = 1e18
PositiveInt = Annotated[int, Field(gt=0, le=MAX_COUNT)]
NonNegativeInt = Annotated[int, Field(ge=0, le=MAX_COUNT)]
PositiveFloat = Annotated[float, Field(gt=0, le=MAX_REAL)]
NonNegativeFloat = Annotated[float, Field(ge=0, le=MAX_REAL)]
# A few aliases nested a few deep ("billion laughs") would otherwise make validation crawl.
MAX_DOCUMENT_NODES = 100_000


class _Section(BaseModel):
    """Base of every spec section: unknown keys, NaN/inf and NUL characters are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul_characters(cls, value: Any) -> Any:
        # Postgres cannot store U+0000 in text or JSONB; refuse it here, with the field's path.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL (\\x00) characters")
        return value


# ---------------------------------------------------------------- the spec


class MoESpec(_Section):
    """Mixture-of-experts layers; fields left out come from the preset."""

    num_experts: PositiveInt | None = Field(None, description="Routed experts per MoE layer.")
    top_k: PositiveInt | None = Field(None, description="Experts each token is routed to.")
    moe_ffn_hidden_size: PositiveInt | None = Field(
        None, description="Hidden size of each routed expert's SwiGLU MLP."
    )
    shared_expert_ffn_hidden_size: NonNegativeInt | None = Field(
        None, description="Hidden size of the always-active shared expert; 0 means none (default)."
    )


class ModelSpec(_Section):
    """A preset architecture, explicit fields, or a preset with some fields overridden."""

    preset: str | None = Field(
        None,
        description="Named architecture to start from (see service/presets.py).",
        examples=list(PRESETS),
    )
    num_layers: PositiveInt | None = Field(None, description="Transformer layers.")
    hidden_size: PositiveInt | None = Field(None, description="Model width.")
    num_attention_heads: PositiveInt | None = Field(None, description="Query heads per layer.")
    num_query_groups: PositiveInt | None = Field(
        None, description="Key/value heads (grouped-query attention); equal to the heads for MHA."
    )
    ffn_hidden_size: PositiveInt | None = Field(
        None, description="Hidden size of the dense SwiGLU MLP."
    )
    vocab_size: PositiveInt | None = Field(
        None, description="Rows of the embedding table (the padded tokenizer vocabulary)."
    )
    max_position_embeddings: PositiveInt | None = Field(
        None, description="Longest sequence the model supports."
    )
    rope_base: PositiveFloat | None = Field(
        None, description="RoPE base frequency (theta); default 10000."
    )
    norm_eps: PositiveFloat | None = Field(None, description="RMSNorm epsilon; default 1e-5.")
    tie_embeddings: bool | None = Field(
        None, description="Share the input embedding with the output layer; default false."
    )
    qkv_bias: bool | None = Field(
        None, description="Bias on the query, key and value projections; default false."
    )
    moe: MoESpec | None = Field(
        None, description="Mixture-of-experts layers; absent for a dense model."
    )


class TokenizerSpec(_Section):
    """The tokenizer the data was (or will be) encoded with."""

    path: str = Field(min_length=1, description="Tokenizer location: a directory, file or URI.")
    vocab_size: PositiveInt | None = Field(None, description="Tokens the tokenizer produces.")
    extra_vocab_size: NonNegativeInt = Field(
        0, description="Tokens added on top of the tokenizer (special or reserved tokens)."
    )


def _canonical_gpu_type(value: Any) -> Any:
    """Accept `h100` for `H100`: users type GPU names in any case."""
    if isinstance(value, str):
        for known in PEAK_BF16_TFLOPS:
            if value.strip().lower() == known.lower():
                return known
    return value


class ResourcesSpec(_Section):
    """The machines the job runs on."""

    nodes: PositiveInt = Field(description="Machines (Kubernetes pods) in the job.")
    gpus_per_node: PositiveInt = Field(
        description="Accelerators per machine; with gpu_type cpu, training processes per machine."
    )
    gpu_type: Annotated[GpuType, BeforeValidator(_canonical_gpu_type)] = Field(
        description="Accelerator model, or `cpu` to train in CPU processes."
    )
    gpu_memory_gib: PositiveFloat = Field(
        description="Memory of one accelerator (or one CPU process) in GiB."
    )
    peak_tflops: PositiveFloat | None = Field(
        None,
        description="Peak dense bf16 TFLOPS of one accelerator; defaults from a table by gpu_type.",
    )

    @model_validator(mode="after")
    def _default_peak_tflops_from_gpu_type(self) -> ResourcesSpec:
        if self.peak_tflops is None:
            self.peak_tflops = PEAK_BF16_TFLOPS[self.gpu_type]
        return self

    @property
    def world_size(self) -> int:
        """Training processes in all: nodes × gpus_per_node."""
        return self.nodes * self.gpus_per_node


class ParallelismSpec(_Section):
    """How Megatron-core splits the model and the batch across processes."""

    tensor: PositiveInt = Field(
        1, description="Tensor-parallel size: splits every layer's matrices."
    )
    pipeline: PositiveInt = Field(
        1, description="Pipeline-parallel size: splits the layers into stages."
    )
    context: PositiveInt = Field(1, description="Context-parallel size: splits every sequence.")
    expert: PositiveInt = Field(
        1, description="Expert-parallel size: splits the experts of MoE layers."
    )
    virtual_pipeline: PositiveInt | None = Field(
        None,
        description="Model chunks per pipeline rank (interleaved 1F1B); unset = not interleaved.",
    )
    sequence_parallel: bool = Field(
        False,
        description="Shard norm and dropout activations along the sequence across tensor ranks.",
    )
    distributed_optimizer: bool = Field(
        False, description="Shard optimizer state across data-parallel ranks (ZeRO-1)."
    )
    optimizer_offload: bool = Field(
        False, description="Keep optimizer state in host memory; needs the distributed optimizer."
    )


class LossScaleSpec(_Section):
    """Dynamic loss scaling, used only with fp16."""

    initial_scale: PositiveFloat = Field(65536.0, description="Loss scale at the first step.")
    min_scale: PositiveFloat = Field(1.0, description="The scale never drops below this.")
    growth_interval: PositiveInt = Field(
        1000, description="Steps without overflow before the scale grows."
    )
    growth_factor: float = Field(2.0, gt=1, description="Multiplier applied when the scale grows.")
    backoff_factor: float = Field(
        0.5, gt=0, lt=1, description="Multiplier applied after an overflow."
    )
    hysteresis: PositiveInt = Field(
        2, description="Overflows tolerated before the scale backs off."
    )


Dtype = Literal["bf16", "fp16", "fp8"]


class PrecisionSpec(_Section):
    """Numeric format of the matrix multiplies; accepts the plain form `precision: bf16`."""

    dtype: Dtype = Field(
        "bf16", description="bf16, fp16 (with loss scaling) or fp8 (Hopper and newer)."
    )
    loss_scale: LossScaleSpec = Field(
        default_factory=LossScaleSpec,
        description="Dynamic loss scaling for fp16; ignored otherwise.",
    )


RecomputeMode = Literal["none", "selective", "full", "offload"]


class RecomputeSpec(_Section):
    """Activation recomputation; accepts the plain form `recompute: selective`."""

    mode: RecomputeMode = Field(
        "none",
        description="none, selective (attention core only), full (whole layers) or offload (to host).",
    )
    recompute_layers: PositiveInt | None = Field(
        None, description="With mode full: layers recomputed as one chunk; default 1."
    )


def _mapping_from_shorthand(field_name: str) -> Callable[[Any], Any]:
    """A before-validator that reads `section: value` as `section: {field_name: value}`."""

    def expand(value: Any) -> Any:
        return {field_name: value} if isinstance(value, str) else value

    return expand


class BatchSpec(_Section):
    """Sequences per step: micro-batches per process, and the global batch across all of them."""

    micro_batch_size: PositiveInt = Field(
        description="Sequences one process runs forward at a time."
    )
    global_batch_size: PositiveInt = Field(
        description="Sequences per optimizer step, all processes together."
    )


class OptimizerSpec(_Section):
    """AdamW and the gradient knobs around it."""

    lr: PositiveFloat = Field(3e-4, description="Peak learning rate, reached after warmup.")
    min_lr: NonNegativeFloat = Field(3e-5, description="Learning rate at the end of the decay.")
    weight_decay: NonNegativeFloat = Field(0.1, description="Decoupled weight decay.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW first-moment decay.")
    adam_beta2: float = Field(0.95, ge=0, lt=1, description="AdamW second-moment decay.")
    adam_eps: PositiveFloat = Field(1e-8, description="AdamW denominator epsilon.")
    clip_grad: NonNegativeFloat = Field(
        1.0, description="Global gradient-norm clip; 0 disables it."
    )
    z_loss: NonNegativeFloat = Field(
        0.0, description="Weight of the z-loss on the output logits; 0 disables it."
    )
    embedding_grad_scale: PositiveFloat = Field(
        1.0, description="Multiplier on the embedding's gradient (below 1 damps early spikes)."
    )


class ScheduleSpec(_Section):
    """Learning-rate schedule over the whole job, all stages together."""

    kind: Literal["wsd", "cosine", "constant"] = Field(
        "wsd", description="wsd (warmup-stable-decay), cosine, or constant after warmup."
    )
    warmup_tokens: NonNegativeInt = Field(description="Tokens of linear warmup from 0 to lr.")
    decay_fraction: float = Field(
        0.1, ge=0, le=1, description="WSD only: fraction of all tokens spent in the final decay."
    )
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = Field(
        "linear", description="WSD only: shape of the final decay from lr to min_lr."
    )


class DataSource(_Section):
    """One channel of a stage's data mixture."""

    channel: str = Field(
        min_length=1,
        max_length=IDENTIFIER_MAX_LENGTH,
        pattern=IDENTIFIER_PATTERN,
        description="Short name the loss is reported under, e.g. en, zh, code.",
    )
    path: str = Field(
        min_length=1, description="Dataset prefix or URI, e.g. s3://corpus/en or embedded://code."
    )
    weight: PositiveFloat = Field(
        description="Share of the stage's tokens; a stage's weights sum to 1."
    )
    corrupt_steps: list[tuple[NonNegativeInt, PositiveInt]] = Field(
        default_factory=list,
        description="Fault injection for demos and on-call drills: half-open [start, end) step "
        "ranges (steps of the run as first planned) in which this channel's samples are "
        "replaced by random tokens. Every plan of such a spec carries a warning.",
    )


class StageSpec(_Section):
    """A phase of training with its own token budget, sequence length and data mixture."""

    name: str = Field(
        min_length=1,
        max_length=IDENTIFIER_MAX_LENGTH,
        pattern=IDENTIFIER_PATTERN,
        description="Unique stage name, e.g. pretrain, long-context, anneal.",
    )
    tokens: PositiveInt = Field(description="Tokens to train in this stage.")
    seq_length: PositiveInt = Field(description="Tokens per sequence.")
    rope_base: PositiveFloat | None = Field(
        None, description="RoPE base for this stage; unset = the model's rope_base."
    )
    data: list[DataSource] = Field(min_length=1, description="The stage's data mixture.")
    lr_scale: PositiveFloat = Field(1.0, description="Multiplier on the schedule's learning rate.")


class CheckpointSpec(_Section):
    """When and where checkpoints are written."""

    interval_steps: PositiveInt = Field(1000, description="Steps between checkpoints.")
    keep_last: PositiveInt = Field(
        3, description="Newest checkpoints kept; older ones are deleted."
    )
    storage: str | None = Field(
        None,
        description="Directory or URI (file://, s3://) for checkpoints; unset = the service's default.",
    )


class EvalSpec(_Section):
    """Held-out evaluation, reported per channel as loss and perplexity."""

    interval_steps: PositiveInt = Field(1000, description="Steps between evaluations.")
    samples_per_channel: PositiveInt = Field(
        200, description="Held-out sequences evaluated per channel."
    )


class WatchdogSpec(_Section):
    """How the watchdog judges the loss curve and what it does about an anomaly."""

    spike_threshold: PositiveFloat = Field(
        0.15,
        description="Relative rise of a channel's loss over its recent level that counts as a spike.",
    )
    drop_threshold: PositiveFloat = Field(
        0.25, description="Relative fall of a channel's loss that counts as a suspicious drop."
    )
    recover_window_steps: PositiveInt = Field(
        20, description="Steps a spike may take to recover before it becomes a rollback."
    )
    rollback: Literal["auto", "alert_only"] = Field(
        "auto", description="auto rolls back by itself; alert_only only raises an event."
    )
    rollback_margin_steps: NonNegativeInt = Field(
        100, description="Healthy steps required between the checkpoint restored and the anomaly."
    )
    skip_steps_after: NonNegativeInt = Field(
        200,
        description="Steps of data skipped after the restored checkpoint, past the offending batches.",
    )
    max_rollbacks: PositiveInt = Field(
        3,
        description="Rollbacks allowed within rollback_window_steps before the job pauses and pages.",
    )
    rollback_window_steps: PositiveInt = Field(
        2000, description="Window over which rollbacks are counted."
    )
    lr_scale_on_rollback: PositiveFloat = Field(
        1.0, description="Multiplier on the learning rate after each rollback."
    )
    skip_grad_norm_zscore: PositiveFloat = Field(
        6.0,
        description="The trainer skips an optimizer step whose gradient norm is this many robust "
        "standard deviations above its recent ones (and any step with a non-finite loss or "
        "gradient norm): one bad batch costs one step, not a rollback.",
    )
    max_nonfinite_steps: PositiveInt = Field(
        3,
        description="Non-finite losses in a row after which the trainer stops as diverged and the "
        "service rolls the run back.",
    )


class JobSpec(_Section):
    """An LLM pretraining job: model, machines, parallel layout, schedule and data stages."""

    name: str = Field(
        max_length=NAME_MAX_LENGTH,
        pattern=NAME_PATTERN,
        description="Job name: lowercase letters, digits and '-', starting with a letter.",
    )
    kind: Literal["pretrain"] = Field(
        "pretrain",
        description="What the job does: pretrain (this spec); `tokenizer` takes a "
        "TokenizerJobSpec instead.",
    )
    model: ModelSpec = Field(description="Architecture: a preset, explicit fields, or both.")
    tokenizer: TokenizerSpec | None = Field(None, description="Tokenizer the data is encoded with.")
    resources: ResourcesSpec = Field(description="Machines and accelerators.")
    parallelism: ParallelismSpec = Field(
        default_factory=ParallelismSpec, description="Megatron-core parallel layout."
    )
    precision: Annotated[
        PrecisionSpec,
        BeforeValidator(
            _mapping_from_shorthand("dtype"), json_schema_input_type=Dtype | PrecisionSpec
        ),
    ] = Field(
        default_factory=PrecisionSpec,
        description="bf16, fp16 or fp8, or a mapping with loss_scale.",
    )
    recompute: Annotated[
        RecomputeSpec,
        BeforeValidator(
            _mapping_from_shorthand("mode"), json_schema_input_type=RecomputeMode | RecomputeSpec
        ),
    ] = Field(default_factory=RecomputeSpec, description="Activation recomputation mode.")
    batch: BatchSpec = Field(description="Micro and global batch sizes, in sequences.")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="AdamW settings.")
    schedule: ScheduleSpec = Field(description="Learning-rate schedule.")
    stages: list[StageSpec] = Field(min_length=1, description="Training stages, run in order.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpointing.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Held-out evaluation.")
    watchdog: WatchdogSpec = Field(default_factory=WatchdogSpec, description="Loss anomaly policy.")
    allow_over_memory: bool = Field(
        False, description="Accept a plan whose memory estimate exceeds the accelerator's memory."
    )
    mfu: float = Field(
        0.4, gt=0, le=1, description="Model FLOPs utilisation assumed when estimating time."
    )
    target_loss: float | None = Field(
        None,
        gt=0,
        le=20,
        description="Final training loss aimed for; the planner sizes the critical batch from it.",
    )


# ---------------------------------------------------------------- the tokenizer job

PRETRAIN_KIND = "pretrain"
TOKENIZER_KIND = "tokenizer"
JOB_KINDS = (PRETRAIN_KIND, TOKENIZER_KIND)
# The trainer's embedded corpora (`trainer.data.EMBEDDED_CORPORA`; a test holds them equal).
EMBEDDED_CORPORA = ("code", "en", "zh")
EMBEDDED_CORPUS_PREFIXES = ("embedded://", "embedded:")
# Options only one mode reads; the tokenizer library refuses them in the other.
TRAIN_ONLY_OPTIONS = ("vocab_size", "model", "domain_tokens", "spare", "limit_alphabet")
EXPAND_ONLY_OPTIONS = ("base", "add")
BANNED_REGEX_PREFIX = "re:"

CorpusPath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=4096,
        description="`embedded:code`, `embedded:en` or `embedded:zh`; an absolute path; or a path "
        "relative to the data root (the data volume, settings.data_root). A file (.jsonl: one "
        '{"text": ...} a line; any other file is one document) or a folder of such files.',
    ),
]
CorpusName = Annotated[
    str, Field(min_length=1, max_length=IDENTIFIER_MAX_LENGTH, pattern=IDENTIFIER_PATTERN)
]


class TokenizerOptionsSpec(_Section):
    """The tokenizer library's options (`trainer.tokenizer.job`); unset means its default."""

    vocab_size: PositiveInt | None = Field(
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
    spare: NonNegativeInt | None = Field(
        None, description="train: reserved special tokens <|reserved_i|> (default 1000)."
    )
    pad_to_multiple_of: PositiveInt | None = Field(
        None,
        description="Embedding rows are rounded up to this (default 128; expand: the base's).",
    )
    limit_alphabet: PositiveInt | None = Field(
        None, description="train, bpe and wordpiece: most characters in the alphabet."
    )
    base: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="expand (required): the tokenizer to grow, a directory or tokenizer.json; "
        "a relative path is under the checkpoint root, where tokenizer jobs write theirs "
        "(`<name>-<id>/tokenizer`).",
    )
    add: PositiveInt | None = Field(None, description="expand (required): tokens to add.")
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


class TokenizerResourcesSpec(_Section):
    """The one CPU machine (a pod) a tokenizer job runs on."""

    cpu: int = Field(8, gt=0, le=1024, description="CPU cores, requested and the limit.")
    memory_gib: float = Field(
        64.0,
        gt=0,
        le=16384,
        description="Memory in GiB, requested and the limit: the corpora and merge tables.",
    )


class TokenizerJobSpec(_Section):
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


# ---------------------------------------------------------------- results and errors


class Problem(BaseModel):
    """One thing wrong (or worth a warning) in a spec: the field path and what to do about it."""

    loc: list[str | int] = Field(description='Path of the field, e.g. ["stages", 1, "seq_length"].')
    msg: str = Field(description="What is wrong and how to fix it, quoting the numbers.")
    type: str = Field(
        "value_error", description="Kind of problem: a pydantic error type, value_error or warning."
    )

    @property
    def path(self) -> str:
        """The loc as a person writes it: `stages[1].seq_length`."""
        return format_loc(self.loc)

    def __str__(self) -> str:
        return f"{self.path}: {self.msg}" if self.loc else self.msg


class SpecInvalid(ServiceError):
    """The spec cannot run; `problems` lists every reason, each with its field path."""

    status_code = 422

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        count = f"{len(problems)} problems" if len(problems) != 1 else "1 problem"
        super().__init__(f"invalid job spec ({count}): " + "; ".join(map(str, problems)))


class StagePlan(BaseModel):
    """What one stage works out to in steps."""

    stage: str = Field(description="Stage name.")
    seq_length: int = Field(description="Tokens per sequence.")
    rope_base: float = Field(description="RoPE base in effect: the stage's, else the model's.")
    tokens_per_step: int = Field(description="global_batch_size × seq_length.")
    train_iters: int = Field(description="Optimizer steps: tokens // tokens_per_step.")
    tokens_trained: int = Field(
        description="train_iters × tokens_per_step; at most the tokens asked for."
    )


class Derived(BaseModel):
    """Numbers the spec implies, computed once here so every consumer agrees on them."""

    world_size: int = Field(description="Training processes: nodes × gpus_per_node.")
    data_parallel: int = Field(
        description="Model replicas: world_size / (tensor × pipeline × context)."
    )
    num_microbatches: int = Field(description="Micro-batches each process runs per optimizer step.")
    stages: list[StagePlan] = Field(description="Steps and tokens of each stage, in order.")
    total_train_iters: int = Field(description="Optimizer steps over all stages.")
    warmup_iters: int = Field(
        description="Warmup steps, counted at the first stage's tokens per step."
    )


class ValidatedSpec(BaseModel):
    """A spec that passed every rule, with its resolved model and derived numbers."""

    spec: JobSpec = Field(description="The spec as submitted, with defaults filled in.")
    model: ModelArch = Field(description="The resolved architecture: preset merged with overrides.")
    warnings: list[Problem] = Field(
        description="Things that will work, but perhaps not as intended."
    )
    derived: Derived = Field(description="Step counts and parallel sizes the spec implies.")


class ValidatedTokenizerSpec(BaseModel):
    """A tokenizer job spec that passed every rule."""

    spec: TokenizerJobSpec = Field(description="The spec as submitted, with defaults filled in.")
    warnings: list[Problem] = Field(
        default_factory=list, description="Things that will work, but perhaps not as intended."
    )


def format_loc(loc: Iterable[str | int]) -> str:
    """`["stages", 1, "seq_length"]` → `stages[1].seq_length`."""
    text = ""
    for segment in loc:
        text += f"[{segment}]" if isinstance(segment, int) else f".{segment}" if text else segment
    return text


# ---------------------------------------------------------------- parsing


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e6` and `3e-4` as numbers, as JSON and YAML 1.2 do.

    PyYAML follows YAML 1.1, where a float needs a dot, so `tokens: 2e12` would be a string.
    """


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _body_problem(msg: str, problem_type: str = "value_error") -> SpecInvalid:
    return SpecInvalid([Problem(loc=["body"], msg=msg, type=problem_type)])


def parse_spec_text(text: str | bytes) -> dict:
    """The mapping in a JSON or YAML document; SpecInvalid at loc ["body"] if there is none."""
    try:
        return _parse_mapping(text)
    except RecursionError:
        raise _body_problem("the job spec is nested too deeply", "syntax_error") from None


def _parse_mapping(text: str | bytes) -> dict:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _body_problem(
                f"the job spec is not UTF-8 text (bad byte at offset {error.start})", "syntax_error"
            ) from None
    document = _load_json_or_yaml(text)
    if document is None:
        raise _body_problem(
            "the job spec is empty; expected a mapping of fields such as name, model, stages"
        )
    if not isinstance(document, dict):
        raise _body_problem(
            f"the job spec must be a mapping of fields at the top level, not {_kind_of(document)}"
        )
    return document


def _load_json_or_yaml(text: str) -> Any:
    """JSON when the text is JSON; otherwise YAML, of which JSON is nearly a subset."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as json_error:
        # Text that opens like JSON was meant as JSON: its error is the one worth reporting.
        if text.lstrip().startswith(("{", "[")):
            raise _body_problem(
                f"invalid JSON at line {json_error.lineno} column {json_error.colno}: {json_error.msg}",
                "syntax_error",
            ) from None
    try:
        # A SafeLoader subclass: plain data only, never arbitrary Python objects.
        document = yaml.load(text, Loader=_SpecLoader)
    except yaml.YAMLError as yaml_error:
        raise _body_problem(_describe_yaml_error(yaml_error), "syntax_error") from None
    if _expanded_size(document) > MAX_DOCUMENT_NODES:
        raise _body_problem(
            f"the job spec expands to more than {MAX_DOCUMENT_NODES} values through YAML "
            "aliases; write it out without nested aliases"
        )
    return document


def _expanded_size(node: Any, sizes: dict[int, int] | None = None) -> int:
    """Values in a document once its YAML aliases are expanded, counted in linear time."""
    sizes = {} if sizes is None else sizes
    if id(node) not in sizes:
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1} column {mark.column + 1}: {problem}"


def _kind_of(value: Any) -> str:
    """`a list`, `an integer`: what a value is, for messages."""
    kinds = (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "a list"),
    )
    return next(
        (kind for cls, kind in kinds if isinstance(value, cls)), f"a {type(value).__name__}"
    )


# ---------------------------------------------------------------- pydantic errors → problems

_PATTERN_HINTS = {
    NAME_PATTERN: "use lowercase letters, digits and '-', starting with a letter and ending "
    "with a letter or digit",
    IDENTIFIER_PATTERN: "use lowercase letters, digits, '_' and '-', starting with a letter",
}


def _model_inside(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds, looking through Optional and unions."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for member in get_args(annotation):
            if (model := _model_inside(member)) is not None:
                return model
    return None


def _item_inside(annotation: Any) -> Any:
    """The item type of a list annotation, looking through Optional."""
    if get_origin(annotation) is list:
        return get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        for member in get_args(annotation):
            if get_origin(member) is list:
                return get_args(member)[0]
    return None


def _clean_loc(
    raw_loc: tuple[str | int, ...], error_type: str, root: type[BaseModel] = JobSpec
) -> tuple[list[str | int], type[BaseModel] | None]:
    """The user's field path without pydantic's internal segments, and the model it ends in.

    Pydantic inserts union members and validator tags (`function-before[...]`, `str`) into
    locations; walking the spec's own models keeps exactly the segments that are fields or
    list indexes, plus the offending key of an unknown-field error.
    """
    loc: list[str | int] = []
    annotation: Any = root
    owner: type[BaseModel] | None = root
    for position, segment in enumerate(raw_loc):
        if isinstance(segment, int):
            loc.append(segment)
            annotation = _item_inside(annotation)
            continue
        model = _model_inside(annotation)
        if model is not None and segment in model.model_fields:
            loc.append(segment)
            owner = model
            annotation = model.model_fields[segment].annotation
        elif error_type == "extra_forbidden" and position == len(raw_loc) - 1:
            loc.append(segment)
            owner = model
    return loc, owner


def _readable_message(
    error: ErrorDetails, loc: list[str | int], owner: type[BaseModel] | None
) -> str:
    """Pydantic's message rewritten to name the field and quote the value."""
    error_type = error["type"]
    field = format_loc(loc) or "the job spec"
    given = error.get("input")
    if error_type == "missing":
        return f"{field} is required"
    if error_type == "extra_forbidden":
        unknown = str(loc[-1]) if loc else "?"
        allowed = list(owner.model_fields) if owner is not None else []
        section = format_loc(loc[:-1]) or "the top level"
        msg = f"unknown field {unknown!r} in {section}"
        if close := difflib.get_close_matches(unknown, allowed, n=1):
            msg += f"; did you mean {close[0]!r}?"
        return msg + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if error_type in ("model_type", "model_attributes_type", "dict_type"):
        return f"{field} should be a mapping of fields, not {_kind_of(given)} ({given!r})"
    if error_type == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(str(error.get("ctx", {}).get("pattern")), "")
        return f"{field} {given!r} is not allowed" + (f": {hint}" if hint else "")
    msg = error["msg"].removeprefix("Value error, ")
    msg = re.sub(r"^(Input|Value|String|List)\b", field, msg)
    if (isinstance(given, int | float | str | bool) or given is None) and "got" not in msg:
        msg += f" (got {given!r})"
    return msg


def _problems_from_validation_error(
    error: ValidationError, root: type[BaseModel] = JobSpec
) -> list[Problem]:
    problems = []
    for detail in error.errors(include_url=False):
        loc, owner = _clean_loc(detail["loc"], detail["type"], root)
        problems.append(
            Problem(loc=loc, msg=_readable_message(detail, loc, owner), type=detail["type"])
        )
    return problems


# ---------------------------------------------------------------- model resolution

_REQUIRED_ARCH_FIELDS = tuple(name for name, f in ModelArch.model_fields.items() if f.is_required())
_REQUIRED_MOE_FIELDS = tuple(name for name, f in MoEArch.model_fields.items() if f.is_required())


def _resolve_model(model: ModelSpec) -> tuple[ModelArch | None, list[Problem]]:
    """The preset merged with the explicit fields, or the problems that prevent it."""
    base: dict[str, Any] = {}
    if model.preset is not None:
        if model.preset not in PRESETS:
            msg = f"unknown preset {model.preset!r}; known presets: {', '.join(PRESETS)}"
            return None, [Problem(loc=["model", "preset"], msg=msg)]
        base = PRESETS[model.preset].model_dump()
    merged = base | model.model_dump(exclude={"preset", "moe"}, exclude_none=True)
    hint = f"set it, or start from a preset ({', '.join(PRESETS)})"
    problems = [
        Problem(
            loc=["model", name],
            msg=f"model.{name} is required without a preset; {hint}",
            type="missing",
        )
        for name in _REQUIRED_ARCH_FIELDS
        if name not in merged
    ]
    if model.moe is not None:
        merged["moe"] = (base.get("moe") or {}) | model.moe.model_dump(exclude_none=True)
        problems += [
            Problem(
                loc=["model", "moe", name],
                msg=f"model.moe.{name} is required: there are no preset MoE layers to take it from",
                type="missing",
            )
            for name in _REQUIRED_MOE_FIELDS
            if name not in merged["moe"]
        ]
    if problems:
        return None, problems
    return ModelArch.model_validate(merged), []


# ---------------------------------------------------------------- cross-field rules


@dataclass(frozen=True)
class _Context:
    """The spec and the numbers most rules read."""

    spec: JobSpec
    resolved_model: ModelArch | None

    @property
    def model(self) -> ModelArch:
        assert self.resolved_model is not None, (
            "rule needs the model; decorate it with _needs_model"
        )
        return self.resolved_model

    @property
    def parallel(self) -> ParallelismSpec:
        return self.spec.parallelism

    @property
    def world_size(self) -> int:
        return self.spec.resources.world_size

    @property
    def model_parallel(self) -> int:
        """Processes holding one replica of the model: tensor × pipeline × context."""
        return self.parallel.tensor * self.parallel.pipeline * self.parallel.context

    @property
    def data_parallel(self) -> int | None:
        """Model replicas, or None when the world size does not split into whole replicas."""
        if self.world_size % self.model_parallel:
            return None
        return self.world_size // self.model_parallel

    @property
    def num_microbatches(self) -> int | None:
        """Micro-batches per process per step, or None when the global batch does not split."""
        if self.data_parallel is None:
            return None
        per_step = self.spec.batch.micro_batch_size * self.data_parallel
        if self.spec.batch.global_batch_size % per_step:
            return None
        return self.spec.batch.global_batch_size // per_step

    def tokens_per_step(self, stage: StageSpec) -> int:
        return self.spec.batch.global_batch_size * stage.seq_length

    def layers_per_model_chunk(self) -> int | None:
        """Layers in each pipeline stage's chunk (each virtual chunk when interleaved)."""
        chunks = self.parallel.pipeline * (self.parallel.virtual_pipeline or 1)
        return self.model.num_layers // chunks if self.model.num_layers % chunks == 0 else None


Rule = Callable[[_Context], Iterable[Problem]]


def _needs_model(rule: Rule) -> Rule:
    """Skip a rule that reads the architecture when the model could not be resolved."""

    @functools.wraps(rule)
    def guarded(context: _Context) -> Iterable[Problem]:
        return rule(context) if context.resolved_model is not None else ()

    return guarded


def _divisors(number: int) -> list[int]:
    return [d for d in range(1, number + 1) if number % d == 0]


def _multiples_near(value: int, step: int) -> str:
    """`96 or 112`: the multiples of step on either side of value (the upper alone if below step)."""
    lower = value // step * step
    upper = lower + step
    return f"{lower} or {upper}" if lower > 0 else f"{upper}"


def _problem(loc: list[str | int], msg: str) -> Problem:
    return Problem(loc=loc, msg=msg)


@_needs_model
def _hidden_divisible_by_heads(context: _Context) -> Iterator[Problem]:
    model = context.model
    if model.hidden_size % model.num_attention_heads:
        yield _problem(
            ["model", "hidden_size"],
            f"hidden_size {model.hidden_size} is not divisible by num_attention_heads "
            f"{model.num_attention_heads}; pick a multiple of {model.num_attention_heads} such as "
            f"{_multiples_near(model.hidden_size, model.num_attention_heads)}",
        )


@_needs_model
def _heads_and_groups_divisible_by_tensor(context: _Context) -> Iterator[Problem]:
    tensor = context.parallel.tensor
    for name in ("num_attention_heads", "num_query_groups"):
        count = getattr(context.model, name)
        if count % tensor:
            fitting = [d for d in _divisors(count) if d <= max(tensor, 8)]
            yield _problem(
                ["parallelism", "tensor"],
                f"{name} {count} is not divisible by tensor {tensor}; every tensor rank needs whole "
                f"heads, so use a tensor size that divides {count} ({', '.join(map(str, fitting))})",
            )


@_needs_model
def _heads_divisible_by_query_groups(context: _Context) -> Iterator[Problem]:
    model = context.model
    if model.num_attention_heads % model.num_query_groups:
        yield _problem(
            ["model", "num_query_groups"],
            f"num_attention_heads {model.num_attention_heads} is not divisible by num_query_groups "
            f"{model.num_query_groups}; use one of {', '.join(map(str, _divisors(model.num_attention_heads)))}",
        )


@_needs_model
def _layers_split_evenly_across_pipeline(context: _Context) -> Iterator[Problem]:
    layers, pipeline, virtual = (
        context.model.num_layers,
        context.parallel.pipeline,
        context.parallel.virtual_pipeline,
    )
    if layers % pipeline:
        yield _problem(
            ["parallelism", "pipeline"],
            f"num_layers {layers} is not divisible by pipeline {pipeline}; use a pipeline size that "
            f"divides {layers} ({', '.join(map(str, _divisors(layers)))})",
        )
    elif virtual is not None and (layers // pipeline) % virtual:
        per_stage = layers // pipeline
        yield _problem(
            ["parallelism", "virtual_pipeline"],
            f"each pipeline stage holds {per_stage} layers (num_layers {layers} / pipeline {pipeline}), "
            f"which do not split into virtual_pipeline {virtual} chunks; use one of "
            f"{', '.join(map(str, _divisors(per_stage)))}",
        )


def _virtual_pipeline_needs_pipeline(context: _Context) -> Iterator[Problem]:
    pipeline, virtual = context.parallel.pipeline, context.parallel.virtual_pipeline
    if virtual is None:
        return
    # megatron-core 0.16 refuses an interleaved schedule unless pipeline > 1 (older releases: > 2).
    if pipeline < 2:
        yield _problem(
            ["parallelism", "virtual_pipeline"],
            f"virtual_pipeline {virtual} interleaves pipeline stages, but pipeline is {pipeline}; "
            "set pipeline to 2 or more, or remove virtual_pipeline",
        )
        return
    microbatches = context.num_microbatches
    # The interleaved schedule runs micro-batches in groups of `pipeline`; a partial group stalls.
    if microbatches is not None and microbatches % pipeline:
        yield _problem(
            ["parallelism", "virtual_pipeline"],
            f"the interleaved schedule needs the micro-batches per step ({microbatches} = "
            f"global_batch_size {context.spec.batch.global_batch_size} / (micro_batch_size "
            f"{context.spec.batch.micro_batch_size} × data_parallel {context.data_parallel})) to be a "
            f"multiple of pipeline {pipeline}; change the global batch or remove virtual_pipeline",
        )


@_needs_model
def _full_recompute_divides_layers(context: _Context) -> Iterator[Problem]:
    recompute = context.spec.recompute
    per_chunk = context.layers_per_model_chunk()
    if recompute.mode != "full" or recompute.recompute_layers is None or per_chunk is None:
        return
    if per_chunk % recompute.recompute_layers:
        yield _problem(
            ["recompute", "recompute_layers"],
            f"recompute_layers {recompute.recompute_layers} does not divide the {per_chunk} layers of "
            f"each pipeline chunk (num_layers {context.model.num_layers} / pipeline "
            f"{context.parallel.pipeline} / virtual_pipeline {context.parallel.virtual_pipeline or 1}); "
            f"use one of {', '.join(map(str, _divisors(per_chunk)))}",
        )


def _world_splits_into_model_replicas(context: _Context) -> Iterator[Problem]:
    if context.data_parallel is None:
        parallel, resources = context.parallel, context.spec.resources
        yield _problem(
            ["parallelism"],
            f"world size {context.world_size} (nodes {resources.nodes} × gpus_per_node "
            f"{resources.gpus_per_node}) is not divisible by tensor {parallel.tensor} × pipeline "
            f"{parallel.pipeline} × context {parallel.context} = {context.model_parallel}; change the "
            f"parallel sizes or the GPU count so that {context.model_parallel} divides the world size",
        )


def _expert_parallel_fits(context: _Context) -> Iterator[Problem]:
    expert = context.parallel.expert
    moe = context.resolved_model.moe if context.resolved_model is not None else None
    if context.resolved_model is not None and moe is None and expert > 1:
        yield _problem(
            ["parallelism", "expert"],
            f"expert {expert} needs a mixture-of-experts model, but the model has no moe section; "
            "set expert to 1 or add model.moe",
        )
    if moe is not None:
        if moe.num_experts % expert:
            yield _problem(
                ["parallelism", "expert"],
                f"num_experts {moe.num_experts} is not divisible by expert {expert}; use one of "
                f"{', '.join(map(str, _divisors(moe.num_experts)))}",
            )
        if moe.top_k > moe.num_experts:
            yield _problem(
                ["model", "moe", "top_k"],
                f"top_k {moe.top_k} exceeds num_experts {moe.num_experts}; a token cannot be routed to "
                "more experts than exist",
            )
    data_parallel = context.data_parallel
    # megatron-core lays experts out over tensor × expert × pipeline ranks (expert tensor size =
    # tensor), so the world size must be a multiple of that, i.e. expert | data_parallel × context.
    if (
        expert > 1
        and data_parallel is not None
        and (data_parallel * context.parallel.context) % expert
    ):
        yield _problem(
            ["parallelism", "expert"],
            f"expert {expert} must divide data_parallel {data_parallel} × context "
            f"{context.parallel.context} = {data_parallel * context.parallel.context}; experts are "
            "spread over the data-parallel (and context) ranks of each model replica",
        )


def _global_batch_splits_into_microbatches(context: _Context) -> Iterator[Problem]:
    batch, data_parallel = context.spec.batch, context.data_parallel
    if data_parallel is None:
        return
    per_step = batch.micro_batch_size * data_parallel
    if batch.global_batch_size % per_step:
        yield _problem(
            ["batch", "global_batch_size"],
            f"global_batch_size {batch.global_batch_size} is not divisible by micro_batch_size "
            f"{batch.micro_batch_size} × data_parallel {data_parallel} = {per_step} (data_parallel = "
            f"world size {context.world_size} / {context.model_parallel} ranks per model replica); "
            f"use a multiple of {per_step} such as {_multiples_near(batch.global_batch_size, per_step)}",
        )


def _sequence_parallel_needs_tensor(context: _Context) -> Iterator[Problem]:
    if context.parallel.sequence_parallel and context.parallel.tensor < 2:
        yield _problem(
            ["parallelism", "sequence_parallel"],
            f"sequence_parallel shards activations across tensor ranks, but tensor is "
            f"{context.parallel.tensor}; set tensor to 2 or more, or turn sequence_parallel off",
        )


def _offload_needs_distributed_optimizer(context: _Context) -> Iterator[Problem]:
    if context.parallel.optimizer_offload and not context.parallel.distributed_optimizer:
        yield _problem(
            ["parallelism", "optimizer_offload"],
            "optimizer_offload moves the distributed optimizer's shards to host memory; set "
            "distributed_optimizer to true as well, or turn optimizer_offload off",
        )


def _precision_supported_by_gpu(context: _Context) -> Iterator[Problem]:
    dtype, gpu_type = context.spec.precision.dtype, context.spec.resources.gpu_type
    if dtype == "fp8" and gpu_type not in FP8_GPU_TYPES:
        yield _problem(
            ["precision", "dtype"],
            f"fp8 needs FP8 tensor cores (Ada, Hopper or Blackwell: {', '.join(sorted(FP8_GPU_TYPES))}); "
            f"gpu_type {gpu_type} has none, so use bf16",
        )
    if dtype == "bf16" and gpu_type in BF16_UNSUPPORTED_GPU_TYPES:
        yield _problem(
            ["precision", "dtype"],
            f"gpu_type {gpu_type} has no bf16 support; use fp16 with loss scaling",
        )


@_needs_model
def _sequences_fit_positions(context: _Context) -> Iterator[Problem]:
    limit = context.model.max_position_embeddings
    for index, stage in enumerate(context.spec.stages):
        if stage.seq_length > limit:
            yield _problem(
                ["stages", index, "seq_length"],
                f"stage {stage.name!r} seq_length {stage.seq_length} exceeds the model's "
                f"max_position_embeddings {limit}; shorten the sequences or raise "
                "model.max_position_embeddings",
            )


def _sequences_split_across_context(context: _Context) -> Iterator[Problem]:
    parallel = context.parallel
    # Context parallelism cuts each sequence into 2 × context chunks (for load balance under the
    # causal mask); sequence parallelism further splits every chunk across the tensor ranks.
    reasons = []
    divisor = 1
    if parallel.context > 1:
        divisor *= 2 * parallel.context
        reasons.append(f"2 × context {parallel.context}")
    if parallel.sequence_parallel and parallel.tensor > 1:
        divisor *= parallel.tensor
        reasons.append(f"tensor {parallel.tensor} for sequence_parallel")
    if divisor == 1:
        return
    for index, stage in enumerate(context.spec.stages):
        if stage.seq_length % divisor:
            yield _problem(
                ["stages", index, "seq_length"],
                f"stage {stage.name!r} seq_length {stage.seq_length} is not divisible by {divisor} "
                f"({' × '.join(reasons)}); use a multiple of {divisor} such as "
                f"{_multiples_near(stage.seq_length, divisor)}",
            )


def _stage_names_unique(context: _Context) -> Iterator[Problem]:
    first_index: dict[str, int] = {}
    for index, stage in enumerate(context.spec.stages):
        if stage.name in first_index:
            yield _problem(
                ["stages", index, "name"],
                f"stage name {stage.name!r} is already used by stages[{first_index[stage.name]}]; "
                "give every stage its own name",
            )
        first_index.setdefault(stage.name, index)


def _channels_unique_within_stage(context: _Context) -> Iterator[Problem]:
    for stage_index, stage in enumerate(context.spec.stages):
        first_index: dict[str, int] = {}
        for index, source in enumerate(stage.data):
            if source.channel in first_index:
                yield _problem(
                    ["stages", stage_index, "data", index, "channel"],
                    f"channel {source.channel!r} appears twice in stage {stage.name!r} (also at "
                    f"data[{first_index[source.channel]}]); merge the two or rename one",
                )
            first_index.setdefault(source.channel, index)


def _mixture_weights_sum_to_one(context: _Context) -> Iterator[Problem]:
    for index, stage in enumerate(context.spec.stages):
        total = math.fsum(source.weight for source in stage.data)
        if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
            terms = " + ".join(f"{source.channel} {source.weight:g}" for source in stage.data)
            yield _problem(
                ["stages", index, "data"],
                f"the data weights of stage {stage.name!r} sum to {total:.6g} ({terms}), not 1; "
                "scale them so that they add up to 1",
            )


def _warmup_fits(context: _Context) -> Iterator[Problem]:
    schedule, first = context.spec.schedule, context.spec.stages[0]
    if schedule.warmup_tokens >= first.tokens:
        # A warmup this long also overruns any decay; one problem says enough.
        yield _problem(
            ["schedule", "warmup_tokens"],
            f"warmup_tokens {schedule.warmup_tokens} is not shorter than the first stage "
            f"{first.name!r} ({first.tokens} tokens); warm up over a small part of it, e.g. "
            f"{max(first.tokens // 100, 1)} tokens (1%)",
        )
        return
    total = sum(stage.tokens for stage in context.spec.stages)
    decay_tokens = round(schedule.decay_fraction * total)
    if schedule.kind == "wsd" and schedule.warmup_tokens + decay_tokens > total:
        yield _problem(
            ["schedule", "decay_fraction"],
            f"warmup ({schedule.warmup_tokens} tokens) plus the WSD decay (decay_fraction "
            f"{schedule.decay_fraction:g} × {total} = {decay_tokens} tokens) exceed the job's {total} "
            "tokens; shorten the warmup or the decay",
        )


def _every_stage_trains_a_step(context: _Context) -> Iterator[Problem]:
    batch = context.spec.batch
    for index, stage in enumerate(context.spec.stages):
        step = context.tokens_per_step(stage)
        if stage.tokens < step:
            yield _problem(
                ["stages", index, "tokens"],
                f"stage {stage.name!r} has {stage.tokens} tokens, fewer than one step of "
                f"global_batch_size {batch.global_batch_size} × seq_length {stage.seq_length} = {step} "
                f"tokens; give it at least {step} tokens",
            )


@_needs_model
def _model_vocab_holds_tokenizer(context: _Context) -> Iterator[Problem]:
    tokenizer = context.spec.tokenizer
    if tokenizer is None or tokenizer.vocab_size is None:
        return
    needed = tokenizer.vocab_size + tokenizer.extra_vocab_size
    if context.model.vocab_size < needed:
        padded = math.ceil(needed / VOCAB_PADDING_MULTIPLE) * VOCAB_PADDING_MULTIPLE
        yield _problem(
            ["model", "vocab_size"],
            f"model vocab_size {context.model.vocab_size} is smaller than tokenizer vocab_size "
            f"{tokenizer.vocab_size} + extra_vocab_size {tokenizer.extra_vocab_size} = {needed}; raise "
            f"it to at least {needed} ({padded} keeps it a multiple of {VOCAB_PADDING_MULTIPLE})",
        )


def _min_lr_not_above_lr(context: _Context) -> Iterator[Problem]:
    optimizer = context.spec.optimizer
    if optimizer.min_lr > optimizer.lr:
        yield _problem(
            ["optimizer", "min_lr"],
            f"min_lr {optimizer.min_lr:g} is above lr {optimizer.lr:g}; the schedule decays from lr "
            "down to min_lr, so set min_lr at most lr (commonly lr / 10)",
        )


# Run in this order; every rule runs, so one response lists every problem.
def _corrupt_steps_inside_their_stage(context: _Context) -> Iterator[Problem]:
    # A range outside the stage that names the channel would silently inject nothing.
    first_step = 0
    for stage_index, stage in enumerate(context.spec.stages):
        last_step = first_step + stage.tokens // context.tokens_per_step(stage)
        for source_index, source in enumerate(stage.data):
            for range_index, (start, end) in enumerate(source.corrupt_steps):
                if not first_step <= start < end <= last_step:
                    yield _problem(
                        ["stages", stage_index, "data", source_index, "corrupt_steps", range_index],
                        f"[{start}, {end}) is not a non-empty range inside stage {stage.name!r}, "
                        f"which trains steps [{first_step}, {last_step})",
                    )
        first_step = last_step


_RULES: tuple[Rule, ...] = (
    _hidden_divisible_by_heads,
    _heads_and_groups_divisible_by_tensor,
    _heads_divisible_by_query_groups,
    _layers_split_evenly_across_pipeline,
    _virtual_pipeline_needs_pipeline,
    _full_recompute_divides_layers,
    _world_splits_into_model_replicas,
    _expert_parallel_fits,
    _global_batch_splits_into_microbatches,
    _sequence_parallel_needs_tensor,
    _offload_needs_distributed_optimizer,
    _precision_supported_by_gpu,
    _sequences_fit_positions,
    _sequences_split_across_context,
    _stage_names_unique,
    _channels_unique_within_stage,
    _mixture_weights_sum_to_one,
    _warmup_fits,
    _every_stage_trains_a_step,
    _corrupt_steps_inside_their_stage,
    _model_vocab_holds_tokenizer,
    _min_lr_not_above_lr,
)


# ---------------------------------------------------------------- warnings


def _warn_tokens_rounded_to_steps(context: _Context) -> Iterator[Problem]:
    for index, stage in enumerate(context.spec.stages):
        step = context.tokens_per_step(stage)
        steps = stage.tokens // step
        if stage.tokens % step:
            yield _problem(
                ["stages", index, "tokens"],
                f"stage {stage.name!r} asks for {stage.tokens} tokens, not a whole number of steps of "
                f"{context.spec.batch.global_batch_size} × {stage.seq_length} = {step} tokens; it will "
                f"train {steps} steps = {steps * step} tokens ({steps + 1} steps = "
                f"{(steps + 1) * step} tokens would cover the request)",
            )


def _warn_ignored_settings(context: _Context) -> Iterator[Problem]:
    spec = context.spec
    if "loss_scale" in spec.precision.model_fields_set and spec.precision.dtype != "fp16":
        yield _problem(
            ["precision", "loss_scale"],
            f"loss_scale only applies to fp16; it is ignored with {spec.precision.dtype}",
        )
    if spec.schedule.kind != "wsd":
        for name in ("decay_fraction", "decay_shape"):
            if name not in spec.schedule.model_fields_set:
                continue
            yield _problem(
                ["schedule", name],
                f"{name} only applies to the wsd schedule; it is ignored with {spec.schedule.kind}",
            )
    if spec.recompute.recompute_layers is not None and spec.recompute.mode != "full":
        yield _problem(
            ["recompute", "recompute_layers"],
            f"recompute_layers only applies to mode full; it is ignored with {spec.recompute.mode}",
        )


@_needs_model
def _warn_rope_base_falls_back(context: _Context) -> Iterator[Problem]:
    # A stage without rope_base uses the model's, not the previous stage's: an anneal after a
    # long-context stage that forgets to repeat the larger base would silently shrink it again.
    previous: tuple[str, float] | None = None
    for index, stage in enumerate(context.spec.stages):
        rope_base = stage.rope_base or context.model.rope_base
        if previous is not None and stage.rope_base is None and rope_base < previous[1]:
            yield _problem(
                ["stages", index, "rope_base"],
                f"stage {stage.name!r} sets no rope_base, so it returns to the model's {rope_base:g} "
                f"after stage {previous[0]!r} trained with {previous[1]:g}; set rope_base on this "
                "stage if that is not intended",
            )
        previous = (stage.name, rope_base)


def _warn_fault_injection(context: _Context) -> Iterator[Problem]:
    for index, stage in enumerate(context.spec.stages):
        for source_index, source in enumerate(stage.data):
            if source.corrupt_steps:
                spans = ", ".join(f"[{start}, {end})" for start, end in source.corrupt_steps)
                yield _problem(
                    ["stages", index, "data", source_index, "corrupt_steps"],
                    f"channel {source.channel!r} trains on random tokens at steps {spans} on "
                    "purpose (fault injection); remove corrupt_steps for a real run",
                )


def _warn_rollback_target_may_be_pruned(context: _Context) -> Iterator[Problem]:
    # The attempt keeps saving (and pruning to keep_last) until the controller stops it, so the
    # checkpoint a rollback picks (at least rollback_margin_steps before the onset, found
    # recover_window_steps after it) must outlive about one more interval of saves.
    spec = context.spec
    if spec.watchdog.rollback != "auto":
        return
    checkpoint, watchdog = spec.checkpoint, spec.watchdog
    reach = watchdog.rollback_margin_steps + watchdog.recover_window_steps + 2 * checkpoint.interval_steps
    kept = checkpoint.keep_last * checkpoint.interval_steps
    if kept < reach:
        yield _problem(
            ["checkpoint", "keep_last"],
            f"keep_last {checkpoint.keep_last} × interval_steps {checkpoint.interval_steps} = {kept} steps "
            f"of checkpoints, but a rollback reaches back about {reach} steps (rollback_margin_steps "
            f"{watchdog.rollback_margin_steps} + recover_window_steps {watchdog.recover_window_steps} "
            f"+ two intervals); the checkpoint it needs may already be deleted: keep at least "
            f"{-(-reach // checkpoint.interval_steps)}",
        )


_WARNINGS: tuple[Rule, ...] = (
    _warn_fault_injection,
    _warn_rollback_target_may_be_pruned,
    _warn_tokens_rounded_to_steps,
    _warn_ignored_settings,
    _warn_rope_base_falls_back,
)


# ---------------------------------------------------------------- entry point


def _derive(context: _Context) -> Derived:
    """The step counts the spec implies; call only once every rule has passed."""
    assert context.data_parallel is not None and context.num_microbatches is not None
    plans = []
    for stage in context.spec.stages:
        step = context.tokens_per_step(stage)
        iters = stage.tokens // step
        plans.append(
            StagePlan(
                stage=stage.name,
                seq_length=stage.seq_length,
                rope_base=stage.rope_base or context.model.rope_base,
                tokens_per_step=step,
                train_iters=iters,
                tokens_trained=iters * step,
            )
        )
    return Derived(
        world_size=context.world_size,
        data_parallel=context.data_parallel,
        num_microbatches=context.num_microbatches,
        stages=plans,
        total_train_iters=sum(plan.train_iters for plan in plans),
        warmup_iters=math.ceil(context.spec.schedule.warmup_tokens / plans[0].tokens_per_step),
    )


def validate_spec(raw: dict) -> ValidatedSpec | ValidatedTokenizerSpec:
    """Parse and check a spec mapping; SpecInvalid lists every problem found.

    `kind` picks the schema: `pretrain` (the default, a JobSpec) or `tokenizer` (a
    TokenizerJobSpec, returned as a ValidatedTokenizerSpec).
    """
    if not isinstance(raw, dict):
        raise _body_problem(f"the job spec must be a mapping of fields, not {_kind_of(raw)}")
    kind = raw.get("kind", PRETRAIN_KIND)
    if kind == TOKENIZER_KIND:
        return validate_tokenizer_spec(raw)
    if isinstance(kind, str) and kind not in JOB_KINDS:
        raise SpecInvalid(
            [
                Problem(
                    loc=["kind"],
                    msg=f"unknown kind {kind!r}; use one of {', '.join(JOB_KINDS)}",
                    type="literal_error",
                )
            ]
        )
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecInvalid(_problems_from_validation_error(error)) from None
    model, problems = _resolve_model(spec.model)
    context = _Context(spec=spec, resolved_model=model)
    problems += [problem for rule in _RULES for problem in rule(context)]
    if problems:
        raise SpecInvalid(problems)
    assert model is not None
    warnings = [warning for rule in _WARNINGS for warning in rule(context)]
    for warning in warnings:
        warning.type = "warning"
    return ValidatedSpec(spec=spec, model=model, warnings=warnings, derived=_derive(context))


def validate_tokenizer_spec(raw: dict) -> ValidatedTokenizerSpec:
    """Parse and check a tokenizer job spec; SpecInvalid lists every problem found."""
    try:
        spec = TokenizerJobSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecInvalid(_problems_from_validation_error(error, TokenizerJobSpec)) from None
    if problems := list(_tokenizer_problems(spec)):
        raise SpecInvalid(problems)
    return ValidatedTokenizerSpec(spec=spec)


def _tokenizer_problems(spec: TokenizerJobSpec) -> Iterator[Problem]:
    options = spec.options
    for index, corpus in enumerate(spec.corpora):
        yield from _embedded_corpus_problems(["corpora", index], corpus)
    for name, corpus in (options.report_corpora or {}).items():
        yield from _embedded_corpus_problems(["options", "report_corpora", name], corpus)
    other = "train" if spec.mode == "expand" else "expand"
    for key in TRAIN_ONLY_OPTIONS if spec.mode == "expand" else EXPAND_ONLY_OPTIONS:
        if getattr(options, key) is not None:
            yield _problem(
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
                yield _problem(
                    ["options", "banned", index],
                    f"{line!r} is not a valid regular expression: {error}",
                )


def _embedded_corpus_problems(loc: list[str | int], corpus: str) -> Iterator[Problem]:
    for prefix in EMBEDDED_CORPUS_PREFIXES:
        if corpus.startswith(prefix):
            name = corpus[len(prefix) :]
            if name not in EMBEDDED_CORPORA:
                choices = ", ".join(f"embedded:{known}" for known in EMBEDDED_CORPORA)
                yield _problem(loc, f"unknown embedded corpus {name!r}; use one of {choices}")
            return
