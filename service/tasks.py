"""Asynchronous actions: Celery on Redis in a cluster, the same work in-process without Redis.

A task only says *which* job to look at; the work is the controller's idempotent reconcile,
so a task run twice, or racing the controller loop, does nothing twice (the job row is
locked with SKIP LOCKED). Task ids are derived from the job and the change, so re-sending
the same change is recognisable.

Who hears of a change is the composition root's choice (`service.main`): a `CeleryNotifier`
where there is Redis, an `InProcessNotifier` the embedded controller listens to otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from celery import Celery

from service.controller.reconcile import REQUEUE_RUNNING_S
from service.settings import Settings

log = logging.getLogger(__name__)

RECONCILE = "pretrain.reconcile"


class Reconciler(Protocol):
    def reconcile(self, job_id: int) -> float | None: ...


class Notifier(Protocol):
    """Says that a job changed, so that it is reconciled soon; never fails the caller."""

    def job_changed(self, job_id: int, change: str) -> None: ...


def make_app(settings: Settings, controller: Callable[[], Reconciler]) -> Celery:
    """The Celery app on `settings.resolved_redis_url`; its reconcile task runs `controller()`'s reconcile.

    `controller` is called once, on the first task, so that an app that only sends builds none.
    """
    app = Celery("pretrain-orchestrator", broker=settings.resolved_redis_url)
    app.conf.update(
        task_acks_late=True,  # a worker killed mid-task leaves the task for another worker
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    built: list[Reconciler] = []
    lock = threading.Lock()

    def reconciler() -> Reconciler:
        with lock:
            if not built:
                built.append(controller())
            return built[0]

    # shared=False: a shared task is added to every app finalized later in the process, and the
    # first registration wins, so a second app would run the reconcile with the first's controller.
    @app.task(name=RECONCILE, bind=True, max_retries=10, shared=False)
    def reconcile_job(task, job_id: int) -> None:
        requeue = reconciler().reconcile(job_id)
        if requeue is not None and requeue < REQUEUE_RUNNING_S:
            # Something is in motion (a create, a delete): look again shortly, from any worker.
            # A running job's steady look is the controller loop's business, not a retry's:
            # retrying it would exhaust max_retries on every healthy job.
            raise task.retry(countdown=requeue)

    return app


class CeleryNotifier:
    """Sends a reconcile task through Redis; a worker (any) runs it."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        # An app that only sends needs no controller: the factory is never called here.
        self.app = app or make_app(settings, controller=_no_controller)

    def job_changed(self, job_id: int, change: str) -> None:
        try:
            self.app.send_task(RECONCILE, args=[job_id], task_id=f"reconcile-{job_id}-{change}")
        except Exception as exc:  # the controller loop will still get there; never fail the request
            log.warning("could not queue reconcile of job %d: %s", job_id, exc)


class InProcessNotifier:
    """Calls the listeners in this process (the embedded controller's `notify`)."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[int], None]] = []

    def listen(self, listener: Callable[[int], None]) -> None:
        self._listeners.append(listener)

    def job_changed(self, job_id: int, change: str) -> None:
        for listener in self._listeners:
            listener(job_id)


def notifier_for(settings: Settings) -> Notifier:
    """Celery with Redis; without it, in-process (nobody listens unless a controller does)."""
    return CeleryNotifier(settings) if settings.redis_url else InProcessNotifier()


def _no_controller() -> Reconciler:
    raise RuntimeError("this Celery app only sends tasks; run `pretrainctl worker` to run them")
