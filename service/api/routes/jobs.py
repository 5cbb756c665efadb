"""/v1/jobs: submit, read, list, cancel, and the audit log."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from service import attempts, checkpoints, data_accounting, goodput, jobs, progress
from service.api.auth import JobReporterDep, OncallDep, SubmitterDep, ViewerDep
from service.api.deps import MAX_ID, JobId, NotifierDep, SessionDep, SettingsDep
from service.api.schemas import (
    NO_NUL,
    ActionReason,
    AttemptPublic,
    EventsPublic,
    GoodputCategory,
    GoodputPublic,
    JobPublic,
    JobResultReport,
    JobsPublic,
)
from service.api.spec_body import ACCEPTED_TYPES, handle_spec
from service.db import repo
from service.db.models import JobState

router = APIRouter(prefix="/jobs", tags=["jobs"])

SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {t: {"schema": {"$ref": "#/components/schemas/JobSpec"}} for t in ACCEPTED_TYPES[:2]},
    }
}
# What the spec routes answer besides the statuses every route shares (app.COMMON_RESPONSES).
SPEC_RESPONSES: dict[int | str, dict] = {
    413: {"description": "The spec is larger than its content type's cap."},
    415: {"description": f"The body is not a spec: accepted types are {', '.join(ACCEPTED_TYPES)}."},
    422: {
        "description": "The spec is invalid, too big or deep once parsed, or took longer than the request budget.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
    },
    429: {"description": "This principal sent specs faster than its rate limit; see Retry-After."},
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    openapi_extra=SPEC_BODY,
    responses={**SPEC_RESPONSES, 409: {"description": "A job with this name is still active."}},
)
async def submit_job(
    request: Request, session: SessionDep, settings: SettingsDep, notifier: NotifierDep, principal: SubmitterDep
) -> JobPublic:
    """Validate a job spec (JSON or YAML), store it with attempt 0, and return it."""
    # Admitted before the database is touched: authentication has already given its connection
    # back, so no connection waits on a spec being parsed and validated.
    submission = await handle_spec(request, principal, partial(jobs.admit_submission, settings=settings))
    job = await run_in_threadpool(_store, session, submission, principal)
    notifier.job_changed(job.id, "submitted")
    return job


def _store(session, submission, principal) -> JobPublic:
    return public_job(session, jobs.store_submission(session, submission, principal=principal))


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    _: ViewerDep,
    state: Annotated[list[JobState] | None, Query(description="Keep jobs in these states.")] = None,
    owner: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None,
    name: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_ID, description="`next_cursor` of the previous page.")] = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Page size, capped by the server.")] = None,
) -> JobsPublic:
    """Jobs, newest first."""
    page = repo.list_jobs(
        session,
        states=[s.value for s in state or ()],
        owner=owner,
        name=name,
        cursor=cursor,
        limit=_page_size(settings, limit),
    )
    latest = progress.latest_rows(session, [j.id for j in page.items])
    return JobsPublic(
        data=[public_job(session, j, latest[j.id]) for j in page.items],
        count=page.count,
        next_cursor=page.next_cursor,
    )


@router.get("/{job_id}", response_model=JobPublic, responses={404: {"description": "No such job."}})
def get_job(job_id: JobId, session: SessionDep, _: ViewerDep) -> JobPublic:
    """One job with its attempts, derived fields, plan and progress."""
    return public_job(session, repo.get_job(session, job_id=job_id))


@router.get("/{job_id}/goodput", response_model=GoodputPublic, responses={404: {"description": "No such job."}})
def get_job_goodput(job_id: JobId, session: SessionDep, _: ViewerDep) -> GoodputPublic:
    """Where the job's wall time went (productive, lost, checkpoint, startup, queued, stalled, other)."""
    job = repo.get_job(session, job_id=job_id)
    result = goodput.job_goodput(session, job)
    plan = job.memory_plan
    fractions = result.fractions
    return GoodputPublic(
        job_id=job.id,
        state=job.state,
        started_at=result.started_at,
        ended_at=result.ended_at,
        wall_s=result.wall_s,
        goodput=result.ratio,
        categories={name: GoodputCategory(seconds=value, fraction=fractions[name]) for name, value in result.seconds.items()},
        lost_steps=result.lost_steps,
        planned_training_s=plan.compute.days * 86_400 if plan is not None else None,
        realised_training_s=result.seconds["productive"],
    )


def public_job(session, job, latest: dict | None = None) -> JobPublic:
    """The job as the API shows it, with its progress (from `latest` rows when read for a page)."""
    public = JobPublic.model_validate(job)
    if latest is None:
        latest = progress.latest_rows(session, [job.id])[job.id]
    public.progress = progress.progress(job, latest)
    return public


