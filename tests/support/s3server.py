"""A real S3-compatible HTTP server for tests: moto's server in a subprocess on a free 127.0.0.1 port.

Self-contained (no fixtures) so any test folder can import it::

    with MotoServer() as server:
        server.make_bucket("recordings")
        storage = S3Storage(s3_config(server.endpoint, "recordings"))

moto keeps everything in memory, so ``restart()`` (same port, e.g. to simulate S3 being down and back)
comes back with no buckets.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from types import TracebackType
from typing import IO, TYPE_CHECKING

import boto3

from callrec.storage.s3 import S3Config

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
DUMMY_KEY = "testing"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def s3_config(endpoint: str, bucket: str, **overrides: object) -> S3Config:
    """Settings for a bucket on a test server: dummy credentials, path addressing, short timeouts."""
    values: dict[str, object] = {
        "bucket": bucket,
        "endpoint_url": endpoint,
        "access_key_id": DUMMY_KEY,
        "secret_access_key": DUMMY_KEY,
        "addressing_style": "path",
        "connect_timeout_s": 2.0,
        "read_timeout_s": 10.0,
    }
    values.update(overrides)
    return S3Config(**values)  # type: ignore[arg-type]


def unique_bucket(stem: str = "test") -> str:
    return f"{stem}-{uuid.uuid4().hex[:16]}"


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1; ``env`` adds environment (e.g. INITIAL_NO_AUTH_ACTION_COUNT)."""

    def __init__(self, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.env = env or {}
        self._process: subprocess.Popen[bytes] | None = None
        # moto logs every request; a pipe nobody reads would fill and stall it
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> MotoServer:
        if self.running:
            return self
        command = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]
        env = os.environ | self.env
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - open while the server runs, closed by stop()
        self._process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            if self._process.poll() is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace").strip()[-500:]
                self.stop()
                raise RuntimeError(f"moto server on port {self.port} exited at start: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto server on port {self.port} did not answer within {START_TIMEOUT_S:g} s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stop and start again on the same port; every bucket is gone afterwards."""
        self.stop()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self.start()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # the port may still be held for a moment

    def client(self, access_key: str = DUMMY_KEY, secret: str = DUMMY_KEY) -> S3Client:
        """A plain boto3 S3 client on this server, for test setup and for checking behind the code's back."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret,
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique one when ``name`` is None) and return its name."""
        name = name or unique_bucket()
        self.client().create_bucket(Bucket=name)
        return name

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=1.0) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
