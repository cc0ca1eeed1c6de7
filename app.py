"""Ask questions about a long document (PDF, TXT, MD) in the browser: a thin Gradio shell over
``longlora.qa.QAEngine``.

Usage:
    python app.py                                   # bundled SmolLM2-135M-Instruct on CPU, http://127.0.0.1:7860
    python app.py --max-new-tokens 256 --port 7861
    python app.py --model path/to/merged-longlora-model --context-length 32768
    python app.py --model path/to/adapter-dir --load-in-4bit --concurrency 2

The page comes up at once; the model loads (or, on the first run, is converted from the bundled
GGUF file) in the background and the status line says so until it is ready. Upload a document,
check its card (pages, words, tokens, whether it fits the model's context and which strategy will
be used), then chat about it: answers stream in, the stop button stops generation, and example
questions from the LongLoRA paper (B.6) are one click away.

Every event has an ``api_name``, so the app also works from ``gradio_client``:

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    card = client.predict(handle_file("paper.pdf"), api_name="/upload")       # the document card (markdown)
    answer = client.predict("What are the main contributions?", api_name="/ask")  # the final answer text

State is per browser session (``gr.State``); uploaded files are deleted as soon as their text is
extracted, so the document lives only in the session. Nothing here loads a model at import time.
"""

from __future__ import annotations

import argparse
import os
import threading
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import gradio as gr

from data_tools.prompts import QUESTIONS_FOR, template_question

STRATEGIES = ("retrieve", "truncate-middle", "truncate-end")
STRATEGY_HELP = (
    "How a document longer than the model's context is cut down: 'retrieve' keeps the passages most "
    "related to the question, 'truncate-middle' keeps the beginning and the end, 'truncate-end' keeps "
    "the beginning."
)
MATERIAL_CHOICES = [("Paper", "paper"), ("Book", "book"), ("Other", "other")]

# Button labels for the paper's example questions (data_tools.prompts.QUESTION_TEMPLATES keys).
EXAMPLE_LABELS: dict[str, str] = {
    "summary": "Summarize in one paragraph",
    "contributions": "Main contributions and novelties",
    "limitations": "Limitations",
    "characters": "Relationships among the characters",
    "importance": "Why the main character matters",
}

EMPTY_CARD = "*No document yet.* Upload a PDF, TXT or MD file to start."
DEFAULT_CONCURRENCY = 1


# --------------------------------------------------------------------------------------------------
# Per-session state
# --------------------------------------------------------------------------------------------------


@dataclass
class Turn:
    """One question and its (possibly partial) answer."""

    question: str
    answer: str = ""
    note: str = ""  # e.g. which pages were used when the document did not fit whole
    done: bool = False
    stopped: bool = False
    error: str = ""
    waiting: bool = False  # queued behind another answer (one model serves every session)


@dataclass
class ChatState:
    """Everything one browser session knows: the document, its engine session and the conversation.

    Lives in a ``gr.State`` (never in a global); gradio keeps it by reference, so the stop handler
    sees the same ``stop_event`` as the answer that is streaming.
    """

    document: Any = None  # data_tools.Document
    session: Any = None  # longlora.qa.DocumentSession, None until the model is ready
    material_type: str = "other"
    turns: list[Turn] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    close: Any = None  # frees the engine's cached prompt for this document (engine.close_session)


def _state(state: ChatState | None) -> ChatState:
    return state if state is not None else ChatState()


def release_state(state: ChatState | None) -> None:
    """Stop the session's answer and free the engine's cached prompt for its document.

    Called on a new upload, on New document, and by gradio when the browser session ends. It takes
    no engine on purpose: gradio deep-copies the page config (which holds this callback) on every
    page request, and a callback bound to the engine would copy the whole model each time.
    """
    if state is None:
        return
    state.stop_event.set()
    if state.close is not None:
        state.close()
        state.close = None


# --------------------------------------------------------------------------------------------------
# Pure helpers (no gradio events)
# --------------------------------------------------------------------------------------------------


def status_markdown(engine) -> str:
    """The status line: loading / converting, ready, or the load error."""
    message = getattr(engine, "status_message", "") or ""
    if engine.state == "ready":
        spec = getattr(engine, "model_spec", None)
        name = "the bundled SmolLM2-135M-Instruct" if spec in (None, "default") else f"`{spec}`"
        context = getattr(engine, "context_length", 0)
        return f"**Model ready:** {name}" + (f", context {context:,} tokens." if context else ".")
    if engine.state == "error":
        return (
            f"**The model failed to load:** {message} "
            "Restart the app with a different `--model` (a local folder, a merged model or an adapter)."
        )
    return f"**Loading the model...** {message or 'Please wait.'}"


