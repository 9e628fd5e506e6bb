"""The README's 5-minute tour, run literally: the tour cannot drift from what works.

The blocks of README.md fenced as ```` ```sh tour-serve ```` (one: how the service is started) and
```` ```sh tour ```` (what the reader types in a second terminal) are extracted and run as they are written:
``make run`` in the background, then every tour block in order in one ``bash -euo pipefail`` reading them
like a terminal does (variables such as ``KEY`` carry from block to block), twice, since the README
promises that any block can be run again. Everything runs against ``make run``'s defaults (SIP on
0.0.0.0:5060, HTTP on 127.0.0.1:8080, SQLite under ./data) inside a network namespace of the test's own,
so the default ports are free and other tests running at the same time are not disturbed, and in a private
mount namespace in which the repository's ``data/`` and ``tour/`` folders are temporary folders of the test
(bind mounts), so nothing is left in the working tree.

Checked afterwards, as the README promises: the call is in ``acme`` and its recording ``completed``; the
downloaded MP3 decodes (ffprobe) with two channels; the link's JSON has a url; ``callrec mix``'s outputs
exist and decode; the admin key ``make run`` printed on its first start works.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support.audio import need

pytestmark = pytest.mark.slow  # the README's tour in a network and mount namespace, twice

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TOUR_HEADING = "## A 5-minute tour"
# a fenced block whose info string is "sh tour" or "sh tour-serve" (GitHub renders both as sh)
FENCE = re.compile(r"^```sh (tour|tour-serve)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
ANY_FENCE = re.compile(r"^```(.*)$", re.M)
DONE = "@@tour-block-done@@"
LISTING = '/api/v1/calls?limit=1" | python3 -m json.tool'  # the block that shows the newest call
READY_TIMEOUT_S = 90.0  # make run: migrations, the recorder, two workers, the API
BLOCK_TIMEOUT_S = 120.0  # the longest block holds a 10 s SIP call (sipp) and two processes' starts and stops
COMPLETED_TIMEOUT_S = 30.0  # the README: "within a second of the BYE"; a loaded test machine gets more
STOP_TIMEOUT_S = 30.0
LOCK_WAIT_S = 600.0  # another run of this test on the same working tree (about 2 minutes)
PASSES = 2


@dataclass
class Block:
    kind: str  # "tour" or "tour-serve"
    text: str
    line: int  # of the opening fence in README.md

    def lines(self) -> list[str]:
        """The commands without their comments (a '#' after a space), joined across backslash-newlines."""
        joined = re.sub(r"\\\n", " ", self.text)
        return [re.sub(r"(^|\s)#.*$", "", ln).strip() for ln in joined.splitlines() if ln.strip()]


def tour_blocks(text: str) -> list[Block]:
    """The marked blocks of README.md, in order."""
    return [Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def tour_section(text: str) -> tuple[int, int]:
    """Where the tour sits: from its heading to the next second-level heading."""
    start = text.index(TOUR_HEADING + "\n")
    end = text.find("\n## ", start + len(TOUR_HEADING))
    return start, len(text) if end < 0 else end


# --- the blocks themselves (no root needed) -----------------------------------------------------------


def test_tour_blocks_marked_and_safe_to_type() -> None:
    text = README.read_text()
    blocks = tour_blocks(text)
    serve = [b for b in blocks if b.kind == "tour-serve"]
    assert len(serve) == 1, f"exactly one ```sh tour-serve block (how the service starts), found {len(serve)}"
    assert serve[0].lines() == ["make run"], f"the tour starts the service with `make run`, not {serve[0].text!r}"
    tour = [b for b in blocks if b.kind == "tour"]
    assert len(tour) >= 5, f"the tour's commands are in ```sh tour blocks; found {len(tour)}"
    start, end = tour_section(text)
    section_lines = (text.count("\n", 0, start) + 1, text.count("\n", 0, end) + 1)
    for block in blocks:
        assert section_lines[0] <= block.line <= section_lines[1], (
            f"README.md:{block.line}: a tour block outside the tour section (lines {section_lines})"
        )
    # every shell block of the section is run by the test, so none can drift unseen
    section = text[start:end]
    openings = [m.group(1).strip() for i, m in enumerate(ANY_FENCE.finditer(section)) if i % 2 == 0]
    unmarked = [info for info in openings if info.split()[:1] in (["sh"], ["bash"], ["console"], [])]
    unmarked = [info for info in unmarked if info not in ("sh tour", "sh tour-serve")]
    assert not unmarked, f"shell blocks in the tour the test does not run: {unmarked}"
    for block in tour:
        for ln in block.lines():
            where = f"README.md:{block.line}: {ln!r}"
            assert not re.search(r"\bpkill\b|\bkillall\b", ln), f"{where}: kill by the pid you started, not by name"
            assert not re.match(r"cd\b", ln), f"{where}: a bare cd leaves the reader elsewhere; use ( cd … && … )"
            assert "http://127.0.0.1:8080$(" not in ln, f"{where}: audio_url is a full URL already"


def test_tour_extraction_finds_marked_blocks_only() -> None:
    text = (
        "## A 5-minute tour\n\n```sh tour-serve\nmake run\n```\n\n```sh\nnot run\n```\n\n"
        "```sh tour\nKEY=$(echo k)   # a comment\ncurl -s \\\n  http://x\n```\n\n## next\n"
    )
    blocks = tour_blocks(text)
    assert [(b.kind, b.line) for b in blocks] == [("tour-serve", 3), ("tour", 11)]
    assert blocks[1].lines() == ["KEY=$(echo k)", "curl -s    http://x"]
    assert tour_section(text) == (0, text.index("\n## next"))


# --- the tour, run -------------------------------------------------------------------------------------


def test_readme_tour_runs_literally(tmp_path: Path) -> None:
    _require_root()
    for tool in ("sipp", "ffmpeg", "ffprobe", "tshark", "curl", "ip", "unshare", "nsenter", "make"):
        need(shutil.which(tool), tool)
    need(shutil.which("python3"), "python3")
    if not Path("/usr/share/sip-tester/g711a.pcap").is_file():
        need(None, "/usr/share/sip-tester/g711a.pcap (package sip-tester)")
    _require_venv_made()
    text = README.read_text()
    blocks = tour_blocks(text)
    tour = [b for b in blocks if b.kind == "tour"]
    scratch = {"data": tmp_path / "data", "tour": tmp_path / "tour"}
    for folder in scratch.values():
        folder.mkdir()
    with _mount_points() as made, _namespaces(scratch) as ns:
        serve_log = tmp_path / "make-run.log"
        with _make_run(ns, serve_log) as admin_key:
            shell = _TourShell(ns, tmp_path / "shell.log")
            try:
                listings: list[str] = []
                outputs: list[str] = []
                for n in range(PASSES):
                    for block in tour:
                        out = shell.run(block, BLOCK_TIMEOUT_S)
                        if LISTING in block.text:
                            out = _until_completed(shell, block, out)
                            listings.append(out)
                        outputs.append(out)
                    print(f"tour pass {n + 1}: {len(tour)} blocks ran")
            finally:
                shell.close()
            # the key make run printed on its first start works too
            status = _curl_status(ns, admin_key, "http://127.0.0.1:8080/api/v1/domains")
            assert status == "200", f"the admin key `make run` printed answers {status}"
    left = [name for name in made if (REPO / name).exists()]
    assert not left, f"the mount points made for the test were not removed (something wrote through?): {left}"
    _check_results(scratch["tour"], listings, outputs)


# --- what the README promises --------------------------------------------------------------------------


def _check_results(tour: Path, listings: list[str], outputs: list[str]) -> None:
    assert len(listings) == PASSES, f"the call listing block ran {len(listings)} times"
    call_ids = []
    for out in listings:
        page = json.loads(out)
        call = page["items"][0]
        assert call["domain"] == "acme", f"the tour's call landed in {call['domain']!r}, not acme"
        assert call["recording"]["state"] == "completed", call["recording"]
        assert call["recording"]["audio_url"].startswith("http://127.0.0.1:8080/"), call["recording"]
        call_ids.append(call["id"])
    assert len(set(call_ids)) == PASSES, f"each pass recorded a call of its own: {call_ids}"
    assert _channels(tour / "call.mp3") == 2, "the downloaded MP3 is not stereo"
    # the link block prints the new link's JSON, once a pass
    links = [json.loads(ln) for out in outputs for ln in out.splitlines() if ln.startswith('{"id"')]
    links = [lk for lk in links if lk.get("kind") == "recording"]
    assert len(links) == PASSES, f"the link block printed {len(links)} links' JSON in {PASSES} passes"
    for link in links:
        assert re.fullmatch(r"http://127\.0\.0\.1:8080/r/[A-Za-z0-9_-]{20,}", link.get("url", "")), link
    mixed = sorted((tour / "out").glob("*.mp3"))
    assert mixed, "callrec mix -o tour/out/ wrote nothing"
    assert _channels(mixed[0]) == 2
    assert _channels(tour / "call.wav") == 2
    # the sipp capture (one file per pass: sipp's call ids differ) and the live recorder's tape (likewise)
    recordings = sorted((tour / "recordings").glob("*.mp3"))
    assert len(recordings) == 2 * PASSES, f"tour/recordings holds {[p.name for p in recordings]}"
    for rec in recordings:
        assert _channels(rec) == 2, rec
    assert len(list((tour / "record" / "tapes").glob("*/*/*/*"))) == 1, "the live block's fresh folder holds one tape"


def _channels(path: Path) -> int:
    ffprobe = need(shutil.which("ffprobe"), "ffprobe")
    proc = subprocess.run([ffprobe, "-v", "error", "-show_entries", "stream=channels,duration", "-of", "json",
                           str(path)], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 0, f"ffprobe cannot read {path}: {proc.stderr}"
    streams = json.loads(proc.stdout)["streams"]
    assert streams and float(streams[0].get("duration", 0)) > 1.0, f"{path}: {streams}"
    return int(streams[0]["channels"])


def _until_completed(shell: _TourShell, block: Block, out: str) -> str:
    """Type the listing block again (as a reader would) until the newest call's recording is completed."""
    deadline = time.monotonic() + COMPLETED_TIMEOUT_S
    tries = 1
    while True:
        try:
            recording = json.loads(out)["items"][0].get("recording") or {}
        except (ValueError, IndexError, KeyError) as exc:
            raise AssertionError(f"the call listing is not what the README shows: {out!r}") from exc
        if recording.get("state") == "completed":
            print(f"recording completed at listing number {tries}")
            return out
        assert recording.get("state") in (None, "recording", "queued", "mixing", "storing"), recording
        assert time.monotonic() < deadline, f"not completed after {COMPLETED_TIMEOUT_S} s: {recording}"
        time.sleep(0.5)
        out = shell.run(block, BLOCK_TIMEOUT_S)
        tries += 1


