"""The embedded default's backend: each attempt is a `torchrun --standalone` process tree here.

A workload is a folder under `<state_dir>/workloads/<name>/` holding its trainer config, log,
and, once it ends, its exit code and the trainer's outcome lines (`result.jsonl`). The command
runs under `launcher.py`, in its own session so it outlives a controller restart and can be
stopped as a group. The launcher holds a lock for as long as any process of the workload lives
and runs the command at most once per folder, so a controller killed between starting it and
recording that it did never starts a second trainer; it writes the exit code, so the controller
learns how it ended even if it was not watching.

A tokenizer job's attempt is the same kind of folder running the command its batch Job runs on
Kubernetes (`manifests.batch_command`): the tokenizer library's job, whose result the
workload reports to the API before it exits; its log is `tokenizer.log`. A data job's attempt
is the same, running the trainer's data preparation (`trainer.prepare`, its log `data.log`).
A checkpoint's evaluation is a folder `<name>-<id>-e<step>/` of its own beside the attempts',
running the command its batch Job runs on Kubernetes (`manifests.evaluation_command`), filed
by step under `kind="evaluation"`; its log is `evaluation.log`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from service.controller import outcome as outcomes
from service.controller.backends import launcher
from service.controller.manifests import (
    EVALUATION_LOG,
    EVALUATION_WORKLOAD_KIND,
    TOKEN_ENV,
    AnyWorkload,
    BatchWorkload,
    DataWorkload,
    EvaluationWorkload,
    TokenizerWorkload,
    Workload,
    batch_command,
    batch_config_file,
    batch_config_json,
    evaluation_command,
    evaluation_config_files,
)
from service.controller.reconcile import Phase, WorkloadStatus
from service.settings import trainer_environment

# Exit by SIGKILL/SIGTERM (OOM killer, a person, a shutdown) is a machine's fault, not the job's.
RETRYABLE_SIGNALS = {signal.SIGKILL, signal.SIGTERM}
NCCL_TIMEOUT = re.compile(r"Watchdog caught collective operation timeout|NCCL.*[Tt]imeout")
# How long a stopping workload gets before SIGKILL, unless its own grace period says otherwise.
STOP_GRACE_S = 20.0
STOP_FILE = "stop-requested"
TRAINER_LOG = "trainer.log"
TOKENIZER_LOG = "tokenizer.log"
DATA_LOG = "data.log"
# The most of a log `logs` returns: its end, where what went wrong is.
MAX_LOG_BYTES = 1 << 20
# Where the trainer appends its outcome lines (`job.result_path` in the config it is given).
RESULT_FILE = "result.jsonl"
LAUNCHER_PID_FILE = "launcher.pid"
LAUNCHER = Path(launcher.__file__)


class LocalBackend:
    def __init__(self, root: Path, *, passthrough_env: Iterable[str] = ()) -> None:
        self.root = Path(root)
        # Variables of this process's environment its workloads get beyond the trainer's share.
        self.passthrough_env = frozenset(passthrough_env)
        self.root.mkdir(parents=True, exist_ok=True)

    # --- Backend -----------------------------------------------------------------------------------

    def observe(self, job_id: int, *, kind: str = "pretrain") -> dict[int, WorkloadStatus]:
        """The job's attempts, or with `kind="evaluation"` its evaluations by step (every
        workload's folder says what it runs).

        A folder whose launch never started (the controller died before it) is not a workload
        yet: `create` starts it.
        """
        evaluations = kind == EVALUATION_WORKLOAD_KIND
        statuses = {}
        for folder in self.root.glob(f"*-{job_id}-{'e' if evaluations else 'a'}*"):
            meta = _read_meta(folder)
            if meta is None or meta["job_id"] != job_id:
                continue
            if (meta.get("kind") == EVALUATION_WORKLOAD_KIND) != evaluations:
                continue
            if (folder / STOP_FILE).exists() and self._finish_stopping(folder):
                continue
            status = self._status(folder, meta)
            if status is not None:
                statuses[meta["attempt"]] = status
        return statuses

    def create(self, workload: AnyWorkload) -> bool:
        """Start the workload unless a launch of it already started; True if this call started it.

        Safe against a controller killed anywhere in here. Under the workload's lock, nothing
        that could run the command is past its start: the config (with this call's token) is
        (re)written and a launcher started; a launcher left by a controller killed before it
        could note it races the new one for the lock once it is released, and whichever wins
        runs the command once, with the config written last.
        """
        name = workload.name
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        with _launch_lock(folder) as free:
            if not free or _ran(folder):
                return False
            if isinstance(workload, EvaluationWorkload):
                self._start_evaluation(folder, name, workload)
            elif isinstance(workload, TokenizerWorkload | DataWorkload):
                self._start_batch(folder, name, workload)
            else:
                self._start_trainer(folder, name, workload)
        return True

    def _start_trainer(self, folder: Path, name: str, workload: Workload) -> None:
        config = json.loads(json.dumps(workload.trainer_config))
        config["metrics"]["token"] = workload.ingest_token
        config["metrics"]["jsonl_path"] = str(folder / "metrics.jsonl")
        config["job"]["result_path"] = str(folder / RESULT_FILE)
        config_path = folder / "trainer.json"
        _write_private(config_path, json.dumps(config, indent=1))
        nproc = workload.nodes * workload.gpus_per_node
        trainer = [sys.executable, "-m", "trainer.train", "--config", str(config_path)]
        if nproc > 1:
            trainer = [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={nproc}", "-m", "trainer.train", "--config", str(config_path),
            ]  # fmt: skip
        given = {"OMP_NUM_THREADS": "1"} if nproc > 1 else {}  # processes share the cores: one thread each
        env = trainer_environment(given, passthrough=self.passthrough_env)
        meta = {
            "job_id": workload.job_id,
            "attempt": workload.attempt,
            "name": name,
            # As a pod's terminationGracePeriodSeconds: the trainer saves in it before SIGKILL.
            "termination_grace_s": workload.termination_grace_s,
        }
        _launch(folder, meta, trainer, env)

    def _start_batch(self, folder: Path, name: str, workload: BatchWorkload) -> None:
        config_path = folder / batch_config_file(workload)
        config_path.write_text(batch_config_json(workload))
        command = batch_command(workload, python=sys.executable, config_path=str(config_path))
        kind = "data" if isinstance(workload, DataWorkload) else "tokenizer"
        # The token reaches the process as it reaches a pod, as PRETRAIN_INGEST_TOKEN
        # (manifests.TOKEN_ENV) in its environment, and is written to no file.
        env = trainer_environment({TOKEN_ENV: workload.ingest_token or ""}, passthrough=self.passthrough_env)
        meta = {
            "job_id": workload.job_id,
            "attempt": workload.attempt,
            "name": name,
            "kind": kind,
            "log": DATA_LOG if kind == "data" else TOKENIZER_LOG,
        }
        _launch(folder, meta, command, env=env)

    def _start_evaluation(self, folder: Path, name: str, workload: EvaluationWorkload) -> None:
        for file_name, text in evaluation_config_files(workload).items():
            (folder / file_name).write_text(text)
        command = evaluation_command(workload, python=sys.executable, config_dir=str(folder))
        # As in its pod: the token in the environment only, and Hugging Face never online.
        given = {TOKEN_ENV: workload.ingest_token or "", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        env = trainer_environment(given, passthrough=self.passthrough_env)
        meta = {
            "job_id": workload.job_id,
            "attempt": workload.step,
            "name": name,
            "kind": EVALUATION_WORKLOAD_KIND,
            "log": EVALUATION_LOG,
        }
        _launch(folder, meta, command, env=env)

    def delete(self, job_id: int, attempt: int, *, kind: str = "pretrain") -> bool:
        """Ask the process group to stop (SIGTERM: the trainer saves and exits); never waits.

        The workload counts as existing until its processes are gone; `observe` finishes the
        job, escalating to SIGKILL after a grace period. Calling it again is harmless and
        returns False: only the call that asked it to stop deleted it (the controller writes
        one event for it, not one a reconcile while the trainer saves).
        """
        evaluations = kind == EVALUATION_WORKLOAD_KIND
        for folder in self.root.glob(f"*-{job_id}-{'e' if evaluations else 'a'}{attempt}"):
            meta = _read_meta(folder)
            if meta is None or meta["job_id"] != job_id or meta["attempt"] != attempt:
                continue
            if (meta.get("kind") == EVALUATION_WORKLOAD_KIND) != evaluations:
                continue
            asked = not (folder / STOP_FILE).exists()
            if asked:
                _write_atomically(folder / STOP_FILE, str(time.monotonic()))
                _signal_workload(folder, signal.SIGTERM)
            self._finish_stopping(folder)
            return asked
        return False

    def pod_states(self, job_id: int, attempt: int, *, kind: str = "pretrain") -> list[dict]:
        """The workload's processes as this machine sees them (what a pod's state is on Kubernetes):
        pid, command and the kernel's state (`S (sleeping)`, `R (running)`, `D (disk sleep)`), and
        whether the trainer's log names an NCCL timeout."""
        for folder in self.root.glob(f"*-{job_id}-a{attempt}"):
            meta = _read_meta(folder)
            if meta is None or meta["job_id"] != job_id or meta["attempt"] != attempt:
                continue
            log = _log_tail(folder / meta.get("log", TRAINER_LOG))
            nccl = bool(NCCL_TIMEOUT.search(outcomes.without_secondary_failures(log)))
            root = _read_pid(folder / launcher.PID_FILE)
            processes = _process_tree(root) if root is not None else []
            if not processes:
                return [{"name": meta["name"], "state": "gone", "nccl_timeout": nccl}]
            return [{"name": meta["name"], **process, "nccl_timeout": nccl} for process in processes]
        return []

    def logs(self, job_id: int, attempt: int, *, tail: int | None = None) -> str | None:
        """The attempt's log (its last `tail` lines, at most MAX_LOG_BYTES), stopped or not;
        None if it never started here."""
        stopped = sorted((self.root / ".deleted").glob(f"*-{job_id}-a{attempt}-*"), reverse=True)
        for folder in [*self.root.glob(f"*-{job_id}-a{attempt}"), *stopped]:
            meta = _read_meta(folder)
            if meta is None or meta["job_id"] != job_id or meta["attempt"] != attempt:
                continue
            text = _log_tail(folder / meta.get("log", TRAINER_LOG), MAX_LOG_BYTES)
            return text if tail is None else "".join(text.splitlines(keepends=True)[-tail:])
        return None

    def _finish_stopping(self, folder: Path) -> bool:
        """True once a stopping workload is gone (and filed away); SIGKILL past the grace period."""
        if _running(folder):
            meta = _read_meta(folder) or {}
            grace = meta.get("termination_grace_s") or STOP_GRACE_S
            if time.monotonic() - _stop_requested_at(folder) > grace:
                _signal_workload(folder, signal.SIGKILL)
            return False
        graveyard = self.root / ".deleted"
        graveyard.mkdir(exist_ok=True)
        shutil.move(str(folder), graveyard / f"{folder.name}-{int(time.time() * 1000)}")
        return True

    # --- helpers -----------------------------------------------------------------------------------

    def _status(self, folder: Path, meta: dict) -> WorkloadStatus | None:
        name, attempt = meta["name"], meta["attempt"]
        batch = meta.get("kind") in ("tokenizer", "data", EVALUATION_WORKLOAD_KIND)
        what = f"{meta['kind']} job" if batch else "trainer"
        exit_file = folder / launcher.EXIT_CODE_FILE
        if exit_file.exists():
            code = int(exit_file.read_text().strip() or "1")
            told = outcomes.read_outcome(_read_text(folder / RESULT_FILE))
            if told is not None:
                # The trainer's own word decides: torchrun makes every failure exit 1.
                if told.outcome == outcomes.Outcome.COMPLETED and code == 0:
                    return WorkloadStatus(name, attempt, Phase.SUCCEEDED, outcome=told)
                if told.outcome != outcomes.Outcome.COMPLETED:
                    reason = f"the {what} {told.describe()}"
                    return WorkloadStatus(name, attempt, Phase.FAILED, reason=reason, outcome=told)
            if code == 0:
                return WorkloadStatus(name, attempt, Phase.SUCCEEDED, outcome=told)
            log = _log_tail(folder / meta.get("log", TRAINER_LOG))
            if meta.get("kind") == EVALUATION_WORKLOAD_KIND:
                # The runner ends on a one-line reason (contract B): that line is the reason.
                last = next((line for line in reversed(log.splitlines()) if line.strip()), "")
                reason = f"the evaluation exited with code {code}" + (f": {last.strip()[:300]}" if last else "")
                return WorkloadStatus(name, attempt, Phase.FAILED, reason=reason)
            reason, retryable = _classify_exit(code, log, what)
            return WorkloadStatus(name, attempt, Phase.FAILED, reason=reason, retryable=retryable)
        if (folder / STOP_FILE).exists():
            return WorkloadStatus(name, attempt, Phase.FAILED, reason="stopping on request")
        if _lock_held(folder):
            # A trainer runs once it reports; a tokenizer or data job is running once started.
            started = batch or (folder / "metrics.jsonl").exists()
            return WorkloadStatus(name, attempt, Phase.RUNNING if started else Phase.PENDING)
        if (folder / launcher.PID_FILE).exists():
            # Ended without its launcher there to record the exit code: its own word, if any.
            told = outcomes.read_outcome(_read_text(folder / RESULT_FILE))
            if told is not None and told.outcome == outcomes.Outcome.COMPLETED:
                return WorkloadStatus(name, attempt, Phase.SUCCEEDED, outcome=told)
            if told is not None:
                reason = f"the {what} {told.describe()}"
                return WorkloadStatus(name, attempt, Phase.FAILED, reason=reason, outcome=told)
            return WorkloadStatus(
                name, attempt, Phase.FAILED, reason=f"the {what} process vanished", retryable=True
            )
        launcher_pid = _read_pid(folder / LAUNCHER_PID_FILE)
        if launcher_pid is None:
            return None  # never launched: the controller died before it could
        _reap(launcher_pid)
        if _alive(launcher_pid):
            return WorkloadStatus(name, attempt, Phase.PENDING)  # starting
        return WorkloadStatus(
            name, attempt, Phase.FAILED, reason=f"the {what} never started", retryable=True
        )


