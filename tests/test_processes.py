"""The processes of ``callrec serve`` and ``callrec worker``: children die with serve, one live instance per
data folder, a taken address stops serve with one line, a worker clears what killed runs left behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from callrec.service.ownership import DataLock
from tests.support.recorder_proc import free_udp_block
from tests.support.rig import capture
from tests.support.serve_proc import ServeProcess, free_tcp_port

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PDEATHSIG is Linux's"),
    pytest.mark.slow,  # real serve, worker and recorder processes, killed and restarted
]
GONE_WITHIN_S = 10.0
REFUSED_WITHIN_S = 30.0  # a bound on the wait (twice this), never an assertion on time


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, or None when there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root``: pid -> start time (so that a reused pid is not mistaken)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None and stat[0] != "Z":
            children.setdefault(stat[1], []).append((int(entry.name), stat[2]))
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for pid, started in children.get(todo.pop(), []):
            found[pid] = started
            todo.append(pid)
    return found


def _alive(pid: int, started: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == started


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait(what: str, check: object, timeout: float, log: object = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {log() if callable(log) else log}")
        time.sleep(0.05)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _serve_argv(data: Path, *, http: int, listen: str = "127.0.0.1:0") -> list[str]:
    rtp = free_udp_block(8, 30000, 60000)
    return [sys.executable, "-m", "callrec", "serve", "--data", str(data), "--http", f"127.0.0.1:{http}",
            "--listen", listen, "--rtp-ports", f"{rtp}-{rtp + 7}", "--allow", "127.0.0.1",
            "--workers", "1"]  # fmt: skip


def _run(argv: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """Run a command that must end by itself (within a bound): exit status and its stderr lines."""
    done = subprocess.run(argv, env=env, capture_output=True, timeout=REFUSED_WITHIN_S * 2, stdin=subprocess.DEVNULL)
    return done.returncode, done.stderr.decode(errors="replace").strip().splitlines()


def test_sigkill_of_serve_takes_every_child_with_it_and_a_restart_gets_ready(tmp_path: Path) -> None:
    data = tmp_path / "data"
    serve = ServeProcess(data, "--workers", "2", env={"CALLREC_SWEEP_INTERVAL_S": "0.5"})
    try:
        serve.start()
        assert serve.proc is not None
        # recorder, worker, and the worker's own: two mixing processes, Huey's scheduler, the sweep
        family: dict[int, int] = {}

        def all_up() -> bool:
            family.update(_descendants(serve.proc.pid))  # type: ignore[union-attr]
            return len(family) >= 6

        _wait("serve's processes", all_up, 30, lambda: {p: _cmdline(p) for p in family})
        commands = [_cmdline(pid) for pid in family]
        assert any("callrec record --service" in c for c in commands), commands
        assert any("callrec worker" in c for c in commands), commands
        serve.proc.send_signal(signal.SIGKILL)
        serve.proc.wait(timeout=10)
        _wait(
            "serve's children to die with it",
            lambda: not any(_alive(pid, started) for pid, started in family.items()),
            GONE_WITHIN_S,
            lambda: {pid: _cmdline(pid) for pid, started in family.items() if _alive(pid, started)},
        )
    finally:
        serve.__exit__(None, None, None)
    with ServeProcess(data) as again:
        assert again.api.get("/healthz").status_code == 200
        assert again.stop() == 0, again.log()[-3000:]


def test_recordings_in_flight_when_serve_is_killed_complete_once_after_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"CALLREC_LEASE_S": "2", "CALLREC_SWEEP_INTERVAL_S": "0.5", "CALLREC_REQUEUE_AFTER_S": "2"}
    sent: list[str] = []
    serve = ServeProcess(data, "--workers", "1", env=env)
    try:
        serve.start()
        for n in range(4):
            answer = serve.api.post("/api/v1/uploads", files={"file": ("c.pcap", capture(f"kill-{n}@test", 30.0))})
            assert answer.status_code == 202, answer.text
            sent += answer.json()["calls"]
        assert serve.proc is not None
        serve.proc.send_signal(signal.SIGKILL)  # some mixing, some queued: all in flight
        serve.proc.wait(timeout=10)
    finally:
        serve.__exit__(None, None, None)
    with ServeProcess(data, "--workers", "1", env=env) as again:

        def settled() -> list[dict[str, object]] | None:
            cards = [again.api.get(f"/api/v1/calls/{call_id}").json() for call_id in sent]
            done = all(c["recording"] and c["recording"]["state"] == "completed" for c in cards)
            return cards if done else None

        cards = again.wait_for("every recording in flight to complete", settled, timeout=90)
        assert all(len(c["recordings"]) == 1 for c in cards), "one recording per call"  # type: ignore[arg-type]
        jobs = again.api.get("/api/v1/jobs", params={"limit": 200}).json()["items"]
        for card in cards:
            rec_id = card["recording"]["id"]  # type: ignore[index]
            stored = [j for j in jobs if j["recording_id"] == rec_id and j["kind"] == "store" and j["state"] == "done"]
            assert len(stored) == 1, (rec_id, [j for j in jobs if j["recording_id"] == rec_id])
        objects = [f for f in (data / "storage").rglob("*.mp3")]
        assert len(objects) == len(sent), objects
        assert again.stop() == 0, again.log()[-3000:]


def test_a_restarted_child_still_stops_in_order_with_serve(tmp_path: Path) -> None:
    # children are started from the supervisor's thread, which outlives them: a child started again
    # is not killed by its parent-death signal when serve stops, it gets SIGTERM and ends cleanly
    with ServeProcess(tmp_path / "data") as serve:
        assert serve.proc is not None
        [recorder] = [p for p in _descendants(serve.proc.pid) if "callrec record" in _cmdline(p)]
        os.kill(recorder, signal.SIGKILL)
        serve.wait_for("the recorder started again", lambda: serve.log().count("callrec record: listening on") == 2)
        [again] = [p for p in _descendants(serve.proc.pid) if "callrec record" in _cmdline(p)]
        assert again != recorder
        assert serve.stop() == 0, serve.log()[-3000:]
    assert "stopping: closing 0 open sessions" in serve.log(), serve.log()[-3000:]


def test_a_second_serve_worker_or_recorder_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServeProcess(data) as first:
        assert first.proc is not None
        expected = f"the data folder {data.resolve()} is in use by pid {first.proc.pid} (callrec serve); stop it first"
        code, lines = _run(_serve_argv(data, http=free_tcp_port()), _env())
        assert (code, lines) == (2, [f"callrec serve: {expected}"])
        code, lines = _run([sys.executable, "-m", "callrec", "worker"], _env(CALLREC_DATA=str(data)))
        assert (code, lines) == (2, [f"callrec worker: {expected}"])
        argv = [sys.executable, "-m", "callrec", "record", "--data", str(data), "--listen", "127.0.0.1:0",
                "--allow", "127.0.0.1"]  # fmt: skip
        code, lines = _run(argv, _env())
        assert (code, lines) == (2, [f"callrec record: {expected}"])
        # the first one is unharmed
        assert first.proc.poll() is None
        assert first.api.get("/healthz").status_code == 200
        assert first.stop() == 0, first.log()[-3000:]


def test_a_taken_sip_port_stops_serve_with_one_line_naming_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        code, lines = _run(_serve_argv(data, http=free_tcp_port(), listen=f"127.0.0.1:{port}"), _env())
    log = "\n".join(lines)
    assert code == 2, log
    assert lines[-1] == (
        f"callrec serve: the recorder cannot run: cannot listen on 127.0.0.1:{port} (udp): address already in use"
    ), log
    assert "starting it again" not in log, log
    # nothing serve started holds the folder any more: the worker was stopped too
    DataLock.acquire(data, "test").release()


def test_a_taken_http_port_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = _run(_serve_argv(tmp_path / "data", http=port), _env())
    assert (code, lines) == (2, [f"callrec serve: cannot listen on 127.0.0.1:{port} (http): address already in use"])


@pytest.mark.parametrize("kind", ["udp", "tcp"])
def test_a_recorder_names_the_protocol_whose_port_is_taken(tmp_path: Path, kind: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        if kind == "tcp":
            taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-m", "callrec", "record", "--data", str(tmp_path / "data"),
                "--listen", f"127.0.0.1:{port}", "--allow", "127.0.0.1"]  # fmt: skip
        code, lines = _run(argv, _env())
    assert code == 2, lines
    assert lines[-1] == f"callrec record: cannot listen on 127.0.0.1:{port} ({kind}): address already in use", lines


def test_a_worker_clears_the_scratch_killed_runs_left(tmp_path: Path) -> None:
    data = tmp_path / "data"
    work = data / "work"
    for folder in ("mix-0123/tape", "stitch-4", ".callrec-abcd"):
        (work / folder).mkdir(parents=True)
        (work / folder / "half-written").write_bytes(b"\0" * 100)
    (work / "0456.mp3").write_bytes(b"mixed; its upload failed and is retried from this file")
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "callrec", "worker", "--workers", "1", "--no-sweep"],
            env=_env(CALLREC_DATA=str(data)), stdin=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        _wait("the worker's ready line", lambda: "mixing processes on" in log_path.read_text(), 60, log_path.read_text)
        assert sorted(p.name for p in work.iterdir()) == ["0456.mp3"]
        assert re.search(r"removed .*mix-0123, left by a run that was killed", log_path.read_text())
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)


def test_a_worker_sharing_a_database_without_a_queue_url_refuses_in_one_line(tmp_path: Path) -> None:
    env = _env(CALLREC_DATA=str(tmp_path / "data"), CALLREC_DATABASE_URL="postgresql://callrec@127.0.0.1:1/none",
               CALLREC_SECRET_KEY="k" * 44)  # fmt: skip
    code, lines = _run([sys.executable, "-m", "callrec", "worker"], env)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("callrec: error: CALLREC_DATABASE_URL is a shared database but CALLREC_QUEUE_URL")
    assert not (tmp_path / "data").exists(), "refused before touching anything"
