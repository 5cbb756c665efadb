"""The one place that reads the environment: every knob of the service, prefixed `PRETRAIN_`."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Secrets that appear in docs and examples; a production install must never run on them.
KNOWN_DEFAULT_SECRETS = frozenset({"changeme", "change-me", "admin", "secret", "password", "token"})
MIN_ADMIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    """Service configuration; each field is read from `PRETRAIN_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="PRETRAIN_", extra="ignore")

    environment: Literal["development", "production"] = Field(
        "development", description="`production` refuses default or missing secrets."
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
    backend: Literal["local", "kubernetes"] = Field(
        "local", description="Where attempts run: local torchrun processes or PyTorchJobs."
    )
    admin_token: SecretStr | None = Field(
        None, description="Bootstraps one admin principal that can create the other tokens."
    )
    namespace: str = Field("default", description="Kubernetes namespace for training workloads.")
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
        None, description="Gang-scheduling queue (Volcano/Kueue) for PyTorchJobs; unset = none."
    )
    priority_class: str | None = Field(
        None, description="PriorityClass of trainer pods and their gang; unset = cluster default."
    )
    max_pod_failure_retries: int = Field(
        3, ge=0, description="Attempts a job may open after retryable pod failures."
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
        description="Threads that parse and validate job specs, apart from those serving the "
        "other routes, so that slow specs queue among themselves.",
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
            raise ValueError("production needs PRETRAIN_DATABASE_URL pointing at Postgres")
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


def environment_for_child(settings: dict[str, str], *, keep: frozenset[str] = frozenset({"log_level"})) -> dict[str, str]:
    """This process's environment for a child service that must run on exactly `settings`
    (field name → value): every other `PRETRAIN_` variable is dropped, except those in `keep`."""
    kept = {f"PRETRAIN_{name.upper()}" for name in keep}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRETRAIN_") or k in kept}
    env.update({f"PRETRAIN_{name.upper()}": value for name, value in settings.items()})
    return env
