"""Public links: made with a key, opened at /r/{token} without one; expiry, revocation, tampering, Range."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, inspect, text, update

from callrec.api.handlers import status_of
from callrec.db.schema import Call
from callrec.errors import ServiceError
from callrec.jobs.retention import delete_recording
from callrec.service import links
from callrec.service.schedule import OffsetClock
from tests.api.conftest import Api, Captures, Mixed, Tenant, detail

API = "/api/v1"
TOKEN = re.compile(r"/r/([A-Za-z0-9_-]+)$")
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def make_link(api: Api, tenant: Tenant, recording_id: str, **body: Any) -> tuple[dict[str, Any], str]:
    """A new link to the recording: its JSON and its token."""
    answer = api.client.post(f"{API}/recordings/{recording_id}/links", headers=tenant.headers, json=body)
    assert answer.status_code == 201, answer.text
    made: dict[str, Any] = answer.json()
    found = TOKEN.search(made["url"])
    assert found is not None, made["url"]
    return made, found.group(1)


@contextmanager
def clock_moved(api: Api, seconds: float) -> Iterator[None]:
    """The service's clock ``seconds`` ahead of the machine's for the block."""
    ctx = api.service.ctx
    before = ctx.clock
    ctx.clock = OffsetClock(seconds)
    try:
        yield
    finally:
        ctx.clock = before


@pytest.fixture(scope="module")
def full(api: Api, mixed: Mixed) -> bytes:
    answer = api.client.get(f"{API}/recordings/{mixed.recording_id}/audio", headers=mixed.tenant.headers)
    assert answer.status_code == 200
    content: bytes = answer.content
    return content


def _public_headers(answer: Any) -> None:
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["x-robots-tag"] == "noindex"


# --- making links -----------------------------------------------------------------------------------


def test_a_link_has_a_long_random_token_and_the_domain_default_expiry(api: Api, captures: Captures) -> None:
    owner = api.tenant(settings={"links": {"default_expires_s": 3600, "max_expires_s": 7200}})
    (call_id,) = api.upload(owner.headers, captures.one)
    rec_id = api.card(owner.headers, call_id)["recording"]["id"]
    made, token = make_link(api, owner, rec_id)
    assert made["kind"] == "recording" and made["target_id"] == rec_id and made["download_only"] is False
    assert made["state"] == "active" and made["uses"] == 0
    assert made["url"] == f"http://testserver/r/{token}"
    assert len(base64.urlsafe_b64decode(token + "=")) == 32  # 256 random bits
    lifetime = datetime.fromisoformat(made["expires_at"]) - datetime.fromisoformat(made["created_at"])
    assert lifetime == timedelta(seconds=3600)
    _, other_token = make_link(api, owner, rec_id)
    assert other_token != token


def test_expires_in_s_is_checked_against_the_domain_maximum(api: Api, captures: Captures) -> None:
    owner = api.tenant(settings={"links": {"default_expires_s": 3600, "max_expires_s": 7200}})
    (call_id,) = api.upload(owner.headers, captures.one)
    rec_id = api.card(owner.headers, call_id)["recording"]["id"]
    url = f"{API}/recordings/{rec_id}/links"
    for bad in (7201, 59, 0, -5):
        answer = api.client.post(url, headers=owner.headers, json={"expires_in_s": bad})
        assert answer.status_code == 422
        assert detail(answer) == "expires_in_s must be between 60 and 7200 seconds (the domain's maximum is 7200)"
    made, _ = make_link(api, owner, rec_id, expires_in_s=7200)
    lifetime = datetime.fromisoformat(made["expires_at"]) - datetime.fromisoformat(made["created_at"])
    assert lifetime == timedelta(seconds=7200)
    wrong = api.client.post(url, headers=owner.headers, json={"expires_in_s": "soon"})
    assert wrong.status_code == 422 and detail(wrong).startswith("expires_in_s:")
    extra = api.client.post(url, headers=owner.headers, json={"password": "x"})
    assert extra.status_code == 422 and detail(extra).startswith("password:")


def test_only_a_completed_recording_of_ones_own_domain_can_be_shared(
    api: Api, mixed: Mixed, other: Tenant, tenant: Tenant, captures: Captures
) -> None:
    foreign = api.client.post(f"{API}/recordings/{mixed.recording_id}/links", headers=other.headers, json={})
    assert foreign.status_code == 404 and detail(foreign) == f"no recording {mixed.recording_id!r}"
    missing = api.client.post(f"{API}/recordings/{'e' * 32}/links", headers=mixed.tenant.headers)
    assert missing.status_code == 404
    (call_id,) = api.upload(tenant.headers, captures.one, mix=False)
    pending = api.card(tenant.headers, call_id)["recording"]
    answer = api.client.post(f"{API}/recordings/{pending['id']}/links", headers=tenant.headers)
    assert answer.status_code == 409
    assert detail(answer) == f"the recording is {pending['state']}; only a completed recording can be shared"
    api.run_jobs()
    assert delete_recording(api.service.ctx, pending["id"], "test", actor="test")
    gone = api.client.post(f"{API}/recordings/{pending['id']}/links", headers=tenant.headers)
    assert gone.status_code == 409 and detail(gone) == "the recording was deleted, so it cannot be shared"
    keyless = api.client.post(f"{API}/recordings/{mixed.recording_id}/links")
    assert keyless.status_code == 401


def test_another_domain_cannot_list_read_or_revoke_the_links(api: Api, mixed: Mixed, other: Tenant) -> None:
    made, token = make_link(api, mixed.tenant, mixed.recording_id)
    listed = api.client.get(f"{API}/recordings/{mixed.recording_id}/links", headers=other.headers)
    assert listed.status_code == 404
    for method in ("GET", "DELETE"):
        answer = api.client.request(method, f"{API}/links/{made['id']}", headers=other.headers)
        assert answer.status_code == 404 and detail(answer) == f"no link {made['id']!r}"
    assert api.client.get(f"/r/{token}").status_code == 200  # still active
    admin = api.client.get(f"{API}/links/{made['id']}", headers=api.admin)
    assert admin.status_code == 200 and admin.json()["state"] == "active"


def test_links_are_listed_newest_first_without_their_tokens(api: Api, tenant: Tenant, captures: Captures) -> None:
    (call_id,) = api.upload(tenant.headers, captures.one)
    rec_id = api.card(tenant.headers, call_id)["recording"]["id"]
    first, first_token = make_link(api, tenant, rec_id)
    second, second_token = make_link(api, tenant, rec_id, download_only=True)
    answer = api.client.get(f"{API}/recordings/{rec_id}/links", headers=tenant.headers)
    assert answer.status_code == 200
    items = answer.json()["items"]
    assert [i["id"] for i in items] == [second["id"], first["id"]]
    assert items[0]["download_only"] is True and "url" not in items[0]
    assert first_token not in answer.text and second_token not in answer.text
    one = api.client.get(f"{API}/links/{first['id']}", headers=tenant.headers).json()
    assert one == {k: v for k, v in first.items() if k != "url"}


def test_the_call_card_lists_its_links_with_their_state(api: Api, tenant: Tenant, captures: Captures) -> None:
    (call_id,) = api.upload(tenant.headers, captures.one)
    assert api.card(tenant.headers, call_id)["links"] == []
    rec_id = api.card(tenant.headers, call_id)["recording"]["id"]
    first, token = make_link(api, tenant, rec_id)
    second, _ = make_link(api, tenant, rec_id)
    assert api.client.delete(f"{API}/links/{first['id']}", headers=tenant.headers).status_code == 204
    card = api.card(tenant.headers, call_id)
    assert [(link["id"], link["state"]) for link in card["links"]] == [
        (second["id"], "active"),
        (first["id"], "revoked"),
    ]
    assert token not in json.dumps(card)
    page = api.client.get(f"{API}/calls", headers=tenant.headers, params={"call_id": card["call_id"]}).json()
    assert [link["id"] for link in page["items"][0]["links"]] == [second["id"], first["id"]]


# --- the token is only stored as a hash ---------------------------------------------------------------


def test_the_token_is_not_stored_in_the_database(api: Api, mixed: Mixed) -> None:
    _, token = make_link(api, mixed.tenant, mixed.recording_id)
    raw = base64.urlsafe_b64decode(token + "=")
    forms = {token, raw.hex(), base64.b64encode(raw).decode().rstrip("="), token[:20]}
    dump: list[str] = []
    engine = api.service.ctx.engine
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                dump.extend(str(value) for value in row)
    everything = "\n".join(dump)
    assert len(dump) > 50  # the dump saw the tables
    for form in forms:
        assert form not in everything and form.lower() not in everything.lower()


# --- the public page and its audio --------------------------------------------------------------------


def test_the_page_has_a_player_a_download_and_the_picture(api: Api, mixed: Mixed) -> None:
    _, token = make_link(api, mixed.tenant, mixed.recording_id)
    answer = api.client.get(f"/r/{token}", headers=HTML)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    _public_headers(answer)
    page = answer.text
    assert f'<audio id="player" controls preload="metadata" src="/r/{token}/audio"></audio>' in page
    assert f'href="/r/{token}/audio?download=1"' in page
    assert f'<div id="picture" data-picture="/r/{token}/picture" data-audio="/r/{token}/audio"></div>' in page
    assert '<script src="/static/picture.js" defer></script>' in page
    assert '<link rel="stylesheet" href="/static/callrec.css">' in page
    assert 'name="viewport" content="width=device-width, initial-scale=1"' in page
    assert "Alice, Callee" in page and "0:02" in page  # the parties' names, the duration
    card = api.card(mixed.tenant.headers, mixed.call_id)
    started = datetime.fromisoformat(card["started_at"])
    assert f"{started:%Y-%m-%d %H:%M} UTC" in page
    # nothing internal: no ids, no numbers, not the domain
    for secret in (mixed.recording_id, mixed.call_id, card["call_id"], mixed.tenant.name, "sip:", "100@"):
        assert secret not in page


def test_audio_answers_range_with_exactly_those_bytes(api: Api, mixed: Mixed, full: bytes) -> None:
    _, token = make_link(api, mixed.tenant, mixed.recording_id)
    whole = api.client.get(f"/r/{token}/audio")
    assert whole.status_code == 200 and whole.content == full
    assert whole.headers["content-type"] == "audio/mpeg" and whole.headers["accept-ranges"] == "bytes"
    assert re.fullmatch(r'inline; filename="call-\d{8}-\d{4}\.mp3"', whole.headers["content-disposition"])
    _public_headers(whole)
    for header, lo, hi in (("bytes=100-1099", 100, 1100), ("bytes=500-", 500, len(full)),
                           ("bytes=-300", len(full) - 300, len(full))):  # fmt: skip
        part = api.client.get(f"/r/{token}/audio", headers={"Range": header})
        assert part.status_code == 206, header
        assert part.content == full[lo:hi]
        assert part.headers["content-range"] == f"bytes {lo}-{hi - 1}/{len(full)}"
        _public_headers(part)
    beyond = api.client.get(f"/r/{token}/audio", headers={"Range": f"bytes={len(full)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(full)}"
    download = api.client.get(f"/r/{token}/audio?download=1")
    assert download.status_code == 200 and download.content == full
    assert download.headers["content-disposition"].startswith("attachment; filename=")


def test_the_picture_is_the_recordings_picture(api: Api, mixed: Mixed) -> None:
    _, token = make_link(api, mixed.tenant, mixed.recording_id)
    answer = api.client.get(f"/r/{token}/picture")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    _public_headers(answer)
    own = api.client.get(f"{API}/recordings/{mixed.recording_id}/picture", headers=mixed.tenant.headers)
    assert own.status_code == 200
    _same_picture_without_numbers(answer.json(), own.json())
    _, only = make_link(api, mixed.tenant, mixed.recording_id, download_only=True)
    refused = api.client.get(f"/r/{only}/picture")
    assert refused.status_code == 404 and detail(refused) == "this link offers the download only"
    assert api.client.get(f"/r/{_changed(token)}/picture").status_code == 404


def _same_picture_without_numbers(public: dict[str, Any], own: dict[str, Any]) -> None:
    """The public picture draws what the API's does, naming people without their numbers."""
    for key in ("duration_s", "channels", "silences", "overlaps"):
        assert public[key] == own[key], key
    # people with one name are one speaker on a public picture: the same segments, maybe grouped otherwise
    assert sorted(g for s in public["speakers"] for g in s["segments"]) == sorted(
        g for s in own["speakers"] for g in s["segments"]
    )
    assert [(c["from_s"], c["to_s"]) for c in public["chapters"]] == [(c["from_s"], c["to_s"]) for c in own["chapters"]]
    assert not re.search(r"\d{3}", json.dumps([public["speakers"], public["chapters"]]))


