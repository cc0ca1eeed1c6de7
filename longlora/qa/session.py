"""An open session: its documents' text, token ids and offsets, and its retrieval indexes.

A ``DocumentSession`` is data the engine creates (``QAEngine.open_document`` for one document,
``QAEngine.open_documents`` for up to ``MAX_DOCUMENTS``): the tokens are computed once, when the
documents are opened; the retrieval index (``PassageIndex``) once per window size. The KV cache of
the session's last prompt lives in the engine (keyed by ``id``), so a session stays small and can
sit in UI state.

The session's token sequence (``ids``) is what the prompt holds when everything fits: one
document's tokens, or, for several, each document's tokens after a heading that names it
(``longlora.qa.prompt.document_heading``). Token spans of the session are in that sequence;
``locate`` turns them into spans of each document (``DocumentPart``), which know their pages.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from longlora.retrieval import MAX_DOCUMENTS, PassageIndex

__all__ = ["MAX_DOCUMENTS", "DocumentPart", "DocumentSession", "Span", "tokenize_document"]

Span = tuple[int, int]


def tokenize_document(tokenizer, text: str) -> tuple[list[int], list[Span]]:
    """Token ids of ``text`` (no special tokens) and each token's (start, end) character span."""
    try:
        # verbose=False: a document longer than the model's window is expected here
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, KeyError):  # slow tokenizer: spread offsets evenly
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        step = len(text) / max(1, len(ids))
        return ids, [(int(i * step), int((i + 1) * step)) for i in range(len(ids))]


@dataclass(eq=False)
class DocumentPart:
    """One document of a session: its tokens and where they start in the session's sequence.

    document: the ``data_tools.Document`` (``name`` names it in sources and prompts). ids/offsets: its
    tokens and their character spans in its own text. start: the position of its first token in the
    session's ``ids``.
    """

    document: object
    ids: list[int]
    offsets: list[Span]
    start: int = 0

    @property
    def name(self) -> str:
        return self.document.name

    @property
    def end(self) -> int:
        return self.start + len(self.ids)

    def char_span(self, start: int, end: int) -> Span:
        """Character span in the document's text of its tokens [start, end)."""
        if start >= end:
            return (0, 0)
        return self.offsets[start][0], self.offsets[end - 1][1]

    def pages_for(self, spans: Sequence[Span]) -> list[int]:
        """1-based pages its token spans touch (empty for documents without pages)."""
        if not getattr(self.document, "pages", None):
            return []
        pages: set[int] = set()
        for s, e in spans:
            pages.update(self.document.pages_for_span(*self.char_span(s, e)))
        return sorted(pages)


@dataclass(eq=False)
class DocumentSession:
    """One document, or several asked about together, opened by an engine.

    parts: the documents, in the order they were opened. ids: the session's token sequence (see the
    module docstring). engine: the engine that opened it (its tokens are only valid for that
    engine's tokenizer).
    """

    parts: list[DocumentPart]
    material_type: str
    ids: list[int]
    engine: object = field(repr=False)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    headings: dict[str, list[int]] = field(default_factory=dict, repr=False)  # passage heading -> ids
    _indexes: dict[int, PassageIndex] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def num_tokens(self) -> int:
        return len(self.ids)

    @property
    def documents(self) -> list:
        """The session's documents (``data_tools.Document``), in order."""
        return [part.document for part in self.parts]

    @property
    def document(self):
        """The session's document (a session of one; ``documents`` lists those of a session of several)."""
        return self._single().document

    @property
    def offsets(self) -> list[Span]:
        """Each token's character span in the document's text (a session of one)."""
        return self._single().offsets

    def _single(self) -> DocumentPart:
        if len(self.parts) != 1:
            raise ValueError(
                f"this session holds {len(self.parts)} documents; read them through session.parts "
                "(each with its document, tokens and pages)"
            )
        return self.parts[0]

    def passage_index(self, size: int) -> PassageIndex:
        """The retrieval index the engine uses: half-overlapping ``size``-token windows of every
        document, in the session's sequence, ranked together (built once per size)."""
        with self._lock:
            if size not in self._indexes:
                self._indexes[size] = PassageIndex.of_documents(
                    [(p.start, p.offsets, p.document.text) for p in self.parts], size
                )
            return self._indexes[size]

    def locate(self, spans: Sequence[Span]) -> list[tuple[DocumentPart, Span]]:
        """Session token spans as (document part, its own token span), in order; headings between
        documents belong to none and are left out."""
        out = []
        for s, e in spans:
            for part in self.parts:
                a, b = max(s, part.start), min(e, part.end)
                if a < b:
                    out.append((part, (a - part.start, b - part.start)))
        return out

    def char_span(self, start: int, end: int) -> Span:
        """Character span in the document's text of the tokens [start, end) (a session of one)."""
        return self._single().char_span(start, end)

    def pages_for(self, spans: Sequence[Span]) -> list[int]:
        """1-based pages the token spans touch (a session of one; empty for documents without pages)."""
        return self._single().pages_for(spans)

    def pages_by_document(self, spans: Sequence[Span]) -> dict[str, list[int]]:
        """Each document the spans touch -> the 1-based pages they touch in it (empty for plain text)."""
        pages: dict[str, set[int]] = {}
        for part, span in self.locate(spans):
            pages.setdefault(part.name, set()).update(part.pages_for([span]))
        return {name: sorted(numbers) for name, numbers in pages.items()}

    def card(self, strategy: str = "retrieve"):
        """The session's card (``engine.card(session, strategy)``)."""
        return self.engine.card(self, strategy)
