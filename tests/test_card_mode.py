"""The document card says how the model reads a document (whole, retrieval or truncation) and what chose
that mode for the model (``ModelProfile.chosen_by``), and the profiles' lines agree with the committed
result files they cite. Tiny random models with a character tokenizer; no downloads.
"""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, make_char_tokenizer, tiny_model
from test_qa import filler

from data_tools import load_text
from data_tools.bundled import DEFAULT_MODEL_NAME
from data_tools.profiles import (
    DEFAULT_PROFILE,
    EXTENDED_PROFILES,
    FINGERPRINTS,
    PROFILES,
    profile_for_config,
    record_profile,
)
from longlora.qa import DocumentCard, QAEngine
from webapp.cards import card_markdown

BUNDLED = PROFILES[DEFAULT_MODEL_NAME]
EXTENDED = PROFILES[EXTENDED_PROFILES[DEFAULT_MODEL_NAME]]
SHORT = "A short note."
LONG = filler(80)  # ~2,800 characters: longer than a 1,024-token window of the character tokenizer


def engine_for(profile_name: str | None, context: int = 1024) -> QAEngine:
    """The real engine on a tiny model whose config names ``profile_name`` (None: no profile recorded, and
    the tiny config matches no fingerprint, so the default profile), as a merged model's config does."""
    model = tiny_model("llama", max_position_embeddings=context)
    if profile_name is not None:
        record_profile(model.config, profile_name)
    return QAEngine(model=model, tokenizer=make_char_tokenizer(), max_new_tokens=8)


