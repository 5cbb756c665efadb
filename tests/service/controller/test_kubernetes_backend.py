"""The Kubernetes backend over real HTTP: the official client against kmock's API emulator.

The tests that take `any_backend` run once for each kind a pretrain attempt may run as (a
PyTorchJob, a Trainer v2 TrainJob); the rest are about the PyTorchJob's own status words."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from service.controller.backends import PermanentBackendError, TemporaryBackendError
from service.controller.backends.kubernetes import (
    ATTEMPT_LABEL,
    JOB_ID_LABEL,
    MANAGED_BY_LABEL,
    MANAGER,
    KubernetesBackend,
    classify_failure,
    workload_phase,
)
from service.controller.manifests import Workload, render_manifests, workload_labels
from service.controller.reconcile import Phase
from service.settings import Settings
from tests.service.controller.k8s_emulator import EmulatorHandle

NAMESPACE = "training"
REQUEST_TIMEOUT_S = 0.5
SETTINGS = Settings(namespace=NAMESPACE)


def workload(job_id: int = 7, attempt: int = 0, nodes: int = 2, name: str = "tiny") -> Workload:
    return Workload(
        job_id=job_id,
        job_name=name,
        attempt=attempt,
        trainer_config={
            "job": {"id": str(job_id), "attempt": attempt},
            "metrics": {"token": "ingest-secret"},
        },
        ingest_token="ingest-secret",
        nodes=nodes,
        gpus_per_node=1,
        gpu_type="cpu",
    )


@pytest.fixture
def k8s(cluster: tuple[str, EmulatorHandle]) -> EmulatorHandle:
    return cluster[1]


@pytest.fixture
def backend(cluster: tuple[str, EmulatorHandle]) -> Iterator[KubernetesBackend]:
    base_url, _ = cluster
    with KubernetesBackend(
        SETTINGS,
        client.Configuration(host=base_url),
        request_timeout_s=REQUEST_TIMEOUT_S,
        watch_timeout_s=2.0,
    ) as backend:
        yield backend


PLURALS = {"kubeflow-pytorchjob": "pytorchjobs", "kubeflow-trainer": "trainjobs"}


@pytest.fixture(params=sorted(PLURALS))
def any_backend(
    request: pytest.FixtureRequest, cluster: tuple[str, EmulatorHandle]
) -> Iterator[tuple[KubernetesBackend, str]]:
    """A backend running attempts as either kind, and the plural its workloads are stored as."""
    settings = SETTINGS.model_copy(update={"kubernetes_workload": request.param})
    with KubernetesBackend(
        settings,
        client.Configuration(host=cluster[0]),
        request_timeout_s=REQUEST_TIMEOUT_S,
        watch_timeout_s=2.0,
    ) as backend:
        yield backend, PLURALS[request.param]


@pytest.fixture
def raw_api(cluster: tuple[str, EmulatorHandle]) -> Iterator[client.CustomObjectsApi]:
    api = client.ApiClient(client.Configuration(host=cluster[0]))
    yield client.CustomObjectsApi(api)
    api.close()


def eventually(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


class Recorder:
    """An `on_change` callback that remembers the job ids it was called with."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, job_id: int) -> None:
        with self._lock:
            self.calls.append(job_id)

    def count(self) -> int:
        with self._lock:
            return len(self.calls)


# --- create ----------------------------------------------------------------------------------


