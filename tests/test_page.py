"""The recruiters' page in a real browser: Debian's Chromium driven by Playwright for
Python, against a real ``pipeline serve``. One browser for every test here."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serving import HOSTILE_TEXT, OTHER_INTEGRATION, served_world

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Every CV has a first section of one of these names (the sandbox's four languages).
EVERY_CV = "Profile OR Profil OR Perfil"

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no chromium installed")


@pytest.fixture(scope="module")
def site() -> Iterator[dict[str, Any]]:
    with served_world() as served:
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, site: dict[str, Any]) -> Iterator[Any]:
    context = browser.new_context(base_url=site["server"].url, accept_downloads=True)
    errors: list[str] = []
    tab = context.new_page()
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.errors = errors
    try:
        yield tab
    finally:
        context.close()


def _sign_in(page: Any, token: str) -> None:
    page.goto("/")
    page.fill("#token", token)
    page.keyboard.press("Enter")
    page.wait_for_selector("#q")


def _search(page: Any, query: str) -> None:
    page.fill("#q", query)
    with page.expect_navigation():
        page.keyboard.press("Enter")


def test_sign_in_search_page_and_find_more_like_this(page: Any, site: dict[str, Any]) -> None:
    page.goto("/")
    page.fill("#token", "pk_000000000000_not-a-token")
    page.keyboard.press("Enter")
    assert "not valid" in page.inner_text("[role=alert]")
    _sign_in(page, site["tokens"]["read"])
    cookie = next(c for c in page.context.cookies() if c["name"] == "pipeline_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # The keyboard: "/" comes back to the search box from anywhere on the page.
    page.locator("body").click()
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"

    _search(page, "Python")
    people = page.locator("li.candidate")
    assert people.count() > 0
    ids = [people.nth(i).get_attribute("data-candidate") for i in range(people.count())]
    assert len(ids) == len(set(ids)), "one entry per candidate"
    marks = page.locator(".snippet mark")
    assert marks.count() > 0
    assert all("python" in t.lower() for t in marks.all_inner_texts())

    _search(page, EVERY_CV)
    assert page.locator("li.candidate").count() == 10
    first_page = set(page.locator("li.candidate").evaluate_all(
        "els => els.map(e => e.dataset.candidate)"))  # fmt: skip
    with page.expect_navigation():
        page.click("a[rel=next]")
    second = set(page.locator("li.candidate").evaluate_all(
        "els => els.map(e => e.dataset.candidate)"))  # fmt: skip
    assert second and not second & first_page
    assert "showing 11" in page.inner_text("#summary")

    with page.expect_navigation():
        page.locator("a.similar").first.click()
    assert page.inner_text("h2.summary").startswith("More like")
    assert page.locator("li.candidate").count() > 0
    assert not page.errors


def test_a_misspelt_query_offers_the_correction_and_clicking_it_searches_it(
    page: Any, site: dict[str, Any]
) -> None:
    _sign_in(page, site["tokens"]["read"])
    _search(page, "Pythn")
    suggestion = page.locator(".did-you-mean a")
    assert suggestion.inner_text().lower() == "python"
    with page.expect_navigation():
        suggestion.click()
    assert page.input_value("#q").lower() == "python"
    assert page.locator(".did-you-mean").count() == 0
    assert page.locator("li.candidate").count() > 0
    assert all("python" in t.lower() for t in page.locator(".snippet mark").all_inner_texts())
    assert not page.errors


def test_the_original_file_downloads_and_hostile_markup_shows_as_text(
    page: Any, site: dict[str, Any]
) -> None:
    _sign_in(page, site["tokens"]["read"])
    _search(page, "zebrafish pwned")
    hit = page.locator("li.hit").first
    snippet = hit.locator(".snippet").inner_text()
    assert "<script>" in snippet, snippet  # shown as text ...
    assert page.locator(".snippet script, .snippet img").count() == 0  # ... never as markup
    assert page.evaluate("window.pwned === undefined")
    assert page.title() != "pwned"
    with page.expect_download() as caught:
        hit.locator("a.file").click()
    download = caught.value
    assert Path(download.path()).read_bytes() == HOSTILE_TEXT
    attachment = site["sandbox"].world.attachments[site["hostile"]]
    assert download.suggested_filename == attachment.file_name
    assert not page.errors


def test_another_integrations_token_sees_none_of_these_candidates(
    page: Any, site: dict[str, Any]
) -> None:
    _sign_in(page, site["tokens"]["other"])
    _search(page, EVERY_CV)
    ours = {c.id for c in site["sandbox"].world.ordered()}
    theirs = {c.id for c in site["sandbox"].integration(OTHER_INTEGRATION).world.ordered()}
    shown = set(page.locator("li.candidate").evaluate_all(
        "els => els.map(e => e.dataset.candidate)"))  # fmt: skip
    assert shown and shown <= theirs  # its own, and none of the first one's
    assert not shown & ours
    assert not any(cid in page.content() for cid in ours)
    # A form posted without its CSRF token is refused.
    answer = page.request.post("/signout", form={"csrf": "forged"})
    assert answer.status == 403
    page.goto("/")
    assert page.locator("#q").count() == 1  # still signed in
    refused = page.request.post("/signin", form={"token": site["tokens"]["read"]})
    assert refused.status == 403
    with page.expect_navigation():
        page.click("form.signout button")
    assert page.locator("#token").count() == 1  # signed out by the real form
