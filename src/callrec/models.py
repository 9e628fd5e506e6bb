"""Call metadata shared by capture, tapes and the mixer (the content of a tape's ``call.json``), and what a
payload type means: ``RtpMap`` and the static RFC 3551 payload types."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from callrec.errors import ParseError

PARTY_ROLES = ("caller", "callee", "participant")
SOURCES = ("siprec", "pcap", "upload", "rtpengine", "capture")
# what a call.json may hold (an uploaded one is refused past these, with the limit named): times are
# seconds since 1970 up to the year 9999 (what a datetime holds); a call of a conference has few streams
MAX_TIME_S = 253_402_300_799.0
MAX_CALL_IDS = 64
MAX_PARTIES = 256
MAX_STREAMS = 512
# SRTP keys a call.json may hold: a few re-keyings of every stream
MAX_SRTP_KEYS = 4 * MAX_STREAMS
MAX_RTPMAP = 128

# RFC 3551 Table 4: static payload type -> (encoding name, RTP clock rate, channels)
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),  # the clock stays 8000 although the audio is 16 kHz (RFC 3551 §4.5.2)
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
}


@dataclass(slots=True)
class RtpMap:
    """One payload type's codec: ``encoding/clock_rate[/channels]`` plus its fmtp parameters."""

    encoding: str
    clock_rate: int
    channels: int = 1
    fmtp: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.encoding}/{self.clock_rate}"


def static_rtpmap(payload_type: int) -> RtpMap | None:
    """The static RFC 3551 assignment of a payload type nobody negotiated, or None."""
    static = STATIC_PAYLOAD_TYPES.get(payload_type)
    if static is None:
        return None
    return RtpMap(static[0], static[1], static[2])


@dataclass(slots=True)
class Party:
    """One side of a call: ``A`` is the caller, ``B`` the callee, conference participants ``P1``…"""

    id: str
    role: str
    number: str = ""
    name: str = ""
    uri: str = ""


@dataclass(slots=True)
class Stream:
    """One media stream as received: packets sent to ``local_addr:local_port`` come from ``party``."""

    party: str
    local_addr: str
    local_port: int
    remote_addr: str = ""
    remote_port: int = 0
    label: str = ""
    rtpmap: dict[int, RtpMap] = field(default_factory=dict)
    # packets the recorder dropped because they came from neither the SRC's advertised source nor the one
    # latched to; and the source the stream was latched to at the end, when the SRC sent from elsewhere
    foreign_packets: int = 0
    latched_addr: str = ""
    latched_port: int = 0


