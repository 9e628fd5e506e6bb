"""Public links: a bearer token for one recording or one stitched interaction, with an expiry.

The token carries 256 random bits and is shown once; only its SHA-256 is stored, so a copy of the
database opens nothing. Resolving a token costs the same whatever was presented: it is always hashed
(bounded in length) and looked up once by its hash, so how long an answer takes does not tell a
malformed token from an unknown, revoked or expired one.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from callrec.db import queries
from callrec.db.schema import Domain, Link
from callrec.errors import Gone, NotFound, Refused
from callrec.service.context import Context
from callrec.service.domain_settings import load_settings

RECORDING = "recording"
INTERACTION = "interaction"
KINDS = (RECORDING, INTERACTION)
# 32 bytes: 256 bits of randomness, 43 URL-safe characters
TOKEN_BYTES = 32
# a presented token is hashed up to this many characters: a real one has 43, so anything longer is
# unknown whatever its tail, and the hashing work stays bounded
MAX_TOKEN_CHARS = 256
# the shortest link anyone may ask for (the domain's settings use the same floor)
MIN_EXPIRES_S = 60


def hash_token(token: str) -> str:
    """The SHA-256 (hex) under which a token is stored; defined for any string a client may send."""
    return hashlib.sha256(token[:MAX_TOKEN_CHARS].encode("utf-8", "replace")).hexdigest()


def url_for(base_url: str, token: str) -> str:
    """The public page of a link."""
    return f"{base_url.rstrip('/')}/r/{token}"


def state_of(link: Link, now: datetime) -> str:
    """``active``, ``expired`` or ``revoked`` (a revoked link stays revoked after its expiry)."""
    if link.revoked_at is not None:
        return "revoked"
    return "expired" if now >= link.expires_at else "active"


def create(
    s: Session,
    ctx: Context,
    *,
    domain_id: int,
    kind: str,
    target_id: str,
    expires_in_s: int | None = None,
    download_only: bool = False,
    created_by: str = "",
) -> tuple[Link, str]:
    """A new link (added to ``s``) and its token, which is returned this once and never stored.

    The caller has checked that the target exists in ``domain_id`` and may be shared. ``expires_in_s``
    defaults to the domain's ``links.default_expires_s`` and may not pass its ``links.max_expires_s``.
    """
    if kind not in KINDS:
        raise ValueError(f"a link is for one of {KINDS}, not {kind!r}")
    domain = s.get(Domain, domain_id)
    if domain is None:
        raise NotFound(f"no domain with id {domain_id}")
    limits = load_settings(s, domain).links
    seconds = limits.default_expires_s if expires_in_s is None else expires_in_s
    if not MIN_EXPIRES_S <= seconds <= limits.max_expires_s:
        raise Refused(
            f"expires_in_s must be between {MIN_EXPIRES_S} and {limits.max_expires_s} seconds "
            f"(the domain's maximum is {limits.max_expires_s})"
        )
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = ctx.clock.now()
    link = Link(
        id=queries.new_id(), domain_id=domain_id, kind=kind, target_id=target_id, token_hash=hash_token(token),
        download_only=download_only, created_at=now, expires_at=now + timedelta(seconds=seconds),
        created_by=created_by[:32], uses=0,
    )  # fmt: skip
    s.add(link)
    s.flush()
    return link, token


def resolve(s: Session, ctx: Context, token: str) -> Link:
    """The active link ``token`` opens: ``NotFound`` when it is unknown or revoked, ``Gone`` when it has expired."""
    # no check of the token's shape first: every token costs one hash and one indexed lookup
    link = s.scalar(select(Link).where(Link.token_hash == hash_token(token)))
    if link is None or link.revoked_at is not None:
        raise NotFound("this link does not exist or was revoked")
    if ctx.clock.now() >= link.expires_at:
        raise Gone("this link has expired")
    return link


def record_use(s: Session, ctx: Context, link: Link, *, count: bool) -> None:
    """Note that the link was used now (one UPDATE); ``count`` adds one to its uses."""
    values: dict[str, object] = {"last_used_at": ctx.clock.now()}
    if count:
        # in the database, so concurrent requests each add theirs
        values["uses"] = Link.uses + 1
    s.execute(update(Link).where(Link.id == link.id).values(values))


def revoke(s: Session, ctx: Context, link: Link) -> None:
    """Revoke ``link``; revoking a revoked link keeps its first revocation time."""
    if link.revoked_at is None:
        link.revoked_at = ctx.clock.now()


def for_target(s: Session, domain_id: int, kind: str, target_id: str) -> list[Link]:
    """The links of one recording or interaction, newest first."""
    query = select(Link).where(Link.domain_id == domain_id, Link.kind == kind, Link.target_id == target_id)
    return list(s.scalars(query.order_by(Link.created_at.desc(), Link.id.desc())))