def test_a_download_only_link_offers_no_player(api: Api, mixed: Mixed, full: bytes) -> None:
    made, token = make_link(api, mixed.tenant, mixed.recording_id, download_only=True)
    assert made["download_only"] is True
    page = api.client.get(f"/r/{token}", headers=HTML).text
    assert f'href="/r/{token}/audio?download=1"' in page
    assert "<audio" not in page and 'id="picture"' not in page and "picture.js" not in page
    answer = api.client.get(f"/r/{token}/audio")  # even without download=1: an attachment
    assert answer.status_code == 200 and answer.content == full
    assert answer.headers["content-disposition"].startswith("attachment; ")


def test_uses_are_counted_once_per_page_or_download(api: Api, mixed: Mixed) -> None:
    made, token = make_link(api, mixed.tenant, mixed.recording_id)
    assert made["last_used_at"] is None
    api.client.get(f"/r/{token}")
    api.client.get(f"/r/{token}/audio", headers={"Range": "bytes=0-"})  # the player: not a use (tests/web)
    api.client.get(f"/r/{token}/audio", headers={"Range": "bytes=2000-"})  # seeking: not a new use
    api.client.get(f"/r/{token}/audio?download=1")
    seen = api.client.get(f"{API}/links/{made['id']}", headers=mixed.tenant.headers).json()
    assert seen["uses"] == 2 and seen["last_used_at"] is not None


