"""Keys, domains and settings: who may do what, and what a domain's key can never reach."""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from callrec.db.schema import ApiKey, Domain
from callrec.service.domain_settings import SECRET_MASK
from tests.api.conftest import Api, Tenant, bearer, detail

DOMAINS = "/api/v1/domains"


# --- authentication ------------------------------------------------------------------------------------


def test_a_missing_key_is_401_with_a_bearer_challenge(api: Api) -> None:
    answer = api.client.get(DOMAINS)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert detail(answer) == "an API key is required: send Authorization: Bearer KEY"


def test_an_unknown_key_is_401(api: Api) -> None:
    answer = api.client.get(DOMAINS, headers=bearer("cr_not-a-key"))
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert detail(answer) == "the API key is not valid"


def test_keys_are_stored_only_as_their_hash(api: Api) -> None:
    made = api.client.post(f"{DOMAINS}/default/keys", headers=api.admin, json={"name": "hash check"})
    secret, key_id = made.json()["key"], made.json()["id"]
    with api.service.ctx.sessions() as s:
        row = s.get(ApiKey, key_id)
        assert row is not None and row.key_hash == hashlib.sha256(secret.encode()).hexdigest()
        every_value = [str(v) for r in s.scalars(select(ApiKey)) for v in vars(r).values()]
    assert not any(secret in value for value in every_value)


def test_every_error_is_one_json_sentence(api: Api, tenant: Tenant) -> None:
    bad_json = api.client.post(DOMAINS, headers={**api.admin, "Content-Type": "application/json"}, content=b"{")
    assert bad_json.status_code == 422
    assert detail(bad_json) == "the request body is not valid JSON: Expecting property name enclosed in double quotes"
    no_body = api.client.post(DOMAINS, headers=api.admin)
    assert no_body.status_code == 422 and detail(no_body) == "the request body is required"
    nowhere = api.client.get("/api/v1/nothing-here", headers=api.admin)
    assert nowhere.status_code == 404 and detail(nowhere) == "there is nothing at /api/v1/nothing-here"
    method = api.client.delete(DOMAINS, headers=api.admin)
    assert method.status_code == 405 and detail(method) == "DELETE is not allowed on /api/v1/domains"


# --- domains -------------------------------------------------------------------------------------------


def test_admin_creates_a_domain(api: Api) -> None:
    answer = api.client.post(DOMAINS, headers=api.admin, json={"name": "acme-1.example", "settings": {"format": "wav"}})
    assert answer.status_code == 201
    body = answer.json()
    assert body["name"] == "acme-1.example"
    assert body["settings"]["format"] == "wav" and body["settings"]["bitrate"] == 16
    assert body["created_at"].endswith("Z")


def test_a_domain_name_must_match_the_pattern(api: Api) -> None:
    answer = api.client.post(DOMAINS, headers=api.admin, json={"name": "Acme Corp"})
    assert answer.status_code == 422
    assert detail(answer) == "name: String should match pattern '^[a-z0-9][a-z0-9._-]{0,62}$'"


def test_bad_settings_of_a_new_domain_are_422_with_the_validators_sentence(api: Api) -> None:
    answer = api.client.post(DOMAINS, headers=api.admin, json={"name": "badset", "settings": {"bitrate": 20}})
    assert answer.status_code == 422
    assert detail(answer).startswith("bitrate: Input should be 8, 16, 24 or 32")


def test_an_existing_domain_is_409(api: Api, tenant: Tenant) -> None:
    answer = api.client.post(DOMAINS, headers=api.admin, json={"name": tenant.name})
    assert answer.status_code == 409
    assert detail(answer) == f"a domain named {tenant.name!r} exists already"


def test_a_domain_key_cannot_create_domains(api: Api, tenant: Tenant) -> None:
    answer = api.client.post(DOMAINS, headers=tenant.headers, json={"name": "mine"})
    assert answer.status_code == 403
    assert detail(answer) == "this needs an admin key"


def test_admin_lists_every_domain_a_domain_key_only_its_own(api: Api, tenant: Tenant, other: Tenant) -> None:
    names = [d["name"] for d in api.client.get(DOMAINS, headers=api.admin).json()["items"]]
    assert {"default", tenant.name, other.name} <= set(names)
    assert names == sorted(names)
    own = api.client.get(DOMAINS, headers=tenant.headers).json()["items"]
    assert [d["name"] for d in own] == [tenant.name]