# --- root, the virtualenv, namespaces, processes -------------------------------------------------------


def _require_root() -> None:
    if os.geteuid() != 0:
        reason = "the tour test runs `make run` in a network and mount namespace of its own: root needed"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (required under CI=true)")
        pytest.skip(reason)


def _require_venv_made() -> None:
    """`make run` must not install anything here: the run stamp is up to date (as `make test` leaves it)."""
    env = _clean_env()
    proc = subprocess.run(["make", "-q", ".venv/.run-stamp"], cwd=REPO, env=env, capture_output=True, timeout=30)
    if proc.returncode != 0:
        reason = ".venv/.run-stamp is missing or older than pyproject.toml: `make run` would install; run " \
                 "`make test` (or `make run`) once first"  # fmt: skip
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def _clean_env() -> dict[str, str]:
    """The environment of a reader's terminal: no CALLREC_* settings of the test run, no outer make's flags
    (`make test` runs pytest), and the usual PATH."""
    drop = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "VIRTUAL_ENV", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_") and k not in drop}
    env["PATH"] = os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOME", "/root")
    return env


@contextmanager
def _mount_points() -> Iterator[list[str]]:
    """data/ and tour/ in the working tree to bind the scratch folders on; those made here are removed after
    (they stay empty: the writes land in the test's folders). One tour at a time per working tree (a lock
    file outside it), so that no other run's namespace still has its folders bound on one removed here."""
    lock_path = Path(tempfile.gettempdir()) / f"callrec-readme-tour-{hashlib.sha256(bytes(REPO)).hexdigest()[:16]}.lock"
    with lock_path.open("w") as lock:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, f"another README tour held {lock_path} for {LOCK_WAIT_S} s"
                time.sleep(1)
        with _made_folders() as made:
            yield made


