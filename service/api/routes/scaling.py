"""/v1/scaling: fit the compute-optimal scaling law over posted runs or finished jobs, and save
it as the law plans predict with."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.api.auth import ViewerDep
from service.api.deps import SessionDep
from service.db.models import Role
from service.scaling import FitRefused, Run, ScalingFit, fit_scaling
from service.scaling.laws import SavedFit, current_fit, save_fit
from service.scaling.runs import SkippedJob, runs_from_finished_jobs
from service.tokens import Principal

router = APIRouter(prefix="/scaling", tags=["scaling"])

# A sweep is tens of runs; this bounds the fit's work, and a list this long stays under the
# request body cap (PRETRAIN_MAX_REQUEST_BYTES), so it is refused with a 422, not a 413.
MAX_RUNS = 2_000
SAVE = Annotated[
    bool,
    Query(
        description="Store the fit as the install's current law (submitter or above); plans then predict with it."
    ),
]


class FitRequest(BaseModel):
    """Either the runs themselves (a CSV's rows) or `{"jobs": "finished"}`."""

    model_config = ConfigDict(extra="forbid")

    runs: Annotated[list[Run], Field(max_length=MAX_RUNS)] | None = Field(
        None, description="Runs to fit."
    )
    jobs: Literal["finished"] | None = Field(
        None, description="Fit over this install's succeeded pretraining jobs."
    )
    task: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        None,
        description='With "jobs": the benchmark task whose scores feed the benchmark predictor '
        "(default: the only task the jobs were scored on).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> FitRequest:
        if (self.runs is None) == (self.jobs is None):
            raise ValueError('give either "runs" or "jobs": "finished"')
        if self.task is not None and self.jobs is None:
            raise ValueError('"task" picks finished jobs\' benchmark scores: give it with "jobs"')
        return self


class SavedRef(BaseModel):
    id: int
    created_at: str


class FitResponse(ScalingFit):
    """The fit, where its runs came from, the jobs left out, and the saved law's id if saved."""

    source: Literal["runs", "jobs"]
    skipped: list[SkippedJob] = Field(
        description="Finished jobs left out of a fit over jobs, and why."
    )
    saved: SavedRef | None = Field(description="The stored law (with ?save=true); null otherwise.")


class Refusal(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class FitRefusals(BaseModel):
    """A 422: one problem per invalid run field, or per group that cannot be fitted."""

    detail: list[Refusal]


FIT_RESPONSES: dict[int | str, dict] = {
    422: {
        "model": FitRefusals,
        "description": "A run is invalid (the field and why), or the runs cannot be fitted (which group and why).",
    }
}


@router.post("/fit", response_model=FitResponse, responses=FIT_RESPONSES)
def fit(
    body: FitRequest, session: SessionDep, principal: ViewerDep, save: SAVE = False
) -> FitResponse:
    """Iso-FLOP groups, N*(C) = A·C^alpha with 95% intervals, L*(C), and the benchmark steps."""
    if body.runs is None:
        return _fit(session, principal, source="jobs", runs=None, save=save, task=body.task)
    return _fit(session, principal, source="runs", runs=body.runs, save=save)


@router.get("/fit", response_model=FitResponse, responses=FIT_RESPONSES)
def fit_finished_jobs(
    session: SessionDep,
    principal: ViewerDep,
    task: Annotated[
        str | None,
        Query(min_length=1, max_length=64, description="The benchmark task for the predictor."),
    ] = None,
) -> FitResponse:
    """The fit over this install's finished jobs (POST with `{"jobs": "finished"}` to save it)."""
    return _fit(session, principal, source="jobs", runs=None, save=False, task=task)


@router.get(
    "/fits/current", response_model=SavedFit, responses={404: {"description": "No law is saved."}}
)
def current(session: SessionDep, _: ViewerDep) -> SavedFit:
    """The law `POST /v1/plan` predicts with: the newest saved fit."""
    saved = current_fit(session)
    if saved is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, "no scaling law is saved: POST /v1/scaling/fit?save=true"
        )
    return saved


def _fit(
    session: SessionDep,
    principal: Principal,
    *,
    source: Literal["runs", "jobs"],
    runs: list[Run] | None,
    save: bool,
    task: str | None = None,
) -> FitResponse:
    """Fit (and save); a refused fit is a 422 naming each group and why, and any job left out."""
    if save and not principal.may(Role.SUBMITTER):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"{principal.name} may fit but not save a law: that takes a submitter",
        )
    skipped: list[SkippedJob] = []
    warnings: list[str] = []
    if runs is None:
        collected = runs_from_finished_jobs(session, task=task)
        runs, skipped, warnings = collected.runs, collected.skipped, collected.warnings
    try:
        fitted = fit_scaling(runs)
    except FitRefused as refused:
        detail = [
            {"loc": ["body", *p.loc], "msg": p.msg, "type": "value_error"} for p in refused.problems
        ]
        detail += [
            {"loc": ["jobs", s.job_id], "msg": f"left out: {s.reason}", "type": "value_error"}
            for s in skipped
        ]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail) from refused
    fitted = fitted.model_copy(update={"warnings": warnings + fitted.warnings})
    saved = save_fit(session, fit=fitted, source=source, actor=principal.name) if save else None
    return FitResponse(
        **fitted.model_dump(),
        source=source,
        skipped=skipped,
        saved=SavedRef(id=saved.id, created_at=saved.created_at.isoformat()) if saved else None,
    )
