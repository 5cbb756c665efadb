"""An informer: a thread that lists, then watches, one workload kind's objects this service
manages, keeps them in a cache by job and attempt, and calls back with the job id of each change.

It re-lists on 410 Gone (the watch fell too far behind), after errors (with backoff; the cache
is not live meanwhile, so the backend lists instead) and every `resync_s`, calling back for
every job then.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from service.controller.backends.kubernetes.api import NamespacedCalls
from service.controller.backends.kubernetes.kinds import WorkloadKind
from service.controller.backends.kubernetes.labels import (
    MANAGED_BY_LABEL,
    MANAGED_SELECTOR,
    MANAGER,
    identity,
    labels,
)

log = logging.getLogger(__name__)

WATCH_BACKOFF_S = (0.5, 30.0)  # first and longest wait before the informer tries again


class Informer:
    """The cache of one kind's workloads, kept by a thread of its own while started."""

    def __init__(
        self,
        configuration: client.Configuration,
        kind: WorkloadKind,
        namespace: str,
        *,
        timeout: tuple[float, float],
        watch_timeout_s: float,
    ) -> None:
        self.kind = kind
        self._configuration = configuration
        self._namespace = namespace
        self._timeout = timeout
        self._watch_timeout_s = watch_timeout_s
        # `_lock` guards the cache and the watch being read, which `stop` interrupts.
        self._lock = threading.Lock()
        self._cache: dict[int, dict[int, dict[str, Any]]] = {}
        self._live = False
        self._synced = threading.Event()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._watch: watch.Watch | None = None
        self._watch_response: Any = None

    def start(self, on_change: Callable[[int], None], *, resync_s: float) -> None:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"the {self.kind.kind} watch is already running")
        self._stop = threading.Event()
        self._synced.clear()
        self._thread = threading.Thread(
            target=self._watch_loop,
            args=(on_change, resync_s, self._stop),
            name=f"{self.kind.kind.lower()}-informer",
            daemon=True,
        )
        self._thread.start()

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    @property
    def live(self) -> bool:
        with self._lock:
            return self._live

    def cached(self, job_id: int) -> dict[int, dict[str, Any]] | None:
        """The job's workloads by attempt while the cache is live, else None."""
        with self._lock:
            return dict(self._cache.get(job_id, {})) if self._live else None

    def stop(self, timeout: float = 5.0) -> None:
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
            log.warning("the %s informer did not stop within %.0fs", self.kind.kind, timeout)
        self._thread = self._stop = None
        with self._lock:
            self._live = False
            self._cache = {}

    def _watch_loop(
        self, on_change: Callable[[int], None], resync_s: float, stop: threading.Event
    ) -> None:
        # The stream holds a connection of its own.
        calls = NamespacedCalls(
            client.ApiClient(self._configuration), self._namespace, self._timeout
        )
        backoff = WATCH_BACKOFF_S[0]
        try:
            while not stop.is_set():
                try:
                    resource_version = self._relist(calls, on_change)
                    backoff = WATCH_BACKOFF_S[0]
                    resync_at = time.monotonic() + resync_s
                    while not stop.is_set() and (left := resync_at - time.monotonic()) > 0:
                        resource_version = self._watch_once(
                            calls.custom,
                            resource_version,
                            min(left, self._watch_timeout_s),
                            on_change,
                            stop,
                        )
                except ApiException as exc:
                    if stop.is_set():
                        break
                    if exc.status == 410:
                        log.info("%s watch expired (410 Gone); listing again", self.kind.kind)
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
            calls.api.close()

    def _watch_failed(self, exc: Exception, backoff: float, stop: threading.Event) -> float:
        with self._lock:
            self._live = False  # observe lists until the informer has listed again
        log.warning("%s watch failed (%s); listing again in %.1fs", self.kind.kind, exc, backoff)
        stop.wait(backoff)
        return min(backoff * 2, WATCH_BACKOFF_S[1])

    def _relist(self, calls: NamespacedCalls, on_change: Callable[[int], None]) -> str:
        listing = calls.list(self.kind, MANAGED_SELECTOR)
        cache: dict[int, dict[int, dict[str, Any]]] = {}
        for obj in listing.get("items", []):
            found = identity(obj)
            if found is not None and labels(obj).get(MANAGED_BY_LABEL) == MANAGER:
                cache.setdefault(found[0], {})[found[1]] = _slim(obj)
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
            self.kind.group,
            self.kind.version,
            self._namespace,
            self.kind.plural,
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

    def _apply_event(self, event_type: str, obj: Mapping[str, Any]) -> int | None:
        found = identity(obj)
        if found is None or labels(obj).get(MANAGED_BY_LABEL) != MANAGER:
            return None
        job_id, attempt = found
        with self._lock:
            attempts = self._cache.setdefault(job_id, {})
            if event_type == "DELETED":
                attempts.pop(attempt, None)
                if not attempts:
                    del self._cache[job_id]
            else:
                attempts[attempt] = _slim(obj)
        return job_id


def _slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a workload: identity and status, not the pod templates."""
    metadata = obj.get("metadata") or {}
    keep = ("name", "namespace", "uid", "labels", "resourceVersion", "deletionTimestamp")
    return {
        "metadata": {key: metadata[key] for key in keep if key in metadata},
        "status": obj.get("status") or {},
    }


def _notify(on_change: Callable[[int], None], job_id: int) -> None:
    try:
        on_change(job_id)
    except Exception:  # the callback's failure must not stop the informer
        log.exception("on_change(%d) failed", job_id)
