"""The app served with the real engine and the bundled default model (SmolLM2-135M-Instruct):
a headless ``gradio_client`` session and a real Chromium driven by Playwright (a paper, with an
answer stopped mid-stream; a short PDF answered whole with its cited page, then a second document).

Both tests share one engine and one server (the bundled model converts once and is cached).
The browser test needs Debian's Chromium (``apt-get install chromium``); it is skipped, saying so,
when ``/usr/bin/chromium`` is absent. ``LONGLORA_APP_SCREENSHOT=docs/screenshot.png`` makes it save
the README screenshot there.
"""

from __future__ import annotations

import os
import re
import time

import pytest
from conftest import FIXTURES, fixture_path, needs_fixtures  # noqa: E402
from test_app import launch_with_retry

import app
from webapp.cards import status_markdown
from webapp.server import parse_args

PAPER = FIXTURES / "zoo-faq.pdf"  # the tests that upload it are marked needs_fixtures(PAPER.name)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
MAX_NEW_TOKENS = 96

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def served_real(tmp_path_factory):
    from webapp.loading import BackgroundEngine

    upload_root = tmp_path_factory.mktemp("app") / "gradio"  # created by gradio on the first upload
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(upload_root)
    engine = BackgroundEngine.from_spec("default", max_new_tokens=MAX_NEW_TOKENS)
    demo = app.build_demo(engine, max_new_tokens=MAX_NEW_TOKENS)
    assert status_markdown(engine).startswith(("**Loading the model...**", "**Model ready:**"))
    # The app serves while the model loads (the small-engine tests check that); here the model is
    # loaded first so that loading does not compete with gradio's 3-second localhost self-check.
    engine.wait_ready(timeout=600)
    url = launch_with_retry(demo)
    try:
        yield engine, url, upload_root
    finally:
        demo.close()
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous


@needs_fixtures(PAPER.name)
def test_client_session_real_model(served_real):
    from gradio_client import Client, handle_file

    engine, url, upload_root = served_real
    client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
    assert client.predict(api_name="/status")[0].startswith("**Model ready:** the bundled SmolLM2")

    card = client.predict(handle_file(str(PAPER)), api_name="/upload")
    assert "zoo-faq.pdf" in card and "15" in card
    assert upload_root.is_dir()  # gradio received the upload there...
    assert not [p for p in upload_root.rglob("*.pdf") if p.is_file()]  # ...and it was not kept

    job = client.submit("What is the zoo package for?", api_name="/ask")
    answer = job.result(timeout=300)
    streamed = job.outputs()
    assert answer.strip(), "the model gave an empty answer"
    assert len(streamed) >= 2 and streamed[-1] == answer  # it streamed in, cumulatively
    assert all(streamed[i + 1].startswith(streamed[i]) for i in range(len(streamed) - 2))

    sources = client.predict(api_name="/sources")  # the passages the answer was based on, with pages
    assert sources and all(source["text"].strip() and source["pages"] for source in sources)
    assert all(1 <= p <= 15 for source in sources for p in source["pages"])
    assert os.path.getsize(client.predict(sources[0]["pages"][0], api_name="/page")) > 10_000  # a PNG

    follow = client.predict("Who maintains it?", api_name="/ask")
    assert isinstance(follow, str) and follow.strip()


def _launch_chromium(playwright):
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"{CHROMIUM} not found: install Debian's Chromium (apt-get install chromium) to run the browser test"
        )
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


BOT = "#chat [data-testid=bot]"


def _last_answer(page) -> str:
    bot = page.locator(BOT)
    return bot.last.inner_text() if bot.count() else ""


def _watch_answer(page, quiet_s: float = 2.0, timeout_s: float = 300.0) -> list[int]:
    """Poll the last answer's length until it has not changed for ``quiet_s``; return the lengths seen."""
    lengths: list[int] = []
    last_change = time.monotonic()
    deadline = last_change + timeout_s
    while time.monotonic() < deadline:
        n = len(_last_answer(page))
        if not lengths or n != lengths[-1]:
            lengths.append(n)
            last_change = time.monotonic()
        elif n and time.monotonic() - last_change > quiet_s:
            break
        time.sleep(0.05)
    return lengths


