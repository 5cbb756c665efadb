"""/v1/tokens: admins mint and revoke API tokens; anyone may ask who they are."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from service import tokens
from service.api.auth import AdminDep, ViewerDep
from service.api.deps import MAX_ID, SessionDep
from service.api.schemas import PrincipalPublic, TokenCreate, TokenCreated, TokenPublic
from service.db import repo

router = APIRouter(tags=["tokens"])


@router.post("/tokens", status_code=status.HTTP_201_CREATED, response_model=TokenCreated)
def create_token(body: TokenCreate, session: SessionDep, principal: AdminDep) -> TokenCreated:
    """Mint a token; its secret is in this response and nowhere else."""
    token, value = tokens.mint_token(session, name=body.name, role=body.role, created_by=principal.name)
    return TokenCreated(**TokenPublic.model_validate(token).model_dump(), token=value)


@router.get("/tokens", response_model=list[TokenPublic])
def list_tokens(session: SessionDep, _: AdminDep) -> list[TokenPublic]:
    """Every token, without secrets."""
    return [TokenPublic.model_validate(t) for t in repo.list_tokens(session)]


@router.delete("/tokens/{token_id}", response_model=TokenPublic, responses={404: {"description": "No such token."}})
def revoke_token(token_id: Annotated[int, Path(ge=1, le=MAX_ID)], session: SessionDep, principal: AdminDep) -> TokenPublic:
    """Revoke a token; requests with it get 401 from now on."""
    return TokenPublic.model_validate(tokens.revoke_token(session, token_id=token_id, actor=principal.name))


@router.get("/whoami", response_model=PrincipalPublic)
def whoami(principal: ViewerDep) -> PrincipalPublic:
    """The principal behind the token sent."""
    return PrincipalPublic(name=principal.name, role=principal.role)