def answered(path: str, config: str, ids: set[str] | None = None) -> tuple[int, int]:
    """(right, asked) for the pipeline rows of ``config`` in a committed result file."""
    rows = [json.loads(line) for line in (ROOT / path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["mode"] == "pipeline" and r["config"] == config]
    rows = [r for r in rows if ids is None or r["id"] in ids]
    return sum(r["correct"] for r in rows), len(rows)


def test_profile_lines_quote_the_result_files_they_cite():
    # the profile's readings, as the profile's settings name them, and the best single reading
    readings = "+".join(f"{p}/{lead}" for p, lead in BUNDLED.alternate_readings)
    assert readings == "64/0+128/0" and (BUNDLED.passage_tokens, BUNDLED.lead_tokens) == (128, 64)
    assert answered("results/qa-readings-dev.jsonl", f"retrieve:256:128:1:4:64@brief+{readings}") == (43, 103)
    assert "43/103" in BUNDLED.chosen_by and "(results/qa-readings-dev.jsonl" in BUNDLED.chosen_by
    assert answered("results/qa-tune-dev.jsonl", "retrieve:256:128:1:4:64@brief") == (36, 103)
    assert "36/103" in BUNDLED.chosen_by and "results/qa-tune-dev.jsonl)" in BUNDLED.chosen_by
    # the best of the single settings tried on the whole dev split
    tried = {json.loads(line)["config"] for line in (ROOT / "results/qa-tune-dev.jsonl").open()}
    scores = [answered("results/qa-tune-dev.jsonl", config) for config in sorted(tried)]
    assert max(right for right, asked in scores if asked == 103) == 36
    assert answered("results/qa-whole-bundled.jsonl", "whole:full:256") == (2, 14)
    assert "2/14" in BUNDLED.chosen_by and "(results/qa-whole-bundled.jsonl)" in BUNDLED.chosen_by
    assert answered("results/qa-recipe-extended.jsonl", "retrieve:256:64:1:4@brief") == (18, 40)
    assert answered("results/qa-recipe-extended.jsonl", "whole:256:64:1:4@brief") == (6, 40)
    assert "retrieval into 256 tokens answered 18/40" in EXTENDED.chosen_by
    assert "6/40 (results/qa-recipe-extended.jsonl)" in EXTENDED.chosen_by
    assert "not measured" in DEFAULT_PROFILE.chosen_by and "whole" in DEFAULT_PROFILE.chosen_by
    for profile in PROFILES.values():
        assert profile.chosen_by and "\n" not in profile.chosen_by  # one line for the card


def test_bundled_fingerprint_picks_the_line_of_its_measurement():
    assert profile_for_config(dict(FINGERPRINTS[DEFAULT_MODEL_NAME])).chosen_by == BUNDLED.chosen_by
    assert (
        profile_for_config({"model_type": "llama", "hidden_size": 4096}).chosen_by
        == DEFAULT_PROFILE.chosen_by
    )


@pytest.mark.parametrize(
    "name, profile", [(DEFAULT_MODEL_NAME, BUNDLED), (EXTENDED_PROFILES[DEFAULT_MODEL_NAME], EXTENDED)]
)
def test_card_of_a_measured_profile(name, profile):
    """The bundled model's (and its 16k extension's) 256-token budget: a note that short is read whole,
    anything longer by retrieval (or truncation, when chosen); the card gives the measurement."""
    engine = engine_for(name)
    assert engine.profile == profile
    short = engine.card(engine.open_document(load_text(SHORT), material_type="other"))
    assert short.budget_tokens == 256 and short.fits
    assert (short.mode, short.mode_reason) == ("whole", profile.chosen_by)
    long = engine.open_document(load_text(LONG), material_type="book")
    card = engine.card(long)
    assert card.budget_tokens == 256 and not card.fits
    assert (card.mode, card.mode_reason) == ("retrieval", profile.chosen_by)
    assert engine.card(long, "truncate-end").mode == "truncation"
    text = card_markdown(card)
    assert "**Mode: retrieval.** Longer than the 256-token document budget" in text
    assert f"\n\n{profile.chosen_by}" in text and "Chosen for this model by answers:" in text
    assert "**Mode: whole document.** Fits whole in the 256-token" in card_markdown(short)


def test_card_of_the_default_profile_reads_a_fitting_document_whole():
    """Any other model: the whole window is the budget; a document that fits it is read whole, a longer
    one by the strategy; the card says that this was not measured for the model."""
    engine = engine_for(None)
    assert engine.profile == DEFAULT_PROFILE
    fitting = engine.card(engine.open_document(load_text(filler(20)), material_type="book"))
    assert fitting.fits and 256 < fitting.tokens <= fitting.budget_tokens < 1024
    assert (fitting.mode, fitting.mode_reason) == ("whole", DEFAULT_PROFILE.chosen_by)
    text = card_markdown(fitting)
    assert "**Mode: whole document.**" in text and DEFAULT_PROFILE.chosen_by in text
    long = engine.card(engine.open_document(load_text(LONG), material_type="book"))
    assert not long.fits and (long.mode, long.mode_reason) == ("retrieval", DEFAULT_PROFILE.chosen_by)
    assert "**Mode: retrieval.**" in card_markdown(long)


def test_card_of_several_documents_gives_the_session_mode_and_reason():
    engine = engine_for(DEFAULT_MODEL_NAME)
    session = engine.open_documents(
        [load_text(filler(8, seed=1), name="a.txt"), load_text(filler(8, seed=2), name="b.txt")],
        material_type="other",
    )
    card = engine.card(session)
    assert not card.fits and card.mode == "retrieval" and card.mode_reason == BUNDLED.chosen_by
    assert [each.mode for each in card.documents] == [
        "whole" if each.fits else "retrieval" for each in card.documents
    ]
    text = card_markdown(card)
    assert "**Mode: retrieval.** Together they are longer" in text and BUNDLED.chosen_by in text


def test_card_from_an_engine_that_does_not_say_its_mode():
    """A ``QAEngineLike`` card without ``mode`` still shows one, worked out from fits and the strategy."""
    fields = dict(
        file_name="n.txt",
        kind="txt",
        pages=None,
        words=3,
        tokens=900,
        context_length=1024,
        budget_tokens=500,
        fits=False,
        strategy="truncate-middle",
        material_type="other",
    )
    text = card_markdown(DocumentCard(**fields))
    assert "**Mode: truncation.**" in text and "Chosen" not in text
    assert "**Mode: whole document.**" in card_markdown(DocumentCard(**{**fields, "fits": True}))
