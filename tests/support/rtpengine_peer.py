"""Debian's real rtpengine recording calls into a spool folder, for tests: ``RtpenginePeer``.

rtpengine (userspace, ``--recording-method pcap``) runs inside a network namespace of the test's own, so
nothing else on the machine's loopback reaches it and the test's RTP reaches nothing else. In the
namespace, on its loopback: rtpengine at 10.77.0.1 (ng control on 127.0.0.1), the caller at 10.77.0.2,
the callee at 10.77.0.3. A call is driven by a child process started with ``ip netns exec`` (this file
run as a script): it speaks ng with the small bencode client below (offer with ``record call`` and
``metadata``, answer, delete) and plays each party's real-time RTP (PCMA, 20 ms pacing) to the port
rtpengine gave it. What each party sent comes back as :class:`Sent`; the recording lands in the spool.

Usage (root, rtpengine installed; :func:`require` skips otherwise, and fails under ``CI=true``)::

    with RtpenginePeer(tmp_path / "spool") as peer:
        call = peer.call("abc@host", seconds=3.0, metadata="domain:acme|interaction:int-7")
        # call.spool holds pcaps/ and metadata/; call.caller.pcm is what the caller said, ...

Everything is torn down in ``close()`` (also on errors): rtpengine is killed by its process group, the
namespace deleted. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

RTPENGINE = shutil.which("rtpengine") or ("/usr/bin/rtpengine" if os.path.exists("/usr/bin/rtpengine") else None)
IP = shutil.which("ip")
ENGINE_ADDR = "10.77.0.1"
CALLER_ADDR = "10.77.0.2"
CALLEE_ADDR = "10.77.0.3"
NG_ADDR = ("127.0.0.1", 2223)
RTP_PORTS = (30000, 30999)
PTIME_S = 0.020
FRAME_BYTES = 160  # PCMA, 20 ms at 8000 Hz
PCMA_PT = 8
NG_TIMEOUT_S = 3.0
START_TIMEOUT_S = 15.0
FINISH_TIMEOUT_S = 10.0


def require() -> None:
    """Skip (with the reason) when the machine cannot run rtpengine in a namespace; fail under CI."""
    reasons = []
    if RTPENGINE is None:
        reasons.append("rtpengine is not installed (Debian package rtpengine-daemon)")
    if IP is None:
        reasons.append("the ip command is not installed (iproute2)")
    if os.geteuid() != 0:
        reasons.append("network namespaces need root")
    if shutil.which("ffmpeg") is None:
        reasons.append("ffmpeg is not installed")
    if reasons:
        reason = "; ".join(reasons)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (required under CI=true)")
        pytest.skip(reason)


# --- ng: bencode over UDP, "<cookie> <dictionary>" ------------------------------------------------------


def bencode(value: Any) -> bytes:
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Any:
    """Decode one bencoded value (strings stay bytes); ValueError on anything else."""
    value, end = _bdecode(data, 0)
    if end != len(data):
        raise ValueError("trailing bytes after the bencoded value")
    return value


def _bdecode(data: bytes, i: int) -> tuple[Any, int]:
    kind = data[i : i + 1]
    if kind == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if kind in (b"l", b"d"):
        i += 1
        items: list[Any] = []
        while data[i : i + 1] != b"e":
            if i >= len(data):
                raise ValueError("bencoded list or dictionary is not terminated")
            item, i = _bdecode(data, i)
            items.append(item)
        if kind == b"l":
            return items, i + 1
        return dict(zip(items[::2], items[1::2], strict=True)), i + 1
    colon = data.index(b":", i)
    length = int(data[i:colon])
    return data[colon + 1 : colon + 1 + length], colon + 1 + length


class NgClient:
    """rtpengine's ng control protocol over UDP: one request, one reply (matched by cookie)."""

    def __init__(self, address: tuple[str, int] = NG_ADDR, timeout: float = NG_TIMEOUT_S) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)

    def request(self, command: dict[str, Any]) -> dict[bytes, Any]:
        cookie = secrets.token_hex(6).encode()
        self.sock.sendto(cookie + b" " + bencode(command), self.address)
        deadline = time.monotonic() + (self.sock.gettimeout() or NG_TIMEOUT_S)
        while time.monotonic() < deadline:
            data = self.sock.recv(65535)
            got, _, body = data.partition(b" ")
            if got == cookie:
                reply = bdecode(body)
                if not isinstance(reply, dict):
                    raise ValueError("ng reply is not a dictionary")
                return reply
        raise TimeoutError(f"no ng reply to {command.get('command')}")

    def checked(self, command: dict[str, Any]) -> dict[bytes, Any]:
        reply = self.request(command)
        if reply.get(b"result") not in (b"ok", b"pong"):
            raise RuntimeError(f"rtpengine refused {command.get('command')}: {reply}")
        return reply

    def close(self) -> None:
        self.sock.close()


