"""The UI's pages and page data over HTTP (TestClient, SQLite and PostgreSQL): what the picture says of a
party who sends no speech, and an admin's choice of domain for an interaction id that two domains use."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from callrec.app import create_app
from callrec.files.scan import calls_in_capture
from callrec.web.ui_pages import voices
from tests.api.conftest import ADMIN_KEY, Api, Captures, Mixed, Tenant
from tests.api.test_links import make_link
from tests.web.conftest import tone_capture

OWN = {"Origin": "http://testserver"}


@pytest.fixture
def browser(api: Api) -> Iterator[TestClient]:
    """A client of its own, so its session cookie is its own."""
    with TestClient(create_app(api.service)) as client:
        yield client


def _sign_in(client: TestClient, key: str) -> None:
    answer = client.post("/ui/signin", data={"key": key}, headers=OWN, follow_redirects=False)
    assert answer.status_code == 303, answer.text


def _key(tenant: Tenant) -> str:
    return tenant.headers["Authorization"].removeprefix("Bearer ")


# --- a party without speech ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_party_who_only_sends_a_tone_is_said_to_hold_no_speech(api: Api, browser: TestClient, tmp_path: Path) -> None:
    owner = api.tenant()
    (call_id,) = api.upload(owner.headers, tone_capture(tmp_path / "tone.pcap", 8.0, "tone-http@test"))
    card = api.card(owner.headers, call_id)
    speech = {s["party"]: s["quality"]["speech"] for s in card["streams"]}
    assert speech["B"] == [] and speech["A"], speech  # what the speech meter made of it
    _sign_in(browser, _key(owner))
    drawn = browser.get(f"/ui/recordings/{card['recording']['id']}/picture").json()
    assert [(s["party"], s["channel"]) for s in drawn["speakers"]] == [("A", 0), ("B", 1)]
    assert drawn["voices"] == [
        {"party": "A", "heard": "speech", "text": "speech"},
        {"party": "B", "heard": "steady", "text": "tone or steady noise, no speech detected"},
    ]
    # the public page's picture says the same
    _, token = make_link(api, owner, card["recording"]["id"])
    public = api.client.get(f"/r/{token}/picture").json()
    assert [v["heard"] for v in public["voices"]] == ["speech", "steady"]


def test_both_parties_speaking_are_speech(browser: TestClient, mixed: Mixed) -> None:
    _sign_in(browser, _key(mixed.tenant))
    drawn = browser.get(f"/ui/recordings/{mixed.recording_id}/picture").json()
    assert [v["heard"] for v in drawn["voices"]] == ["speech", "speech"]


def _picture(speakers: list[tuple[int | None, bool]], levels: list[float]) -> dict[str, Any]:
    """A picture whose channels hold a steady level each, and speakers on (channel, speaks)."""
    return {
        "channels": [{"index": k, "name": str(k), "peaks": [[-level, level]] * 50} for k, level in enumerate(levels)],
        "speakers": [
            {"party": f"P{k}", "channel": channel, "segments": [[1.0, 2.0]] if speaks else []}
            for k, (channel, speaks) in enumerate(speakers)
        ],  # fmt: skip
    }


def test_what_each_voice_holds() -> None:
    heard = [v["heard"] for v in voices(_picture([(0, True), (1, False)], [0.3, 0.2]))]
    assert heard == ["speech", "steady"]
    heard = [v["heard"] for v in voices(_picture([(0, True), (1, False)], [0.3, 0.0001]))]
    assert heard == ["speech", "silent"]
    # a conference: voices share the channels, whose level says nothing of one of them
    heard = [v["heard"] for v in voices(_picture([(None, True), (None, False), (None, True)], [0.3, 0.3]))]
    assert heard == ["speech", "none", "speech"]
    # a stitch: several employees on the right channel
    heard = [v["heard"] for v in voices(_picture([(0, True), (1, False), (1, True)], [0.3, 0.3]))]
    assert heard == ["speech", "none", "speech"]
    # a click or two in a quiet channel is not a steady signal
    few = _picture([(0, True), (1, False)], [0.3, 0.0])
    few["channels"][1]["peaks"][3] = [-0.2, 0.2]
    assert [v["text"] for v in voices(few)] == ["speech", "no speech detected"]


# --- one interaction id in two domains ----------------------------------------------------------------


def _interaction_in(api: Api, tenant: Tenant, captures: Captures, interaction: str, k: int) -> str:
    info = calls_in_capture(captures.seven)[k]
    info.interaction_id = interaction
    (call_id,) = api.upload(tenant.headers, captures.seven, call_json=json.dumps(info.to_json()).encode())
    return call_id


def test_an_admin_chooses_the_domain_of_an_interaction_id_two_domains_use(
    api: Api, browser: TestClient, captures: Captures
) -> None:
    first, second = api.tenant(), api.tenant()
    calls = {first.name: _interaction_in(api, first, captures, "shared ix/1", 1),
             second.name: _interaction_in(api, second, captures, "shared ix/1", 2)}  # fmt: skip
    _sign_in(browser, ADMIN_KEY)
    url = "/ui/interactions/shared%20ix%2F1"
    page = browser.get(url)
    assert page.status_code == 200, page.text
    assert "?domain=" not in re.sub(r'href="[^"]*"', "", page.text)  # no raw instruction, only links
    assert 'id="choose-domain"' in page.text and "data-call=" not in page.text
    offered = re.findall(r'<li><a href="([^"]+)">([^<]+)</a></li>', page.text)
    assert sorted(offered) == sorted((f"{url}?domain={name}", name) for name in calls)
    for href, name in offered:
        chosen = browser.get(href)
        assert chosen.status_code == 200 and 'id="choose-domain"' not in chosen.text
        # that domain's call only: the two are separate conversations
        assert re.findall(r'data-call="([^"]+)"', chosen.text) == [calls[name]]
    # a domain's own key has one domain: the interaction opens directly
    browser.cookies.clear()
    _sign_in(browser, _key(first))
    own = browser.get(url)
    assert own.status_code == 200 and re.findall(r'data-call="([^"]+)"', own.text) == [calls[first.name]]


def test_an_admin_opening_an_interaction_id_of_one_domain_gets_it_directly(
    api: Api, browser: TestClient, captures: Captures
) -> None:
    owner = api.tenant()
    call_id = _interaction_in(api, owner, captures, "one-domain-ix", 3)
    _sign_in(browser, ADMIN_KEY)
    page = browser.get("/ui/interactions/one-domain-ix")
    assert page.status_code == 200 and 'id="choose-domain"' not in page.text
    assert re.findall(r'data-call="([^"]+)"', page.text) == [call_id]
    assert browser.get("/ui/interactions/no-such-ix").status_code == 404
