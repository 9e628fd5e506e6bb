"""A public link's "Uses" counts what a person counts: each opening of its page and each download.

The player's requests (every one carries a Range, the first ``bytes=0-``), the picture and HEAD are not
uses; nor is the waiting page's own reload. Over HTTP with the TestClient, on SQLite and PostgreSQL, and
in Chromium against a real ``callrec serve``.
"""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser

from callrec.app import create_app
from callrec.files.scan import calls_in_capture
from tests.api.conftest import Api, Captures, Mixed
from tests.api.test_links import HTML, make_link
from tests.web.conftest import Site
from tests.web.test_browser import _advancing, _press_play, _until

API = "/api/v1"


def _uses(api: Api, mixed: Mixed, link_id: str) -> int:
    seen = api.client.get(f"{API}/links/{link_id}", headers=mixed.tenant.headers)
    assert seen.status_code == 200, seen.text
    uses: int = seen.json()["uses"]
    return uses


@pytest.mark.slow
def test_an_opening_and_a_play_are_one_use_and_a_download_another(api: Api, mixed: Mixed) -> None:
    made, token = make_link(api, mixed.tenant, mixed.recording_id)
    page = api.client.get(f"/r/{token}", headers=HTML)
    assert page.status_code == 200 and 'id="player"' in page.text
    assert _uses(api, mixed, made["id"]) == 1
    # the player: Chromium and Firefox start with bytes=0-, Safari probes bytes=0-1, seeking asks for more
    for wanted in ("bytes=0-", "bytes=0-1", "bytes=2000-", "bytes=0-"):
        played = api.client.get(f"/r/{token}/audio", headers={"Range": wanted})
        assert played.status_code == 206 and played.headers["content-disposition"].startswith("inline; ")
    assert api.client.get(f"/r/{token}/picture").status_code == 200
    assert _uses(api, mixed, made["id"]) == 1, "playing what the page opened is not another use"
    # the page's Download button
    download = re.search(r'id="download" href="([^"]+)"', page.text)
    assert download is not None and download.group(1) == f"/r/{token}/audio?download=1"
    got = api.client.get(download.group(1))
    assert got.status_code == 200 and got.headers["content-disposition"].startswith("attachment; ")
    assert _uses(api, mixed, made["id"]) == 2
    # the same download resumed from its middle is not a new one
    resumed = api.client.get(download.group(1), headers={"Range": "bytes=3000-"})
    assert resumed.status_code == 206
    assert _uses(api, mixed, made["id"]) == 2


def test_head_requests_are_never_uses(api: Api, mixed: Mixed) -> None:
    made, token = make_link(api, mixed.tenant, mixed.recording_id)
    for path in (f"/r/{token}", f"/r/{token}/audio", f"/r/{token}/audio?download=1", f"/r/{token}/picture"):
        assert api.client.head(path).status_code == 200, path
    assert _uses(api, mixed, made["id"]) == 0
    assert api.client.get(f"/r/{token}", headers=HTML).status_code == 200
    assert api.client.head(f"/r/{token}/audio?download=1").status_code == 200
    assert _uses(api, mixed, made["id"]) == 1


def test_a_whole_file_fetch_without_range_is_a_download(api: Api, mixed: Mixed) -> None:
    made, token = make_link(api, mixed.tenant, mixed.recording_id)
    whole = api.client.get(f"/r/{token}/audio")  # as curl or wget fetch it
    assert whole.status_code == 200 and whole.headers["content-disposition"].startswith("inline; ")
    assert _uses(api, mixed, made["id"]) == 1


def test_on_a_download_only_link_every_fetch_from_the_start_is_a_download(api: Api, mixed: Mixed) -> None:
    made, token = make_link(api, mixed.tenant, mixed.recording_id, download_only=True)
    first = api.client.get(f"/r/{token}/audio", headers={"Range": "bytes=0-"})  # a download manager's start
    assert first.status_code == 206 and first.headers["content-disposition"].startswith("attachment; ")
    assert api.client.get(f"/r/{token}/audio", headers={"Range": "bytes=100-"}).status_code == 206
    assert _uses(api, mixed, made["id"]) == 1