@contextmanager
def _made_folders() -> Iterator[list[str]]:
    made = []
    try:
        for name in ("data", "tour"):
            path = REPO / name
            if not path.exists():
                path.mkdir()
                made.append(name)
            assert path.is_dir() and not path.is_symlink(), f"{path} is not a folder"
        yield made
    finally:
        for name in made:
            with suppress(OSError):
                (REPO / name).rmdir()


@dataclass
class _Namespaces:
    holder: subprocess.Popen[str]
    netns: str

    def enter(self) -> list[str]:
        """A command prefix that runs in the network and mount namespaces, in the repository's folder."""
        return ["nsenter", f"--target={self.holder.pid}", "--mount", "--net", f"--wdns={REPO}"]


@contextmanager
def _namespaces(scratch: dict[str, Path]) -> Iterator[_Namespaces]:
    """A network namespace (lo up) and a private mount namespace with data/ and tour/ bound to ``scratch``,
    kept alive by a process holding them; everything in the network namespace is killed after."""
    netns = f"callrec-tour-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=30)
    holder: subprocess.Popen[str] | None = None
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, timeout=30)
        mounts = " && ".join(f"mount --bind {shlex.quote(str(scratch[name]))} {shlex.quote(str(REPO / name))}"
                             for name in ("data", "tour"))  # fmt: skip
        holder = subprocess.Popen(
            ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private", "sh", "-c",
             f"{mounts} && echo mounted && exec sleep 3600"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        assert holder.stdout is not None
        line = _read_line(holder.stdout, 30)
        assert line.strip() == "mounted", f"the namespaces were not made: {line!r}"
        yield _Namespaces(holder, netns)
    finally:
        _kill_netns_processes(netns)
        if holder is not None:
            _stop_group(holder, signal.SIGKILL, 10)
            if holder.stdout is not None:
                holder.stdout.close()
        subprocess.run(["ip", "netns", "del", netns], timeout=30, check=False)


def _kill_netns_processes(netns: str) -> None:
    """Every process left in the test's own network namespace (a sipp or tshark a failed block left)."""
    for _ in range(5):
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=30).stdout
        found = [int(p) for p in pids.split()]
        if not found:
            return
        for pid in found:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _read_line(stream: IO[str], timeout_s: float) -> str:
    """One line from ``stream`` within ``timeout_s`` ('' at its end)."""
    box: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: box.put(stream.readline()), daemon=True).start()
    try:
        return box.get(timeout=timeout_s)
    except queue.Empty:
        raise AssertionError(f"no line within {timeout_s} s") from None


