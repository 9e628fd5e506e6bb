"""What a public link opens, without an API key: ``/r/{token}`` (a page), its audio and its picture.

Every answer carries ``no-store``, ``no-referrer`` and ``noindex``: the token is the only secret, so it
must not linger in caches, leak to other sites in a Referer, or land in a search engine. No page may be
framed by another site (``X-Frame-Options: DENY``, ``frame-ancestors 'none'``) and nothing is sniffed
(``nosniff``); the app adds these to every ``/r/`` answer, errors included. Each route answers ``HEAD``
too, which is never counted as a use. A link's ``uses`` counts what a person would (``counts_as_use``):
each opening of the page and each download, never the player's requests or the picture. A browser
(``Accept: text/html``) gets an HTML error page, anything else the API's JSON ``{"detail"}``; an
unknown or revoked link is 404 and an expired one 410, decided after the same hash and lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, PackageLoader
from sqlalchemy import select

from callrec.api.audio import recording_response
from callrec.api.deps import ServiceDep
from callrec.api.handlers import status_of
from callrec.api.interactions import stitch_response
from callrec.api.picture import recording_picture, stitch_picture
from callrec.db.engine import transaction
from callrec.db.schema import COMPLETED, DELETED, FAILED, Call, Party, Recording, Stitch
from callrec.errors import NotFound, ServiceError, StorageError
from callrec.service import links
from callrec.service import stitches as stitching
from callrec.service.context import Context
from callrec.service.pipeline import Service
from callrec.web.ui_pages import with_voices

public_router = APIRouter(tags=["public links"])
PUBLIC_HEADERS = {
    "Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex",
    "X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}  # fmt: skip
# how soon a client should ask again for a stitch that is still being made
RETRY_AFTER_S = 5
ROLES = {"caller": "Caller", "callee": "Callee", "participant": "Participant"}
_templates = Environment(loader=PackageLoader("callrec", "web/templates"), autoescape=True)


class Pending(ServiceError):
    """The stitched recording is still being made: 409 with Retry-After."""

    def __init__(self) -> None:
        super().__init__("the recording of this conversation is still being prepared; try again shortly", 409)


@dataclass
class Opened:
    """A link that resolved, with what it points at (loaded in the same transaction)."""

    link_id: str
    kind: str
    download_only: bool
    expires_at: datetime
    domain_id: int
    target_id: str
    recording: Recording | None = None
    stitch: Stitch | None = None
    calls: list[Call] = field(default_factory=list)


# whether a request is a use, given whether the link is download-only: True adds one, False only
# notes the time, None writes nothing
UseRule = Callable[[bool], bool | None]


def open_link(service: Service, token: str, *, count: bool | None | UseRule, audio: bool = False) -> Opened:
    """Resolve ``token`` and load its target; ``count`` True/False notes a use (one write), None none;
    a function decides from whether the link is download-only.

    With ``audio`` the target must be playable now (a stitch made), else nothing is noted.
    """
    ctx = service.ctx
    with transaction(ctx.sessions) as s:
        link = links.resolve(s, ctx, token)
        opened = Opened(link.id, link.kind, link.download_only, link.expires_at, link.domain_id, link.target_id)
        if link.kind == links.RECORDING:
            rec = s.get(Recording, link.target_id)
            if rec is None or rec.domain_id != link.domain_id or rec.state == DELETED:
                raise ServiceError("the recording was deleted", 410)
            if rec.state != COMPLETED:
                raise ServiceError(f"the recording is {rec.state}", 409)
            opened.recording, opened.calls = rec, [rec.call]
        else:
            where = (Call.domain_id == link.domain_id, Call.interaction_id == link.target_id)
            opened.calls = list(s.scalars(select(Call).where(*where).order_by(Call.started_at, Call.id)))
            stitch_where = (Stitch.domain_id == link.domain_id, Stitch.interaction_id == link.target_id)
            opened.stitch = s.scalar(select(Stitch).where(*stitch_where))
            if audio:
                _stitch(opened)
        noted = count(link.download_only) if callable(count) else count
        if noted is not None:
            links.record_use(s, ctx, link, count=noted)
        return opened


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _answer(request: Request, work: Callable[[], Response]) -> Response:
    """``work()``'s response, or the error it raised as an HTML page or JSON; always with PUBLIC_HEADERS."""
    headers: dict[str, str] = {}
    try:
        response = work()
    except ServiceError as exc:
        status, message = status_of(exc), str(exc)
        if isinstance(exc, Pending):
            headers["Retry-After"] = str(RETRY_AFTER_S)
    except StorageError:
        status, message = 503, "the recording cannot be reached at the moment; try again later"
    else:
        response.headers.update(PUBLIC_HEADERS)
        return response
    headers |= PUBLIC_HEADERS
    if _wants_html(request):
        page = _templates.get_template("public_error.html").render(status=status, message=message)
        return HTMLResponse(page, status_code=status, headers=headers)
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


