"""The one place that reads the environment: every knob of the service, prefixed `PRETRAIN_`."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# What a local trainer or tokenizer process is given of this process's environment: where
# programs and Python live, locale, and the knobs of torch, its threads and its devices. Nothing
# else: the service's own PRETRAIN_ settings (admin token, database URL) and whatever else the
# service runs with (cloud credentials) stay out of a process that runs a user's job.
TRAINER_ENV_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV", "LD_LIBRARY_PATH"}
)
TRAINER_ENV_PREFIXES = (
    "PYTHON", "LC_", "OMP_", "MKL_", "OPENBLAS_", "TORCH", "CUDA_", "CUBLAS_", "NCCL_", "GLOO_",
    "NVIDIA_", "TRITON_", "HF_", "TOKENIZERS_",
)  # fmt: skip

# Secrets that appear in docs and examples; a production install must never run on them.
KNOWN_DEFAULT_SECRETS = frozenset({"changeme", "change-me", "admin", "secret", "password", "token"})
MIN_ADMIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    """Service configuration; each field is read from `PRETRAIN_<FIELD>`."""

    # hide_input_in_errors: a model validator's error would otherwise print every field it was
    # given, the admin token and the database URL's password among them.
    model_config = SettingsConfigDict(env_prefix="PRETRAIN_", extra="ignore", hide_input_in_errors=True)

    environment: Literal["development", "production"] = Field(
        "production",
        description="`production` refuses default or missing secrets; `development` (an explicit "
        "opt-in) allows the embedded SQLite file and a generated admin token.",
    )
    state_dir: Path = Field(
        Path(".pretrain"),
        description="Where the embedded default keeps its SQLite file and generated admin token.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; unset means the embedded SQLite file under `state_dir`.",
    )
    redis_url: str | None = Field(
        None, description="Redis URL for Celery and metric streams; unset = in-process queue."
    )
    redis_password: SecretStr | None = Field(
        None,
        description="Redis AUTH password, sent with `redis_url` (a setting of its own, so that a "
        "Secret can hold it alone, as the chart's does).",
    )
    backend: Literal["local", "kubernetes"] = Field(
        "local", description="Where attempts run: local torchrun processes or PyTorchJobs."
    )
    admin_token: SecretStr | None = Field(
        None, description="Bootstraps one admin principal that can create the other tokens."
    )
    namespace: str = Field("default", description="Kubernetes namespace for training workloads.")
    kubernetes_workload: Literal["kubeflow-pytorchjob", "kubeflow-trainer"] = Field(
        "kubeflow-pytorchjob",
        description="What a pretrain attempt runs as with the kubernetes backend: a Training "
        "Operator v1 `PyTorchJob`, or a Kubeflow Trainer v2 `TrainJob`.",
    )
    trainer_runtime: str = Field(
        "torch-distributed",
        description="The ClusterTrainingRuntime a `TrainJob` names (`kubeflow-trainer` only).",
    )
    trainer_image: str = Field(
        "pretrain-orchestrator/trainer:0.1.0", description="Container image of the trainer pods."
    )
    checkpoint_root: str | None = Field(
        None,  # filled in below: it depends on the backend
        description="Where trainers write checkpoints: the checkpoint volume's mount path "
        "(default /checkpoints), or `<state_dir>/checkpoints` with the local backend.",
    )
    checkpoint_mount: str | None = Field(
        None,
        description="Where this service's processes see the checkpoint volume (the files trainers "
        "see at `checkpoint_root`), to verify a checkpoint before resuming from it; unset: not "
        "mounted (the local backend shares `checkpoint_root` itself).",
    )
    data_root: str = Field("/data", description="Where trainer pods read corpora (the data volume).")
    data_roots: list[str] | None = Field(
        None,
        description="Directories the paths in a job spec (data, corpora, tokenizer, checkpoint "
        "storage) may name, JSON list of absolute paths; unset: `state_dir`, `data_root` and "
        "`checkpoint_root`. Anything else is refused with 422.",
    )
    path_schemes: list[str] = Field(
        default_factory=lambda: ["s3://", "embedded://"],
        description="URI schemes a spec path may use instead of a local path (JSON list); "
        "`file://` is never accepted.",
    )
    checkpoint_pvc: str | None = Field(
        None, description="PersistentVolumeClaim mounted at `checkpoint_root` in trainer pods."
    )
    data_pvc: str | None = Field(
        None, description="PersistentVolumeClaim mounted read-only at `data_root` in trainer pods."
    )
    ingest_url: str = Field(
        "http://127.0.0.1:8000",
        description="The API as trainer pods reach it, for metrics and checkpoint reports.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node selector for trainer pods (JSON object)."
    )
    tolerations: list[dict[str, str]] = Field(
        default_factory=list, description="Tolerations for trainer pods (JSON list)."
    )
    scheduling_queue: str | None = Field(
        None,
        description="Queue (Kueue LocalQueue, or Volcano's) of training workloads unless a job "
        "names its own; with one they are created suspended for Kueue to admit. Unset = none.",
    )
    priority_class: str | None = Field(
        None, description="PriorityClass of trainer pods and their gang; unset = cluster default."
    )
    trainer_passthrough_env: list[str] = Field(
        default_factory=list,
        description="Names of further variables of this process's environment the local "
        "backend passes to trainers (JSON list; e.g. an object store's credentials).",
    )
    max_pod_failure_retries: int = Field(
        3, ge=0, description="Attempts a job may open after retryable pod failures."
    )
    stall_timeout_floor_s: float = Field(
        120.0,
        gt=0,
        description="Shortest stall timeout a job gets when its spec leaves watchdog.stall_timeout_s "
        "unset (the default is a multiple of its measured step time, never below this).",
    )
    stall_startup_s: float = Field(
        900.0,
        gt=0,
        description="How long an attempt may run before its first step without counting as "
        "stalled (start-up: loading the checkpoint, building data indices), whatever its timeout.",
    )
    api_host: str = Field("127.0.0.1", description="Address `pretrainctl serve` binds.")
    api_port: int = Field(8000, ge=1, le=65535, description="Port `pretrainctl serve` binds.")
    api_url: str = Field(
        "http://127.0.0.1:8000", description="Where `pretrainctl` finds the API."
    )
    api_token: SecretStr | None = Field(None, description="Bearer token `pretrainctl` sends.")
    max_request_bytes: int = Field(
        1 << 20, ge=1024, description="Request bodies larger than this are refused with 413."
    )
    max_json_spec_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="Largest JSON job spec `POST /v1/jobs` and `/v1/plan` read (413 beyond); "
        "also bounded by `max_request_bytes`.",
    )
    max_yaml_spec_bytes: int = Field(
        256 << 10,
        ge=1024,
        description="Largest YAML job spec those routes read (413 beyond): YAML is parsed in "
        "Python, about a hundred times slower than JSON.",
    )
    max_spec_values: int = Field(
        20_000,
        ge=100,
        description="Values a job spec may hold, each YAML alias counted as what it repeats; "
        "parsing stops with 422 at the first one beyond.",
    )
    max_spec_depth: int = Field(
        32, ge=8, le=200, description="Nesting depth a job spec may reach (422 beyond)."
    )
    spec_budget_s: float = Field(
        2.0,
        gt=0,
        le=600,
        description="Seconds a request may spend parsing and validating a job spec, waiting "
        "included; then it ends with a 422 that says so.",
    )
    spec_workers: int = Field(
        4,
        ge=1,
        le=64,
        description="Processes that parse and validate job specs, apart from the server's, so "
        "that slow specs queue among themselves and never hold the event loop.",
    )
    spec_rate_per_s: float = Field(
        5.0,
        gt=0,
        description="Requests per second each principal may make to `POST /v1/jobs` and "
        "`/v1/plan` on average (429 with Retry-After beyond).",
    )
    spec_rate_burst: int = Field(
        20, ge=1, description="Requests a principal may make to those routes at once."
    )
    default_page_size: int = Field(50, ge=1, le=500, description="List page size when unset.")
    max_page_size: int = Field(500, ge=1, le=10_000, description="Largest page a list returns.")
    log_level: str = Field("info", description="Log level of the service processes.")
    migrations_dir: Path = Field(
        Path(__file__).resolve().parent.parent / "migrations",
        description="Alembic scripts; the service image copies them beside the package.",
    )

    @field_validator("database_url")
    @classmethod
    def _use_the_psycopg3_driver(cls, url: str | None) -> str | None:
        # Plain postgres:// URLs would make SQLAlchemy look for psycopg2, which we do not ship.
        for plain in ("postgres://", "postgresql://"):
            if url is not None and url.startswith(plain):
                return "postgresql+psycopg://" + url[len(plain) :]
        return url

    @field_validator("data_roots")
    @classmethod
    def _roots_are_absolute(cls, roots: list[str] | None) -> list[str] | None:
        # A relative root would confine paths to wherever the process happens to start.
        for root in roots or []:
            if not root.startswith("/"):
                raise ValueError(f"data_roots entries must be absolute paths, got {root!r}")
        return roots

    @field_validator("path_schemes")
    @classmethod
    def _schemes_are_remote(cls, schemes: list[str]) -> list[str]:
        # file:// would name any local path, past the roots; schemes are written with their //.
        for scheme in schemes:
            if not re.fullmatch(r"[a-z][a-z0-9+.-]*://", scheme) or scheme == "file://":
                raise ValueError(f"path_schemes entries look like s3:// and are not file://, got {scheme!r}")
        return schemes

    @model_validator(mode="after")
    def _default_checkpoint_root_by_backend(self) -> Settings:
        if self.checkpoint_root is None:
            local = str((self.state_dir / "checkpoints").resolve())
            self.checkpoint_root = local if self.backend == "local" else "/checkpoints"
        return self

    @model_validator(mode="after")
    def _refuse_default_secrets_in_production(self) -> Settings:
        if self.environment != "production":
            return self
        if self.database_url is None or self.database_url.startswith("sqlite"):
            raise ValueError(
                "production needs PRETRAIN_DATABASE_URL pointing at Postgres "
                "(PRETRAIN_ENVIRONMENT=development runs on the embedded SQLite file)"
            )
        token = self.admin_token.get_secret_value() if self.admin_token else None
        if token is not None and (
            token.lower() in KNOWN_DEFAULT_SECRETS or len(token) < MIN_ADMIN_TOKEN_LENGTH
        ):
            raise ValueError(
                "PRETRAIN_ADMIN_TOKEN is a default or shorter than "
                f"{MIN_ADMIN_TOKEN_LENGTH} characters; production refuses it"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        """The configured URL, or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'orchestrator.db').resolve()}"

    @property
    def allowed_path_roots(self) -> list[str]:
        """The directories spec paths may name: `data_roots`, or the state, data and checkpoint
        directories this install already reads and writes."""
        if self.data_roots is not None:
            return list(self.data_roots)
        defaults = [str(self.state_dir.resolve()), self.data_root, self.checkpoint_root]
        return [root for root in dict.fromkeys(defaults) if root]

    @property
    def resolved_redis_url(self) -> str | None:
        """`redis_url` with `redis_password` in its userinfo: what clients connect with. Kept out
        of the fields, so that a repr of the settings never shows the password."""
        if not self.redis_url or self.redis_password is None:
            return self.redis_url
        parts = urlsplit(self.redis_url)
        host = parts.netloc.rpartition("@")[2]
        password = quote(self.redis_password.get_secret_value(), safe="")
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{password}@{host}"))

    @property
    def is_embedded(self) -> bool:
        """True on the embedded default: SQLite and in-process queue."""
        return self.resolved_database_url.startswith("sqlite")

    @property
    def generated_admin_token_path(self) -> Path:
        """Where a development server writes the admin token it made up for itself."""
        return self.state_dir / "admin-token"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def trainer_environment(given: dict[str, str], *, passthrough: Iterable[str] = ()) -> dict[str, str]:
    """The environment of a local trainer or tokenizer: the allowed share of this process's
    (TRAINER_ENV_NAMES, TRAINER_ENV_PREFIXES, and the names in `passthrough`), plus `given`."""
    allowed = TRAINER_ENV_NAMES | set(passthrough)
    env = {
        name: value
        for name, value in os.environ.items()
        if (name in allowed or name.startswith(TRAINER_ENV_PREFIXES)) and not name.startswith("PRETRAIN_")
    }
    env.update(given)
    return env
