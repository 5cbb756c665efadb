"""Render the trainer's data preparation config (`trainer.prepare.run_data_job`) from a data job.

Like the trainer config, the JSON is the contract with the trainer image, so this module never
imports `trainer`. Paths are resolved here, where the settings are known: inputs relative to
the data root (the data volume), a tokenizer path relative to the checkpoint root (where
tokenizer jobs write theirs), and the output is `<checkpoint_root>/<name>-<id>/data/<output>`:
the checkpoint volume, which trainer pods mount writable (the data volume is read-only there),
inside the job's own directory, where its reported result must lie.
"""

from __future__ import annotations

import posixpath
from typing import Any

from service.controller.tokenizer_config import corpus_path
from service.db.models import Job
from service.settings import Settings
from service.spec import DataJobSpec

OUTPUT_FOLDER = "data"


def data_output_prefix(job_id: int, job_name: str, output: str, settings: Settings) -> str:
    """The prefix a data job writes its pair to: `<checkpoint_root>/<name>-<id>/data/<output>`."""
    if not settings.checkpoint_root:
        raise ValueError("settings.checkpoint_root is not set; data jobs write there")
    return f"{settings.checkpoint_root.rstrip('/')}/{job_name}-{job_id}/{OUTPUT_FOLDER}/{output}"


def render_data_config(job: Job, attempt: int, settings: Settings) -> dict[str, Any]:
    """The `run_data_job` config of a stored data job's attempt, from its typed spec."""
    spec = job.spec
    if not isinstance(spec, DataJobSpec):
        raise TypeError(f"job {job.id} is a {spec.kind} job, not a data job")
    if job.id < 0:
        raise ValueError(f"job_id must not be negative, got {job.id}")
    tokenizer = spec.tokenizer
    if tokenizer != "byte":
        root = (settings.checkpoint_root or "").rstrip("/") or "/"
        tokenizer = tokenizer if posixpath.isabs(tokenizer) else posixpath.join(root, tokenizer)
    return {
        "inputs": [corpus_path(source, settings) for source in spec.inputs],
        "output": data_output_prefix(job.id, job.name, spec.output, settings),
        "tokenizer": tokenizer,
        "text_field": spec.text_field,
        "workers": spec.workers or spec.resources.cpu,
        # Progress goes where a trainer's metrics go; the token comes from the environment.
        "job": {"id": str(job.id), "attempt": attempt},
        "metrics": {"url": settings.ingest_url},
    }
