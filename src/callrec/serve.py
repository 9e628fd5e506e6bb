"""``callrec serve``: the whole system on one machine — recorder, workers and the HTTP API.

The recorder and the workers run as child processes (the very ``callrec record`` and ``callrec worker``
of a scaled-out installation); the API runs here. A child that dies is started again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType

import uvicorn

from callrec.config import RecorderConfig, ServiceConfig
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.service.context import Context

log = logging.getLogger("callrec.serve")
RESTART_DELAY_S = 1.0


def bootstrap(ctx: Context) -> str | None:
    """Make sure the ``default`` domain and an admin key exist; returns a new admin key to print once."""
    now = ctx.clock.now()
    with transaction(ctx.sessions) as s:
        queries.ensure_domain(s, queries.DEFAULT_DOMAIN, now)
        return queries.ensure_admin_key(s, ctx.config.admin_key, now)


@dataclass
class Child:
    """One supervised child process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, stderr=subprocess.PIPE)
        threading.Thread(target=self._relay, args=(self.proc,), daemon=True, name=f"relay-{self.name}").start()

    def _relay(self, proc: subprocess.Popen[bytes]) -> None:
        # the child's log goes on to ours; its ready line tells us it listens
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            if "listening on" in line or "callrec worker:" in line:
                self.ready.set()
            sys.stderr.write(line)
            sys.stderr.flush()


class Supervisor:
    """Starts the children, restarts one that dies, and stops them all (SIGTERM, then SIGKILL)."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="callrec-supervisor")

    def start(self) -> None:
        for child in self.children:
            child.start()
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None and not self._stopping.is_set():
                    log.error("%s exited with %s; starting it again", child.name, child.proc.returncode)
                    time.sleep(RESTART_DELAY_S)
                    if not self._stopping.is_set():
                        child.restarts += 1
                        child.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stopping.set()
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not stop in time; killing it", child.name)
                child.proc.kill()
                child.proc.wait()


def children_for(rec: RecorderConfig, service: ServiceConfig, *, record: bool, work: bool) -> list[Child]:
    env = dict(os.environ)
    env["CALLREC_DATA"] = str(service.data_dir)
    env["CALLREC_SECRET_KEY"] = service.secret_key
    if service.database_url:
        env["CALLREC_DATABASE_URL"] = service.database_url
    if service.queue_url:
        env["CALLREC_QUEUE_URL"] = service.queue_url
    exe = [sys.executable, "-m", "callrec"]
    children = []
    if record:
        argv = exe + [
            "record", "--service", "--listen", f"{rec.listen_host}:{rec.listen_port}",
            "--rtp-ports", f"{rec.rtp_first}-{rec.rtp_last}", "--data", str(service.data_dir),
            "--idle-timeout", str(rec.idle_timeout_s), "--max-sessions", str(rec.max_sessions),
        ]  # fmt: skip
        for net in rec.allow:
            argv += ["--allow", str(net)]
        if rec.media_address:
            argv += ["--media-address", rec.media_address]
        children.append(Child("recorder", argv, env))
    if work:
        children.append(Child("worker", exe + ["worker", "--workers", str(service.workers)], env))
    return children


class _Server(uvicorn.Server):
    """uvicorn, except that SIGTERM/SIGINT end ``serve`` with exit status 0 after stopping the children
    (uvicorn itself raises the signal again once it has shut down, which would kill us before that)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def handle(sig: int, frame: FrameType | None) -> None:
            self.should_exit = True

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(rec: RecorderConfig, service: ServiceConfig, *, record: bool = True, work: bool = True) -> None:
    """Run until SIGTERM or SIGINT."""
    from callrec.api.app import create_app
    from callrec.jobs.worker import build

    built = build(service)
    # children must find the same secret key without racing to create it
    service.secret_key = service.secret_key or (service.data_dir / "secret.key").read_text().strip()
    new_key = bootstrap(built.ctx)
    if new_key:
        print(f"callrec serve: admin API key (shown once, keep it): {new_key}", flush=True)
    supervisor = Supervisor(children_for(rec, service, record=record, work=work))
    supervisor.start()
    for child in supervisor.children:
        if not child.ready.wait(30):
            log.error("%s did not report ready within 30 s", child.name)
    app = create_app(built)
    server = _Server(
        uvicorn.Config(app, host=service.http_host, port=service.http_port, log_level="warning", lifespan="on")
    )
    parts = [f"http://{service.http_host}:{service.http_port}"]
    if record:
        parts.append(f"sip {rec.listen_host}:{rec.listen_port} (udp, tcp)")
    parts.append(f"data {service.data_dir}")

    async def announce() -> None:
        while not server.started:
            import asyncio

            await asyncio.sleep(0.05)
        print("callrec serve: ready: " + ", ".join(parts), file=sys.stderr, flush=True)

    import asyncio

    async def main() -> None:
        task = asyncio.create_task(announce())
        await server.serve()
        task.cancel()

    try:
        asyncio.run(main())
    finally:
        supervisor.stop()
        built.close()
