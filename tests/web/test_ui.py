"""The web UI's server side: sessions, CSRF, what each page shows, and that a domain sees only its own.

The browser's side (playing, seeking, copying) is in test_browser.py (Chromium); these run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from callrec.app import create_app
from callrec.files.scan import calls_in_capture
from callrec.web import ui_auth
from tests.api.conftest import Api, Captures, Mixed, Tenant

OWN = {"Origin": "http://testserver"}


@pytest.fixture
def browser(api: Api) -> Iterator[TestClient]:
    """A client of its own, so its cookies are its own."""
    with TestClient(create_app(api.service)) as client:
        yield client


def _key(tenant: Tenant) -> str:
    return tenant.headers["Authorization"].removeprefix("Bearer ")


def _sign_in(client: TestClient, tenant: Tenant) -> None:
    answer = client.post("/ui/signin", data={"key": _key(tenant)}, headers=OWN, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/calls"


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def test_signing_in_sets_a_signed_session_cookie_without_the_key(api: Api, browser: TestClient, mixed: Mixed) -> None:
    assert browser.get("/ui/calls", follow_redirects=False).headers["location"] == "/ui/signin?next=%2Fui%2Fcalls"
    wrong = browser.post("/ui/signin", data={"key": "cr_nope"}, headers=OWN)
    assert wrong.status_code == 401 and "That API key is not valid" in wrong.text
    answer = browser.post("/ui/signin", data={"key": _key(mixed.tenant), "next": f"/ui/calls/{mixed.call_id}"},
                          headers=OWN, follow_redirects=False)  # fmt: skip
    assert answer.status_code == 303 and answer.headers["location"] == f"/ui/calls/{mixed.call_id}"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain HTTP on 127.0.0.1 must work
    value = browser.cookies["callrec_session"]
    assert _key(mixed.tenant) not in value
    page = browser.get(f"/ui/calls/{mixed.call_id}")
    assert page.status_code == 200 and mixed.recording_id in page.text
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    # a tampered cookie is no session
    key_id, expires, mac = value.split(".")
    for forged in (f"{key_id}.{int(expires) + 1}.{mac}", f"{'0' * len(key_id)}.{expires}.{mac}", "garbage"):
        browser.cookies.set("callrec_session", forged, path="/ui")
        assert browser.get("/ui/calls", follow_redirects=False).status_code == 303
    # an expired one neither, though its signature is right
    body = f"{key_id}.{int(api.service.ctx.clock.now().timestamp()) - 1}"
    browser.cookies.set("callrec_session", f"{body}.{ui_auth._sign(api.service.ctx, 'ui-session', body)}", path="/ui")
    assert browser.get("/ui/calls", follow_redirects=False).status_code == 303


def test_a_sign_in_never_sends_the_browser_to_another_site(browser: TestClient, tenant: Tenant) -> None:
    for target in ("https://evil.example/", "//evil.example/ui/", "/ui//evil.example", "/api/v1/calls"):
        answer = browser.post("/ui/signin", data={"key": _key(tenant), "next": target}, headers=OWN,
                              follow_redirects=False)  # fmt: skip
        assert answer.headers["location"] == "/ui/calls", target
    foreign = browser.post("/ui/signin", data={"key": _key(tenant)}, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403


def test_changes_need_the_sessions_token_and_this_sites_origin(browser: TestClient, mixed: Mixed) -> None:
    _sign_in(browser, mixed.tenant)
    token = _csrf(browser.get(f"/ui/calls/{mixed.call_id}").text)
    url = f"/ui/recordings/{mixed.recording_id}/links"
    for data, headers in (({}, OWN), ({"csrf": "x" + token}, OWN), ({"csrf": token}, {"Origin": "http://evil.example"})):
        refused = browser.post(url, data=data, headers=headers, follow_redirects=False)
        assert refused.status_code == 403, (data, headers)
    made = browser.post(url, data={"csrf": token, "expires_in_s": "3600"}, headers=OWN, follow_redirects=False)
    assert made.status_code == 303 and made.headers["location"] == f"/ui/calls/{mixed.call_id}#links"
    # the new link's URL is shown on the page the browser goes to, once
    page = browser.get(f"/ui/calls/{mixed.call_id}")
    (url_shown,) = re.findall(r'id="new-link-url" type="text" readonly value="([^"]+)"', page.text)
    assert "/r/" in url_shown and browser.get(url_shown.removeprefix("http://testserver")).status_code == 200
    assert 'id="new-link-url"' not in browser.get(f"/ui/calls/{mixed.call_id}").text
    # revoked from the page: the link answers 404
    link_id = re.findall(r'action="/ui/links/([0-9a-f]+)/revoke"', page.text)[0]
    revoked = browser.post(f"/ui/links/{link_id}/revoke", data={"csrf": token, "back": f"/ui/calls/{mixed.call_id}"},
                           headers=OWN, follow_redirects=False)  # fmt: skip
    assert revoked.status_code == 303 and revoked.headers["location"] == f"/ui/calls/{mixed.call_id}"
    assert browser.get(url_shown.removeprefix("http://testserver")).status_code == 404
    bad = browser.post(url, data={"csrf": token, "expires_in_s": "soon"}, headers=OWN)
    assert bad.status_code == 422 and "whole number of seconds" in bad.text


def test_a_domain_sees_only_its_own_calls(browser: TestClient, mixed: Mixed, other: Tenant) -> None:
    _sign_in(browser, other)
    page = browser.get(f"/ui/calls/{mixed.call_id}")
    assert page.status_code == 404 and f"No call &#39;{mixed.call_id}&#39;" in page.text
    assert mixed.call_id not in browser.get("/ui/calls").text
    for path in (f"/ui/recordings/{mixed.recording_id}/audio", f"/ui/recordings/{mixed.recording_id}/picture"):
        assert browser.get(path).status_code == 404
    browser.cookies.clear()
    assert browser.get(f"/ui/recordings/{mixed.recording_id}/audio").status_code == 401


def test_the_uis_audio_and_picture(browser: TestClient, mixed: Mixed, api: Api) -> None:
    _sign_in(browser, mixed.tenant)
    part = browser.get(f"/ui/recordings/{mixed.recording_id}/audio", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and len(part.content) == 10
    whole = api.client.get(f"/api/v1/recordings/{mixed.recording_id}/audio", headers=mixed.tenant.headers)
    assert part.content == whole.content[10:20]
    drawn = browser.get(f"/ui/recordings/{mixed.recording_id}/picture").json()
    assert [v["heard"] for v in drawn.pop("voices")] == ["speech", "speech"]  # the UI's words (test_browser.py)
    assert drawn == api.client.get(f"/api/v1/recordings/{mixed.recording_id}/picture",
                                   headers=mixed.tenant.headers).json()  # fmt: skip


def test_the_call_list_searches_and_says_what_is_wrong(browser: TestClient, mixed: Mixed, api: Api) -> None:
    _sign_in(browser, mixed.tenant)
    card = api.card(mixed.tenant.headers, mixed.call_id)
    started = card["started_at"][:19]  # as the browser's datetime-local field sends it, in UTC here
    found = browser.get("/ui/calls", params={"number": "100", "since": started, "tz": "0", "direction": ""})
    assert found.status_code == 200 and f'data-call="{mixed.call_id}"' in found.text
    for params in ({"number": "999"}, {"since": started, "tz": "-60"}, {"state": "failed"}):
        assert f'data-call="{mixed.call_id}"' not in browser.get("/ui/calls", params=params).text, params
    assert f'data-call="{mixed.call_id}"' in browser.get("/ui/calls", params={"until": started, "tz": "-60"}).text
    by_sip = browser.get("/ui/calls", params={"call_id": card["call_id"]})
    assert f'data-call="{mixed.call_id}"' in by_sip.text
    for params, message in (({"since": "yesterday"}, "From is not a date and time"),
                            ({"direction": "sideways"}, "Direction must be one of inbound, outbound, internal"),
                            ({"number": "1\x01"}, "Number must not hold control characters")):  # fmt: skip
        answer = browser.get("/ui/calls", params=params)
        assert answer.status_code == 422 and message in answer.text, params


def test_an_interactions_page_shows_its_calls_and_then_its_stitch(
    browser: TestClient, api: Api, tenant: Tenant, captures: Captures
) -> None:
    ids = []
    for info in [c for k, c in enumerate(calls_in_capture(captures.seven)) if k in (1, 3)]:
        info.interaction_id = "ix ui/1"
        ids += api.upload(tenant.headers, captures.seven, call_json=json.dumps(info.to_json()).encode())
    _sign_in(browser, tenant)
    url = "/ui/interactions/ix%20ui%2F1"
    pending = browser.get(url)
    assert pending.status_code == 200 and all(f'data-call="{i}"' in pending.text for i in ids)
    assert 'id="stitch-state"' in pending.text and 'http-equiv="refresh"' in pending.text
    api.run_jobs()
    done = browser.get(url)
    assert 'id="chapters"' in done.text and 'http-equiv="refresh"' not in done.text
    assert f'data-picture="{url}/picture"' in done.text and f'src="{url}/stitched/audio"' in done.text
    assert done.text.count("data-seek=") == 2
    assert browser.get(f"{url}/stitched/audio", headers={"Range": "bytes=0-9"}).status_code == 206
    drawn = browser.get(f"{url}/picture").json()
    assert len(drawn["chapters"]) == 2 and drawn["speakers"][0]["channel"] == 0
    made = browser.post(f"{url}/links", data={"csrf": _csrf(done.text)}, headers=OWN, follow_redirects=False)
    assert made.status_code == 303 and made.headers["location"] == f"{url}#links"
    assert 'id="new-link-url"' in browser.get(url).text
