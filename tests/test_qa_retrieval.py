"""longlora.retrieval: passage splitting, BM25 (bm25s) against a direct formula, budgeted selection,
half-overlapping windows and front matter for bibliographic questions."""

from __future__ import annotations

import math
import random

import pytest

from longlora.retrieval import (
    FRONT_TOKENS,
    BM25Index,
    PassageIndex,
    fit_document,
    is_bibliographic,
    join_spans,
    merge_spans,
    overlapping_windows,
    select_spans,
    sentence_starts,
    split_passages,
    stem_terms,
)


def char_offsets(text: str) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(len(text))]


def word_offsets(text: str) -> list[tuple[int, int]]:
    """One token per whitespace-separated word (a stand-in for a tokenizer's offset mapping)."""
    import re

    return [m.span() for m in re.finditer(r"\S+", text)]


def test_stem_terms_match_inflections():
    assert stem_terms("Who contributed it?") == stem_terms("a contribution")[:1] == ["contribut"]
    assert stem_terms("released releases") == ["releas", "releas"]
    assert stem_terms("the of and") == []


def test_sentence_starts():
    text = "One two. Three four!\nFive"
    assert sentence_starts(text) == [0, 9, 21]


@pytest.mark.parametrize("size", [5, 17, 40, 1000])
def test_split_passages_cover_every_token_once_within_size(size):
    text = " ".join(f"Sentence number {i} is here." for i in range(30))
    offsets = char_offsets(text)
    spans = split_passages(offsets, text, size)
    assert spans[0][0] == 0 and spans[-1][1] == len(offsets)
    assert all(a < b and b - a <= size for a, b in spans)
    assert all(prev[1] == nxt[0] for prev, nxt in zip(spans, spans[1:]))


def test_split_passages_prefer_sentence_starts():
    text = " ".join(f"Sentence number {i} is here." for i in range(30))
    starts = set(sentence_starts(text))
    spans = split_passages(char_offsets(text), text, 60)
    assert all(a in starts for a, _ in spans)  # every cut falls where a sentence starts


def test_split_passages_rejects_bad_size():
    with pytest.raises(ValueError, match="passage size must be positive"):
        split_passages([(0, 1)], "x", 0)
    assert split_passages([], "", 10) == []


def reference_bm25(query, passages, analyzer, k1=1.2, b=0.75):
    """Textbook Okapi BM25 written out term by term (Lucene's smoothed IDF)."""
    docs = [analyzer(p) for p in passages]
    avg = sum(map(len, docs)) / len(docs)
    out = []
    for d in docs:
        score = 0.0
        for t in set(analyzer(query)):
            n_t = sum(1 for other in docs if t in other)
            idf = math.log((len(docs) - n_t + 0.5) / (n_t + 0.5) + 1)
            f = d.count(t)
            score += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avg))
        out.append(score)
    return out


PASSAGES = [
    "The weather was mild and the river was calm.",
    "Rcpp first appeared in 2005 as a contribution by Dominick Samperi.",
    "Samperi wrote several releases; the package was renamed.",
    "Nothing relevant here at all, only filler words about rivers.",
]


@pytest.mark.parametrize("analyzer", [stem_terms, str.split])
def test_bm25_matches_reference_up_to_lucenes_constant(analyzer):
    query = "Who contributed the first version of Rcpp in 2005?"
    scores = BM25Index(PASSAGES, analyzer=analyzer).scores(query)
    # Lucene's variant drops the constant factor (k1 + 1) of the textbook formula: same ranking
    expected = reference_bm25(query, PASSAGES, analyzer)
    assert [s * 2.2 for s in scores] == pytest.approx(expected, rel=1e-5)


def test_bm25_ranks_the_needle_first():
    index = BM25Index(PASSAGES)
    scores = index.scores("Who contributed the first version of Rcpp in 2005?")
    assert max(range(4), key=scores.__getitem__) == 1
    assert scores[0] == 0 and scores[3] == 0
    assert index.scores("the of and") == [0.0] * 4  # only stopwords: no evidence
    assert index.scores("zebra") == [0.0] * 4  # a term no passage has
    assert BM25Index([]).scores("anything") == []
    assert BM25Index(["the of", "and"]).scores("the river") == [0.0, 0.0]