# --- what a customer may see ------------------------------------------------------------------------


def clock_text(seconds: float | None) -> str:
    """``m:ss`` (or ``h:mm:ss``) for a duration or a position."""
    if seconds is None:
        return ""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def public_name(party: Party) -> str:
    """A party as a link shows them: the name, or the role when the PBX gave none; never a number."""
    return party.name.strip() or ROLES.get(party.role, "Participant")


def people(calls: list[Call]) -> list[str]:
    """The parties' names, each once."""
    return list(dict.fromkeys(public_name(p) for call in calls for p in call.parties))


def chapters_of(stitch: Stitch, calls: list[Call]) -> list[dict[str, Any]]:
    """The stitch's chapters as the page shows them: where each call starts and the employees in it.

    The stored chapters name people with their numbers (for the API); the page names them again from
    the calls, as ``public_name`` does.
    """
    customer = stitching.customers(calls) if calls else {}
    employees = {c.id: [public_name(p) for p in c.parties if p.label not in customer.get(c.id, ())] for c in calls}
    out = []
    for chapter in stitch.chapters:
        if not isinstance(chapter, dict):
            continue
        start = float(chapter.get("from_s", 0.0))
        who = ", ".join(employees.get(str(chapter.get("call_id", "")), []))
        out.append({"who": who, "from_s": start, "at": clock_text(start)})
    return out


def _filename(opened: Opened, fmt: str) -> str:
    started = opened.calls[0].started_at if opened.calls else None
    stem = "conversation" if opened.kind == links.INTERACTION else "call"
    return f"{stem}-{started:%Y%m%d-%H%M}.{fmt}" if started is not None else f"{stem}.{fmt}"


def page_facts(opened: Opened) -> dict[str, Any]:
    """What the page shows: date, duration, names, chapters; nothing the link does not already name."""
    if opened.recording is not None:
        duration: float | None = opened.recording.duration_s
        ready, failed, chapters = True, False, []
    else:
        stitch = opened.stitch
        if stitch is not None and stitch.state == DELETED:
            raise ServiceError("the recordings of this conversation were deleted", 410)
        ready = stitch is not None and stitch.state == COMPLETED
        failed = stitch is not None and stitch.state == FAILED
        duration = stitch.duration_s if stitch is not None and ready else None
        chapters = chapters_of(stitch, opened.calls) if stitch is not None and ready else []
    started = opened.calls[0].started_at if opened.calls else None
    return {
        "kind": opened.kind,
        "started_at": started,
        "duration": clock_text(duration),
        "people": people(opened.calls),
        "chapters": chapters,
        "ready": ready,
        "failed": failed,
        "download_only": opened.download_only,
        "expires_at": opened.expires_at,
    }


# --- what counts as a use ---------------------------------------------------------------------------


def counts_as_use(range_header: str | None, *, attachment: bool) -> bool:
    """Whether a GET of a link's audio is one use: a download, as a person counts one.

    A download is a GET served as an attachment (``download=1``, or any GET of a download-only link)
    or a GET of the whole file without Range (what curl or wget make), starting at the first byte: a
    download resumed from the middle is the same download. The player's requests, which always carry
    a Range (``bytes=0-`` to start playing, later ones to seek), are not uses; a HEAD is never one.
    """
    if range_header is None or not range_header.strip():
        return True
    return attachment and range_header.replace(" ", "").startswith("bytes=0-")


