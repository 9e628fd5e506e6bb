"""Running the recorder as a process: event loop, signals, file limits, and mixing closed tapes."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from callrec.config import RecorderConfig, ServiceConfig
from callrec.files import tape
from callrec.names import safe_name
from callrec.recorder.recorder import Recorder
from callrec.service.ownership import DataLock
from callrec.service.sanity import cannot_listen

if TYPE_CHECKING:
    from callrec.service.handoff import TapeHandOff
    from callrec.service.outbox import TapeOutbox
    from callrec.service.rtpengine_spool import SpoolWatcher

log = logging.getLogger("callrec.runner")
# what binding a socket fails with (a file system error names its file, these do not)
BIND_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


def raise_file_limit() -> int:
    """Lift the soft limit on open files to the hard one: every session holds 4 sockets and a file."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class TapeMixer:
    """Mixes closed tapes one at a time in a child process (``callrec mix``), off the recording path."""

    def __init__(self, recordings: Path, data: Path | None = None) -> None:
        """``data``: the recorder's data folder, where ``callrec mix`` finds the secret that opens a tape's
        sealed SRTP keys (recorder/srtp.py)."""
        self._recordings = recordings
        self._data = data
        self._queue: asyncio.Queue[Path] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def submit(self, folder: Path) -> None:
        self._queue.put_nowait(folder)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            folder = await self._queue.get()
            try:
                call_id = tape.read_info(folder).call_id
            except Exception as exc:  # noqa: BLE001 - a bad tape must not stop the mixing of the others
                log.error("cannot mix %s: %s", folder, exc)
                continue
            out = self._recordings / f"{safe_name(call_id)}-{tape.name_suffix(folder)}.mp3"
            out.parent.mkdir(parents=True, exist_ok=True)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "callrec", "mix", str(folder), "-o", str(out),
                *(("--data", str(self._data)) if self._data is not None else ()),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                preexec_fn=lambda: os.nice(10),
            )  # fmt: skip
            _, err = await proc.communicate()
            if proc.returncode == 0:
                log.info("mixed %s into %s", folder, out)
            else:
                log.error("mixing %s failed: %s", folder, err.decode(errors="replace").strip())


async def serve_recorder(
    cfg: RecorderConfig, *, mix: bool, ready: str = "", service: ServiceConfig | None = None
) -> None:
    """Run until SIGTERM or SIGINT, then close every tape cleanly.

    With ``service``, each tape is handed to the service (database, storage, queue) as it opens and closes.
    """
    loop = asyncio.get_running_loop()
    mixer = TapeMixer(cfg.recordings_dir, cfg.data_dir) if mix else None
    if mixer is not None:
        mixer.start()
    handoff, outbox = _service_handoff(service) if service is not None else (None, None)
    if handoff is not None:
        # SRTP keys are sealed with the service's own secret box (without the service, recorder/srtp.py loads it)
        recorder = Recorder(
            cfg,
            on_tape_closed=handoff.closed,
            on_tape_opened=handoff.opened,
            on_tape_discarded=handoff.discarded,
            box=handoff.pipeline.ctx.box,
        )
    else:
        recorder = Recorder(cfg, on_tape_closed=mixer.submit if mixer is not None else None)
    try:
        await recorder.start()
    except OSError as exc:
        await recorder.stop()
        if handoff is not None:
            await loop.run_in_executor(None, handoff.drain)  # tapes recovered at the start reach the service
            handoff.pipeline.ctx.close()
        if exc.filename is not None or exc.errno not in BIND_ERRORS:
            raise
        # the SIP address is taken (or not ours): say which, and stop; trying again would not help
        host, port = cfg.listen_host, cfg.listen_port
        raise cannot_listen(host, port, _failed_protocol(host, port), exc) from exc
    if outbox is not None:
        outbox.start()
    spool = _spool_watcher(cfg, handoff, mixer, loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready:
        host, port = recorder.address
        print(ready.format(host=host, port=port), file=sys.stderr, flush=True)
    await stop.wait()
    log.info("stopping: closing %d open sessions", len(recorder.sessions))
    await recorder.stop()
    if spool is not None:
        await loop.run_in_executor(None, spool.stop)
    if mixer is not None:
        await mixer.stop()
    if outbox is not None and handoff is not None:
        outbox.stop()
        # tapes closed by the shutdown reach the service before the process ends
        await loop.run_in_executor(None, handoff.drain)
        handoff.pipeline.ctx.close()


def _service_handoff(service: ServiceConfig) -> tuple[TapeHandOff, TapeOutbox]:
    from callrec.jobs.worker import build
    from callrec.service.handoff import TapeHandOff
    from callrec.service.outbox import TapeOutbox

    built = build(service)
    return TapeHandOff(built.pipeline), TapeOutbox(built.pipeline)


def _spool_watcher(
    cfg: RecorderConfig, handoff: TapeHandOff | None, mixer: TapeMixer | None, loop: asyncio.AbstractEventLoop
) -> SpoolWatcher | None:
    """The watcher of ``--rtpengine-spool`` folders, started: its tapes go to the service like the
    recorder's, or stay under DATA/tapes (mixed when ``--mix``)."""
    if not cfg.rtpengine_spools:
        return None
    from callrec.service.rtpengine_spool import SpoolWatcher

    def mix_later(folder: Path) -> None:
        # from the watcher's thread into the loop's mixing queue
        if mixer is not None:
            loop.call_soon_threadsafe(mixer.submit, folder)

    pipeline = handoff.pipeline if handoff is not None else None
    watcher = SpoolWatcher.for_recorder(cfg, pipeline=pipeline, on_tape=mix_later if pipeline is None else None)
    watcher.start()
    return watcher


def _failed_protocol(host: str, port: int) -> str:
    """Which of SIP's sockets could not be bound: UDP is bound first, so if UDP binds now, TCP failed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return "udp"
    return "tcp"


def run(cfg: RecorderConfig, *, mix: bool, ready: str = "", service: ServiceConfig | None = None) -> None:
    """Own the data folder and run the recorder on uvloop (stock asyncio's datagram path is several times
    slower). Raises ``StartRefused`` (``FolderInUse``, ``CannotListen``) when it cannot start."""
    lock = DataLock.acquire(cfg.data_dir, "callrec record")
    try:
        raise_file_limit()
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps odd platforms working
            asyncio.run(serve_recorder(cfg, mix=mix, ready=ready, service=service))
            return
        uvloop.run(serve_recorder(cfg, mix=mix, ready=ready, service=service))
    finally:
        lock.release()
