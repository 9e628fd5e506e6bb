"""The player and the picture follow the window's width (issue 14): no sideways scrolling at 360 px,
the picture drawn again at its new width, a click on it still seeking to the time under the pointer;
and a party who only sends a tone is said plainly. In Chromium, on the call card and the public page."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from tests.web.conftest import Site, shot, sign_in, tone_capture
from tests.web.test_browser import _until

pytestmark = pytest.mark.slow  # Chromium

PHONE = {"width": 360, "height": 800}
WIDE = {"width": 1280, "height": 900}
# how far the player may be from the clicked time: the click also plays from there
SLACK_S = 2.0


@pytest.fixture(scope="module")
def tone_call(site: Site, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A call in the site's domain whose callee sends only a tone: its recording's id."""
    capture = tone_capture(tmp_path_factory.mktemp("tone") / "tone.pcap", 12.0, f"tone-{secrets.token_hex(3)}@test")
    with httpx.Client(base_url=site.base, timeout=60) as client:
        answer = client.post("/api/v1/uploads", headers=site.as_domain(),
                             files={"file": ("tone.pcap", capture.read_bytes())})  # fmt: skip
    assert answer.status_code == 202, answer.text
    (call_id,) = answer.json()["calls"]

    def mixed() -> str | None:
        got = site.serve.api.get(f"/api/v1/calls/{call_id}", headers=site.as_domain())
        rec = got.json()["recording"]
        assert rec is None or rec["state"] != "failed", rec
        return call_id if rec is not None and rec["state"] == "completed" else None

    found: str = site.serve.wait_for("the tone call to be mixed", mixed, timeout=60)
    return found


@pytest.fixture
def wide(browser: Browser, site: Site) -> Iterator[BrowserContext]:
    made = browser.new_context(base_url=site.base, viewport=WIDE)
    yield made
    made.close()


def _public_url(site: Site, recording_id: str) -> str:
    made = site.serve.api.post(f"/api/v1/recordings/{recording_id}/links", headers=site.as_domain(), json={})
    assert made.status_code == 201, made.text
    url: str = made.json()["url"]
    return url


def _geometry(page: Page) -> dict[str, Any]:
    """What the page's width is made of: the document's, the window's, the picture's and the player's."""
    found: dict[str, Any] = page.evaluate(
        """() => {
          const canvas = document.querySelector('#picture canvas');
          const player = document.getElementById('player').getBoundingClientRect();
          const box = canvas.getBoundingClientRect();
          return {scroll: document.scrollingElement.scrollWidth, inner: window.innerWidth,
                  canvasLeft: box.left, canvasRight: box.right, canvasCss: box.width, backing: canvas.width,
                  ratio: window.devicePixelRatio,
                  playerRight: player.right, playerWidth: player.width};
        }"""
    )
    return found


# the picture's drawing has as many pixels as it covers on the screen: drawn for its width, not squeezed
DRAWN_TO_FIT = (
    "(c => c.width === Math.round(Math.max(120, c.getBoundingClientRect().width) * devicePixelRatio))"
    "(document.querySelector('#picture canvas'))"
)


def _fits(page: Page, width: int) -> dict[str, Any]:
    """The page at ``width`` px: nothing sideways, the picture drawn again for its new width."""
    _until(page, f"document.querySelector('#picture canvas').getBoundingClientRect().width <= {width}")
    _until(page, DRAWN_TO_FIT)
    g = _geometry(page)
    assert g["inner"] == width
    assert g["scroll"] <= g["inner"], g  # no horizontal scroll
    assert g["canvasLeft"] >= 0 and g["canvasRight"] <= g["inner"] and g["canvasCss"] <= width, g
    assert g["playerWidth"] > 0 and g["playerRight"] <= g["inner"], g
    assert g["backing"] == round(g["canvasCss"] * g["ratio"]), g  # drawn again at the new width
    return g


def _click_seeks(page: Page, fraction: float) -> None:
    """A click at ``fraction`` of the picture's width puts the player at that fraction of the call."""
    duration = float(page.get_attribute("#picture", "data-duration") or 0)
    assert duration > 5
    box = page.locator("#picture canvas").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2)
    target = fraction * duration
    _until(page, f"document.getElementById('player').currentTime >= {target - 0.5}")
    now: float = page.evaluate("document.getElementById('player').currentTime")
    assert now < target + SLACK_S, (now, target)


