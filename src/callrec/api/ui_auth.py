"""Who is using the web UI: a session cookie made at sign-in with an API key, and CSRF protection.

The cookie never holds the key: it names the key's id and an expiry, signed with HMAC-SHA256 under a
key derived from the service's secret key, so any node of the service can check it and nobody can
forge one. Every request looks the key up again, so revoking the key ends its sessions at once. The
cookie is HttpOnly and SameSite=Strict (and Secure whenever the UI is reached over HTTPS); requests
that change something must also carry a token derived from the session and, when the browser says
where the request comes from (Origin), come from this site.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlsplit

from fastapi import Request, Response

from callrec.api.deps import LAST_USED_EVERY, Principal, get_ctx
from callrec.db.engine import transaction
from callrec.db.schema import ApiKey
from callrec.errors import ServiceError
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
    """A cookie value naming ``key_id``, valid for ``SESSION_S`` from now."""
    expires = int(ctx.clock.now().timestamp()) + SESSION_S
    body = f"{key_id}.{expires}"
    return f"{body}.{_sign(ctx, 'ui-session', body)}"


def viewer(request: Request) -> Principal | None:
    """The signed-in key behind the request's cookie, or None (no cookie, forged, expired or revoked)."""
    value = request.cookies.get(COOKIE, "")
    parts = value.split(".")
    if len(parts) != 3 or len(value) > 200:
        return None
    key_id, expires, mac = parts
    ctx = get_ctx(request)
    if not hmac.compare_digest(mac, _sign(ctx, "ui-session", f"{key_id}.{expires}")):
        return None
    now = ctx.clock.now()
    if not expires.isdigit() or int(expires) <= now.timestamp():
        return None
    with transaction(ctx.sessions) as s:
        key = s.get(ApiKey, key_id)
        if key is None or key.revoked_at is not None:
            return None
        if key.last_used_at is None or now - key.last_used_at > LAST_USED_EVERY:
            key.last_used_at = now
        return Principal(key.id, key.domain_id)


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


def sign_out(response: Response) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")

