"""Ask questions about a long document (PDF, TXT, MD), or several together, in the browser: a thin
Gradio shell over ``longlora.qa.QAEngine``.

Usage:
    python app.py                                   # bundled SmolLM2-135M-Instruct on CPU, http://127.0.0.1:7860
    python app.py --max-new-tokens 256 --port 7861
    python app.py --model path/to/merged-longlora-model --context-length 32768
    python app.py --model path/to/adapter-dir --load-in-4bit --concurrency 2

The page comes up at once; the model loads (or, on the first run, is converted from the bundled
GGUF file) in the background and the status line says so until it is ready. Upload a document,
check its card (pages, words, tokens, whether it fits the model's context and which strategy will
be used, pages the model cannot read), then chat about it: answers stream in with the passages they
are based on, a cited page opens as an image under the chat, the stop button stops generation, and
example questions from the LongLoRA paper (B.6) are one click away. *Add documents* puts more files
(up to 20 in all) in the same session: each question is answered from the passages of all of them
(or from all of them whole, when they fit together), and every source names its document and page.

Every event has an ``api_name``, so the app also works from ``gradio_client``:

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    card = client.predict(handle_file("paper.pdf"), api_name="/upload")       # the document card (markdown)
    answer = client.predict("What are the main contributions?", api_name="/ask")  # the final answer text
    sources = client.predict(api_name="/sources")  # the last answer's passages: text, pages, score, document
    image = client.predict(sources[0]["pages"][0], api_name="/page")  # a cited page, as an image file
    card = client.predict([handle_file("other.pdf")], api_name="/add_documents")  # ask both together
    image = client.predict("other.pdf", 3, api_name="/page_of")  # page 3 of a named document

State is per browser session (``gr.State``); uploaded files are deleted as soon as their text is
extracted, so the document lives only in the session (a PDF also as a private copy in a temporary
folder, for the page view, deleted with the session). Nothing here loads a model at import time.

This file holds the event handlers, their wiring and the command line; the layout, the session
state, the Markdown and the background loading live in the ``webapp`` package beside this file
(outside ``longlora``, whose import loads transformers: the page must come up before the model).
"""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import Any

import gradio as gr

from data_tools.prompts import QUESTIONS_FOR, guess_material_type
from webapp.cards import (
    EMPTY_CARD,
    card_markdown,
    pending_card_markdown,
    pending_documents_markdown,
    status_markdown,
)
from webapp.chat import (
    ChatState,
    Turn,
    chat_messages,
    display_answer,
    engine_history,
    example_question,
    example_visibility,
    fit_note,
    last_sources,
    release_state,
)
from webapp.files import PdfCopy, discard_upload
from webapp.layout import build_layout
from webapp.pages import refresh_pages, wire_pages
from webapp.server import DEFAULT_CONCURRENCY, LIGHT, launch, parse_args


def _state(state: ChatState | None) -> ChatState:
    return state if state is not None else ChatState()


def _user_error(message: str, title: str) -> gr.Error:
    """A visible message about the user's input (no server-side traceback: nothing is broken)."""
    return gr.Error(message, title=title, print_exception=False)


LOAD_POLL_S = 0.25  # how often a request waiting for the model looks at the loader's progress


def _require_model(engine) -> None:
    """Raise a visible error when the model failed to load (a request made while it loads waits)."""
    if engine.state == "error":
        raise gr.Error(status_markdown(engine), title="Model unavailable")


def _loading_messages(engine, stop_event: threading.Event | None = None):
    """While the model loads: yield its status message whenever it changes (and at least every few
    seconds), waiting in between. Returns once it is ready or failed, or ``stop_event`` is set."""
    shown, since = None, 0.0
    while engine.state == "loading" and not (stop_event is not None and stop_event.is_set()):
        message = engine.status_message or "Loading the model..."
        if message != shown or since >= 5.0:
            shown, since = message, 0.0
            yield message
        time.sleep(LOAD_POLL_S)
        since += LOAD_POLL_S


def _open_session(engine, state: ChatState, strategy: str, material_type: str | None = None) -> str:
    """Open the engine session for the state's documents and return the card markdown.

    ``material_type=None`` lets the engine guess it from the (first) document.
    """
    try:
        if state.close is not None:  # re-opened (material type changed, documents added): free the old cache
            state.close()
        documents = state.documents
        if len(documents) > 1:
            state.session = engine.open_documents(documents, material_type=material_type)
        else:
            state.session = engine.open_document(state.document, material_type=material_type)
        state.close = partial(engine.close_session, state.session)
        state.material_type = state.session.material_type
        return card_markdown(engine.card(state.session, strategy))
    except ValueError as exc:
        raise _user_error(str(exc), title="Cannot open the document") from exc
    except Exception as exc:  # a model/tokenizer failure must not take the app down
        raise gr.Error(f"The model could not process the document: {exc}", title="Model error") from exc


