"""What part of a long document goes into the prompt: the whole of it, a truncation, or retrieved passages.

``fit_document`` is the one dispatch over the strategies: a document that fits the token budget goes in
whole; otherwise ``truncate-end`` keeps the beginning, ``truncate-middle`` the beginning and end, and
``retrieve`` the spans a ``PassageIndex`` selects. Pure functions, no torch.

``PassageIndex`` is the retrieval measured best on ``benchmarks/qa_dev_set.jsonl``
(``benchmarks/retrieval_recall.py``): windows of ``size`` tokens that overlap by half (each made of
two neighbouring sentence-aligned halves, so a boundary never splits a sentence of up to 0.7 of half
a window), scored against the question with Okapi BM25 (Robertson & Zaragoza, 2009; the ``bm25s``
library with a Snowball English stemmer), the best that fit kept in document order, and the document's
opening (title, authors, journal, date) for bibliographic questions:

    >>> index = PassageIndex(offsets, text, size=64)              # once per document
    >>> spans, ids = fit_document(doc_ids, 256, "retrieve", gap_ids=gap_ids,
    ...     retrieve=lambda budget: index.select(question, budget, separator_len=len(gap_ids)))

``PassageIndex.of_documents`` ranks the windows of several documents in one BM25 index (a question is
answered from whichever documents hold the evidence); ``select``'s ``cost`` then counts the heading
the caller puts before each passage.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache, partial

import bm25s
import Stemmer

# Function words that carry no evidence about where an answer is (a short, conservative list).
STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with from as into about over after before under
    between through during is are was were be been being am do does did doing have has had having it its
    this that these those there here what which who whom whose when where why how i me my we our you your
    he him his she her they them their not no nor so than too very can could should would will shall may
    might must also just only own same such any each few more most other some all both one s t
    according does document paper book text material question answer please tell""".split()
)

STRATEGIES = ("retrieve", "truncate-middle", "truncate-end")
# Documents one QA session ranks together (``PassageIndex.of_documents``, ``QAEngine.open_documents``);
# here, torch-free, so that the app's page can say it before the model loads.
MAX_DOCUMENTS = 20
GAP_MARKER = "\n[...]\n"  # between kept pieces that are not adjacent in the document
FRONT_TOKENS = 96  # document opening given with bibliographic questions (benchmarks/retrieval_recall.py)

_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")
_SENTENCE_START = re.compile(r"(?:\n\s*|[.!?][\"')\]]*\s+)(?=\S)")


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def stem_terms(text: str) -> list[str]:
    """Lower-cased word terms without stopwords, reduced to their Snowball (Porter 2) English stems.

    Stems match inflected forms ("contributed" and "contribution" -> "contribut"), which the plain
    plural strip of ``terms`` does not.
    """
    words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
    return _stemmer().stemWords(words)


def sentence_starts(text: str) -> list[int]:
    """Character indices where a sentence or a line starts (index 0 included)."""
    return [0] + [m.end() for m in _SENTENCE_START.finditer(text)]


def split_passages(
    offsets: Sequence[tuple[int, int]], text: str, size: int, *, slack: float = 0.3
) -> list[tuple[int, int]]:
    """Cut ``len(offsets)`` tokens into consecutive passages of at most ``size`` tokens.

    offsets: per token, its (start, end) character span in ``text``. A passage ends at the last
    sentence/line start within its final ``slack * size`` tokens when there is one, else at ``size``.
    Returns half-open token spans covering every token exactly once.
    """
    if size <= 0:
        raise ValueError(f"passage size must be positive, got {size}")
    n = len(offsets)
    if n == 0:
        return []
    starts = sentence_starts(text)
    # good[i]: token i begins a sentence/line (its span reaches the sentence's first character).
    good = [False] * n
    j = 0
    for i, (a, b) in enumerate(offsets):
        while j < len(starts) and starts[j] < a:
            j += 1
        if j < len(starts) and a <= starts[j] < max(b, a + 1):
            good[i] = True
    spans = []
    start = 0
    min_len = max(1, int(size * (1 - slack)))
    while start < n:
        end = min(start + size, n)
        if end < n:
            for cut in range(end, start + min_len - 1, -1):
                if good[cut]:
                    end = cut
                    break
        spans.append((start, end))
        start = end
    return spans


