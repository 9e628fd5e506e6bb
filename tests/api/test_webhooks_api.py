"""Webhook settings (the signing secret stored encrypted, shown masked, required with webhooks) and the
delivery endpoints' answers to bad input, their keyset pagination and filters."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import Domain, WebhookDelivery
from callrec.service.domain_settings import SECRET_MASK
from tests.api.conftest import Api, Tenant, detail

DOMAINS = "/api/v1/domains"
DELIVERIES = "/api/v1/webhooks/deliveries"
SECRET = "a-webhook-secret-of-some-length"
HOOK = {"url": "http://127.0.0.1:9/hook", "events": ["recording.completed"]}


def _stored(api: Api, name: str) -> dict[str, object]:
    with api.service.ctx.sessions() as s:
        row = s.scalar(select(Domain).where(Domain.name == name))
        assert row is not None
        return dict(row.settings)


def test_the_webhook_secret_is_stored_encrypted_and_shown_masked(api: Api, tenant: Tenant) -> None:
    path = f"{DOMAINS}/{tenant.name}/settings"
    put = api.client.put(path, headers=tenant.headers, json={"webhook_secret": SECRET, "webhooks": [HOOK]})
    assert put.status_code == 200, put.text
    assert put.json()["webhook_secret"] == SECRET_MASK and put.json()["webhooks"] == [HOOK | {"with_link": False}]
    assert api.client.get(path, headers=tenant.headers).json()["webhook_secret"] == SECRET_MASK
    got = api.client.get(f"{DOMAINS}/{tenant.name}", headers=tenant.headers).json()
    assert got["settings"]["webhook_secret"] == SECRET_MASK
    stored = _stored(api, tenant.name)
    secret = str(stored["webhook_secret"])
    assert secret.startswith("enc:v1:") and SECRET not in json.dumps(stored)
    assert api.service.ctx.box.decrypt(secret) == SECRET
    # the mask sent back, or other settings changed, keep it
    api.client.put(path, headers=tenant.headers, json={"webhook_secret": SECRET_MASK, "format": "wav"})
    api.client.put(path, headers=tenant.headers, json={"webhooks": [HOOK, {"url": "https://example.com/h"}]})
    assert api.service.ctx.box.decrypt(str(_stored(api, tenant.name)["webhook_secret"])) == SECRET
    # a new one replaces it
    api.client.put(path, headers=tenant.headers, json={"webhook_secret": SECRET + "-2"})
    assert api.service.ctx.box.decrypt(str(_stored(api, tenant.name)["webhook_secret"])) == SECRET + "-2"


def test_a_domain_made_with_webhooks_needs_the_secret_too(api: Api) -> None:
    made = api.client.post(DOMAINS, headers=api.admin, json={"name": "hooked-1", "settings": {"webhooks": [HOOK]}})
    assert made.status_code == 422
    assert detail(made) == "webhooks need webhook_secret: set it (16 to 200 characters) in the same request"
    settings = {"webhooks": [HOOK], "webhook_secret": SECRET}
    made = api.client.post(DOMAINS, headers=api.admin, json={"name": "hooked-2", "settings": settings})
    assert made.status_code == 201 and made.json()["settings"]["webhook_secret"] == SECRET_MASK


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"webhooks": [HOOK]}, "webhooks need webhook_secret: set it (16 to 200 characters) in the same request"),
        ({"webhook_secret": "short", "webhooks": [HOOK]},
         "webhook_secret must be 16 to 200 printable ASCII characters without spaces"),
        ({"webhook_secret": "with spaces in it, sixteen+"},
         "webhook_secret must be 16 to 200 printable ASCII characters without spaces"),
        ({"webhook_secret": "x" * 201}, "webhook_secret must be 16 to 200 printable ASCII characters without spaces"),
        ({"webhook_secret": "enc:v1:not-ours"}, "webhook_secret is encrypted with a key this service does not have"),
        ({"webhook_secret": SECRET, "webhooks": [{"url": "ftp://x"}]}, "webhooks.0.url: String should match pattern '^https?://'"),
        ({"webhook_secret": SECRET, "webhooks": [{"url": "http://x", "events": ["call.started"]}]},
         "webhooks.0.events.0: Input should be 'recording.completed', 'recording.failed' or 'recording.deleted'"),
        ({"webhook_secret": 12345678901234567}, "webhook_secret: Input should be a valid string"),
    ],
)  # fmt: skip
def test_bad_webhook_settings_are_422_with_one_sentence(
    api: Api, tenant: Tenant, update: dict[str, object], message: str
) -> None:
    answer = api.client.put(f"{DOMAINS}/{tenant.name}/settings", headers=tenant.headers, json=update)
    assert answer.status_code == 422 and detail(answer) == message
    assert _stored(api, tenant.name).get("webhook_secret", "") == ""


def test_removing_the_secret_while_webhooks_remain_is_refused(api: Api, tenant: Tenant) -> None:
    path = f"{DOMAINS}/{tenant.name}/settings"
    assert api.client.put(path, headers=tenant.headers, json={"webhook_secret": SECRET, "webhooks": [HOOK]}).is_success
    gone = api.client.put(path, headers=tenant.headers, json={"webhook_secret": ""})
    assert gone.status_code == 422 and detail(gone).startswith("webhooks need webhook_secret")
    both = api.client.put(path, headers=tenant.headers, json={"webhook_secret": "", "webhooks": []})
    assert both.status_code == 200 and both.json()["webhook_secret"] == ""


def _deliveries(api: Api, tenant: Tenant, count: int, **values: object) -> list[str]:
    """Delivery rows of the tenant's domain, all made at the same moment (ties broken by id)."""
    now = api.service.ctx.clock.now().replace(microsecond=0)
    made = []
    with transaction(api.service.ctx.sessions) as s:
        domain = queries.domain_by_name(s, tenant.name)
        assert domain is not None
        for k in range(count):
            row = WebhookDelivery(
                id=queries.new_id(), domain_id=domain.id, event=str(values.get("event", "recording.completed")),
                recording_id=str(values.get("recording_id", "ab" * 16)), url="http://127.0.0.1:9/hook",
                body=json.dumps({"k": k}), state=str(values.get("state", "delivered")), attempts=1,
                last_error="", log=[], created_at=now - timedelta(seconds=k // 2), updated_at=now,
            )  # fmt: skip
            s.add(row)
            made.append(row.id)
    return made


def test_deliveries_page_newest_first_with_a_keyset_cursor_and_filters(api: Api, tenant: Tenant, other: Tenant) -> None:
    ids = _deliveries(api, tenant, 5)
    failed = _deliveries(api, tenant, 1, state="failed", event="recording.failed", recording_id="cd" * 16)
    _deliveries(api, other, 2)
    with api.service.ctx.sessions() as s:
        rows = s.scalars(select(WebhookDelivery).where(WebhookDelivery.id.in_(ids + failed))).all()
        expected = [r.id for r in sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = api.client.get(DELIVERIES, headers=tenant.headers, params=params).json()
        seen += [d["id"] for d in page["items"]]
        assert all(d["domain"] == tenant.name for d in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected and len(set(seen)) == 6
    for key, value in (("state", "failed"), ("event", "recording.failed"), ("recording_id", "cd" * 16)):
        found = api.client.get(DELIVERIES, headers=tenant.headers, params={key: value}).json()["items"]
        assert [d["id"] for d in found] == failed, key
    admin = api.client.get(DELIVERIES, headers=api.admin, params={"limit": 500}).json()["items"]
    assert set(ids + failed) <= {d["id"] for d in admin}


def test_bad_delivery_requests_are_4xx_with_one_sentence(api: Api, tenant: Tenant, other: Tenant) -> None:
    (mine,) = _deliveries(api, tenant, 1)
    cases = {
        f"{DELIVERIES}?state=lost": (422, "state: Input should be 'pending', 'delivering', 'delivered' or 'failed'"),
        f"{DELIVERIES}?event=call.started":
            (422, "event: Input should be 'recording.completed', 'recording.failed' or 'recording.deleted'"),
        f"{DELIVERIES}?recording_id=XYZ": (422, "recording_id: String should match pattern '^[0-9a-f]{1,32}$'"),
        f"{DELIVERIES}?limit=0": (422, "limit: Input should be greater than or equal to 1"),
        f"{DELIVERIES}?cursor=nonsense": (400, "the cursor is not valid"),
        f"{DELIVERIES}?cursor=eyJ0IjoiMjAyNC0wMS0wMSIsImlkIjoiYWIifQ": (400, "the cursor is not valid"),
        f"{DELIVERIES}/{'0' * 32}": (404, f"no webhook delivery {'0' * 32!r}"),
        f"{DELIVERIES}/not-an-id": (404, "no webhook delivery 'not-an-id'"),
    }  # fmt: skip
    for url, (status, message) in cases.items():
        answer = api.client.get(url, headers=tenant.headers)
        assert (answer.status_code, detail(answer)) == (status, message), url
    for path in (f"{DELIVERIES}/{mine}", f"{DELIVERIES}/{mine}/redeliver"):
        answer = (api.client.post if path.endswith("redeliver") else api.client.get)(path, headers=other.headers)
        assert answer.status_code == 404 and detail(answer) == f"no webhook delivery {mine!r}"
    assert api.client.get(DELIVERIES).status_code == 401
    assert api.client.post(f"{DELIVERIES}/{mine}/redeliver").status_code == 401
    unknown = api.client.post(f"{DELIVERIES}/{'f' * 32}/redeliver", headers=tenant.headers)
    assert unknown.status_code == 404 and detail(unknown) == f"no webhook delivery {'f' * 32!r}"


def test_a_delivery_being_sent_cannot_be_redelivered_at_the_same_time(api: Api, tenant: Tenant) -> None:
    (busy,) = _deliveries(api, tenant, 1, state="delivering")
    with transaction(api.service.ctx.sessions) as s:
        row = s.get(WebhookDelivery, busy)
        assert row is not None
        row.lease_until = api.service.ctx.clock.now() + timedelta(minutes=1)
    answer = api.client.post(f"{DELIVERIES}/{busy}/redeliver", headers=tenant.headers)
    assert answer.status_code == 409
    assert detail(answer) == "the delivery is being sent right now; ask again once it is done"
    one = api.client.get(f"{DELIVERIES}/{busy}", headers=tenant.headers).json()
    assert one["body"] == {"k": 0} and one["log"] == [] and one["state"] == "delivering"
