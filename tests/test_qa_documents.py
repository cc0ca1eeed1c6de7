"""Several documents in one QA session (``QAEngine.open_documents``), with a tiny random model and a
character tokenizer: retrieval across documents, sources that name document and page, the whole
documents when they fit together, the limit of 20, and sessions that never mix."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from conftest import make_char_tokenizer
from test_qa import filler, make_engine, paged_document

from data_tools import load_text
from data_tools.document import Document
from longlora.qa import MAX_DOCUMENTS, QAEngine, main
from longlora.qa.prompt import document_heading, passage_heading
from longlora.qa.reports import AnswerUpdate

ZEBRA = " The zebra code is 4417. "
WALRUS = " The walrus code is 9051. "


def named(document, name: str):
    return dataclasses.replace(document, name=name)


def with_fact(fact: str, page: int, seed: int, pages: int = 4) -> list[str]:
    """``pages`` pages of filler with ``fact`` in the middle of page ``page`` (1-based)."""
    text = [filler(6, seed=seed + s) for s in range(pages)]
    text[page - 1] = text[page - 1][:40] + fact + text[page - 1][40:]
    return text


@pytest.fixture
def two_papers():
    """a.pdf: the zebra code on page 2; b.pdf: the walrus code on page 3."""
    return (
        named(paged_document(with_fact(ZEBRA, 2, seed=0)), "a.pdf"),
        named(paged_document(with_fact(WALRUS, 3, seed=10)), "b.pdf"),
    )


def content_tokens(engine, session, question, report) -> int:
    """Tokens of documents (and headings) in the prompt: all of it but the template around them."""
    head, tail, _ = engine.prompt_frame(session, question)
    return report.prompt_tokens - len(head) - len(tail)


def test_retrieval_across_documents_reads_the_right_document_and_names_it(two_papers):
    a, b = two_papers
    engine = make_engine(context=512, budget=60, passage=24)  # room for one passage and its heading
    session = engine.open_documents([a, b], material_type="paper")
    for question, doc, page, fact in (
        ("What is the walrus code?", b, 3, "9051"),
        ("What is the zebra code?", a, 2, "4417"),
    ):
        prompt, report = engine.build_prompt(session, question)
        text = engine.tokenizer.decode(prompt)
        assert fact in text and ({"4417", "9051"} - {fact}).isdisjoint(re.findall(r"\d{4}", text))
        assert not report.fits_whole and content_tokens(engine, session, question, report) <= 60
        assert report.sources and {s.document for s in report.sources} == {doc.name}
        for source in report.sources:  # each source is its own document's text, with its pages
            assert doc.text[source.start : source.end] == source.text
            assert source.pages == doc.pages_for_span(source.start, source.end)
            assert passage_heading(doc.name, source.pages, first=True) + source.text in text
        best = max(report.sources, key=lambda s: s.score)
        assert fact in best.text and page in best.pages
        assert report.pages_used == [] and report.document_pages == {doc.name: [page]}
        assert report.documents == 2 and f"from {doc.name}, page {page}." in report.summary()


def test_passages_of_both_documents_each_under_its_own_heading(two_papers):
    a, b = two_papers
    engine = make_engine(context=512, budget=160, passage=24)
    session = engine.open_documents([a, b], material_type="paper")
    question = "What are the zebra code and the walrus code?"
    prompt, report = engine.build_prompt(session, question)
    text = engine.tokenizer.decode(prompt)
    assert [s.document for s in report.sources] == ["a.pdf", "b.pdf"]  # in session order
    first, second = report.sources
    assert "4417" in first.text and 2 in first.pages and "9051" in second.text and 3 in second.pages
    # the template stays; only the passage headings are new
    headed = passage_heading("a.pdf", first.pages, first=True) + first.text
    headed += passage_heading("b.pdf", second.pages, first=False) + second.text
    assert headed in text and "Below is a paper." in text and text.count("[...]") == 0
    assert content_tokens(engine, session, question, report) <= 160


@pytest.mark.parametrize("budget", [40, 64, 97, 150])
@pytest.mark.parametrize("strategy", ["retrieve", "truncate-middle", "truncate-end"])
def test_every_strategy_stays_within_the_budget_with_several_documents(two_papers, strategy, budget):
    a, b = two_papers
    engine = make_engine(context=1024, budget=budget, passage=24)
    session = engine.open_documents([a, b, named(load_text(filler(20, seed=7)), "notes.txt")])
    question = "What is the walrus code?"
    _, report = engine.build_prompt(session, question, strategy=strategy)
    assert content_tokens(engine, session, question, report) <= budget
    for source in report.sources:
        doc = {"a.pdf": a, "b.pdf": b}.get(source.document)
        if doc is not None:
            assert doc.text[source.start : source.end] == source.text
    if strategy == "truncate-end":  # the beginning: the first document, after its heading
        assert [s.document for s in report.sources] == ["a.pdf"] and report.sources[0].start == 0


def test_all_documents_whole_when_they_fit_together(two_papers):
    a, b = two_papers
    engine = make_engine(context=2048, passage=24)  # no document budget: the window
    session = engine.open_documents([a, b], material_type="paper")
    prompt, report = engine.build_prompt(session, "What is the walrus code?")
    text = engine.tokenizer.decode(prompt)
    whole = document_heading("a.pdf", first=True) + a.text + document_heading("b.pdf", first=False) + b.text
    assert whole in text and report.fits_whole and report.kept_tokens == session.num_tokens
    assert [(s.document, s.text, s.pages) for s in report.sources] == [
        ("a.pdf", a.text, [1, 2, 3, 4]),
        ("b.pdf", b.text, [1, 2, 3, 4]),
    ]
    assert report.summary() == f"All 2 documents are in the prompt: {session.num_tokens:,} tokens."
    card = engine.card(session)
    assert card.fits and [c.file_name for c in card.documents] == ["a.pdf", "b.pdf"]
    assert all(c.fits for c in card.documents) and card.tokens == session.num_tokens
    assert card.tokens == sum(c.tokens for c in card.documents) + len(
        engine.tokenizer(document_heading("a.pdf", True) + document_heading("b.pdf", False))["input_ids"]
    )


def test_whole_documents_only_when_all_fit_at_once(two_papers):
    """Each document fits the window alone, both together do not: retrieval, and the card says which."""
    a, b = two_papers
    profile_kw = dict(prompt_style="brief", whole_document=True, whole_document_style="paper")
    engine = make_engine(context=1024, budget=64, passage=24, profile_kw=profile_kw, max_new_tokens=8)
    alone = engine.open_document(a, material_type="paper")
    _, report = engine.build_prompt(alone, "What is the zebra code?")
    assert report.fits_whole  # the whole-document profile: one document fits the window
    session = engine.open_documents([a, b], material_type="paper")
    prompt, report = engine.build_prompt(session, "What is the zebra code?")
    assert not report.fits_whole and report.kept_tokens <= 64 and report.documents == 2
    assert "Below is a paper." not in engine.tokenizer.decode(prompt)  # the retrieval wording
    card = engine.card(session)
    assert not card.fits and card.budget_tokens == 64
    assert [c.tokens for c in card.documents] == [len(p.ids) for p in session.parts]


def test_a_whole_answer_over_several_documents_cites_the_right_document_and_page(two_papers):
    a, b = two_papers
    profile_kw = dict(prompt_style="brief", whole_document=True, whole_document_style="paper")
    engine = make_engine(context=2048, budget=32, passage=24, profile_kw=profile_kw)
    session = engine.open_documents([a, b], material_type="paper")
    question = "What is the walrus code?"
    _, report = engine.build_prompt(session, question)
    assert report.fits_whole and len(report.sources) == 2
    final = AnswerUpdate("The walrus code is 9051.", "", True, report)
    (cited,) = list(engine._cite_after(session, question, iter([final])))
    assert cited.sources and {s.document for s in cited.sources} == {"b.pdf"}
    assert any("9051" in s.text and 3 in s.pages for s in cited.sources)
    assert all(b.text[s.start : s.end] == s.text for s in cited.sources)
    assert cited.fit.document_pages == {"b.pdf": sorted({p for s in cited.sources for p in s.pages})}


def test_two_sessions_never_mix(two_papers):
    """Two sessions of different documents on one engine: each prompt and source is its own, and an
    answer after the other session's question equals the answer of a fresh engine."""
    a, b = two_papers
    c = named(paged_document(with_fact(" The walrus code is 1234. ", 1, seed=20)), "c.pdf")
    d = named(load_text(filler(12, seed=30)), "d.txt")
    engine = make_engine(context=512, budget=120, passage=24, max_new_tokens=6)
    first = engine.open_documents([a, b], material_type="paper")
    second = engine.open_documents([c, d], material_type="paper")
    question = "What is the walrus code?"

    def answer(eng, session):
        final = list(eng.ask(session, question))[-1]
        return final.text, final.fit

    text_1, fit_1 = answer(engine, first)
    text_2, fit_2 = answer(engine, second)
    best_1, best_2 = (max(fit.sources, key=lambda s: s.score) for fit in (fit_1, fit_2))
    assert best_1.document == "b.pdf" and "9051" in best_1.text
    assert {s.document for s in fit_2.sources} <= {"c.pdf", "d.txt"}
    assert best_2.document == "c.pdf" and "1234" in best_2.text
    assert fit_2.reused_tokens == 0  # nothing of the first session's cache
    fresh = QAEngine(model=engine.model, tokenizer=engine.tokenizer, profile=engine.profile, max_new_tokens=6)
    assert answer(fresh, fresh.open_documents([c, d], material_type="paper"))[0] == text_2
    again, fit = answer(engine, first)  # the first session's own cache is still its own
    assert again == text_1 and fit.reused_tokens > 0


