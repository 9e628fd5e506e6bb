"""rtpengine's recording metadata file (``rtpengine-meta-<callid>-<16 hex>.txt``), parsed.

The metadata file (daemon/recording.c, ``sdp_after_pcap`` and ``rec_pcap_meta_finish_file``) holds: the pcap's
path on its first line; then per SDP rtpengine sent out an optional ``Label: L``, ``Timestamp started ms: T``,
``SDP mode: offer|answer``, ``SDP before RTP packet: N``, a blank line and the SDP *as rewritten by rtpengine*
(its own address and ports: where the party receiving that SDP sends its media); then ``Timestamp terminated
ms(first monologue): T``, ``call start time: ...``, ``call end time: ...`` and last the ng ``metadata`` string.
Newer versions add ``Recording paused at: ...`` / ``Recording resumed at: ...`` lines; they are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from callrec.errors import ParseError

STARTED = "Timestamp started ms:"
TERMINATED = "Timestamp terminated ms"
SKIPPED = ("Recording paused at:", "Recording resumed at:")


@dataclass(slots=True)
class SdpBlock:
    """One SDP rtpengine sent out, as the metadata file records it."""

    mode: str
    sdp: str
    started_ms: float | None = None
    label: str = ""
    before_packet: int = 0


@dataclass(slots=True)
class Metadata:
    """A parsed rtpengine metadata file."""

    pcap_path: str
    blocks: list[SdpBlock] = field(default_factory=list)
    terminated_ms: float | None = None
    metadata: str = ""

    @classmethod
    def parse(cls, text: str | bytes) -> Metadata:
        """Parse a metadata file; ``ParseError`` with one sentence when it is not one rtpengine wrote."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        lines = text.splitlines()
        if not lines or not lines[0].strip().endswith(".pcap"):
            raise ParseError("the first line of an rtpengine metadata file is not the path of its pcap")
        meta = cls(pcap_path=lines[0].strip())
        block: SdpBlock | None = None
        label, started, mode = "", None, ""
        in_sdp = False
        tail: list[str] | None = None  # the lines after "Timestamp terminated", once there
        for line in lines[1:]:
            if tail is not None:
                if not line.startswith(("call start time:", "call end time:")):
                    tail.append(line)
            elif line.startswith("Label:"):
                label, in_sdp = line[6:].strip(), False
            elif line.startswith(STARTED):
                started, in_sdp = _number(line[len(STARTED) :], line), False
            elif line.startswith("SDP mode:"):
                mode, in_sdp = line[9:].strip(), False
            elif line.startswith("SDP before RTP packet:"):
                block = SdpBlock(mode, "", started, label, int(_number(line[22:], line)))
                meta.blocks.append(block)
                label, started, mode, in_sdp = "", None, "", True
            elif line.startswith(TERMINATED):
                # the call's end: what follows is its start and end time, then the ng metadata string
                meta.terminated_ms = _number(line.partition(":")[2], line)
                in_sdp, tail = False, []
            elif line.startswith(SKIPPED):
                in_sdp = False
            elif in_sdp and block is not None and (block.sdp or line.strip()):
                block.sdp += line + "\r\n"
        if not meta.blocks:
            raise ParseError("the rtpengine metadata file holds no SDP")
        if tail is not None:
            meta.metadata = "\n".join(tail).strip()
        return meta

    @property
    def pairs(self) -> dict[str, str]:
        return parse_pairs(self.metadata)


def _number(text: str, line: str) -> float:
    try:
        return float(text.strip())
    except ValueError as exc:
        raise ParseError(f"the rtpengine metadata line {line[:60]!r} has no number") from exc


def parse_pairs(metadata: str) -> dict[str, str]:
    """The ng ``metadata`` string as key/value pairs: ``key:value|key:value`` (rtpengine's convention) or
    ``key=value``; each item splits at its first ``:`` or ``=``, keys are stripped, an item without one is
    a key with an empty value."""
    pairs: dict[str, str] = {}
    for item in metadata.replace("\n", "|").split("|"):
        item = item.strip()
        if not item:
            continue
        cut = min((i for i in (item.find(":"), item.find("=")) if i >= 0), default=-1)
        key, value = (item, "") if cut < 0 else (item[:cut], item[cut + 1 :])
        if key.strip():
            pairs[key.strip()] = value.strip()
    return pairs
