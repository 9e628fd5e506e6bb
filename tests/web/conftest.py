"""The web (``callrec.web``) under test: over HTTP with the API's fixtures (``tests/api/conftest.py``, on
SQLite and PostgreSQL), and in a real browser: Debian's Chromium driven by Playwright against a real
``callrec serve``.

For the browser, the service gets one domain with a key and one call uploaded as a synthetic capture (mixed by its own
pipeline). Screenshots are written to ``artifacts/screenshots/`` at the repository's root.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.api.conftest import _numbered, api, captures, database_url, mixed, other, tenant  # noqa: F401 (fixtures)
from tests.support import synth
from tests.support.serve_proc import ServeProcess

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
# the call's caller: a number no other call has, to search by
NUMBER = "4930" + str(secrets.randbelow(10**6)).zfill(6)
CALL_S = 20.0


def tone_capture(path: Path, seconds: float, call_id: str) -> Path:
    """A capture of a call whose callee (B) sends only a steady 440 Hz tone, and whose caller speaks."""
    built = synth.build(synth.Scenario(call_id=call_id, duration=seconds))
    t = np.arange(int((seconds + 1) * synth.RATE)) / synth.RATE
    alaw = synth.ffmpeg_encode((np.sin(2 * np.pi * 440 * t) * 9000).astype(np.int16), "PCMA")
    out, k = [], 0
    for ts, src, sport, dst, dport, payload in built.datagrams:
        if src == synth.B_IP and sport != 5060 and payload[1] & 0x7F == synth.CODECS["PCMA"][0]:
            payload = payload[:12] + alaw[k * 160 : (k + 1) * 160]  # 20 ms of A-law in each packet
            k += 1
        out.append((ts, src, sport, dst, dport, payload))
    assert k > 0, "the scenario sent no PCMA from B"
    return synth.write_pcap(path, out)


@dataclass
class Site:
    """A running service with a domain, its key and one mixed call."""

    serve: ServeProcess
    base: str
    domain: str
    key: str
    key_id: str
    call_id: str
    recording_id: str

    def as_domain(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def card(self) -> dict[str, Any]:
        answer = self.serve.api.get(f"/api/v1/calls/{self.call_id}", headers=self.as_domain())
        assert answer.status_code == 200, answer.text
        card: dict[str, Any] = answer.json()
        return card

    def new_key(self) -> tuple[str, str]:
        made = self.serve.api.post(f"/api/v1/domains/{self.domain}/keys", json={"name": "ui test"})
        assert made.status_code == 201, made.text
        return made.json()["id"], made.json()["key"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("ui")
    with ServeProcess(folder / "data") as serve:
        domain = f"ui-{secrets.token_hex(4)}"
        # WAV: big enough that the browser fetches what a seek needs with a Range request of its own
        made = serve.api.post("/api/v1/domains", json={"name": domain, "settings": {"format": "wav"}})
        assert made.status_code == 201, made.text
        made = serve.api.post(f"/api/v1/domains/{domain}/keys", json={"name": "ui"})
        assert made.status_code == 201, made.text
        key, key_id = made.json()["key"], made.json()["id"]
        built = synth.build(synth.Scenario(call_id=f"ui-{secrets.token_hex(3)}@test", duration=CALL_S))
        capture = synth.write_pcap(folder / "call.pcap", _numbered(built.datagrams, NUMBER))
        with httpx.Client(base_url=str(serve.api.base_url), timeout=60) as client:
            answer = client.post("/api/v1/uploads", headers={"Authorization": f"Bearer {key}"},
                                 files={"file": ("call.pcap", capture.read_bytes())})  # fmt: skip
        assert answer.status_code == 202, answer.text
        (call_id,) = answer.json()["calls"]
        site = Site(serve, str(serve.api.base_url).rstrip("/"), domain, key, key_id, call_id, "")

        def mixed() -> str | None:
            rec = site.card()["recording"]
            assert rec is None or rec["state"] != "failed", rec
            return rec["id"] if rec is not None and rec["state"] == "completed" else None

        site.recording_id = serve.wait_for("the uploaded call to be mixed", mixed, timeout=60)
        yield site


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/system-deps.sh installs Debian's chromium")
    with sync_playwright() as p:
        found = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield found
        found.close()


@pytest.fixture
def context(browser: Browser, site: Site) -> Iterator[BrowserContext]:
    made = browser.new_context(base_url=site.base, viewport={"width": 1280, "height": 900})
    made.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.base)
    # the pages run under their real CSP: anything it blocks (an inline script, a style) is a bug
    blocked: list[str] = []
    made.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    yield made
    made.close()
    assert not blocked, blocked


def sign_in(page: Page, key: str) -> None:
    page.goto("/ui/signin")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/calls")


def shot(page: Page, name: str, capsys: pytest.CaptureFixture[str]) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path), full_page=True)
    with capsys.disabled():
        print(f"\nscreenshot: {path}")
    return path
