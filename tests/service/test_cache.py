"""The cache folder itself (no database): names, the bound, whole files only, several processes at once."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from callrec.config import ConfigError, service_config_from_env
from callrec.service import cache
from callrec.service.cache import Cache, Key

ID = "0123456789abcdef0123456789abcdef"


def key(n: int, what: str = "wav", tag: str = "") -> Key:
    return Key("recording", f"{n:032x}", tag or cache.version_tag("md5", "key"), what)


def content(k: Key, size: int) -> bytes:
    """What the entry ``k`` holds: derived from its name, so a reader can tell a whole file from a part."""
    seed = hashlib.sha256(k.name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def writer(k: Key, size: int) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        part = folder / "out"
        part.write_bytes(content(k, size))
        return part

    return build


def test_names_carry_the_row_and_its_version() -> None:
    k = Key("recording", ID, cache.version_tag("abc", "2024/01/x.mp3"), "wav")
    assert k.name == f"{ID}.{k.tag}.wav" and Key.parse(k.name) == k
    s = Key("stitch", ID, k.tag, "picture.json")
    assert s.name == f"stitch-{ID}.{k.tag}.picture.json" and Key.parse(s.name) == s
    assert cache.version_tag("abc", "k") != cache.version_tag("abd", "k") != cache.version_tag("abd", "l")
    for old in (f"{ID}.wav", f"{ID}.picture.json", f"stitch-{ID}-{'f' * 32}.picture.json", ".evict.lock"):
        assert Key.parse(old) is None, old


def test_the_setting() -> None:
    assert service_config_from_env({}).cache_max_bytes == 1024 * 1024 * 1024
    assert service_config_from_env({"CALLREC_CACHE_MAX_MB": "5"}).cache_max_bytes == 5 * 1024 * 1024
    with pytest.raises(ConfigError, match="CALLREC_CACHE_MAX_MB must be a whole number"):
        service_config_from_env({"CALLREC_CACHE_MAX_MB": "lots"})
    with pytest.raises(ConfigError, match="CALLREC_CACHE_MAX_MB must not be negative"):
        service_config_from_env({"CALLREC_CACHE_MAX_MB": "-1"})


def test_least_recently_used_entries_go_first_and_the_new_one_stays(tmp_path: Path) -> None:
    store = Cache(tmp_path / "cache", max_bytes=3000)
    paths = [store.make(key(n), writer(key(n), 1000)) for n in range(3)]
    now = time.time()
    for age, path in zip((300, 200, 100), paths, strict=True):
        os.utime(path, (now - age, now - age))
    assert store.get(key(0)) == paths[0]  # used: now the most recent
    store.make(key(3), writer(key(3), 1000))
    assert [store.get(key(n)) is not None for n in range(4)] == [True, False, True, True]
    # an entry larger than the bound is still kept (it is being served); the others make room
    big = store.make(key(4), writer(key(4), 5000))
    assert big.read_bytes() == content(key(4), 5000)
    assert [p.name for p in store.folder.iterdir() if not p.name.startswith(".")] == [big.name]
    assert store.make(key(4), writer(key(9), 1)) == big  # a hit does not build


def test_a_new_version_replaces_the_old_and_forget_removes_all(tmp_path: Path) -> None:
    store = Cache(tmp_path / "cache", max_bytes=10**6)
    old, old_picture = key(1, tag="1" * 16), key(1, "picture.json", tag="1" * 16)
    store.make(old, writer(old, 10))
    store.make(old_picture, writer(old_picture, 10))
    new = key(1, tag="2" * 16)
    store.make(new, writer(new, 10))
    assert store.get(old) is None and store.get(old_picture) is None and store.get(new) is not None
    (tmp_path / "cache" / f"{1:032x}.mp3").write_bytes(b"the old layout")
    assert store.forget("recording", f"{1:032x}") == 2
    assert [p.name for p in store.folder.iterdir() if not p.name.startswith(".")] == []
    assert store.forget("recording", "../x") == 0  # not an id: nothing is looked for


def test_a_file_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    store = Cache(tmp_path / "cache", max_bytes=10**6)
    k = key(1)

    def build(folder: Path) -> Path:
        part = folder / "out"
        with part.open("wb") as f:
            f.write(content(k, 500)[:100])
            f.flush()
            assert store.get(k) is None  # half written: nobody sees it
            f.write(content(k, 500)[100:])
        return part

    path = store.make(k, build)
    assert path.read_bytes() == content(k, 500)
    assert [p.name for p in store.folder.iterdir() if p.name.startswith(cache.TMP_PREFIX)] == []


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    store = Cache(tmp_path / "cache", max_bytes=10**6)

    def build(folder: Path) -> Path:
        (folder / "out").write_bytes(b"part")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.make(key(1), build)
    assert [p.name for p in store.folder.iterdir() if p.name != cache.LOCK_NAME] == []


SIZE = 20_000
BOUND = 5 * SIZE


def _churn(folder: str, worker: int, rounds: int) -> int:
    """Build and read entries shared with the other processes; how many torn reads were seen (0)."""
    store = Cache(Path(folder), max_bytes=BOUND)
    torn = 0
    for r in range(rounds):
        k = key((worker * 7 + r) % 12)
        path = store.make(k, writer(k, SIZE))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue  # evicted by another process meanwhile: allowed
        torn += data != content(k, SIZE)
    return torn


@pytest.mark.slow
def test_several_processes_share_one_cache(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        torn = pool.starmap(_churn, [(str(folder), w, 40) for w in range(4)])
    assert torn == [0, 0, 0, 0]
    files = [p for p in folder.iterdir() if not p.name.startswith(".")]
    assert sum(p.stat().st_size for p in files) <= BOUND  # the last eviction saw every file
    assert all(p.read_bytes() == content(Key.parse(p.name) or key(0), SIZE) for p in files)
    assert [p.name for p in folder.iterdir() if p.name.startswith(cache.TMP_PREFIX)] == []
