"""The recorder keeps the recorded call's original Call-ID(s) from the SIPREC metadata in call.json, and a
metadata update adds those it names."""

from __future__ import annotations

from tests.support.sipclient import METADATA, Dialog, RecorderThread, SipClient, info_of, siprec_sdp


def test_sip_session_id_lands_in_call_json_and_updates_add(rec: RecorderThread) -> None:
    with SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        dialog.call()  # METADATA carries <sipSessionID>original-call</sipSessionID>
        update = METADATA.replace("original-call", "transferred-call@pbx.test")
        assert dialog.reinvite(siprec_sdp([40000, 40002]), metadata=update).status == 200
        assert dialog.bye().status == 200
        (folder,) = rec.wait_closed()
    info = info_of(folder)
    assert info.call_ids == [dialog.call_id]
    assert info.original_call_ids == ["original-call", "transferred-call@pbx.test"]
