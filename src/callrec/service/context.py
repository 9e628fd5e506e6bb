"""What every part of the service shares: configuration, database, clock, queue, storages and secrets."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from callrec.config import ServiceConfig
from callrec.db.engine import make_engine, migrate, session_factory
from callrec.secretbox import SecretBox, load_or_create_key
from callrec.service.clock import DatabaseClock
from callrec.service.domain_settings import StorageSettings
from callrec.service.egress import Policy
from callrec.service.egress import policy as egress_policy
from callrec.service.private import make_private
from callrec.service.schedule import Clock, SystemClock, clock_from_env
from callrec.storage.base import Storage
from callrec.storage.local import LocalStorage
from callrec.storage.s3 import S3Config, S3Storage


@dataclass
class Context:
    """One per process; built by ``Context.open`` and handed to the pipeline, the API and the sweeps."""

    config: ServiceConfig
    engine: Engine
    sessions: sessionmaker[Session]
    box: SecretBox
    clock: Clock = field(default_factory=SystemClock)
    _storages: dict[str, Storage] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, config: ServiceConfig, *, clock: Clock | None = None, run_migrations: bool = True) -> Context:
        """Connect to the database (migrating it to the newest schema) and load the secret key."""
        make_private(config.data_dir)  # umask 0o077 from here on: the database, tapes, recordings are 0600
        engine = make_engine(config.db_url)
        if run_migrations:
            migrate(engine)
        key = config.secret_key or load_or_create_key(config.data_dir / "secret.key")
        if clock is None:
            clock = clock_from_env(os.environ)
            if engine.dialect.name == "postgresql":  # hosts share the database: they share its clock too
                clock = DatabaseClock(engine, clock)
        return cls(config, engine, session_factory(engine), SecretBox(key), clock)

    @property
    def node(self) -> str:
        """This process, as it signs the jobs it holds (forked workers each have their own)."""
        return f"{socket.gethostname()}:{os.getpid()}"

    @property
    def single_host(self) -> bool:
        """Whether every part of the service runs on this machine (an SQLite database cannot be shared),
        so a tape on this host's disk is one every worker can read."""
        return self.engine.dialect.name == "sqlite"

    @property
    def egress(self) -> Policy:
        """Where outbound requests a tenant aims (webhooks, S3 endpoints) may go (``CALLREC_EGRESS_ALLOW``)."""
        return egress_policy(self.config.egress_allow)

    def close(self) -> None:
        self.engine.dispose()

    def storage_spec(self, settings: StorageSettings) -> dict[str, Any]:
        """What a recording remembers of the storage it went to (the secret stays encrypted)."""
        spec = settings.model_dump(mode="json")
        if spec["kind"] == "local":
            return {"kind": "local"}
        secret = spec.get("secret_access_key", "")
        if secret and not secret.startswith("enc:"):
            spec["secret_access_key"] = self.box.encrypt(secret)
        return spec

    def storage(self, spec: dict[str, Any]) -> Storage:
        """The storage a spec (from ``storage_spec``) names; one client per distinct spec."""
        ident = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        with self._lock:
            found = self._storages.get(ident)
            if found is None:
                found = self._build(spec)
                self._storages[ident] = found
            return found

    def _build(self, spec: dict[str, Any]) -> Storage:
        if spec.get("kind", "local") == "local":
            return LocalStorage(self.config.storage_dir)
        secret = spec.get("secret_access_key", "")
        if secret.startswith("enc:"):
            secret = self.box.decrypt(secret)
        return S3Storage(
            S3Config(
                bucket=spec["bucket"],
                endpoint_url=spec.get("endpoint_url") or None,
                region=spec.get("region") or "us-east-1",
                prefix=spec.get("prefix", ""),
                access_key_id=spec.get("access_key_id", ""),
                secret_access_key=secret,
                addressing_style=spec.get("addressing_style", "auto"),
                egress=self.egress,
            )
        )