# --- expiry, revocation, tampering --------------------------------------------------------------------


def test_an_expired_link_is_410(api: Api, mixed: Mixed) -> None:
    made, token = make_link(api, mixed.tenant, mixed.recording_id, expires_in_s=600)
    assert api.client.get(f"/r/{token}/audio?download=1", headers={"Range": "bytes=0-9"}).status_code == 206
    with clock_moved(api, 601):
        for path in (f"/r/{token}", f"/r/{token}/audio"):
            answer = api.client.get(path)
            assert answer.status_code == 410 and detail(answer) == "this link has expired"
            _public_headers(answer)
        page = api.client.get(f"/r/{token}", headers=HTML)
        assert page.status_code == 410 and page.headers["content-type"].startswith("text/html")
        assert "This link has expired" in page.text
        _public_headers(page)
        listed = api.client.get(f"{API}/links/{made['id']}", headers=mixed.tenant.headers).json()
        assert listed["state"] == "expired" and listed["uses"] == 1  # the download before it expired


def test_a_revoked_link_is_404_and_revoking_twice_is_fine(api: Api, mixed: Mixed) -> None:
    made, token = make_link(api, mixed.tenant, mixed.recording_id)
    assert api.client.get(f"/r/{token}").status_code == 200
    for _ in range(2):
        answer = api.client.delete(f"{API}/links/{made['id']}", headers=mixed.tenant.headers)
        assert answer.status_code == 204 and answer.content == b""
    for path in (f"/r/{token}", f"/r/{token}/audio"):
        answer = api.client.get(path)
        assert answer.status_code == 404 and detail(answer) == "this link does not exist or was revoked"
    page = api.client.get(f"/r/{token}", headers=HTML)
    assert page.status_code == 404 and "This link is not available" in page.text
    after = api.client.get(f"{API}/links/{made['id']}", headers=mixed.tenant.headers).json()
    assert after["state"] == "revoked" and after["revoked_at"] is not None
    with clock_moved(api, 10 * 86400):  # revoked stays revoked (404) after the expiry too
        assert api.client.get(f"/r/{token}").status_code == 404


