"""The attack of issue 12 H2/M1 through the API: a domain's key aims its webhooks or its S3 endpoint at
the metadata service, loopback or a private network, and is refused with a 422 that says why (on SQLite
and PostgreSQL). The API's fixture allow-lists loopback for the other tests: here it is taken back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.conftest import Api, Tenant, detail

SECRET = "whsec_" + "att" * 8
DOMAINS = "/api/v1/domains"
TARGETS = [
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "metadata"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
    ("http://127.0.0.1:8080/api/v1/domains", "loopback"),
    ("http://[::1]:8080/", "loopback"),
    ("http://localhost:6379/", "loopback"),
    ("http://2130706433:5432/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://evil.example@127.0.0.1/", "loopback"),
    ("http://10.0.0.5/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://100.64.0.1/", "CGNAT"),
    ("http://0.0.0.0:8080/", "unspecified"),
    ("http://[fc00::1]/", "unique-local"),
]


@pytest.fixture
def default_policy(api: Api) -> Iterator[None]:
    config = api.service.ctx.config
    saved = config.egress_allow
    config.egress_allow = ()
    yield
    config.egress_allow = saved


@pytest.mark.parametrize(("url", "why"), TARGETS)
def test_a_webhook_aimed_inside_is_refused_with_422_saying_why(
    api: Api, tenant: Tenant, default_policy: None, url: str, why: str
) -> None:
    update = {"webhook_secret": SECRET, "webhooks": [{"url": "https://93.184.216.34/ok"}, {"url": url}]}
    answer = api.client.put(f"{DOMAINS}/{tenant.name}/settings", headers=tenant.headers, json=update)
    assert answer.status_code == 422, answer.text
    text = detail(answer)
    assert text.startswith("webhooks[1].url is refused") and why in text, text
    got = api.client.get(f"{DOMAINS}/{tenant.name}/settings", headers=tenant.headers).json()
    assert got["webhooks"] == [], "nothing of a refused change is stored"


@pytest.mark.parametrize(("url", "why"), TARGETS[:8])
def test_an_s3_endpoint_aimed_inside_is_refused_with_422_saying_why(
    api: Api, tenant: Tenant, default_policy: None, url: str, why: str
) -> None:
    storage = {"kind": "s3", "endpoint_url": url, "bucket": "loot", "access_key_id": "a", "secret_access_key": "b"}
    answer = api.client.put(f"{DOMAINS}/{tenant.name}/settings", headers=tenant.headers, json={"storage": storage})
    assert answer.status_code == 422, answer.text
    assert detail(answer).startswith("storage.endpoint_url is refused") and why in detail(answer)


def test_a_domain_created_with_a_webhook_on_loopback_is_refused(api: Api, default_policy: None) -> None:
    settings = {"webhook_secret": SECRET, "webhooks": [{"url": "http://localhost:9/"}]}
    answer = api.client.post(DOMAINS, headers=api.admin, json={"name": "egress-made", "settings": settings})
    assert answer.status_code == 422 and "loopback" in detail(answer), answer.text


def test_an_allow_listed_internal_receiver_and_a_public_one_are_accepted(api: Api, tenant: Tenant) -> None:
    # the fixture's allow-list (127.0.0.0/8 and ::1) admits loopback; a name that does not resolve is
    # accepted now and checked when it is used
    hooks = [{"url": "http://127.0.0.1:9/hook"}, {"url": "https://hooks.invalid/x"}, {"url": "https://93.184.216.34/"}]
    answer = api.client.put(f"{DOMAINS}/{tenant.name}/settings", headers=tenant.headers,
                            json={"webhook_secret": SECRET, "webhooks": hooks})  # fmt: skip
    assert answer.status_code == 200, answer.text
    # metadata stays refused although loopback is allow-listed
    answer = api.client.put(f"{DOMAINS}/{tenant.name}/settings", headers=tenant.headers,
                            json={"webhooks": [*hooks, {"url": "http://169.254.169.254/"}]})  # fmt: skip
    assert answer.status_code == 422 and "metadata" in detail(answer)
