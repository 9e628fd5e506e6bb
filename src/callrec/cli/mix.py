"""``callrec mix``: a capture, a tape or an rtpengine recording into one stereo file per call.

It starts light: the input is opened and checked before the media stack (numpy, ...) loads, and rich's
progress bar loads only for a terminal.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from callrec.cli.common import _fail, app
from callrec.errors import CallrecError
from callrec.media_limits import (
    DEFAULT,
    MP3_BITRATES_KBPS,
    OUTPUT_SUFFIXES,
    SAMPLE_RATES,
    OutputFormat,
    OutputOptions,
    WavCodec,
    one_of,
)

if TYPE_CHECKING:
    from callrec.secretbox import SecretBox


@app.command("mix")
def mix_command(
    input: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help="A pcap/pcapng capture with SIP and RTP, a tape folder, or an rtpengine recording "
            "(its SPOOL/pcaps/*.pcap or SPOOL/metadata/rtpengine-meta-*.txt)",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", metavar="PATH", help="Output folder, or a .mp3/.wav file for one call"),
    ] = None,
    fmt: Annotated[OutputFormat | None, typer.Option("--format", help="mp3 (default) or wav")] = None,
    codec: Annotated[WavCodec | None, typer.Option("--codec", help="WAV codec: pcm, alaw, ulaw, gsm")] = None,
    bitrate: Annotated[
        int, typer.Option("--bitrate", metavar="KBPS", help="MP3 bitrate, kbit/s: 8, 16, 24 or 32")
    ] = DEFAULT.bitrate_kbps,
    rate: Annotated[int, typer.Option("--rate", metavar="HZ", help="Sample rate: 8000 or 16000")] = DEFAULT.rate_hz,
    call_id: Annotated[
        str | None, typer.Option("--call-id", metavar="CALL-ID", help="Mix only the call with this Call-ID")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per call (JSON Lines)")] = False,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            metavar="DIR",
            help="A tape with sealed SRTP keys: the data folder of the service that recorded it (its secret.key; "
            "default CALLREC_DATA, else ./data; CALLREC_SECRET_KEY wins)",
        ),
    ] = None,
) -> None:
    """Mix every call in a capture (or a tape, or an rtpengine recording) into a stereo recording: caller
    left, callee right."""
    out = output if output is not None else Path(".")
    _check_output(out, fmt)
    chosen = fmt.value if fmt is not None else ("wav" if out.suffix.lower() == ".wav" else "mp3")
    if chosen == "mp3" and codec is not None:
        _fail("--codec applies to WAV output; MP3 is always MPEG layer 3")
    if bitrate not in MP3_BITRATES_KBPS:
        _fail(f"--bitrate must be one of {one_of(MP3_BITRATES_KBPS)}")
    if rate not in SAMPLE_RATES:
        _fail(f"--rate must be one of {one_of(SAMPLE_RATES)}")
    _check_input(input)
    box = _secret_box(input, data)
    # the input is readable and of a kind we read: only now the media stack (numpy, ...) loads, and rich's
    # progress bar only for a terminal
    import gc

    from callrec.mix import mix

    gc.freeze()  # the modules just loaded live as long as the process: no collection need walk them again
    opts = OutputOptions(chosen, codec.value if codec else DEFAULT.codec, bitrate, rate)
    show_progress = sys.stderr.isatty() and not as_json
    try:
        if show_progress:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            ) as bar:
                task = bar.add_task(f"mixing {input.name}", total=None)
                report = mix(
                    input, out, opts, call_id=call_id, box=box,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )  # fmt: skip
        else:
            report = mix(input, out, opts, call_id=call_id, box=box)
    except CallrecError as exc:
        _fail(str(exc))
        return
    except KeyboardInterrupt:
        _fail("interrupted")
        return
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if os.environ.get("CALLREC_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set CALLREC_DEBUG=1 for a traceback)")
        return
    for warning in report.warnings:
        print(f"callrec: warning: {warning}", file=sys.stderr)
    written = [c for c in report.calls if c.output is not None]
    for call in report.calls:
        for warning in call.warnings:
            print(f"callrec: warning: call {call.call_id}: {warning}", file=sys.stderr)
        if call.error:
            print(f"callrec: warning: call {call.call_id}: {call.error}; no file written", file=sys.stderr)
        if as_json:
            print(json.dumps(call.to_json()), flush=True)
        elif call.output is not None:
            print(f"{call.output}  {call.duration_s:.1f} s  {call.bytes} bytes")
    if not written:
        where = f" with Call-ID {call_id}" if call_id else ""
        _fail(f"{input}: no call{where} with media found")


def _check_input(path: Path) -> None:
    # read the input before the media stack loads: a wrong path or a file that is no capture is refused
    # at once, in one line (a tape's own files are judged by the mixer, which names the one at fault)
    from callrec.files import tape  # light: no numpy
    from callrec.files.magic import looks_like_capture

    if path.is_dir():
        if not tape.is_tape(path):
            _fail(f"{path} is a folder but not a tape (no {tape.MEDIA_FILE} and {tape.META_FILE})")
        return
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        _fail(f"{path}: no such file or folder")
    except OSError as exc:
        _fail(f"{path}: cannot read it: {exc.strerror or exc}")
    if not looks_like_capture(head) and not _text(head):
        _fail(f"{path}: not a pcap or pcapng capture")


def _secret_box(path: Path, data: Path | None) -> SecretBox | None:
    """The secret box that opens a tape's sealed SRTP keys, found as the service finds its own
    (CALLREC_SECRET_KEY, else DATA/secret.key; a key file is never made here); None when not needed."""
    from callrec.files import tape  # light: no numpy

    if not tape.is_tape(path):
        return None
    try:
        sealed = tape.read_info(path).srtp
    except CallrecError:
        return None  # the mixer names what is wrong with the tape
    if not sealed:
        return None
    key = os.environ.get("CALLREC_SECRET_KEY", "").strip()
    if not key:
        folder = data if data is not None else Path(os.environ.get("CALLREC_DATA") or "data")
        key_file = folder / "secret.key"
        try:
            key = key_file.read_text("ascii").strip()
        except FileNotFoundError:
            where = "" if data is not None else " (none given: run with --data DIR)"
            _fail(f"{path}: this tape's SRTP keys are sealed and {key_file} does not exist{where}: --data must name "
                  "the data folder of the service that recorded it, or CALLREC_SECRET_KEY hold its secret")  # fmt: skip
        except (OSError, UnicodeError) as exc:
            _fail(f"{key_file}: cannot read it: {getattr(exc, 'strerror', None) or exc}")
    from callrec.secretbox import SecretBox  # cryptography: only for sealed keys

    try:
        return SecretBox(key)
    except CallrecError as exc:
        _fail(str(exc))
        return None


def _text(head: bytes) -> bool:
    # an rtpengine metadata file (or another text the mixer names its own error for): no NUL, decodes
    return bool(head) and b"\0" not in head and head.decode("utf-8", "replace").count("\ufffd") <= 4


def _check_output(out: Path, fmt: OutputFormat | None) -> None:
    # -o is a folder, or one .mp3/.wav file: a name with another extension is a mistake, not a folder to make
    suffix = out.suffix.lower()
    if out.is_dir() or not suffix:
        return
    if suffix not in OUTPUT_SUFFIXES:
        allowed = " or ".join(OUTPUT_SUFFIXES)
        _fail(f"{out}: the output is a folder or a {allowed} file, not {out.suffix}")
    if fmt is not None and suffix != f".{fmt.value}":
        _fail(f"{out}: --format {fmt.value} does not match the file's extension {out.suffix}")
    if out.exists():
        return  # an earlier mix's file: replaced
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        _fail(f"{out}: cannot create it: {parent} is not a folder")
