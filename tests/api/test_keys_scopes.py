"""Keys as a hostile tenant or a careless operator would try them (issue 12: H3, I7, L4, L5).

Each test is the attack: an admin key that outlives a new CALLREC_ADMIN_KEY, a weak one, an admin key
nobody can revoke, a PBX's upload key changing the domain's settings, a UI cookie that still works
after signing out, and unlimited key guessing. SQLite and PostgreSQL (``tests/api/conftest.py``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from callrec import cli
from callrec.api import deps
from callrec.app import create_app
from callrec.config import ConfigError
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import ApiKey
from callrec.serve import bootstrap
from tests.api.conftest import ADMIN_KEY, Api, Captures, Mixed, Tenant, bearer, detail

DOMAINS = "/api/v1/domains"
ADMIN_KEYS = "/api/v1/admin/keys"
OWN = {"Origin": "http://testserver"}


def _key(api: Api, tenant: Tenant, scopes: list[str]) -> dict[str, str]:
    made = api.client.post(f"{DOMAINS}/{tenant.name}/keys", headers=api.admin, json={"scopes": scopes})
    assert made.status_code == 201, made.text
    assert made.json()["scopes"] == sorted(scopes)
    return bearer(made.json()["key"])


# --- H3: admin keys --------------------------------------------------------------------------------------


@pytest.fixture
def restore_admin(api: Api) -> Iterator[None]:
    """The module's admin key as it was, after a test that rotates CALLREC_ADMIN_KEY."""
    config = api.service.ctx.config
    yield
    config.admin_key = ADMIN_KEY
    with transaction(api.service.ctx.sessions) as s:
        for row in s.scalars(select(ApiKey).where(ApiKey.domain_id.is_(None))):
            if row.key_hash == queries.hash_key(ADMIN_KEY):
                row.revoked_at, row.origin = None, queries.FROM_ENV
            elif row.origin == queries.FROM_ENV and row.revoked_at is None:
                row.revoked_at = api.service.ctx.clock.now()


def test_a_new_admin_key_in_the_environment_retires_the_old_one(api: Api, restore_admin: None) -> None:
    ctx = api.service.ctx
    first, second = "first-" + os.urandom(16).hex(), "second-" + os.urandom(16).hex()
    ctx.config.admin_key = first
    assert bootstrap(ctx) is None
    assert api.client.get(DOMAINS, headers=bearer(first)).status_code == 200
    # the operator rotates the key and restarts: the old one must stop working at once
    ctx.config.admin_key = second
    assert bootstrap(ctx) is None
    assert bootstrap(ctx) is None  # a second node starting with the same value changes nothing
    old = api.client.get(DOMAINS, headers=bearer(first))
    assert old.status_code == 401 and detail(old) == "the API key is not valid"
    assert api.client.post(DOMAINS, headers=bearer(first), json={"name": "evil-admin"}).status_code == 401
    listed = api.client.get(ADMIN_KEYS, headers=bearer(second))
    assert listed.status_code == 200
    env_keys = [k for k in listed.json()["items"] if k["origin"] == "env"]
    assert sum(k["revoked_at"] is None for k in env_keys) == 1
    # a value revoked since cannot come back by restarting with it
    ctx.config.admin_key = first
    with pytest.raises(ConfigError, match="was revoked"):
        bootstrap(ctx)


WEAK = ["x", "admin", "a" * 40, "0123456789", "abababababababababababababab", "pass word" * 4]


@pytest.mark.parametrize("weak", WEAK)
def test_a_weak_admin_key_is_refused(api: Api, weak: str) -> None:
    with pytest.raises(ConfigError, match="CALLREC_ADMIN_KEY") as refused, transaction(api.service.ctx.sessions) as s:
        queries.ensure_admin_key(s, weak, api.service.ctx.clock.now())
    assert "\n" not in str(refused.value)
    with api.service.ctx.sessions() as s:
        assert s.scalar(select(ApiKey).where(ApiKey.key_hash == queries.hash_key(weak))) is None


