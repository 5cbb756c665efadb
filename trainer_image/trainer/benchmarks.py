"""Score one checkpoint on multiple-choice benchmarks with EleutherAI's lm-eval harness.

`python -m trainer.benchmarks --config CONFIG.json --checkpoint DIR --step N
    --benchmarks BENCH.json --out RESULT.json [--work-dir DIR]`

The checkpoint is exported to the Hugging Face Llama layout by `python -m trainer.export` (its
own process: megatron's parallel state and CPU patches stay out of this one), each benchmark
becomes an lm-eval task YAML over its JSONL file (`trainer.mc_data.MCItem` a line; local, or
copied from `s3://` first), and
lm-eval's `hf` model scores them on the CPU exactly as `lm_eval --model hf --include_path
WORK/tasks` would, so the numbers compare with the harness's own. Beside acc and acc_norm the
result carries the mean negative log-likelihood of the right option, read from lm-eval's
per-sample log-likelihoods (the first step of a Llama 3 style benchmark prediction).

Nothing is downloaded: the Hugging Face libraries run offline, with their caches under the
work directory. RESULT.json is written atomically and printed on stdout; a failure exits
non-zero with one line on stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from trainer.corpora import S3_SCHEME, s3_client
from trainer.mc_data import MCItem

EXPORT_TIMEOUT_S = 1800
# Offline, and every cache the Hugging Face libraries keep under the work directory, not $HOME.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# lm-eval's own command line defaults, so that its CLI reproduces our numbers.
BATCH_SIZE = 1
DEVICE = "cpu"


class BenchmarkError(RuntimeError):
    """A benchmark cannot be scored; the message is the one line the caller reports."""


class Benchmark(BaseModel):
    """One entry of BENCH.json: the service's `evaluation.benchmarks` entry."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$",
        max_length=100,
        description="lm-eval task name; also the YAML's file name",
    )
    path: str = Field(
        min_length=1, description="JSONL file, one MCItem a line: a local path or s3://bucket/key"
    )
    num_fewshot: int = Field(default=0, ge=0, description="examples put before each question")
    limit: int | None = Field(default=None, ge=1, description="score only the first N items")


class TaskResult(BaseModel):
    task: str
    acc: float
    acc_stderr: float | None
    acc_norm: float
    acc_norm_stderr: float | None
    nll: float = Field(description="mean negative log-likelihood of the right option")
    samples: int
    num_fewshot: int


class EvaluationResult(BaseModel):
    step: int
    results: list[TaskResult]


# --------------------------------------------------------------------------- inputs


