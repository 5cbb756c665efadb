"""`pretrainctl demo` / `make demo`: the whole loop on one machine, shown live.

It starts the service on the embedded default (SQLite, in-process controller and watchdog,
local backend) in a state folder of its own, submits the demo spec — a tiny Llama whose `en`
channel turns to garbage for a stretch of steps — and shows steps, per-channel loss and
every verdict as they happen: the divergence caught, the automatic rollback with the bad
window skipped, the resumed run finishing. Its final checkpoint is scored on a multiple-choice
benchmark made from the embedded English corpus (`python -m trainer.mc_data`), by lm-eval in a
process of its own. Then it trains the same spec without the fault (and without the benchmark),
for comparison, and writes `report.html` and `summary.json`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import yaml

from pretrainctl import goodput_report, run_report
from pretrainctl.client import ApiClient
from pretrainctl.output import progress_line

DEMO_SPEC = Path(__file__).resolve().parent.parent / "examples" / "demo.yaml"
TERMINAL_STATES = ("succeeded", "failed", "cancelled", "paused")
# The demo spec's benchmark (its `evaluation.benchmarks[].path`, under the data root the demo
# gives the service), made before the job is submitted: (corpus, path, items).
DEMO_BENCHMARK = ("en", "benchmarks/continuation-en.jsonl", 32)


@dataclass
class DemoResult:
    job: run_report.RunData
    baseline: run_report.RunData | None
    report_path: Path
    summary: dict[str, Any]

    @property
    def ok(self) -> bool:
        """The loop was shown: the job finished after at least one automatic rollback."""
        automatic = [r for r in self.summary["job"]["rollbacks"] if r["actor"] == "watchdog"]
        return self.summary["job"]["state"] == "succeeded" and bool(automatic)


def run(
    *,
    out_dir: Path,
    spec_path: Path = DEMO_SPEC,
    baseline: bool = True,
    timeout_s: float = 900.0,
    echo: Callable[[str], None] = print,
    stream: TextIO | None = None,
) -> DemoResult:
    out_dir = Path(out_dir)
    state_dir = out_dir / "state"
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    spec_text = Path(spec_path).read_text()
    display = LiveDisplay(stream or sys.stdout)
    make_benchmark(state_dir / "data")
    with embedded_service(state_dir, out_dir / "serve.log") as client:
        echo(f"== service up at {client.base_url} (embedded SQLite in {state_dir})")
        plan = client.plan(spec_text, yaml=True)
        echo(f"== plan: {plan['params']['total']:,} parameters, "
             f"{sum(s['train_iters'] for s in plan['stages'])} steps, "
             f"{plan['memory']['per_gpu_gib']:.2f} GiB per process")
        for warning in plan.get("spec_warnings", []):
            echo(f"   warning: {warning['msg']}")
        job = client.submit(spec_text, yaml=True)
        echo(f"== submitted job {job['id']} ({job['name']}); following it live")
        follow(client, job["id"], display, timeout_s=timeout_s)
        faulty = run_report.collect(client, job["id"])
        reference = None
        if baseline:
            clean = without_faults(yaml.safe_load(spec_text))
            clean_job = client.submit(json.dumps(clean), yaml=False)
            echo(f"== for comparison, job {clean_job['id']}: the same spec without the garbage stretch")
            follow(client, clean_job["id"], LiveDisplay(stream or sys.stdout, events=False), timeout_s=timeout_s)
            reference = run_report.collect(client, clean_job["id"])
        evaluation = yaml.safe_load(spec_text).get("evaluation") or {}
        if evaluation.get("benchmarks"):
            final = (evaluation.get("checkpoints") or {}).get("final", True)
            wait_for_evaluations(client, job["id"], final=final, timeout_s=timeout_s)
        faulty.evaluations = client.evaluations(job["id"])
    report_path = out_dir / "report.html"
    report_path.write_text(run_report.render_html(faulty, baseline=reference, title="pretrain-orchestrator demo"))
    summary = {"job": run_report.summarize(faulty).as_dict()}
    if reference is not None:
        summary["baseline"] = run_report.summarize(reference).as_dict()
        summary["final_loss_relative_difference"] = run_report.relative_difference(
            summary["job"]["final_loss"], summary["baseline"]["final_loss"]
        )
        summary["final_eval_loss_relative_difference"] = run_report.relative_difference(
            summary["job"]["final_eval_loss"], summary["baseline"]["final_eval_loss"]
        )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    result = DemoResult(faulty, reference, report_path, summary)
    for line in conclusion(result):
        echo(line)
    return result


def without_faults(spec: dict[str, Any]) -> dict[str, Any]:
    """The same spec with every fault injection (and the benchmark) removed, under its own name."""
    clean = copy.deepcopy(spec)
    clean["name"] = f"{spec['name']}-baseline"
    clean.pop("evaluation", None)  # the comparison is of losses: no second benchmark run
    for stage in clean.get("stages", []):
        for source in stage.get("data", []):
            source.pop("corrupt_steps", None)
    return clean


def conclusion(result: DemoResult) -> list[str]:
    job = result.summary["job"]
    lines = [f"== job {job['job_id']} {job['state']} after {job['attempts']} attempt(s)"]
    for rollback in job["rollbacks"]:
        skip = rollback["skip_range_batches"] or ["?", "?"]
        lines.append(
            f"   rollback by {rollback['actor']}: {rollback['why']}; resumed from step "
            f"{rollback['checkpoint_step']} with batches [{skip[0]}, {skip[1]}) skipped"
        )
    if result.baseline is not None:
        base = result.summary["baseline"]
        lines.append(
            f"   final loss {_fmt(job['final_loss'])} vs {_fmt(base['final_loss'])} without the fault "
            f"({_pct(result.summary['final_loss_relative_difference'])}); final eval loss "
            f"{_fmt(job['final_eval_loss'])} vs {_fmt(base['final_eval_loss'])} "
            f"({_pct(result.summary['final_eval_loss_relative_difference'])})"
        )
    if mix := job.get("data_mix"):
        shares = ", ".join(
            f"{channel} {_share(shares['planned'])}/{_share(shares['consumed'])}" for channel, shares in mix.items()
        )
        lines.append(f"   data mix planned/consumed: {shares}")
    for row in result.job.evaluations or []:
        scores = (f"acc {_fmt(row['acc'], '.3f')}, acc_norm {_fmt(row['acc_norm'], '.3f')}, NLL {_fmt(row['nll'], '.2f')}"
                  if row["state"] == "succeeded" else f"{row['state']}: {row['error']}")  # fmt: skip
        lines.append(f"   benchmark {row['task']} at step {row['step']}: {scores}")
    if figures := job.get("goodput"):
        lines.append(f"   {goodput_report.line(figures)}")
    if progress := job.get("progress"):
        lines.append(f"   progress: {progress_line(progress)}")
    lines.append(f"== report: {result.report_path}")
    if not result.ok:
        lines.append("!! the demo did not show an automatic rollback followed by a finished run")
    return lines


def make_benchmark(data_root: Path) -> Path:
    """The demo's multiple-choice set, generated from an embedded corpus (nothing downloaded)."""
    corpus, relative, items = DEMO_BENCHMARK
    out = data_root / relative
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "trainer.mc_data", "--corpus", corpus, "--out", str(out),
               "--items", str(items), "--seed", "0"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return out


