"""What the operators, the kubelet and Kueue do to the emulator's objects, played by the tests.

`OperatorStandIns` is the part of `k8s_emulator.EmulatorHandle` that moves a workload's status
as the Kubeflow Training Operator (PyTorchJob) or Kubeflow Trainer (TrainJob) would, leaves a
pod behind as the kubelet would, and admits a queued workload as Kueue would (the emulator's
ADDITION 9 holds it until then). It only calls the handle's plain verbs (`get`, `objects`,
`store`, `set_status`, `set_spec_field`).
"""

from __future__ import annotations

import copy
import datetime
import itertools
from typing import Any

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
KUEUE_MESSAGE = (
    "couldn't assign flavors to pod set node: insufficient quota for nvidia.com/gpu in flavor "
    "h100, request > maximum capacity (16 > 8)"
)
# Where each queueable kind says it is suspended, by plural.
SUSPEND_FIELD = {"pytorchjobs": ("runPolicy", "suspend"), "trainjobs": ("suspend",)}


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class OperatorStandIns:
    """Status moves, pods and admissions, as the cluster's controllers would make them."""

    _clock: itertools.count
    _epoch: datetime.datetime

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def store(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def set_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        raise NotImplementedError

    def set_spec_field(self, plural: str, name: str, path: tuple[str, ...], value: Any) -> None:
        raise NotImplementedError

    def workload_plural(self, name: str) -> str:
        """Which kind holds the workload of that name: `pytorchjobs` or `trainjobs`."""
        for plural in ("pytorchjobs", "trainjobs"):
            if self.get(plural, name) is not None:
                return plural
        raise KeyError(f"no PyTorchJob or TrainJob {name}")

    def transition(
        self,
        name: str,
        condition: str,
        *,
        reason: str | None = None,
        message: str | None = None,
        replica_statuses: dict[str, Any] | None = None,
    ) -> None:
        """Move a workload's status as its operator does, in the PyTorchJob's words.

        A PyTorchJob's conditions as the Training Operator moves them: `Created` first;
        `Running` and `Restarting` exclude each other; `Succeeded` and `Failed` turn `Running`
        off. A TrainJob's as Kubeflow Trainer does: `Created`; running is its JobSet's Job
        with ready pods (it has no condition for it); `Succeeded` is `Complete`. Each
        transition is a second after the previous one.
        """
        plural = self.workload_plural(name)
        job = self.get(plural, name)
        assert job is not None
        status = copy.deepcopy(job.get("status") or {})
        stamp = (self._epoch + datetime.timedelta(seconds=next(self._clock))).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        if plural == "trainjobs":
            self._transition_trainjob(job, status, condition, stamp, reason, message)
            return
        conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
        turned_off = {
            "Running": {"Restarting"},
            "Restarting": {"Running"},
            "Succeeded": {"Running", "Restarting"},
            "Failed": {"Running", "Restarting"},
        }.get(condition, set())
        for existing in conditions:
            if existing["type"] in turned_off and existing["status"] == "True":
                existing.update(status="False", lastTransitionTime=stamp, lastUpdateTime=stamp)
        conditions[:] = [c for c in conditions if c["type"] != condition]
        conditions.append(
            {
                "type": condition,
                "status": "True",
                "reason": reason or f"PyTorchJob{condition}",
                "message": message or f"PyTorchJob {name} is {condition.lower()}.",
                "lastTransitionTime": stamp,
                "lastUpdateTime": stamp,
            }
        )
        if replica_statuses is not None:
            status["replicaStatuses"] = replica_statuses
        if condition in ("Succeeded", "Failed"):
            status["completionTime"] = stamp
        status.setdefault("startTime", stamp)
        self.set_status("pytorchjobs", name, status)

    def _transition_trainjob(
        self,
        job: dict[str, Any],
        status: dict[str, Any],
        condition: str,
        stamp: str,
        reason: str | None,
        message: str | None,
    ) -> None:
        name = job["metadata"]["name"]
        nodes = int(job["spec"]["trainer"].get("numNodes") or 1)
        conditions: list[dict[str, Any]] = status.setdefault("conditions", [])

        def put(kind: str, why: str, text: str) -> None:
            conditions[:] = [c for c in conditions if c["type"] != kind]
            conditions.append(
                {"type": kind, "status": "True", "reason": why, "message": text, "lastTransitionTime": stamp}
            )

        if not any(c["type"] == "Created" for c in conditions):
            put("Created", "JobsCreationSucceeded", "Succeeded to create Jobs")
        counts = {"active": 0, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}
        if condition == "Running":
            counts.update(active=nodes, ready=nodes)
        elif condition in ("Succeeded", "Complete"):
            counts.update(succeeded=nodes)
            put("Complete", reason or "JobSetCompleted", message or f"TrainJob {name} completed.")
        elif condition == "Failed":
            counts.update(failed=1)
            put("Failed", reason or "JobSetFailed", message or f"TrainJob {name} failed.")
        elif condition != "Created":
            raise ValueError(f"a TrainJob has no condition for {condition!r}")
        status["jobsStatus"] = [{"name": "node", **counts}]
        self.set_status("trainjobs", name, status)

    # --- playing Kueue (ADDITION 9) ---

    def admit(self, name: str) -> None:
        """Kueue admits the workload: its Workload is admitted and the workload unsuspended."""
        plural = self.workload_plural(name)
        job = self.get(plural, name)
        assert job is not None
        for workload in self.objects("workloads"):
            if workload["metadata"]["labels"].get(JOB_UID_LABEL) != job["metadata"]["uid"]:
                continue
            conditions = [
                {"type": kind, "status": "True", "reason": kind, "message": f"{kind} by the stand-in",
                 "lastTransitionTime": now()}
                for kind in ("QuotaReserved", "Admitted")
            ]  # fmt: skip
            self.set_status("workloads", workload["metadata"]["name"], {"conditions": conditions})
        self.set_spec_field(plural, name, SUSPEND_FIELD[plural], False)

    def add_pod(
        self,
        job: dict[str, Any],
        *,
        role: str = "master",
        index: int = 0,
        phase: str = "Failed",
        pod_reason: str | None = None,
        pod_message: str | None = None,
        terminated_reason: str | None = None,
        exit_code: int | None = None,
        terminated_message: str | None = None,
        disruption_reason: str | None = None,
    ) -> dict[str, Any]:
        """A pod of a PyTorchJob as the operator and kubelet leave it (labels copied from the
        job), or of a TrainJob as JobSet leaves it (labelled with the JobSet's name, which is the
        TrainJob's; its container is the runtime's `node`)."""
        name = job["metadata"]["name"]
        labels = dict(job["metadata"].get("labels") or {})
        container = "pytorch"
        pod_name = f"{name}-{role}-{index}"
        if job.get("kind") == "TrainJob":
            container = "node"
            pod_name = f"{name}-node-0-{index}"
            labels = {
                "jobset.sigs.k8s.io/jobset-name": name,
                "jobset.sigs.k8s.io/replicatedjob-name": "node",
                "batch.kubernetes.io/job-completion-index": str(index),
            }
        else:
            labels.update(
                {
                    "training.kubeflow.org/job-name": name,
                    "training.kubeflow.org/replica-type": role,
                    "training.kubeflow.org/replica-index": str(index),
                }
            )
        status: dict[str, Any] = {"phase": phase}
        if pod_reason:
            status["reason"] = pod_reason
        if pod_message:
            status["message"] = pod_message
        if disruption_reason:
            status["conditions"] = [
                {"type": "DisruptionTarget", "status": "True", "reason": disruption_reason}
            ]
        if exit_code is not None or terminated_reason:
            terminated: dict[str, Any] = {"exitCode": exit_code if exit_code is not None else 1}
            if terminated_reason:
                terminated["reason"] = terminated_reason
            if terminated_message:
                terminated["message"] = terminated_message
            status["containerStatuses"] = [
                {
                    "name": container,
                    "ready": False,
                    "restartCount": 0,
                    "image": "trainer",
                    "imageID": "",
                    "state": {"terminated": terminated},
                }
            ]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod_name, "labels": labels},
            "spec": {"containers": [{"name": container, "image": "trainer"}]},
            "status": status,
        }
        return self.store("pods", pod)
