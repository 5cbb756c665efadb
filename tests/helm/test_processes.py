"""The service's processes, started with exactly the command and environment the chart gives
their containers, run against real Postgres and a Redis of their own that requires the
password the chart's Secret holds.

Three variables are changed, each for what the pod provides: PRETRAIN_STATE_DIR (the pod's
emptyDir), PRETRAIN_API_HOST and PRETRAIN_API_PORT (the pod's own network namespace). The
controller is left out: outside a cluster it has no service account to load, and its calls
are tested against the Kubernetes emulator in tests/service/controller/.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.helm.chart import Rendered, component_of, render
from tests.helm.test_workloads import container_environment
from tests.servers import free_port, throwaway_redis

pytestmark = pytest.mark.postgres
REDIS_PASSWORD = "chart-redis-password-0123456789"


@pytest.fixture(scope="module")
def rendered(postgres_url: str) -> Iterator[Rendered]:
    with throwaway_redis(password=REDIS_PASSWORD) as redis_url:
        yield render({"database": {"url": postgres_url}, "redis": {"url": redis_url, "password": REDIS_PASSWORD}})


def command_of(rendered: Rendered, component: str) -> list[str]:
    [argv] = [c["command"] for w, c in rendered.containers() if component_of(w) == component]
    assert argv[0] == "pretrainctl"
    return [sys.executable, "-m", "pretrainctl", *argv[1:]]


def environment_of(
    rendered: Rendered, component: str, state_dir: Path, port: int
) -> dict[str, str]:
    env = container_environment(rendered, component)
    env |= {
        "PRETRAIN_STATE_DIR": str(state_dir),
        "PRETRAIN_API_HOST": "127.0.0.1",
        "PRETRAIN_API_PORT": str(port),
    }
    return {"PATH": "/usr/bin:/bin", "HOME": str(state_dir), **env}


class Process:
    def __init__(self, rendered: Rendered, component: str, workdir: Path) -> None:
        self.port = free_port()
        state_dir = workdir / component
        state_dir.mkdir()
        self.log = (workdir / f"{component}.log").open("w+")
        self.process = subprocess.Popen(
            command_of(rendered, component),
            cwd=state_dir,
            env=environment_of(rendered, component, state_dir, self.port),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"exited before {what}:\n{self.output()}"
            try:
                if ready():
                    return
            except (httpx.TransportError, redis.RedisError):
                pass
            time.sleep(0.2)
        pytest.fail(f"not {what} after {timeout:.0f} s:\n{self.output()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def migrated(rendered: Rendered, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """The migrations hook's container, run to completion first, as Helm would."""
    state_dir = tmp_path_factory.mktemp("migrations")
    result = subprocess.run(
        command_of(rendered, "migrations"),
        cwd=state_dir,
        env=environment_of(rendered, "migrations", state_dir, free_port()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return rendered


@pytest.fixture
def start(migrated: Rendered, tmp_path: Path) -> Iterator[Callable[[str], Process]]:
    started: list[Process] = []

    def start_component(component: str) -> Process:
        started.append(Process(migrated, component, tmp_path))
        return started[-1]

    yield start_component
    for process in started:
        process.stop()


def test_the_api_becomes_ready_and_honours_the_secrets_admin_token(
    migrated: Rendered, start: Callable[[str], Process]
) -> None:
    api = start("api")
    url = f"http://127.0.0.1:{api.port}"
    api.wait_for(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, "ready")
    assert httpx.get(f"{url}/healthz", timeout=5).json()["status"] == "ok"
    token = container_environment(migrated, "api")["PRETRAIN_ADMIN_TOKEN"]
    whoami = httpx.get(f"{url}/v1/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert whoami.status_code == 200 and whoami.json()["role"] == "admin"
    assert httpx.get(f"{url}/v1/whoami", timeout=5).status_code == 401
    assert httpx.get(f"{url}/metrics", timeout=10).status_code == 200


def test_the_watchdog_joins_the_metrics_streams_consumer_group(
    migrated: Rendered, start: Callable[[str], Process]
) -> None:
    from service.watchdog.consumer import GROUP, STREAM

    watchdog = start("watchdog")
    env = container_environment(migrated, "watchdog")
    with pytest.raises(redis.AuthenticationError):  # the Redis requires AUTH: no password, no stream
        redis.Redis.from_url(env["PRETRAIN_REDIS_URL"]).ping()
    client = redis.Redis.from_url(env["PRETRAIN_REDIS_URL"], password=env["PRETRAIN_REDIS_PASSWORD"])
    consumer = command_of(migrated, "watchdog")[-1]

    def joined() -> bool:
        return consumer in {c["name"].decode() for c in client.xinfo_consumers(STREAM, GROUP)}

    watchdog.wait_for(joined, f"consumer {consumer} of group {GROUP}")


def test_the_worker_connects_to_the_broker_and_starts(start: Callable[[str], Process]) -> None:
    worker = start("worker")
    worker.wait_for(lambda: " ready." in worker.output(), "ready", timeout=90)
    assert "Connected to redis://" in worker.output()