def _launch(folder: Path, meta: dict, command: list[str], env: dict[str, str]) -> None:
    """Start `command` under the launcher, in its own session; note the launcher's pid.

    meta.json (what the folder is) is written first: a folder with it and no launcher noted is
    one whose launch may not have started, which `create` starts again (the launcher makes a
    second start harmless).
    """
    _write_atomically(folder / "meta.json", json.dumps(meta))
    with (folder / meta.get("log", TRAINER_LOG)).open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-I", str(LAUNCHER), *command],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    _write_atomically(folder / LAUNCHER_PID_FILE, str(process.pid))


def _ran(folder: Path) -> bool:
    """Whether a launcher ran the command here (it may have ended since)."""
    return (folder / launcher.PID_FILE).exists() or (folder / launcher.EXIT_CODE_FILE).exists()


@contextlib.contextmanager
def _launch_lock(folder: Path) -> Iterator[bool]:
    """The workload's lock, held exclusively while a launch is prepared; False if it is held."""
    fd = os.open(folder / launcher.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _running(folder: Path) -> bool:
    """Whether any process of the workload (or its launcher, still starting) lives."""
    if _lock_held(folder):
        return True
    launcher_pid = _read_pid(folder / LAUNCHER_PID_FILE)
    if launcher_pid is None:
        return False
    _reap(launcher_pid)
    return _alive(launcher_pid) and not (folder / launcher.EXIT_CODE_FILE).exists()


def _lock_held(folder: Path) -> bool:
    """True while the launcher or anything it started holds the workload's lock.

    The probe holds a shared lock for an instant; a launcher starting right then retries.
    """
    try:
        fd = os.open(folder / launcher.LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor releases a lock it took
    return False


def _process_tree(pid: int) -> list[dict]:
    """`pid` and its descendants: pid, command and state, from /proc (empty where it is gone)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        proc = Path(f"/proc/{current}")
        try:
            status = dict(
                line.split(":\t", 1) for line in (proc / "status").read_text().splitlines() if ":\t" in line
            )
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            children = (proc / "task" / str(current) / "children").read_text().split()
        except OSError:
            continue
        found.append({"pid": current, "command": command[:200], "state": status.get("State", "?").strip()})
        todo += [int(child) for child in children]
    return found


def _signal_workload(folder: Path, sig: signal.Signals) -> None:
    """Signal the workload's process group (the launcher's session), and a launcher still starting."""
    for pid_file in (launcher.PID_FILE, LAUNCHER_PID_FILE):
        pid = _read_pid(folder / pid_file)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)


def _classify_exit(code: int, log_tail: str, what: str = "trainer") -> tuple[str, bool]:
    """Why a trainer (or tokenizer job) that said nothing of its end exited, and whether a new
    attempt may help."""
    signal_number = code - 128 if code > 128 else None
    root_cause = outcomes.torchrun_root_cause(log_tail)
    if signal_number is None and root_cause is not None and root_cause < 0:
        signal_number = -root_cause  # the first worker to fail died of a signal
    if signal_number is not None:
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = f"signal {signal_number}"
        return f"a {what} process was killed by {name}", signal_number in RETRYABLE_SIGNALS
    log_tail = outcomes.without_secondary_failures(log_tail)
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


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _stop_requested_at(folder: Path) -> float:
    """When the stop was asked, on the machine's monotonic clock (system-wide on Linux).

    Not the wall clock: a clock step (NTP, a drifting VM) must not cut a trainer's grace period
    short and SIGKILL it mid-save. A stamp this clock cannot have written (from before a reboot,
    or a wall-clock stamp of an older version) restarts the grace period now.
    """
    path = folder / STOP_FILE
    now = time.monotonic()
    try:
        requested = float(path.read_text())
    except (OSError, ValueError):
        requested = math.inf
    if requested > now:
        _write_atomically(path, str(now))
        return now
    return requested


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.rename(path)


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (it holds the ingest token)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.rename(path)


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


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