# --- the routes -------------------------------------------------------------------------------------


@public_router.get("/r/{token}", response_class=HTMLResponse, summary="The page a public link opens")
@public_router.head("/r/{token}", response_class=HTMLResponse, include_in_schema=False)
def link_page(token: str, request: Request, service: ServiceDep, waiting: str = "") -> Response:
    # an opening is one use; the page's own reload while the recording is prepared (``?waiting=1``, see
    # public.html) is no new opening and only notes the time
    opening = not waiting

    def work() -> Response:
        opened = open_link(service, token, count=opening if request.method == "GET" else None)
        if opened.kind == links.INTERACTION:
            # the stitch follows its calls: this makes it, or makes it again, when it does not match them
            opened.stitch = _ask_for_stitch(service, opened)
        facts = page_facts(opened)
        page = _templates.get_template("public.html").render(base=f"/r/{token}", **facts)
        return HTMLResponse(page)

    return _answer(request, work)


@public_router.get("/r/{token}/audio", response_class=Response,
                   summary="A public link's audio (Range supported); download=1 for an attachment")  # fmt: skip
@public_router.head("/r/{token}/audio", response_class=Response, include_in_schema=False)
def link_audio(token: str, request: Request, service: ServiceDep, download: str = "") -> Response:
    range_header = request.headers.get("range")
    asked_attachment = download.lower() in ("1", "true", "yes")

    def use(download_only: bool) -> bool | None:
        if request.method != "GET":
            return None
        return counts_as_use(range_header, attachment=download_only or asked_attachment)

    def work() -> Response:
        opened = open_link(service, token, count=use, audio=True)
        response = _audio(service.ctx, opened, range_header)
        if response.status_code in (200, 206):
            attach = opened.download_only or asked_attachment
            fmt = opened.recording.format if opened.recording is not None else _stitch(opened).format
            how = "attachment" if attach else "inline"
            response.headers["Content-Disposition"] = f'{how}; filename="{_filename(opened, fmt)}"'
        return response

    return _answer(request, work)


@public_router.get("/r/{token}/picture", summary="The picture of a public link's conversation (JSON)")
@public_router.head("/r/{token}/picture", include_in_schema=False)
def link_picture(token: str, request: Request, service: ServiceDep) -> Response:
    def work() -> Response:
        # drawn beside the player: not a use of its own, and no write
        opened = open_link(service, token, count=None, audio=True)
        if opened.download_only:
            raise ServiceError("this link offers the download only", 404)
        if opened.recording is not None:
            data = recording_picture(service.ctx, opened.recording)
        else:
            data = stitch_picture(service.ctx, _stitch(opened))
            # the member calls' ids are internal: a chapter shows who and when
            data["chapters"] = [{k: v for k, v in c.items() if k != "call_id"} for c in data["chapters"]]
        return JSONResponse(with_voices(data))

    return _answer(request, work)


def _stitch(opened: Opened) -> Stitch:
    stitch = opened.stitch
    if stitch is not None and stitch.state == DELETED:
        raise ServiceError("the recordings of this conversation were deleted", 410)
    if stitch is not None and stitch.state == FAILED:
        raise ServiceError("the recording of this conversation could not be made", 409)
    if stitch is None or stitch.state != COMPLETED:
        raise Pending()
    return stitch


def _audio(ctx: Context, opened: Opened, range_header: str | None) -> Response:
    if opened.recording is not None:
        return recording_response(ctx, opened.recording, None, range_header)
    return stitch_response(ctx, _stitch(opened), range_header)


def _ask_for_stitch(service: Service, opened: Opened) -> Stitch:
    try:
        return stitching.request(service.ctx, service.queue, opened.domain_id, opened.target_id)
    except ServiceError as exc:
        if isinstance(exc, NotFound):  # the interaction has no calls any more
            raise ServiceError("the recordings of this conversation were deleted", 410) from exc
        raise
