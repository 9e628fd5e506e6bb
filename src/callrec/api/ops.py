"""Operations: ``/healthz`` and Prometheus ``/metrics`` (no key needed).

``/healthz`` answers 503 ``error`` when the database or the queue cannot be reached, and 200 ``degraded``
(``disk`` and ``detail`` saying why) when the data folder's disk is nearly full: reads keep working.

Metric values are read from the database (and the queue) when Prometheus scrapes, so every API node
reports the same figures and nothing has to be counted in memory. The live recorder's counters
(``callrec_recorder_*``: sessions, packets recorded, malformed and foreign, streams latched) are the
exception: they come from the file the recorder on this host's data folder keeps (``capture/recstats``).

On a shared (PostgreSQL) database, ``/healthz`` adds ``warnings`` naming each domain whose storage is
``local``: its recordings would stay on the disk of whichever host stored them, where other hosts cannot
read them (SPEC "Scale-out": hosts share no disk). The same is logged once when the API starts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, or_, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from callrec.db.schema import COMPLETED, RECORDING, STATES, Domain, Job, Recording
from callrec.files import tape
from callrec.live import capstats
from callrec.recorder import recstats
from callrec.service import disk
from callrec.service.pipeline import Service

log = logging.getLogger("callrec.api")
SPEED_WINDOW = timedelta(hours=1)
# the most domains a warning names one by one
WARN_DOMAINS = 20


class ServiceCollector(Collector):
    """Gauges computed from the database at scrape time."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # described without values, so registering does not query the database
        return iter(self._families())

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("callrec_calls_recording", "calls being recorded now"),
            GaugeMetricFamily("callrec_recordings", "recordings by state", labels=["state"]),
            GaugeMetricFamily("callrec_jobs_queued", "messages waiting in the job queue"),
            GaugeMetricFamily("callrec_jobs_failed", "jobs that failed for good"),
            GaugeMetricFamily("callrec_storage_errors", "store jobs that failed or are waiting to retry"),
            GaugeMetricFamily(
                "callrec_mixing_speed_realtime", "seconds of audio mixed per second of mixing, over the last hour"
            ),
            GaugeMetricFamily(
                "callrec_tapes_quarantined", "unreadable tapes set aside in this host's DATA/quarantine folder"
            ),
        ]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        recording, by_state, queued, failed, storage, speed, quarantined = self._families()
        ctx = self.service.ctx
        since = ctx.clock.now() - SPEED_WINDOW
        with ctx.sessions() as s:
            counts = dict(s.execute(select(Recording.state, func.count()).group_by(Recording.state)).all())
            jobs_failed = s.scalar(select(func.count()).select_from(Job).where(Job.state == "failed")) or 0
            store_errors = s.scalar(
                select(func.count()).select_from(Job).where(Job.kind == "store", Job.state.in_(("failed", "retrying")))
            )
            mixed = s.execute(
                select(Recording.duration_s, Job.started_at, Job.finished_at)
                .join(Job, Job.recording_id == Recording.id)
                .where(Recording.state == COMPLETED, Recording.completed_at >= since)
                .where(Job.kind == "mix", Job.state == "done", Job.finished_at.is_not(None))
            ).all()
        recording.add_metric([], counts.get(RECORDING, 0))
        for state in STATES:
            by_state.add_metric([state], counts.get(state, 0))
        queued.add_metric([], self._pending())
        failed.add_metric([], jobs_failed)
        storage.add_metric([], store_errors or 0)
        audio_s = sum(row.duration_s for row in mixed)
        mixing_s = sum((row.finished_at - row.started_at).total_seconds() for row in mixed)
        speed.add_metric([], audio_s / mixing_s if mixing_s > 0 else 0.0)
        quarantined.add_metric([], tape.quarantined(ctx.config.data_dir))
        yield from (recording, by_state, queued, failed, storage, speed, quarantined)

    def _pending(self) -> float:
        try:
            return float(self.service.queue.pending())
        except Exception as exc:  # noqa: BLE001 - any backend (SQLite, Redis) may fail its own way
            log.warning("metrics: queue: %s", exc)
            return float("nan")  # unknown, and /healthz says why


