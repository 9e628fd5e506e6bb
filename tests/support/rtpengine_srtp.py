"""Debian's rtpengine offering SDES-SRTP to callrec's SRS, for tests: ``SrtpOfferRig``.

rtpengine runs in a network namespace of its own (``RtpenginePeer``: rtpengine at 10.77.0.1, the caller at
10.77.0.2) and ``callrec record`` runs in the same namespace at 10.77.0.3, trusting 10.77.0.0/24. A call is
driven by a child process in the namespace (this file run as a script): the caller's plain RTP/AVP offer
goes to rtpengine with ``transport-protocol: RTP/SAVP``, so rtpengine rewrites it into an SRTP offer with
its ``a=crypto`` lines (its own keys); that offer goes to the SRS in a SIPREC INVITE (Require: siprec),
the SRS's answer goes back to rtpengine as the callee's, and the caller's real-time PCMA is played to
rtpengine, which encrypts it toward the SRS. BYE, then delete. The tape is found under the recorder's data
folder; ``Sent`` holds what the caller said.

Root, rtpengine and ffmpeg are needed (``rtpengine_peer.require`` skips otherwise, fails under CI=true).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.rtpengine_peer import (
    CALLER_ADDR,
    ENGINE_ADDR,
    FRAME_BYTES,
    IP,
    NgClient,
    RtpenginePeer,
    Sent,
    _media_port,
    _play,
    decode_pcma,
    encode_pcma,
    sdp,
    speech,
)

SRS_ADDR = "10.77.0.3"
SRS_SIP_PORT = 5070
SRS_RTP = (31000, 31099)  # rtpengine takes 30000-30999 in the namespace
READY_TIMEOUT_S = 20.0


class SrtpOfferRig(RtpenginePeer):
    """rtpengine and ``callrec record`` (on ``data``) in one namespace; ``call`` records one SRTP call."""

    def __init__(self, spool: Path, data: Path) -> None:
        super().__init__(spool)
        self.data = data
        self.recorder: subprocess.Popen[bytes] | None = None
        self.recorder_log = data.parent / f"{self.netns}-recorder.log"

    def start(self) -> None:
        super().start()
        assert IP is not None
        self.data.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("CALLREC_SECRET_KEY", "CALLREC_DATABASE_URL")}
        with self.recorder_log.open("ab") as log:
            self.recorder = subprocess.Popen(
                [IP, "netns", "exec", self.netns, sys.executable, "-m", "callrec", "record",
                 "--listen", f"{SRS_ADDR}:{SRS_SIP_PORT}", "--rtp-ports", f"{SRS_RTP[0]}-{SRS_RTP[1]}",
                 "--data", str(self.data), "--allow", "10.77.0.0/24", "--log-level", "debug"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**env, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S
        while b"callrec record: listening on" not in self.recorder_log.read_bytes():
            if self.recorder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"callrec record did not start: {self.recorder_log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop_recorder(self) -> int:
        """SIGTERM the recorder (every tape closed cleanly); its exit status."""
        proc, self.recorder = self.recorder, None
        if proc is None:
            return 0
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
            raise

    def close(self) -> None:
        try:
            self.stop_recorder()
        finally:
            super().close()

    def srtp_call(self, call_id: str, *, seconds: float = 3.0, seed: int = 7, flags: dict[str, Any] | None = None
                  ) -> tuple[Sent, dict[str, Any]]:  # fmt: skip
        """One call from the caller through rtpengine (encrypting) to the SRS: what the caller sent, and the
        driver's answer (rtpengine's offer, the SRS's 200 OK body)."""
        payload = encode_pcma(speech(seconds, seed))
        payload = payload[: len(payload) // FRAME_BYTES * FRAME_BYTES]
        sent = Sent("A", CALLER_ADDR, 40100, payload, decode_pcma(payload), random.getrandbits(32))
        path = self._work / f"{call_id}.pcma"
        path.write_bytes(payload)
        job = {
            "action": "srtp",
            "call_id": call_id,
            "flags": flags or {},
            "party": {"party": "A", "addr": sent.addr, "port": sent.port, "payload": str(path), "ssrc": sent.ssrc},
        }
        result = self._drive_srtp(job, timeout=seconds + 30)
        sent.first_send, sent.first_sent_at = result["sent"]["first_send"], result["sent"]["first_sent_at"]
        sent.packets, sent.engine_port = result["sent"]["packets"], result["sent"]["engine_port"]
        return sent, result

    def _drive_srtp(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert IP is not None
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.run(
            [IP, "netns", "exec", self.netns, sys.executable, "-m", "tests.support.rtpengine_srtp"],
            input=json.dumps(job).encode(), capture_output=True, timeout=timeout, cwd=root, env=env,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"SRTP driver failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
        answer: dict[str, Any] = json.loads(proc.stdout)
        return answer


# --- the driver, run inside the namespace --------------------------------------------------------------


def _srtp_call(job: dict[str, Any]) -> dict[str, Any]:
    from tests.support.sipclient import Dialog, SipClient

    caller, call_id = job["party"], job["call_id"]
    ng = NgClient()
    try:
        offer = ng.checked(
            {
                "command": "offer",
                "call-id": call_id,
                "from-tag": "caller-tag",
                "sdp": sdp("alice", 1, caller["addr"], caller["port"]),
                "transport-protocol": "RTP/SAVP",
                **job["flags"],
            }
        )[b"sdp"].decode()
        with SipClient((SRS_ADDR, SRS_SIP_PORT), local_host=CALLER_ADDR) as sip:
            dialog = Dialog(sip, call_id=call_id)
            invite = dialog.invite(sdp=offer, metadata=None)
            ok = sip.response(match=invite, timeout=10)
            if ok.status != 200:
                raise RuntimeError(f"the SRS refused the INVITE: {ok.status} {ok.reason}")
            dialog.ack(ok)
            srs_answer = (ok.sdp_body() or b"").decode()
            answer = ng.checked(
                {
                    "command": "answer",
                    "call-id": call_id,
                    "from-tag": "caller-tag",
                    "to-tag": ok.to_tag or "srs-tag",
                    "sdp": srs_answer,
                }
            )[b"sdp"].decode()
            caller["engine_port"] = _media_port(answer)
            played = _play([caller], [0.0], ENGINE_ADDR)["A"]
            time.sleep(0.3)  # the last packets reach the SRS before the BYE
            bye = dialog.bye()
            if bye.status != 200:
                raise RuntimeError(f"the SRS answered the BYE {bye.status} {bye.reason}")
        ng.checked({"command": "delete", "call-id": call_id, "from-tag": "caller-tag"})
    finally:
        ng.close()
    return {"offer": offer, "srs_answer": srs_answer, "answer": answer, "sent": played}


def main() -> None:
    job = json.loads(sys.stdin.read())
    if job["action"] != "srtp":
        raise SystemExit(f"unknown action {job['action']!r}")
    json.dump(_srtp_call(job), sys.stdout)


if __name__ == "__main__":
    main()
