"""The sections of `TrainerConfig`, each with its fields and the rules among them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from trainer.config.base import Range, Section

Dtype = Literal["fp32", "bf16", "fp16"]
ScheduleKind = Literal["wsd", "cosine", "constant"]
DecayShape = Literal["linear", "cosine", "1-sqrt"]
CorruptKind = Literal["random", "newlines"]

DEFAULT_RESULT_PATH = "/dev/termination-log"
"""Kubernetes' terminationMessagePath: where the trainer says how it ended (see outcome.py)."""


class JobConfig(Section):
    """Which job and attempt this run belongs to."""

    id: str = "local"
    """Job id in the service; metrics and checkpoints are posted under it."""
    attempt: int = Field(0, ge=0)
    """Attempt number; a rollback starts attempt N+1."""
    name: str = "local"
    """Human-readable job name, for logs."""
    result_path: str = Field(DEFAULT_RESULT_PATH, min_length=1)
    """File each rank appends its one-line JSON outcome to; skipped when its directory is missing."""


class MoEConfig(Section):
    """Mixture-of-experts MLP layers."""

    num_experts: int = Field(ge=1)
    """Routed experts per MoE layer."""
    top_k: int = Field(ge=1)
    """Experts each token is routed to."""
    moe_ffn_hidden_size: int = Field(ge=1)
    """Hidden size of each routed expert's MLP."""
    shared_expert_ffn_hidden_size: int = Field(0, ge=0)
    """Hidden size of the always-active shared expert; 0 means none."""

    def problems(self) -> Iterator[str]:
        if self.top_k > self.num_experts:
            yield f"top_k: {self.top_k} is more than the {self.num_experts} experts"


class ModelConfig(Section):
    """A GPT-style decoder: RoPE, RMSNorm, SwiGLU, grouped-query attention."""

    num_layers: int = Field(ge=1)
    """Transformer layers."""
    hidden_size: int = Field(ge=1)
    """Width of the residual stream."""
    num_attention_heads: int = Field(ge=1)
    """Query heads per layer."""
    num_query_groups: int = Field(ge=1)
    """Key/value heads (grouped-query attention); equal to the heads for plain MHA."""
    ffn_hidden_size: int = Field(ge=1)
    """Hidden size of the dense MLP."""
    vocab_size: int = Field(ge=1)
    """Embedding rows, already padded (e.g. the byte tokenizer's 258 ids padded to 512)."""
    max_position_embeddings: int = Field(ge=1)
    """Longest sequence the model is built for."""
    rope_base: float = Field(10000.0, gt=0)
    """RoPE base frequency; a stage may override it."""
    norm_eps: float = Field(1e-5, gt=0)
    """Epsilon of the normalization layers."""
    tie_embeddings: bool = False
    """Share the input embedding with the output projection."""
    qkv_bias: bool = False
    """Add a bias to the query/key/value projection (Qwen-style)."""
    moe: MoEConfig | None = None
    """Mixture-of-experts layers; null for a dense model."""

    def problems(self) -> Iterator[str]:
        heads, groups = self.num_attention_heads, self.num_query_groups
        if self.hidden_size % heads:
            yield f"hidden_size: {self.hidden_size} is not divisible by {heads} attention heads"
        if heads % groups:
            yield f"num_query_groups: {heads} attention heads are not divisible by {groups} groups"


class ParallelConfig(Section):
    """How the model is split across processes; data parallelism takes the rest of the world."""

    tensor: int = Field(1, ge=1)
    """Tensor-parallel size."""
    pipeline: int = Field(1, ge=1)
    """Pipeline-parallel size."""
    context: int = Field(1, ge=1)
    """Context-parallel size (splits the sequence)."""
    expert: int = Field(1, ge=1)
    """Expert-parallel size (MoE only)."""
    virtual_pipeline: int | None = Field(None, ge=1)
    """Model chunks per pipeline rank (interleaved schedule); null for none."""
    sequence_parallel: bool = False
    """Shard activations along the sequence within the tensor-parallel group."""
    distributed_optimizer: bool = False
    """Shard optimizer state across data-parallel ranks (ZeRO-1)."""

    def problems(self) -> Iterator[str]:
        if self.virtual_pipeline is not None and self.pipeline < 2:
            yield "virtual_pipeline: needs parallel.pipeline of 2 or more"
        if self.sequence_parallel and self.tensor < 2:
            yield "sequence_parallel: needs parallel.tensor of 2 or more"


