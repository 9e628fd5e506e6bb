"""``mix()``: a capture, a tape or an rtpengine recording in, one recording per call out, and a report."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from callrec.errors import OutputError
from callrec.files import rtpengine, tape
from callrec.files.pcap import CaptureReader
from callrec.media_limits import DEFAULT, OUTPUT_SUFFIXES, OutputOptions
from callrec.mix.demux import Demux
from callrec.mix.report import MixReport

if TYPE_CHECKING:
    from callrec.secretbox import SecretBox
    from callrec.wire.sdes import CryptoAttribute

# mix() was given no secret box and the tape's SRTP keys are sealed
NO_BOX = "the tape's SRTP keys are sealed and no secret was given to open them"


def mix(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: OutputOptions = DEFAULT,
    *,
    call_id: str | None = None,
    left: frozenset[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    box: SecretBox | None = None,
) -> MixReport:
    """Mix every call of a capture or tape ``source`` into ``output`` (a folder, or one file).

    ``call_id``: only the call with this Call-ID. ``left`` (stereo only): the party ids ("A", "B", "P1"...)
    for the left channel, every other party right (stitching puts the customer left); None keeps the
    default layout (caller left, callee right). ``progress(done, total)`` is called with bytes read.
    ``box``: the secret box of the service that recorded a tape, which opens its sealed SRTP keys (a tape
    with such keys and no box, or the wrong one: ``SealedKeysError``, nothing mixed).
    """
    source, output = Path(source), Path(output)
    single_file = output.suffix.lower() in OUTPUT_SUFFIXES and not output.is_dir()
    target_dir = output.parent if single_file else output
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".callrec-", dir=target_dir))
    except OSError as exc:
        raise OutputError(f"cannot create {target_dir}: {exc.strerror}") from exc
    try:
        run = Demux(staging, options, call_id=call_id, left=left)
        if tape.is_tape(source):
            info = tape.read_info(source)
            keys, run.tracker.sealed = _tape_keys(info.srtp, box)
            run.tracker.add_call(info, keys)
            pcap_path = source / tape.MEDIA_FILE
        elif rtpengine.is_recording(source):
            rec = rtpengine.locate(source)
            run.tracker.add_call(rtpengine.call_info(rec))
            pcap_path = rec.pcap
        else:
            pcap_path = source
        with CaptureReader(pcap_path) as reader:
            run.run(reader, progress)
            run.report.warnings.extend(reader.warnings)
            run.report.stats = {**reader.stats, **run.counts, "sip_malformed": run.tracker.malformed}
        _place_outputs(run.report, output, single_file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return run.report


def _tape_keys(
    sealed: list[object], box: SecretBox | None
) -> tuple[dict[int, list[CryptoAttribute]], dict[tuple[str, int, int], list[CryptoAttribute]]]:
    """A tape's SRTP keys opened with ``box``: by stream index (a recorder's), and by (sending party, m=
    line, tag) (a capture's, standing in for the keys its SIP holds replaced); none when the tape has none."""
    if not sealed:
        return {}, {}
    from callrec.media.srtp_keys import SealedKeysError, open_keys, open_sdp_keys

    if box is None:
        raise SealedKeysError(NO_BOX)
    return open_keys(box, sealed), open_sdp_keys(box, sealed)


def _place_outputs(report: MixReport, output: Path, single_file: bool) -> None:
    written = [c for c in report.calls if c.output is not None]
    if not (single_file and len(written) == 1):
        output.mkdir(parents=True, exist_ok=True)
    for call in written:
        assert call.output is not None
        dest = output if single_file and len(written) == 1 else output / call.output.name
        os.replace(call.output, dest)
        call.output = dest
