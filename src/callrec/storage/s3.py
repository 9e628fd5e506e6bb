"""Objects in an S3-compatible bucket (AWS, MinIO, Ceph, ... possibly the customer's own).

Every upload is checked twice: the server checks the body against the Content-MD5 we send, and we read
the object's size and ETag back before saying it is stored. An object that fails the read-back is
deleted, so a key never holds bytes we did not verify.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import io
import re
import socket
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast, get_args

import boto3
import botocore.exceptions as bx
from botocore.awsrequest import AWSHTTPConnection, AWSHTTPConnectionPool, AWSHTTPSConnection, AWSHTTPSConnectionPool
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from callrec.errors import EgressRefused, StorageError
from callrec.storage import base
from callrec.storage.base import ObjectInfo

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

    from callrec.service.egress import Policy

AddressingStyle = Literal["auto", "virtual", "path"]
SINGLE_PUT_MAX_BYTES = 64 * 1024 * 1024
PART_BYTES = 16 * 1024 * 1024
NOT_FOUND_CODES = ("404", "NoSuchKey", "NotFound")
MD5_HEX = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class S3Config:
    """Where the bucket is and how patiently to talk to it."""

    bucket: str
    endpoint_url: str | None = None
    region: str = "us-east-1"
    prefix: str = ""
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    addressing_style: str = "auto"  # "path" | "virtual" | "auto"
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0
    max_attempts: int = 2  # attempts in all, the first included
    # where the endpoint may be (a tenant's endpoint goes through the service's egress policy); None: anywhere
    egress: Policy | None = field(default=None, repr=False, compare=False)


class S3Storage:
    """One bucket (and key prefix) through one boto3 client, which is safe to share between threads."""

    kind = "s3"

    def __init__(
        self, config: S3Config, *, multipart_threshold: int = SINGLE_PUT_MAX_BYTES, part_size: int = PART_BYTES
    ) -> None:
        if not config.bucket:
            raise StorageError("S3 bucket name is empty")
        if config.addressing_style not in get_args(AddressingStyle):
            raise StorageError(f"S3 addressing style {config.addressing_style!r} is not one of path, virtual, auto")
        if multipart_threshold < 1 or part_size < 1 or config.max_attempts < 1:
            raise StorageError("S3 multipart threshold, part size and attempts must be at least 1")
        self.prefix = base.check_prefix(config.prefix.strip("/") + "/") if config.prefix.strip("/") else ""
        self.config = config
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        options = Config(
            connect_timeout=config.connect_timeout_s,
            read_timeout=config.read_timeout_s,
            retries={"total_max_attempts": config.max_attempts, "mode": "standard"},
            s3={"addressing_style": cast(AddressingStyle, config.addressing_style)},
            # our own Content-MD5 is the check; the newer default checksums break many S3-compatible servers
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            session = boto3.session.Session(
                aws_access_key_id=config.access_key_id or None,
                aws_secret_access_key=config.secret_access_key or None,
                region_name=config.region or None,
            )
            self._client: S3Client = session.client("s3", endpoint_url=config.endpoint_url or None, config=options)
        except (BotoCoreError, ValueError) as exc:
            raise StorageError(f"S3 bucket '{config.bucket}' settings are not usable: {exc}") from exc
        self.endpoint = self._client.meta.endpoint_url
        self._refused: EgressRefused | None = None
        if config.egress is not None:
            self._guard(config.egress)

    def _guard(self, rules: Policy) -> None:
        """Every connection to the endpoint goes through ``rules``: its addresses are resolved and checked
        when the connection is made (a name that changes what it resolves to is caught), and the connection
        is made to the checked address. An endpoint known to be refused now is refused by every operation
        before any connection is tried."""
        try:
            rules.check_url(self.endpoint)
        except EgressRefused as exc:  # said by every operation (building a client is no operation)
            self._refused = EgressRefused(f"S3 bucket '{self.config.bucket}' at {self.endpoint} is not used: {exc}")
        http = cast(Any, self._client)._endpoint.http_session  # noqa: SLF001 - botocore has no public hook
        http._pool_classes_by_scheme.update(_guarded_pools(rules))  # noqa: SLF001 - shared with its managers

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.config.bucket!r}, endpoint={self.endpoint!r}, prefix={self.prefix!r})"

    def check(self) -> None:
        """Raise ``StorageError`` saying why, unless the bucket exists and these credentials may use it."""
        with self._boundary("access"):
            self._client.head_bucket(Bucket=self.config.bucket)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        full = self._key(key)
        try:
            with path.open("rb") as f:
                return self._upload(key, full, f)
        except OSError as exc:  # only the local file: S3's errors are StorageError by now
            raise StorageError(f"upload of {key} failed: {path} cannot be read: {base.os_reason(exc)}") from exc

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self._upload(key, self._key(key), io.BytesIO(data))

    def stat(self, key: str) -> ObjectInfo | None:
        full = self._key(key)
        with self._boundary(f"stat of {key}"):
            try:
                head = self._client.head_object(Bucket=self.config.bucket, Key=full)
            except ClientError as exc:
                if _code(exc) in NOT_FOUND_CODES:
                    return None
                raise
        # ours carry the md5 as metadata; a single-part upload by anyone else has it as ETag
        md5s = [head.get("Metadata", {}).get("md5", ""), head["ETag"].strip('"')]
        return ObjectInfo(key, head["ContentLength"], next((m for m in md5s if MD5_HEX.fullmatch(m)), ""))

    def read_range(self, key: str, start: int = 0, end: int | None = None, chunk: int = 65536) -> Iterator[bytes]:
        base.check_range(key, start, end, chunk)
        full = self._key(key)
        if end == start:
            if self.stat(key) is None:
                raise StorageError(f"object {key} does not exist in S3 bucket '{self.config.bucket}'")
            return iter(())
        extra: dict[str, Any] = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        with self._boundary(f"read of {key}"):
            try:
                body = self._client.get_object(Bucket=self.config.bucket, Key=full, **extra)["Body"]
            except ClientError as exc:
                if _code(exc) == "InvalidRange":  # the range starts at or past the end
                    return iter(())
                if _code(exc) in NOT_FOUND_CODES:
                    raise StorageError(f"object {key} does not exist in S3 bucket '{self.config.bucket}'") from exc
                raise
        return self._stream(key, body, chunk)

    def download(self, key: str, dest: Path) -> None:
        base.write_atomically(dest, self.read_range(key, chunk=base.COPY_CHUNK_BYTES), key)

    def local_path(self, key: str) -> Path | None:
        base.check_key(key)
        return None

    def delete(self, key: str) -> None:
        full = self._key(key)
        with self._boundary(f"delete of {key}"):
            self._client.delete_object(Bucket=self.config.bucket, Key=full)

    def list(self, prefix: str = "") -> Iterator[str]:
        base.check_prefix(prefix)
        action = f"listing of {prefix!r}"
        paginator = self._client.get_paginator("list_objects_v2")
        with self._boundary(action):
            pages = iter(paginator.paginate(Bucket=self.config.bucket, Prefix=self.prefix + prefix))
            first = next(pages, None)
        return self._keys(action, first, pages)

    def _key(self, key: str) -> str:
        full = self.prefix + base.check_key(key)
        if len(full.encode()) > base.MAX_KEY_BYTES:
            raise StorageError(f"object key {key[:80]!r} is not allowed: with the prefix it is longer than 1024 bytes")
        return full

    def _upload(self, key: str, full: str, f: BinaryIO) -> ObjectInfo:
        size = f.seek(0, io.SEEK_END)
        f.seek(0)
        with self._boundary(f"upload of {key}"):
            if size <= self.multipart_threshold:
                body = f.read()
                md5 = etag = base.md5_hex(body)
                checksum = _b64(bytes.fromhex(md5))
                self._client.put_object(
                    Bucket=self.config.bucket, Key=full, Body=body, ContentMD5=checksum, Metadata={"md5": md5}
                )
            else:
                md5, digests = _digests(f, self.part_size)
                etag = self._multipart(key, full, f, md5, digests)
            self._verify(key, full, size, md5, etag)
        return ObjectInfo(key, size, md5)

    def _multipart(self, key: str, full: str, f: BinaryIO, md5: str, digests: builtins.list[bytes]) -> str:
        """Upload in parts, each checked by Content-MD5 and by its ETag; return the composite ETag."""
        bucket = self.config.bucket
        upload_id = self._client.create_multipart_upload(Bucket=bucket, Key=full, Metadata={"md5": md5})["UploadId"]
        try:
            parts: builtins.list[CompletedPartTypeDef] = []
            f.seek(0)
            for number, digest in enumerate(digests, start=1):
                block = f.read(self.part_size)
                if hashlib.md5(block, usedforsecurity=False).digest() != digest:
                    raise StorageError(f"upload of {key} failed: the file changed while it was being uploaded")
                answer = self._client.upload_part(
                    Bucket=bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=block, ContentMD5=_b64(digest)
                )
                if (got := answer["ETag"].strip('"')) != digest.hex():
                    raise StorageError(
                        f"upload of {key} failed verification: part {number} has ETag {got}, sent md5 {digest.hex()}"
                    )
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
            self._client.complete_multipart_upload(
                Bucket=bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            # an unfinished upload is stored (and billed) until it is aborted
            with suppress(BotoCoreError, ClientError):
                self._client.abort_multipart_upload(Bucket=bucket, Key=full, UploadId=upload_id)
            raise
        return hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest() + f"-{len(digests)}"

    def _verify(self, key: str, full: str, size: int, md5: str, etag: str) -> None:
        head = self._client.head_object(Bucket=self.config.bucket, Key=full)
        got_size, got_etag = head["ContentLength"], head["ETag"].strip('"')
        got_md5 = head.get("Metadata", {}).get("md5", "")
        if (got_size, got_etag, got_md5) != (size, etag, md5):
            # the bytes under this key are not the ones we sent: remove them rather than leave them looking stored
            with suppress(BotoCoreError, ClientError):
                self._client.delete_object(Bucket=self.config.bucket, Key=full)
            raise StorageError(
                f"upload of {key} failed verification: sent {size} bytes (ETag {etag}), "
                f"S3 has {got_size} bytes (ETag {got_etag}, md5 metadata {got_md5 or 'missing'})"
            )

    def _stream(self, key: str, body: Any, chunk: int) -> Iterator[bytes]:
        with closing(body), self._boundary(f"read of {key}"):
            yield from body.iter_chunks(chunk)

    def _keys(self, action: str, first: Any, pages: Iterator[Any]) -> Iterator[str]:
        page = first
        while page is not None:
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix) :]
            with self._boundary(action):
                page = next(pages, None)

    @contextmanager
    def _boundary(self, action: str) -> Iterator[None]:
        """Translate boto3's errors into one-line ``StorageError``s naming the bucket and the endpoint."""
        if self._refused is not None:
            raise self._refused
        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            refused = exc.kwargs.get("error") if isinstance(exc, BotoCoreError) else None
            if isinstance(refused, EgressRefused):  # a connection the egress policy would not make
                raise EgressRefused(
                    f"S3 bucket '{self.config.bucket}' at {self.endpoint} is not used: {refused}"
                ) from exc
            raise StorageError(self._describe(action, exc)) from exc

    def _describe(self, action: str, exc: BotoCoreError | ClientError) -> str:
        bucket, where = self.config.bucket, self.endpoint
        if isinstance(exc, ClientError):
            code, message = _code(exc), str(exc.response.get("Error", {}).get("Message", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "NoSuchBucket" or (code in NOT_FOUND_CODES and action == "access"):
                text = f"S3 bucket '{bucket}' does not exist at {where}"
            else:
                detail = f"{code}: {message}" if message and message != code else code
                text = f"S3 bucket '{bucket}' at {where} refused {action}: {detail}"
                if status == 403:
                    text += " (check the access key, the secret and the bucket policy)"
        elif isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            text = f"S3 bucket '{bucket}' at {where} cannot be used: no access key and secret are configured"
        else:
            text = f"S3 bucket '{bucket}' cannot be reached at {where}: {self._short(exc)} ({action})"
        return " ".join(text.split())

    def _short(self, exc: BotoCoreError) -> str:
        if isinstance(exc, bx.ConnectTimeoutError):
            return f"no connection within {self.config.connect_timeout_s:g} s"
        if isinstance(exc, bx.ReadTimeoutError):
            return f"no answer within {self.config.read_timeout_s:g} s"
        if isinstance(exc, bx.EndpointConnectionError):
            found = re.search(r"\[Errno -?\d+\] ([^'\"()]+)", repr(exc.kwargs.get("error", "")))
            return found.group(1).strip().lower() if found else "cannot connect"
        return f"{type(exc).__name__}: {str(exc)[:200]}"


def _guarded_pools(rules: Policy) -> dict[str, type]:
    """botocore's HTTP and HTTPS connection pools with each new connection made through ``rules``."""

    def new_conn(conn: Any) -> socket.socket:
        try:
            sock = rules.connect(conn._dns_host, conn.port, _seconds(conn.timeout), conn.source_address)  # noqa: SLF001
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
        except socket.gaierror as exc:
            raise NameResolutionError(conn.host, conn, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc
        return sock

    http = type("GuardedHTTPConnection", (AWSHTTPConnection,), {"_new_conn": new_conn})
    https = type("GuardedHTTPSConnection", (AWSHTTPSConnection,), {"_new_conn": new_conn})
    return {
        "http": type("GuardedHTTPConnectionPool", (AWSHTTPConnectionPool,), {"ConnectionCls": http}),
        "https": type("GuardedHTTPSConnectionPool", (AWSHTTPSConnectionPool,), {"ConnectionCls": https}),
    }


def _seconds(timeout: object) -> float | None:
    return float(timeout) if isinstance(timeout, int | float) else None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _digests(f: BinaryIO, part_size: int) -> tuple[str, list[bytes]]:
    """The whole content's MD5 and each part's, read once before the upload starts (metadata comes first)."""
    whole = hashlib.md5(usedforsecurity=False)
    digests: list[bytes] = []
    f.seek(0)
    while block := f.read(part_size):
        whole.update(block)
        digests.append(hashlib.md5(block, usedforsecurity=False).digest())
    return whole.hexdigest(), digests
