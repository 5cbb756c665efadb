"""The `Backend` over the Kubernetes API: one generic path that walks the kinds table.

An attempt is its workload and what the workload owns (`kinds.WorkloadKind.owns`: a ConfigMap
and a Secret), named after it. Creating is create-if-absent in that order, the workload last,
then it is made their owner; a controller killed between two creates converges on the next
call. Every call has a timeout and none sleeps: API trouble surfaces at once as
`TemporaryBackendError` (retry later) or `PermanentBackendError` (the job fails with it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from service.controller.backends import PermanentBackendError, TemporaryBackendError
from service.controller.backends.kubernetes.api import (
    NamespacedCalls,
    api_errors,
    load_configuration,
)
from service.controller.backends.kubernetes.failures import classify_failure, pod_state
from service.controller.backends.kubernetes.informer import Informer
from service.controller.backends.kubernetes.kinds import (
    KUEUE_JOB_UID_LABEL,
    OwnedKind,
    WorkloadKind,
    kind_of,
    workload_kinds,
)
from service.controller.backends.kubernetes.labels import (
    ATTEMPT_LABEL,
    JOB_ID_LABEL,
    attempt_selector,
    labels,
)
from service.controller.backends.kubernetes.status import (
    Ending,
    kueue_reason,
    read_status,
    termination_messages,
)
from service.controller.manifests import AnyWorkload
from service.controller.outcome import read_outcome
from service.controller.reconcile import Phase, WorkloadStatus
from service.settings import Settings
from service.spec import PRETRAIN_KIND


class KubernetesBackend:
    """The `Backend` that runs attempts as the kinds table says, in `settings.namespace`."""

    def __init__(
        self,
        settings: Settings,
        configuration: client.Configuration | None = None,
        *,
        request_timeout_s: float = 10.0,
        watch_timeout_s: float = 300.0,
    ) -> None:
        """`configuration` None: in-cluster service account, else the kubeconfig."""
        self._settings = settings
        self._namespace = settings.namespace
        configuration = configuration or load_configuration()
        self._api = client.ApiClient(configuration)
        timeout = (request_timeout_s, request_timeout_s)
        self._calls = NamespacedCalls(self._api, self._namespace, timeout)
        self._kinds = workload_kinds(settings)
        # One informer a watched kind (`WorkloadKind.watched`); the others are listed each time.
        self._informers = {
            row.job_kind: Informer(
                configuration,
                row,
                self._namespace,
                timeout=timeout,
                watch_timeout_s=watch_timeout_s,
            )
            for row in self._kinds.values()
            if row.watched
        }
        # `_lock` guards the two memories below, which the informer's callbacks may reach.
        self._lock = threading.Lock()
        self._endings: dict[str, Ending] = {}  # by uid: how a workload ended never changes
        self._owned: set[str] = set()  # uids of workloads that own what they mount

    @classmethod
    def from_environment(cls, settings: Settings, **options: Any) -> KubernetesBackend:
        """Connect as the pod's service account inside a cluster, else with the kubeconfig."""
        return cls(settings, load_configuration(), **options)

    def close(self) -> None:
        self.stop_watch()
        self._api.close()

    def __enter__(self) -> KubernetesBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- Backend -------------------------------------------------------------------------------

    def create(self, workload: AnyWorkload) -> bool:
        """Create the attempt's ConfigMap and Secret, then its workload, which then owns them.

        True if this call created the workload. The order makes "a workload exists" imply "its
        Secret exists, holding the token the controller committed before calling": a controller
        killed in between leaves a ConfigMap and Secret without a workload, which the next call
        replaces with its own (its token may be a new one). A workload that exists is left as it
        is and its ConfigMap and Secret are completed and adopted. A workload of the same name
        that belongs to another job is a permanent error.
        """
        kind = kind_of(workload, self._kinds)
        try:
            manifests = kind.render(workload, self._settings)
        except ValueError as exc:
            raise PermanentBackendError(f"cannot render the workload: {exc}") from exc
        body = manifests[kind.key]
        name = body["metadata"]["name"]
        stored = self._read(kind, name)
        if stored is not None:
            self._adopt_and_own(kind, stored, workload, created=False)
            return False
        # Nothing runs under this name yet: what it will mount goes first.
        for owned in kind.owns:
            self._put(owned, manifests[owned.key], owner_uid=None)
        created = True
        with api_errors(f"create {kind.kind} {self._namespace}/{name}"):
            try:
                stored = self._calls.create(kind, body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                created = False
                stored = self._read(kind, name)
                if stored is None:
                    raise TemporaryBackendError(
                        f"{kind.kind} {self._namespace}/{name} existed a moment ago and is gone"
                    ) from exc
        self._adopt_and_own(kind, stored, workload, created=created)
        return created

    def observe(self, job_id: int, *, kind: str = PRETRAIN_KIND) -> dict[int, WorkloadStatus]:
        """The job's workloads by attempt: from the informer's cache while it is live.

        A workload this process did not create has its ConfigMap and Secret taken into its
        ownership here, once: a controller killed between creating it and doing so left them
        unowned, and the restarted one has nothing left to create.
        """
        row = self._kinds[kind]
        informer = self._informers.get(kind)
        cached = informer.cached(job_id) if informer is not None else None
        workloads = cached if cached is not None else self._list(row, job_id)
        for obj in workloads.values():
            self._ensure_owned(row, obj)
        return {
            attempt: read_status(
                obj,
                row.phase,
                lambda condition, phase, obj=obj: self._ending(row, obj, condition, phase),
                reads_outcome=row.outcome_container is not None,
                suspended=row.suspended(obj),
                queue_reason=lambda obj=obj: self._queue_reason(obj),
            )
            for attempt, obj in sorted(workloads.items())
        }

    def delete(self, job_id: int, attempt: int, *, kind: str = PRETRAIN_KIND) -> bool:
        """Delete the attempt's workload, and its ConfigMap and Secret with it.

        The collector would remove those two through their ownerReferences; deleting them here
        too makes the effect immediate and leaves nothing behind where no collector runs.
        """
        row = self._kinds[kind]
        workload = self._list(row, job_id).get(attempt)
        if workload is None:
            return False
        name = workload["metadata"]["name"]
        deleted = False
        if not workload["metadata"].get("deletionTimestamp"):
            with api_errors(f"delete {row.kind} {self._namespace}/{name}"):
                deleted = self._calls.delete(row, name)
        for owned in row.owns:
            owned_name = owned.name_for(name)
            with api_errors(f"delete {owned.kind} {self._namespace}/{owned_name}"):
                self._calls.delete_owned(owned, owned_name)
        return deleted

    # --- the informer --------------------------------------------------------------------------

    def start_watch(self, on_change: Callable[[int], None], *, resync_s: float = 300.0) -> None:
        """Keep a cache of this service's watched workloads; `on_change(job_id)` on changes."""
        for informer in self._informers.values():
            informer.start(on_change, resync_s=resync_s)

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        """True once every informer's cache holds a full list (for startup and tests)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return all(
            informer.wait_for_sync(
                None if deadline is None else max(0.0, deadline - time.monotonic())
            )
            for informer in self._informers.values()
        )

    @property
    def watching(self) -> bool:
        """True while `observe` answers from the informers' caches."""
        return all(informer.live for informer in self._informers.values())

    def stop_watch(self, timeout: float = 5.0) -> None:
        for informer in self._informers.values():
            informer.stop(timeout)

    # --- reading -------------------------------------------------------------------------------

    def _read(self, kind: WorkloadKind, name: str) -> dict[str, Any] | None:
        """The workload of that name, or None."""
        with api_errors(f"read {kind.kind} {self._namespace}/{name}"):
            return self._calls.read(kind, name)

    def _list(self, kind: WorkloadKind, job_id: int) -> dict[int, dict[str, Any]]:
        """The job's workloads of this kind by attempt."""
        with api_errors(f"list {kind.kind}s of job {job_id}"):
            listing = self._calls.list(kind, attempt_selector(job_id))
        workloads: dict[int, dict[str, Any]] = {}
        for obj in listing.get("items", []):
            found = kind.identity(obj)
            # Filtered here too: a selector the server ignores must not leak other jobs in.
            if found is not None and found[0] == job_id:
                workloads[found[1]] = obj
        return workloads

    def _ending(
        self, kind: WorkloadKind, obj: Mapping[str, Any], condition: Mapping[str, Any], phase: Phase
    ) -> Ending:
        """How a finished workload ended: the trainer's outcome lines from its pods' termination
        messages, and, for a failure, what the condition and pods say without them. Read once."""
        uid = obj["metadata"].get("uid")
        with self._lock:
            known = self._endings.get(uid) if uid else None
        if known is not None:
            return known
        pods = self._pods_of(kind, obj)
        told = None
        if kind.outcome_container is not None:
            told = read_outcome(*termination_messages(pods, kind.outcome_container))
        if phase == Phase.FAILED:
            verdict = classify_failure(condition, pods)
            ending = Ending(told, verdict.reason, verdict.retryable, verdict.preempted)
        else:
            ending = Ending(told, None, False)
        if uid:
            with self._lock:
                self._endings[uid] = ending
        return ending

    def pod_states(self, job_id: int, attempt: int, *, kind: str = PRETRAIN_KIND) -> list[dict[str, Any]]:
        """The attempt's pods, each as `pod_state` sums it up (for the job.stalled event)."""
        with api_errors(f"list pods of job {job_id} attempt {attempt}"):
            pods = self._calls.pods(f"{JOB_ID_LABEL}={job_id},{ATTEMPT_LABEL}={attempt}")
        wanted = {JOB_ID_LABEL: str(job_id), ATTEMPT_LABEL: str(attempt)}
        return [pod_state(pod) for pod in pods if all(labels(pod).get(k) == v for k, v in wanted.items())]

    def _pods_of(self, kind: WorkloadKind, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
        selector = kind.pods_selector(obj)
        with api_errors(f"list pods of {kind.kind} {obj['metadata']['name']}"):
            pods = self._calls.pods(selector)
        # Filtered here too: a selector the server ignores must not leak other pods in.
        wanted = dict(term.split("=", 1) for term in selector.split(","))
        return [pod for pod in pods if all(labels(pod).get(k) == v for k, v in wanted.items())]

    def _queue_reason(self, obj: Mapping[str, Any]) -> str | None:
        """Why Kueue holds the workload, from Kueue's Workload for it; None if it says nothing."""
        uid = (obj.get("metadata") or {}).get("uid")
        if not uid:
            return None
        with api_errors(f"list Kueue workloads of {obj['metadata']['name']}"):
            found = self._calls.kueue_workloads(f"{KUEUE_JOB_UID_LABEL}={uid}")
        return kueue_reason(found, uid)

    # --- what a workload owns ------------------------------------------------------------------

    def _put(self, owned: OwnedKind, body: dict[str, Any], *, owner_uid: str | None) -> None:
        """Create a ConfigMap or Secret unless it exists.

        With no owner yet (no workload uses it): a leftover is replaced unless it is this very
        one (same data, owned by nothing). With its workload's uid: a leftover is adopted.
        """
        name = body["metadata"]["name"]
        with api_errors(f"create {owned.kind} {self._namespace}/{name}"):
            try:
                self._calls.create_owned(owned, body)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
                existing = self._calls.read_owned(owned, name)
                if existing is None:
                    raise TemporaryBackendError(
                        f"{owned.kind} {self._namespace}/{name} existed a moment ago and is gone"
                    ) from exc
            owners = existing.metadata.owner_references or []
            if owner_uid is not None:
                if not any(owner.uid == owner_uid for owner in owners):
                    # Left by an earlier workload of this name that the collector has not
                    # reached: the new one takes it over, or the collector would delete it
                    # from under the pods.
                    self._calls.set_owners(owned, name, body["metadata"]["ownerReferences"])
                return
            if not owners and (existing.data or {}) == (body.get("data") or {}):
                return
            # Left by a controller that died before its workload existed, or by an earlier
            # workload of this name: immutable, so replaced rather than edited.
            self._calls.delete_owned(owned, name)
            self._calls.create_owned(owned, body)

    def _adopt_and_own(
        self, kind: WorkloadKind, stored: Mapping[str, Any], workload: AnyWorkload, *, created: bool
    ) -> None:
        """Make sure a workload found existing is ours and alive, then make it own its ConfigMap
        and Secret (rendered again with its uid as their owner), creating any that is missing."""
        name = stored["metadata"]["name"]
        if not created:
            self._check_same_workload(kind, stored, workload)
            if stored["metadata"].get("deletionTimestamp"):
                raise TemporaryBackendError(
                    f"{kind.kind} {self._namespace}/{name} is being deleted; create it once it is gone"
                )
        uid = stored["metadata"]["uid"]
        rendered = kind.render(workload, self._settings, owner_uid=uid)
        for owned in kind.owns:
            self._put(owned, rendered[owned.key], owner_uid=uid)
        with self._lock:
            self._owned.add(uid)

    def _check_same_workload(
        self, kind: WorkloadKind, stored: Mapping[str, Any], workload: AnyWorkload
    ) -> None:
        theirs = kind.identity(stored)
        if theirs != (workload.job_id, workload.attempt):
            held = "no job" if theirs is None else f"job {theirs[0]} attempt {theirs[1]}"
            raise PermanentBackendError(
                f"{kind.kind} {self._namespace}/{stored['metadata']['name']} already exists and "
                f"belongs to {held}, not job {workload.job_id} attempt {workload.attempt}"
            )

    def _ensure_owned(self, kind: WorkloadKind, obj: Mapping[str, Any]) -> None:
        """Make a workload this process did not create the owner of what it mounts, once."""
        metadata = obj.get("metadata") or {}
        uid, name = metadata.get("uid"), metadata.get("name")
        with self._lock:
            done = uid in self._owned
        if not uid or done or metadata.get("deletionTimestamp"):
            return
        for owned in kind.owns:
            owned_name = owned.name_for(name)
            with api_errors(f"adopt {owned.kind} {self._namespace}/{owned_name}"):
                existing = self._calls.read_owned(owned, owned_name)
                if existing is None:
                    continue
                if not any(o.uid == uid for o in existing.metadata.owner_references or []):
                    self._calls.set_owners(owned, owned_name, [kind.owner_reference(name, uid)])
        with self._lock:
            self._owned.add(uid)
