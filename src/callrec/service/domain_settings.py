"""A domain's settings: output format, mixing schedule, retention, storage and webhooks.

Stored as JSON on the domain row; the API reads and writes them through ``DomainSettings``. Secrets (the
storage secret key, the webhook signing secret) are encrypted before they are stored and never shown
again (``public_json`` masks them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from sqlalchemy.orm import Session

from callrec.config import ConfigError
from callrec.db import queries
from callrec.db.schema import Domain
from callrec.media_limits import (
    DEFAULT_BITRATE_KBPS,
    DEFAULT_CODEC,
    DEFAULT_FORMAT,
    DEFAULT_RATE_HZ,
    Bitrate,
    Codec,
    Format,
    OutputOptions,
    Rate,
)

SECRET_MASK = "********"
Event = Literal["recording.completed", "recording.failed", "recording.deleted"]
EVENTS: tuple[Event, ...] = ("recording.completed", "recording.failed", "recording.deleted")
# what merge_settings passes to validation: checks that only a change through the API must pass (a row
# stored before a rule existed still loads)
CHANGE = {"change": True}
# limits on what a domain may store (a change past one is refused with 422 naming it): settings are read
# for every call list, so their size is everyone's business
MAX_RETENTION_RULES = 1000
MAX_RULE_TEXT = 200  # characters of a rule's number pattern or tag
MAX_WINDOWS = 100
MAX_WEBHOOKS = 20


class StorageSettings(BaseModel):
    """Where a domain's recordings and raw tapes go: the service's local folder, or an S3 bucket."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "s3"] = "local"
    endpoint_url: str | None = Field(default=None, max_length=500)
    region: str = Field(default="us-east-1", max_length=64)
    bucket: str = Field(default="", max_length=63)
    prefix: str = Field(default="", max_length=200)
    access_key_id: str = Field(default="", max_length=200)
    # plain when it comes from the API; "enc:v1:…" once stored
    secret_access_key: str = Field(default="", max_length=2000)
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    recording_template: str = Field(default="", max_length=300)
    tape_template: str = Field(default="", max_length=300)

    @field_validator("recording_template", "tape_template")
    @classmethod
    def _template(cls, value: str, info: ValidationInfo) -> str:
        """A relative path of the fixed placeholders (no "..", no absolute path, no empty segment); the
        key it renders always goes under the domain's own prefix (``keys.domain_key``), which it cannot name."""
        from callrec.storage import keys

        if value:
            try:
                keys.validate_template(value, kind="recording" if info.field_name == "recording_template" else "tape")
            except ConfigError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _check(self) -> StorageSettings:
        if self.kind == "s3" and not self.bucket:
            raise ValueError("storage.bucket is required for S3 storage")
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise ValueError("storage.endpoint_url must start with http:// or https://")
        return self


class WebhookSettings(BaseModel):
    """One webhook receiver: where to POST, which events, and whether to add a fresh public link."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000, pattern=r"^https?://")
    events: list[Event] = Field(default_factory=lambda: list(EVENTS))
    with_link: bool = False


class LinkSettings(BaseModel):
    """How long a domain's public links live: the expiry when none is asked for, and the longest allowed."""

    model_config = ConfigDict(extra="forbid")

    default_expires_s: int = Field(default=7 * 86400, ge=60, le=10 * 365 * 86400)
    max_expires_s: int = Field(default=90 * 86400, ge=60, le=10 * 365 * 86400)

    @model_validator(mode="after")
    def _check(self) -> LinkSettings:
        if self.default_expires_s > self.max_expires_s:
            raise ValueError("links.default_expires_s must not be longer than links.max_expires_s")
        return self


