"""The UI's pages, built from what the API's route functions return for the signed-in key."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader
from sqlalchemy import select

from callrec.api import calls as calls_api
from callrec.api import interactions as interactions_api
from callrec.api import links as links_api
from callrec.api.deps import Principal, get_ctx
from callrec.api.handlers import status_of
from callrec.api.picture import label_of
from callrec.db.schema import Call, Domain
from callrec.errors import ServiceError
from callrec.service.pipeline import Service
from callrec.web.ui_auth import COOKIE_PATH, csrf_token, secure

PAGE_SIZE = 50
DIRECTIONS = ("inbound", "outbound", "internal")
STATES = ("recording", "queued", "mixing", "storing", "completed", "failed", "deleted")
# what a page may be sent to after a sign-in or a change: only the UI's own pages
HOME = "/ui/calls"
NEW_LINK_COOKIE = "callrec_new_link"
NEW_LINK_S = 120
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'",
}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"


def _utc(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "—"


_env = Environment(loader=PackageLoader("callrec", "web/templates"), autoescape=True)
_env.filters.update(duration=_duration, size=_size, utc=_utc, seg=lambda text: quote(str(text), safe=""))


def safe_back(target: str | None) -> str:
    """``target`` if it is one of the UI's own pages, else the call list (no open redirects)."""
    if target and target.startswith("/ui/") and not target.startswith("/ui//") and "\\" not in target:
        return target
    return HOME


