"""`TrainerConfig`: the versioned contract between the service and the trainer.

The service renders one JSON file per attempt; the trainer loads it with `load_config`.
Parsing is strict: an unknown key, a wrong type or a missing required field anywhere is a
`ConfigError` naming its dotted path (`unknown key 'optimizer.lrr'`). `validate` then checks
what only makes sense across fields, given the world size.

Schema, version 1 (`schema_version`; `*` marks required fields, `?` nullable ones):

| section      | fields                                                                        |
| ------------ | ----------------------------------------------------------------------------- |
| job          | id, attempt, name, result_path                                                |
| model*       | num_layers*, hidden_size*, num_attention_heads*, num_query_groups*,           |
|              | ffn_hidden_size*, vocab_size*, max_position_embeddings*, rope_base, norm_eps, |
|              | tie_embeddings, qkv_bias, moe? {num_experts*, top_k*, moe_ffn_hidden_size*,   |
|              | shared_expert_ffn_hidden_size}                                                |
| parallel     | tensor, pipeline, context, expert, virtual_pipeline?, sequence_parallel,      |
|              | distributed_optimizer                                                         |
| precision    | dtype (fp32/bf16/fp16), loss_scale {initial_scale, min_scale,                 |
|              | growth_interval, growth_factor, backoff_factor, hysteresis}                   |
| optimizer    | lr, min_lr, weight_decay, adam_beta1, adam_beta2, adam_eps, clip_grad,        |
|              | z_loss, embedding_grad_scale                                                  |
| schedule     | kind (wsd/cosine/constant), warmup_steps, decay_steps,                        |
|              | decay_shape (linear/cosine/1-sqrt)                                            |
| batch*       | micro_batch_size*, global_batch_size*                                         |
| stages*      | [{name*, steps*, seq_length*, rope_base?, lr_scale,                           |
|              | data* [{channel*, path*, weight*, corrupt, corrupt_kind}]}]                   |
| data         | seed, tokenizer, cache_dir?, skip_ranges                                      |
| checkpoint*  | directory*, interval_steps, keep_last, resume_from?, init_from?, save_initial, pinned, save_on_sigterm |
| eval         | interval_steps, samples_per_channel                                           |
| metrics      | url?, token?, jsonl_path, flush_interval_s, max_buffer, timeout_s             |
| lr_scale     | attempt-wide learning-rate multiplier (a rollback sets it)                    |
| train        | seed, max_nonfinite_steps, log_interval, peak_tflops?, skip_grad_norm_zscore, |
|              | skip_grad_norm_window, skip_grad_norm_min_history, max_consecutive_skips      |
| faults       | lr_blowup_from_step?, lr_blowup_factor, nan_steps, grad_spike_steps,          |
|              | grad_spike_factor (injected faults, for tests and demos)                      |

Ranges (`skip_ranges`, `corrupt`, `nan_steps`, `grad_spike_steps`) are half-open `[start, end)` pairs of integers. Each field's
docstring below says what it means; `json_schema()` carries them as descriptions.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import functools
import inspect
import json
import math
import re
import textwrap
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

SCHEMA_VERSION = 1

Dtype = Literal["fp32", "bf16", "fp16"]
ScheduleKind = Literal["wsd", "cosine", "constant"]
DecayShape = Literal["linear", "cosine", "1-sqrt"]
CorruptKind = Literal["random", "newlines"]

DEFAULT_RESULT_PATH = "/dev/termination-log"
"""Kubernetes' terminationMessagePath: where the trainer says how it ended (see outcome.py)."""


