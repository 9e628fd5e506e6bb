"""The recorder's policies and SIP behaviour, against a real ``Recorder`` over real sockets.

Each test runs its own recorder (``RecorderThread``) on 127.0.0.1 with free ports and a tmp folder, plays
an SRC with ``SipClient``/``Dialog`` and real RTP, and checks the SIP answers and the tapes on disk.
"""

from __future__ import annotations

import ipaddress
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from callrec.files import tape
from callrec.files.pcap import CaptureReader
from callrec.recorder import table as table_module
from tests.support.recorder_proc import RecorderProcess
from tests.support.sipclient import (
    METADATA,
    Dialog,
    RecorderThread,
    RtpSender,
    SipClient,
    answered_ports,
    info_of,
    read_call,
    recorder_config,
    siprec_sdp,
    tapes,
    wait_for,
)

SHORT_T1 = 0.02  # 2xx retransmissions every 20, 40, 80 ... ms; no ACK closes the session after 1.28 s


@pytest.fixture
def client(rec: RecorderThread) -> Iterator[SipClient]:
    with SipClient(rec.address) as sip:
        yield sip


def packets_on_tape(folder: Path) -> dict[int, int]:
    """Packets per recorder port in a tape's media.pcap."""
    counts: dict[int, int] = {}
    with CaptureReader(folder / tape.MEDIA_FILE) as reader:
        for datagram in reader:
            counts[datagram.dport] = counts.get(datagram.dport, 0) + 1
    return counts


def tape_packets(rec: RecorderThread) -> int:
    """Packets written so far to the tape of the recorder's only open session."""
    return rec.call(lambda: sum(s.tape.packets for s in rec.recorder.sessions.values() if s.tape is not None))


# ---- OPTIONS, refusals -----------------------------------------------------------------------------
def test_options_is_answered_200_with_allow_accept_and_supported(client: SipClient) -> None:
    ok = client.options()
    assert ok.status == 200
    assert {m.strip() for m in (ok.header("allow") or "").split(",")} >= {
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE",
    }  # fmt: skip
    assert "siprec" in (ok.header("supported") or "")
    assert "application/rs-metadata+xml" in (ok.header("accept") or "")
    assert ok.to_tag


def test_address_not_allowed_gets_403_and_no_tape(data: Path) -> None:
    cfg = recorder_config(data, allow=[ipaddress.ip_network("192.0.2.0/24")])
    with RecorderThread(cfg) as rec, SipClient(rec.address) as sip:
        assert sip.options().status == 403
        dialog = Dialog(sip)
        dialog.invite()
        refused = sip.response()
        assert refused.status == 403
        assert "not allowed" in refused.reason
        assert rec.session_count() == 0
    assert tapes(data) == []


def test_allowed_network_may_record(data: Path) -> None:
    cfg = recorder_config(data, allow=[ipaddress.ip_network("127.0.0.0/8")])
    with RecorderThread(cfg) as rec, SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        dialog.call()
        assert dialog.bye().status == 200
        rec.wait_closed()


@pytest.mark.slow
def test_session_limit_gets_503_and_the_running_session_keeps_recording(data: Path) -> None:
    with RecorderThread(recorder_config(data, max_sessions=1)) as rec, SipClient(rec.address) as sip:
        first = Dialog(sip)
        port = answered_ports(first.call())[0]
        rtp = RtpSender(port)
        rtp.send(10)
        second = Dialog(sip)
        second.invite()
        refused = sip.response()
        assert refused.status == 503
        assert refused.reason == "Service Unavailable: session limit reached"
        assert refused.header("retry-after")
        second.ack(refused)
        rtp.send(10)
        wait_for(lambda: tape_packets(rec) == 20, what="20 packets on the running tape")
        assert first.bye().status == 200
        (folder,) = rec.wait_closed()
    assert packets_on_tape(folder) == {port: 20}
    assert [read_call(t)["call_ids"] for t in tapes(data)] == [[first.call_id]]


