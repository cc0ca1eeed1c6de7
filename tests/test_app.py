"""The Gradio app's handlers, layout and API, with a small in-test engine.

``FakeEngine`` satisfies ``longlora.qa.QAEngineLike`` like the real engine (``test_engines_satisfy_the_protocol``
checks both) and streams canned text word by word; it isolates the UI from the model (the real engine is exercised in
``test_app_live.py``). Documents are real: fixture files and PDFs generated here go through
``data_tools.load_document``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import shutil
import threading
import time
from pathlib import Path

import gradio as gr
import pytest
from conftest import PRIDE_AND_PREJUDICE, fixture_path, make_char_tokenizer, tiny_model  # noqa: E402

import app
from data_tools import load_text
from data_tools.errors import ModelLoadError
from data_tools.prompts import QUESTIONS_FOR
from longlora.qa import AnswerUpdate, DocumentCard, FitReport, QAEngine, QAEngineLike, Source
from longlora.qa.protocol import PROTOCOL_ATTRIBUTES, PROTOCOL_METHODS
from webapp.cards import EMPTY_CARD, card_markdown, pending_card_markdown, status_markdown
from webapp.chat import EXAMPLE_LABELS, ChatState, example_visibility, release_state
from webapp.layout import PAGE_PICK_HELP
from webapp.loading import BackgroundEngine
from webapp.pages import page_image, page_picker, show_page
from webapp.server import launch, parse_args


@pytest.fixture
def paper() -> Path:
    """The zoo FAQ, a real 15-page PDF from the fixtures (the test skips when it is absent)."""
    return fixture_path("zoo-faq.pdf")


# --------------------------------------------------------------------------------------------------
# A small engine with QAEngine's interface
# --------------------------------------------------------------------------------------------------


class FakeSession:
    def __init__(self, engine, documents, material_type):
        self.engine, self.documents, self.material_type = engine, list(documents), material_type
        self.document = self.documents[0]


class FakeEngine:
    """Streams ``answer`` word by word (``delay`` seconds apart), honouring ``stop_event``."""

    def __init__(
        self,
        answer="The zoo package handles ordered indexed observations.",
        state="ready",
        context_length=100_000,
        delay=0.0,
    ):
        self.answer, self.state, self.context_length, self.delay = answer, state, context_length, delay
        self.model_spec = "default"
        self.status_message = (
            "SmolLM2 (fake) on cpu" if state == "ready" else "Converting the bundled model..."
        )
        self.calls: list[dict] = []
        self.opened = 0
        self.closed: list[FakeSession] = []
        self.fail_with: Exception | None = None
        self.fail_at = 2  # the word before which fail_with is raised (0: before the first update)
        self.queued_first = False

    def open_document(self, path_or_document, material_type=None):
        return self.open_documents([path_or_document], material_type)

    def open_documents(self, paths_or_documents, material_type=None):
        self.opened += 1
        guess = "paper" if paths_or_documents[0].kind == "pdf" else "book"
        return FakeSession(self, paths_or_documents, material_type or guess)

    def close_session(self, session):
        self.closed.append(session)

    def card(self, session, strategy="retrieve"):
        cards = [self._card(document, session, strategy) for document in session.documents]
        if len(cards) == 1:
            return cards[0]
        tokens = sum(card.tokens for card in cards)
        together = dict(tokens=tokens, fits=tokens <= self.context_length - 600, documents=cards)
        return dataclasses.replace(cards[0], file_name=", ".join(c.file_name for c in cards), **together)

    def _card(self, document, session, strategy):
        tokens = len(document.text) // 4
        return DocumentCard(
            file_name=document.name,
            kind=document.kind,
            pages=document.num_pages,
            words=document.word_count,
            tokens=tokens,
            context_length=self.context_length,
            budget_tokens=self.context_length - 600,
            fits=tokens <= self.context_length - 600,
            strategy=strategy,
            material_type=session.material_type,
            warning=document.warning,
        )

    def ask(
        self,
        session,
        question,
        *,
        history=None,
        strategy="retrieve",
        max_new_tokens=None,
        temperature=0.0,
        top_p=1.0,
        stop_event=None,
    ):
        if not question.strip():
            raise ValueError("the question is empty; type a question")
        self.calls.append(
            dict(
                question=question,
                history=history,
                strategy=strategy,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                stop_event=stop_event,
                material_type=session.material_type,
            )
        )
        card = self.card(session, strategy)
        fit = FitReport(
            strategy,
            card.tokens,
            min(card.tokens, card.budget_tokens),
            card.fits,
            [] if card.fits else [1, 2, 5],
            budget_tokens=card.budget_tokens,
            passages=0 if card.fits else 3,
            sources=[]
            if card.fits
            else [Source("Zoo is a package.", 0, 17, [1, 2], 2.5), Source("Ends.", 90, 95, [5], 1.0)],
        )
        text = ""
        if self.queued_first:
            yield AnswerUpdate("", "", False, fit, queued=True)
        words = self.answer.split(" ")
        for i, word in enumerate(words):
            if self.fail_with is not None and i == self.fail_at:
                raise self.fail_with
            if stop_event is not None and stop_event.is_set():
                yield AnswerUpdate(text, "", True, fit, stopped=True)
                return
            delta = word if i == 0 else " " + word
            text += delta
            yield AnswerUpdate(text, delta, i == len(words) - 1, fit)
            if self.delay:
                time.sleep(self.delay)


def guess_material_type(document):
    return "paper" if document.kind == "pdf" else "book"


@pytest.fixture(autouse=True)
def _no_real_guess(monkeypatch):
    # The app guesses a new document's material type once, on upload (data_tools.prompts' rule); these
    # tests use a fixed rule so that their small documents read as a paper (PDF) or a book (text).
    monkeypatch.setattr(app, "guess_material_type", guess_material_type)


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def txt_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Elizabeth Bennet meets Mr. Darcy at a ball.\n\nShe dislikes him at first. " * 40)
    return path


def _drain(gen):
    return list(gen)


WAIT_S = 30  # every wait in these tests ends: a handler that fails must fail the test, not hang it


def _wait_for(condition, what: str, timeout: float = WAIT_S) -> None:
    """Poll ``condition()`` until it is true; fail with a message naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.005)


