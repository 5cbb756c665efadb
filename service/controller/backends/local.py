"""The embedded default's backend: each attempt is a `torchrun --standalone` process tree here.

A workload is a folder under `<state_dir>/workloads/<name>/` holding its trainer config, log,
pid and, once it ends, its exit code. The process runs in its own session so it outlives a
controller restart and can be stopped as a group; a small shell wrapper writes the exit code,
so the controller learns how it ended even if it was not watching.

A tokenizer job's attempt is the same kind of folder running the command its batch Job runs on
Kubernetes (`manifests.tokenizer_command`): the tokenizer library's job, whose result the
workload reports to the API before it exits; its log is `tokenizer.log`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from service.controller.manifests import (
    TOKENIZER_CONFIG_FILE,
    TokenizerWorkload,
    Workload,
    tokenizer_command,
    workload_name,
)
from service.controller.reconcile import Phase, WorkloadStatus
from service.settings import environment_for_child

# Exit by SIGKILL/SIGTERM (OOM killer, a person, a shutdown) is a machine's fault, not the job's.
RETRYABLE_SIGNALS = {signal.SIGKILL, signal.SIGTERM}
# torchrun reports a worker killed by a signal as a negative exit code in its error summary.
TORCHRUN_SIGNAL = re.compile(r"exitcode\s*:\s*-(\d+)")
NCCL_TIMEOUT = re.compile(r"Watchdog caught collective operation timeout|NCCL.*[Tt]imeout")
STOP_GRACE_S = 20.0
STOP_FILE = "stop-requested"
TRAINER_LOG = "trainer.log"
TOKENIZER_LOG = "tokenizer.log"
# The wrapper records the exit code atomically, whoever is (or is not) watching.
EXIT_CODE_WRAPPER = '"$@"; code=$?; echo $code > exitcode.tmp && mv exitcode.tmp exitcode; exit $code'


class LocalBackend:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # --- Backend -----------------------------------------------------------------------------------

    def observe(self, job_id: int, *, kind: str = "pretrain") -> dict[int, WorkloadStatus]:
        """`kind` is not needed here: every workload's folder says what it runs."""
        statuses = {}
        for folder in self.root.glob(f"*-{job_id}-a*"):
            meta = _read_meta(folder)
            if meta is None or meta["job_id"] != job_id:
                continue
            if (folder / STOP_FILE).exists() and self._finish_stopping(folder, meta):
                continue
            statuses[meta["attempt"]] = self._status(folder, meta)
        return statuses

    def create(self, workload: Workload | TokenizerWorkload) -> bool:
        name = workload_name(workload.job_name, workload.job_id, workload.attempt)
        folder = self.root / name
        if (folder / "meta.json").exists():
            return False
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(workload, TokenizerWorkload):
            return self._create_tokenizer(folder, name, workload)
        config = json.loads(json.dumps(workload.trainer_config))
        config["metrics"]["token"] = workload.ingest_token
        config["metrics"]["jsonl_path"] = str(folder / "metrics.jsonl")
        config_path = folder / "trainer.json"
        config_path.touch(mode=0o600)
        config_path.write_text(json.dumps(config, indent=1))
        nproc = workload.nodes * workload.gpus_per_node
        trainer = [sys.executable, "-m", "trainer.train", "--config", str(config_path)]
        if nproc > 1:
            trainer = [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={nproc}", "-m", "trainer.train", "--config", str(config_path),
            ]  # fmt: skip
        if nproc > 1:  # processes share this machine's cores: one thread each
            trainer = ["env", "OMP_NUM_THREADS=1", *trainer]
        _launch(folder, {"job_id": workload.job_id, "attempt": workload.attempt, "name": name}, trainer)
        return True

    def _create_tokenizer(self, folder: Path, name: str, workload: TokenizerWorkload) -> bool:
        config_path = folder / TOKENIZER_CONFIG_FILE
        config_path.write_text(json.dumps(workload.tokenizer_config, indent=1))
        command = tokenizer_command(
            workload, python=sys.executable, config_path=str(config_path)
        )
        # The token reaches the process as it reaches a pod, as PRETRAIN_INGEST_TOKEN
        # (manifests.TOKEN_ENV) in its environment, and is written to no file.
        env = environment_for_child({"ingest_token": workload.ingest_token or ""})
        meta = {
            "job_id": workload.job_id,
            "attempt": workload.attempt,
            "name": name,
            "kind": "tokenizer",
            "log": TOKENIZER_LOG,
        }
        _launch(folder, meta, command, env=env)
        return True

    def delete(self, job_id: int, attempt: int, *, kind: str = "pretrain") -> bool:
        """Ask the process group to stop (SIGTERM: the trainer saves and exits); never waits.

        The workload counts as existing until its processes are gone; `observe` finishes the
        job, escalating to SIGKILL after a grace period. Calling it again is harmless.
        """
        for folder in self.root.glob(f"*-{job_id}-a{attempt}"):
            meta = _read_meta(folder)
            if meta is None or meta["job_id"] != job_id or meta["attempt"] != attempt:
                continue
            if not (folder / STOP_FILE).exists():
                (folder / STOP_FILE).write_text(str(time.time()))
                _signal_group(meta["pid"], signal.SIGTERM)
            self._finish_stopping(folder, meta)
            return True
        return False

    def _finish_stopping(self, folder: Path, meta: dict) -> bool:
        """True once a stopping workload is gone (and filed away); SIGKILL past the grace period."""
        _reap(meta["pid"])
        if _alive(meta["pid"]):
            requested = float((folder / STOP_FILE).read_text() or 0)
            if time.time() - requested > STOP_GRACE_S:
                _signal_group(meta["pid"], signal.SIGKILL)
            return False
        graveyard = self.root / ".deleted"
        graveyard.mkdir(exist_ok=True)
        shutil.move(str(folder), graveyard / f"{folder.name}-{int(time.time() * 1000)}")
        return True

    # --- helpers -----------------------------------------------------------------------------------

    def _status(self, folder: Path, meta: dict) -> WorkloadStatus:
        name, attempt = meta["name"], meta["attempt"]
        tokenizer = meta.get("kind") == "tokenizer"
        exit_file = folder / "exitcode"
        if exit_file.exists():
            code = int(exit_file.read_text().strip() or "1")
            if code == 0:
                return WorkloadStatus(name, attempt, Phase.SUCCEEDED)
            log = _log_tail(folder / meta.get("log", TRAINER_LOG))
            reason, retryable = _classify_exit(code, log, "tokenizer job" if tokenizer else "trainer")
            return WorkloadStatus(name, attempt, Phase.FAILED, reason=reason, retryable=retryable)
        if (folder / STOP_FILE).exists():
            return WorkloadStatus(name, attempt, Phase.FAILED, reason="stopping on request")
        if _alive(meta["pid"]):
            # A trainer runs once it reports; a tokenizer job reports only at the end.
            started = tokenizer or (folder / "metrics.jsonl").exists()
            return WorkloadStatus(name, attempt, Phase.RUNNING if started else Phase.PENDING)
        return WorkloadStatus(
            name, attempt, Phase.FAILED, reason="the trainer process vanished", retryable=True
        )


