"""How the trainer says it ended: the outcome line's contract, and a refused config end to end."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from tests.trainer.test_train import tiny_config
from trainer import outcome, train
from trainer.checkpoint import CorruptCheckpointError
from trainer.config import DEFAULT_RESULT_PATH, ConfigError
from trainer.step_guard import DivergedError

KEYS = {"outcome", "rank", "step", "message", "checkpoint"}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_outcome_has_its_exit_code():
    assert {str(o): code for o, code in outcome.EXIT_CODES.items()} == {
        "completed": 0,
        "crashed": 1,
        "bad_config": 2,
        "diverged": 3,
        "corrupt_checkpoint": 4,
        "preempted": 5,
    }


def test_exceptions_map_to_their_outcomes():
    assert outcome.ending_for(ConfigError(["a: bad"]), step=None).outcome == "bad_config"
    corrupt = outcome.ending_for(CorruptCheckpointError("/ck/step-00000004", "bad"), step=None)
    assert (corrupt.outcome, corrupt.checkpoint, corrupt.step) == ("corrupt_checkpoint", "/ck/step-00000004", None)
    diverged = outcome.ending_for(DivergedError(17, "not finite"), step=19)
    assert (diverged.outcome, diverged.step, diverged.exit_code) == ("diverged", 17, 3)
    crashed = outcome.ending_for(KeyError("x"), step=5)
    assert (crashed.outcome, crashed.step, crashed.message) == ("crashed", 5, "KeyError: 'x'")


def test_a_line_is_one_json_object_with_exactly_the_contracted_keys(tmp_path):
    path = tmp_path / "result.jsonl"
    ending = outcome.Ending(outcome.PREEMPTED, step=12, message="SIGTERM", checkpoint="/ck/step-00000012")
    assert outcome.write(path, ending, rank=3)
    (record,) = lines(path)
    assert record == {
        "outcome": "preempted", "rank": 3, "step": 12, "message": "SIGTERM", "checkpoint": "/ck/step-00000012",
    }  # fmt: skip


def test_a_long_multiline_message_becomes_one_line_of_at_most_300_chars_and_the_line_stays_under_1kb():
    message = "Traceback:\n" + "\n".join(f"  frame {i} 漢字 \"quoted\"" for i in range(500))
    for checkpoint in (None, "/ck/" + "x" * 600):
        data = outcome.line(outcome.Ending(outcome.CRASHED, message=message, checkpoint=checkpoint), rank=0)
        assert len(data) < 1024 and data.endswith(b"\n") and data.count(b"\n") == 1
        record = json.loads(data)
        assert set(record) == KEYS
        assert len(record["message"]) <= 300 and "\n" not in record["message"]
        assert record["checkpoint"] == checkpoint
    absurd = outcome.line(outcome.Ending(outcome.PREEMPTED, checkpoint="/" + "y" * 5000), rank=0)
    assert len(absurd) < 1024 and json.loads(absurd)["checkpoint"] is None


def _append_many(path: str, rank: int) -> None:
    ending = outcome.Ending(outcome.CRASHED, step=rank, message="m" * 280, checkpoint="/ck/" + "c" * 300)
    for _ in range(200):
        outcome.write(path, ending, rank=rank)


def test_lines_of_ranks_sharing_the_file_stay_whole(tmp_path):
    path = tmp_path / "result.jsonl"
    # fork: the ranks write plain files, and a spawned child would import torch again.
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(str(path), rank)) for rank in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    records = lines(path)  # a torn line would not parse
    assert len(records) == 800
    assert sorted({r["rank"] for r in records}) == [0, 1, 2, 3]


def test_a_missing_directory_is_skipped_silently(tmp_path):
    ending = outcome.Ending(outcome.COMPLETED, step=1)
    assert not outcome.write(tmp_path / "absent" / "result.jsonl", ending, rank=0)
    assert not (tmp_path / "absent").exists()


def test_the_result_path_of_a_config_that_does_not_parse_is_read_as_far_as_possible(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"job": {"result_path": "/x/result.jsonl"}, "bogus": 1}))
    assert outcome.result_path_of(config) == "/x/result.jsonl"
    assert outcome.result_path_of(config, ["job.result_path=/y/r.jsonl"]) == "/y/r.jsonl"
    config.write_text("{ not json")
    assert outcome.result_path_of(config) == DEFAULT_RESULT_PATH
    assert outcome.result_path_of(config, ["job.result_path=/z/r.jsonl"]) == "/z/r.jsonl"
    assert outcome.result_path_of(tmp_path / "absent.json") == DEFAULT_RESULT_PATH


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["optimizer"].update(lrr=1e-3),  # unknown key
        lambda c: c["batch"].update(global_batch_size=7),  # fails validation: 7 % 4
        lambda c: c["faults"].update(nan_steps=[[5, 3]]),  # an empty fault range
        lambda c: c["train"].update(skip_grad_norm_min_history=500),  # more than the window
    ],
    ids=["unknown-key", "invalid-batch", "bad-fault-range", "history-over-window"],
)
def test_a_refused_config_ends_as_bad_config_with_exit_code_2(tmp_path, breakage):
    config = tiny_config(tmp_path)
    config.setdefault("faults", {})
    breakage(config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))

    assert train.main(["--config", str(path)]) == 2

    (record,) = lines(tmp_path / "result.jsonl")
    assert record["outcome"] == "bad_config" and record["step"] is None and record["rank"] == 0
    assert record["message"]


def test_a_config_that_is_not_json_ends_as_bad_config_where_its_override_says(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"job": {"result_path": "/nowhere/result.jsonl"}, ')
    override = f"job.result_path={tmp_path / 'result.jsonl'}"
    assert train.main(["--config", str(path), "--override", override]) == 2
    (record,) = lines(tmp_path / "result.jsonl")
    assert record["outcome"] == "bad_config" and "invalid JSON" in record["message"]
