"""A call of any length mixes in memory that does not grow with its length.

The long captures come from bench/mix.py's generator (numpy record blocks: seconds, not minutes).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from callrec.media.mixer import CallMixer
from callrec.mix import mix
from tests.support import synth
from tests.support.audio import need

pytestmark = pytest.mark.slow  # long calls through callrec mix processes

ROOT = Path(__file__).resolve().parents[2]


def bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_mix", ROOT / "bench" / "mix.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_mix"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need(synth.FFMPEG, "ffmpeg")
    bench = bench_module()
    folder = tmp_path_factory.mktemp("long")
    loops = (bench.voice_loop(1), bench.voice_loop(2))
    return {
        name: bench.write_capture(folder, hours, loops, name, raw=False).path
        for name, hours in (("short", 2 / 60), ("long", 40 / 60))
    }


def test_waiting_packets_stay_bounded_during_a_long_call(
    captures: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every time audio is written, each stream holds only its jitter buffer's worth of packets."""
    worst = [0]
    mixers: list[CallMixer] = []
    original = CallMixer.__init__

    def spy_init(self: CallMixer, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        mixers.append(self)
        sink_write = self.sink.write

        def write(block: np.ndarray) -> None:
            for source in self._sources.values():
                worst[0] = max(worst[0], source.timeline.waiting())
            sink_write(block)

        self.sink.write = write  # type: ignore[method-assign]

    monkeypatch.setattr(CallMixer, "__init__", spy_init)
    report = mix(captures["long"], tmp_path / "long.mp3")
    assert report.calls[0].duration_s == pytest.approx(40 * 60, abs=1)
    assert mixers
    # 50 packets/s per stream: the 400 ms jitter buffer plus a 0.5 s step is ~50 packets, never thousands
    assert 0 < worst[0] <= 100


def peak_rss_mb(capture: Path, out: Path) -> float:
    """The peak RSS of one ``callrec mix`` process (its own rusage, from wait4)."""
    with open(out.with_suffix(".err"), "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "callrec.cli", "mix", str(capture), "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, out.with_suffix(".err").read_text()
    return usage.ru_maxrss / 1024


def test_peak_memory_is_the_same_for_a_short_and_a_long_call(captures: dict[str, Path], tmp_path: Path) -> None:
    short = peak_rss_mb(captures["short"], tmp_path / "short.mp3")
    long = peak_rss_mb(captures["long"], tmp_path / "long.mp3")
    assert long - short < 10, f"peak RSS {short:.1f} MB for 2 minutes, {long:.1f} MB for 40 minutes"


def test_what_python_holds_at_its_peak_is_the_same_for_a_short_and_a_long_call(
    captures: dict[str, Path], tmp_path: Path
) -> None:
    """Peak RSS is a noisy figure (the allocator's holes); what Python and numpy hold at the worst moment is
    not: packets waiting and their decoded audio stay a few seconds' worth, whatever the call's length."""
    import tracemalloc

    peaks = []
    tracemalloc.start()
    try:
        for name in ("short", "long"):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            mix(captures[name], tmp_path / f"{name}-traced.mp3")
            peaks.append((tracemalloc.get_traced_memory()[1] - before) / 1e6)
    finally:
        tracemalloc.stop()
    short, long = peaks
    # what does grow: the speaking segments (the result itself) and one byte of level a 20 ms frame,
    # ~1.9 MB at 40 minutes; a stream's whole lane run decoded and kept while any packet of it waited
    # made it 12.4 -> 15.6 MB
    assert long - short < 2.5, f"traced peak {short:.2f} MB for 2 minutes, {long:.2f} MB for 40 minutes"
    assert long < 11, f"traced peak {long:.2f} MB for 40 minutes"
