"""Lenient rs-metadata in the recorder: a repairable document keeps both parties, an unrepairable one falls
back to offer order with a warning (the repairs themselves: tests/wire/test_siprec_lenient.py)."""

from __future__ import annotations

import logging
import re

import pytest

from tests.support.sipclient import Dialog, RecorderThread, RtpSender, SipClient, answered_ports, info_of, wait_for
from tests.wire.test_siprec_lenient import opensips


# the recorder: the test of issue 13, "metadata with bare & keeps both parties' numbers"
@pytest.mark.slow
def test_recorder_keeps_both_parties_numbers_with_a_bare_ampersand(
    rec: RecorderThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="callrec.recorder")
    with SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        ok = dialog.call(metadata=opensips(name_b="Barnes & Noble"))
        ports = answered_ports(ok)
        for port in ports:
            RtpSender(port).send(3)
        wait_for(lambda: rec.call(lambda: rec.recorder.sessions[dialog.call_id].tape.packets) == 6, what="packets")  # type: ignore[union-attr]
        assert dialog.bye().status == 200
        (folder,) = rec.wait_closed()
    info = info_of(folder)
    assert [(p.id, p.role, p.number, p.name) for p in info.parties] == [
        ("A", "caller", "+15551230001", "AT&T Sales"),
        ("B", "callee", "+15559870002", "Barnes & Noble"),
    ]
    assert [s.party for s in info.streams] == ["A", "B"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        re.fullmatch(rf"call {re.escape(dialog.call_id)}: its recording metadata is not well-formed XML, read after "
                     r"repairing a bare '&'", w)
        for w in warnings
    ), warnings  # fmt: skip


def test_recorder_falls_back_to_offer_order_with_a_warning_when_repair_is_not_enough(
    rec: RecorderThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="callrec.recorder")
    with SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        dialog.call(metadata=opensips().replace("</nameID>", "", 1))
        assert dialog.bye().status == 200
        (folder,) = rec.wait_closed()
    info = info_of(folder)
    assert [(p.id, p.number, p.name) for p in info.parties] == [("A", "", ""), ("B", "", "")]
    assert any("ignoring its recording metadata (parties by offer order)" in r.getMessage() for r in caplog.records)
