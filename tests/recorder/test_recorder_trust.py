"""SIP trust, played as the attack: which sources may open sessions, which domains each may file calls into,
and how many sessions and RTP ports one source may hold (issue 12, M5).

A second loopback address (127.0.0.2) plays another SRC; the host's own non-loopback address (when it has
one) plays a source from the network.
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import pytest

from callrec import config
from callrec.config import ConfigError, RecorderConfig, ServiceConfig, parse_networks, recorder_config_from_env
from callrec.serve import children_for
from tests.support.recorder_proc import RecorderProcess
from tests.support.sipclient import (
    METADATA,
    Dialog,
    RecorderThread,
    RtpSender,
    SipClient,
    answered_ports,
    free_rtp_range,
    info_of,
    read_call,
    recorder_config,
    siprec_sdp,
    tapes,
    wait_for,
)

OTHER_SRC = "127.0.0.2"


def nets(*items: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return parse_networks(list(items))


def host_address() -> str:
    """An IPv4 address of this host outside 127.0.0.0/8, or skip."""
    try:
        out = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            return fields[fields.index("inet") + 1].split("/")[0]
    pytest.skip("this host has no non-loopback IPv4 address to send from")


def from_other(rec: RecorderThread) -> SipClient:
    """An SRC on the second loopback address."""
    return SipClient(rec.address, local_host=OTHER_SRC)


def invite_status(sip: SipClient, **kwargs: Any) -> tuple[int, str, Dialog]:
    """Send one INVITE; ACK a failure; return (status, reason, dialog) of its final answer."""
    dialog = Dialog(sip)
    invite = dialog.invite(**kwargs)
    answer = sip.response(match=invite)
    dialog.ack(answer)
    return answer.status or 0, answer.reason or "", dialog


def with_tenant(tenant: str) -> str:
    extension = f'<extensiondata xmlns:x="urn:example:pbx"><x:tenant>{tenant}</x:tenant></extensiondata>'
    return METADATA.replace("</recording>", f"{extension}\n</recording>")


def tape_packets(rec: RecorderThread, call_id: str) -> int:
    def count() -> int:
        session = rec.recorder.sessions.get(call_id)
        return session.tape.packets if session is not None and session.tape is not None else -1

    return rec.call(count)


# ---- who may open sessions ----------------------------------------------------------------------------
def test_with_nothing_configured_a_source_from_the_network_gets_403(data: Path) -> None:
    address = host_address()
    cfg = recorder_config(data, listen_host="0.0.0.0")
    assert not cfg.allow  # and no --allow-domain: nothing configured
    with RecorderThread(cfg) as rec:
        target = (address, rec.address[1])
        with SipClient(target, local_host=address) as attacker:
            assert attacker.options().status == 403
            status, reason, _ = invite_status(attacker, headers=[("x-callrec-domain", "acme")])
            assert (status, reason) == (403, "Forbidden: address not allowed to record")
            assert rec.session_count() == 0
        # the SRC on this host itself still records
        with SipClient(rec.address) as local:
            dialog = Dialog(local)
            dialog.call()
            assert dialog.bye().status == 200
            (folder,) = rec.wait_closed()
    assert tapes(data) == [folder]


def test_opening_to_every_address_is_explicit(data: Path) -> None:
    address = host_address()
    cfg = recorder_config(data, listen_host="0.0.0.0", allow=nets("0.0.0.0/0"))
    assert cfg.opened_to_all()
    with RecorderThread(cfg) as rec, SipClient((address, rec.address[1]), local_host=address) as src:
        dialog = Dialog(src)
        dialog.call()
        assert dialog.bye().status == 200
        rec.wait_closed()


def test_only_loopback_is_trusted_by_default() -> None:
    cfg = RecorderConfig()
    assert cfg.allowed("127.0.0.1") and cfg.allowed("127.0.0.2") and cfg.allowed("::1")
    assert cfg.allowed("::ffff:127.0.0.1")
    for outsider in ("192.0.2.7", "10.0.0.1", "::ffff:10.0.0.1", "fd00::2", "0.0.0.0", "not-an-ip"):
        assert not cfg.allowed(outsider), outsider
    # once anything is configured, loopback is trusted only if listed
    assert not RecorderConfig(allow_domains={"acme": nets("10.1.0.0/16")}).allowed("127.0.0.1")
    assert not RecorderConfig(allow=nets("10.1.0.0/16")).allowed("127.0.0.1")


# ---- which domain a source files into --------------------------------------------------------------------
def test_a_source_allowed_for_beta_cannot_file_calls_into_acme(data: Path) -> None:
    cfg = recorder_config(data, allow_domains={"beta": nets(OTHER_SRC), "acme": nets("127.0.0.1")})
    with RecorderThread(cfg) as rec:
        with SipClient(rec.address, local_host=OTHER_SRC) as beta:
            # the domain header, the metadata, and both: refused, nothing recorded
            status, reason, _ = invite_status(beta, headers=[("x-callrec-domain", "acme")])
            assert (status, reason) == (403, "Forbidden: source not allowed for this domain")
            status, reason, _ = invite_status(beta, metadata=with_tenant("acme"))
            assert (status, reason) == (403, "Forbidden: source not allowed for this domain")
            status, _, _ = invite_status(beta, headers=[("x-callrec-domain", "default")])
            assert status == 403, "an SRC of one domain cannot file into default either"
            assert rec.session_count() == 0 and tapes(data) == []
            # its own calls: filed into beta with or without naming it
            for headers in ([], [("x-callrec-domain", "beta")]):
                dialog = Dialog(beta)
                dialog.call(headers=headers)
                assert dialog.bye().status == 200
        with SipClient(rec.address) as acme:
            dialog = Dialog(acme)
            dialog.call(metadata=with_tenant("acme"))
            assert dialog.bye().status == 200
        rec.wait_closed(3)
    assert sorted(info_of(folder).domain for folder in tapes(data)) == ["acme", "beta", "beta"]


def test_a_source_of_several_domains_must_name_one_of_them(data: Path) -> None:
    cfg = recorder_config(data, allow_domains={"acme": nets("127.0.0.0/8"), "beta": nets("127.0.0.1")})
    with RecorderThread(cfg) as rec, SipClient(rec.address) as src:
        status, reason, _ = invite_status(src)
        assert (status, reason) == (403, "Forbidden: source serves several domains and the INVITE names none")
        dialog = Dialog(src)
        dialog.call(headers=[("x-callrec-domain", "beta")])
        assert dialog.bye().status == 200
        (folder,) = rec.wait_closed()
    assert info_of(folder).domain == "beta"


def test_a_globally_allowed_source_names_any_domain(data: Path) -> None:
    cfg = recorder_config(data, allow=nets("127.0.0.1"), allow_domains={"beta": nets(OTHER_SRC)})
    with RecorderThread(cfg) as rec, SipClient(rec.address) as pbx:
        for name in ("acme", ""):
            dialog = Dialog(pbx)
            dialog.call(headers=[("x-callrec-domain", name)] if name else [])
            assert dialog.bye().status == 200
        rec.wait_closed(2)
    assert sorted(info_of(folder).domain for folder in tapes(data)) == ["acme", "default"]


# ---- how much one source may hold ---------------------------------------------------------------------
@pytest.mark.slow
def test_one_source_over_its_limit_gets_503_while_another_still_records(data: Path) -> None:
    cfg = recorder_config(data, max_sessions_per_source=2)
    with (
        RecorderThread(cfg) as rec,
        SipClient(rec.address) as flood,
        SipClient(rec.address, local_host=OTHER_SRC) as other,
    ):
        running = [Dialog(flood) for _ in range(2)]
        senders = [RtpSender(answered_ports(d.call())[0]) for d in running]
        for rtp in senders:
            rtp.send(5)
        for _ in range(3):
            status, reason, _ = invite_status(flood)
            assert (status, reason) == (503, "Service Unavailable: session limit for this source reached")
        refused = Dialog(flood)
        invite = refused.invite()
        answer = flood.response(match=invite)
        assert answer.header("retry-after")
        refused.ack(answer)
        # another SRC still gets in
        theirs = Dialog(other)
        theirs.call()
        # the flooding source's running sessions are unharmed
        for rtp in senders:
            rtp.send(5)
        for dialog in running:
            wait_for(lambda d=dialog: tape_packets(rec, d.call_id) == 10, what="10 packets on a running tape")
            assert dialog.bye().status == 200
        # and with one ended, the source may open one again
        again = Dialog(flood)
        again.call()
        for dialog in (theirs, again):
            assert dialog.bye().status == 200
        rec.wait_closed(4)
    assert sorted(len(read_call(t)["call_ids"]) for t in tapes(data)) == [1, 1, 1, 1]


def test_a_flood_from_one_source_leaves_ports_for_another_by_default(data: Path) -> None:
    first, last = free_rtp_range(128)  # 64 RTP/RTCP pairs: room for 32 two-stream sessions
    cfg = recorder_config(data, rtp_first=first, rtp_last=last)  # the default limit: 16 sessions a source
    with (
        RecorderThread(cfg) as rec,
        SipClient(rec.address) as flood,
        SipClient(rec.address, local_host=OTHER_SRC) as other,
    ):
        accepted = 0
        for _ in range(40):
            status, reason, dialog = invite_status(flood)
            if status != 200:
                break
            accepted += 1
        assert (accepted, status, reason) == (16, 503, "Service Unavailable: session limit for this source reached")
        theirs = Dialog(other)
        theirs.call()
        assert theirs.bye().status == 200


def test_a_source_offering_many_streams_cannot_take_every_port(data: Path) -> None:
    cfg = recorder_config(data, max_sessions_per_source=2)  # two sessions, four RTP port pairs
    with (
        RecorderThread(cfg) as rec,
        SipClient(rec.address) as greedy,
        SipClient(rec.address, local_host=OTHER_SRC) as other,
    ):
        status, reason, _ = invite_status(greedy, sdp=siprec_sdp([40000 + 2 * i for i in range(6)]))
        assert (status, reason) == (503, "Service Unavailable: this source holds its share of the RTP ports")
        assert rec.session_count() == 0
        assert rec.call(lambda: rec.recorder.streams.ports.in_use) == 0, "the refused session's ports are given back"
        theirs = Dialog(other)
        theirs.call()
        assert theirs.bye().status == 200


# ---- configuration --------------------------------------------------------------------------------------
def test_domain_sources_from_options_and_environment() -> None:
    parsed = config.parse_domain_networks(["acme=10.1.0.0/16,10.2.0.5", "beta=192.0.2.0/24;acme=2001:db8::/32"])
    assert {name: [str(n) for n in found] for name, found in parsed.items()} == {
        "acme": ["10.1.0.0/16", "10.2.0.5/32", "2001:db8::/32"],
        "beta": ["192.0.2.0/24"],
    }
    cfg = recorder_config_from_env(
        {"CALLREC_ALLOW_DOMAINS": "acme=10.1.0.0/16,10.2.0.5;beta=192.0.2.0/24", "CALLREC_MAX_SESSIONS_PER_SOURCE": "7"}
    )
    assert cfg.domain_for("10.2.0.5", "") == "acme" and cfg.domain_for("10.2.0.5", "acme") == "acme"
    assert cfg.domain_for("10.2.0.5", "beta") is None and cfg.domain_for("::ffff:192.0.2.9", "") == "beta"
    assert not cfg.allowed("10.2.0.6") and not cfg.allowed("127.0.0.1")
    assert cfg.per_source_limit() == 7
    for bad in ("acme", "Acme=10.0.0.0/8", "=10.0.0.0/8", "acme=", "acme=10.0.0.0/33"):
        with pytest.raises(ConfigError, match="--allow-domain"):
            config.parse_domain_networks([bad])
    with pytest.raises(ConfigError, match="CALLREC_MAX_SESSIONS_PER_SOURCE"):
        recorder_config_from_env({"CALLREC_MAX_SESSIONS_PER_SOURCE": "-1"})


def test_the_default_per_source_limit_is_a_quarter_of_the_ports() -> None:
    cfg = RecorderConfig()  # 30000-39999: 5000 pairs, 625 two-stream sessions, 1250 pairs per source
    assert cfg.per_source_limit() == 625
    assert RecorderConfig(rtp_first=30000, rtp_last=30039).per_source_limit() == 16  # a floor for small ranges


def test_serve_hands_the_trust_settings_to_its_recorder(tmp_path: Path) -> None:
    rec = RecorderConfig(
        allow=nets("10.0.0.1"), allow_domains={"acme": nets("10.1.0.0/16", "10.2.0.5")}, max_sessions_per_source=9
    )
    (recorder, *_) = children_for(rec, ServiceConfig(data_dir=tmp_path), record=True, work=False)
    argv = recorder.argv
    assert argv[argv.index("--allow") + 1] == "10.0.0.1/32"
    assert argv[argv.index("--allow-domain") + 1] == "acme=10.1.0.0/16,10.2.0.5/32"
    assert argv[argv.index("--max-sessions-per-source") + 1] == "9"


@pytest.mark.slow
def test_callrec_record_takes_domain_sources_and_warns_when_opened_to_all(tmp_path: Path) -> None:
    extra = ("--allow-domain", f"beta={OTHER_SRC}", "--allow", "0.0.0.0/0", "--max-sessions-per-source", "1")
    with RecorderProcess(tmp_path / "data", *extra) as recorder:
        assert "warning: --allow admits every address" in recorder.log()
        with SipClient(recorder.address) as src:
            dialog = Dialog(src)
            dialog.call(headers=[("x-callrec-domain", "acme")])
            status, reason, _ = invite_status(src)
            assert (status, reason) == (503, "Service Unavailable: session limit for this source reached")
            assert dialog.bye().status == 200
    recorder_only = RecorderProcess(tmp_path / "data2", "--allow-domain", f"beta={OTHER_SRC}")
    with recorder_only, SipClient(recorder_only.address, local_host=OTHER_SRC) as beta:
        status, reason, _ = invite_status(beta, headers=[("x-callrec-domain", "acme")])
        assert (status, reason) == (403, "Forbidden: source not allowed for this domain")