def test_a_session_holds_at_most_twenty_documents_with_their_own_names():
    engine = make_engine()
    docs = [named(load_text(f"Note {i} says {i}."), f"note-{i}.txt") for i in range(MAX_DOCUMENTS + 1)]
    assert MAX_DOCUMENTS == 20
    with pytest.raises(
        ValueError, match="a session holds at most 20 documents, got 21; ask about at most 20"
    ):
        engine.open_documents(docs)
    session = engine.open_documents(docs[:MAX_DOCUMENTS])
    assert len(session.parts) == len(engine.card(session).documents) == 20
    with pytest.raises(ValueError, match="two documents are named note-1.txt; rename one"):
        engine.open_documents([docs[0], docs[1], docs[1]])
    with pytest.raises(ValueError, match="no document to open"):
        engine.open_documents([])
    with pytest.raises(ValueError, match="empty.txt: the document has no text"):
        engine.open_documents([docs[0], Document(text="  ", name="empty.txt")])


def test_a_session_of_one_document_is_as_before():
    engine = make_engine(budget=60, passage=24)
    document = paged_document(with_fact(ZEBRA, 2, seed=0))
    one, listed = engine.open_document(document), engine.open_documents([document])
    assert one.ids == listed.ids == one.parts[0].ids  # no heading
    prompt, report = engine.build_prompt(one, "What is the zebra code?")
    assert prompt == engine.build_prompt(listed, "What is the zebra code?")[0]
    assert "[paged.pdf" not in engine.tokenizer.decode(prompt) and report.pages_used == [2]
    assert report.document_pages == {"paged.pdf": [2]} and report.summary().endswith("(page 2).")
    assert one.document is document and engine.card(one).documents == []
    two = engine.open_documents([document, named(document, "copy.pdf")])
    with pytest.raises(ValueError, match="this session holds 2 documents; read them through session.parts"):
        two.document  # noqa: B018


