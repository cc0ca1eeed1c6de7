"""The app with several documents in one session: *Add documents* (api_name ``add_documents``), the card
that lists each document and the session's mode, sources and cited pages that name their document,
``/page_of``; through the handlers and through ``gradio_client`` on a served app.

The engine is the real ``QAEngine`` on a tiny random model with a character tokenizer (its answers are
noise, but what it reads, and so its sources, is decided by retrieval, not by the model); the PDFs are
written here, each page as wide as no other page, so that a rendered page tells which one it is.
"""

from __future__ import annotations

import gradio as gr
import pytest
from test_app import FakeEngine, _is_page, _upload, launch_with_retry
from test_qa import filler, make_engine

import app
from data_tools.minipdf import write_text_pdf
from webapp.chat import release_state
from webapp.pages import page_image, page_of, page_picker, show_page

ZEBRA = "The zebra code is 4417."
WALRUS = "The walrus code is 9051."
A_WIDTHS = [612, 630, 648]  # points: page widths of a.pdf
B_WIDTHS = [700, 720, 740]  # ... and of b.pdf


def fact_pdf(path, fact: str, page: int, widths: list[int]):
    """A PDF of ``len(widths)`` pages of prose, page i ``widths[i - 1]`` points wide, with ``fact`` on page ``page``."""
    from pypdf import PdfReader, PdfWriter

    seed = sum(map(ord, path.stem)) * 10  # prose of its own on every page (repeated lines are cut as headers)
    pages = [[filler(2, seed=seed + 4 * n + k) for k in range(4)] for n in range(len(widths))]
    pages[page - 1].insert(2, fact)
    write_text_pdf(path, pages)
    writer = PdfWriter(clone_from=PdfReader(str(path)))
    for pdf_page, width in zip(writer.pages, widths):
        pdf_page.mediabox.right = width
    with open(path, "wb") as f:
        writer.write(f)
    return path


@pytest.fixture
def papers(tmp_path):
    """a.pdf: the zebra code on page 2; b.pdf: the walrus code on page 3."""
    return fact_pdf(tmp_path / "a.pdf", ZEBRA, 2, A_WIDTHS), fact_pdf(tmp_path / "b.pdf", WALRUS, 3, B_WIDTHS)


@pytest.fixture
def engine():
    return make_engine(context=512, budget=160, passage=24, max_new_tokens=4)  # retrieval: PDFs do not fit


def _add(engine, paths, state=None, strategy="retrieve"):
    return app.add_documents(engine, [str(p) for p in paths], state, strategy)


def _ask(engine, state, question):
    app.start_turn(engine, question, state)
    return list(app.stream_answer(engine, state))[-1]


def test_added_documents_are_asked_together_with_named_sources_and_pages(engine, papers, tmp_path):
    a, b = papers
    _, state = _upload(engine, a)
    card, state = _add(engine, [b], state)
    assert [d.name for d in state.documents] == ["a.pdf", "b.pdf"] and len(state.session.parts) == 2
    assert "**2 documents**" in card and "| a.pdf | 3 |" in card and "| b.pdf | 3 |" in card
    assert "**Mode: retrieval.**" in card and "from all the documents (`retrieve`)" in card
    chat = _ask(engine, state, "What are the zebra code and the walrus code?")
    final = chat[-1]["content"]
    # the folded sources under the answer name each passage's document and page
    assert "(a.pdf, p. 2)" in final and "(b.pdf, p. 3)" in final
    assert "The 2 documents" in final and "a.pdf, page 2; b.pdf, page 3" in final  # what was read
    sources = app.sources(state)
    assert {(s["document"], tuple(s["pages"])) for s in sources} == {("a.pdf", (2,)), ("b.pdf", (3,))}
    assert any(ZEBRA in s["text"] for s in sources) and any(WALRUS in s["text"] for s in sources)
    # the cited pages, each with its document, open the right page of the right PDF
    picker, _ = page_picker(state)
    assert picker["choices"] == [("a.pdf, page 2 (source 1)", "1:2"), ("b.pdf, page 3 (source 2)", "2:3")]
    shown = show_page("2:3", state)
    assert shown["label"] == "b.pdf: page 3 of 3" and _is_page(shown["value"], B_WIDTHS[2])
    assert _is_page(show_page("1:2", state)["value"], A_WIDTHS[1])
    assert _is_page(page_of("a.pdf", 2, state), A_WIDTHS[1])  # /page_of: a document by name
    # /page cannot tell which PDF: it says what to use instead
    with pytest.raises(gr.Error, match=r"holds 2 documents \(a.pdf, b.pdf\); say whose page.*/page_of"):
        page_image(3, state)
    with pytest.raises(
        gr.Error, match=r"No document named 'c.pdf' in this session; its documents: a.pdf, b.pdf"
    ):
        page_of("c.pdf", 1, state)
    # a text document beside one PDF: /page shows the PDF's pages
    notes = tmp_path / "notes.txt"
    notes.write_text("The walrus code was changed in May. " * 10)
    _, mixed = _upload(engine, a)
    _add(engine, [notes], mixed)
    assert _is_page(page_image(2, mixed), A_WIDTHS[1])


