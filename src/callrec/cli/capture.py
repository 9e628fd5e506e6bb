"""``callrec capture``: record the calls seen on a network interface (a mirror port, the PBX's own interface)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from callrec.cli.common import HandToService, LogLevel, _fail, _refused, app, log_to_stderr
from callrec.errors import CallrecError, ConfigError

if TYPE_CHECKING:
    from callrec.config import ServiceConfig
    from callrec.live.capture import CaptureSettings


@app.command("capture")
def capture_command(
    interface: Annotated[
        list[str],
        typer.Option(
            "--interface",
            metavar="IF",
            help="Interface to read (repeatable: one process follows calls across all of them); needs root or"
            " CAP_NET_RAW",
        ),
    ],
    bpf: Annotated[
        str,
        typer.Option(
            "--filter",
            metavar="BPF",
            help="Capture filter, tcpdump's syntax (default: udp or (tcp port 5060); env CALLREC_CAPTURE_FILTER)",
        ),
    ] = "",
    data: Annotated[Path, typer.Option("--data", metavar="DIR", help="Data folder; tapes go to DATA/tapes")] = Path(
        "data"
    ),
    domain_from: Annotated[
        str,
        typer.Option(
            "--domain-from",
            metavar="RULE",
            help="A call's domain: ruri (Request-URI host), to (To host), header:NAME or fixed:DOMAIN"
            " (default fixed:default; env CALLREC_CAPTURE_DOMAIN_FROM)",
        ),
    ] = "",
    idle_timeout: Annotated[
        float,
        typer.Option("--idle-timeout", metavar="S", help="Close a call with no media nor SIP for this long, s"),
    ] = 300.0,
    max_calls: Annotated[int, typer.Option("--max-calls", metavar="N", help="Calls followed at once")] = 5000,
    service: HandToService = False,
    log_level: LogLevel = "info",
) -> None:
    """Record every call seen on an interface (SIP over UDP and TCP, RTP) to one tape per call, until SIGTERM."""

    from callrec.config import recorder_config_from_env
    from callrec.live.capture import DEFAULT_FILTER, CaptureSettings
    from callrec.live.domains import DomainRule
    from callrec.live.tracker import TrackerSettings
    from callrec.service.ownership import DataLock, die_with_parent
    from callrec.service.sanity import StartRefused, check_shared_setup

    die_with_parent()  # when started by serve: end with it
    log_to_stderr(log_level)
    try:
        env = recorder_config_from_env()
        if idle_timeout <= 0 or max_calls < 1:
            _fail("--idle-timeout must be positive and --max-calls at least 1")
        rule = DomainRule.parse(domain_from or env.capture_domain_from)
        tracker = TrackerSettings(
            tapes_dir=data / "tapes", domain=rule, media_timeout_s=idle_timeout, sip_timeout_s=idle_timeout,
            max_calls=max_calls,
        )  # fmt: skip
        settings = CaptureSettings(
            interfaces=list(dict.fromkeys(interface)), data_dir=data,
            bpf=bpf or env.capture_filter or DEFAULT_FILTER, tracker=tracker,
        )  # fmt: skip
        svc = None
        if service or os.environ.get("CALLREC_DATABASE_URL"):
            from callrec.config import service_config_from_env

            svc = service_config_from_env()
            svc.data_dir = data
            check_shared_setup(svc)
        lock = DataLock.acquire(data, "callrec capture")
        try:
            _run(settings, svc)
        finally:
            lock.release()
    except (StartRefused, ConfigError) as exc:
        # no root, no such interface, a bad filter or rule: starting again would fail the same way
        _refused("capture", exc)
    except CallrecError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot start the capture: {exc.strerror or exc}")


def _run(settings: CaptureSettings, service: ServiceConfig | None) -> None:
    """Capture until SIGTERM or SIGINT; with ``service``, each tape is handed to it as it opens and closes
    (and the outbox delivers what could not be handed over at once)."""
    import signal
    import threading

    from callrec.live.capture import run_capture

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    handoff = outbox = None
    if service is not None:
        from callrec.jobs.worker import build
        from callrec.service.handoff import TapeHandOff
        from callrec.service.outbox import TapeOutbox

        built = build(service)
        handoff, outbox = TapeHandOff(built.pipeline), TapeOutbox(built.pipeline)
        outbox.start()

    def ready() -> None:
        print(
            f"callrec capture: reading {', '.join(settings.interfaces)} (filter {settings.bpf!r}),"
            f" domain from {settings.tracker_settings().domain}, tapes under {settings.data_dir / 'tapes'}",
            file=sys.stderr,
            flush=True,
        )

    try:
        run_capture(
            settings, stop, ready=ready,
            on_opened=handoff.opened if handoff is not None else None,
            on_closed=handoff.closed if handoff is not None else None,
            on_discarded=handoff.discarded if handoff is not None else None,
        )  # fmt: skip
    finally:
        if handoff is not None and outbox is not None:
            outbox.stop()
            handoff.drain()  # tapes closed by the shutdown reach the service before the process ends
            handoff.pipeline.ctx.close()
