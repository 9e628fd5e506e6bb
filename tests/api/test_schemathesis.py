"""Every operation of ``/openapi.json``, fuzzed by schemathesis with an admin key: never a 5xx.

Valid and invalid inputs both, 25 examples of each an operation, derandomized so a run repeats. The
database holds a real mixed call, and operations on one call, recording or domain are fuzzed a third
time with that call's ids in the path, so the fuzzing reaches past the 404 into the real work (call
cards, retention, tags, re-mix, audio with random Range headers and conversions, settings). The
sharing routes get real values too: a stitched interaction, a live public link (its id and token) and
a webhook delivery.

Schemathesis' pytest loader (``schemathesis.pytest.from_fixture``) fails on pytest 9 (it sets the
removed ``Node._nodeid``), so each operation's Hypothesis strategy is driven here directly.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, openapi
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err, Ok
from sqlalchemy import select, update

from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import Call, WebhookDelivery
from tests.api.conftest import Api, Captures, Mixed

pytestmark = pytest.mark.slow  # schemathesis fuzzes every operation (a minute and more)

EXAMPLES_PER_MODE = 25
INTERACTION = "conv-fuzz-1"


def _fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str], path: dict[str, str] | None = None) -> None:
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path))
    @settings(max_examples=EXAMPLES_PER_MODE, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case: Any) -> None:
        response = case.call(headers=headers)
        case.validate_response(response, checks=[not_a_server_error])

    run()


@pytest.fixture(scope="module")
def kept(api: Api, captures: Captures) -> Mixed:
    """A mixed call whose tape is kept, so re-mixing it works."""
    owner = api.tenant(settings={"keep_tape_days": None})
    (call_id,) = api.upload(owner.headers, captures.one)
    return Mixed(owner, call_id, api.card(owner.headers, call_id)["recording"]["id"])


def _shared(api: Api, kept: Mixed) -> dict[str, str]:
    """Real values for the sharing routes' path parameters: the kept call's interaction (stitched), a
    public link of its recording, and a webhook delivery of its domain."""
    ctx = api.service.ctx
    with transaction(ctx.sessions) as s:
        s.execute(update(Call).where(Call.id == kept.call_id).values(interaction_id=INTERACTION))
        domain_id = s.scalars(select(Call.domain_id).where(Call.id == kept.call_id)).one()
        now = ctx.clock.now()
        delivery = WebhookDelivery(
            id=queries.new_id(), domain_id=domain_id, event="recording.completed", recording_id=kept.recording_id,
            url="http://127.0.0.1:9/hook", body="{}", state="failed", created_at=now, updated_at=now,
        )  # fmt: skip
        s.add(delivery)
    made = api.client.post(f"/api/v1/interactions/{INTERACTION}/stitched", headers=kept.tenant.headers)
    assert made.status_code == 202, made.text
    api.run_jobs()
    link = api.client.post(f"/api/v1/recordings/{kept.recording_id}/links", headers=kept.tenant.headers, json={})
    assert link.status_code == 201, link.text
    return {
        "interaction_id": INTERACTION,
        "link_id": link.json()["id"],
        "token": link.json()["url"].rsplit("/", 1)[1],
        "delivery_id": delivery.id,
    }


def test_no_operation_answers_a_server_error(api: Api, kept: Mixed) -> None:
    schema = openapi.from_asgi("/openapi.json", api.client.app)
    results = list(schema.get_all_operations())
    assert not [r.err() for r in results if isinstance(r, Err)]  # the schema itself is valid
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) >= 20
    real = {"call_id": kept.call_id, "recording_id": kept.recording_id, "name": kept.tenant.name,
            **_shared(api, kept)}  # fmt: skip
    failures: list[str] = []
    for operation in operations:
        names = re.findall(r"{(\w+)}", operation.path)
        runs: list[tuple[GenerationMode, dict[str, str] | None]] = [
            (GenerationMode.POSITIVE, None),
            (GenerationMode.NEGATIVE, None),
        ]
        if names and all(name in real for name in names):
            runs.append((GenerationMode.POSITIVE, {name: real[name] for name in names}))
        for mode, path in runs:
            try:
                _fuzz(operation, mode, api.admin, path)
            except Unsatisfiable:
                pass  # nothing of this operation can be made invalid (no parameters, no body)
            except Exception as exc:  # noqa: BLE001 - collected, so one run reports every operation
                failures.append(f"{operation.label} ({mode.value}, path {path}): {exc}")
    assert not failures, "\n\n".join(failures)