def test_get_a_domain(api: Api, tenant: Tenant, other: Tenant) -> None:
    assert api.client.get(f"{DOMAINS}/{tenant.name}", headers=tenant.headers).json()["name"] == tenant.name
    assert api.client.get(f"{DOMAINS}/{tenant.name}", headers=api.admin).status_code == 200
    for headers in (other.headers, api.admin):
        missing = api.client.get(f"{DOMAINS}/no-such-domain", headers=headers)
        assert missing.status_code == 404 and detail(missing) == "no domain named 'no-such-domain'"
    foreign = api.client.get(f"{DOMAINS}/{tenant.name}", headers=other.headers)
    assert foreign.status_code == 404 and detail(foreign) == f"no domain named {tenant.name!r}"


# --- keys ----------------------------------------------------------------------------------------------


def test_a_new_key_is_shown_once_and_works(api: Api, tenant: Tenant) -> None:
    made = api.client.post(f"{DOMAINS}/{tenant.name}/keys", headers=api.admin, json={"name": "crm"})
    assert made.status_code == 201
    body = made.json()
    assert set(body) == {"id", "key", "domain", "scopes", "created_at"} and body["domain"] == tenant.name
    assert body["scopes"] == ["read", "settings", "upload"]  # by default every domain scope, as before scopes
    assert api.client.get(f"{DOMAINS}/{tenant.name}", headers=bearer(body["key"])).status_code == 200
    listed = api.client.get(f"{DOMAINS}/{tenant.name}/keys", headers=api.admin).json()["items"]
    assert {k["id"] for k in listed} >= {body["id"]}
    assert all("key" not in k for k in listed)
    assert body["key"] not in str(listed)


def test_creating_a_key_needs_no_body_but_checks_the_one_given(api: Api, tenant: Tenant) -> None:
    assert api.client.post(f"{DOMAINS}/{tenant.name}/keys", headers=api.admin).status_code == 201
    answer = api.client.post(f"{DOMAINS}/{tenant.name}/keys", headers=api.admin, json={"name": "x" * 201})
    assert answer.status_code == 422
    assert detail(answer) == "name: String should have at most 200 characters"
    missing = api.client.post(f"{DOMAINS}/nowhere/keys", headers=api.admin)
    assert missing.status_code == 404 and detail(missing) == "no domain named 'nowhere'"


def test_only_admin_keys_and_settings_keys_handle_keys(api: Api, tenant: Tenant) -> None:
    reader = api.client.post(f"{DOMAINS}/{tenant.name}/keys", headers=api.admin, json={"scopes": ["read"]}).json()
    for method, path in (("POST", "keys"), ("GET", "keys"), ("DELETE", "keys/0123456789abcdef")):
        answer = api.client.request(method, f"{DOMAINS}/{tenant.name}/{path}", headers=bearer(reader["key"]))
        assert answer.status_code == 403, (method, path)
        assert detail(answer) == "this key lacks the 'settings' scope this needs"
    # the domain's own key (every domain scope by default) manages its domain's keys, never an admin key
    assert api.client.get(f"{DOMAINS}/{tenant.name}/keys", headers=tenant.headers).status_code == 200
    admin = api.client.post(f"{DOMAINS}/{tenant.name}/keys", headers=tenant.headers, json={"scopes": ["admin"]})
    assert admin.status_code == 422
    assert api.client.get("/api/v1/admin/keys", headers=tenant.headers).status_code == 403


