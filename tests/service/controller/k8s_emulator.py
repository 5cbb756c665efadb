"""A Kubernetes API server for the controller's tests: kmock's emulator plus what it lacks.

`kmock.KubernetesEmulator` (0.8) stores objects of any resource over real HTTP, answers
404/409 and streams watch events. Everything this project adds to it lives in the one
subclass below, `TrainingClusterEmulator`, and each addition is named where it is made:

  ADDITION 1  `watch=True` is a watch: the kubernetes<36 client spells the flag the Python way,
              kmock only recognises `true`.
  ADDITION 2  `metadata.uid`, `creationTimestamp` and `resourceVersion` on create, a new
              `resourceVersion` on every change (one counter, as etcd's), and the current one
              on lists; kmock sets none of them.
  ADDITION 3  Label selectors on list and watch (`k=v`, `k==v`, `k!=v`, `k`, `!k`); kmock
              returns every object.
  ADDITION 4  Watches honour `resourceVersion`: they replay the events after it from a bounded
              history (kmock replays every object as ADDED and can drop events that happen
              while it does), answer 410 Gone once that history no longer reaches back, and
              end after `timeoutSeconds`.
  ADDITION 5  A PATCH of the `/status` subresource changes only `status`; kmock merges it into
              the whole object.
  ADDITION 6  Fault injection that decides whether the failed request took effect: the next N
              requests of an action on a resource answer an error status, or answer late,
              either before or after the change is stored.
  ADDITION 7  A create answers 201 Created, as the API server does; kmock answers 200, which
              the kubernetes>=37 client refuses.
  ADDITION 8  Foreground deletion waits for dependents that hold the object (`hold_dependents`,
              what the e2e kubelet does while a pod of the PyTorchJob runs): the object gets the
              `foregroundDeletion` finalizer (kmock then keeps it, with a deletionTimestamp) and
              goes once they are released. Without held dependents it goes at once, as a real
              foreground deletion of an object with no pods does.
  ADDITION 9  A Kueue stand-in: a PyTorchJob or TrainJob created suspended with a
              `kueue.x-k8s.io/queue-name` label gets a Kueue `Workload` (kueue.x-k8s.io/v1beta1,
              owned by it, labelled with its uid) whose `QuotaReserved` condition says it does
              not fit (`kueue_message`); it stays suspended until a test admits it
              (`EmulatorHandle.admit`), which unsuspends it and marks the Workload admitted.

Not emulated (the backend does not need it): PUT, field selectors, set-based label
selectors, garbage collection through ownerReferences (beyond ADDITION 8), admission and
schema validation.

`running_emulator()` starts it on a free loopback port in a background thread, for synchronous
tests; the `EmulatorHandle` it yields reads stored objects, plays the Training Operator and the
kubelet (status conditions, failed pods), injects faults and counts requests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime
import itertools
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import kmock

from tests.service.controller.operators import (
    JOB_UID_LABEL,
    KUEUE_MESSAGE,
    QUEUE_LABEL,
    SUSPEND_FIELD,
    OperatorStandIns,
)

PYTORCHJOBS = kmock.resource("kubeflow.org", "v1", "pytorchjobs")
TRAINJOBS = kmock.resource("trainer.kubeflow.org", "v1alpha1", "trainjobs")
KUEUE_WORKLOADS = kmock.resource("kueue.x-k8s.io", "v1beta1", "workloads")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
SECRETS = kmock.resource("", "v1", "secrets")
PODS = kmock.resource("", "v1", "pods")
JOBS = kmock.resource("batch", "v1", "jobs")
RESOURCES = {
    PYTORCHJOBS: kmock.ResourceInfo(kind="PyTorchJob", namespaced=True, subresources={"status"}),
    TRAINJOBS: kmock.ResourceInfo(kind="TrainJob", namespaced=True, subresources={"status"}),
    KUEUE_WORKLOADS: kmock.ResourceInfo(kind="Workload", namespaced=True, subresources={"status"}),
    JOBS: kmock.ResourceInfo(kind="Job", namespaced=True, subresources={"status"}),
    CONFIGMAPS: kmock.ResourceInfo(kind="ConfigMap", namespaced=True),
    SECRETS: kmock.ResourceInfo(kind="Secret", namespaced=True),
    PODS: kmock.ResourceInfo(kind="Pod", namespaced=True, subresources={"status"}),
}
_BY_PLURAL = {resource.plural: resource for resource in RESOURCES}
# Where each queueable kind says it is suspended (ADDITION 9).
_SUSPEND_PATH = {_BY_PLURAL[plural]: path for plural, path in SUSPEND_FIELD.items()}

# How many events a resource's watch history keeps (ADDITION 4).
WATCH_HISTORY = 1000
_CLOSE_WATCHES = {"type": "CLOSE"}  # ends live watch streams, never sent to clients
_ERROR_REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    409: "AlreadyExists",
    410: "Gone",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


@attrs.mutable(weakref_slot=True)
class _RecordingBus(kmock.Bus[Any]):
    """A resource's event bus that keeps recent events by resourceVersion (ADDITION 4)."""

    history: collections.deque[tuple[int, dict[str, Any]]] = attrs.field(
        factory=lambda: collections.deque(maxlen=WATCH_HISTORY), init=False
    )
    # The newest resourceVersion whose event is forgotten: watches from before it get 410 Gone.
    compacted_rv: int = attrs.field(default=0, init=False)

    async def put(self, *items: Any) -> None:
        for item in items:
            rv = _resource_version(item.get("object", {})) if isinstance(item, dict) else None
            if rv is not None:
                if len(self.history) == self.history.maxlen:
                    self.compacted_rv = self.history[0][0]
                self.history.append((rv, item))
        await super().put(*items)


