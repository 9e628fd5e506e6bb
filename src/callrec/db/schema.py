"""The database schema: the one place tables are described (migrations are generated from it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# recording states (SPEC "The service"); "recording" while the tape is still open
RECORDING = "recording"
QUEUED = "queued"
MIXING = "mixing"
STORING = "storing"
COMPLETED = "completed"
FAILED = "failed"
DELETED = "deleted"
STATES = (RECORDING, QUEUED, MIXING, STORING, COMPLETED, FAILED, DELETED)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (which keeps no zone) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Domain(Base):
    __tablename__ = "domains"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime]


class ApiKey(Base):
    """An API key; only the SHA-256 of the secret is stored. ``domain_id`` is NULL for admin keys."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    domain_id: Mapped[int | None] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # what the key may do, space-separated (callrec.api.deps: admin, settings, read, upload)
    scopes: Mapped[str] = mapped_column(String(200), default="", server_default="")
    # where the key came from: "env" for the one CALLREC_ADMIN_KEY set (revoked when that changes),
    # "first-start", "api" or "cli"
    origin: Mapped[str] = mapped_column(String(16), default="", server_default="")


class UiSession(Base):
    """A web UI session: the cookie names its id; signing out ends it here, whatever the browser keeps."""

    __tablename__ = "ui_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    ended_at: Mapped[datetime | None]


class Call(Base):
    """One recorded call (a SIP dialog, or a conference) and where its raw tape is."""

    __tablename__ = "calls"
    __table_args__ = (Index("ix_calls_domain_started", "domain_id", "started_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"), index=True)
    sip_call_id: Mapped[str] = mapped_column(String(300), index=True, default="")
    interaction_id: Mapped[str] = mapped_column(String(300), index=True, default="")
    direction: Mapped[str] = mapped_column(String(16), default="")
    source: Mapped[str] = mapped_column(String(16), default="siprec")
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    closed_cleanly: Mapped[bool] = mapped_column(Boolean, default=False)
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    end_reason: Mapped[str] = mapped_column(String(32), default="")
    recorder: Mapped[str] = mapped_column(String(200), default="")
    # the tape's folder name, unique per tape: ingesting the same tape twice finds this row
    tape_ref: Mapped[str] = mapped_column(String(300), unique=True)
    # where the tape is: a local folder until it is in storage, then its key prefix there
    tape_local: Mapped[str] = mapped_column(Text, default="")
    tape_key: Mapped[str] = mapped_column(String(500), default="")
    tape_storage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tape_expires_at: Mapped[datetime | None]
    tape_deleted_at: Mapped[datetime | None]
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    retention_days: Mapped[int | None]
    retention_forever: Mapped[bool] = mapped_column(Boolean, default=False)
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]

    parties: Mapped[list[Party]] = relationship(cascade="all, delete-orphan", order_by="Party.id", lazy="selectin")
    aliases: Mapped[list[CallAlias]] = relationship(
        cascade="all, delete-orphan", order_by="CallAlias.id", lazy="selectin"
    )
    streams: Mapped[list[StreamRow]] = relationship(
        cascade="all, delete-orphan", order_by="StreamRow.id", lazy="selectin"
    )
    recordings: Mapped[list[Recording]] = relationship(
        back_populates="call", order_by="Recording.created_at", lazy="selectin"
    )


class Party(Base):
    __tablename__ = "parties"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16))
    number: Mapped[str] = mapped_column(String(100), index=True, default="")
    name: Mapped[str] = mapped_column(String(200), default="")
    uri: Mapped[str] = mapped_column(String(500), default="")


class CallAlias(Base):
    """A SIP identifier a call is found by (``GET /api/v1/calls?call_id=``) besides ``Call.sip_call_id``: every
    Call-ID of its dialogs, and the recorded call's original Call-ID(s) and Session-ID its SRC named."""

    __tablename__ = "call_aliases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    value: Mapped[str] = mapped_column(String(300), index=True)
    # "dialog" (one of call_ids) or "original" (one of original_call_ids)
    kind: Mapped[str] = mapped_column(String(16), default="dialog")