class LossScaleConfig(Section):
    """Dynamic loss scaling; used with fp16 only."""

    initial_scale: float = Field(65536.0, gt=0)
    """Loss scale at the start."""
    min_scale: float = Field(1.0, gt=0)
    """The scale never drops below this."""
    growth_interval: int = Field(1000, ge=1)
    """Finite steps in a row before the scale grows."""
    growth_factor: float = Field(2.0, gt=1)
    """Multiplier applied when the scale grows."""
    backoff_factor: float = 0.5
    """Multiplier applied after an overflow."""
    hysteresis: int = Field(2, ge=1)
    """Overflows tolerated before the scale backs off."""

    def problems(self) -> Iterator[str]:
        if self.min_scale > self.initial_scale:
            yield "min_scale: must not exceed initial_scale"
        if not 0 < self.backoff_factor < 1:
            yield f"backoff_factor: must be in (0, 1), got {self.backoff_factor:g}"


class PrecisionConfig(Section):
    """Numeric format of parameters and compute."""

    dtype: Dtype = "fp32"
    """fp32, bf16 or fp16."""
    loss_scale: LossScaleConfig = Field(default_factory=LossScaleConfig)
    """Dynamic loss scaling for fp16."""


class OptimizerConfig(Section):
    """AdamW and what is applied to the gradients before it."""

    lr: float = Field(3e-4, gt=0)
    """Peak learning rate, reached after warmup."""
    min_lr: float = 3e-5
    """Learning rate at the end of the decay (the schedule's floor is min_lr / lr)."""
    weight_decay: float = Field(0.1, ge=0)
    """Decoupled weight decay."""
    adam_beta1: float = 0.9
    """AdamW first-moment decay."""
    adam_beta2: float = 0.95
    """AdamW second-moment decay."""
    adam_eps: float = Field(1e-8, gt=0)
    """AdamW denominator epsilon."""
    clip_grad: float = Field(1.0, ge=0)
    """Global gradient-norm clip; 0 turns clipping off."""
    z_loss: float = Field(0.0, ge=0)
    """Coefficient of the z-loss (log²Z) on the output logits; 0 turns it off."""
    embedding_grad_scale: float = 1.0
    """Multiplier on the embedding's gradient; 1.0 is off (GLM-130B used 0.1)."""

    def problems(self) -> Iterator[str]:
        if not 0 <= self.min_lr <= self.lr:
            yield f"min_lr: must be between 0 and lr {self.lr:g}, got {self.min_lr:g}"
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                yield f"{name}: must be in [0, 1), got {getattr(self, name):g}"
        if not 0 < self.embedding_grad_scale <= 1:
            yield f"embedding_grad_scale: must be in (0, 1], got {self.embedding_grad_scale:g}"


class ScheduleConfig(Section):
    """Learning-rate schedule over the whole run, all stages together (see lr_schedule.py)."""

    kind: ScheduleKind = "wsd"
    """wsd (warmup-stable-decay), cosine, or constant after warmup."""
    warmup_steps: int = Field(0, ge=0)
    """Steps of linear warmup to the peak lr."""
    decay_steps: int = Field(0, ge=0)
    """wsd only: the last decay_steps of the run decay to min_lr; ignored by other kinds."""
    decay_shape: DecayShape = "linear"
    """wsd only: shape of the final decay, linear, cosine or 1-sqrt."""


class BatchConfig(Section):
    """Sequences per step."""

    micro_batch_size: int = Field(ge=1)
    """Sequences per forward/backward pass on one data-parallel rank."""
    global_batch_size: int = Field(ge=1)
    """Sequences per optimizer step across all data-parallel ranks."""


