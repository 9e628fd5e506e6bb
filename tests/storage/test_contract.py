"""The contract every storage backend passes: memory, local folder, S3 on a real server (with and without prefix).

Chosen behaviours, the same for every backend:
- a range starting at or past the end of an object yields nothing (no error); an end past it is clamped;
- a negative start or an end before the start is a ``StorageError``;
- a missing key makes ``read_range`` raise when called, before any iteration.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from callrec.errors import StorageError
from callrec.storage import LocalStorage, MemoryStorage, ObjectInfo, S3Storage, Storage
from tests.support.s3server import MotoServer, s3_config, unique_bucket

MIB = 1024 * 1024
# moto, like S3, refuses parts below 5 MiB (except the last)
PART = 5 * MIB
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
# S3 on a moto server is slow (`make test-fast` runs memory and local)
BACKENDS = ["memory", "local", *(pytest.param(kind, marks=pytest.mark.slow) for kind in ("s3", "s3-prefix"))]
BAD_KEYS = [
    "",
    "/abs/key",
    "..",
    "a/../b",
    "a/./b",
    ".hidden",
    "a/.hidden",
    "a\\b",
    "a\x00b",
    "a\nb",
    "a//b",
    "a/",
    "x" * 256,
    "a/" * 512 + "b",
]


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    kind = request.param
    if kind == "memory":
        return MemoryStorage()
    if kind == "local":
        return LocalStorage(tmp_path / "store")
    server: MotoServer = request.getfixturevalue("s3_server")
    bucket = server.make_bucket(unique_bucket("contract"))
    prefix = "tenant/rec/" if kind == "s3-prefix" else ""
    return S3Storage(s3_config(server.endpoint, bucket, prefix=prefix), multipart_threshold=PART, part_size=PART)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def read_all(storage: Storage, key: str, start: int = 0, end: int | None = None, chunk: int = 65536) -> bytes:
    return b"".join(storage.read_range(key, start, end, chunk))


def test_put_bytes_then_stat_gives_size_and_md5(storage: Storage) -> None:
    data = b"RIFF" + os.urandom(1000)
    info = storage.put_bytes("recordings/a/1.wav", data)
    assert info == ObjectInfo("recordings/a/1.wav", len(data), md5(data))
    assert storage.stat("recordings/a/1.wav") == info


def test_put_file_stores_the_bytes_and_leaves_the_file_alone(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "in.mp3"
    data = os.urandom(300_000)
    source.write_bytes(data)
    before = source.stat()
    info = storage.put_file("recordings/b/2.mp3", source)
    assert info == ObjectInfo("recordings/b/2.mp3", len(data), md5(data))
    assert source.read_bytes() == data
    assert (source.stat().st_mtime_ns, source.stat().st_ino) == (before.st_mtime_ns, before.st_ino)
    assert read_all(storage, "recordings/b/2.mp3") == data


def test_empty_object(storage: Storage, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert storage.put_file("e/file", empty) == ObjectInfo("e/file", 0, EMPTY_MD5)
    assert storage.put_bytes("e/bytes", b"") == ObjectInfo("e/bytes", 0, EMPTY_MD5)
    assert storage.stat("e/bytes") == ObjectInfo("e/bytes", 0, EMPTY_MD5)
    assert read_all(storage, "e/bytes") == b""
    assert read_all(storage, "e/bytes", 0, 10) == b""


def test_put_file_of_a_missing_file_is_a_storage_error(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot be read"):
        storage.put_file("x/y", tmp_path / "nope")
    assert storage.stat("x/y") is None


def test_stat_of_a_missing_key_is_none(storage: Storage) -> None:
    assert storage.stat("no/such/key") is None


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, slice(0, None)),
        (100, 200, slice(100, 200)),
        (4000, None, slice(4000, None)),
        (0, 1, slice(0, 1)),
        (4095, None, slice(4095, None)),
        (100, 100, slice(0, 0)),
        (4096, None, slice(0, 0)),
        (5000, 6000, slice(0, 0)),
        (4000, 9999, slice(4000, None)),
    ],
    ids=["whole", "middle", "to-end", "first-byte", "last-byte", "empty", "at-end", "past-end", "end-clamped"],
)
def test_read_range(storage: Storage, start: int, end: int | None, expected: slice) -> None:
    data = os.urandom(4096)
    storage.put_bytes("r/obj", data)
    assert read_all(storage, "r/obj", start, end) == data[expected]


def test_read_range_yields_chunks_no_bigger_than_asked(storage: Storage) -> None:
    data = os.urandom(10_000)
    storage.put_bytes("r/chunks", data)
    chunks = list(storage.read_range("r/chunks", 10, 9_010, chunk=1000))
    assert b"".join(chunks) == data[10:9_010]
    assert all(0 < len(c) <= 1000 for c in chunks)
    assert len(chunks) >= 9


@pytest.mark.parametrize("bounds", [(0, None), (5, 5), (3, 10)])
def test_read_range_of_a_missing_key_raises_at_the_call(storage: Storage, bounds: tuple[int, int | None]) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        storage.read_range("no/such", *bounds)


@pytest.mark.parametrize(("start", "end", "chunk"), [(-1, None, 10), (10, 5, 10), (0, None, 0)])
def test_impossible_ranges_are_refused(storage: Storage, start: int, end: int | None, chunk: int) -> None:
    storage.put_bytes("r/x", b"0123456789")
    with pytest.raises(StorageError, match="impossible range"):
        storage.read_range("r/x", start, end, chunk)


def test_download_writes_dest_whole_through_a_temp_file(storage: Storage, tmp_path: Path) -> None:
    data = os.urandom(2 * MIB + 3)
    storage.put_bytes("d/obj.bin", data)
    dest = tmp_path / "out" / "deeper" / "obj.bin"
    storage.download("d/obj.bin", dest)
    assert dest.read_bytes() == data
    assert os.listdir(dest.parent) == ["obj.bin"]


def test_download_of_a_missing_key_leaves_dest_untouched(storage: Storage, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "keep.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    with pytest.raises(StorageError):
        storage.download("d/missing", dest)
    assert dest.read_bytes() == b"old"
    assert os.listdir(dest.parent) == ["keep.bin"]


def test_delete_is_idempotent(storage: Storage) -> None:
    storage.put_bytes("del/a", b"1")
    storage.put_bytes("del/b", b"2")
    storage.delete("del/a")
    storage.delete("del/a")
    storage.delete("never/was")
    assert storage.stat("del/a") is None
    assert list(storage.list()) == ["del/b"]


def test_list_is_sorted_and_prefix_scoped(storage: Storage) -> None:
    keys = ["b/1", "a/b", "a-c", "a/a/x", "ab", "a/z/y/z"]
    for key in keys:
        storage.put_bytes(key, key.encode())
    assert list(storage.list()) == sorted(keys)
    # "a-c" sorts before "a/..." ('-' < '/'), which a folder walk would not give
    assert list(storage.list())[:2] == ["a-c", "a/a/x"]
    assert list(storage.list("a/")) == ["a/a/x", "a/b", "a/z/y/z"]
    assert list(storage.list("a")) == ["a-c", "a/a/x", "a/b", "a/z/y/z", "ab"]
    assert list(storage.list("a/z/")) == ["a/z/y/z"]
    assert list(storage.list("zzz/")) == []
    assert list(storage.list("a/b")) == ["a/b"]


@pytest.mark.parametrize("prefix", ["/a", "../", "a/../", "a\\", "a\x00"])
def test_list_refuses_prefixes_that_could_escape(storage: Storage, prefix: str) -> None:
    with pytest.raises(StorageError, match="not allowed"):
        list(storage.list(prefix))


def test_overwrite_keeps_one_object_with_the_new_bytes(storage: Storage, tmp_path: Path) -> None:
    storage.put_bytes("o/k", b"first version")
    source = tmp_path / "second"
    source.write_bytes(b"second")
    assert storage.put_file("o/k", source) == ObjectInfo("o/k", 6, md5(b"second"))
    assert read_all(storage, "o/k") == b"second"
    assert list(storage.list()) == ["o/k"]


def test_unicode_keys(storage: Storage) -> None:
    key = "recordings/Zürich/日本語 call #1 (ü).wav"
    storage.put_bytes(key, b"data")
    assert storage.stat(key) == ObjectInfo(key, 4, md5(b"data"))
    assert read_all(storage, key) == b"data"
    assert list(storage.list("recordings/Zü")) == [key]
    storage.delete(key)
    assert storage.stat(key) is None


@pytest.mark.parametrize("key", BAD_KEYS, ids=lambda k: repr(k)[:20])
def test_bad_keys_are_refused_by_every_method(storage: Storage, key: str, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x")
    calls: list[Callable[[], object]] = [
        lambda: storage.put_bytes(key, b"x"),
        lambda: storage.put_file(key, source),
        lambda: storage.stat(key),
        lambda: storage.read_range(key),
        lambda: storage.download(key, tmp_path / "d"),
        lambda: storage.delete(key),
        lambda: storage.local_path(key),
    ]
    for call in calls:
        with pytest.raises(StorageError, match="not allowed|is empty"):
            call()
    assert list(storage.list()) == []
    assert not (tmp_path / "d").exists()


def test_keys_up_to_1024_bytes_work(storage: Storage) -> None:
    key = "ü/" * 341 + "ab"  # 341 * 3 + 2 = 1025 bytes, one over
    with pytest.raises(StorageError, match="longer than 1024 bytes"):
        storage.put_bytes(key, b"x")
    key = key[:-1]
    if isinstance(storage, S3Storage) and storage.prefix:
        with pytest.raises(StorageError, match="with the prefix it is longer than 1024 bytes"):
            storage.put_bytes(key, b"x")
        return
    storage.put_bytes(key, b"x")
    assert list(storage.list()) == [key]


def test_a_file_larger_than_the_multipart_threshold(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "big.wav"
    data = os.urandom(2 * PART + 1234)
    source.write_bytes(data)
    info = storage.put_file("big/one.wav", source)
    assert info == ObjectInfo("big/one.wav", len(data), md5(data))
    assert storage.stat("big/one.wav") == info
    dest = tmp_path / "back.wav"
    storage.download("big/one.wav", dest)
    assert hashlib.md5(dest.read_bytes()).hexdigest() == md5(data)
    assert read_all(storage, "big/one.wav", PART - 10, PART + 10) == data[PART - 10 : PART + 10]


def test_concurrent_puts_and_deletes_in_one_folder(storage: Storage) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                key = f"c/shared/{n}-{i}"
                storage.put_bytes(key, key.encode())
                if i % 2:
                    storage.delete(key)
        except BaseException as exc:  # reported below, with the thread's key
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert list(storage.list("c/")) == sorted(f"c/shared/{n}-{i}" for n in range(6) for i in range(0, 10, 2))


def test_local_path_is_only_given_by_the_local_folder(storage: Storage) -> None:
    storage.put_bytes("l/p", b"here")
    path = storage.local_path("l/p")
    if isinstance(storage, LocalStorage):
        assert path is not None and path.read_bytes() == b"here"
        assert storage.local_path("l/missing") is None
    else:
        assert path is None
    assert storage.kind in {"local", "memory", "s3"}


# ---- what only one backend can show ----


@pytest.mark.slow
def test_s3_large_file_goes_up_in_parts_with_the_full_md5_kept(s3_server: MotoServer, tmp_path: Path) -> None:
    bucket = s3_server.make_bucket()
    storage = S3Storage(s3_config(s3_server.endpoint, bucket, prefix="/p/"), multipart_threshold=PART, part_size=PART)
    data = os.urandom(2 * PART + 1)
    (tmp_path / "f").write_bytes(data)
    storage.put_file("k", tmp_path / "f")
    head = s3_server.client().head_object(Bucket=bucket, Key="p/k")
    parts = [hashlib.md5(data[i : i + PART]).digest() for i in range(0, len(data), PART)]
    assert head["ETag"].strip('"') == hashlib.md5(b"".join(parts)).hexdigest() + "-3"
    assert head["Metadata"] == {"md5": md5(data)}
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_s3_prefix_scopes_every_key_in_the_bucket(s3_server: MotoServer) -> None:
    bucket = s3_server.make_bucket()
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="outside", Body=b"x")
    client.put_object(Bucket=bucket, Key="tenant/recx", Body=b"x")
    storage = S3Storage(s3_config(s3_server.endpoint, bucket, prefix="tenant/rec"))
    storage.put_bytes("a/b", b"1")
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["outside", "tenant/rec/a/b", "tenant/recx"]
    assert list(storage.list()) == ["a/b"]
    assert storage.stat("outside") is None


def test_s3_stat_of_an_object_not_written_by_us_uses_the_etag(s3_server: MotoServer) -> None:
    bucket = s3_server.make_bucket()
    s3_server.client().put_object(Bucket=bucket, Key="foreign", Body=b"abc")
    storage = S3Storage(s3_config(s3_server.endpoint, bucket))
    assert storage.stat("foreign") == ObjectInfo("foreign", 3, md5(b"abc"))


def test_local_hides_temp_files_and_removes_emptied_folders(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_bytes("a/b/c/d", b"1")
    storage.put_bytes("a/keep", b"2")
    (tmp_path / "a" / "b" / ".callrec-tmp-0123456789abcdef").write_bytes(b"half written")
    assert list(storage.list()) == ["a/b/c/d", "a/keep"]
    (tmp_path / "a" / "b" / ".callrec-tmp-0123456789abcdef").unlink()
    storage.delete("a/b/c/d")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "keep"]
    storage.delete("a/keep")
    assert list(tmp_path.iterdir()) == []
    assert tmp_path.is_dir()


@pytest.mark.slow
def test_local_disk_full_is_a_storage_error_saying_so(tmp_path: Path) -> None:
    # a 64 KiB tmpfs in a private mount namespace: a real ENOSPC without touching the machine's disks
    mount = tmp_path / "small"
    mount.mkdir()
    script = (
        "import sys; from pathlib import Path; from callrec.storage import LocalStorage\n"
        "from callrec.errors import StorageError\n"
        "root = Path(sys.argv[1]); s = LocalStorage(root)\n"
        "try:\n    s.put_bytes('a/big', b'x' * 1048576)\nexcept StorageError as e:\n    print(e)\n"
        "print(sorted(str(p.relative_to(root)) for p in root.rglob('*')))\n"
    )
    command = f'mount -t tmpfs -o size=64k tmpfs {mount} && exec {sys.executable} -c "$0" {mount}'
    try:
        done = subprocess.run(
            ["unshare", "-rm", "sh", "-c", command, script], capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        pytest.skip("unshare is not installed")
    if "mount" in done.stderr and done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    assert lines[0] == f"upload of a/big to {mount} failed: no space left on device"
    assert lines[1] == "['a']"  # the folder stays, the temporary file does not


def test_memory_fail_next_puts_refuses_without_storing(tmp_path: Path) -> None:
    storage = MemoryStorage()
    storage.fail_next_puts = 2
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(StorageError, match="refused"):
        storage.put_bytes("k", b"x")
    with pytest.raises(StorageError, match="refused"):
        storage.put_file("k", tmp_path / "f")
    assert storage.stat("k") is None
    assert storage.put_bytes("k", b"x").size == 1
    assert storage.fail_next_puts == 0


def test_memory_corrupt_next_puts_fails_verification_and_keeps_nothing() -> None:
    storage = MemoryStorage()
    storage.put_bytes("k", b"old")
    storage.corrupt_next_puts = 1
    with pytest.raises(StorageError, match="^upload of k failed verification: "):
        storage.put_bytes("k", b"new bytes")
    assert storage.stat("k") is None
    storage.put_bytes("k", b"new bytes")
    assert read_all(storage, "k") == b"new bytes"
