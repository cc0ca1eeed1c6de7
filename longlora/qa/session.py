"""One open document: its text, token ids and offsets, and its retrieval indexes.

A ``DocumentSession`` is data the engine creates (``QAEngine.open_document``): the tokens are
computed once, when the document is opened; the retrieval index (``PassageIndex``) once per window
size. The
KV cache of the session's last prompt lives in the engine (keyed by ``id``), so a session stays
small and can sit in UI state.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from longlora.retrieval import PassageIndex

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
class DocumentSession:
    """A document opened by an engine.

    document: the ``data_tools.Document``. ids/offsets: its tokens and their character spans.
    engine: the engine that opened it (its tokens are only valid for that engine's tokenizer).
    """

    document: object
    material_type: str
    ids: list[int]
    offsets: list[Span]
    engine: object = field(repr=False)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    _indexes: dict[int, PassageIndex] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def num_tokens(self) -> int:
        return len(self.ids)

    def passage_index(self, size: int) -> PassageIndex:
        """The retrieval index the engine uses: half-overlapping ``size``-token windows (built once per size)."""
        with self._lock:
            if size not in self._indexes:
                self._indexes[size] = PassageIndex(self.offsets, self.document.text, size)
            return self._indexes[size]

    def char_span(self, start: int, end: int) -> Span:
        """Character span in the document text of the tokens [start, end)."""
        if start >= end:
            return (0, 0)
        return self.offsets[start][0], self.offsets[end - 1][1]

    def pages_for(self, spans: Sequence[Span]) -> list[int]:
        """1-based pages the token spans touch (empty for documents without pages)."""
        if not getattr(self.document, "pages", None):
            return []
        pages: set[int] = set()
        for s, e in spans:
            pages.update(self.document.pages_for_span(*self.char_span(s, e)))
        return sorted(pages)

    def card(self, strategy: str = "retrieve"):
        """The document card (``engine.card(session, strategy)``)."""
        return self.engine.card(self, strategy)