@pytest.mark.parametrize(
    "question, needle",
    [
        (
            "Which release shipped the new scheduler?",
            "The scheduler was rewritten for release 4.2, shipped in May.",
        ),
        (
            "How many samples were collected in Norway?",
            "In Norway the team collected 312 samples over two winters.",
        ),
        ("What does the --frobnicate flag do?", "The --frobnicate flag rebuilds the index from scratch."),
    ],
)
def test_bm25_ranks_the_evidence_passage_first_in_a_crafted_document(question, needle):
    rng = random.Random(0)
    filler = "The system reads files and writes reports for users who run the tool on data every day".split()
    passages = [" ".join(rng.choice(filler) for _ in range(40)) + "." for _ in range(30)]
    at = rng.randrange(len(passages))
    passages[at] = passages[at][:120] + " " + needle + " " + passages[at][120:]
    scores = BM25Index(passages).scores(question)
    assert max(range(len(passages)), key=scores.__getitem__) == at


SENTENCES = [f"Sentence {i} says {'many ' * (i % 5)}things about item {i}." for i in range(60)]
TEXT = " ".join(SENTENCES)


@pytest.mark.parametrize("size", [8, 16, 31, 64])
def test_overlapping_windows_never_split_a_short_sentence(size):
    offsets = word_offsets(TEXT)
    windows = overlapping_windows(offsets, TEXT, size)
    assert all(0 < e - s <= size for s, e in windows)
    assert windows[0][0] == 0 and windows[-1][1] == len(offsets)
    starts = set(sentence_starts(TEXT))
    for s, e in windows[1:]:
        assert offsets[s][0] in starts or e - s >= size // 2  # cut at a sentence start unless none fits
    # any run of tokens no longer than the shortest half (0.7 of half a window) lies whole in a window
    shortest = int(0.7 * (size // 2))
    for first in range(len(offsets)):
        for last in range(first + 1, min(first + shortest, len(offsets)) + 1):
            assert any(s <= first and last <= e for s, e in windows), (first, last, size)


def test_overlapping_windows_small_inputs():
    assert overlapping_windows([], "", 8) == []
    assert overlapping_windows(word_offsets("one two"), "one two", 8) == [(0, 2)]
    with pytest.raises(ValueError, match="window size must be at least 2"):
        overlapping_windows([(0, 1)], "x", 1)


def test_merge_and_join_spans():
    assert merge_spans([(5, 9), (0, 3), (3, 4), (8, 12)]) == [(0, 4), (5, 12)]
    assert join_spans(list(range(10)), [(0, 2), (2, 4), (7, 9)], gap_ids=[-1]) == [0, 1, 2, 3, -1, 7, 8]


def brute_force_cost(spans, separator_len):
    covered = sorted({t for s, e in spans for t in range(s, e)})
    pieces = sum(1 for i, t in enumerate(covered) if i == 0 or covered[i - 1] != t - 1)
    return len(covered) + separator_len * max(0, pieces - 1)


@pytest.mark.parametrize("seed", range(20))
def test_select_spans_fits_the_budget_counting_overlaps_once(seed):
    rng = random.Random(seed)
    spans = []
    for _ in range(12):
        s = rng.randrange(0, 200)
        spans.append((s, s + rng.randrange(1, 40)))
    scores = [rng.choice([0.0, rng.random()]) for _ in spans]
    budget, sep = rng.randrange(10, 120), rng.randrange(0, 5)
    chosen = select_spans(spans, scores, budget, separator_len=sep)
    assert brute_force_cost(chosen, sep) <= budget
    assert chosen == merge_spans(chosen)  # merged, in document order
    # every kept token comes from a span with a question term (score > 0)
    useful = {t for (s, e), sc in zip(spans, scores) if sc > 0 for t in range(s, e)}
    assert {t for s, e in chosen for t in range(s, e)} <= useful
    # the best span that fits alone is always taken
    best = max((i for i in range(len(spans)) if scores[i] > 0), key=lambda i: (scores[i], -i), default=None)
    if best is not None and spans[best][1] - spans[best][0] <= budget:
        s, e = spans[best]
        assert any(a <= s and e <= b for a, b in chosen)


def test_select_spans_overlap_costs_only_new_tokens():
    spans = [(0, 10), (5, 15), (40, 50)]
    assert select_spans(spans, [3.0, 2.0, 1.0], 15) == [(0, 15)]  # the second window adds 5 tokens
    assert select_spans(spans, [3.0, 2.0, 1.0], 26, separator_len=1) == [(0, 15), (40, 50)]
    assert select_spans(spans, [3.0, 2.0, 1.0], 12, required=[(100, 104)]) == [(100, 104)]


def test_select_spans_required_first_and_trimmed():
    spans = [(20, 30), (40, 50)]
    chosen = select_spans(spans, [1.0, 2.0], 25, separator_len=2, required=[(0, 12)])
    assert chosen == [(0, 12), (40, 50)]  # front (12) + gap (2) + best (10) = 24; (20, 30) no longer fits
    assert select_spans(spans, [1.0, 2.0], 8, required=[(0, 12)]) == [(0, 8)]


@pytest.mark.parametrize(
    "question, expected",
    [
        ("Who wrote this paper?", True),
        ("Who are the authors of the Rcpp paper?", True),
        ("In which journal was it published?", True),
        ("Which university is the second author from?", True),
        ("Which release of the packaging guide is this?", True),
        ("Which version of R is this manual for?", True),
        ("In which version of R were reference classes introduced?", False),
        ("How often is a new version of Ubuntu released?", False),
        ("Per capita income of which year is used in the regression?", False),
        ("Where did Georgiana go last summer?", False),
    ],
)
def test_is_bibliographic(question, expected):
    assert is_bibliographic(question) is expected


FRONT = "Seamless Widgets. Ada Lovelace and Charles Babbage. Journal of Engines, 1843. "
BODY = " ".join(
    f"Section {i} describes gear {i} of the engine, which turns {i * 3} times per crank. " for i in range(200)
)
DOC = FRONT + BODY


def test_passage_index_adds_front_matter_only_for_bibliographic_questions():
    offsets = word_offsets(DOC)
    index = PassageIndex(offsets, DOC, 32, front_tokens=12)
    biblio = index.select("Who are the authors of this paper?", budget=60, separator_len=2)
    assert biblio[0] == (0, 12) and "Lovelace" in DOC[offsets[0][0] : offsets[11][1]]
    plain = index.select("How many times per crank does gear 117 turn?", budget=60, separator_len=2)
    assert plain[0][0] > 12
    kept = " ".join(DOC[offsets[s][0] : offsets[e - 1][1]] for s, e in plain)
    assert "gear 117 of the engine, which turns 351 times" in kept
    for spans in (biblio, plain):
        assert brute_force_cost(spans, 2) <= 60


def test_lead_tokens_keep_the_opening_for_every_question_and_still_fit_the_budget():
    offsets = word_offsets(DOC)
    index = PassageIndex(offsets, DOC, 32, front_tokens=12)
    q = "How many times per crank does gear 117 turn?"
    spans = index.select(q, budget=60, separator_len=2, lead_tokens=8)
    assert spans[0] == (0, 8) and brute_force_cost(spans, 2) <= 60
    kept = " ".join(DOC[offsets[s][0] : offsets[e - 1][1]] for s, e in spans)
    assert "Seamless Widgets" in kept and "gear 117 of the engine, which turns 351 times" in kept
    # a bibliographic question gets the longer of the two openings
    assert index.select("Who wrote this paper?", 60, separator_len=2, lead_tokens=8)[0] == (0, 12)
    assert index.select("Who wrote this paper?", 60, separator_len=2, lead_tokens=20)[0] == (0, 20)
    assert index.select(q, 60, separator_len=2, lead_tokens=0) == index.select(q, 60, separator_len=2)


def test_passage_index_is_deterministic_and_keeps_short_documents_whole():
    offsets = word_offsets(DOC)
    q = "Which gear turns 300 times per crank?"
    first = PassageIndex(offsets, DOC, 32).select(q, 100, separator_len=3)
    assert all(PassageIndex(offsets, DOC, 32).select(q, 100, separator_len=3) == first for _ in range(3))
    index = PassageIndex(offsets, DOC, 32)
    assert index.select(q, 100, separator_len=3, scores=index.scores(q)) == first
    assert PassageIndex(offsets, DOC, 32).select(q, len(offsets)) == [(0, len(offsets))]
    assert PassageIndex([], "", 32).select(q, 10) == []
    assert FRONT_TOKENS > 0


def test_fit_document_dispatches_every_strategy_once():
    ids = list(range(100))
    asked = []

    def retrieve(room):
        asked.append(room)
        return [(75, 100), (25, 50)]  # any order: kept in document order

    spans, out = fit_document(ids, 52, "retrieve", retrieve=retrieve, gap_ids=[-1])
    assert asked == [52] and spans == [(25, 50), (75, 100)]
    assert out == list(range(25, 50)) + [-1] + list(range(75, 100))
    spans, out = fit_document(ids, 30, "truncate-middle", gap_ids=[-1], retrieve=retrieve)
    assert spans == [(0, 15), (86, 100)] and len(out) == 30 and asked == [52]  # not asked to retrieve
    assert fit_document(ids, 100, "retrieve", retrieve=retrieve) == ([(0, 100)], ids) and asked == [52]
    with pytest.raises(ValueError, match="needs a retrieve"):
        fit_document(ids, 10, "retrieve")
    with pytest.raises(ValueError, match="unknown strategy 'all'"):
        fit_document(ids, 10, "all")


# ----------------------------------------------------------------------------- several documents, one index

SECOND = "Field Notes on Walruses. Ida Pfeiffer. Polar Review, 1851. " + " ".join(
    f"Walrus {i} rests on floe {i}, which drifts {i * 7} miles per day. " for i in range(120)
)


def test_passage_index_of_documents_ranks_every_window_in_one_bm25_index():
    """Windows stay inside their document; their scores are textbook BM25 over the windows of both
    documents together (one collection: a term's IDF counts the windows of either document)."""
    docs = [(0, word_offsets(DOC), DOC)]
    docs.append((len(docs[0][1]) + 5, word_offsets(SECOND), SECOND))  # 5 tokens of heading in between
    index = PassageIndex.of_documents(docs, 32)
    for (s, e), k in zip(index.windows, index.owners):
        start, offsets, _ = docs[k]
        assert start <= s < e <= start + len(offsets)  # never across documents, never on the heading
    for k, (start, offsets, text) in enumerate(docs):  # each document has exactly its own windows
        own = [(s - start, e - start) for (s, e), o in zip(index.windows, index.owners) if o == k]
        assert own == overlapping_windows(offsets, text, 32)
    texts = [
        docs[k][2][docs[k][1][s - docs[k][0]][0] : docs[k][1][e - 1 - docs[k][0]][1]]
        for (s, e), k in zip(index.windows, index.owners)
    ]
    question = "Which walrus rests on floe 57 and which gear turns 300 times?"
    expected = reference_bm25(question, texts, stem_terms)
    assert [s * 2.2 for s in index.scores(question)] == pytest.approx(expected, rel=1e-5)
    # one document through of_documents is the plain index
    single = PassageIndex.of_documents(docs[:1], 32)
    plain = PassageIndex(docs[0][1], DOC, 32)
    assert single.windows == plain.windows and single.scores(question) == plain.scores(question)


def test_passage_index_of_documents_selects_across_them_with_the_callers_cost():
    a, b = word_offsets(DOC), word_offsets(SECOND)
    index = PassageIndex.of_documents([(0, a, DOC), (len(a) + 5, b, SECOND)], 32, front_tokens=12)
    start_b = len(a) + 5

    def headed(spans):  # a 4-token heading before every piece
        return sum(e - s + 4 for s, e in spans)

    picked = index.select("How far does walrus 57 drift per day?", 80, cost=headed)
    assert headed(picked) <= 80
    in_b = [(s, e) for s, e in picked if s >= start_b]  # (DOC's gear 57 may come along: it matches "57")
    kept = " ".join(SECOND[b[s - start_b][0] : b[e - 1 - start_b][1]] for s, e in in_b)
    assert "Walrus 57 rests on floe 57, which drifts 399 miles" in kept
    # a bibliographic question gets the opening of the document it is about...
    biblio = index.select("Who wrote the paper on walruses?", 80, cost=headed)
    assert biblio[0][0] == start_b and biblio[0][1] >= start_b + 12 and headed(biblio) <= 80
    # ...and of the first document when no window matches
    assert index.select("Who is the author?", 80, cost=headed) == [(0, 12)]


@pytest.mark.parametrize("seed", range(10))
def test_select_spans_with_a_cost_never_exceeds_the_budget(seed):
    rng = random.Random(seed)
    spans = [(s, s + rng.randrange(1, 30)) for s in (rng.randrange(0, 300) for _ in range(15))]
    scores = [rng.choice([0.0, rng.random()]) for _ in spans]
    budget = rng.randrange(20, 150)

    def cost(merged):  # a heading as long as the piece's first token number has digits
        return sum(e - s + len(str(s)) for s, e in merged)

    chosen = select_spans(spans, scores, budget, cost=cost, required=[(0, rng.randrange(1, 20))])
    assert chosen == merge_spans(chosen) and cost(chosen) <= budget
    # the default cost is the separator rule
    assert select_spans(spans, scores, budget, separator_len=3) == select_spans(
        spans, scores, budget, cost=lambda m: brute_force_cost(m, 3)
    )
