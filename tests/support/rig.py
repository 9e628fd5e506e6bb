"""A multi-host rig: real ``callrec`` processes on hosts that share no disk, and faults to throw at them.

Each host is a Linux network namespace (its own address on a bridge, its own ports) plus a private mount
namespace (its own disk) and UTS namespace (its own host name, which is how workers sign their jobs)::

    root namespace (the test)                      host "w1" (netns crXXXX-w1)
      bridge crbrXXXX 10.R.0.1/24  <── veth ──>      eth0 10.R.0.N/24, default via 10.R.0.1
      FaultProxy 10.R.0.1:P1 ─> 127.0.0.1:5432       sees RIG/disks/w1 at RIG/data, and no other disk
      FaultProxy 10.R.0.1:P2 ─> 127.0.0.1:6379       python -m callrec worker --workers 1
      FaultProxy 10.R.0.1:P3 ─> moto on 127.0.0.1

Hosts reach PostgreSQL, Redis and S3 only through the proxies, so the test cuts any of them
(``rig.s3.mode = "refuse"``) and restores it. The test itself inspects every disk from outside
(``RIG/disks/<host>``), reads the database and the bucket directly (not through the proxies), and calls
each API host at its own address. ``Rig`` is a context manager: every process (by process group),
namespace, link, proxy, the moto server, the database and the queue's Redis keys are removed on exit,
whatever happened.

Needs root (namespaces, ``tc``) and PostgreSQL and Redis on 127.0.0.1; ``tests/multihost/conftest.py``
skips (or fails under CI) without them.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import io
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dpkt
import httpx
import numpy as np
import psycopg
from cryptography.fernet import Fernet

from tests.support import synth
from tests.support.faultproxy import FaultProxy
from tests.support.s3server import MotoServer

T = TypeVar("T")

# host name -> role; the operator's set-up of the issue: a recorder+API host, an API host, two workers
HOSTS = {"rec": "rec", "api": "api", "w1": "worker", "w2": "worker"}
API_HOSTS = ("rec", "api")
WORKER_HOSTS = ("w1", "w2")
HTTP_PORT = 8080
SIP_PORT = 5060
RTP_PORTS = (30000, 30199)
BUCKET = "callrec-multihost"
PREFIX = "callrec/"
PG = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.25
# short timings, the same on every host
TIMINGS = {
    "CALLREC_LEASE_S": "3",
    "CALLREC_SWEEP_INTERVAL_S": "1",
    "CALLREC_REQUEUE_AFTER_S": "3",
    "CALLREC_BACKOFF_BASE_S": "0.5",
    "CALLREC_BACKOFF_MAX_S": "5",
}
# choosing a subnet and making the bridge is serialised between rigs (parallel pytest workers)
LOCK_FILE = Path("/tmp/callrec-multihost.lock")
# what a host runs first, in its fresh mount and UTS namespaces: its name, its disk at RIG/data, and every
# other disk hidden under an empty tmpfs; then the command
ENTER_HOST = (
    'hostname "$1" && mount --bind "$2" "$3" && mount -t tmpfs -o size=1m,mode=0755 rigdisks "$4"'
    ' && shift 4 && exec "$@"'
)
TAPE_FILES = ("media.pcap", "call.json")
LOG_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
READY_LINES = {"rec": "callrec serve: ready:", "api": "callrec serve: ready:", "worker": "callrec worker:"}
# environment a host must not inherit from the test: its own settings, and proxies that would swallow
# its requests to 10.R.0.1
DROPPED_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def run(argv: list[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a command, output captured; a failure names the command and says what it printed."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {(done.stderr or done.stdout).strip()}")
    return done


def wait_until(check: Callable[[], T | None], *, timeout: float, what: str, every: float = POLL_S,
               explain: Callable[[], str] | None = None) -> T:  # fmt: skip
    """Poll ``check`` until it returns something true; fail after ``timeout`` seconds (bounded in count too)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / every) + 10):
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(every)
    detail = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")


