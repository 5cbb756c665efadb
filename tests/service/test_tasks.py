"""The queue: a real Celery worker on real Redis reconciles a job the moment the API changes it."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from celery.contrib.testing.worker import start_worker
from fastapi.testclient import TestClient

from service import main, tasks
from service.api.app import create_app
from service.controller import loop
from service.controller.manifests import workload_name
from service.settings import Settings
from tests.conftest import ADMIN_TOKEN, auth
from tests.service.controller.k8s_emulator import running_emulator


@pytest.fixture
def cluster():
    with running_emulator("training") as started:
        yield started


@pytest.fixture
def queued_settings(pg_url, redis_url, tmp_path, cluster, monkeypatch) -> Settings:
    settings = Settings(
        database_url=pg_url,
        redis_url=redis_url,
        backend="kubernetes",
        namespace="training",
        admin_token=ADMIN_TOKEN,
        state_dir=tmp_path,
    )
    # The worker's controller talks to the emulator (the cluster's API server in this test).
    from kubernetes import client

    from service.controller.backends.kubernetes import KubernetesBackend

    monkeypatch.setattr(
        KubernetesBackend,
        "from_environment",
        classmethod(lambda cls, s, **kw: cls(s, client.Configuration(host=cluster[0]), request_timeout_s=2.0)),
    )
    return settings


def eventually(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError("condition never held")


def test_a_submission_is_launched_by_a_celery_worker_and_a_cancel_deletes_it(queued_settings, cluster, tiny_spec):
    _, k8s = cluster
    app = main.worker_app(queued_settings)
    notifier = tasks.CeleryNotifier(queued_settings, app)  # the API sends through the app the worker serves
    with start_worker(app, perform_ping_check=False, pool="solo", loglevel="WARNING"), TestClient(
        create_app(queued_settings, notifier=notifier)
    ) as api:
        job = api.post("/v1/jobs", json=tiny_spec, headers=auth(ADMIN_TOKEN)).json()
        name = workload_name(job["name"], job["id"], 0)
        eventually(lambda: name in k8s.names("pytorchjobs"))

        api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(ADMIN_TOKEN))
        eventually(lambda: name not in k8s.names("pytorchjobs"))
        final = eventually(
            lambda: (j := api.get(f"/v1/jobs/{job['id']}", headers=auth(ADMIN_TOKEN)).json())["state"] == "cancelled" and j
        )
    assert final["state"] == "cancelled"
    assert k8s.count("create", "pytorchjobs") == 1


def test_on_the_embedded_default_a_change_wakes_the_controller_at_once(tmp_path, tiny_spec, monkeypatch):
    """The controller's own poll is an hour here: only the API's notification can wake it."""
    from service.db import migrate

    monkeypatch.setattr(loop, "POLL_S", 3600.0)
    settings = Settings(state_dir=tmp_path, admin_token=ADMIN_TOKEN)
    migrate.upgrade(settings)
    app = main.embedded_api(settings)
    before = datetime.now(UTC)
    with TestClient(app) as api:
        # Its first poll is over before the job exists; after it, it sleeps for the hour.
        eventually(lambda: app.state.controller._last_poll >= before, timeout=10)
        job = api.post("/v1/jobs", json=tiny_spec, headers=auth(ADMIN_TOKEN)).json()
        try:
            events = f"/v1/jobs/{job['id']}/events"
            kinds = lambda: [e["kind"] for e in api.get(events, headers=auth(ADMIN_TOKEN)).json()["data"]]  # noqa: E731
            eventually(lambda: "workload.created" in kinds(), timeout=10)

            api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(ADMIN_TOKEN))
            final = eventually(
                lambda: (j := api.get(f"/v1/jobs/{job['id']}", headers=auth(ADMIN_TOKEN)).json())["state"] == "cancelled" and j,
                timeout=30,
            )
        finally:  # never leave a trainer running past the test
            app.state.controller.backend.delete(job["id"], 0)
    assert final["state"] == "cancelled"


class _Reconciler:
    def __init__(self, requeue: float | None) -> None:
        self.requeue = requeue
        self.calls = 0

    def reconcile(self, job_id: int) -> float | None:
        self.calls += 1
        return self.requeue


@pytest.mark.parametrize(("requeue", "retried"), [(2.0, True), (tasks.REQUEUE_RUNNING_S, False), (None, False)])
def test_the_task_retries_only_while_something_is_in_motion(requeue, retried):
    """A running job's steady 5 s look belongs to the controller loop; retrying it from the
    worker would exhaust max_retries and log an error for every healthy job."""
    from celery.exceptions import Retry

    settings = Settings(redis_url="redis://127.0.0.1:1/0")
    reconciler = _Reconciler(requeue)
    task = tasks.make_app(settings, controller=lambda: reconciler).tasks[tasks.RECONCILE]
    task.push_request(retries=0, is_eager=True)  # what a worker sets; retry() raises Retry
    try:
        if retried:
            with pytest.raises(Retry):
                task.run(7)
        else:
            task.run(7)
    finally:
        task.pop_request()
    assert reconciler.calls == 1


def test_each_app_reconciles_with_its_own_controller():
    """Two apps in one process (tests, or an embedded server beside a worker) must not share
    the task: a shared Celery task runs with whichever app registered it first."""
    first, second = _Reconciler(None), _Reconciler(None)
    first_task = tasks.make_app(Settings(redis_url="redis://127.0.0.1:1/0"), controller=lambda: first).tasks[tasks.RECONCILE]
    second_task = tasks.make_app(Settings(redis_url="redis://127.0.0.1:1/1"), controller=lambda: second).tasks[tasks.RECONCILE]
    second_task.run(3)
    second_task.run(4)
    first_task.run(3)
    assert (first.calls, second.calls) == (1, 2)


def test_an_app_builds_its_controller_once_and_only_when_a_task_runs():
    built: list[_Reconciler] = []
    task = tasks.make_app(
        Settings(redis_url="redis://127.0.0.1:1/0"), controller=lambda: built.append(_Reconciler(None)) or built[-1]
    ).tasks[tasks.RECONCILE]
    assert built == []
    task.run(1)
    task.run(2)
    assert len(built) == 1 and built[0].calls == 2
