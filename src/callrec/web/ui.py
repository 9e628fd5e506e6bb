"""The web UI: sign-in, the call list with search, the call card, an interaction's calls and stitch.

Server-rendered with Jinja2; the only scripts are small files under ``/static`` (the picture, copying a
link, local times). Every page reads its data through the API's own route functions, called with the
signed-in key, so the UI shows exactly what the API would and never sees another domain's data. The
UI's audio, pictures and changes live under ``/ui`` and authenticate with the session cookie
(``ui_auth``); changes are POSTs of forms carrying the session's CSRF token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, Header, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from callrec.api import interactions as interactions_api
from callrec.api import links as links_api
from callrec.api import picture as picture_api
from callrec.api import recordings as recordings_api
from callrec.api.deps import Principal, ServiceDep, get_ctx, principal_of, source_address, throttle
from callrec.api.handlers import status_of
from callrec.db import queries
from callrec.errors import ServiceError
from callrec.web import ui_pages
from callrec.web.ui_auth import check_change, check_origin, sign_in, sign_out, viewer
from callrec.web.ui_pages import call_view, calls_view, interaction_view, remember_new_link, render, safe_back

router = APIRouter(include_in_schema=False)
STATIC_DIR = Path(__file__).parent / "static"
Short = Annotated[str | None, Query(max_length=300)]
Csrf = Annotated[str | None, Form(max_length=200)]


def mount(app: FastAPI) -> None:
    """Serve the UI's stylesheet and scripts at ``/static`` (the public link page uses them too)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _signin_redirect(request: Request) -> RedirectResponse:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/signin?next={quote(here, safe='')}", status_code=303)


def _need(request: Request) -> Principal:
    """The signed-in key, for the UI's audio, pictures and changes; 401 without a session."""
    found = viewer(request)
    if found is None:
        raise ServiceError("sign in first: the session is missing, expired or its key was revoked", 401)
    return found


# --- signing in and out ----------------------------------------------------------------------------


@router.get("/")
@router.get("/ui")
def home() -> RedirectResponse:
    return RedirectResponse("/ui/calls", status_code=303)


@router.get("/ui/signin")
def signin_form(request: Request, next: Short = None) -> Response:
    if viewer(request) is not None:
        return RedirectResponse(safe_back(next), status_code=303)
    return render(request, "signin.html", None, next=safe_back(next))


@router.post("/ui/signin")
def signin(
    request: Request,
    key: Annotated[str, Form(max_length=1000)] = "",
    next: Annotated[str | None, Form(max_length=1000)] = None,
) -> Response:
    check_origin(request)
    ctx = get_ctx(request)
    guard, source = throttle(request), source_address(request)
    wait = guard.retry_after(source)
    if wait:
        answer = render(request, "signin.html", None, status=429, next=safe_back(next),
                        error=f"Too many wrong keys from this address; try again in {wait} s.")  # fmt: skip
        answer.headers["Retry-After"] = str(wait)
        return answer
    secret = key.strip()
    found = None
    may_read = False
    if secret and len(secret) <= 200 and secret.isascii():
        with ctx.sessions() as s:
            row = queries.key_by_secret(s, secret)
            if row is not None:
                found, may_read = row.id, principal_of(row).has(queries.READ)
    if found is None:
        guard.failed(source)
        return render(request, "signin.html", None, status=401, next=safe_back(next),
                      error="That API key is not valid (unknown or revoked).")  # fmt: skip
    if not may_read:
        return render(request, "signin.html", None, status=403, next=safe_back(next),
                      error="That API key lacks the 'read' scope the web UI needs.")  # fmt: skip
    response = RedirectResponse(safe_back(next), status_code=303)
    sign_in(request, response, found)
    return response


@router.post("/ui/signout")
def signout(request: Request, csrf: Csrf = None) -> Response:
    if viewer(request) is not None:
        check_change(request, csrf)
    response = RedirectResponse("/ui/signin", status_code=303)
    sign_out(request, response)
    return response


# --- pages -----------------------------------------------------------------------------------------