class Host:
    """One machine of the rig: its namespaces, its disk, and the callrec process it runs (one at a time)."""

    def __init__(self, rig: Rig, name: str, role: str, number: int) -> None:
        self.rig = rig
        self.name = name
        self.role = role  # the role it runs unless told otherwise
        self.ip = rig.address(number)
        self.netns = f"{rig.tag}-{name}"
        self.veth = f"{rig.tag}-{name}"  # the root namespace's end of its link; "eth0" inside
        self.disk = rig.disks / name
        self.log_path = rig.logs / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.running_role = ""
        self.running_env: dict[str, str] = {}
        self.paused = False
        self._log_from = 0
        self._client: httpx.Client | None = None

    def __repr__(self) -> str:
        return f"Host({self.name}, {self.ip}, {self.running_role or 'stopped'})"

    # --- what it runs --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{HTTP_PORT}"

    @property
    def api(self) -> httpx.Client:
        """An admin client of this host's HTTP API (only API hosts have one)."""
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.url, headers={"Authorization": f"Bearer {self.rig.admin_key}"}, timeout=30.0,
                trust_env=False,
            )  # fmt: skip
        return self._client

    def command(self, *argv: str) -> list[str]:
        """``argv`` as run on this host: in its network namespace, with its own disk and host name."""
        return [
            "ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts", "--propagation", "private",
            "sh", "-c", ENTER_HOST, "rig-host", self.name, str(self.disk), str(self.rig.data), str(self.rig.disks),
            *argv,
        ]  # fmt: skip

    def callrec_argv(self, role: str) -> list[str]:
        exe = [sys.executable, "-m", "callrec"]
        http = ["--http", f"{self.ip}:{HTTP_PORT}"]
        if role == "rec":
            return exe + ["serve", "--no-work", *http, "--listen", f"{self.ip}:{SIP_PORT}",
                          "--rtp-ports", f"{RTP_PORTS[0]}-{RTP_PORTS[1]}", "--allow", self.rig.subnet]  # fmt: skip
        if role == "api":
            return exe + ["serve", "--no-record", "--no-work", *http]
        if role == "worker":
            return exe + ["worker", "--workers", "1"]
        raise ValueError(f"unknown role {role!r}")

    def run(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """A one-off command on this host (to check what it sees)."""
        return run(self.command(*argv), check=False, timeout=timeout)

    # --- its process ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, role: str = "", env: dict[str, str] | None = None, *, wait: bool = True) -> Host:
        """Start ``callrec`` in ``role`` (its own by default) with ``env`` added to the rig's; a new process group."""
        if self.running:
            raise AssertionError(f"{self.name} runs already")
        role = role or self.role
        env = dict(env or {})
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} {self.name}: start as {role} {env or ''}\n".encode())
            log.flush()
            self._log_from = log.tell()
            self.proc = subprocess.Popen(
                self.command(*self.callrec_argv(role)), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=self.rig.host_env(env), start_new_session=True,
            )  # fmt: skip
        self.running_role, self.running_env, self.paused = role, env, False
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        marker = READY_LINES[self.running_role]

        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise AssertionError(f"{self.name} exited ({code}) while starting:\n{self.log()[-3000:]}")
            return marker in self.log()

        wait_until(ready, timeout=timeout, what=f"{self.name} to be ready", every=0.1,
                   explain=lambda: self.log()[-3000:])  # fmt: skip
        if self.running_role in API_HOSTS:
            wait_until(self._healthy, timeout=30, what=f"{self.name} to answer /healthz",
                       explain=lambda: self.log()[-3000:])  # fmt: skip

    def _healthy(self) -> bool:
        try:
            return self.api.get("/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group this host's process started in."""
        assert self.proc is not None, f"{self.name} has no process"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group; after SIGKILL, wait for the process to be gone."""
        self.send_signal(sig)
        if sig == signal.SIGKILL:
            assert self.proc is not None
            self.proc.wait(STOP_TIMEOUT_S)
            self.running_role = ""

    def pause(self) -> None:
        """SIGSTOP every process of the host: it freezes, holding what it holds."""
        self.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> int | None:
        """SIGTERM (as an operator would), then SIGKILL to the group after STOP_TIMEOUT_S; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            self.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.note(f"did not stop within {STOP_TIMEOUT_S:g} s of SIGTERM; SIGKILL")
        # whatever is left of the group (children of a killed parent) goes too
        self.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT_S)
        self.running_role, self.paused = "", False
        return proc.returncode

    # --- what it says --------------------------------------------------------------------------------

    def log(self, everything: bool = False) -> str:
        """The log of the current process (of every process this host ran with ``everything``)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(0 if everything else self._log_from)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def note(self, text: str) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} rig: {text}\n".encode())

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- its disk ------------------------------------------------------------------------------------

    def tape_folders(self) -> list[Path]:
        """Every tape on this host's disk: a folder under ``tapes`` holding a tape's file (empty folders, and
        the recorder's own bookkeeping, do not count)."""
        root = self.disk / "tapes"
        if not root.is_dir():
            return []
        return sorted({p.parent for p in root.rglob("*") if p.name in TAPE_FILES and p.is_file()})


class Rig:
    """The hosts, their network, the shared servers and the proxies to them; see the module docstring."""

    def __init__(self, root: Path, hosts: dict[str, str] | None = None) -> None:
        self.root = root
        token = secrets.token_hex(2)
        self.tag = f"cr{token}"  # netns and veth names: crXXXX-<host>, at most 15 characters
        self.bridge = f"crbr{token}"
        self.net = 0  # the R of 10.R.0.0/24, chosen at set-up
        self.data = root / "data"
        self.disks = root / "disks"
        self.logs = root / "logs"
        self.admin_key = "cr_mh_admin_" + secrets.token_hex(12)
        self.secret_key = Fernet.generate_key().decode()
        self.queue_name = f"callrec-mh-{secrets.token_hex(6)}"
        self.db_name = f"callrec_mh_{secrets.token_hex(6)}"
        self.moto = MotoServer()
        self.pg: FaultProxy | None = None
        self.redis: FaultProxy | None = None
        self.s3: FaultProxy | None = None
        self.shaped: set[tuple[str, str]] = set()
        self._names = dict(hosts or HOSTS)
        self.hosts: dict[str, Host] = {}
        self._undo: list[tuple[str, Callable[[], object]]] = []
        self._db: psycopg.Connection[tuple[Any, ...]] | None = None
        self._db_lock = threading.Lock()
        self.started_at = time.monotonic()

    # --- addresses -----------------------------------------------------------------------------------

    @property
    def gateway(self) -> str:
        """The bridge's address in the root namespace: where the hosts find PostgreSQL, Redis and S3."""
        return f"10.{self.net}.0.1"

    @property
    def subnet(self) -> str:
        return f"10.{self.net}.0.0/24"

    def address(self, number: int) -> str:
        return f"10.{self.net}.0.{number}"

    def host(self, name: str) -> Host:
        return self.hosts[name]

    # --- set-up and tear-down ------------------------------------------------------------------------

    def __enter__(self) -> Rig:
        try:
            self._set_up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _later(self, what: str, undo: Callable[[], object]) -> None:
        self._undo.append((what, undo))

    def _set_up(self) -> None:
        for folder in (self.data, self.disks, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self._network()
        for host in self.hosts.values():
            host.disk.mkdir(parents=True, exist_ok=True)
        self.moto.start()
        self._later("moto", self.moto.stop)
        self.moto.make_bucket(BUCKET)
        self.pg = self._proxy("PostgreSQL", *PG, http=False)
        self.redis = self._proxy("Redis", *REDIS, http=False)
        self.s3 = self._proxy("S3", "127.0.0.1", self.moto.port, http=True)  # notes each request (s3_puts)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self._later("database", self._drop_database)
        self._later("redis keys", self._drop_queue)
        # first of all at the end: the hosts go while the servers and the network they use are still there
        self._later("hosts", self.stop_all)

    def _proxy(self, what: str, host: str, port: int, *, http: bool) -> FaultProxy:
        # graceful: a host on a slow link must get every byte a server sent before closing
        proxy = FaultProxy(host, port, host=self.gateway, http=http, graceful_close=True).start()
        self._later(f"{what} proxy", proxy.stop)
        return proxy

    def _network(self) -> None:
        LOCK_FILE.touch(exist_ok=True)
        with LOCK_FILE.open("r") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.net = _free_net()
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            self._later(f"bridge {self.bridge}", lambda: run(["ip", "link", "del", self.bridge], check=False))
            run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])
        for number, (name, role) in enumerate(self._names.items(), start=2):
            host = Host(self, name, role, number)
            self.hosts[name] = host
            run(["ip", "netns", "add", host.netns])
            self._later(f"netns {host.netns}", functools.partial(run, ["ip", "netns", "del", host.netns], check=False))
            run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns])
            self._later(f"veth {host.veth}", functools.partial(run, ["ip", "link", "del", host.veth], check=False))
            run(["ip", "link", "set", host.veth, "master", self.bridge])
            run(["ip", "link", "set", host.veth, "up"])
            run(["ip", "-n", host.netns, "link", "set", "lo", "up"])
            run(["ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0"])
            run(["ip", "-n", host.netns, "link", "set", "eth0", "up"])
            run(["ip", "-n", host.netns, "route", "add", "default", "via", self.gateway])

    def close(self) -> None:
        """Undo everything done so far, newest first; one failing step does not stop the others."""
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:  # noqa: BLE001 - tear-down goes on; the rest must be removed too
                print(f"multihost rig: tear-down of {what} failed: {exc}", file=sys.stderr)
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()
            self._db = None

    def _drop_database(self) -> None:
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()
            self._db = None
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def _drop_queue(self) -> None:
        import redis

        client = redis.Redis(host=REDIS[0], port=REDIS[1])
        try:
            for key in client.scan_iter(f"*{self.queue_name}*"):
                client.delete(key)
        finally:
            client.close()

    # --- the hosts' configuration --------------------------------------------------------------------

    def host_env(self, extra: dict[str, str]) -> dict[str, str]:
        """Every host's environment: the shared servers through the proxies, one secret key, short timings."""
        assert self.pg is not None and self.redis is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_") and k.lower() not in DROPPED_ENV}
        env.update(
            CALLREC_DATABASE_URL=f"postgresql://postgres@{self.gateway}:{self.pg.port}/{self.db_name}",
            CALLREC_QUEUE_URL=f"redis://{self.gateway}:{self.redis.port}/0",
            CALLREC_QUEUE_NAME=self.queue_name,
            CALLREC_SECRET_KEY=self.secret_key,
            CALLREC_ADMIN_KEY=self.admin_key,
            CALLREC_DATA=str(self.data),
            CALLREC_MIN_FREE_MB="1",
            PYTHONUNBUFFERED="1",
        )
        env.update(TIMINGS)
        env.update(self.operator_env())
        env.update(extra)
        return env

    def operator_env(self) -> dict[str, str]:
        """What the operator sets so the hosts may use this rig's S3 (on a private address): the egress
        allow-list admits the rig's subnet (webhook receivers and tenant S3 endpoints are refused there
        by default)."""
        return {"CALLREC_EGRESS_ALLOW": self.subnet}

    def storage_settings(self) -> dict[str, object]:
        assert self.s3 is not None
        return {
            "kind": "s3", "endpoint_url": f"http://{self.gateway}:{self.s3.port}", "bucket": BUCKET,
            "prefix": PREFIX, "region": "us-east-1", "access_key_id": "testing", "secret_access_key": "testing",
            "addressing_style": "path",
        }  # fmt: skip

    def configure_storage(self) -> None:
        """The ``default`` domain stores tapes and recordings in the rig's bucket, through the S3 proxy."""
        answer = self.hosts["api"].api.put(
            "/api/v1/domains/default/settings", json={"storage": self.storage_settings()}
        )
        assert answer.status_code == 200, f"storage settings refused: {answer.status_code} {answer.text[:500]}"

    def start_all(self) -> None:
        """Every host in its own role, started at once; then the storage settings."""
        for host in self.hosts.values():
            host.start(wait=False)
        for host in self.hosts.values():
            host.wait_ready()
        self.configure_storage()

    def stop_all(self) -> None:
        """SIGTERM every host at once, then each one's whole process group goes (SIGKILL after a while)."""
        for host in self.hosts.values():
            if host.running and host.proc is not None:
                host.send_signal(signal.SIGCONT)
                host.proc.send_signal(signal.SIGTERM)
        for host in self.hosts.values():
            try:
                host.stop()
            finally:
                host.close()

    def reset(self) -> None:
        """Back to the normal state: proxies passing, no shaping, every host running its own role."""
        assert self.pg is not None and self.redis is not None and self.s3 is not None
        for proxy in (self.pg, self.redis, self.s3):
            if proxy.mode != "pass":
                proxy.mode = "pass"
        for name, direction in list(self.shaped):
            self.unshape(name, direction)
        restart = []
        for host in self.hosts.values():
            if host.running and host.paused:
                host.resume()
            if not host.running or host.running_role != host.role or host.running_env:
                host.stop()
                host.start(wait=False)
                restart.append(host)
        for host in restart:
            host.wait_ready()

    # --- faults --------------------------------------------------------------------------------------

    def shape(self, name: str, rate: str = "1mbit", direction: str = "up") -> None:
        """Limit a host's link: ``up`` is what it sends (its eth0), ``down`` what it receives (the bridge port)."""
        host = self.hosts[name]
        tbf = ["root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"]
        if direction == "up":
            run(["ip", "netns", "exec", host.netns, "tc", "qdisc", "replace", "dev", "eth0", *tbf])
        elif direction == "down":
            run(["tc", "qdisc", "replace", "dev", host.veth, *tbf])
        else:
            raise ValueError(f"direction {direction!r} is not up or down")
        self.shaped.add((name, direction))
        host.note(f"link {direction} limited to {rate}")

    def unshape(self, name: str, direction: str = "up") -> None:
        host = self.hosts[name]
        if direction == "up":
            run(["ip", "netns", "exec", host.netns, "tc", "qdisc", "del", "dev", "eth0", "root"], check=False)
        else:
            run(["tc", "qdisc", "del", "dev", host.veth, "root"], check=False)
        self.shaped.discard((name, direction))
        host.note(f"link {direction} no longer limited")

    def note(self, text: str) -> None:
        """A line in every host's log (where a fault starts and ends) and on the test's output."""
        print(f"[rig {time.monotonic() - self.started_at:7.1f} s] {text}", flush=True)
        for host in self.hosts.values():
            host.note(text)

    # --- the API -------------------------------------------------------------------------------------

    def upload(self, host: str, capture: bytes, *, key: str = "", timeout: float = 60.0) -> httpx.Response:
        """POST a capture to ``host``'s /api/v1/uploads (with an ``Idempotency-Key`` when given)."""
        headers = {"Idempotency-Key": key} if key else {}
        files = {"file": ("capture.pcap", capture, "application/vnd.tcpdump.pcap")}
        return self.hosts[host].api.post("/api/v1/uploads", files=files, headers=headers, timeout=timeout)

    def other_api_host(self, name: str) -> str:
        """An API host that is not ``name`` (to read what ``name`` took in from somewhere else)."""
        return next(h for h in API_HOSTS if h != name)

    # --- looking behind the service's back: the database and the bucket, not through the proxies ----

    def sql(self, query: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        with self._db_lock:
            if self._db is None or self._db.closed:
                self._db = psycopg.connect(
                    f"postgresql://postgres@{PG[0]}:{PG[1]}/{self.db_name}", autocommit=True, connect_timeout=5
                )
            try:
                return list(self._db.execute(query, params).fetchall())
            except psycopg.OperationalError:
                self._db.close()
                self._db = None
                raise

    def recordings(self, call_ids: list[str]) -> list[RecordingRow]:
        """Every call with one of these SIP Call-IDs, with its recordings (one row each, or one without)."""
        rows = self.sql(
            "SELECT c.sip_call_id, c.id, r.id, r.state, r.reason, r.storage_key, r.bytes, r.worker "
            "FROM calls c LEFT JOIN recordings r ON r.call_id = c.id WHERE c.sip_call_id = ANY(%s) "
            "ORDER BY c.sip_call_id, r.created_at",
            (call_ids,),
        )
        return [RecordingRow(*row) for row in rows]

    def tapes_of(self, call_ids: list[str]) -> dict[str, list[str]]:
        """The tapes of these calls (SIP Call-IDs) still on a host's disk, per host: found by the folder name
        the call was registered with, or by the Call-ID in the folder's call.json."""
        refs = {ref for (ref,) in self.sql("SELECT tape_ref FROM calls WHERE sip_call_id = ANY(%s)", (call_ids,))}
        wanted = set(call_ids)
        found: dict[str, list[str]] = {}
        for host in self.hosts.values():
            for folder in host.tape_folders():
                try:
                    ids = set(json.loads((folder / "call.json").read_text("utf-8")).get("call_ids", []))
                except (OSError, ValueError, AttributeError):
                    ids = set()
                if folder.name in refs or ids & wanted:
                    found.setdefault(host.name, []).append(str(folder))
        return found

    def jobs(self, recording_id: str) -> list[JobRow]:
        rows = self.sql(
            "SELECT id, kind, state, worker, error FROM jobs WHERE recording_id = %s ORDER BY id", (recording_id,)
        )
        return [JobRow(*row) for row in rows]

    def s3_objects(self, under: str = "") -> dict[str, int]:
        """Every object of the bucket under ``PREFIX + under``: key -> size (read from moto directly)."""
        client = self.moto.client()
        found: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX + under):
            for item in page.get("Contents", []):
                found[item["Key"]] = item["Size"]
        return found

    def s3_puts(self, key_part: str) -> int:
        """How many PUT requests for an object whose key holds ``key_part`` went through the S3 proxy."""
        assert self.s3 is not None
        return sum(1 for method, target, _ in list(self.s3.requests) if method == "PUT" and key_part in target)

    def diagnose(self, lines: int = 15) -> str:
        """The last distinct warnings and errors of every host (and the rig's notes), for a failure message."""
        out = []
        for host in self.hosts.values():
            counts: dict[str, int] = {}
            for line in host.log(everything=True).splitlines():
                if any(w in line for w in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback", "rror:", "=== ")):
                    # the same message again and again (a retry loop) is shown once, with how often
                    text = LOG_TIME.sub("", line)[:400]
                    counts[text] = counts.pop(text, 0) + 1
            state = "running" if host.running else f"not running ({host.proc.returncode if host.proc else '-'})"
            out.append(f"--- {host.name} ({state}, log {host.log_path}):")
            out += [f"{text}" + (f"  (x{n})" if n > 1 else "") for text, n in list(counts.items())[-lines:]]
        return "\n".join(out)


def _free_net() -> int:
    """An R whose 10.R.0.0/24 meets no address or route of the root namespace."""
    taken: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for line in run(["ip", "-4", "-o", "addr"]).stdout.splitlines() + run(["ip", "-4", "route"]).stdout.splitlines():
        for word in line.split():
            with contextlib.suppress(ValueError):
                if "/" in word or word.count(".") == 3:
                    taken.append(ipaddress.ip_network(word, strict=False))
    choices = list(range(100, 250))
    secrets.SystemRandom().shuffle(choices)
    for r in choices:
        net = ipaddress.ip_network(f"10.{r}.0.0/24")
        if not any(net.overlaps(t) for t in taken):
            return r
    raise RuntimeError("no free 10.R.0.0/24 subnet for the multi-host rig")


@dataclass(frozen=True)
class RecordingRow:
    sip_call_id: str
    call: str
    id: str | None
    state: str | None
    reason: str | None
    storage_key: str | None
    bytes: int | None
    worker: str | None

    @property
    def worker_host(self) -> str:
        return (self.worker or "").partition(":")[0]


@dataclass(frozen=True)
class JobRow:
    id: int
    kind: str
    state: str
    worker: str
    error: str

    @property
    def host(self) -> str:
        return self.worker.partition(":")[0]


# --- captures ------------------------------------------------------------------------------------------


def capture(call_id: str, seconds: float = 2.0) -> bytes:
    """A pcap of one SIP call with ``seconds`` of PCMA both ways (random voice frames, made fast).

    About 23 kB per second of call: 260 s make a ~6 MB capture.
    """
    a_port, b_port, t = 20000, 30000, 1_700_000_000.0
    cid = call_id
    offer, answer = synth.sdp(synth.A_IP, a_port, ["PCMA"]), synth.sdp(synth.B_IP, b_port, ["PCMA"])
    a, b = synth.A_IP, synth.B_IP
    datagrams = [
        (t - 0.5, a, 5060, b, 5060, synth.sip(f"INVITE sip:200@{b} SIP/2.0", cid, "1 INVITE", offer)),
        (t - 0.1, b, 5060, a, 5060, synth.sip("SIP/2.0 200 OK", cid, "1 INVITE", answer, "xyz")),
        (t - 0.05, a, 5060, b, 5060, synth.sip(f"ACK sip:200@{b} SIP/2.0", cid, "1 ACK", to_tag="xyz")),
    ]
    frames = np.random.default_rng(len(call_id)).integers(0, 256, size=(64, 160), dtype=np.uint8)
    for i in range(int(seconds / 0.02)):
        for ssrc, src, sport, dst, dport in ((1, a, a_port, b, b_port), (2, b, b_port, a, a_port)):
            header = bytes([0x80, 8]) + (i & 0xFFFF).to_bytes(2, "big") + (i * 160 & 0xFFFFFFFF).to_bytes(4, "big")
            payload = header + (0x1000 + ssrc).to_bytes(4, "big") + frames[(7 * i + ssrc) % 64].tobytes()
            datagrams.append((t + i * 0.02, src, sport, dst, dport, payload))
    end = t + seconds + 0.1
    datagrams += [
        (end, a, 5060, b, 5060, synth.sip(f"BYE sip:200@{b} SIP/2.0", cid, "2 BYE", to_tag="xyz")),
        (end + 0.01, b, 5060, a, 5060, synth.sip("SIP/2.0 200 OK", cid, "2 BYE", to_tag="xyz")),
    ]
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, nano=False, linktype=dpkt.pcap.DLT_EN10MB)
    for n, (ts, src, sport, dst, dport, data) in enumerate(datagrams):
        writer.writepkt(synth.udp_frame(src, sport, dst, dport, data, n & 0xFFFF), ts=ts)
    return out.getvalue()