def wait_for_evaluations(
    client: ApiClient, job_id: int, *, final: bool, timeout_s: float, interval_s: float = 1.0
) -> None:
    """Until the finished job's evaluations exist (with `final`, its final checkpoint's) and
    have all ended. The evaluator chooses the final checkpoint on its first pass after the job's
    end, seconds later: an empty or earlier-steps-only list right then is not "all ended"."""
    progress = client.get_job(job_id).get("progress") or {}
    final_step = progress.get("total_steps", 0) if final else 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = client.evaluations(job_id)
        chosen = any(row["step"] >= final_step for row in rows)
        if chosen and all(row["state"] in ("succeeded", "failed") for row in rows):
            return
        time.sleep(interval_s)


# ---------------------------------------------------------------- the service


@contextlib.contextmanager
def embedded_service(
    state_dir: Path, log_path: Path, *, ready_timeout_s: float = 90.0, extra_env: dict[str, str] | None = None
) -> Iterator[ApiClient]:
    """`pretrainctl serve` on the embedded default, on a free port, until the block ends;
    `extra_env` reaches the server and, through it, its trainers (e.g. OMP_NUM_THREADS)."""
    port = free_port()
    token = secrets.token_urlsafe(24)
    env = _environment_for_child(
        {"state_dir": str(Path(state_dir).resolve()), "environment": "development", "backend": "local",
         "admin_token": token, "data_root": str((Path(state_dir) / "data").resolve())}  # fmt: skip
    )
    env.update(extra_env or {})
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "pretrainctl", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, server, log_path, ready_timeout_s)
        with ApiClient(url, token) as client:
            yield client
    finally:
        _stop(server)


