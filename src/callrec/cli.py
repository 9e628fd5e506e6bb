"""The ``callrec`` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from callrec.cli_typer import adjust_typer
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
    from callrec.config import RecorderConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="callrec: call recording for cloud telephony",
    # subcommands' contexts inherit it: -h works on every command
    context_settings={"help_option_names": ["-h", "--help"]},
)


# options ``record`` and ``serve`` both take
SipListen = Annotated[str, typer.Option("--listen", metavar="HOST:PORT", help="SIP address, UDP and TCP")]
RtpPorts = Annotated[str, typer.Option("--rtp-ports", metavar="FIRST-LAST", help="RTP port range FIRST-LAST")]
RtpengineSpools = Annotated[
    list[Path] | None,
    typer.Option(
        "--rtpengine-spool",
        metavar="DIR",
        help="rtpengine's recording-dir (recording-method pcap): each finished recording there becomes a call,"
        " its files removed once stored (repeatable; env CALLREC_RTPENGINE_SPOOL, folders separated by ':')",
    ),
]


adjust_typer()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            shown = version("callrec")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from callrec import __version__ as shown
        print(f"callrec {shown}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit"),
    ] = False,
) -> None:
    """callrec: call recording for cloud telephony"""


def _fail(message: str) -> None:
    # one line, no traceback: the message is the whole story
    print(f"callrec: error: {message}", file=sys.stderr)
    raise typer.Exit(2)


def _refused(command: str, exc: Exception) -> None:
    # a start that cannot succeed (data folder in use, address taken): one line naming the command, and
    # the exit status a supervisor does not retry
    from callrec.service.sanity import EXIT_REFUSED

    print(f"callrec {command}: {exc}", file=sys.stderr)
    raise typer.Exit(EXIT_REFUSED)


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
    # the input is readable and of a kind we read: only now the media stack (numpy, ...) loads, and rich's
    # progress bar only for a terminal
    from callrec.mix import mix

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
                    input, out, opts, call_id=call_id,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )  # fmt: skip
        else:
            report = mix(input, out, opts, call_id=call_id)
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


@app.command("record")
def record_command(
    listen: SipListen = "0.0.0.0:5060",
    rtp_ports: RtpPorts = "30000-39999",
    data: Annotated[Path, typer.Option("--data", metavar="DIR", help="Data folder; tapes go to DATA/tapes")] = Path(
        "data"
    ),
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            metavar="CIDR",
            help="SRC address or CIDR trusted for every domain (repeatable); with no --allow nor"
            " --allow-domain only loopback SRCs may record; 0.0.0.0/0 opens it to all",
        ),
    ] = None,
    allow_domain: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-domain",
            metavar="DOMAIN=CIDR",
            help="DOMAIN=CIDR[,CIDR...]: SRCs that record into DOMAIN only (repeatable)",
        ),
    ] = None,
    max_sessions_per_source: Annotated[
        int,
        typer.Option(
            "--max-sessions-per-source",
            metavar="N",
            help="Sessions one SRC address may hold at once; more get 503 (0: an eighth of the RTP port pairs,"
            " at least 16)",
        ),
    ] = 0,
    media_address: Annotated[
        str,
        typer.Option(
            "--media-address", metavar="ADDRESS", help="Address given to SRCs for RTP (default: the one they reach)"
        ),
    ] = "",
    idle_timeout: Annotated[
        float,
        typer.Option("--idle-timeout", metavar="S", help="Close a session with no media nor SIP for this long, s"),
    ] = 300.0,
    max_sessions: Annotated[
        int, typer.Option("--max-sessions", metavar="N", help="Sessions at once; more get 503")
    ] = 5000,
    rtpengine_spool: RtpengineSpools = None,
    mix: Annotated[bool, typer.Option("--mix/--no-mix", help="Mix each tape when it closes")] = False,
    service: Annotated[
        bool,
        typer.Option(
            "--service/--no-service",
            help="Hand each tape to the service (database, storage, queue); on when CALLREC_DATABASE_URL is set",
        ),
    ] = False,
    log_level: Annotated[
        str, typer.Option("--log-level", metavar="LEVEL", help="debug, info, warning or error")
    ] = "info",
) -> None:
    """Record SIPREC sessions (RFC 7866) to tapes without transcoding, until SIGTERM or SIGINT."""
    import logging

    from callrec.config import (
        DEFAULT_SIP_PORT,
        parse_domain_networks,
        parse_hostport,
        parse_networks,
        parse_port_range,
        recorder_config_from_env,
    )
    from callrec.runner import run
    from callrec.service.ownership import die_with_parent
    from callrec.service.sanity import StartRefused, check_shared_setup

    die_with_parent()  # when started by serve: end with it
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = recorder_config_from_env()
        cfg.listen_host, cfg.listen_port = parse_hostport(listen, DEFAULT_SIP_PORT, "--listen")
        cfg.rtp_first, cfg.rtp_last = parse_port_range(rtp_ports)
        cfg.data_dir = data
        if allow:
            cfg.allow = parse_networks(allow)
        if allow_domain:
            cfg.allow_domains = parse_domain_networks(allow_domain)
        if max_sessions_per_source < 0:
            _fail("--max-sessions-per-source must not be negative (0: the default)")
        cfg.max_sessions_per_source = max_sessions_per_source or cfg.max_sessions_per_source
        cfg.media_address = media_address or cfg.media_address
        cfg.idle_timeout_s = idle_timeout
        cfg.max_sessions = max_sessions
        cfg.mix_on_close = mix
        _spools(cfg, rtpengine_spool)
        _trust_warnings(cfg)
        ready = (
            f"callrec record: listening on {{host}}:{{port}} (udp, tcp), rtp ports {cfg.rtp_first}-{cfg.rtp_last},"
            f" tapes under {cfg.tapes_dir}"
        ) + "".join(f", rtpengine spool {spool}" for spool in cfg.rtpengine_spools)
        svc = None
        if service or os.environ.get("CALLREC_DATABASE_URL"):
            from callrec.config import service_config_from_env

            svc = service_config_from_env()
            svc.data_dir = data
            check_shared_setup(svc)
        run(cfg, mix=mix, ready=ready, service=svc)
    except StartRefused as exc:
        _refused("record", exc)
    except CallrecError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot start the recorder: {exc.strerror or exc}")


def _spools(cfg: RecorderConfig, given: list[Path] | None) -> None:
    """``--rtpengine-spool`` folders (instead of ``CALLREC_RTPENGINE_SPOOL``'s), each once, each there."""
    if given:
        cfg.rtpengine_spools = list(dict.fromkeys(given))
    if cfg.rtpengine_spools:
        from callrec.service.rtpengine_spool import check_spools

        check_spools(cfg.rtpengine_spools, "--rtpengine-spool" if given else "CALLREC_RTPENGINE_SPOOL")


def _trust_warnings(cfg: RecorderConfig) -> None:
    if cfg.opened_to_all():
        print("callrec: warning: --allow admits every address: any host may open recording sessions", file=sys.stderr)
    elif not cfg.allow and not cfg.allow_domains:
        print(
            "callrec: warning: no --allow nor --allow-domain: only loopback SRCs may record, others get 403",
            file=sys.stderr,
        )


def _logging(level: str) -> None:
    import logging

    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command("serve")
def serve_command(
    data: Annotated[
        Path | None, typer.Option("--data", metavar="DIR", help="Data folder (database, storage, tapes)")
    ] = None,
    http: Annotated[
        str, typer.Option("--http", metavar="HOST:PORT", help="HTTP API and web UI address")
    ] = "127.0.0.1:8080",
    listen: SipListen = "0.0.0.0:5060",
    rtp_ports: RtpPorts = "30000-39999",
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            metavar="CIDR",
            help="SRC address or CIDR trusted for every domain (repeatable); with no --allow nor"
            " --allow-domain only loopback SRCs may record; 0.0.0.0/0 opens it to all",
        ),
    ] = None,
    allow_domain: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-domain",
            metavar="DOMAIN=CIDR",
            help="DOMAIN=CIDR[,CIDR...]: SRCs that record into DOMAIN only (repeatable)",
        ),
    ] = None,
    max_sessions_per_source: Annotated[
        int,
        typer.Option(
            "--max-sessions-per-source",
            metavar="N",
            help="Sessions one SRC address may hold at once; more get 503 (0: an eighth of the RTP port pairs,"
            " at least 16)",
        ),
    ] = 0,
    rtpengine_spool: RtpengineSpools = None,
    workers: Annotated[
        int | None, typer.Option("--workers", metavar="N", help="Mixing processes (default: CPU count)")
    ] = None,
    record: Annotated[bool, typer.Option("--record/--no-record", help="Run the SIPREC recorder")] = True,
    work: Annotated[bool, typer.Option("--work/--no-work", help="Run the background workers")] = True,
    log_level: Annotated[
        str, typer.Option("--log-level", metavar="LEVEL", help="debug, info, warning or error")
    ] = "info",
) -> None:
    """Run the whole system on one machine: recorder, background workers and HTTP API, until SIGTERM."""
    from callrec.config import (
        DEFAULT_SIP_PORT,
        parse_domain_networks,
        parse_hostport,
        parse_networks,
        parse_port_range,
        recorder_config_from_env,
        service_config_from_env,
    )
    from callrec.serve import serve
    from callrec.service.sanity import StartRefused, check_shared_setup

    _logging(log_level)
    try:
        svc = service_config_from_env()
        rec = recorder_config_from_env()
        if data is not None:
            svc.data_dir = rec.data_dir = data
        rec.data_dir = svc.data_dir
        svc.http_host, svc.http_port = parse_hostport(http, 8080, "--http")
        rec.listen_host, rec.listen_port = parse_hostport(listen, DEFAULT_SIP_PORT, "--listen")
        rec.rtp_first, rec.rtp_last = parse_port_range(rtp_ports)
        if allow:
            rec.allow = parse_networks(allow)
        if allow_domain:
            rec.allow_domains = parse_domain_networks(allow_domain)
        if max_sessions_per_source < 0:
            _fail("--max-sessions-per-source must not be negative (0: the default)")
        rec.max_sessions_per_source = max_sessions_per_source or rec.max_sessions_per_source
        if workers is not None:
            if workers < 1:
                _fail("--workers must be at least 1")
            svc.workers = workers
        if record:
            _spools(rec, rtpengine_spool)
        elif rtpengine_spool:
            _fail("--rtpengine-spool is read by the recorder: it cannot be used with --no-record")
        check_shared_setup(svc)
        serve(rec, svc, record=record, work=work)
    except StartRefused as exc:
        _refused("serve", exc)
    except CallrecError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot start the service: {exc.strerror or exc}")


