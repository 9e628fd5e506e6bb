"""rtpengine's own recordings (``--recording-method=pcap``): one call's pcap and its metadata file.

rtpengine writes, per recorded call, into its spool folder::

    SPOOL/pcaps/<callid>-<16 hex>.pcap                      the RTP it received, raw IP (or made-up Ethernet)
    SPOOL/tmp/rtpengine-meta-<callid>-<16 hex>.tmp          the metadata while the call runs
    SPOOL/metadata/rtpengine-meta-<callid>-<16 hex>.txt     ... renamed here when the call is over

The Call-ID in the names is percent-encoded (``g_uri_escape_string``). The metadata file's format is read by
``callrec.files.rtpengine_meta``; this module finds recordings in a spool and makes each one a call.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from callrec.errors import CallrecError, ParseError
from callrec.files.pcap import CaptureReader, UdpBlock, format_addr
from callrec.files.rtpengine_meta import STARTED, Metadata, SdpBlock
from callrec.models import MAX_TIME_S, CallInfo, Party, Stream
from callrec.wire.sdp import Sdp, SdpMedia
from callrec.wire.sip import display_name, uri_user

log = logging.getLogger("callrec.rtpengine")

SOURCE = "rtpengine"
PCAPS_DIR = "pcaps"
METADATA_DIR = "metadata"
TMP_DIR = "tmp"
META_PREFIX = "rtpengine-meta-"
# a metadata file is a few SDPs; anything far larger is not one (and is not read into memory)
MAX_META_BYTES = 4 << 20
SNIFF_BYTES = 4096

_TAG = r"-([0-9A-Fa-f]{16})"
_PCAP_NAME = re.compile(r"(.+)" + _TAG + r"\.pcap")
_META_NAME = re.compile(re.escape(META_PREFIX) + r"(.+)" + _TAG + r"\.(txt|tmp)")

Flows = dict[tuple[str, int], set[str]]  # (destination address, port) -> the source addresses that sent there
_warned: set[str] = set()  # damaged recordings already logged by finished()


@dataclass(frozen=True)
class SpoolRecording:
    """One finished rtpengine recording: its two files, the call's Call-ID and the ng metadata pairs."""

    pcap: Path
    metadata: Path
    call_id: str
    pairs: dict[str, str]


def _read_meta(path: Path) -> Metadata:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_META_BYTES + 1)
    except OSError as exc:
        raise ParseError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if len(data) > MAX_META_BYTES:
        raise ParseError(f"{path}: larger than any rtpengine metadata file")
    try:
        return Metadata.parse(data)
    except ParseError as exc:
        raise ParseError(f"{path}: not an rtpengine recording ({exc})") from exc


