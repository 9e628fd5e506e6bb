"""The web UI as a person uses it, in Chromium: sign in, find a call, play it, seek on its picture,
share it with a public link, download through the link, revoke it; on a desktop and on a phone."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, expect

from tests.web.conftest import NUMBER, Site, shot, sign_in

pytestmark = pytest.mark.slow  # Chromium

PHONE = {"width": 390, "height": 844}


def _open_card(page: Page, site: Site) -> None:
    page.goto(f"/ui/calls/{site.call_id}")
    page.wait_for_selector("#picture[data-state=ready]")


def _time(page: Page) -> float:
    value: float = page.evaluate("document.getElementById('player').currentTime")
    return value


def _until(page: Page, expression: str, timeout_s: float = 15.0) -> None:
    """Wait until ``expression`` is true in the page (polled from here: the UI's CSP forbids the eval
    that ``wait_for_function`` needs, and a test must see the page under its real CSP)."""
    for _ in range(int(timeout_s / 0.05)):
        if page.evaluate(expression):
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"still false after {timeout_s} s: {expression}")


def _press_play(page: Page) -> None:
    """Click the play button of the browser's own audio controls (their left end)."""
    box = page.locator("#player").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + 20, box["y"] + box["height"] / 2)


def _advancing(page: Page) -> None:
    _until(page, "document.getElementById('player').currentTime > 0.3")
    first = _time(page)
    _until(page, f"document.getElementById('player').currentTime > {first + 0.2}")
    assert not page.evaluate("document.getElementById('player').paused")


def test_a_wrong_key_is_refused_and_the_right_one_opens_a_session(context: BrowserContext, site: Site) -> None:
    page = context.new_page()
    page.goto("/ui/calls")
    assert "/ui/signin" in page.url  # no session: to the sign-in page
    page.fill("#key", "cr_not_a_key_" + "x" * 20)
    page.click("button[type=submit]")
    expect(page.locator("#error")).to_contain_text("That API key is not valid")
    assert "/ui/signin" in page.url and not context.cookies()
    sign_in(page, site.key)
    expect(page.locator("h1")).to_have_text("Calls")
    (cookie,) = context.cookies()
    assert cookie["name"] == "callrec_session" and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert not cookie["secure"]  # plain HTTP on 127.0.0.1 must work
    assert site.key not in cookie["value"] and site.key_id not in cookie["value"]  # a server-side session's id
    page.click("#signout")
    page.wait_for_url("**/ui/signin")
    page.goto("/ui/calls")
    assert "/ui/signin" in page.url