def _user_error(message: str, title: str) -> gr.Error:
    """A visible message about the user's input (no server-side traceback: nothing is broken)."""
    return gr.Error(message, title=title, print_exception=False)


def _require_model(engine) -> None:
    """Raise a visible error instead of blocking while the model loads or after it failed to."""
    if engine.state == "loading":
        raise _user_error(
            f"The model is still loading ({engine.status_message or 'please wait'}). "
            "Try again when the status line says the model is ready.",
            title="Model not ready",
        )
    if engine.state == "error":
        raise gr.Error(status_markdown(engine), title="Model unavailable")


def pending_card_markdown(document) -> str:
    """Card for a document whose tokens cannot be counted yet (the model is still loading)."""
    pages = document.num_pages
    lines = [
        f"### {document.name}",
        f"- **Type:** {document.kind}" + (f", {pages} pages" if pages else ""),
        f"- **Words:** {document.word_count:,}",
        "- **Tokens:** counted when the model is ready...",
    ]
    return "\n".join(lines)


def chat_messages(state: ChatState | None) -> list[dict[str, str]]:
    """The conversation in gr.Chatbot's message format, rebuilt from the session state."""
    messages: list[dict[str, str]] = []
    for turn in state.turns if state is not None else []:
        messages.append({"role": "user", "content": turn.question})
        text = display_answer(turn)
        if text:
            messages.append({"role": "assistant", "content": text})
    return messages


def display_answer(turn: Turn) -> str:
    """Answer text plus the notes a reader needs: stopped, error, pages used."""
    parts = [turn.answer]
    if turn.waiting and not turn.answer:
        parts.append("*Waiting for another answer to finish...*")
    if turn.stopped:
        parts.append("*(stopped)*")
    if turn.error:
        parts.append(f"**Error:** {turn.error}")
    if turn.note:
        parts.append(f"*{turn.note}*")
    return "\n\n".join(p for p in parts if p)


def fit_note(fit) -> str:
    """'Pages used: ...' when the document did not fit whole; empty when it did."""
    if fit is None or fit.fits_whole:
        return ""
    return fit.summary()


def engine_history(turns: list[Turn]) -> list[dict[str, str]]:
    """Finished turns as chat messages for ``engine.ask(history=...)`` (failed turns left out)."""
    history: list[dict[str, str]] = []
    for turn in turns:
        if turn.error or not turn.answer:
            continue
        history.append({"role": "user", "content": turn.question})
        history.append({"role": "assistant", "content": turn.answer})
    return history


def example_question(key: str, material_type: str) -> str:
    return template_question(key, material_type if material_type in QUESTIONS_FOR else "other")


def example_visibility(material_type: str) -> list[bool]:
    """Which example-question buttons to show (in EXAMPLE_LABELS order) for a material type."""
    keys = QUESTIONS_FOR.get(material_type, QUESTIONS_FOR["other"])
    return [key in keys for key in EXAMPLE_LABELS]


def _is_gradio_upload(path: str) -> bool:
    """True for files gradio wrote to its upload cache (never delete anything else)."""
    from gradio.utils import get_upload_folder

    folder = os.path.realpath(get_upload_folder())
    return os.path.realpath(path).startswith(folder + os.sep)


def discard_upload(path: str) -> None:
    """Delete an uploaded file (and its per-upload folder) once its text is extracted."""
    if not path or not _is_gradio_upload(path):
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    try:
        os.rmdir(os.path.dirname(path))  # gradio puts each upload in its own hash folder
    except OSError:
        pass


def _guess_material_type(document) -> str:
    from longlora.qa import guess_material_type

    return guess_material_type(document)


def _open_session(engine, state: ChatState, strategy: str, material_type: str | None = None) -> str:
    """Open the engine session for the state's document and return the card markdown.

    ``material_type=None`` lets the engine guess it from the document.
    """
    try:
        if state.close is not None:  # re-opened (material type changed): free the old cache
            state.close()
        state.session = engine.open_document(state.document, material_type=material_type)
        close_session = getattr(engine, "close_session", None)
        state.close = partial(close_session, state.session) if close_session else None
        state.material_type = state.session.material_type
        return state.session.card(strategy=strategy).to_markdown()
    except ValueError as exc:
        raise _user_error(str(exc), title="Cannot open the document") from exc
    except Exception as exc:  # a model/tokenizer failure must not take the app down
        raise gr.Error(f"The model could not process the document: {exc}", title="Model error") from exc


# --------------------------------------------------------------------------------------------------
# Handlers (module level, testable without a server; build_demo binds the engine)
# --------------------------------------------------------------------------------------------------