class DataSourceConfig(Section):
    """One channel of a stage's data mixture."""

    channel: str = Field(min_length=1)
    """Name the loss is reported under, e.g. code, en, zh."""
    path: str = Field(min_length=1)
    """Dataset prefix or URI, e.g. embedded://code."""
    weight: float = Field(gt=0)
    """Relative share of the stage's samples; a stage's weights are normalized."""
    corrupt: list[Range] = Field(default_factory=list)
    """Batch-index ranges [start, end) whose samples are turned to garbage (for demos)."""
    corrupt_kind: CorruptKind = "random"
    """What a corrupt window holds: random ids (the loss spikes) or newlines (it collapses)."""


class StageConfig(Section):
    """A phase of training with its own length, sequence length and data mixture."""

    name: str = Field(min_length=1)
    """Unique stage name, e.g. pretrain, anneal."""
    steps: int = Field(ge=1)
    """Optimizer steps in this stage."""
    seq_length: int = Field(ge=1)
    """Tokens per sequence."""
    rope_base: float | None = Field(None, gt=0)
    """RoPE base for this stage; null means the model's rope_base."""
    lr_scale: float = Field(1.0, gt=0)
    """Multiplier on the schedule's learning rate during this stage."""
    data: list[DataSourceConfig]
    """The stage's data mixture."""

    def problems(self) -> Iterator[str]:
        if not self.data:
            yield "data: at least one data source is needed"
        channels: set[str] = set()
        for index, source in enumerate(self.data):
            if source.channel in channels:
                yield f"data[{index}].channel: {source.channel!r} appears twice in the stage"
            channels.add(source.channel)


class DataConfig(Section):
    """Tokenizer, sampling seed, how sources are split and packed, and data to skip."""

    seed: int = 1234
    """Seed of the mixture sampler."""
    tokenizer: str = "byte"
    """'byte' or a path to a tokenizer."""
    cache_dir: str | None = None
    """Where embedded corpora are cached once tokenized; null for ~/.cache/pretrain-orchestrator."""
    split: str = Field("969,30,1", pattern=r"^\s*\d+(\.\d*)?(\s*,\s*\d+(\.\d*)?){0,2}\s*$")
    """Megatron's train,valid,test split of each source's documents: held-out (valid)
    documents are evaluated on and never trained on."""
    reset_position_ids: bool = False
    """Positions restart at 0 after each end-of-document token inside a packed sequence."""
    reset_attention_mask: bool = False
    """Tokens attend only within their own document inside a packed sequence."""
    eod_mask_loss: bool = False
    """No loss on the prediction made from an end-of-document token."""
    mmap_bin_files: bool = True
    """Memory-map the sources' .bin files; false reads them on demand."""
    trace_dir: str | None = None
    """Where each data-parallel rank appends, per step, which samples it trained on
    (`rank-<r>.jsonl`: batch index, per row its channel, source sample and token sum); null
    writes nothing. For finding the documents behind a loss spike, and for tests."""
    skip_ranges: list[Range] = Field(default_factory=list)
    """Global batch-index ranges [start, end) never trained on (set by a rollback). Until a
    first skip, batch index = step; each step's record carries `data/batch_index`."""

    def problems(self) -> Iterator[str]:
        shares = [float(share) for share in self.split.split(",")]
        if shares[0] <= 0:
            yield f"split: {self.split!r} leaves training no documents"


class CheckpointConfig(Section):
    """Where and when checkpoints are written, and where to resume from."""

    directory: str = Field(min_length=1)
    """Directory (or mounted volume) checkpoints are written under."""
    interval_steps: int = Field(100, ge=0)
    """Steps between checkpoints; 0 saves only at the end and on SIGTERM."""
    keep_last: int = Field(3, ge=1)
    """Standalone runs (no metrics.url) only: newest checkpoints kept, older ones deleted
    unless pinned. With metrics.url the service owns retention (see checkpoint.py)."""
    resume_from: str | None = None
    """Checkpoint to resume from (model, optimizer, counters); null starts fresh."""
    init_from: str | None = None
    """Checkpoint whose weights (only) initialise a fresh run, resharded to this layout."""
    save_initial: bool = False
    """Also save the untrained model at step 0 (pins an initialisation for comparisons)."""
    pinned: list[str] = Field(default_factory=list)
    """Standalone runs only: checkpoints keep_last never deletes."""
    save_on_sigterm: bool = True
    """On SIGTERM, finish the step and save before exiting (outcome preempted either way)."""
    termination_grace_s: float | None = Field(None, gt=0)
    """Seconds the process has after SIGTERM before it is killed (the pods' grace period, which
    the service sizes from the checkpoint's write time); the preempted outcome says whether the
    save fit in it. null: not known (a standalone run)."""