@pytest.mark.slow
def test_low_disk_gets_503_and_the_running_session_keeps_recording(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_module, "DISK_CHECK_S", 0.0)
    cfg = recorder_config(data)
    with RecorderThread(cfg) as rec, SipClient(rec.address) as sip:
        first = Dialog(sip)
        port = answered_ports(first.call())[0]
        rtp = RtpSender(port)
        rtp.send(10)
        cfg.min_free_bytes = 1 << 62  # more than any disk has
        second = Dialog(sip)
        second.invite()
        refused = sip.response()
        assert refused.status == 503
        assert refused.reason == "Service Unavailable: low disk space"
        second.ack(refused)
        rtp.send(10)
        wait_for(lambda: tape_packets(rec) == 20, what="20 packets on the running tape")
        assert first.bye().status == 200
        (folder,) = rec.wait_closed()
    assert packets_on_tape(folder) == {port: 20}
    assert info_of(folder).closed_cleanly


def test_unknown_require_gets_420_naming_the_extension(client: SipClient, rec: RecorderThread) -> None:
    dialog = Dialog(client)
    dialog.invite(headers=[("require", "100rel, x-frobnicate")])
    refused = client.response()
    assert refused.status == 420
    assert refused.reason == "Bad Extension"
    assert refused.header("unsupported") == "100rel, x-frobnicate"
    assert refused.to_tag
    assert rec.session_count() == 0


def test_bye_of_an_unknown_dialog_gets_481(client: SipClient) -> None:
    dialog = Dialog(client, to_tag="nosuchtag")
    assert dialog.bye().status == 481


def test_bye_with_the_wrong_to_tag_gets_481_and_the_call_goes_on(client: SipClient, rec: RecorderThread) -> None:
    dialog = Dialog(client)
    dialog.call()
    stranger = Dialog(client, call_id=dialog.call_id, from_tag=dialog.from_tag, to_tag="wrong", cseq=5)
    assert stranger.bye().status == 481
    assert rec.session_count() == 1
    assert dialog.bye().status == 200


def test_unknown_method_gets_405_with_allow(client: SipClient) -> None:
    dialog = Dialog(client)
    client.send(dialog.request("PUBLISH"))
    refused = client.response()
    assert refused.status == 405
    assert "INVITE" in (refused.header("allow") or "")


def test_info_in_dialog_gets_200(client: SipClient) -> None:
    dialog = Dialog(client)
    dialog.call()
    client.send(dialog.request("INFO"))
    assert client.response().status == 200


# ---- re-INVITE and UPDATE --------------------------------------------------------------------------
@pytest.mark.slow
def test_reinvite_adding_a_third_stream_and_removing_one(client: SipClient, rec: RecorderThread) -> None:
    dialog = Dialog(client)
    first, second = answered_ports(dialog.call([41000, 41002]))
    answer = dialog.reinvite(siprec_sdp([41000, 0, 41004]))
    assert answer.status == 200
    ports = answered_ports(answer)
    assert ports[0] == first
    assert ports[1] == 0  # a removed stream is answered with port 0 (RFC 3264 section 8.2)
    third = ports[2]
    assert third not in (0, first, second)
    RtpSender(third).send(5)
    wait_for(lambda: tape_packets(rec) == 5, what="the new stream's packets")
    folder = rec.call(lambda: next(iter(rec.recorder.sessions.values())).folder)
    streams = wait_for(lambda: len(read_call(folder)["streams"]) == 3 and read_call(folder)["streams"])
    assert [s["local_port"] for s in streams] == [first, second, third]
    assert [s["label"] for s in streams] == ["1", "2", "3"]
    assert dialog.bye().status == 200
    rec.wait_closed()
    assert packets_on_tape(folder) == {third: 5}


