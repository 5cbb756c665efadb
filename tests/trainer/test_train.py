"""The real trainer on CPU: megatron-core GPTModel under torchrun on gloo, a few dozen steps.

Each test runs `python -m trainer.train` (or torchrun) in a subprocess, as a pod would, and
reads the metrics it writes. Every run has a timeout: a hung checkpoint writer must fail the
test, not the suite.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from trainer.config import config_to_dict, example_config

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "tiny_losses.json"
RUN_TIMEOUT_S = 240
# Layouts reduce in a different order than one process does; fp32 sums then differ in the
# last bits, which a few Adam steps amplify to ~1e-5 relative.
LAYOUT_RTOL = 1e-4


def tiny_config(tmp: Path, *, steps: int = 8, **sections) -> dict:
    """A 2-layer GQA Llama on the embedded corpora: one stage, constant LR after 2 warmup steps."""
    config = config_to_dict(example_config())
    config["stages"] = config["stages"][:1]
    config["stages"][0]["steps"] = steps
    config["schedule"] = {"kind": "constant", "warmup_steps": min(2, steps)}
    config["eval"] = {"interval_steps": 0, "samples_per_channel": 8}
    config["checkpoint"] = {"directory": str(tmp / "ckpt"), "interval_steps": 4, "keep_last": 5}
    config["metrics"] = {"jsonl_path": str(tmp / "metrics.jsonl")}
    config["data"]["cache_dir"] = str(tmp.parent / "corpora")
    config["job"]["result_path"] = str(tmp / "result.jsonl")
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    return config


def run_trainer(
    tmp: Path, config: dict, *, nproc: int = 1, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "config.json"
    path.write_text(json.dumps(config))
    threads = "1" if nproc > 1 else os.environ.get("OMP_NUM_THREADS", "2")
    env = {**os.environ, "OMP_NUM_THREADS": threads, **(env or {})}
    if nproc == 1:
        command = [sys.executable, "-m", "trainer.train", "--config", str(path)]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "trainer.train", "--config", str(path),
        ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if check and result.returncode != 0:
        raise AssertionError(f"trainer failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def records(tmp: Path, phase: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (tmp / "metrics.jsonl").read_text().splitlines()]
    if phase == "train":
        return [r for r in rows if r["phase"] not in ("eval", "checkpoint")]
    if phase is not None:
        return [r for r in rows if r["phase"] == phase]
    return rows


def losses(tmp: Path) -> list[float]:
    return [r["metrics"]["loss"] for r in records(tmp, "train")]


def outcomes(tmp: Path) -> list[dict]:
    """The outcome lines the ranks appended to job.result_path, rank order."""
    rows = [json.loads(line) for line in (tmp / "result.jsonl").read_text().splitlines()]
    assert all(set(row) == {"outcome", "rank", "step", "message", "checkpoint"} for row in rows)
    return sorted(rows, key=lambda row: row["rank"])


def checkpoint_tensors(path: Path) -> dict:
    """Every tensor of a checkpoint (model and optimizer state), read without a process group."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    flat = path.parent / f"{path.name}.pt"
    dcp_to_torch_save(path, flat)
    return {k: v for k, v in torch.load(flat, weights_only=False).items() if isinstance(v, torch.Tensor)}


# --- a single process ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def learning_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("learning")
    config = tiny_config(tmp, steps=30, eval={"interval_steps": 15, "samples_per_channel": 8})
    config["checkpoint"]["interval_steps"] = 0
    # Every module the run imports, with its import time, goes to stderr.
    result = run_trainer(tmp, config, env={"PYTHONPROFILEIMPORTTIME": "1"})
    (tmp / "imports.txt").write_text(result.stderr)
    return tmp


def test_loss_falls_over_a_few_dozen_steps_on_embedded_text(learning_run):
    curve = losses(learning_run)
    assert len(curve) == 30
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert first > 6.0  # ln(512) ≈ 6.24: an untrained model
    assert last < first - 1.0


def test_channel_losses_are_reported_and_their_token_weighted_mean_is_the_total(learning_run):
    for record in records(learning_run, "train"):
        metrics = record["metrics"]
        channels = [k.split("/", 1)[1] for k in metrics if k.startswith("tokens/")]
        assert set(channels) <= {"code", "en", "zh"} and channels
        tokens = sum(metrics[f"tokens/{c}"] for c in channels)
        weighted = sum(metrics[f"loss/{c}"] * metrics[f"tokens/{c}"] for c in channels) / tokens
        assert weighted == pytest.approx(metrics["loss"], rel=1e-9)
        assert tokens == 8 * 64  # global batch × sequence length


