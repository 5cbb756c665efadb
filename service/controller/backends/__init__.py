"""Where workloads run. Every backend answers the same three questions, idempotently."""

from __future__ import annotations

from typing import Protocol

from service.controller.manifests import AnyWorkload
from service.controller.reconcile import WorkloadStatus


class TemporaryBackendError(Exception):
    """Worth retrying later: API 5xx, timeouts, conflicts, a backend restarting."""


class PermanentBackendError(Exception):
    """Retrying will not help (invalid manifest, forbidden): the job fails with this reason."""


class Backend(Protocol):
    """`kind` is the job's kind (`pretrain`, `tokenizer`, `data`): what sort of workload to look for."""

    def observe(self, job_id: int, *, kind: str = "pretrain") -> dict[int, WorkloadStatus]:
        """This job's workloads by attempt number, as they are now."""
        ...

    def create(self, workload: AnyWorkload) -> bool:
        """Create the workload unless it exists; True if this call created it."""
        ...

    def delete(self, job_id: int, attempt: int, *, kind: str = "pretrain") -> bool:
        """Delete the workload if it exists; True if this call deleted it."""
        ...


class LogReader(Protocol):
    """A backend that can read its workloads' logs (the local one; Kubernetes' pods are read
    with kubectl: the API holds no cluster credentials)."""

    def logs(self, job_id: int, attempt: int, *, tail: int | None = None) -> str | None:
        """The attempt's log, its last `tail` lines if given; None if it never started here."""
        ...