def _environment_for_child(settings: dict[str, str]) -> dict[str, str]:
    """This environment for a server that must run on exactly `settings` (field → value): every
    other `PRETRAIN_` variable is dropped but the log level."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRETRAIN_") or k == "PRETRAIN_LOG_LEVEL"}
    env.update({f"PRETRAIN_{name.upper()}": value for name, value in settings.items()})
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, server: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the service exited with {server.returncode}:\n{_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the service was not ready within {timeout_s:.0f} s:\n{_tail(log_path)}")


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    return ""


# ---------------------------------------------------------------- live display


def follow(client: ApiClient, job_id: int, display: LiveDisplay, *, timeout_s: float, interval_s: float = 1.0) -> dict[str, Any]:
    """Show a job's steps and events until it ends; the job as it ended."""
    deadline = time.monotonic() + timeout_s
    after_event, next_step = None, {}
    total = None
    while True:
        job = client.get_job(job_id)
        total = total or (job.get("derived") or {}).get("total_train_iters")
        for event in client.events(job_id, after=after_event, limit=500)["data"]:
            after_event = event["id"]
            display.event(event)
        attempt = job["attempts"][-1]["number"] if job["attempts"] else 0
        points = client.metrics(job_id, attempt=attempt, min_step=next_step.get(attempt, 0), limit=100_000)
        by_step: dict[int, dict[str, float | None]] = {}
        for point in points:
            by_step.setdefault(point["step"], {})[point["name"]] = (
                point["value"] if point["value"] is not None else float("nan")
            )
        for step in sorted(by_step):
            if "loss" in by_step[step]:
                display.step(attempt, step, total, by_step[step])
                next_step[attempt] = step + 1
        if job["state"] in TERMINAL_STATES:
            display.done(job)
            return job
        if time.monotonic() > deadline:
            display.done(job)
            raise TimeoutError(f"job {job_id} still {job['state']} after {timeout_s:.0f} s")
        time.sleep(interval_s)


class LiveDisplay:
    """Steps as one rewritten status line on a terminal (every tenth step otherwise), events
    as permanent lines above it, verdicts and rollbacks flagged."""

    def __init__(self, stream: TextIO, *, events: bool = True, every: int = 10) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.show_events = events
        self.every = every
        self._status = ""

    def step(self, attempt: int, step: int, total: int | None, values: dict[str, float | None]) -> None:
        channels = "  ".join(
            f"{name.removeprefix('loss/')} {_fmt(v, '.3f')}" for name, v in sorted(values.items()) if name.startswith("loss/")
        )
        progress = f"{step + 1}/{total}" if total else str(step)
        bar = _bar((step + 1) / total) if total else ""
        line = f"a{attempt} step {progress:>9} {bar} loss {_fmt(values.get('loss'), '.3f')}  {channels}"
        if self.tty:
            self._status = line
            self.stream.write("\r\x1b[2K" + line)
            self.stream.flush()
        elif step % self.every == 0 or (total and step + 1 == total):
            self._print(line)

    def event(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        flagged = kind.startswith("verdict.") or kind in ("job.rolled_back", "rollback.skipped", "job.paused")
        if not self.show_events and not kind.startswith("job."):
            return
        if kind.startswith("token."):
            return
        attempt = "-" if event["attempt"] is None else f"a{event['attempt']}"
        why = f": {event['reason']}" if event["reason"] else ""
        marker = ">>" if flagged else "  "
        extra = ""
        if kind == "checkpoint.published":
            data = event["data"]
            extra = f" step {data.get('step')}" + ("" if data.get("usable", True) else " (unusable: its attempt was superseded)")
        if kind == "job.rolled_back":
            data = event["data"]
            skip = data.get("skip_range_batches") or ["?", "?"]
            extra = f" → back to step {data['checkpoint']['step']}, batches [{skip[0]}, {skip[1]}) skipped"
        self._print(f"{marker} {attempt:<3} {kind}{why}{extra}")

    def done(self, job: dict[str, Any]) -> None:
        if self.tty and self._status:
            self.stream.write("\n")
            self._status = ""
        why = f": {job['state_reason']}" if job.get("state_reason") else ""
        self.stream.write(f"   job {job['id']} {job['state']}{why}\n")
        self.stream.flush()

    def _print(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + line + "\n" + self._status)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _bar(fraction: float, width: int = 20) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec) if isinstance(value, int | float) else str(value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
