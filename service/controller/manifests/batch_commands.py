"""What a tokenizer or data attempt (or a checkpoint's evaluation) runs, wherever it runs: its
command, its config file, its labels.

Apart from `batch_job` (which renders them as Kubernetes objects) so that the local backend, which
runs the same command, needs no Kubernetes client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from service.controller.manifests.workloads import (
    CONFIG_DIR,
    BatchWorkload,
    DataWorkload,
    EvaluationWorkload,
)

TOKENIZER_CONTAINER_NAME = "tokenizer"
TOKENIZER_CONFIG_FILE = "tokenizer.json"
TOKENIZER_CONFIG_PATH = f"{CONFIG_DIR}/{TOKENIZER_CONFIG_FILE}"
RESULT_FILE = "result.json"
TOKENIZER_LABELS = {"app.kubernetes.io/name": "pretrain-tokenizer", "pretrain.io/kind": "tokenizer"}
# A finished Job (and its pod, with the log) stays this long for a post-mortem; the controller
# needs it only until it has seen how it ended, which takes seconds unless it is down for days.
TOKENIZER_TTL_AFTER_FINISHED_S = 7 * 24 * 3600
# Run the job keeping its result JSON beside the tokenizer, then report that result; each value
# is a positional parameter, so no path or URL is ever parsed by the shell.
_TOKENIZER_SCRIPT = (
    'set -e; mkdir -p "$3"; '
    '"$1" -m trainer.tokenizer.cli job "$2" > "$3/result.json.tmp"; '
    'mv "$3/result.json.tmp" "$3/result.json"; '
    'exec "$1" -m trainer.job_result "$3/result.json" --url "$4" --job "$5" --attempt "$6"'
)
DATA_CONTAINER_NAME = "data"
DATA_CONFIG_FILE = "data.json"
DATA_CONFIG_PATH = f"{CONFIG_DIR}/{DATA_CONFIG_FILE}"
DATA_LABELS = {"app.kubernetes.io/name": "pretrain-data", "pretrain.io/kind": "data"}
# The same, running the trainer's data preparation (`trainer.prepare`), which prints its result.
_DATA_SCRIPT = (
    'set -e; mkdir -p "$3"; '
    '"$1" -m trainer.prepare --config "$2" > "$3/result.json.tmp"; '
    'mv "$3/result.json.tmp" "$3/result.json"; '
    'exec "$1" -m trainer.job_result "$3/result.json" --url "$4" --job "$5" --attempt "$6"'
)


@dataclass(frozen=True)
class _BatchKind:
    """What differs between the batch workloads: what they are called and what they run."""

    what: str
    container: str
    config_file: str
    labels: dict[str, str]
    script: str


_TOKENIZER = _BatchKind(
    "tokenizer", TOKENIZER_CONTAINER_NAME, TOKENIZER_CONFIG_FILE, TOKENIZER_LABELS, _TOKENIZER_SCRIPT
)
_DATA = _BatchKind("data", DATA_CONTAINER_NAME, DATA_CONFIG_FILE, DATA_LABELS, _DATA_SCRIPT)


def batch_kind(workload: BatchWorkload) -> _BatchKind:
    return _DATA if isinstance(workload, DataWorkload) else _TOKENIZER


def batch_config_file(workload: BatchWorkload) -> str:
    """The file name of the workload's config (`tokenizer.json`, `data.json`)."""
    return batch_kind(workload).config_file


def batch_config_json(workload: BatchWorkload) -> str:
    """The workload's config as its file holds it."""
    return json.dumps(workload.config, indent=2) + "\n"


def batch_command(workload: BatchWorkload, *, python: str, config_path: str) -> list[str]:
    """The batch workload's command: run its job, keep its result, report it to the API.

    It exits 0 only once the service has taken the result, so a succeeded workload always has
    its result on record; the local backend runs the same command with its own Python.
    """
    kind = batch_kind(workload)
    return [
        "sh",
        "-c",
        kind.script,
        f"{kind.what}-job",
        python,
        config_path,
        workload.output_dir,
        workload.ingest_url,
        str(workload.job_id),
        str(workload.attempt),
    ]


EVALUATION_CONTAINER_NAME = "evaluation"
EVALUATION_CONFIG_FILE = "trainer.json"
EVALUATION_BENCHMARKS_FILE = "benchmarks.json"
EVALUATION_LOG = "evaluation.log"
EVALUATION_LABELS = {"app.kubernetes.io/name": "pretrain-evaluation", "pretrain.io/kind": "evaluation"}
# Score the checkpoint (contract B: `trainer.benchmarks` exports it to Hugging Face format and
# runs lm-eval; it writes result.json atomically), then report the scores.
_EVALUATION_SCRIPT = (
    'set -e; mkdir -p "$3"; '
    '"$1" -m trainer.benchmarks --config "$2/' + EVALUATION_CONFIG_FILE + '" --checkpoint "$4" '
    '--step "$5" --benchmarks "$2/' + EVALUATION_BENCHMARKS_FILE + '" --out "$3/result.json"; '
    'exec "$1" -m trainer.evaluation_report "$3/result.json" --url "$6" --job "$7" --step "$5"'
)


def evaluation_config_files(workload: EvaluationWorkload) -> dict[str, str]:
    """The files an evaluation reads from its config folder: the training run's config and the
    benchmarks, by file name."""
    return {
        EVALUATION_CONFIG_FILE: json.dumps(workload.trainer_config, indent=1) + "\n",
        EVALUATION_BENCHMARKS_FILE: json.dumps(workload.benchmarks, indent=1) + "\n",
    }


def evaluation_command(workload: EvaluationWorkload, *, python: str, config_dir: str) -> list[str]:
    """The evaluation's command: score, keep result.json, report it (exit 0 only once the
    service took it); the local backend runs the same with its own Python and folder."""
    return [
        "sh",
        "-c",
        _EVALUATION_SCRIPT,
        "evaluation-job",
        python,
        config_dir,
        workload.output_dir,
        workload.checkpoint,
        str(workload.step),
        workload.ingest_url,
        str(workload.job_id),
    ]
