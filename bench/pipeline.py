"""Time the recording service from BYE to a stored recording, beside the offline mixer on the same tape.

Usage: python bench/pipeline.py [--calls 100] [--call-seconds 300] [--single 10] [--single-seconds 3]
                                [--workers N] [--repeat 3] [--parallel-tapes N] [--cpu 0] [--wait-quiet-s 30]
                                [--profile] [--workdir DIR] [--keep]

Starts a real ``callrec serve`` (SQLite, SqliteHuey, local storage, immediate schedule: the defaults) on a
temporary data folder, SIP/HTTP on 127.0.0.1 with free ports, ``--workers`` mixing processes, then:
  1. one call at a time: ``--single`` real SIPREC calls through the recorder (INVITE with SDP and
     rs-metadata, ``--single-seconds`` of PCMA RTP on both streams paced at 50 packets/s, BYE); per call the
     time from sending BYE until ``GET /api/v1/calls/{id}`` shows ``recording.state`` ``completed``, and
     where that time went, from the database's own stamps (recorder close, hand-off, queue pick-up, mix,
     store);
  2. a burst: ``--calls`` tapes of ``--call-seconds`` each (one made by ``tests/support/tapes.make_long_tape``,
     copied under new Call-IDs before the clock starts), opened in the database as the recorder does at
     INVITE, then all handed off at one instant through the recorder's own hand-off
     (``service.handoff.TapeHandOff``: one thread calling ``Pipeline.tape_closed``) run in this process against
     the service's database and queue; 100 real five-minute calls would take five minutes of RTP. Per call
     the time from that instant ("BYE") to ``recordings.completed_at``, the makespan, the CPU the worker
     processes used (``/proc/PID/stat`` of the worker's process tree, reaped children included), what else
     used the cores (``/proc/stat``), and the throughput: seconds of call audio per core-second (makespan x
     the cores the workers can use) and per worker CPU-second;
  3. the reference, same tape, same run, before the service starts: the offline mixer on one core
     (``--cpu``), best of ``--repeat`` -- ``callrec.mix.mix`` in this process (what a worker runs) and
     the ``callrec mix`` command (with its start-up) -- and ``callrec.mix`` in ``--workers`` forked processes
     over ``--parallel-tapes`` tapes (default 4 per worker): what the same cores give without the service.
Targets (the service issue): single call p95 under 2 s; the burst's audio seconds per core-second within
20 % of the offline mixer's x realtime on one core (ratio >= 0.80). Measured, not asserted.

On a shared machine other processes take cores: before the reference and the burst it waits up to
``--wait-quiet-s`` for the cores to be under 20 % busy, and it prints the CPU others used during the burst.
``--profile`` samples with py-spy (idle threads included, so waits show): the recorder's hand-off thread in
part 1, the mixing processes and the hand-off thread in part 2 (py-spy's own CPU shows as "others").
Every child is stopped at the end, on Ctrl-C or an error too: SIGTERM to ``callrec serve`` (which stops the
recorder and the workers), then SIGKILL to what is left of the session it was started in.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from callrec.files import tape  # noqa: E402
from callrec.media_limits import OutputOptions  # noqa: E402
from callrec.mix import mix  # noqa: E402
from tests.support.sipclient import (  # noqa: E402 - the SIPREC client the recorder's tests use
    HOST,
    Dialog,
    RtpSender,
    SipClient,
    answered_ports,
    free_rtp_range,
)
from tests.support.tapes import make_long_tape  # noqa: E402

PTIME_S = 0.02
FRAMES_PER_S = 50
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 60.0
SINGLE_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
API_POLL_S = 0.01
BURST_POLL_S = 0.25
BURST_PREFIX = "bench-burst-"  # the burst's Call-IDs and tape folders (a call is keyed by its folder name)


# -- the service under test -------------------------------------------------------------------------------


def free_port(kinds: tuple[int, ...] = (socket.SOCK_STREAM,)) -> int:
    """A port on 127.0.0.1 free for every socket kind in ``kinds`` (SIP listens on UDP and TCP)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, kinds[0]) as probe:
            probe.bind((HOST, 0))
            port = int(probe.getsockname()[1])
        try:
            for kind in kinds:
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind((HOST, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port found")


@dataclass
class Service:
    """A ``callrec serve`` child in a session of its own (Ctrl-C reaches only us; we stop it)."""

    data: Path
    workers: int
    log_path: Path
    http_port: int = 0
    sip: tuple[str, int] = ("", 0)
    key: str = ""
    command: str = ""
    proc: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    log_lines: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.http_port = free_port()
        self.sip = (HOST, free_port((socket.SOCK_DGRAM, socket.SOCK_STREAM)))
        first, last = free_rtp_range(200)
        exe = Path(sys.executable).parent / "callrec"
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "callrec"]
        cmd = [
            *base, "serve", "--data", str(self.data), "--http", f"{HOST}:{self.http_port}",
            "--listen", f"{HOST}:{self.sip[1]}", "--rtp-ports", f"{first}-{last}", "--workers", str(self.workers),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        threading.Thread(target=self._read_key, daemon=True).start()
        threading.Thread(target=self._read_log, daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (self.ready.is_set() and self.key):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = "".join(self.log_lines[-20:])
                raise RuntimeError(f"callrec serve did not come up (exit {self.proc.poll()}):\n{tail}")
            time.sleep(0.05)
        self.command = shlex.join(cmd)

    def _read_key(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            if "admin API key" in line:
                self.key = line.rsplit(":", 1)[1].strip()

    def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with self.log_path.open("w") as log:
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace")
                self.log_lines.append(line)
                log.write(line)
                log.flush()
                if "callrec serve: ready:" in line:
                    self.ready.set()

    def stop(self) -> None:
        """SIGTERM serve (it stops the recorder and the workers); SIGKILL its process group if it hangs."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"callrec serve did not stop in {STOP_TIMEOUT_S:.0f} s: killing it", file=sys.stderr)
                proc.kill()
                proc.wait()
        # whatever of the service is still alive in the session we gave it (serve died before its children,
        # or was killed) goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def child_pid(self, command: bytes) -> int:
        """The child running ``callrec COMMAND`` (``worker``: the Huey consumer, parent of the mixers)."""
        assert self.proc is not None
        for pid in children(self.proc.pid):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if command in argv:
                    return pid
        raise RuntimeError(f"callrec serve has no {command.decode()} child")

    def card(self, conn: http.client.HTTPConnection, call_id: str) -> dict[str, Any]:
        conn.request("GET", f"/api/v1/calls/{call_id}", headers={"Authorization": f"Bearer {self.key}"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET /api/v1/calls/{call_id}: {response.status} {body[:200]!r}")
        data: dict[str, Any] = json.loads(body)
        return data


# -- /proc: the worker tree's CPU ---------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float]:
    """(parent pid, CPU seconds of the process and of its children already reaped)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    rest = text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on; the name may hold spaces
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    return int(rest[1]), (utime + stime + cutime + cstime) / CLK_TCK


def _all_stats() -> dict[int, tuple[int, float]]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                out[int(entry.name)] = _stat(int(entry.name))
    return out


def children(pid: int) -> list[int]:
    return [p for p, (ppid, _) in _all_stats().items() if ppid == pid]


def tree_cpu_s(root: int) -> tuple[float, int]:
    """CPU seconds used so far by ``root`` and every descendant (living, or reaped by one), and the count."""
    stats = _all_stats()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        kids.setdefault(ppid, []).append(pid)
    total, count, todo = 0.0, 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            count += 1
        todo += kids.get(pid, [])
    return total, count


def machine_busy_s() -> tuple[float, float]:
    """CPU seconds the cores have run this machine's processes since boot (user, nice, system, irq, softirq),
    and the seconds the hypervisor gave them to someone else (steal)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


@dataclass
class CpuWindow:
    """Who used the cores over one stretch of the run, CPU seconds."""

    seconds: float
    machine: float
    workers: float
    worker_procs: int
    serve_rest: float  # serve itself (API), the recorder
    this: float  # this process (the burst's hand-off, the polling)
    steal: float  # the hypervisor's

    @property
    def others(self) -> float:
        return self.machine - self.workers - self.serve_rest - self.this


class CpuMeter:
    def __init__(self, serve_pid: int, worker_pid: int) -> None:
        self.serve_pid, self.worker_pid = serve_pid, worker_pid
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float, int, float, float, float]:
        workers, procs = tree_cpu_s(self.worker_pid)
        serve, _ = tree_cpu_s(self.serve_pid)
        busy, steal = machine_busy_s()
        return time.time(), busy, workers, procs, serve - workers, time.process_time(), steal

    def stop(self) -> CpuWindow:
        end = self._sample()
        d = [b - a for a, b in zip(self.start, end, strict=True)]
        return CpuWindow(d[0], d[1], d[2], end[3], d[4], d[5], d[6])


def wait_quiet(max_s: float, limit: float = 0.2) -> str:
    """Wait up to ``max_s`` for the cores to be under ``limit`` busy (over one second); say how it went."""
    cores = len(os.sched_getaffinity(0))
    start = time.monotonic()
    busy = float("nan")
    while True:
        before = sum(machine_busy_s())
        time.sleep(1.0)
        busy = (sum(machine_busy_s()) - before) / cores
        if busy < limit or time.monotonic() - start >= max_s:
            break
    waited = time.monotonic() - start
    state = "quiet" if busy < limit else "STILL BUSY"
    return f"{state}: cores {100 * busy:.0f} % busy after waiting {waited:.0f} s"


# -- the database (read-only) -----------------------------------------------------------------------


def open_db(data: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{data / 'callrec.db'}?mode=ro", uri=True, timeout=30, check_same_thread=False)
    db.row_factory = sqlite3.Row
    return db


def stamp(text: str | None) -> float:
    """A database time (naive UTC on SQLite) as a Unix time; NaN when unset."""
    if not text:
        return float("nan")
    return datetime.fromisoformat(str(text)).replace(tzinfo=UTC).timestamp()


@dataclass
class Stamps:
    """One recording's way through the service, as Unix times from the database."""

    call_id: str
    tape_ref: str
    state: str
    reason: str
    duration_s: float
    ended: float  # the recorder closed the tape (calls.ended_at)
    queued: float  # the hand-off queued it (recordings.enqueued_at; the sweep moves it when it re-queues)
    mix_start: float  # a worker claimed it (the mix job's started_at)
    mix_end: float  # mixed and hashed (the mix job's finished_at)
    completed: float  # stored and verified (recordings.completed_at)


STAMPS_SQL = """
SELECT c.id AS call_id, c.tape_ref, c.ended_at, r.id AS rec_id, r.state, r.reason, r.duration_s, r.enqueued_at,
       r.completed_at,
       (SELECT MIN(started_at) FROM jobs j WHERE j.recording_id = r.id AND j.kind = 'mix') AS mix_start,
       (SELECT MAX(finished_at) FROM jobs j WHERE j.recording_id = r.id AND j.kind = 'mix') AS mix_end
FROM calls c JOIN recordings r ON r.call_id = c.id
"""


def stamps(db: sqlite3.Connection, where: str, args: tuple[Any, ...] = ()) -> list[Stamps]:
    rows = db.execute(STAMPS_SQL + " WHERE " + where, args).fetchall()
    return [
        Stamps(r["call_id"], r["tape_ref"], r["state"], r["reason"] or "", float(r["duration_s"] or 0.0),
               stamp(r["ended_at"]), stamp(r["enqueued_at"]), stamp(r["mix_start"]), stamp(r["mix_end"]),
               stamp(r["completed_at"]))
        for r in rows
    ]  # fmt: skip


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
    return value


def pct(values: list[float], q: float) -> float:
    finite = [v for v in values if v == v]
    return float(np.percentile(finite, q)) if finite else float("nan")


def spread_ms(values: list[float]) -> str:
    ms = [1000 * v for v in values]
    return f"{pct(ms, 50):8.0f} {pct(ms, 95):8.0f} {max(ms, default=float('nan')):8.0f}"


# -- 1. one call at a time ----------------------------------------------------------------------------


@dataclass
class Single:
    bye_to_api_s: list[float] = field(default_factory=list)
    cards: list[Stamps] = field(default_factory=list)
    byes: list[float] = field(default_factory=list)
    api_seen: list[float] = field(default_factory=list)
    timeouts: int = 0
    profile: list[tuple[str, int]] = field(default_factory=list)


def one_call(svc: Service, db: sqlite3.Connection, conn: http.client.HTTPConnection, seconds: float,
             frames: np.ndarray, out: Single) -> float | None:  # fmt: skip
    """INVITE, ``seconds`` of paced RTP on both streams, BYE; poll the API until the card is completed.

    Returns the time from BYE to the API showing ``completed`` (None: it did not within the timeout).
    """
    with SipClient(svc.sip) as sip:
        dialog = Dialog(sip)
        ports = answered_ports(dialog.call())
        senders = [RtpSender(port) for port in ports]
        try:
            t_next = time.perf_counter()
            for i in range(int(seconds * FRAMES_PER_S)):
                for sender in senders:
                    sender.send(1, frames[i % len(frames)].tobytes())
                t_next += PTIME_S
                time.sleep(max(0.0, t_next - time.perf_counter()))
        finally:
            for sender in senders:
                sender.close()
        call_id = wait_for(
            lambda: db.execute("SELECT id FROM calls WHERE sip_call_id = ?", (dialog.call_id,)).fetchone(),
            10, f"call {dialog.call_id} in the database",
        )["id"]  # fmt: skip
        t_bye = time.time()
        ok = dialog.bye()
        if ok.status != 200:
            raise RuntimeError(f"BYE answered {ok.status} {ok.reason}")
    deadline = time.monotonic() + SINGLE_TIMEOUT_S
    while True:
        card = svc.card(conn, call_id)
        state = (card.get("recording") or {}).get("state")
        if state in ("completed", "failed"):
            seen = time.time()
            break
        if time.monotonic() > deadline:
            out.timeouts += 1
            return None
        time.sleep(API_POLL_S)
    (row,) = stamps(db, "c.id = ?", (call_id,))
    if state == "failed":
        raise RuntimeError(f"call {call_id}: recording failed: {row.reason}")
    out.bye_to_api_s.append(seen - t_bye)
    out.byes.append(t_bye)
    out.api_seen.append(seen)
    out.cards.append(row)
    return seen - t_bye


def run_single(svc: Service, db: sqlite3.Connection, args: argparse.Namespace, workdir: Path) -> Single:
    frames = np.random.default_rng(3).integers(0, 256, size=(64, 160), dtype=np.uint8)
    out = Single()
    conn = http.client.HTTPConnection(HOST, svc.http_port, timeout=10)
    spy = Spy(svc.child_pid(b"record"), workdir / "recorder.pyspy.txt") if args.profile else None
    try:
        for i in range(args.single):
            took = one_call(svc, db, conn, args.single_seconds, frames, out)
            shown = f"{1000 * took:.0f} ms" if took is not None else f"not within {SINGLE_TIMEOUT_S:.0f} s"
            print(f"  single call {i + 1}/{args.single}: BYE -> API shows completed: {shown}", flush=True)
    finally:
        conn.close()
        if spy is not None:
            spy.stop()
            out.profile = spy.shares(classify_handoff)
    return out


def report_single(r: Single, args: argparse.Namespace) -> list[str]:
    c = r.cards
    total = [s.completed - b for s, b in zip(c, r.byes, strict=True)]
    stages = [
        ("BYE -> recorder closed the tape (calls.ended_at)", [s.ended - b for s, b in zip(c, r.byes, strict=True)]),
        ("  -> hand-off queued it (DB rows, tape into storage)", [s.queued - s.ended for s in c]),
        ("  -> a worker claimed it (queue pick-up)", [s.mix_start - s.queued for s in c]),
        ("  -> mixed and hashed (mix job)", [s.mix_end - s.mix_start for s in c]),
        ("  -> stored and verified: completed_at", [s.completed - s.mix_end for s in c]),
        ("  -> the API showed it (poll every 10 ms)", [a - s.completed for s, a in zip(c, r.api_seen, strict=True)]),
    ]
    # a call that never showed completed fails the target whatever the others did
    p95 = pct(r.bye_to_api_s, 95) if not r.timeouts else float("inf")
    lines = [
        f"1. one call at a time: {args.single} SIPREC calls through the recorder, {args.single_seconds:g} s of "
        f"PCMA RTP each (both streams); timed out: {r.timeouts}",
        f"   {'':52s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s}",
        f"   {'BYE -> API shows recording.state completed':52s} {spread_ms(r.bye_to_api_s)}",
        f"   {'BYE -> recordings.completed_at (worker stamp)':52s} {spread_ms(total)}",
        "   where it went (each step, its own p50/p95/max):",
        *(f"   {name:52s} {spread_ms(values)}" for name, values in stages),
        f"   target: p95 under 2000 ms -> {1000 * p95:.0f} ms ({'met' if p95 < 2.0 else 'MISSED'})",
    ]
    if r.profile:
        lines += shares_lines("the recorder's hand-off thread while busy with a tape (py-spy, idle included)",
                              r.profile)  # fmt: skip
    return lines


# -- 2. the burst -------------------------------------------------------------------------------------


def make_burst_tapes(template: Path, staging: Path, calls: int) -> list[Path]:
    """``calls`` copies of ``template`` under new Call-IDs (the database keys a call by its folder's name)."""
    meta = json.loads((template / tape.META_FILE).read_text())
    folders = []
    for i in range(calls):
        call_id = f"{BURST_PREFIX}{i:04d}@bench"
        folder = staging / f"{BURST_PREFIX}{i:04d}_bench"
        folder.mkdir(parents=True)
        shutil.copyfile(template / tape.MEDIA_FILE, folder / tape.MEDIA_FILE)
        (folder / tape.META_FILE).write_text(json.dumps({**meta, "call_ids": [call_id]}))
        folders.append(folder)
    return folders


@dataclass
class Burst:
    t0: float
    handed_off: dict[str, float]  # tape folder name -> when its tape_closed returned
    rows: list[Stamps]
    cpu: CpuWindow  # from the hand-off to the moment the poll saw the last recording finish
    mixers: list[tuple[str, int]]  # py-spy samples by stage (--profile)
    handoff: list[tuple[str, int]]


def run_burst(svc: Service, db: sqlite3.Connection, folders: list[Path], args: argparse.Namespace,
              workdir: Path) -> Burst:  # fmt: skip
    from callrec.config import ServiceConfig
    from callrec.jobs.worker import build
    from callrec.service.handoff import TapeHandOff

    assert svc.proc is not None
    config = ServiceConfig(data_dir=svc.data, workers=args.workers)
    config.secret_key = (svc.data / "secret.key").read_text().strip()
    built = build(config, migrate=False)
    spies: list[Spy] = []
    try:
        # as the recorder does at each INVITE: the call appears, ``recording``
        for folder in folders:
            built.pipeline.tape_opened(folder)
        worker = svc.child_pid(b"worker")
        if args.profile:
            spies = [Spy(worker, workdir / "workers.pyspy.txt", subprocesses=True),
                     Spy(os.getpid(), workdir / "handoff.pyspy.txt")]  # fmt: skip
        time.sleep(1.0)  # the workers' queue polling slows to its idle pace, as before a real burst
        handoff = TapeHandOff(built.pipeline)
        handed_off: dict[str, float] = {}

        def note(name: str) -> Callable[[object], None]:
            return lambda _future: handed_off.__setitem__(name, time.time())

        meter = CpuMeter(svc.proc.pid, worker)
        t0 = time.time()
        # every BYE at once: the recorder queues each tape's close on its one hand-off thread
        for folder in folders:
            handoff.closed(folder).add_done_callback(note(folder.name))
        handoff.drain()
        deadline = time.monotonic() + args.timeout
        while True:
            rows = stamps(db, "c.tape_ref LIKE ?", (f"{BURST_PREFIX}%",))
            if len(rows) == len(folders) and all(r.state in ("completed", "failed") for r in rows):
                break
            if time.monotonic() > deadline:
                print(f"  burst: gave up after {args.timeout:.0f} s", flush=True)
                break
            time.sleep(BURST_POLL_S)
        cpu = meter.stop()
    finally:
        for spy in spies:
            spy.stop()
        built.close()
    mixers = spies[0].shares(classify_mixer) if spies else []
    handoff_shares = spies[1].shares(classify_handoff) if spies else []
    return Burst(t0, handed_off, rows, cpu, mixers, handoff_shares)


def report_burst(b: Burst, args: argparse.Namespace, cores: int) -> tuple[list[str], float, float, float]:
    """The burst's lines, and its audio seconds per core-second of makespan, per core-second the machine's
    other processes left, and per worker CPU-second."""
    done = [r for r in b.rows if r.state == "completed"]
    failed = [r for r in b.rows if r.state != "completed"]
    handed = [b.handed_off.get(r.tape_ref, float("nan")) for r in done]
    lat = [r.completed - b.t0 for r in done]
    makespan = max(lat, default=float("nan"))
    audio = sum(r.duration_s for r in done)
    per_core = audio / (makespan * cores)
    # on a shared machine: as if other processes (and the hypervisor) took the same share of every core
    others_share = min(max(b.cpu.others + b.cpu.steal, 0.0) / (b.cpu.seconds * (os.cpu_count() or 1)), 0.99)
    per_left = per_core / (1.0 - others_share)
    per_cpu = audio / b.cpu.workers if b.cpu.workers > 0 else float("nan")
    mix = [r.mix_end - r.mix_start for r in done]
    # the sweep queues again what waited longer than requeue_after_s (60 s) in the queue: enqueued_at moves
    requeued = sum(1 for r, h in zip(done, handed, strict=True) if r.queued > h + 1.0)
    last_handoff = max(b.handed_off.values(), default=b.t0) - b.t0
    c, span = b.cpu, b.cpu.seconds
    lines = [
        f"2. {args.calls} calls of {args.call_seconds:g} s ending together: every tape handed off at one instant "
        "through the recorder's own TapeHandOff (one thread calling Pipeline.tape_closed), run in this process "
        "against the service's database and queue (not through SIP/RTP: 100 five-minute calls take 5 minutes)",
        f"   completed {len(done)}/{len(b.rows)}, failed or unfinished {len(failed)}"
        + (f" (first: {failed[0].state} {failed[0].reason[:120]})" if failed else ""),
        f"   {'':52s} {'p50 s':>8s} {'p95 s':>8s} {'max s':>8s}",
        f"   {'BYE -> completed_at':52s} {_spread_s(lat)}",
        f"   {'  BYE -> handed off (tape_closed returned)':52s} {_spread_s([h - b.t0 for h in handed])}",
        f"   {'  handed off -> claimed by a worker (waiting)':52s} "
        + _spread_s([r.mix_start - h for r, h in zip(done, handed, strict=True)]),
        f"   {'  mix job (claim -> mixed and hashed)':52s} {_spread_s(mix)}",
        f"   {'  store (mixed -> completed_at)':52s} {_spread_s([r.completed - r.mix_end for r in done])}",
        f"   hand-off: {1000 * last_handoff / max(len(b.rows), 1):.0f} ms a tape, one after another (DB rows, "
        f"the tape copied into storage, fsynced, read back); the last one after {last_handoff:.2f} s; "
        f"re-queued by the sweep while waiting: {requeued}",
        f"   makespan {makespan:.2f} s for {audio:,.0f} s of call audio, {args.workers} workers on {cores} "
        f"cores: {audio / makespan:,.0f} x realtime; mix jobs add up to {sum(mix):.1f} s of wall time",
        f"   CPU over {span:.1f} s (until the poll saw the last one; cores {c.machine / span:.2f} busy): worker "
        f"tree {c.workers:.1f} s ({c.worker_procs} processes, {c.workers / span:.2f} cores), serve + recorder "
        f"{c.serve_rest:.1f} s, this process (hand-off, polling) {c.this:.1f} s, others on the machine "
        f"{c.others:.1f} s, hypervisor steal {c.steal:.1f} s",
    ]
    if b.mixers:
        lines += shares_lines("mixing processes' main threads (py-spy, idle included)", b.mixers)
    if b.handoff:
        lines += shares_lines("the hand-off thread while busy with a tape (py-spy, idle included)", b.handoff)
    return lines, per_core, per_left, per_cpu


def _spread_s(values: list[float]) -> str:
    return f"{pct(values, 50):8.2f} {pct(values, 95):8.2f} {max(values, default=float('nan')):8.2f}"


# -- py-spy: where the wall time goes ----------------------------------------------------------------


class Spy:
    """py-spy on one process (and its children), idle threads included: stacks show what a step waits on."""

    def __init__(self, pid: int, raw: Path, *, subprocesses: bool = False) -> None:
        exe = Path(sys.executable).parent / "py-spy"
        cmd = [str(exe), "record", "--pid", str(pid), "--nonblocking", "--idle", "--threads", "-r", "100",
               "--format", "raw", "-o", str(raw)]  # fmt: skip
        if subprocesses:
            cmd.append("--subprocesses")
        self.raw = raw
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # py-spy attaches

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def shares(self, classify: Callable[[str], str | None]) -> list[tuple[str, int]]:
        """Samples added up by ``classify(stack)`` (None: not counted), largest first."""
        counts: dict[str, int] = {}
        if self.raw.exists():
            for line in self.raw.read_text().splitlines():
                stack, _, n = line.rpartition(" ")
                stage = classify(stack) if stack and n.isdigit() else None
                if stage is not None:
                    counts[stage] = counts.get(stage, 0) + int(n)
        return sorted(counts.items(), key=lambda kv: -kv[1])


def _db_step(stack: str) -> str:
    """The innermost callrec function above the SQLAlchemy frames: the step that waits on the database."""
    frames = [f.split(" (", 1)[0] for f in stack.split(";") if "(callrec/" in f]
    return f"database: {frames[-1] if frames else '?'} (SQLAlchemy, SQLite)"


def classify_mixer(stack: str) -> str | None:
    """A mixing process's main thread, from its queue loop on (the consumer's other processes left out)."""
    if "Worker.loop (huey/consumer.py" not in stack or "MainThread" not in stack:
        return None
    rules = (
        ("mix (callrec/mix/run.py", "mixing: callrec.mix"),
        ("_md5 (callrec/jobs/steps.py", "md5 of the mixed file"),
        ("put_file (callrec/storage/", "storing the recording: put_file (copy, fsync, read back)"),
        ("delete_tape (callrec/jobs/retention.py", "deleting the tape (keep_tape_days 0)"),
        ("sqlalchemy/", ""),
        ("Worker.sleep (huey/consumer.py", "idle: sleeping between queue polls"),
        ("_Heartbeat", "lease thread start/stop"),
        ("rmtree (shutil.py", "work folder: rmtree/mkdir/move"),
        ("huey/", "queue: SqliteHuey dequeue, task bookkeeping"),
    )  # fmt: skip
    for needle, stage in rules:
        if needle in stack:
            return stage or _db_step(stack)
    return "other"


def classify_handoff(stack: str) -> str | None:
    """The hand-off thread while it is busy with a tape (its waits for the next tape left out)."""
    if "tape_closed (callrec/jobs/pipeline.py" not in stack and "tape_opened (callrec/" not in stack:
        return None
    rules = (
        ("tape_opened (callrec/", "tape_opened (at INVITE)"),
        ("put_file (callrec/storage/", "tape into storage: put_file (copy, fsync, read back)"),
        ("rmtree (shutil.py", "removing the local tape folder"),
        ("enqueue (callrec/jobs/queue.py", "queue: enqueue (SqliteHuey)"),
        ("_read_tape (callrec/jobs/pipeline.py", "reading call.json"),
        ("sqlalchemy/", ""),
    )  # fmt: skip
    for needle, stage in rules:
        if needle in stack:
            return stage or _db_step(stack)
    return "other"


def shares_lines(title: str, shares: list[tuple[str, int]]) -> list[str]:
    total = sum(n for _, n in shares)
    if not total:
        return [f"   {title}: py-spy took no samples"]
    return [
        f"   {title}, {total:,} samples at 100/s:",
        *(f"     {100 * n / total:5.1f} %  {stage}" for stage, n in shares if 1000 * n >= total),
    ]


# -- 3. the reference: the offline mixer --------------------------------------------------------------


@dataclass
class Reference:
    """The offline mixer's runs: (wall, CPU) seconds each; the figures use the fastest."""

    audio_s: float = 0.0  # one tape
    cli_cmd: str = ""
    inproc: list[tuple[float, float]] = field(default_factory=list)
    cli: list[tuple[float, float]] = field(default_factory=list)
    par: list[tuple[float, float]] = field(default_factory=list)  # all of ``par_tapes`` in parallel
    par_tapes: int = 0


@contextlib.contextmanager
def pinned(cpu: int) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _mix_one(job: tuple[Path, Path]) -> float:
    folder, out = job
    # what a worker hands mix() with the default domain settings (steps._mix)
    report = mix(folder, out, OutputOptions(), call_id=tape.read_info(folder).call_id)
    out.unlink(missing_ok=True)
    return float(report.calls[0].duration_s)


def reference(ref: Reference, template: Path, workdir: Path, repeat: int, cpu: int) -> None:
    """The offline mixer on ``template`` on one core: in this process, and as the ``callrec mix`` command."""
    out = workdir / "reference.mp3"
    with pinned(cpu):
        for _ in range(repeat):
            c0, w0 = time.process_time(), time.perf_counter()
            ref.audio_s = _mix_one((template, out))
            ref.inproc.append((time.perf_counter() - w0, time.process_time() - c0))
    exe = Path(sys.executable).parent / "callrec"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "callrec"]
    cmd = ["taskset", "-c", str(cpu), *base, "mix", str(template), "-o", str(out)]
    ref.cli_cmd = shlex.join(cmd)
    for _ in range(repeat):
        w0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # reap this very child with wait4: its own rusage (taskset execs the command in place)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if proc.returncode != 0:
            raise RuntimeError(f"{ref.cli_cmd} failed ({proc.returncode}): {err}")
        ref.cli.append((time.perf_counter() - w0, usage.ru_utime + usage.ru_stime))
    out.unlink(missing_ok=True)


def parallel_reference(ref: Reference, folders: list[Path], workers: int, workdir: Path, repeat: int) -> None:
    """``callrec.mix`` over ``folders`` in ``workers`` forked processes, no service: what the cores give."""
    jobs = [(f, workdir / f"parallel-{i}.mp3") for i, f in enumerate(folders)]
    ref.par_tapes = len(folders)
    for _ in range(repeat):
        pool = multiprocessing.get_context("fork").Pool(workers)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        try:
            pool.map(_mix_one, jobs, chunksize=1)
            wall = time.perf_counter() - t
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()  # the workers reaped: their CPU is in RUSAGE_CHILDREN
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        ref.par.append((wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)))


def run_references(ref: Reference, template: Path, folders: list[Path], args: argparse.Namespace, workdir: Path,
                   when: str) -> None:  # fmt: skip
    quiet = wait_quiet(args.wait_quiet_s) if args.wait_quiet_s > 0 else "not checked"
    n = len(ref.inproc)
    reference(ref, template, workdir, args.repeat, args.cpu)
    parallel_reference(ref, folders, args.workers, workdir, args.repeat)
    one = ", ".join(f"{cpu:.2f}" for _, cpu in ref.inproc[n:])
    par = ", ".join(f"{wall:.2f}" for wall, _ in ref.par[n:])
    print(f"  reference {when} ({quiet}): callrec.mix of one tape on one core {one} CPU s; "
          f"{ref.par_tapes} tapes in {args.workers} processes {par} s", flush=True)  # fmt: skip


def report_reference(ref: Reference, args: argparse.Namespace, cores: int, per_core: float, per_left: float,
                     per_cpu: float) -> list[str]:  # fmt: skip
    """The offline mixer's figures beside the burst's: seconds of audio per core-second (x realtime on one
    core: audio / wall time pinned to it) and per CPU-second."""
    (in_wall, in_cpu), (cli_wall, cli_cpu_s), (par_wall, par_cpu_s) = min(ref.inproc), min(ref.cli), min(ref.par)
    one_core, one_cpu = ref.audio_s / in_wall, ref.audio_s / in_cpu
    cli_core, cli_cpu = ref.audio_s / cli_wall, ref.audio_s / cli_cpu_s
    par_audio = ref.audio_s * ref.par_tapes
    par_core, par_cpu = par_audio / (par_wall * cores), par_audio / par_cpu_s
    ratio = per_core / one_core
    runs = len(ref.inproc)

    def row(name: str, core: float, cpu: float | None) -> str:
        return f"   {name:64s} {core:11.0f} " + (f"{cpu:11.0f}" if cpu is not None else f"{'-':>11s}")

    return [
        f"3. the offline mixer on the same {ref.audio_s:.1f} s tape (a worker's options: MP3 16 kbit/s stereo), "
        "beside the service's burst; seconds of call audio",
        f"   {'':64s} {'per core-s':>11s} {'per CPU-s':>11s}",
        row(f"callrec.mix in process, one core (core {args.cpu}), best of {runs}", one_core, one_cpu),
        row(f"callrec mix command (with its start-up), one core, best of {runs}", cli_core, cli_cpu),
        row(f"callrec.mix in {args.workers} processes, {ref.par_tapes} tapes, no service, best of {runs}",
            par_core, par_cpu),
        row(f"service burst: makespan x {cores} cores; the worker tree's CPU", per_core, per_cpu),
        row("  the same, per core-second other processes left it", per_left, None),
        f"   service / callrec.mix on one core: {ratio:.2f} per core-second, {per_cpu / one_cpu:.2f} per CPU-second"
        f" -> target >= 0.80 per core-second: {'met' if ratio >= 0.8 else 'MISSED'}",
        f"   service / callrec.mix in {args.workers} processes on the same cores: {per_core / par_core:.2f} per "
        f"core-second, {per_cpu / par_cpu:.2f} per CPU-second; service / the command: {per_core / cli_core:.2f}",
        f"   the references ran {args.repeat} times before the service started and {args.repeat} times after it "
        f"stopped; their slowest runs: one core {ref.audio_s / max(ref.inproc)[0]:.0f}, the command "
        f"{ref.audio_s / max(ref.cli)[0]:.0f}, {args.workers} processes {par_audio / (max(ref.par)[0] * cores):.0f} "
        "audio s per core-s",
        f"   offline command: {ref.cli_cmd}",
    ]  # fmt: skip


# -- the run ------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100, help="calls in the burst (default 100)")
    ap.add_argument("--call-seconds", type=float, default=300.0, help="length of each burst call (default 300)")
    ap.add_argument("--single", type=int, default=10, help="calls timed one at a time (default 10; 0 skips)")
    ap.add_argument("--single-seconds", type=float, default=3.0, help="RTP per single call, seconds (default 3)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="mixing processes (default: cores)")
    ap.add_argument("--repeat", type=int, default=3, help="time the offline mixer this often, keep the best")
    ap.add_argument(
        "--parallel-tapes", type=int, default=0, help="tapes for the parallel offline reference (default 4 per worker)"
    )
    ap.add_argument("--cpu", type=int, default=0, help="the core the one-core reference is pinned to (default 0)")
    ap.add_argument("--wait-quiet-s", type=float, default=30.0,
                    help="before the reference and the burst, wait up to this long for the cores to be under "
                         "20%% busy (default 30; 0: don't)")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=600.0, help="give the burst up after this long (s)")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the recorder's hand-off (part 1), the mixers and the hand-off (part 2)",
    )
    ap.add_argument("--workdir", type=Path, help="where the data folder and tapes go (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the data folder, the tapes and serve's log")
    args = ap.parse_args()
    if args.calls < 1:
        ap.error("--calls must be at least 1")
    # a SIGTERM to the benchmark still stops the service (through the finally below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    own_dir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="callrec-bench-pipe-")) if own_dir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    svc = Service(workdir / "data", args.workers, workdir / "serve.log")
    interrupted = False
    try:
        run(args, workdir, svc)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping callrec serve", file=sys.stderr)
    finally:
        svc.stop()
        if args.keep:
            print(f"\nkept in {workdir} (serve's log: {svc.log_path})")
        elif own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    if interrupted:
        sys.exit(130)


def run(args: argparse.Namespace, workdir: Path, svc: Service) -> None:
    cores = min(args.workers, len(os.sched_getaffinity(0)))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"callrec service pipeline: {os.cpu_count()} cores, {args.workers} workers, SQLite + SqliteHuey + local "
          f"storage, immediate schedule; load average before: {load}", flush=True)  # fmt: skip

    # the tapes, before any clock: one made, the burst's copied from it (outside data/tapes, where the
    # recorder's sweep would hand them over by itself)
    t = time.perf_counter()
    template = make_long_tape(workdir / "template", seconds=args.call_seconds).folder
    folders = make_burst_tapes(template, workdir / "burst", args.calls)
    size_mb = (template / tape.MEDIA_FILE).stat().st_size / 1e6
    print(f"  made {args.calls} tapes of {args.call_seconds:g} s ({size_mb:.1f} MB each) in "
          f"{time.perf_counter() - t:.1f} s", flush=True)  # fmt: skip

    # the references' own copies: the burst's tapes leave their folders once stored
    par_folders = make_burst_tapes(template, workdir / "parallel", args.parallel_tapes or 4 * args.workers)
    ref = Reference()
    run_references(ref, template, par_folders, args, workdir, "before the service")

    t = time.perf_counter()
    svc.start()
    print(f"  callrec serve up in {time.perf_counter() - t:.1f} s: {svc.command}", flush=True)
    db = open_db(svc.data)
    lines: list[str] = []
    try:
        if args.single:
            lines += report_single(run_single(svc, db, args, workdir), args)
        quiet_burst = wait_quiet(args.wait_quiet_s) if args.wait_quiet_s > 0 else "not checked"
        print(f"  burst ({quiet_burst})", flush=True)
        burst = run_burst(svc, db, folders, args, workdir)
        part, per_core, per_left, per_cpu = report_burst(burst, args, cores)
        lines += part
    finally:
        db.close()
    svc.stop()
    run_references(ref, template, par_folders, args, workdir, "after the service stopped")
    lines += report_reference(ref, args, cores, per_core, per_left, per_cpu)
    if args.profile:
        lines.append("   (--profile: py-spy took CPU from the service; its figures are pessimistic)")
    print("\n" + "\n".join(lines))
    with contextlib.suppress(Exception):
        print("commit: " + subprocess.run(["git", "log", "-1", "--oneline"], capture_output=True, text=True,
                                          cwd=Path(__file__).parent).stdout.strip())  # fmt: skip


if __name__ == "__main__":
    main()