def test_the_conversation_goes_on_when_documents_are_added(engine, papers):
    a, b = papers
    _, state = _upload(engine, a)
    _ask(engine, state, "What is the zebra code?")
    old = state.session
    _add(engine, [b], state)
    assert len(state.turns) == 1 and state.session is not old  # a new engine session, the same chat
    chat = _ask(engine, state, "And the walrus code?")
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant"]
    assert any(s["document"] == "b.pdf" for s in app.sources(state))


def test_adding_starts_a_session_when_there_is_none(engine, papers):
    card, state = _add(engine, papers)
    assert state.document.name == "a.pdf" and [d.name for d in state.documents] == ["a.pdf", "b.pdf"]
    assert state.material_type and "**2 documents**" in card
    material, chat, *_ = app.after_upload(state)
    assert material["value"] == state.material_type and chat == []


def test_all_documents_whole_when_they_fit_together(tmp_path):
    engine = make_engine(context=2048, passage=24, max_new_tokens=4)
    paths = []
    for name, fact in (("one.txt", ZEBRA), ("two.txt", WALRUS)):
        paths.append(tmp_path / name)
        paths[-1].write_text(fact)
    card, state = _add(engine, paths)
    assert "**Mode: whole documents.** All of them fit together" in card
    assert "| one.txt | - | 23 | yes |" in card and "| two.txt | - | 24 | yes |" in card
    _ask(engine, state, "What is the walrus code?")
    # both were read whole; the answer cites the one that supports it (the question's words)
    assert [(s["document"], s["text"]) for s in app.sources(state)] == [("two.txt", WALRUS)]
    picker, _ = page_picker(state)
    assert picker["choices"] == [] and "no pages" in picker["info"]  # plain text only


def test_at_most_twenty_documents_and_each_name_once(engine, papers, tmp_path):
    a, b = papers
    _, state = _upload(engine, a)
    many = []
    for i in range(20):
        many.append(tmp_path / f"note-{i}.txt")
        many[-1].write_text(f"Note {i} is short.")
    with pytest.raises(
        gr.Error, match="A session holds at most 20 documents: this one has 1 and 20 more were added"
    ):
        _add(engine, many, state)
    assert [d.name for d in state.documents] == ["a.pdf"]  # nothing was added
    _, state = _add(engine, many[:19], state)
    assert len(state.documents) == len(state.session.parts) == 20
    with pytest.raises(gr.Error, match="at most 20 documents: this one has 20 and 1 more"):
        _add(engine, [b], state)
    with pytest.raises(gr.Error, match="note-3.txt is already in this session; rename one"):
        _add(engine, [many[3]], _add(engine, many[:5])[1])


