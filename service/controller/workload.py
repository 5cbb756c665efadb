"""One builder for what an attempt runs, used by the controller at launch and by submit.

`build_workload` turns a stored job (spec, derived, plan) and one attempt's particulars into the
backend-neutral `Workload` (or `TokenizerWorkload`); `render_for_backend` renders it the way the
installed backend will (PyTorchJob manifests on Kubernetes; the local backend runs the trainer
config as built). Submit renders attempt 0 once with placeholders (`render_problems`), so a spec
that validates but cannot be launched is refused then, naming the field, instead of failing at
launch; the controller treats any render error at launch as permanent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.controller.manifests import (
    REVIEW_JOB_ID,
    REVIEW_TOKEN,
    TokenizerWorkload,
    Workload,
    render_manifests,
    render_tokenizer_manifests,
)
from service.controller.tokenizer_config import render_tokenizer_config
from service.controller.trainer_config import render_trainer_config
from service.settings import Settings
from service.spec import TOKENIZER_KIND, Problem


def build_workload(
    *,
    job_id: int,
    job_name: str,
    kind: str,
    spec: Mapping[str, Any],
    derived: Mapping[str, Any],
    plan: Mapping[str, Any] | None,
    attempt: int,
    resume_from: str | None,
    skip_ranges: Sequence[Sequence[int]],
    lr_scale: float,
    ingest_token: str | None,
    settings: Settings,
) -> Workload | TokenizerWorkload:
    """The attempt's workload; ValueError (often a `RenderError` naming the field) if it cannot be."""
    resources = spec["resources"]
    if kind == TOKENIZER_KIND:
        return TokenizerWorkload(
            job_id=job_id,
            job_name=job_name,
            attempt=attempt,
            tokenizer_config=render_tokenizer_config(
                job_id=job_id, job_name=job_name, spec=spec, settings=settings
            ),
            ingest_token=ingest_token,
            ingest_url=settings.ingest_url,
            cpu=resources["cpu"],
            memory_gib=resources["memory_gib"],
        )
    return Workload(
        job_id=job_id,
        job_name=job_name,
        attempt=attempt,
        trainer_config=render_trainer_config(
            job_id=job_id,
            job_name=job_name,
            spec=spec,
            derived=derived,
            plan=plan,
            attempt=attempt,
            resume_from=resume_from,
            skip_ranges=skip_ranges,
            lr_scale=lr_scale,
            ingest_token=ingest_token,
            settings=settings,
        ),
        ingest_token=ingest_token,
        nodes=resources["nodes"],
        gpus_per_node=resources["gpus_per_node"],
        gpu_type=resources["gpu_type"],
        gpu_memory_gib=resources.get("gpu_memory_gib"),
    )


def render_for_backend(workload: Workload | TokenizerWorkload, settings: Settings) -> None:
    """Render the workload as the installed backend will; ValueError if it cannot."""
    if settings.backend != "kubernetes":
        return  # the local backend writes the config as built and runs it
    if isinstance(workload, TokenizerWorkload):
        render_tokenizer_manifests(workload, settings)
    else:
        render_manifests(workload, settings)


def render_problems(
    *,
    job_name: str,
    kind: str,
    spec: Mapping[str, Any],
    derived: Mapping[str, Any],
    plan: Mapping[str, Any] | None,
    settings: Settings,
) -> list[Problem]:
    """Why attempt 0 of a validated spec could not be launched on this service; [] if it can."""
    try:
        workload = build_workload(
            job_id=REVIEW_JOB_ID,
            job_name=job_name,
            kind=kind,
            spec=spec,
            derived=derived,
            plan=plan,
            attempt=0,
            resume_from=None,
            skip_ranges=[],
            lr_scale=1.0,
            ingest_token=REVIEW_TOKEN,
            settings=settings,
        )
        render_for_backend(workload, settings)
    except ValueError as exc:
        return [Problem(loc=list(getattr(exc, "loc", [])), msg=f"cannot be launched here: {exc}")]
    return []