class DomainSettings(BaseModel):
    """Everything a domain can set; every field has a default that works."""

    model_config = ConfigDict(extra="forbid")

    # the output options: choices and defaults are OutputOptions' (callrec.media_limits)
    format: Format = DEFAULT_FORMAT
    codec: Codec = DEFAULT_CODEC
    bitrate: Bitrate = DEFAULT_BITRATE_KBPS
    rate: Rate = DEFAULT_RATE_HZ
    # days to keep the raw tape after its recording is stored: 0 deletes it at once, null keeps it
    keep_tape_days: int | None = Field(default=0, ge=0, le=36500)
    schedule: dict[str, Any] = Field(default_factory=lambda: {"mode": "immediate"})
    retention: dict[str, Any] = Field(default_factory=lambda: {"days": None, "rules": []})
    storage: StorageSettings = Field(default_factory=StorageSettings)
    # signs every webhook (HMAC-SHA256); plain when it comes from the API, "enc:v1:…" once stored
    webhook_secret: str = Field(default="", max_length=2000)
    webhooks: list[WebhookSettings] = Field(default_factory=list, max_length=MAX_WEBHOOKS)
    links: LinkSettings = Field(default_factory=LinkSettings)

    @field_validator("schedule", mode="before")
    @classmethod
    def _few_windows(cls, value: Any) -> Any:
        windows = value.get("windows") if isinstance(value, dict) else None
        if isinstance(windows, list) and len(windows) > MAX_WINDOWS:
            raise ValueError(f"schedule.windows: at most {MAX_WINDOWS} windows (the limit), got {len(windows)}")
        return value

    @field_validator("retention", mode="before")
    @classmethod
    def _few_rules(cls, value: Any) -> Any:
        rules = value.get("rules") if isinstance(value, dict) else None
        if isinstance(rules, list):
            if len(rules) > MAX_RETENTION_RULES:
                raise ValueError(f"retention.rules: at most {MAX_RETENTION_RULES} rules (the limit), got {len(rules)}")
            for i, rule in enumerate(rules):
                texts = [v for v in rule.values() if isinstance(v, str)] if isinstance(rule, dict) else []
                if any(len(t) > MAX_RULE_TEXT for t in texts):
                    raise ValueError(f"retention.rules[{i}]: a value is longer than {MAX_RULE_TEXT} characters")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: dict[str, Any]) -> dict[str, Any]:
        from callrec.service.schedule import Schedule

        try:
            return Schedule.from_json(value).to_json()
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("retention")
    @classmethod
    def _retention(cls, value: dict[str, Any]) -> dict[str, Any]:
        from callrec.service.retention import RetentionPolicy

        try:
            return RetentionPolicy.from_json(value).to_json()
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: str) -> str:
        plain = value and not value.startswith("enc:")
        if plain and (not 16 <= len(value) <= 200 or not all("!" <= c <= "~" for c in value)):
            raise ValueError("webhook_secret must be 16 to 200 printable ASCII characters without spaces")
        return value

    @field_validator("webhooks")
    @classmethod
    def _webhooks(cls, value: list[WebhookSettings], info: ValidationInfo) -> list[WebhookSettings]:
        # refused rather than made up: the receiver has to know the secret to check a signature anyway
        if value and info.context == CHANGE and not info.data.get("webhook_secret"):
            raise ValueError("webhooks need webhook_secret: set it (16 to 200 characters) in the same request")
        return value

    @property
    def output(self) -> OutputOptions:
        """The domain's output options, as the worker mixes with them."""
        return OutputOptions(self.format, self.codec, self.bitrate, self.rate)

    def public_json(self) -> dict[str, Any]:
        """The settings as the API shows them: the secrets are masked."""
        data = self.model_dump(mode="json")
        if data["storage"]["secret_access_key"]:
            data["storage"]["secret_access_key"] = SECRET_MASK
        if data["webhook_secret"]:
            data["webhook_secret"] = SECRET_MASK
        return data


def merge_settings(current: DomainSettings, update: dict[str, Any]) -> DomainSettings:
    """``current`` with the top-level keys of ``update`` replaced (``PUT`` sends what it changes).

    A storage update that leaves the secret out (or sends the mask back) keeps the stored secret; so does
    ``webhook_secret`` sent as the mask.
    """
    data = current.model_dump(mode="json")
    storage = update.get("storage")
    if isinstance(storage, dict) and storage.get("secret_access_key", SECRET_MASK) == SECRET_MASK:
        storage = {**storage, "secret_access_key": current.storage.secret_access_key}
        update = {**update, "storage": storage}
    if update.get("webhook_secret") == SECRET_MASK:
        update = {**update, "webhook_secret": current.webhook_secret}
    data.update(update)
    return DomainSettings.model_validate(data, context=CHANGE)

# --- on the domain row (db/queries.py holds the SQL, this module the type) ------------------------------


def ensure_domain(session: Session, name: str, now: datetime) -> Domain:
    """The domain called ``name``, created with default settings if it does not exist yet."""
    return queries.ensure_domain(session, name, now, DomainSettings().model_dump(mode="json"))


def load_settings(session: Session, domain: Domain) -> DomainSettings:
    """The domain's settings; retention rules come from their own table, in order."""
    return DomainSettings.model_validate(queries.settings_json(session, domain))


def store_settings(session: Session, domain: Domain, settings: DomainSettings) -> None:
    """Store the domain's settings: the retention rules in their own table, the rest on the row."""
    queries.store_settings_json(session, domain, settings.model_dump(mode="json"))
