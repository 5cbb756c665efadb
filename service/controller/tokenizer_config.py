"""Render the tokenizer library's job config (`trainer.tokenizer.job`) from a stored tokenizer job.

Like the trainer config, the JSON is the contract with the trainer image, so this module never
imports `trainer`. Paths are resolved here, where the settings are known: corpora relative to
the data root (the data volume), `options.base` relative to the checkpoint root (where
tokenizer jobs write theirs), and the output is `<checkpoint_root>/<name>-<id>/tokenizer`.
Options left unset are left out, so the library's own defaults apply.
"""

from __future__ import annotations

import posixpath
from typing import Any

from service.db.models import Job
from service.settings import Settings
from service.spec import EMBEDDED_CORPUS_PREFIXES, TokenizerJobSpec

OUTPUT_FOLDER = "tokenizer"


def tokenizer_output_dir(job_id: int, job_name: str, settings: Settings) -> str:
    """Where a tokenizer job writes: its own folder on the checkpoint volume."""
    if not settings.checkpoint_root:
        raise ValueError("settings.checkpoint_root is not set; tokenizer jobs write there")
    return f"{settings.checkpoint_root.rstrip('/')}/{job_name}-{job_id}/{OUTPUT_FOLDER}"


def render_tokenizer_config(job: Job, settings: Settings) -> dict[str, Any]:
    """The `run_tokenizer_job` config of a stored tokenizer job, from its typed spec."""
    spec = job.spec
    if not isinstance(spec, TokenizerJobSpec):
        raise TypeError(f"job {job.id} is a {spec.kind} job, not a tokenizer job")
    if job.id < 0:
        raise ValueError(f"job_id must not be negative, got {job.id}")
    # Unset options are left out, so the library's own defaults apply.
    options = spec.options.model_dump(mode="json", exclude_none=True)
    if "base" in options:
        options["base"] = _under(settings.checkpoint_root or "", options["base"])
    if "report_corpora" in options:
        # By name: Postgres (JSONB) gives a stored mapping back in its own key order, and the
        # config a launch renders from the stored job must be the one its review showed.
        options["report_corpora"] = {
            name: corpus_path(corpus, settings)
            for name, corpus in sorted(options["report_corpora"].items())
        }
    return {
        "mode": spec.mode,
        "corpora": [corpus_path(corpus, settings) for corpus in spec.corpora],
        "out": tokenizer_output_dir(job.id, job.name, settings),
        **options,
    }


def corpus_path(corpus: str, settings: Settings) -> str:
    """An embedded corpus as it is; a path absolute, or under the data root."""
    if corpus.startswith(EMBEDDED_CORPUS_PREFIXES):
        return corpus
    return _under(settings.data_root, corpus)


def _under(root: str, path: str) -> str:
    if posixpath.isabs(path):
        return path
    return posixpath.join(root.rstrip("/") or "/", path)
