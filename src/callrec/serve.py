"""``callrec serve``: the whole system on one machine — recorder, workers and the HTTP API.

The recorder and the workers run as child processes (the very ``callrec record`` and ``callrec worker``
of a scaled-out installation); the API runs here. A child that dies is started again, unless it
refused to run (exit status ``EXIT_REFUSED``): then serve stops. serve owns the data folder; its children
share the lock and die with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from callrec.config import RecorderConfig, ServiceConfig
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.service.context import Context
from callrec.service.domain_settings import ensure_domain
from callrec.service.ownership import DataLock
from callrec.service.sanity import EXIT_REFUSED, StartRefused, cannot_listen
from callrec.service.webhooks import public_base

if TYPE_CHECKING:
    from callrec.service.pipeline import Service

log = logging.getLogger("callrec.serve")
RESTART_DELAY_S = 1.0


def bootstrap(ctx: Context) -> str | None:
    """Make sure the ``default`` domain and an admin key exist; returns a new admin key to print once.
    A new ``CALLREC_ADMIN_KEY`` revokes the key the previous value set (``queries.ensure_admin_key``)."""
    now = ctx.clock.now()
    with transaction(ctx.sessions) as s:
        ensure_domain(s, queries.DEFAULT_DOMAIN, now)
        return queries.ensure_admin_key(s, ctx.config.admin_key, now)


@dataclass
class Child:
    """One supervised child process; ``pass_fds`` are kept open in it (the data folder's lock)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    last_line: str = ""
    _relay_thread: threading.Thread | None = None

    def start(self) -> None:
        self.last_line = ""
        self.proc = subprocess.Popen(self.argv, env=self.env, stderr=subprocess.PIPE, pass_fds=self.pass_fds)
        self._relay_thread = threading.Thread(
            target=self._relay, args=(self.proc,), daemon=True, name=f"relay-{self.name}"
        )
        self._relay_thread.start()

    def last_words(self, timeout_s: float = 2.0) -> str:
        """The last line the (ended) child wrote: why it ended, for a child that refused to run."""
        if self._relay_thread is not None:
            self._relay_thread.join(timeout_s)
        return self.last_line

    def _relay(self, proc: subprocess.Popen[bytes]) -> None:
        # the child's log goes on to ours; its ready line tells us it listens
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            if _is_ready(line):
                self.ready.set()
            if line.strip():
                self.last_line = line.strip()
            sys.stderr.write(line)
            sys.stderr.flush()


def _is_ready(line: str) -> bool:
    return (
        "callrec record: listening on" in line
        or ("callrec worker:" in line and "mixing processes" in line)
        or "callrec capture: reading" in line
    )


class ChildFailed(StartRefused):
    """A child exited with ``EXIT_REFUSED``: starting it again would fail the same way."""


class Supervisor:
    """Starts the children, restarts one that dies, and stops them all (SIGTERM, then SIGKILL).

    A child that exits with ``EXIT_REFUSED`` (its address is taken, its configuration is wrong) is not
    started again: ``failed`` is set, with the reason in ``failure``, and serve stops.

    Every child is started, and started again, from the supervisor's own thread, which ends only after
    ``stop`` has reaped them all. The children ask the kernel for SIGKILL when their parent dies
    (``PR_SET_PDEATHSIG``), and the kernel means the parent *thread*: a thread that ended earlier would
    take its children with it, in the middle of serve's orderly stop.
    """

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.failed = threading.Event()
        self.failure = ""
        self._stopping = threading.Event()
        self._reaped = threading.Event()
        self._lock = threading.Lock()  # starting a child and stopping them all exclude each other
        self._thread = threading.Thread(target=self._watch, daemon=True, name="callrec-supervisor")

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait for each child's ready line (logging the late ones), or for a child that refused to run."""
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            while not child.ready.wait(0.05):
                if self.failed.is_set():
                    return
                if time.monotonic() > deadline:
                    log.error("%s did not report ready within %.0f s", child.name, timeout_s)
                    break

    def _watch(self) -> None:
        try:
            with self._lock:
                for child in self.children:
                    if not self._stopping.is_set():
                        child.start()
            while not self._stopping.wait(0.5) and not self.failed.is_set():
                for child in self.children:
                    self._check(child)
        except Exception as exc:  # noqa: BLE001 - serve must stop rather than run unsupervised
            log.exception("the supervisor failed")
            self.failure = f"the supervisor failed: {exc}"
            self.failed.set()
        finally:
            self._reaped.wait()  # the children die with this thread: it outlives them

    def _check(self, child: Child) -> None:
        proc = child.proc
        if proc is None or proc.poll() is None or self._stopping.is_set() or self.failed.is_set():
            return
        if proc.returncode == EXIT_REFUSED:
            said = re.sub(r"^callrec( \w+)?: (error: )?", "", child.last_words())
            self.failure = f"the {child.name} cannot run: {said or f'it exited with {EXIT_REFUSED}'}"
            self.failed.set()
            return
        log.error("%s exited with %s; starting it again", child.name, proc.returncode)
        if self._stopping.wait(RESTART_DELAY_S):
            return
        with self._lock:
            if not self._stopping.is_set():
                child.restarts += 1
                child.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        with self._lock:
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
        for child in self.children:
            child.last_words()  # its last log lines reach ours before serve ends
        self._reaped.set()
        if self._thread.is_alive():
            self._thread.join(5)


def children_for(
    rec: RecorderConfig, service: ServiceConfig, *, record: bool, work: bool, lock: DataLock | None = None
) -> list[Child]:
    """The recorder and worker children; with ``lock``, they share this process's data folder and die with
    it."""
    env = dict(os.environ)
    env["CALLREC_DATA"] = str(service.data_dir)
    env["CALLREC_SECRET_KEY"] = service.secret_key
    if service.database_url:
        env["CALLREC_DATABASE_URL"] = service.database_url
    if service.queue_url:
        env["CALLREC_QUEUE_URL"] = service.queue_url
    # the worker writes links and URLs into webhooks: it must know where the API answers (--http or the URL)
    env["CALLREC_PUBLIC_URL"] = public_base(service)
    pass_fds: tuple[int, ...] = ()
    if lock is not None:
        env.update(lock.child_env())
        pass_fds = (lock.fd,)
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
        for name, nets in rec.allow_domains.items():
            argv += ["--allow-domain", f"{name}={','.join(map(str, nets))}"]
        if rec.max_sessions_per_source:
            argv += ["--max-sessions-per-source", str(rec.max_sessions_per_source)]
        if rec.media_address:
            argv += ["--media-address", rec.media_address]
        for spool in rec.rtpengine_spools:
            argv += ["--rtpengine-spool", str(spool)]
        children.append(Child("recorder", argv, env, pass_fds))
    if rec.captures:
        # one capture process for every interface: a call seen on two of them is one tape
        argv = exe + ["capture", "--service", "--data", str(service.data_dir)]
        argv += ["--idle-timeout", str(rec.idle_timeout_s)]
        for interface in rec.captures:
            argv += ["--interface", interface]
        children.append(Child("capture", argv, env, pass_fds))
    if work:
        children.append(Child("worker", exe + ["worker", "--workers", str(service.workers)], env, pass_fds))
    return children


def listen_http(host: str, port: int) -> socket.socket:
    """The API's socket, bound before anything else starts: a taken port is one line, not a stack trace
    after the children are up."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise cannot_listen(host, port, "http", exc) from exc
    return sock


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
    """Run until SIGTERM or SIGINT. Raises ``StartRefused`` when the data folder is in use, the HTTP
    address is taken, or a child cannot run (``ChildFailed``): the children are stopped by then. A weak
    ``CALLREC_ADMIN_KEY`` is refused (``ConfigError``) before anything starts."""
    queries.check_admin_key(service.admin_key)
    lock = DataLock.acquire(service.data_dir, "callrec serve")
    try:
        http = listen_http(service.http_host, service.http_port)
        try:
            service.http_port = int(http.getsockname()[1])  # port 0: the one the kernel picked
            _serve(rec, service, http, lock, record=record, work=work)
        finally:
            http.close()
    finally:
        lock.release()


def _serve(
    rec: RecorderConfig, service: ServiceConfig, http: socket.socket, lock: DataLock, *, record: bool, work: bool
) -> None:
    from callrec.jobs.worker import build
    from callrec.service.outbox import TapeOutbox

    built = build(service)
    # children must find the same secret key without racing to create it
    service.secret_key = service.secret_key or (service.data_dir / "secret.key").read_text().strip()
    new_key = bootstrap(built.ctx)
    if new_key:
        print(f"callrec serve: admin API key (shown once, keep it): {new_key}", flush=True)
    supervisor = Supervisor(children_for(rec, service, record=record, work=work, lock=lock))
    supervisor.start()
    # uploads this host accepted while storage was down, and tapes any earlier run left, reach storage
    outbox = TapeOutbox(built.pipeline)
    outbox.start()
    try:
        supervisor.wait_ready(30)
        if not supervisor.failed.is_set():
            _run_api(built, supervisor, http, rec, service, record=record)
    finally:
        outbox.stop()
        supervisor.stop()
        built.close()
    if supervisor.failed.is_set():
        raise ChildFailed(supervisor.failure)


def _run_api(
    built: Service, supervisor: Supervisor, http: socket.socket, rec: RecorderConfig, service: ServiceConfig, *,
    record: bool,
) -> None:  # fmt: skip
    """Serve the HTTP API on ``http`` until SIGTERM/SIGINT, or until a child cannot run."""
    import asyncio

    from callrec.app import create_app

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
            await asyncio.sleep(0.05)
        print("callrec serve: ready: " + ", ".join(parts), file=sys.stderr, flush=True)

    async def watch() -> None:
        # a child that cannot run stops serve (the supervisor does not start it again)
        while not supervisor.failed.is_set():
            await asyncio.sleep(0.1)
        server.should_exit = True

    async def main() -> None:
        tasks = [asyncio.create_task(announce()), asyncio.create_task(watch())]
        await server.serve(sockets=[http])
        for task in tasks:
            task.cancel()

    asyncio.run(main())
