"""When a domain's tapes may be mixed: ``immediate``, or weekly windows in an IANA time zone.

A window opens on each listed day at ``start`` (wall clock in the schedule's zone) and closes at
``end`` the same day, or the next day when ``end <= start`` (``start == end`` is a whole day). A
window is the span between those two instants, end exclusive. Wall-clock times are turned into
instants the same way for opening and closing:

* a time skipped by a spring-forward change (02:30 in New York on 2026-03-08) is taken as the first
  instant that exists after it, the moment of the change (03:00 EDT);
* a time repeated by a fall-back change (01:30 in New York on 2026-11-01) is its first occurrence
  (``fold=0``, 01:30 EDT).

So on a fall-back night a window spanning the repeated hour lasts an hour longer, one spanning the
skipped hour an hour shorter, and a window lying wholly inside the skipped hour does not open that day.

The clocks are here so the worker and its tests share one notion of "now".
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from callrec.config import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_DAYS = ("*", "all")
MODES = ("immediate", "windows")
CLOCK_OFFSET_VAR = "CALLREC_CLOCK_OFFSET_S"
# a weekly window recurs within 7 days; 15 also covers an occurrence lost inside a DST gap
SEARCH_DAYS = 15
_BAD_MODE = "schedule.mode must be 'immediate' or 'windows'"
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


class Clock(Protocol):
    """The source of "now" for anything that waits on a schedule."""

    def now(self) -> datetime:
        """The current instant, timezone-aware, in UTC."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that moves only when told to; safe to share between threads."""

    def __init__(self, start: datetime) -> None:
        self._lock = threading.Lock()
        self._now = _utc(start)

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, at: datetime) -> None:
        with self._lock:
            self._now = _utc(at)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


class OffsetClock:
    """The machine's clock shifted by ``offset_s`` seconds, for end-to-end tests of a running service."""

    def __init__(self, offset_s: float) -> None:
        self.offset = timedelta(seconds=offset_s)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


def clock_from_env(env: Mapping[str, str]) -> Clock:
    """``OffsetClock`` when ``CALLREC_CLOCK_OFFSET_S`` is set, else ``SystemClock``."""
    if CLOCK_OFFSET_VAR not in env:
        return SystemClock()
    text = env[CLOCK_OFFSET_VAR]
    try:
        offset = float(text)
    except ValueError as exc:
        raise ConfigError(f"{CLOCK_OFFSET_VAR} must be a number, not {text!r}") from exc
    if not math.isfinite(offset):
        raise ConfigError(f"{CLOCK_OFFSET_VAR} must be a number, not {text!r}")
    return OffsetClock(offset)


