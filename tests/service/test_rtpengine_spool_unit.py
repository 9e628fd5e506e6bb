"""The rtpengine spool watcher on both backends, with a recording Debian's rtpengine wrote
(tests/data/rtpengine/simple).

Finished recordings (metadata in ``metadata/``) become calls, unfinished ones (``tmp/``) wait; the spool's
files go only once the tape is stored; a crash between storing and clearing makes no second call; a
damaged recording is set aside once, with its reason.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from callrec.config import ConfigError, recorder_config_from_env
from callrec.db.engine import transaction
from callrec.db.schema import Call, Domain
from callrec.files import tape
from callrec.service.domain_settings import ensure_domain
from callrec.service.pipeline import Service
from callrec.service.rtpengine_spool import FAILED_DIR, SpoolWatcher, check_spools, tape_name
from tests.service.backends import Backend

FIXTURE = Path(__file__).parent.parent / "data" / "rtpengine" / "simple"
SAMPLE_PCAP = next((FIXTURE / "pcaps").glob("*.pcap"))
SAMPLE_META = next((FIXTURE / "metadata").glob("*.txt"))
# a monotonic time past any back-off of these tests; relative to now, since a round without an explicit time
# reads time.monotonic(), which is the host's uptime (days on a CI machine)
LATER_S = time.monotonic() + 10_000.0


def add_recording(
    spool: Path, *, call_id: str = "", metadata: str = "domain:acme|interaction:int-7", finished: bool = True,
    meta_text: str | None = None, pcap_bytes: bytes | None = None,
) -> tuple[Path, Path]:  # fmt: skip
    """One recording in ``spool`` as rtpengine leaves it: the fixture's pcap under a new Call-ID, and its
    metadata file in ``metadata/`` (finished) or still in ``tmp/``; returns (pcap, metadata file)."""
    call_id = call_id or f"{secrets.token_hex(4)}@host"
    stem = f"{quote(call_id, safe='')}-{secrets.token_hex(8)}"
    for sub in ("pcaps", "metadata", "tmp"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    pcap = spool / "pcaps" / f"{stem}.pcap"
    pcap.write_bytes(SAMPLE_PCAP.read_bytes() if pcap_bytes is None else pcap_bytes)
    if meta_text is None:
        lines = SAMPLE_META.read_text().rstrip("\n").split("\n")
        lines[0], lines[-1] = str(pcap), metadata
        meta_text = "\n".join(lines) + "\n"
    meta = spool / "metadata" / f"rtpengine-meta-{stem}.txt"
    if not finished:
        meta = spool / "tmp" / f"rtpengine-meta-{stem}.tmp"
    meta.write_text(meta_text)
    return pcap, meta


def watcher(service: Service | None, spool: Path, tapes: Path, **kw: object) -> SpoolWatcher:
    pipeline = service.pipeline if service is not None else None
    return SpoolWatcher([spool], tapes, pipeline=pipeline, grace_s=0.0, **kw)  # type: ignore[arg-type]


def calls(service: Service) -> list[Call]:
    with service.ctx.sessions() as s:
        return list(s.scalars(select(Call)))


def domain_of(service: Service, call: Call) -> str:
    with service.ctx.sessions() as s:
        row = s.get(Domain, call.domain_id)
        assert row is not None
        return row.name


def spool_files(spool: Path) -> list[str]:
    return sorted(str(p.relative_to(spool)) for p in spool.rglob("*") if p.is_file())


def test_a_finished_recording_becomes_a_call_and_leaves_the_spool_an_unfinished_one_waits(
    service: Service, backend: Backend, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    with transaction(service.ctx.sessions) as s:
        ensure_domain(s, "acme", service.ctx.clock.now())
    pcap, meta = add_recording(spool, call_id="abc@host")
    running_pcap, running_meta = add_recording(spool, finished=False)
    w = watcher(service, spool, backend.config.data_dir / "tapes")
    assert w.run_once() == 1
    [call] = calls(service)
    assert call.source == "rtpengine" and call.sip_call_id == "abc@host"
    assert domain_of(service, call) == "acme" and call.interaction_id == "int-7"
    assert call.tape_ref == tape_name(meta) and call.closed_cleanly
    assert {s.party for s in call.streams} == {"A", "B"}
    # the tape is in storage (or, storage away, waiting for the outbox): the spool's files are gone
    assert call.tape_key, "the tape reached storage"
    assert not pcap.exists() and not meta.exists()
    # the call still being recorded is left alone, round after round
    assert w.run_once(LATER_S) == 0 and len(calls(service)) == 1
    assert running_pcap.exists() and running_meta.exists()


@pytest.mark.slow
def test_an_unknown_domain_files_the_call_into_default_and_the_key_names_are_configurable(
    service: Service, backend: Backend, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    add_recording(spool, metadata="domain:nobody-knows|interaction:x-1")
    add_recording(spool, metadata="tenant:acme|case:77|domain:ignored")
    with transaction(service.ctx.sessions) as s:
        ensure_domain(s, "acme", service.ctx.clock.now())
    w = watcher(service, spool, backend.config.data_dir / "tapes", domain_key="tenant", interaction_key="case")
    assert w.run_once() == 2
    got = sorted((domain_of(service, c), c.interaction_id) for c in calls(service))
    assert got == [("acme", "77"), ("default", "")]


def test_the_spool_keeps_the_recording_while_the_service_cannot_take_it(
    service: Service, backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    pcap, meta = add_recording(spool)
    w = watcher(service, spool, backend.config.data_dir / "tapes")
    real = service.pipeline.tape_closed

    def database_down(folder: Path) -> str:
        raise RuntimeError("could not connect to the database")

    monkeypatch.setattr(service.pipeline, "tape_closed", database_down)
    assert w.run_once(0.0) == 0
    assert pcap.exists() and meta.exists() and calls(service) == []
    # not tried again before its back-off is over, then taken once the service is back
    monkeypatch.setattr(service.pipeline, "tape_closed", real)
    assert w.run_once(0.5) == 0 and pcap.exists()
    assert w.run_once(LATER_S) == 1
    assert len(calls(service)) == 1 and not pcap.exists() and not meta.exists()


def test_alone_the_spool_keeps_the_recording_while_the_tape_cannot_be_written(tmp_path: Path) -> None:
    spool, data = tmp_path / "spool", tmp_path / "data"
    pcap, meta = add_recording(spool)
    data.mkdir()
    (data / "tapes").write_text("not a folder")  # the tapes cannot be written (even by root)
    w = watcher(None, spool, data / "tapes")
    assert w.run_once(0.0) == 0
    assert pcap.exists() and meta.exists()
    (data / "tapes").unlink()
    assert w.run_once(LATER_S) == 1
    [folder] = [p for p in (data / "tapes").glob("[0-9]*/*/*/*") if tape.is_tape(p)]
    assert (folder / tape.MEDIA_FILE).read_bytes() == SAMPLE_PCAP.read_bytes(), "the pcap is copied as it is"
    info = tape.read_info(folder)
    assert info.source == "rtpengine" and info.domain == "acme" and info.closed_cleanly
    assert folder.name == tape_name(meta) and not pcap.exists() and not meta.exists()
    assert not any((data / "tapes" / ".rtpengine").iterdir()), "no half-made tape is left behind"


class Crash(BaseException):
    """The process dies here (nothing after it runs)."""


def test_a_crash_after_storing_before_clearing_the_spool_makes_no_second_call(
    service: Service, backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool, tapes = tmp_path / "spool", backend.config.data_dir / "tapes"
    pcap, meta = add_recording(spool)

    def crash(*args: object) -> None:
        raise Crash

    monkeypatch.setattr(SpoolWatcher, "_clear", crash)
    with pytest.raises(Crash):
        watcher(service, spool, tapes).run_once()
    assert len(calls(service)) == 1 and pcap.exists() and meta.exists()
    monkeypatch.undo()
    # the restarted process: a new watcher, nothing remembered but the disk and the database
    assert watcher(service, spool, tapes).run_once() == 1
    assert len(calls(service)) == 1 and not pcap.exists() and not meta.exists()
    with service.ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Call)) == 1


@pytest.mark.parametrize("outbox_first", [False, True])
def test_a_crash_after_writing_the_tape_before_registering_it_makes_one_call(
    service: Service, backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outbox_first: bool
) -> None:
    spool, tapes = tmp_path / "spool", backend.config.data_dir / "tapes"
    pcap, meta = add_recording(spool)

    def crash(folder: Path) -> str:
        raise Crash

    monkeypatch.setattr(service.pipeline, "tape_closed", crash)
    with pytest.raises(Crash):
        watcher(service, spool, tapes).run_once()
    monkeypatch.undo()
    [folder] = [p for p in tapes.glob("[0-9]*/*/*/*") if tape.is_tape(p)]
    assert calls(service) == [] and pcap.exists() and meta.exists()
    if outbox_first:  # the outbox finds the tape first and registers it; the watcher then only clears the spool
        service.pipeline.tape_closed(folder)
    # the restarted watcher registers the tape it finds written (or finds it registered)
    assert watcher(service, spool, tapes).run_once() == 1
    assert len(calls(service)) == 1 and not pcap.exists() and not meta.exists()


def _crash_between_pcap_and_metadata(service: Service | None, spool: Path, tapes: Path) -> tuple[Path, Path]:
    pcap, meta = add_recording(spool)
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == meta:
            raise Crash
        real_unlink(self, missing_ok=missing_ok)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "unlink", unlink)
        with pytest.raises(Crash):
            watcher(service, spool, tapes).run_once()
    assert not pcap.exists() and meta.exists()
    w = watcher(service, spool, tapes)
    assert w.run_once() == 1 and w.failed == 0, "a metadata file whose tape is stored is not damaged"
    assert spool_files(spool) == []
    return pcap, meta


def test_alone_a_crash_between_removing_the_pcap_and_the_metadata_leaves_one_tape(tmp_path: Path) -> None:
    tapes = tmp_path / "data" / "tapes"
    _crash_between_pcap_and_metadata(None, tmp_path / "spool", tapes)
    assert len([p for p in tapes.glob("[0-9]*/*/*/*") if tape.is_tape(p)]) == 1


def test_a_crash_between_removing_the_pcap_and_the_metadata_leaves_one_call(
    service: Service, backend: Backend, tmp_path: Path
) -> None:
    _crash_between_pcap_and_metadata(service, tmp_path / "spool", backend.config.data_dir / "tapes")
    assert len(calls(service)) == 1


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("metadata", "is not the path of its pcap"),
        ("pcap", "not a pcap or pcapng capture"),
        ("no-pcap", "is missing"),
    ],
)
def test_a_damaged_recording_is_set_aside_once_with_its_reason(
    service: Service, backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str, reason: str
) -> None:
    spool = tmp_path / "spool"
    good_pcap, good_meta = add_recording(spool)
    if damage == "metadata":
        pcap, meta = add_recording(spool, meta_text="hello, I am not rtpengine's\n")
    elif damage == "pcap":
        pcap, meta = add_recording(spool, pcap_bytes=b"\x00garbage" * 10)
    else:
        pcap, meta = add_recording(spool)
        pcap.unlink()
    w = watcher(service, spool, backend.config.data_dir / "tapes")
    with caplog.at_level(logging.WARNING, logger="callrec"):
        assert w.run_once() == 1, "the good recording is taken all the same"
        assert w.run_once(LATER_S) == 0
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    line = errors[0].getMessage()
    assert meta.name in line and reason in line and "moved to" in line and "\n" not in line
    assert errors[0].exc_info is None, "no traceback"
    assert len(calls(service)) == 1 and not good_meta.exists()
    stem = meta.name.removeprefix("rtpengine-meta-").removesuffix(".txt")
    failed = spool / FAILED_DIR
    assert (failed / meta.name).exists() and not meta.exists()
    assert (failed / pcap.name).exists() == (damage != "no-pcap") and not pcap.exists()
    assert reason in (failed / f"{stem}.reason").read_text()


def test_a_recording_not_readable_yet_is_given_time_before_it_is_set_aside(tmp_path: Path) -> None:
    spool, tapes = tmp_path / "spool", tmp_path / "data" / "tapes"
    pcap, meta = add_recording(spool)
    pcap.unlink()  # its pcap is not there (yet)
    w = SpoolWatcher([spool], tapes, grace_s=60.0)
    assert w.run_once() == 0 and meta.exists() and not (spool / FAILED_DIR).exists()
    os.utime(meta, (0, 0))  # the metadata file is old now: the pcap is not coming
    assert w.run_once(LATER_S) == 0 and (spool / FAILED_DIR / meta.name).exists() and w.failed == 1


def test_a_spool_that_disappears_is_warned_about_once_and_watched_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool, tapes = tmp_path / "spool", tmp_path / "data" / "tapes"
    spool.mkdir()
    w = SpoolWatcher([spool], tapes, grace_s=0.0)
    spool.rmdir()
    with caplog.at_level(logging.WARNING, logger="callrec"):
        assert w.run_once() == 0 and w.run_once() == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"rtpengine spool {spool} is gone; its recordings wait until it is back"
    ]
    add_recording(spool)
    assert w.run_once() == 1


def test_the_tape_name_is_the_spool_file_name_made_safe_and_never_shared() -> None:
    assert tape_name(Path("rtpengine-meta-abc-0123456789abcdef.txt")) == "abc-0123456789abcdef"
    escaped = tape_name(Path("rtpengine-meta-abc%40host-0123456789abcdef.txt"))
    assert escaped.startswith("abc_40host-") and set(escaped) <= set("abcdefghost0123456789_-")
    # two Call-IDs that look the same once made safe still get tapes of their own
    assert tape_name(Path("rtpengine-meta-a%40b-0123456789abcdef.txt")) != tape_name(
        Path("rtpengine-meta-a_40b-0123456789abcdef.txt")
    )
    assert tape_name(Path("rtpengine-meta-..-0123456789abcdef.txt")).startswith("call-"), "never a hidden folder"
    assert len(tape_name(Path(f"rtpengine-meta-{'x' * 300}-0123456789abcdef.txt"))) < 120


def test_spool_folders_come_from_the_environment_separated_by_the_path_separator(tmp_path: Path) -> None:
    cfg = recorder_config_from_env({
        "CALLREC_RTPENGINE_SPOOL": f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b,c'}{os.pathsep}{os.pathsep}",
        "CALLREC_RTPENGINE_DOMAIN_KEY": "tenant", "CALLREC_RTPENGINE_INTERACTION_KEY": "case",
    })  # fmt: skip
    assert cfg.rtpengine_spools == [tmp_path / "a", tmp_path / "b,c"]
    assert (cfg.rtpengine_domain_key, cfg.rtpengine_interaction_key) == ("tenant", "case")
    assert recorder_config_from_env({}).rtpengine_spools == []
    with pytest.raises(ConfigError, match="CALLREC_RTPENGINE_DOMAIN_KEY must name a metadata key"):
        recorder_config_from_env({"CALLREC_RTPENGINE_DOMAIN_KEY": " "})
    (tmp_path / "a").mkdir()
    check_spools([tmp_path / "a"])
    with pytest.raises(ConfigError, match=r"--rtpengine-spool: .*/b,c: no such folder"):
        check_spools(cfg.rtpengine_spools)