class RecorderCollector(Collector):
    """The counters of the recorder writing into this host's data folder (``recstats``); none without one."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())  # the file is read at scrape time only

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, value in recstats.read(self.data_dir).items():
            family = CounterMetricFamily(name, recstats.COUNTERS[name])
            family.add_metric([], value)
            yield family


class CaptureCollector(Collector):
    """The figures of the live capture writing into this host's data folder (``capstats``): per interface
    (packets, kernel drops, link errors), calls and packets, open calls; none without one."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())  # the file is read at scrape time only

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        interfaces, counters, gauges = capstats.read(self.data_dir)
        if interfaces:
            for name, text in capstats.INTERFACE_COUNTERS.items():
                family = CounterMetricFamily(name, text, labels=["interface"])
                for interface, values in sorted(interfaces.items()):
                    if name in values:
                        family.add_metric([interface], values[name])
                yield family
        for name, value in counters.items():
            counter = CounterMetricFamily(name, capstats.COUNTERS[name])
            counter.add_metric([], value)
            yield counter
        for name, value in gauges.items():
            yield GaugeMetricFamily(name, capstats.GAUGES[name], value=value)


def make_router(service: Service) -> APIRouter:
    """The ops routes, with a Prometheus registry of this app's own."""
    router = APIRouter(tags=["operations"])
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ServiceCollector(service))
    registry.register(RecorderCollector(service.ctx.config.data_dir))
    registry.register(CaptureCollector(service.ctx.config.data_dir))

    @router.get("/healthz", summary="Whether the database and the queue answer, whether the disk is short of "
                "space (degraded), and what a shared setup lacks")  # fmt: skip
    def healthz() -> Any:
        database, warnings = _check_database(service)
        parts = {"database": database, "queue": _check_queue(service)}
        failing = [sentence for sentence in parts.values() if sentence != "ok"]
        body: dict[str, Any] = {"status": "ok" if not failing else "error", **parts}
        if warnings:
            body["warnings"] = warnings
        if failing:
            body["detail"] = failing[0]
            return JSONResponse(body, status_code=503)
        short = disk.low_space(service.ctx.config.data_dir)
        if short is not None:  # 200: reads still work, so a balancer keeps sending them
            body |= {"status": "degraded", "disk": short, "detail": short}
        return body

    @router.get("/metrics", response_class=Response, summary="Prometheus metrics (text format)")
    def metrics() -> Response:
        try:
            data = generate_latest(registry)
        except SQLAlchemyError as exc:
            log.warning("metrics: database: %s", str(exc).splitlines()[0])
            return JSONResponse({"detail": "the database cannot be reached"}, status_code=503)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    return router


def _check_database(service: Service) -> tuple[str, list[str]]:
    """"ok" or why not, and the warnings of a shared setup; one query either way."""
    try:
        with service.ctx.sessions() as s:
            if not _shared(service):
                s.execute(text("SELECT 1"))
                return "ok", []
            return "ok", _local_storage(s)
    except SQLAlchemyError as exc:
        log.warning("healthz: database: %s", str(exc).splitlines()[0])
        return "the database cannot be reached", []


def _shared(service: Service) -> bool:
    """Whether hosts share this database (PostgreSQL), so a host's own disk is not where data may stay."""
    return service.ctx.engine.dialect.name == "postgresql"


def _local_storage(s: Session) -> list[str]:
    """A warning for each domain (up to WARN_DOMAINS, then a count) whose storage is this host's disk."""
    kind = Domain.settings[("storage", "kind")].as_string()  # no storage settings at all is local too
    query = select(Domain.name).where(or_(kind.is_(None), kind == "local")).order_by(Domain.name)
    names = list(s.scalars(query.limit(WARN_DOMAINS + 1)))
    warnings = [f"domain {name} stores on this host's local disk; other hosts cannot read it"
                for name in names[:WARN_DOMAINS]]  # fmt: skip
    if len(names) > WARN_DOMAINS:
        warnings.append(f"more domains store on this host's local disk (only the first {WARN_DOMAINS} are named)")
    return warnings


def warn_local_storage(service: Service) -> None:
    """Log, once at start, what ``/healthz`` warns about: a shared database with local storage."""
    if not _shared(service):
        return
    try:
        with service.ctx.sessions() as s:
            warnings = _local_storage(s)
    except SQLAlchemyError as exc:
        log.warning("cannot check the domains' storage: %s", str(exc).splitlines()[0])
        return
    for warning in warnings:
        log.warning("shared database: %s (set its storage to S3)", warning)


def _check_queue(service: Service) -> str:
    try:
        service.queue.pending()
    except Exception as exc:  # noqa: BLE001 - any backend (SQLite, Redis) may fail its own way
        log.warning("healthz: queue: %s", exc)
        return "the job queue cannot be reached"
    return "ok"
