"""The live capture's figures, handed to ``/metrics`` through a small file in its data folder.

``callrec capture`` (alone, or the capture child of ``callrec serve --capture``) rewrites
``DATA/capture-stats.json`` atomically about once a second; the API reads it at scrape time, as it reads the
SIPREC recorder's ``recorder-stats.json`` (``callrec.recorder.recstats``). Counters count from the capture's
start (Prometheus counters may reset when it restarts); the kernel's figures are per interface.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from callrec.files.atomic import write_json

STATS_FILE = "capture-stats.json"

# per interface (label ``interface``): name (without ``_total``) -> help
INTERFACE_COUNTERS = {
    "callrec_capture_packets": "frames the capture filter took from the interface (kernel count, drops included)",
    "callrec_capture_drops": "frames lost because the capture ring was full (kernel count): should stay 0",
    "callrec_capture_link_errors": "times the captured interface was reported down",
}
COUNTERS = {
    "callrec_capture_calls": "calls whose tape the live capture opened since it started",
    "callrec_capture_calls_refused": "calls not followed because the capture had its most open calls",
    "callrec_capture_sip_messages": "SIP messages the live capture read (UDP and TCP)",
    "callrec_capture_rtp_packets": "RTP packets of followed calls the live capture read",
    "callrec_capture_packets_written": "SIP, RTP and RTCP packets the live capture wrote to tapes",
    "callrec_capture_tape_errors": "tape writes or closes that failed (see the log)",
}
GAUGES = {"callrec_capture_calls_open": "calls the live capture is recording now"}


def write(
    data_dir: Path, interfaces: dict[str, dict[str, int]], totals: dict[str, int], gauges: dict[str, int]
) -> None:
    """Replace the figures file atomically (a reader never sees half of it)."""
    values = {"interfaces": interfaces, "counters": totals, "gauges": gauges}
    write_json(data_dir / STATS_FILE, values)


def _ints(value: Any, known: dict[str, str]) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if k in known and isinstance(v, int) and not isinstance(v, bool)}


def read(data_dir: Path) -> tuple[dict[str, dict[str, int]], dict[str, int], dict[str, int]]:
    """(per interface counters, counters, gauges) the capture wrote last; empty when there is no capture on
    this data folder or its file is unreadable."""
    try:
        data = json.loads((data_dir / STATS_FILE).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}, {}, {}
    if not isinstance(data, dict):
        return {}, {}, {}
    raw = data.get("interfaces")
    interfaces = {str(k): _ints(v, INTERFACE_COUNTERS) for k, v in raw.items()} if isinstance(raw, dict) else {}
    return interfaces, _ints(data.get("counters"), COUNTERS), _ints(data.get("gauges"), GAUGES)
