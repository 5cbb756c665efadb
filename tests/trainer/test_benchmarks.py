"""Benchmark evaluation of a checkpoint: our stored numbers are what lm-eval's own CLI prints.

The acceptance test trains a tiny model with the real trainer, makes a multiple-choice set from
the embedded corpora, scores the checkpoint with `python -m trainer.benchmarks`, then runs
`python -m lm_eval` on the export and task YAML the runner kept, and compares. Both processes
run offline with their caches in the test's directory.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.test_train import run_trainer, tiny_config
from trainer.benchmarks import (
    OFFLINE_ENV,
    Benchmark,
    BenchmarkError,
    check_items,
    correct_option_nll,
    load_benchmarks,
    local_items,
    main,
    task_config,
)
from trainer.mc_data import write_items

RUN_TIMEOUT_S = 300
TASK = "en_next_passage"
BUCKET = "benchmarks"


def lm_eval_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, **OFFLINE_ENV, "HF_HOME": str(tmp / "hf-home"), "OMP_NUM_THREADS": "1"}


def run(command: list[str], tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        command,
        cwd=tmp,
        env=lm_eval_env(tmp),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def table_value(table: str, task: str, metric: str) -> float:
    """The Value column of `metric`'s row in lm-eval's printed table (a task's later rows leave
    the task column empty)."""
    current = None
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 7 or (cells[0] and set(cells[0]) <= {"-", ":"}):
            continue
        current = cells[0] or current
        if current == task and cells[4] == metric:
            return float(cells[6])
    raise AssertionError(f"no {task}/{metric} row in:\n{table}")


# --------------------------------------------------------------------------- acceptance


@pytest.mark.slow
def test_stored_accuracy_equals_what_lm_evals_own_cli_prints_for_the_same_checkpoint(tmp_path):
    # A 2-step model on `en` alone; positions up to 256 so that no prompt is cut.
    config = tiny_config(tmp_path / "train", steps=2, checkpoint={"interval_steps": 100})
    config["model"]["max_position_embeddings"] = 256
    config["stages"][0].update(
        seq_length=32, data=[{"channel": "en", "path": "embedded://en", "weight": 1.0}]
    )
    run_trainer(tmp_path / "train", config, env={"OMP_NUM_THREADS": "1"})
    [checkpoint] = sorted((tmp_path / "train" / "ckpt").glob("step-*"))
    items = write_items(
        "en", tmp_path / "en.jsonl", items=8, seed=5, options=4, question_chars=60, option_chars=16
    )
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps([{"task": TASK, "path": str(items), "num_fewshot": 1, "limit": 6}]))
    work, out = tmp_path / "work", tmp_path / "result.json"
    runner = [
        sys.executable,
        "-m",
        "trainer.benchmarks",
        "--config",
        str(tmp_path / "train" / "config.json"),
    ]
    runner += ["--benchmarks", str(bench), "--out", str(out), "--work-dir", str(work)]

    done = run([*runner, "--checkpoint", str(checkpoint), "--step", "2"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == printed
    [ours] = printed["results"]
    assert printed["step"] == 2
    assert ours["task"] == TASK and ours["samples"] == 6 and ours["num_fewshot"] == 1
    assert ours["nll"] > 0 and ours["acc_stderr"] is not None

    cli = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={work / 'hf'}",
    ]
    cli += ["--tasks", TASK, "--include_path", str(work / "tasks"), "--device", "cpu"]
    cli += ["--limit", "6", "--output_path", str(tmp_path / "cli"), "--log_samples"]
    done = run(cli, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [results_file] = (tmp_path / "cli").rglob("results_*.json")
    theirs = json.loads(results_file.read_text())["results"][TASK]
    assert (ours["acc"], ours["acc_norm"]) == (theirs["acc,none"], theirs["acc_norm,none"])
    assert (ours["acc_stderr"], ours["acc_norm_stderr"]) == (
        theirs["acc_stderr,none"],
        theirs["acc_norm_stderr,none"],
    )
    assert table_value(done.stdout, TASK, "acc") == pytest.approx(ours["acc"], abs=5e-5)
    assert table_value(done.stdout, TASK, "acc_norm") == pytest.approx(ours["acc_norm"], abs=5e-5)
    [samples_file] = (tmp_path / "cli").rglob(f"samples_{TASK}_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert ours["nll"] == pytest.approx(correct_option_nll(samples), rel=1e-6)

    # A checkpoint with a truncated file: the export refuses it, and the runner says so in a line.
    broken = tmp_path / "broken" / checkpoint.name
    shutil.copytree(checkpoint, broken)
    victim = max((f for f in broken.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-8])
    done = run([*runner, "--checkpoint", str(broken), "--step", "2"], tmp_path)
    assert done.returncode != 0 and done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"benchmarks: export of {broken} failed:") and "truncated" in last


# --------------------------------------------------------------------------- inputs


def write_bench(tmp: Path, entries: list[dict]) -> Path:
    path = tmp / "bench.json"
    path.write_text(json.dumps(entries))
    return path


def good_items(tmp: Path) -> Path:
    return write_items("en", tmp / "items.jsonl", items=2, seed=0, options=2)


def test_a_missing_checkpoint_exits_non_zero_with_one_line(tmp_path, capsys) -> None:
    bench = write_bench(tmp_path, [{"task": "t", "path": str(good_items(tmp_path))}])
    missing = tmp_path / "step-00000009"
    code = main(
        ["--config", str(tmp_path / "config.json"), "--checkpoint", str(missing), "--step", "9",
         "--benchmarks", str(bench), "--out", str(tmp_path / "r.json")]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == f"benchmarks: checkpoint {missing}: no such directory\n"
    assert not (tmp_path / "r.json").exists()


def test_a_malformed_jsonl_line_exits_non_zero_naming_file_and_line(tmp_path, capsys) -> None:
    items = good_items(tmp_path)
    with items.open("a") as out:
        out.write(json.dumps({"question": "q", "options": ["a", "b"], "answer": 5}) + "\n")
    bench = write_bench(tmp_path, [{"task": "t", "path": str(items)}])
    (tmp_path / "ckpt").mkdir()
    code = main(
        ["--config", str(tmp_path / "config.json"), "--checkpoint", str(tmp_path / "ckpt"),
         "--step", "1", "--benchmarks", str(bench), "--out", str(tmp_path / "r.json")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"benchmarks: {items} line 3: ") and "answer 5 is not an index" in err


def test_a_line_that_is_not_json_is_named(tmp_path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text('{"question": "q", "options": ["a", "b"], "answer": 0}\n{"question": \n')
    with pytest.raises(BenchmarkError, match=r"items.jsonl line 2: Invalid JSON"):
        check_items(items)


@pytest.fixture
def s3(monkeypatch):
    """A real S3 API over HTTP (moto's server), and the environment a pod's Secret would give."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "reader")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    server.stop()


def test_items_on_s3_are_copied_into_the_work_dir_and_checked(s3, tmp_path) -> None:
    s3.upload_file(str(good_items(tmp_path)), BUCKET, "mc/en.jsonl")
    s3.put_object(Bucket=BUCKET, Key="mc/bad.jsonl", Body=b'{"question": "q"}\n')
    [local] = local_items([Benchmark(task="en", path=f"s3://{BUCKET}/mc/en.jsonl")], tmp_path / "w")
    assert local.path == str(tmp_path / "w" / "en.jsonl")
    assert Path(local.path).read_bytes() == (tmp_path / "items.jsonl").read_bytes()
    with pytest.raises(BenchmarkError, match=r"bad.jsonl line 1: options: Field required"):
        local_items([Benchmark(task="bad", path=f"s3://{BUCKET}/mc/bad.jsonl")], tmp_path / "w")
    with pytest.raises(BenchmarkError, match=f"cannot read s3://{BUCKET}/mc/none.jsonl"):
        local_items([Benchmark(task="none", path=f"s3://{BUCKET}/mc/none.jsonl")], tmp_path / "w")


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"task": "t", "path": "x", "shots": 2}, "0.shots: Extra inputs are not permitted"),
        ({"task": "bad name", "path": "x"}, "0.task: String should match pattern"),
        (
            {"task": "t", "path": "x", "limit": 0},
            "0.limit: Input should be greater than or equal to 1",
        ),
    ],
)
def test_a_bad_benchmark_entry_is_named(tmp_path, entry: dict, says: str) -> None:
    with pytest.raises(BenchmarkError, match=says):
        load_benchmarks(write_bench(tmp_path, [entry]))


