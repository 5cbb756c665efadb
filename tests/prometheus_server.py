"""A real, throwaway Prometheus server for the dashboard tests.

``throwaway_prometheus(targets)`` starts the ``prometheus`` binary (``TEST_PROMETHEUS_BIN``,
else the one in PATH, else ``/usr/bin/prometheus``) on a free loopback port, with its own
config and TSDB in a fresh temporary directory, scraping ``targets`` every second; it yields
a small client for the HTTP API and stops the server and deletes the directory afterwards.
Like tests/servers.py, a server left by a test process that was killed outright is stopped
by the next run. ``.ci/ensure-binaries`` installs Debian's ``prometheus`` when it is missing.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.servers import (
    _OWNER_FILE,
    _PORT_ATTEMPTS,
    _PORT_IN_USE,
    _SERVER_PID_FILE,
    ServerStartError,
    _base_tmpdir,
    _Cleanup,
    _cmdline,
    _make_tmpdir,
    _pid_alive,
    _read_pid,
    _stop_process,
    _tail,
    free_port,
)

_PROMETHEUS_PREFIX = "pretrain-test-prometheus-"
_START_TIMEOUT_S = 30
SCRAPE_INTERVAL_S = 1


def find_prometheus() -> str:
    """The Prometheus server binary."""
    configured = os.environ.get("TEST_PROMETHEUS_BIN")
    if configured:
        if not os.access(configured, os.X_OK):
            raise ServerStartError(f"TEST_PROMETHEUS_BIN={configured} is not an executable file")
        return configured
    found = shutil.which("prometheus")
    if found:
        return found
    for path in ("/usr/bin/prometheus", "/usr/local/bin/prometheus"):
        if os.access(path, os.X_OK):
            return path
    raise ServerStartError(
        "prometheus not found; run .ci/ensure-binaries (or apt-get install prometheus), "
        "or set TEST_PROMETHEUS_BIN"
    )


@dataclass(frozen=True)
class Prometheus:
    """A running server's HTTP API."""

    url: str

    def get(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, **params: str) -> list[dict]:
        """An instant query's result (a vector: one entry per series)."""
        return self.get("/api/v1/query", query=expr, **params)["result"]

    def query_range(self, expr: str, *, start: float, end: float, step: str = "1s") -> list[dict]:
        """A range query's result (a matrix: per series, its values over time)."""
        return self.get("/api/v1/query_range", query=expr, start=str(start), end=str(end), step=step)["result"]

    def targets_up(self) -> bool:
        active = self.get("/api/v1/targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def wait_for(self, condition, *, timeout: float = 20.0, what: str = "a condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, urllib.error.URLError, AssertionError):
                if condition():
                    return
            time.sleep(0.2)
        raise AssertionError(f"Prometheus did not see {what} within {timeout:.0f}s")


def _config(targets: list[str], metrics_path: str) -> str:
    scrape = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
        "scrape_configs": [
            {
                "job_name": "pretrain-orchestrator",
                "metrics_path": metrics_path,
                "scrape_timeout": f"{SCRAPE_INTERVAL_S}s",
                "static_configs": [{"targets": targets}],
            }
        ],
    }
    return json.dumps(scrape)  # JSON is YAML


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


@contextlib.contextmanager
def throwaway_prometheus(targets: list[str], metrics_path: str = "/metrics") -> Iterator[Prometheus]:
    """Start a private Prometheus scraping ``targets`` (``host:port``) every second."""
    reap_orphans()
    binary = find_prometheus()
    tmpdir = _make_tmpdir(_PROMETHEUS_PREFIX)
    config = tmpdir / "prometheus.yml"
    config.write_text(_config(targets, metrics_path))
    logfile = tmpdir / "prometheus.log"
    procs: list[subprocess.Popen] = []

    def cleanup() -> None:
        try:
            for proc in procs:
                _stop_process(proc)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    stop = _Cleanup(cleanup)
    try:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            with logfile.open("ab") as log:
                proc = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmpdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=warn",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=tmpdir,
                )
            procs.append(proc)
            (tmpdir / _SERVER_PID_FILE).write_text(f"{proc.pid}\n")
            deadline = time.monotonic() + _START_TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline and not _ready(url):
                time.sleep(0.1)
            if proc.poll() is None and _ready(url):
                break
            _stop_process(proc)
            log_tail = _tail(logfile)
            if attempt < _PORT_ATTEMPTS and _PORT_IN_USE.search(log_tail):
                continue  # lost a race for the port: pick another
            raise ServerStartError(
                f"prometheus (pid {proc.pid}) did not become ready on port {port} "
                f"(exit {proc.returncode}):\n--- {logfile} (tail) ---\n{log_tail}"
            )
        yield Prometheus(url)
    finally:
        stop()


def reap_orphans() -> None:
    """Stop and delete Prometheus servers left by test processes that were killed."""
    for entry in glob.glob(os.path.join(_base_tmpdir(), _PROMETHEUS_PREFIX + "*")):
        tmpdir = Path(entry)
        owner = _read_pid(tmpdir / _OWNER_FILE)
        if owner is None or owner == os.getpid() or _pid_alive(owner):
            continue
        pid = _read_pid(tmpdir / _SERVER_PID_FILE)
        with contextlib.suppress(OSError):
            if pid is not None and _pid_alive(pid) and "prometheus" in _cmdline(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmpdir, ignore_errors=True)
