"""Idempotency-Key on uploads: a retry gets the first answer and registers nothing twice; a request cut
short part-way is finished by its retry; a key is free again after a failure, and after 24 hours."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from callrec.api import idempotency
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import QUEUED, Call, Domain, IdempotentRequest, Recording
from tests.api.conftest import Api, Captures, Tenant, detail

UPLOADS = "/api/v1/uploads"


def _post(api: Api, tenant: Tenant, path: Path, key: str | bytes | None, **fields: str) -> httpx.Response:
    headers: dict[str, Any] = dict(tenant.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    answer: httpx.Response = api.client.post(UPLOADS, headers=headers, files={"file": (path.name, path.read_bytes())},
                                             data=fields or None)  # fmt: skip
    return answer


def _calls_of(api: Api, tenant: Tenant) -> int:
    with api.service.ctx.sessions() as s:
        count = s.scalar(select(func.count()).select_from(Call).join(Domain).where(Domain.name == tenant.name))
    return int(count or 0)


def _key_id(api: Api, tenant: Tenant) -> str:
    secret = tenant.headers["Authorization"].removeprefix("Bearer ")
    with transaction(api.service.ctx.sessions) as s:
        key = queries.key_by_secret(s, secret)
        assert key is not None
        return key.id


def _rows(api: Api, tenant: Tenant) -> list[IdempotentRequest]:
    with api.service.ctx.sessions() as s:
        return list(s.scalars(select(IdempotentRequest).where(IdempotentRequest.scope == _key_id(api, tenant))))


def _put_row(api: Api, tenant: Tenant, key: str, *, status: int, age: timedelta, body: dict[str, Any]) -> None:
    now = api.service.ctx.clock.now()
    with transaction(api.service.ctx.sessions) as s:
        s.add(IdempotentRequest(scope=_key_id(api, tenant), key=key, status=status, body=body, created_at=now - age))


def _failing_after(api: Api, monkeypatch: pytest.MonkeyPatch, good: int, *, after_commit: bool = False) -> None:
    """``tape_closed`` works for the first ``good`` calls, then the database goes away: before the call is
    committed, or (``after_commit``) once it is."""
    real: Callable[[Path], str] = api.service.pipeline.tape_closed
    done: list[str] = []

    def tape_closed(folder: Path) -> str:
        if len(done) >= good:
            if after_commit:
                real(folder)
            raise OperationalError("INSERT INTO calls", {}, Exception("server closed the connection unexpectedly"))
        done.append(real(folder))
        return done[-1]

    monkeypatch.setattr(api.service.pipeline, "tape_closed", tape_closed)


def _leftover_tapes(api: Api) -> list[Path]:
    return list((api.service.ctx.config.data_dir / "tapes").glob("*/*/*/upload-*"))


def test_a_retry_gets_the_first_answer_and_registers_nothing(
    api: Api, tenant: Tenant, captures: Captures, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _post(api, tenant, captures.seven, "order-4711")
    assert first.status_code == 202, first.text
    assert len(first.json()["calls"]) == 7 and "Idempotent-Replayed" not in first.headers

    def no_second_call(folder: Path) -> str:
        raise AssertionError("a replay must not register anything")

    monkeypatch.setattr(api.service.pipeline, "tape_closed", no_second_call)
    again = _post(api, tenant, captures.seven, "order-4711")
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert _calls_of(api, tenant) == 7
    (row,) = _rows(api, tenant)
    assert row.key == "order-4711" and row.status == 202


def test_another_api_key_with_the_same_string_is_unrelated(
    api: Api, tenant: Tenant, other: Tenant, captures: Captures
) -> None:
    mine = _post(api, tenant, captures.one, "same-string")
    theirs = _post(api, other, captures.one, "same-string")
    assert mine.status_code == theirs.status_code == 202
    assert "Idempotent-Replayed" not in theirs.headers
    assert set(mine.json()["calls"]).isdisjoint(theirs.json()["calls"])
    assert _calls_of(api, tenant) == _calls_of(api, other) == 1


def test_the_key_must_be_1_to_200_printable_ascii_characters(api: Api, tenant: Tenant, captures: Captures) -> None:
    reason = "Idempotency-Key must be 1 to 200 printable ASCII characters"
    for bad in ("", "x" * 201, "caf\u00e9".encode("latin-1"), b"tab\there", b"nul\x00l"):
        answer = _post(api, tenant, captures.one, bad)
        assert answer.status_code == 400 and detail(answer) == reason, bad
    assert _calls_of(api, tenant) == 0
    longest = _post(api, tenant, captures.one, "k" * 200)
    assert longest.status_code == 202
    spaced = _post(api, tenant, captures.one, "a key ~ with {punctuation}!")
    assert spaced.status_code == 202


def test_the_same_key_with_another_body_is_422(api: Api, tenant: Tenant, captures: Captures) -> None:
    assert _post(api, tenant, captures.one, "k-1").status_code == 202
    other_file = _post(api, tenant, captures.pcapng, "k-1")
    assert other_file.status_code == 422
    assert detail(other_file) == "this Idempotency-Key was already used with a different request body"
    files = {"file": ("c.pcap", captures.one.read_bytes()), "call": ("call.json", b'{"call_id": "x"}')}
    other_fields = api.client.post(UPLOADS, headers={**tenant.headers, "Idempotency-Key": "k-1"}, files=files)
    assert other_fields.status_code == 422
    assert _calls_of(api, tenant) == 1


def test_a_request_still_in_progress_is_409(api: Api, tenant: Tenant, captures: Captures) -> None:
    alive = {"request": "x", "alive_at": api.service.ctx.clock.now().isoformat()}
    _put_row(api, tenant, "busy", status=0, age=timedelta(seconds=5), body=alive)
    answer = _post(api, tenant, captures.one, "busy")
    assert answer.status_code == 409 and answer.headers["Retry-After"] == "1"
    assert detail(answer) == "a request with this Idempotency-Key is still being carried out; retry shortly"
    assert _calls_of(api, tenant) == 0


def test_a_second_request_while_the_first_runs_is_409(
    api: Api, tenant: Tenant, captures: Captures, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency, "HEARTBEAT_S", 0.05)
    real: Callable[[Path], str] = api.service.pipeline.tape_closed
    entered, go_on = threading.Event(), threading.Event()

    def slow(folder: Path) -> str:
        entered.set()
        assert go_on.wait(30)
        return real(folder)

    monkeypatch.setattr(api.service.pipeline, "tape_closed", slow)
    answers: list[httpx.Response] = []
    first = threading.Thread(target=lambda: answers.append(_post(api, tenant, captures.one, "twice")))
    first.start()
    try:
        assert entered.wait(30)
        (row,) = _rows(api, tenant)
        beat = row.body["alive_at"]
        second = _post(api, tenant, captures.one, "twice")
        assert second.status_code == 409 and second.headers["Retry-After"] == "1"
        for _ in range(200):  # the first request says it is alive while it works
            if _rows(api, tenant)[0].body["alive_at"] != beat:
                break
            threading.Event().wait(0.05)
        else:
            pytest.fail("the claim of the request in progress was never renewed")
    finally:
        go_on.set()
        first.join(30)
    assert answers[0].status_code == 202
    third = _post(api, tenant, captures.one, "twice")
    assert third.json() == answers[0].json() and third.headers["Idempotent-Replayed"] == "true"
    assert _calls_of(api, tenant) == 1


def test_a_request_abandoned_in_progress_is_taken_over(api: Api, tenant: Tenant, captures: Captures) -> None:
    then = api.service.ctx.clock.now() - idempotency.STALE_AFTER - timedelta(seconds=1)
    _put_row(
        api, tenant, "crashed", status=0, age=timedelta(minutes=2), body={"request": "x", "alive_at": then.isoformat()}
    )
    answer = _post(api, tenant, captures.one, "crashed")
    assert answer.status_code == 202 and len(answer.json()["calls"]) == 1
    (row,) = _rows(api, tenant)
    assert row.status == 202 and row.body["answer"] == answer.json()


def test_a_client_error_frees_the_key(api: Api, tenant: Tenant, captures: Captures) -> None:
    refused = _post(api, tenant, captures.no_sip, "retry-me")
    assert refused.status_code == 422 and detail(refused) == "no SIP call found in the capture"
    assert _rows(api, tenant) == []
    fixed = _post(api, tenant, captures.one, "retry-me")  # another body is fine: the first left nothing
    assert fixed.status_code == 202
    assert "Idempotent-Replayed" not in fixed.headers


def test_a_failure_before_any_call_frees_the_key(
    api: Api, tenant: Tenant, captures: Captures, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        _failing_after(api, m, 0)
        down = _post(api, tenant, captures.seven, "db-down")
    assert down.status_code == 503 and down.headers["Retry-After"] == "5"
    assert detail(down) == "the database cannot be reached"
    assert _rows(api, tenant) == [] and _calls_of(api, tenant) == 0
    assert not _leftover_tapes(api)
    retried = _post(api, tenant, captures.seven, "db-down")
    assert retried.status_code == 202 and len(retried.json()["calls"]) == 7


@pytest.mark.slow
@pytest.mark.parametrize("after_commit", [False, True], ids=["before-commit", "after-commit"])
def test_an_upload_cut_short_is_finished_by_its_retry(
    api: Api, tenant: Tenant, captures: Captures, monkeypatch: pytest.MonkeyPatch, after_commit: bool
) -> None:
    with monkeypatch.context() as m:
        _failing_after(api, m, 2, after_commit=after_commit)
        cut = _post(api, tenant, captures.seven, "batch-1")
    assert cut.status_code == 503 and cut.headers["Retry-After"] == "5"
    body = cut.json()
    registered = 3 if after_commit else 2  # a call committed just before the failure is found and listed
    assert set(body) == {"detail", "calls", "error_id"} and len(body["calls"]) == registered
    assert body["detail"] == (
        f"the upload was cut short: {registered} of its 7 calls were registered (listed in calls) before the "
        "service failed; send it again with the same Idempotency-Key to register the rest (the calls listed "
        "are not registered twice)"
    )
    assert _calls_of(api, tenant) == registered
    assert _rows(api, tenant) == []  # the partial answer is not kept: it is no answer to replay
    retried = _post(api, tenant, captures.seven, "batch-1")
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried.headers
    calls = retried.json()["calls"]
    assert len(calls) == 7 and calls[:registered] == body["calls"]
    assert _calls_of(api, tenant) == 7
    replayed = _post(api, tenant, captures.seven, "batch-1")
    assert replayed.json() == retried.json() and replayed.headers["Idempotent-Replayed"] == "true"
    api.run_jobs()
    states = {api.card(tenant.headers, c)["recording"]["state"] for c in calls}
    assert states == {"completed"}


def test_an_upload_cut_short_without_a_key_lists_its_calls(
    api: Api, tenant: Tenant, captures: Captures, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        _failing_after(api, m, 1)
        cut = _post(api, tenant, captures.seven, None)
    assert cut.status_code == 503 and cut.headers["Retry-After"] == "5"
    assert len(cut.json()["calls"]) == 1 and _calls_of(api, tenant) == 1
    assert "sending it again registers the calls listed a second time" in cut.json()["detail"]
    assert not _leftover_tapes(api)  # the tape of the call that failed is not left for a sweep to register


def test_answers_are_kept_24_hours(api: Api, tenant: Tenant, captures: Captures) -> None:
    old = {"request": "another body", "answer": {"calls": ["gone"]}}
    _put_row(api, tenant, "yesterday", status=202, age=timedelta(hours=25), body=old)
    for k in range(3):
        _put_row(api, tenant, f"old-{k}", status=202, age=timedelta(hours=24, minutes=1), body=old)
    _put_row(api, tenant, "recent", status=202, age=timedelta(hours=23), body=old)
    answer = _post(api, tenant, captures.one, "yesterday")
    assert answer.status_code == 202 and answer.json()["calls"] != ["gone"]
    assert sorted(r.key for r in _rows(api, tenant)) == ["recent", "yesterday"]


def test_a_queue_that_is_down_does_not_fail_the_upload(
    api: Api, tenant: Tenant, captures: Captures, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    def down(*_args: Any, **_kwargs: Any) -> None:
        raise RedisConnectionError("Error 111 connecting to redis:6379. Connection refused.")

    with monkeypatch.context() as m:
        m.setattr(api.service.queue, "enqueue", down)
        m.setattr(api.service.queue, "submit", down)
        answer = _post(api, tenant, captures.seven, "queue-down")
    assert answer.status_code == 202, answer.text
    calls = answer.json()["calls"]
    assert len(calls) == 7
    with api.service.ctx.sessions() as s:
        states = set(s.scalars(select(Recording.state).join(Call).where(Call.id.in_(calls))))
    assert states == {QUEUED}  # left for the sweep, which queues it once the queue is back
