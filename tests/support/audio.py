"""Checks on mixed audio: decoding with ffmpeg (the oracle), cross-correlation, RFC 3550 jitter."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")


def need(tool: str | None, name: str) -> str:
    """The tool's path; skip when missing, except under CI where a missing tool is a failure."""
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI")
        pytest.skip(f"{name} is not installed")
    return tool


def callrec(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "callrec.cli", *args], capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"callrec {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def mix_json(*args: str) -> list[dict[str, Any]]:
    proc = callrec("mix", *args, "--json")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def decode(path: Path, rate: int = 8000, channels: int = 2) -> np.ndarray:
    """Decode any output file with ffmpeg to int16 (frames, channels)."""
    ffmpeg = need(FFMPEG, "ffmpeg")
    out = subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(path), "-f", "s16le", "-ac", str(channels), "-ar", str(rate), "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(out, np.int16).reshape(-1, channels)


def probe(path: Path) -> dict[str, Any]:
    ffprobe = need(FFPROBE, "ffprobe")
    out = subprocess.run(
        [ffprobe, "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def xcorr(x: np.ndarray, ref: np.ndarray, max_lag: int) -> tuple[int, float]:
    """Lag (samples, positive when ``x`` is late) and normalised peak of the cross-correlation."""
    n = min(len(x), len(ref))
    a = x[:n].astype(np.float64)
    b = ref[:n].astype(np.float64)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    c = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    vals = np.concatenate([c[: max_lag + 1], c[size - max_lag :]])
    k = int(np.argmax(vals))
    norm = np.sqrt((a * a).sum() * (b * b).sum()) or 1.0
    return int(lags[k]), float(vals[k] / norm)


def windows(truth: np.ndarray, rate: int, seconds: float = 1.0) -> list[tuple[int, int]]:
    """Windows where the truth has speech."""
    size = int(rate * seconds)
    out = []
    for lo in range(0, len(truth) - size + 1, size):
        seg = truth[lo : lo + size].astype(np.float64)
        if np.sqrt((seg * seg).mean()) > 300:
            out.append((lo, lo + size))
    return out


def rfc3550_jitter_ms(packets: list[tuple[float, bytes]], clock: int = 8000) -> dict[int, float]:
    """Per SSRC, the max of the RFC 3550 interarrival jitter over (arrival, rtp bytes) in arrival order."""
    state: dict[int, list[float]] = {}  # ssrc -> [jitter, prev transit, worst, last ext ts]
    seen: set[tuple[int, int]] = set()
    for arrival, data in packets:
        seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
        pt = data[1] & 0x7F
        if (ssrc, seq) in seen or pt in (13, 101):
            continue
        seen.add((ssrc, seq))
        st = state.get(ssrc)
        if st is None:
            state[ssrc] = [0.0, arrival * clock - ts, 0.0, float(ts)]
            continue
        ext = st[3] + ((ts - int(st[3])) + (1 << 31)) % (1 << 32) - (1 << 31)
        st[3] = ext
        transit = arrival * clock - ext
        st[0] += (abs(transit - st[1]) - st[0]) / 16
        st[2] = max(st[2], st[0])
        st[1] = transit
    return {ssrc: st[2] / clock * 1000 for ssrc, st in state.items()}
