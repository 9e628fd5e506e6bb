"""The ``callrec`` command line."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from callrec.errors import CallrecError
from callrec.media.encode import MP3_BITRATES_KBPS

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="callrec: call recording for cloud telephony"
)
err = Console(stderr=True)


class Format(StrEnum):
    mp3 = "mp3"
    wav = "wav"


class WavCodec(StrEnum):
    pcm = "pcm"
    alaw = "alaw"
    ulaw = "ulaw"
    gsm = "gsm"


def _fail(message: str) -> None:
    # one line, no traceback: the message is the whole story
    print(f"callrec: error: {message}", file=sys.stderr)
    raise typer.Exit(2)


@app.command("mix")
def mix_command(
    input: Annotated[Path, typer.Argument(help="A pcap/pcapng capture with SIP and RTP, or a tape folder")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Output folder, or a .mp3/.wav file for one call")
    ] = None,
    fmt: Annotated[Format | None, typer.Option("--format", help="mp3 (default) or wav")] = None,
    codec: Annotated[WavCodec | None, typer.Option("--codec", help="WAV codec: pcm, alaw, ulaw, gsm")] = None,
    bitrate: Annotated[int, typer.Option("--bitrate", help="MP3 bitrate, kbit/s: 8, 16, 24 or 32")] = 16,
    rate: Annotated[int, typer.Option("--rate", help="Sample rate: 8000 or 16000")] = 8000,
    call_id: Annotated[
        str | None, typer.Option("--call-id", help="Mix only the call with this Call-ID")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per call (JSON Lines)")
    ] = False,
) -> None:
    """Mix every call in a capture (or a tape) into a stereo recording: caller left, callee right."""
    from callrec.offline import MixOptions, mix

    out = output if output is not None else Path(".")
    chosen = fmt.value if fmt is not None else ("wav" if out.suffix.lower() == ".wav" else "mp3")
    if chosen == "mp3" and codec is not None:
        _fail("--codec applies to WAV output; MP3 is always MPEG layer 3")
    if bitrate not in MP3_BITRATES_KBPS:
        _fail(f"--bitrate must be one of {', '.join(map(str, MP3_BITRATES_KBPS))}")
    if rate not in (8000, 16000):
        _fail("--rate must be 8000 or 16000")
    if not input.exists():
        _fail(f"{input}: no such file or folder")
    opts = MixOptions(
        fmt=chosen, codec=codec.value if codec else "pcm", bitrate_kbps=bitrate, rate=rate, call_id=call_id
    )
    show_progress = err.is_terminal and not as_json
    try:
        if show_progress:
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            ) as bar:
                task = bar.add_task(f"mixing {input.name}", total=None)
                report = mix(
                    input, out, opts, lambda done, total: bar.update(task, completed=done, total=total)
                )
        else:
            report = mix(input, out, opts)
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


@app.command("version")
def version_command() -> None:
    """Print the version."""
    from callrec import __version__

    print(__version__)


def main() -> None:
    """Entry point of the ``callrec`` script."""
    app()


if __name__ == "__main__":
    main()