@app.command("worker")
def worker_command(
    workers: Annotated[
        int | None, typer.Option("--workers", metavar="N", help="Mixing processes (default: CPU count)")
    ] = None,
    sweep: Annotated[bool, typer.Option("--sweep/--no-sweep", help="Re-queue stuck work, apply retention")] = True,
    log_level: Annotated[
        str, typer.Option("--log-level", metavar="LEVEL", help="debug, info, warning or error")
    ] = "info",
) -> None:
    """Mix and store recordings from the queue (CALLREC_QUEUE_URL, CALLREC_DATABASE_URL), until SIGTERM."""
    from callrec.config import service_config_from_env
    from callrec.jobs.worker import run_worker
    from callrec.service.ownership import die_with_parent
    from callrec.service.sanity import StartRefused, check_shared_setup

    die_with_parent()  # when started by serve: end with it
    _logging(log_level)
    try:
        cfg = service_config_from_env()
        if workers is not None and workers < 1:
            _fail("--workers must be at least 1")
        check_shared_setup(cfg)
        run_worker(cfg, workers=workers, sweep=sweep)
    except StartRefused as exc:
        _refused("worker", exc)
    except CallrecError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot start the worker: {exc.strerror or exc}")


@app.command("version")
def version_command() -> None:
    """Print the version."""
    from callrec import __version__

    print(__version__)


def _add_keys() -> None:
    from callrec.keys_cli import keys_app

    app.add_typer(keys_app, name="keys")


_add_keys()


def main() -> None:
    """Entry point of the ``callrec`` script."""
    app()


if __name__ == "__main__":
    main()
