"""What an attempt runs on Kubernetes, and what its objects are called and labelled."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

# Pod names add `-master-0` / `-worker-<N>` to the PyTorchJob's name; 45 leaves room for
# ten thousand workers inside the 63 characters of a DNS-1123 label.
MAX_WORKLOAD_NAME_LENGTH = 45
# Where an attempt's config is mounted in its pods, and how its ingest token reaches the trainer.
CONFIG_DIR = "/etc/pretrain"
TOKEN_KEY = "token"
TOKEN_ENV = "PRETRAIN_INGEST_TOKEN"
# The trainer saves a checkpoint on SIGTERM before it exits; the default 30 s cuts that short.
TERMINATION_GRACE_S = 300
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Workload:
    """What one attempt runs: the rendered trainer config and the machines it runs on."""

    job_id: int
    job_name: str
    attempt: int
    trainer_config: dict[str, Any]
    ingest_token: str | None
    nodes: int
    gpus_per_node: int
    gpu_type: str
    gpu_memory_gib: float | None = None
    """Memory of one GPU, or of one CPU process: sizes the memory request of CPU pods."""
    env_secrets: tuple[str, ...] = ()
    """Secrets whose keys the trainer's environment takes (object-store credentials)."""
    queue: str | None = None
    """The Kueue LocalQueue that admits it; set, the workload is created suspended."""
    priority: str | None = None
    """Kueue's WorkloadPriorityClass of its place in the queue."""
    termination_grace_s: int = TERMINATION_GRACE_S
    """How long its pods have after SIGTERM to save a checkpoint and exit."""

    @property
    def name(self) -> str:
        """The PyTorchJob's name; the ConfigMap and Secret are named after it."""
        return workload_name(self.job_name, self.job_id, self.attempt)


def workload_name(job_name: str, job_id: int, attempt: int, *, prefix: str = "a") -> str:
    """`<name>-<id>-a<attempt>` (`-e<step>` for an evaluation), the name part shortened so the
    whole fits 45 characters."""
    if job_id < 0 or attempt < 0:
        raise ValueError(f"job id {job_id} and attempt {attempt} must not be negative")
    if not _DNS_LABEL.match(job_name) or not job_name[0].isalpha():
        raise ValueError(
            f"job name {job_name!r} is not a DNS-1123 label starting with a letter "
            "(lowercase letters, digits and '-')"
        )
    suffix = f"-{job_id}-{prefix}{attempt}"
    room = MAX_WORKLOAD_NAME_LENGTH - len(suffix)
    stem = job_name[:room].rstrip("-")
    if room < 1 or not stem:
        raise ValueError(f"job id {job_id} and attempt {attempt} leave no room for a name")
    return stem + suffix


@dataclass(frozen=True)
class _BatchJob:
    """What a batch workload is besides its config: one CPU pod that reports a result and exits."""

    job_id: int
    job_name: str
    attempt: int
    ingest_token: str | None
    ingest_url: str
    """The API as the workload reaches it: it reports progress and its result there."""
    cpu: int
    memory_gib: float

    @property
    def name(self) -> str:
        """The batch Job's name; the ConfigMap and Secret are named after it."""
        return workload_name(self.job_name, self.job_id, self.attempt)


@dataclass(frozen=True)
class TokenizerWorkload(_BatchJob):
    """What one attempt of a tokenizer job runs: the tokenizer library's job, on one CPU pod."""

    tokenizer_config: dict[str, Any]
    """The `run_tokenizer_job` config (`tokenizer_config.render_tokenizer_config`)."""

    @property
    def config(self) -> dict[str, Any]:
        return self.tokenizer_config

    @property
    def output_dir(self) -> str:
        """Where the tokenizer is written, and its result.json beside it."""
        return str(self.tokenizer_config["out"])


@dataclass(frozen=True)
class DataWorkload(_BatchJob):
    """What one attempt of a data job runs: the trainer's `prepare`, on one CPU pod."""

    data_config: dict[str, Any]
    """The `run_data_job` config (`data_config.render_data_config`)."""

    @property
    def config(self) -> dict[str, Any]:
        return self.data_config

    @property
    def output_dir(self) -> str:
        """The folder of the `.bin/.idx` pair and its sidecar, and of result.json."""
        return posixpath.dirname(str(self.data_config["output"]))


BatchWorkload = TokenizerWorkload | DataWorkload
"""A workload that runs one CPU pod as a batch Job and reports a result before it exits."""


@dataclass(frozen=True)
class EvaluationWorkload:
    """What scores one checkpoint of a pretraining job on its benchmarks (`trainer.benchmarks`,
    contract B), in a pod or process of its own, and reports the scores before it exits."""

    job_id: int
    job_name: str
    step: int
    trainer_config: dict[str, Any]
    """The training run's config (`trainer.export` reads the model's shape from it)."""
    checkpoint: str
    """The checkpoint directory scored, as the pods see it."""
    benchmarks: list[dict[str, Any]]
    """`[{"task", "path", "num_fewshot", "limit"}]`, paths as the pods see them."""
    output_dir: str
    """Where its result.json is kept."""
    ingest_token: str | None
    ingest_url: str
    cpu: int
    memory_gib: float
    gpus: int = 0
    env_secrets: tuple[str, ...] = ()
    """Secrets whose keys its environment takes (object-store credentials for s3:// items)."""

    @property
    def attempt(self) -> int:
        """What the backends file it under beside a job's attempts: its step."""
        return self.step

    @property
    def name(self) -> str:
        """`<name>-<id>-e<step>`: the batch Job's name; the ConfigMap and Secret are named after it."""
        return workload_name(self.job_name, self.job_id, self.step, prefix="e")


AnyWorkload = Workload | TokenizerWorkload | DataWorkload | EvaluationWorkload
EVALUATION_STEP_LABEL = "pretrain.io/evaluation-step"
# What the backends' `kind=` says for a job's evaluations (beside the job kinds of attempts).
EVALUATION_WORKLOAD_KIND = "evaluation"


def workload_labels(workload: AnyWorkload) -> dict[str, str]:
    """Labels on every object of an attempt (or an evaluation: its step), and on its pods."""
    if isinstance(workload, EvaluationWorkload):
        whose = {EVALUATION_STEP_LABEL: str(workload.step)}
    else:
        whose = {"pretrain.io/attempt": str(workload.attempt)}
    return {
        "app.kubernetes.io/name": "pretrain-trainer",
        "app.kubernetes.io/instance": workload.name,
        "app.kubernetes.io/managed-by": "pretrain-orchestrator",
        "app.kubernetes.io/part-of": "pretrain-orchestrator",
        "pretrain.io/job-id": str(workload.job_id),
        **whose,
    }


def config_map_name(workload: AnyWorkload) -> str:
    """The ConfigMap holding the attempt's trainer.json (tokenizer.json, data.json for those jobs)."""
    return f"{workload.name}-config"


def secret_name(workload: AnyWorkload) -> str:
    """The Secret holding the attempt's ingest token."""
    return f"{workload.name}-token"