def _stream_in_thread(engine, state):
    """Run ``app.stream_answer`` in a thread as gradio does; (thread, frames, errors) filled as it runs."""
    frames: list = []
    errors: list = []

    def consume():
        try:
            for frame in app.stream_answer(engine, state):
                frames.append(frame)
        except BaseException as exc:  # noqa: BLE001 - reported by the test, never lost in the thread
            errors.append(exc)

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    return worker, frames, errors


def _upload(engine, path, state=None, strategy="retrieve"):
    return app.upload_document(engine, str(path), state, strategy)


def _ask_ui(engine, state, question, **settings):
    """What the page does: add the question, then stream the answer into the chat."""
    _, chat, state = app.start_turn(engine, question, state)
    frames = list(app.stream_answer(engine, state, **settings))
    return frames, state


# --------------------------------------------------------------------------------------------------
# Upload and the document card
# --------------------------------------------------------------------------------------------------


def test_upload_pdf_card_and_guess(engine, paper):
    card, state = _upload(engine, paper)
    assert "zoo-faq.pdf" in card and "15 pages" in card
    assert state.document.num_pages == 15 and state.document.word_count > 1000
    assert state.material_type == "paper" and state.session is not None and state.turns == []
    material, chat, *buttons = app.after_upload(state)
    assert material["value"] == "paper" and chat == []
    assert [b["visible"] for b in buttons] == example_visibility("paper") == [True, True, True, False, False]


def test_upload_guesses_the_material_type_once_and_opens_the_session_with_it(engine, monkeypatch, paper):
    """One guess per upload, by the app, whether the model is ready or not; the engine is told, not asked."""
    calls, seen = [], []
    monkeypatch.setattr(app, "guess_material_type", lambda doc: calls.append(doc.name) or "book")
    open_document = engine.open_document
    monkeypatch.setattr(
        engine,
        "open_document",
        lambda doc, material_type=None: seen.append(material_type) or open_document(doc, material_type),
    )
    _, state = _upload(engine, paper)
    assert calls == ["zoo-faq.pdf"] and seen == ["book"] and state.session.material_type == "book"


def test_new_upload_starts_new_conversation(engine, txt_file, paper):
    card, state = _upload(engine, paper)
    _ask_ui(engine, state, "What is zoo?")
    assert len(state.turns) == 1
    old_stop, old_session = state.stop_event, state.session
    card2, state2 = _upload(engine, txt_file, state)
    assert "notes.txt" in card2 and state2 is not state
    assert state2.turns == [] and state2.material_type == "book"
    assert old_stop.is_set()  # an answer still streaming about the old document stops
    assert engine.closed == [old_session]  # and the engine frees what it cached for it


def test_upload_deletes_the_uploaded_copy_only(engine, tmp_path, monkeypatch, paper):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    upload_dir = tmp_path / "gradio" / "0123abcd"
    upload_dir.mkdir(parents=True)
    uploaded = upload_dir / "zoo-faq.pdf"
    shutil.copy(paper, uploaded)
    card, state = _upload(engine, uploaded)
    assert "zoo-faq.pdf" in card
    assert not uploaded.exists() and not upload_dir.exists()
    assert state.document.text  # the text lives on in the session state only
    # a file outside gradio's upload folder (a user's own file) is never deleted
    _upload(engine, paper)
    assert paper.exists()


def _encrypted_pdf(path):
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append(PdfReader(str(fixture_path("zoo-faq.pdf"))), pages=(0, 1))
    writer.encrypt(user_password="secret", owner_password="owner")
    with open(path, "wb") as f:
        writer.write(f)
    return path


