"""Bearer-token authentication and role checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.deps import JobId, SessionDep
from service.db.models import Role
from service.tokens import Principal, authenticate, is_evaluation_token

bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer pto_…`.")


def get_principal(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = authenticate(
        session,
        token=credentials.credentials,
        admin_token_hash=request.app.state.admin_token_hash,
    )
    # End the lookup's transaction: its connection goes back to the pool instead of waiting,
    # idle in transaction, while a handler does CPU work (a spec parsed and validated).
    session.rollback()
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid or revoked token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(role: Role):
    """A dependency that lets through principals with at least `role`."""

    def check(principal: PrincipalDep) -> Principal:
        if principal.job_id is not None:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "a job token may only report metrics and checkpoints for its own job",
            )
        if not principal.may(role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"role {principal.role.value} may not do this; it needs {role.value} or above",
            )
        return principal

    return check


ViewerDep = Annotated[Principal, Depends(require(Role.VIEWER))]
SubmitterDep = Annotated[Principal, Depends(require(Role.SUBMITTER))]
OncallDep = Annotated[Principal, Depends(require(Role.ONCALL))]
AdminDep = Annotated[Principal, Depends(require(Role.ADMIN))]


def get_job_reporter(job_id: JobId, principal: PrincipalDep) -> Principal:
    """A trainer writing for its own job (its job token), or an admin."""
    if is_evaluation_token(principal):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "an evaluation's token may only report its evaluation"
        )
    if principal.job_id == job_id or (principal.job_id is None and principal.may(Role.ADMIN)):
        return principal
    if principal.job_id is not None:
        detail = f"this token belongs to job {principal.job_id}, not job {job_id}"
    else:
        detail = "only the job's own token (or an admin) may report for it"
    raise HTTPException(status.HTTP_403_FORBIDDEN, detail)


JobReporterDep = Annotated[Principal, Depends(get_job_reporter)]


def get_evaluation_reporter(job_id: JobId, principal: PrincipalDep) -> Principal:
    """An evaluation reporting its scores (its own token), or an admin."""
    if principal.job_id is None and principal.may(Role.ADMIN):
        return principal
    if principal.job_id == job_id and is_evaluation_token(principal):
        return principal
    if principal.job_id is not None and principal.job_id != job_id:
        detail = f"this token belongs to job {principal.job_id}, not job {job_id}"
    else:
        detail = "only an evaluation's own token (or an admin) may report its scores"
    raise HTTPException(status.HTTP_403_FORBIDDEN, detail)


EvaluationReporterDep = Annotated[Principal, Depends(get_evaluation_reporter)]