def test_cli_asks_several_documents_together(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "a.txt").write_text(ZEBRA.strip())
    (tmp_path / "b.txt").write_text(WALRUS.strip())
    docs = ["--doc", str(tmp_path / "a.txt"), "--doc", str(tmp_path / "b.txt")]
    argv = [*docs, "--question", "What is the walrus code?", "--model", str(tiny_model_dir)]
    assert main([*argv, "--max-new-tokens", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert [(s["document"], s["text"]) for s in record["sources"]] == [
        ("a.txt", ZEBRA.strip()),
        ("b.txt", WALRUS.strip()),
    ]
    assert record["fit"]["documents"] == 2 and record["fit"]["fits_whole"]
    for name, text in (("a.txt", ZEBRA), ("b.txt", WALRUS)):  # each one's size (a character a token)
        assert f"[{name}: {len(text.strip())} tokens]" in err
    assert "[a.txt, b.txt: " in err and "fits whole]" in err
    with pytest.raises(SystemExit):
        main([*(["--doc", "x.txt"] * 21), "--question", "Q?"])
    assert "at most 20 --doc flags, got 21" in capsys.readouterr().err


def test_the_char_tokenizer_counts_headings_as_written():
    # the budget arithmetic above counts heading tokens through the engine's tokenizer
    tok = make_char_tokenizer()
    heading = passage_heading("b.pdf", [3, 4], first=False)
    assert heading == "\n\n[b.pdf, pages 3-4]\n" and len(tok(heading)["input_ids"]) == len(heading)