def test_reinvite_codec_change_is_in_call_json(client: SipClient, rec: RecorderThread) -> None:
    dialog = Dialog(client)
    dialog.call([41000, 41002])
    answer = dialog.reinvite(siprec_sdp([41000, 41002], codecs=[(9, "G722/8000"), (101, "telephone-event/8000")]))
    assert answer.status == 200
    assert b"a=rtpmap:9 G722/8000" in (answer.sdp_body() or b"")
    assert dialog.bye().status == 200
    (folder,) = rec.wait_closed()
    for stream in read_call(folder)["streams"]:
        assert stream["rtpmap"]["8"]["encoding"] == "PCMA"  # audio already recorded keeps its codec
        assert stream["rtpmap"]["9"]["encoding"] == "G722"
        assert stream["rtpmap"]["101"]["encoding"] == "telephone-event"


def test_reinvite_on_hold_is_answered_inactive(client: SipClient) -> None:
    dialog = Dialog(client)
    dialog.call()
    held = dialog.reinvite(siprec_sdp([41000, 41002], direction="inactive"))
    assert held.status == 200
    assert (held.sdp_body() or b"").count(b"a=inactive") == 2
    resumed = dialog.reinvite(siprec_sdp([41000, 41002]))
    assert (resumed.sdp_body() or b"").count(b"a=recvonly") == 2


def test_reinvite_metadata_update_renames_the_parties(client: SipClient, rec: RecorderThread) -> None:
    dialog = Dialog(client)
    dialog.call()
    renamed = METADATA.replace("Bob Callee", "Carol Transferee").replace("datamode>complete", "datamode>partial")
    assert dialog.reinvite(siprec_sdp([41000, 41002]), metadata=renamed).status == 200
    assert dialog.bye().status == 200
    (folder,) = rec.wait_closed()
    assert [p.name for p in info_of(folder).parties] == ["Alice Caller", "Carol Transferee"]


@pytest.mark.slow
def test_reinvite_with_fewer_m_lines_gets_488_and_the_streams_stay(client: SipClient, rec: RecorderThread) -> None:
    dialog = Dialog(client)
    ports = answered_ports(dialog.call([41000, 41002]))
    refused = dialog.reinvite(siprec_sdp([41000]))
    assert (refused.status, refused.reason) == (
        488,
        "Not Acceptable Here: the offer has fewer m= lines than the session",
    )
    for port in ports:
        RtpSender(port).send(2)
    wait_for(lambda: tape_packets(rec) == 4, what="both streams still recorded")
    assert dialog.bye().status == 200


def test_update_with_sdp_adds_a_stream(client: SipClient, rec: RecorderThread) -> None:
    dialog = Dialog(client)
    dialog.call([41000, 41002])
    ctype = "application/sdp"
    client.send(dialog.request("UPDATE", body=siprec_sdp([41000, 41002, 41004]).encode(), content_type=ctype))
    answer = client.response()
    assert answer.status == 200
    ports = answered_ports(answer)
    assert len(ports) == 3 and all(ports)
    assert dialog.bye().status == 200
    (folder,) = rec.wait_closed()
    assert [s.local_port for s in info_of(folder).streams] == ports


def test_update_without_sdp_gets_200_without_a_body(client: SipClient) -> None:
    dialog = Dialog(client)
    dialog.call()
    client.send(dialog.request("UPDATE"))
    answer = client.response()
    assert answer.status == 200
    assert answer.body == b""


def test_reinvite_with_a_stale_cseq_gets_500(client: SipClient, rec: RecorderThread) -> None:
    dialog = Dialog(client)
    dialog.call()
    client.send(dialog.request("INFO", cseq=5))
    assert client.response().status == 200
    client.send(dialog.request("INFO", cseq=3))
    late = client.response()
    assert late.status == 500
    assert "CSeq" in late.reason
    assert rec.session_count() == 1