def _open_sources_and_a_cited_page(page, expect) -> None:
    """Unfold the sources under the last answer, then pick the first cited page and see it."""
    summary = page.locator("#chat details summary").last
    expect(summary).to_contain_text("Sources:", timeout=60_000)  # added once the answer is done
    summary.click()
    expect(page.locator("#chat details").last).to_contain_text("(p. ")  # each passage with its pages
    page.locator("#page-pick input").click()
    option = page.get_by_role("option").first
    number = re.match(r"Page (\d+) \(source", option.inner_text()).group(1)
    option.click()
    image = page.locator("#page-image img")
    expect(image).to_be_visible(timeout=60_000)
    expect(page.locator("#page-image")).to_contain_text(f"zoo-faq.pdf: page {number} of 15")
    page.wait_for_function(
        "() => { const i = document.querySelector('#page-image img'); return i && i.naturalWidth > 500; }",
        timeout=30_000,
    )


@pytest.mark.browser
@needs_fixtures(PAPER.name)
def test_browser_upload_ask_stream_stop(served_real):
    sync_api = pytest.importorskip("playwright.sync_api")

    engine, url, _ = served_real
    with sync_api.sync_playwright() as p:
        browser = _launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.locator("#status-line").get_by_text("Model ready").wait_for(timeout=600_000)

            page.locator("#upload input[type=file]").set_input_files(str(PAPER))
            card = page.locator("#doc-card")
            card.get_by_text("zoo-faq.pdf").wait_for(timeout=60_000)
            # the guess arrives with the event chained after the upload
            sync_api.expect(page.locator("#material input[value=paper]")).to_have_attribute(
                "aria-checked", "true", timeout=30_000
            )
            sync_api.expect(page.locator("#example-limitations")).to_be_visible(timeout=30_000)
            assert "tokens" in card.inner_text().lower()

            # An example question, one click away: the answer streams in and completes, with its
            # sources under it and the pages they cite one pick away.
            page.locator("#example-summary").click()
            page.locator(BOT).first.wait_for(timeout=300_000)
            lengths = _watch_answer(page)
            assert lengths[-1] > 0 and len(lengths) >= 3, (
                f"the answer did not stream in: lengths seen {lengths}"
            )
            _open_sources_and_a_cited_page(page, sync_api.expect)
            shot = os.environ.get("LONGLORA_APP_SCREENSHOT")
            if shot:
                page.screenshot(path=shot, full_page=True)

            # Ask a question, and stop the answer while it streams.
            page.locator("#question textarea").fill(
                "List everything this document explains, one point per line."
            )
            page.locator("#question textarea").press("Enter")
            page.wait_for_function(
                "() => { const b = document.querySelectorAll('#chat [data-testid=bot]');"
                " return b.length >= 2 && b[1].innerText.trim().length > 0; }",
                timeout=300_000,
            )
            page.locator("#stop").click()
            page.locator("#chat").get_by_text("(stopped)").wait_for(timeout=60_000)
            stopped = _last_answer(page)
            time.sleep(1.0)
            assert _last_answer(page) == stopped  # nothing is added after the stop
        finally:
            browser.close()


HARBOR = [  # a two-page PDF that the bundled model reads whole (about 120 tokens)
    [
        "Harbor Museum visitor notes.",
        "The Harbor Museum stands on the old pier of the town.",
        "It shows the ships, maps and tools of the fishing fleet.",
        "Guided tours start every hour from the main hall.",
    ],
    [
        "Opening hours and tickets.",
        "The museum opens at nine in the morning and closes at five.",
        "On Mondays the museum is closed for cleaning.",
        "A ticket costs six euros; children enter for free.",
    ],
]


def _pick_a_cited_page(page, expect, pattern: str, label: str) -> str:
    """Unfold the last answer's sources, pick the first cited page whose option matches ``pattern``
    (its page number the first group) and see it, labelled ``label`` with that number; returns it."""
    summary = page.locator("#chat [data-testid=bot]").last.locator("details summary")
    expect(summary).to_contain_text("Sources:", timeout=300_000)  # added once the answer is done
    summary.click()
    page.locator("#page-pick input").click()
    option = page.get_by_role("option").filter(has_text=re.compile(pattern)).first
    number = re.search(pattern, option.inner_text()).group(1)
    option.click()
    expect(page.locator("#page-image img")).to_be_visible(timeout=60_000)
    expect(page.locator("#page-image")).to_contain_text(label.format(number), timeout=60_000)
    page.wait_for_function(
        "() => { const i = document.querySelector('#page-image img'); return i && i.naturalWidth > 500; }",
        timeout=30_000,
    )
    return number


