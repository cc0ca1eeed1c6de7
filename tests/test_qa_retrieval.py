"""longlora.retrieval: passage splitting, BM25 against a direct formula, budgeted selection."""

from __future__ import annotations

import math

import pytest

from longlora.retrieval import bm25_scores, select_passages, sentence_starts, split_passages, terms


def char_offsets(text: str) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(len(text))]


def test_terms_drop_stopwords_and_plural_s():
    assert terms("What are the limitations of the Rcpp packages?") == ["limitation", "rcpp", "package"]
    assert terms("version 1.0.8 and R-Forge") == ["version", "1.0.8", "r", "forge"]


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


def reference_bm25(query, passages, k1=1.2, b=0.75):
    """Textbook Okapi BM25 written out term by term (Lucene's smoothed IDF)."""
    docs = [terms(p) for p in passages]
    avg = sum(map(len, docs)) / len(docs)
    out = []
    for d in docs:
        score = 0.0
        for t in set(terms(query)):
            n_t = sum(1 for other in docs if t in other)
            idf = math.log((len(docs) - n_t + 0.5) / (n_t + 0.5) + 1)
            f = d.count(t)
            score += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avg))
        out.append(score)
    return out


def test_bm25_matches_reference_and_ranks_the_needle_first():
    passages = [
        "The weather was mild and the river was calm.",
        "Rcpp first appeared in 2005 as a contribution by Dominick Samperi.",
        "Samperi wrote several releases; the package was renamed.",
        "Nothing relevant here at all, only filler words about rivers.",
    ]
    query = "Who contributed the first version of Rcpp in 2005?"
    scores = bm25_scores(query, passages)
    assert scores == pytest.approx(reference_bm25(query, passages))
    assert max(range(4), key=scores.__getitem__) == 1
    assert scores[0] == 0 and scores[3] == 0
    assert bm25_scores("the of and", passages) == [0.0] * 4  # only stopwords: no evidence


def test_select_passages_respects_budget_and_document_order():
    scores = [0.1, 3.0, 0.0, 2.0, 5.0]
    lengths = [10, 10, 10, 10, 30]
    assert select_passages(scores, lengths, 40) == [1, 4]  # 4 (30) + 1 (10)
    assert select_passages(scores, lengths, 29) == [1, 3]  # 4 does not fit; 1 + 3 = 20, a third is 30
    chosen = select_passages(scores, lengths, 29, separator_len=5)
    total = sum(lengths[i] for i in chosen) + 5 * sum(1 for a, b in zip(chosen, chosen[1:]) if b != a + 1)
    assert total <= 29 and chosen == sorted(chosen)
    assert select_passages(scores, lengths, 5) == []