# --------------------------------------------------------------------------------------------------
# Handlers (module level, testable without a server; build_demo binds the engine)
# --------------------------------------------------------------------------------------------------


def upload_document(
    engine, file_path: str | None, state: ChatState | None, strategy: str = "retrieve", progress=gr.Progress()
):
    """A file -> (document card markdown, new session state). A new upload starts a new conversation.

    Sent while the model loads, the upload waits for it (the loader's progress shows in the browser) and
    returns the full card; only a model that failed to load leaves a card pending."""
    from data_tools import DocumentError, load_document

    if not file_path:
        raise _user_error("Choose a PDF, TXT or MD file to upload.", title="No file")
    try:
        document = load_document(file_path)
        pdf = PdfCopy(file_path) if document.kind == "pdf" else None  # for the page view
    except DocumentError as exc:
        raise _user_error(str(exc), title="Cannot read this file") from exc
    finally:
        discard_upload(file_path)
    release_state(state)  # an answer still streaming about the old document stops
    # The material type is guessed once, here (data_tools.prompts' rule, the engine's too), whether or not
    # the model is ready; the session is opened with it now or when the model is ready (poll_status).
    new = ChatState(document=document, pdf=pdf, material_type=guess_material_type(document))
    for message in _loading_messages(engine):
        progress(None, desc=f"Waiting for the model: {message}")
    if engine.state == "ready":
        card = _open_session(engine, new, strategy, new.material_type)
    else:
        card = pending_card_markdown(document)
    return card, new


def add_documents(
    engine, file_paths, state: ChatState | None, strategy: str = "retrieve", progress=gr.Progress()
):
    """Files -> (card markdown, session state): they join the session's documents (up to
    ``MAX_DOCUMENTS`` in all), asked about together; the conversation goes on. With no document
    yet, the first file starts the session as an upload does. A file that cannot be read, one more
    than the limit, or a name already in the session adds nothing and says why."""
    from data_tools import DocumentError, load_document
    from longlora.retrieval import MAX_DOCUMENTS

    paths = [file_paths] if isinstance(file_paths, str) else [p for p in file_paths or [] if p]
    if not paths:
        raise _user_error("Choose one or more PDF, TXT or MD files to add.", title="No file")
    have = state.documents if state is not None else []
    loaded: list[tuple] = []
    try:
        if len(have) + len(paths) > MAX_DOCUMENTS:
            raise _user_error(
                f"A session holds at most {MAX_DOCUMENTS} documents: this one has {len(have)} and "
                f"{len(paths)} more were added. Add at most {MAX_DOCUMENTS - len(have)}, or press New "
                "document to start again.",
                title="Too many documents",
            )
        names = {document.name for document in have}
        for path in paths:
            document = load_document(path)
            if document.name in names:
                raise _user_error(
                    f"{document.name} is already in this session; rename one of the two files to ask "
                    "about both (sources name a document by its file name).",
                    title="Same name twice",
                )
            names.add(document.name)
            loaded.append((document, PdfCopy(path) if document.kind == "pdf" else None))
    except (DocumentError, gr.Error) as exc:
        for _, pdf in loaded:
            if pdf is not None:
                pdf.close()
        if isinstance(exc, gr.Error):
            raise
        raise _user_error(str(exc), title="Cannot read this file") from exc
    finally:
        for path in paths:
            discard_upload(path)
    if not have:  # the first documents: a new session, as an upload starts one
        release_state(state)
        (first, pdf), *rest = loaded
        state = ChatState(document=first, pdf=pdf, material_type=guess_material_type(first), added=rest)
    else:
        state.added.extend(loaded)
    for message in _loading_messages(engine):
        progress(None, desc=f"Waiting for the model: {message}")
    if engine.state != "ready":
        return pending_documents_markdown(state.documents), state
    try:
        return _open_session(engine, state, strategy, state.material_type), state
    except gr.Error:
        if have:  # the session goes on with the documents it had
            del state.added[len(state.added) - len(loaded) :]
            for _, pdf in loaded:
                if pdf is not None:
                    pdf.close()
        raise


def after_upload(state: ChatState | None):
    """UI refresh after an upload: material type, empty chat, matching example questions."""
    state = _state(state)
    return (
        gr.update(value=state.material_type),
        chat_messages(state),
        *[gr.update(visible=v) for v in example_visibility(state.material_type)],
    )


