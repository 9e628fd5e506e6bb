"""Calls: search and keyset pagination, the call card, retention override, tags, interactions."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import httpx
import pytest

from callrec.files.scan import calls_in_capture
from tests.api.conftest import Api, Captures, Mixed, Tenant, detail

CALLS = "/api/v1/calls"
# the seven calls start at 1_700_000_000 - 0.5 + 10 k (their INVITEs)
SEVEN_FIRST = 1_700_000_000 - 0.5


@pytest.fixture(scope="module")
def seven(api: Api, captures: Captures) -> tuple[Tenant, list[str]]:
    owner = api.tenant()
    ids = api.upload(owner.headers, captures.seven)
    assert len(ids) == 7
    return owner, ids


def _sip_ids(answer: httpx.Response) -> list[str]:
    return [c["call_id"] for c in answer.json()["items"]]


def test_search_lists_newest_first(api: Api, seven: tuple[Tenant, list[str]]) -> None:
    owner, ids = seven
    answer = api.client.get(CALLS, headers=owner.headers)
    assert answer.status_code == 200
    assert _sip_ids(answer) == [f"call-{k}@test" for k in reversed(range(7))]
    assert answer.json()["next_cursor"] is None
    assert {c["id"] for c in answer.json()["items"]} == set(ids)


def test_cursor_pagination_returns_every_call_once(api: Api, seven: tuple[Tenant, list[str]]) -> None:
    owner, ids = seven
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = api.client.get(CALLS, headers=owner.headers, params=params).json()
        seen += [c["id"] for c in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 7 and set(seen) == set(ids)


def test_pagination_orders_calls_of_one_instant_by_id(api: Api, tenant: Tenant, captures: Captures) -> None:
    # the same capture uploaded seven times: seven calls with the very same started_at
    ids = [api.upload(tenant.headers, captures.one, mix=False)[0] for _ in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = api.client.get(CALLS, headers=tenant.headers, params=params).json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)
    api.run_jobs()


def test_a_malformed_cursor_is_400(api: Api, tenant: Tenant) -> None:
    edge = base64.urlsafe_b64encode(b'{"t": "0001-01-01T00:00:00+05:00", "id": "ab"}').decode()
    for cursor in ("not-base64!", "bnVsbA", "eyJ0IjogMX0", edge):  # garbage, JSON null, {"t": 1}, year 0
        answer = api.client.get(CALLS, headers=tenant.headers, params={"cursor": cursor})
        assert answer.status_code == 400 and detail(answer) == "the cursor is not valid", cursor


def test_search_by_time_in_iso_or_epoch_seconds(api: Api, seven: tuple[Tenant, list[str]]) -> None:
    owner, _ = seven
    since = datetime.fromtimestamp(SEVEN_FIRST + 20, UTC).isoformat()
    answer = api.client.get(CALLS, headers=owner.headers, params={"since": since, "until": str(SEVEN_FIRST + 40)})
    assert _sip_ids(answer) == ["call-3@test", "call-2@test"]
    # call-5 starts at 22:14:09.5 UTC, call-6 at 22:14:19.5
    for since in ("2023-11-14T22:14:10Z", "2023-11-14T23:14:10+01:00"):
        answer = api.client.get(CALLS, headers=owner.headers, params={"since": since})
        assert _sip_ids(answer) == ["call-6@test"], since


def test_a_bad_time_is_422(api: Api, tenant: Tenant) -> None:
    for value in ("yesterday", "2024-01-01T00:00:00", "1e999"):
        answer = api.client.get(CALLS, headers=tenant.headers, params={"since": value})
        assert answer.status_code == 422, value
        assert detail(answer) == "since must be an ISO 8601 time with a time zone, or seconds since the epoch"


def test_search_by_number_exact_or_prefix(api: Api, seven: tuple[Tenant, list[str]]) -> None:
    owner, _ = seven
    exact = api.client.get(CALLS, headers=owner.headers, params={"number": "5550003"})
    assert _sip_ids(exact) == ["call-3@test"]
    prefix = api.client.get(CALLS, headers=owner.headers, params={"number": "555000*"})
    assert len(prefix.json()["items"]) == 7
    callee = api.client.get(CALLS, headers=owner.headers, params={"number": "200", "limit": 2})
    assert _sip_ids(callee) == ["call-6@test", "call-5@test"]
    assert api.client.get(CALLS, headers=owner.headers, params={"number": "555"}).json()["items"] == []


def test_search_by_sip_call_id_state_and_direction(api: Api, seven: tuple[Tenant, list[str]]) -> None:
    owner, _ = seven
    by_id = api.client.get(CALLS, headers=owner.headers, params={"call_id": "call-4@test"})
    assert _sip_ids(by_id) == ["call-4@test"]
    done = api.client.get(CALLS, headers=owner.headers, params={"state": "completed"})
    assert len(done.json()["items"]) == 7
    assert api.client.get(CALLS, headers=owner.headers, params={"state": "failed"}).json()["items"] == []
    assert api.client.get(CALLS, headers=owner.headers, params={"direction": "inbound"}).json()["items"] == []


def test_bad_filters_are_422_naming_the_parameter(api: Api, tenant: Tenant) -> None:
    cases = {
        "limit=0": "limit: Input should be greater than or equal to 1",
        "limit=501": "limit: Input should be less than or equal to 500",
        "state=lost": "state: Input should be 'recording', 'queued', 'mixing', 'storing', 'completed', "
        "'failed' or 'deleted'",
        "direction=up": "direction: Input should be 'inbound', 'outbound' or 'internal'",
    }
    for query, sentence in cases.items():
        answer = api.client.get(f"{CALLS}?{query}", headers=tenant.headers)
        assert answer.status_code == 422 and detail(answer) == sentence, query


def test_another_domains_calls_are_never_listed(api: Api, seven: tuple[Tenant, list[str]], other: Tenant) -> None:
    owner, ids = seven
    assert api.client.get(CALLS, headers=other.headers).json()["items"] == []
    assert api.client.get(CALLS, headers=other.headers, params={"call_id": "call-1@test"}).json()["items"] == []
    admin = api.client.get(CALLS, headers=api.admin, params={"limit": 500}).json()["items"]
    assert set(ids) <= {c["id"] for c in admin}


# --- the call card -------------------------------------------------------------------------------------


def test_the_call_card(api: Api, mixed: Mixed) -> None:
    card = api.card(mixed.tenant.headers, mixed.call_id)
    assert card["id"] == mixed.call_id and card["call_id"] == "call-1@test" and card["call_ids"] == ["call-1@test"]
    assert card["domain"] == mixed.tenant.name and card["source"] == "upload" and card["closed_cleanly"] is True
    assert card["started_at"] == "2023-11-14T22:13:19.500000Z"
    assert card["duration_s"] == pytest.approx(3.2, abs=0.01)
    assert [(p["label"], p["role"], p["number"]) for p in card["parties"]] == [("A", "caller", "100"),
                                                                              ("B", "callee", "200")]  # fmt: skip
    assert {s["party"] for s in card["streams"]} == {"A", "B"}
    assert all(s["quality"]["packets"] > 0 and s["quality"]["lost"] == 0 for s in card["streams"])
    rec = card["recording"]
    assert rec["state"] == "completed" and rec["format"] == "mp3" and rec["bytes"] > 0
    assert rec["duration_s"] == pytest.approx(2.5, abs=0.05)
    assert rec["audio_url"].endswith(f"/api/v1/recordings/{rec['id']}/audio")
    assert card["recordings"] == [rec]
    assert card["tape"] == {"stored": False, "deleted": True}  # keep_tape_days 0: gone once mixed
    assert card["retention"] == {"days": None, "forever": False, "legal_hold": False, "expires_at": None}


def test_a_missing_or_foreign_call_is_404(api: Api, mixed: Mixed, other: Tenant) -> None:
    for call_id in ("0" * 32, "not-an-id"):
        answer = api.client.get(f"{CALLS}/{call_id}", headers=mixed.tenant.headers)
        assert answer.status_code == 404 and detail(answer) == f"no call {call_id!r}"
    foreign = api.client.get(f"{CALLS}/{mixed.call_id}", headers=other.headers)
    assert foreign.status_code == 404 and detail(foreign) == f"no call {mixed.call_id!r}"
    assert api.client.get(f"{CALLS}/{mixed.call_id}", headers=api.admin).status_code == 200


# --- retention and tags --------------------------------------------------------------------------------


def test_retention_override_sets_the_expiry(api: Api, tenant: Tenant, captures: Captures) -> None:
    (call_id,) = api.upload(tenant.headers, captures.one)
    path = f"{CALLS}/{call_id}/retention"
    answer = api.client.put(path, headers=tenant.headers, json={"days": 30})
    assert answer.status_code == 200
    body = answer.json()
    assert body["days"] == 30 and body["forever"] is False and body["expires_at"] is not None
    ended = datetime.fromisoformat(api.card(tenant.headers, call_id)["ended_at"])
    assert (datetime.fromisoformat(body["expires_at"]) - ended).days == 30
    held = api.client.put(path, headers=tenant.headers, json={"days": 30, "legal_hold": True}).json()
    assert held["legal_hold"] is True and held["expires_at"] is None
    assert api.card(tenant.headers, call_id)["retention"] == held


def test_bad_retention_is_422_and_another_domains_call_is_404(api: Api, mixed: Mixed, other: Tenant) -> None:
    path = f"{CALLS}/{mixed.call_id}/retention"
    zero = api.client.put(path, headers=mixed.tenant.headers, json={"days": 0})
    assert zero.status_code == 422 and detail(zero) == "days: Input should be greater than or equal to 1"
    extra = api.client.put(path, headers=mixed.tenant.headers, json={"keep": True})
    assert extra.status_code == 422 and detail(extra) == "keep: Extra inputs are not permitted"
    foreign = api.client.put(path, headers=other.headers, json={"days": 1})
    assert foreign.status_code == 404 and detail(foreign) == f"no call {mixed.call_id!r}"


def test_tags_replace_and_deduplicate(api: Api, mixed: Mixed, other: Tenant) -> None:
    path = f"{CALLS}/{mixed.call_id}/tags"
    answer = api.client.put(path, headers=mixed.tenant.headers, json={"tags": ["vip", "sales", "vip"]})
    assert answer.status_code == 200 and answer.json() == {"tags": ["vip", "sales"]}
    assert api.card(mixed.tenant.headers, mixed.call_id)["tags"] == ["vip", "sales"]
    too_many = api.client.put(path, headers=mixed.tenant.headers, json={"tags": [str(i) for i in range(51)]})
    assert too_many.status_code == 422
    assert detail(too_many) == "tags: List should have at most 50 items after validation, not 51"
    too_long = api.client.put(path, headers=mixed.tenant.headers, json={"tags": ["x" * 101]})
    assert too_long.status_code == 422 and detail(too_long) == "tags.0: String should have at most 100 characters"
    foreign = api.client.put(path, headers=other.headers, json={"tags": []})
    assert foreign.status_code == 404
    assert api.card(mixed.tenant.headers, mixed.call_id)["tags"] == ["vip", "sales"]


# --- interactions --------------------------------------------------------------------------------------


def test_an_interactions_calls_in_time_order(api: Api, tenant: Tenant, other: Tenant, captures: Captures) -> None:
    infos = calls_in_capture(captures.seven)
    ids = []
    for info in (infos[4], infos[1]):
        info.interaction_id = "ucid-42"
        ids += api.upload(tenant.headers, captures.seven, call_json=json.dumps(info.to_json()).encode())
    answer = api.client.get("/api/v1/interactions/ucid-42", headers=tenant.headers)
    assert answer.status_code == 200
    body = answer.json()
    assert body["id"] == "ucid-42"
    assert [c["call_id"] for c in body["calls"]] == ["call-1@test", "call-4@test"]
    assert {c["id"] for c in body["calls"]} == set(ids)
    by_filter = api.client.get(CALLS, headers=tenant.headers, params={"interaction": "ucid-42"}).json()["items"]
    assert [c["call_id"] for c in by_filter] == ["call-4@test", "call-1@test"]
    for headers, name in ((other.headers, "ucid-42"), (tenant.headers, "ucid-43")):
        missing = api.client.get(f"/api/v1/interactions/{name}", headers=headers)
        assert missing.status_code == 404 and detail(missing) == f"no interaction {name!r}"
