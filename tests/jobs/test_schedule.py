"""Mixing schedules: windows in a time zone checked against UTC instants, DST days, clocks, validation."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callrec.config import ConfigError
from callrec.service import schedule as schedule_module
from callrec.service.schedule import (
    FakeClock,
    OffsetClock,
    Schedule,
    SystemClock,
    Window,
    clock_from_env,
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def windows(tz: str, *spec: tuple[list[str] | str, str, str]) -> Schedule:
    return Schedule.from_json(
        {"mode": "windows", "timezone": tz, "windows": [{"days": d, "from": f, "to": t} for d, f, t in spec]}
    )


def test_immediate_is_always_open() -> None:
    s = Schedule.from_json({"mode": "immediate"})
    at = utc("2026-03-08 07:30")
    assert s.is_open(at)
    assert s.next_open(at) == at
    assert s.next_close(at) is None


def test_same_day_window_opens_at_from_and_closes_at_to() -> None:
    s = windows("UTC", (["mon"], "09:00", "18:00"))
    assert not s.is_open(utc("2026-03-09 08:59:59"))
    assert s.is_open(utc("2026-03-09 09:00"))
    assert s.is_open(utc("2026-03-09 17:59:59"))
    assert not s.is_open(utc("2026-03-09 18:00"))
    assert not s.is_open(utc("2026-03-10 10:00"))
    assert s.next_close(utc("2026-03-09 10:00")) == utc("2026-03-09 18:00")


def test_window_crossing_midnight_belongs_to_the_day_it_starts() -> None:
    s = windows("UTC", (["fri"], "22:00", "06:00"))
    assert s.is_open(utc("2026-03-06 22:00"))
    assert s.is_open(utc("2026-03-07 03:00"))
    assert not s.is_open(utc("2026-03-07 06:00"))
    assert not s.is_open(utc("2026-03-06 03:00"))


def test_window_crossing_midnight_from_thursday_covers_friday_night() -> None:
    s = windows("UTC", (["thu", "fri"], "22:00", "06:00"))
    assert s.is_open(utc("2026-03-06 03:00"))
    assert s.is_open(utc("2026-03-07 03:00"))
    assert not s.is_open(utc("2026-03-06 12:00"))


def test_moscow_window_against_utc() -> None:
    s = windows("Europe/Moscow", (["mon", "tue", "wed", "thu", "fri"], "09:00", "18:00"))
    assert not s.is_open(utc("2026-03-09 05:59"))
    assert s.is_open(utc("2026-03-09 06:00"))
    assert s.is_open(utc("2026-03-09 14:59"))
    assert not s.is_open(utc("2026-03-09 15:00"))


def test_new_york_window_against_utc_in_winter_and_summer() -> None:
    s = windows("America/New_York", (["mon"], "09:00", "17:00"))
    assert s.next_open(utc("2026-01-05 00:00")) == utc("2026-01-05 14:00")
    assert s.next_close(utc("2026-01-05 15:00")) == utc("2026-01-05 22:00")
    assert s.next_open(utc("2026-07-06 00:00")) == utc("2026-07-06 13:00")
    assert s.next_close(utc("2026-07-06 15:00")) == utc("2026-07-06 21:00")


def test_kolkata_half_hour_offset() -> None:
    s = windows("Asia/Kolkata", ("*", "22:00", "06:00"))
    assert not s.is_open(utc("2026-03-09 16:29"))
    assert s.is_open(utc("2026-03-09 16:30"))
    assert s.next_close(utc("2026-03-09 20:00")) == utc("2026-03-10 00:30")
    assert s.next_open(utc("2026-03-10 00:30")) == utc("2026-03-10 16:30")


def test_instants_in_other_zones_are_the_same_instants() -> None:
    s = windows("UTC", (["mon"], "09:00", "18:00"))
    moscow = datetime(2026, 3, 9, 12, 0, tzinfo=ZoneInfo("Europe/Moscow"))
    assert s.is_open(moscow)
    assert s.next_open(moscow) == utc("2026-03-09 09:00")


def test_next_open_across_a_weekend() -> None:
    s = windows("Europe/Moscow", (["mon", "tue", "wed", "thu", "fri"], "09:00", "18:00"))
    friday_evening = utc("2026-03-06 15:00")
    opens = s.next_open(friday_evening)
    assert opens == utc("2026-03-09 06:00")
    assert opens.tzinfo is UTC


def test_next_open_on_spring_forward_day_in_new_york() -> None:
    # 02:30 does not exist on 2026-03-08: the window opens at 03:00 EDT, the moment of the change
    s = windows("America/New_York", ("*", "02:30", "04:00"))
    assert s.next_open(utc("2026-03-08 05:00")) == utc("2026-03-08 07:00")
    assert not s.is_open(utc("2026-03-08 06:59:59"))
    assert s.next_close(utc("2026-03-08 07:00")) == utc("2026-03-08 08:00")
    assert s.next_open(utc("2026-03-08 08:00")) == utc("2026-03-09 06:30")


def test_window_inside_the_skipped_hour_does_not_open_that_day() -> None:
    s = windows("America/New_York", (["sun"], "02:00", "02:30"))
    assert s.next_open(utc("2026-03-08 05:00")) == utc("2026-03-15 06:00")
    # from the Sunday before, the lost occurrence makes the next one two weeks away
    assert s.next_open(utc("2026-03-01 08:00")) == utc("2026-03-15 06:00")


def test_next_open_on_fall_back_day_in_new_york() -> None:
    # 01:30 happens twice on 2026-11-01: the window opens at the first (EDT) and closes at 04:00 EST
    s = windows("America/New_York", (["sun"], "01:30", "04:00"))
    assert s.next_open(utc("2026-11-01 04:00")) == utc("2026-11-01 05:30")
    assert s.is_open(utc("2026-11-01 08:59"))
    assert s.next_close(utc("2026-11-01 05:30")) == utc("2026-11-01 09:00")


def test_window_ending_in_the_repeated_hour_closes_at_its_first_occurrence() -> None:
    s = windows("America/New_York", ("*", "00:00", "01:30"))
    assert s.next_close(utc("2026-11-01 04:30")) == utc("2026-11-01 05:30")
    assert not s.is_open(utc("2026-11-01 06:15"))


def test_start_equal_to_end_is_a_whole_day() -> None:
    s = windows("UTC", (["wed"], "12:00", "12:00"))
    assert s.is_open(utc("2026-03-11 12:00"))
    assert s.is_open(utc("2026-03-12 11:59:59"))
    assert not s.is_open(utc("2026-03-12 12:00"))
    assert s.next_close(utc("2026-03-11 20:00")) == utc("2026-03-12 12:00")


def test_every_day_all_day_never_closes() -> None:
    s = windows("Europe/Moscow", ("all", "00:00", "00:00"))
    assert s.is_open(utc("2026-06-01 00:00"))
    assert s.next_close(utc("2026-06-01 00:00")) is None


def test_next_close_of_a_closed_schedule_is_now() -> None:
    s = windows("UTC", (["mon"], "09:00", "18:00"))
    assert s.next_close(utc("2026-03-10 10:00")) == utc("2026-03-10 10:00")


def test_multiple_windows() -> None:
    s = windows("UTC", (["mon"], "09:00", "12:00"), (["mon"], "14:00", "18:00"), (["sat"], "10:00", "11:00"))
    assert s.next_open(utc("2026-03-09 12:30")) == utc("2026-03-09 14:00")
    assert s.next_open(utc("2026-03-09 18:00")) == utc("2026-03-14 10:00")
    assert not s.is_open(utc("2026-03-09 13:00"))


def test_overlapping_windows_close_together() -> None:
    s = windows("UTC", (["mon"], "09:00", "12:00"), (["mon"], "11:00", "13:00"), (["mon"], "13:00", "14:00"))
    assert s.next_close(utc("2026-03-09 09:30")) == utc("2026-03-09 14:00")


def test_days_accept_star_all_and_any_case() -> None:
    star = windows("UTC", ("*", "01:00", "02:00"))
    assert star.windows[0].days == frozenset(range(7))
    assert windows("UTC", (["all"], "01:00", "02:00")) == star
    assert windows("UTC", (["Mon", " TUE "], "01:00", "02:00")).windows[0].days == frozenset({0, 1})


def test_json_round_trip() -> None:
    data = {
        "mode": "windows",
        "timezone": "Europe/Moscow",
        "windows": [{"days": ["mon", "tue"], "from": "22:00", "to": "06:00"}],
    }
    s = Schedule.from_json(data)
    assert s == Schedule("windows", (Window(frozenset({0, 1}), time(22), time(6)),), "Europe/Moscow")
    assert s.to_json() == data
    assert Schedule.from_json(s.to_json()) == s
    assert Schedule.from_json({"mode": "immediate"}).to_json() == {"mode": "immediate", "timezone": "UTC"}
    assert Schedule.from_json(windows("UTC", ("*", "00:00", "00:00")).to_json()).windows[0].days == frozenset(range(7))


@pytest.mark.parametrize(
    ("data", "sentence"),
    [
        ([], "schedule must be a JSON object"),
        ({}, "schedule.mode must be 'immediate' or 'windows'"),
        ({"mode": "later"}, "schedule.mode must be 'immediate' or 'windows'"),
        ({"mode": 1}, "schedule.mode must be 'immediate' or 'windows'"),
        ({"mode": "immediate", "timezon": "UTC"}, "schedule: unknown key 'timezon'"),
        ({"mode": "immediate", "timezone": "Mars/Base"}, "schedule.timezone 'Mars/Base' is not an IANA time zone"),
        ({"mode": "immediate", "timezone": "../etc"}, "schedule.timezone '../etc' is not an IANA time zone"),
        ({"mode": "immediate", "timezone": 3}, "schedule.timezone 3 is not an IANA time zone"),
        ({"mode": "windows"}, "a windows schedule needs at least one window"),
        ({"mode": "windows", "windows": {}}, "schedule.windows must be a list of windows"),
        ({"mode": "immediate", "windows": [{"days": "*", "from": "01:00", "to": "02:00"}]},
         "an immediate schedule has no windows"),
        ({"mode": "windows", "windows": ["mon"]}, "schedule.windows[0] must be a JSON object"),
        ({"mode": "windows", "windows": [{"days": "*", "form": "01:00", "to": "02:00"}]},
         "schedule.windows[0]: unknown key 'form'"),
        ({"mode": "windows", "windows": [{"days": "*", "from": "9:00", "to": "18:00"}]},
         "schedule.windows[0].from must be HH:MM"),
        ({"mode": "windows", "windows": [{"days": "*", "from": "24:00", "to": "18:00"}]},
         "schedule.windows[0].from must be HH:MM"),
        ({"mode": "windows", "windows": [{"days": "*", "to": "18:00"}]}, "schedule.windows[0].from must be HH:MM"),
        ({"mode": "windows", "windows": [{"days": "*", "from": "09:00", "to": 1800}]},
         "schedule.windows[0].to must be HH:MM"),
        ({"mode": "windows", "windows": [{"days": "*", "from": "09:00", "to": "18:60"}]},
         "schedule.windows[0].to must be HH:MM"),
        ({"mode": "windows", "windows": [{"days": "*", "from": "01:00", "to": "02:00"},
                                         {"days": ["mon", "funday"], "from": "01:00", "to": "02:00"}]},
         "schedule.windows[1].days: 'funday' is not a day (mon…sun)"),
        ({"mode": "windows", "windows": [{"days": [1], "from": "01:00", "to": "02:00"}]},
         "schedule.windows[0].days: 1 is not a day (mon…sun)"),
        ({"mode": "windows", "windows": [{"days": [], "from": "01:00", "to": "02:00"}]},
         "schedule.windows[0].days must be a list of days (mon…sun) or '*'"),
        ({"mode": "windows", "windows": [{"from": "01:00", "to": "02:00"}]},
         "schedule.windows[0].days must be a list of days (mon…sun) or '*'"),
    ],
)
def test_validation_sentences(data: Any, sentence: str) -> None:
    with pytest.raises(ConfigError) as info:
        Schedule.from_json(data)
    assert str(info.value) == sentence


def test_window_days_must_be_weekdays() -> None:
    for days in (frozenset(), frozenset({7})):
        with pytest.raises(ConfigError) as info:
            Window(days, time(1), time(2))
        assert str(info.value) == "window days must be 0 (Monday) to 6 (Sunday), at least one"


def test_naive_instants_are_refused() -> None:
    s = windows("UTC", ("*", "01:00", "02:00"))
    with pytest.raises(ValueError, match=r"^schedule instants must be timezone-aware$"):
        s.is_open(datetime(2026, 3, 9, 1, 30))


def test_next_open_search_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedule_module, "SEARCH_DAYS", 0)
    s = windows("UTC", (["mon"], "01:00", "02:00"))
    with pytest.raises(ConfigError) as info:
        s.next_open(utc("2026-03-09 03:00"))
    assert str(info.value) == "schedule has no window that opens within 0 days"


def test_system_clock_is_utc_now() -> None:
    now = SystemClock().now()
    assert now.tzinfo is UTC
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(datetime(2026, 3, 9, 12, 0, tzinfo=ZoneInfo("Europe/Moscow")))
    assert clock.now() == utc("2026-03-09 09:00")
    assert clock.now().tzinfo is UTC
    clock.advance(90.5)
    assert clock.now() == utc("2026-03-09 09:01:30.5")
    clock.set(utc("2026-11-01 06:00"))
    assert clock.now() == utc("2026-11-01 06:00")
    with pytest.raises(ValueError):
        clock.set(datetime(2026, 1, 1))


def test_fake_clock_advances_from_many_threads() -> None:
    clock = FakeClock(utc("2026-01-01 00:00"))

    def tick() -> None:
        for _ in range(1000):
            clock.advance(1)

    threads = [threading.Thread(target=tick) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.now() == utc("2026-01-01 00:00") + timedelta(seconds=8000)


def test_offset_clock_is_system_time_shifted() -> None:
    shifted = OffsetClock(-86400).now()
    assert shifted.tzinfo is UTC
    assert abs(shifted - (datetime.now(UTC) - timedelta(days=1))) < timedelta(seconds=5)


def test_clock_from_env() -> None:
    assert isinstance(clock_from_env({}), SystemClock)
    clock = clock_from_env({"CALLREC_CLOCK_OFFSET_S": "3600.5"})
    assert isinstance(clock, OffsetClock)
    assert clock.offset == timedelta(seconds=3600.5)


def test_clock_from_env_refuses_a_bad_offset() -> None:
    for text in ("soon", "", "nan", "inf"):
        with pytest.raises(ConfigError) as info:
            clock_from_env({"CALLREC_CLOCK_OFFSET_S": text})
        assert str(info.value) == f"CALLREC_CLOCK_OFFSET_S must be a number, not {text!r}"


ZONES = ("UTC", "Europe/Moscow", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "America/Santiago")


def _transitions(zone: str) -> list[datetime]:
    """Hours of 2026 at which ``zone`` changes its offset, so DST days get sampled."""
    tz, t, out = ZoneInfo(zone), utc("2026-01-01 00:00"), []
    while t.year == 2026:
        if t.astimezone(tz).utcoffset() != (t + timedelta(hours=1)).astimezone(tz).utcoffset():
            out.append(t)
        t += timedelta(hours=1)
    return out


TRANSITIONS = [t for zone in ZONES for t in _transitions(zone)]
minutes = st.builds(time, st.integers(0, 23), st.sampled_from([0, 1, 15, 30, 45, 59]))
random_windows = st.builds(Window, st.frozensets(st.integers(0, 6), min_size=1), minutes, minutes)
schedules = st.builds(
    Schedule,
    mode=st.just("windows"),
    windows=st.lists(random_windows, min_size=1, max_size=3).map(tuple),
    timezone=st.sampled_from(ZONES),
)
instants = st.one_of(
    st.datetimes(datetime(2025, 1, 1), datetime(2028, 1, 1), timezones=st.just(UTC)),
    st.builds(lambda t, s: t + timedelta(seconds=s), st.sampled_from(TRANSITIONS), st.integers(-2 * 86400, 2 * 86400)),
)


@settings(max_examples=300, deadline=None)
@given(schedules, instants)
def test_next_open_is_open_and_nothing_before_it_is(s: Schedule, t: datetime) -> None:
    opens = s.next_open(t)
    assert opens >= t
    assert s.is_open(opens)
    if opens > t:
        samples = [t + (opens - t) * k / 8 for k in range(8)] + [opens - timedelta(seconds=1)]
        assert not any(s.is_open(at) for at in samples if at >= t)
    closes = s.next_close(opens)
    if closes is not None:
        assert closes > opens
        assert not s.is_open(closes)
        assert s.is_open(closes - timedelta(seconds=1))