def set_material_type(engine, material_type: str, state: ChatState | None, strategy: str = "retrieve"):
    """The user corrected the material type: the prompt and the card follow."""
    state = _state(state)
    if material_type not in QUESTIONS_FOR:
        raise _user_error(
            f"Unknown material type {material_type!r}; choose paper, book or other.", title="Material type"
        )
    state.material_type = material_type
    if state.document is None:
        card = EMPTY_CARD
    elif engine.state == "ready":
        card = _open_session(engine, state, strategy, material_type)
    else:
        card = pending_documents_markdown(state.documents)
    return (card, state, *[gr.update(visible=v) for v in example_visibility(material_type)])


def refresh_card(engine, state: ChatState | None, strategy: str = "retrieve") -> str:
    """The card again (e.g. after the strategy changed)."""
    if state is None or state.document is None:
        return EMPTY_CARD
    if state.session is None:
        return pending_documents_markdown(state.documents)
    return card_markdown(engine.card(state.session, strategy))


def poll_status(engine, state: ChatState | None, strategy: str = "retrieve"):
    """Timer tick: the status line; opens a document uploaded while the model was loading.

    Returns (status markdown, timer update, card, state); the timer stops once the model is
    ready or failed.
    """
    status = status_markdown(engine)
    settled = engine.state in ("ready", "error")
    card: Any = gr.skip()
    if engine.state == "ready" and state is not None and state.document is not None and state.session is None:
        card = _open_session(engine, state, strategy, state.material_type)
    return status, gr.Timer(active=not settled), card, state


def start_turn(engine, question: str, state: ChatState | None):
    """Validate a question and add it to the conversation; returns (cleared textbox, chat, state)."""
    state = _state(state)
    _begin_turn(engine, question, state)
    return "", chat_messages(state), state


def start_example_turn(engine, key: str, state: ChatState | None):
    """One click on an example question: the question, worded for the material type, is asked."""
    state = _state(state)
    _begin_turn(engine, example_question(key, state.material_type), state)
    return chat_messages(state), state


def _begin_turn(engine, question: str | None, state: ChatState) -> Turn:
    question = (question or "").strip()
    if not question:
        raise _user_error("Please type a question about the document first.", title="Empty question")
    if state.document is None:
        raise _user_error("Upload a PDF, TXT or MD document first, then ask about it.", title="No document")
    _require_model(engine)  # a loading model is waited for when the answer streams (_stream_turn)
    if state.session is None and engine.state == "ready":  # uploaded while the model was loading
        _open_session(engine, state, "retrieve", state.material_type)
    if state.turns and not state.turns[-1].done:
        raise _user_error("An answer is still being written; press Stop or wait for it.", title="Busy")
    turn = Turn(question=question)
    state.turns.append(turn)
    return turn


def _stream_turn(engine, state: ChatState, turn: Turn, strategy, max_new_tokens, temperature, top_p):
    """Run the engine on one turn, updating it in place; yields after every update.

    Errors end up in the turn (so the chat shows them) and are raised as gr.Error (so a modal shows
    them too); the app keeps serving.
    """
    state.stop_event = stop_event = threading.Event()  # local: a later turn gets its own
    history = engine_history([t for t in state.turns if t is not turn])
    try:
        for message in _loading_messages(engine, stop_event):  # asked while the model loads: wait
            turn.status = f"Waiting for the model to load: {message}"
            yield turn
        turn.status = ""
        if stop_event.is_set():
            turn.stopped = turn.done = True
            yield turn
            return
        _require_model(engine)
        if state.session is None:  # the document was uploaded before the model was ready
            _open_session(engine, state, strategy or "retrieve", state.material_type)
        updates = engine.ask(
            state.session,
            turn.question,
            history=history or None,
            strategy=strategy or "retrieve",
            max_new_tokens=int(max_new_tokens) if max_new_tokens else None,
            temperature=float(temperature if temperature is not None else 0.0),
            top_p=float(top_p if top_p is not None else 1.0),
            stop_event=stop_event,
        )
        for update in updates:
            turn.answer = update.text
            turn.waiting = bool(getattr(update, "queued", False))
            turn.status = getattr(update, "status", "")  # e.g. readings being compared, before any text
            if update.done:
                turn.stopped = bool(update.stopped)
                turn.note = fit_note(update.fit)
                turn.sources = list(update.fit.sources)
                turn.name_documents = len(state.documents) > 1
                turn.done = True
            yield turn
    except gr.Error as exc:  # the model failed to load, or the document cannot be opened
        turn.error, turn.done = str(exc.message), True
        yield turn
        raise
    except ValueError as exc:
        turn.error, turn.done = str(exc), True
        yield turn
        raise _user_error(str(exc), title="Cannot answer") from exc
    except Exception as exc:
        turn.error, turn.done = f"The model failed while answering: {exc}", True
        yield turn
        raise gr.Error(turn.error, title="Model error") from exc
    finally:
        turn.done = True
    if stop_event.is_set():
        turn.stopped = True