def render(request: Request, template: str, principal: Principal | None, status: int = 200, **data: Any) -> Response:
    ctx = get_ctx(request)
    who = None
    if principal is not None:
        who = "admin"
        if principal.domain_id is not None:
            with ctx.sessions() as s:
                domain = s.get(Domain, principal.domain_id)
                who = domain.name if domain is not None else ""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    html = _env.get_template(template).render(
        viewer=who, csrf=csrf_token(request) if principal is not None else "", here=here, **data
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def error_page(request: Request, principal: Principal, exc: ServiceError) -> Response:
    return render(request, "error.html", principal, status=status_of(exc), message=str(exc))


# --- a link just made: shown once, on the page the browser is sent to after making it -------------


def remember_new_link(request: Request, response: Response, made: dict[str, Any]) -> None:
    """Carry the new link's URL (its token is shown only once) to the next page in a short-lived cookie,
    so the page that shows it is a GET that a reload does not repeat."""
    response.set_cookie(
        NEW_LINK_COOKIE, f"{made['id']} {made['url']}", max_age=NEW_LINK_S, path=COOKIE_PATH, httponly=True,
        samesite="strict", secure=secure(request),
    )  # fmt: skip


def take_new_link(request: Request, links: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The link just made, if it is one of ``links`` (this page's, in the viewer's domain)."""
    link_id, _, url = request.cookies.get(NEW_LINK_COOKIE, "").partition(" ")
    found = next((link for link in links if link["id"] == link_id), None)
    if found is None or "/r/" not in url:
        return None
    return found | {"url": url}


def forget_new_link(response: Response) -> Response:
    response.delete_cookie(NEW_LINK_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


# --- what each voice of a picture holds --------------------------------------------------------------

# a slice of a channel is sound when its peak reaches this: -50 dBFS, the speech meter's absolute floor
SOUND_PEAK = 10 ** (-50 / 20)
# a channel carries a steady signal when at least this share of its slices is sound
STEADY_SHARE = 0.1
HEARD_TEXT = {
    "speech": "speech",
    "steady": "tone or steady noise, no speech detected",
    "silent": "no sound",
    "none": "no speech detected",
}


def voices(picture: dict[str, Any]) -> list[dict[str, str]]:
    """What the page says each speaker of ``picture`` holds, in the speakers' order: ``heard`` is
    ``speech`` (some speaking segments), ``steady`` (none, but the speaker's own channel carries a signal:
    a tone or steady noise, which the speech meter does not take for speech), ``silent`` (none, and
    the channel is quiet) or ``none`` (none, and the channel is shared, so its level says nothing of
    this speaker); ``text`` says it in words."""
    channels = {ch["index"]: ch["peaks"] for ch in picture["channels"]}
    on_channel = [s["channel"] for s in picture["speakers"]]
    out = []
    for speaker in picture["speakers"]:
        heard = "speech" if speaker["segments"] else "none"
        peaks = channels.get(speaker["channel"]) if speaker["channel"] is not None else None
        # the channel's level is this speaker's only when no other speaker is on that channel
        if heard == "none" and peaks and on_channel.count(speaker["channel"]) == 1:
            loud = sum(1 for lo, hi in peaks if max(-lo, hi) >= SOUND_PEAK)
            heard = "steady" if loud >= STEADY_SHARE * len(peaks) else "silent" if not loud else "none"
        out.append({"party": speaker["party"], "heard": heard, "text": HEARD_TEXT[heard]})
    return out


def with_voices(picture: dict[str, Any]) -> dict[str, Any]:
    """``picture`` as the UI's pages draw it: the API's picture and ``voices``."""
    return picture | {"voices": voices(picture)}


# --- the call list ---------------------------------------------------------------------------------


def _time(text: str | None, tz: str | None, name: str) -> str | None:
    """A time from the search form (the browser's local time, ``tz`` minutes east of UTC) as ISO 8601."""
    if not text or not text.strip():
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ServiceError(f"{name} is not a date and time", 422) from exc
    if value.tzinfo is None:
        offset = int(tz) if tz and tz.lstrip("-").isdigit() and abs(int(tz)) <= 18 * 60 else 0
        value = value - timedelta(minutes=offset)
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def _text(value: str | None, name: str) -> str | None:
    if value is None or not value.strip():
        return None
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ServiceError(f"{name} must not hold control characters", 422)
    return value.strip()


def _choice(value: str | None, allowed: tuple[str, ...], name: str) -> Any:
    if not value:
        return None
    if value not in allowed:
        raise ServiceError(f"{name} must be one of {', '.join(allowed)}", 422)
    return value


def _row(card: dict[str, Any]) -> dict[str, Any]:
    parties = card["parties"]
    caller = next((p for p in parties if p["role"] == "caller"), None)
    callee = next((p for p in parties if p["role"] == "callee"), None)

    def show(p: dict[str, Any] | None) -> str:
        return label_of(p["name"], p["number"], p["label"]) if p else "—"

    others = len(parties) - (caller is not None) - (callee is not None)
    rec = card["recording"]
    return {
        "id": card["id"], "started_at": card["started_at"], "duration_s": card["duration_s"],
        "direction": card["direction"] or "—", "caller": show(caller), "callee": show(callee), "others": others,
        "state": rec["state"] if rec else "—", "interaction_id": card["interaction_id"], "call_id": card["call_id"],
        "domain": card["domain"],
    }  # fmt: skip


def calls_view(
    request: Request, service: Service, principal: Principal, filters: dict[str, str | None], cursor: str | None
) -> Response:
    rows: list[dict[str, Any]] = []
    next_url = None
    error, status = None, 200
    try:
        page = calls_api.search_calls(
            request, service, principal,
            since=_time(filters["since"], filters["tz"], "From"), until=_time(filters["until"], filters["tz"], "To"),
            number=_text(filters["number"], "Number"), direction=_choice(filters["direction"], DIRECTIONS, "Direction"),
            state=_choice(filters["state"], STATES, "State"),
            interaction=_text(filters["interaction"], "Interaction"), call_id=_text(filters["call_id"], "SIP Call-ID"),
            limit=PAGE_SIZE, cursor=cursor,
        )  # fmt: skip
        rows = [_row(card) for card in page["items"]]
        if page["next_cursor"]:
            kept = {k: v for k, v in filters.items() if v}
            next_url = "/ui/calls?" + urlencode(kept | {"cursor": page["next_cursor"]})
    except ServiceError as exc:
        error, status = str(exc), status_of(exc)
    return render(request, "calls.html", principal, status=status, filters=filters, rows=rows, next_url=next_url,
                  error=error, directions=DIRECTIONS, states=STATES, paged=cursor is not None)  # fmt: skip


# --- a call ----------------------------------------------------------------------------------------


def _streams(card: dict[str, Any]) -> list[dict[str, Any]]:
    names = {p["label"]: label_of(p["name"], p["number"], p["label"]) for p in card["parties"]}
    order = {p["label"]: k for k, p in enumerate(card["parties"])}
    out = []
    for stream in sorted(card["streams"], key=lambda s: (order.get(s["party"], len(order)), s["party"])):
        q = stream["quality"]
        packets, lost = int(q.get("packets", 0)), int(q.get("lost", 0))
        out.append({
            "party": stream["party"], "who": names.get(stream["party"], stream["party"]),
            "codecs": ", ".join(stream["codecs"]) or "—", "packets": packets, "lost": lost,
            "late": int(q.get("late", 0)), "jitter_ms": float(q.get("max_jitter_ms", 0.0)),
            "loss_pct": 100.0 * lost / (packets + lost) if packets + lost else 0.0, "measured": bool(q),
        })  # fmt: skip
    return out


def call_view(
    request: Request, service: Service, principal: Principal, call_id: str, *,
    error: str | None = None, status: int = 200,
) -> Response:  # fmt: skip
    try:
        card = calls_api.get_call(call_id, request, service, principal)
    except ServiceError as exc:
        return error_page(request, principal, exc)
    rec = card["recording"]
    links = links_api.list_recording_links(rec["id"], service, principal)["items"] if rec else []
    new_link = take_new_link(request, links)
    page = render(request, "call.html", principal, status=status, card=card, rec=rec, row=_row(card),
                  streams=_streams(card), links=links, new_link=new_link, error=error)  # fmt: skip
    return forget_new_link(page) if new_link else page


# --- an interaction --------------------------------------------------------------------------------


def domains_with(service: Service, principal: Principal, interaction_id: str) -> list[str]:
    """The names of the domains, among those the key may see, that have calls of ``interaction_id``."""
    if not interaction_id or "\x00" in interaction_id or len(interaction_id) > 300:
        return []
    query = select(Domain.name).join(Call, Call.domain_id == Domain.id).where(Call.interaction_id == interaction_id)
    if not principal.admin:
        query = query.where(Domain.id == principal.domain_id)
    with service.ctx.sessions() as s:
        return sorted(set(s.scalars(query.distinct())))


def interaction_view(
    request: Request, service: Service, principal: Principal, interaction_id: str, domain: str | None, *,
    error: str | None = None, status: int = 200,
) -> Response:  # fmt: skip
    if domain is None and principal.admin:
        # an admin key sees every domain: when several have this id, let the reader pick one
        choices = domains_with(service, principal, interaction_id)
        if len(choices) > 1:
            return render(request, "interaction.html", principal, interaction_id=interaction_id, choices=choices,
                          error=error)  # fmt: skip
    try:
        found = calls_api.get_interaction(interaction_id, request, service, principal, domain)
    except ServiceError as exc:
        return error_page(request, principal, exc)
    stitched: dict[str, Any] | None = None
    links: list[dict[str, Any]] = []
    try:
        answer = interactions_api.get_stitched(interaction_id, request, service, principal, domain)
        stitched = json.loads(bytes(answer.body))
        links = links_api.list_interaction_links(interaction_id, service, principal, domain)["items"]
    except ServiceError as exc:
        error, status = error or str(exc), status_of(exc) if status == 200 else status
    query = f"?domain={quote(domain)}" if domain else ""
    new_link = take_new_link(request, links)
    page = render(request, "interaction.html", principal, status=status, interaction_id=interaction_id,
                  rows=[_row(c) for c in found["calls"]], stitched=stitched, links=links, new_link=new_link,
                  error=error, query=query)  # fmt: skip
    return forget_new_link(page) if new_link else page
