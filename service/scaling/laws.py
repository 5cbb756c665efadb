"""Saved fits: `?save=true` stores one; the newest is the law `POST /v1/plan` predicts with."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from service.db.models import ScalingFitRecord
from service.db.session import get_engine, get_sessionmaker
from service.planner import Plan
from service.scaling.models import ScalingFit
from service.scaling.predict import ScalingPrediction, predict


class SavedFit(BaseModel):
    id: int
    source: str
    created_by: str
    created_at: datetime
    fit: ScalingFit


def save_fit(session: Session, *, fit: ScalingFit, source: str, actor: str) -> SavedFit:
    """Store `fit` as the install's current law, in one transaction."""
    record = ScalingFitRecord(
        source=source, runs=len(fit.runs), fit=fit.model_dump(mode="json"), created_by=actor
    )
    session.add(record)
    session.commit()
    return _saved(record)


def current_fit(session: Session) -> SavedFit | None:
    """The newest saved fit; None when none was saved."""
    record = session.scalars(
        select(ScalingFitRecord).order_by(ScalingFitRecord.id.desc()).limit(1)
    ).first()
    return None if record is None else _saved(record)


def saved_fit_in(url: str) -> SavedFit | None:
    """The current law in the database at `url` (for `pretrainctl plan`, which plans without the
    API); None where there is none yet: no SQLite file, or a schema not migrated to it."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None  # connecting would create an empty file
    if not inspect(get_engine(url)).has_table(ScalingFitRecord.__tablename__):
        return None
    with get_sessionmaker(url)() as session:
        return current_fit(session)


def _saved(record: ScalingFitRecord) -> SavedFit:
    return SavedFit(
        id=record.id,
        source=record.source,
        created_by=record.created_by,
        created_at=record.created_at,
        fit=ScalingFit.model_validate(record.fit),
    )


def plan_prediction(saved: SavedFit | None, plan: Plan) -> ScalingPrediction | None:
    """The saved law's figures for a plan's budget C = 6·N·D (the planner's), or None without a law."""
    if saved is None:
        return None
    compute = plan.compute
    return predict(
        saved.fit,
        flops=compute.flops_6nd,
        tokens=compute.tokens,
        fit_id=saved.id,
        fitted_at=saved.created_at,
    )