def _blank_pdf(path):
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(3):
        writer.add_blank_page(width=612, height=792)
    with open(path, "wb") as f:
        writer.write(f)
    return path


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda d: _encrypted_pdf(d / "locked.pdf"), r"(?i)locked\.pdf.*(encrypt|password)"),
        (lambda d: _blank_pdf(d / "scan.pdf"), r"(?i)scan\.pdf.*(text layer|OCR|no text)"),
        (
            lambda d: (d / "report.docx").write_bytes(b"PK\x03\x04") and d / "report.docx",
            r"report\.docx.*unsupported.*\.pdf",
        ),
        (
            lambda d: (d / "empty.txt").write_text("  \n") and d / "empty.txt",
            r"(?i)empty\.txt.*(empty|no text)",
        ),
    ],
    ids=["encrypted", "no-text-layer", "unsupported", "empty"],
)
def test_upload_errors_are_visible_messages(engine, tmp_path, make, pattern, paper):
    path = make(tmp_path)
    with pytest.raises(gr.Error, match=pattern) as info:
        _upload(engine, path)
    assert info.value.visible
    # the app keeps serving: the next upload works
    card, state = _upload(engine, paper)
    assert state.session is not None
    # and a failed upload leaves the current document and conversation alone
    _ask_ui(engine, state, "What is zoo?")
    with pytest.raises(gr.Error):
        _upload(engine, path, state)
    assert state.turns and not state.stop_event.is_set() and engine.closed == []


def test_upload_without_file(engine):
    with pytest.raises(gr.Error, match="Choose a PDF, TXT or MD file"):
        app.upload_document(engine, None, None)


def test_material_type_change_updates_card_prompt_and_examples(engine, paper):
    _, state = _upload(engine, paper)
    card, state, *buttons = app.set_material_type(engine, "book", state)
    assert "read as a book" in card and state.session.material_type == "book"
    assert [b["visible"] for b in buttons] == [True, False, False, True, True]
    _ask_ui(engine, state, "Who is the main character?")
    assert engine.calls[-1]["material_type"] == "book"
    with pytest.raises(gr.Error, match="Unknown material type"):
        app.set_material_type(engine, "poem", state)


def test_strategy_change_refreshes_card(engine, paper):
    engine.context_length = 1000  # the PDF does not fit
    _, state = _upload(engine, paper, strategy="retrieve")
    card = app.refresh_card(engine, state, "truncate-middle")
    assert "(`truncate-middle`)" in card
    assert app.refresh_card(engine, None, "retrieve") == EMPTY_CARD


# --------------------------------------------------------------------------------------------------
# What the reader warns about, on the card
# --------------------------------------------------------------------------------------------------

PROSE = [
    "The Debian GNU/Linux FAQ answers the questions users ask most often about the system.",
    "It is a collection of answers that were written by many people over the years, and",
    "it is kept in the package of the same name. If you have a question that is not here,",
    "ask it on the mailing list of the project, and it may be added to a later version.",
]
PAGE_WIDTHS = [612, 684, 756]  # points: each page of _three_page_pdf has its own width


def _three_page_pdf(path):
    """Three text pages, page 2 set in a font that maps glyphs to wrong characters ("7KH" for "The"),
    page i ``PAGE_WIDTHS[i - 1]`` points wide so that a rendered page tells which page it is."""
    from pypdf import PdfReader, PdfWriter

    from data_tools.minipdf import write_text_pdf

    pages = [[f"Page {n} begins here."] + PROSE for n in ("one", "two", "three")]
    write_text_pdf(path, pages, unicode_offset=-29, offset_pages=[2])
    writer = PdfWriter(clone_from=PdfReader(str(path)))
    for page, width in zip(writer.pages, PAGE_WIDTHS):
        page.mediabox.right = width
    with open(path, "wb") as f:
        writer.write(f)
    return path


def test_card_shows_the_reader_warning(engine, tmp_path, paper):
    path = _three_page_pdf(tmp_path / "faq.pdf")
    card, state = _upload(engine, path)
    warning = state.document.warning
    assert state.document.garbled_pages == [2] and "not readable" in warning
    assert f"**Warning:** {warning}." in card and "3 pages" in card
    clean, _ = _upload(engine, paper)
    assert "Warning" not in clean
    # the card shown while the model loads says it too
    pending = pending_card_markdown(state.document)
    assert "counted when the model is ready" in pending and f"**Warning:** {warning}." in pending


def test_real_engine_card_and_cli_carry_the_warning(tmp_path, tiny_model_dir, capsys):
    from data_tools import load_document
    from longlora.qa import main as qa_main

    path = _three_page_pdf(tmp_path / "faq.pdf")
    document = load_document(path)
    engine = QAEngine(model=tiny_model(), tokenizer=make_char_tokenizer(), max_new_tokens=4)
    assert engine.card(engine.open_document(document)).warning == document.warning != ""
    text = tmp_path / "note.txt"
    text.write_text("The meeting is on Tuesday.")
    assert engine.card(engine.open_document(load_document(text))).warning == ""
    qa_main(
        ["--doc", str(path), "--question", "What?", "--model", str(tiny_model_dir), "--max-new-tokens", "2"]
    )
    err = capsys.readouterr().err
    card_line = next(line for line in err.splitlines() if line.startswith("[faq.pdf: "))
    assert card_line.endswith(f"; warning: {document.warning}]"), err


def test_real_engine_cards_as_markdown():
    """The real engine's card as the page shows it: a document that fits, and one cut to fit by a strategy."""
    engine = QAEngine(model=tiny_model(), tokenizer=make_char_tokenizer(), max_new_tokens=8)
    small = engine.card(engine.open_document(load_text("A short note."), material_type="other"))
    assert small.fits and "Fits whole" in card_markdown(small)
    big = engine.open_document(load_text("Alpha bravo charlie delta echo. " * 40), material_type="book")
    card = engine.card(big, "truncate-middle")
    assert not card.fits and "truncate-middle" in card_markdown(card)


