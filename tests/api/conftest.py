"""The API under test: a real service (database, queue, pipeline, local storage) behind a TestClient.

Every test module runs against SQLite and against PostgreSQL (a throwaway database on 127.0.0.1:5432,
or ``CALLREC_TEST_POSTGRES``; skipped when unreachable, a failure when ``CI=true``). Calls are made from
synthetic captures, uploaded through ``POST /uploads`` and mixed by the real pipeline.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from sqlalchemy.engine import make_url

from callrec.app import create_app
from callrec.config import ServiceConfig
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.jobs.worker import build
from callrec.secretbox import new_key
from callrec.service.domain_settings import ensure_domain
from callrec.service.pipeline import Service
from tests.support import synth

POSTGRES = os.environ.get("CALLREC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
ADMIN_KEY = "cr_test_admin_" + secrets.token_hex(16)
Headers = dict[str, str]


# --- captures, built once per test process -----------------------------------------------------------


@dataclass(frozen=True)
class Captures:
    one: Path  # one call, Call-ID call-1@test, caller 100, callee 200
    seven: Path  # seven calls 10 s apart: call-0@test..call-6@test, callers 5550000..5550006
    no_sip: Path  # the RTP of a call without its signalling
    pcapng: Path  # ``one`` converted to pcapng by editcap


def _numbered(datagrams: list[Any], caller: str) -> list[Any]:
    """The call's SIP with the caller's number changed (From and Contact say sip:100@)."""
    out = []
    for ts, src, sport, dst, dport, payload in datagrams:
        if sport == 5060:
            payload = payload.replace(b"sip:100@", f"sip:{caller}@".encode())
        out.append((ts, src, sport, dst, dport, payload))
    return out


@pytest.fixture(scope="session")
def captures(tmp_path_factory: pytest.TempPathFactory) -> Captures:
    folder = tmp_path_factory.mktemp("captures")
    one = synth.build(synth.Scenario(duration=2.5))
    seven: list[Any] = []
    for k in range(7):
        scn = synth.Scenario(call_id=f"call-{k}@test", duration=1.0, seed=k, a_port=20000 + 2 * k,
                             b_port=30000 + 2 * k)  # fmt: skip
        seven += _numbered(synth.build(scn, base_time=1_700_000_000.0 + 10 * k).datagrams, f"555000{k}")
    seven.sort(key=lambda d: d[0])
    caps = Captures(
        one=synth.write_pcap(folder / "one.pcap", one.datagrams),
        seven=synth.write_pcap(folder / "seven.pcap", seven),
        no_sip=synth.write_pcap(folder / "no_sip.pcap", one.media),
        pcapng=folder / "one.pcapng",
    )
    subprocess.run(["editcap", "-F", "pcapng", str(caps.one), str(caps.pcapng)], check=True, capture_output=True)
    return caps


# --- the database --------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'callrec.db'}"
        return
    try:
        conn = psycopg.connect(POSTGRES.replace("postgresql+psycopg://", "postgresql://"), autocommit=True,
                               connect_timeout=3)  # fmt: skip
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL is not reachable at {make_url(POSTGRES).host}:{make_url(POSTGRES).port or 5432}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: it must be): {str(exc).splitlines()[0]}")
        pytest.skip(reason)
    name = f"callrec_api_{secrets.token_hex(6)}"
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    finally:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.close()


# --- the service and its API -------------------------------------------------------------------------


@dataclass
class Tenant:
    """A domain and one of its keys."""

    name: str
    headers: Headers


@dataclass
class Api:
    client: TestClient
    service: Service
    admin: Headers

    def tenant(self, settings: dict[str, Any] | None = None) -> Tenant:
        """A new domain (a fresh name, so tests never see each other's calls) with a key."""
        name = f"t-{secrets.token_hex(5)}"
        body: dict[str, Any] = {"name": name} | ({"settings": settings} if settings else {})
        assert self.client.post("/api/v1/domains", headers=self.admin, json=body).status_code == 201
        made = self.client.post(f"/api/v1/domains/{name}/keys", headers=self.admin, json={"name": "test"})
        assert made.status_code == 201, made.text
        return Tenant(name, bearer(made.json()["key"]))

    def upload(self, headers: Headers, path: Path, *, call_json: bytes | None = None,
               domain: str | None = None, mix: bool = True) -> list[str]:  # fmt: skip
        """Upload a capture (or a tape's media and call.json), mix what it made; the new calls' ids."""
        files: dict[str, Any] = {"file": (path.name, path.read_bytes(), "application/vnd.tcpdump.pcap")}
        if call_json is not None:
            files["call"] = ("call.json", call_json, "application/json")
        data = {"domain": domain} if domain is not None else None
        answer = self.client.post("/api/v1/uploads", headers=headers, files=files, data=data)
        assert answer.status_code == 202, answer.text
        if mix:
            self.run_jobs()
        calls: list[str] = answer.json()["calls"]
        return calls

    def run_jobs(self) -> None:
        while self.service.queue.run_one():
            pass

    def card(self, headers: Headers, call_id: str) -> dict[str, Any]:
        answer = self.client.get(f"/api/v1/calls/{call_id}", headers=headers)
        assert answer.status_code == 200, answer.text
        card: dict[str, Any] = answer.json()
        return card


def bearer(key: str) -> Headers:
    return {"Authorization": f"Bearer {key}"}


def detail(answer: Any) -> str:
    """The one sentence of an error answer (and a check that it is JSON of that shape)."""
    body = answer.json()
    assert set(body) == {"detail"}, body
    text: str = body["detail"]
    return text


def make_service(data_dir: Path, database_url: str) -> Service:
    config = ServiceConfig(data_dir=data_dir, database_url=database_url, queue_url="memory://",
                           admin_key=ADMIN_KEY, secret_key=new_key(), max_attempts=1,
                           egress_allow=("127.0.0.0/8", "::1"))  # fmt: skip
    service = build(config)
    with transaction(service.ctx.sessions) as s:
        now = service.ctx.clock.now()
        ensure_domain(s, queries.DEFAULT_DOMAIN, now)
        queries.ensure_admin_key(s, ADMIN_KEY, now)
    return service


@pytest.fixture(scope="module")
def api(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    service = make_service(tmp_path_factory.mktemp("data"), database_url)
    with TestClient(create_app(service)) as client:
        yield Api(client, service, bearer(ADMIN_KEY))
    service.close()


@pytest.fixture
def tenant(api: Api) -> Tenant:
    return api.tenant()


@pytest.fixture
def other(api: Api) -> Tenant:
    """Another domain's key: it must never reach the first tenant's data."""
    return api.tenant()


@dataclass(frozen=True)
class Mixed:
    """One uploaded and mixed call, shared by the tests of a module that only read it."""

    tenant: Tenant
    call_id: str
    recording_id: str


@pytest.fixture(scope="module")
def mixed(api: Api, captures: Captures) -> Mixed:
    owner = api.tenant()
    (call_id,) = api.upload(owner.headers, captures.one)
    recording = api.card(owner.headers, call_id)["recording"]
    assert recording["state"] == "completed", recording
    return Mixed(owner, call_id, recording["id"])