class ConfigError(ValueError):
    """A trainer config that cannot be used; `problems` lists every reason, each with its path."""

    def __init__(self, problems: str | Iterable[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


# ---------------------------------------------------------------- sections


@dataclass(kw_only=True)
class JobConfig:
    """Which job and attempt this run belongs to."""

    id: str = "local"
    """Job id in the service; metrics and checkpoints are posted under it."""
    attempt: int = 0
    """Attempt number; a rollback starts attempt N+1."""
    name: str = "local"
    """Human-readable job name, for logs."""
    result_path: str = DEFAULT_RESULT_PATH
    """File each rank appends its one-line JSON outcome to; skipped when its directory is missing."""


@dataclass(kw_only=True)
class MoEConfig:
    """Mixture-of-experts MLP layers."""

    num_experts: int
    """Routed experts per MoE layer."""
    top_k: int
    """Experts each token is routed to."""
    moe_ffn_hidden_size: int
    """Hidden size of each routed expert's MLP."""
    shared_expert_ffn_hidden_size: int = 0
    """Hidden size of the always-active shared expert; 0 means none."""


@dataclass(kw_only=True)
class ModelConfig:
    """A GPT-style decoder: RoPE, RMSNorm, SwiGLU, grouped-query attention."""

    num_layers: int
    """Transformer layers."""
    hidden_size: int
    """Width of the residual stream."""
    num_attention_heads: int
    """Query heads per layer."""
    num_query_groups: int
    """Key/value heads (grouped-query attention); equal to the heads for plain MHA."""
    ffn_hidden_size: int
    """Hidden size of the dense MLP."""
    vocab_size: int
    """Embedding rows, already padded (e.g. the byte tokenizer's 258 ids padded to 512)."""
    max_position_embeddings: int
    """Longest sequence the model is built for."""
    rope_base: float = 10000.0
    """RoPE base frequency; a stage may override it."""
    norm_eps: float = 1e-5
    """Epsilon of the normalization layers."""
    tie_embeddings: bool = False
    """Share the input embedding with the output projection."""
    qkv_bias: bool = False
    """Add a bias to the query/key/value projection (Qwen-style)."""
    moe: MoEConfig | None = None
    """Mixture-of-experts layers; null for a dense model."""


@dataclass(kw_only=True)
class ParallelConfig:
    """How the model is split across processes; data parallelism takes the rest of the world."""

    tensor: int = 1
    """Tensor-parallel size."""
    pipeline: int = 1
    """Pipeline-parallel size."""
    context: int = 1
    """Context-parallel size (splits the sequence)."""
    expert: int = 1
    """Expert-parallel size (MoE only)."""
    virtual_pipeline: int | None = None
    """Model chunks per pipeline rank (interleaved schedule); null for none."""
    sequence_parallel: bool = False
    """Shard activations along the sequence within the tensor-parallel group."""
    distributed_optimizer: bool = False
    """Shard optimizer state across data-parallel ranks (ZeRO-1)."""


@dataclass(kw_only=True)
class LossScaleConfig:
    """Dynamic loss scaling; used with fp16 only."""

    initial_scale: float = 65536.0
    """Loss scale at the start."""
    min_scale: float = 1.0
    """The scale never drops below this."""
    growth_interval: int = 1000
    """Finite steps in a row before the scale grows."""
    growth_factor: float = 2.0
    """Multiplier applied when the scale grows."""
    backoff_factor: float = 0.5
    """Multiplier applied after an overflow."""
    hysteresis: int = 2
    """Overflows tolerated before the scale backs off."""


@dataclass(kw_only=True)
class PrecisionConfig:
    """Numeric format of parameters and compute."""

    dtype: Dtype = "fp32"
    """fp32, bf16 or fp16."""
    loss_scale: LossScaleConfig = field(default_factory=LossScaleConfig)
    """Dynamic loss scaling for fp16."""


@dataclass(kw_only=True)
class OptimizerConfig:
    """AdamW and what is applied to the gradients before it."""

    lr: float = 3e-4
    """Peak learning rate, reached after warmup."""
    min_lr: float = 3e-5
    """Learning rate at the end of the decay (the schedule's floor is min_lr / lr)."""
    weight_decay: float = 0.1
    """Decoupled weight decay."""
    adam_beta1: float = 0.9
    """AdamW first-moment decay."""
    adam_beta2: float = 0.95
    """AdamW second-moment decay."""
    adam_eps: float = 1e-8
    """AdamW denominator epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 turns clipping off."""
    z_loss: float = 0.0
    """Coefficient of the z-loss (log²Z) on the output logits; 0 turns it off."""
    embedding_grad_scale: float = 1.0
    """Multiplier on the embedding's gradient; 1.0 is off (GLM-130B used 0.1)."""


@dataclass(kw_only=True)
class ScheduleConfig:
    """Learning-rate schedule over the whole run, all stages together (see lr_schedule.py)."""

    kind: ScheduleKind = "wsd"
    """wsd (warmup-stable-decay), cosine, or constant after warmup."""
    warmup_steps: int = 0
    """Steps of linear warmup to the peak lr."""
    decay_steps: int = 0
    """wsd only: the last decay_steps of the run decay to min_lr; ignored by other kinds."""
    decay_shape: DecayShape = "linear"
    """wsd only: shape of the final decay, linear, cosine or 1-sqrt."""


@dataclass(kw_only=True)
class BatchConfig:
    """Sequences per step."""

    micro_batch_size: int
    """Sequences per forward/backward pass on one data-parallel rank."""
    global_batch_size: int
    """Sequences per optimizer step across all data-parallel ranks."""


@dataclass(kw_only=True)
class DataSourceConfig:
    """One channel of a stage's data mixture."""

    channel: str
    """Name the loss is reported under, e.g. code, en, zh."""
    path: str
    """Dataset prefix or URI, e.g. embedded://code."""
    weight: float
    """Relative share of the stage's samples; a stage's weights are normalized."""
    corrupt: list[list[int]] = field(default_factory=list)
    """Batch-index ranges [start, end) whose samples are turned to garbage (for demos)."""
    corrupt_kind: CorruptKind = "random"
    """What a corrupt window holds: random ids (the loss spikes) or newlines (it collapses)."""


@dataclass(kw_only=True)
class StageConfig:
    """A phase of training with its own length, sequence length and data mixture."""

    name: str
    """Unique stage name, e.g. pretrain, anneal."""
    steps: int
    """Optimizer steps in this stage."""
    seq_length: int
    """Tokens per sequence."""
    rope_base: float | None = None
    """RoPE base for this stage; null means the model's rope_base."""
    lr_scale: float = 1.0
    """Multiplier on the schedule's learning rate during this stage."""
    data: list[DataSourceConfig]
    """The stage's data mixture."""


@dataclass(kw_only=True)
class DataConfig:
    """Tokenizer, sampling seed and data to skip."""

    seed: int = 1234
    """Seed of the mixture sampler."""
    tokenizer: str = "byte"
    """'byte' or a path to a tokenizer."""
    cache_dir: str | None = None
    """Where tokenized data is cached; null for a temporary directory."""
    skip_ranges: list[list[int]] = field(default_factory=list)
    """Global batch-index ranges [start, end) never trained on (set by a rollback). Until a
    first skip, batch index = step; each step's record carries `data/batch_index`."""


@dataclass(kw_only=True)
class CheckpointConfig:
    """Where and when checkpoints are written, and where to resume from."""

    directory: str
    """Directory (or mounted volume) checkpoints are written under."""
    interval_steps: int = 100
    """Steps between checkpoints; 0 saves only at the end and on SIGTERM."""
    keep_last: int = 3
    """Standalone runs (no metrics.url) only: newest checkpoints kept, older ones deleted
    unless pinned. With metrics.url the service owns retention (see checkpoint.py)."""
    resume_from: str | None = None
    """Checkpoint to resume from (model, optimizer, counters); null starts fresh."""
    init_from: str | None = None
    """Checkpoint whose weights (only) initialise a fresh run, resharded to this layout."""
    save_initial: bool = False
    """Also save the untrained model at step 0 (pins an initialisation for comparisons)."""
    pinned: list[str] = field(default_factory=list)
    """Standalone runs only: checkpoints keep_last never deletes."""
    save_on_sigterm: bool = True
    """On SIGTERM, finish the step and save before exiting (outcome preempted either way)."""


@dataclass(kw_only=True)
class EvalConfig:
    """Held-out evaluation, reported per channel."""

    interval_steps: int = 100
    """Steps between evaluations; 0 turns evaluation off."""
    samples_per_channel: int = 200
    """Held-out sequences evaluated per channel."""


@dataclass(kw_only=True)
class MetricsConfig:
    """Where metric records go: the service's ingest API when url is set, else a JSONL file."""

    url: str | None = None
    """Service base URL, e.g. http://api:8000; records go to {url}/v1/jobs/{job.id}/metrics."""
    token: str | None = None
    """Bearer token for the ingest API."""
    jsonl_path: str = "metrics.jsonl"
    """File records are appended to when url is null."""
    flush_interval_s: float = 2.0
    """Longest a record waits before it is sent."""
    max_buffer: int = 10000
    """Records held while the service is unreachable; the oldest are dropped beyond this."""
    timeout_s: float = 5.0
    """Timeout of one HTTP request."""


@dataclass(kw_only=True)
class TrainConfig:
    """The loop itself."""

    seed: int = 1234
    """Seed of model initialization and dropout."""
    max_nonfinite_steps: int = 3
    """Non-finite steps in a row (update skipped) before the trainer ends as diverged."""
    log_interval: int = 1
    """Steps between metric records."""
    peak_tflops: float | None = None
    """Peak TFLOPS of one device, for the MFU metric; null leaves MFU out."""
    skip_grad_norm_zscore: float = 6.0
    """Skip a step whose gradient norm is this many standard deviations above the window's
    mean; 0 turns the check off."""
    skip_grad_norm_window: int = 100
    """Recent updated (not skipped) steps whose gradient norms make the z-score's baseline."""
    skip_grad_norm_min_history: int = 20
    """Norms the window needs before the z-score is reported or applied."""
    max_consecutive_skips: int = 5
    """Z-score skips in a row after which the next spike is trained on: a sustained shift is
    the watchdog's business, not a reason to skip forever."""


@dataclass(kw_only=True)
class FaultsConfig:
    """Injected faults, deterministic by step, for tests and demos; all off by default."""

    lr_blowup_from_step: int | None = None
    """From this step on the learning rate is multiplied by lr_blowup_factor; null for never."""
    lr_blowup_factor: float = 1000.0
    """Learning-rate multiplier of the blow-up."""
    nan_steps: list[list[int]] = field(default_factory=list)
    """Step ranges [start, end) whose loss is made NaN on every rank before backward."""
    grad_spike_steps: list[list[int]] = field(default_factory=list)
    """Step ranges [start, end) whose gradients are multiplied by grad_spike_factor."""
    grad_spike_factor: float = 1000.0
    """Gradient multiplier of a spike step (the loss reported stays as computed)."""


@dataclass(kw_only=True)
class TrainerConfig:
    """Everything one training attempt needs, rendered by the service as one JSON file."""

    schema_version: int = SCHEMA_VERSION
    """Version of this schema; the trainer refuses any other."""
    job: JobConfig = field(default_factory=JobConfig)
    """Which job and attempt this is."""
    model: ModelConfig
    """The architecture."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Model parallelism."""
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    """Numeric format."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """AdamW settings."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate schedule."""
    batch: BatchConfig
    """Batch sizes."""
    stages: list[StageConfig]
    """Training stages, run in order."""
    data: DataConfig = field(default_factory=DataConfig)
    """Tokenizer, sampling seed and skipped steps."""
    checkpoint: CheckpointConfig
    """Checkpointing."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Metric reporting."""
    lr_scale: float = 1.0
    """Attempt-wide learning-rate multiplier, set by a rollback."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The training loop."""
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    """Injected faults (tests and demos)."""

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run, all stages together."""
        return sum(stage.steps for stage in self.stages)


# ---------------------------------------------------------------- load, dump, override


def load_config(path: str | Path, *, overrides: Iterable[str] = ()) -> TrainerConfig:
    """Read a config JSON file, apply `dotted.key=value` overrides, and parse it strictly."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return config_from_dict(apply_overrides(data, overrides) if overrides else data)


def config_from_dict(data: Mapping[str, Any]) -> TrainerConfig:
    """Parse a mapping into a `TrainerConfig`; every problem is reported at once."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"the config must be a JSON object, got {_json_type(data)}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or version != SCHEMA_VERSION:
        raise ConfigError(
            f"schema_version {version!r} is not supported: this trainer reads version "
            f"{SCHEMA_VERSION}"
        )
    problems: list[str] = []
    config = _parse(data, TrainerConfig, "", problems)
    if problems:
        raise ConfigError(problems)
    return config


def config_to_dict(config: TrainerConfig) -> dict[str, Any]:
    """The JSON-ready mapping `config_from_dict` turns back into an equal config."""
    return dataclasses.asdict(config)


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of `data` with each `dotted.key=value` set; list items are `stages[0].steps`.

    The value is parsed as JSON when it parses, else taken as a string; a field that holds a
    string keeps the text as written (`job.name=2024` stays "2024"), `null` aside. Keys are
    checked against the schema, so a typo is an error even where the mapping leaves a
    defaulted section out.
    """
    result = copy.deepcopy(dict(data))
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {override!r} is not of the form dotted.key=value")
        _set_path(result, key, raw)
    return result


def example_config() -> TrainerConfig:
    """A complete tiny CPU config that trains in seconds: the demo's and the tests' default."""
    return TrainerConfig(
        model=ModelConfig(
            num_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            num_query_groups=2,
            ffn_hidden_size=176,
            vocab_size=512,  # the byte tokenizer's 258 ids, padded
            max_position_embeddings=64,
        ),
        precision=PrecisionConfig(dtype="fp32"),
        optimizer=OptimizerConfig(lr=1e-3, min_lr=1e-4),
        schedule=ScheduleConfig(kind="wsd", warmup_steps=5, decay_steps=10),
        batch=BatchConfig(micro_batch_size=4, global_batch_size=8),
        stages=[
            StageConfig(
                name="pretrain",
                steps=40,
                seq_length=64,
                data=[
                    DataSourceConfig(channel="code", path="embedded://code", weight=0.4),
                    DataSourceConfig(channel="en", path="embedded://en", weight=0.4),
                    DataSourceConfig(channel="zh", path="embedded://zh", weight=0.2),
                ],
            ),
            StageConfig(
                name="anneal",
                steps=10,
                seq_length=64,
                data=[
                    DataSourceConfig(channel="code", path="embedded://code", weight=0.3),
                    DataSourceConfig(channel="en", path="embedded://en", weight=0.5),
                    DataSourceConfig(channel="zh", path="embedded://zh", weight=0.2),
                ],
            ),
        ],
        data=DataConfig(tokenizer="byte"),
        checkpoint=CheckpointConfig(directory="trainer-out/checkpoints", interval_steps=10),
        eval=EvalConfig(interval_steps=10, samples_per_channel=8),
        metrics=MetricsConfig(jsonl_path="trainer-out/metrics.jsonl"),
    )


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the config file, generated from the dataclasses."""
    schema = _type_schema(TrainerConfig)
    schema["properties"]["schema_version"]["const"] = SCHEMA_VERSION
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "TrainerConfig",
        **schema,
    }


# ---------------------------------------------------------------- cross-field checks


def data_parallel_size(config: TrainerConfig, world_size: int) -> int:
    """Data-parallel replicas in a world of `world_size` processes."""
    parallel = config.parallel
    model_parallel = parallel.tensor * parallel.pipeline * parallel.context
    if world_size < 1 or world_size % model_parallel:
        raise ConfigError(
            f"parallel: world size {world_size} is not a multiple of tensor × pipeline × "
            f"context = {model_parallel}"
        )
    return world_size // model_parallel


def validate(config: TrainerConfig, world_size: int = 1) -> None:
    """Check what the trainer needs across fields; raise one `ConfigError` with every problem."""
    problems = [
        problem
        for check in (
            _check_positive,
            _check_model,
            _check_parallel,
            _check_optimizer,
            _check_schedule,
            _check_stages,
            _check_ranges,
            _check_guard,
            _check_faults,
        )
        for problem in check(config)
    ]
    problems += _check_world(config, world_size)
    if problems:
        raise ConfigError(problems)


def _check_positive(config: TrainerConfig) -> Iterable[str]:
    at_least = {
        "job.attempt": (config.job.attempt, 0),
        "model.num_layers": (config.model.num_layers, 1),
        "model.hidden_size": (config.model.hidden_size, 1),
        "model.num_attention_heads": (config.model.num_attention_heads, 1),
        "model.num_query_groups": (config.model.num_query_groups, 1),
        "model.ffn_hidden_size": (config.model.ffn_hidden_size, 1),
        "model.vocab_size": (config.model.vocab_size, 1),
        "model.max_position_embeddings": (config.model.max_position_embeddings, 1),
        "parallel.tensor": (config.parallel.tensor, 1),
        "parallel.pipeline": (config.parallel.pipeline, 1),
        "parallel.context": (config.parallel.context, 1),
        "parallel.expert": (config.parallel.expert, 1),
        "precision.loss_scale.growth_interval": (config.precision.loss_scale.growth_interval, 1),
        "precision.loss_scale.hysteresis": (config.precision.loss_scale.hysteresis, 1),
        "schedule.warmup_steps": (config.schedule.warmup_steps, 0),
        "schedule.decay_steps": (config.schedule.decay_steps, 0),
        "batch.micro_batch_size": (config.batch.micro_batch_size, 1),
        "batch.global_batch_size": (config.batch.global_batch_size, 1),
        "checkpoint.interval_steps": (config.checkpoint.interval_steps, 0),
        "checkpoint.keep_last": (config.checkpoint.keep_last, 1),
        "eval.interval_steps": (config.eval.interval_steps, 0),
        "eval.samples_per_channel": (config.eval.samples_per_channel, 1),
        "metrics.max_buffer": (config.metrics.max_buffer, 1),
        "train.max_nonfinite_steps": (config.train.max_nonfinite_steps, 1),
        "train.log_interval": (config.train.log_interval, 1),
        "train.max_consecutive_skips": (config.train.max_consecutive_skips, 1),
    }
    for path, (value, minimum) in at_least.items():
        if value < minimum:
            yield f"{path}: must be at least {minimum}, got {value}"
    above_zero = {
        "model.rope_base": config.model.rope_base,
        "model.norm_eps": config.model.norm_eps,
        "precision.loss_scale.initial_scale": config.precision.loss_scale.initial_scale,
        "precision.loss_scale.min_scale": config.precision.loss_scale.min_scale,
        "optimizer.lr": config.optimizer.lr,
        "optimizer.adam_eps": config.optimizer.adam_eps,
        "metrics.flush_interval_s": config.metrics.flush_interval_s,
        "metrics.timeout_s": config.metrics.timeout_s,
        "lr_scale": config.lr_scale,
    }
    if config.train.peak_tflops is not None:
        above_zero["train.peak_tflops"] = config.train.peak_tflops
    for path, value in above_zero.items():
        if not value > 0:
            yield f"{path}: must be positive, got {value:g}"
    if config.checkpoint.directory == "":
        yield "checkpoint.directory: must not be empty"
    if config.job.result_path == "":
        yield "job.result_path: must not be empty"
    url = config.metrics.url
    if url is not None and not url.startswith(("http://", "https://")):
        yield f"metrics.url: {url!r} is not an http:// or https:// URL"


def _check_model(config: TrainerConfig) -> Iterable[str]:
    model, tensor = config.model, config.parallel.tensor
    heads, groups = model.num_attention_heads, model.num_query_groups
    if heads >= 1 and model.hidden_size % heads:
        yield f"model.hidden_size: {model.hidden_size} is not divisible by {heads} attention heads"
    if groups >= 1 and heads % groups:
        yield f"model.num_query_groups: {heads} attention heads are not divisible by {groups} groups"
    if tensor >= 1 and heads % tensor:
        yield f"parallel.tensor: {heads} attention heads are not divisible by tensor size {tensor}"
    if tensor >= 1 and groups % tensor:
        yield f"parallel.tensor: {groups} query groups are not divisible by tensor size {tensor}"
    if model.moe is not None:
        moe = model.moe
        for name in ("num_experts", "top_k", "moe_ffn_hidden_size"):
            if getattr(moe, name) < 1:
                yield f"model.moe.{name}: must be at least 1, got {getattr(moe, name)}"
        if moe.shared_expert_ffn_hidden_size < 0:
            yield "model.moe.shared_expert_ffn_hidden_size: must not be negative"
        if moe.top_k > moe.num_experts:
            yield f"model.moe.top_k: {moe.top_k} is more than the {moe.num_experts} experts"
        expert = config.parallel.expert
        if expert >= 1 and moe.num_experts % expert:
            yield (
                f"parallel.expert: {moe.num_experts} experts are not divisible by expert size "
                f"{expert}"
            )
    elif config.parallel.expert > 1:
        yield "parallel.expert: expert parallelism needs model.moe"


def _check_parallel(config: TrainerConfig) -> Iterable[str]:
    parallel, layers = config.parallel, config.model.num_layers
    if parallel.virtual_pipeline is not None:
        if parallel.virtual_pipeline < 1:
            yield f"parallel.virtual_pipeline: must be at least 1, got {parallel.virtual_pipeline}"
        elif parallel.pipeline < 2:
            yield "parallel.virtual_pipeline: needs parallel.pipeline of 2 or more"
    chunks = max(parallel.pipeline, 1) * max(parallel.virtual_pipeline or 1, 1)
    if layers >= 1 and layers % chunks:
        yield (
            f"model.num_layers: {layers} layers do not split into pipeline × virtual_pipeline "
            f"= {chunks} equal chunks"
        )
    if parallel.sequence_parallel and parallel.tensor < 2:
        yield "parallel.sequence_parallel: needs parallel.tensor of 2 or more"


def _check_optimizer(config: TrainerConfig) -> Iterable[str]:
    opt, scale = config.optimizer, config.precision.loss_scale
    if not 0 <= opt.min_lr <= opt.lr:
        yield f"optimizer.min_lr: must be between 0 and lr {opt.lr:g}, got {opt.min_lr:g}"
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(opt, name) < 1:
            yield f"optimizer.{name}: must be in [0, 1), got {getattr(opt, name):g}"
    for name in ("weight_decay", "clip_grad", "z_loss"):
        if getattr(opt, name) < 0:
            yield f"optimizer.{name}: must not be negative, got {getattr(opt, name):g}"
    if not 0 < opt.embedding_grad_scale <= 1:
        yield (
            f"optimizer.embedding_grad_scale: must be in (0, 1], got {opt.embedding_grad_scale:g}"
        )
    if scale.min_scale > scale.initial_scale:
        yield "precision.loss_scale.min_scale: must not exceed initial_scale"
    if not scale.growth_factor > 1:
        yield f"precision.loss_scale.growth_factor: must exceed 1, got {scale.growth_factor:g}"
    if not 0 < scale.backoff_factor < 1:
        yield f"precision.loss_scale.backoff_factor: must be in (0, 1), got {scale.backoff_factor:g}"


def _check_schedule(config: TrainerConfig) -> Iterable[str]:
    schedule, total = config.schedule, config.total_steps
    if schedule.warmup_steps > total:
        yield f"schedule.warmup_steps: {schedule.warmup_steps} exceed the run's {total} steps"
    elif schedule.kind == "wsd" and schedule.warmup_steps + schedule.decay_steps > total:
        yield (
            f"schedule.decay_steps: warmup {schedule.warmup_steps} + decay "
            f"{schedule.decay_steps} exceed the run's {total} steps"
        )


def _check_stages(config: TrainerConfig) -> Iterable[str]:
    if not config.stages:
        yield "stages: at least one stage is needed"
    seen: set[str] = set()
    for index, stage in enumerate(config.stages):
        path = f"stages[{index}]"
        if not stage.name:
            yield f"{path}.name: must not be empty"
        elif stage.name in seen:
            yield f"{path}.name: {stage.name!r} is used by an earlier stage"
        seen.add(stage.name)
        if stage.steps < 1:
            yield f"{path}.steps: must be at least 1, got {stage.steps}"
        if stage.seq_length < 1:
            yield f"{path}.seq_length: must be at least 1, got {stage.seq_length}"
        elif stage.seq_length > config.model.max_position_embeddings:
            yield (
                f"{path}.seq_length: {stage.seq_length} exceeds model.max_position_embeddings "
                f"{config.model.max_position_embeddings}"
            )
        context = config.parallel.context
        if context > 1 and stage.seq_length % (2 * context):
            yield (
                f"{path}.seq_length: {stage.seq_length} is not divisible by 2 × context size "
                f"{context}"
            )
        if stage.rope_base is not None and not stage.rope_base > 0:
            yield f"{path}.rope_base: must be positive, got {stage.rope_base:g}"
        if not stage.lr_scale > 0:
            yield f"{path}.lr_scale: must be positive, got {stage.lr_scale:g}"
        if not stage.data:
            yield f"{path}.data: at least one data source is needed"
        channels: set[str] = set()
        for source_index, source in enumerate(stage.data):
            source_path = f"{path}.data[{source_index}]"
            if not source.channel:
                yield f"{source_path}.channel: must not be empty"
            elif source.channel in channels:
                yield f"{source_path}.channel: {source.channel!r} appears twice in the stage"
            channels.add(source.channel)
            if not source.path:
                yield f"{source_path}.path: must not be empty"
            if not source.weight > 0:
                yield f"{source_path}.weight: must be positive, got {source.weight:g}"


def _check_ranges(config: TrainerConfig) -> Iterable[str]:
    yield from _range_problems("data.skip_ranges", config.data.skip_ranges)
    for index, stage in enumerate(config.stages):
        for source_index, source in enumerate(stage.data):
            path = f"stages[{index}].data[{source_index}].corrupt"
            yield from _range_problems(path, source.corrupt)


def _check_guard(config: TrainerConfig) -> Iterable[str]:
    train = config.train
    if train.skip_grad_norm_zscore < 0:
        yield (
            "train.skip_grad_norm_zscore: must not be negative (0 turns it off), got "
            f"{train.skip_grad_norm_zscore:g}"
        )
    if train.skip_grad_norm_window < 2:
        yield f"train.skip_grad_norm_window: must be at least 2, got {train.skip_grad_norm_window}"
    if not 2 <= train.skip_grad_norm_min_history <= max(train.skip_grad_norm_window, 2):
        yield (
            "train.skip_grad_norm_min_history: must be between 2 and skip_grad_norm_window "
            f"{train.skip_grad_norm_window}, got {train.skip_grad_norm_min_history}"
        )


def _check_faults(config: TrainerConfig) -> Iterable[str]:
    faults = config.faults
    if faults.lr_blowup_from_step is not None and faults.lr_blowup_from_step < 0:
        yield f"faults.lr_blowup_from_step: must not be negative, got {faults.lr_blowup_from_step}"
    for name in ("lr_blowup_factor", "grad_spike_factor"):
        if not getattr(faults, name) > 1:
            yield f"faults.{name}: must exceed 1, got {getattr(faults, name):g}"
    yield from _range_problems("faults.nan_steps", faults.nan_steps)
    yield from _range_problems("faults.grad_spike_steps", faults.grad_spike_steps)


def _range_problems(path: str, ranges: list[list[int]]) -> Iterable[str]:
    for index, bounds in enumerate(ranges):
        if len(bounds) != 2:
            yield f"{path}[{index}]: a range is [start, end], got {bounds}"
        elif not 0 <= bounds[0] < bounds[1]:
            yield f"{path}[{index}]: needs 0 <= start < end, got {bounds}"


def _check_world(config: TrainerConfig, world_size: int) -> list[str]:
    if world_size < 1:
        return [f"world size must be at least 1, got {world_size}"]
    parallel = config.parallel
    if min(parallel.tensor, parallel.pipeline, parallel.context, parallel.expert) < 1:
        return []  # already reported; the arithmetic below would be meaningless
    try:
        data_size = data_parallel_size(config, world_size)
    except ConfigError as exc:
        return exc.problems
    problems = []
    batch = config.batch
    per_pass = batch.micro_batch_size * data_size
    if per_pass >= 1 and batch.global_batch_size % per_pass:
        problems.append(
            f"batch.global_batch_size: {batch.global_batch_size} is not divisible by "
            f"micro_batch_size {batch.micro_batch_size} × data-parallel size {data_size}"
        )
    if parallel.expert > 1 and (data_size * parallel.context) % parallel.expert:
        problems.append(
            f"parallel.expert: {parallel.expert} does not divide data-parallel × context size "
            f"{data_size * parallel.context}"
        )
    return problems


# ---------------------------------------------------------------- parsing machinery

_INVALID = object()
_SCALAR_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _non_null(hint: Any) -> tuple[Any, bool]:
    """The type inside `X | None`, and whether None was allowed."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [arg for arg in get_args(hint) if arg is not type(None)]
        if len(args) != 1:
            raise TypeError(f"only `X | None` unions are supported, not {hint!r}")
        return args[0], True
    return hint, False


def _parse(value: Any, hint: Any, path: str, problems: list[str]) -> Any:
    """`value` checked against `hint` (and copied); `_INVALID` after appending problems."""
    inner, nullable = _non_null(hint)
    if value is None and nullable:
        return None
    if dataclasses.is_dataclass(inner):
        return _parse_section(value, inner, path, problems)
    origin = get_origin(inner)
    if origin is list:
        if not isinstance(value, list):
            problems.append(_type_problem(path, hint, value))
            return _INVALID
        (item_hint,) = get_args(inner)
        items = [
            _parse(item, item_hint, f"{path}[{index}]", problems)
            for index, item in enumerate(value)
        ]
        return _INVALID if any(item is _INVALID for item in items) else items
    if origin is Literal:
        if isinstance(value, str) and value in get_args(inner):
            return value
        problems.append(_type_problem(path, hint, value))
        return _INVALID
    if inner is float and isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
        problems.append(f"{path}: must be a finite number, got {value!r}")
        return _INVALID
    if inner in (int, str, bool) and type(value) is inner:
        return value
    problems.append(_type_problem(path, hint, value))
    return _INVALID


def _parse_section(value: Any, cls: type, path: str, problems: list[str]) -> Any:
    if not isinstance(value, Mapping):
        problems.append(_type_problem(path or "config", cls, value))
        return _INVALID
    fields, hints = _fields(cls), _hints(cls)
    before = len(problems)
    for key in value:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"unknown key '{_join(path, str(key))}'{hint}")
    kwargs = {}
    for name, spec in fields.items():
        if name in value:
            kwargs[name] = _parse(value[name], hints[name], _join(path, name), problems)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            problems.append(f"missing required key '{_join(path, name)}'")
    if len(problems) > before:
        return _INVALID
    return cls(**kwargs)


def _describe(hint: Any) -> str:
    inner, nullable = _non_null(hint)
    if dataclasses.is_dataclass(inner):
        text = "object"
    elif get_origin(inner) is list:
        text = f"array of {_describe(get_args(inner)[0])}"
    elif get_origin(inner) is Literal:
        text = "one of " + ", ".join(repr(arg) for arg in get_args(inner))
    else:
        text = _SCALAR_NAMES[inner]
    return f"{text} or null" if nullable else text


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _type_problem(path: str, hint: Any, value: Any) -> str:
    got = _json_type(value)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        shown = repr(value)
        got += f" {shown if len(shown) <= 40 else shown[:37] + '...'}"
    return f"{path}: expected {_describe(hint)}, got {got}"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; write a finite number")


# ---------------------------------------------------------------- overrides

_KEY_PART = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")


def _split_key(key: str) -> list[str | int]:
    """`stages[0].data.1.weight` → ['stages', 0, 'data', 1, 'weight']."""
    segments: list[str | int] = []
    for part in key.split("."):
        match = _KEY_PART.fullmatch(part)
        if not match:
            raise ConfigError(f"override key {key!r} is malformed")
        name, indexes = match.groups()
        segments.append(int(name) if name.isdigit() else name)
        segments += [int(index) for index in re.findall(r"\d+", indexes)]
    return segments


def _set_path(data: dict[str, Any], key: str, raw: str) -> None:
    node: Any = data
    hint: Any = TrainerConfig
    path = ""
    segments = _split_key(key)
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        inner, _ = _non_null(hint)
        if dataclasses.is_dataclass(inner):
            if not isinstance(segment, str) or segment not in _fields(inner):
                raise ConfigError(f"unknown key '{_join(path, str(segment))}'")
            child_hint = _hints(inner)[segment]
            path = _join(path, segment)
        elif get_origin(inner) is list:
            if not isinstance(segment, int):
                raise ConfigError(f"unknown key '{path}.{segment}': {path} is a list; index it")
            child_hint = get_args(inner)[0]
            path = f"{path}[{segment}]"
            if not isinstance(node, list) or segment >= len(node):
                size = len(node) if isinstance(node, list) else 0
                raise ConfigError(f"override {key!r}: {path} is out of range ({size} items)")
        else:
            raise ConfigError(f"unknown key '{path}.{segment}': {path} is not an object")
        if last:
            node[segment] = _override_value(raw, child_hint)
            return
        child_inner = _non_null(child_hint)[0]
        if not (dataclasses.is_dataclass(child_inner) or get_origin(child_inner) is list):
            raise ConfigError(f"unknown key '{key}': {path} is not an object")
        child = node[segment] if isinstance(node, list) else node.get(segment)
        if child is None:
            if not dataclasses.is_dataclass(_non_null(child_hint)[0]):
                raise ConfigError(f"override {key!r}: {path} is not set, so it cannot be indexed")
            child = node[segment] = {}
        if not isinstance(child, dict | list):
            raise ConfigError(f"override {key!r}: {path} is not an object")
        node, hint = child, child_hint


def _override_value(raw: str, hint: Any) -> Any:
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    inner, nullable = _non_null(hint)
    takes_text = inner is str or (
        get_origin(inner) is Literal and all(isinstance(a, str) for a in get_args(inner))
    )
    if takes_text and not isinstance(value, str) and not (value is None and nullable):
        return raw
    return value


# ---------------------------------------------------------------- JSON Schema


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string right below a field) of a dataclass, by field name."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    (node,) = ast.parse(source).body
    docs: dict[str, str] = {}
    body = getattr(node, "body", [])
    for statement, following in zip(body, body[1:], strict=False):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _type_schema(hint: Any) -> dict[str, Any]:
    inner, nullable = _non_null(hint)
    if nullable:
        return {"anyOf": [_type_schema(inner), {"type": "null"}]}
    if dataclasses.is_dataclass(inner):
        return _object_schema(inner)
    if get_origin(inner) is list:
        return {"type": "array", "items": _type_schema(get_args(inner)[0])}
    if get_origin(inner) is Literal:
        return {"type": "string", "enum": list(get_args(inner))}
    return {"type": _SCALAR_NAMES[inner]}


def _object_schema(cls: type) -> dict[str, Any]:
    docs, hints = _field_docs(cls), _hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for spec in dataclasses.fields(cls):
        schema = _type_schema(hints[spec.name])
        if spec.name in docs:
            schema["description"] = docs[spec.name]
        if spec.default is not dataclasses.MISSING:
            schema["default"] = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
            if not dataclasses.is_dataclass(default):
                schema["default"] = default
        else:
            required.append(spec.name)
        properties[spec.name] = schema
    schema = {
        "type": "object",
        "description": (cls.__doc__ or "").strip().splitlines()[0],
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema
