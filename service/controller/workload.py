"""One builder for what an attempt runs: the controller at launch, submit and the review.

`build_workload` turns a job row (its typed spec, derivation and plan) and one of its attempts
into the backend-neutral `Workload` (or `TokenizerWorkload`, `DataWorkload`). The review
(`manifests.render_for_review`) builds through it too, from an `unsaved_job`, so what it shows
is what the controller launches. `render_for_backend` renders a workload the way the installed
backend will (its PyTorchJob or TrainJob manifests on Kubernetes; the local backend runs the
trainer config as built). Submit renders attempt 0 once with placeholders (`render_problems`),
so a spec that validates but cannot be launched is refused then, naming the field, instead of
failing at launch; the controller treats any render error at launch as permanent.
"""

from __future__ import annotations

from typing import Any

from service.checkpoints import job_directory
from service.controller.data_config import render_data_config
from service.controller.manifests import (
    REVIEW_JOB_ID,
    REVIEW_TOKEN,
    DataWorkload,
    EvaluationWorkload,
    TokenizerWorkload,
    Workload,
)
from service.controller.tokenizer_config import render_tokenizer_config
from service.controller.trainer_config import (
    data_path,
    render_trainer_config,
    termination_grace_s,
)
from service.db.models import Attempt, Job
from service.jobspec import SPEC_VERSION
from service.settings import Settings
from service.spec import DataJobSpec, Problem, TokenizerJobSpec


def build_workload(
    job: Job,
    attempt: Attempt,
    settings: Settings,
    *,
    resume_from: str | None = None,
    ingest_token: str | None = None,
) -> Workload | TokenizerWorkload | DataWorkload:
    """The attempt's workload; ValueError (often a `RenderError` naming the field) if it cannot be.

    `resume_from` is the path of the attempt's resume checkpoint (a stored path the caller looks
    up); `ingest_token` is minted at launch, so the controller fills it in afterwards.
    """
    spec = job.spec
    if isinstance(spec, TokenizerJobSpec):
        return TokenizerWorkload(
            job_id=job.id,
            job_name=job.name,
            attempt=attempt.number,
            tokenizer_config=render_tokenizer_config(job, settings),
            ingest_token=ingest_token,
            ingest_url=settings.ingest_url,
            cpu=spec.resources.cpu,
            memory_gib=spec.resources.memory_gib,
        )
    if isinstance(spec, DataJobSpec):
        return DataWorkload(
            job_id=job.id,
            job_name=job.name,
            attempt=attempt.number,
            data_config=render_data_config(job, attempt.number, settings),
            ingest_token=ingest_token,
            ingest_url=settings.ingest_url,
            cpu=spec.resources.cpu,
            memory_gib=spec.resources.memory_gib,
        )
    return Workload(
        job_id=job.id,
        job_name=job.name,
        attempt=attempt.number,
        trainer_config=render_trainer_config(
            job, attempt, settings, resume_from=resume_from, ingest_token=ingest_token
        ),
        ingest_token=ingest_token,
        nodes=spec.resources.nodes,
        gpus_per_node=spec.resources.gpus_per_node,
        gpu_type=spec.resources.gpu_type,
        gpu_memory_gib=spec.resources.gpu_memory_gib,
        env_secrets=(spec.data.credentials_secret,) if spec.data.credentials_secret else (),
        queue=spec.resources.queue,
        priority=spec.resources.priority,
        termination_grace_s=termination_grace_s(job),
    )


def build_evaluation_workload(
    job: Job, *, step: int, checkpoint: str, settings: Settings, ingest_token: str | None
) -> EvaluationWorkload:
    """The workload that scores the checkpoint at `step` (its stored path) on the job's
    benchmarks; ValueError if the job's config cannot be rendered."""
    spec = job.pretrain_spec
    evaluation = spec.evaluation
    benchmarks = [
        {
            "task": benchmark.task,
            "path": data_path(
                benchmark.path, settings, loc=["evaluation", "benchmarks", i, "path"]
            ),
            "num_fewshot": benchmark.num_fewshot,
            "limit": benchmark.limit,
        }
        for i, benchmark in enumerate(evaluation.benchmarks)
    ]
    # The newest attempt's config: the model's shape, which `trainer.export` reads, is the same
    # in every attempt.
    trainer_config = render_trainer_config(
        job, job.attempts[-1], settings, resume_from=None, ingest_token=None
    )
    return EvaluationWorkload(
        job_id=job.id,
        job_name=job.name,
        step=step,
        trainer_config=trainer_config,
        checkpoint=checkpoint,
        benchmarks=benchmarks,
        output_dir=f"{job_directory(job.id, job.name, settings)}/evaluations/step-{step}",
        ingest_token=ingest_token,
        ingest_url=settings.ingest_url,
        cpu=evaluation.resources.cpu,
        memory_gib=evaluation.resources.memory_gib,
        gpus=evaluation.resources.gpus,
        env_secrets=(spec.data.credentials_secret,) if spec.data.credentials_secret else (),
    )


def unsaved_job(
    *,
    name: str,
    kind: str,
    spec: dict[str, Any],
    derived: dict[str, Any],
    plan: dict[str, Any] | None,
    job_id: int = REVIEW_JOB_ID,
) -> Job:
    """A job row as submit stores it, never added to a session (by default under the placeholder id).

    The review and submit's launch check render through it, so they read the spec back exactly
    as the controller will from the stored row.
    """
    return Job(
        id=job_id,
        name=name,
        kind=kind,
        spec_document=spec,
        spec_version=SPEC_VERSION,
        derived=derived,
        plan=plan,
    )


def unsaved_attempt(number: int = 0) -> Attempt:
    """An attempt as a launch opens it (no skipped data, the schedule's own LR), not stored."""
    return Attempt(number=number, skip_ranges=[], lr_scale=1.0)


def render_for_backend(
    workload: Workload | TokenizerWorkload | DataWorkload, settings: Settings
) -> None:
    """Render the workload as the installed backend will; ValueError if it cannot."""
    if settings.backend != "kubernetes":
        return  # the local backend writes the config as built and runs it
    # The backend's own table (a PyTorchJob or a TrainJob, per install), imported here: it loads
    # the Kubernetes models, which only this path needs, and it imports this module's package.
    from service.controller.backends.kubernetes.kinds import kind_of, workload_kinds

    kind_of(workload, workload_kinds(settings)).render(workload, settings)


def render_problems(
    *,
    job_name: str,
    kind: str,
    spec: dict[str, Any],
    derived: dict[str, Any],
    plan: dict[str, Any] | None,
    settings: Settings,
) -> list[Problem]:
    """Why attempt 0 of a validated spec could not be launched on this service; [] if it can."""
    job = unsaved_job(name=job_name, kind=kind, spec=spec, derived=derived, plan=plan)
    try:
        workload = build_workload(job, unsaved_attempt(), settings, ingest_token=REVIEW_TOKEN)
        render_for_backend(workload, settings)
    except ValueError as exc:
        return [Problem(loc=list(getattr(exc, "loc", [])), msg=f"cannot be launched here: {exc}")]
    return []
