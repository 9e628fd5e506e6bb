"""/metrics is the operator's: totals over every domain, and nothing a tenant could learn another by."""

from __future__ import annotations

from tests.api.conftest import Api, Mixed


def test_metrics_name_no_domain_number_or_id(api: Api, mixed: Mixed) -> None:
    # a tenant scraping /metrics (it needs no key) looking for another tenant's traces
    answer = api.client.get("/metrics")
    assert answer.status_code == 200
    card = api.card(mixed.tenant.headers, mixed.call_id)
    secrets_of_acme = [mixed.tenant.name, mixed.call_id, mixed.recording_id, card["call_id"]]
    secrets_of_acme += [p["number"] for p in card["parties"] if p["number"]]
    for secret in secrets_of_acme:
        assert secret not in answer.text, secret
    assert "domain" not in answer.text.lower()