def _sniff_meta(path: Path) -> bool:
    """The start of a file looks like an rtpengine metadata file (its pcap's path, then SDP blocks)."""
    try:
        with path.open("rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return False
    first, _, rest = head.partition(b"\n")
    return first.strip().endswith(b".pcap") and (b"\nSDP mode: " in rest or STARTED.encode() in rest)


def is_recording(path: Path) -> bool:
    """Whether ``path`` is one file of an rtpengine recording: a metadata file (by name or content), or a
    pcap named ``<callid>-<16 hex>.pcap`` lying in a spool's ``pcaps/`` folder beside ``metadata/``."""
    path = Path(path)
    if not path.is_file():
        return False
    if _META_NAME.fullmatch(path.name):
        return True
    if _PCAP_NAME.fullmatch(path.name):
        return path.parent.name == PCAPS_DIR and (path.parent.parent / METADATA_DIR).is_dir()
    if path.suffix.lower() in (".pcap", ".pcapng", ".cap"):
        return False  # a capture: never read it as text
    return _sniff_meta(path)


def locate(path: Path) -> SpoolRecording:
    """The recording ``path`` belongs to, given either of its files; ``ParseError`` with one sentence
    when the companion file is missing or the file is not an rtpengine recording."""
    path = Path(path)
    if not path.is_file():
        raise ParseError(f"{path}: no such file")
    pcap_match = _PCAP_NAME.fullmatch(path.name)
    if pcap_match and not _sniff_meta(path):
        stem = path.name[: -len(".pcap")]
        spool = path.parent.parent
        metadata = spool / METADATA_DIR / f"{META_PREFIX}{stem}.txt"
        if not metadata.is_file():
            if (spool / TMP_DIR / f"{META_PREFIX}{stem}.tmp").is_file():
                raise ParseError(f"{path}: the call is still being recorded (its metadata is still in {TMP_DIR}/)")
            raise ParseError(f"{path}: its rtpengine metadata file {metadata} is missing")
        meta = _read_meta(metadata)
        return SpoolRecording(path, metadata, unquote(pcap_match.group(1)), meta.pairs)
    meta = _read_meta(path)
    if path.name.endswith(".tmp") and path.parent.name == TMP_DIR:
        raise ParseError(f"{path}: the call is still being recorded (its metadata is still in {TMP_DIR}/)")
    pcap = _pcap_of(path, meta)
    match = _META_NAME.fullmatch(path.name) or _PCAP_NAME.fullmatch(pcap.name)
    call_id = unquote(match.group(1)) if match else ""
    if not call_id:
        raise ParseError(f"{path}: the Call-ID cannot be told from the file names of this rtpengine recording")
    return SpoolRecording(pcap, path, call_id, meta.pairs)


def _pcap_of(metadata: Path, meta: Metadata) -> Path:
    """The pcap of a metadata file: in the spool's ``pcaps/`` by name (the metadata file's, else the one
    its first line gives), else beside the metadata file."""
    named = Path(meta.pcap_path).name
    match = _META_NAME.fullmatch(metadata.name)
    candidates = []
    if match:
        candidates.append(metadata.parent.parent / PCAPS_DIR / f"{match.group(1)}-{match.group(2)}.pcap")
    # (not the path itself: a copied spool would silently read the original's pcap)
    candidates += [metadata.parent.parent / PCAPS_DIR / named, metadata.parent / named]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ParseError(f"{metadata}: its rtpengine pcap {candidates[0]} is missing")


def finished(spool: Path) -> list[SpoolRecording]:
    """Every finished recording in the spool folder ``spool`` (its metadata moved to ``metadata/``, its
    pcap present), oldest first. A damaged one is logged (once) and left out."""
    folder = Path(spool) / METADATA_DIR
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(META_PREFIX) and e.name.endswith(".txt")]
    except OSError:
        return []
    found: list[tuple[int, str, SpoolRecording]] = []
    for entry in entries:
        match = _META_NAME.fullmatch(entry.name)
        if match is None:
            continue
        pcap = Path(spool) / PCAPS_DIR / f"{match.group(1)}-{match.group(2)}.pcap"
        try:
            mtime = entry.stat().st_mtime_ns
            if not pcap.is_file():
                continue
            meta = _read_meta(Path(entry.path))
        except (OSError, ParseError) as exc:
            if entry.path not in _warned:
                if len(_warned) > 10_000:
                    _warned.clear()
                _warned.add(entry.path)
                log.warning("rtpengine recording %s left in the spool: %s", entry.name, exc)
            continue
        found.append((mtime, entry.name, SpoolRecording(pcap, Path(entry.path), unquote(match.group(1)), meta.pairs)))
    found.sort(key=lambda item: (item[0], item[1]))
    return [rec for _, _, rec in found]