def _changed(token: str) -> str:
    swap = "A" if token[10] != "A" else "B"
    return token[:10] + swap + token[11:]


def test_a_tampered_token_is_404(api: Api, mixed: Mixed) -> None:
    _, token = make_link(api, mixed.tenant, mixed.recording_id)
    tampered = [_changed(token), token[:-1], token[:20], token + "A", token + token, "x", "A" * 5000,
                token.upper(), "%00" + token, "%3Cscript%3E", "a%20b", "é" * 300]  # fmt: skip
    for bad in tampered:
        for path in (f"/r/{bad}", f"/r/{bad}/audio"):
            answer = api.client.get(path)
            assert answer.status_code == 404, (bad, path)
            assert detail(answer) == "this link does not exist or was revoked"
            _public_headers(answer)
    assert api.client.get(f"/r/{token}").status_code == 200


def test_every_token_costs_one_lookup_by_its_hash(api: Api, mixed: Mixed) -> None:
    """Malformed, unknown, revoked, expired and good tokens all take the same path: one indexed SELECT."""
    made, revoked = make_link(api, mixed.tenant, mixed.recording_id)
    api.client.delete(f"{API}/links/{made['id']}", headers=mixed.tenant.headers)
    _, expired = make_link(api, mixed.tenant, mixed.recording_id, expires_in_s=60)
    _, good = make_link(api, mixed.tenant, mixed.recording_id)
    ctx = api.service.ctx
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(ctx.engine, "before_cursor_execute", seen)
    try:
        with clock_moved(api, 61):
            for token, status in (("", 404), ("x", 404), ("A" * 5000, 404), ("\x00\n", 404),
                                  (_changed(good), 404), (revoked, 404), (expired, 410), (good, None)):  # fmt: skip
                statements.clear()
                with ctx.sessions() as s:
                    try:
                        links.resolve(s, ctx, token)
                        assert status is None, token
                    except ServiceError as exc:
                        assert status_of(exc) == status, token
                assert len(statements) == 1, (token, statements)
                assert "FROM links" in statements[0] and "token_hash" in statements[0]
    finally:
        event.remove(ctx.engine, "before_cursor_execute", seen)
    assert links.hash_token("A" * 5000) == links.hash_token("A" * links.MAX_TOKEN_CHARS)  # bounded work


