"""Ctrl-C (SIGINT) during a live call: the tape is closed and handed to the service, exit 0, no traceback.

Before the fix, the tapes closed by the shutdown were announced after the hand-off's pool had shut down:
``RuntimeError: cannot schedule new futures after shutdown`` and a call left ``recording`` in the database.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from tests.support.recorder_proc import RecorderProcess
from tests.support.sipclient import Dialog, RtpSender, SipClient, answered_ports, info_of, tapes, wait_for


@pytest.mark.slow
def test_sigint_during_a_live_call_with_the_service(data: Path) -> None:
    proc = RecorderProcess(data, "--service").start()
    try:
        with SipClient(proc.address) as sip:
            dialog = Dialog(sip)
            RtpSender(answered_ports(dialog.call())[1]).send(9)
            wait_for(lambda: len(tapes(data)) == 1, what="the tape")
            code = proc.stop(signal.SIGINT)
    finally:
        proc.kill()
    log = proc.log()
    assert code == 0, log
    assert "Traceback" not in log and "cannot schedule" not in log, log
    # nothing lost: the tape closed cleanly went to the service's storage, which knows the call ended and has
    # its recording queued for mixing
    (stored,) = [p.parent for p in (data / "storage").rglob("call.json")]
    info = info_of(stored)
    assert info.closed_cleanly and info.end_reason == "shutdown"
    db = sqlite3.connect(data / "callrec.db")
    try:
        calls = db.execute("select end_reason, closed_cleanly from calls").fetchall()
        states = db.execute("select state from recordings").fetchall()
    finally:
        db.close()
    assert calls == [("shutdown", 1)]
    assert states == [("queued",)]
