"""Liveness and readiness for Kubernetes probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from service import observability
from service.api.deps import SessionDep, SettingsDep
from service.api.schemas import Health
from service.db.migrate import current_revision
from service.db.session import get_engine, get_sessionmaker

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up: answered on the event loop itself, waiting for no worker thread."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(request: Request, session: SessionDep, settings: SettingsDep):
    """The database answers and its schema is at the migrations' head."""
    try:
        session.execute(text("SELECT 1"))
        current = current_revision(get_engine(settings.resolved_database_url))
    except Exception as exc:  # any failure to reach the database means not ready
        return JSONResponse(
            Health(status="unavailable", detail=f"database unreachable: {type(exc).__name__}").model_dump(),
            status_code=503,
        )
    head = request.app.state.schema_head
    if current != head:
        detail = f"database schema at {current or 'nothing'}, expected {head}; run `pretrainctl db upgrade`"
        return JSONResponse(Health(status="unavailable", detail=detail).model_dump(), status_code=503)
    return Health(status="ok")


@router.get("/metrics", response_class=PlainTextResponse, include_in_schema=True)
def prometheus(settings: SettingsDep) -> PlainTextResponse:
    """Prometheus exposition: job states, live jobs' channel loss and PPL, verdicts, rollbacks."""
    body = observability.exposition(get_sessionmaker(settings.resolved_database_url))
    return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)