def test_two_benchmarks_of_one_name_are_refused(tmp_path) -> None:
    items = str(good_items(tmp_path))
    entries = [{"task": "t", "path": items}, {"task": "t", "path": items, "num_fewshot": 2}]
    with pytest.raises(BenchmarkError, match="task names repeat"):
        load_benchmarks(write_bench(tmp_path, entries))


# --------------------------------------------------------------------------- the task and the NLL


def test_the_task_reads_the_local_file_and_takes_examples_from_it_only_with_shots(tmp_path) -> None:
    zero = task_config(Benchmark(task="t", path=str(tmp_path / "a.jsonl")))
    five = task_config(Benchmark(task="t", path=str(tmp_path / "a.jsonl"), num_fewshot=5))
    assert zero["dataset_path"] == "json"
    assert zero["dataset_kwargs"] == {"data_files": {"test": str(tmp_path / "a.jsonl")}}
    assert zero["test_split"] == "test" and "fewshot_split" not in zero
    assert (five["fewshot_split"], five["num_fewshot"]) == ("test", 5)
    assert zero["output_type"] == "multiple_choice"
    assert (zero["doc_to_text"], zero["doc_to_choice"], zero["doc_to_target"]) == (
        "question",
        "options",
        "answer",
    )
    assert [m["metric"] for m in zero["metric_list"]] == ["acc", "acc_norm"]


def test_the_nll_is_the_mean_of_the_right_options_negative_loglikelihoods() -> None:
    samples = [
        {"target": 1, "filtered_resps": [[-9.0, False], [-2.5, True], [-4.0, False]]},
        {"target": 0, "filtered_resps": [[-1.5, False], [-0.5, True]]},
    ]
    assert correct_option_nll(samples) == pytest.approx((2.5 + 1.5) / 2)
