"""The two configurations every pipeline test runs on: embedded (SQLite, SqliteHuey, local folder) and
distributed (PostgreSQL, Redis, S3 on a real S3-compatible server). Reaching the servers is real; when
they are missing the distributed case skips with the reason — except under CI, where it fails."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from callrec.config import ServiceConfig

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
LOOPBACK_ALLOW = ("127.0.0.0/8", "::1")  # CALLREC_EGRESS_ALLOW for tests whose receivers run on this host


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need_server(name: str, host: str, port: int) -> None:
    """Skip when a server is missing on a developer's machine; under CI a missing server is a failure."""
    if reachable(host, port):
        return
    reason = f"{name} is not reachable at {host}:{port}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}, and CI must run the distributed tests")
    pytest.skip(reason)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A throwaway PostgreSQL database; its URL."""
    import psycopg

    need_server("PostgreSQL", "127.0.0.1", 5432)
    name = f"callrec_t_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def redis_queue() -> Iterator[tuple[str, str]]:
    """A Redis queue URL and a queue name of its own, removed afterwards."""
    import redis

    need_server("Redis", "127.0.0.1", 6379)
    name = f"callrec-t-{secrets.token_hex(6)}"
    try:
        yield REDIS_URL, name
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"huey.*{name}*"):
            client.delete(key)


@dataclass
class Backend:
    name: str
    config: ServiceConfig
    s3_endpoint: str = ""
    bucket: str = ""

    @property
    def distributed(self) -> bool:
        return self.name == "distributed"

    def storage_settings(self) -> dict[str, object]:
        if not self.distributed:
            return {"kind": "local"}
        return {
            "kind": "s3", "endpoint_url": self.s3_endpoint, "bucket": self.bucket, "prefix": "callrec/",
            "access_key_id": "testing", "secret_access_key": "testing", "addressing_style": "path",
        }  # fmt: skip


def service_config(data: Path, **changes: object) -> ServiceConfig:
    # the receivers and the S3 server of these tests are on loopback: allow-listed as an operator would
    cfg = ServiceConfig(data_dir=data, secret_key="", workers=1, egress_allow=LOOPBACK_ALLOW)
    cfg.lease_s, cfg.sweep_interval_s, cfg.requeue_after_s = 3.0, 0.5, 2.0
    cfg.backoff_base_s, cfg.backoff_max_s = 0.2, 2.0
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg
