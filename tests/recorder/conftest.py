"""Fixtures of the recorder tests: a data folder and a recorder running in-process on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sipclient import RecorderThread, recorder_config


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def rec(data: Path) -> Iterator[RecorderThread]:
    """A recorder on ``data``; no message may have made it fail unexpectedly."""
    with RecorderThread(recorder_config(data)) as running:
        yield running
        assert running.recorder.stats.sip_errors == 0
