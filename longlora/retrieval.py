"""What part of a long document goes into the prompt: truncation, or BM25-ranked passages.

``fit_document`` picks token spans of a tokenized document that fit a token budget with one of three
strategies: ``truncate-end`` (the beginning), ``truncate-middle`` (beginning and end) or ``retrieve``:
the token sequence is cut into passages of about ``size`` tokens (preferring to cut where a sentence
or line starts), scored against the question with Okapi BM25 (Robertson & Zaragoza, 2009), and the
best ones that fit are kept in document order, so the model reads them as they appear in the
document. Pure functions, no torch.

    >>> spans = split_passages(offsets, text, size=256)          # [(tok_start, tok_end), ...]
    >>> index = BM25Index([text[a:b] for a, b in char_spans])      # once per document
    >>> kept, ids = fit_document(doc_ids, 1024, "retrieve", passages=spans, scores=index.scores(q))
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

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
GAP_MARKER = "\n[...]\n"  # between kept pieces that are not adjacent in the document

_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")
_SENTENCE_START = re.compile(r"(?:\n\s*|[.!?][\"')\]]*\s+)(?=\S)")


def terms(text: str) -> list[str]:
    """Lower-cased word terms without stopwords, with a light suffix strip (plural 's')."""
    out = []
    for word in _WORD.findall(text.lower()):
        if word in STOPWORDS:
            continue
        if len(word) > 4 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.append(word)
    return out


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
    """Okapi BM25 (Robertson & Zaragoza, 2009) over a fixed list of passages; IDF with Lucene's +1.

    Term counts are computed once, so scoring many questions against one document is cheap.
    """

    def __init__(self, passages: Sequence[str], *, k1: float = 1.2, b: float = 0.75):
        docs = [terms(p) for p in passages]
        self.k1, self.b = k1, b
        self.counts = [Counter(d) for d in docs]
        self.lengths = [len(d) for d in docs]
        self.avg_len = (sum(self.lengths) / len(docs) or 1.0) if docs else 1.0
        self.df: Counter = Counter()
        for c in self.counts:
            self.df.update(c.keys())

    def idf(self, term: str) -> float:
        n, df = len(self.counts), self.df[term]
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def scores(self, query: str) -> list[float]:
        query_terms = [t for t in dict.fromkeys(terms(query)) if self.df[t]]
        idf = {t: self.idf(t) for t in query_terms}
        out = []
        for tf, length in zip(self.counts, self.lengths):
            norm = self.k1 * (1 - self.b + self.b * length / self.avg_len)
            out.append(sum(idf[t] * tf[t] * (self.k1 + 1) / (tf[t] + norm) for t in query_terms if t in tf))
        return out


def bm25_scores(query: str, passages: Sequence[str], *, k1: float = 1.2, b: float = 0.75) -> list[float]:
    """Okapi BM25 score of each passage for the query (one-off; see BM25Index to reuse the counts)."""
    return BM25Index(passages, k1=k1, b=b).scores(query)


def select_passages(
    scores: Sequence[float], lengths: Sequence[int], budget: int, *, separator_len: int = 0
) -> list[int]:
    """Indices of the highest-scoring passages whose lengths fit ``budget``, in document order.

    Passages are taken best first (ties: earlier first); one that does not fit is skipped and smaller
    ones may still fill the rest. ``separator_len`` tokens are charged between passages that are not
    adjacent in the document (the engine marks the gap).
    """
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    chosen: list[int] = []
    for i in order:
        if (
            lengths[i] + _gap_cost(sorted(chosen + [i]), separator_len) + sum(lengths[c] for c in chosen)
            <= budget
        ):
            chosen.append(i)
    return sorted(chosen)


def _gap_cost(indices: Sequence[int], separator_len: int) -> int:
    return separator_len * sum(1 for a, b in zip(indices, indices[1:]) if b != a + 1)


def fit_document(
    ids: Sequence[int],
    budget: int,
    strategy: str,
    *,
    passages: Sequence[tuple[int, int]] | None = None,
    scores: Sequence[float] | None = None,
    gap_ids: Sequence[int] = (),
) -> tuple[list[tuple[int, int]], list[int]]:
    """Choose token spans of ``ids`` that fit ``budget`` tokens (gap markers included) -> (spans, ids).

    retrieve needs ``passages`` (token spans) and their ``scores``.
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
        if passages is None or scores is None:
            raise ValueError("retrieve needs passages and their scores")
        lengths = [e - s for s, e in passages]
        chosen = select_passages(scores, lengths, budget, separator_len=len(gap_ids))
        spans = _merge_spans([passages[i] for i in chosen])
    out: list[int] = []
    for k, (s, e) in enumerate(spans):
        if k:
            out.extend(gap_ids)
        out.extend(ids[s:e])
    return spans, out


def _merge_spans(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for s, e in spans:
        if merged and merged[-1][1] == s:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged
