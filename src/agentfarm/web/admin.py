"""Administration over the API, admins' bearer tokens only: cockpit users (`agentfarm user`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from agentfarm.web import identity
from agentfarm.web.auth import require_admin_token

USER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"

router = APIRouter(prefix="/api/admin", dependencies=[Depends(require_admin_token)], tags=["admin"])


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=USER_NAME, description="Login name.")
    password: str = Field(..., min_length=8, max_length=1024)
    admin: bool = Field(False, description="Administers users and sees every API token.")


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(..., min_length=8, max_length=1024)


class RoleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    admin: bool = Field(..., description="Administers users and sees every API token.")


class UserOut(BaseModel):
    name: str
    created_at: datetime
    admin: bool


@router.post("/users", status_code=201, response_model=UserOut)
async def create_user(body: UserIn, request: Request) -> UserOut:
    user = await identity.users(request).create_user(
        body.name, await identity.hash_password(body.password), admin=body.admin
    )
    return UserOut(name=user.name, created_at=user.created_at, admin=user.is_admin)


@router.get("/users", response_model=list[UserOut])
async def list_users(request: Request) -> list[UserOut]:
    found = await identity.users(request).list_users()
    return [UserOut(name=u.name, created_at=u.created_at, admin=u.is_admin) for u in found]


@router.put("/users/{name}/password", status_code=204)
async def set_password(
    name: Annotated[str, Path(pattern=USER_NAME)], body: PasswordIn, request: Request
) -> Response:
    await identity.users(request).set_password(name, await identity.hash_password(body.password))
    return Response(status_code=204)


@router.put("/users/{name}/role", status_code=204)
async def set_role(
    name: Annotated[str, Path(pattern=USER_NAME)], body: RoleIn, request: Request
) -> Response:
    await identity.users(request).set_admin(name, body.admin)
    return Response(status_code=204)


@router.delete("/users/{name}", status_code=204)
async def delete_user(name: Annotated[str, Path(pattern=USER_NAME)], request: Request) -> Response:
    await identity.users(request).delete_user(name)
    return Response(status_code=204)