@contextmanager
def _make_run(ns: _Namespaces, log: Path) -> Iterator[str]:
    """``make run`` as the tour's first block says, in the namespaces; yields the admin key it printed once
    ready, and stops it as Ctrl-C does (SIGINT to its process group), bounded."""
    serve = [b for b in tour_blocks(README.read_text()) if b.kind == "tour-serve"][0]
    with log.open("w") as out:
        proc = subprocess.Popen([*ns.enter(), "bash", "-euo", "pipefail", "-c", serve.text], env=_clean_env(),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "callrec serve: ready:" not in log.read_text():
            assert proc.poll() is None, f"make run exited {proc.returncode}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"make run not ready in {READY_TIMEOUT_S} s: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        text = log.read_text()
        assert "pip install" not in text, f"make run installed again although the virtualenv was made: {text[:2000]}"
        assert "http://127.0.0.1:8080, sip 0.0.0.0:5060" in text, f"not make run's defaults: {text[-2000:]}"
        key = re.search(r"admin API key \(shown once, keep it\): (cr_\S+)", text)
        assert key, f"make run did not print the admin key on its first start: {text[:2000]}"
        yield key.group(1)
    finally:
        stopped = _stop_group(proc, signal.SIGINT, STOP_TIMEOUT_S)
        print(f"make run log:\n{log.read_text()[-1500:]}")
    assert stopped, f"make run did not stop within {STOP_TIMEOUT_S} s of Ctrl-C (SIGINT)"


def _stop_group(proc: subprocess.Popen[Any], sig: signal.Signals, timeout_s: float) -> bool:
    """Signal the process group ``proc`` leads; SIGKILL it if it is still there after ``timeout_s``.
    True when it ended on ``sig``."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout_s)
        return True
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return False
    finally:
        with suppress(ProcessLookupError):  # what the group's leader left behind
            os.killpg(proc.pid, signal.SIGKILL)


def _curl_status(ns: _Namespaces, key: str, url: str) -> str:
    argv = [*ns.enter(), "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Authorization: Bearer {key}"]
    proc = subprocess.run([*argv, url], capture_output=True, text=True, timeout=30)
    return proc.stdout.strip()


class _TourShell:
    """The reader's second terminal: one bash (``set -euo pipefail``) reading the blocks from a pipe as they
    are typed; stdin is /dev/null (nothing waits for a key); a failed command ends the shell, which fails
    the test with the block and its output."""

    def __init__(self, ns: _Namespaces, log: Path) -> None:
        read_end, self._write_end = os.pipe()
        self._log = log.open("w")
        try:
            self.proc = subprocess.Popen(
                [*ns.enter(), "bash", "--noprofile", "--norc", f"/dev/fd/{read_end}"], env=_clean_env(),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                pass_fds=(read_end,), start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(read_end)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True, name="tour-shell")
        self._reader.start()
        self._type("set -euo pipefail\n")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            self._lines.put(line)
        self._lines.put(None)

    def _type(self, text: str) -> None:
        os.write(self._write_end, text.encode())

    def run(self, block: Block, timeout_s: float) -> str:
        """Type the block, then a marker; return what it printed (stdout and stderr)."""
        self._type(block.text.rstrip("\n") + f"\necho {DONE}\n")
        out: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"README.md:{block.line}: the block did not finish within {timeout_s} s:\n{block.text}\n"
                    f"output:\n{''.join(out)[-4000:]}"
                ) from None
            if line is None:
                code = self.proc.wait(10)
                raise AssertionError(
                    f"README.md:{block.line}: the block failed (the shell exited {code}):\n{block.text}\n"
                    f"output:\n{''.join(out)[-4000:]}"
                )
            if line.rstrip("\n") == DONE:
                return "".join(out)
            out.append(line)

    def close(self) -> None:
        with suppress(OSError):
            os.close(self._write_end)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)  # the end of its input ends the shell
        _stop_group(self.proc, signal.SIGTERM, 10)
        self._reader.join(10)
        self._log.close()
