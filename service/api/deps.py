"""Dependencies injected into handlers through `Annotated` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from service.controller.backends import LogReader
from service.db.session import get_sessionmaker
from service.settings import Settings
from service.tasks import Notifier

# Ids are database bigints; a larger number cannot name anything and must not reach the driver.
MAX_ID = 2**63 - 1
# Every route and dependency that takes a job id takes this one, so the OpenAPI document states
# one set of bounds for the path parameter.
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="Job id.")]


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_notifier(request: Request) -> Notifier:
    return request.app.state.notifier


NotifierDep = Annotated[Notifier, Depends(get_notifier)]


def get_log_reader(request: Request) -> LogReader | None:
    """The backend whose workloads' logs the API serves; None where it cannot read them."""
    return request.app.state.log_reader


LogReaderDep = Annotated[LogReader | None, Depends(get_log_reader)]
