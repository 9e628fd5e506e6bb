"""Issue 12 M3: a recorder's crash recovery sets aside a tape it cannot read and recovers the others."""

from __future__ import annotations

import json
from pathlib import Path

from callrec.files import tape
from callrec.recorder.recovery import OPEN_DIR, TapeRegistry
from tests.recorder.test_media_io import _open_tape


def test_an_unreadable_open_tape_is_quarantined_and_the_others_recovered(tmp_path: Path) -> None:
    root = tmp_path / "tapes"
    writer = TapeRegistry(root)
    bad = _open_tape(writer, root, "a-bad", 5)
    good = _open_tape(writer, root, "b-good", 5)
    # the recorder that wrote them is gone (its lock file with it), and one call.json holds a NaN time
    for marker in (root / OPEN_DIR).iterdir():
        data = json.loads(marker.read_text())
        marker.write_text(json.dumps({**data, "owner": "gone-host-1-abc"}))
    meta = json.loads((bad / tape.META_FILE).read_text())
    (bad / tape.META_FILE).write_text(json.dumps({**meta, "started_at": float("nan")}))
    writer.close()

    registry = TapeRegistry(root)
    assert registry.recover() == [good.resolve()]
    assert tape.read_info(good).interrupted
    assert not bad.exists() and (tmp_path / tape.QUARANTINE_DIR / "a-bad" / tape.META_FILE).is_file()
    assert tape.quarantined(tmp_path) == 1
    assert not any((root / OPEN_DIR).iterdir()), "both markers are dealt with: nothing is tried again"
    assert registry.recover() == []
    registry.close()