def test_find_the_call_by_its_number_and_read_its_card(
    context: BrowserContext, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    page = context.new_page()
    sign_in(page, site.key)
    page.fill("input[name=number]", "999999999")
    page.click("#search button[type=submit]")
    expect(page.locator("#no-calls")).to_be_visible()
    page.fill("input[name=number]", NUMBER)
    page.click("#search button[type=submit]")
    rows = page.locator("#calls tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(NUMBER)
    rows.first.locator("a.open-call").click()
    page.wait_for_url(f"**/ui/calls/{site.call_id}")
    expect(page.locator("h1")).to_contain_text(NUMBER)
    card = site.card()
    for stream in card["streams"]:
        row = page.locator(f"#quality tr[data-party='{stream['party']}']")
        expect(row.locator(".packets")).to_have_text(str(stream["quality"]["packets"]))
        expect(row.locator(".lost")).to_have_text(str(stream["quality"]["lost"]))
    page.wait_for_selector("#picture[data-state=ready]")
    legend = page.locator(".picture-legend")
    expect(legend).to_contain_text(NUMBER)  # the caller, by the number on the card
    expect(legend).to_contain_text("silence")
    expect(legend).to_contain_text("overlap")
    assert page.locator("canvas.picture-canvas").bounding_box() is not None
    shot(page, "call-card-desktop.png", capsys)


def test_pressing_play_plays_the_recording(context: BrowserContext, site: Site) -> None:
    page = context.new_page()
    sign_in(page, site.key)
    _open_card(page, site)
    assert _time(page) == 0
    _press_play(page)
    _advancing(page)


def test_clicking_the_picture_seeks_with_a_range_request(context: BrowserContext, site: Site) -> None:
    page = context.new_page()
    sign_in(page, site.key)
    _open_card(page, site)
    duration = float(page.get_attribute("#picture", "data-duration") or 0)
    assert duration > 10
    asked: list[Request] = []
    page.on("request", lambda r: asked.append(r) if re.search(r"/ui/recordings/\w+/audio", r.url) else None)
    box = page.locator("canvas.picture-canvas").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    _until(page, f"document.getElementById('player').currentTime >= {0.6 * duration - 0.5}")
    assert _time(page) < 0.6 * duration + 2
    _advancing(page)  # the click also plays from there
    # the browser fetched the part it needed with a Range request, and got a 206
    assert asked, "the seek made no audio request"
    for request in asked:
        wanted = request.headers.get("range", "")
        assert re.fullmatch(r"bytes=[1-9][0-9]*-[0-9]*", wanted), wanted
        answer = request.response()
        assert answer is not None and answer.status == 206
        start = wanted.removeprefix("bytes=").split("-")[0]
        assert answer.headers["content-range"].startswith(f"bytes {start}-")


def test_a_public_link_from_creation_to_revocation(
    context: BrowserContext, browser: Browser, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    page = context.new_page()
    sign_in(page, site.key)
    _open_card(page, site)
    page.select_option("#create-link select[name=expires_in_s]", "86400")
    page.click("#create-link button[type=submit]")
    url = page.input_value("#new-link-url")
    assert url.startswith(f"{site.base}/r/")
    page.click("#copy-link")
    expect(page.locator("#copy-link")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == url

    # whoever has the link: a browser without any session
    stranger = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        public = stranger.new_page()
        answer = public.goto(url)
        assert answer is not None and answer.status == 200
        public.wait_for_selector("#picture[data-state=ready]")
        _press_play(public)
        _advancing(public)
        shot(public, "public-link.png", capsys)
        with public.expect_download() as download:
            public.click("#download")
        path = download.value.path()
        expected = site.serve.api.get(f"/api/v1/recordings/{site.recording_id}/audio")
        assert expected.status_code == 200 and path.read_bytes() == expected.content
    finally:
        stranger.close()

    # revoked from the card: the page answers 404 from then on
    page.reload()
    active = page.locator("#links tr.state-active")
    expect(active).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    active.locator("button.revoke").click()
    expect(page.locator("#links tr.state-revoked")).to_have_count(1)
    again = browser.new_context()
    try:
        answer = again.new_page().goto(url)
        assert answer is not None and answer.status == 404
    finally:
        again.close()


def test_the_call_card_on_a_phone(browser: Browser, site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    phone = browser.new_context(base_url=site.base, viewport=PHONE, device_scale_factor=2, is_mobile=True,
                                has_touch=True)  # fmt: skip
    try:
        page = phone.new_page()
        sign_in(page, site.key)
        _open_card(page, site)
        # nothing wider than the screen: no sideways scrolling
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        box = page.locator("canvas.picture-canvas").bounding_box()
        assert box is not None and box["width"] <= PHONE["width"]
        page.tap("canvas.picture-canvas", position={"x": box["width"] * 0.5, "y": 20})
        duration = float(page.get_attribute("#picture", "data-duration") or 0)
        _until(page, f"document.getElementById('player').currentTime >= {0.5 * duration - 0.5}")
        shot(page, "call-card-phone.png", capsys)
    finally:
        phone.close()


def test_revoking_the_key_ends_its_session(browser: Browser, site: Site) -> None:
    key_id, key = site.new_key()
    made = browser.new_context(base_url=site.base)
    try:
        page = made.new_page()
        sign_in(page, key)
        _open_card(page, site)
        revoked = site.serve.api.delete(f"/api/v1/domains/{site.domain}/keys/{key_id}")
        assert revoked.status_code == 204
        status = page.evaluate(f"fetch('/ui/recordings/{site.recording_id}/picture').then(r => r.status)")
        assert status == 401
        page.reload()
        assert "/ui/signin" in page.url
    finally:
        made.close()
