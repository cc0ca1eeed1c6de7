"""longlora.qa with the bundled SmolLM2-135M-Instruct (converted once into the cache, then ~1 s to load)."""

from __future__ import annotations

import pytest
from conftest import fixture_path

from data_tools import load_text

pytestmark = pytest.mark.real_model
BRIDGE = (
    "The Harbor Bridge of Port Alden\n\n"
    "The Harbor Bridge was designed by the engineer Maria Kovalenko and opened to traffic in 1987. "
    "It spans 640 metres across the mouth of the Alden River and carries four lanes of traffic and a "
    "railway line. Construction took six years. The bridge is painted dark green, a colour chosen by a "
    "public vote. Every year in June the city closes the bridge for a festival called the Lantern Walk."
)


@pytest.fixture(scope="module")
def engine():
    from longlora.qa import QAEngine

    return QAEngine("default", max_new_tokens=24)


def test_the_bundled_model_gets_its_measured_profile(engine):
    from data_tools.bundled import DEFAULT_MODEL_NAME
    from data_tools.profiles import PROFILES

    # chosen from its config (architecture), whatever folder the converted model sits in
    assert engine.profile == PROFILES[DEFAULT_MODEL_NAME]


def test_short_document_facts_are_answered(engine):
    session = engine.open_document(load_text(BRIDGE, name="bridge.txt"), material_type="other")
    first = list(engine.ask(session, "In which year did the Harbor Bridge open?"))[-1]
    assert "1987" in first.text, first.text
    assert first.fit.fits_whole and first.fit.reused_tokens == 0
    follow = list(engine.ask(session, "Who designed the Harbor Bridge?"))[-1]
    assert "Kovalenko" in follow.text, follow.text
    # the follow-up prefilled only the question: the document prefix came from the KV cache
    assert follow.fit.reused_tokens > follow.fit.document_tokens
    assert follow.fit.prompt_tokens - follow.fit.reused_tokens < 40
    assert "Now the material ends" not in first.text + follow.text


def test_long_pdf_retrieval_reports_the_page_of_the_answer(engine):
    session = engine.open_document(fixture_path("zoo-faq.pdf"))
    assert session.material_type == "paper" and session.document.num_pages == 15
    card = session.card()
    assert not card.fits and card.tokens > card.budget_tokens
    prompt, report = engine.build_prompt(session, "What default origin does zoo give to as.Date.numeric?")
    assert "1970-01-01" in engine.tokenizer.decode(prompt)
    assert report.strategy == "retrieve" and not report.fits_whole
    pages = {
        p.number for p in session.document.pages if "1970-01-01" in session.document.text[p.start : p.end]
    }
    assert pages & set(report.pages_used)
    assert report.kept_tokens <= report.budget_tokens