@router.get(
    "/{job_id}/data",
    response_model=data_accounting.JobDataAccount,
    responses={404: {"description": "No such job."}, 409: {"description": "Not a pretraining job: it trains on no data."}},
)
def get_job_data(job_id: JobId, session: SessionDep, _: ViewerDep) -> data_accounting.JobDataAccount:
    """Tokens per data channel: planned over the run, expected by the newest step, consumed as the trainer reported."""
    return data_accounting.account(session, repo.get_job(session, job_id=job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={404: {"description": "No such job."}, 409: {"description": "Already finished or cancelling."}},
)
def cancel_job(
    job_id: JobId,
    session: SessionDep,
    notifier: NotifierDep,
    principal: SubmitterDep,
    body: Annotated[ActionReason | None, Body()] = None,
) -> JobPublic:
    """Stop a job: at once if nothing runs yet, else through the controller."""
    return _act(jobs.cancel_job, "cancel", job_id, session, notifier, principal, body)


@router.post(
    "/{job_id}/pause",
    response_model=JobPublic,
    responses={404: {"description": "No such job."}, 409: {"description": "Finished or already paused."}},
)
def pause_job(
    job_id: JobId,
    session: SessionDep,
    notifier: NotifierDep,
    principal: OncallDep,
    body: Annotated[ActionReason | None, Body()] = None,
) -> JobPublic:
    """Stop the workload, keep the job (on-call); `resume` continues from the newest checkpoint."""
    return _act(attempts.pause_job, "pause", job_id, session, notifier, principal, body)


@router.post(
    "/{job_id}/resume",
    response_model=JobPublic,
    responses={404: {"description": "No such job."}, 409: {"description": "The job is not paused."}},
)
def resume_job(
    job_id: JobId,
    session: SessionDep,
    notifier: NotifierDep,
    principal: OncallDep,
    body: Annotated[ActionReason | None, Body()] = None,
) -> JobPublic:
    """Open a new attempt of a paused job from its newest good checkpoint (on-call)."""
    return _act(attempts.resume_job, "resume", job_id, session, notifier, principal, body)


@router.get("/{job_id}/attempts", response_model=list[AttemptPublic], responses={404: {"description": "No such job."}})
def list_attempts(job_id: JobId, session: SessionDep, _: ViewerDep) -> list[AttemptPublic]:
    """The job's attempts, oldest first, with why each was opened."""
    return [AttemptPublic.model_validate(a) for a in repo.get_job(session, job_id=job_id).attempts]


@router.get("/{job_id}/events", response_model=EventsPublic, responses={404: {"description": "No such job."}})
def list_events(
    job_id: JobId,
    session: SessionDep,
    settings: SettingsDep,
    _: ViewerDep,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Only events with a larger id.")] = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Page size, capped by the server.")] = None,
) -> EventsPublic:
    """The job's audit log, oldest first."""
    repo.get_job(session, job_id=job_id)
    page = repo.list_events(session, job_id=job_id, after=after, limit=_page_size(settings, limit))
    return EventsPublic(data=page.items, count=page.count, next_cursor=page.next_cursor)


@router.post(
    "/{job_id}/result",
    response_model=JobPublic,
    responses={404: {"description": "No such job."}, 409: {"description": "Not a tokenizer or data job, finished, or another attempt's."}},
)
def report_result(
    job_id: JobId, body: JobResultReport, session: SessionDep, settings: SettingsDep, principal: JobReporterDep
) -> JobPublic:
    """Store what a tokenizer or data job made (its own token): the path it wrote and its report."""
    job = repo.get_job(session, job_id=job_id)
    if (problem := checkpoints.report_path_problem(body.path, checkpoints.job_directory(job.id, job.name, settings))) is not None:
        # The result is what a later job's `options.base`, `tokenizer.path` or data source reads:
        # this job's own.
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "path"), "msg": problem, "input": body.path}]
        )
    job = jobs.record_result(session, job_id=job_id, actor=principal.name, **body.model_dump())
    return public_job(session, job)


def _act(action, change: str, job_id: int, session, notifier, principal, body: ActionReason | None) -> JobPublic:
    """Run a state change with its reason, then have the job reconciled at once."""
    job = action(session, job_id=job_id, principal=principal, reason=body.reason if body else None)
    notifier.job_changed(job.id, f"{change}-{job.updated_at.timestamp()}")
    return public_job(session, job)


def _page_size(settings, limit: int | None) -> int:
    return min(limit or settings.default_page_size, settings.max_page_size)