@router.get("/ui/calls")
def calls_page(
    request: Request,
    service: ServiceDep,
    since: Short = None,
    until: Short = None,
    tz: Short = None,
    number: Short = None,
    direction: Short = None,
    state: Short = None,
    interaction: Short = None,
    call_id: Short = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    principal = viewer(request)
    if principal is None:
        return _signin_redirect(request)
    filters = {"since": since, "until": until, "tz": tz, "number": number, "direction": direction,
               "state": state, "interaction": interaction, "call_id": call_id}  # fmt: skip
    return calls_view(request, service, principal, filters, cursor)


@router.get("/ui/calls/{call_id}")
def call_page(call_id: str, request: Request, service: ServiceDep) -> Response:
    principal = viewer(request)
    if principal is None:
        return _signin_redirect(request)
    return call_view(request, service, principal, call_id)


# --- audio and pictures ----------------------------------------------------------------------------


@router.get("/ui/recordings/{recording_id}/audio")
def recording_audio(
    recording_id: str,
    request: Request,
    service: ServiceDep,
    format: Literal["mp3", "wav"] | None = None,
    range_header: Annotated[str | None, Header(alias="range", max_length=200)] = None,
) -> Response:
    return recordings_api.get_audio(recording_id, service, _need(request), format, range_header)


@router.get("/ui/recordings/{recording_id}/picture")
def recording_picture(recording_id: str, request: Request, service: ServiceDep) -> dict[str, Any]:
    return ui_pages.with_voices(picture_api.get_recording_picture(recording_id, service, _need(request)))


@router.get("/ui/interactions/{interaction_id:path}/stitched/audio")
def stitched_audio(
    interaction_id: str,
    request: Request,
    service: ServiceDep,
    domain: Short = None,
    range_header: Annotated[str | None, Header(alias="range", max_length=200)] = None,
) -> Response:
    return interactions_api.get_stitched_audio(interaction_id, service, _need(request), domain, range_header)


@router.get("/ui/interactions/{interaction_id:path}/picture")
def stitched_picture(interaction_id: str, request: Request, service: ServiceDep, domain: Short = None) -> Response:
    answer = picture_api.get_interaction_picture(interaction_id, service, _need(request), domain)
    if answer.status_code != 200:
        return answer
    return JSONResponse(ui_pages.with_voices(json.loads(bytes(answer.body))))


# --- changes: links and stitches -------------------------------------------------------------------


def _link_in(expires_in_s: str | None, download_only: str | None) -> links_api.LinkIn:
    text = (expires_in_s or "").strip()
    if text and not text.isdigit():
        raise ServiceError("the expiry must be a whole number of seconds", 422)
    return links_api.LinkIn(expires_in_s=int(text) if text else None, download_only=bool(download_only))


@router.post("/ui/recordings/{recording_id}/links")
def create_recording_link(
    recording_id: str,
    request: Request,
    service: ServiceDep,
    csrf: Csrf = None,
    expires_in_s: Annotated[str | None, Form(max_length=20)] = None,
    download_only: Annotated[str | None, Form(max_length=10)] = None,
) -> Response:
    principal = _need(request)
    check_change(request, csrf)
    with service.ctx.sessions() as s:
        call_id = recordings_api.find_recording(s, principal, recording_id).call_id
    try:
        made = links_api.create_recording_link(
            recording_id, request, service, principal, _link_in(expires_in_s, download_only)
        )
    except ServiceError as exc:
        return call_view(request, service, principal, call_id, error=str(exc), status=status_of(exc))
    response = RedirectResponse(f"/ui/calls/{call_id}#links", status_code=303)
    remember_new_link(request, response, made)
    return response


@router.post("/ui/interactions/{interaction_id:path}/links")
def create_interaction_link(
    interaction_id: str,
    request: Request,
    service: ServiceDep,
    domain: Short = None,
    csrf: Csrf = None,
    expires_in_s: Annotated[str | None, Form(max_length=20)] = None,
    download_only: Annotated[str | None, Form(max_length=10)] = None,
) -> Response:
    principal = _need(request)
    check_change(request, csrf)
    try:
        made = links_api.create_interaction_link(
            interaction_id, request, service, principal, _link_in(expires_in_s, download_only), domain
        )
    except ServiceError as exc:
        return interaction_view(
            request, service, principal, interaction_id, domain, error=str(exc), status=status_of(exc)
        )
    query = f"?domain={quote(domain)}" if domain else ""
    response = RedirectResponse(f"/ui/interactions/{quote(interaction_id, safe='')}{query}#links", status_code=303)
    remember_new_link(request, response, made)
    return response


@router.post("/ui/links/{link_id}/revoke")
def revoke_link(
    link_id: str,
    request: Request,
    service: ServiceDep,
    csrf: Csrf = None,
    back: Annotated[str | None, Form(max_length=1000)] = None,
) -> Response:
    principal = _need(request)
    check_change(request, csrf)
    links_api.revoke_link(link_id, service, principal)
    return RedirectResponse(safe_back(back), status_code=303)


@router.post("/ui/interactions/{interaction_id:path}/stitched")
def remake_stitch(
    interaction_id: str, request: Request, service: ServiceDep, domain: Short = None, csrf: Csrf = None
) -> Response:
    principal = _need(request)
    check_change(request, csrf)
    interactions_api.remake_stitched(interaction_id, request, service, principal, domain)
    back = f"/ui/interactions/{quote(interaction_id, safe='')}" + (f"?domain={quote(domain)}" if domain else "")
    return RedirectResponse(back, status_code=303)


# last: an interaction id may hold "/", so this route must not shadow the ones above
@router.get("/ui/interactions/{interaction_id:path}")
def interaction_page(interaction_id: str, request: Request, service: ServiceDep, domain: Short = None) -> Response:
    principal = viewer(request)
    if principal is None:
        return _signin_redirect(request)
    return interaction_view(request, service, principal, interaction_id, domain)