def test_every_record_has_the_ingest_shape(learning_run):
    for record in records(learning_run):
        assert set(record) == {"job", "attempt", "step", "stage", "phase", "tokens", "metrics"}
        assert record["phase"] in {"warmup", "stable", "decay", "eval", "checkpoint"}
    steps = records(learning_run, "train")
    assert [r["phase"] for r in steps[:3]] == ["warmup", "warmup", "stable"]
    assert all(r["metrics"]["data/batch_index"] == r["step"] for r in steps)
    assert all(r["metrics"]["grad_norm"] > 0 for r in steps)


def test_steps_say_when_they_ended_and_a_save_how_long_it_took(learning_run):
    steps = records(learning_run, "train")
    ends = [r["metrics"]["time/step_end_s"] for r in steps]
    assert ends == sorted(ends) and ends[-1] - ends[0] >= sum(r["metrics"]["throughput/step_time_s"] for r in steps[1:])
    (save,) = records(learning_run, "checkpoint")  # the final checkpoint, of step 30, in a record of its own
    assert save["step"] == 30 and set(save["metrics"]) == {"checkpoint/save_s"} and save["metrics"]["checkpoint/save_s"] > 0


def test_eval_reports_perplexity_per_channel(learning_run):
    evals = records(learning_run, "eval")
    assert [r["step"] for r in evals] == [14, 29]
    for name in ("code", "en", "zh"):
        first, last = evals[0]["metrics"][f"eval/ppl/{name}"], evals[1]["metrics"][f"eval/ppl/{name}"]
        assert 1 < last < first


def test_a_finished_run_says_it_completed(learning_run):
    (ending,) = outcomes(learning_run)
    assert ending == {"outcome": "completed", "rank": 0, "step": 30, "message": "training completed", "checkpoint": None}
    steps = records(learning_run, "train")
    assert all(r["metrics"]["step/skipped"] == 0.0 and r["metrics"]["step/skip_reason"] == 0 for r in steps)
    assert all(r["metrics"]["step/skipped_total"] == 0 for r in steps)
    # The z-score baseline needs skip_grad_norm_min_history (20) updated steps first.
    assert ["grad_norm/zscore" in r["metrics"] for r in steps] == [False] * 20 + [True] * 10


def test_a_cpu_run_never_imports_the_kernel_compiler(learning_run):
    """megatron-core's fused kernels are decorated with torch.compile; on CPU that costs 40% of a
    process's start for kernels that run eagerly anyway (trainer.compat)."""
    imported = (learning_run / "imports.txt").read_text()
    assert "megatron.core.fusions" in imported  # the decorated kernels were imported
    assert "torch._inductor.compile_fx" not in imported


def test_golden_losses_pin_the_numerics_of_a_seeded_tiny_run(learning_run):
    golden = json.loads(GOLDEN.read_text())
    assert losses(learning_run)[:20] == pytest.approx(golden["losses"], rel=1e-4)


# --- parallel layouts -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def initial_checkpoint(tmp_path_factory) -> Path:
    """An untrained model saved at step 0, so every layout starts from the same weights."""
    tmp = tmp_path_factory.mktemp("init")
    config = tiny_config(tmp, steps=1, checkpoint={"save_initial": True, "interval_steps": 0})
    run_trainer(tmp, config)
    return tmp / "ckpt" / "step-00000000"


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory, initial_checkpoint) -> Path:
    tmp = tmp_path_factory.mktemp("single")
    run_trainer(tmp, tiny_config(tmp, checkpoint={"init_from": str(initial_checkpoint)}))
    return tmp


@pytest.mark.parametrize(
    "parallel",
    [
        {"tensor": 2},
        {"pipeline": 2},
        {"distributed_optimizer": True},  # data parallel 2, optimizer state sharded
    ],
    ids=["tp2", "pp2", "dp2-distopt"],
)
def test_parallel_layouts_give_the_single_process_losses(tmp_path, initial_checkpoint, single_process_run, parallel):
    config = tiny_config(tmp_path, parallel=parallel, checkpoint={"init_from": str(initial_checkpoint)})
    run_trainer(tmp_path, config, nproc=2)
    assert losses(tmp_path) == pytest.approx(losses(single_process_run), rel=LAYOUT_RTOL)


