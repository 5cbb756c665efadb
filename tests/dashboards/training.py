"""What a trainer reports, as the dashboards expect it: three channels, optimizer and throughput
metrics and tokens consumed per channel every step, an eval every ten steps, and on request a bad `zh` shard that diverges."""

from __future__ import annotations

import math

from service import evaluations
from service.db import repo

CHANNELS = ("code", "en", "zh")
TOKENS_PER_STEP = 2048
WEIGHTS = {"code": 0.4, "en": 0.4, "zh": 0.2}  # examples/tiny-cpu.yaml's first stage


def records(job_id: int, steps: range, *, attempt: int = 0, bad_from: int | None = None) -> list[dict]:
    """Trainer records for `steps`; from `bad_from` on, `loss/zh` runs 60% high and stays there."""
    reported = []
    for step in steps:
        base = 3.0 - 0.002 * step + 0.02 * ((step * 7919) % 13 - 6) / 6
        zh = base * 1.2 * (1.6 if bad_from is not None and step >= bad_from else 1.0)
        losses = {"code": base, "en": base, "zh": zh}
        common = {"job": str(job_id), "attempt": attempt, "step": step, "stage": "pretrain", "tokens": step * TOKENS_PER_STEP}
        metrics = {"loss": sum(losses.values()) / 3, **{f"loss/{name}": value for name, value in losses.items()}}
        metrics.update(
            {
                "lr": 1e-3,
                "grad_norm": 0.8 + 0.01 * (step % 5),
                "throughput/tokens_per_s": 2400.0 + step % 7,
                "throughput/step_time_s": TOKENS_PER_STEP / 2400.0,
                "throughput/mfu": 0.41,
                # Tokens consumed per channel so far (steps 0..step), a little off the weights.
                **{
                    f"data/tokens/{name}": float(round((step + 1) * TOKENS_PER_STEP * weight * (1 + 0.01 * (i - 1))))
                    for i, (name, weight) in enumerate(WEIGHTS.items())
                },
            }
        )
        reported.append({**common, "phase": "stable", "metrics": metrics})
        if step % 10 == 0:
            evals = {name: value - 0.1 for name, value in losses.items()}
            total = sum(evals.values()) / 3
            metrics = {"eval/loss": total, "eval/ppl": math.exp(total)}
            metrics.update({f"eval/ppl/{name}": math.exp(value) for name, value in evals.items()})
            reported.append({**common, "phase": "eval", "metrics": metrics})
    return reported


# A benchmark scored on every checkpoint (`evaluation.checkpoints.every: 1`), as the spec says it.
EVALUATION = {
    "benchmarks": [{"task": "continuation-en", "path": "benchmarks/en.jsonl"}],
    "checkpoints": {"every": 1},
}


def score_checkpoints(session, job_id: int) -> None:
    """What the controller and an evaluation workload do for each chosen checkpoint: rows, then
    the scores the runner reports (accuracy rising with the step)."""
    for row in evaluations.schedule(session, repo.get_job(session, job_id=job_id)):
        score = {"task": row.task, "acc": min(1.0, row.step / 200), "acc_stderr": 0.05,
                 "acc_norm": min(1.0, row.step / 250), "acc_norm_stderr": 0.05,
                 "nll": 3.0 - row.step / 100, "samples": 64, "num_fewshot": 0}  # fmt: skip
        evaluations.mark_running([row])
        evaluations.record_results(session, job_id=job_id, step=row.step, results=[score], actor="test")
