"""What the QA engine reports: what went into the prompt (``FitReport``), the passages it read
(``Source``), each step of a streamed answer (``AnswerUpdate``) and a document's card
(``DocumentCard``, with its reading mode). Plain data; rendering for a page lives in the app (``webapp/cards.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


@dataclass
class Source:
    """One piece of a document the model read: its text, where it is, and how it was chosen.

    start/end: character span in the document's text. pages: 1-based page numbers (empty for
    documents without pages). score: BM25 score for the question (None when the piece was kept by
    truncation or because the whole document fits). document: the name of the document it comes
    from (a session may hold several).
    """

    text: str
    start: int
    end: int
    pages: list[int] = field(default_factory=list)
    score: float | None = None
    document: str = ""

    def to_dict(self) -> dict:
        """The JSON form: ``{"text", "pages", "score", "document"}``."""
        return {"text": self.text, "pages": list(self.pages), "score": self.score, "document": self.document}


@dataclass
class FitReport:
    """What went into the prompt. pages_used: the pages of a session's one document (empty for
    documents without pages, txt/md, and for a session of several documents, whose pages are in
    document_pages: each document read -> its pages used)."""

    strategy: str
    document_tokens: int
    kept_tokens: int
    fits_whole: bool
    pages_used: list[int] = field(default_factory=list)
    budget_tokens: int = 0
    passages: int = 0
    reused_tokens: int = 0  # prompt tokens served from the session's KV cache
    prompt_tokens: int = 0
    sources: list[Source] = field(default_factory=list)  # the kept pieces, in document order
    documents: int = 1  # documents in the session
    document_pages: dict[str, list[int]] = field(default_factory=dict)
    readings: int = 1  # retrieval readings answered and compared for this answer (longlora.qa.readings)

    def summary(self) -> str:
        compared = (
            f" The answer is the one the model supports best across {self.readings} readings (different passages)."
            if self.readings > 1
            else ""
        )
        if self.documents > 1:
            return self._summary_of_several() + compared
        pages = f" ({page_ranges(self.pages_used)})" if self.pages_used else ""
        if self.fits_whole:
            return f"The whole document is in the prompt: {self.document_tokens:,} tokens{pages}."
        return (
            f"The document ({self.document_tokens:,} tokens) is longer than the {self.budget_tokens:,}-token "
            f"budget; kept {self._kept()}{pages}.{compared}"
        )

    def _kept(self) -> str:
        share = 100 * self.kept_tokens / max(1, self.document_tokens)
        how = {
            "retrieve": f"{self.passages} passage{'s' * (self.passages != 1)} most relevant to the question",
            "truncate-middle": "the beginning and the end",
            "truncate-end": "the beginning",
        }[self.strategy]
        return f"{how}: {self.kept_tokens:,} tokens ({share:.0f}%)"

    def _summary_of_several(self) -> str:
        if self.fits_whole:
            return f"All {self.documents} documents are in the prompt: {self.document_tokens:,} tokens."
        read = "; ".join(
            f"{name}, {page_ranges(pages)}" if pages else name for name, pages in self.document_pages.items()
        )
        return (
            f"The {self.documents} documents ({self.document_tokens:,} tokens) are longer than the "
            f"{self.budget_tokens:,}-token budget; kept {self._kept()}" + (f" from {read}." if read else ".")
        )

    def to_dict(self) -> dict:
        """The JSON form (sources are reported beside it, not inside)."""
        out = asdict(self)
        out.pop("sources")
        return out


@dataclass
class AnswerUpdate:
    """One step of a streamed answer. text is cumulative; delta is what this step added.

    revised: the text replaces everything streamed before (delta is then the whole new text): the last
    update of an answer compared across several readings, when another reading's answer won.
    """

    text: str
    delta: str
    done: bool
    fit: FitReport
    stopped: bool = False
    queued: bool = False  # waiting for another request to finish
    new_tokens: int = 0
    first_token_s: float | None = None  # seconds from the request to the first answer token
    status: str = ""  # progress beside the text so far (other readings being compared)
    revised: bool = False

    @property
    def sources(self) -> list[Source]:
        """The passages the model read for this answer (``fit.sources``)."""
        return self.fit.sources


@dataclass
class DocumentCard:
    """A document's size, how it fits the model, and what the reader warned about (``QAEngine.card``)."""

    file_name: str
    kind: str
    pages: int | None
    words: int
    tokens: int
    context_length: int
    budget_tokens: int
    fits: bool
    strategy: str
    material_type: str
    # data_tools.Document.warning: pages left out as unreadable, garbled words kept, OCR'd pages
    warning: str = ""
    # a session of several documents: each one's own card (tokens, and fits: whether it would fit the
    # budget alone); the fields above then describe them together (file_name lists them, fits: all at once)
    documents: list[DocumentCard] = field(default_factory=list)
    # how this model reads it with this strategy (``reading_mode``: "whole", "retrieval" or "truncation";
    # a document card of several: as if alone), and the profile's line on what chose that for the model
    # (``ModelProfile.chosen_by``); empty from an engine that does not say
    mode: str = ""
    mode_reason: str = ""


# What each strategy does to a document longer than the budget; one that fits is read whole whatever
# the strategy (``longlora.retrieval.fit_document``).
READING_MODES = {"retrieve": "retrieval", "truncate-middle": "truncation", "truncate-end": "truncation"}


def reading_mode(fits: bool, strategy: str) -> str:
    """ "whole" when the document fits the budget, else what ``strategy`` makes of it."""
    return "whole" if fits else READING_MODES[strategy]


def page_ranges(pages: Sequence[int]) -> str:
    """[1, 2, 3, 7] -> 'pages 1-3, 7'."""
    if not pages:
        return ""
    parts, start, prev = [], pages[0], pages[0]
    for p in list(pages[1:]) + [None]:
        if p is not None and p == prev + 1:
            prev = p
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if p is not None:
            start = prev = p
    return ("page " if len(pages) == 1 else "pages ") + ", ".join(parts)
