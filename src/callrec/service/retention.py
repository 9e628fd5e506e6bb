"""How long a domain keeps a recording: a default, rules for matching calls, per-call overrides, legal hold.

The period of a call is, by precedence:

1. its per-call override ("keep forever" wins over a number of days when both are set);
2. the first rule, in list order, whose conditions all match the call;
3. the domain's default.

``None`` days mean "keep forever". A recording under legal hold never expires, whatever its period.
Days are spans of 24 hours counted from the end of the call, not calendar days in a time zone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import select

from callrec.config import ConfigError
from callrec.db.engine import transaction
from callrec.db.schema import COMPLETED, Call, Domain, Recording
from callrec.service.context import Context
from callrec.service.domain_settings import load_settings

DIRECTIONS = ("inbound", "outbound", "internal")
# 100 years: longer is "forever" (null), and datetime arithmetic stays in range
MAX_DAYS = 36500
_NUMBER_NOISE = re.compile(r"[\s\-()]")
_NUMBER_PATTERN = re.compile(r"[0-9+*?]+")


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """A period for the calls matching every condition given; a rule without conditions matches all calls.

    ``number`` is a glob of digits and ``+`` with ``*`` (any digits) and ``?`` (one digit), matched
    against each party number of the call; spaces, dashes and parentheses are ignored on both sides.
    ``tag`` matches a call tag without regard to case.
    """

    days: int | None
    direction: str | None = None
    number: str | None = None
    tag: str | None = None

    def matches(self, facts: CallFacts) -> bool:
        if self.direction is not None and facts.direction.lower() != self.direction:
            return False
        if self.number is not None:
            pattern = normalise_number(self.number)
            if not any(fnmatchcase(normalise_number(n), pattern) for n in facts.numbers):
                return False
        return self.tag is None or self.tag.casefold() in {t.casefold() for t in facts.tags}


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """A domain's retention: ``default_days`` (``None`` = forever) and rules tried in order."""

    default_days: int | None = None
    rules: tuple[RetentionRule, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RetentionPolicy:
        """Parse ``{"days": 90, "rules": [...]}``; a bad value raises ``ConfigError`` naming its place."""
        if not isinstance(data, Mapping):
            raise ConfigError("retention must be a JSON object")
        _no_unknown_keys(data, ("days", "rules"), "retention")
        rules = data.get("rules", [])
        if not isinstance(rules, list):
            raise ConfigError("retention.rules must be a list of rules")
        return cls(
            default_days=_days(data.get("days"), "retention.days"),
            rules=tuple(_rule_from_json(i, r) for i, r in enumerate(rules)),
        )

    def to_json(self) -> dict[str, Any]:
        rules = []
        for rule in self.rules:
            out: dict[str, Any] = {"days": rule.days}
            for key in ("direction", "number", "tag"):
                value = getattr(rule, key)
                if value is not None:
                    out[key] = value
            rules.append(out)
        return {"days": self.default_days, "rules": rules}


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What retention needs to know about one call; ``ended_at`` is timezone-aware."""

    ended_at: datetime
    direction: str = ""
    numbers: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    # per-call overrides set through the API; they take precedence over rules and the default
    override_days: int | None = None
    override_forever: bool = False
    legal_hold: bool = False


def retention_days(policy: RetentionPolicy, facts: CallFacts) -> int | None:
    """Days to keep the call's recording, ``None`` for forever (legal hold is not considered here)."""
    if facts.override_forever:
        return None
    if facts.override_days is not None:
        return facts.override_days
    for rule in policy.rules:
        if rule.matches(facts):
            return rule.days
    return policy.default_days


def expires_at(policy: RetentionPolicy, facts: CallFacts) -> datetime | None:
    """When the recording may be deleted; ``None`` when kept forever or under legal hold."""
    if facts.legal_hold:
        return None
    days = retention_days(policy, facts)
    if days is None:
        return None
    try:
        return facts.ended_at + timedelta(days=days)
    except OverflowError:
        # an override past the year 9999 is as good as forever
        return None


def is_expired(policy: RetentionPolicy, facts: CallFacts, now: datetime) -> bool:
    """Whether the recording is due for deletion at ``now`` (from ``expires_at`` on, never under hold)."""
    expiry = expires_at(policy, facts)
    return expiry is not None and now >= expiry


def normalise_number(number: str) -> str:
    """A phone number (or pattern) without spaces, dashes and parentheses: ``+7 (495) 1-2`` -> ``+749512``."""
    return _NUMBER_NOISE.sub("", number)


def _rule_from_json(index: int, data: Any) -> RetentionRule:
    where = f"retention.rules[{index}]"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a JSON object")
    _no_unknown_keys(data, ("days", "direction", "number", "tag"), where)
    if "days" not in data:
        raise ConfigError(f"{where} has no days")
    direction = data.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        raise ConfigError(f"{where}.direction must be inbound, outbound or internal")
    number = data.get("number")
    if number is not None:
        number = normalise_number(number) if isinstance(number, str) else ""
        if not _NUMBER_PATTERN.fullmatch(number):
            raise ConfigError(f"{where}.number must be digits and + with * and ? wildcards")
    tag = data.get("tag")
    if tag is not None and (not isinstance(tag, str) or not tag.strip()):
        raise ConfigError(f"{where}.tag must be a non-empty string")
    return RetentionRule(
        days=_days(data["days"], f"{where}.days"),
        direction=direction,
        number=number,
        tag=tag.strip() if tag is not None else None,
    )


def _days(value: Any, where: str) -> int | None:
    if value is None:
        return None
    # bool is an int to Python, but true is not a number of days
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a whole number of days ≥ 1 or null")
    if value > MAX_DAYS:
        raise ConfigError(f"{where} must be at most {MAX_DAYS} (100 years); null keeps forever")
    return value


def _no_unknown_keys(data: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    # a misspelt condition would otherwise silently widen the rule to every call
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}")


# --- applied to the database's calls ----------------------------------------------------------


def facts_of(call: Call) -> CallFacts:
    return CallFacts(
        ended_at=call.ended_at or call.started_at,
        direction=call.direction,
        numbers=tuple(p.number for p in call.parties if p.number),
        tags=tuple(str(t) for t in call.tags),
        override_days=call.retention_days,
        override_forever=call.retention_forever,
        legal_hold=call.legal_hold,
    )


def refresh_expiry(ctx: Context, domain_id: int, call_id: str | None = None) -> int:
    """Recompute ``expires_at`` of a domain's (or one call's) recordings after settings or overrides change."""
    changed = 0
    with transaction(ctx.sessions) as s:
        domain = s.get(Domain, domain_id)
        if domain is None:
            return 0
        policy = RetentionPolicy.from_json(load_settings(s, domain).retention)
        query = select(Recording).where(Recording.domain_id == domain_id, Recording.state == COMPLETED)
        if call_id is not None:
            query = query.where(Recording.call_id == call_id)
        for rec in s.scalars(query):
            new = expires_at(policy, facts_of(rec.call))
            if new != rec.expires_at:
                rec.expires_at = new
                changed += 1
    return changed