class EvalConfig(Section):
    """Held-out evaluation, reported per channel."""

    interval_steps: int = Field(100, ge=0)
    """Steps between evaluations; 0 turns evaluation off."""
    samples_per_channel: int = Field(200, ge=1)
    """Held-out sequences evaluated per channel."""


class MetricsConfig(Section):
    """Where metric records go: the service's ingest API when url is set, else a JSONL file."""

    url: str | None = None
    """Service base URL, e.g. http://api:8000; records go to {url}/v1/jobs/{job.id}/metrics."""
    token: str | None = None
    """Bearer token for the ingest API."""
    jsonl_path: str = "metrics.jsonl"
    """File records are appended to when url is null."""
    flush_interval_s: float = Field(2.0, gt=0)
    """Longest a record waits before it is sent."""
    max_buffer: int = Field(10000, ge=1)
    """Records held while the service is unreachable; the oldest are dropped beyond this."""
    timeout_s: float = Field(5.0, gt=0)
    """Timeout of one HTTP request."""

    def problems(self) -> Iterator[str]:
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            yield f"url: {self.url!r} is not an http:// or https:// URL"


class TrainConfig(Section):
    """The loop itself."""

    seed: int = 1234
    """Seed of model initialization and dropout."""
    max_nonfinite_steps: int = Field(3, ge=1)
    """Non-finite steps in a row (update skipped) before the trainer ends as diverged."""
    log_interval: int = Field(1, ge=1)
    """Steps between metric records."""
    peak_tflops: float | None = Field(None, gt=0)
    """Peak TFLOPS of one device, for the MFU metric; null leaves MFU out."""
    skip_grad_norm_zscore: float = Field(6.0, ge=0)
    """Skip a step whose gradient norm is this many standard deviations above the window's
    mean; 0 turns the check off."""
    skip_grad_norm_window: int = Field(100, ge=2)
    """Recent updated (not skipped) steps whose gradient norms make the z-score's baseline."""
    skip_grad_norm_min_history: int = 20
    """Norms the window needs before the z-score is reported or applied."""
    max_consecutive_skips: int = Field(5, ge=1)
    """Z-score skips in a row after which the next spike is trained on: a sustained shift is
    the watchdog's business, not a reason to skip forever."""

    def problems(self) -> Iterator[str]:
        if not 2 <= self.skip_grad_norm_min_history <= self.skip_grad_norm_window:
            yield (
                "skip_grad_norm_min_history: must be between 2 and skip_grad_norm_window "
                f"{self.skip_grad_norm_window}, got {self.skip_grad_norm_min_history}"
            )


class FaultsConfig(Section):
    """Injected faults, deterministic by step, for tests and demos; all off by default."""

    lr_blowup_from_step: int | None = Field(None, ge=0)
    """From this step on the learning rate is multiplied by lr_blowup_factor; null for never."""
    lr_blowup_factor: float = Field(1000.0, gt=1)
    """Learning-rate multiplier of the blow-up."""
    nan_steps: list[Range] = Field(default_factory=list)
    """Step ranges [start, end) whose loss is made NaN on every rank before backward."""
    grad_spike_steps: list[Range] = Field(default_factory=list)
    """Step ranges [start, end) whose gradients are multiplied by grad_spike_factor."""
    grad_spike_factor: float = Field(1000.0, gt=1)
    """Gradient multiplier of a spike step (the loss reported stays as computed)."""
    hang_at_step: int | None = Field(None, ge=0)
    """Before this step the trainer stops making progress, as a hung collective would: it sleeps,
    holding no locks, until SIGTERM (which ends it as preempted, without a save: a hung run has
    nothing consistent to save) or SIGKILL. null for never."""
