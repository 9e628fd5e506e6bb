"""Closed tapes as the recorder leaves them, made from synthetic calls whose audio is known."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from callrec.files import tape
from callrec.models import CallInfo, Party, RtpMap, Stream
from tests.support import synth


@dataclass
class MadeTape:
    folder: Path
    call_id: str
    truth: dict[str, np.ndarray]
    duration: float
    packets: int


def make_tape(
    tapes_dir: Path,
    *,
    call_id: str = "",
    seconds: float = 4.0,
    domain: str = "default",
    interaction: str = "",
    started_at: float | None = None,
    numbers: tuple[str, str] = ("+74951230001", "201"),
    seed: int = 1,
    extra: dict[str, object] | None = None,
    closed: bool = True,
) -> MadeTape:
    """A tape folder under ``tapes_dir/YYYY/MM/DD/`` holding one A/B call of ``seconds`` of PCMA voice."""
    call_id = call_id or f"svc-{secrets.token_hex(4)}@test"
    start = time.time() if started_at is None else started_at
    built = synth.build(
        synth.Scenario(call_id=call_id, duration=seconds, a=synth.StreamPlan("A", seed=seed),
                       b=synth.StreamPlan("B", seed=seed + 1)),
        base_time=start,
    )  # fmt: skip
    day = time.gmtime(start)
    folder = tapes_dir / f"{day.tm_year:04d}" / f"{day.tm_mon:02d}" / f"{day.tm_mday:02d}"
    folder = folder / f"{call_id.replace('@', '_')}-{secrets.token_hex(3)}"
    folder.mkdir(parents=True)
    pcma = {8: RtpMap("PCMA", 8000)}
    scn = synth.Scenario()
    info = CallInfo(
        call_ids=[call_id],
        parties=[Party("A", "caller", number=numbers[0]), Party("B", "callee", number=numbers[1])],
        streams=[
            Stream("A", synth.B_IP, scn.b_port, synth.A_IP, scn.a_port, "1", dict(pcma)),
            Stream("B", synth.A_IP, scn.a_port, synth.B_IP, scn.b_port, "2", dict(pcma)),
        ],
        domain=domain,
        interaction_id=interaction,
        started_at=start,
        source="siprec",
    )
    writer = tape.TapeWriter(folder, info)
    for ts, src, sport, dst, dport, payload in built.media:
        writer.write(ts, (src, sport), (dst, dport), payload)
    if closed:
        writer.close(ended_at=start + seconds, cleanly=True)
    else:
        writer.flush()
    if extra:
        import json

        data = json.loads((folder / tape.META_FILE).read_text())
        data.update(extra)
        (folder / tape.META_FILE).write_text(json.dumps(data))
    truth = {p: t.audio for p, t in built.truth.items()}
    return MadeTape(folder, call_id, truth, built.duration, len(built.media))


def make_long_tape(tapes_dir: Path, *, seconds: float, call_id: str = "") -> MadeTape:
    """A long A/B tape made fast: random PCMA frames every 20 ms on both streams (long enough to kill a mix)."""
    short = make_tape(tapes_dir, seconds=0.2, call_id=call_id, closed=False)
    info = tape.read_info(short.folder)
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, size=(64, 160), dtype=np.uint8)
    scn = synth.Scenario()
    writer = tape.TapeWriter(short.folder, info, append=True)
    start = (info.started_at or time.time()) + 1.0
    count = int(seconds / 0.02)
    for i in range(count):
        ts = start + i * 0.02
        for ssrc, src, sport, dst, dport in ((1, synth.A_IP, scn.a_port, synth.B_IP, scn.b_port),
                                              (2, synth.B_IP, scn.b_port, synth.A_IP, scn.a_port)):  # fmt: skip
            header = bytes([0x80, 8]) + (i & 0xFFFF).to_bytes(2, "big") + (i * 160 & 0xFFFFFFFF).to_bytes(4, "big")
            payload = header + (0x1000 + ssrc).to_bytes(4, "big") + frames[i % 64].tobytes()
            writer.write(ts, (src, sport), (dst, dport), payload)
    writer.close(ended_at=start + seconds, cleanly=True)
    return MadeTape(short.folder, short.call_id, {}, seconds, short.packets + 2 * count)
