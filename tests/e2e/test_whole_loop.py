"""The whole loop in cluster mode: submit → train → watch → roll back → resume → finish.

The API, the controller, the Celery worker and the watchdog run as separate `pretrainctl`
processes on real Postgres and Redis, with the kubernetes backend talking over HTTP to the
Kubernetes emulator. The emulator's pods are played by local trainer processes: the kubelet
stand-in in `kubelet.py` runs each PyTorchJob's own command (`torchrun` over the real
Megatron-core trainer, on this CPU) with the pod's environment and config, and moves the
PyTorchJob's conditions as the Training Operator does. Nothing else is a stand-in.

The jobs follow `examples/demo.yaml` (the tiny Llama on the three embedded channels, `en`
fed random tokens for a stretch), shrunk so that the two runs take a few minutes on two
cores: one trainer process, 8 sequences a step, one stage.

The garbage run here is the hard one: its watchdog and controller are killed before the garbage
and the whole episode arrives while they are down. With the watchdog up, garbage is rolled back
in cluster mode by `tests/chaos` (its seed) and on the embedded default by
`tests/pretrainctl/test_demo.py`; a fourth run here cost a minute of the suite's two cores.
"""

from __future__ import annotations

import math
import signal
import statistics
from typing import Any

import pytest
import yaml

from pretrainctl.client import ApiClient
from service.controller.manifests import workload_name
from tests.e2e.conftest import Deployment
from tests.e2e.jobs import SEQUENCES_PER_STEP, demo_spec, submit
from tests.e2e.stack import wait_until

pytestmark = pytest.mark.slow

TOKENS_PER_STEP = SEQUENCES_PER_STEP * 128
GARBAGE = (30, 40)  # steps (and batches) of `en` that are random tokens
CHECKPOINT_EVERY = 10
RUN_TIMEOUT_S = 300
FINISHED = {"succeeded", "failed", "cancelled", "paused"}


# --- reading the service's answers --------------------------------------------------------------


def events(api: ApiClient, job_id: int) -> list[dict[str, Any]]:
    rows, after = [], None
    while True:
        page = api.events(job_id, after=after)
        rows += page["data"]
        if page["next_cursor"] is None:
            return rows
        after = page["next_cursor"]