class BM25Index:
    """Okapi BM25 over a fixed list of passages, indexed once (``bm25s``, Lucene's variant).

    Lucene's BM25 (IDF ``log(1 + (N - df + 0.5) / (df + 0.5))``, term weight ``tf / (tf + k1 * (1 - b
    + b * len / avg_len))``) ranks exactly as the textbook formula: it only drops the constant
    ``k1 + 1``. ``analyzer`` turns a text into terms (default: stemmed, without stopwords); a
    question term counts once however often it is asked.
    """

    def __init__(
        self,
        passages: Sequence[str],
        *,
        k1: float = 1.2,
        b: float = 0.75,
        analyzer: Callable[[str], list[str]] = stem_terms,
    ):
        self.k1, self.b, self.analyzer = k1, b, analyzer
        self.size = len(passages)
        self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        tokens = [analyzer(p) for p in passages]
        self._indexed = any(tokens)  # no term at all: nothing can match (and the average length is 0)
        if self._indexed:
            self._bm25.index(tokens, show_progress=False)

    def scores(self, query: str) -> list[float]:
        vocab = self._bm25.vocab_dict if self._indexed else {}
        query_terms = [t for t in dict.fromkeys(self.analyzer(query)) if t in vocab]
        if not query_terms:
            return [0.0] * self.size
        return [float(x) for x in self._bm25.get_scores(query_terms)]


def fit_document(
    ids: Sequence[int],
    budget: int,
    strategy: str,
    *,
    retrieve: Callable[[int], list[tuple[int, int]]] | None = None,
    gap_ids: Sequence[int] = (),
) -> tuple[list[tuple[int, int]], list[int]]:
    """Choose token spans of ``ids`` that fit ``budget`` tokens (gap markers included) -> (spans, ids).

    The one place a strategy is dispatched: a document that fits goes in whole; otherwise
    ``truncate-end`` keeps its beginning, ``truncate-middle`` its beginning and end, and ``retrieve``
    keeps the spans ``retrieve(budget)`` returns (the engine's ``PassageIndex`` selection).
    """
    n = len(ids)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if n <= budget:
        spans = [(0, n)] if n else []
    elif strategy == "truncate-end":
        spans = [(0, budget)]
    elif strategy == "truncate-middle":
        room = max(0, budget - len(gap_ids))
        head = (room + 1) // 2
        spans = [(0, head), (n - (room - head), n)] if room - head > 0 else [(0, head)]
    else:
        if retrieve is None:
            raise ValueError("the retrieve strategy needs a retrieve(budget) -> spans function")
        spans = merge_spans(retrieve(budget))
    return spans, join_spans(ids, spans, gap_ids)


# ----------------------------------------------------------------------------- evidence-preserving retrieval

# Questions about the document itself (who wrote it, where and when it appeared) are answered by its
# opening page, which shares few words with the question ("Who wrote this?" vs a list of names).
# "version", "year" or "date" alone are often about the content ("in which version of R..."), so they
# count only when the question also names the document ("this guide", "the manual").
_BIBLIOGRAPHIC = re.compile(
    r"\b(?:authors?|wrote|written|writers?|editors?|title|journal|published|publication|publisher|"
    r"affiliat\w*|universit(?:y|ies)|institut\w*|doi|edition)\b",
    re.I,
)
_ABOUT_DOCUMENT = re.compile(
    r"\b(?:version|release|year|date|when)\b.*\b(?:this|the)\s+(?:[\w/.+-]+\s+){0,4}?"
    r"(?:document|paper|article|manual|guide|book|reference|talk|slides|presentation|report|standard|"
    r"faq|chart|vignette)s?\b",
    re.I,
)


def is_bibliographic(question: str) -> bool:
    """Whether the question asks about the document's front matter (authors, journal, date, version...)."""
    return bool(_BIBLIOGRAPHIC.search(question) or _ABOUT_DOCUMENT.search(question))


