"""Every failure answers JSON: a bug is a 500 with an error id (its traceback logged once, with that id),
the database or the job queue out of reach a 503 with Retry-After; never plain-text "Internal Server Error"."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from huey.exceptions import HueyException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from callrec.api import deps
from callrec.app import create_app
from callrec.errors import ParseError
from tests.api.conftest import Api, Captures, Tenant, detail


@pytest.fixture
def client(api: Api) -> Iterator[TestClient]:
    with TestClient(create_app(api.service), raise_server_exceptions=False) as client:
        yield client


def _raise(exc: BaseException) -> Any:
    def raising(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return raising


def _database_gone() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


def test_a_bug_in_a_route_is_json_500_with_an_error_id_logged_once(
    api: Api, tenant: Tenant, client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(deps.queries, "key_by_secret", _raise(RuntimeError("a bug")))
    with caplog.at_level(logging.ERROR, logger="callrec"):
        answer = client.get("/api/v1/calls", headers=tenant.headers)
    assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert set(body) == {"detail", "error_id"} and body["detail"] == "internal error"
    logged = [r for r in caplog.records if body["error_id"] in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert logged[0].exc_info[1] is not None and str(logged[0].exc_info[1]) == "a bug"


def test_the_exception_does_not_reach_the_server(api: Api, tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer is made here, and the exception ends here: a server would not log it a second time."""
    monkeypatch.setattr(deps.queries, "key_by_secret", _raise(KeyError("bug")))
    with TestClient(create_app(api.service), raise_server_exceptions=True) as strict:
        answer = strict.get("/api/v1/calls", headers=tenant.headers)
    assert answer.status_code == 500 and answer.json()["detail"] == "internal error"


@pytest.mark.parametrize(
    ("error", "reached"),
    [
        (_database_gone(), "the database"),
        (DBAPIError("SELECT 1", {}, Exception("connection reset"), connection_invalidated=True), "the database"),
        (RedisConnectionError("Error 111 connecting to redis:6379. Connection refused."), "the job queue"),
        (RedisTimeoutError("Timeout reading from socket"), "the job queue"),
        (HueyException("queue storage failed"), "the job queue"),
    ],
    ids=["operational", "invalidated", "redis-refused", "redis-timeout", "huey"],
)
def test_out_of_reach_is_json_503_with_retry_after(
    api: Api, tenant: Tenant, client: TestClient, monkeypatch: pytest.MonkeyPatch, error: Exception, reached: str
) -> None:
    monkeypatch.setattr(deps.queries, "key_by_secret", _raise(error))
    answer = client.get("/api/v1/calls", headers=tenant.headers)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert detail(answer) == f"{reached} cannot be reached"


def test_other_database_errors_are_bugs(
    api: Api, tenant: Tenant, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = IntegrityError("INSERT INTO calls", {}, Exception("duplicate key value violates unique constraint"))
    monkeypatch.setattr(deps.queries, "key_by_secret", _raise(error))
    answer = client.get("/api/v1/calls", headers=tenant.headers)
    assert answer.status_code == 500 and set(answer.json()) == {"detail", "error_id"}


def test_an_upload_that_fails_inside_is_json(
    api: Api, tenant: Tenant, client: TestClient, captures: Captures, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"file": ("c.pcap", captures.one.read_bytes())}
    monkeypatch.setattr(api.service.pipeline, "tape_closed", _raise(RuntimeError("a bug")))
    bug = client.post("/api/v1/uploads", headers=tenant.headers, files=files)
    assert bug.status_code == 500 and bug.json()["detail"] == "internal error"
    monkeypatch.setattr(api.service.pipeline, "tape_closed", _raise(_database_gone()))
    down = client.post("/api/v1/uploads", headers=tenant.headers, files=files)
    assert down.status_code == 503 and detail(down) == "the database cannot be reached"


def test_no_answer_names_a_server_path(
    api: Api, tenant: Tenant, client: TestClient, captures: Captures, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = str(api.service.ctx.config.data_dir)

    def unreadable(folder: Path) -> str:  # what the pipeline says when a tape's call.json is gone
        raise ParseError(f"{folder}: call.json is not readable JSON")

    monkeypatch.setattr(api.service.pipeline, "tape_closed", unreadable)
    files = {"file": ("c.pcap", captures.one.read_bytes())}
    answer = client.post("/api/v1/uploads", headers=tenant.headers, files=files)
    assert answer.status_code == 500 and data_dir not in answer.text
    truncated = client.post("/api/v1/uploads", headers=tenant.headers, files={"file": ("c.pcap", b"\xd4\xc3\xb2\xa1")})
    assert truncated.status_code == 400 and data_dir not in truncated.text and "/" not in detail(truncated)


def test_unknown_routes_and_methods_stay_json(client: TestClient) -> None:
    assert detail(client.get("/api/v1/nothing-here")) == "there is nothing at /api/v1/nothing-here"
    assert client.delete("/api/v1/uploads").status_code == 405
