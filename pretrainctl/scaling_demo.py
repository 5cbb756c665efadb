"""`make scaling-demo`: a real iso-FLOP sweep of tiny Llamas on this CPU, fitted and plotted.

It starts the service on the embedded default (SQLite, in-process controller, local backend)
in a state folder of its own, as `make demo` does, and submits one job per (compute budget,
model size): every job of a budget trains `C / (6·N)` tokens, rounded to whole steps, so the
FLOPs of a budget's runs agree within 1% and the held-out loss across its sizes traces the
iso-FLOP curve Llama 3 fitted (the smallest model starved of capacity, the largest of data).
Jobs run two at a time, each trainer on one thread. When they have finished, the scaling fit
runs over the finished jobs through `pretrainctl scaling fit --json --plot`, and the folder
gets `runs.csv`, `fit.json`, `fit.png` and the service's log.

It is client code: the service is spoken to over HTTP only, the parameter counts are the
planner's (`POST /v1/plan`), and the fit is the service's.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrainctl.client import ApiClient
from pretrainctl.demo import TERMINAL_STATES, embedded_service

SEQ_LENGTH = 128
# Sequences a step: 1,024 tokens, so the shortest run has 275 steps (2,048-token steps starved
# the larger sizes of updates and moved every optimum to the smallest size: docs/scaling.md).
BATCH_SIZE = 8
TOKENS_PER_STEP = SEQ_LENGTH * BATCH_SIZE
VOCAB_SIZE = 384  # the byte tokenizer's 258 ids, padded to Megatron's multiple of 128
LEARNING_RATE = 3e-3
WARMUP_FRACTION = 0.1
EVAL_SAMPLES = 64  # held-out sequences of the final evaluation
# Runs of a budget must agree on FLOPs within this (the fit groups budgets within 1%).
FLOPS_TOLERANCE = 0.005
PARALLEL_JOBS = 2  # the two cores: one single-threaded trainer on each


@dataclass(frozen=True)
class ModelSize:
    """One tiny Llama of the family: width, depth and heads grow together."""

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    ffn_hidden_size: int

    def model_section(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "num_query_groups": self.num_attention_heads,
            "ffn_hidden_size": self.ffn_hidden_size,
            "vocab_size": VOCAB_SIZE,
            "max_position_embeddings": SEQ_LENGTH,
            "tie_embeddings": True,
        }


SIZES = (
    ModelSize("xxxs", num_layers=1, hidden_size=16, num_attention_heads=1, ffn_hidden_size=48),
    ModelSize("xxs", num_layers=1, hidden_size=24, num_attention_heads=2, ffn_hidden_size=64),
    ModelSize("xs", num_layers=1, hidden_size=32, num_attention_heads=2, ffn_hidden_size=96),
    ModelSize("s", num_layers=2, hidden_size=48, num_attention_heads=3, ffn_hidden_size=128),
    ModelSize("m", num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=176),
    ModelSize("l", num_layers=3, hidden_size=80, num_attention_heads=5, ffn_hidden_size=224),
)
# Training FLOPs (6·N·D) → the four sizes trained at it. The compute-optimal size grows with
# the budget, so each budget gets the window of sizes around its own optimum (as Chinchilla's
# sweeps did): measured on this CPU, the loss is lowest at xxs, xs, s and s in turn, with a
# size on either side that is worse (docs/scaling.md, "The sweep").
BUDGETS: dict[float, tuple[str, ...]] = {
    1.25e11: ("xxxs", "xxs", "xs", "s"),
    2.5e11: ("xxs", "xs", "s", "m"),
    5e11: ("xs", "s", "m", "l"),
    1e12: ("xs", "s", "m", "l"),
}


@dataclass(frozen=True)
class SweepRun:
    """One job of the sweep: a model size trained on its budget's share of tokens."""

    budget: float
    size: ModelSize
    params: int
    steps: int
    spec: dict[str, Any]

    @property
    def tokens(self) -> int:
        return self.steps * TOKENS_PER_STEP

    @property
    def flops(self) -> float:
        return 6.0 * self.params * self.tokens


def job_spec(name: str, size: ModelSize, steps: int) -> dict[str, Any]:
    """A one-stage job on the embedded `code` corpus (7.9M tokens: no run repeats it), one
    process, cosine decay to the end of the run, and one held-out evaluation at its last step."""
    return {
        "name": name,
        "model": size.model_section(),
        "resources": {"nodes": 1, "gpus_per_node": 1, "gpu_type": "cpu", "gpu_memory_gib": 4},
        "parallelism": {"tensor": 1, "pipeline": 1},
        "precision": "bf16",
        "recompute": "none",
        "batch": {"micro_batch_size": BATCH_SIZE, "global_batch_size": BATCH_SIZE},
        "optimizer": {"lr": LEARNING_RATE, "min_lr": LEARNING_RATE / 10},
        "schedule": {
            "kind": "cosine",
            "warmup_tokens": max(1, round(steps * WARMUP_FRACTION)) * TOKENS_PER_STEP,
        },
        "stages": [
            {
                "name": "pretrain",
                "tokens": steps * TOKENS_PER_STEP,
                "seq_length": SEQ_LENGTH,
                "data": [{"channel": "code", "path": "embedded://code", "weight": 1.0}],
            }
        ],
        "checkpoint": {"interval_steps": steps, "keep_last": 1},
        "eval": {"interval_steps": steps, "samples_per_channel": EVAL_SAMPLES},
        "watchdog": {"rollback": "alert_only"},
    }