def stream_answer(
    engine, state: ChatState | None, strategy="retrieve", max_new_tokens=None, temperature=0.0, top_p=1.0
):
    """Stream the answer to the pending question into the chat (yields chat messages)."""
    if state is None or not state.turns or state.turns[-1].done:
        return
    turn = state.turns[-1]
    for _ in _stream_turn(engine, state, turn, strategy, max_new_tokens, temperature, top_p):
        yield chat_messages(state)
    yield chat_messages(state)


def ask(
    engine,
    question: str,
    state: ChatState | None,
    strategy="retrieve",
    max_new_tokens=None,
    temperature=0.0,
    top_p=1.0,
):
    """API: a question about the uploaded document -> the answer, streamed (cumulative text).

    The final value also carries the pages used when the document did not fit whole.
    """
    state = _state(state)
    turn = _begin_turn(engine, question, state)
    for _ in _stream_turn(engine, state, turn, strategy, max_new_tokens, temperature, top_p):
        yield display_answer(turn) if turn.done else turn.answer, state


def stop(state: ChatState | None):
    """Stop the answer being written (the engine sees the stop event) and show it as stopped."""
    if state is not None:
        state.stop_event.set()
        if state.turns and not state.turns[-1].done:
            state.turns[-1].stopped = True
            state.turns[-1].done = True
    return chat_messages(state)


def clear_chat(state: ChatState | None):
    """Forget the conversation but keep the document (the chat's trash button)."""
    if state is not None:
        state.stop_event.set()
        state.turns = []
    return chat_messages(state), state


def sources(state: ChatState | None) -> list[dict]:
    """API: the passages the last finished answer was based on: [{"text", "pages", "score", "document"}].

    ``pages`` are 1-based for PDFs and empty for plain text; ``score`` is the BM25 score for the
    question (None when the passage was kept by truncation or the whole document fits);
    ``document`` is the name of the document the passage comes from.
    """
    return [source.to_dict() for source in last_sources(state)]


def clear(state: ChatState | None):
    """New document: stop anything running and forget the document and the conversation."""
    release_state(state)
    new = ChatState()
    return (
        None,
        None,
        EMPTY_CARD,
        [],
        "",
        gr.update(value=new.material_type),
        new,
        *[gr.update(visible=v) for v in example_visibility(new.material_type)],
    )


# --------------------------------------------------------------------------------------------------
# Event wiring (the layout is webapp.layout)
# --------------------------------------------------------------------------------------------------


def build_demo(engine, *, max_new_tokens: int = 512, concurrency: int = DEFAULT_CONCURRENCY) -> gr.Blocks:
    """The Blocks app for one engine. Generation events share one concurrency group."""
    with gr.Blocks(
        title="LongLoRA: ask a long document", analytics_enabled=False, delete_cache=(600, 3600)
    ) as demo:
        state = gr.State(None, delete_callback=release_state)
        ui = build_layout(status_markdown(engine), max_new_tokens)
        gen = dict(concurrency_id="generate", concurrency_limit=concurrency)
        _wire_document(demo, engine, ui, state)
        streams = _wire_questions(engine, ui, state, gen)
        _wire_controls(ui, state, cancels=streams)
        wire_pages(ui, state)
    return demo