def test_the_waiting_pages_own_reload_is_not_a_new_opening(api: Api, mixed: Mixed, captures: Captures) -> None:
    interaction = "uses-wait-1"
    for info in [c for k, c in enumerate(calls_in_capture(captures.seven)) if k in (2, 4)]:
        info.interaction_id = interaction
        api.upload(mixed.tenant.headers, captures.seven, call_json=json.dumps(info.to_json()).encode())
    answer = api.client.post(f"{API}/interactions/{interaction}/links", headers=mixed.tenant.headers, json={})
    assert answer.status_code == 201, answer.text
    link_id, token = answer.json()["id"], answer.json()["url"].rsplit("/", 1)[1]
    page = api.client.get(f"/r/{token}", headers=HTML)  # the stitch is asked for now: not made yet
    assert page.status_code == 200 and 'id="pending"' in page.text
    assert f'<meta http-equiv="refresh" content="10; url=/r/{token}?waiting=1">' in page.text
    for _ in range(3):
        again = api.client.get(f"/r/{token}?waiting=1", headers=HTML)
        assert again.status_code == 200 and 'id="pending"' in again.text
    assert _uses(api, mixed, link_id) == 1
    api.run_jobs()
    ready = api.client.get(f"/r/{token}?waiting=1", headers=HTML)
    assert ready.status_code == 200 and 'id="player"' in ready.text and "http-equiv" not in ready.text
    assert _uses(api, mixed, link_id) == 1
    assert api.client.get(f"/r/{token}", headers=HTML).status_code == 200  # opened again by a person
    assert _uses(api, mixed, link_id) == 2


def test_the_call_card_says_what_a_use_is(api: Api, mixed: Mixed) -> None:
    made, token = make_link(api, mixed.tenant, mixed.recording_id)
    api.client.get(f"/r/{token}", headers=HTML)
    api.client.get(f"/r/{token}/audio", headers={"Range": "bytes=0-"})
    key = mixed.tenant.headers["Authorization"].removeprefix("Bearer ")
    with TestClient(create_app(api.service)) as ui:
        signed = ui.post("/ui/signin", data={"key": key}, headers={"Origin": "http://testserver"})
        assert signed.status_code == 200, signed.text
        page = ui.get(f"/ui/calls/{mixed.call_id}").text
    row = re.search(rf'<tr data-link="{made["id"]}".*?</tr>', page, re.S)
    assert row is not None and '<td data-label="Uses">1</td>' in row.group(0)
    assert "each opening of the link's page and each download" in page


def test_the_api_documents_what_a_use_is(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    described = schema["components"]["schemas"]["LinkOut"]["properties"]["uses"]["description"]
    for words in ("each opening of its page", "each download", "download=1", "Range requests", "HEAD are not uses"):
        assert words in described, words


# --- in Chromium: what a person does with a link ------------------------------------------------------


@pytest.mark.slow
def test_in_a_browser_a_view_with_play_and_seek_is_one_use_and_a_download_another(browser: Browser, site: Site) -> None:
    made = site.serve.api.post(f"/api/v1/recordings/{site.recording_id}/links", headers=site.as_domain(), json={})
    assert made.status_code == 201, made.text
    link_id, url = made.json()["id"], made.json()["url"]

    def uses() -> int:
        got = site.serve.api.get(f"{API}/links/{link_id}", headers=site.as_domain())
        assert got.status_code == 200, got.text
        count: int = got.json()["uses"]
        return count

    audio: list[str] = []
    stranger = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = stranger.new_page()
        page.on("request", lambda r: audio.append(r.headers.get("range", "")) if "/audio" in r.url else None)
        page.goto(url)
        page.wait_for_selector("#picture[data-state=ready]")
        _press_play(page)
        _advancing(page)
        box = page.locator("#picture canvas").bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.7, box["y"] + box["height"] / 2)
        duration = float(page.get_attribute("#picture", "data-duration") or 0)
        _until(page, f"document.getElementById('player').currentTime >= {0.7 * duration - 0.5}")
        assert audio and all(r.startswith("bytes=") for r in audio), audio  # the player's requests: all ranges
        assert uses() == 1, f"one opening, played and seeked with {len(audio)} requests"
        with page.expect_download() as download:
            page.click("#download")
        assert download.value.path().stat().st_size > 0
        assert uses() == 2
    finally:
        stranger.close()


@pytest.mark.slow
def test_in_a_browser_the_waiting_pages_reload_flag_leaves_the_address(browser: Browser, site: Site) -> None:
    made = site.serve.api.post(f"/api/v1/recordings/{site.recording_id}/links", headers=site.as_domain(), json={})
    assert made.status_code == 201, made.text
    link_id, url = made.json()["id"], made.json()["url"]
    stranger = browser.new_context()
    try:
        page = stranger.new_page()
        page.goto(f"{url}?waiting=1#top")  # where the waiting page's own reload lands
        page.wait_for_selector("#picture[data-state=ready]")
        _until(page, "location.search === ''")
        assert page.url == f"{url}#top"  # the address to copy is the link itself
    finally:
        stranger.close()
    seen = site.serve.api.get(f"{API}/links/{link_id}", headers=site.as_domain()).json()
    assert seen["uses"] == 0 and seen["last_used_at"] is not None  # noted, not counted