def _open_card(page: Page, site: Site, call_id: str) -> None:
    page.goto(f"/ui/calls/{call_id}")
    page.wait_for_selector("#picture[data-state=ready]")


def test_the_call_card_follows_the_window_when_it_narrows_and_widens(
    wide: BrowserContext, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    page = wide.new_page()
    sign_in(page, site.key)
    _open_card(page, site, site.call_id)
    first = _geometry(page)
    assert first["canvasCss"] > 800 and first["scroll"] <= first["inner"], first
    page.set_viewport_size(PHONE)
    _fits(page, PHONE["width"])
    _click_seeks(page, 0.25)
    shot(page, "call-card-narrowed-360.png", capsys)
    page.set_viewport_size({"width": 900, "height": 900})
    _until(page, "document.querySelector('#picture canvas').getBoundingClientRect().width > 600")
    _until(page, DRAWN_TO_FIT)
    g = _geometry(page)
    assert g["scroll"] <= g["inner"] and g["canvasRight"] <= g["inner"], g
    _click_seeks(page, 0.75)


def test_the_call_card_opened_at_360_px(browser: Browser, site: Site) -> None:
    phone = browser.new_context(base_url=site.base, viewport=PHONE, device_scale_factor=3, is_mobile=True,
                                has_touch=True)  # fmt: skip
    try:
        page = phone.new_page()
        sign_in(page, site.key)
        # the call list too: its table becomes a card per call
        assert page.locator("#calls tbody tr").count() >= 1
        assert page.evaluate("document.scrollingElement.scrollWidth <= innerWidth")
        _open_card(page, site, site.call_id)
        g = _fits(page, PHONE["width"])
        assert g["ratio"] == 3  # a phone's dense screen: the drawing has three pixels per CSS pixel
        page.tap("#picture canvas", position={"x": g["canvasCss"] * 0.6, "y": 20})
        duration = float(page.get_attribute("#picture", "data-duration") or 0)
        _until(page, f"document.getElementById('player').currentTime >= {0.6 * duration - 0.5}")
        assert page.evaluate("document.getElementById('player').currentTime") < 0.6 * duration + SLACK_S
    finally:
        phone.close()


def test_the_public_page_follows_the_window(browser: Browser, site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    url = _public_url(site, site.recording_id)
    stranger = browser.new_context(viewport=WIDE)
    try:
        page = stranger.new_page()
        page.goto(url)
        page.wait_for_selector("#picture[data-state=ready]")
        assert _geometry(page)["canvasCss"] > 600
        page.set_viewport_size(PHONE)
        _fits(page, PHONE["width"])
        _click_seeks(page, 0.5)
        shot(page, "public-link-narrowed-360.png", capsys)
    finally:
        stranger.close()
    phone = browser.new_context(viewport=PHONE)
    try:
        page = phone.new_page()
        page.goto(url)
        page.wait_for_selector("#picture[data-state=ready]")
        _fits(page, PHONE["width"])
        _click_seeks(page, 0.3)
    finally:
        phone.close()


def test_a_party_who_only_sends_a_tone_is_said_plainly(
    wide: BrowserContext, browser: Browser, site: Site, tone_call: str, capsys: pytest.CaptureFixture[str]
) -> None:
    page = wide.new_page()
    sign_in(page, site.key)
    _open_card(page, site, tone_call)
    steady = page.locator(".picture-legend li.heard-steady")
    assert steady.count() == 1
    assert "tone or steady noise, no speech detected" in steady.inner_text()
    assert "0:00" not in steady.inner_text()
    spoke = page.locator(".picture-legend li.heard-speech")
    assert spoke.count() == 1 and "of speech" in spoke.inner_text()
    shot(page, "call-card-tone-party.png", capsys)
    card = site.serve.api.get(f"/api/v1/calls/{tone_call}", headers=site.as_domain()).json()
    phone = browser.new_context(viewport=PHONE)
    try:
        public = phone.new_page()
        public.goto(_public_url(site, card["recording"]["id"]))
        public.wait_for_selector("#picture[data-state=ready]")
        assert (
            "tone or steady noise, no speech detected" in public.locator(".picture-legend li.heard-steady").inner_text()
        )
        _fits(public, PHONE["width"])
    finally:
        phone.close()
