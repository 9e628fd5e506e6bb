"""Retention: default, rules in order, per-call overrides, legal hold, expiry boundary, validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from callrec.config import ConfigError
from callrec.service.retention import (
    CallFacts,
    RetentionPolicy,
    RetentionRule,
    expires_at,
    is_expired,
    normalise_number,
    retention_days,
)

ENDED = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)


def call(**kwargs: Any) -> CallFacts:
    return CallFacts(ended_at=ENDED, **kwargs)


def test_default_days() -> None:
    policy = RetentionPolicy(default_days=90)
    assert retention_days(policy, call()) == 90
    assert expires_at(policy, call()) == ENDED + timedelta(days=90)


def test_no_retention_keeps_forever() -> None:
    policy = RetentionPolicy()
    assert retention_days(policy, call()) is None
    assert expires_at(policy, call()) is None
    assert not is_expired(policy, call(), ENDED + timedelta(days=365 * 100))


def test_rule_on_direction() -> None:
    policy = RetentionPolicy(30, (RetentionRule(365, direction="inbound"),))
    assert retention_days(policy, call(direction="inbound")) == 365
    assert retention_days(policy, call(direction="outbound")) == 30
    assert retention_days(policy, call()) == 30


def test_rule_on_number_matches_any_party() -> None:
    policy = RetentionPolicy(30, (RetentionRule(365, number="+7495*"),))
    assert retention_days(policy, call(numbers=("+15551234567", "+74951234567"))) == 365
    assert retention_days(policy, call(numbers=("+74991234567",))) == 30
    assert retention_days(policy, call()) == 30


def test_number_question_mark_is_one_digit() -> None:
    policy = RetentionPolicy(30, (RetentionRule(7, number="100?"),))
    assert retention_days(policy, call(numbers=("1005",))) == 7
    assert retention_days(policy, call(numbers=("100",))) == 30
    assert retention_days(policy, call(numbers=("10055",))) == 30


def test_numbers_ignore_spaces_dashes_and_parentheses() -> None:
    assert normalise_number("+7 (495) 123-45-67") == "+74951234567"
    policy = RetentionPolicy(30, (RetentionRule(365, number="+7 (495) *"),))
    assert retention_days(policy, call(numbers=("+7 (495) 123-45-67",))) == 365


def test_rule_on_tag_ignores_case() -> None:
    policy = RetentionPolicy(30, (RetentionRule(365, tag="vip"),))
    assert retention_days(policy, call(tags=("sales", "VIP"))) == 365
    assert retention_days(policy, call(tags=("sales",))) == 30


def test_rule_needs_every_condition() -> None:
    rule = RetentionRule(365, direction="inbound", number="+7495*", tag="vip")
    policy = RetentionPolicy(30, (rule,))
    everything = {"direction": "inbound", "numbers": ("+74951234567",), "tags": ("vip",)}
    assert retention_days(policy, call(**everything)) == 365
    assert retention_days(policy, call(**{**everything, "direction": "outbound"})) == 30
    assert retention_days(policy, call(**{**everything, "numbers": ("+1555",)})) == 30
    assert retention_days(policy, call(**{**everything, "tags": ()})) == 30


def test_rule_without_conditions_matches_every_call() -> None:
    policy = RetentionPolicy(30, (RetentionRule(None),))
    assert retention_days(policy, call(direction="internal")) is None


def test_first_matching_rule_wins() -> None:
    policy = RetentionPolicy(30, (RetentionRule(7, tag="test"), RetentionRule(365, direction="inbound")))
    assert retention_days(policy, call(direction="inbound", tags=("test",))) == 7
    reversed_policy = RetentionPolicy(30, tuple(reversed(policy.rules)))
    assert retention_days(reversed_policy, call(direction="inbound", tags=("test",))) == 365


def test_rule_can_keep_forever() -> None:
    policy = RetentionPolicy(30, (RetentionRule(None, tag="vip"),))
    assert expires_at(policy, call(tags=("vip",))) is None


def test_override_days_beats_rules_and_default() -> None:
    policy = RetentionPolicy(30, (RetentionRule(365, direction="inbound"),))
    assert retention_days(policy, call(direction="inbound", override_days=3)) == 3
    assert expires_at(policy, call(override_days=3)) == ENDED + timedelta(days=3)


def test_override_forever_beats_everything_else() -> None:
    policy = RetentionPolicy(30, (RetentionRule(365, direction="inbound"),))
    facts = call(direction="inbound", override_days=3, override_forever=True)
    assert retention_days(policy, facts) is None
    assert expires_at(policy, facts) is None


def test_legal_hold_beats_everything() -> None:
    policy = RetentionPolicy(1, (RetentionRule(1),))
    facts = call(override_days=1, legal_hold=True)
    assert retention_days(policy, facts) == 1
    assert expires_at(policy, facts) is None
    assert not is_expired(policy, facts, ENDED + timedelta(days=10_000))


def test_expiry_boundary_is_exactly_ended_at_plus_days() -> None:
    policy = RetentionPolicy(90)
    boundary = ENDED + timedelta(days=90)
    assert not is_expired(policy, call(), boundary - timedelta(microseconds=1))
    assert is_expired(policy, call(), boundary)
    assert is_expired(policy, call(), boundary + timedelta(seconds=1))


def test_override_too_far_in_the_future_never_expires() -> None:
    assert expires_at(RetentionPolicy(), call(override_days=10**9)) is None


def test_json_round_trip() -> None:
    data = {
        "days": 90,
        "rules": [
            {"days": 365, "direction": "inbound", "number": "+7495*", "tag": "vip"},
            {"days": None, "tag": "legal"},
            {"days": 7},
        ],
    }
    policy = RetentionPolicy.from_json(data)
    assert policy == RetentionPolicy(
        90,
        (
            RetentionRule(365, direction="inbound", number="+7495*", tag="vip"),
            RetentionRule(None, tag="legal"),
            RetentionRule(7),
        ),
    )
    assert policy.to_json() == data
    assert RetentionPolicy.from_json(policy.to_json()) == policy
    assert RetentionPolicy.from_json({}) == RetentionPolicy()
    assert RetentionPolicy().to_json() == {"days": None, "rules": []}


def test_from_json_normalises_number_and_tag() -> None:
    policy = RetentionPolicy.from_json({"rules": [{"days": 1, "number": "+7 (495) 1*", "tag": " vip "}]})
    assert policy.rules[0] == RetentionRule(1, number="+74951*", tag="vip")


@pytest.mark.parametrize(
    ("data", "sentence"),
    [
        ([], "retention must be a JSON object"),
        ({"dayz": 90}, "retention: unknown key 'dayz'"),
        ({"days": 0}, "retention.days must be a whole number of days ≥ 1 or null"),
        ({"days": -5}, "retention.days must be a whole number of days ≥ 1 or null"),
        ({"days": 1.5}, "retention.days must be a whole number of days ≥ 1 or null"),
        ({"days": "90"}, "retention.days must be a whole number of days ≥ 1 or null"),
        ({"days": True}, "retention.days must be a whole number of days ≥ 1 or null"),
        ({"days": 36501}, "retention.days must be at most 36500 (100 years); null keeps forever"),
        ({"rules": {}}, "retention.rules must be a list of rules"),
        ({"rules": [7]}, "retention.rules[0] must be a JSON object"),
        ({"rules": [{"days": 1}, {"days": 1, "numbr": "1*"}]}, "retention.rules[1]: unknown key 'numbr'"),
        ({"rules": [{"days": 1}, {"days": 2}, {"tag": "vip"}]}, "retention.rules[2] has no days"),
        ({"rules": [{"days": 0}]}, "retention.rules[0].days must be a whole number of days ≥ 1 or null"),
        ({"rules": [{"days": 40000}]}, "retention.rules[0].days must be at most 36500 (100 years); null keeps forever"),
        ({"rules": [{"days": 1, "direction": "in"}]},
         "retention.rules[0].direction must be inbound, outbound or internal"),
        ({"rules": [{"days": 1, "direction": "Inbound"}]},
         "retention.rules[0].direction must be inbound, outbound or internal"),
        ({"rules": [{"days": 1, "number": "[0-9]*"}]},
         "retention.rules[0].number must be digits and + with * and ? wildcards"),
        ({"rules": [{"days": 1, "number": "sip:alice"}]},
         "retention.rules[0].number must be digits and + with * and ? wildcards"),
        ({"rules": [{"days": 1, "number": " - "}]},
         "retention.rules[0].number must be digits and + with * and ? wildcards"),
        ({"rules": [{"days": 1, "number": 7495}]},
         "retention.rules[0].number must be digits and + with * and ? wildcards"),
        ({"rules": [{"days": 1, "tag": ""}]}, "retention.rules[0].tag must be a non-empty string"),
        ({"rules": [{"days": 1, "tag": ["vip"]}]}, "retention.rules[0].tag must be a non-empty string"),
    ],
)
def test_validation_sentences(data: Any, sentence: str) -> None:
    with pytest.raises(ConfigError) as info:
        RetentionPolicy.from_json(data)
    assert str(info.value) == sentence
