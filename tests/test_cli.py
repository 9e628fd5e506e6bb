"""The command line as a Unix tool: light start-up, --version, -h, clear one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("numpy", "av", "soxr", "soundfile", "sqlalchemy", "fastapi", "uvicorn", "rich.progress")


def test_importing_the_cli_loads_no_heavy_module() -> None:
    # `callrec mix` must not pay for the media stack, the database or the web server before it reads its
    # input: they load inside the commands that use them
    code = f"import sys, json, callrec.cli; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(proc.stdout) == []


def test_a_bad_mix_argument_is_refused_before_the_media_stack_loads(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from callrec.cli import app\n"
        "try:\n"
        f"    app(['mix', {str(tmp_path / 'nope.pcap')!r}], standalone_mode=False)\n"
        "except BaseException:\n"
        "    pass\n"
        "print('numpy' in sys.modules, 'callrec.offline' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False", "False"], proc.stderr
    assert "no such file" in proc.stderr
