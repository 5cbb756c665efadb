"""The controller against the Kubernetes emulator: what the tests that run it share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client
from sqlalchemy import select

from service.controller.backends.kubernetes import KubernetesBackend
from service.controller.loop import Controller
from service.controller.manifests import workload_name
from service.db import repo
from service.db.models import Event, Job, Role
from service.db.session import get_sessionmaker
from service.settings import Settings
from service.tokens import Principal
from tests.service.controller.k8s_emulator import EmulatorHandle

NAMESPACE = "training"
ALICE = Principal(name="alice", role=Role.SUBMITTER)


class Killed(BaseException):
    """The controller dies here: nothing catches it, nothing after it runs or commits."""


def cluster_settings(pg_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings of a controller that runs jobs in the emulator's namespace, on Postgres."""
    fields: dict[str, Any] = {
        "database_url": pg_url,
        "backend": "kubernetes",
        "namespace": NAMESPACE,
        "state_dir": tmp_path,
        "ingest_url": "http://pretrain-api:8000",
        "max_pod_failure_retries": 2,
    }
    return Settings(**(fields | overrides))


def make_controller(
    settings: Settings, cluster: tuple[str, EmulatorHandle], *, kill_after: int | None = None
) -> Controller:
    """A freshly started controller; `kill_after` N: it dies once its Nth API request took effect
    (0: before its first)."""
    backend = KubernetesBackend(
        settings, client.Configuration(host=cluster[0]), request_timeout_s=2.0
    )
    if kill_after is not None:
        original = backend._api.call_api
        done = 0

        def call_api(*args, **kwargs):
            nonlocal done
            if kill_after == 0:
                raise Killed
            result = original(*args, **kwargs)
            done += 1
            if done == kill_after:
                raise Killed
            return result

        backend._api.call_api = call_api
    return Controller(settings, backend, get_sessionmaker(settings.resolved_database_url))


def name_of(job: Job, attempt: int) -> str:
    """The attempt's workload name: what its objects in the cluster are called."""
    return workload_name(job.name, job.id, attempt)


def stored(settings: Settings, job_id: int) -> Job:
    """The job as the database has it now, with its attempts."""
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return repo.get_job(session, job_id=job_id)


def event_kinds(settings: Settings, job_id: int) -> list[str]:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return list(
            session.scalars(select(Event.kind).where(Event.job_id == job_id).order_by(Event.id))
        )