def test_a_deleted_recording_behind_a_link_is_410(api: Api, tenant: Tenant, captures: Captures) -> None:
    (call_id,) = api.upload(tenant.headers, captures.one)
    rec_id = api.card(tenant.headers, call_id)["recording"]["id"]
    _, token = make_link(api, tenant, rec_id)
    assert delete_recording(api.service.ctx, rec_id, "test", actor="test")
    answer = api.client.get(f"/r/{token}/audio")
    assert answer.status_code == 410 and detail(answer) == "the recording was deleted"


# --- interactions -------------------------------------------------------------------------------------


def _in_interaction(api: Api, call_ids: list[str], interaction: str) -> None:
    with api.service.ctx.sessions.begin() as s:
        s.execute(update(Call).where(Call.id.in_(call_ids)).values(interaction_id=interaction))


def test_interaction_links_need_a_call_of_the_interaction_in_ones_domain(
    api: Api, tenant: Tenant, other: Tenant, captures: Captures
) -> None:
    (call_id,) = api.upload(tenant.headers, captures.one)
    _in_interaction(api, [call_id], "conv-42")
    for who, name in ((other, "conv-42"), (tenant, "conv-43")):
        answer = api.client.post(f"{API}/interactions/{name}/links", headers=who.headers, json={})
        assert answer.status_code == 404 and detail(answer) == f"no interaction {name!r}"
        listed = api.client.get(f"{API}/interactions/{name}/links", headers=who.headers)
        assert listed.status_code == 404 and detail(listed) == f"no interaction {name!r}"
    mine = api.client.get(f"{API}/interactions/conv-42/links", headers=tenant.headers)
    assert mine.status_code == 200 and mine.json() == {"items": []}