@pytest.mark.browser
@needs_fixtures(PAPER.name)
def test_browser_whole_document_answer_then_two_documents(served_real, tmp_path):
    """A short PDF read whole: the answer cites the page that supports it, and that page opens. Then
    a second document joins the session: the card lists both and says the session is read by
    retrieval, and the next answer's sources and cited pages name their document."""
    from data_tools.minipdf import write_text_pdf

    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    harbor = write_text_pdf(tmp_path / "harbor.pdf", HARBOR)
    engine, url, _ = served_real
    with sync_api.sync_playwright() as p:
        browser = _launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.locator("#status-line").get_by_text("Model ready").wait_for(timeout=600_000)

            # (a) one short document, read whole; the answer's source is the page it comes from
            page.locator("#upload input[type=file]").set_input_files(harbor)
            card = page.locator("#doc-card")
            expect(card).to_contain_text("harbor.pdf", timeout=60_000)
            expect(card).to_contain_text("Fits whole")
            page.locator("#question textarea").fill("When does the museum open?")
            page.locator("#question textarea").press("Enter")
            page.locator(BOT).first.wait_for(timeout=300_000)
            assert _watch_answer(page)[-1] > 0
            assert "longer than" not in _last_answer(page)  # nothing was cut: the whole document
            # the opening hours are on page 2: it is cited, and it opens
            _pick_a_cited_page(page, expect, r"Page (2) \(source", "harbor.pdf: page {} of 2")

            # (b) a second document joins: both on the card, read by retrieval, sources named
            page.locator("#add-docs input[type=file]").set_input_files(str(PAPER))
            expect(card).to_contain_text("2 documents", timeout=120_000)
            expect(card).to_contain_text("zoo-faq.pdf")
            expect(card).to_contain_text("Mode: retrieval")
            page.locator("#question textarea").fill("What is the zoo package for?")
            page.locator("#question textarea").press("Enter")
            page.wait_for_function(
                "() => document.querySelectorAll('#chat [data-testid=bot]').length >= 2", timeout=300_000
            )
            assert _watch_answer(page)[-1] > 0
            _pick_a_cited_page(
                page, expect, r"zoo-faq\.pdf, page (\d+) \(source", "zoo-faq.pdf: page {} of 15"
            )
            expect(page.locator("#chat details").last).to_contain_text("(zoo-faq.pdf, p. ")
        finally:
            browser.close()


# The extended model of the recipe (python -m longlora.recipe --output-dir out/smollm2-16k) served by the
# app, when it has been built: LONGLORA_EXTENDED_MODEL=out/smollm2-16k/merged python -m pytest -m real_model
EXTENDED = os.environ.get("LONGLORA_EXTENDED_MODEL")


@pytest.mark.skipif(not EXTENDED, reason="set LONGLORA_EXTENDED_MODEL to the recipe's merged model folder")
def test_app_serves_the_recipe_model(tmp_path, monkeypatch):
    """python app.py --model out/smollm2-16k/merged: the 16k window from its config and the extended
    profile it records (retrieval, which answered 18/40 development questions against 6/40 for the whole
    document: docs/recipe.md); a 12k-token paper is answered from passages cited with their pages."""
    from gradio_client import Client, handle_file
    from transformers import AutoConfig

    from data_tools.profiles import PROFILE_CONFIG_KEY, PROFILES
    from webapp.loading import BackgroundEngine

    paper = fixture_path("rcpp-jss-2011.pdf")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    config = AutoConfig.from_pretrained(EXTENDED)
    args = parse_args(["--model", EXTENDED, "--max-new-tokens", str(MAX_NEW_TOKENS)])
    engine = BackgroundEngine.from_args(args, max_new_tokens=MAX_NEW_TOKENS)
    engine.wait_ready(timeout=600)
    assert engine.context_length == config.max_position_embeddings >= 16384
    assert engine.profile == PROFILES[getattr(config, PROFILE_CONFIG_KEY)]
    assert getattr(config, PROFILE_CONFIG_KEY) == "SmolLM2-135M-Instruct-LongLoRA"
    demo = app.build_demo(engine, max_new_tokens=MAX_NEW_TOKENS)
    url = launch_with_retry(demo)
    try:
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 600})
        card = client.predict(handle_file(str(paper)), api_name="/upload")
        assert "rcpp-jss-2011.pdf" in card and "16,384" in card and "`retrieve`" in card
        answer = client.predict("Who wrote this paper?", api_name="/ask")
        assert answer.strip()
        sources = client.predict(api_name="/sources")
        assert sources and all(source["pages"] for source in sources)  # passages, each with its page
    finally:
        demo.close()