# --- checkpoints -----------------------------------------------------------------------------------


def test_a_resumed_run_continues_with_the_identical_losses(tmp_path, single_process_run):
    checkpoint = single_process_run / "ckpt" / "step-00000004"
    run_trainer(tmp_path, tiny_config(tmp_path, checkpoint={"resume_from": str(checkpoint)}))
    resumed = records(tmp_path, "train")
    assert [r["step"] for r in resumed] == [4, 5, 6, 7]
    loaded = [r for r in records(tmp_path, "checkpoint") if "checkpoint/load_s" in r["metrics"]]
    assert [r["step"] for r in loaded] == [4] and loaded[0]["metrics"]["checkpoint/load_s"] > 0
    assert losses(tmp_path) == pytest.approx(losses(single_process_run)[4:], rel=1e-6)


def test_a_resume_with_a_skip_range_consumes_exactly_the_batches_it_should(tmp_path, single_process_run):
    checkpoint = single_process_run / "ckpt" / "step-00000004"
    config = tiny_config(tmp_path, checkpoint={"resume_from": str(checkpoint)})
    config["data"]["skip_ranges"] = [[4, 7]]
    run_trainer(tmp_path, config)
    consumed = [int(r["metrics"]["data/batch_index"]) for r in records(tmp_path, "train")]
    assert consumed == [7, 8, 9, 10]


def test_a_checkpoint_with_one_changed_byte_is_refused(tmp_path, single_process_run):
    checkpoint = tmp_path / "step-00000004"
    shutil.copytree(single_process_run / "ckpt" / "step-00000004", checkpoint)
    shard = next(checkpoint.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))

    result = run_trainer(tmp_path, tiny_config(tmp_path, checkpoint={"resume_from": str(checkpoint)}), check=False)

    assert result.returncode == 4
    (ending,) = outcomes(tmp_path)
    assert ending["outcome"] == "corrupt_checkpoint" and ending["checkpoint"] == str(checkpoint)
    assert f"{shard.name} does not match its sha256" in ending["message"]
    metrics = tmp_path / "metrics.jsonl"
    assert not metrics.exists() or metrics.read_text() == ""  # not one step trained


# What each damage is diagnosed as is test_checkpoint's (`verify`, in process); these runs show that
# a trainer ends on it, every rank, before a step: a directory gone on one rank, a cut file on two.
@pytest.mark.parametrize(
    ("damage", "says", "nproc"),
    [
        (lambda c: shutil.rmtree(c), "does not exist", 1),
        (lambda c: (c / "trainer_state.pt").write_bytes((c / "trainer_state.pt").read_bytes()[:100]), "truncated", 2),
    ],
    ids=["missing-dir", "truncated-state-2-ranks"],
)
def test_an_unusable_resume_checkpoint_ends_every_rank_as_corrupt_checkpoint(tmp_path, single_process_run, damage, says, nproc):
    checkpoint = tmp_path / "step-00000004"
    shutil.copytree(single_process_run / "ckpt" / "step-00000004", checkpoint)
    damage(checkpoint)

    result = run_trainer(tmp_path, tiny_config(tmp_path, checkpoint={"resume_from": str(checkpoint)}), nproc=nproc, check=False)

    assert result.returncode == (4 if nproc == 1 else 1)  # torchrun turns any failure into 1
    endings = outcomes(tmp_path)
    assert [e["rank"] for e in endings] == list(range(nproc))
    for ending in endings:
        assert ending["outcome"] == "corrupt_checkpoint" and ending["checkpoint"] == str(checkpoint)
        assert says in ending["message"] and str(checkpoint) in ending["message"]
        assert ending["step"] is None


def test_published_checkpoints_carry_a_verifying_manifest_and_old_ones_are_pruned(tmp_path):
    from trainer.checkpoint import verify

    config = tiny_config(tmp_path, steps=8, checkpoint={"interval_steps": 2, "keep_last": 2})
    run_trainer(tmp_path, config)
    published = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert published == ["step-00000006", "step-00000008"]
    manifest = verify(tmp_path / "ckpt" / "step-00000008")
    assert manifest.step == 8 and manifest.tokens == 8 * 8 * 64
    assert any(name.endswith(".distcp") for name in manifest.files)