def call_info(rec: SpoolRecording, *, domain_key: str = "domain", interaction_key: str = "interaction") -> CallInfo:
    """The call of an rtpengine recording, as a tape's ``call.json`` would describe it.

    Party ``A`` (caller) sent the first offer, ``B`` (callee) answered it. Each ``m=audio`` line of each SDP
    becomes a stream received at rtpengine's address and port in it: an SDP the caller produced (rewritten
    by rtpengine, sent to the callee) says where the callee sends, and the other way round. Who produced a
    later SDP (a re-INVITE may come from either side) is told, in this order, by its monologue label, by
    its ``o=`` line (user and session id, user and address, user, address: whichever tells the first
    offer's and answer's apart), by a port already known, by the source address of the packets that
    reached its ports, and last by the offer/answer direction of the first exchange. Behind NAT
    (``interface=LOCAL!PUBLIC``) the SDPs name the public address: a stream whose address the pcap never
    shows takes the one address its port was reached at.

    From the ng metadata pairs: ``domain_key`` (default domain ``default``), ``interaction_key``, and the
    parties' numbers and names from ``from`` / ``to`` (a number or a SIP URI) and ``from_name`` /
    ``to_name``; missing ones are left empty.
    """
    meta = _read_meta(rec.metadata)
    pairs = rec.pairs
    caller, callee = _parties(pairs)
    info = CallInfo(
        call_ids=[rec.call_id],
        parties=[caller, callee],
        domain=pairs.get(domain_key) or "default",
        interaction_id=pairs.get(interaction_key, ""),
        source=SOURCE,
        closed_cleanly=True,
    )
    info.started_at = _seconds(min((b.started_ms for b in meta.blocks if b.started_ms), default=None))
    info.ended_at = _seconds(meta.terminated_ms)
    try:
        flows = _flows(rec.pcap)
    except (CallrecError, OSError):
        flows = {}  # an unreadable pcap is reported by whoever reads it
    _add_streams(info, meta.blocks, flows)
    _match_addresses(info, flows)
    return info


def _seconds(ms: float | None) -> float | None:
    """Milliseconds since 1970 as seconds, or None when absent, zero or beyond what a call.json holds."""
    if not ms or not 0 < ms / 1000 <= MAX_TIME_S:
        return None
    return ms / 1000


def _flows(pcap: Path) -> Flows:
    """Who sent UDP where in a capture (one vectorised pass)."""
    out: Flows = {}
    with CaptureReader(pcap) as reader:
        for item in reader.batches():
            if isinstance(item, UdpBlock):
                if len(item):
                    dst = (item.field(16, 4) << 16) | item.field(22, 2)
                    pairs = np.unique(np.stack([dst, item.field(12, 4)]), axis=1)
                    for key, src in pairs.T.tolist():
                        endpoint = (format_addr(int(key >> 16).to_bytes(4, "big")), int(key & 0xFFFF))
                        out.setdefault(endpoint, set()).add(format_addr(int(src).to_bytes(4, "big")))
            elif item.proto == 17:
                out.setdefault((format_addr(item.dst), item.dport), set()).add(format_addr(item.src))
    return out


def _match_addresses(info: CallInfo, flows: Flows) -> None:
    """Give each stream the address its packets really reached (rtpengine behind NAT): a port is
    rtpengine's own socket, so a stream whose SDP address never appears takes the one its port was
    reached at."""
    by_port: dict[int, set[str]] = {}
    for addr, port in flows:
        by_port.setdefault(port, set()).add(addr)
    for stream in info.streams:
        if (stream.local_addr, stream.local_port) in flows:
            continue
        found = by_port.get(stream.local_port, set())
        if len(found) == 1:
            stream.local_addr = next(iter(found))


def _parties(pairs: dict[str, str]) -> tuple[Party, Party]:
    out = []
    for party_id, role, key in (("A", "caller", "from"), ("B", "callee", "to")):
        value = pairs.get(key, "")
        name = pairs.get(f"{key}_name", "")
        if "sip:" in value or "sips:" in value or "tel:" in value:
            uri = value.split("<", 1)[1].split(">", 1)[0] if "<" in value and ">" in value else value
            out.append(Party(party_id, role, uri_user(value), name or display_name(value), uri))
        else:
            out.append(Party(party_id, role, value, name))
    return out[0], out[1]


