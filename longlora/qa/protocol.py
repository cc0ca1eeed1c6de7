"""What the app needs from an engine: ``QAEngineLike``.

``QAEngine``, the app's background loader (``webapp.loading.BackgroundEngine``) and the
test engine of ``tests/test_app.py`` all satisfy it; ``tests/test_app.py`` checks their
method signatures against this one, so they cannot drift apart.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from .reports import AnswerUpdate, DocumentCard


@runtime_checkable
class QAEngineLike(Protocol):
    """An engine the app can drive.

    state: "loading", "ready" or "error"; status_message says what is happening. context_length: the
    model's window in tokens (0 while loading). Sessions are opaque to the app except for their
    ``material_type``; ``open_documents`` opens several documents as one session.
    """

    state: str
    status_message: str
    model_spec: Any
    context_length: int

    def open_document(self, path_or_document, material_type: str | None = None) -> Any: ...

    def open_documents(self, paths_or_documents, material_type: str | None = None) -> Any: ...

    def close_session(self, session) -> None: ...

    def card(self, session, strategy: str = "retrieve") -> DocumentCard: ...

    def ask(
        self,
        session,
        question: str,
        *,
        history=None,
        strategy: str = "retrieve",
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop_event: threading.Event | None = None,
    ) -> Iterator[AnswerUpdate]: ...


# Methods whose parameters (names, kinds, defaults) every QAEngineLike must match exactly.
PROTOCOL_METHODS = ("open_document", "open_documents", "close_session", "card", "ask")
PROTOCOL_ATTRIBUTES = ("state", "status_message", "model_spec", "context_length")
