"""``callrec record``, ``serve`` and ``worker``: the long-running processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from callrec.cli.common import HandToService, LogLevel, _fail, _refused, app, log_to_stderr
from callrec.errors import CallrecError

if TYPE_CHECKING:
    from callrec.config import RecorderConfig

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
Allow = Annotated[
    list[str] | None,
    typer.Option(
        "--allow",
        metavar="CIDR",
        help="SRC address or CIDR trusted for every domain (repeatable); with no --allow nor"
        " --allow-domain only loopback SRCs may record; 0.0.0.0/0 opens it to all",
    ),
]
AllowDomain = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-domain",
        metavar="DOMAIN=CIDR",
        help="DOMAIN=CIDR[,CIDR...]: SRCs that record into DOMAIN only (repeatable)",
    ),
]
MaxSessionsPerSource = Annotated[
    int,
    typer.Option(
        "--max-sessions-per-source",
        metavar="N",
        help="Sessions one SRC address may hold at once; more get 503 (0: an eighth of the RTP port pairs,"
        " at least 16)",
    ),
]


@app.command("record")
def record_command(
    listen: SipListen = "0.0.0.0:5060",
    rtp_ports: RtpPorts = "30000-39999",
    data: Annotated[Path, typer.Option("--data", metavar="DIR", help="Data folder; tapes go to DATA/tapes")] = Path(
        "data"
    ),
    allow: Allow = None,
    allow_domain: AllowDomain = None,
    max_sessions_per_source: MaxSessionsPerSource = 0,
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
    service: HandToService = False,
    log_level: LogLevel = "info",
) -> None:
    """Record SIPREC sessions (RFC 7866) to tapes without transcoding, until SIGTERM or SIGINT."""

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
    log_to_stderr(log_level)
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
    allow: Allow = None,
    allow_domain: AllowDomain = None,
    max_sessions_per_source: MaxSessionsPerSource = 0,
    rtpengine_spool: RtpengineSpools = None,
    capture: Annotated[
        list[str] | None,
        typer.Option(
            "--capture",
            metavar="IF",
            help="Also record the calls seen on this interface, a mirror port or the PBX's own (repeatable;"
            " env CALLREC_CAPTURE, interfaces separated by ':' or ','; see callrec capture --help)",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", metavar="N", help="Mixing processes (default: CPU count)")
    ] = None,
    record: Annotated[bool, typer.Option("--record/--no-record", help="Run the SIPREC recorder")] = True,
    work: Annotated[bool, typer.Option("--work/--no-work", help="Run the background workers")] = True,
    log_level: LogLevel = "info",
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

    log_to_stderr(log_level)
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
        if capture:
            rec.captures = list(dict.fromkeys(capture))
        if rec.captures:
            from callrec.live.domains import DomainRule

            DomainRule.parse(rec.capture_domain_from)  # a bad CALLREC_CAPTURE_DOMAIN_FROM stops serve, not its child
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
    log_level: LogLevel = "info",
) -> None:
    """Mix and store recordings from the queue (CALLREC_QUEUE_URL, CALLREC_DATABASE_URL), until SIGTERM."""
    from callrec.config import service_config_from_env
    from callrec.jobs.worker import run_worker
    from callrec.service.ownership import die_with_parent
    from callrec.service.sanity import StartRefused, check_shared_setup

    die_with_parent()  # when started by serve: end with it
    log_to_stderr(log_level)
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
