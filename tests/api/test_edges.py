"""Issue 12, edges of the public pages and the UI, written as the attacks (SQLite and PostgreSQL): an
absurd Range, framing and sniffing, HEAD."""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, update

from callrec.app import create_app
from callrec.db.schema import Call
from tests.api.conftest import ADMIN_KEY, Api, Captures, Mixed, bearer, detail, make_service
from tests.api.test_links import HTML, clock_moved, full, make_link  # noqa: F401 - full is a fixture

API = "/api/v1"
DIGITS = "9" * 5000


def _edge_headers(answer: Any) -> None:
    assert answer.headers.get("x-frame-options") == "DENY", answer.headers
    assert "frame-ancestors 'none'" in answer.headers.get("content-security-policy", ""), answer.headers
    assert answer.headers.get("x-content-type-options") == "nosniff", answer.headers


def _private(answer: Any) -> None:
    assert answer.headers.get("cache-control") == "no-store", answer.headers
    assert answer.headers.get("referrer-policy") == "no-referrer", answer.headers
    assert answer.headers.get("x-robots-tag") == "noindex", answer.headers


@pytest.mark.parametrize(
    "header", [f"bytes={DIGITS}-", f"bytes=0-{DIGITS}", f"bytes=-{DIGITS}", f"bytes={DIGITS}-{DIGITS}"]
)
def test_an_absurd_range_is_ignored_or_416_never_500(api: Api, mixed: Mixed, full: bytes, header: str) -> None:  # noqa: F811
    _, token = make_link(api, mixed.tenant, mixed.recording_id)
    answer = api.client.get(f"/r/{token}/audio", headers={"Range": header})
    assert answer.status_code in (200, 416), (answer.status_code, answer.text[:200])
    if answer.status_code == 200:
        assert answer.content == full
    _private(answer)
    _edge_headers(answer)
    keyed = api.client.get(
        f"{API}/recordings/{mixed.recording_id}/audio", headers=mixed.tenant.headers | {"Range": header}
    )
    assert keyed.status_code in (200, 416, 422), keyed.status_code


def test_public_pages_cannot_be_framed_or_sniffed_and_answer_head(api: Api, mixed: Mixed) -> None:
    made, token = make_link(api, mixed.tenant, mixed.recording_id)
    for path in (f"/r/{token}", f"/r/{token}/audio", f"/r/{token}/picture", "/r/not-a-token", "/r/not-a-token/audio"):
        for accept in ({}, HTML):
            got = api.client.get(path, headers=accept)
            assert got.status_code in (200, 404), (path, got.status_code)
            _edge_headers(got)
            _private(got)
            head = api.client.head(path, headers=accept)
            assert head.status_code == got.status_code, (path, head.status_code)
            assert head.content == b""
            _edge_headers(head)
            _private(head)
    seen = api.client.get(f"{API}/links/{made['id']}", headers=mixed.tenant.headers).json()
    assert seen["uses"] == 4, "two GETs of the page and two whole-file GETs of the audio; a HEAD is not a use"


def test_the_ui_cannot_be_framed_or_sniffed(api: Api) -> None:
    for path in ("/ui/signin", "/ui/calls", "/ui", "/static/ui.js", "/ui/nothing-here"):
        answer = api.client.get(path, follow_redirects=False)
        assert answer.headers.get("x-frame-options") == "DENY", (path, answer.headers)
        assert answer.headers.get("x-content-type-options") == "nosniff", (path, answer.headers)
        if not path.startswith("/static"):
            assert "frame-ancestors 'none'" in answer.headers.get("content-security-policy", ""), path


def test_the_data_folder_and_everything_in_it_is_private(database_url: str, captures: Captures, tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = data / "storage" / "from-an-older-version.mp3"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"audio")
    for path, mode in ((data, 0o755), (old.parent, 0o755), (old, 0o644)):
        path.chmod(mode)
    before = os.umask(0o022)  # what a shell usually leaves
    try:
        sqlite = database_url.startswith("sqlite")
        service = make_service(data, f"sqlite:///{data / 'callrec.db'}" if sqlite else database_url)
        try:
            with TestClient(create_app(service)) as client:
                api = Api(client, service, bearer(ADMIN_KEY))
                owner = api.tenant()
                (call_id,) = api.upload(owner.headers, captures.one)
                assert api.card(owner.headers, call_id)["recording"]["state"] == "completed"
        finally:
            service.close()
    finally:
        os.umask(before)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    loose = {}
    names = set()
    for root, dirs, files in os.walk(data):
        for name in (*dirs, *files):
            path = Path(root) / name
            names.add(path.relative_to(data).parts[0])
            mode = stat.S_IMODE(path.lstat().st_mode)
            if mode & 0o077:
                loose[str(path.relative_to(data))] = oct(mode)
    assert loose == {}, "readable by others"
    # the recording, the upload's staging and the mixer's work (a tape passes through and is removed)
    assert {"storage", "uploads", "work"} <= names, names
    if sqlite:
        assert "callrec.db" in names


