"""One browser session's state (documents, engine session, conversation) and how it is shown.

Plain Python, no gradio: the handlers in ``app.py`` keep a ``ChatState`` in a ``gr.State``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from data_tools.prompts import QUESTIONS_FOR, template_question

from .cards import sources_markdown

# Button labels for the paper's example questions (data_tools.prompts.QUESTION_TEMPLATES keys).
EXAMPLE_LABELS: dict[str, str] = {
    "summary": "Summarize in one paragraph",
    "contributions": "Main contributions and novelties",
    "limitations": "Limitations",
    "characters": "Relationships among the characters",
    "importance": "Why the main character matters",
}


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
    status: str = ""  # progress shown before the answer starts (the model still loading)
    sources: list = field(default_factory=list)  # longlora.qa.Source: the passages the model read
    name_documents: bool = False  # asked of several documents: each source names its document


@dataclass
class ChatState:
    """Everything one browser session knows: the documents, their engine session and the conversation.

    Lives in a ``gr.State`` (never in a global); gradio keeps it by reference, so the stop handler
    sees the same ``stop_event`` as the answer that is streaming. ``document`` and ``pdf`` are the
    first document; ``added`` holds those added to it (*Add documents*), asked about together.
    """

    document: Any = None  # data_tools.Document
    session: Any = None  # longlora.qa.DocumentSession, None until the model is ready
    material_type: str = "other"
    turns: list[Turn] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    close: Any = None  # frees the engine's cached prompt for this document (engine.close_session)
    pdf: Any = None  # webapp.files.PdfCopy: the uploaded PDF, kept for the page view (None for text)
    added: list[tuple[Any, Any]] = field(default_factory=list)  # (Document, PdfCopy or None) each

    @property
    def documents(self) -> list:
        """Every document of the session, the first one first (none before an upload)."""
        first = [self.document] if self.document is not None else []
        return first + [document for document, _ in self.added]

    def pdf_of(self, document):
        """The private copy of ``document``'s PDF (None for plain text)."""
        if document is self.document:
            return self.pdf
        return next((pdf for d, pdf in self.added if d is document), None)


def release_state(state: ChatState | None) -> None:
    """Stop the session's answer, free the engine's cached prompt for its documents and delete the
    session's copies of their PDFs.

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
    for pdf in [state.pdf] + [pdf for _, pdf in state.added]:
        if pdf is not None:
            pdf.close()
    state.pdf = None
    state.added = [(document, None) for document, _ in state.added]


def chat_messages(state: ChatState | None) -> list[dict[str, str]]:
    """The conversation in gr.Chatbot's message format, rebuilt from the session state."""
    messages: list[dict[str, str]] = []
    for turn in state.turns if state is not None else []:
        messages.append({"role": "user", "content": turn.question})
        text = display_answer(turn)
        if text:
            messages.append({"role": "assistant", "content": text + _sources_block(turn)})
    return messages


def _sources_block(turn: Turn) -> str:
    """The passages under a finished answer, folded (shown in the chat, not in the /ask value)."""
    if not turn.done or not turn.sources:
        return ""
    count = len(turn.sources)
    summary = f"Sources: {count} passage{'s' * (count != 1)}"
    listed = sources_markdown(turn.sources, name_documents=turn.name_documents)
    return f"\n\n<details><summary>{summary}</summary>\n\n{listed}\n\n</details>"


def display_answer(turn: Turn) -> str:
    """Answer text plus the notes a reader needs: stopped, error, pages used."""
    parts = [turn.answer]
    if turn.status:  # the model loading, or other readings being compared under the answer so far
        parts.append(f"*{turn.status}*")
    elif turn.waiting and not turn.answer:
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


def last_sources(state: ChatState | None) -> list:
    """The passages (``longlora.qa.Source``) of the last finished answer; a failed answer has none."""
    done = [turn for turn in (state.turns if state is not None else []) if turn.done and not turn.error]
    return done[-1].sources if done else []


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