def new_call_id(stem: str) -> str:
    return f"mh-{stem}-{secrets.token_hex(5)}@test"


# --- a live SIPREC call ---------------------------------------------------------------------------------


def siprec_call(rig: Rig, host: str = "rec", seconds: float = 3.0) -> str:
    """A SIPREC session from the test (the SRC, at the bridge's address) into ``host``'s recorder: INVITE,
    ``seconds`` of RTP on two streams, BYE. Returns the dialog's Call-ID (the call's SIP Call-ID)."""
    from tests.support.sipclient import METADATA, Dialog, SipClient, answered_ports, rtp_packet

    target = rig.hosts[host]
    call_id = new_call_id("siprec")
    offer = "\r\n".join([
        "v=0", f"o=src 1 1 IN IP4 {rig.gateway}", "s=SIPREC", f"c=IN IP4 {rig.gateway}", "t=0 0",
        "m=audio 40000 RTP/AVP 8", "a=rtpmap:8 PCMA/8000", "a=label:1", "a=sendonly",
        "m=audio 40002 RTP/AVP 8", "a=rtpmap:8 PCMA/8000", "a=label:2", "a=sendonly",
    ]) + "\r\n"  # fmt: skip
    metadata = METADATA.replace("original-call", call_id)
    with SipClient((target.ip, SIP_PORT), "tcp") as client:
        dialog = Dialog(client, call_id=call_id)
        ok = dialog.call(sdp=offer, metadata=metadata)
        ports = answered_ports(ok)
        assert len(ports) == 2 and all(ports), f"the recorder answered ports {ports}"
        rtp = [_udp_socket(rig.gateway) for _ in ports]
        try:
            start = time.monotonic()
            frames = int(seconds / 0.02)
            for i in range(frames):
                for n, (sock, port) in enumerate(zip(rtp, ports, strict=True)):
                    payload = bytes((i * 7 + n * 13 + k) & 0xFF for k in range(160))
                    sock.sendto(rtp_packet(i, i * 160, 0x5000 + n, 8, payload, marker=i == 0), (target.ip, port))
                lag = start + (i + 1) * 0.02 - time.monotonic()
                if lag > 0:
                    time.sleep(lag)
        finally:
            for sock in rtp:
                sock.close()
        bye = dialog.bye()
        assert bye.status == 200, f"BYE answered {bye.status} {bye.reason}"
    return call_id