def _launch(folder: Path, meta: dict, command: list[str], env: dict[str, str] | None = None) -> None:
    """Start `command` in its own session under the exit-code wrapper; record its pid in meta.json."""
    with (folder / meta.get("log", TRAINER_LOG)).open("ab") as log:
        process = subprocess.Popen(
            ["sh", "-c", EXIT_CODE_WRAPPER, "sh", *command],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    (folder / "meta.tmp").write_text(json.dumps({**meta, "pid": process.pid}))
    (folder / "meta.tmp").rename(folder / "meta.json")


def _classify_exit(code: int, log_tail: str, what: str = "trainer") -> tuple[str, bool]:
    """Why a trainer (or tokenizer job) exited, and whether a new attempt may help."""
    signal_number = code - 128 if code > 128 else None
    if signal_number is None and (match := TORCHRUN_SIGNAL.search(log_tail)):
        signal_number = int(match.group(1))
    if signal_number is not None:
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = f"signal {signal_number}"
        return f"a {what} process was killed by {name}", signal_number in RETRYABLE_SIGNALS
    if NCCL_TIMEOUT.search(log_tail):
        return "NCCL collective timed out", True
    last_error = next(
        (
            line
            for line in reversed(log_tail.splitlines())
            if "Error" in line or line.startswith("error:")  # the tokenizer CLI's own message
        ),
        None,
    )
    return f"{what} exited with code {code}" + (
        f": {last_error.strip()[:300]}" if last_error else ""
    ), False


def _log_tail(path: Path, size: int = 20_000) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - size))
        return handle.read().decode(errors="replace")


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by us) is not alive.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
