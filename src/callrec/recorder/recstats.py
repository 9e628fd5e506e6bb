"""The live recorder's counters, handed to ``/metrics`` through a small file in its data folder.

The recorder (``callrec record``, or the recorder child of ``callrec serve``) is a process of its own; the
API that answers ``/metrics`` reads its figures from ``DATA/recorder-stats.json``, which the recorder
rewrites (atomically) about once a second while they change. The figures count from the recorder's start:
they are Prometheus counters, which may reset when the recorder restarts. ``RecorderStats`` holds the
recorder's own tallies (sessions, SIP messages refused or failed, tapes recovered, closes by reason).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from callrec.files.atomic import write_json

STATS_FILE = "recorder-stats.json"

# counter name (without ``_total``) -> its help text; the recorder writes these keys
COUNTERS = {
    "callrec_recorder_sessions": "SIPREC sessions accepted by this host's recorder since it started",
    "callrec_recorder_sessions_rejected": "SIPREC sessions refused (403, 503) since the recorder started",
    "callrec_recorder_packets_recorded": "RTP/RTCP packets written to tapes since the recorder started",
    "callrec_recorder_packets_malformed": "datagrams on RTP ports that were not RTP/RTCP, dropped",
    "callrec_recorder_packets_foreign": "packets from sources other than a session's SRC (its advertised or "
    "latched source), dropped: stale media of an old call, another host's traffic",
    "callrec_recorder_streams_latched": "streams latched to a source other than the one the SRC's SDP "
    "advertised (NAT, asymmetric RTP)",
}


@dataclass(slots=True)
class RecorderStats:
    sessions_total: int = 0
    sessions_rejected: int = 0
    sip_bad: int = 0
    sip_dropped: int = 0
    sip_errors: int = 0  # messages whose handling failed unexpectedly (a bug): see the log
    tapes_recovered: int = 0
    closed: dict[str, int] = field(default_factory=dict)


def write(data_dir: Path, values: dict[str, int]) -> None:
    """Replace the figures file atomically (a reader never sees half of it)."""
    write_json(data_dir / STATS_FILE, values)


def read(data_dir: Path) -> dict[str, int]:
    """The figures the recorder wrote last (only known counters with integer values); empty when there is
    no recorder on this data folder or its file is unreadable."""
    try:
        data = json.loads((data_dir / STATS_FILE).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k in COUNTERS and isinstance(v, int) and not isinstance(v, bool)}
