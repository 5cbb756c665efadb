"""API tokens: minted once, shown once, stored only as a SHA-256."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy.orm import Session

from service.db import repo
from service.db.models import ApiToken, Role

TOKEN_PREFIX = "pto_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a named token with a role, optionally scoped to one job."""

    name: str
    role: Role
    token_id: int | None = None
    job_id: int | None = None
    attempt: int | None = None  # a trainer's token speaks for this attempt of `job_id` only

    def may(self, required: Role) -> bool:
        return self.role.allows(required)


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a fast unsalted hash is enough to make a leaked table useless.
    return hashlib.sha256(token.encode()).hexdigest()


def new_token_value() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def mint_token(
    session: Session,
    *,
    name: str,
    role: Role,
    created_by: str,
    job_id: int | None = None,
    attempt: int | None = None,
    commit: bool = True,
) -> tuple[ApiToken, str]:
    """Store a new token with its audit event and return it with its one-time plaintext.

    `commit=False` leaves it in the caller's transaction (the controller's reconcile).
    """
    value = new_token_value()
    token = repo.add_token(
        session,
        name=name,
        role=role,
        token_hash=hash_token(value),
        prefix=value[: len(TOKEN_PREFIX) + 6],
        created_by=created_by,
        job_id=job_id,
        attempt=attempt,
    )
    repo.add_event(
        session,
        kind="token.created",
        actor=created_by,
        job_id=job_id,
        attempt=attempt,
        data={"token_id": token.id, "name": name, "role": role.value},
    )
    if commit:
        session.commit()
    return token, value


def revoke_token(session: Session, *, token_id: int, actor: str) -> ApiToken:
    token = repo.revoke_token(session, token_id=token_id)
    repo.add_event(
        session, kind="token.revoked", actor=actor, job_id=token.job_id, data={"token_id": token_id}
    )
    session.commit()
    return token


def revoke_attempt_tokens(
    session: Session,
    *,
    job_id: int,
    attempt: int | None,
    actor: str,
    reason: str,
    keep: int | None = None,
) -> list[int]:
    """Revoke the active tokens of one attempt of a job (every attempt's: `attempt` None), but
    `keep`; each with its audit event, in the caller's transaction. The ids revoked."""
    revoked = []
    for token in repo.active_job_tokens(session, job_id=job_id, attempt=attempt):
        if token.id == keep:
            continue
        repo.revoke_token(session, token_id=token.id)
        repo.add_event(
            session,
            kind="token.revoked",
            actor=actor,
            job_id=job_id,
            attempt=token.attempt,
            reason=reason,
            data={"token_id": token.id},
        )
        revoked.append(token.id)
    return revoked


def authenticate(session: Session, *, token: str, admin_token_hash: str | None) -> Principal | None:
    """The principal behind a bearer token, or None when it is unknown or revoked."""
    digest = hash_token(token)
    if admin_token_hash is not None and secrets.compare_digest(digest, admin_token_hash):
        return Principal(name="admin", role=Role.ADMIN)
    stored = repo.find_active_token(session, token_hash=digest)
    if stored is None:
        return None
    return Principal(
        name=stored.name,
        role=Role(stored.role),
        token_id=stored.id,
        job_id=stored.job_id,
        attempt=stored.attempt,
    )


def evaluation_token_name(job_id: int, step: int) -> str:
    """What an evaluation's token is called (`repo.active_job_tokens` leaves such names out)."""
    return f"job-{job_id}-eval-s{step}"


def is_evaluation_token(principal: Principal) -> bool:
    """Whether the principal is an evaluation's token: it may report that evaluation only."""
    return (
        principal.job_id is not None
        and principal.attempt is None
        and principal.name.startswith(f"job-{principal.job_id}-eval-s")
    )


def mint_evaluation_token(session: Session, *, job_id: int, step: int, actor: str) -> str:
    """A token that reports the scores of one evaluation of the job and nothing else (scoped to
    the job with no attempt), replacing any earlier one of the same evaluation; its plaintext.
    The caller commits before any workload holds it."""
    revoke_evaluation_tokens(session, job_id=job_id, step=step, actor=actor, reason="replaced")
    _, value = mint_token(
        session,
        name=evaluation_token_name(job_id, step),
        role=Role.VIEWER,
        created_by=actor,
        job_id=job_id,
        commit=False,
    )
    return value


def revoke_evaluation_tokens(
    session: Session, *, job_id: int, step: int, actor: str, reason: str
) -> None:
    """Revoke the tokens of one evaluation, each with its event, in the caller's transaction."""
    for token in repo.active_tokens_named(
        session, job_id=job_id, name=evaluation_token_name(job_id, step)
    ):
        repo.revoke_token(session, token_id=token.id)
        repo.add_event(
            session,
            kind="token.revoked",
            actor=actor,
            job_id=job_id,
            reason=reason,
            data={"token_id": token.id, "evaluation_step": step},
        )