def upload_document(engine, file_path: str | None, state: ChatState | None, strategy: str = "retrieve"):
    """A file -> (document card markdown, new session state). A new upload starts a new conversation."""
    from data_tools import DocumentError, load_document

    if not file_path:
        raise _user_error("Choose a PDF, TXT or MD file to upload.", title="No file")
    try:
        document = load_document(file_path)
    except DocumentError as exc:
        raise _user_error(str(exc), title="Cannot read this file") from exc
    finally:
        discard_upload(file_path)
    release_state(state)  # an answer still streaming about the old document stops
    new = ChatState(document=document)
    if engine.state == "ready":
        card = _open_session(engine, new, strategy)
    else:
        new.material_type = _guess_material_type(document)
        card = pending_card_markdown(document)
    return card, new


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
        card = pending_card_markdown(state.document)
    return (card, state, *[gr.update(visible=v) for v in example_visibility(material_type)])


def refresh_card(engine, state: ChatState | None, strategy: str = "retrieve") -> str:
    """The card again (e.g. after the strategy changed)."""
    if state is None or state.document is None:
        return EMPTY_CARD
    if state.session is None:
        return pending_card_markdown(state.document)
    return state.session.card(strategy=strategy).to_markdown()


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
    _require_model(engine)
    if state.session is None:  # uploaded while the model was loading
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
            if update.done:
                turn.stopped = bool(update.stopped)
                turn.note = fit_note(update.fit)
                turn.done = True
            yield turn
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


def clear(state: ChatState | None):
    """New document: stop anything running and forget the document and the conversation."""
    release_state(state)
    new = ChatState()
    return (
        None,
        EMPTY_CARD,
        [],
        "",
        gr.update(value=new.material_type),
        new,
        *[gr.update(visible=v) for v in example_visibility(new.material_type)],
    )


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------

CSS = """
#doc-card { min-height: 8em; }
#status-line { font-size: 0.95em; }
#examples-label { margin-bottom: -0.5em; }
footer { display: none !important; }
"""


