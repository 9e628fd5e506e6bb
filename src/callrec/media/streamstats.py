"""The quality figures of one SSRC, as the timeline counts them and ``callrec mix --json`` reports them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class StreamStats:
    """Quality figures of one SSRC, as reported by ``callrec mix --json``."""

    ssrc: int
    party: str
    codecs: dict[str, int] = field(default_factory=dict)
    received: int = 0
    duplicates: int = 0
    reordered: int = 0
    late: int = 0
    events: int = 0
    comfort_noise: int = 0
    undecodable: int = 0
    unsupported: list[str] = field(default_factory=list)
    first_seq: int | None = None
    max_seq: int | None = None
    max_jitter: float = 0.0  # seconds

    @property
    def packets(self) -> int:
        """Every packet of the SSRC, duplicates included."""
        return self.received + self.duplicates

    @property
    def lost(self) -> int:
        if self.first_seq is None or self.max_seq is None:
            return 0
        return max(0, self.max_seq - self.first_seq + 1 - self.received)

    def to_json(self) -> dict[str, Any]:
        main = max(self.codecs, key=lambda k: self.codecs[k]) if self.codecs else ""
        return {
            "ssrc": self.ssrc,
            "party": self.party,
            "codec": main,
            "codecs": sorted(self.codecs),
            "packets": self.packets,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "late": self.late,
            "max_jitter_ms": round(self.max_jitter * 1000, 3),
            "telephone_events": self.events,
            "comfort_noise": self.comfort_noise,
            "undecodable": self.undecodable,
            "unsupported_codecs": self.unsupported,
        }