def _origin_keys(block: SdpBlock, sdp: Sdp) -> list[tuple[str, ...]]:
    """What may tell who produced an SDP, strongest first: its monologue label, then its ``o=`` line's
    user and session id, user and address, user, address (rtpengine keeps the ``o=`` line as it was)."""
    fields = sdp.origin.split() + [""] * 6
    user, session, address = fields[0], fields[1], fields[5]
    return [("label", block.label), ("us", user, session), ("ua", user, address), ("u", user), ("a", address)]


def _sources(flows: Flows, port: int) -> set[str]:
    return set().union(*(src for (_, p), src in flows.items() if p == port))


def _add_streams(info: CallInfo, blocks: list[SdpBlock], flows: Flows) -> None:
    parsed: list[tuple[SdpBlock, Sdp]] = []
    for block in blocks:
        try:
            parsed.append((block, Sdp.parse(block.sdp)))
        except ParseError:
            log.warning("call %s: an SDP in the rtpengine metadata is not valid SDP; skipped", info.call_id)
    first_offer = next(((b, s) for b, s in parsed if b.mode == "offer"), parsed[0] if parsed else None)
    if first_offer is None:
        return
    first_answer = next(((b, s) for b, s in parsed if b.mode == "answer"), None)
    # each key tells the two sides apart only when it differs between the first offer and answer
    sides: list[dict[tuple[str, ...], str]] = []
    if first_answer is not None:
        for a, b in zip(_origin_keys(*first_offer), _origin_keys(*first_answer), strict=True):
            if a != b and all(a[1:]) and all(b[1:]):
                sides.append({a: "caller", b: "callee"})
    seen: dict[tuple[str, int], Stream] = {}
    for block, sdp in parsed:
        media = [m for m in sdp.media if m.media == "audio" and m.port and m.address]
        keys = _origin_keys(block, sdp)
        if block is first_offer[0] or (first_answer is not None and block is first_answer[0]):
            producer: str | None = "caller" if block is first_offer[0] else "callee"
        else:
            producer = next((side[k] for side in sides for k in keys if k in side), None)
        if producer is None:
            producer = _producer_by_media(media, seen, flows)
        if producer is None:
            producer = "caller" if block.mode == first_offer[0].mode else "callee"
        # media sent to the ports in an SDP the caller produced comes from the callee, and vice versa
        party = "B" if producer == "caller" else "A"
        for m in media:
            address = m.address or ""
            stream = seen.get((address, m.port))
            if stream is None:
                stream = seen[(address, m.port)] = Stream(party=party, local_addr=address, local_port=m.port)
                info.streams.append(stream)
            stream.party = party
            stream.rtpmap.update(m.rtpmap)
            for pt in m.formats:
                codec = m.codec(pt)
                if codec is not None and pt not in stream.rtpmap:
                    stream.rtpmap[pt] = codec


def _producer_by_media(media: list[SdpMedia], seen: dict[tuple[str, int], Stream], flows: Flows) -> str | None:
    """Who produced an SDP, from its ports: one already known, else the source addresses of the packets
    that reached them, when they are one party's and not the other's."""
    known = [seen[(m.address or "", m.port)].party for m in media if (m.address or "", m.port) in seen]
    if known:
        return "caller" if known[0] == "B" else "callee"
    senders: dict[str, set[str]] = {"A": set(), "B": set()}
    for stream in seen.values():
        senders[stream.party] |= _sources(flows, stream.local_port)
    here = set().union(*(_sources(flows, m.port) for m in media)) if media else set()
    if not senders["A"] or not senders["B"] or senders["A"] & senders["B"]:
        return None  # the two parties' addresses are not (both) known, or they share one
    from_a, from_b = bool(here & senders["A"]), bool(here & senders["B"])
    if from_a != from_b:
        return "callee" if from_a else "caller"  # the caller sends to what the callee's SDP gave
    return None
