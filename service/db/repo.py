"""Queries as functions; each takes the session first and everything else by keyword."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, selectinload

from service.db.models import (
    ApiToken,
    Attempt,
    AttemptReason,
    Checkpoint,
    Event,
    Job,
    MetricPoint,
    Role,
    utcnow,
)
from service.db.session import lock_for_write
from service.errors import NotFound
from service.jobspec import SPEC_VERSION

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    count: int
    next_cursor: int | None


def keyset_page(
    session: Session,
    query: Select[tuple[T]],
    *,
    key: Any,
    after: int | None,
    limit: int,
    newest_first: bool = False,
) -> Page[T]:
    """One page of `query` ordered on the unique `key` column, starting past `after`.

    Keyset, not offset: rows that arrive meanwhile never shift a page. `count` is over all
    pages; `next_cursor` is the key of the page's last row, or None on the last page.
    """
    counting = query.with_only_columns(func.count(), maintain_column_froms=True).order_by(None)
    count = session.scalar(counting) or 0
    if after is not None:
        query = query.where(key < after if newest_first else key > after)
    ordered = query.order_by(key.desc() if newest_first else key)
    rows = session.scalars(ordered.limit(limit + 1)).all()
    next_cursor = getattr(rows[limit - 1], key.key) if len(rows) > limit else None
    return Page(items=rows[:limit], count=count, next_cursor=next_cursor)


def add_job(
    session: Session,
    *,
    name: str,
    kind: str,
    owner: str,
    spec: dict[str, Any],
    spec_hash: str,
    derived: dict[str, Any],
    warnings: list[Any],
    plan: dict[str, Any] | None = None,
) -> Job:
    job = Job(
        name=name,
        kind=kind,
        owner=owner,
        spec_document=spec,
        spec_version=SPEC_VERSION,
        spec_hash=spec_hash,
        derived=derived,
        warnings=warnings,
        plan=plan,
        attempts=[],  # a loaded empty collection: adding attempt 0 then costs no SELECT
    )
    session.add(job)
    session.flush()
    return job


def add_attempt(
    session: Session,
    *,
    job: Job,
    number: int,
    reason: AttemptReason,
    resume_from_checkpoint_id: int | None = None,
    skip_ranges: list[Any] | None = None,
    lr_scale: float = 1.0,
) -> Attempt:
    attempt = Attempt(
        job=job,
        number=number,
        reason=reason,
        resume_from_checkpoint_id=resume_from_checkpoint_id,
        skip_ranges=skip_ranges or [],
        lr_scale=lr_scale,
    )
    session.add(attempt)
    session.flush()
    return attempt


def get_job(session: Session, *, job_id: int, for_update: bool = False) -> Job:
    """The job with its attempts, or NotFound; `for_update` locks the row until commit.

    A locked read is re-read fresh, attempts included, even if the session holds the job from
    an earlier read: what it decides on must be what the lock protects, not what was seen before.
    """
    query = select(Job).where(Job.id == job_id).options(selectinload(Job.attempts))
    if for_update:
        lock_for_write(session)
        query = query.with_for_update(key_share=True).execution_options(populate_existing=True)
    job = session.scalars(query).one_or_none()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def lock_job_if_free(session: Session, *, job_id: int) -> Job | None:
    """The job, its row locked until commit (read fresh); None if it is gone or another session holds it."""
    lock_for_write(session)
    query = (
        select(Job)
        .where(Job.id == job_id)
        .options(selectinload(Job.attempts))
        .with_for_update(skip_locked=True, key_share=True)
        .execution_options(populate_existing=True)
    )
    return session.scalars(query).one_or_none()


def find_active_job_by_name(session: Session, *, name: str, active_states: Sequence[str]) -> Job | None:
    query = select(Job).where(Job.name == name, Job.state.in_(active_states))
    return session.scalars(query).first()


def list_jobs(
    session: Session,
    *,
    states: Sequence[str] = (),
    owner: str | None = None,
    name: str | None = None,
    cursor: int | None = None,
    limit: int,
) -> Page[Job]:
    """Newest first, keyset-paginated on id so pages stay stable while jobs arrive."""
    filters = []
    if states:
        filters.append(Job.state.in_(states))
    if owner is not None:
        filters.append(Job.owner == owner)
    if name is not None:
        filters.append(Job.name == name)
    query = select(Job).where(*filters).options(selectinload(Job.attempts))
    return keyset_page(session, query, key=Job.id, after=cursor, limit=limit, newest_first=True)


def add_event(
    session: Session,
    *,
    kind: str,
    actor: str,
    job_id: int | None = None,
    attempt: int | None = None,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    event = Event(
        kind=kind, actor=actor, job_id=job_id, attempt=attempt, reason=reason, data=data or {}
    )
    session.add(event)
    session.flush()
    return event


def list_events(
    session: Session, *, job_id: int, after: int | None = None, limit: int
) -> Page[Event]:
    """Oldest first, so a follower can poll with `after` = the last id it saw."""
    query = select(Event).where(Event.job_id == job_id)
    return keyset_page(session, query, key=Event.id, after=after, limit=limit)


def add_token(
    session: Session,
    *,
    name: str,
    role: Role,
    token_hash: str,
    prefix: str,
    created_by: str,
    job_id: int | None = None,
    attempt: int | None = None,
) -> ApiToken:
    token = ApiToken(
        name=name,
        role=role.value,
        token_hash=token_hash,
        prefix=prefix,
        created_by=created_by,
        job_id=job_id,
        attempt=attempt,
    )
    session.add(token)
    session.flush()
    return token


def find_active_token(session: Session, *, token_hash: str) -> ApiToken | None:
    query = select(ApiToken).where(ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None))
    return session.scalars(query).one_or_none()


def active_job_tokens(session: Session, *, job_id: int, attempt: int | None = None) -> Sequence[ApiToken]:
    """Unrevoked tokens scoped to the job (to one attempt of it, when `attempt` is given).

    An evaluation's token (`tokens.evaluation_token_name`) is not among them: it outlives the
    job's end, and its evaluation revokes it.
    """
    query = select(ApiToken).where(
        ApiToken.job_id == job_id,
        ApiToken.revoked_at.is_(None),
        ApiToken.name.not_like(f"job-{job_id}-eval-s%"),
    )
    if attempt is not None:
        query = query.where(ApiToken.attempt == attempt)
    return session.scalars(query.order_by(ApiToken.id)).all()


def active_tokens_named(session: Session, *, job_id: int, name: str) -> Sequence[ApiToken]:
    """Unrevoked tokens of the job by name (an evaluation's: `job-<id>-eval-s<step>`)."""
    query = select(ApiToken).where(
        ApiToken.job_id == job_id, ApiToken.name == name, ApiToken.revoked_at.is_(None)
    )
    return session.scalars(query.order_by(ApiToken.id)).all()


def list_tokens(session: Session) -> Sequence[ApiToken]:
    return session.scalars(select(ApiToken).order_by(ApiToken.id)).all()


def revoke_token(session: Session, *, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"token {token_id} not found")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    session.flush()
    return token


def add_checkpoint(
    session: Session,
    *,
    job_id: int,
    attempt: int,
    step: int,
    tokens: int,
    path: str,
    meta: dict[str, Any],
) -> Checkpoint:
    checkpoint = Checkpoint(
        job_id=job_id, attempt=attempt, step=step, tokens=tokens, path=path, verified=True, meta=meta
    )
    session.add(checkpoint)
    session.flush()
    return checkpoint


def find_checkpoint(session: Session, *, job_id: int, attempt: int, step: int) -> Checkpoint | None:
    query = select(Checkpoint).where(
        Checkpoint.job_id == job_id, Checkpoint.attempt == attempt, Checkpoint.step == step
    )
    return session.scalars(query).one_or_none()


def list_checkpoints(session: Session, *, job_id: int) -> Sequence[Checkpoint]:
    query = select(Checkpoint).where(Checkpoint.job_id == job_id)
    return session.scalars(query.order_by(Checkpoint.step, Checkpoint.attempt)).all()


def metric_points(
    session: Session,
    *,
    job_id: int,
    names: Sequence[str] = (),
    attempt: int | None = None,
    min_step: int | None = None,
    max_step: int | None = None,
    limit: int,
) -> Sequence[MetricPoint]:
    query = select(MetricPoint).where(MetricPoint.job_id == job_id)
    if names:
        query = query.where(MetricPoint.name.in_(names))
    if attempt is not None:
        query = query.where(MetricPoint.attempt == attempt)
    if min_step is not None:
        query = query.where(MetricPoint.step >= min_step)
    if max_step is not None:
        query = query.where(MetricPoint.step <= max_step)
    query = query.order_by(MetricPoint.name, MetricPoint.step, MetricPoint.attempt).limit(limit)
    return session.scalars(query).all()


def job_events(session: Session, *, job_id: int, kind: str) -> Sequence[Event]:
    query = select(Event).where(Event.job_id == job_id, Event.kind == kind).order_by(Event.id)
    return session.scalars(query).all()