@dataclass(slots=True)
class CallInfo:
    """Everything known about one call; serialised as ``call.json``."""

    call_ids: list[str]
    parties: list[Party] = field(default_factory=list)
    streams: list[Stream] = field(default_factory=list)
    domain: str = "default"
    interaction_id: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    source: str = "pcap"
    closed_cleanly: bool = False
    interrupted: bool = False
    # why the recording ended: "bye", "cancel", "idle", "shutdown", "no-ack", "crash", "" while open
    end_reason: str = ""
    # the recorder process that writes the tape while it is open (see capture/recovery.py)
    recorder: str = ""
    # the recorded call's own identifiers as its SRC names them (SIPREC metadata: the original Call-ID(s),
    # <sipSessionID>), beside ``call_ids`` (the dialogs we saw); searchable like them
    original_call_ids: list[str] = field(default_factory=list)
    # SRTP keys (SDES) of the streams that were encrypted, each entry naming its stream by its index in
    # ``streams``, the key only sealed with the service's secret box (media/srtp_keys.py); empty: no SRTP
    srtp: list[Any] = field(default_factory=list)

    @property
    def call_id(self) -> str:
        return self.call_ids[0] if self.call_ids else ""

    def party(self, party_id: str) -> Party | None:
        return next((p for p in self.parties if p.id == party_id), None)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for stream in data["streams"]:
            stream["rtpmap"] = {str(pt): codec for pt, codec in stream["rtpmap"].items()}
        if not data["srtp"]:
            del data["srtp"]  # a call without SRTP keeps the call.json it always had
        data["version"] = 1
        return data

    @classmethod
    def from_json(cls, data: Any) -> CallInfo:
        """Build from parsed ``call.json``; raise ``ParseError`` when a required field is missing."""
        try:
            streams = [
                Stream(
                    party=str(s["party"]),
                    local_addr=str(s["local_addr"]),
                    local_port=int(s["local_port"]),
                    remote_addr=str(s.get("remote_addr", "")),
                    remote_port=int(s.get("remote_port", 0)),
                    label=str(s.get("label", "")),
                    rtpmap={
                        int(pt): RtpMap(
                            str(c["encoding"]),
                            int(c["clock_rate"]),
                            int(c.get("channels", 1)),
                            {str(k): str(v) for k, v in c.get("fmtp", {}).items()},
                        )
                        for pt, c in s.get("rtpmap", {}).items()
                    },
                    foreign_packets=int(s.get("foreign_packets", 0)),
                    latched_addr=str(s.get("latched_addr", "")),
                    latched_port=int(s.get("latched_port", 0)),
                )
                for s in data.get("streams", [])
            ]
            parties = [
                Party(
                    id=str(p["id"]),
                    role=str(p["role"]),
                    number=str(p.get("number", "")),
                    name=str(p.get("name", "")),
                    uri=str(p.get("uri", "")),
                )
                for p in data.get("parties", [])
            ]
            call_ids = [str(c) for c in data["call_ids"]]
            original = [str(c) for c in data.get("original_call_ids", [])]
            # kept as found: a damaged entry is the mixer's to explain (srtp_keys.open_keys), not a bad call.json
            srtp = data.get("srtp") or []
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ParseError(f"call.json is not a valid tape description: {exc}") from exc
        _check_sizes(call_ids, parties, streams)
        if len(original) > MAX_CALL_IDS:
            raise ParseError(f"call.json: more than {MAX_CALL_IDS} original_call_ids")
        if not isinstance(srtp, list):
            srtp = [srtp]  # open_keys names what is wrong with it
        if len(srtp) > MAX_SRTP_KEYS:
            raise ParseError(f"call.json: more than {MAX_SRTP_KEYS} srtp keys")
        return cls(
            call_ids=call_ids,
            parties=parties,
            streams=streams,
            domain=str(data.get("domain", "default")),
            interaction_id=str(data.get("interaction_id", "")),
            started_at=_opt_float(data.get("started_at")),
            ended_at=_opt_float(data.get("ended_at")),
            source=str(data.get("source", "pcap")),
            closed_cleanly=bool(data.get("closed_cleanly", False)),
            interrupted=bool(data.get("interrupted", False)),
            end_reason=str(data.get("end_reason", "")),
            recorder=str(data.get("recorder", "")),
            original_call_ids=original,
            srtp=srtp,
        )


def _check_sizes(call_ids: list[str], parties: list[Party], streams: list[Stream]) -> None:
    """Refuse a call.json larger than any call (``ParseError`` naming the limit)."""
    for what, items, limit in (("call_ids", call_ids, MAX_CALL_IDS), ("parties", parties, MAX_PARTIES),
                               ("streams", streams, MAX_STREAMS)):  # fmt: skip
        if len(items) > limit:
            raise ParseError(f"call.json: more than {limit} {what}")
    for s in streams:
        if not all(0 <= p <= 65535 for p in (s.local_port, s.remote_port, s.latched_port)):
            raise ParseError("call.json: a stream port is not between 0 and 65535")
        if s.foreign_packets < 0:
            raise ParseError("call.json: a stream's foreign packet count is negative")
        if len(s.rtpmap) > MAX_RTPMAP:
            raise ParseError(f"call.json: a stream has more than {MAX_RTPMAP} payload types")
        if any(not 0 <= pt <= 127 or not 0 < c.clock_rate <= 1_000_000 or not 0 < c.channels <= 64
               for pt, c in s.rtpmap.items()):  # fmt: skip
            raise ParseError("call.json: a payload type, clock rate or channel count is out of range")


def _opt_float(value: Any) -> float | None:
    """A time in call.json: null, or finite seconds since 1970 up to the year 9999."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ParseError("call.json: a time is not a number")
    try:
        number = float(value)
    except (ValueError, OverflowError) as exc:
        raise ParseError("call.json: a time is not a number") from exc
    if not 0.0 <= number <= MAX_TIME_S:  # NaN fails this too
        raise ParseError(f"call.json: a time is not finite or not between 0 and {MAX_TIME_S:.0f} (the year 9999)")
    return number
