"""Object key templates: validation of the template, sanitising of the values, rendering in UTC."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callrec.config import ConfigError
from callrec.storage import check_key
from callrec.storage.keys import (
    DEFAULT_RECORDING_TEMPLATE,
    DEFAULT_TAPE_TEMPLATE,
    FIELDS,
    TIME_FIELDS,
    render_key,
    sanitise,
    validate_template,
)

WHEN = datetime(2024, 2, 29, 23, 5, 7, tzinfo=UTC)
IDS = {"domain": "acme.example", "call_id": "c1", "recording_id": "r1", "ext": "mp3"}


def test_the_defaults_are_valid() -> None:
    validate_template(DEFAULT_RECORDING_TEMPLATE)
    validate_template(DEFAULT_RECORDING_TEMPLATE, kind="recording")
    validate_template(DEFAULT_TAPE_TEMPLATE, kind="tape")


def test_the_default_recording_key() -> None:
    key = render_key(DEFAULT_RECORDING_TEMPLATE, when=WHEN, **IDS)
    assert key == "recordings/acme.example/2024/02/29/c1-r1.mp3"


def test_the_default_tape_prefix() -> None:
    key = render_key(DEFAULT_TAPE_TEMPLATE, when=WHEN, domain="acme", tape="20240229-abc")
    assert key == "tapes/acme/2024/02/29/20240229-abc"
    check_key(key + "/media.pcap")


def test_time_fields_are_utc() -> None:
    # 01:30 on 1 March at +02:00 is still 29 February, 23 h, in UTC
    when = datetime(2024, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert render_key("{yyyy}-{mm}-{dd}T{hh}/{call_id}", when=when, call_id="c") == "2024-02-29T23/c"


def test_a_naive_time_is_taken_as_utc() -> None:
    when = datetime(2024, 1, 2, 3, 4)
    assert render_key("{yyyy}/{mm}/{dd}/{hh}/{call_id}", when=when, call_id="c") == "2024/01/02/03/c"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain-Value_1.2@x+y=z", "plain-Value_1.2@x+y=z"),
        ("a/b", "a_b"),
        ("a b\tc", "a_b_c"),
        ("..", "__"),
        (".", "_"),
        (".hidden", "_hidden"),
        ("../../etc/passwd", "___.._etc_passwd"),
        ("", "_"),
        ("Zürich", "Z_rich"),
        ("a\\b\x00c", "a_b_c"),
        ("{domain}", "_domain_"),
        (None, "_"),
        (42, "42"),
    ],
)
def test_values_are_sanitised(value: object, expected: str) -> None:
    assert sanitise(value) == expected


def test_a_value_cannot_add_path_segments() -> None:
    key = render_key(DEFAULT_RECORDING_TEMPLATE, when=WHEN, domain="../../x", call_id="/etc", recording_id="..", ext="")
    assert key == "recordings/___.._x/2024/02/29/_etc-__._"
    assert key.count("/") == DEFAULT_RECORDING_TEMPLATE.count("/")


def test_long_values_are_cut_but_stay_distinct() -> None:
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    ka, kb = sanitise(a), sanitise(b)
    assert len(ka) == len(kb) == 128
    assert ka != kb
    assert sanitise("y" * 128) == "y" * 128


def test_a_field_not_passed_renders_as_underscore() -> None:
    assert render_key("{domain}/{interaction}/{call_id}", when=WHEN, call_id="c") == "_/_/c"


def test_unknown_or_clock_fields_passed_to_render_are_a_programming_error() -> None:
    with pytest.raises(TypeError, match="unknown key fields: colour"):
        render_key(DEFAULT_RECORDING_TEMPLATE, when=WHEN, colour="red", **IDS)
    with pytest.raises(TypeError, match="takes yyyy from when"):
        render_key(DEFAULT_RECORDING_TEMPLATE, when=WHEN, yyyy="1999", **IDS)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("/recordings/{call_id}", "must be relative"),
        ("rec/{call_id", "unbalanced braces"),
        ("rec/call_id}", "unbalanced braces"),
        ("rec/{colour}/{call_id}", "unknown field {colour}"),
        ("rec/{}/{call_id}", "unknown field {}"),
        ("rec/{0}/{call_id}", "unknown field {0}"),
        ("rec/{call_id.real}", "unknown field {call_id.real}"),
        ("rec/{call_id[0]}", "unknown field {call_id[0]}"),
        ("rec/{call_id:>10}", "only plain {call_id} works"),
        ("rec/{call_id!r}", "only plain {call_id} works"),
        ("rec/../{call_id}", "must not contain '.' or '..' path steps"),
        ("rec//{call_id}", "must not have an empty path segment"),
        ("rec/{call_id}/", "must not have an empty path segment"),
        ("rec\\{call_id}", "must not contain a backslash"),
        ("rec/.{call_id}", "does not make a valid object key"),
        ("rec/{domain}.{ext}", "must contain {recording_id} or {call_id}"),
    ],
)
def test_bad_recording_templates(template: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^recording key template.*" + re.escape(message)):
        validate_template(template, kind="recording")


def test_tape_templates_need_the_tape_field() -> None:
    with pytest.raises(ConfigError, match=r"must contain \{tape\} so that keys are unique"):
        validate_template("tapes/{domain}/{call_id}", kind="tape")
    with pytest.raises(ConfigError, match=r"must contain \{recording_id\} or \{call_id\}"):
        validate_template(DEFAULT_TAPE_TEMPLATE, kind="recording")


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match="kind 'video' is not one of recording, tape"):
        validate_template(DEFAULT_RECORDING_TEMPLATE, kind="video")


def test_render_refuses_a_bad_template() -> None:
    with pytest.raises(ConfigError, match="unknown field"):
        render_key("x/{nope}", when=WHEN)


def test_escaped_braces_are_literal() -> None:
    validate_template("rec/{{x}}/{call_id}")
    assert render_key("rec/{{x}}/{call_id}", when=WHEN, call_id="c") == "rec/{x}/c"


@given(values=st.dictionaries(st.sampled_from([f for f in FIELDS if f not in TIME_FIELDS]), st.text(max_size=300)))
def test_any_values_render_a_valid_key_with_the_template_shape(values: dict[str, str]) -> None:
    template = "r/{domain}/{interaction}/{direction}/{yyyy}/{call_id}/{recording_id}/{tape}.{ext}"
    key = render_key(template, when=WHEN, **values)
    assert check_key(key) == key
    assert key.count("/") == template.count("/")
