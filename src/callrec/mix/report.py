"""What a mix gives back: one result per call, the capture's warnings and counts; and its files' names."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class CallOutput:
    """One call's result, as printed by ``--json``."""

    call_id: str
    output: Path | None
    duration_s: float = 0.0
    sample_rate: int = 0
    channels: int = 0
    bytes: int = 0
    streams: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    # capture time (epoch seconds) of the output's t = 0 (the call's earliest media as placed)
    started_at: float | None = None
    # each party's speaking segments in output time, {"A": [[from_s, to_s], ...], ...}
    speech: dict[str, list[list[float]]] = field(default_factory=dict)
    # what the recording itself should say (SRTP it could not decrypt: that audio is silence); in warnings too
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "output": str(self.output) if self.output else None,
            "duration_s": round(self.duration_s, 3),
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "bytes": self.bytes,
            "streams": self.streams,
            "warnings": self.warnings,
            "error": self.error,
        }


@dataclass(slots=True)
class MixReport:
    calls: list[CallOutput] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


def unique_name(name: str, taken: set[str]) -> str:
    """``name`` (a Call-ID made a safe file name), or for the second, third... call sharing it ``name-2``,
    ``name-3``..."""
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"