def test_an_interaction_link_opens_the_stitched_recording(api: Api, tenant: Tenant, captures: Captures) -> None:
    calls = api.upload(tenant.headers, captures.seven)
    _in_interaction(api, calls[:2], "conv-7")
    answer = api.client.post(f"{API}/interactions/conv-7/links", headers=tenant.headers, json={"expires_in_s": 600})
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert made["kind"] == "interaction" and made["target_id"] == "conv-7"
    token = made["url"].rsplit("/", 1)[1]
    # the link asked for the stitch; until a worker has made it the page says so and the audio is 409
    page = api.client.get(f"/r/{token}", headers=HTML)
    assert page.status_code == 200 and 'id="pending"' in page.text and "<audio" not in page.text
    waiting = api.client.get(f"/r/{token}/audio")
    assert waiting.status_code == 409 and waiting.headers["retry-after"] == "5"
    _public_headers(waiting)
    api.run_jobs()
    stitched = api.client.get(f"{API}/interactions/conv-7/stitched/audio", headers=tenant.headers)
    assert stitched.status_code == 200
    page = api.client.get(f"/r/{token}", headers=HTML)
    assert page.status_code == 200 and f'src="/r/{token}/audio"' in page.text
    assert page.text.count("data-seek=") == 2 and 'data-seek="0.0"' in page.text  # a chapter per call
    assert "conv-7" not in page.text and calls[0] not in page.text
    whole = api.client.get(f"/r/{token}/audio")
    assert whole.status_code == 200 and whole.content == stitched.content
    assert re.fullmatch(r'inline; filename="conversation-\d{8}-\d{4}\.mp3"', whole.headers["content-disposition"])
    part = api.client.get(f"/r/{token}/audio", headers={"Range": "bytes=200-999"})
    assert part.status_code == 206 and part.content == stitched.content[200:1000]
    assert part.headers["content-range"] == f"bytes 200-999/{len(stitched.content)}"
    assert "5550000" not in page.text and "5550001" not in page.text  # chapters name people, not numbers
    assert page.text.count("</a> Alice</li>") == 2
    picture = api.client.get(f"/r/{token}/picture")
    own = api.client.get(f"{API}/interactions/conv-7/picture", headers=tenant.headers).json()
    assert picture.status_code == 200 and len(picture.json()["chapters"]) == 2
    _same_picture_without_numbers(picture.json(), own)
    assert calls[0] not in picture.text and calls[1] not in picture.text
    assert [set(c) for c in picture.json()["chapters"]] == [{"who", "from_s", "to_s"}] * 2
    listed = api.client.get(f"{API}/interactions/conv-7/links", headers=tenant.headers).json()["items"]
    assert [i["id"] for i in listed] == [made["id"]] and listed[0]["uses"] == 3
