"""Why a workload failed, and whether a new attempt is worth it, from what it left behind."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.controller.outcome import without_secondary_failures


@dataclass(frozen=True)
class FailureVerdict:
    retryable: bool
    reason: str
    conclusive: bool
    """False when nothing named a cause (the verdict is then the safe one: not retryable)."""
    preempted: bool = False
    """The cluster took the machines back (eviction, preemption, a drain, node loss): a new
    attempt from the newest checkpoint that no retry budget counts."""
    nccl_timeout: bool = False
    """Something the pods left names an NCCL collective timeout."""


_OUT_OF_MEMORY = re.compile(r"OOMKilled|out of memory|OutOfMemoryError", re.IGNORECASE)
_DEADLINE = re.compile(r"DeadlineExceeded", re.IGNORECASE)
_DISRUPTION = re.compile(
    r"Evict|Preempt|NodeLost|NodeShutdown|node\b[^\n]{0,40}(lost|not ready|unreachable|shut ?down)"
    r"|DeletionByTaintManager|TerminationByKubelet|DisruptionTarget",
    re.IGNORECASE,
)
# The NCCL watchdog's words when a collective outlives its timeout (torch's ProcessGroupNCCL).
NCCL_TIMEOUT = re.compile(
    r"Watchdog caught collective operation timeout|NCCL[^\n]{0,80}(timeout|timed out)"
    r"|ProcessGroupNCCL[^\n]{0,200}Timeout",
    re.IGNORECASE,
)
_NETWORK = re.compile(
    r"NCCL.*(timeout|timed out|watchdog|abort|remote process|connection|unhandled system error)"
    r"|Watchdog caught collective operation timeout|ProcessGroupNCCL.*timeout"
    r"|Connection reset by peer|Connection refused|Socket Timeout|DistNetworkError"
    r"|rendezvous.*(timeout|timed out|closed)",
    re.IGNORECASE,
)
_EXIT_CODE = re.compile(
    r"exit(?:ed)?[ _]?(?:with[ _])?(?:status|code)[:= ]*\s*(-?\d+)", re.IGNORECASE
)
# Signals a healthy trainer dies of when something outside it goes wrong.
_RETRYABLE_EXIT_CODES = {
    137: "SIGKILL (the kubelet or node, past the grace period)",
    143: "SIGTERM (preemption, eviction or drain)",
    134: "SIGABRT (the NCCL watchdog took the process down after a collective timed out)",
}


def classify_failure(
    condition: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()
) -> FailureVerdict:
    """Whether a failed PyTorchJob is worth a new attempt, and why, from what it left behind.

    Evidence: the `Failed` condition's reason and message, and the attempt's pods (pod
    `status.reason`/`message`, a `DisruptionTarget` condition, the containers' terminated
    reason, exit code and message). The first row that matches decides:

    | evidence                                                         | retryable | why |
    | ---------------------------------------------------------------- | --------- | --- |
    | `OOMKilled`, "CUDA out of memory", `OutOfMemoryError`            | no  | the same config runs out of memory again; change the plan |
    | `DeadlineExceeded` (activeDeadlineSeconds)                       | no  | it would run past its deadline again |
    | `Evicted`, preemption, `DisruptionTarget` (`PreemptionByScheduler`, `EvictionByEvictionAPI`, `DeletionByTaintManager`, `TerminationByKubelet`), node lost / shut down / not ready | yes, as a preemption | the node went, not the run: no retry budget counts it |
    | NCCL timeout ("Watchdog caught collective operation timeout", `ProcessGroupNCCL` … Timeout): `nccl_timeout` | yes | a hung collective |
    | NCCL watchdog / abort, connection reset or refused, `DistNetworkError`, rendezvous timeout | yes | a fabric hiccup; the next attempt resumes from the checkpoint |
    | exit code 137 (SIGKILL), 143 (SIGTERM), 134 (SIGABRT: the NCCL watchdog's abort); torchrun's -9 / -15 / -6 alike | yes | killed from outside, or a collective timed out |
    | any other exit code                                              | no  | the trainer itself failed; it would fail the same way |
    | nothing conclusive                                               | no  | unknown causes must not burn GPU hours in a loop |

    OOM comes first because an OOM kill also exits 137. `status.replicaStatuses` is no
    evidence: the Training Operator v1 keeps only counts there (active/succeeded/failed), and
    its own `Failed` condition says only how many replicas failed, hence the pods.
    """
    texts = [str(condition.get(key) or "") for key in ("reason", "message")]
    exit_codes: list[int] = []
    notes: list[str] = []
    for pod in pods:
        pod_name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        found = [str(status.get(key)) for key in ("reason", "message") if status.get(key)]
        for pod_condition in status.get("conditions") or []:
            if (
                pod_condition.get("type") == "DisruptionTarget"
                and pod_condition.get("status") == "True"
            ):
                found.append(f"DisruptionTarget {pod_condition.get('reason') or ''}".strip())
        for container in status.get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if not terminated:
                continue
            found += [str(terminated.get(k)) for k in ("reason", "message") if terminated.get(k)]
            if terminated.get("exitCode") is not None:
                exit_codes.append(int(terminated["exitCode"]))
                found.append(f"exit code {terminated['exitCode']}")
        if found:
            texts += found
            notes.append(f"pod {pod_name}: {', '.join(found)}")
    # A log tail (FallbackToLogsOnError) may hold torchrun's summary: only its root cause counts.
    text = without_secondary_failures("\n".join(t for t in texts if t))
    exit_codes += [int(code) for code in _EXIT_CODE.findall(text)]
    exit_codes = [128 - code if code < 0 else code for code in exit_codes]  # torchrun: -9 = SIGKILL

    detail = "; ".join([condition_text(condition), *notes]).strip("; ")

    nccl = bool(NCCL_TIMEOUT.search(text))

    def verdict(
        retryable: bool, cause: str, conclusive: bool = True, preempted: bool = False
    ) -> FailureVerdict:
        reason = f"{cause}: {detail}" if detail else cause
        return FailureVerdict(retryable, reason, conclusive, preempted, nccl)

    if _OUT_OF_MEMORY.search(text):
        return verdict(False, "out of memory (not retried: it would run out again)")
    if _DEADLINE.search(text):
        return verdict(False, "deadline exceeded")
    if _DISRUPTION.search(text):
        return verdict(True, "node disruption (eviction, preemption or node loss)", preempted=True)
    if nccl:
        return verdict(True, "NCCL collective timed out")
    if _NETWORK.search(text):
        return verdict(True, "NCCL or network failure")
    for code in exit_codes:
        if code in _RETRYABLE_EXIT_CODES:
            return verdict(True, f"exit code {code}: {_RETRYABLE_EXIT_CODES[code]}")
    if exit_codes:
        return verdict(False, f"exit code {exit_codes[0]}: the trainer failed")
    return verdict(False, "failed", conclusive=False)


def condition_text(condition: Mapping[str, Any]) -> str:
    return ": ".join(str(condition[key]) for key in ("reason", "message") if condition.get(key))


def pod_state(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A pod as on-call reads it: name, phase, each container's state (with a termination's reason,
    exit code and message), and whether anything it left names an NCCL timeout."""
    status = pod.get("status") or {}
    containers, texts = [], [str(status.get(k)) for k in ("reason", "message") if status.get(k)]
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        for state_key in ("state", "lastState"):
            for state, detail in ((container.get(state_key) or {}) or {}).items():
                if not detail:
                    continue
                entry = {"container": container.get("name"), "state": state}
                if state_key == "lastState":
                    entry["last"] = True
                for key in ("reason", "exitCode", "message"):
                    if detail.get(key) is not None:
                        entry[key] = detail[key] if key != "message" else str(detail[key])[-2000:]
                        if key in ("reason", "message"):
                            texts.append(str(detail[key]))
                containers.append(entry)
        if container.get("restartCount"):
            containers.append({"container": container.get("name"), "restarts": container["restartCount"]})
    return {
        "name": (pod.get("metadata") or {}).get("name", "?"),
        "phase": status.get("phase"),
        "reason": status.get("reason"),
        "node": (pod.get("spec") or {}).get("nodeName"),
        "containers": containers,
        "nccl_timeout": bool(NCCL_TIMEOUT.search("\n".join(texts))),
    }