# --------------------------------------------------------------------------------------------------
# Model still loading
# --------------------------------------------------------------------------------------------------


def test_loading_model_shows_state_and_document_opens_when_ready(txt_file):
    from data_tools import load_document

    engine = FakeEngine(state="loading")
    assert "Loading the model" in status_markdown(engine) and "Converting" in status_markdown(engine)
    # a document without a session yet (uploads and questions made while the model loads wait for it:
    # tests/test_app_loading.py); the status timer opens it once the model is ready
    state = ChatState(document=load_document(txt_file), material_type="book")
    status, timer, card, state = app.poll_status(engine, state)
    assert "Loading" in status and timer.active is True and engine.opened == 0

    engine.state, engine.status_message = "ready", "SmolLM2 on cpu"
    status, timer, card, state = app.poll_status(engine, state)
    assert status.startswith("**Model ready:**") and timer.active is False
    assert " tokens" in card and state.session is not None and state.session.material_type == "book"
    frames, state = _ask_ui(engine, state, "Who is Elizabeth?")
    assert frames[-1][-1]["content"].startswith("The zoo package")


def test_failed_model_load_is_reported(txt_file):
    engine = FakeEngine(state="error")
    engine.status_message = "no model folder at ./missing; pass --model default"
    status = status_markdown(engine)
    assert "failed to load" in status and "./missing" in status
    _, state = _upload(engine, txt_file)
    with pytest.raises(gr.Error, match="failed to load.*missing"):
        app.start_turn(engine, "Anything?", state)


def test_unknown_model_is_an_error_state_not_a_crash(tmp_path):
    engine = BackgroundEngine.from_spec(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelLoadError, match="unknown model"):
        engine.wait_ready(timeout=60)
    assert engine.state == "error"
    assert "could not be loaded" in engine.status_message and "no-such-model" in engine.status_message


def test_background_load_of_a_local_dir(tiny_model_dir):
    engine = BackgroundEngine.from_spec(str(tiny_model_dir), dtype="float32", max_new_tokens=4)
    engine.wait_ready(timeout=60)
    assert engine.state == "ready" and engine.context_length == 256
    session = engine.open_document(load_text("Hello there."), material_type="other")
    assert isinstance(engine.answer(session, "Hi?"), str)


# --------------------------------------------------------------------------------------------------
# Chat
# --------------------------------------------------------------------------------------------------


def test_chat_streams_and_keeps_history(engine, paper):
    _, state = _upload(engine, paper)
    cleared, chat, state = app.start_turn(engine, "  What is zoo?  ", state)
    assert cleared == "" and chat == [{"role": "user", "content": "What is zoo?"}]
    frames = list(app.stream_answer(engine, state, "truncate-end", 64, 0.7, 0.9))
    answers = [f[-1]["content"] for f in frames if f[-1]["role"] == "assistant"]
    words = engine.answer.split(" ")
    assert len(answers) >= len(words)  # one frame per streamed update
    assert answers[0] == words[0] and answers[-1] == engine.answer
    assert all(answers[i + 1].startswith(answers[i]) for i in range(len(answers) - 1))  # cumulative
    call = engine.calls[-1]
    assert (call["strategy"], call["max_new_tokens"], call["temperature"], call["top_p"]) == (
        "truncate-end",
        64,
        0.7,
        0.9,
    )
    assert call["history"] is None and isinstance(call["stop_event"], threading.Event)

    frames, state = _ask_ui(engine, state, "And its limitations?")
    assert engine.calls[-1]["history"] == [
        {"role": "user", "content": "What is zoo?"},
        {"role": "assistant", "content": engine.answer},
    ]
    assert [m["role"] for m in frames[-1]] == ["user", "assistant", "user", "assistant"]
    assert engine.opened == 1  # one engine session per document: its cache is reused across turns


def test_pages_used_shown_only_when_document_did_not_fit(engine, paper):
    _, state = _upload(engine, paper)
    frames, _ = _ask_ui(engine, state, "What is zoo?")
    assert "pages used" not in frames[-1][-1]["content"]

    small = FakeEngine(context_length=1000)
    _, state = _upload(small, paper)
    frames, _ = _ask_ui(small, state, "What is zoo?")
    final = frames[-1][-1]["content"]
    assert final.startswith(small.answer) and "(pages 1-2, 5)" in final


def test_question_errors(engine, paper):
    with pytest.raises(gr.Error, match="Upload a PDF, TXT or MD document first"):
        app.start_turn(engine, "What is it about?", None)
    _, state = _upload(engine, paper)
    for empty in ("", "   ", None):
        with pytest.raises(gr.Error, match="type a question"):
            app.start_turn(engine, empty, state)
    assert state.turns == [] and engine.calls == []


