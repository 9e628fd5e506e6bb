"""Jobs (the pipeline's runs and failures), /healthz and /metrics."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from callrec.db.engine import make_engine, session_factory
from callrec.db.schema import RECORDING, Job, Recording
from callrec.files.scan import calls_in_capture
from tests.api.conftest import Api, Captures, Mixed, Tenant, detail

JOBS = "/api/v1/jobs"


@pytest.fixture(scope="module")
def failed(api: Api, captures: Captures) -> tuple[Tenant, str]:
    """A call whose mixing fails for good: its call.json names streams the capture never carries."""
    owner = api.tenant()
    info = calls_in_capture(captures.one)[0]
    info.call_ids = ["missing@test"]
    for stream in info.streams:
        stream.local_port += 1000
    (call_id,) = api.upload(owner.headers, captures.one, call_json=json.dumps(info.to_json()).encode())
    return owner, call_id


def test_jobs_of_a_recording(api: Api, mixed: Mixed) -> None:
    answer = api.client.get(JOBS, headers=mixed.tenant.headers, params={"recording_id": mixed.recording_id})
    assert answer.status_code == 200
    jobs = answer.json()["items"]
    assert [(j["kind"], j["state"]) for j in jobs] == [("store", "done"), ("mix", "done")]
    assert all(j["domain"] == mixed.tenant.name and j["recording_id"] == mixed.recording_id for j in jobs)
    one = api.client.get(f"{JOBS}/{jobs[0]['id']}", headers=mixed.tenant.headers)
    assert one.status_code == 200 and one.json() == jobs[0]


def test_a_failed_job_shows_its_error(api: Api, failed: tuple[Tenant, str]) -> None:
    owner, call_id = failed
    card = api.card(owner.headers, call_id)
    assert card["recording"]["state"] == "failed" and card["recording"]["reason"].startswith("nothing to mix")
    jobs = api.client.get(JOBS, headers=owner.headers, params={"state": "failed"}).json()["items"]
    assert len(jobs) == 1 and jobs[0]["kind"] == "mix" and jobs[0]["error"] == card["recording"]["reason"]


def test_jobs_pages_with_a_cursor(api: Api, mixed: Mixed) -> None:
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1} | ({"cursor": cursor} if cursor else {})
        page = api.client.get(JOBS, headers=mixed.tenant.headers, params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 2 and seen == sorted(seen, reverse=True)


def test_bad_job_queries(api: Api, mixed: Mixed) -> None:
    headers = mixed.tenant.headers
    cases = {
        f"{JOBS}?state=lost": (422, "state: Input should be 'running', 'done', 'retrying' or 'failed'"),
        f"{JOBS}?cursor=eyJpZCI6ICJ4In0": (400, "the cursor is not valid"),  # {"id": "x"}
        f"{JOBS}?limit=0": (422, "limit: Input should be greater than or equal to 1"),
        f"{JOBS}/abc": (422, "job_id: Input should be a valid integer, unable to parse string as an integer"),
        f"{JOBS}/0": (422, "job_id: Input should be greater than or equal to 1"),
        f"{JOBS}/2147483647": (404, "no job 2147483647"),
    }
    for path, (status, sentence) in cases.items():
        answer = api.client.get(path, headers=headers)
        assert answer.status_code == status and detail(answer) == sentence, path


def test_another_domains_jobs_are_invisible(api: Api, mixed: Mixed, other: Tenant) -> None:
    own = api.client.get(JOBS, headers=mixed.tenant.headers, params={"recording_id": mixed.recording_id})
    job_id = own.json()["items"][0]["id"]
    assert api.client.get(JOBS, headers=other.headers).json()["items"] == []
    foreign = api.client.get(f"{JOBS}/{job_id}", headers=other.headers)
    assert foreign.status_code == 404 and detail(foreign) == f"no job {job_id}"
    assert api.client.get(f"{JOBS}/{job_id}", headers=api.admin).status_code == 200
    everything = api.client.get(JOBS, headers=api.admin, params={"limit": 500}).json()["items"]
    assert job_id in {j["id"] for j in everything}


# --- operations ----------------------------------------------------------------------------------------


def test_healthz(api: Api) -> None:
    answer = api.client.get("/healthz")
    body = answer.json()
    body.pop("warnings", None)  # on PostgreSQL: the local storage of this test's domains (see below)
    assert answer.status_code == 200 and body == {"status": "ok", "database": "ok", "queue": "ok"}


def test_healthz_warns_of_local_storage_on_a_shared_database(api: Api, tenant: Tenant) -> None:
    on_s3 = api.tenant({"storage": {"kind": "s3", "bucket": "calls", "access_key_id": "AK",
                                    "secret_access_key": "s3cr3t-value"}})  # fmt: skip
    answer = api.client.get("/healthz")
    assert answer.status_code == 200 and answer.json()["status"] == "ok"
    warnings = answer.json().get("warnings", [])
    if api.service.ctx.engine.dialect.name != "postgresql":
        assert warnings == []  # one host: its own disk is where everything is
        return
    named = f"domain {tenant.name} stores on this host's local disk; other hosts cannot read it"
    assert named in warnings or any(w.startswith("more domains") for w in warnings), warnings
    assert not any(on_s3.name in w for w in warnings)


def test_healthz_names_the_failing_part(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> int:
        raise ConnectionError("queue down")

    monkeypatch.setattr(api.service.queue, "pending", broken)
    answer = api.client.get("/healthz")
    assert answer.status_code == 503
    body = {k: v for k, v in answer.json().items() if k != "warnings"}  # PostgreSQL: see below
    assert body == {"status": "error", "database": "ok", "queue": "the job queue cannot be reached",
                             "detail": "the job queue cannot be reached"}  # fmt: skip
    assert math.isnan(_metrics(api)["callrec_jobs_queued"])  # unknown, but the other figures still come


def test_a_database_out_of_reach_is_503(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    nowhere: sessionmaker[Any] = session_factory(make_engine("postgresql://nobody@127.0.0.1:1/nothing"))
    monkeypatch.setattr(api.service.ctx, "sessions", nowhere)
    health = api.client.get("/healthz")
    assert health.status_code == 503 and health.json()["database"] == "the database cannot be reached"
    assert api.client.get("/metrics").status_code == 503
    calls = api.client.get("/api/v1/calls", headers=api.admin)
    assert calls.status_code == 503 and detail(calls) == "the database cannot be reached"


def _metrics(api: Api) -> dict[str, float]:
    answer = api.client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            label = ",".join(f"{k}={v}" for k, v in sample.labels.items())
            values[sample.name + (f"{{{label}}}" if label else "")] = sample.value
    return values


def test_metrics_come_from_the_database(api: Api, mixed: Mixed, failed: tuple[Tenant, str]) -> None:
    values = _metrics(api)
    with api.service.ctx.sessions() as s:
        by_state = dict(s.execute(select(Recording.state, func.count()).group_by(Recording.state)).all())
        jobs_failed = s.scalar(select(func.count()).select_from(Job).where(Job.state == "failed")) or 0
    assert values["callrec_calls_recording"] == by_state.get(RECORDING, 0)
    assert values["callrec_recordings{state=completed}"] == by_state["completed"] >= 1
    assert values["callrec_recordings{state=failed}"] == by_state["failed"] >= 1
    assert values["callrec_jobs_failed"] == jobs_failed >= 1
    assert values["callrec_jobs_queued"] == 0
    assert values["callrec_storage_errors"] == 0
    assert values["callrec_mixing_speed_realtime"] > 1  # a 2.5 s call mixes far faster than real time


def test_the_openapi_document(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    assert doc["info"]["title"] == "callrec"
    some = {"/api/v1/calls", "/api/v1/uploads", "/api/v1/recordings/{recording_id}/audio", "/healthz", "/metrics"}
    assert some <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    upload = doc["paths"]["/api/v1/uploads"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file"] and upload["properties"]["file"]["format"] == "binary"
