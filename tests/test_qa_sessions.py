"""Several sessions at once on one engine: no mixing, and the KV caches stay within their byte budget.

Four documents with disjoint vocabularies are asked about from four threads, twice each (the second
round after every session has asked once), on an engine whose byte budget holds about two prompt
caches, so caches are evicted between the rounds. benchmarks/qa_sessions.py does the same through
the app with 16 real documents and the bundled model.
"""

from __future__ import annotations

import re
import threading

from conftest import make_char_tokenizer, tiny_model

from data_tools.document import Document, PageSpan
from data_tools.profiles import ModelProfile
from longlora.qa import QAEngine
from longlora.qa.cache import PromptCaches, cache_bytes

VOCABULARIES = [
    "alpha bravo charlie delta echo foxtrot".split(),
    "apple banana cherry grape lemon mango".split(),
    "red green blue violet indigo yellow".split(),
    "mercury venus earth mars jupiter saturn".split(),
]


def document(words: list[str], seed: int, pages: int = 3) -> Document:
    """Pages of five-word sentences drawn from ``words`` only (a deterministic shuffle)."""
    texts = []
    for p in range(pages):
        sentences = []
        for s in range(8):
            k = seed * 31 + p * 7 + s
            sentences.append(" ".join(words[(k * (i + 3)) % len(words)] for i in range(5)).capitalize() + ".")
        texts.append(" ".join(sentences))
    text, spans, pos = "", [], 0
    for number, page in enumerate(texts, start=1):
        spans.append(PageSpan(number, pos, pos + len(page) + 1))
        text += page + "\n"
        pos += len(page) + 1
    return Document(text=text, name=f"doc{seed}.pdf", kind="pdf", pages=spans)


def engine_for(**kwargs) -> QAEngine:
    # the same weights in every engine (seeded), retrieval of 24-token passages into 96 tokens
    model = tiny_model("llama", max_position_embeddings=1024, initializer_range=0.5)
    profile = ModelProfile(document_budget=96, passage_tokens=24)
    return QAEngine(model=model, tokenizer=make_char_tokenizer(), max_new_tokens=8, profile=profile, **kwargs)


class RecordedCaches(PromptCaches):
    """PromptCaches that measure, after every ``keep``, the bytes of the caches they hold (from the
    caches themselves, not from the bookkeeping under test)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.held: list[tuple[int, int]] = []  # (caches, bytes) after each keep

    def keep(self, session_id, ids, cache):
        super().keep(session_id, ids, cache)
        with self._lock:
            sizes = [cache_bytes(entry.cache) for entry in self._entries.values()]
        self.held.append((len(sizes), sum(sizes)))


def test_concurrent_sessions_keep_their_own_documents_and_caches_within_budget():
    docs = [document(words, seed) for seed, words in enumerate(VOCABULARIES)]
    questions = [(f"What is {w[0]}?", f"And {w[-1]}?") for w in VOCABULARIES]

    # the reference: each question on a fresh engine with the same weights, one at a time, no cache
    reference = []
    for doc, pair in zip(docs, questions):
        solo = engine_for(max_cached_sessions=0)
        session = solo.open_document(doc, material_type="paper")
        reference.append([list(solo.ask(session, q))[-1].text for q in pair])
    roomy = engine_for()
    roomy.answer(roomy.open_document(docs[0], material_type="paper"), questions[0][0])
    one_cache = roomy.cache_stats()["bytes"]
    assert one_cache > 0

    budget = one_cache * 5 // 2  # about two prompt caches: the other sessions' are evicted
    engine = engine_for(max_cached_sessions=16)
    engine._caches = caches = RecordedCaches(16, budget)
    sessions = [engine.open_document(doc, material_type="paper") for doc in docs]
    finals: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []
    between_rounds = threading.Barrier(len(sessions))

    def converse(i: int) -> None:
        try:
            for turn, question in enumerate(questions[i]):
                if turn:
                    between_rounds.wait(timeout=120)  # every session has asked once
                finals[i, turn] = list(engine.ask(sessions[i], question))[-1]
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
            between_rounds.abort()

    threads = [threading.Thread(target=converse, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(finals) == 2 * len(sessions)

    for (i, turn), final in sorted(finals.items()):
        assert final.done and not final.stopped
        assert final.text == reference[i][turn], f"session {i}, question {turn + 1}"
        # its sources are passages of its own document: same text at the same place, own words only
        assert final.fit.sources, f"session {i}: retrieval gave no passages"
        for source in final.fit.sources:
            assert docs[i].text[source.start : source.end] == source.text
            inner_words = re.findall(r"[a-z]+", source.text.lower())[1:-1]  # a passage may cut a word
            assert inner_words and set(inner_words) <= set(VOCABULARIES[i])
            assert not any(source.text in other.text for other in docs if other is not docs[i])
            assert set(source.pages) <= {1, 2, 3}
    # a session's first question starts from an empty cache: a cache shared between sessions would
    # hand it another session's prompt, whose chat-template head it has in common
    assert [finals[i, 0].fit.reused_tokens for i in range(len(sessions))] == [0] * len(sessions)

    assert len(caches.held) == 2 * len(sessions)
    assert max(b for _, b in caches.held) <= budget, caches.held
    assert max(n for n, _ in caches.held) < len(sessions)  # the budget bound, not the count
    stats = engine.cache_stats()
    assert stats["evicted"] > 0 and stats["bytes"] <= budget and stats["max_bytes"] == budget
