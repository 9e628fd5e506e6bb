"""One ``callrec serve`` on 127.0.0.1 with its own ports and data folder, for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.recorder_proc import free_udp_block

READY_TIMEOUT_S = 60


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """``callrec serve`` with an admin key of the test's choosing; ``api`` is an httpx client with it."""

    def __init__(self, data: Path, *extra: str, env: dict[str, str] | None = None, rtp_pairs: int = 16) -> None:
        self.data = data
        self.admin_key = "cr_test_admin_" + os.urandom(8).hex()
        self.http_port = free_tcp_port()
        self.sip_port = 0
        self.rtp_first = free_udp_block(rtp_pairs * 2, 30000, 60000)
        self.rtp_last = self.rtp_first + rtp_pairs * 2 - 1
        self.log_path = data.parent / f"serve-{os.getpid()}-{os.urandom(4).hex()}.log"
        self.extra = extra
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = httpx.Client(
            base_url=f"http://127.0.0.1:{self.http_port}", headers={"Authorization": f"Bearer {self.admin_key}"},
            timeout=30,
        )  # fmt: skip

    def start(self) -> ServeProcess:
        self.data.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        # the receivers and S3 servers of these tests are on loopback: allow-listed as an operator would
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CALLREC_ADMIN_KEY": self.admin_key,
               "CALLREC_EGRESS_ALLOW": "127.0.0.0/8,::1", **self.env}  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "callrec", "serve", "--data", str(self.data),
             "--http", f"127.0.0.1:{self.http_port}", "--listen", "127.0.0.1:0",
             "--rtp-ports", f"{self.rtp_first}-{self.rtp_last}", "--allow", "127.0.0.1", *self.extra],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"callrec serve exited {self.proc.returncode}: {self.log()}")
            text = self.log()
            if "callrec serve: ready:" in text:
                found = re.search(r"callrec record: listening on [^ ]+:(\d+) ", text)
                if found is not None:
                    self.sip_port = int(found.group(1))
                return self
            time.sleep(0.05)
        raise AssertionError(f"callrec serve did not get ready within {READY_TIMEOUT_S} s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"callrec serve ignored SIGTERM for 30 s: {self.log()[-3000:]}") from None
        return self.proc.returncode

    def wait_for(self, what: str, check: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {self.log()[-3000:]}")

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.api.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