# --- what a test gets back -----------------------------------------------------------------------------


@dataclass
class Sent:
    """What one party sent: its PCMA payload, the audio in it (decoded), when and where."""

    party: str  # "A" (caller) or "B" (callee)
    addr: str
    port: int
    payload: bytes
    pcm: np.ndarray  # int16 at 8000 Hz: the payload decoded by ffmpeg, what the party "said"
    ssrc: int
    # epoch seconds when the first packet was due: packet k is due at first_send + k x 20 ms (what the
    # steady stream lines up with; under load the first packet itself may leave a few ms late)
    first_send: float = 0.0
    first_sent_at: float = 0.0  # when the first packet really left
    packets: int = 0
    engine_port: int = 0  # where rtpengine received it (from the SDP rtpengine gave the other party)


@dataclass
class RecordedCall:
    call_id: str
    spool: Path
    caller: Sent
    callee: Sent
    metadata_file: Path | None = None
    pcap_file: Path | None = None
    offer_sdp: str = ""
    answer_sdp: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def speech(seconds: float, seed: int) -> np.ndarray:
    """A speech-like signal (the project's test voice), distinct per seed."""
    from tests.support.synth import voice

    return voice(seconds, seed)


def encode_pcma(pcm: np.ndarray) -> bytes:
    from tests.support.synth import ffmpeg_encode

    return ffmpeg_encode(pcm, "PCMA")


def decode_pcma(payload: bytes) -> np.ndarray:
    from tests.support.synth import ffmpeg_decode

    return ffmpeg_decode(payload, "PCMA")


def sdp(user: str, version: int, addr: str, port: int) -> str:
    return (
        f"v=0\r\no={user} 1001 {version} IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        "a=ptime:20\r\na=sendrecv\r\n"
    )


# --- the peer ------------------------------------------------------------------------------------------


