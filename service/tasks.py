"""Asynchronous actions: Celery on Redis in a cluster, the same work in-process without Redis.

A task only says *which* job to look at; the work is the controller's idempotent reconcile,
so a task run twice, or racing the controller loop, does nothing twice (the job row is
locked with SKIP LOCKED). Task ids are derived from the job and the change, so re-sending
the same change is recognisable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery

from service.controller.reconcile import REQUEUE_RUNNING_S
from service.settings import Settings

log = logging.getLogger(__name__)

RECONCILE = "pretrain.reconcile"
# In-process listeners (the embedded controller) for when there is no Redis.
_local_listeners: list[Callable[[int], None]] = []


def make_app(settings: Settings) -> Celery:
    """The Celery app on `settings.redis_url`, with the reconcile task registered."""
    app = Celery("pretrain-orchestrator", broker=settings.redis_url)
    app.conf.update(
        task_acks_late=True,  # a worker killed mid-task leaves the task for another worker
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    # shared=False: a shared task is added to every app finalized later in the process, and the
    # first registration wins, so a second app would run the reconcile with the first's settings.
    @app.task(name=RECONCILE, bind=True, max_retries=10, shared=False)
    def reconcile_job(task, job_id: int) -> None:
        requeue = _controller(settings).reconcile(job_id)
        if requeue is not None and requeue < REQUEUE_RUNNING_S:
            # Something is in motion (a create, a delete): look again shortly, from any worker.
            # A running job's steady look is the controller loop's business, not a retry's:
            # retrying it would exhaust max_retries on every healthy job.
            raise task.retry(countdown=requeue)

    return app


# One controller and one app per Settings object (settings are not hashable; they live long).
_controllers: dict[int, object] = {}
_apps: dict[int, Celery] = {}


def _controller(settings: Settings):
    if id(settings) not in _controllers:
        from service.controller.loop import Controller, backend_for
        from service.db.session import get_sessionmaker

        _controllers[id(settings)] = Controller(
            settings, backend_for(settings), get_sessionmaker(settings.resolved_database_url)
        )
    return _controllers[id(settings)]


def _app(settings: Settings) -> Celery:
    if id(settings) not in _apps:
        _apps[id(settings)] = make_app(settings)
    return _apps[id(settings)]


def listen_in_process(listener: Callable[[int], None]) -> None:
    """Run `listener(job_id)` on every change (the embedded controller's `notify`)."""
    _local_listeners.append(listener)


def job_changed(settings: Settings, job_id: int, change: str) -> None:
    """Have the job reconciled soon: a Celery task with Redis, the in-process controller without."""
    if settings.redis_url:
        try:
            _app(settings).send_task(RECONCILE, args=[job_id], task_id=f"reconcile-{job_id}-{change}")
        except Exception as exc:  # the controller loop will still get there; never fail the request
            log.warning("could not queue reconcile of job %d: %s", job_id, exc)
        return
    for listener in _local_listeners:
        listener(job_id)
