"""rtpengine's pcap-method recordings: finding both files, parsing the metadata, the call they describe.

The fixtures in tests/data/rtpengine/ were written by Debian's rtpengine 10.5.3.5 (userspace,
``--recording-method pcap``) driven over ng, one spool folder each:
- ``simple``: caller 127.0.0.1:40000 (PCMU/PCMA offered), callee 127.0.0.1:40002 (PCMA), raw IP,
  metadata ``domain:acme|interaction:int-7``;
- ``reinvite``: caller 10.9.0.2 (``o=alice``, monologue label ``caller``), callee 10.9.0.3 (``o=bob``),
  two ``m=audio`` lines, then a re-INVITE *from the callee* with new ports (rtpengine gave new ports on
  both sides), raw IP, metadata ``domain:acme|interaction:int-7|from:+4911``;
- ``eth``: the same call as ``reinvite`` with ``--recording-format eth``;
- ``nat``: rtpengine behind NAT (``--interface=10.77.0.1!203.0.113.5``): its SDPs give 203.0.113.5, the
  packets reached 10.77.0.1 (caller 10.77.0.2, callee 10.77.0.3; tests/support/rtpengine_peer.py made it);
- ``ipv6``: the ``reinvite`` call over IPv6 (rtpengine fd77::1, caller fd77::2, callee fd77::3).
The truth of who sent what is read from the pcaps with dpkt (the source address of each packet).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import dpkt
import pytest

from callrec.errors import ParseError
from callrec.files import rtpengine
from callrec.files.rtpengine import SpoolRecording
from callrec.files.rtpengine_meta import Metadata, parse_pairs
from callrec.models import CallInfo

DATA = Path(__file__).resolve().parent.parent / "data" / "rtpengine"
# the caller's address, and port where both parties share one address
CALLER = {
    "simple": ("127.0.0.1", 40000),
    "reinvite": ("10.9.0.2", None),
    "eth": ("10.9.0.2", None),
    "nat": ("10.77.0.2", None),
    "ipv6": ("fd77::2", None),
}


def spool(tmp_path: Path, name: str) -> Path:
    """A private copy of one fixture spool (tests remove and damage files)."""
    target = tmp_path / name
    shutil.copytree(DATA / name, target)
    return target


def files(folder: Path) -> tuple[Path, Path]:
    (pcap,) = (folder / "pcaps").iterdir()
    (meta,) = (folder / "metadata").iterdir()
    return pcap, meta


def senders(pcap: Path, caller: tuple[str, int | None]) -> dict[int, str]:
    """Destination port -> the party that sent there ("A" when from the caller), read with dpkt."""
    out: dict[int, str] = {}
    with pcap.open("rb") as f:
        reader = dpkt.pcap.Reader(f)
        for _, frame in reader:
            if reader.datalink() == dpkt.pcap.DLT_EN10MB:
                ip = dpkt.ethernet.Ethernet(frame).data
            else:
                ip = dpkt.ip6.IP6(frame) if frame[0] >> 4 == 6 else dpkt.ip.IP(frame)
            src = socket.inet_ntop(socket.AF_INET6 if len(ip.src) == 16 else socket.AF_INET, ip.src)
            from_caller = src == caller[0] and caller[1] in (None, ip.data.sport)
            out[ip.data.dport] = "A" if from_caller else "B"
    return out


@pytest.mark.parametrize("name", ["simple", "reinvite", "eth"])
def test_either_file_locates_the_same_recording(tmp_path: Path, name: str) -> None:
    folder = spool(tmp_path, name)
    pcap, meta = files(folder)
    assert rtpengine.is_recording(pcap) and rtpengine.is_recording(meta)
    by_pcap, by_meta = rtpengine.locate(pcap), rtpengine.locate(meta)
    assert by_pcap == by_meta == SpoolRecording(pcap, meta, "abc@host", by_pcap.pairs)
    assert by_pcap.pairs["domain"] == "acme" and by_pcap.pairs["interaction"] == "int-7"


@pytest.mark.parametrize("name", ["simple", "reinvite", "eth", "nat", "ipv6"])
def test_every_stream_is_attributed_to_the_party_that_sent_to_it(tmp_path: Path, name: str) -> None:
    folder = spool(tmp_path, name)
    pcap, _ = files(folder)
    info = rtpengine.call_info(rtpengine.locate(pcap))
    truth = senders(pcap, CALLER[name])
    by_port = {s.local_port: s.party for s in info.streams}
    assert {port: by_port.get(port) for port in truth} == truth
    assert [(p.id, p.role) for p in info.parties] == [("A", "caller"), ("B", "callee")]
    assert info.call_ids == ["nat@test" if name == "nat" else "abc@host"]
    assert len(info.streams) == len(truth) + (2 if name in ("reinvite", "eth", "ipv6") else 0)  # 2 m= unused
    assert info.source == "rtpengine" and info.closed_cleanly
    assert info.domain == "acme" and info.interaction_id == "int-7"
    assert all(s.rtpmap[8].name == "PCMA/8000" for s in info.streams)
    assert info.started_at is not None and info.ended_at is not None
    assert 0 < info.ended_at - info.started_at < 5


def test_behind_nat_streams_take_the_address_the_packets_reached(tmp_path: Path) -> None:
    folder = spool(tmp_path, "nat")
    pcap, meta = files(folder)
    assert "c=IN IP4 203.0.113.5" in meta.read_text()
    info = rtpengine.call_info(rtpengine.locate(pcap))
    assert {s.local_addr for s in info.streams} == {"10.77.0.1"}
    pcap.write_bytes(b"not a capture")  # unreadable: the SDP's address stays (mix reports the pcap itself)
    assert {s.local_addr for s in rtpengine.call_info(rtpengine.locate(pcap)).streams} == {"203.0.113.5"}


@pytest.mark.parametrize(
    ("what", "edits"),
    [
        ("o= lines as rtpengine kept them", {}),
        # some phones start a new session id on a re-INVITE: the user and address still tell
        ("session ids changed", {"o=bob 1 2": "o=bob 9 2", "o=alice 1 2": "o=alice 8 2"}),
        # every o= line alike (a B2BUA): the re-INVITE's new ports are told by who sent to them
        ("o= lines all alike", {f"o={u} 1 {v} IN IP4 10.9.0.{a}": "o=- 0 0 IN IP4 10.9.0.9"
                                for u, a in (("alice", 2), ("bob", 3)) for v in (1, 2)}),
    ],
)  # fmt: skip
def test_who_produced_each_sdp_of_a_callee_reinvite(tmp_path: Path, what: str, edits: dict[str, str]) -> None:
    folder = spool(tmp_path, "reinvite")
    pcap, meta = files(folder)
    text = meta.read_text()
    for old, new in edits.items():
        assert old in text
        text = text.replace(old, new)
    meta.write_text(text)
    info = rtpengine.call_info(rtpengine.locate(pcap))
    truth = senders(pcap, CALLER["reinvite"])
    by_port = {s.local_port: s.party for s in info.streams}
    assert {port: by_port.get(port) for port in truth} == truth, what


def test_reinvite_from_the_callee_keeps_every_stream_and_its_party(tmp_path: Path) -> None:
    # the callee's re-INVITE is an *offer* whose SDP tells where the caller sends: mode alone would be wrong
    info = rtpengine.call_info(rtpengine.locate(files(spool(tmp_path, "reinvite"))[0]))
    assert len(info.streams) == 8  # 2 m-lines x (offer, answer, re-offer, re-answer)
    assert [s.party for s in info.streams] == ["B", "B", "A", "A", "A", "A", "B", "B"]
    assert info.parties[0].number == "+4911" and info.parties[1].number == ""
    assert {s.local_addr for s in info.streams} == {"10.9.0.1"}


def test_metadata_blocks_as_written(tmp_path: Path) -> None:
    _, meta_path = files(spool(tmp_path, "reinvite"))
    meta = Metadata.parse(meta_path.read_bytes())
    assert [b.mode for b in meta.blocks] == ["offer", "answer", "offer", "answer"]
    assert [b.label for b in meta.blocks] == ["caller", "", "", "caller"]
    assert [b.before_packet for b in meta.blocks] == [1, 1, 21, 21]
    assert meta.blocks[2].sdp.startswith("v=0\r\no=bob 1 2 IN IP4 10.9.0.3\r\n")
    assert meta.pcap_path.endswith("/pcaps/abc%40host-531d8aa9477a0b91.pcap")
    assert meta.terminated_ms == 1796550959689.056
    assert meta.metadata == "domain:acme|interaction:int-7|from:+4911"


def test_when_the_sdp_origins_do_not_tell_the_sides_apart_the_offer_is_the_callers(tmp_path: Path) -> None:
    folder = spool(tmp_path, "simple")
    pcap, meta = files(folder)
    text = meta.read_text().replace("o=alice 1 1", "o=- 0 0").replace("o=bob 1 1", "o=- 0 0")
    meta.write_text(text)
    info = rtpengine.call_info(rtpengine.locate(pcap))
    truth = senders(pcap, CALLER["simple"])
    assert {s.local_port: s.party for s in info.streams} == truth


def test_times_out_of_range_are_left_out(tmp_path: Path) -> None:
    folder = spool(tmp_path, "simple")
    pcap, meta = files(folder)
    info = rtpengine.call_info(rtpengine.locate(pcap))
    assert (info.started_at, info.ended_at) == pytest.approx((1796550858.920256, 1796550859.941631))
    text = meta.read_text().replace("ms: 1796550858920.", "ms: 1e30").replace("1796550859941.631", "0.000")
    meta.write_text(text)
    info = rtpengine.call_info(rtpengine.locate(pcap))
    assert (info.started_at, info.ended_at) == (None, None)
    assert CallInfo.from_json(info.to_json()).started_at is None  # what a tape's call.json may hold


def test_without_ng_metadata_the_call_is_in_the_default_domain(tmp_path: Path) -> None:
    folder = spool(tmp_path, "simple")
    pcap, meta = files(folder)
    meta.write_text(meta.read_text().replace("domain:acme|interaction:int-7", ""))
    rec = rtpengine.locate(pcap)
    info = rtpengine.call_info(rec)
    assert rec.pairs == {} and info.domain == "default" and info.interaction_id == ""


def test_key_names_are_configurable(tmp_path: Path) -> None:
    rec = rtpengine.locate(files(spool(tmp_path, "simple"))[0])
    info = rtpengine.call_info(rec, domain_key="interaction", interaction_key="domain")
    assert (info.domain, info.interaction_id) == ("int-7", "acme")


def test_pairs_in_either_convention() -> None:
    assert parse_pairs("domain:acme|interaction:int-7") == {"domain": "acme", "interaction": "int-7"}
    assert parse_pairs("domain=acme|from=sip:+4911@pbx|flag") == {"domain": "acme", "from": "sip:+4911@pbx", "flag": ""}
    assert parse_pairs(" from:sip:alice@x ; | |to : bob ") == {"from": "sip:alice@x ;", "to": "bob"}
    assert parse_pairs("") == {}


def test_sip_uris_in_the_pairs_give_number_name_and_uri(tmp_path: Path) -> None:
    folder = spool(tmp_path, "simple")
    pcap, meta = files(folder)
    pairs = 'from:"Alice" <sip:+4911@pbx.example>|to:+4922|to_name:Bob'
    meta.write_text(meta.read_text().replace("domain:acme|interaction:int-7", pairs))
    a, b = rtpengine.call_info(rtpengine.locate(pcap)).parties
    assert (a.number, a.name, a.uri) == ("+4911", "Alice", "sip:+4911@pbx.example")
    assert (b.number, b.name, b.uri) == ("+4922", "Bob", "")


def test_a_pcap_whose_metadata_is_missing_is_one_sentence(tmp_path: Path) -> None:
    folder = spool(tmp_path, "simple")
    pcap, meta = files(folder)
    meta.unlink()
    assert rtpengine.is_recording(pcap)  # in a spool's pcaps/: an rtpengine recording, found incomplete
    expected = r"^.*\.pcap: its rtpengine metadata file .*/rtpengine-meta-abc%40host-750f18ef526d7d8f\.txt is missing$"
    with pytest.raises(ParseError, match=expected):
        rtpengine.locate(pcap)


def test_a_call_still_being_recorded_is_named_so(tmp_path: Path) -> None:
    folder = spool(tmp_path, "simple")
    pcap, meta = files(folder)
    (folder / "tmp").mkdir()
    tmp = folder / "tmp" / meta.name.replace(".txt", ".tmp")
    meta.rename(tmp)
    for given in (pcap, tmp):
        with pytest.raises(ParseError, match="the call is still being recorded"):
            rtpengine.locate(given)
    assert rtpengine.finished(folder) == []


def test_metadata_whose_pcap_is_missing_is_one_sentence(tmp_path: Path) -> None:
    folder = spool(tmp_path, "simple")
    pcap, meta = files(folder)
    pcap.unlink()
    with pytest.raises(ParseError, match=r"its rtpengine pcap .*abc%40host-750f18ef526d7d8f\.pcap is missing$"):
        rtpengine.locate(meta)
    assert rtpengine.finished(folder) == []


def test_a_moved_metadata_file_still_finds_its_pcap_beside_it(tmp_path: Path) -> None:
    pcap, meta = files(spool(tmp_path, "simple"))
    loose = tmp_path / "loose"
    loose.mkdir()
    moved_pcap, moved_meta = loose / pcap.name, loose / "call.txt"
    pcap.rename(moved_pcap)
    meta.rename(moved_meta)
    assert rtpengine.is_recording(moved_meta)  # by content
    rec = rtpengine.locate(moved_meta)
    assert (rec.pcap, rec.call_id) == (moved_pcap, "abc@host")


def test_damaged_metadata_is_one_sentence_and_left_out_of_the_spool_listing(tmp_path: Path) -> None:
    folder = spool(tmp_path, "simple")
    pcap, meta = files(folder)
    meta.write_bytes(b"\x00garbage\n")
    expected = r"not an rtpengine recording \(the first line .* is not the path of its pcap\)$"
    with pytest.raises(ParseError, match=expected):
        rtpengine.locate(pcap)
    assert rtpengine.finished(folder) == []
    meta.write_text(meta_text := "/var/spool/rtpengine/pcaps/x-0123456789abcdef.pcap\n\ncall end time: x\n")
    with pytest.raises(ParseError, match=r"^the rtpengine metadata file holds no SDP$"):
        Metadata.parse(meta_text)
    with pytest.raises(ParseError, match=r"has no number"):
        Metadata.parse("/x.pcap\n\nTimestamp started ms: soon\nSDP mode: offer\nSDP before RTP packet: 1\n\nv=0\n")


def test_other_files_are_not_rtpengine_recordings(tmp_path: Path) -> None:
    capture = tmp_path / "call-0123456789abcdef.pcap"  # the name alone does not make it one
    shutil.copy(files(spool(tmp_path, "simple"))[0], capture)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    assert not rtpengine.is_recording(capture)
    assert not rtpengine.is_recording(notes)
    assert not rtpengine.is_recording(tmp_path)
    with pytest.raises(ParseError, match="not an rtpengine recording"):
        rtpengine.locate(notes)


def test_finished_lists_every_finished_recording_oldest_first(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    for sub in ("pcaps", "metadata", "tmp"):
        (folder / sub).mkdir(parents=True)
    for n, name in enumerate(["reinvite", "simple", "eth"]):
        pcap, meta = files(DATA / name)
        shutil.copy(pcap, folder / "pcaps" / pcap.name)
        shutil.copy(meta, folder / "metadata" / meta.name)
        os.utime(folder / "metadata" / meta.name, (1_700_000_000 + n, 1_700_000_000 + n))
    # one still running (only in tmp/), one whose pcap is not there
    running_pcap, running_meta = files(DATA / "simple")
    shutil.copy(running_pcap, folder / "pcaps" / "run%40x-00000000000000aa.pcap")
    shutil.copy(running_meta, folder / "tmp" / "rtpengine-meta-run%40x-00000000000000aa.tmp")
    shutil.copy(running_meta, folder / "metadata" / "rtpengine-meta-nopcap-00000000000000bb.txt")
    found = rtpengine.finished(folder)
    assert [r.metadata.parent.name for r in found] == ["metadata"] * 3
    tags = ["531d8aa9477a0b91.pcap", "750f18ef526d7d8f.pcap", "84164ac092ea026f.pcap"]
    assert [r.pcap.name.split("-")[1] for r in found] == tags
    assert all(r.call_id == "abc@host" and r.pcap.is_file() for r in found)
    assert rtpengine.finished(tmp_path / "no-such-spool") == []
