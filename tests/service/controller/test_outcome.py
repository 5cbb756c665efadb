"""How an attempt ended: the trainer's outcome lines, the most telling of several, and torchrun's
summary read for its root cause (a real torchrun run: the workers it stopped are not the cause)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from service.controller.backends.kubernetes import classify_failure
from service.controller.backends.local import _classify_exit
from service.controller.outcome import (
    Outcome,
    most_telling,
    parse_outcomes,
    read_outcome,
    torchrun_root_cause,
    without_secondary_failures,
)

# torchrun's summary when rank 0 fails and torchrun stops rank 1 (as the run below prints it).
TORCHRUN_SUMMARY = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
trainer.train FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-06_20:05:09
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -15 (pid: 18850)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 18850
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-06_20:05:09
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 18849)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


def line(outcome: str, rank: int = 0, **more) -> str:
    return json.dumps({"outcome": outcome, "rank": rank, "step": more.get("step"), "message": "m", "checkpoint": more.get("checkpoint")})


def test_the_most_telling_outcome_speaks_for_the_attempt():
    order = ["completed", "preempted", "crashed", "diverged", "bad_config", "corrupt_checkpoint"]
    for better, worse in zip(order[1:], order, strict=False):
        assert read_outcome(line(worse, rank=0) + "\n" + line(better, rank=5)).outcome == Outcome(better)
    tie = read_outcome("\n".join([line("crashed", rank=3, step=9), line("crashed", rank=1, step=7)]))
    assert (tie.rank, tie.step) == (1, 7)


def test_outcome_lines_are_found_in_a_log_tail_and_anything_else_is_skipped():
    text = "\n".join(
        [
            "Traceback (most recent call last):",
            '{"not": "an outcome"}',
            '{"outcome": "exploded", "rank": 0}',
            '{"outcome": "diverged", "rank": 1, "step": "not a number"',  # torn
            line("diverged", rank=2, step=205),
            "RuntimeError: loss is NaN",
        ]
    )
    (found,) = parse_outcomes(text)
    assert (found.outcome, found.rank, found.step) == (Outcome.DIVERGED, 2, 205)
    assert read_outcome("", "no lines at all\n") is None
    assert most_telling([]) is None


@pytest.fixture(scope="module")
def torchrun_log(tmp_path_factory) -> str:
    """torchrun's own output when rank 0 fails (exit 4) and it stops rank 1 (SIGTERM)."""
    folder = tmp_path_factory.mktemp("torchrun")
    script = folder / "worker.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            if os.environ["RANK"] == "0":
                time.sleep(0.5)
                sys.exit(4)
            time.sleep(120)
            """
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=folder,
    )
    assert run.returncode == 1
    return run.stdout + run.stderr


def test_torchruns_summary_names_the_root_cause_not_the_workers_it_stopped(torchrun_log):
    assert "exitcode  : -15" in torchrun_log  # rank 1, stopped by torchrun
    assert torchrun_root_cause(torchrun_log) == 4
    assert "-15" not in without_secondary_failures(torchrun_log)


def test_a_local_trainer_whose_peer_failed_is_not_taken_for_a_sigterm(torchrun_log):
    reason, retryable = _classify_exit(1, torchrun_log)
    assert "SIGTERM" not in reason and retryable is False


def test_a_pod_whose_log_holds_torchruns_summary_is_not_taken_for_a_sigterm(torchrun_log):
    pod = {
        "metadata": {"name": "job-1-a0-master-0"},
        "status": {"containerStatuses": [{"name": "pytorch", "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": torchrun_log[-4000:]}}}]},
    }
    verdict = classify_failure({"type": "Failed", "message": "1 Master replica(s) failed."}, [pod])
    assert verdict.retryable is False and "exit code 1" in verdict.reason


def test_a_root_cause_killed_by_a_signal_is_still_one():
    killed = TORCHRUN_SUMMARY.replace("exitcode  : 1 (pid: 18849)", "exitcode  : -9 (pid: 18849)")
    assert torchrun_root_cause(killed) == -9
    reason, retryable = _classify_exit(1, killed)
    assert "SIGKILL" in reason and retryable is True


# --- preemption and NCCL timeouts in what the pods left ---------------------------------------


def test_an_evicted_pod_is_a_preemption_that_no_retry_budget_counts():
    from service.controller.backends.kubernetes.failures import classify_failure

    for pod_status in (
        {"reason": "Evicted", "message": "The node was low on resource: memory."},
        {"reason": "Preempted"},
        {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}]},
    ):
        verdict = classify_failure({"reason": "Failed"}, [{"metadata": {"name": "p"}, "status": pod_status}])
        assert (verdict.retryable, verdict.preempted) == (True, True), pod_status
    crashed = {"containerStatuses": [{"state": {"terminated": {"exitCode": 1}}}]}
    verdict = classify_failure({"reason": "Failed"}, [{"metadata": {"name": "p"}, "status": crashed}])
    assert verdict.preempted is False


@pytest.mark.parametrize(
    "message",
    [
        "[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, OpType=ALLREDUCE) ran for 600000 milliseconds",
        "NCCL timeout in all_reduce",
        "ProcessGroupNCCL's watchdog got stuck for 480 seconds without making progress; Timeout",
    ],
)
def test_a_termination_message_naming_an_nccl_timeout_is_recognised(message):
    from service.controller.backends.kubernetes.failures import classify_failure, pod_state

    pod = {
        "metadata": {"name": "trainer-worker-1"},
        "status": {"phase": "Failed", "containerStatuses": [
            {"name": "pytorch", "state": {"terminated": {"exitCode": 134, "reason": "Error", "message": message}}}
        ]},
    }  # fmt: skip
    verdict = classify_failure({"reason": "Failed"}, [pod])
    assert (verdict.nccl_timeout, verdict.retryable) == (True, True)
    assert verdict.reason.startswith("NCCL collective timed out")
    state = pod_state(pod)
    assert state["nccl_timeout"] is True and state["name"] == "trainer-worker-1"
    assert state["containers"] == [
        {"container": "pytorch", "state": "terminated", "reason": "Error", "exitCode": 134, "message": message}
    ]
    assert pod_state({"metadata": {"name": "q"}, "status": {"phase": "Running"}})["nccl_timeout"] is False
