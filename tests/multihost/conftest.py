"""The multi-host rig, made once per test session (per pytest-xdist worker) and put back in order before
each test. Without root, the tools or the servers, the tests skip with the reason; under CI they fail."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.service.backends import need_server
from tests.support.rig import Rig, require_tools


def _require() -> None:
    problems = require_tools()
    if problems:
        reason = "the multi-host rig cannot run: " + "; ".join(problems)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}, and CI must run the multi-host tests (as root)")
        pytest.skip(reason)
    need_server("PostgreSQL", "127.0.0.1", 5432)
    need_server("Redis", "127.0.0.1", 6379)


@pytest.fixture(scope="session")
def shared_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    _require()
    with Rig(tmp_path_factory.mktemp("rig")) as rig:
        rig.start_all()
        yield rig


@pytest.fixture
def rig(shared_rig: Rig, request: pytest.FixtureRequest) -> Iterator[Rig]:
    """The shared rig with every proxy passing, no link limited, and every host running its own role."""
    shared_rig.reset()
    shared_rig.note(f"test {request.node.name} starts")
    yield shared_rig
    shared_rig.note(f"test {request.node.name} ends")