def run_until_sigterm(tmp: Path, config: dict, *, after_steps: int = 3) -> tuple[int, str]:
    """Start a single-process trainer, SIGTERM it once it has reported a few steps."""
    (tmp / "config.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer.train", "--config", str(tmp / "config.json")],
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = tmp / "metrics.jsonl"
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (metrics.exists() and metrics.read_text().count("\n") >= after_steps):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


def test_sigterm_saves_a_checkpoint_and_ends_as_preempted_with_exit_code_5(tmp_path):
    config = tiny_config(tmp_path, steps=100_000, checkpoint={"interval_steps": 0})
    returncode, stderr = run_until_sigterm(tmp_path, config)
    # Exit 0 would make Kubernetes mark an evicted PyTorchJob Succeeded.
    assert returncode == 5, stderr[-3000:]
    saved = list((tmp_path / "ckpt").glob("step-*"))
    assert len(saved) == 1
    last_step = records(tmp_path, "train")[-1]["step"]
    assert saved[0].name == f"step-{last_step + 1:08d}"
    (ending,) = outcomes(tmp_path)
    assert ending["outcome"] == "preempted" and ending["step"] == last_step + 1
    assert ending["checkpoint"] == str(saved[0])


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step_as_preempted(tmp_path):
    """Signals reach ranks at different moments; a rank that stopped alone would hang the rest."""

    from trainer.checkpoint import verify

    config = tiny_config(tmp_path, steps=100_000, checkpoint={"interval_steps": 0})
    (tmp_path / "config.json").write_text(json.dumps(config))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "trainer.train", "--config", str(tmp_path / "config.json"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            metrics = tmp_path / "metrics.jsonl"
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
                assert process.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.2)
            worker_of_rank(process.pid, 1).send_signal(signal.SIGTERM)
            process.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if process.poll() is None:  # a hang: take the workers down with their agent
                for child in psutil.Process(process.pid).children(recursive=True):
                    child.kill()
                process.kill()

    assert process.returncode != 0  # torchrun reports any worker's non-zero exit as its failure
    saved = list((tmp_path / "ckpt").glob("step-*"))
    assert len(saved) == 1 and verify(saved[0])
    last_step = records(tmp_path, "train")[-1]["step"]
    endings = outcomes(tmp_path)
    assert [e["rank"] for e in endings] == [0, 1]
    for ending in endings:
        assert ending["outcome"] == "preempted" and ending["step"] == last_step + 1
        assert ending["checkpoint"] == str(saved[0])