@pytest.mark.slow
def test_serve_refuses_a_weak_admin_key_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "CALLREC_ADMIN_KEY": "x"}
    done = subprocess.run([sys.executable, "-m", "callrec", "serve", "--data", str(tmp_path / "data"),
                           "--http", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--no-record", "--no-work"],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "CALLREC_ADMIN_KEY is too weak" in lines[0], done.stderr
    assert not (tmp_path / "data" / "callrec.db").exists()


def test_admin_keys_are_listed_made_once_and_revoked(api: Api) -> None:
    made = api.client.post(ADMIN_KEYS, headers=api.admin, json={"name": "ops laptop"})
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["domain"] is None and body["scopes"] == ["admin"]
    secret = body["key"]
    assert api.client.post(DOMAINS, headers=bearer(secret), json={"name": f"by-{body['id']}"}).status_code == 201
    listed = api.client.get(ADMIN_KEYS, headers=api.admin).json()["items"]
    mine = next(k for k in listed if k["id"] == body["id"])
    assert mine["name"] == "ops laptop" and mine["origin"] == "api" and mine["revoked_at"] is None
    assert secret not in str(listed)
    assert api.client.delete(f"{ADMIN_KEYS}/{body['id']}", headers=api.admin).status_code == 204
    gone = api.client.get(ADMIN_KEYS, headers=bearer(secret))
    assert gone.status_code == 401 and detail(gone) == "the API key is not valid"
    listed = api.client.get(ADMIN_KEYS, headers=api.admin).json()["items"]
    assert next(k for k in listed if k["id"] == body["id"])["revoked_at"] is not None
    missing = api.client.delete(f"{ADMIN_KEYS}/0123456789abcdef", headers=api.admin)
    assert missing.status_code == 404


def test_the_last_live_admin_key_cannot_be_revoked_through_the_api(api: Api) -> None:
    ctx = api.service.ctx
    with transaction(ctx.sessions) as s:  # every admin key but the module's own is revoked
        for row in s.scalars(select(ApiKey).where(ApiKey.domain_id.is_(None), ApiKey.revoked_at.is_(None))):
            if row.key_hash != queries.hash_key(ADMIN_KEY):
                row.revoked_at = ctx.clock.now()
        own = s.scalars(select(ApiKey.id).where(ApiKey.key_hash == queries.hash_key(ADMIN_KEY))).one()
    last = api.client.delete(f"{ADMIN_KEYS}/{own}", headers=api.admin)
    assert last.status_code == 409 and "last live admin key" in detail(last)
    assert api.client.get(ADMIN_KEYS, headers=api.admin).status_code == 200


def test_a_lost_admin_key_is_recovered_on_the_database_host(api: Api, database_url: str, tmp_path: Path) -> None:
    """``callrec keys create --admin`` needs no key, only the database; ``revoke`` ends a key at once."""
    env = {"CALLREC_DATABASE_URL": database_url, "CALLREC_DATA": str(tmp_path)}
    made = CliRunner().invoke(cli.app, ["keys", "create", "--admin", "--name", "recovered"], env=env)
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("cr_")
    assert api.client.get(ADMIN_KEYS, headers=bearer(secret)).status_code == 200
    listed = CliRunner().invoke(cli.app, ["keys", "list", "--admin", "--json"], env=env)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    mine = next(r for r in rows if r["name"] == "recovered")
    assert mine["origin"] == "cli" and mine["scopes"] == ["admin"] and secret not in listed.stdout
    gone = CliRunner().invoke(cli.app, ["keys", "revoke", mine["id"]], env=env)
    assert gone.exit_code == 0, gone.output
    assert api.client.get(ADMIN_KEYS, headers=bearer(secret)).status_code == 401


def test_a_domain_key_cannot_touch_admin_keys(api: Api, tenant: Tenant) -> None:
    admin_id = api.client.get(ADMIN_KEYS, headers=api.admin).json()["items"][0]["id"]
    for method, path in (("GET", ADMIN_KEYS), ("POST", ADMIN_KEYS), ("DELETE", f"{ADMIN_KEYS}/{admin_id}")):
        answer = api.client.request(method, path, headers=tenant.headers)
        assert answer.status_code == 403 and detail(answer) == "this needs an admin key", (method, path)


# --- I7: scopes ------------------------------------------------------------------------------------------


def test_an_upload_key_cannot_change_settings_or_make_keys_but_uploads(
    api: Api, tenant: Tenant, captures: Captures
) -> None:
    pbx = _key(api, tenant, ["upload"])
    hijack = {"storage": {"kind": "s3", "bucket": "evil", "endpoint_url": "https://evil.example"}}
    put = api.client.put(f"{DOMAINS}/{tenant.name}/settings", headers=pbx, json=hijack)
    assert put.status_code == 403 and "'settings' scope" in detail(put)
    hooks = api.client.put(f"{DOMAINS}/{tenant.name}/settings", headers=pbx,
                           json={"webhooks": [{"url": "https://evil.example/hook"}]})  # fmt: skip
    assert hooks.status_code == 403
    more = api.client.post(f"{DOMAINS}/{tenant.name}/keys", headers=pbx, json={"scopes": ["settings"]})
    assert more.status_code == 403 and "'settings' scope" in detail(more)
    assert api.client.get(f"{DOMAINS}/{tenant.name}/keys", headers=pbx).status_code == 403
    assert api.client.get(f"{DOMAINS}/{tenant.name}/settings", headers=pbx).status_code == 403
    assert api.client.get("/api/v1/calls", headers=pbx).status_code == 403
    # what it is for still works
    calls = api.upload(pbx, captures.one, mix=False)
    assert len(calls) == 1
    assert api.client.get(f"{DOMAINS}/{tenant.name}/settings", headers=tenant.headers).json()["storage"]["kind"] != "s3"


def test_a_read_key_cannot_upload_or_change_anything(api: Api, mixed: Mixed, captures: Captures) -> None:
    reader = _key(api, mixed.tenant, ["read"])
    files = {"file": ("one.pcap", captures.one.read_bytes(), "application/vnd.tcpdump.pcap")}
    upload = api.client.post("/api/v1/uploads", headers=reader, files=files)
    assert upload.status_code == 403 and detail(upload) == "this key lacks the 'upload' scope this needs"
    put = api.client.put(f"{DOMAINS}/{mixed.tenant.name}/settings", headers=reader, json={"format": "wav"})
    assert put.status_code == 403
    tags = api.client.put(f"/api/v1/calls/{mixed.call_id}/tags", headers=reader, json={"tags": ["x"]})
    assert tags.status_code == 403
    # it reads: calls, the card, the audio, links
    assert api.client.get(f"/api/v1/calls/{mixed.call_id}", headers=reader).status_code == 200
    assert api.client.get(f"/api/v1/recordings/{mixed.recording_id}/audio", headers=reader).status_code == 200
    link = api.client.post(f"/api/v1/recordings/{mixed.recording_id}/links", headers=reader, json={})
    assert link.status_code == 201
    assert api.client.get(f"{DOMAINS}/{mixed.tenant.name}/settings", headers=reader).status_code == 200


def test_a_key_cannot_grant_more_than_it_has(api: Api, tenant: Tenant, other: Tenant) -> None:
    manager = _key(api, tenant, ["settings"])
    wider = api.client.post(f"{DOMAINS}/{tenant.name}/keys", headers=manager, json={"scopes": ["read"]})
    assert wider.status_code == 403 and detail(wider) == "a key cannot grant scopes it lacks: read"
    same = api.client.post(f"{DOMAINS}/{tenant.name}/keys", headers=manager, json={"scopes": ["settings"]})
    assert same.status_code == 201
    admin = api.client.post(f"{DOMAINS}/{tenant.name}/keys", headers=api.admin, json={"scopes": ["admin"]})
    assert admin.status_code == 422
    empty = api.client.post(f"{DOMAINS}/{tenant.name}/keys", headers=api.admin, json={"scopes": []})
    assert empty.status_code == 422
    # another domain's keys stay out of reach, as everything of another domain
    assert api.client.post(f"{DOMAINS}/{other.name}/keys", headers=manager).status_code == 404


# --- L4: signing out -------------------------------------------------------------------------------------


@pytest.fixture
def browser(api: Api) -> Iterator[TestClient]:
    with TestClient(create_app(api.service)) as client:
        yield client


def test_a_cookie_is_worthless_after_signing_out(api: Api, browser: TestClient, mixed: Mixed) -> None:
    secret = mixed.tenant.headers["Authorization"].removeprefix("Bearer ")
    signed = browser.post("/ui/signin", data={"key": secret}, headers=OWN, follow_redirects=False)
    assert signed.status_code == 303
    stolen = browser.cookies["callrec_session"]
    page = browser.get(f"/ui/calls/{mixed.call_id}")
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    out = browser.post("/ui/signout", data={"csrf": found.group(1)}, headers=OWN, follow_redirects=False)
    assert out.status_code == 303
    # whoever kept the cookie (a shared computer, a copied header) replays it
    browser.cookies.set("callrec_session", stolen, path="/ui")
    again = browser.get("/ui/calls", follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"].startswith("/ui/signin")
    audio = browser.get(f"/ui/recordings/{mixed.recording_id}/audio")
    assert audio.status_code == 401


def test_an_upload_key_cannot_sign_in_to_the_ui(api: Api, browser: TestClient, tenant: Tenant) -> None:
    pbx = _key(api, tenant, ["upload"])["Authorization"].removeprefix("Bearer ")
    answer = browser.post("/ui/signin", data={"key": pbx}, headers=OWN, follow_redirects=False)
    assert answer.status_code == 403 and "callrec_session" not in browser.cookies


# --- L5: guessing ----------------------------------------------------------------------------------------


def test_wrong_keys_are_throttled_per_address(api: Api, tenant: Tenant) -> None:
    app = create_app(api.service)
    with TestClient(app, client=("203.0.113.66", 40000)) as attacker, \
            TestClient(app, client=("198.51.100.7", 40000)) as pbx:  # fmt: skip
        for n in range(deps.THROTTLE_FAILURES):
            wrong = attacker.get("/api/v1/calls", headers=bearer(f"cr_guess_{n}"))
            assert wrong.status_code == 401, n
        blocked = attacker.get("/api/v1/calls", headers=bearer("cr_guess_more"))
        assert blocked.status_code == 429
        assert 1 <= int(blocked.headers["Retry-After"]) <= deps.THROTTLE_WINDOW_S
        assert "too many wrong keys" in detail(blocked)
        # even a right key from the guessing address waits: the answer must not tell a right guess apart
        assert attacker.get("/api/v1/calls", headers=tenant.headers).status_code == 429
        # a right key from elsewhere is never slowed down, however often it is used
        for _ in range(3 * deps.THROTTLE_FAILURES):
            assert pbx.get("/api/v1/calls", headers=tenant.headers).status_code == 200


def test_wrong_sign_ins_are_throttled_per_address(api: Api, tenant: Tenant) -> None:
    app = create_app(api.service)
    with TestClient(app, client=("203.0.113.67", 40000)) as attacker:
        for n in range(deps.THROTTLE_FAILURES):
            assert attacker.post("/ui/signin", data={"key": f"cr_guess_{n}"}, headers=OWN).status_code == 401
        blocked = attacker.post("/ui/signin", data={"key": "cr_guess_more"}, headers=OWN)
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1
        # the API of the same address is throttled too: one count per address
        assert attacker.get("/api/v1/calls", headers=bearer("cr_guess_api")).status_code == 429


def test_the_throttle_forgets_after_its_window() -> None:
    now = [1000.0]
    guard = deps.Throttle(failures=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        guard.failed("a")
    assert guard.retry_after("a") == 60 and guard.retry_after("b") == 0
    now[0] += 59.5
    assert guard.retry_after("a") == 1
    now[0] += 1
    assert guard.retry_after("a") == 0
