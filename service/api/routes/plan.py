"""/v1/plan: what a spec will cost and whether it fits, before anything is stored or launched."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Request

from service.admission import PlanReport, plan_spec
from service.api.auth import ViewerDep
from service.api.deps import SessionDep
from service.api.routes.jobs import SPEC_BODY, SPEC_RESPONSES
from service.api.spec_body import handle_spec
from service.scaling.laws import current_fit, plan_prediction

router = APIRouter(tags=["plan"])


@router.post("/plan", response_model=PlanReport, openapi_extra=SPEC_BODY, responses=SPEC_RESPONSES)
async def plan(
    request: Request,
    principal: ViewerDep,
    session: SessionDep,
    gpus: Annotated[int | None, Query(ge=1, le=10_000_000, description="For the inverse question: tokens seen by this many GPUs in `days`.")] = None,
    days: Annotated[float | None, Query(gt=0, le=36_500, description="Wall-clock days those GPUs run.")] = None,
    token_budget: Annotated[int | None, Query(ge=1, le=2**53, description="Tokens to train; default: the spec's.")] = None,
    deadline_days: Annotated[float | None, Query(gt=0, le=36_500, description="For the inverse question: GPUs needed to train `token_budget` by then.")] = None,
) -> PlanReport:
    """Parameters, memory per GPU, FLOPs, time and advice for a spec (JSON or YAML), and what the
    saved scaling law predicts for it; stores nothing."""
    report = await handle_spec(
        request,
        principal,
        partial(plan_spec, settings=request.app.state.settings, gpus=gpus, days=days, token_budget=token_budget, deadline_days=deadline_days),
    )
    return report.model_copy(update={"scaling": plan_prediction(current_fit(session), report)})