def overlapping_windows(offsets: Sequence[tuple[int, int]], text: str, size: int) -> list[tuple[int, int]]:
    """Token spans of at most ``size`` tokens that overlap by half, cut where sentences start.

    The tokens are cut into sentence-aligned halves of at most ``size // 2`` tokens
    (``split_passages``: at least 70% of that, except the last); window i is halves i and i + 1.
    Any run of tokens inside one half, or across the boundary of two neighbouring halves, lies whole
    inside some window, so no sentence of up to 0.7 * size / 2 tokens is ever split.
    """
    if size < 2:
        raise ValueError(f"window size must be at least 2 tokens, got {size}")
    halves = split_passages(offsets, text, size // 2)
    if len(halves) <= 1:
        return halves
    return [(a[0], b[1]) for a, b in zip(halves, halves[1:])]


def merge_spans(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted union of half-open spans: overlapping or touching spans become one."""
    merged: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


Cost = Callable[[Sequence[tuple[int, int]]], int]


def select_spans(
    spans: Sequence[tuple[int, int]],
    scores: Sequence[float],
    budget: int,
    *,
    separator_len: int = 0,
    required: Sequence[tuple[int, int]] = (),
    cost: Cost | None = None,
) -> list[tuple[int, int]]:
    """The union of the best-scoring spans that fits ``budget`` tokens, merged and in document order.

    Spans may overlap: a span costs only the tokens it adds, plus ``separator_len`` for each gap
    between the merged pieces; ``cost(merged spans) -> tokens`` replaces that rule (e.g. a heading
    before each piece). ``required`` spans are taken first (trimmed to the budget); spans with a
    score of 0 (no question term) are never taken. Ties go to the earlier span.
    """
    if cost is None:
        cost = partial(_joined_length, separator_len=separator_len)
    chosen = [(s, min(e, s + budget)) for s, e in required if e > s]
    if cost(merge_spans(chosen)) > budget:
        chosen = []
    for i in sorted(range(len(spans)), key=lambda i: (-scores[i], i)):
        if scores[i] <= 0:
            break
        trial = chosen + [spans[i]]
        if cost(merge_spans(trial)) <= budget:
            chosen = trial
    return merge_spans(chosen)


def _joined_length(merged: Sequence[tuple[int, int]], separator_len: int) -> int:
    return sum(e - s for s, e in merged) + separator_len * max(0, len(merged) - 1)


def join_spans(
    ids: Sequence[int], spans: Sequence[tuple[int, int]], gap_ids: Sequence[int] = ()
) -> list[int]:
    """The tokens of ``spans`` in order, with ``gap_ids`` between pieces that are not adjacent."""
    out: list[int] = []
    for k, (s, e) in enumerate(spans):
        if k and spans[k - 1][1] != s:
            out.extend(gap_ids)
        out.extend(ids[s:e])
    return out


class PassageIndex:
    """Half-overlapping, sentence-aligned windows of one document (or several) and their BM25 index.

    offsets: per token, its (start, end) character span in ``text`` (a tokenizer's offset mapping).
    ``select`` returns the token spans to put in the prompt for a question: the best windows that
    fit the budget, and, for bibliographic questions, the first ``front_tokens`` tokens of the
    document before them (title, authors, affiliations, journal and date; 96 tokens held 19 of the
    dev set's 20 front-matter quotes). ``PassageIndex.of_documents`` indexes several documents
    together: one ranking across all of them, windows that never cross from one to the next.
    """

    def __init__(
        self,
        offsets: Sequence[tuple[int, int]],
        text: str,
        size: int,
        *,
        front_tokens: int = FRONT_TOKENS,
    ):
        self._build([(0, offsets, text)], size, front_tokens)

    @classmethod
    def of_documents(
        cls,
        documents: Sequence[tuple[int, Sequence[tuple[int, int]], str]],
        size: int,
        *,
        front_tokens: int = FRONT_TOKENS,
    ) -> PassageIndex:
        """One index over several documents laid out in one token sequence.

        documents: per document, (start, offsets, text): its first token's position in the shared
        sequence, and its own tokens' character spans in its own ``text``. Windows (``windows``, in
        the shared sequence) never cross documents; ``owners[i]`` is the document of window i.
        """
        index = cls.__new__(cls)
        index._build(documents, size, front_tokens)
        return index

    def _build(self, documents, size: int, front_tokens: int) -> None:
        self.size = size
        self.front_tokens = front_tokens
        self.starts = [start for start, _, _ in documents]
        self.lengths = [len(offsets) for _, offsets, _ in documents]
        self.num_tokens = self.starts[-1] + self.lengths[-1] if documents else 0
        self.windows: list[tuple[int, int]] = []
        self.owners: list[int] = []
        texts = []
        for k, (start, offsets, text) in enumerate(documents):
            for s, e in overlapping_windows(offsets, text, size):
                self.windows.append((start + s, start + e))
                self.owners.append(k)
                texts.append(text[offsets[s][0] : offsets[e - 1][1]])
        self.bm25 = BM25Index(texts)

    def scores(self, question: str) -> list[float]:
        """BM25 score of each window for the question."""
        return self.bm25.scores(question)

    def select(
        self,
        question: str,
        budget: int,
        *,
        separator_len: int = 0,
        scores: Sequence[float] | None = None,
        lead_tokens: int = 0,
        cost: Cost | None = None,
    ) -> list[tuple[int, int]]:
        """Token spans (merged, in document order) that fit ``budget`` tokens, gap markers included.

        ``scores``: the windows' scores for the question when the caller already has them.
        ``lead_tokens``: the document's first tokens given with every question (its title and
        abstract say what it is, which passages picked by words alone often miss); bibliographic
        questions get at least ``front_tokens`` of it.
        ``cost``: what a selection costs in the prompt, when not its tokens and ``separator_len``
        per gap (``select_spans``). With several documents, the opening given is that of the
        document whose windows score best (the first when none matches).
        """
        if len(self.starts) == 1 and cost is None and self.num_tokens <= budget:
            return [(0, self.num_tokens)] if self.num_tokens else []
        if scores is None:
            scores = self.scores(question)
        lead = max(0, lead_tokens)
        if is_bibliographic(question):
            lead = max(lead, self.front_tokens)
        required = []
        if lead > 0 and self.starts:
            best = max(range(len(scores)), key=lambda i: (scores[i], -i), default=None)
            k = self.owners[best] if best is not None and scores[best] > 0 else 0
            required = [(self.starts[k], self.starts[k] + min(lead, self.lengths[k]))]
        return select_spans(
            self.windows, scores, budget, separator_len=separator_len, required=required, cost=cost
        )
