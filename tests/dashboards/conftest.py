"""A real API server on a real database, and a real Prometheus scraping it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ADMIN_TOKEN, ROOT
from tests.prometheus_server import Prometheus, throwaway_prometheus
from tests.servers import ServerStartError, _stop_process, free_port

_START_TIMEOUT_S = 60


@dataclass(frozen=True)
class ApiServer:
    url: str
    address: str  # host:port, as a scrape target


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def serve_api(database_url: str, state_dir: Path, settings: dict[str, str] | None = None) -> Iterator[ApiServer]:
    """`uvicorn` serving the app in its own process, configured only through the environment:
    the database, the admin token and the state directory, and `settings` (`PRETRAIN_` names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRETRAIN_")}
    env.update(
        PRETRAIN_ENVIRONMENT="development",  # the suite's throwaway server, on SQLite or Postgres
        PRETRAIN_DATABASE_URL=database_url,
        PRETRAIN_ADMIN_TOKEN=ADMIN_TOKEN,
        PRETRAIN_STATE_DIR=str(state_dir),
        PRETRAIN_LOG_LEVEL="warning",
        PRETRAIN_SPEC_BUDGET_S="120",  # wall-clock time, and test machines are loaded
    )
    env.update(settings or {})
    log_path = state_dir / "api.log"
    state_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        port = free_port()
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app",
                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + _START_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline and not _healthy(url):
            time.sleep(0.1)
        if proc.poll() is None and _healthy(url):
            break
        proc.kill()
        proc.wait(timeout=10)
    else:
        raise ServerStartError(f"the API did not come up:\n{log_path.read_text(errors='replace')[-3000:]}")
    try:
        yield ApiServer(url=url, address=f"127.0.0.1:{port}")
    finally:
        _stop_process(proc)


@pytest.fixture
def api_replicas(pg_url: str, tmp_path: Path) -> Iterator[list[ApiServer]]:
    """Two API processes on one empty, migrated Postgres, as the chart runs them."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve_api(pg_url, tmp_path / f"api-{n}")) for n in range(2)]


@pytest.fixture
def prometheus(api_replicas: list[ApiServer]) -> Iterator[Prometheus]:
    """A Prometheus scraping every replica's /metrics (no token: the endpoint is open) each second."""
    with throwaway_prometheus([server.address for server in api_replicas]) as server:
        server.wait_for(server.targets_up, what="the API targets up")
        yield server