def test_create_stores_the_rendered_pytorchjob_and_its_owned_config_map_and_secret(
    backend: KubernetesBackend, k8s: EmulatorHandle
) -> None:
    assert backend.create(workload(nodes=3)) is True

    (job,) = k8s.objects("pytorchjobs")
    rendered = render_manifests(workload(nodes=3), SETTINGS)["pytorchjob"]
    assert job["kind"] == "PyTorchJob"
    assert job["metadata"]["name"] == "tiny-7-a0"
    assert job["spec"] == rendered["spec"]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 2)
    for replica in replicas.values():
        assert [c["name"] for c in replica["template"]["spec"]["containers"]] == ["pytorch"]
    assert job["metadata"]["labels"] == workload_labels(workload())
    assert job["metadata"]["labels"][JOB_ID_LABEL] == "7"
    assert job["metadata"]["labels"][ATTEMPT_LABEL] == "0"
    assert job["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGER

    uid = job["metadata"]["uid"]
    for plural, name in (("configmaps", "tiny-7-a0-config"), ("secrets", "tiny-7-a0-token")):
        owned = k8s.get(plural, name)
        assert owned is not None, f"{plural}/{name} missing"
        (owner,) = owned["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "name": "tiny-7-a0",
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def test_a_second_create_returns_false_and_stores_nothing_new(
    any_backend: tuple[KubernetesBackend, str], k8s: EmulatorHandle
) -> None:
    backend, kind = any_backend
    backend.create(workload())
    before = {plural: k8s.objects(plural) for plural in (kind, "configmaps", "secrets")}

    assert backend.create(workload()) is False

    after = {plural: k8s.objects(plural) for plural in (kind, "configmaps", "secrets")}
    assert after == before and len(before[kind]) == 1


def test_a_name_taken_by_another_jobs_pytorchjob_is_a_permanent_error(
    backend: KubernetesBackend, k8s: EmulatorHandle
) -> None:
    k8s.store(
        "pytorchjobs",
        {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "metadata": {"name": "tiny-7-a0", "labels": {JOB_ID_LABEL: "99", ATTEMPT_LABEL: "0"}},
        },
    )
    with pytest.raises(PermanentBackendError, match="belongs to job 99"):
        backend.create(workload())
    assert k8s.names("configmaps") == set()


def test_a_workload_that_cannot_be_rendered_is_a_permanent_error(
    backend: KubernetesBackend,
) -> None:
    with pytest.raises(PermanentBackendError, match="cannot render"):
        backend.create(workload(name="Not_A_DNS_Label"))


# --- observe ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transitions", "phase"),
    [
        ([], Phase.PENDING),
        (["Created"], Phase.PENDING),
        (["Created", "Running"], Phase.RUNNING),
        (["Created", "Running", "Restarting"], Phase.RESTARTING),
        (["Created", "Running", "Restarting", "Running"], Phase.RUNNING),
        (["Created", "Running", "Succeeded"], Phase.SUCCEEDED),
    ],
)
def test_observe_maps_the_operators_conditions_to_phases(
    backend: KubernetesBackend, k8s: EmulatorHandle, transitions: list[str], phase: Phase
) -> None:
    backend.create(workload())
    for condition in transitions:
        k8s.transition("tiny-7-a0", condition)

    (status,) = backend.observe(7).values()
    assert (status.name, status.attempt, status.phase) == ("tiny-7-a0", 0, phase)
    assert status.retryable is False


@pytest.mark.parametrize(
    ("reason", "message", "retryable", "cause"),
    [
        ("Evicted", "The node was low on resource: memory.", True, "node disruption"),
        ("OOMKilled", "Container pytorch exceeded its memory limit.", False, "out of memory"),
        ("PyTorchJobFailed", "Master replica exited with exit code 137.", True, "exit code 137"),
        ("PyTorchJobFailed", "Worker replica exited with exit code 143.", True, "exit code 143"),
        ("PyTorchJobFailed", "Master replica exited with exit code 1.", False, "exit code 1"),
        (
            "PyTorchJobFailed",
            "[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(OpType=ALLREDUCE)",
            True,
            "NCCL",
        ),
    ],
)
def test_observe_says_which_failures_are_worth_another_attempt(
    backend: KubernetesBackend,
    k8s: EmulatorHandle,
    reason: str,
    message: str,
    retryable: bool,
    cause: str,
) -> None:
    backend.create(workload())
    k8s.transition("tiny-7-a0", "Created")
    k8s.transition("tiny-7-a0", "Running")
    k8s.transition(
        "tiny-7-a0",
        "Failed",
        reason=reason,
        message=message,
        replica_statuses={"Master": {"failed": 1}, "Worker": {"active": 1}},
    )

    (status,) = backend.observe(7).values()
    assert status.phase == Phase.FAILED
    assert status.retryable is retryable
    assert cause in status.reason
    assert message in status.reason
    # The pods are read all the same, once: they hold the trainer's outcome lines, if any.
    assert k8s.count("list", "pods") == 1


@pytest.mark.parametrize(
    ("pod", "retryable", "cause"),
    [
        ({"terminated_reason": "OOMKilled", "exit_code": 137}, False, "out of memory"),
        ({"terminated_reason": "Error", "exit_code": 137}, True, "exit code 137"),
        ({"disruption_reason": "PreemptionByScheduler", "exit_code": 143}, True, "node disruption"),
        (
            {"pod_reason": "Evicted", "pod_message": "The node had condition: [DiskPressure]."},
            True,
            "node",
        ),
        ({"terminated_reason": "Error", "exit_code": 1}, False, "exit code 1"),
        ({"phase": "Running"}, False, "failed"),
    ],
)
def test_observe_asks_the_pods_when_the_condition_only_says_replicas_failed(
    any_backend: tuple[KubernetesBackend, str],
    k8s: EmulatorHandle,
    pod: dict[str, Any],
    retryable: bool,
    cause: str,
) -> None:
    backend, kind = any_backend
    backend.create(workload())
    job = k8s.get(kind, "tiny-7-a0")
    assert job is not None
    k8s.add_pod(job, **pod)
    k8s.transition(
        "tiny-7-a0",
        "Failed",
        reason="ReplicasFailed" if kind == "trainjobs" else None,
        message=f"{job['kind']} training/tiny-7-a0 has failed because 1 replica(s) failed.",
    )

    (status,) = backend.observe(7).values()
    assert (status.phase, status.retryable) == (Phase.FAILED, retryable)
    assert status.reason.startswith(cause)
    backend.observe(7)
    assert k8s.count("list", "pods") == 1, "a failure's verdict is kept: pods are listed once"


def test_observe_reports_every_attempt_of_the_job_and_no_other_job(
    any_backend: tuple[KubernetesBackend, str], k8s: EmulatorHandle
) -> None:
    backend, _ = any_backend
    backend.create(workload(attempt=0))
    backend.create(workload(attempt=1))
    backend.create(workload(job_id=8))
    k8s.transition("tiny-7-a0", "Failed", reason="Evicted")
    k8s.transition("tiny-7-a1", "Running")

    observed = backend.observe(7)

    assert {a: (s.name, s.phase) for a, s in observed.items()} == {
        0: ("tiny-7-a0", Phase.FAILED),
        1: ("tiny-7-a1", Phase.RUNNING),
    }
    assert backend.observe(9) == {}


def test_observe_failing_with_500_is_temporary(
    backend: KubernetesBackend, k8s: EmulatorHandle
) -> None:
    k8s.fail_next("list", "pytorchjobs", status=503)
    with pytest.raises(TemporaryBackendError, match="503"):
        backend.observe(7)
    assert backend.observe(7) == {}


@pytest.mark.parametrize(
    ("conditions", "phase"),
    [
        # the latest transition wins
        ([("Created", "00:01"), ("Running", "00:02")], Phase.RUNNING),
        ([("Running", "00:03"), ("Restarting", "00:02")], Phase.RUNNING),
        # within one second, the later stage of life
        ([("Created", "00:01"), ("Running", "00:01")], Phase.RUNNING),
        # final conditions decide whatever else is still true
        ([("Running", "00:05"), ("Failed", "00:04")], Phase.FAILED),
        ([("Succeeded", "00:04"), ("Created", "00:09")], Phase.SUCCEEDED),
        ([("Suspended", "00:01")], Phase.PENDING),
    ],
)
def test_phase_comes_from_the_true_conditions(
    conditions: list[tuple[str, str]], phase: Phase
) -> None:
    status = {
        "conditions": [
            {"type": kind, "status": "True", "lastTransitionTime": f"2026-01-01T00:{at}Z"}
            for kind, at in conditions
        ]
        + [{"type": "Failed", "status": "False", "lastTransitionTime": "2026-01-01T01:00:00Z"}]
    }
    assert workload_phase(status)[0] == phase


@pytest.mark.parametrize(
    ("evidence", "retryable"),
    [
        ({"reason": "Evicted"}, True),
        ({"message": "pod preempted by a higher-priority workload"}, True),
        ({"message": "node gpu-17 was lost"}, True),
        ({"message": "NCCL communicator was aborted on rank 5"}, True),
        ({"message": "torch.distributed.DistNetworkError: Connection reset by peer"}, True),
        ({"message": "exitcode  : -9 (pid: 41)"}, True),
        ({"message": "exitcode  : -6 (pid: 41)"}, True),
        ({"message": "exit code 137, reason OOMKilled"}, False),
        ({"message": "torch.OutOfMemoryError: CUDA out of memory."}, False),
        ({"reason": "DeadlineExceeded"}, False),
        ({"message": "exit code 2"}, False),
        ({"reason": "PyTorchJobFailed"}, False),
    ],
)
def test_failure_classification_table(evidence: dict[str, str], retryable: bool) -> None:
    assert classify_failure({"type": "Failed", "status": "True", **evidence}).retryable is retryable


# --- delete ----------------------------------------------------------------------------------


def test_delete_removes_the_workload_config_map_and_secret_and_a_second_delete_returns_false(
    any_backend: tuple[KubernetesBackend, str], k8s: EmulatorHandle
) -> None:
    backend, kind = any_backend
    backend.create(workload(attempt=0))
    backend.create(workload(attempt=1))

    assert backend.delete(7, 0) is True

    assert k8s.names(kind) == {"tiny-7-a1"}
    assert k8s.names("configmaps") == {"tiny-7-a1-config"}
    assert k8s.names("secrets") == {"tiny-7-a1-token"}
    assert backend.delete(7, 0) is False
    assert k8s.count("delete", kind) == 1


def test_delete_of_what_was_never_created_returns_false(backend: KubernetesBackend) -> None:
    assert backend.delete(7, 3) is False


def test_delete_failing_with_500_is_temporary(
    backend: KubernetesBackend, k8s: EmulatorHandle
) -> None:
    backend.create(workload())
    k8s.fail_next("delete", "pytorchjobs", status=500)
    with pytest.raises(TemporaryBackendError):
        backend.delete(7, 0)
    assert backend.delete(7, 0) is True
    assert k8s.names("pytorchjobs") == set()


# --- errors and retries ----------------------------------------------------------------------


def test_injected_500s_are_temporary_and_a_retry_creates_exactly_one_workload(
    backend: KubernetesBackend, k8s: EmulatorHandle
) -> None:
    k8s.fail_next("create", "pytorchjobs", times=2, status=500)
    for _ in range(2):
        with pytest.raises(TemporaryBackendError, match="500"):
            backend.create(workload())
    assert k8s.names("pytorchjobs") == set()

    assert backend.create(workload()) is True
    assert k8s.names("pytorchjobs") == {"tiny-7-a0"}


def test_a_config_map_create_failing_is_temporary_and_the_retry_converges(
    backend: KubernetesBackend, k8s: EmulatorHandle
) -> None:
    k8s.fail_next("create", "configmaps", status=503)
    with pytest.raises(TemporaryBackendError):
        backend.create(workload())
    assert k8s.names("pytorchjobs") == set()  # what it mounts comes first

    assert backend.create(workload()) is True
    assert k8s.names("configmaps") == {"tiny-7-a0-config"}
    assert k8s.names("secrets") == {"tiny-7-a0-token"}


@pytest.mark.parametrize("stored_before_the_timeout", [False, True])
def test_a_timed_out_create_is_temporary_and_a_retry_converges_on_one_workload(
    backend: KubernetesBackend, k8s: EmulatorHandle, stored_before_the_timeout: bool
) -> None:
    k8s.fail_next(
        "create",
        "pytorchjobs",
        status=None,
        takes_effect=stored_before_the_timeout,
        delay_s=REQUEST_TIMEOUT_S * 4,
    )
    started = time.monotonic()
    with pytest.raises(TemporaryBackendError, match="(?i)timeout|timed out"):
        backend.create(workload())
    assert time.monotonic() - started < REQUEST_TIMEOUT_S * 3

    # True: this call made it; False: the timed-out call had made it (the answer was lost).
    assert backend.create(workload()) is not stored_before_the_timeout
    assert k8s.names("pytorchjobs") == {"tiny-7-a0"}
    assert k8s.names("configmaps") == {"tiny-7-a0-config"}
    assert k8s.names("secrets") == {"tiny-7-a0-token"}


def test_a_409_on_create_counts_as_already_there_when_the_labels_match(
    backend: KubernetesBackend, k8s: EmulatorHandle
) -> None:
    # The create took effect, and the answer the client got was a conflict.
    k8s.fail_next("create", "pytorchjobs", status=409, takes_effect=True)

    assert backend.create(workload()) is False

    assert k8s.names("pytorchjobs") == {"tiny-7-a0"}
    assert k8s.names("configmaps") == {"tiny-7-a0-config"}
    assert k8s.names("secrets") == {"tiny-7-a0-token"}


def test_a_409_for_a_pytorchjob_that_is_gone_when_read_is_temporary(
    backend: KubernetesBackend, k8s: EmulatorHandle
) -> None:
    k8s.fail_next("create", "pytorchjobs", status=409)
    with pytest.raises(TemporaryBackendError, match="is gone"):
        backend.create(workload())
    assert backend.create(workload()) is True


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, PermanentBackendError),
        (403, PermanentBackendError),
        (422, PermanentBackendError),
        (429, TemporaryBackendError),
        (500, TemporaryBackendError),
        (503, TemporaryBackendError),
    ],
)
def test_api_errors_are_temporary_or_permanent(
    backend: KubernetesBackend, k8s: EmulatorHandle, status: int, error: type[Exception]
) -> None:
    k8s.fail_next("create", "pytorchjobs", status=status)
    with pytest.raises(error) as raised:
        backend.create(workload())
    # The API's own message reaches the job's failure reason.
    assert f"injected fault: create pytorchjobs -> {status}" in str(raised.value)