def kinds(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [row for row in rows if row["kind"] == kind]


def series(api: ApiClient, job_id: int, name: str, attempt: int) -> dict[int, float | None]:
    """One metric of one attempt by step (train phase only); None for a non-finite value."""
    points = api.metrics(job_id, name=[name], attempt=attempt)
    return {p["step"]: p["value"] for p in points if p["phase"] != "eval"}


def newest_step(api: ApiClient, job_id: int, attempt: int) -> int | None:
    points = api.metrics(job_id, name=["loss"], attempt=attempt)
    return max((p["step"] for p in points), default=None)


def wait_for_state(
    deployment: Deployment, job_id: int, state: str, timeout: float = RUN_TIMEOUT_S
) -> dict[str, Any]:
    """The job once it is in `state`; fails at once if it ends in another."""

    def probe() -> dict[str, Any] | None:
        if exited := deployment.stack.exited():
            raise AssertionError(f"service processes exited meanwhile: {exited}")
        job = deployment.api.get_job(job_id)
        if job["state"] != state and job["state"] in FINISHED:
            raise AssertionError(
                f"job {job_id} ended {job['state']} ({job['state_reason']}), not {state}"
            )
        return job if job["state"] == state else None

    return wait_until(
        probe,
        timeout=timeout,
        what=f"job {job_id} to be {state}",
        diagnostics=deployment.diagnostics,
    )


def wait_for_step(deployment: Deployment, job_id: int, attempt: int, step: int) -> int:
    return wait_until(
        lambda: (s := newest_step(deployment.api, job_id, attempt)) is not None and s >= step and s,
        timeout=RUN_TIMEOUT_S,
        what=f"job {job_id} attempt {attempt} to report step {step}",
        diagnostics=deployment.diagnostics,
    )


def name_of(job: dict[str, Any], attempt: int) -> str:
    return workload_name(job["name"], job["id"], attempt)


def launched(deployment: Deployment, job: dict[str, Any]) -> list[str]:
    """The job's PyTorchJobs the kubelet ran, one entry per launch."""
    ours = {name_of(job, attempt) for attempt in range(len(job["attempts"]))}
    return [name for name in deployment.kubelet.launched() if name in ours]


def clean_level(api: ApiClient, job_id: int, name: str) -> float:
    """A series' level just before the garbage: the median of attempt 0's five steps before it."""
    values = series(api, job_id, name, 0)
    return statistics.median(
        values[step] for step in range(GARBAGE[0] - 5, GARBAGE[0]) if step in values
    )


def assert_caught_and_rolled_back_once(deployment: Deployment, job: dict[str, Any]) -> None:
    """The garbage run's verdict: caught, one rollback, resumed past it, finished.

    The rollback goes to the newest checkpoint a margin before the onset of the verdict that
    triggered it (the first divergence: on `en` or on the total loss, whichever the detector
    confirms first; the two onsets may differ by a step, which the margin absorbs). While the
    watchdog was down, retention kept only what an episode open at its mark would need, and
    `keep_last` pruned the rest as the trainer ran on (retention stays bounded during an
    outage): then the newest one a margin before the onset that was not pruned.
    """
    api, job_id = deployment.api, job["id"]
    log = events(api, job_id)
    spec = job["spec"]["watchdog"]

    divergences = [e for e in kinds(log, "verdict.divergence") if e["data"]["channel"] == "en"]
    assert len(divergences) == 1, f"one divergence verdict on en, got {divergences}"
    assert divergences[0]["attempt"] == 0 and GARBAGE[0] <= divergences[0]["data"]["onset"] < GARBAGE[1]
    rollbacks = kinds(log, "job.rolled_back")
    assert [(e["actor"], e["attempt"]) for e in rollbacks] == [("watchdog", 1)]
    onset = rollbacks[0]["data"]["onset_step"]  # the triggering verdict's
    assert rollbacks[0]["data"]["evidence"]["onset"] == onset
    assert GARBAGE[0] - spec["rollback_margin_steps"] < onset < GARBAGE[1], "the onset is far from the garbage"

    attempts = api.attempts(job_id)
    assert [(a["number"], a["state"], a["reason"]) for a in attempts] == [
        (0, "superseded", "launch"),
        (1, "succeeded", "rollback"),
    ]
    checkpoints = {c["id"]: c for c in api.checkpoints(job_id)}
    resumed = checkpoints[attempts[1]["resume_from_checkpoint_id"]]
    pruned = [c for c in checkpoints.values() if (c["unusable_reason"] or "").startswith("pruned: keep_last")]
    before = [
        c["step"]
        for c in checkpoints.values()
        if c["attempt"] == 0
        and c["step"] <= onset - spec["rollback_margin_steps"]
        and c not in pruned
    ]
    assert resumed["attempt"] == 0 and resumed["step"] == max(before) < GARBAGE[0]
    # What attempt 0 saved past that point (its last save on SIGTERM included) is never offered again.
    trained_on_garbage = [
        c for c in checkpoints.values() if c["attempt"] == 0 and c["step"] > resumed["step"]
    ]
    assert trained_on_garbage and not [c for c in trained_on_garbage if c["usable"]]
    (skip,) = attempts[1]["skip_ranges"]
    assert skip == [resumed["step"], onset + spec["skip_steps_after"]]
    assert skip[0] <= GARBAGE[0] and skip[1] >= GARBAGE[1], (
        f"{skip} does not cover the garbage {GARBAGE}"
    )

    # Attempt 1 starts at the checkpoint's step and never reads a garbage batch.
    batches = series(api, job_id, "data/batch_index", 1)
    assert min(batches) == resumed["step"]
    assert not [b for b in batches.values() if GARBAGE[0] <= b < GARBAGE[1]]
    assert batches[resumed["step"]] == skip[1]

    # Finished, finite, and back at (below) the level the run had before the garbage.
    steps = job["spec"]["stages"][0]["tokens"] // TOKENS_PER_STEP
    for name in ("loss", "loss/en"):
        values = series(api, job_id, name, 1)
        assert max(values) == steps - 1
        final = statistics.median(values[s] for s in range(steps - 5, steps) if s in values)
        assert all(v is not None and math.isfinite(v) for v in values.values())
        assert final < clean_level(api, job_id, name) * 1.05, f"{name} ends at {final}"
    assert launched(deployment, job) == [name_of(job, 0), name_of(job, 1)]
    assert name_of(job, 0) not in deployment.cluster.names("pytorchjobs")
    assert not deployment.kubelet.errors


# --- the tests ---------------------------------------------------------------------------------


def test_on_call_rollback_through_the_api_then_a_cancel_stops_the_workload(deployment: Deployment):
    """An on-call engineer rolls the run back to its first checkpoint, then cancels the resumed
    attempt: its PyTorchJob and what it owned go, and its trainer saves where it stopped."""
    api = deployment.api
    oncall = deployment.stack.pretrainctl(
        "tokens", "create", "--role", "oncall", "--name", "carol", "--local", "--json"
    )
    job = submit(api, demo_spec("oncall", steps=400))  # still running when it is cancelled
    first = wait_until(
        lambda: next(
            (c for c in api.checkpoints(job["id"]) if c["step"] == CHECKPOINT_EVERY), None
        ),
        timeout=RUN_TIMEOUT_S,
        what="the first checkpoint",
        diagnostics=deployment.diagnostics,
    )
    assert api.get_job(job["id"])["state"] == "running"

    # 1. The rollback.
    reason = "en looks wrong after the first checkpoint"
    with ApiClient(deployment.url, yaml.safe_load(oncall.stdout)["token"]) as carol:
        answer = carol.rollback(job["id"], reason=reason, to_step=first["step"])

    assert (
        answer["attempt"] == 1
        and answer["checkpoint"]["id"] == first["id"]
        and not answer["paused"]
    )
    resumed = wait_until(
        lambda: next(
            (c for c in api.checkpoints(job["id"]) if c["attempt"] == 1), None
        ),
        timeout=RUN_TIMEOUT_S,
        what="a checkpoint of the resumed attempt",
        diagnostics=deployment.diagnostics,
    )
    assert resumed["step"] == first["step"] + CHECKPOINT_EVERY
    name = name_of(job, 1)
    pod = deployment.kubelet.pod(name)
    assert pod is not None and pod.alive

    # 2. The cancel.
    api.cancel(job["id"], reason="wrong mixture")

    done = wait_for_state(deployment, job["id"], "cancelled", timeout=60)
    assert name not in deployment.cluster.names("pytorchjobs")
    assert f"{name}-config" not in deployment.cluster.names("configmaps")
    assert f"{name}-token" not in deployment.cluster.names("secrets")
    wait_until(
        lambda: not pod.alive,
        timeout=60,
        what=f"the trainer of {name} to exit",
        diagnostics=deployment.diagnostics,
    )
    assert pod.terminating_since is not None, "the kubelet stopped it because its PyTorchJob went"
    # On SIGTERM the trainer finished its step and saved there before it exited.
    last_step = newest_step(api, job["id"], 1)
    assert max(c["step"] for c in api.checkpoints(job["id"])) == last_step + 1

    attempts = api.attempts(job["id"])
    assert [(a["number"], a["state"], a["reason"]) for a in attempts] == [
        (0, "superseded", "launch"),
        (1, "cancelled", "oncall"),
    ]
    assert attempts[1]["resume_from_checkpoint_id"] == first["id"]
    assert not [
        c
        for c in api.checkpoints(job["id"])
        if c["attempt"] == 0 and c["step"] > first["step"] and c["usable"]
    ]
    assert attempts[1]["skip_ranges"] == [answer["skip_range"]]
    batches = series(api, job["id"], "data/batch_index", 1)
    assert min(batches) == first["step"] and batches[first["step"]] == answer["skip_range"][1]
    log = events(api, job["id"])
    assert [(e["actor"], e["reason"], e["attempt"]) for e in kinds(log, "job.rolled_back")] == [
        ("carol", reason, 1)
    ]
    assert [e["actor"] for e in kinds(log, "attempt.opened")] == ["carol"]
    assert [(e["actor"], e["reason"]) for e in kinds(log, "job.cancel_requested")] == [
        ("admin", "wrong mixture")
    ]
    assert [e["attempt"] for e in kinds(log, "workload.deleted")] == [0, 1]
    assert kinds(log, "job.cancelled")
    assert launched(deployment, done) == [name_of(done, 0), name] and not deployment.kubelet.errors


def test_controller_and_watchdog_restarted_mid_run_lose_nothing(deployment: Deployment):
    api, stack = deployment.api, deployment.stack
    job = submit(api, demo_spec("restart", steps=64, garbage=GARBAGE))
    # Killed while the run is healthy, well before the garbage: a fixed point in the run, not
    # a race with the verdict. The watchdog has saved a history by then (its state is in the
    # database with every batch), and the whole episode arrives while it is down.
    wait_for_step(deployment, job["id"], 0, GARBAGE[0] - 10)
    stack.kill("watchdog", signal.SIGKILL)
    stack.kill("controller", signal.SIGKILL)
    window = job["spec"]["watchdog"]["recover_window_steps"]
    wait_for_step(deployment, job["id"], 0, GARBAGE[0] + window + 3)
    log = events(api, job["id"])
    assert not [e for e in log if e["kind"].startswith("verdict.") or e["kind"] == "job.rolled_back"], (
        "nobody was watching"
    )
    stack.start("watchdog")
    # The controller comes back once the watchdog has caught up and acted: started together, a
    # controller that restarts faster (a loaded machine) may find the trainer done and finish
    # the job before the late verdict, and a finished job is rolled back by nobody.
    wait_until(
        lambda: kinds(events(api, job["id"]), "job.rolled_back"),
        timeout=180,
        what="the restarted watchdog to catch up and roll back",
        diagnostics=lambda: "\n".join(
            f"{e['kind']} a{e['attempt']}: {e['reason']}"
            for e in events(api, job["id"])
            if e["kind"].startswith(("verdict.", "rollback.", "job.", "checkpoint."))
        ),
    )
    stack.start("controller")

    done = wait_for_state(deployment, job["id"], "succeeded")

    assert_caught_and_rolled_back_once(deployment, done)
    log = events(api, job["id"])
    spikes = [e for e in kinds(log, "verdict.spike") if e["data"]["channel"] == "en"]
    assert len(spikes) == 1, "a redelivered record is not judged twice"
    assert [e["attempt"] for e in kinds(log, "workload.created")] == [0, 1]
    assert [e["attempt"] for e in kinds(log, "attempt.opened")] == [1]