# ---- transactions ------------------------------------------------------------------------------------
def test_200_ok_is_retransmitted_over_udp_until_ack(data: Path) -> None:
    with RecorderThread(recorder_config(data), t1=SHORT_T1) as rec, SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        dialog.invite()
        ok = sip.response()
        assert ok.status == 200
        # without an ACK the same 200 OK comes again at T1, 2·T1, 4·T1 ...
        again = [r for r in sip.responses_within(12 * SHORT_T1) if r.status == 200]
        assert len(again) >= 2
        assert {r.serialize() for r in again} == {ok.serialize()}
        dialog.ack(ok)
        # a retransmission already in flight may still land; after that, silence
        sip.responses_within(4 * SHORT_T1)
        assert sip.responses_within(16 * SHORT_T1) == []
        assert rec.session_count() == 1
        assert dialog.bye().status == 200


@pytest.mark.slow
def test_session_without_ack_is_closed_with_end_reason_no_ack(data: Path) -> None:
    with RecorderThread(recorder_config(data), t1=SHORT_T1) as rec, SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        dialog.invite()
        port = answered_ports(sip.response())[0]
        RtpSender(port).send(3)
        (folder,) = rec.wait_closed(timeout=64 * SHORT_T1 + 5)
        assert rec.session_count() == 0
        # the dialog counts as confirmed once the 2xx timer runs out, and its session is ended with a BYE
        assert sip.wait_request("BYE").call_id == dialog.call_id
    info = info_of(folder)
    assert info.end_reason == "no-ack"
    assert info.closed_cleanly


def test_retransmitted_invite_is_absorbed(client: SipClient, rec: RecorderThread, data: Path) -> None:
    dialog = Dialog(client)
    invite = dialog.invite()
    ok = client.response()
    client.send(invite)
    client.send(invite)
    repeats = [r for r in client.responses_within(0.3) if r.status == 200]
    assert len(repeats) == 2
    assert {r.to_tag for r in repeats} == {ok.to_tag}
    assert {r.body for r in repeats} == {ok.body}
    dialog.ack(ok)
    assert rec.session_count() == 1
    assert dialog.bye().status == 200
    rec.wait_closed()
    assert len(tapes(data)) == 1


def test_retransmitted_bye_gets_the_same_200(client: SipClient, rec: RecorderThread) -> None:
    dialog = Dialog(client)
    dialog.call()
    bye = dialog.request("BYE")
    client.send(bye)
    first = client.response()
    client.send(bye)
    second = client.response()
    assert first.status == second.status == 200
    assert first.serialize() == second.serialize()
    assert rec.wait_closed() and rec.recorder.stats.closed == {"bye": 1}


