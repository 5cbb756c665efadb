"""The service as a cluster runs it, each part its own `pretrainctl` process on this machine.

`ServiceStack` starts the API (`serve`), the controller, the Celery worker and the watchdog
with one environment (Postgres, Redis, the kubernetes backend through a kubeconfig that points
at the emulator), keeps each one's output in a log file, and can kill and restart any of them.
`wait_until` polls a condition against a deadline and says what it last saw when it gives up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis
import yaml

T = TypeVar("T")

PRETRAINCTL = Path(sys.executable).with_name("pretrainctl")
STOP_GRACE_S = 15.0
# The service's parts and the command line of each.
COMMANDS = {
    "api": ["serve"],
    "controller": ["controller"],
    "worker": ["worker", "--concurrency", "1"],
    "watchdog": ["watchdog", "run"],
}


def write_kubeconfig(path: Path, server: str, namespace: str) -> Path:
    """A kubeconfig whose current context is the emulator's API server."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "e2e", "user": {"token": "e2e-not-checked"}}],
        "contexts": [
            {
                "name": "emulator",
                "context": {"cluster": "emulator", "user": "e2e", "namespace": namespace},
            }
        ],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def own_redis_database(url: str, db: int) -> str:
    """`url` pointed at Redis database `db`, emptied: no other test's stream is read there."""
    parts = urlsplit(url)
    own = urlunsplit(parts._replace(path=f"/{db}"))
    redis.Redis.from_url(own).flushdb()
    return own


def clean_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any PRETRAIN_* or in-cluster settings, plus `overrides`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PRETRAIN_", "KUBERNETES_", "KUBECONFIG", "TEST_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.5,
    diagnostics: Callable[[], str] | None = None,
) -> T:
    """Call `probe` until it returns something truthy; fail with `what` past the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except (httpx.HTTPError, OSError) as exc:  # the API restarting, a dropped connection
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            detail = diagnostics() if diagnostics else ""
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last saw {last!r}\n{detail}"
            )
        time.sleep(interval)


class ServiceStack:
    """The four service processes; see the module docstring."""

    def __init__(self, env: Mapping[str, str], folder: Path) -> None:
        self.env = dict(env)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen] = {}
        self.starts: dict[str, int] = {}

    def log_path(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def pretrainctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run one `pretrainctl` command to the end (migrations, tokens); fail loudly if it fails."""
        done = subprocess.run(
            [str(PRETRAINCTL), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"pretrainctl {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def start(self, name: str) -> subprocess.Popen:
        """Start (or start again) one part; its output goes to `<name>.log`."""
        running = self.processes.get(name)
        if running is not None and running.poll() is None:
            raise RuntimeError(f"{name} is already running as pid {running.pid}")
        self.starts[name] = self.starts.get(name, 0) + 1
        with self.log_path(name).open("ab") as log:
            log.write(f"\n===== start {self.starts[name]} of {name} =====\n".encode())
            log.flush()
            process = subprocess.Popen(
                [str(PRETRAINCTL), *COMMANDS[name]],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: a worker's pool children go with it
            )
        self.processes[name] = process
        return process

    def start_all(self, url: str) -> None:
        """The API first, once it answers at `url`; then the controller, worker and watchdog."""
        self.start("api")
        self.wait_ready(url)
        for name in ("controller", "worker", "watchdog"):
            self.start(name)

    def wait_ready(self, url: str, timeout: float = 60) -> None:
        wait_until(
            lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200,
            timeout=timeout,
            what="the API to be ready",
            diagnostics=self.tails,
        )

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Kill one part's whole process group (SIGKILL: no chance to clean up) and reap it."""
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(STOP_GRACE_S)

    def alive(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def exited(self) -> dict[str, int]:
        """The exit codes of the parts that were started and are no longer running."""
        return {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}

    def stop(self) -> None:
        """SIGTERM every part, then SIGKILL what is left after the grace period."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)

    def tails(self, lines: int = 40) -> str:
        parts = []
        for name in COMMANDS:
            process = self.processes.get(name)
            state = (
                "not started"
                if process is None
                else ("running" if process.poll() is None else f"exited {process.returncode}")
            )
            parts.append(f"--- {name} ({state}), last {lines} lines of {self.log_path(name)}:")
            try:
                text = self.log_path(name).read_text(errors="replace")
            except OSError as exc:
                text = f"(no log: {exc})"
            parts.append("\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)