class StreamRow(Base):
    """A media stream of a call with the quality figures the mixer measured."""

    __tablename__ = "streams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    party: Mapped[str] = mapped_column(String(16), default="")
    label: Mapped[str] = mapped_column(String(100), default="")
    local: Mapped[str] = mapped_column(String(100), default="")
    remote: Mapped[str] = mapped_column(String(100), default="")
    codecs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    quality: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Recording(Base):
    """The playable file made from a call's tape; its ``state`` is the source of truth of the pipeline."""

    __tablename__ = "recordings"
    __table_args__ = (Index("ix_recordings_state_next", "state", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    # the output settings asked for (domain settings, or a re-mix's own)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    format: Mapped[str] = mapped_column(String(8), default="")
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    # a long WAV passes 2 GiB: a 64-bit column
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    md5: Mapped[str] = mapped_column(String(32), default="")
    storage_key: Mapped[str] = mapped_column(String(500), default="")
    storage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    # the fencing token of the current claim: every write a worker makes is conditional on still holding it
    lease_token: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]

    call: Mapped[Call] = relationship(back_populates="recordings", lazy="joined")


class Job(Base):
    """One run of a pipeline step: what the API shows under jobs and failures."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int | None] = mapped_column(ForeignKey("domains.id"), index=True)
    recording_id: Mapped[str | None] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)  # running, done, retrying, failed
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    error: Mapped[str] = mapped_column(Text, default="")
    worker: Mapped[str] = mapped_column(String(200), default="")
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]


class RetentionRuleRow(Base):
    """A domain's retention rule; ``position`` orders them (the first that matches wins)."""

    __tablename__ = "retention_rules"
    __table_args__ = (UniqueConstraint("domain_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    days: Mapped[int | None]
    direction: Mapped[str | None] = mapped_column(String(16))
    number: Mapped[str | None] = mapped_column(String(100))
    tag: Mapped[str | None] = mapped_column(String(100))


class Audit(Base):
    """A deletion (or other destructive act) and why it happened; kept after the object is gone."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    domain_id: Mapped[int | None] = mapped_column(ForeignKey("domains.id"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    object_kind: Mapped[str] = mapped_column(String(16))
    object_id: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(500), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(100), default="")


class Link(Base):
    """A public link to a recording or a stitched interaction; only the SHA-256 of its token is stored."""

    __tablename__ = "links"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "recording" or "interaction"
    # a recording's id, or an interaction id as the PBX named it
    target_id: Mapped[str] = mapped_column(String(300), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    download_only: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    created_by: Mapped[str] = mapped_column(String(32), default="")
    last_used_at: Mapped[datetime | None]
    uses: Mapped[int] = mapped_column(Integer, default=0)


class Stitch(Base):
    """The stitched recording of one interaction: every member call in time order, cached.

    ``signature`` names the member recordings it was made from; when a member changes the stitch no
    longer matches and is made again.
    """

    __tablename__ = "stitches"
    __table_args__ = (UniqueConstraint("domain_id", "interaction_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    interaction_id: Mapped[str] = mapped_column(String(300))
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    signature: Mapped[str] = mapped_column(String(64), default="")
    format: Mapped[str] = mapped_column(String(8), default="")
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    md5: Mapped[str] = mapped_column(String(32), default="")
    storage_key: Mapped[str] = mapped_column(String(500), default="")
    storage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # [{"call_id", "who", "from_s", "to_s", "started_at"}], in the stitched file's time
    chapters: Mapped[list[Any]] = mapped_column(JSON, default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    # the fencing token of the current claim: every write a worker makes is conditional on still holding it
    lease_token: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]


class WebhookDelivery(Base):
    """One event for one webhook receiver: the exact body sent, and how its delivery went."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_state_next", "state", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    recording_id: Mapped[str] = mapped_column(String(32), index=True, default="")
    url: Mapped[str] = mapped_column(String(2000))
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending, delivering, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    # the fencing token of the current claim: every write a worker makes is conditional on still holding it
    lease_token: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_status: Mapped[int | None]
    last_error: Mapped[str] = mapped_column(Text, default="")
    # every attempt: [{"at", "status", "error", "ms"}]
    log: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]


class IdempotentRequest(Base):
    """A request made with an ``Idempotency-Key``: the answer it got, given again to a retry of it.

    ``status`` is 0 while the first request is still being carried out.
    """

    __tablename__ = "idempotent_requests"
    __table_args__ = (UniqueConstraint("scope", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # who asked: the API key's id (one key's idempotency keys never meet another's)
    scope: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(200))
    status: Mapped[int] = mapped_column(Integer, default=0)
    body: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(index=True)
