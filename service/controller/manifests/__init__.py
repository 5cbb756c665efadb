"""Kubernetes manifests of an attempt, by what each module owns.

`workloads`: what an attempt runs and what its objects are called; `pod`: what every
attempt's objects share (metadata, the token Secret, volumes, tolerations); `pytorchjob`: a
training attempt's PyTorchJob and ConfigMap; `batch_job`: a tokenizer attempt's batch Job;
`review`: the manifests a spec would launch, as YAML for a person (`pretrainctl render`).
"""

from service.controller.manifests.batch_job import (
    BATCH_JOB_API_VERSION,
    BATCH_JOB_KIND,
    RESULT_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_CONFIG_PATH,
    TOKENIZER_CONTAINER_NAME,
    TOKENIZER_LABELS,
    TOKENIZER_TTL_AFTER_FINISHED_S,
    render_tokenizer_manifests,
    tokenizer_command,
)
from service.controller.manifests.pod import CONFIG_DIR, TOKEN_ENV, TOKEN_KEY
from service.controller.manifests.pytorchjob import (
    CONFIG_FILE,
    CONFIG_PATH,
    CONTAINER_NAME,
    GPU_RESOURCE,
    KUEUE_QUEUE_LABEL,
    MASTER_PORT,
    MASTER_PORT_NAME,
    PYTORCHJOB_API_VERSION,
    PYTORCHJOB_KIND,
    TERMINATION_GRACE_S,
    TERMINATION_LOG,
    TRAINER_COMMAND,
    render_manifests,
)
from service.controller.manifests.review import (
    POD_CHECKPOINT_ROOT,
    REVIEW_JOB_ID,
    REVIEW_TOKEN,
    render_for_review,
)
from service.controller.manifests.workloads import (
    MAX_WORKLOAD_NAME_LENGTH,
    AnyWorkload,
    TokenizerWorkload,
    Workload,
    config_map_name,
    secret_name,
    workload_labels,
    workload_name,
)

__all__ = [
    "BATCH_JOB_API_VERSION",
    "BATCH_JOB_KIND",
    "CONFIG_DIR",
    "CONFIG_FILE",
    "CONFIG_PATH",
    "CONTAINER_NAME",
    "GPU_RESOURCE",
    "KUEUE_QUEUE_LABEL",
    "MASTER_PORT",
    "MASTER_PORT_NAME",
    "MAX_WORKLOAD_NAME_LENGTH",
    "POD_CHECKPOINT_ROOT",
    "PYTORCHJOB_API_VERSION",
    "PYTORCHJOB_KIND",
    "RESULT_FILE",
    "REVIEW_JOB_ID",
    "REVIEW_TOKEN",
    "TERMINATION_GRACE_S",
    "TERMINATION_LOG",
    "TOKENIZER_CONFIG_FILE",
    "TOKENIZER_CONFIG_PATH",
    "TOKENIZER_CONTAINER_NAME",
    "TOKENIZER_LABELS",
    "TOKENIZER_TTL_AFTER_FINISHED_S",
    "TOKEN_ENV",
    "TOKEN_KEY",
    "TRAINER_COMMAND",
    "AnyWorkload",
    "TokenizerWorkload",
    "Workload",
    "config_map_name",
    "render_for_review",
    "render_manifests",
    "render_tokenizer_manifests",
    "secret_name",
    "tokenizer_command",
    "workload_labels",
    "workload_name",
]