@contextmanager
def disk_full(api: Api) -> Iterator[None]:
    """Every INSERT, UPDATE and DELETE fails as a full disk makes it fail (SQLite's and PostgreSQL's error)."""
    engine = api.service.ctx.engine

    def refuse(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.lstrip().split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            if engine.dialect.name == "sqlite":
                raise sqlite3.OperationalError("database or disk is full")
            raise psycopg.errors.DiskFull("could not extend file: No space left on device")

    event.listen(engine, "before_cursor_execute", refuse)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", refuse)


@pytest.mark.slow
def test_a_full_disk_keeps_keyed_reads_working_and_healthz_says_degraded(
    api: Api,
    mixed: Mixed,
    full: bytes,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = mixed.tenant.headers
    reads = [
        f"{API}/calls",
        f"{API}/calls/{mixed.call_id}",
        f"{API}/recordings/{mixed.recording_id}",
        f"{API}/recordings/{mixed.recording_id}/links",
        f"{API}/webhooks/deliveries",
    ]
    assert api.client.get("/healthz").json()["status"] == "ok"
    # a minute and more later: each key's "last used" is due to be written at its next request
    with clock_moved(api, 3600), disk_full(api):
        for path in reads:
            answer = api.client.get(path, headers=headers)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
        audio = api.client.get(f"{API}/recordings/{mixed.recording_id}/audio", headers=headers)
        assert audio.status_code == 200 and audio.content == full
        assert api.client.get(f"{API}/domains", headers=api.admin).status_code == 200
        # a change cannot be made, and says so
        made = api.client.post(f"{API}/recordings/{mixed.recording_id}/links", headers=headers, json={})
        assert made.status_code == 503, made.text
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10 * 1024**2))
    health = api.client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "degraded", health.text
    assert "10 MB free" in health.json()["disk"] and health.json()["detail"] == health.json()["disk"]


def test_an_admin_interaction_view_never_merges_domains_and_needs_the_domain(api: Api, captures: Captures) -> None:
    first, second = api.tenant(), api.tenant()
    ours = {first.name: api.upload(first.headers, captures.one), second.name: api.upload(second.headers, captures.one)}
    shared = f"conv-{secrets.token_hex(4)}"
    with api.service.ctx.sessions.begin() as s:
        ids = [c for calls in ours.values() for c in calls]
        s.execute(update(Call).where(Call.id.in_(ids)).values(interaction_id=shared))
    several = "several domains have calls of this interaction; name one with ?domain="
    for path in (f"{API}/interactions/{shared}", f"{API}/interactions/{shared}/stitched"):
        merged = api.client.get(path, headers=api.admin)
        assert merged.status_code == 400 and detail(merged) == several, (path, merged.status_code, merged.text[:300])
    for name, calls in ours.items():
        one = api.client.get(f"{API}/interactions/{shared}", headers=api.admin, params={"domain": name})
        assert one.status_code == 200, one.text
        assert [c["id"] for c in one.json()["calls"]] == calls and {c["domain"] for c in one.json()["calls"]} == {name}
        stitched = api.client.get(f"{API}/interactions/{shared}/stitched", headers=api.admin, params={"domain": name})
        assert stitched.status_code in (200, 202) and stitched.json()["calls"] == calls, stitched.text
    # a domain's own key sees its own calls, with or without naming its domain, and never the other's
    own = api.client.get(f"{API}/interactions/{shared}", headers=first.headers)
    assert [c["id"] for c in own.json()["calls"]] == ours[first.name]
    theirs = api.client.get(f"{API}/interactions/{shared}", headers=first.headers, params={"domain": second.name})
    assert theirs.status_code == 404
    # the web UI, signed in with the admin key
    with TestClient(create_app(api.service)) as browser:
        key = api.admin["Authorization"].removeprefix("Bearer ")
        signed = browser.post("/ui/signin", data={"key": key}, headers={"Origin": "http://testserver"})
        assert signed.status_code == 200, signed.status_code
        page = browser.get(f"/ui/interactions/{shared}")  # a choice of the domains, not a merged view
        assert page.status_code == 200 and 'id="choose-domain"' in page.text and "data-call=" not in page.text
        assert all(f'href="/ui/interactions/{shared}?domain={name}"' in page.text for name in ours)
        page = browser.get(f"/ui/interactions/{shared}", params={"domain": first.name})
        assert page.status_code == 200
        assert ours[first.name][0] in page.text and ours[second.name][0] not in page.text