def test_model_error_is_shown_and_app_keeps_serving(engine, paper):
    _, state = _upload(engine, paper)
    engine.fail_with = RuntimeError("CUDA out of memory")
    app.start_turn(engine, "What is zoo?", state)
    frames = []
    with pytest.raises(gr.Error, match="model failed while answering: CUDA out of memory") as info:
        for frame in app.stream_answer(engine, state):
            frames.append(frame)
    assert info.value.title == "Model error"
    assert "CUDA out of memory" in frames[-1][-1]["content"]  # the chat shows it too
    engine.fail_with = None
    frames, state = _ask_ui(engine, state, "Try again?")
    assert frames[-1][-1]["content"] == engine.answer
    assert engine.calls[-1]["history"] is None  # the failed turn is not fed back to the model


@pytest.mark.parametrize("where", ["at-the-call", "before-the-first-update"])
def test_model_error_before_the_first_word_is_shown_and_app_keeps_serving(engine, paper, where):
    """The engine fails before the answer's first word: when called (as QAEngine.ask's own checks do) or
    on its first update. The chat still gets a frame showing the error, a modal says so, the /ask API
    gives the same message, and the next question is answered."""
    _, state = _upload(engine, paper)
    message = "CUDA error: device-side assert triggered"
    if where == "at-the-call":

        def fail(*args, **kwargs):
            raise RuntimeError(message)

        engine.ask = fail  # this test's engine only
    else:
        engine.fail_with, engine.fail_at = RuntimeError(message), 0
    shown = f"**Error:** The model failed while answering: {message}"

    app.start_turn(engine, "What is zoo?", state)
    worker, frames, errors = _stream_in_thread(engine, state)
    worker.join(timeout=WAIT_S)
    assert not worker.is_alive(), f"stream_answer did not end within {WAIT_S} s of the engine failing"
    assert [frame[-1] for frame in frames] == [{"role": "assistant", "content": shown}], frames
    assert len(errors) == 1 and isinstance(errors[0], gr.Error), errors
    assert errors[0].title == "Model error" and message in errors[0].message
    turn = state.turns[-1]
    assert turn.done and turn.answer == "" and turn.error == shown.removeprefix("**Error:** ")

    values = []  # the API reports it the same way
    with pytest.raises(gr.Error, match=re.escape(message)):
        for text, _ in app.ask(engine, "And now?", state):
            values.append(text)
    assert values == [shown]

    vars(engine).pop("ask", None)  # the engine works again: the app still answers, without the failed turns
    engine.fail_with = None
    frames, state = _ask_ui(engine, state, "Try again?")
    assert frames[-1][-1]["content"] == engine.answer
    assert engine.calls[-1]["history"] is None


def test_engine_value_error_reaches_user(engine, paper):
    _, state = _upload(engine, paper)
    engine.fail_with = ValueError("the question alone is longer than the context; shorten it")
    app.start_turn(engine, "x" * 50, state)
    with pytest.raises(gr.Error, match="shorten it"):
        _drain(app.stream_answer(engine, state))


def test_example_questions_follow_material_type(engine, txt_file, paper):
    _, state = _upload(engine, paper)
    chat, state = app.start_example_turn(engine, "contributions", state)
    assert chat[-1]["content"] == "What are the main contributions and novelties of this paper?"
    _drain(app.stream_answer(engine, state))
    _, state = _upload(engine, txt_file)
    chat, state = app.start_example_turn(engine, "characters", state)
    assert chat[-1]["content"] == "Please describe the relationships among the main characters in the book."
    assert set(EXAMPLE_LABELS) == set(QUESTIONS_FOR["paper"] + QUESTIONS_FOR["book"])


def test_stop_stops_generation(engine, paper):
    slow = FakeEngine(answer=" ".join(f"w{i}" for i in range(200)), delay=0.01)
    _, state = _upload(slow, paper)
    app.start_turn(slow, "Go on and on", state)
    worker, frames, errors = _stream_in_thread(slow, state)
    _wait_for(lambda: frames or errors, "first frame of the answer")
    assert not errors, f"stream_answer failed before its first frame: {errors[0]!r}"
    chat = app.stop(state)
    worker.join(timeout=10)
    assert not worker.is_alive()
    turn = state.turns[-1]
    assert slow.calls[-1]["stop_event"].is_set()
    assert turn.stopped and turn.done and 0 < len(turn.answer.split()) < 200
    assert chat[-1]["content"].endswith("*(stopped)*")
    # the conversation goes on after a stop
    slow.delay, slow.answer = 0.0, "Short answer."
    frames, state = _ask_ui(slow, state, "Next?")
    assert frames[-1][-1]["content"] == "Short answer."


def test_waiting_for_another_answer_is_shown(engine, paper):
    engine.queued_first = True
    _, state = _upload(engine, paper)
    frames, _ = _ask_ui(engine, state, "What is zoo?")
    assert frames[0][-1]["content"] == "*Waiting for another answer to finish...*"
    assert frames[-1][-1]["content"] == engine.answer


def test_busy_while_answer_pending(engine, paper):
    _, state = _upload(engine, paper)
    app.start_turn(engine, "First?", state)
    with pytest.raises(gr.Error, match="still being written"):
        app.start_turn(engine, "Second?", state)


def test_clear_forgets_document_and_conversation(engine, paper):
    _, state = _upload(engine, paper)
    _ask_ui(engine, state, "What is zoo?")
    file_value, added_files, card, chat, question, material, new, *buttons = app.clear(state)
    assert file_value is None and added_files is None and card == EMPTY_CARD and chat == [] and question == ""
    assert new.document is None and new.turns == [] and state.stop_event.is_set()
    assert engine.closed == [state.session]
    with pytest.raises(gr.Error, match="Upload"):
        app.start_turn(engine, "Still there?", new)