class SlowTapes:
    """Holds every tape's creation until ``release`` (so a CANCEL finds the INVITE still proceeding)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = threading.Event()
        self.go = threading.Event()
        real = tape.TapeWriter

        def slow(*args: Any, **kwargs: Any) -> tape.TapeWriter:
            self.started.set()
            self.go.wait(10)
            return real(*args, **kwargs)

        monkeypatch.setattr(tape, "TapeWriter", slow)

    def release(self) -> None:
        self.go.set()


def test_cancel_while_the_invite_proceeds_gets_200_and_487_and_leaves_no_tape(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SlowTapes(monkeypatch)
    with RecorderThread(recorder_config(data)) as rec, SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        invite = dialog.invite()
        trying = sip.response(final=False)
        assert trying.status == 100
        assert slow.started.wait(5)
        cancel = dialog.request("CANCEL", cseq=invite.cseq[0])
        cancel.headers[0] = ("via", invite.header("via") or "")  # a CANCEL names its INVITE by branch
        sip.send(cancel)
        answers = {r.header("cseq"): r for r in (sip.response(), sip.response())}
        assert answers[f"{invite.cseq[0]} CANCEL"].status == 200
        terminated = answers[f"{invite.cseq[0]} INVITE"]
        assert terminated.status == 487
        dialog.ack(terminated)
        slow.release()
        wait_for(lambda: rec.session_count() == 0, what="the cancelled session to go")
        assert sip.responses_within(0.2) == []  # no 200 OK after the 487
        wait_for(lambda: not rec.call(lambda: rec.recorder.table.pending), what="tape creation to finish")
        rec.stop()
    assert tapes(data) == []
    assert rec.recorder.stats.closed == {"cancel": 1}


@pytest.mark.slow
def test_cancel_after_the_answer_gets_200_and_the_call_goes_on(client: SipClient, rec: RecorderThread) -> None:
    dialog = Dialog(client)
    invite = dialog.invite()
    ok = client.response()
    port = answered_ports(ok)[0]
    dialog.ack(ok)
    cancel = dialog.request("CANCEL", cseq=invite.cseq[0])
    cancel.headers[0] = ("via", invite.header("via") or "")
    dialog.to_tag = ok.to_tag
    client.send(cancel)
    assert client.response().status == 200
    assert client.responses_within(0.2) == []  # no 487: the INVITE was answered already
    RtpSender(port).send(4)
    wait_for(lambda: tape_packets(rec) == 4, what="packets after the CANCEL")
    assert dialog.bye().status == 200
    (folder,) = rec.wait_closed()
    assert info_of(folder).end_reason == "bye"


def test_cancel_of_an_unknown_invite_gets_481(client: SipClient) -> None:
    dialog = Dialog(client)
    client.send(dialog.request("CANCEL"))
    assert client.response().status == 481


# ---- ends of sessions ---------------------------------------------------------------------------------
def test_idle_session_is_closed_with_end_reason_idle(data: Path) -> None:
    cfg = recorder_config(data, idle_timeout_s=0.3, flush_interval_s=0.05)
    with RecorderThread(cfg) as rec, SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        port = answered_ports(dialog.call())[0]
        RtpSender(port).send(5)
        (folder,) = rec.wait_closed()
        bye = sip.wait_request("BYE")
        assert bye.call_id == dialog.call_id
        assert bye.to_tag == dialog.from_tag
    info = info_of(folder)
    assert info.end_reason == "idle"
    assert info.closed_cleanly
    assert packets_on_tape(folder) == {port: 5}


@pytest.mark.slow
def test_media_keeps_an_idle_timeout_away(data: Path) -> None:
    cfg = recorder_config(data, idle_timeout_s=0.3, flush_interval_s=0.05)
    with RecorderThread(cfg) as rec, SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        rtp = RtpSender(answered_ports(dialog.call())[0])
        deadline = time.monotonic() + 1.0  # over three idle timeouts
        while time.monotonic() < deadline:
            rtp.send(1)
            time.sleep(0.02)
        assert rec.session_count() == 1
        assert dialog.bye().status == 200
        (folder,) = rec.wait_closed()
    assert info_of(folder).end_reason == "bye"


@pytest.mark.slow
def test_stop_closes_every_tape_cleanly(data: Path) -> None:
    rec = RecorderThread(recorder_config(data))
    with rec, SipClient(rec.address) as sip:
        dialogs = [Dialog(sip) for _ in range(3)]
        for dialog in dialogs:
            RtpSender(answered_ports(dialog.call())[0]).send(7)
        wait_for(lambda: tape_packets(rec) == 21, what="every packet on tape")
        rec.stop()
        byes = {sip.wait_request("BYE").call_id for _ in dialogs}
        assert byes == {d.call_id for d in dialogs}
    folders = tapes(data)
    assert len(folders) == 3
    for folder in folders:
        info = info_of(folder)
        assert info.closed_cleanly and not info.interrupted
        assert info.end_reason == "shutdown"
        assert sum(packets_on_tape(folder).values()) == 7
    assert not any((data / "tapes" / ".open").iterdir())


def test_stop_while_a_tape_is_being_created_closes_it_cleanly(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = SlowTapes(monkeypatch)
    rec = RecorderThread(recorder_config(data))
    with rec, SipClient(rec.address) as sip:
        Dialog(sip).invite()
        assert slow.started.wait(5)
        threading.Timer(0.1, slow.release).start()
        rec.stop()
    for folder in tapes(data):
        info = info_of(folder)
        assert info.closed_cleanly and info.end_reason == "shutdown"
    assert not any((data / "tapes" / ".open").iterdir())


# ---- labels ------------------------------------------------------------------------------------------
def test_domain_and_interaction_from_the_configured_headers(data: Path) -> None:
    cfg = recorder_config(data, domain_header="X-Tenant", interaction_header="X-Conversation")
    with RecorderThread(cfg) as rec, SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        dialog.call(headers=[("x-tenant", " acme "), ("x-conversation", "conv-42"), ("x-callrec-domain", "other")])
        assert dialog.bye().status == 200
        (folder,) = rec.wait_closed()
    info = info_of(folder)
    assert (info.domain, info.interaction_id) == ("acme", "conv-42")


def test_domain_and_interaction_from_metadata_extension_data(client: SipClient, rec: RecorderThread) -> None:
    extension = (
        '<extensiondata xmlns:x="urn:example:pbx"><x:tenant>globex</x:tenant>'
        "<x:ucid>00001234561700000000</x:ucid></extensiondata>"
    )
    metadata = METADATA.replace("</recording>", f"{extension}\n</recording>")
    dialog = Dialog(client)
    dialog.call(metadata=metadata)
    assert dialog.bye().status == 200
    (folder,) = rec.wait_closed()
    info = info_of(folder)
    assert (info.domain, info.interaction_id) == ("globex", "00001234561700000000")


def test_without_labels_the_domain_is_default(client: SipClient, rec: RecorderThread) -> None:
    dialog = Dialog(client)
    dialog.call()
    assert dialog.bye().status == 200
    (folder,) = rec.wait_closed()
    assert info_of(folder).domain == "default"


# ---- transports -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tcp_carries_a_whole_call(rec: RecorderThread) -> None:
    with SipClient(rec.address, "tcp") as sip:
        assert sip.options().status == 200
        dialog = Dialog(sip)
        ok = dialog.call()
        assert "transport=tcp" in (ok.header("contact") or "")
        ports = answered_ports(ok)
        for port in ports:
            RtpSender(port).send(6)
        wait_for(lambda: tape_packets(rec) == 12, what="both streams on tape")
        assert dialog.reinvite(siprec_sdp([41000, 41002], direction="inactive")).status == 200
        assert dialog.bye().status == 200
        (folder,) = rec.wait_closed()
    info = info_of(folder)
    assert info.end_reason == "bye" and info.closed_cleanly
    assert [p.name for p in info.parties] == ["Alice Caller", "Bob Callee"]
    assert packets_on_tape(folder) == {ports[0]: 6, ports[1]: 6}


def test_tcp_2xx_is_not_needed_twice_when_acked(rec: RecorderThread) -> None:
    with SipClient(rec.address, "tcp") as sip:
        dialog = Dialog(sip)
        dialog.call()
        assert sip.responses_within(0.8) == []  # the ACK stopped the 2xx timer (first repeat at T1 = 0.5 s)


# ---- a real process -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_every_tape_cleanly_and_exits_0(data: Path, sig: int) -> None:
    proc = RecorderProcess(data).start()
    try:
        with SipClient(proc.address) as sip:
            dialogs = [Dialog(sip) for _ in range(2)]
            for dialog in dialogs:
                RtpSender(answered_ports(dialog.call())[1]).send(9)
            wait_for(lambda: len(tapes(data)) == 2, what="two tapes")
            code = proc.stop(sig)
    finally:
        proc.kill()
    err = proc.log()
    assert code == 0, err
    assert "Traceback" not in err
    folders = tapes(data)
    assert len(folders) == 2
    for folder in folders:
        info = info_of(folder)
        assert info.closed_cleanly and info.end_reason == "shutdown"
        assert sum(packets_on_tape(folder).values()) == 9
