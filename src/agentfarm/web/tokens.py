"""Named API tokens over the API (`agentfarm user token`): create (the secret is answered once),
list, revoke. A token belongs to a user and acts with its scopes bounded by that user's role;
nobody grants a scope they do not have themselves."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentfarm.domain import errors, models
from agentfarm.domain import scopes as scoping
from agentfarm.store.users import ApiToken, User
from agentfarm.web import identity
from agentfarm.web.admin import USER_NAME
from agentfarm.web.auth import check_bearer

Who = Annotated[identity.Principal, Depends(check_bearer)]
router = APIRouter(prefix="/api/tokens", tags=["tokens"], dependencies=[Depends(check_bearer)])
TOKEN_ID = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="The token's id.")]


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
    scopes: list[scoping.Scope] | None = Field(
        None,
        description="What the token may do; each scope includes the lower ones (read < operate "
        "< admin), always bounded by its user's role. Default: all that role allows, now and "
        "after a role change (if the caller has all of it; else the caller's own scopes).",
    )
    expires_days: int | None = Field(
        None,
        ge=1,
        le=3650,
        description="Days until it expires; none: it does not expire.",
    )
    user: str | None = Field(
        None, pattern=USER_NAME, description="Whose token (admins only); default: the caller's."
    )

    @field_validator("expires_days", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        # A JSON number, as the schema says (1.0 is one); not "6" or true.
        if isinstance(value, bool | str):
            raise ValueError("expires_days is a number of days, such as 30")
        return value


class TokenOut(BaseModel):
    id: str
    name: str
    user: str
    scopes: list[scoping.Scope] = Field(
        ..., description="What it may do now: its scopes bounded by its user's current role."
    )
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(..., description="The secret: shown in this answer only.")


def _out(token: ApiToken) -> TokenOut:
    role = scoping.role_scopes(token.user_is_admin)
    return TokenOut(
        id=token.id, name=token.name, user=token.user_name,
        scopes=[s for s in scoping.ORDER if s in token.scopes & role], created_at=token.created_at,
        last_used_at=token.last_used_at, expires_at=token.expires_at,
    )  # fmt: skip


def grant(
    who: identity.Principal, owner: User, requested: list[scoping.Scope] | None
) -> frozenset[scoping.Scope]:
    """The scopes a new token of ``owner`` gets: what was asked for; refused beyond the
    caller's scopes or the owner's role. By default every scope, so that the token does what its
    user's role allows even after the role changes; but never more than the caller has."""
    role = scoping.role_scopes(owner.is_admin)
    if requested is None:
        return scoping.ALL if role <= who.scopes else role & who.scopes
    wanted = scoping.closure(requested)
    beyond = wanted - who.scopes
    if beyond:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"you cannot grant the `{scoping.highest(beyond)}` scope: you do not have it "
            f"yourself (you have {scoping.dump(who.scopes) or 'none'})",
        )
    if wanted - role:
        raise errors.InvalidInputError(
            f"{owner.name} is not an admin, so their token cannot have the "
            f"`{scoping.highest(wanted - role)}` scope; choose {scoping.dump(role)}"
        )
    return wanted


async def _owner(request: Request, who: identity.Principal, name: str | None) -> User:
    store = identity.users(request)
    if name is not None:
        if not who.admin:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "only an admin creates tokens for another user; leave out `user` for your own",
            )
        user = await store.get_user(name)
        if user is None:
            raise errors.NotFoundError(f"no user named {name!r}; `agentfarm user ls` lists them")
        return user
    own = await store.get_user_by_id(who.user_id) if who.user_id else None
    if own is None:
        raise errors.InvalidInputError(
            "API tokens belong to a cockpit user and this caller has no account (the primary "
            "token): name one with `user` (`--user NAME`)"
        )
    return own


@router.post("", status_code=201, response_model=TokenCreated)
async def create_token(body: TokenIn, request: Request, who: Who) -> TokenCreated:
    """A new token; its secret is in this answer only (the server keeps a hash)."""
    owner = await _owner(request, who, body.user)
    granted = grant(who, owner, body.scopes)
    expires = models.utcnow() + timedelta(days=body.expires_days) if body.expires_days else None
    secret = "afn_" + identity.new_secret()
    made = await identity.users(request).create_token(
        body.name, secret, owner, created_by=who.name, expires_at=expires, granted=granted
    )
    return TokenCreated(**_out(made).model_dump(), token=secret)


@router.get("", response_model=list[TokenOut])
async def list_tokens(request: Request, who: Who) -> list[TokenOut]:
    """Admins see every token; other users their own."""
    store = identity.users(request)
    if who.admin:
        found = await store.list_tokens()
    else:
        found = await store.list_tokens(who.user_id) if who.user_id else []
    return [_out(t) for t in found]


@router.delete("/{token_id}", status_code=204)
async def revoke_token(token_id: TOKEN_ID, request: Request, who: Who) -> Response:
    if not who.admin and who.user_id is None:
        raise errors.NotFoundError(f"no API token with id {token_id!r}")
    await identity.users(request).revoke_token(token_id, None if who.admin else who.user_id)
    return Response(status_code=204)
