"""S3 failing the ways it fails in production, each surfacing as one fast, one-line ``StorageError``.

The faults are real: a TCP proxy (tests.support.faultproxy) refuses, swallows or corrupts traffic to a real
S3-compatible server (moto). moto does not check Content-MD5, so a corrupted body is stored there and our
read-back of size and ETag is what catches it (real S3 refuses it earlier with BadDigest).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callrec.errors import StorageError
from callrec.storage import S3Storage
from tests.support.faultproxy import FaultProxy
from tests.support.s3server import MotoServer, s3_config

pytestmark = pytest.mark.slow  # a moto S3 server behind a fault proxy, read timeouts

MIB = 1024 * 1024
PART = 5 * MIB
READ_TIMEOUT_S = 1.0
ATTEMPTS = 2


@pytest.fixture
def proxy(s3_server: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", s3_server.port) as p:
        yield p


@pytest.fixture
def bucket(s3_server: MotoServer) -> str:
    return s3_server.make_bucket()


def through(proxy: FaultProxy, bucket: str, **kwargs: int) -> S3Storage:
    config = s3_config(
        proxy.endpoint, bucket, connect_timeout_s=1.0, read_timeout_s=READ_TIMEOUT_S, max_attempts=ATTEMPTS
    )
    return S3Storage(config, **kwargs)


def one_line(exc: pytest.ExceptionInfo[StorageError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_refused_connections_fail_fast_naming_bucket_and_endpoint(proxy: FaultProxy, bucket: str) -> None:
    storage = through(proxy, bucket)
    storage.put_bytes("k", b"data")
    proxy.set_mode("refuse")
    calls = {
        "upload of k": lambda: storage.put_bytes("k", b"data"),
        "stat of k": lambda: storage.stat("k"),
        "read of k": lambda: storage.read_range("k"),
        "listing of ''": lambda: storage.list(),
        "delete of k": lambda: storage.delete("k"),
        "access": storage.check,
    }
    for action, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StorageError) as exc:
            call()
        assert time.monotonic() - started < 5.0
        expected = f"S3 bucket '{bucket}' cannot be reached at {proxy.endpoint}: connection refused ({action})"
        assert one_line(exc) == expected


def test_a_silent_server_fails_within_the_read_timeout(proxy: FaultProxy, bucket: str) -> None:
    storage = through(proxy, bucket)
    proxy.set_mode("blackhole")
    started = time.monotonic()
    with pytest.raises(StorageError) as exc:
        storage.put_bytes("k", b"data")
    elapsed = time.monotonic() - started
    # every attempt waits the full read timeout; standard retry mode sleeps at most 1 s before the second
    assert READ_TIMEOUT_S * ATTEMPTS <= elapsed < READ_TIMEOUT_S * ATTEMPTS + 3.0
    assert (
        one_line(exc)
        == f"S3 bucket '{bucket}' cannot be reached at {proxy.endpoint}: no answer within 1 s (upload of k)"
    )
    assert proxy.accepted >= ATTEMPTS


def test_every_upload_request_carries_the_content_md5(proxy: FaultProxy, bucket: str, tmp_path: Path) -> None:
    # what makes real S3 refuse a body damaged on the way (BadDigest); moto does not check it
    storage = through(proxy, bucket, multipart_threshold=PART, part_size=PART)
    small, big = os.urandom(1000), os.urandom(PART + 7)
    (tmp_path / "big").write_bytes(big)
    storage.put_bytes("small", small)
    storage.put_file("big", tmp_path / "big")
    puts = [(target, headers) for method, target, headers in proxy.requests if method == "PUT"]
    assert len(puts) == 3  # one object, then two parts
    bodies = [small, big[:PART], big[PART:]]
    for (_target, headers), body in zip(puts, bodies, strict=True):
        assert headers["content-md5"] == base64.b64encode(hashlib.md5(body).digest()).decode()
        assert int(headers["content-length"]) == len(body)
    assert puts[0][1]["x-amz-meta-md5"] == hashlib.md5(small).hexdigest()
    assert "partNumber=2" in puts[2][0]
    create = [h for m, t, h in proxy.requests if m == "POST" and t.endswith("?uploads")]
    assert [h["x-amz-meta-md5"] for h in create] == [hashlib.md5(big).hexdigest()]


def test_a_corrupted_upload_fails_verification_and_leaves_no_object(
    proxy: FaultProxy, bucket: str, s3_server: MotoServer
) -> None:
    storage = through(proxy, bucket)
    data = os.urandom(100_000)
    proxy.corrupt_next_put_bodies(1)
    with pytest.raises(StorageError) as exc:
        storage.put_bytes("rec/1.wav", data)
    assert proxy.corrupted == 1
    assert one_line(exc).startswith("upload of rec/1.wav failed verification: sent 100000 bytes")
    assert storage.stat("rec/1.wav") is None
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    # the next attempt, through a healthy connection, stores and verifies
    info = storage.put_bytes("rec/1.wav", data)
    assert proxy.corrupted == 1
    assert storage.stat("rec/1.wav") == info
    assert b"".join(storage.read_range("rec/1.wav")) == data


def test_a_corrupted_part_aborts_the_multipart_upload(
    proxy: FaultProxy, bucket: str, s3_server: MotoServer, tmp_path: Path
) -> None:
    storage = through(proxy, bucket, multipart_threshold=PART, part_size=PART)
    source = tmp_path / "big.wav"
    source.write_bytes(os.urandom(2 * PART + 10))
    proxy.corrupt_next_put_bodies(1)
    with pytest.raises(StorageError) as exc:
        storage.put_file("big.wav", source)
    assert proxy.corrupted == 1
    assert one_line(exc).startswith("upload of big.wav failed verification: part 1 has ETag ")
    client = s3_server.client()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert storage.stat("big.wav") is None
    assert storage.put_file("big.wav", source).size == 2 * PART + 10


def test_s3_down_then_back(tmp_path: Path) -> None:
    with MotoServer() as server:
        bucket = server.make_bucket()
        storage = S3Storage(s3_config(server.endpoint, bucket, connect_timeout_s=1.0, max_attempts=1))
        storage.put_bytes("a", b"1")
        server.stop()
        with pytest.raises(StorageError, match=f"^S3 bucket '{bucket}' cannot be reached at {server.endpoint}: "):
            storage.put_bytes("b", b"2")
        server.restart()
        # moto's state was in memory: the bucket is gone until made again
        with pytest.raises(StorageError, match=f"^S3 bucket '{bucket}' does not exist at {server.endpoint}$"):
            storage.check()
        server.make_bucket(bucket)
        storage.check()
        assert storage.put_bytes("b", b"2").size == 1
        assert list(storage.list()) == ["b"]


def test_a_missing_bucket_is_named(s3_server: MotoServer) -> None:
    storage = S3Storage(s3_config(s3_server.endpoint, "no-such-bucket-here"))
    with pytest.raises(StorageError) as exc:
        storage.check()
    assert one_line(exc) == f"S3 bucket 'no-such-bucket-here' does not exist at {s3_server.endpoint}"
    with pytest.raises(StorageError) as exc:
        storage.put_bytes("k", b"x")
    assert one_line(exc) == f"S3 bucket 'no-such-bucket-here' does not exist at {s3_server.endpoint}"


@pytest.fixture(scope="module")
def auth_server() -> Iterator[tuple[MotoServer, str, str, str]]:
    """A moto server that checks credentials once set up: one user with s3:* and one bucket."""
    # the first four requests (the set-up below) are let through unauthenticated
    with MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"}) as server:
        import boto3

        iam = boto3.client(
            "iam", endpoint_url=server.endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip
        iam.create_user(UserName="recorder")
        key = iam.create_access_key(UserName="recorder")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="recorder", PolicyName="s3", PolicyDocument=json.dumps(policy))
        server.client(key["AccessKeyId"], key["SecretAccessKey"]).create_bucket(Bucket="secured")
        yield server, "secured", key["AccessKeyId"], key["SecretAccessKey"]


def test_wrong_credentials_are_refused_naming_the_bucket(auth_server: tuple[MotoServer, str, str, str]) -> None:
    server, bucket, key_id, secret = auth_server
    good = S3Storage(s3_config(server.endpoint, bucket, access_key_id=key_id, secret_access_key=secret))
    good.check()
    good.put_bytes("k", b"x")
    wrong_secret = S3Storage(s3_config(server.endpoint, bucket, access_key_id=key_id, secret_access_key="wrong"))
    with pytest.raises(StorageError) as exc:
        wrong_secret.check()
    assert one_line(exc) == (
        f"S3 bucket '{bucket}' at {server.endpoint} refused access: 403: Forbidden "
        "(check the access key, the secret and the bucket policy)"
    )
    with pytest.raises(StorageError) as exc:
        wrong_secret.put_bytes("k", b"y")
    assert one_line(exc).startswith(
        f"S3 bucket '{bucket}' at {server.endpoint} refused upload of k: SignatureDoesNotMatch"
    )
    unknown = S3Storage(s3_config(server.endpoint, bucket, access_key_id="AKIANOTAKEY", secret_access_key="x"))
    with pytest.raises(StorageError) as exc:
        unknown.stat("k")
    assert one_line(exc).startswith(f"S3 bucket '{bucket}' at {server.endpoint} refused stat of k: 403")
    with pytest.raises(StorageError, match=f"^S3 bucket '{bucket}' at .* refused listing of '': InvalidAccessKeyId"):
        unknown.list()
    assert b"".join(good.read_range("k")) == b"x"