def test_ask_api_generator_yields_cumulative_answer(engine):
    _, state = _upload(engine, PRIDE_AND_PREJUDICE)
    texts = [text for text, _ in app.ask(engine, "Who is Darcy?", state)]
    assert texts[-1].startswith(engine.answer) and all(
        texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1)
    )
    assert len(state.turns) == 1 and state.turns[0].done


# --------------------------------------------------------------------------------------------------
# Layout, API names, command line
# --------------------------------------------------------------------------------------------------


def test_every_event_has_an_api_name_and_the_public_api():
    demo = app.build_demo(FakeEngine())
    fns = list(demo.fns.values())
    assert fns and all(fn.api_name for fn in fns)
    public = {fn.api_name for fn in fns if fn.api_visibility == "public"}
    assert public == {
        "upload",
        "add_documents",
        "ask",
        "sources",
        "page",
        "page_of",
        "stop",
        "clear",
        "clear_chat",
        "status",
        "material_type",
        "card",
    }
    assert len({fn.api_name for fn in fns}) == len(fns)
    config = demo.get_config_file()
    assert "flag" not in str([c.get("props", {}).get("label") for c in config["components"]]).lower()
    assert demo.analytics_enabled is False and demo.delete_cache is not None


def test_page_config_does_not_hold_the_engine():
    # gradio deep-copies the page config on every page request: the engine (and its model) must not
    # be reachable from it, or each page load would copy the model.
    import copy

    engine = FakeEngine()
    demo = app.build_demo(engine)
    memo: dict = {}
    copy.deepcopy(demo.get_config_file(), memo)
    assert id(engine) not in memo


def test_nothing_loads_a_model_at_import():
    import subprocess
    import sys

    code = "import sys, app; print('longlora.qa' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(app.__file__).parent,
    ).stdout.split()
    assert out == ["False", "False"]


def test_parse_args_defaults_and_errors(capsys):
    args = parse_args([])
    assert (args.model, args.host, args.port, args.share, args.load_in_4bit) == (
        "default",
        "127.0.0.1",
        7860,
        False,
        False,
    )
    assert (args.context_length, args.max_new_tokens, args.concurrency) == (None, 512, 1)
    args = parse_args(
        [
            "--model",
            "./merged",
            "--context-length",
            "8192",
            "--load-in-4bit",
            "--port",
            "7861",
            "--max-new-tokens",
            "64",
            "--concurrency",
            "2",
            "--share",
        ]
    )
    assert (args.model, args.context_length, args.load_in_4bit, args.port, args.share) == (
        "./merged",
        8192,
        True,
        7861,
        True,
    )
    for bad, message in (
        (["--context-length", "0"], "--context-length: token length must be positive"),
        (["--concurrency", "0"], "--concurrency must be at least 1"),
        (["--max-new-tokens", "-1"], "--max-new-tokens must be positive"),
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)
        assert message in capsys.readouterr().err


def test_model_flags_are_the_shared_ones():
    args = parse_args(["--dtype", "float32", "--adapter", "out/adapter", "--context-length", "16k"])
    assert (args.dtype, args.adapter, args.context_length, args.device) == (
        "fp32",
        "out/adapter",
        16384,
        "auto",
    )


def test_usage_block_in_module_docstring():
    assert "Usage:" in app.__doc__ and "python app.py" in app.__doc__ and "/ask" in app.__doc__


# --------------------------------------------------------------------------------------------------
# A served app driven through gradio_client (fast: the small engine)
# --------------------------------------------------------------------------------------------------


def launch_with_retry(demo, attempts: int = 3, **launch_kwargs) -> str:
    """Launch on a free 127.0.0.1 port. On a heavily loaded machine gradio's self-check of
    localhost (one HEAD request with a 3 s timeout) can time out; launching again then works."""
    for attempt in range(attempts):
        try:
            _, url, _ = launch(demo, port=None, prevent_thread_lock=True, quiet=True, **launch_kwargs)
            return url
        except ValueError as exc:
            demo.close()
            if "localhost is not accessible" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    engine = FakeEngine(answer=" ".join(f"word{i}" for i in range(30)), delay=0.01)
    demo = app.build_demo(engine)
    url = launch_with_retry(demo)
    assert url.startswith("http://127.0.0.1:")
    try:
        yield engine, url, tmp_path / "gradio"
    finally:
        demo.close()