def test_a_revoked_key_is_401(api: Api, tenant: Tenant, other: Tenant) -> None:
    made = api.client.post(f"{DOMAINS}/{tenant.name}/keys", headers=api.admin).json()
    # the key belongs to tenant: revoking it under another domain's name finds nothing
    wrong = api.client.delete(f"{DOMAINS}/{other.name}/keys/{made['id']}", headers=api.admin)
    assert wrong.status_code == 404 and detail(wrong) == f"domain {other.name!r} has no key {made['id']!r}"
    assert api.client.delete(f"{DOMAINS}/{tenant.name}/keys/{made['id']}", headers=api.admin).status_code == 204
    answer = api.client.get(f"{DOMAINS}/{tenant.name}", headers=bearer(made["key"]))
    assert answer.status_code == 401 and detail(answer) == "the API key is not valid"
    listed = api.client.get(f"{DOMAINS}/{tenant.name}/keys", headers=api.admin).json()["items"]
    assert next(k for k in listed if k["id"] == made["id"])["revoked_at"] is not None
    again = api.client.delete(f"{DOMAINS}/{tenant.name}/keys/{made['id']}", headers=api.admin)
    assert again.status_code == 204


# --- settings ------------------------------------------------------------------------------------------


def test_settings_put_merges_top_level_keys(api: Api, tenant: Tenant) -> None:
    path = f"{DOMAINS}/{tenant.name}/settings"
    put = api.client.put(path, headers=tenant.headers, json={"format": "wav", "codec": "alaw"})
    assert put.status_code == 200
    assert put.json()["format"] == "wav" and put.json()["codec"] == "alaw" and put.json()["bitrate"] == 16
    again = api.client.put(path, headers=tenant.headers, json={"bitrate": 32})
    assert again.json()["format"] == "wav" and again.json()["bitrate"] == 32
    assert api.client.get(path, headers=tenant.headers).json() == again.json()
    assert api.client.get(path, headers=api.admin).json() == again.json()


def test_bad_settings_are_422_naming_the_field(api: Api, tenant: Tenant) -> None:
    path = f"{DOMAINS}/{tenant.name}/settings"
    answer = api.client.put(path, headers=tenant.headers, json={"retention": {"days": 0}})
    assert answer.status_code == 422
    assert detail(answer) == "retention.days must be a whole number of days ≥ 1 or null"
    unknown = api.client.put(path, headers=tenant.headers, json={"colour": "red"})
    assert unknown.status_code == 422 and detail(unknown) == "colour: Extra inputs are not permitted"
    s3 = api.client.put(path, headers=tenant.headers, json={"storage": {"kind": "s3"}})
    assert s3.status_code == 422 and detail(s3) == "storage.bucket is required for S3 storage"
    not_object = api.client.put(path, headers=tenant.headers, json=["format"])
    assert (
        not_object.status_code == 422 and detail(not_object) == "the request body: Input should be a valid dictionary"
    )


def test_a_storage_secret_is_stored_encrypted_and_shown_masked(api: Api, tenant: Tenant) -> None:
    path = f"{DOMAINS}/{tenant.name}/settings"
    storage = {"kind": "s3", "bucket": "calls", "access_key_id": "AK", "secret_access_key": "s3cr3t-value"}
    put = api.client.put(path, headers=tenant.headers, json={"storage": storage})
    assert put.status_code == 200
    assert put.json()["storage"]["secret_access_key"] == SECRET_MASK
    with api.service.ctx.sessions() as s:
        stored = s.scalar(select(Domain).where(Domain.name == tenant.name))
        assert stored is not None
        secret = stored.settings["storage"]["secret_access_key"]
    assert secret.startswith("enc:v1:") and "s3cr3t-value" not in str(stored.settings)
    assert api.service.ctx.box.decrypt(secret) == "s3cr3t-value"
    # sending the mask back keeps the stored secret
    api.client.put(path, headers=tenant.headers, json={"storage": {**storage, "secret_access_key": SECRET_MASK}})
    with api.service.ctx.sessions() as s:
        kept = s.scalar(select(Domain).where(Domain.name == tenant.name))
        assert kept is not None and api.service.ctx.box.decrypt(kept.settings["storage"]["secret_access_key"]) == (
            "s3cr3t-value"
        )


def test_another_domains_settings_are_404(api: Api, tenant: Tenant, other: Tenant) -> None:
    path = f"{DOMAINS}/{tenant.name}/settings"
    for answer in (
        api.client.get(path, headers=other.headers),
        api.client.put(path, headers=other.headers, json={"format": "wav"}),
    ):
        assert answer.status_code == 404 and detail(answer) == f"no domain named {tenant.name!r}"
    assert api.client.get(path, headers=tenant.headers).json()["format"] == "mp3"
