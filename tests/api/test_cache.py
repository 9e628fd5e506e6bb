"""Each API host's cache of converted audio and pictures: bounded (least recently used copies go), keyed by
the recording's version, and never serving, nor keeping, the copies of a recording deleted elsewhere.

Several hosts are several services on one database, each with its own data folder (so its own cache);
their ``storage`` folders are one folder, as S3 would be for them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from callrec.app import create_app
from callrec.db.engine import transaction
from callrec.db.schema import Recording, Stitch
from callrec.files.scan import calls_in_capture
from callrec.jobs.retention import delete_recording
from callrec.service import cache
from callrec.service.pipeline import Service
from tests.api.conftest import Api, Captures, Tenant, make_service
from tests.api.test_links import make_link

API = "/api/v1"


def cached(api: Api, obj_id: str, pattern: str = "*") -> list[Path]:
    """The cache files of a recording (or ``stitch-<id>``) on the host of ``api``."""
    return sorted((api.service.ctx.config.data_dir / "cache").glob(f"{obj_id}.{pattern}"))


def wav(api: Api, tenant: Tenant, rec_id: str) -> bytes:
    answer = api.client.get(f"{API}/recordings/{rec_id}/audio?format=wav", headers=tenant.headers)
    assert answer.status_code == 200, answer.text
    return answer.content


def picture(api: Api, tenant: Tenant, rec_id: str) -> dict[str, object]:
    answer = api.client.get(f"{API}/recordings/{rec_id}/picture", headers=tenant.headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def recordings(api: Api, tenant: Tenant, captures: Captures) -> list[str]:
    calls = api.upload(tenant.headers, captures.seven)
    ids = [api.card(tenant.headers, c)["recording"]["id"] for c in calls]
    assert len(ids) == 7
    return ids


@pytest.fixture
def other_host(api: Api, tmp_path: Path) -> Iterator[Api]:
    """A second API host: the same database, its own data folder and cache, the same storage."""
    data = tmp_path / "host-b"
    data.mkdir()
    (data / "storage").symlink_to(api.service.ctx.config.storage_dir.resolve(), target_is_directory=True)
    service = make_service(data, api.service.ctx.config.database_url)
    with TestClient(create_app(service)) as client:
        yield Api(client, service, api.admin)
    service.close()


@pytest.fixture
def worker_host(api: Api, tmp_path: Path) -> Iterator[Service]:
    """A worker host (where retention runs): no API, its own data folder, the same storage."""
    data = tmp_path / "worker"
    data.mkdir()
    (data / "storage").symlink_to(api.service.ctx.config.storage_dir.resolve(), target_is_directory=True)
    service = make_service(data, api.service.ctx.config.database_url)
    yield service
    service.close()


@pytest.mark.slow
def test_over_its_bound_the_least_recently_used_copies_go(
    api: Api, tenant: Tenant, captures: Captures, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, third, *_ = recordings(api, tenant, captures)
    folder = api.service.ctx.config.data_dir / "cache"
    for path in folder.glob("*"):  # what this module's other tests left
        if path.is_file() and not path.name.startswith("."):
            path.unlink()
    size = len(wav(api, tenant, first))
    monkeypatch.setattr(api.service.ctx.config, "cache_max_bytes", 2 * size + size // 2)
    wav(api, tenant, second)
    (one,), (two,) = cached(api, first), cached(api, second)
    now = time.time()
    os.utime(one, (now - 100, now - 100))  # made long ago ...
    os.utime(two, (now - 50, now - 50))
    again = one.stat().st_ino
    wav(api, tenant, first)  # ... but used again now: the second is now the least recently used
    assert one.stat().st_ino == again and one.stat().st_mtime > now - 10
    wav(api, tenant, third)  # over the bound
    assert cached(api, second) == []
    assert len(cached(api, first)) == 1 and len(cached(api, third)) == 1
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    assert total <= 2 * size + size // 2
    assert wav(api, tenant, second)  # made again on request
    assert [p.name for p in folder.iterdir() if p.name.startswith(cache.TMP_PREFIX)] == []


def test_a_recording_deleted_by_retention_elsewhere_is_not_served_and_its_copies_go_on_every_host(
    api: Api, other_host: Api, worker_host: Service, tenant: Tenant, captures: Captures
) -> None:
    (call_id,) = api.upload(tenant.headers, captures.one)
    rec_id = api.card(tenant.headers, call_id)["recording"]["id"]
    _, token = make_link(api, tenant, rec_id)
    for host in (api, other_host):  # each host converts and analyzes on its own disk
        assert wav(host, tenant, rec_id) and picture(host, tenant, rec_id)["duration_s"]
        assert sorted(p.name.split(".", 2)[2] for p in cached(host, rec_id)) == ["picture.json", "wav"]
    # retention runs on a worker host: the API hosts' caches are not its to clean
    assert delete_recording(worker_host.ctx, rec_id, "retention period over", actor="test")
    assert len(cached(api, rec_id)) == 2 and len(cached(other_host, rec_id)) == 2
    # a host that is asked for the recording does not serve its copies, and removes them
    assert api.client.get(f"{API}/recordings/{rec_id}/audio?format=wav", headers=tenant.headers).status_code == 410
    assert api.client.get(f"{API}/recordings/{rec_id}/picture", headers=tenant.headers).status_code == 410
    assert api.client.get(f"/r/{token}/picture").status_code == 410
    assert cached(api, rec_id) == []
    # a host that is not asked: its periodic cleanup asks the database and removes them
    done = cache.cleanup(other_host.service.ctx)
    assert done.removed >= 2 and cached(other_host, rec_id) == []
    assert other_host.client.get(f"/r/{token}/picture").status_code == 410
    # the recordings that are still there keep their copies
    assert cache.cleanup(api.service.ctx).removed == 0


@pytest.mark.slow
def test_a_recording_whose_file_changed_does_not_serve_the_old_copy(
    api: Api, other_host: Api, tenant: Tenant, captures: Captures
) -> None:
    target, *_ = recordings(api, tenant, captures)  # 1 s
    (call_id,) = api.upload(tenant.headers, captures.one)  # 2.5 s
    source = api.card(tenant.headers, call_id)["recording"]["id"]
    old_wav, old_picture = wav(other_host, tenant, target), picture(other_host, tenant, target)
    new_wav, new_picture = wav(api, tenant, source), picture(api, tenant, source)
    assert old_wav != new_wav and old_picture["channels"] != new_picture["channels"]
    (old_file,) = cached(other_host, target, "*.wav")
    # the row's file is replaced (a new md5 and key), as storing the recording anew does
    with transaction(api.service.ctx.sessions) as s:
        row, there = s.get(Recording, target), s.get(Recording, source)
        assert row is not None and there is not None
        row.md5, row.storage_key, row.bytes = there.md5, there.storage_key, there.bytes
    # the host that cached the old version cleans it up, then serves the new one
    assert cache.cleanup(other_host.service.ctx).removed == 2 and cached(other_host, target) == []
    assert wav(other_host, tenant, target) == new_wav
    assert picture(other_host, tenant, target)["channels"] == new_picture["channels"]
    # and without a cleanup in between: a new name, the old one is never read and goes when the new comes
    assert old_file.name not in {p.name for p in cached(other_host, target)}
    with transaction(api.service.ctx.sessions) as s:
        row = s.get(Recording, target)
        assert row is not None
        row.md5, row.storage_key = "0" * 32, "gone/nowhere.mp3"
    answer = other_host.client.get(f"{API}/recordings/{target}/audio?format=wav", headers=tenant.headers)
    assert answer.status_code == 503  # the old copy is not served: the new file is looked for, and is missing
    assert cache.cleanup(other_host.service.ctx).removed == 2 and cached(other_host, target) == []


def test_a_stitch_made_again_does_not_keep_its_old_picture(api: Api, tenant: Tenant, captures: Captures) -> None:
    for info in [c for k, c in enumerate(calls_in_capture(captures.seven)) if k in (1, 4)]:
        info.interaction_id = "ix-cache"
        api.upload(tenant.headers, captures.seven, call_json=json.dumps(info.to_json()).encode())
    url = f"{API}/interactions/ix-cache/picture"
    api.client.get(url, headers=tenant.headers)  # asks for the stitch
    api.run_jobs()
    assert api.client.get(url, headers=tenant.headers).status_code == 200
    with api.service.ctx.sessions() as s:
        stitch = s.scalar(select(Stitch).where(Stitch.interaction_id == "ix-cache"))
        assert stitch is not None
        stitch_id = stitch.id
    (old,) = cached(api, f"stitch-{stitch_id}")
    with transaction(api.service.ctx.sessions) as s:  # made again: the same audio, stored under a new key
        row = s.get(Stitch, stitch_id)
        assert row is not None
        storage = api.service.ctx.storage(row.storage)
        again = row.storage_key.replace(f"{stitch_id}-", f"{stitch_id}-again-")
        storage.put_bytes(again, b"".join(storage.read_range(row.storage_key)))
        row.storage_key = again
    assert cache.cleanup(api.service.ctx).removed == 1 and not old.exists()
    assert api.client.get(url, headers=tenant.headers).status_code == 200
    (new,) = cached(api, f"stitch-{stitch_id}")
    assert new.name != old.name


def test_cleanup_removes_files_of_the_old_layout_and_builds_left_by_a_dead_process(api: Api) -> None:
    folder = api.service.ctx.config.data_dir / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    legacy = [folder / f"{'a' * 32}.wav", folder / f"{'b' * 32}.picture.json", folder / "stitch-c-d.picture.json"]
    for path in legacy:
        path.write_bytes(b"old")
    stale, fresh = folder / f"{cache.TMP_PREFIX}stale", folder / f"{cache.TMP_PREFIX}fresh"
    for build in (stale, fresh):
        build.mkdir()
        (build / "out.wav").write_bytes(b"half")
    long_ago = time.time() - cache.STALE_TMP_S - 60
    os.utime(stale, (long_ago, long_ago))
    done = cache.cleanup(api.service.ctx)
    assert done.removed >= 3 and not any(p.exists() for p in legacy)
    assert done.stale_builds == 1 and not stale.exists() and fresh.is_dir()


def test_every_api_host_runs_the_cleanup_while_it_runs(api: Api, tenant: Tenant, captures: Captures) -> None:
    assert "callrec-cache-cleanup" in {t.name for t in threading.enumerate()}  # started with the app
    (call_id,) = api.upload(tenant.headers, captures.one)
    rec_id = api.card(tenant.headers, call_id)["recording"]["id"]
    wav(api, tenant, rec_id)
    with transaction(api.service.ctx.sessions) as s:
        row = s.get(Recording, rec_id)
        assert row is not None
        row.state = "deleted"
    cleaner = cache.Cleaner(api.service.ctx, interval_s=0.01)
    with cleaner:
        deadline = time.monotonic() + 30
        while cached(api, rec_id) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert cached(api, rec_id) == []
    assert cleaner._thread is None  # stopped with it