def test_client_session_upload_ask_follow_up_stop(paper, served):
    from gradio_client import Client, handle_file

    engine, url, upload_root = served
    client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
    card = client.predict(handle_file(str(paper)), api_name="/upload")
    assert isinstance(card, str) and "zoo-faq.pdf" in card and "15 pages" in card
    assert upload_root.is_dir()  # gradio received the upload there...
    assert not any(p.is_file() for p in upload_root.rglob("*.pdf"))  # ...and it was not kept

    job = client.submit("What is zoo?", api_name="/ask")
    answer = job.result(timeout=60)
    outputs = job.outputs()
    assert answer == engine.answer
    assert len(outputs) > 2 and all(outputs[i + 1].startswith(outputs[i]) for i in range(len(outputs) - 1))

    assert client.predict(api_name="/sources") == []  # the whole (fake) document fit: no passages
    engine.context_length = 1000  # now it does not fit: the answer is based on passages
    follow = client.predict("And what else?", api_name="/ask")
    assert follow.startswith(engine.answer) and "(pages 1-2, 5)" in follow
    assert client.predict(api_name="/sources") == [
        {"text": "Zoo is a package.", "pages": [1, 2], "score": 2.5, "document": ""},
        {"text": "Ends.", "pages": [5], "score": 1.0, "document": ""},
    ]
    assert engine.calls[-1]["history"][0] == {"role": "user", "content": "What is zoo?"}
    from PIL import Image
    from pypdf import PdfReader

    box = PdfReader(str(paper)).pages[4].mediabox
    with Image.open(client.predict(5, api_name="/page")) as image:  # a cited page, as an image file
        assert _is_page(image, float(box.width), float(box.height))
    with pytest.raises(Exception, match="zoo-faq.pdf has 15 pages; there is no page 99"):
        client.predict(99, api_name="/page")

    # another client is another session: no document there
    other = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
    with pytest.raises(Exception, match="Upload a PDF, TXT or MD document first"):
        other.predict("What is zoo?", api_name="/ask")
    with pytest.raises(Exception, match="type a question"):
        client.predict("   ", api_name="/ask")

    # stop from the API: the engine sees the stop event and the answer ends early
    engine.delay = 0.2
    job = client.submit("Long answer please", api_name="/ask")
    _wait_for(lambda: job.outputs() or job.done(), "first output of /ask")
    assert job.outputs(), f"/ask ended without output: {job.exception()!r}"
    client.predict(api_name="/stop")
    job.result(timeout=30)
    assert engine.calls[-1]["stop_event"].is_set()
    assert len(job.outputs()[-1].split()) < 30

    status = client.predict(api_name="/status")
    assert status[0].startswith("**Model ready:** the bundled SmolLM2")


def test_client_sees_a_model_error_before_the_first_word(paper, served):
    from gradio_client import Client, handle_file

    engine, url, _ = served
    client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
    client.predict(handle_file(str(paper)), api_name="/upload")
    engine.fail_with, engine.fail_at = RuntimeError("CUDA error: device-side assert triggered"), 0
    job = client.submit("What is zoo?", api_name="/ask")
    with pytest.raises(Exception, match="model failed while answering: CUDA error: device-side assert"):
        job.result(timeout=WAIT_S)  # a TimeoutError (a failure, not a hang) if the error never arrives
    engine.fail_with = None
    assert client.predict("Again?", api_name="/ask") == engine.answer


def test_clear_chat_keeps_the_document(engine, paper):
    _, state = _upload(engine, paper)
    _ask_ui(engine, state, "What is zoo?")
    chat, same = app.clear_chat(state)
    assert chat == [] and same is state and state.turns == [] and state.document is not None
    frames, state = _ask_ui(engine, state, "Again?")
    assert engine.calls[-1]["history"] is None and frames[-1][-1]["content"] == engine.answer


def test_sources_under_the_answer_and_from_the_api(paper):
    small = FakeEngine(context_length=1000)
    _, state = _upload(small, paper)
    assert app.sources(state) == []  # nothing answered yet
    frames, state = _ask_ui(small, state, "What is zoo?")
    final = frames[-1][-1]["content"]
    assert "<details><summary>Sources: 2 passages</summary>" in final
    assert "1. (p. 1, 2) Zoo is a package." in final and "2. (p. 5) Ends." in final
    assert app.sources(state) == [
        {"text": "Zoo is a package.", "pages": [1, 2], "score": 2.5, "document": ""},
        {"text": "Ends.", "pages": [5], "score": 1.0, "document": ""},
    ]
    answers = list(app.ask(small, "And then?", state))
    assert "<details>" not in answers[-1][0]  # /ask keeps its plain answer text


# --------------------------------------------------------------------------------------------------
# Opening a cited page
# --------------------------------------------------------------------------------------------------


def _is_page(image, width_pt, height_pt=792) -> bool:
    """A rendered page of that size in points (at the app's scale), with something printed on it."""
    from webapp.pages import RENDER_SCALE

    size_ok = all(abs(px - pt * RENDER_SCALE) <= 1 for px, pt in zip(image.size, (width_pt, height_pt)))
    return size_ok and image.convert("L").getextrema()[0] < 128


def test_show_page_renders_the_asked_page(engine, tmp_path, monkeypatch):
    # uploaded through gradio's folder: that file is deleted, and the session's private copy renders
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    uploaded = tmp_path / "gradio" / "0123abcd" / "faq.pdf"
    uploaded.parent.mkdir(parents=True)
    _three_page_pdf(uploaded)
    _, state = _upload(engine, uploaded)
    assert not uploaded.exists()
    for number, width in enumerate(PAGE_WIDTHS, start=1):
        shown = show_page(number, state)
        assert _is_page(shown["value"], width), (number, shown["value"].size)
        assert shown["visible"] and shown["label"].startswith(f"faq.pdf: page {number} of 3")
    assert "not readable" in show_page(2, state)["label"]  # the garbled page: the model skips it
    assert "not readable" not in show_page(3, state)["label"]
    assert _is_page(page_image(3.0, state), PAGE_WIDTHS[2])  # /page: gr.Number may send floats


