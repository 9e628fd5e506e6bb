"""Where tapes lie under the tapes folder: ``files/tape.py`` alone knows it, and every writer and reader asks."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from callrec.files import tape


def test_a_tape_lies_in_the_folder_of_the_day_its_call_started_utc(tmp_path: Path) -> None:
    assert tape.tape_folder(tmp_path, 0.0, "a-1") == tmp_path / "1970" / "01" / "01" / "a-1"
    late = datetime(2026, 3, 1, 23, 30, tzinfo=UTC).timestamp()
    assert tape.tape_folder(tmp_path, late, "b") == tmp_path / "2026/03/01/b"
    days = [tmp_path / "2026/03/01", tmp_path / "2026/03", tmp_path / "2026"]
    assert tape.day_folders(tmp_path, tape.tape_folder(tmp_path, late, "b")) == days


def test_a_datetime_gives_the_same_day_as_its_unix_time(tmp_path: Path) -> None:
    east = datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))  # 2025-12-31 23:00 UTC
    assert tape.tape_folder(tmp_path, east, "c") == tmp_path / "2025/12/31/c"
    assert tape.tape_folder(tmp_path, east, "c") == tape.tape_folder(tmp_path, east.timestamp(), "c")
    assert tape.tape_folder(tmp_path, datetime(2026, 1, 2, 3, 4), "d") == tmp_path / "2026/01/02/d"  # naive: UTC


def test_a_recorded_tape_is_named_after_its_call_id_made_safe_and_a_random_part() -> None:
    name = tape.new_name("abc@10.0.0.1")
    assert re.fullmatch(r"abc_10\.0\.0\.1-[0-9a-f]{8}", name)
    assert tape.new_name("abc@10.0.0.1") != name, "a Call-ID that comes back gets a folder of its own"
    assert re.fullmatch(r"call-[0-9a-f]{8}", tape.new_name(""))
    assert re.fullmatch(r"x{80}-[0-9a-f]{8}", tape.new_name("x" * 200))
    assert tape.name_suffix(Path("/t/2026/01/01") / name) == name[-8:]
    assert tape.name_suffix(Path("plain")) == "plain"


def _tape(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / tape.MEDIA_FILE).write_bytes(b"")
    (folder / tape.META_FILE).write_text("{}")
    return folder


def test_the_tapes_are_found_in_the_day_folders_only(tmp_path: Path) -> None:
    b = _tape(tape.tape_folder(tmp_path, 86_400.0, "b-2"))
    a = _tape(tape.tape_folder(tmp_path, 0.0, "a-1"))
    _tape(tmp_path / ".rtpengine" / "x" / "y" / "staged")  # a tape being put together: not under a day
    _tape(tmp_path / "2026" / "01" / "deep" / "er" / "nested")
    assert tape.info_files(tmp_path) == [a / tape.META_FILE, b / tape.META_FILE]
    assert tape.find_named(tmp_path, "b-2") == [b]
    assert tape.find_named(tmp_path, "staged") == []
    assert tape.info_files(tmp_path / "none") == []