def design(
    params_of: Callable[[dict[str, Any]], int],
    *,
    budgets: dict[float, tuple[str, ...]] = BUDGETS,
    sizes: Sequence[ModelSize] = SIZES,
) -> list[SweepRun]:
    """Every (budget, size) run, with `params_of` (the planner's count of a spec's model).

    Each run's steps are `C / (6·N)` tokens in whole steps; a run whose FLOPs would miss its
    budget by more than FLOPS_TOLERANCE is an error of the design, not something to submit.
    """
    params = {size.name: params_of(job_spec(f"probe-{size.name}", size, 100)) for size in sizes}
    by_name = {size.name: size for size in sizes}
    runs = []
    for index, (budget, names) in enumerate(budgets.items()):
        for size in (by_name[name] for name in names):
            steps = round(budget / (6 * params[size.name] * TOKENS_PER_STEP))
            name = f"scaling-c{index}-{size.name}"
            run = SweepRun(budget, size, params[size.name], steps, job_spec(name, size, steps))
            if abs(run.flops / budget - 1) > FLOPS_TOLERANCE:
                raise ValueError(
                    f"{name}: {steps} steps give {run.flops:.4g} FLOPs, more than "
                    f"{FLOPS_TOLERANCE:.1%} off the budget {budget:.4g}"
                )
            runs.append(run)
    return runs


def planner_params(client: ApiClient) -> Callable[[dict[str, Any]], int]:
    """The planner's parameter count of a spec's model, asked over HTTP."""
    return lambda spec: client.plan(json.dumps(spec), yaml=False)["params"]["total"]


# ---------------------------------------------------------------- running the sweep


@dataclass(frozen=True)
class Finished:
    run: SweepRun
    job_id: int
    state: str
    loss: float | None
    wall_s: float
    tokens_per_s: float | None = None


def run_sweep(
    client: ApiClient,
    runs: Sequence[SweepRun],
    *,
    echo: Callable[[str], None] = print,
    parallel: int = PARALLEL_JOBS,
    timeout_s: float = 3600.0,
    poll_s: float = 1.0,
) -> list[Finished]:
    """Submit the runs, at most `parallel` at a time, the longest first so the short ones fill
    in at the end; wait for each and read its final held-out loss (its one evaluation)."""
    pending = sorted(runs, key=lambda r: r.budget / _speed_guess(r), reverse=True)
    running: dict[int, tuple[SweepRun, float]] = {}
    finished: list[Finished] = []
    deadline = time.monotonic() + timeout_s
    while pending or running:
        while pending and len(running) < parallel:
            run = pending.pop(0)
            job = client.submit(json.dumps(run.spec), yaml=False)
            running[job["id"]] = (run, time.monotonic())
        for job_id, (run, started) in list(running.items()):
            job = client.get_job(job_id)
            if job["state"] not in TERMINAL_STATES:
                continue
            del running[job_id]
            done = Finished(
                run,
                job_id,
                job["state"],
                final_eval_loss(client, job_id),
                time.monotonic() - started,
                median_tokens_per_s(client, job_id),
            )
            finished.append(done)
            echo(_run_line(done, len(finished), len(runs)))
        if time.monotonic() > deadline:
            raise TimeoutError(f"the sweep did not finish within {timeout_s:.0f} s")
        time.sleep(poll_s)
    return finished


def _speed_guess(run: SweepRun) -> float:
    """FLOPs a second grow with the model on a CPU (small matrices waste it): a rough order."""
    return math.sqrt(run.params)


def final_eval_loss(client: ApiClient, job_id: int) -> float | None:
    points = client.metrics(job_id, name=["eval/loss"])
    return points[-1]["value"] if points else None