def build_demo(engine, *, max_new_tokens: int = 512, concurrency: int = DEFAULT_CONCURRENCY) -> gr.Blocks:
    """The Blocks app for one engine. Generation events share one concurrency group."""
    gen = dict(concurrency_id="generate", concurrency_limit=concurrency)
    light = dict(concurrency_limit=None, show_progress="hidden")

    with gr.Blocks(
        title="LongLoRA: ask a long document", analytics_enabled=False, delete_cache=(600, 3600)
    ) as demo:
        state = gr.State(None, delete_callback=release_state)
        gr.Markdown("## LongLoRA: ask questions about a long document")
        status = gr.Markdown(status_markdown(engine), elem_id="status-line")
        timer = gr.Timer(1.0)

        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                upload = gr.File(
                    label="Document (PDF, TXT or MD)",
                    file_types=[".pdf", ".txt", ".md"],
                    type="filepath",
                    height=120,
                    elem_id="upload",
                )
                material = gr.Radio(
                    MATERIAL_CHOICES,
                    value="other",
                    label="Material type",
                    info="Guessed from the file; change it if the guess is wrong.",
                    elem_id="material",
                )
                card = gr.Markdown(EMPTY_CARD, elem_id="doc-card", container=True)
                new_doc = gr.Button("New document", variant="secondary", elem_id="new-doc")
                with gr.Accordion("Advanced settings", open=False):
                    strategy = gr.Radio(
                        list(STRATEGIES), value="retrieve", label="Strategy", info=STRATEGY_HELP
                    )
                    max_tokens = gr.Slider(16, 4096, value=max_new_tokens, step=16, label="Max new tokens")
                    temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")

            with gr.Column(scale=3, min_width=400):
                chatbot = gr.Chatbot(
                    label="Chat about the document",
                    height=460,
                    feedback_options=None,
                    buttons=["copy", "copy_all"],
                    elem_id="chat",
                    placeholder="Upload a document, then ask about it or pick an example question.",
                )
                with gr.Row():
                    question = gr.Textbox(
                        placeholder="Ask a question about the document and press Enter",
                        show_label=False,
                        label="Question",
                        scale=5,
                        elem_id="question",
                    )
                    ask_btn = gr.Button("Ask", variant="primary", scale=1, min_width=80, elem_id="ask")
                    stop_btn = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id="stop")
                gr.Markdown("Example questions (LongLoRA paper, B.6):", elem_id="examples-label")
                with gr.Row():
                    example_buttons = {
                        key: gr.Button(
                            label,
                            size="sm",
                            visible=key in QUESTIONS_FOR["other"],
                            elem_id=f"example-{key}",
                        )
                        for key, label in EXAMPLE_LABELS.items()
                    }
                # The API answer of /ask (API-only endpoint; never shown in the page).
                answer_text = gr.Textbox(visible=False, label="Answer")

        examples = list(example_buttons.values())
        settings = [strategy, max_tokens, temperature, top_p]

        # Model status on page load and while it loads / converts.
        demo.load(
            partial(status_markdown, engine),
            None,
            [status],
            api_name="status_on_load",
            api_visibility="private",
            **light,
        )
        timer.tick(
            partial(poll_status, engine),
            [state, strategy],
            [status, timer, card, state],
            api_name="status",
            **light,
        )

        # Upload -> card (public API), then the UI around it.
        upload.upload(
            partial(upload_document, engine),
            [upload, state, strategy],
            [card, state],
            api_name="upload",
            concurrency_id="document",
        ).success(
            after_upload,
            [state],
            [material, chatbot, *examples],
            api_name="after_upload",
            api_visibility="private",
            **light,
        )
        material.input(
            partial(set_material_type, engine),
            [material, state, strategy],
            [card, state, *examples],
            api_name="material_type",
            concurrency_id="document",
        )
        strategy.input(partial(refresh_card, engine), [state, strategy], [card], api_name="card", **light)

        # Ask from the page: add the question, then stream the answer into the chat.
        streams = []
        for trigger, name in ((question.submit, "submit_question"), (ask_btn.click, "ask_button")):
            streams.append(
                trigger(
                    partial(start_turn, engine),
                    [question, state],
                    [question, chatbot, state],
                    api_name=name,
                    api_visibility="private",
                    **light,
                ).success(
                    partial(stream_answer, engine),
                    [state, *settings],
                    [chatbot],
                    api_name=f"{name}_answer",
                    api_visibility="private",
                    **gen,
                )
            )
        for key, button in example_buttons.items():
            streams.append(
                button.click(
                    partial(start_example_turn, engine, key),
                    [state],
                    [chatbot, state],
                    api_name=f"example_{key}",
                    api_visibility="private",
                    **light,
                ).success(
                    partial(stream_answer, engine),
                    [state, *settings],
                    [chatbot],
                    api_name=f"example_{key}_answer",
                    api_visibility="private",
                    **gen,
                )
            )

        # Ask from gradio_client: question -> streamed answer text, in this client's session.
        ask_api = gr.on(
            triggers=[],
            fn=partial(ask, engine),
            inputs=[question, state, *settings],
            outputs=[answer_text, state],
            api_name="ask",
            **gen,
        )

        stop_btn.click(stop, [state], [chatbot], api_name="stop", cancels=[*streams, ask_api], **light)
        new_doc.click(
            clear,
            [state],
            [upload, card, chatbot, question, material, state, *examples],
            api_name="clear",
            cancels=[*streams, ask_api],
            **light,
        )
        chatbot.clear(
            clear_chat, [state], [chatbot, state], api_name="clear_chat", cancels=[*streams, ask_api], **light
        )
        upload.clear(
            clear,
            [state],
            [upload, card, chatbot, question, material, state, *examples],
            api_name="clear_upload",
            api_visibility="private",
            **light,
        )
    return demo


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def launch(
    demo: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    share: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
):
    """Queue + launch with the app's privacy settings (no share link unless asked, no run history)."""
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        show_error=True,
        run_history=False,
        enable_monitoring=False,
        mcp_server=False,
        footer_links=["api"],
        max_file_size="200mb",
        # System fonts: the page must look right with no internet access.
        theme=gr.themes.Soft(
            font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
        ),
        css=CSS,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="Ask questions about a long document (PDF/TXT/MD) with a LongLoRA model in the browser.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default="default",
        help="'default' (bundled SmolLM2-135M-Instruct), a local model/merged/adapter folder, or a hub id",
    )
    parser.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="context length in tokens (default: the model's); longer than the model's window applies Position Interpolation",
    )
    parser.add_argument("--load-in-4bit", action="store_true", help="load the model in 4-bit (bitsandbytes)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes the app to your network)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    parser.add_argument(
        "--max-new-tokens", type=int, default=512, help="default answer length limit in tokens"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="how many questions may be in progress at once; the model answers one at a time and the others show that they wait",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.context_length is not None and args.context_length <= 0:
        parser.error(f"--context-length must be a positive number of tokens, got {args.context_length}")
    if args.max_new_tokens <= 0:
        parser.error(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if args.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, got {args.concurrency}")
    if not 0 < args.port < 65536:
        parser.error(f"--port must be between 1 and 65535, got {args.port}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from longlora.qa import QAEngine

    engine = QAEngine(
        args.model,
        context_length=args.context_length,
        load_in_4bit=args.load_in_4bit,
        max_new_tokens=args.max_new_tokens,
        background=True,  # the page comes up now and shows the loading status
    )
    demo = build_demo(engine, max_new_tokens=args.max_new_tokens, concurrency=args.concurrency)
    launch(demo, host=args.host, port=args.port, share=args.share, concurrency=args.concurrency)


if __name__ == "__main__":
    main()
