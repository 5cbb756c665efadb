"""Workloads as Kubeflow `PyTorchJob`s, through the Kubernetes API and its official client.

An attempt is three objects named after it (`manifests.render_manifests`): the PyTorchJob, and
a ConfigMap and a Secret owned by it, so the garbage collector removes them with it. Creating
is create-if-absent in that order; a controller killed between two creates converges on the
next call. Every call has a timeout and none sleeps: API trouble surfaces at once as
`TemporaryBackendError` (retry later) or `PermanentBackendError` (the job fails with it).

`start_watch` runs an informer: a thread that lists, then watches, the PyTorchJobs this
service manages, keeps them in a cache that `observe` answers from, and calls back with the
job id of each change. Without it `observe` lists the job's PyTorchJobs each time.

A tokenizer job's attempt is a plain `batch/v1` Job (`manifests.render_tokenizer_manifests`)
with the same ConfigMap and Secret around it, owned by it; `observe(job_id, kind="tokenizer")`
lists the job's Jobs (no informer watches them) and reads their `Complete`/`Failed` conditions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from service.controller.backends import PermanentBackendError, TemporaryBackendError
from service.controller.manifests import (
    BATCH_JOB_API_VERSION,
    BATCH_JOB_KIND,
    CONTAINER_NAME,
    PYTORCHJOB_API_VERSION,
    PYTORCHJOB_KIND,
    TokenizerWorkload,
    Workload,
    render_manifests,
    render_tokenizer_manifests,
)
from service.controller.outcome import (
    Outcome,
    TrainerOutcome,
    read_outcome,
    without_secondary_failures,
)
from service.controller.reconcile import Phase, WorkloadStatus
from service.settings import Settings
from service.spec import TOKENIZER_KIND

log = logging.getLogger(__name__)

GROUP = "kubeflow.org"
VERSION = "v1"
PLURAL = "pytorchjobs"
# Set on every object of an attempt by `manifests.workload_labels`.
JOB_ID_LABEL = "pretrain.io/job-id"
ATTEMPT_LABEL = "pretrain.io/attempt"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGER = "pretrain-orchestrator"
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGER}"
# `manifests.config_map_name` / `secret_name`: the PyTorchJob's name and these suffixes.
CONFIG_MAP_SUFFIX = "-config"
SECRET_SUFFIX = "-token"
# Foreground: a deleted PyTorchJob stays (terminating) until its pods are gone, so the attempt
# ends, and its token is revoked, only once its trainer has saved on SIGTERM and registered that
# checkpoint (a paused job resumes from it). The next attempt is created meanwhile all the same.
PYTORCHJOB_PROPAGATION_POLICY = "Foreground"
# Background for a tokenizer's batch Job: it goes at once, the collector removes its pod after
# it (the API's default for Jobs would orphan the pod).
BATCH_JOB_PROPAGATION_POLICY = "Background"

WATCH_BACKOFF_S = (0.5, 30.0)  # first and longest wait before the informer tries again


class KubernetesBackend:
    """The `Backend` that runs attempts as PyTorchJobs in `settings.namespace`."""

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
        self._configuration = configuration or load_configuration()
        self._api = client.ApiClient(self._configuration)
        self._custom = client.CustomObjectsApi(self._api)
        self._core = client.CoreV1Api(self._api)
        self._batch = client.BatchV1Api(self._api)
        self._timeout = (request_timeout_s, request_timeout_s)
        self._watch_timeout_s = watch_timeout_s
        # The informer's state; `_lock` guards it and the failure verdicts.
        self._lock = threading.Lock()
        self._cache: dict[int, dict[int, dict[str, Any]]] = {}
        self._live = False
        self._synced = threading.Event()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._watch: watch.Watch | None = None
        self._watch_response: Any = None
        self._endings: dict[str, Ending] = {}  # by uid: how a workload ended never changes
        self._owned: set[str] = set()  # uids of workloads whose ConfigMap and Secret they own

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

    def create(self, workload: Workload | TokenizerWorkload) -> bool:
        """Create the attempt's ConfigMap and Secret, then its PyTorchJob, which then owns them.

        True if this call created the PyTorchJob. The order makes "a PyTorchJob exists" imply
        "its Secret exists, holding the token the controller committed before calling": a
        controller killed in between leaves a ConfigMap and Secret without a PyTorchJob, which
        the next call replaces with its own (its token may be a new one). A PyTorchJob that
        exists is left as it is and its ConfigMap and Secret are completed and adopted. A
        PyTorchJob of the same name that belongs to another job is a permanent error.
        A tokenizer workload is a batch Job instead, created the same way.
        """
        if isinstance(workload, TokenizerWorkload):
            return self._create(
                workload,
                what="Job",
                key="job",
                render=render_tokenizer_manifests,
                create=lambda body: self._api.sanitize_for_serialization(
                    self._batch.create_namespaced_job(self._namespace, body, _request_timeout=self._timeout)
                ),
                read=self._read_batch_job,
            )
        return self._create(
            workload,
            what="PyTorchJob",
            key="pytorchjob",
            render=render_manifests,
            create=lambda body: self._custom.create_namespaced_custom_object(
                GROUP, VERSION, self._namespace, PLURAL, body, _request_timeout=self._timeout
            ),
            read=self._read_pytorchjob,
        )

    def observe(self, job_id: int, *, kind: str = "pretrain") -> dict[int, WorkloadStatus]:
        """The job's workloads by attempt: from the informer's cache while it is live.

        A workload this process did not create has its ConfigMap and Secret taken into its
        ownership here, once: a controller killed between creating it and doing so left them
        unowned, and the restarted one has nothing left to create.
        """
        if kind == TOKENIZER_KIND:
            jobs = self._list_batch_jobs(job_id)
            for obj in jobs.values():
                self._ensure_owned(obj, api_version=BATCH_JOB_API_VERSION, kind=BATCH_JOB_KIND)
            return {attempt: self._batch_status(obj) for attempt, obj in sorted(jobs.items())}
        with self._lock:
            cached = dict(self._cache.get(job_id, {})) if self._live else None
        workloads = cached if cached is not None else self._list_workloads(job_id)
        for obj in workloads.values():
            self._ensure_owned(obj, api_version=PYTORCHJOB_API_VERSION, kind=PYTORCHJOB_KIND)
        return {attempt: self._status(obj) for attempt, obj in sorted(workloads.items())}

    def _ensure_owned(self, obj: Mapping[str, Any], *, api_version: str, kind: str) -> None:
        metadata = obj.get("metadata") or {}
        uid, name = metadata.get("uid"), metadata.get("name")
        with self._lock:
            done = uid in self._owned
        if not uid or done or metadata.get("deletionTimestamp"):
            return
        owner = {
            "apiVersion": api_version,
            "kind": kind,
            "name": name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        for owned_kind, read, patch, owned_name in (
            ("ConfigMap", self._core.read_namespaced_config_map, self._core.patch_namespaced_config_map, name + CONFIG_MAP_SUFFIX),
            ("Secret", self._core.read_namespaced_secret, self._core.patch_namespaced_secret, name + SECRET_SUFFIX),
        ):
            with _api_errors(f"adopt {owned_kind} {self._namespace}/{owned_name}"):
                try:
                    existing = read(owned_name, self._namespace, _request_timeout=self._timeout)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    continue
                if not any(o.uid == uid for o in existing.metadata.owner_references or []):
                    patch(
                        owned_name,
                        self._namespace,
                        [{"op": "add", "path": "/metadata/ownerReferences", "value": [owner]}],
                        _request_timeout=self._timeout,
                    )
        with self._lock:
            self._owned.add(uid)

    def delete(self, job_id: int, attempt: int, *, kind: str = "pretrain") -> bool:
        """Delete the attempt's PyTorchJob (or batch Job), and its ConfigMap and Secret with it.

        The collector would remove those two through their ownerReferences; deleting them here
        too makes the effect immediate and leaves nothing behind where no collector runs.
        """
        batch = kind == TOKENIZER_KIND
        listed = self._list_batch_jobs(job_id) if batch else self._list_workloads(job_id)
        workload = listed.get(attempt)
        if workload is None:
            return False
        name = workload["metadata"]["name"]
        deleted = False
        if not workload["metadata"].get("deletionTimestamp"):
            what = "Job" if batch else "PyTorchJob"
            with _api_errors(f"delete {what} {self._namespace}/{name}"):
                try:
                    if batch:
                        self._batch.delete_namespaced_job(
                            name,
                            self._namespace,
                            propagation_policy=BATCH_JOB_PROPAGATION_POLICY,
                            _request_timeout=self._timeout,
                        )
                    else:
                        self._custom.delete_namespaced_custom_object(
                            GROUP,
                            VERSION,
                            self._namespace,
                            PLURAL,
                            name,
                            propagation_policy=PYTORCHJOB_PROPAGATION_POLICY,
                            _request_timeout=self._timeout,
                        )
                    deleted = True
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        for owned_kind, delete, owned_name in (
            ("ConfigMap", self._core.delete_namespaced_config_map, name + CONFIG_MAP_SUFFIX),
            ("Secret", self._core.delete_namespaced_secret, name + SECRET_SUFFIX),
        ):
            with _api_errors(f"delete {owned_kind} {self._namespace}/{owned_name}"):
                try:
                    delete(owned_name, self._namespace, _request_timeout=self._timeout)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        return deleted

    # --- the informer --------------------------------------------------------------------------

    def start_watch(self, on_change: Callable[[int], None], *, resync_s: float = 300.0) -> None:
        """Keep a cache of this service's PyTorchJobs and call `on_change(job_id)` on changes.

        A thread lists them (noting the list's resourceVersion), then watches from there. It
        re-lists on 410 Gone (the watch fell too far behind), after errors (with backoff,
        `observe` listing meanwhile) and every `resync_s`, calling back for every job then.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the PyTorchJob watch is already running")
        self._stop = threading.Event()
        self._synced.clear()
        self._thread = threading.Thread(
            target=self._watch_loop,
            args=(on_change, resync_s, self._stop),
            name="pytorchjob-informer",
            daemon=True,
        )
        self._thread.start()

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        """True once the informer's cache holds a full list (for startup and tests)."""
        return self._synced.wait(timeout)

    @property
    def watching(self) -> bool:
        """True while `observe` answers from the informer's cache."""
        with self._lock:
            return self._live

    def stop_watch(self, timeout: float = 5.0) -> None:
        if self._stop is None or self._thread is None:
            return
        self._stop.set()
        with self._lock:
            watcher, response = self._watch, self._watch_response
        if watcher is not None:
            watcher.stop()
        if response is not None:
            # Interrupts the blocking read of the watch stream (urllib3 2.3+).
            with contextlib.suppress(Exception):
                response.shutdown()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the PyTorchJob informer did not stop within %.0fs", timeout)
        self._thread = self._stop = None
        with self._lock:
            self._live = False
            self._cache = {}

    def _watch_loop(
        self, on_change: Callable[[int], None], resync_s: float, stop: threading.Event
    ) -> None:
        api = client.ApiClient(self._configuration)  # the stream holds a connection of its own
        custom = client.CustomObjectsApi(api)
        backoff = WATCH_BACKOFF_S[0]
        try:
            while not stop.is_set():
                try:
                    resource_version = self._relist(custom, on_change)
                    backoff = WATCH_BACKOFF_S[0]
                    resync_at = time.monotonic() + resync_s
                    while not stop.is_set() and (left := resync_at - time.monotonic()) > 0:
                        resource_version = self._watch_once(
                            custom,
                            resource_version,
                            min(left, self._watch_timeout_s),
                            on_change,
                            stop,
                        )
                except ApiException as exc:
                    if stop.is_set():
                        break
                    if exc.status == 410:
                        log.info("PyTorchJob watch expired (410 Gone); listing again")
                        continue
                    backoff = self._watch_failed(exc, backoff, stop)
                except Exception as exc:  # network trouble, a bad event: the cache is suspect
                    if stop.is_set():
                        break
                    backoff = self._watch_failed(exc, backoff, stop)
        finally:
            with self._lock:
                self._live = False
                self._watch = self._watch_response = None
            api.close()

    def _watch_failed(self, exc: Exception, backoff: float, stop: threading.Event) -> float:
        with self._lock:
            self._live = False  # observe lists until the informer has listed again
        log.warning("PyTorchJob watch failed (%s); listing again in %.1fs", exc, backoff)
        stop.wait(backoff)
        return min(backoff * 2, WATCH_BACKOFF_S[1])

    def _relist(self, custom: client.CustomObjectsApi, on_change: Callable[[int], None]) -> str:
        listing = custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            self._namespace,
            PLURAL,
            label_selector=MANAGED_SELECTOR,
            _request_timeout=self._timeout,
        )
        cache: dict[int, dict[int, dict[str, Any]]] = {}
        for obj in listing.get("items", []):
            identity = _identity(obj)
            if identity is not None and _labels(obj).get(MANAGED_BY_LABEL) == MANAGER:
                cache.setdefault(identity[0], {})[identity[1]] = _slim(obj)
        with self._lock:
            previous, self._cache = self._cache, cache
            self._live = True
        self._synced.set()
        for job_id in sorted(set(previous) | set(cache)):
            _notify(on_change, job_id)
        return listing["metadata"]["resourceVersion"]

    def _watch_once(
        self,
        custom: client.CustomObjectsApi,
        resource_version: str,
        timeout_s: float,
        on_change: Callable[[int], None],
        stop: threading.Event,
    ) -> str:
        """Stream events from `resource_version` until the server ends the watch; the last version."""
        watcher = watch.Watch()
        with self._lock:
            self._watch = watcher

        @functools.wraps(custom.list_namespaced_custom_object)  # Watch reads its docstring
        def list_remembering_response(*args: Any, **kwargs: Any) -> Any:
            response = custom.list_namespaced_custom_object(*args, **kwargs)
            with self._lock:
                self._watch_response = response
            if stop.is_set():
                with contextlib.suppress(Exception):
                    response.shutdown()
            return response

        server_timeout = max(1, int(timeout_s))
        for event in watcher.stream(
            list_remembering_response,
            GROUP,
            VERSION,
            self._namespace,
            PLURAL,
            label_selector=MANAGED_SELECTOR,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=server_timeout,
            # The server ends the watch after timeoutSeconds; this catches a dead connection.
            _request_timeout=(self._timeout[0], server_timeout + self._timeout[1]),
        ):
            if stop.is_set():
                break
            obj = event.get("raw_object") or {}
            metadata = obj.get("metadata") or {}
            resource_version = metadata.get("resourceVersion") or resource_version
            if event.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
                continue  # BOOKMARK: only the resourceVersion moves
            job_id = self._apply_event(event["type"], obj)
            if job_id is not None:
                _notify(on_change, job_id)
        with self._lock:
            self._watch = self._watch_response = None
        return resource_version

    def _apply_event(self, kind: str, obj: Mapping[str, Any]) -> int | None:
        identity = _identity(obj)
        if identity is None or _labels(obj).get(MANAGED_BY_LABEL) != MANAGER:
            return None
        job_id, attempt = identity
        with self._lock:
            attempts = self._cache.setdefault(job_id, {})
            if kind == "DELETED":
                attempts.pop(attempt, None)
                if not attempts:
                    del self._cache[job_id]
            else:
                attempts[attempt] = _slim(obj)
        return job_id

    # --- reading -------------------------------------------------------------------------------

    def _list_workloads(self, job_id: int) -> dict[int, dict[str, Any]]:
        with _api_errors(f"list PyTorchJobs of job {job_id}"):
            listing = self._custom.list_namespaced_custom_object(
                GROUP,
                VERSION,
                self._namespace,
                PLURAL,
                label_selector=f"{JOB_ID_LABEL}={job_id}",
                _request_timeout=self._timeout,
            )
        workloads: dict[int, dict[str, Any]] = {}
        for obj in listing.get("items", []):
            identity = _identity(obj)
            # Filtered here too: a selector the server ignores must not leak other jobs in.
            if identity is not None and identity[0] == job_id:
                workloads[identity[1]] = obj
        return workloads

    def _read_pytorchjob(self, name: str) -> dict[str, Any] | None:
        """The PyTorchJob of that name, or None."""
        with _api_errors(f"read PyTorchJob {self._namespace}/{name}"):
            try:
                return self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, self._namespace, PLURAL, name, _request_timeout=self._timeout
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    def _read_batch_job(self, name: str) -> dict[str, Any] | None:
        """The batch Job of that name, or None."""
        with _api_errors(f"read Job {self._namespace}/{name}"):
            try:
                job = self._batch.read_namespaced_job(name, self._namespace, _request_timeout=self._timeout)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
        return self._api.sanitize_for_serialization(job)

    def _list_batch_jobs(self, job_id: int) -> dict[int, dict[str, Any]]:
        with _api_errors(f"list Jobs of job {job_id}"):
            listing = self._batch.list_namespaced_job(
                self._namespace,
                label_selector=f"{JOB_ID_LABEL}={job_id}",
                _request_timeout=self._timeout,
            )
        jobs: dict[int, dict[str, Any]] = {}
        for obj in self._api.sanitize_for_serialization(listing).get("items", []):
            identity = _identity(obj)
            if identity is not None and identity[0] == job_id:
                jobs[identity[1]] = obj
        return jobs

    def _create(
        self,
        workload: Workload | TokenizerWorkload,
        *,
        what: str,
        key: str,
        render: Callable[..., dict[str, Any]],
        create: Callable[[dict[str, Any]], dict[str, Any]],
        read: Callable[[str], dict[str, Any] | None],
    ) -> bool:
        try:
            manifests = render(workload, self._settings)
        except ValueError as exc:
            raise PermanentBackendError(f"cannot render the workload: {exc}") from exc
        body = manifests[key]
        name = body["metadata"]["name"]
        stored = read(name)
        if stored is not None:
            self._adopt_and_own(stored, workload, created=False, what=what, render=render)
            return False
        # Nothing runs under this name yet: what it will mount goes first.
        self._put_unowned("ConfigMap", manifests["configmap"])
        self._put_unowned("Secret", manifests["secret"])
        created = True
        with _api_errors(f"create {what} {self._namespace}/{name}"):
            try:
                stored = create(body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                created = False
                stored = read(name)
                if stored is None:
                    raise TemporaryBackendError(
                        f"{what} {self._namespace}/{name} existed a moment ago and is gone"
                    ) from exc
        self._adopt_and_own(stored, workload, created=created, what=what, render=render)
        return created

    def _put_unowned(self, kind: str, body: dict[str, Any]) -> None:
        """Create a ConfigMap or Secret that no workload uses yet, replacing a leftover unless it
        is this very one (same data, owned by nothing)."""
        name = body["metadata"]["name"]
        create, read, delete = {
            "ConfigMap": (
                self._core.create_namespaced_config_map,
                self._core.read_namespaced_config_map,
                self._core.delete_namespaced_config_map,
            ),
            "Secret": (
                self._core.create_namespaced_secret,
                self._core.read_namespaced_secret,
                self._core.delete_namespaced_secret,
            ),
        }[kind]
        with _api_errors(f"create {kind} {self._namespace}/{name}"):
            try:
                create(self._namespace, body, _request_timeout=self._timeout)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
            existing = read(name, self._namespace, _request_timeout=self._timeout)
            if not existing.metadata.owner_references and (existing.data or {}) == (body.get("data") or {}):
                return
            # Left by a controller that died before its workload existed, or by an earlier
            # workload of this name: immutable, so replaced rather than edited.
            try:
                delete(name, self._namespace, _request_timeout=self._timeout)
            except ApiException as exc:
                if exc.status != 404:
                    raise
            create(self._namespace, body, _request_timeout=self._timeout)

    def _adopt_and_own(
        self,
        stored: Mapping[str, Any],
        workload: Workload | TokenizerWorkload,
        *,
        created: bool,
        what: str,
        render: Callable[..., dict[str, Any]],
    ) -> None:
        """Make sure a workload found existing is ours and alive, then make it own its ConfigMap
        and Secret (rendered again with its uid as their owner), creating any that is missing."""
        name = stored["metadata"]["name"]
        if not created:
            self._check_same_workload(stored, workload, what=what)
            if stored["metadata"].get("deletionTimestamp"):
                raise TemporaryBackendError(
                    f"{what} {self._namespace}/{name} is being deleted; create it once it is gone"
                )
        uid = stored["metadata"]["uid"]
        owned = render(workload, self._settings, owner_uid=uid)
        self._create_owned("ConfigMap", owned["configmap"], uid)
        self._create_owned("Secret", owned["secret"], uid)
        with self._lock:
            self._owned.add(uid)

    def _batch_status(self, obj: Mapping[str, Any]) -> WorkloadStatus:
        name = obj["metadata"]["name"]
        _, attempt = _identity(obj) or (0, 0)
        phase, condition = batch_job_phase(obj.get("status") or {})
        if phase == Phase.FAILED:
            ending = self._ending(obj, condition or {}, phase)
            return WorkloadStatus(name, attempt, phase, ending.reason, ending.retryable)
        return WorkloadStatus(name, attempt, phase)

    def _check_same_workload(
        self,
        stored: Mapping[str, Any],
        workload: Workload | TokenizerWorkload,
        what: str = "PyTorchJob",
    ) -> None:
        labels = _labels(stored)
        theirs = (labels.get(JOB_ID_LABEL), labels.get(ATTEMPT_LABEL))
        if theirs != (str(workload.job_id), str(workload.attempt)):
            raise PermanentBackendError(
                f"{what} {self._namespace}/{stored['metadata']['name']} already exists and "
                f"belongs to job {theirs[0]} attempt {theirs[1]}, not job {workload.job_id} "
                f"attempt {workload.attempt}"
            )

    def _create_owned(self, kind: str, body: dict[str, Any], owner_uid: str) -> None:
        """Create a ConfigMap or Secret unless it exists; adopt one left by an older owner."""
        name = body["metadata"]["name"]
        create, read, patch = {
            "ConfigMap": (
                self._core.create_namespaced_config_map,
                self._core.read_namespaced_config_map,
                self._core.patch_namespaced_config_map,
            ),
            "Secret": (
                self._core.create_namespaced_secret,
                self._core.read_namespaced_secret,
                self._core.patch_namespaced_secret,
            ),
        }[kind]
        with _api_errors(f"create {kind} {self._namespace}/{name}"):
            try:
                create(self._namespace, body, _request_timeout=self._timeout)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
            existing = read(name, self._namespace, _request_timeout=self._timeout)
            owners = existing.metadata.owner_references or []
            if any(owner.uid == owner_uid for owner in owners):
                return
            # Left by an earlier PyTorchJob of this name that the collector has not reached:
            # the new one takes it over, or the collector would delete it from under the pods.
            patch(
                name,
                self._namespace,
                [
                    {
                        "op": "add",
                        "path": "/metadata/ownerReferences",
                        "value": body["metadata"]["ownerReferences"],
                    }
                ],
                _request_timeout=self._timeout,
            )

    def _status(self, obj: Mapping[str, Any]) -> WorkloadStatus:
        name = obj["metadata"]["name"]
        _, attempt = _identity(obj) or (0, 0)
        phase, condition = workload_phase(obj.get("status") or {})
        if phase in (Phase.FAILED, Phase.SUCCEEDED):
            ending = self._ending(obj, condition or {}, phase)
            if phase == Phase.SUCCEEDED:
                return WorkloadStatus(name, attempt, phase, outcome=ending.outcome)
            reason = ending.reason
            if ending.outcome is not None and ending.outcome.outcome != Outcome.COMPLETED:
                reason = f"the trainer {ending.outcome.describe()}"
            return WorkloadStatus(name, attempt, phase, reason, ending.retryable, ending.outcome)
        reason = None
        if condition is not None and condition.get("type") in ("Restarting", "Suspended"):
            reason = _condition_text(condition)
        return WorkloadStatus(name, attempt, phase, reason)

    def _ending(self, obj: Mapping[str, Any], condition: Mapping[str, Any], phase: Phase) -> Ending:
        """How a finished workload ended: the trainer's outcome lines from its pods' termination
        messages, and, for a failure, what the condition and pods say without them. Read once."""
        uid = obj["metadata"].get("uid")
        with self._lock:
            known = self._endings.get(uid) if uid else None
        if known is not None:
            return known
        pods = self._pods_of(obj)
        told = read_outcome(*_termination_messages(pods, CONTAINER_NAME))
        if phase == Phase.FAILED:
            verdict = classify_failure(condition, pods)
            ending = Ending(told, verdict.reason, verdict.retryable)
        else:
            ending = Ending(told, None, False)
        if uid:
            with self._lock:
                self._endings[uid] = ending
        return ending

    def _pods_of(self, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
        job_id, attempt = _identity(obj) or (None, None)
        selector = f"{JOB_ID_LABEL}={job_id},{ATTEMPT_LABEL}={attempt}"
        with _api_errors(f"list pods of PyTorchJob {obj['metadata']['name']}"):
            pods = self._core.list_namespaced_pod(
                self._namespace, label_selector=selector, _request_timeout=self._timeout
            )
        wanted = {JOB_ID_LABEL: str(job_id), ATTEMPT_LABEL: str(attempt)}
        return [
            pod
            for pod in self._api.sanitize_for_serialization(pods).get("items", [])
            if all(_labels(pod).get(key) == value for key, value in wanted.items())
        ]


def load_configuration() -> client.Configuration:
    """The in-cluster service account's configuration, else the kubeconfig's current context."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    return configuration


# --- phases --------------------------------------------------------------------------------------

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


# --- why a workload failed -----------------------------------------------------------------------


@dataclass(frozen=True)
class Ending:
    """How a finished workload ended: the trainer's word if it left one, else the evidence."""

    outcome: TrainerOutcome | None
    reason: str | None  # a failure's cause without the trainer's word
    retryable: bool


@dataclass(frozen=True)
class FailureVerdict:
    retryable: bool
    reason: str
    conclusive: bool
    """False when nothing named a cause (the verdict is then the safe one: not retryable)."""


_OUT_OF_MEMORY = re.compile(r"OOMKilled|out of memory|OutOfMemoryError", re.IGNORECASE)
_DEADLINE = re.compile(r"DeadlineExceeded", re.IGNORECASE)
_DISRUPTION = re.compile(
    r"Evict|Preempt|NodeLost|NodeShutdown|node\b[^\n]{0,40}(lost|not ready|unreachable|shut ?down)"
    r"|DeletionByTaintManager|TerminationByKubelet|DisruptionTarget",
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
    | `Evicted`, preemption, `DisruptionTarget` (`PreemptionByScheduler`, `EvictionByEvictionAPI`, `DeletionByTaintManager`, `TerminationByKubelet`), node lost / shut down / not ready | yes | the node went, not the run |
    | NCCL timeout / watchdog / abort, connection reset or refused, `DistNetworkError`, rendezvous timeout | yes | a fabric hiccup; the next attempt resumes from the checkpoint |
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

    detail = "; ".join([_condition_text(condition), *notes]).strip("; ")

    def verdict(retryable: bool, cause: str, conclusive: bool = True) -> FailureVerdict:
        return FailureVerdict(retryable, f"{cause}: {detail}" if detail else cause, conclusive)

    if _OUT_OF_MEMORY.search(text):
        return verdict(False, "out of memory (not retried: it would run out again)")
    if _DEADLINE.search(text):
        return verdict(False, "deadline exceeded")
    if _DISRUPTION.search(text):
        return verdict(True, "node disruption (eviction, preemption or node loss)")
    if _NETWORK.search(text):
        return verdict(True, "NCCL or network failure")
    for code in exit_codes:
        if code in _RETRYABLE_EXIT_CODES:
            return verdict(True, f"exit code {code}: {_RETRYABLE_EXIT_CODES[code]}")
    if exit_codes:
        return verdict(False, f"exit code {exit_codes[0]}: the trainer failed")
    return verdict(False, "failed", conclusive=False)


def _condition_text(condition: Mapping[str, Any]) -> str:
    return ": ".join(str(condition[key]) for key in ("reason", "message") if condition.get(key))


# --- helpers -------------------------------------------------------------------------------------


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _identity(obj: Mapping[str, Any]) -> tuple[int, int] | None:
    """(job id, attempt) from an object's labels; None if it has none we can read."""
    labels = _labels(obj)
    try:
        return int(labels[JOB_ID_LABEL]), int(labels[ATTEMPT_LABEL])
    except (KeyError, TypeError, ValueError):
        return None


def _slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a PyTorchJob: identity and status, not the pod templates."""
    metadata = obj.get("metadata") or {}
    keep = ("name", "namespace", "uid", "labels", "resourceVersion", "deletionTimestamp")
    return {
        "metadata": {key: metadata[key] for key in keep if key in metadata},
        "status": obj.get("status") or {},
    }


def _termination_messages(pods: Sequence[Mapping[str, Any]], container: str) -> list[str]:
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


def _notify(on_change: Callable[[int], None], job_id: int) -> None:
    try:
        on_change(job_id)
    except Exception:  # the callback's failure must not stop the informer
        log.exception("on_change(%d) failed", job_id)


def _api_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc.reason or "no message")


@contextlib.contextmanager
def _api_errors(what: str) -> Iterator[None]:
    """Translate the client's failures into the backend's two kinds."""
    try:
        yield
    except ApiException as exc:
        status = exc.status or 0
        message = f"{what}: {status} {_api_message(exc)}"
        # 0: the client's own transport failure; 401: credentials being rotated, not the job's
        # fault; 409 (outside a create): a conflicting update, try again with fresh state.
        if status in (0, 401, 408, 409, 429) or status >= 500:
            raise TemporaryBackendError(message) from exc
        if status == 404:
            raise PermanentBackendError(
                f"{message} (is the Training Operator's PyTorchJob CRD installed, and does "
                "the namespace exist?)"
            ) from exc
        raise PermanentBackendError(message) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TemporaryBackendError(f"{what}: {type(exc).__name__}: {exc}") from exc
