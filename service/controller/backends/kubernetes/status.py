"""What a workload's status says: its phase, and how it ended, as the controller's `WorkloadStatus`.

Each kind's phase function reads its own conditions (a PyTorchJob's, a TrainJob's, a batch
Job's); the rest is the same for every kind: a finished workload's pods are read once for how
it ended, and a suspended one waits for a queue (Kueue) to admit it, for the reason the queue
gives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.controller.backends.kubernetes.failures import condition_text
from service.controller.backends.kubernetes.labels import identity
from service.controller.outcome import Outcome, TrainerOutcome
from service.controller.reconcile import Phase, WorkloadStatus

_CONDITION_PHASES = {
    "Created": Phase.PENDING,
    "Suspended": Phase.PENDING,  # held by a queue (Kueue) until admitted
    "Running": Phase.RUNNING,
    "Restarting": Phase.RESTARTING,
    "Succeeded": Phase.SUCCEEDED,
    "Failed": Phase.FAILED,
}
# Breaks ties between conditions set within the same second (timestamps have seconds only).
_LATER_IN_LIFE = ["Created", "Suspended", "Running", "Restarting", "Succeeded", "Failed"]


def workload_phase(status: Mapping[str, Any]) -> tuple[Phase, dict[str, Any] | None]:
    """The phase a PyTorchJob's conditions say, and the condition that says it.

    Of the conditions with status "True", `Succeeded` or `Failed` decide when present (they are
    final); otherwise the latest transition wins. No condition yet: pending.
    """
    true = [
        c
        for c in status.get("conditions") or []
        if c.get("status") == "True" and c.get("type") in _CONDITION_PHASES
    ]
    final = [c for c in true if c["type"] in ("Succeeded", "Failed")]
    candidates = final or true
    if not candidates:
        return Phase.PENDING, None
    latest = max(
        candidates,
        key=lambda c: (_timestamp(c.get("lastTransitionTime")), _LATER_IN_LIFE.index(c["type"])),
    )
    return _CONDITION_PHASES[latest["type"]], latest


def trainjob_phase(status: Mapping[str, Any]) -> tuple[Phase, dict[str, Any] | None]:
    """The phase a Trainer v2 TrainJob's status says, and the condition that says it.

    Its conditions are `Created`, `Suspended`, `Complete` and `Failed`; `Complete` or `Failed`
    (status "True") are final. It has no `Running` condition: a TrainJob runs once a child Job
    of its JobSet has a ready pod (or an active one, where ready pods are not counted).
    """
    conditions = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
    by_type = {c.get("type"): dict(c) for c in conditions}
    if "Failed" in by_type:
        return Phase.FAILED, by_type["Failed"]
    if "Complete" in by_type:
        return Phase.SUCCEEDED, by_type["Complete"]
    if "Suspended" in by_type:
        return Phase.PENDING, by_type["Suspended"]
    for job in status.get("jobsStatus") or []:
        ready = job.get("ready")
        if (ready if ready is not None else job.get("active")) or 0:
            return Phase.RUNNING, None
    return Phase.PENDING, by_type.get("Created")


def batch_job_phase(status: Mapping[str, Any]) -> tuple[Phase, dict[str, Any] | None]:
    """The phase a batch Job's status says, and the final condition that says it.

    `Complete` or `Failed` (status "True") are final. `SuccessCriteriaMet` and `FailureTarget`
    come first while the pod is still terminating, so they are not final yet. Before that, a
    ready pod (or an active one, where the cluster does not count ready pods) is running.
    """
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Failed":
            return Phase.FAILED, dict(condition)
        if condition.get("type") == "Complete":
            return Phase.SUCCEEDED, dict(condition)
    ready = status.get("ready")
    if (ready if ready is not None else status.get("active")) or 0:
        return Phase.RUNNING, None
    return Phase.PENDING, None


def _timestamp(value: Any) -> datetime:
    try:
        stamp = datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Ending:
    """How a finished workload ended: the trainer's word if it left one, else the evidence."""

    outcome: TrainerOutcome | None
    reason: str | None  # a failure's cause without the trainer's word
    retryable: bool
    preempted: bool = False  # evicted, preempted or drained: the cluster's doing


def read_status(
    obj: Mapping[str, Any],
    phase_of: Callable[[Mapping[str, Any]], tuple[Phase, dict[str, Any] | None]],
    ending_of: Callable[[Mapping[str, Any], Phase], Ending],
    *,
    reads_outcome: bool,
    suspended: bool = False,
    queue_reason: Callable[[], str | None] = lambda: None,
) -> WorkloadStatus:
    """The workload's status by its kind's `phase_of`; `ending_of(condition, phase)` reads how it
    ended, for a failure, and for a success where the kind's pods carry the trainer's outcome.

    A `suspended` workload that has not ended is queued: `queue_reason()` says why (the queue's
    word), else its own Suspended condition does."""
    name = obj["metadata"]["name"]
    _, attempt = identity(obj) or (0, 0)
    phase, condition = phase_of(obj.get("status") or {})
    if suspended and phase in (Phase.PENDING, Phase.RUNNING, Phase.RESTARTING):
        reason = queue_reason()
        if reason is None and condition is not None and condition.get("type") == "Suspended":
            reason = condition_text(condition)
        return WorkloadStatus(name, attempt, Phase.QUEUED, reason or "suspended until a queue admits it")
    if phase == Phase.FAILED or (phase == Phase.SUCCEEDED and reads_outcome):
        ending = ending_of(condition or {}, phase)
        outcome = ending.outcome if reads_outcome else None
        if phase == Phase.SUCCEEDED:
            return WorkloadStatus(name, attempt, phase, outcome=outcome)
        reason = ending.reason
        if outcome is not None and outcome.outcome != Outcome.COMPLETED:
            reason = f"the trainer {outcome.describe()}"
        return WorkloadStatus(
            name, attempt, phase, reason, ending.retryable, outcome, preempted=ending.preempted
        )
    reason = None
    if condition is not None and condition.get("type") in ("Restarting", "Suspended"):
        reason = condition_text(condition)
    return WorkloadStatus(name, attempt, phase, reason)


def kueue_reason(kueue_workloads: Sequence[Mapping[str, Any]], uid: str | None) -> str | None:
    """Why Kueue has not admitted the workload of this uid, from its Kueue `Workload`.

    Its `QuotaReserved` condition, while not "True", says what quota is missing ("couldn't assign
    flavors to pod set ...: insufficient quota ..."); with quota reserved, a not yet "True"
    `Admitted` says what admission still waits for (admission checks).
    """
    for workload in kueue_workloads:
        owners = (workload.get("metadata") or {}).get("ownerReferences") or []
        if uid is not None and owners and not any(o.get("uid") == uid for o in owners):
            continue
        conditions = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
        for kind in ("QuotaReserved", "Admitted"):
            condition = conditions.get(kind)
            if condition is not None and condition.get("status") != "True" and condition.get("message"):
                return str(condition["message"])
        if "QuotaReserved" not in conditions:
            return "waiting for Kueue to reserve quota"
    return None


def termination_messages(pods: Sequence[Mapping[str, Any]], container: str) -> list[str]:
    """The termination messages the named container of each pod left (its outcome lines)."""
    messages = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != container:
                continue
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("message"):
                messages.append(str(terminated["message"]))
    return messages