def _udp_socket(address: str) -> Any:
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    return sock


# --- watching the recordings while a scenario runs --------------------------------------------------------


@dataclass
class Watch:
    """Samples every recording's state in the background; keeps each recording's sequence of states."""

    rig: Rig
    every: float = 0.3
    history: dict[str, list[tuple[float, str, str]]] = field(default_factory=dict)  # rec id -> (t, state, worker)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Watch:
        self._thread = threading.Thread(target=self._run, name="rig-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        for _ in range(100_000):  # bounded; the test stops it long before
            if self._stop.is_set():
                return
            self.sample()
            self._stop.wait(self.every)

    def sample(self) -> None:
        try:
            rows = self.rig.sql("SELECT id, state, worker FROM recordings")
        except psycopg.Error as exc:
            self.errors.append(str(exc))
            return
        now = time.monotonic()
        for rec_id, state, worker in rows:
            seen = self.history.setdefault(rec_id, [])
            if not seen or seen[-1][1:] != (state, worker):
                seen.append((now, state, worker or ""))

    def states(self, rec_id: str) -> list[str]:
        return [state for _, state, _ in self.history.get(rec_id, [])]

    def problems(self, rec_ids: list[str]) -> list[str]:
        """Recordings that were ever ``failed``, or left ``completed`` once they had reached it."""
        out = []
        for rec_id in rec_ids:
            states = self.states(rec_id)
            if "failed" in states:
                out.append(f"{rec_id} was failed at some point: {' -> '.join(states)}")
            if "completed" in states and set(states[states.index("completed") :]) != {"completed"}:
                out.append(f"{rec_id} left completed again: {' -> '.join(states)}")
        return out


# --- the end of every scenario ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settled:
    call: str
    recording: str
    storage_key: str
    bytes: int
    jobs: list[JobRow]


def assert_settled(rig: Rig, expected: dict[str, str], *, timeout: float, watch: Watch | None = None,
                   deadline: float | None = None) -> dict[str, Settled]:  # fmt: skip
    """Every expected call (SIP Call-ID -> the host that took it in) is settled, as the issue asks:

    - each SIP Call-ID is exactly one call, with exactly one recording, ``completed`` (never ``failed``: a
      failure fails at once), completed exactly once (one ``store`` job done) and never un-completed;
    - exactly one S3 object per recording under the recordings, the size the recording says;
    - its audio downloads (200, every byte) from an API host other than the one that took the call in
      (no worker serves the API, so neither made it);
    - no tape is left on any host's local disk; every host still runs.

    Waits until ``deadline`` (a ``time.monotonic()`` value), or ``timeout`` seconds from now.
    """
    call_ids = list(expected)
    limit = deadline if deadline is not None else time.monotonic() + timeout

    def explain(rows: list[RecordingRow]) -> str:
        by_state: dict[str, int] = {}
        for row in rows:
            by_state[str(row.state)] = by_state.get(str(row.state), 0) + 1
        missing = [c for c in call_ids if c not in {r.sip_call_id for r in rows}]
        lines = [f"{len(call_ids)} calls expected; recordings by state: {by_state}; calls missing: {missing[:10]}"]
        lines += [f"  {r.sip_call_id} rec {r.id} {r.state} on {r.worker!r}: {(r.reason or '')[:300]}"
                  for r in rows if r.state != "completed"][:15]  # fmt: skip
        return "\n".join(lines) + "\n" + rig.diagnose()

    rows: list[RecordingRow] = []
    for _ in range(100_000):
        rows = rig.recordings(call_ids)
        failed = [r for r in rows if r.state == "failed"]
        if failed:
            raise AssertionError(f"{len(failed)} recording(s) failed\n{explain(rows)}")
        seen = {r.sip_call_id for r in rows}
        if seen >= set(call_ids) and all(r.state == "completed" for r in rows):
            break
        if time.monotonic() > limit:
            raise AssertionError(f"not settled in time\n{explain(rows)}")
        time.sleep(POLL_S)
    per_call: dict[str, list[RecordingRow]] = {}
    for row in rows:
        per_call.setdefault(row.sip_call_id, []).append(row)
    duplicates = {c: sorted({r.call for r in rs}) for c, rs in per_call.items() if len({r.call for r in rs}) != 1}
    assert not duplicates, f"SIP Call-IDs with more than one call: {duplicates}"
    several = {c: [r.id for r in rs] for c, rs in per_call.items() if len(rs) != 1}
    assert not several, f"calls with more than one recording: {several}"
    if watch is not None:
        watch.sample()
        problems = watch.problems([str(r.id) for r in rows])
        assert not problems, "\n".join(problems)
    objects = {key: size for key, size in rig.s3_objects("d/").items() if "/recordings/" in key}
    out: dict[str, Settled] = {}
    for call_id, (row,) in per_call.items():
        assert row.id and row.storage_key and row.bytes, row
        jobs = rig.jobs(row.id)
        stored = [j for j in jobs if j.kind == "store" and j.state == "done"]
        assert len(stored) == 1, f"{call_id}: recording {row.id} completed {len(stored)} times: {jobs}"
        mine = {key: size for key, size in objects.items() if row.id in key}
        assert mine == {PREFIX + row.storage_key: row.bytes}, (
            f"{call_id}: S3 objects of recording {row.id} (expected one, {PREFIX + row.storage_key}, "
            f"{row.bytes} bytes): {mine}"
        )
        out[call_id] = Settled(row.call, row.id, row.storage_key, row.bytes, jobs)
    for call_id, settled in out.items():
        reader = rig.other_api_host(expected[call_id])
        audio = rig.hosts[reader].api.get(f"/api/v1/recordings/{settled.recording}/audio", timeout=60)
        assert audio.status_code == 200, f"{call_id}: audio from {reader}: {audio.status_code} {audio.text[:300]}"
        assert len(audio.content) == settled.bytes, f"{call_id}: {len(audio.content)} bytes, not {settled.bytes}"
    # a tape is removed once it is in storage; give a hand-off that stores it a moment to remove its copy
    wait_until(lambda: not rig.tapes_of(call_ids), timeout=15, what="no tape of these calls left on any disk",
               explain=lambda: str(rig.tapes_of(call_ids)))  # fmt: skip
    down = [h.name for h in rig.hosts.values() if h.running_role and not h.running]
    assert not down, f"hosts whose callrec process ended by itself: {down}\n{rig.diagnose()}"
    return out


@contextlib.contextmanager
def fault(rig: Rig, proxy: FaultProxy, what: str, mode: str = "refuse") -> Iterator[None]:
    """``proxy`` in ``mode`` for the duration of the block; passing again afterwards, whatever happens."""
    rig.note(f"{what} {mode}")
    proxy.mode = mode
    try:
        yield
    finally:
        proxy.mode = "pass"
        rig.note(f"{what} back")


def hosts_log_tail(rig: Rig, names: tuple[str, ...] = tuple(HOSTS), chars: int = 2000) -> str:
    return "\n".join(f"--- {n}:\n{rig.hosts[n].log()[-chars:]}" for n in names if n in rig.hosts)


def require_tools() -> list[str]:
    """What the rig needs from this machine and lacks (empty when it can run)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("it needs root (network and mount namespaces, tc)")
    for tool in ("ip", "unshare", "tc", "mount", "sh", "hostname"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed")
    if not problems:
        probe = run(["unshare", "--net", "--mount", "--uts", "true"], check=False)
        if probe.returncode != 0:
            problems.append(f"namespaces cannot be made here: {probe.stderr.strip()}")
    return problems
