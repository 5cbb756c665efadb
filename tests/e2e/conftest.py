"""One deployment shared by the end-to-end tests: the service's four processes on real Postgres
and Redis, the Kubernetes emulator they talk to over HTTP, and the kubelet stand-in that runs
its PyTorchJobs as local trainer processes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy

from pretrainctl.client import ApiClient
from service.db.models import Base
from tests.e2e.kubelet import TrainerKubelet
from tests.e2e.stack import ServiceStack, clean_environment, own_redis_database, write_kubeconfig
from tests.servers import free_port
from tests.service.controller.k8s_emulator import EmulatorHandle, running_emulator

NAMESPACE = "training"
CHECKPOINT_CLAIM = "e2e-checkpoints"
# A Redis database of its own on the suite's server, so no other test's stream is read.
REDIS_DB = 7


@dataclass
class Deployment:
    stack: ServiceStack
    kubelet: TrainerKubelet
    cluster: EmulatorHandle
    api: ApiClient
    url: str
    checkpoint_root: Path

    def diagnostics(self) -> str:
        return f"{self.stack.tails()}\n{self.kubelet.tails()}"


def _empty_tables(url: str) -> None:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            names = ", ".join(table.name for table in Base.metadata.sorted_tables)
            connection.execute(sqlalchemy.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def deployment(
    postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("e2e")
    checkpoint_root = root / "volumes" / CHECKPOINT_CLAIM
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    admin_token = secrets.token_urlsafe(24)
    with running_emulator(NAMESPACE) as (server, cluster):
        env = clean_environment(
            {
                "PRETRAIN_DATABASE_URL": postgres_url,
                "PRETRAIN_REDIS_URL": own_redis_database(redis_url, REDIS_DB),
                "PRETRAIN_BACKEND": "kubernetes",
                "PRETRAIN_NAMESPACE": NAMESPACE,
                "PRETRAIN_ADMIN_TOKEN": admin_token,
                "PRETRAIN_STATE_DIR": str(root / "state"),
                "PRETRAIN_API_HOST": "127.0.0.1",
                "PRETRAIN_API_PORT": str(port),
                "PRETRAIN_API_URL": url,
                "PRETRAIN_INGEST_URL": url,
                "PRETRAIN_CHECKPOINT_PVC": CHECKPOINT_CLAIM,
                "PRETRAIN_CHECKPOINT_ROOT": str(checkpoint_root),
                "PRETRAIN_LOG_LEVEL": "info",
                "KUBECONFIG": str(write_kubeconfig(root / "kubeconfig", server, NAMESPACE)),
            }
        )
        stack = ServiceStack(env, root / "logs")
        stack.pretrainctl("db", "upgrade")
        _empty_tables(postgres_url)
        kubelet = TrainerKubelet(cluster, root / "pods", claims={CHECKPOINT_CLAIM: checkpoint_root})
        api = ApiClient(url, admin_token, timeout=30)
        try:
            stack.start_all(url)
            kubelet.start()
            yield Deployment(stack, kubelet, cluster, api, url, checkpoint_root)
        finally:
            kubelet.stop()
            stack.stop()
            api.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, deployment: Deployment) -> Iterator[None]:
    """When a test fails, print the tail of every process's log: CI failures must be readable."""
    yield
    if request.node.stash.get(_CALL_FAILED, False):
        print(deployment.diagnostics())