def load_benchmarks(path: str | Path) -> list[Benchmark]:
    """BENCH.json, validated: each entry's fields and distinct task names."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        benchmarks = TypeAdapter(list[Benchmark]).validate_python(raw)
    except OSError as exc:
        raise BenchmarkError(f"benchmarks file {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"benchmarks file {path}: not JSON ({exc})") from exc
    except ValidationError as exc:
        raise BenchmarkError(f"benchmarks file {path}: {_first_error(exc)}") from exc
    if not benchmarks:
        raise BenchmarkError(f"benchmarks file {path}: no benchmarks")
    names = [b.task for b in benchmarks]
    if len(set(names)) != len(names):
        raise BenchmarkError(f"benchmarks file {path}: task names repeat: {', '.join(names)}")
    return benchmarks


def local_items(benchmarks: list[Benchmark], folder: Path) -> list[Benchmark]:
    """The benchmarks with their items in local files, each checked line by line.

    An `s3://` file is copied into `folder` with boto3, its credentials and endpoint from the
    environment as for the trainer's s3:// sources (`trainer.corpora.s3_client`).
    """
    local = []
    for benchmark in benchmarks:
        path = Path(benchmark.path)
        if benchmark.path.startswith(S3_SCHEME):
            path = _download(benchmark.path, folder / f"{benchmark.task}.jsonl")
        check_items(path)
        local.append(benchmark.model_copy(update={"path": str(path.resolve())}))
    return local


def _download(url: str, local: Path) -> Path:
    bucket, _, key = url.removeprefix(S3_SCHEME).partition("/")
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        s3_client().download_file(bucket, key, str(local))
    except Exception as exc:  # botocore's ClientError, NoCredentialsError, EndpointConnectionError…
        raise BenchmarkError(f"cannot read {url}: {exc}") from exc
    return local


def check_items(path: Path) -> int:
    """How many items the JSONL file holds; BenchmarkError naming the first bad line."""
    count = 0
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    MCItem.model_validate_json(line)
                except ValidationError as exc:
                    raise BenchmarkError(f"{path} line {number}: {_first_error(exc)}") from exc
                count += 1
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchmarkError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from exc
    if count == 0:
        raise BenchmarkError(f"{path}: no items")
    return count


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


# --------------------------------------------------------------------------- lm-eval tasks


def task_config(benchmark: Benchmark) -> dict:
    """The lm-eval task YAML of one benchmark: a local `json` dataset scored by option likelihood.

    `acc` takes the option of highest log-likelihood, `acc_norm` the highest per byte: the
    harness's own multiple-choice metrics (ARC-Challenge's lowest-perplexity rule is acc_norm).
    """
    config = {
        "task": benchmark.task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": benchmark.path}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "question",
        "doc_to_choice": "options",
        "doc_to_target": "answer",
        "target_delimiter": " ",
        "num_fewshot": benchmark.num_fewshot,
        "metric_list": [
            {"metric": name, "aggregation": "mean", "higher_is_better": True}
            for name in ("acc", "acc_norm")
        ],
        "metadata": {"version": 1.0},
    }
    if benchmark.num_fewshot > 0:
        # Examples come from the same file; lm-eval never shows an item as its own example.
        config["fewshot_split"] = "test"
    return config


def write_task_configs(benchmarks: Iterable[Benchmark], folder: Path) -> Path:
    """One `<task>.yaml` per benchmark in `folder`: lm-eval's `--include_path`."""
    folder.mkdir(parents=True, exist_ok=True)
    for benchmark in benchmarks:
        text = yaml.safe_dump(task_config(benchmark), sort_keys=False, allow_unicode=True)
        (folder / f"{benchmark.task}.yaml").write_text(text, encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- results


def correct_option_nll(samples: list[dict]) -> float:
    """Mean negative log-likelihood of the right option over lm-eval's logged samples.

    A multiple-choice sample's `filtered_resps` holds one `(loglikelihood, is_greedy)` pair per
    option, in option order; `target` is the right option's index.
    """
    if not samples:
        raise BenchmarkError("lm-eval logged no samples")
    total = 0.0
    for sample in samples:
        loglikelihood, _greedy = sample["filtered_resps"][int(sample["target"])]
        total -= float(loglikelihood)
    return total / len(samples)


def task_result(benchmark: Benchmark, metrics: dict, samples: list[dict]) -> TaskResult:
    """Our record of one task from lm-eval's `results[task]` and `samples[task]`."""
    return TaskResult(
        task=benchmark.task,
        acc=float(metrics["acc,none"]),
        acc_stderr=_stderr(metrics.get("acc_stderr,none")),
        acc_norm=float(metrics["acc_norm,none"]),
        acc_norm_stderr=_stderr(metrics.get("acc_norm_stderr,none")),
        nll=correct_option_nll(samples),
        samples=len(samples),
        num_fewshot=benchmark.num_fewshot,
    )


def _stderr(value: object) -> float | None:
    """lm-eval writes "N/A" where a standard error is undefined (one sample); we write null."""
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


# --------------------------------------------------------------------------- running


def use_work_dir(work: Path) -> None:
    """Run the Hugging Face libraries offline, caching under `work`; before they are imported."""
    os.environ.update(OFFLINE_ENV)
    os.environ["HF_HOME"] = str(work / "hf-home")
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf-home" / "datasets")


def export_checkpoint(config: Path, checkpoint: Path, out: Path) -> Path:
    """`python -m trainer.export` into `out`; its last stderr line on failure."""
    command = [sys.executable, "-m", "trainer.export", "--config", str(config)]
    command += ["--checkpoint", str(checkpoint), "--out", str(out)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"export of {checkpoint} took over {EXPORT_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise BenchmarkError(f"export of {checkpoint} failed: {reason}")
    return out


def score(export_dir: Path, benchmarks: list[Benchmark], tasks_dir: Path) -> list[TaskResult]:
    """Run lm-eval's `hf` model over each benchmark's task (the model loaded once)."""
    # No cyclic collection while lm-eval, datasets and transformers import (a quarter of their
    # 3.5 s of CPU), their objects then frozen out of its way: as trainer.train does for torch.
    gc.disable()
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    finally:
        gc.freeze()
        gc.enable()

    model = HFLM(pretrained=str(export_dir), device=DEVICE, batch_size=BATCH_SIZE)
    # Only our tasks: a benchmark named like a built-in one must not pick up the built-in.
    tasks = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    results = []
    for benchmark in benchmarks:
        # One call per benchmark: lm-eval's limit is per call, ours per benchmark.
        try:
            out = simple_evaluate(
                model=model,
                tasks=[benchmark.task],
                task_manager=tasks,
                limit=benchmark.limit,
                batch_size=BATCH_SIZE,
                device=DEVICE,
                log_samples=True,
            )
        except Exception as exc:  # the harness's errors are many; each ends this run alike
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise BenchmarkError(
                f"lm-eval on {benchmark.task}: {type(exc).__name__}: {first_line}"
            ) from exc
        if out is None:
            raise BenchmarkError(f"lm-eval returned no results for {benchmark.task}")
        metrics = out["results"][benchmark.task]
        results.append(task_result(benchmark, metrics, out["samples"][benchmark.task]))
    return results


def evaluate_checkpoint(
    config: Path, checkpoint: Path, step: int, benchmarks: list[Benchmark], work: Path
) -> EvaluationResult:
    """Fetch and check the items, export, write the task YAMLs, score: RESULT.json's content.

    `work` holds the items (data/), the export (hf/), the YAMLs (tasks/) and the caches.
    """
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    benchmarks = local_items(benchmarks, work / "data")
    export_dir = export_checkpoint(config, checkpoint, work / "hf")
    tasks_dir = write_task_configs(benchmarks, work / "tasks")
    use_work_dir(work)
    return EvaluationResult(step=step, results=score(export_dir, benchmarks, tasks_dir))


def write_result(result: EvaluationResult, path: Path) -> str:
    """RESULT.json through a temporary file and a rename; its text."""
    text = result.model_dump_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", required=True, type=Path, help="the run's TrainerConfig JSON")
    parser.add_argument("--checkpoint", required=True, type=Path, help="a step-XXXXXXXX directory")
    parser.add_argument("--step", required=True, type=int, help="the checkpoint's step")
    parser.add_argument("--benchmarks", required=True, type=Path, help="BENCH.json")
    parser.add_argument("--out", required=True, type=Path, help="RESULT.json to write")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep the export (hf/), task YAMLs (tasks/) and caches here "
        "(default: a temporary directory, removed)",
    )
    args = parser.parse_args(argv)
    try:
        benchmarks = load_benchmarks(args.benchmarks)
        if not args.checkpoint.is_dir():
            raise BenchmarkError(f"checkpoint {args.checkpoint}: no such directory")
        run = (args.config, args.checkpoint, args.step, benchmarks)
        if args.work_dir is not None:
            result = evaluate_checkpoint(*run, args.work_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="benchmarks-") as work:
                result = evaluate_checkpoint(*run, Path(work))
        print(write_result(result, args.out))
    except (BenchmarkError, OSError) as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