def test_an_unreachable_api_server_is_temporary() -> None:
    with (
        KubernetesBackend(
            SETTINGS,
            client.Configuration(host="http://127.0.0.1:9"),
            request_timeout_s=REQUEST_TIMEOUT_S,
        ) as backend,
        pytest.raises(TemporaryBackendError),
    ):
        backend.observe(7)


# --- convergence after a crash ---------------------------------------------------------------


def test_a_controller_killed_between_the_pytorchjob_and_the_config_map_converges(
    backend: KubernetesBackend, k8s: EmulatorHandle, raw_api: client.CustomObjectsApi
) -> None:
    # The dead controller got as far as the PyTorchJob.
    body = render_manifests(workload(), SETTINGS)["pytorchjob"]
    raw_api.create_namespaced_custom_object("kubeflow.org", "v1", NAMESPACE, "pytorchjobs", body)

    assert backend.create(workload()) is False

    (job,) = k8s.objects("pytorchjobs")
    for plural, name in (("configmaps", "tiny-7-a0-config"), ("secrets", "tiny-7-a0-token")):
        owned = k8s.get(plural, name)
        assert owned is not None
        assert owned["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert k8s.count("create", "pytorchjobs") == 1  # found and adopted, not created again


def test_a_config_map_left_by_an_earlier_workload_of_the_same_name_is_adopted(
    any_backend: tuple[KubernetesBackend, str], k8s: EmulatorHandle
) -> None:
    backend, kind = any_backend
    backend.create(workload())
    old_uid = k8s.get(kind, "tiny-7-a0")["metadata"]["uid"]
    k8s.remove(kind, "tiny-7-a0")  # deleted by hand; the collector has not run yet

    assert backend.create(workload()) is True

    new_uid = k8s.get(kind, "tiny-7-a0")["metadata"]["uid"]
    assert new_uid != old_uid
    for plural, name in (("configmaps", "tiny-7-a0-config"), ("secrets", "tiny-7-a0-token")):
        owners = k8s.get(plural, name)["metadata"]["ownerReferences"]
        assert [owner["uid"] for owner in owners] == [new_uid]


# --- the informer ----------------------------------------------------------------------------


def test_the_watch_calls_back_on_changes_and_observe_answers_from_its_cache(
    any_backend: tuple[KubernetesBackend, str], k8s: EmulatorHandle
) -> None:
    backend, kind = any_backend
    backend.create(workload(job_id=7))
    backend.create(workload(job_id=8))
    changes = Recorder()
    backend.start_watch(changes, resync_s=60)
    assert backend.wait_for_sync(5)
    assert sorted(changes.calls) == [7, 8], "the first list calls back for every job"
    lists = k8s.count("list", kind)

    k8s.transition("tiny-7-a0", "Created")
    k8s.transition("tiny-7-a0", "Running")
    assert eventually(lambda: changes.calls.count(7) >= 3)

    assert backend.observe(7)[0].phase == Phase.RUNNING
    assert backend.observe(8)[0].phase == Phase.PENDING
    assert backend.observe(9) == {}
    assert k8s.count("list", kind) == lists, "observe made a list call"

    backend.delete(7, 0)
    assert eventually(lambda: backend.observe(7) == {})


def test_the_watch_lists_again_after_410_gone(
    backend: KubernetesBackend, k8s: EmulatorHandle
) -> None:
    backend.create(workload())
    changes = Recorder()
    backend.start_watch(changes, resync_s=60)
    assert backend.wait_for_sync(5)
    lists = k8s.count("list", "pytorchjobs")

    k8s.expire_watches()

    assert eventually(lambda: k8s.count("list", "pytorchjobs") > lists)
    k8s.transition("tiny-7-a0", "Running")
    assert eventually(lambda: backend.observe(7)[0].phase == Phase.RUNNING)
    assert backend.watching


def test_while_the_watch_is_broken_observe_lists_and_the_watch_recovers(
    backend: KubernetesBackend, k8s: EmulatorHandle
) -> None:
    backend.create(workload())
    backend.start_watch(Recorder(), resync_s=60)
    assert backend.wait_for_sync(5)

    k8s.fail_next("list", "pytorchjobs", times=1, status=500)
    k8s.expire_watches()
    assert eventually(lambda: not backend.watching)
    k8s.transition("tiny-7-a0", "Running")
    assert backend.observe(7)[0].phase == Phase.RUNNING  # a list of its own

    assert eventually(lambda: backend.watching)


def test_the_watch_resyncs_every_resync_period(
    backend: KubernetesBackend, k8s: EmulatorHandle
) -> None:
    backend.create(workload())
    changes = Recorder()
    backend.start_watch(changes, resync_s=0.3)
    assert eventually(lambda: k8s.count("list", "pytorchjobs") >= 2)
    assert eventually(lambda: changes.calls.count(7) >= 2), "a resync calls back for every job"


def test_a_failing_callback_does_not_stop_the_watch(
    backend: KubernetesBackend, k8s: EmulatorHandle
) -> None:
    backend.create(workload())
    seen = Recorder()

    def explode(job_id: int) -> None:
        seen(job_id)
        raise RuntimeError("the controller's queue is broken")

    backend.start_watch(explode, resync_s=60)
    assert backend.wait_for_sync(5)
    k8s.transition("tiny-7-a0", "Running")
    assert eventually(lambda: seen.count() >= 2)
    assert eventually(lambda: backend.observe(7)[0].phase == Phase.RUNNING)


def test_stop_watch_is_prompt_and_observe_lists_afterwards(
    backend: KubernetesBackend, k8s: EmulatorHandle
) -> None:
    backend.create(workload())
    backend.start_watch(Recorder(), resync_s=60)
    assert backend.wait_for_sync(5)

    started = time.monotonic()
    backend.stop_watch()
    assert time.monotonic() - started < 1.0
    assert not backend.watching

    lists = k8s.count("list", "pytorchjobs")
    assert backend.observe(7)[0].phase == Phase.PENDING
    assert k8s.count("list", "pytorchjobs") == lists + 1


# --- the emulator's own additions ------------------------------------------------------------


def test_the_emulator_patches_only_status_through_the_status_subresource_and_selects_labels(
    backend: KubernetesBackend, k8s: EmulatorHandle, raw_api: client.CustomObjectsApi
) -> None:
    backend.create(workload(job_id=7))
    backend.create(workload(job_id=8))
    before = k8s.get("pytorchjobs", "tiny-7-a0")

    raw_api.patch_namespaced_custom_object_status(
        "kubeflow.org",
        "v1",
        NAMESPACE,
        "pytorchjobs",
        "tiny-7-a0",
        {"status": {"conditions": []}, "spec": {"nprocPerNode": "64"}},
    )

    after = k8s.get("pytorchjobs", "tiny-7-a0")
    assert after["spec"] == before["spec"]
    assert after["status"] == {"conditions": []}
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    listing = raw_api.list_namespaced_custom_object(
        "kubeflow.org", "v1", NAMESPACE, "pytorchjobs", label_selector=f"{JOB_ID_LABEL}=8"
    )
    assert [item["metadata"]["name"] for item in listing["items"]] == ["tiny-8-a0"]