@dataclass(frozen=True, slots=True)
class Window:
    """Opens on each of ``days`` (0 = Monday, the day it starts) at ``start``, closes at ``end``."""

    days: frozenset[int]
    start: time
    end: time

    def __post_init__(self) -> None:
        if not self.days or not self.days <= frozenset(range(7)):
            raise ConfigError("window days must be 0 (Monday) to 6 (Sunday), at least one")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A domain's mixing schedule; every method takes and returns timezone-aware instants."""

    mode: str
    windows: tuple[Window, ...] = ()
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(_BAD_MODE)
        _zone(self.timezone)
        if self.mode == "windows" and not self.windows:
            raise ConfigError("a windows schedule needs at least one window")
        if self.mode == "immediate" and self.windows:
            raise ConfigError("an immediate schedule has no windows")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Schedule:
        """Parse ``{"mode": ...}``; a bad value raises ``ConfigError`` naming its place."""
        if not isinstance(data, Mapping):
            raise ConfigError("schedule must be a JSON object")
        _no_unknown_keys(data, ("mode", "timezone", "windows"), "schedule")
        windows = data.get("windows", [])
        if not isinstance(windows, list):
            raise ConfigError("schedule.windows must be a list of windows")
        mode = data.get("mode")
        if not isinstance(mode, str):
            raise ConfigError(_BAD_MODE)
        # the mode's value and the time zone are checked by __post_init__
        return cls(
            mode=mode,
            windows=tuple(_window_from_json(i, w) for i, w in enumerate(windows)),
            timezone=data.get("timezone", "UTC"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "timezone": self.timezone}
        if self.mode == "windows":
            out["windows"] = [
                {"days": [DAYS[d] for d in sorted(w.days)], "from": _hhmm(w.start), "to": _hhmm(w.end)}
                for w in self.windows
            ]
        return out

    def is_open(self, at: datetime) -> bool:
        """Whether mixing may start at ``at``; always for ``immediate``."""
        at = _utc(at)
        if self.mode == "immediate":
            return True
        day = at.astimezone(_zone(self.timezone)).date()
        return any(start <= at < end for start, end in self._spans(day - timedelta(days=1), 2))

    def next_open(self, at: datetime) -> datetime:
        """``at`` if open, else the first instant (UTC) at which a window opens."""
        at = _utc(at)
        if self.is_open(at):
            return at
        day = at.astimezone(_zone(self.timezone)).date()
        starts = [start for start, _ in self._spans(day, SEARCH_DAYS + 1) if start > at]
        if not starts:
            raise ConfigError(f"schedule has no window that opens within {SEARCH_DAYS} days")
        return min(starts)

    def next_close(self, at: datetime) -> datetime | None:
        """When the schedule stops being open, counting overlapping windows as one.

        ``at`` itself when closed; ``None`` when it never closes (``immediate``, or windows that
        cover the whole week).
        """
        at = _utc(at)
        if self.mode == "immediate":
            return None
        day = at.astimezone(_zone(self.timezone)).date()
        spans = sorted(self._spans(day - timedelta(days=1), SEARCH_DAYS + 2))
        close = at
        for start, end in spans:
            if start > close:
                break
            close = max(close, end)
        if close - at >= timedelta(days=SEARCH_DAYS - 1):
            return None
        return close

    def _spans(self, first: date, count: int) -> Iterator[tuple[datetime, datetime]]:
        """The (open, close) instants of windows starting on ``count`` local days from ``first``."""
        zone = _zone(self.timezone)
        for n in range(count):
            day = first + timedelta(days=n)
            for w in self.windows:
                if day.weekday() not in w.days:
                    continue
                start = _instant(datetime.combine(day, w.start), zone)
                end_day = day if w.end > w.start else day + timedelta(days=1)
                end = _instant(datetime.combine(end_day, w.end), zone)
                if end > start:
                    yield start, end


def _window_from_json(index: int, data: Any) -> Window:
    where = f"schedule.windows[{index}]"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a JSON object")
    _no_unknown_keys(data, ("days", "from", "to"), where)
    return Window(
        days=_days(data.get("days"), where),
        start=_time(data.get("from"), f"{where}.from"),
        end=_time(data.get("to"), f"{where}.to"),
    )


def _days(value: Any, where: str) -> frozenset[int]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise ConfigError(f"{where}.days must be a list of days (mon…sun) or '*'")
    days: set[int] = set()
    for name in names:
        key = name.strip().lower() if isinstance(name, str) else name
        if key in ALL_DAYS:
            days.update(range(7))
        elif key in DAYS:
            days.add(DAYS.index(key))
        else:
            raise ConfigError(f"{where}.days: {name!r} is not a day (mon…sun)")
    return frozenset(days)


def _time(value: Any, where: str) -> time:
    match = _HHMM.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(f"{where} must be HH:MM")
    return time(int(match[1]), int(match[2]))


def _hhmm(t: time) -> str:
    return f"{t.hour:02d}:{t.minute:02d}"


def _no_unknown_keys(data: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    # a misspelt "timezone" would otherwise silently mean UTC
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"schedule.timezone {name!r} is not an IANA time zone") from exc


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("schedule instants must be timezone-aware")
    return at.astimezone(UTC)


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a naive wall-clock time: first occurrence, or the end of a DST gap."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # in a gap fold=1 maps before the change and fold=0 after it: find the change to the second
    lo = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    hi = int(first.timestamp())
    after = first.astimezone(zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)
