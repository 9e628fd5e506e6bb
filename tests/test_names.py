"""``callrec.names.safe_name``: one function, each caller's rules as they were (names on disk and in storage
keys must not change)."""

from __future__ import annotations

import hashlib

import pytest

from callrec.names import SAFE_CHARS, Dots, safe_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abc-DEF_0.9", "abc-DEF_0.9"),
        ("a@b c/d", "a_b_c_d"),
        ("%40é\n", "_40__"),
        ("", "_"),
        ("..", ".."),  # kept by default: the mixer's file names and the API's download names always had them
    ],
)
def test_the_default_rule_replaces_every_unsafe_character(text: str, expected: str) -> None:
    assert safe_name(text) == expected


def test_the_safe_characters_are_ascii_letters_digits_dot_underscore_and_dash() -> None:
    assert "".join(sorted(SAFE_CHARS)) == "-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"


def test_a_limit_cuts_the_name() -> None:
    assert safe_name("x" * 100, limit=80) == "x" * 80
    assert safe_name("x@" * 50, limit=100) == "x_" * 50
    assert safe_name("short", limit=80) == "short"


def test_an_empty_name_becomes_what_the_caller_says() -> None:
    assert safe_name("", limit=80, empty="call") == "call"
    assert safe_name("..", dots="strip", empty="call") == "call"


@pytest.mark.parametrize(("dots", "expected"), [("keep", "..a.b"), ("strip", "a.b"), ("escape", "__a.b")])
def test_leading_dots_are_kept_stripped_or_escaped(dots: Dots, expected: str) -> None:
    assert safe_name("..a.b", dots=dots) == expected


def test_extra_characters_can_be_kept() -> None:
    assert safe_name("a@b+c=d e", extra="@+=") == "a@b+c=d_e"
    assert safe_name("a@b+c=d e") == "a_b_c_d_e"


def test_a_long_name_cut_with_a_digest_stays_unique_and_as_long_as_the_limit() -> None:
    a, b = "y" * 200 + "a", "y" * 200 + "b"
    ka, kb = safe_name(a, limit=128, digest=True), safe_name(b, limit=128, digest=True)
    assert ka != kb and len(ka) == len(kb) == 128
    assert ka == "y" * 111 + "-" + hashlib.sha256(a.encode()).hexdigest()[:16]
    assert safe_name("y" * 128, limit=128, digest=True) == "y" * 128


def test_the_digest_is_of_the_text_as_given_even_when_it_cannot_be_encoded() -> None:
    text = "\ud800" * 130  # a lone surrogate (from a bad header), hashed as it is
    expected = "_" * 111 + "-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    assert safe_name(text, limit=128, digest=True) == expected