class RtpenginePeer:
    """rtpengine in a namespace of its own, recording into ``spool``; see the module docstring."""

    def __init__(
        self, spool: Path, *, recording_format: str = "raw", advertise: str | None = None, log: Path | None = None
    ) -> None:
        require()
        self.spool = Path(spool)
        self.recording_format = recording_format
        # rtpengine behind NAT (``--interface=LOCAL!PUBLIC``): its SDPs give ``advertise``, packets reach LOCAL
        self.advertise = advertise
        self.netns = f"crrtpe{secrets.token_hex(3)}"
        self.log = log or self.spool.parent / f"{self.netns}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._netns_made = False
        self._work = Path(tempfile.mkdtemp(prefix="callrec-rtpe-"))
        self._seed = 0

    def __enter__(self) -> RtpenginePeer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        assert IP is not None and RTPENGINE is not None
        self.spool.mkdir(parents=True, exist_ok=True)
        subprocess.run([IP, "netns", "add", self.netns], check=True, timeout=10)
        self._netns_made = True
        subprocess.run([IP, "-n", self.netns, "link", "set", "lo", "up"], check=True, timeout=10)
        for addr in (ENGINE_ADDR, CALLER_ADDR, CALLEE_ADDR):
            subprocess.run([IP, "-n", self.netns, "addr", "add", f"{addr}/24", "dev", "lo"], check=True, timeout=10)
        command = [
            IP, "netns", "exec", self.netns, RTPENGINE,
            "--foreground", "--log-stderr", "--no-log-timestamps", "--log-level=6",
            f"--interface={ENGINE_ADDR}" + (f"!{self.advertise}" if self.advertise else ""),
            f"--listen-ng={NG_ADDR[0]}:{NG_ADDR[1]}",
            f"--port-min={RTP_PORTS[0]}", f"--port-max={RTP_PORTS[1]}",
            f"--recording-dir={self.spool}", "--recording-method=pcap",
            f"--recording-format={self.recording_format}",
            "--table=-1", "--delete-delay=0", "--num-threads=2",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            # a process group of its own: killed as one, never by name
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._drive({"action": "ping"}, timeout=START_TIMEOUT_S + 10)

    def call(
        self,
        call_id: str,
        *,
        seconds: float = 3.0,
        callee_delay: float = 0.3,
        metadata: str = "domain:acme|interaction:int-7",
        seeds: tuple[int, int] | None = None,
        reinvite_at: float | None = None,
    ) -> RecordedCall:
        """One recorded call: offer (``record call``, ``metadata``), answer, both parties speak for
        ``seconds`` (the callee starts ``callee_delay`` later; negative: earlier), delete; returns once
        rtpengine has moved the metadata file into ``metadata/`` (the recording is finished). With
        ``reinvite_at`` (seconds after the caller's first packet) the callee re-INVITEs mid-call, both
        parties move to new ports and rtpengine gives new ones (``Sent.engine_port`` is the first)."""
        if seeds is None:
            seeds = (self._seed * 2 + 101, self._seed * 2 + 102)
        self._seed += 1
        n = self._seed
        parties = []
        for party, addr, seed in (("A", CALLER_ADDR, seeds[0]), ("B", CALLEE_ADDR, seeds[1])):
            payload = encode_pcma(speech(seconds, seed))
            payload = payload[: len(payload) // FRAME_BYTES * FRAME_BYTES]
            port = 40000 + 10 * n + (0 if party == "A" else 2)
            parties.append(Sent(party, addr, port, payload, decode_pcma(payload), random.getrandbits(32)))
        caller, callee = parties
        job: dict[str, Any] = {
            "action": "call",
            "call_id": call_id,
            "metadata": metadata,
            "callee_delay": callee_delay,
            "reinvite_at": reinvite_at,
            "parties": [],
        }
        for sent in parties:
            path = self._work / f"{n}-{sent.party}.pcma"
            path.write_bytes(sent.payload)
            job["parties"].append(
                {"party": sent.party, "addr": sent.addr, "port": sent.port, "payload": str(path), "ssrc": sent.ssrc}
            )
        result = self._drive(job, timeout=seconds + callee_delay + 30)
        for sent in parties:
            got = result["parties"][sent.party]
            sent.first_send, sent.first_sent_at = got["first_send"], got["first_sent_at"]
            sent.packets, sent.engine_port = got["packets"], got["engine_port"]
        call = RecordedCall(call_id, self.spool, caller, callee, offer_sdp=result["offer"], answer_sdp=result["answer"])
        call.metadata_file, call.pcap_file = self._wait_finished(call_id)
        return call

    def _wait_finished(self, call_id: str) -> tuple[Path, Path]:
        from urllib.parse import quote

        prefix = "rtpengine-meta-" + quote(call_id, safe="")
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while time.monotonic() < deadline:
            found = [p for p in (self.spool / "metadata").glob("*.txt") if p.name.startswith(prefix + "-")]
            if found:
                meta = found[0]
                pcap = self.spool / "pcaps" / (meta.name[len("rtpengine-meta-") : -len(".txt")] + ".pcap")
                return meta, pcap
            time.sleep(0.05)
        raise TimeoutError(f"rtpengine did not finish the recording of {call_id} within {FINISH_TIMEOUT_S} s")

    def _drive(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run the driver (this file as a script) inside the namespace on one job; its JSON answer."""
        assert IP is not None
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"rtpengine is not running (see {self.log})")
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.run(
            [IP, "netns", "exec", self.netns, sys.executable, "-m", "tests.support.rtpengine_peer"],
            input=json.dumps(job).encode(),
            capture_output=True,
            timeout=timeout,
            cwd=root,
            env=env,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"rtpengine driver failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
        answer: dict[str, Any] = json.loads(proc.stdout)
        return answer

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if self._netns_made and IP is not None:
            subprocess.run([IP, "netns", "del", self.netns], check=False, timeout=10, capture_output=True)
            self._netns_made = False
        shutil.rmtree(self._work, ignore_errors=True)


# --- the driver, run inside the namespace --------------------------------------------------------------


def _ping(deadline: float) -> dict[str, Any]:
    ng = NgClient(timeout=0.5)
    try:
        while True:
            try:
                if ng.request({"command": "ping"}).get(b"result") == b"pong":
                    return {"ok": True}
            except (TimeoutError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("rtpengine did not answer ng ping")
            time.sleep(0.1)
    finally:
        ng.close()


def _call(job: dict[str, Any]) -> dict[str, Any]:
    caller, callee = job["parties"]
    call_id = job["call_id"]
    ng = NgClient()
    try:
        offer = ng.checked(
            {
                "command": "offer",
                "call-id": call_id,
                "from-tag": "caller-tag",
                "sdp": sdp("alice", 1, caller["addr"], caller["port"]),
                "record call": "yes",
                "metadata": job["metadata"],
            }
        )[b"sdp"].decode()
        answer = ng.checked(
            {
                "command": "answer",
                "call-id": call_id,
                "from-tag": "caller-tag",
                "to-tag": "callee-tag",
                "sdp": sdp("bob", 1, callee["addr"], callee["port"]),
            }
        )[b"sdp"].decode()
        # the offer as rewritten goes to the callee (where it sends); the answer to the caller
        caller["engine_port"] = _media_port(answer)
        callee["engine_port"] = _media_port(offer)

        def reinvite() -> list[tuple[int, int]]:
            """The callee re-INVITEs with a new port, the caller answers with a new one: (own port, where to
            send) of each party afterwards."""
            offer2 = ng.checked(
                {
                    "command": "offer",
                    "call-id": call_id,
                    "from-tag": "callee-tag",
                    "to-tag": "caller-tag",
                    "sdp": sdp("bob", 2, callee["addr"], callee["port"] + 4),
                }
            )[b"sdp"].decode()
            answer2 = ng.checked(
                {
                    "command": "answer",
                    "call-id": call_id,
                    "from-tag": "callee-tag",
                    "to-tag": "caller-tag",
                    "sdp": sdp("alice", 2, caller["addr"], caller["port"] + 6),
                }
            )[b"sdp"].decode()
            return [(caller["port"] + 6, _media_port(offer2)), (callee["port"] + 4, _media_port(answer2))]

        # to rtpengine's own address (what its SDPs give may be the public side of a NAT)
        at = job.get("reinvite_at")
        sent = _play([caller, callee], [0.0, float(job["callee_delay"])], ENGINE_ADDR, at, reinvite)
        ng.checked({"command": "delete", "call-id": call_id, "from-tag": "caller-tag"})
    finally:
        ng.close()
    return {"offer": offer, "answer": answer, "parties": sent}


def _media_port(sdp_text: str) -> int:
    match = re.search(r"^m=audio (\d+) ", sdp_text, re.M)
    if match is None:
        raise ValueError("rtpengine's SDP has no audio line")
    return int(match.group(1))


def _bind(addr: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    return sock


def _play(
    parties: list[dict[str, Any]],
    delays: list[float],
    engine: str,
    reinvite_at: float | None = None,
    reinvite: Callable[[], list[tuple[int, int]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every party's RTP at once, each packet at its own 20 ms tick from the party's start; at
    ``reinvite_at`` seconds ``reinvite()`` moves every party to a new port and destination."""
    socks, frames = [], []
    for party in parties:
        socks.append(_bind(party["addr"], party["port"]))
        data = Path(party["payload"]).read_bytes()
        frames.append([data[i : i + FRAME_BYTES] for i in range(0, len(data) - FRAME_BYTES + 1, FRAME_BYTES)])
    delays = [d - min(delays) for d in delays]  # a negative delay: the callee speaks first
    for party in parties:
        party["first_engine_port"] = party["engine_port"]
    seq = [random.getrandbits(16) for _ in parties]
    ts = [random.getrandbits(32) for _ in parties]
    start = time.time() + 0.1
    sent = [0] * len(parties)
    first = [0.0] * len(parties)
    try:
        while True:
            due = [(start + delays[i] + sent[i] * PTIME_S, i) for i in range(len(parties)) if sent[i] < len(frames[i])]
            if not due:
                break
            when, i = min(due)
            delay = when - time.time()
            if delay > 0:
                time.sleep(delay)
            if reinvite is not None and reinvite_at is not None and when - start >= reinvite_at:
                for n, (port, engine_port) in enumerate(reinvite()):
                    socks[n].close()
                    socks[n] = _bind(parties[n]["addr"], port)
                    parties[n]["engine_port"] = engine_port
                reinvite = None
            header = (
                bytes([0x80, PCMA_PT | (0x80 if sent[i] == 0 else 0)])
                + ((seq[i] + sent[i]) & 0xFFFF).to_bytes(2, "big")
                + ((ts[i] + sent[i] * FRAME_BYTES) & 0xFFFFFFFF).to_bytes(4, "big")
                + int(parties[i]["ssrc"]).to_bytes(4, "big")
            )
            now = time.time()
            socks[i].sendto(header + frames[i][sent[i]], (engine, parties[i]["engine_port"]))
            if sent[i] == 0:
                first[i] = now
            sent[i] += 1
    finally:
        for sock in socks:
            sock.close()
    return {
        p["party"]: {
            "first_send": start + delays[i],
            "first_sent_at": first[i],
            "packets": sent[i],
            "engine_port": p["first_engine_port"],
        }
        for i, p in enumerate(parties)
    }


def main() -> None:
    job = json.loads(sys.stdin.read())
    if job["action"] == "ping":
        answer = _ping(time.monotonic() + START_TIMEOUT_S)
    elif job["action"] == "call":
        answer = _call(job)
    else:
        raise SystemExit(f"unknown action {job['action']!r}")
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