@attrs.define
class _Fault:
    action: kmock.action
    resource: kmock.resource
    times: int
    status: int | None
    takes_effect: bool
    delay_s: float


@attrs.frozen
class Call:
    """One request as the emulator saw it (for counting)."""

    method: str
    action: str | None
    plural: str | None
    name: str | None
    subresource: str | None
    params: Mapping[str, str]


@attrs.define(kw_only=True)
class TrainingClusterEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the additions listed in the module docstring."""

    _buses: dict[kmock.resource, _RecordingBus] = attrs.field(
        factory=lambda: collections.defaultdict(_RecordingBus)
    )
    _rv_counter: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _current_rv: int = attrs.field(default=0, init=False)
    # Serialises the changes, so resourceVersions are handed out in the order they are stored.
    _commit_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _faults: list[_Fault] = attrs.field(factory=list, init=False)
    calls: list[Call] = attrs.field(factory=list, init=False)
    # uids of objects with dependents that a foreground deletion waits for (ADDITION 8).
    _held: set[str] = attrs.field(factory=set, init=False)
    # What Kueue says of a workload it holds (ADDITION 9).
    kueue_message: str = attrs.field(default=KUEUE_MESSAGE, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for resource, info in RESOURCES.items():
            self.resources[resource] = info

    def _next_rv(self) -> int:
        self._current_rv = next(self._rv_counter)
        return self._current_rv

    # ADDITION 1: the kubernetes<36 client sends `watch=True`.
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.method == "GET" and raw_request.query.get("watch", "").lower() == "true":
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.update_query(watch="true"))
        return await super().__call__(raw_request)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        self.calls.append(
            Call(
                method=str(request.method.value),
                action=request.action.value if request.action else None,
                plural=request.resource.plural if request.resource else None,
                name=request.name,
                subresource=request.subresource,
                params=dict(request.params),
            )
        )
        # ADDITION 6: a fault that does not take effect answers before anything is stored.
        fault = self._take_fault(request)
        if fault is not None and not fault.takes_effect:
            await asyncio.sleep(fault.delay_s)
            raise self._fault_error(fault)

        if request.resource is not None and request.action in (
            kmock.action.CREATE,
            kmock.action.UPDATE,
            kmock.action.DELETE,
        ):
            async with self._commit_lock:
                self._stamp(request)
                response = await super()._handle(request)
            if request.action == kmock.action.CREATE and response.status == 200:
                response.set_status(201)  # ADDITION 7
                if request.resource in _SUSPEND_PATH and isinstance(request.data, dict):
                    await self._hold_in_queue(request.resource, request.namespace, request.data)
        else:
            response = await super()._handle(request)

        # ADDITION 6: a fault that takes effect answers late, or with an error, once stored.
        if fault is not None:
            await asyncio.sleep(fault.delay_s)
            if fault.status is not None:
                raise self._fault_error(fault)
        return response

    def _stamp(self, request: kmock.Request) -> None:
        """ADDITIONS 2 and 5: identity and versions on every change; `/status` patches status."""
        data = request.data
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            metadata = data.setdefault("metadata", {})
            metadata["uid"] = str(uuid.uuid4())
            metadata["resourceVersion"] = str(self._next_rv())
            metadata["creationTimestamp"] = _now()
            metadata["generation"] = 1
            if request.namespace:
                metadata.setdefault("namespace", request.namespace)
        elif request.action == kmock.action.UPDATE:
            rv = str(self._next_rv())
            if isinstance(data, dict):
                if request.subresource == "status":  # ADDITION 5
                    status = data.get("status")
                    data.clear()
                    if status is not None:
                        data["status"] = status
                data.setdefault("metadata", {})["resourceVersion"] = rv
            elif isinstance(data, list):  # a JSON patch
                if request.subresource == "status":  # ADDITION 5
                    data[:] = [op for op in data if str(op.get("path", "")).startswith("/status")]
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": rv})
        elif request.action == kmock.action.DELETE and request.name is not None:
            key = (request.resource, request.namespace, request.name)
            if key in self.objects and not self.objects[key].deleted:
                # The DELETED event carries the object at a new resourceVersion, as etcd's does.
                changes: dict[str, Any] = {"resourceVersion": str(self._next_rv())}
                obj = self.objects[key]
                foreground = request.params.get("propagationPolicy") == "Foreground"
                if foreground and obj.get("metadata", {}).get("uid") in self._held:  # ADDITION 8
                    finalizers = list(obj.get("metadata", {}).get("finalizers") or [])
                    changes["finalizers"] = sorted({*finalizers, "foregroundDeletion"})
                obj.patch({"metadata": changes})

    # ADDITIONS 2 and 3: lists carry a resourceVersion and honour label selectors.
    async def _serve_list(self, request: kmock.Request) -> Any:
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        selector = _parse_selector(request.params.get("labelSelector"))
        async with self._lock:
            items = [
                copy.deepcopy(obj.raw)
                for obj in self._matching_objects(request)
                if _selects(selector, obj.raw)
            ]
            rv = str(self._current_rv)
        return {
            "kind": "List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    # ADDITIONS 3 and 4: watches honour label selectors, resourceVersion and timeoutSeconds.
    async def _serve_watch(self, request: kmock.Request) -> Any:
        yield b""  # send the headers now: a quiet watch must still be a started response
        assert request.resource is not None
        selector = _parse_selector(request.params.get("labelSelector"))
        since = int(request.params.get("resourceVersion") or 0)
        timeout = request.params.get("timeoutSeconds")
        deadline = asyncio.get_running_loop().time() + float(timeout) if timeout else None
        bus = self._buses[request.resource]
        async with self._lock:
            mark = await bus.mark()
            gone = bool(since) and since < bus.compacted_rv
            if since:
                replay = [event for rv, event in bus.history if rv > since]
            else:
                objs = self._matching_objects(request)
                replay = [{"type": "ADDED", "object": copy.deepcopy(obj.raw)} for obj in objs]
        try:
            if gone:
                yield _gone(since, bus.compacted_rv)
                return
            for event in replay:
                if self._event_selected(request, selector, event):
                    yield event
            events = aiter(bus.stream(since=mark))
            while True:
                remaining = (
                    None if deadline is None else deadline - asyncio.get_running_loop().time()
                )
                if remaining is not None and remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(anext(events), remaining)
                except TimeoutError:
                    return
                if event is _CLOSE_WATCHES or event == _CLOSE_WATCHES:
                    return
                newer = (_resource_version(event.get("object", {})) or 0) > since
                if newer and self._event_selected(request, selector, event):
                    yield event
        finally:
            await bus.unmark(mark)

    def _matching_objects(self, request: kmock.Request) -> list[kmock.Object]:
        return [
            obj
            for (resource, namespace, name), obj in self.objects.items()
            if resource == request.resource
            and (request.namespace is None or namespace == request.namespace)
            and (request.name is None or name == request.name)
            and not obj.deleted
        ]

    @staticmethod
    def _event_selected(
        request: kmock.Request, selector: list[tuple[str, str, str | None]], event: dict[str, Any]
    ) -> bool:
        metadata = event.get("object", {}).get("metadata", {})
        if request.namespace is not None and metadata.get("namespace") != request.namespace:
            return False
        if request.name is not None and metadata.get("name") != request.name:
            return False
        return _selects(selector, event.get("object", {}))

    # ADDITION 6
    def _take_fault(self, request: kmock.Request) -> _Fault | None:
        for fault in self._faults:
            if (
                fault.times > 0
                and request.action == fault.action
                and request.resource == fault.resource
            ):
                fault.times -= 1
                return fault
        return None

    @staticmethod
    def _fault_error(fault: _Fault) -> kmock.KubernetesError:
        status = fault.status or 504
        return kmock.KubernetesError(
            status=status,
            reason=_ERROR_REASONS.get(status, "InjectedFault"),
            message=f"injected fault: {fault.action.value.lower()} {fault.resource.plural} -> {status}",
            details={"injected": True},
        )

    async def _hold_in_queue(
        self, resource: kmock.resource, namespace: str | None, job: dict[str, Any]
    ) -> None:
        """ADDITION 9: Kueue's Workload for a job created suspended in a queue, not admitted."""
        metadata = job.get("metadata") or {}
        node: Any = job.get("spec") or {}
        for key in _SUSPEND_PATH[resource]:
            node = node.get(key) if isinstance(node, dict) else None
        queue = (metadata.get("labels") or {}).get(QUEUE_LABEL)
        if node is not True or not queue or not namespace:
            return
        info = RESOURCES[resource]
        await self.store(
            KUEUE_WORKLOADS,
            namespace,
            {
                "apiVersion": "kueue.x-k8s.io/v1beta1",
                "kind": "Workload",
                "metadata": {
                    "name": f"{resource.plural[:-1]}-{metadata['name']}",
                    "labels": {JOB_UID_LABEL: metadata["uid"]},
                    "ownerReferences": [
                        {
                            "apiVersion": f"{resource.group}/{resource.version}",
                            "kind": info.kind,
                            "name": metadata["name"],
                            "uid": metadata["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": {"queueName": queue},
                "status": {
                    "conditions": [
                        {
                            "type": "QuotaReserved",
                            "status": "False",
                            "reason": "Pending",
                            "message": self.kueue_message,
                            "lastTransitionTime": _now(),
                        }
                    ]
                },
            },
        )

    async def set_spec_field(
        self, resource: kmock.resource, namespace: str, name: str, path: tuple[str, ...], value: Any
    ) -> None:
        """Set one field of an object's spec, as another client's patch would."""
        async with self._commit_lock, self._lock:
            obj = self._live_object(resource, namespace, name)
            new = copy.deepcopy(obj.raw)
            node = new.setdefault("spec", {})
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
            new["metadata"]["resourceVersion"] = str(self._next_rv())
            new["metadata"]["generation"] = int(new["metadata"].get("generation") or 1) + 1
            obj.history.append(new)
            await self._buses[resource].put({"type": "MODIFIED", "object": copy.deepcopy(new)})

    # --- what the Training Operator, the kubelet and the tests do in-process -------------------

    async def set_status(
        self, resource: kmock.resource, namespace: str, name: str, status: Any
    ) -> None:
        """Replace an object's status, as its controller's status update would."""
        async with self._commit_lock, self._lock:
            obj = self._live_object(resource, namespace, name)
            new = copy.deepcopy(obj.raw)
            new["status"] = status
            new.setdefault("metadata", {})["resourceVersion"] = str(self._next_rv())
            obj.history.append(new)
            await self._buses[resource].put({"type": "MODIFIED", "object": copy.deepcopy(new)})

    async def store(
        self, resource: kmock.resource, namespace: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Create an object as another client would (with ADDITION 2's identity)."""
        body = copy.deepcopy(body)
        metadata = body.setdefault("metadata", {})
        metadata.update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            generation=1,
        )
        async with self._commit_lock, self._lock:
            key = (resource, namespace, metadata["name"])
            metadata["resourceVersion"] = str(self._next_rv())
            if key in self.objects and not self.objects[key].deleted:
                raise ValueError(f"{resource.plural} {namespace}/{metadata['name']} exists")
            if key in self.objects:
                self.objects[key].create(body)
            else:
                self.objects[key] = body
            await self._buses[resource].put({"type": "ADDED", "object": copy.deepcopy(body)})
        return body

    async def remove(self, resource: kmock.resource, namespace: str, name: str) -> None:
        """Delete an object behind the backend's back (a person with kubectl, the GC)."""
        async with self._commit_lock, self._lock:
            obj = self._live_object(resource, namespace, name)
            obj.patch({"metadata": {"resourceVersion": str(self._next_rv())}})
            last = copy.deepcopy(obj.raw)
            obj.delete()
            await self._buses[resource].put({"type": "DELETED", "object": last})

    async def hold_dependents(self, resource: kmock.resource, namespace: str, name: str) -> None:
        """ADDITION 8: the object has dependents (running pods) a foreground deletion waits for."""
        async with self._lock:
            self._held.add(self._live_object(resource, namespace, name).raw["metadata"]["uid"])

    async def release_dependents(self, resource: kmock.resource, namespace: str, name: str) -> None:
        """ADDITION 8: its dependents are gone; a foreground deletion waiting for them completes."""
        async with self._commit_lock, self._lock:
            key = (resource, namespace, name)
            if key not in self.objects or self.objects[key].deleted:
                return
            obj = self.objects[key]
            self._held.discard(obj.raw["metadata"].get("uid"))
            finalizers = [f for f in obj.raw["metadata"].get("finalizers") or [] if f != "foregroundDeletion"]
            if not obj.raw["metadata"].get("deletionTimestamp"):
                return
            obj.patch({"metadata": {"finalizers": finalizers, "resourceVersion": str(self._next_rv())}})
            if finalizers:
                await self._buses[resource].put({"type": "MODIFIED", "object": copy.deepcopy(obj.raw)})
                return
            last = copy.deepcopy(obj.raw)
            obj.delete()
            await self._buses[resource].put({"type": "DELETED", "object": last})

    async def snapshot(
        self, resource: kmock.resource, namespace: str | None
    ) -> list[dict[str, Any]]:
        async with self._lock:
            return [
                copy.deepcopy(obj.raw)
                for (res, ns, _), obj in self.objects.items()
                if res == resource and (namespace is None or ns == namespace) and not obj.deleted
            ]

    async def expire_watches(self) -> None:
        """End live watches and compact the history past them, as a restart after a while does.

        The revision moves on first (other resources change meanwhile), so a client resuming
        from the last version it saw is told 410 Gone and must list again.
        """
        async with self._commit_lock, self._lock:
            compacted = self._next_rv()
            for bus in list(self._buses.values()):
                bus.history.clear()
                bus.compacted_rv = compacted
                await bus.put(_CLOSE_WATCHES)

    def _live_object(self, resource: kmock.resource, namespace: str, name: str) -> kmock.Object:
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            raise KeyError(f"{resource.plural} {namespace}/{name} not found")
        return self.objects[key]


# --- label selectors (ADDITION 3) -------------------------------------------------------------


def _parse_selector(text: str | None) -> list[tuple[str, str, str | None]]:
    terms: list[tuple[str, str, str | None]] = []
    for raw in (text or "").split(","):
        term = raw.strip()
        if not term:
            continue
        if "(" in term or " in " in term or " notin " in term:
            raise kmock.KubernetesError(
                status=400,
                reason="BadRequest",
                message=f"set-based selector {text!r} is not emulated",
            )
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append(("!=", key.strip(), value.strip()))
        elif "==" in term:
            key, value = term.split("==", 1)
            terms.append(("=", key.strip(), value.strip()))
        elif "=" in term:
            key, value = term.split("=", 1)
            terms.append(("=", key.strip(), value.strip()))
        elif term.startswith("!"):
            terms.append(("!", term[1:].strip(), None))
        else:
            terms.append(("exists", term, None))
    return terms


def _selects(selector: list[tuple[str, str, str | None]], obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for op, key, value in selector:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "!" and key in labels:
            return False
        if op == "exists" and key not in labels:
            return False
    return True


def _resource_version(obj: Mapping[str, Any]) -> int | None:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(rv)
    except (TypeError, ValueError):
        return None


def _gone(since: int, oldest: int) -> dict[str, Any]:
    return {
        "type": "ERROR",
        "object": {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": 410,
            "reason": "Expired",
            "message": f"too old resource version: {since} ({oldest})",
        },
    }


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the synchronous side ---------------------------------------------------------------------


class EmulatorHandle(OperatorStandIns):
    """What a synchronous test does to the emulator running in its background event loop; what
    the operators, the kubelet and Kueue do is `OperatorStandIns`'."""

    def __init__(
        self, emulator: TrainingClusterEmulator, loop: asyncio.AbstractEventLoop, namespace: str
    ) -> None:
        self.emulator = emulator
        self.loop = loop
        self.namespace = namespace
        self._clock = itertools.count(1)
        self._epoch = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # --- reading ---

    def objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The live objects of a resource (`pytorchjobs`, `trainjobs`, `jobs`, `configmaps`,
        `secrets`, `pods`, Kueue's `workloads`)."""
        return self._run(self.emulator.snapshot(_BY_PLURAL[plural], namespace or self.namespace))

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self.objects(plural) if o["metadata"]["name"] == name), None)

    def names(self, plural: str) -> set[str]:
        return {obj["metadata"]["name"] for obj in self.objects(plural)}

    # --- counting ---

    def count(
        self,
        action: str | None = None,
        plural: str | None = None,
        *,
        method: str | None = None,
        name: str | None = None,
    ) -> int:
        """Requests seen so far, by Kubernetes action (list, watch, create, …) and resource."""
        return sum(
            1
            for call in list(self.emulator.calls)
            if (action is None or (call.action or "").lower() == action.lower())
            and (plural is None or call.plural == plural)
            and (method is None or call.method.upper() == method.upper())
            and (name is None or call.name == name)
        )

    # --- faults (ADDITION 6) ---

    def fail_next(
        self,
        action: str,
        plural: str,
        *,
        times: int = 1,
        status: int | None = 500,
        takes_effect: bool = False,
        delay_s: float = 0.0,
    ) -> None:
        """The next `times` requests answer `status` (None: answer normally) after `delay_s`.

        `takes_effect=True` stores the change first: the answer is lost, not the change.
        """
        fault = _Fault(
            action=kmock.action(action),
            resource=_BY_PLURAL[plural],
            times=times,
            status=status,
            takes_effect=takes_effect,
            delay_s=delay_s,
        )
        self.loop.call_soon_threadsafe(self.emulator._faults.append, fault)

    # --- other clients ---

    def set_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        """Replace an object's status, as its controller's status update would."""
        self._run(self.emulator.set_status(_BY_PLURAL[plural], self.namespace, name, status))

    def set_spec_field(self, plural: str, name: str, path: tuple[str, ...], value: Any) -> None:
        """Set one field of an object's spec, as another client's patch would."""
        self._run(self.emulator.set_spec_field(_BY_PLURAL[plural], self.namespace, name, path, value))

    def store(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._run(self.emulator.store(_BY_PLURAL[plural], self.namespace, body))

    def remove(self, plural: str, name: str) -> None:
        self._run(self.emulator.remove(_BY_PLURAL[plural], self.namespace, name))

    def hold_dependents(self, plural: str, name: str) -> None:
        """A pod of the object runs: a foreground deletion of it waits (ADDITION 8)."""
        self._run(self.emulator.hold_dependents(_BY_PLURAL[plural], self.namespace, name))

    def release_dependents(self, plural: str, name: str) -> None:
        """Its pods are gone: a foreground deletion waiting for them completes (ADDITION 8)."""
        self._run(self.emulator.release_dependents(_BY_PLURAL[plural], self.namespace, name))

    def expire_watches(self) -> None:
        """Compact the watch history and drop live watches: clients must re-list (410 Gone)."""
        self._run(self.emulator.expire_watches())


@contextlib.contextmanager
def running_emulator(namespace: str = "training") -> Iterator[tuple[str, EmulatorHandle]]:
    """The emulator on a free loopback port, served from a background thread: (base_url, handle)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="k8s-emulator", daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()

    async def start() -> tuple[TrainingClusterEmulator, kmock.Server]:
        emulator = await stack.enter_async_context(TrainingClusterEmulator())
        server = await stack.enter_async_context(kmock.Server(emulator))
        return emulator, server

    try:
        emulator, server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        handle = EmulatorHandle(emulator, loop, namespace)
        yield str(server.url).rstrip("/"), handle
    finally:

        async def stop() -> None:
            with contextlib.suppress(Exception):
                for bus in list(emulator._buses.values()):
                    await bus.put(_CLOSE_WATCHES)
            await stack.aclose()

        try:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
