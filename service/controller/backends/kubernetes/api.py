"""Every request the backend makes, in its namespace and with its timeout, and what failures mean.

A workload of any kind goes through `CustomObjectsApi` by its table row's group, version and
plural (a batch Job is `/apis/batch/v1/.../jobs` either way); what a workload owns goes through
its row's `CoreV1Api` methods. Errors are left to `api_errors`, which the backend wraps around
each step so that the message names what it was doing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from service.controller.backends import PermanentBackendError, TemporaryBackendError
from service.controller.backends.kubernetes.kinds import KUEUE_WORKLOAD, OwnedKind, WorkloadKind


class NamespacedCalls:
    """The API calls of one namespace; `api` is the client they all go through (tests wrap it)."""

    def __init__(self, api: client.ApiClient, namespace: str, timeout: tuple[float, float]) -> None:
        self.api = api
        self.namespace = namespace
        self.timeout = timeout
        self.custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    # --- workloads, by their row of the kinds table ---------------------------------------------

    def create(self, kind: WorkloadKind, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(
            kind.group,
            kind.version,
            self.namespace,
            kind.plural,
            body,
            _request_timeout=self.timeout,
        )

    def read(self, kind: WorkloadKind, name: str) -> dict[str, Any] | None:
        """The workload of that name, or None."""
        try:
            return self.custom.get_namespaced_custom_object(
                kind.group,
                kind.version,
                self.namespace,
                kind.plural,
                name,
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: WorkloadKind, label_selector: str) -> dict[str, Any]:
        return self.custom.list_namespaced_custom_object(
            kind.group,
            kind.version,
            self.namespace,
            kind.plural,
            label_selector=label_selector,
            _request_timeout=self.timeout,
        )

    def delete(self, kind: WorkloadKind, name: str) -> bool:
        """Delete the workload with its kind's propagation policy; False if it was gone."""
        try:
            self.custom.delete_namespaced_custom_object(
                kind.group,
                kind.version,
                self.namespace,
                kind.plural,
                name,
                propagation_policy=kind.propagation_policy,
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            return False
        return True

    def kueue_workloads(self, label_selector: str) -> list[dict[str, Any]]:
        """Kueue's Workloads that match; none where Kueue is not installed (404) or the Role
        does not let us read them (403): the workload's own Suspended condition says enough."""
        try:
            listing = self.custom.list_namespaced_custom_object(
                KUEUE_WORKLOAD.group,
                KUEUE_WORKLOAD.version,
                self.namespace,
                KUEUE_WORKLOAD.plural,
                label_selector=label_selector,
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            if exc.status in (403, 404):
                return []
            raise
        return listing.get("items", [])

    # --- what a workload owns -------------------------------------------------------------------

    def create_owned(self, owned: OwnedKind, body: Mapping[str, Any]) -> None:
        owned.create(self._core, self.namespace, body, _request_timeout=self.timeout)

    def read_owned(self, owned: OwnedKind, name: str) -> Any:
        """The typed object (`V1ConfigMap`, `V1Secret`) of that name, or None."""
        try:
            return owned.read(self._core, name, self.namespace, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def set_owners(self, owned: OwnedKind, name: str, owners: list[dict[str, Any]]) -> None:
        """Make `owners` the object's ownerReferences (a JSON patch: they replace any others)."""
        owned.patch(
            self._core,
            name,
            self.namespace,
            [{"op": "add", "path": "/metadata/ownerReferences", "value": owners}],
            _request_timeout=self.timeout,
        )

    def delete_owned(self, owned: OwnedKind, name: str) -> None:
        """Delete the object unless it is gone already."""
        try:
            owned.delete(self._core, name, self.namespace, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def pods(self, label_selector: str) -> list[dict[str, Any]]:
        pods = self._core.list_namespaced_pod(
            self.namespace, label_selector=label_selector, _request_timeout=self.timeout
        )
        return self.api.sanitize_for_serialization(pods).get("items", [])


def load_configuration() -> client.Configuration:
    """The in-cluster service account's configuration, else the kubeconfig's current context."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    return configuration


@contextlib.contextmanager
def api_errors(what: str) -> Iterator[None]:
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
                f"{message} (is the workload's CRD installed (the Training Operator's "
                "PyTorchJob, Kubeflow Trainer's TrainJob), and does the namespace exist?)"
            ) from exc
        raise PermanentBackendError(message) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TemporaryBackendError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _api_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc.reason or "no message")
