"""``callrec serve`` / ``callrec record`` ``--rtpengine-spool DIR`` with real processes.

A recording Debian's rtpengine wrote (tests/data/rtpengine/simple) put into the spool the way rtpengine
finishes one becomes a call with source ``rtpengine``; and, as root, Debian's real rtpengine in a network
namespace of the test's own records a call of two parties speaking different sentences into the spool of a
running ``callrec serve``: the call's recording has the caller left and the callee right, each matching
what that party sent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest

from callrec.files.pcap import CaptureReader
from tests.service.test_rtpengine_spool_unit import add_recording
from tests.support.recorder_proc import RecorderProcess, read_call
from tests.support.rtpengine_peer import PTIME_S, RecordedCall, RtpenginePeer
from tests.support.serve_proc import ServeProcess
from tests.test_rtpengine_mix import check_mix

pytestmark = pytest.mark.slow  # Debian's rtpengine in a network namespace, real serve processes

FIXTURE = Path(__file__).parents[1] / "data" / "rtpengine" / "simple"
SAMPLE_PCAP = next((FIXTURE / "pcaps").glob("*.pcap"))
SAMPLE_META = next((FIXTURE / "metadata").glob("*.txt"))


def finish_recording(spool: Path, metadata: str = "domain:acme|interaction:int-7") -> tuple[Path, Path]:
    """Put the fixture recording into ``spool`` as rtpengine does: the pcap in ``pcaps/``, the metadata
    written in ``tmp/`` and renamed into ``metadata/`` when the call is over."""
    for sub in ("pcaps", "metadata", "tmp"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    pcap = spool / "pcaps" / SAMPLE_PCAP.name
    shutil.copyfile(SAMPLE_PCAP, pcap)
    lines = SAMPLE_META.read_text().rstrip("\n").split("\n")
    lines[0], lines[-1] = str(pcap), metadata
    tmp = spool / "tmp" / SAMPLE_META.name.replace(".txt", ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    meta = spool / "metadata" / SAMPLE_META.name
    os.rename(tmp, meta)
    return pcap, meta


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callrec", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_spool_folder_that_does_not_exist_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    missing = tmp_path / "no-spool"
    for command in ("record", "serve"):
        proc = run_cli(command, "--data", str(tmp_path / command), "--listen", "127.0.0.1:0",
                       "--rtpengine-spool", str(tmp_path), "--rtpengine-spool", str(missing))  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last == f"callrec: error: --rtpengine-spool: {missing}: no such folder (rtpengine's recording-dir)"
        assert "Traceback" not in proc.stderr
    proc = run_cli("record", "--data", str(tmp_path / "env"), "--listen", "127.0.0.1:0",
                   env={"CALLREC_RTPENGINE_SPOOL": f"{tmp_path}{os.pathsep}{missing}"})  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        f"callrec: error: CALLREC_RTPENGINE_SPOOL: {missing}: no such folder (rtpengine's recording-dir)"
    ), proc.stderr
    proc = run_cli("serve", "--data", str(tmp_path / "norecord"), "--no-record", "--rtpengine-spool", str(tmp_path))
    assert proc.returncode == 2 and "cannot be used with --no-record" in proc.stderr, proc.stderr


def test_record_alone_turns_a_finished_recording_into_a_tape_under_data_tapes_mixed_with_mix(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    with RecorderProcess(tmp_path / "data", "--rtpengine-spool", str(spool), "--mix") as rec:
        pcap, meta = finish_recording(spool)
        tapes: list[Path] = []
        mixed: list[Path] = []
        for _ in range(600):  # at most ~60 s: the watcher looks every second, then --mix mixes the tape
            tapes, mixed = rec.tapes(), list((tmp_path / "data" / "recordings").glob("*.mp3"))
            if tapes and not meta.exists() and mixed:
                break
            time.sleep(0.1)
        assert rec.stop() == 0, rec.log()
    assert [m.name for m in mixed] == ["abc_host-" + tapes[0].name.rsplit("-", 1)[-1] + ".mp3"], rec.log()
    [folder] = tapes
    call = read_call(folder)
    assert (call["source"], call["domain"], call["interaction_id"], call["closed_cleanly"]) == (
        "rtpengine", "acme", "int-7", True
    ), call  # fmt: skip
    assert (folder / "media.pcap").read_bytes() == SAMPLE_PCAP.read_bytes()
    assert not pcap.exists() and not meta.exists(), "the spool's files go once the tape is written"


@pytest.mark.parametrize("given", ["flags", "environment"])
def test_record_watches_every_spool_given_twice_or_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    """--rtpengine-spool is repeatable, CALLREC_RTPENGINE_SPOOL holds several folders: each is watched."""
    spools = [tmp_path / "spool-1", tmp_path / "spool-2"]
    for spool in spools:
        spool.mkdir()
    args: list[str] = []
    if given == "flags":
        args = [a for spool in spools for a in ("--rtpengine-spool", str(spool))]
        monkeypatch.delenv("CALLREC_RTPENGINE_SPOOL", raising=False)
    else:
        monkeypatch.setenv("CALLREC_RTPENGINE_SPOOL", os.pathsep.join(map(str, spools)))
    with RecorderProcess(tmp_path / "data", *args) as rec:
        files = [add_recording(spool, call_id=f"spool-{n}@host", metadata=f"domain:acme|interaction:int-{n}")
                 for n, spool in enumerate(spools, 1)]  # fmt: skip
        for _ in range(300):  # at most ~30 s: the watcher looks every second
            if len(rec.tapes()) == 2 and not any(p.exists() for pair in files for p in pair):
                break
            time.sleep(0.1)
        assert rec.stop() == 0, rec.log()
    got = sorted((c["call_ids"], c["source"], c["interaction_id"]) for c in map(read_call, rec.tapes()))
    assert got == [(["spool-1@host"], "rtpengine", "int-1"), (["spool-2@host"], "rtpengine", "int-2")], rec.log()
    assert not any(p.exists() for pair in files for p in pair), "each spool's files go once its tape is written"


def _completed(serve: ServeProcess) -> dict[str, Any] | None:
    items = serve.api.get("/api/v1/calls").json()["items"]
    done = [c for c in items if c["recording"] and c["recording"]["state"] == "completed"]
    return done[0] if done else None


def test_serve_makes_a_finished_recording_in_the_spool_a_call(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    with ServeProcess(tmp_path / "data", "--rtpengine-spool", str(spool)) as serve:
        assert serve.api.post("/api/v1/domains", json={"name": "acme"}).status_code == 201
        pcap, meta = finish_recording(spool)
        card = serve.wait_for("a completed recording", lambda: _completed(serve), timeout=60)
        card = serve.api.get(f"/api/v1/calls/{card['id']}").json()
        assert (card["source"], card["domain"], card["interaction_id"]) == ("rtpengine", "acme", "int-7"), card
        assert card["recording"]["duration_s"] > 0.5
        assert not pcap.exists() and not meta.exists()
        assert serve.stop() == 0, serve.log()[-3000:]


class SpoolWatchedPeer(RtpenginePeer):
    """rtpengine recording into the spool of a running callrec, which may take a finished recording
    before the harness sees it in ``metadata/``: the call is over once its metadata file is there, or once
    its pcap has left the spool (taken)."""

    def _wait_finished(self, call_id: str) -> tuple[Path, Path]:
        stem = quote(call_id, safe="")
        for _ in range(200):  # at most ~10 s
            metas = sorted((self.spool / "metadata").glob(f"rtpengine-meta-{stem}-*.txt"))
            if metas:
                name = metas[0].name.removeprefix("rtpengine-meta-").removesuffix(".txt")
                return metas[0], self.spool / "pcaps" / f"{name}.pcap"
            if not list((self.spool / "pcaps").glob(f"{stem}-*.pcap")):
                return self.spool / "metadata" / "(taken)", self.spool / "pcaps" / "(taken)"
            time.sleep(0.05)
        raise TimeoutError(f"rtpengine did not finish the recording of {call_id}")


def test_real_rtpengine_records_into_the_spool_of_a_running_serve(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    with ServeProcess(tmp_path / "data", "--rtpengine-spool", str(spool)) as serve:
        # PCM WAV: what is compared is the mix, not an MP3 encoder
        settings = {"format": "wav", "keep_tape_days": 1}  # the tape stays: where its packets arrived
        made = serve.api.post("/api/v1/domains", json={"name": "acme", "settings": settings})
        assert made.status_code == 201, made.text
        with SpoolWatchedPeer(spool, log=tmp_path / "rtpengine.log") as peer:
            call = peer.call("e2e-1@pbx.example", seconds=4.0, callee_delay=0.37,
                             metadata="domain:acme|interaction:int-e2e-1")  # fmt: skip
        card = serve.wait_for("a completed recording", lambda: _completed(serve), timeout=60)
        card = serve.api.get(f"/api/v1/calls/{card['id']}").json()
        assert (card["source"], card["domain"], card["interaction_id"]) == ("rtpengine", "acme", "int-e2e-1"), card
        assert card["call_id"] == "e2e-1@pbx.example", card
        audio = serve.api.get(card["recording"]["audio_url"])
        assert audio.status_code == 200, audio.text
        wav = tmp_path / "call.wav"
        wav.write_bytes(audio.content)
        # the spool's files are gone (the call is stored), nothing set aside
        assert [p for p in spool.rglob("*") if p.is_file()] == []
        assert serve.stop() == 0, serve.log()[-3000:]
        [media] = (tmp_path / "data" / "storage").rglob("media.pcap")  # the call's tape, in storage
    # each channel holds what its party said, placed where its packets reached rtpengine (the sender's own
    # pacing slips under load: its first packet is no reference); t = 0 is the earliest of them
    starts = arrival_starts(media, call)
    placed = replace(call, caller=replace(call.caller, first_send=starts["A"]),
                     callee=replace(call.callee, first_send=starts["B"]))  # fmt: skip
    check_mix(placed, wav, min(starts.values()))


def arrival_starts(pcap: Path, call: RecordedCall) -> dict[str, float]:
    """Per party, when its first packet would have reached rtpengine had every packet arrived on its
    20 ms schedule: the median over its packets of arrival time minus sequence number times 20 ms."""
    parties = {call.caller.engine_port: "A", call.callee.engine_port: "B"}
    offsets: dict[str, list[float]] = {"A": [], "B": []}
    first_seq: dict[str, int] = {}
    with CaptureReader(pcap) as reader:
        for d in reader:
            party = parties.get(d.dport)
            if party is None or len(d.payload) < 12:
                continue
            seq = int.from_bytes(d.payload[2:4], "big")
            n = (seq - first_seq.setdefault(party, seq)) & 0xFFFF
            offsets[party].append(d.ts - n * PTIME_S)
    assert all(offsets.values()), f"no RTP of a party in the tape: {[len(v) for v in offsets.values()]}"
    return {party: float(np.median(values)) for party, values in offsets.items()}