def test_show_page_refuses_clearly(engine, tmp_path, txt_file):
    _, state = _upload(engine, _three_page_pdf(tmp_path / "faq.pdf"))
    for page, message in [
        (4, "faq.pdf has 3 pages; there is no page 4. Pick a page from 1 to 3."),
        (0, "faq.pdf has 3 pages; there is no page 0."),
        (1.5, "Pick a page number from 1 to 3; got 1.5."),
        (None, "Pick a page number from 1 to 3; got None."),
    ]:
        with pytest.raises(gr.Error, match=re.escape(message)) as info:
            show_page(page, state)
        assert info.value.visible and info.value.print_exception is False
    _, text_state = _upload(engine, txt_file)
    with pytest.raises(gr.Error, match="notes.txt is a plain-text document: it has no pages to show"):
        show_page(1, text_state)
    for empty in (None, ChatState()):
        with pytest.raises(gr.Error, match="Upload a PDF first"):
            show_page(1, empty)


def test_private_pdf_copy_lives_as_long_as_the_document(engine, tmp_path, txt_file):
    path = _three_page_pdf(tmp_path / "faq.pdf")
    _, state = _upload(engine, path)
    copy = Path(state.pdf.path)
    assert copy.read_bytes() == path.read_bytes() and copy.parent != path.parent
    with pytest.raises(gr.Error):  # a failed upload keeps the current document and its copy
        _upload(engine, _blank_pdf(tmp_path / "scan.pdf"), state)
    assert copy.exists()
    _, state = _upload(engine, path, state)  # a new upload deletes the old copy
    assert not copy.parent.exists() and state.pdf is not None
    copy = Path(state.pdf.path)
    app.clear(state)  # New document deletes it
    assert not copy.parent.exists()
    _, state = _upload(engine, path)
    copy = Path(state.pdf.path)
    release_state(state)  # so does the end of the browser session (gr.State's delete_callback)
    assert not copy.parent.exists()
    with pytest.raises(gr.Error, match="faq.pdf is no longer kept by the app; upload it again"):
        show_page(1, ChatState(document=state.document))
    _, text_state = _upload(engine, txt_file)
    assert text_state.pdf is None  # plain text has no pages to keep


def test_cited_pages_are_listed_after_each_answer(txt_file, paper):
    small = FakeEngine(context_length=1000)  # the PDF does not fit: answers cite pages 1, 2 and 5
    _, state = _upload(small, paper)
    picker, image = page_picker(state)
    assert picker["choices"] == [] and picker["interactive"] is False and image["visible"] is False
    assert picker["info"] == PAGE_PICK_HELP["none"]
    frames, state = _ask_ui(small, state, "What is zoo?")
    assert "1. (p. 1, 2) Zoo is a package." in frames[-1][-1]["content"]
    picker, image = page_picker(state)
    assert picker["choices"] == [("Page 1 (source 1)", 1), ("Page 2 (source 1)", 2), ("Page 5 (source 2)", 5)]
    assert picker["interactive"] is True and picker["value"] is None and image == gr.skip()
    from pypdf import PdfReader

    box = PdfReader(str(paper)).pages[4].mediabox  # page 5's size, read without PDFium
    assert _is_page(show_page(5, state)["value"], float(box.width), float(box.height))
    chat, state = app.clear_chat(state)  # the conversation is gone: so are its pages
    picker, image = page_picker(state)
    assert picker["choices"] == [] and image["visible"] is False
    _, text_state = _upload(small, txt_file)
    _ask_ui(small, text_state, "Who is Darcy?")
    picker, _ = page_picker(text_state)
    assert picker["choices"] == [] and picker["info"] == PAGE_PICK_HELP["text"]


# --------------------------------------------------------------------------------------------------
# The engine protocol: the real engine, the background loader and the fake above agree
# --------------------------------------------------------------------------------------------------


def _parameters(function) -> list[tuple]:
    params = list(inspect.signature(function).parameters.values())[1:]  # without self
    return [(p.name, p.kind, p.default) for p in params]


@pytest.mark.parametrize("engine_class", [QAEngine, BackgroundEngine, FakeEngine])
def test_engines_satisfy_the_protocol(engine_class):
    for name in PROTOCOL_METHODS:
        assert _parameters(getattr(engine_class, name)) == _parameters(getattr(QAEngineLike, name)), name
    if engine_class is QAEngine:
        engine = QAEngine(model=tiny_model(), tokenizer=make_char_tokenizer(), max_new_tokens=4)
    elif engine_class is BackgroundEngine:
        engine = BackgroundEngine(
            lambda status: QAEngine(model=tiny_model(), tokenizer=make_char_tokenizer())
        )
        engine.wait_ready(timeout=60)
    else:
        engine = FakeEngine()
    assert isinstance(engine, QAEngineLike)
    assert all(hasattr(engine, name) for name in PROTOCOL_ATTRIBUTES)
    assert engine.state == "ready" and engine.context_length > 0
