"""`TrainerConfig`: the versioned contract between the service and the trainer.

The service renders one JSON file per attempt through these models; the trainer loads it
with `load_config`. Parsing is strict: an unknown key, a wrong type, a missing required
field or a broken rule anywhere is a `ConfigError` naming its dotted path (`unknown key
'optimizer.lrr'`). `validate` checks a config as it stands against a world size.

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
| checkpoint*  | directory*, interval_steps, keep_last, resume_from?, init_from?,              |
|              | save_initial, pinned, save_on_sigterm                                         |
| eval         | interval_steps, samples_per_channel                                           |
| metrics      | url?, token?, jsonl_path, flush_interval_s, max_buffer, timeout_s             |
| lr_scale     | attempt-wide learning-rate multiplier (a rollback sets it)                    |
| train        | seed, max_nonfinite_steps, log_interval, peak_tflops?, skip_grad_norm_zscore, |
|              | skip_grad_norm_window, skip_grad_norm_min_history, max_consecutive_skips      |
| faults       | lr_blowup_from_step?, lr_blowup_factor, nan_steps, grad_spike_steps,          |
|              | grad_spike_factor (injected faults, for tests and demos)                      |

Ranges (`skip_ranges`, `corrupt`, `nan_steps`, `grad_spike_steps`) are half-open
`[start, end)` pairs of integers. Each field's docstring says what it means; `json_schema()`
carries them as descriptions. The package imports pydantic, never torch: the service image
ships it to render and check what it hands the trainer.

Modules: `base` (strictness, rules, ranges, `ConfigError`), `sections` (one model per
section), `trainer_config` (`TrainerConfig`, rules across sections, the world size), `load`
(files, overrides, problems by path), `schema` (JSON Schema).
"""

from trainer.config.base import ConfigError, Range, Section
from trainer.config.load import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    validate,
)
from trainer.config.schema import json_schema
from trainer.config.sections import (
    DEFAULT_RESULT_PATH,
    BatchConfig,
    CheckpointConfig,
    CorruptKind,
    DataConfig,
    DataSourceConfig,
    DecayShape,
    Dtype,
    EvalConfig,
    FaultsConfig,
    JobConfig,
    LossScaleConfig,
    MetricsConfig,
    ModelConfig,
    MoEConfig,
    OptimizerConfig,
    ParallelConfig,
    PrecisionConfig,
    ScheduleConfig,
    ScheduleKind,
    StageConfig,
    TrainConfig,
)
from trainer.config.trainer_config import (
    SCHEMA_VERSION,
    TrainerConfig,
    data_parallel_size,
    example_config,
    world_problems,
)

__all__ = [
    "DEFAULT_RESULT_PATH",
    "SCHEMA_VERSION",
    "BatchConfig",
    "CheckpointConfig",
    "ConfigError",
    "CorruptKind",
    "DataConfig",
    "DataSourceConfig",
    "DecayShape",
    "Dtype",
    "EvalConfig",
    "FaultsConfig",
    "JobConfig",
    "LossScaleConfig",
    "MetricsConfig",
    "ModelConfig",
    "MoEConfig",
    "OptimizerConfig",
    "ParallelConfig",
    "PrecisionConfig",
    "Range",
    "ScheduleConfig",
    "ScheduleKind",
    "Section",
    "StageConfig",
    "TrainConfig",
    "TrainerConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "data_parallel_size",
    "example_config",
    "json_schema",
    "load_config",
    "validate",
    "world_problems",
]
