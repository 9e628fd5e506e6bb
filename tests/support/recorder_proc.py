"""``callrec record`` as a real process for tests: free ports, the ready line, SIGTERM or SIGKILL, its tapes."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

READY_TIMEOUT_S = 20


def free_udp_block(count: int, low: int = 20000, high: int = 60000) -> int:
    """The first (even) of ``count`` consecutive ports free for UDP and TCP on 127.0.0.1."""
    for _ in range(500):
        base = random.randrange(low, high - count, 2)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    sock = socket.socket(socket.AF_INET, kind)
                    socks.append(sock)
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError(f"no {count} consecutive free ports on 127.0.0.1")


class RecorderProcess:
    """One ``callrec record`` on 127.0.0.1 with its own SIP port, RTP range and data folder."""

    def __init__(self, data: Path, *extra: str, rtp_pairs: int = 32, sip_port: int | None = None) -> None:
        self.data = data
        self.sip_port = sip_port or 0  # 0: the recorder picks a free port and says which in its ready line
        self.rtp_first = free_udp_block(rtp_pairs * 2, 30000, 60000)
        self.rtp_last = self.rtp_first + rtp_pairs * 2 - 1
        self.log_path = data / f"recorder-{os.getpid()}-{random.randrange(1 << 30)}.log"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RecorderProcess:
        self.data.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "callrec", "record", "--listen", f"127.0.0.1:{self.sip_port}",
             "--rtp-ports", f"{self.rtp_first}-{self.rtp_last}", "--data", str(self.data), "--allow", "127.0.0.1",
             *self.extra],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"callrec record exited {self.proc.returncode}: {self.log()}")
            ready = re.search(r"callrec record: listening on [^ ]+:(\d+) ", self.log())
            if ready is not None:
                self.sip_port = int(ready.group(1))
                return self
            time.sleep(0.05)
        raise AssertionError(f"callrec record did not get ready within {READY_TIMEOUT_S} s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.sip_port)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """SIGTERM (or ``sig``), as an operator would; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"callrec record ignored SIGTERM for 20 s: {self.log()}") from None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, nothing gets closed (nothing happens when it has exited already)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def tapes(self) -> list[Path]:
        return sorted(p.parent for p in (self.data / "tapes").rglob("call.json"))

    def __enter__(self) -> RecorderProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def read_call(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "call.json").read_text())
    return data