def median_tokens_per_s(client: ApiClient, job_id: int) -> float | None:
    """The trainer's own tokens/s over its steps, the median (the first steps warm up)."""
    rates = sorted(
        p["value"]
        for p in client.metrics(job_id, name=["throughput/tokens_per_s"], limit=100_000)
        if p["value"] is not None
    )
    return rates[len(rates) // 2] if rates else None


def _run_line(done: Finished, count: int, total: int) -> str:
    run = done.run
    loss = "n/a" if done.loss is None else f"{done.loss:.4f}"
    return (
        f"   [{count:>2}/{total}] job {done.job_id} {run.spec['name']:<16} {run.params:>8,} params "
        f"{run.tokens:>10,} tokens {run.flops:.3g} FLOPs  loss {loss}  {done.state} in {done.wall_s:.0f} s"
        + ("" if done.tokens_per_s is None else f" ({done.tokens_per_s:,.0f} tokens/s)")
    )


def write_runs_csv(path: Path, finished: Sequence[Finished]) -> None:
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["params", "tokens", "flops", "loss"])
        for done in sorted(finished, key=lambda d: (d.run.budget, d.run.params)):
            writer.writerow(
                [done.run.params, done.run.tokens, f"{done.run.flops:.6g}", f"{done.loss:.6f}"]
            )


# ---------------------------------------------------------------- the fit


class FitFailed(RuntimeError):
    """`pretrainctl scaling fit` refused the runs or failed; its own words are the message."""


def fit_over_jobs(client: ApiClient, plot_path: Path) -> dict[str, Any]:
    """`pretrainctl scaling fit --json --plot` over the service's finished jobs, as a user runs it."""
    env = {
        **os.environ,
        "PRETRAIN_API_URL": client.base_url,
        "PRETRAIN_API_TOKEN": client.token or "",
    }
    fit = ["scaling", "fit", "--json", "--plot", str(plot_path)]
    command = [sys.executable, "-m", "pretrainctl", *fit]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = done.stderr.strip() or done.stdout.strip()
        raise FitFailed(f"pretrainctl scaling fit exited {done.returncode}:\n{said}")
    return json.loads(done.stdout)


def summary_lines(fit: dict[str, Any], finished: Sequence[Finished], wall_s: float) -> list[str]:
    law = fit["optimal_tokens"]
    ci = law.get("ci95") or {}
    lines = [f"== {len(fit['groups'])} iso-FLOP groups:"]
    for group in fit["groups"]:
        lines.append(
            f"   C = {group['flops']:.3g} FLOPs: {group['runs']} runs, optimum N* = "
            f"{group['optimal_tokens']:,.0f} tokens ({group['optimal_params']:,.0f} params), "
            f"loss {group['min_loss']:.4f}"
        )
    lines.append(
        f"== N*(C) = A·C^alpha: alpha = {law['alpha']:.3f} {_interval(ci.get('alpha'))}, "
        f"A = {law['A']:.4g} {_interval(ci.get('A'), '.3g')}"
    )
    lines += [f"   warning: {warning}" for warning in fit.get("warnings", [])]
    failed = [d for d in finished if d.state != "succeeded"]
    if failed:
        lines.append(
            f"!! {len(failed)} run(s) did not succeed: "
            + ", ".join(d.run.spec["name"] for d in failed)
        )
    lines.append(f"== {len(finished)} runs, fitted and plotted in {wall_s / 60:.1f} min")
    return lines


def _interval(bounds: Sequence[float] | None, spec: str = ".3f") -> str:
    return (
        "(95% CI n/a)"
        if not bounds
        else f"(95% CI {format(bounds[0], spec)} to {format(bounds[1], spec)})"
    )


# ---------------------------------------------------------------- the whole demo


def run(*, out_dir: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The sweep, its fit and its plot, into `out_dir`; the fit as `--json` printed it."""
    started = time.monotonic()
    out_dir = Path(out_dir)
    state_dir = out_dir / "state"
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    # One thread per trainer: two of them share the two cores without oversubscribing.
    with embedded_service(
        state_dir, out_dir / "serve.log", extra_env={"OMP_NUM_THREADS": "1"}
    ) as client:
        echo(f"== service up at {client.base_url} (embedded SQLite in {state_dir})")
        runs = design(planner_params(client))
        echo(
            f"== {len(runs)} jobs, {PARALLEL_JOBS} at a time: "
            + "; ".join(
                f"{budget:.3g} FLOPs × "
                + ", ".join(f"{r.size.name} {r.params:,}" for r in runs if r.budget == budget)
                for budget in BUDGETS
            )
            + " params"
        )
        finished = run_sweep(client, runs, echo=echo)
        write_runs_csv(out_dir / "runs.csv", [d for d in finished if d.loss is not None])
        fit = fit_over_jobs(client, out_dir / "fit.png")
    (out_dir / "fit.json").write_text(json.dumps(fit, indent=2) + "\n")
    for line in summary_lines(fit, finished, time.monotonic() - started):
        echo(line)
    echo(f"== {out_dir / 'runs.csv'}, {out_dir / 'fit.json'}, {out_dir / 'fit.png'}")
    return fit


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pretrainctl.scaling_demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", type=Path, default=Path("scaling-demo"), help="folder for the results"
    )
    args = parser.parse_args(argv)
    try:
        run(out_dir=args.out)
    except FitFailed as exc:
        print(f"!! {exc}\n!! the runs are in {args.out / 'runs.csv'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