def worker_of_rank(agent_pid: int, rank: int) -> psutil.Process:
    for child in psutil.Process(agent_pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "trainer.train" in child.cmdline():
                return child
        except psutil.Error:
            continue  # a helper process that came and went
    raise AssertionError(f"no trainer process of rank {rank} under {agent_pid}")


# --- precision and stability -------------------------------------------------------------------------


def test_fp16_loss_scaling_skips_an_overflowing_step_and_backs_off(tmp_path):
    # Gradients are of the token-summed loss (per-token loss, as Megatron computes it), so a
    # scale of 2**14 overflows fp16 here; each overflow must skip the step and halve the scale.
    config = tiny_config(
        tmp_path,
        steps=10,
        precision={"dtype": "fp16", "loss_scale": {"initial_scale": 2.0**14, "hysteresis": 1}},
        checkpoint={"interval_steps": 0},
    )
    run_trainer(tmp_path, config)
    steps = [r["metrics"] for r in records(tmp_path, "train")]
    assert steps[0]["step/skipped"] == 1.0
    first_update = next(i for i, m in enumerate(steps) if m["step/skipped"] == 0.0)
    scales = [m["loss_scale"] for m in steps]
    assert scales[:first_update] == [2.0 ** (13 - i) for i in range(first_update)]
    assert all(m["grad_norm"] > 0 for m in steps[first_update:] if m["step/skipped"] == 0.0)
    # Each overflow is a counted non-finite skip, but not divergence: the scaler absorbs it.
    assert [m["step/skip_reason"] for m in steps[:first_update]] == [1] * first_update
    assert all(m["grad_norm"] == "NaN" for m in steps[:first_update])
    later = sum(m["step/skipped"] for m in steps[first_update:])  # a later overflow halves it again
    assert steps[-1]["loss_scale"] == 2.0 ** (13 - first_update - later + 1)
    assert steps[-1]["step/skipped_total"] == first_update + later and first_update >= 3  # > max_nonfinite_steps
    assert outcomes(tmp_path)[0]["outcome"] == "completed"


def test_a_nan_step_is_skipped_without_touching_weights_or_optimizer_state_and_the_run_goes_on(tmp_path):
    config = tiny_config(tmp_path, steps=4, faults={"nan_steps": [[2, 3]]}, checkpoint={"interval_steps": 1})
    run_trainer(tmp_path, config)

    steps = [r["metrics"] for r in records(tmp_path, "train")]
    assert [m["step/skipped"] for m in steps] == [0.0, 0.0, 1.0, 0.0]
    assert [m["step/skip_reason"] for m in steps] == [0, 0, 1, 0]
    assert [m["step/skipped_total"] for m in steps] == [0, 0, 1, 1]
    assert steps[2]["loss"] == "NaN" and steps[2]["grad_norm"] == "NaN"
    assert all(isinstance(m["loss"], float) for m in steps[:2] + steps[3:])
    # Checkpoint N holds the state before step N: the skipped step 2 left everything as it was.
    before, after, later = (checkpoint_tensors(tmp_path / "ckpt" / f"step-{n:08d}") for n in (2, 3, 4))
    assert before.keys() == after.keys() and any("exp_avg" in k for k in before)
    assert all(torch_equal(before[k], after[k]) for k in before)
    assert not all(torch_equal(after[k], later[k]) for k in after)  # step 3 did train
    assert outcomes(tmp_path)[0]["outcome"] == "completed"


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


@pytest.fixture(scope="module")
def spike_run(tmp_path_factory) -> Path:
    """Gradients × 1000 at step 5 and from step 8 on; the baseline is ready after 4 steps."""
    tmp = tmp_path_factory.mktemp("spikes")
    config = tiny_config(
        tmp,
        steps=12,
        checkpoint={"interval_steps": 0},
        faults={"grad_spike_steps": [[5, 6], [8, 12]], "grad_spike_factor": 1000.0},
    )
    config["train"].update(skip_grad_norm_window=8, skip_grad_norm_min_history=4, max_consecutive_skips=2)
    run_trainer(tmp, config)
    return tmp


def test_a_grad_norm_spike_is_skipped_and_counted(spike_run):
    steps = [r["metrics"] for r in records(spike_run, "train")]
    assert ["grad_norm/zscore" in m for m in steps[:5]] == [False] * 4 + [True]
    spike = steps[5]
    assert (spike["step/skipped"], spike["step/skip_reason"], spike["step/skipped_total"]) == (1.0, 2, 1)
    assert spike["grad_norm"] > 100 * max(m["grad_norm"] for m in steps[:5])
    assert spike["grad_norm/zscore"] > 6.0
    assert [m["step/skip_reason"] for m in steps[:8]] == [0, 0, 0, 0, 0, 2, 0, 0]
    assert all(isinstance(m["loss"], float) and m["loss"] < 6.5 for m in steps)


def test_after_max_consecutive_skips_a_sustained_spike_is_trained_on(spike_run):
    steps = [r["metrics"] for r in records(spike_run, "train")]
    assert [m["step/skip_reason"] for m in steps[8:]] == [2, 2, 0, 0]
    assert steps[10]["grad_norm/zscore"] > 6.0  # trained on by the cap, not because it looked normal
    assert steps[-1]["step/skipped_total"] == 3
    assert outcomes(spike_run)[0]["outcome"] == "completed"


def test_a_persistent_nan_ends_the_run_as_diverged_naming_its_first_step(tmp_path):
    config = tiny_config(tmp_path, steps=20, faults={"nan_steps": [[3, 100]]}, checkpoint={"interval_steps": 0})
    result = run_trainer(tmp_path, config, check=False)

    assert result.returncode == 3
    steps = records(tmp_path, "train")
    assert [r["step"] for r in steps] == [0, 1, 2, 3, 4, 5]  # train.max_nonfinite_steps = 3
    assert [r["metrics"]["step/skipped_total"] for r in steps[3:]] == [1, 2, 3]
    (ending,) = outcomes(tmp_path)
    assert ending["outcome"] == "diverged" and ending["step"] == 3 and ending["checkpoint"] is None
    assert "steps 3-5" in ending["message"]


def test_an_lr_blowup_makes_the_run_diverge_with_its_nonfinite_steps_skipped(tmp_path):
    config = tiny_config(
        tmp_path, steps=20, optimizer={"clip_grad": 0.0}, checkpoint={"interval_steps": 0},
        faults={"lr_blowup_from_step": 2, "lr_blowup_factor": 1e7},
    )  # fmt: skip
    result = run_trainer(tmp_path, config, check=False)

    assert result.returncode == 3
    steps = records(tmp_path, "train")
    assert [r["metrics"]["lr"] for r in steps[:3]] == pytest.approx([5e-4, 1e-3, 1e-3 * 1e7])
    bad = [r for r in steps if r["metrics"]["step/skip_reason"] == 1]
    assert len(bad) == 3 and bad == steps[-3:]  # max_nonfinite_steps in a row, then the end
    assert all(r["metrics"]["step/skipped"] == 1.0 and r["metrics"]["grad_norm"] == "NaN" for r in bad)
    (ending,) = outcomes(tmp_path)
    assert ending["outcome"] == "diverged" and ending["step"] == bad[0]["step"]


def test_a_window_of_newlines_makes_the_loss_collapse(tmp_path):
    # A brisk learning rate, so the model learns "newline follows newline" within the window.
    config = tiny_config(tmp_path, steps=16, optimizer={"lr": 1e-2, "min_lr": 1e-3}, checkpoint={"interval_steps": 0})
    for source in config["stages"][0]["data"]:
        source.update(corrupt=[[10, 16]], corrupt_kind="newlines")
    run_trainer(tmp_path, config)
    curve = losses(tmp_path)
    assert all(curve[step + 1] < curve[step] for step in range(11, 15))
    assert curve[15] < min(curve[:10]) - 1.5


def test_metrics_and_checkpoints_reach_the_ingest_api_with_the_job_token(tmp_path):
    """A stand-in for the service's ingest routes on loopback: what the trainer sends, as sent."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[tuple[str, str, object]] = []

    class Ingest(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, self.headers.get("Authorization"), body))
            self.send_response(201 if self.path.endswith("/checkpoints") else 202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ingest)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        config = tiny_config(
            tmp_path,
            steps=4,
            job={"id": "42", "attempt": 1, "name": "ingest-test"},
            metrics={"url": url, "token": "pto_job42", "flush_interval_s": 0.1},
            checkpoint={"interval_steps": 4},
        )
        run_trainer(tmp_path, config)
    finally:
        server.shutdown()

    metric_posts = [body for path, _, body in received if path == "/v1/jobs/42/metrics"]
    checkpoint_posts = [body for path, _, body in received if path == "/v1/jobs/42/checkpoints"]
    assert {auth for _, auth, _ in received} == {"Bearer pto_job42"}
    records = [record for batch in metric_posts for record in batch]
    assert [r["step"] for r in records if r["phase"] != "checkpoint"] == [0, 1, 2, 3]
    # The save's own record, at the step it saved (goodput's checkpoint time).
    (saved,) = [r for r in records if r["phase"] == "checkpoint"]
    assert saved["step"] == 4 and saved["metrics"]["checkpoint/save_s"] > 0
    assert all(record["job"] == "42" and record["attempt"] == 1 for batch in metric_posts for record in batch)
    (checkpoint,) = checkpoint_posts
    assert checkpoint["step"] == 4 and checkpoint["attempt"] == 1
    assert checkpoint["path"].endswith("step-00000004") and len(checkpoint["manifest_sha256"]) == 64


class FakeService:
    """The service's ingest routes on loopback: takes metrics, registers checkpoints and answers
    each registration with `prune`, the list of checkpoints it wants deleted."""

    def __init__(self, prune: list[dict]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.registered: list[dict] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer = b""
                if self.path.endswith("/checkpoints"):
                    service.registered.append(body)
                    answer = json.dumps({"id": len(service.registered), "step": body["step"], "prune": prune}).encode()
                self.send_response(201 if answer else 202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> FakeService:
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def fake_checkpoint(ckpt: Path, name: str, *, attempt: int = 0) -> dict:
    """A sealed checkpoint directory (not loadable, but its manifest is real); its prune entry."""
    from trainer.checkpoint import read_manifest, write_manifest

    (ckpt / name).mkdir(parents=True)
    (ckpt / name / "shard.distcp").write_bytes(name.encode())
    write_manifest(ckpt / name, step=int(name[-8:]), tokens=0, attempt=attempt)
    sha = read_manifest(ckpt / name).sha256()
    return {"path": str(ckpt / name), "step": int(name[-8:]), "attempt": attempt, "manifest_sha256": sha}


def test_with_a_service_only_what_its_prune_list_names_is_deleted_and_only_if_the_sha_matches(tmp_path):
    """The service owns retention: no keep_last, no abandoned timeline, an interrupted replace
    recovered; a listed checkpoint goes only while its manifest still has the listed sha256."""
    from trainer.checkpoint import verify

    ckpt = tmp_path / "ckpt"
    doomed = fake_checkpoint(ckpt, "step-00000006")
    replaced = {**fake_checkpoint(ckpt, "step-00000008"), "manifest_sha256": "0" * 64}  # a newer one is there
    fake_checkpoint(ckpt, ".old-step-00000010")  # a replace cut short between its two renames
    with FakeService(prune=[doomed, replaced]) as service:
        config = tiny_config(
            tmp_path, steps=4, job={"id": "7", "attempt": 1, "name": "prune"},
            metrics={"url": service.url, "flush_interval_s": 0.1},
            checkpoint={"interval_steps": 2, "keep_last": 1},
        )  # fmt: skip
        run_trainer(tmp_path, config)

    assert [body["step"] for body in service.registered] == [2, 4]
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "step-00000002", "step-00000004", "step-00000008", "step-00000010",
    ]  # fmt: skip
    assert verify(ckpt / "step-00000010").step == 10  # set aside by a replace, put back
    assert verify(ckpt / "step-00000004").attempt == 1


def test_a_trainer_stopping_on_sigterm_registers_its_checkpoint_but_deletes_nothing(tmp_path):
    ckpt = tmp_path / "ckpt"
    listed = fake_checkpoint(ckpt, "step-00090000")
    with FakeService(prune=[listed]) as service:
        config = tiny_config(
            tmp_path, steps=100_000, metrics={"url": service.url, "flush_interval_s": 0.1},
            checkpoint={"interval_steps": 0},
        )  # fmt: skip
        returncode, stderr = run_until_sigterm(tmp_path, config)

    assert returncode == 5, stderr[-3000:]
    (ending,) = outcomes(tmp_path)
    assert [body["path"] for body in service.registered] == [ending["checkpoint"]]
    assert (ckpt / "step-00090000").is_dir()  # the service may be rolling back to it right now


def test_z_loss_adds_its_penalty_to_the_reported_loss(tmp_path, learning_run):
    # At initialisation every logit is near 0, so log Z ≈ ln(vocab): z-loss ≈ coefficient × ln(512)².
    config = tiny_config(tmp_path, steps=1, optimizer={"z_loss": 0.5}, checkpoint={"interval_steps": 0})
    run_trainer(tmp_path, config)
    (with_z,) = losses(tmp_path)
    plain = losses(learning_run)[0]
    assert with_z - plain == pytest.approx(0.5 * math.log(512) ** 2, rel=0.05)


def test_a_resumed_run_deletes_the_abandoned_timeline_instead_of_keeping_it(tmp_path):
    """After a rollback to step 4, the first attempt's steps 6 and 8 are an abandoned timeline:
    the resumed attempt replaces them as it goes and never keeps them over its own."""
    from trainer.checkpoint import verify

    config = tiny_config(tmp_path, steps=8, checkpoint={"interval_steps": 2, "keep_last": 10})
    run_trainer(tmp_path, config)
    ckpt = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == [f"step-{s:08d}" for s in (2, 4, 6, 8)]
    stale = ckpt / "step-00000010"  # as if attempt 0 had gone on to step 10 before the rollback
    shutil.copytree(ckpt / "step-00000008", stale)

    resumed = tiny_config(
        tmp_path, steps=8,
        checkpoint={"interval_steps": 2, "keep_last": 2, "resume_from": str(ckpt / "step-00000004")},
    )
    resumed["job"]["attempt"] = 1
    run_trainer(tmp_path, resumed)

    # keep_last 2 of this attempt's own (6, 8) plus the checkpoint it resumed from (4).
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-00000004", "step-00000006", "step-00000008"]
    assert verify(ckpt / "step-00000008").attempt == 1 and verify(ckpt / "step-00000006").attempt == 1
