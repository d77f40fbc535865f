"""Who may see a page: the viewer dependency (signed in, else the login page; with the scope
the page needs, see ``auth.authorize``) and the checked one for state-changing requests (the
browser's CSRF token too)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from agentfarm.web import auth, csrf, identity


class LoginRequiredError(Exception):
    """Raised by page dependencies; answered with a redirect to the login page."""


class CsrfError(Exception):
    """A state-changing page request without this browser's CSRF token; answered with 403."""


def web_key(request: Request) -> bytes:
    """The key CSRF tokens are signed with (kept in the data directory)."""
    key: bytes = request.app.state.web_key
    return key


async def viewer(request: Request) -> identity.Principal:
    principal = await identity.authenticate(request)
    if principal is None:
        raise LoginRequiredError
    auth.authorize(request, principal)
    return principal


Viewer = Annotated[identity.Principal, Depends(viewer)]


async def checked(request: Request, who: Viewer) -> identity.Principal:
    """A state-changing page request: it must carry the CSRF token of this browser."""
    if who.binding is None:  # a bearer token: no ambient credentials, nothing to forge
        return who
    presented = request.headers.get(csrf.HEADER)
    if presented is None:
        form = await request.form()
        value = form.get(csrf.FIELD)
        presented = value if isinstance(value, str) else None
    if not csrf.valid(web_key(request), who.binding, presented):
        raise CsrfError
    return who


Checked = Annotated[identity.Principal, Depends(checked)]