def test_a_bad_file_adds_nothing_and_the_session_goes_on(engine, papers, tmp_path):
    a, b = papers
    _, state = _upload(engine, a)
    session = state.session
    bad = tmp_path / "report.docx"
    bad.write_bytes(b"PK\x03\x04")
    with pytest.raises(gr.Error, match=r"report\.docx.*unsupported") as info:
        _add(engine, [b, bad], state)
    assert info.value.visible and [d.name for d in state.documents] == ["a.pdf"]
    assert state.session is session and not state.stop_event.is_set()
    with pytest.raises(gr.Error, match="Choose one or more PDF, TXT or MD files"):
        app.add_documents(engine, [], state)
    card, state = _add(engine, [b], state)  # and the next add works
    assert "**2 documents**" in card


def test_added_pdf_copies_live_as_long_as_the_session(engine, papers):
    from pathlib import Path

    a, b = papers
    _, state = _upload(engine, a)
    _add(engine, [b], state)
    copies = [Path(state.pdf.path), Path(state.added[0][1].path)]
    assert all(c.exists() for c in copies) and copies[1].read_bytes() == b.read_bytes()
    release_state(state)  # New document, a new upload, the end of the browser session
    assert not any(c.parent.exists() for c in copies)
    with pytest.raises(gr.Error, match="b.pdf is no longer kept by the app; upload it again"):
        show_page("2:1", state)


def test_documents_added_while_the_model_loads_wait_for_it_and_open_together(papers):
    from test_app_loading import _ready_after

    engine = FakeEngine(state="loading")
    _ready_after(engine, 0.2)
    card, state = _add(engine, papers)  # waits for the model, as an upload does
    assert "**2 documents**" in card and "| a.pdf |" in card and engine.opened == 1
    assert [d.name for d in state.session.documents] == ["a.pdf", "b.pdf"]
    # a model that failed to load: the card lists the documents, their tokens still to count
    card, state = _add(FakeEngine(state="error"), papers)
    assert card.startswith("### 2 documents") and "**a.pdf** (pdf, 3 pages" in card and "**b.pdf**" in card
    assert "counted when the model is ready" in card and state.session is None


def test_client_session_with_two_documents(papers, tmp_path, monkeypatch):
    from gradio_client import Client, handle_file
    from PIL import Image

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    a, b = papers
    demo = app.build_demo(make_engine(context=512, budget=160, passage=24), max_new_tokens=16)
    url = launch_with_retry(demo)
    try:
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
        card = client.predict(handle_file(str(a)), api_name="/upload")  # one document, as before
        assert "a.pdf" in card and "3 pages" in card
        card = client.predict([handle_file(str(b))], api_name="/add_documents")
        assert "**2 documents**" in card and "| b.pdf |" in card
        assert not any(p.is_file() for p in (tmp_path / "gradio").rglob("*.pdf"))  # uploads not kept
        assert isinstance(
            client.predict("What are the zebra code and the walrus code?", api_name="/ask"), str
        )
        sources = client.predict(api_name="/sources")
        assert {(s["document"], tuple(s["pages"])) for s in sources} == {("a.pdf", (2,)), ("b.pdf", (3,))}
        with Image.open(client.predict("b.pdf", 3, api_name="/page_of")) as image:
            assert _is_page(image, B_WIDTHS[2])
        with pytest.raises(Exception, match="/page_of"):
            client.predict(3, api_name="/page")
        # another client is another session: only its own document
        other = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
        other.predict([handle_file(str(b))], api_name="/add_documents")
        other.predict("What is the zebra code?", api_name="/ask")
        assert {s["document"] for s in other.predict(api_name="/sources")} == {"b.pdf"}
        with Image.open(other.predict(3, api_name="/page")) as image:  # one document: /page as before
            assert _is_page(image, B_WIDTHS[2])
        with pytest.raises(Exception, match="at most 20 documents: this one has 2 and 19 more"):
            client.predict([handle_file(str(a))] * 19, api_name="/add_documents")
    finally:
        demo.close()
