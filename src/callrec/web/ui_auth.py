"""Who is using the web UI: a session cookie made at sign-in with an API key, and CSRF protection.

The cookie never holds the key: it names a session (a row of ``ui_sessions``, which names the key) and
an expiry, signed with HMAC-SHA256 under a key derived from the service's secret key, so any node of the
service can check it and nobody can forge one. Every request looks the session and its key up again, so
signing out (which ends the session's row) or revoking the key ends the session at once, whatever the
browser keeps. Only a key with the ``read`` scope can sign in: everything the UI does is reading. The
cookie is HttpOnly and SameSite=Strict (and Secure whenever the UI is reached over HTTPS); requests
that change something must also carry a token derived from the session and, when the browser says
where the request comes from (Origin), come from this site.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import timedelta
from functools import partial
from urllib.parse import urlsplit

from fastapi import Request, Response
from sqlalchemy import delete

from callrec.api.deps import LAST_USED_EVERY, Principal, get_ctx, principal_of
from callrec.db import queries
from callrec.db.engine import after_commit, transaction
from callrec.db.schema import ApiKey, UiSession
from callrec.errors import ServiceError
from callrec.service import disk
from callrec.service.context import Context

COOKIE = "callrec_session"
COOKIE_PATH = "/ui"
SESSION_S = 12 * 3600
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"


def _sign(ctx: Context, purpose: str, text: str) -> str:
    mac = hmac.new(ctx.box.derive(purpose), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def session_value(ctx: Context, key_id: str) -> str:
    """A new session of ``key_id``, valid for ``SESSION_S`` from now: its cookie value."""
    now = ctx.clock.now()
    expires = int(now.timestamp()) + SESSION_S
    session_id = secrets.token_hex(16)
    with transaction(ctx.sessions) as s:
        s.execute(delete(UiSession).where(UiSession.expires_at < now))  # the ended ones go at some point
        s.add(UiSession(id=session_id, key_id=key_id, created_at=now, expires_at=now + timedelta(seconds=SESSION_S)))
    body = f"{session_id}.{expires}"
    return f"{body}.{_sign(ctx, 'ui-session', body)}"


def _session_id(request: Request) -> str | None:
    """The session the request's cookie names, if the cookie is ours and not expired."""
    value = request.cookies.get(COOKIE, "")
    parts = value.split(".")
    if len(parts) != 3 or len(value) > 200:
        return None
    session_id, expires, mac = parts
    ctx = get_ctx(request)
    if not hmac.compare_digest(mac, _sign(ctx, "ui-session", f"{session_id}.{expires}")):
        return None
    if not expires.isdigit() or int(expires) <= ctx.clock.now().timestamp():
        return None
    return session_id


def viewer(request: Request) -> Principal | None:
    """The signed-in key behind the request's cookie, or None (no cookie, forged, expired, signed out,
    its key revoked, or a key that cannot read)."""
    session_id = _session_id(request)
    if session_id is None:
        return None
    ctx = get_ctx(request)
    now = ctx.clock.now()
    with transaction(ctx.sessions) as s:
        session = s.get(UiSession, session_id)
        if session is None or session.ended_at is not None or session.expires_at <= now:
            return None
        key = s.get(ApiKey, session.key_id)
        if key is None or key.revoked_at is not None:
            return None
        principal = principal_of(key)
        if not principal.has(queries.READ):
            return None
        if key.last_used_at is None or now - key.last_used_at > LAST_USED_EVERY:
            # on its own after this transaction, best effort: a full disk must not fail a read
            after_commit(s, partial(disk.note_key_use, ctx, key.id, now))
        return principal


def csrf_token(request: Request) -> str:
    """The token forms and scripts send back with a change; bound to this session's cookie."""
    return _sign(get_ctx(request), "ui-csrf", request.cookies.get(COOKIE, ""))


def _origins(request: Request) -> set[str]:
    own = {f"{request.url.scheme}://{request.headers.get('host', '')}"}
    public = get_ctx(request).config.public_url
    if public:
        parts = urlsplit(public)
        own.add(f"{parts.scheme}://{parts.netloc}")
    return own


def check_origin(request: Request) -> None:
    """403 when the browser says the request comes from another site."""
    origin = request.headers.get("origin")
    if origin is not None and origin not in _origins(request):
        raise ServiceError("the request comes from another site", 403)


def check_change(request: Request, token: str | None) -> None:
    """A change asked for by this site's own page: its Origin (when sent) and the session's token."""
    check_origin(request)
    expected = csrf_token(request)
    if not token or not hmac.compare_digest(token, expected):
        raise ServiceError("the form has expired; reload the page and try again", 403)


def secure(request: Request) -> bool:
    if request.url.scheme == "https":
        return True
    # behind a proxy that ends TLS without telling us: the public address says HTTPS
    public = urlsplit(get_ctx(request).config.public_url or "")
    return public.scheme == "https" and public.netloc == request.headers.get("host", "")


def sign_in(request: Request, response: Response, key_id: str) -> None:
    response.set_cookie(
        COOKIE, session_value(get_ctx(request), key_id), max_age=SESSION_S, path=COOKIE_PATH,
        httponly=True, samesite="strict", secure=secure(request),
    )  # fmt: skip


def sign_out(request: Request, response: Response) -> None:
    """End the request's session here (the old cookie is then worth nothing) and tell the browser to drop it."""
    session_id = _session_id(request)
    if session_id is not None:
        ctx = get_ctx(request)
        with transaction(ctx.sessions) as s:
            session = s.get(UiSession, session_id)
            if session is not None and session.ended_at is None:
                session.ended_at = ctx.clock.now()
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