def _wire_document(demo: gr.Blocks, engine, ui, state: gr.State) -> None:
    """Model status, upload -> card (public API), material type and strategy changes."""
    demo.load(
        partial(status_markdown, engine),
        None,
        [ui.status],
        api_name="status_on_load",
        api_visibility="private",
        **LIGHT,
    )
    ui.timer.tick(
        partial(poll_status, engine),
        [state, ui.strategy],
        [ui.status, ui.timer, ui.card, state],
        api_name="status",
        **LIGHT,
    )
    ui.upload.upload(
        partial(upload_document, engine),
        [ui.upload, state, ui.strategy],
        [ui.card, state],
        api_name="upload",
        concurrency_id="document",
    ).success(
        after_upload,
        [state],
        [ui.material, ui.chatbot, *ui.example_buttons.values()],
        api_name="after_upload",
        api_visibility="private",
        **LIGHT,
    ).then(**refresh_pages(ui, state, "upload"))
    ui.add_docs.upload(
        partial(add_documents, engine),
        [ui.add_docs, state, ui.strategy],
        [ui.card, state],
        api_name="add_documents",
        concurrency_id="document",
    ).success(
        after_upload,
        [state],
        [ui.material, ui.chatbot, *ui.example_buttons.values()],
        api_name="after_add_documents",
        api_visibility="private",
        **LIGHT,
    ).then(
        # the files are in the session now: the box is ready for the next ones
        lambda: None,
        None,
        [ui.add_docs],
        api_name="add_documents_done",
        api_visibility="private",
        **LIGHT,
    ).then(**refresh_pages(ui, state, "add_documents"))
    ui.material.input(
        partial(set_material_type, engine),
        [ui.material, state, ui.strategy],
        [ui.card, state, *ui.example_buttons.values()],
        api_name="material_type",
        concurrency_id="document",
    )
    ui.strategy.input(
        partial(refresh_card, engine), [state, ui.strategy], [ui.card], api_name="card", **LIGHT
    )


def _wire_questions(engine, ui, state: gr.State, gen: dict) -> list:
    """Questions from the page (box, button, examples) and from the API; returns the answer events."""
    settings = [ui.strategy, ui.max_tokens, ui.temperature, ui.top_p]

    def start_then_stream(trigger, start, inputs, outputs, name):
        # add the question to the chat (quick), then stream its answer (one model: the gen queue),
        # then list the pages its sources cite
        stream = trigger(start, inputs, outputs, api_name=name, api_visibility="private", **LIGHT).success(
            partial(stream_answer, engine),
            [state, *settings],
            [ui.chatbot],
            api_name=f"{name}_answer",
            api_visibility="private",
            **gen,
        )
        stream.then(**refresh_pages(ui, state, name))
        return stream

    typed = [ui.question, state], [ui.question, ui.chatbot, state]
    streams = [
        start_then_stream(ui.question.submit, partial(start_turn, engine), *typed, "submit_question"),
        start_then_stream(ui.ask_btn.click, partial(start_turn, engine), *typed, "ask_button"),
    ]
    for key, button in ui.example_buttons.items():
        start = partial(start_example_turn, engine, key)
        streams.append(start_then_stream(button.click, start, [state], [ui.chatbot, state], f"example_{key}"))
    # Ask from gradio_client: question -> streamed answer text, in this client's session.
    streams.append(
        gr.on(
            triggers=[],
            fn=partial(ask, engine),
            inputs=[ui.question, state, *settings],
            outputs=[ui.answer_text, state],
            api_name="ask",
            **gen,
        )
    )
    gr.on(triggers=[], fn=sources, inputs=[state], outputs=[ui.sources_json], api_name="sources", **LIGHT)
    return streams


def _wire_controls(ui, state: gr.State, cancels: list) -> None:
    """Stop, New document, the chat's trash button and clearing the upload."""
    everything = [
        ui.upload,
        ui.add_docs,
        ui.card,
        ui.chatbot,
        ui.question,
        ui.material,
        state,
        *ui.example_buttons.values(),
    ]
    ui.stop_btn.click(stop, [state], [ui.chatbot], api_name="stop", cancels=cancels, **LIGHT).then(
        **refresh_pages(ui, state, "stop")
    )
    ui.new_doc.click(clear, [state], everything, api_name="clear", cancels=cancels, **LIGHT).then(
        **refresh_pages(ui, state, "clear")
    )
    ui.chatbot.clear(
        clear_chat, [state], [ui.chatbot, state], api_name="clear_chat", cancels=cancels, **LIGHT
    ).then(**refresh_pages(ui, state, "clear_chat"))
    ui.upload.clear(
        clear, [state], everything, api_name="clear_upload", api_visibility="private", **LIGHT
    ).then(**refresh_pages(ui, state, "clear_upload"))


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from webapp.loading import BackgroundEngine

    # the page comes up now and shows the loading status
    engine = BackgroundEngine.from_args(args, max_new_tokens=args.max_new_tokens)
    demo = build_demo(engine, max_new_tokens=args.max_new_tokens, concurrency=args.concurrency)
    launch(
        demo,
        host=args.host,
        port=args.port,
        share=args.share,
        concurrency=args.concurrency,
        max_upload_mb=args.max_upload_mb,
    )


if __name__ == "__main__":
    main()
