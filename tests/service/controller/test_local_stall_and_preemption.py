"""Stalls and preemption end to end on the embedded default: `pretrainctl serve` (API, controller,
local backend) running the real trainer on CPU, tiny config, one job (three trainer start-ups
are most of the cost, so one run tells both stories):

1. its first attempt hangs (faults.hang_at_step) right after a checkpoint: it is found stalled
   once no step came for its stall timeout, with its process's state in the event, and a new
   attempt (reason stall) resumes from that checkpoint, nothing skipped;
2. that attempt is sent SIGTERM (what a preemption or a drain sends a pod): it saves a checkpoint
   at the step it reached and exits preempted, and the job goes on from that very step, nothing
   skipped, no attempt counted as failed, to the end.
"""

from __future__ import annotations

import os
import signal

from tests.service.controller.test_local_backend import (
    _trainer_pid,
    embedded,  # noqa: F401 - the fixture
    kinds,
    small_job,
    wait_for,
)


def _loss_steps(client, job_id: int, attempt: int) -> list[int]:
    points = client.get(f"/v1/jobs/{job_id}/metrics", params={"name": "loss", "attempt": attempt}).json()
    return [p["step"] for p in points]


def _events(client, job_id: int, kind: str) -> list[dict]:
    page = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 500}).json()["data"]
    return [e for e in page if e["kind"] == kind]


def test_a_hung_trainer_is_restarted_and_a_sigtermed_one_resumes_from_its_save_with_nothing_skipped(embedded):  # noqa: F811
    client, root = embedded
    # Enough steps (a tenth of a second or more each on CPU) that the second attempt still runs
    # once its first metrics arrive (they are flushed every 2 s).
    steps, hang_at, every = 40, 6, 3
    spec = small_job("local-stall-preempt", steps=steps, checkpoint_every=every)
    spec["faults"] = {"hang_at_step": hang_at}  # right after the checkpoint at step 6
    spec.setdefault("watchdog", {})["stall_timeout_s"] = 6.0
    job_id = client.post("/v1/jobs", json=spec).json()["id"]

    # 1. The hang: found stalled, restarted from step 6.
    wait_for(client, job_id, lambda j: len(j["attempts"]) == 2, "restarted after the stall")
    (stalled,) = _events(client, job_id, "job.stalled")
    data = stalled["data"]
    assert stalled["attempt"] == 0 and data["last_step"] == hang_at - 1
    assert data["timeout_s"] == 6.0 and data["stalled_s"] >= 6.0
    assert data["nccl_timeout"] is False
    # The hung trainer's process, as the local backend sees it: alive, asleep in its hang.
    assert any(
        pod["state"].startswith(("S", "R")) and "trainer.train" in pod["command"]
        for pod in data["pods"]
    ), data["pods"]
    first, second = client.get(f"/v1/jobs/{job_id}").json()["attempts"]
    assert (first["state"], second["reason"], second["skip_ranges"]) == ("superseded", "stall", [])
    assert _checkpoint(client, job_id, second["resume_from_checkpoint_id"]) == (0, hang_at)

    # 2. The preemption: SIGTERM once the restarted attempt trains.
    wait_for(client, job_id, lambda j: _loss_steps(client, job_id, 1), "trained a step in attempt 1")
    os.kill(_trainer_pid(root, job_id, 1), signal.SIGTERM)

    done = wait_for(client, job_id, lambda j: j["state"] == "succeeded", "succeeded after the SIGTERM")
    _, second, third = done["attempts"]
    assert (second["state"], second["outcome"]) == ("superseded", "preempted")
    # The trainer knew its grace period (the planner's floor for so small a checkpoint).
    assert "of a 60s grace period" in second["state_reason"]
    assert (third["reason"], third["state"], third["skip_ranges"]) == ("preempted", "succeeded", [])
    attempt, saved_at = _checkpoint(client, job_id, third["resume_from_checkpoint_id"])
    assert attempt == 1 and hang_at < saved_at < steps
    # Attempt 1 trained from 6 up to its save; attempt 2 picked up at that very step.
    assert _loss_steps(client, job_id, 1) == list(range(hang_at, saved_at))
    assert _loss_steps(client, job_id, 2) == list(range(saved_at, steps))
    assert "attempt.failed" not in kinds(client, job_id)


def _checkpoint(client, job_id: int, checkpoint_id: int) -> tuple[int, int]:
    stored = {c["id"]: c for c in client.get(f"/v1/jobs/{job_id}/checkpoints").json()}[checkpoint_id]
    return stored["attempt"], stored["step"]
