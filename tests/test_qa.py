"""longlora.qa with a tiny random model: prompt, budget, fit strategies, decoding, cache reuse, concurrency."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import make_char_tokenizer, tiny_model

from data_tools import load_text
from data_tools.document import Document, PageSpan
from data_tools.profiles import ModelProfile
from data_tools.prompts import build_instruction, guess_material_type, prompt_prefix, prompt_suffix
from longlora.qa import AnswerUpdate, QAEngine
from longlora.qa.prompt import normalize_history, prompt_parts
from longlora.qa.sampling import banned_ngram_tokens
from longlora.retrieval import GAP_MARKER, fit_document

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


def filler(n_sentences: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_sentences):
        idx = torch.randint(len(WORDS), (5,), generator=g).tolist()
        out.append(" ".join(WORDS[i] for i in idx).capitalize() + ".")
    return " ".join(out)


def make_engine(context=256, budget=None, passage=32, **kw):
    # A wide init makes the random model's greedy text varied (the default init repeats whitespace).
    model = tiny_model("llama", max_position_embeddings=context, initializer_range=0.5)
    return QAEngine(
        model=model,
        tokenizer=make_char_tokenizer(),
        max_new_tokens=kw.pop("max_new_tokens", 8),
        profile=ModelProfile(document_budget=budget, passage_tokens=passage, **kw.pop("profile_kw", {})),
        **kw,
    )


@pytest.fixture
def engine():
    return make_engine()


def paged_document(pages: list[str]) -> Document:
    text, spans, pos = "", [], 0
    for number, page in enumerate(pages, start=1):
        piece = page + "\n"
        spans.append(PageSpan(number, pos, pos + len(piece)))
        text += piece
        pos += len(piece)
    return Document(text=text, name="paged.pdf", kind="pdf", pages=spans)


# ----------------------------------------------------------------------------- prompt construction


def test_prompt_is_paper_template_inside_chat_template(char_tokenizer):
    head, tail = prompt_parts(char_tokenizer, "What year?", "paper")
    content = "The bridge opened in 1987."
    expected = char_tokenizer.apply_chat_template(
        [{"role": "user", "content": build_instruction(content, "What year?", "paper")}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert head + content + tail == expected
    assert head.endswith(prompt_prefix("paper"))
    assert tail.startswith("\nNow the material ends. What year?")
    assert tail.endswith("<|im_start|>assistant\n")


def test_prompt_without_chat_template_uses_inst_wrapping():
    tok = make_char_tokenizer(chat_template=None)
    head, tail = prompt_parts(tok, "Who?", "book")
    assert head == "[INST]" + prompt_prefix("book")
    assert tail == "\nNow the material ends. Who?[/INST]"


def test_history_keeps_document_first_and_question_last(char_tokenizer):
    messages = [
        {"role": "user", "content": "First?"},
        {"role": "assistant", "content": "One."},
        {"role": "user", "content": "Second?"},
        {"role": "assistant", "content": "Two."},
    ]
    assert normalize_history(messages) == [("First?", "One."), ("Second?", "Two.")]
    assert normalize_history([("First?", "One.")]) == [("First?", "One.")]
    head, tail = prompt_parts(char_tokenizer, "Third?", "other", messages)
    assert "Now the material ends. First?" in tail
    assert tail.index("One.") < tail.index("Second?") < tail.index("Two.") < tail.index("Third?")
    assert tail.endswith("Third?<|im_end|>\n<|im_start|>assistant\n")
    assert "First?" not in head  # the document comes before every question


def test_budget_arithmetic(engine):
    session = engine.open_document(load_text(filler(40)), material_type="paper")
    question = "Where is golf?"
    head, tail = prompt_parts(engine.tokenizer, question, "paper")
    overhead = len(engine.tokenizer(head + tail, add_special_tokens=False)["input_ids"])
    assert engine.document_budget(session, question) == 256 - overhead - engine.max_new_tokens
    engine.profile = ModelProfile(document_budget=20)
    assert engine.document_budget(session, question) == 20
    prompt, report = engine.build_prompt(session, question, max_new_tokens=8)
    assert report.budget_tokens == 20 and report.kept_tokens <= 20
    assert len(prompt) + 8 <= engine.context_length


def test_card_reports_tokens_and_fit(engine):
    small = engine.open_document(load_text("A short note."), material_type="other")
    card = small.card()
    assert card.fits and card.tokens == len("A short note.") and card.context_length == 256
    assert "short" not in card.file_name
    big = engine.open_document(load_text(filler(80)), material_type="book")
    card = big.card("truncate-middle")
    assert not card.fits and card.tokens > card.budget_tokens and card.strategy == "truncate-middle"
    with pytest.raises(ValueError, match="unknown strategy"):
        big.card("summarize")


def test_too_long_question_is_a_clear_error(engine):
    session = engine.open_document(load_text("Some text."), material_type="other")
    with pytest.raises(ValueError, match="no room for the document"):
        engine.ask(session, "why " * 80)


def test_history_is_dropped_oldest_first_when_it_does_not_fit(engine):
    session = engine.open_document(load_text(filler(30)), material_type="other")
    history = [(f"Question {i}?", "x" * 40) for i in range(6)]
    prompt, report = engine.build_prompt(session, "Last?", history=history, max_new_tokens=8)
    text = engine.tokenizer.decode(prompt)
    assert "Last?" in text and "Question 5?" in text and "Question 0?" not in text
    assert len(prompt) + 8 <= engine.context_length and report.kept_tokens >= 16


# ----------------------------------------------------------------------------- fit strategies


@pytest.mark.parametrize("strategy", ["retrieve", "truncate-middle", "truncate-end"])
@pytest.mark.parametrize("budget", [16, 50, 97])
def test_each_strategy_stays_within_budget(strategy, budget):
    engine = make_engine(budget=budget, passage=24)
    document = paged_document([filler(6, seed=s) for s in range(6)])
    session = engine.open_document(document, material_type="paper")
    ids = session.ids
    prompt, report = engine.build_prompt(session, "Where is kilo?", strategy=strategy)
    head_ids, tail_ids, frame_budget = engine.prompt_frame(
        session, "Where is kilo?", None, engine.max_new_tokens
    )
    assert frame_budget == budget
    content = prompt[len(head_ids) : len(prompt) - len(tail_ids)]
    assert prompt[: len(head_ids)] == head_ids and prompt[len(prompt) - len(tail_ids) :] == tail_ids
    assert len(content) <= budget
    assert report.kept_tokens <= budget and not report.fits_whole
    assert report.document_tokens == len(ids) and report.strategy == strategy
    # the kept content is the document's own text, pieces joined by gap markers
    pieces = engine.tokenizer.decode(content).split(GAP_MARKER)
    assert sum(len(p) for p in pieces) == report.kept_tokens  # char tokenizer: 1 token = 1 char
    assert all(piece in document.text for piece in pieces)
    assert len(pieces) == report.passages
    assert report.pages_used and set(report.pages_used) <= set(range(1, 7))


def test_truncate_end_and_middle_keep_the_right_tokens():
    ids = list(range(100))
    spans, out = fit_document(ids, 10, "truncate-end")
    assert spans == [(0, 10)] and out == ids[:10]
    spans, out = fit_document(ids, 10, "truncate-middle", gap_ids=[-1, -1])
    assert spans == [(0, 4), (96, 100)] and out == [0, 1, 2, 3, -1, -1, 96, 97, 98, 99]
    spans, out = fit_document(ids, 200, "retrieve")
    assert spans == [(0, 100)] and out == ids  # fits whole: no retrieval needed


def test_retrieve_finds_the_needle_and_reports_its_page():
    engine = make_engine(budget=60, passage=24)
    pages = [filler(8, seed=s) for s in range(8)]
    pages[5] = pages[5][:40] + " The zebra code is 4417. " + pages[5][40:]
    session = engine.open_document(paged_document(pages), material_type="paper")
    prompt, report = engine.build_prompt(session, "What is the zebra code?")
    assert "4417" in engine.tokenizer.decode(prompt)
    assert 6 in report.pages_used and report.passages >= 1
    assert "pages" in report.summary() or "page" in report.summary()
    # truncate-end cannot see page 6
    prompt, report = engine.build_prompt(session, "What is the zebra code?", strategy="truncate-end")
    assert "4417" not in engine.tokenizer.decode(prompt) and report.pages_used == [1]


def test_whole_document_when_it_fits(engine):
    document = paged_document(["Page one text.", "Page two text."])
    session = engine.open_document(document, material_type="paper")
    prompt, report = engine.build_prompt(session, "Anything?")
    assert report.fits_whole and report.kept_tokens == report.document_tokens
    assert report.pages_used == [1, 2]
    assert document.text in engine.tokenizer.decode(prompt)
    assert report.summary().startswith("The whole document is in the prompt")


def test_whole_document_profile_puts_a_fitting_document_in_whole_in_the_paper_template():
    """A profile with whole_document ignores its small retrieval budget for a document that fits the
    window (the paper's demo: the whole document, the paper's template), and falls back to the
    budget and the brief wording for one that does not."""
    profile_kw = dict(prompt_style="brief", whole_document=True, whole_document_style="paper")
    engine = make_engine(context=512, budget=32, passage=16, profile_kw=profile_kw)
    short = paged_document([filler(3, seed=1), filler(3, seed=2)])
    session = engine.open_document(short, material_type="paper")
    assert 32 < session.num_tokens < 400
    prompt, report = engine.build_prompt(session, "Anything?")
    text = engine.tokenizer.decode(prompt)
    assert report.fits_whole and report.kept_tokens == session.num_tokens and report.pages_used == [1, 2]
    assert short.text in text and prompt_prefix("paper") in text  # the paper's template
    assert engine.card(session).fits
    # a document longer than the window: retrieval within the 32-token budget, brief wording
    long = paged_document([filler(40, seed=s) for s in range(3)])
    session = engine.open_document(long, material_type="paper")
    prompt, report = engine.build_prompt(session, "Anything?")
    assert not report.fits_whole and report.kept_tokens <= 32
    assert prompt_prefix("paper") not in engine.tokenizer.decode(prompt)
    # the same short document without whole_document stays within the budget
    plain = make_engine(context=512, budget=32, passage=16, profile_kw={"prompt_style": "brief"})
    prompt, report = plain.build_prompt(plain.open_document(short, material_type="paper"), "Anything?")
    assert not report.fits_whole and report.kept_tokens <= 32


# ----------------------------------------------------------------------------- generation


def reference_greedy(model, prompt_ids, max_new, eos_ids):
    """Plain full-recompute greedy decoding (no cache): the slow reference."""
    ids = list(prompt_ids)
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if nxt in eos_ids:
                break
            out.append(nxt)
            ids.append(nxt)
    return out


def test_streamed_greedy_answer_matches_reference_and_never_contains_prompt(engine):
    session = engine.open_document(load_text(filler(10)), material_type="other")
    prompt, _ = engine.build_prompt(session, "What is alpha?", max_new_tokens=12)
    updates = list(engine.ask(session, "What is alpha?", max_new_tokens=12))
    final = updates[-1]
    assert final.done and not final.stopped and all(not u.done for u in updates[:-1])
    assert "".join(u.delta for u in updates) == final.text
    expected = reference_greedy(engine.model, prompt, 12, engine.eos_ids)
    assert final.text == engine.tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert final.new_tokens == len(expected)
    assert "Memorize the content" not in final.text


def test_cache_reuse_gives_the_same_tokens_as_a_fresh_prefill():
    reuse = make_engine(context=512, max_new_tokens=10)
    fresh = make_engine(context=512, max_new_tokens=10, max_cached_sessions=0)
    text = filler(3)  # fits whole, so every question shares the document prefix
    s_reuse = reuse.open_document(load_text(text), material_type="other")
    s_fresh = fresh.open_document(load_text(text), material_type="other")
    questions = ["What is alpha?", "And bravo?", "What is alpha?"]
    history = []
    for i, q in enumerate(questions):
        a = list(reuse.ask(s_reuse, q, history=history))[-1]
        b = list(fresh.ask(s_fresh, q, history=history))[-1]
        assert a.text == b.text and a.text and a.fit.fits_whole
        assert b.fit.reused_tokens == 0
        if i:
            # the whole document prefix (and more) came from the cache; only the rest was prefilled
            head, _ = prompt_parts(reuse.tokenizer, q, "other", history)
            doc_prefix = len(reuse.tokenizer(head, add_special_tokens=False)["input_ids"]) + len(text)
            assert a.fit.reused_tokens >= doc_prefix
            assert a.fit.prompt_tokens - a.fit.reused_tokens < a.fit.prompt_tokens - doc_prefix + 1
        history = history + [(q, a.text)]


def test_sampling_top_p_tiny_is_greedy_and_temperature_samples(engine):
    session = engine.open_document(load_text(filler(5)), material_type="other")
    greedy = engine.answer(session, "Echo?", max_new_tokens=8)
    assert engine.answer(session, "Echo?", max_new_tokens=8, temperature=1.0, top_p=1e-9) == greedy
    torch.manual_seed(0)
    samples = {engine.answer(session, "Echo?", max_new_tokens=8, temperature=5.0) for _ in range(4)}
    assert len(samples) > 1  # a random tiny model at temperature 5 is not deterministic


def test_no_repeat_ngram_control():
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 3) == {3}
    assert banned_ngram_tokens([1, 2, 3], 2) == set()
    assert banned_ngram_tokens([4, 4], 1) == {4}
    engine = make_engine(max_new_tokens=40, profile_kw={"no_repeat_ngram_size": 2})
    session = engine.open_document(load_text(filler(5)), material_type="other")
    prompt, _ = engine.build_prompt(session, "Go on?", max_new_tokens=40)
    tokens = engine.tokenizer(engine.answer(session, "Go on?"), add_special_tokens=False)["input_ids"]
    bigrams = list(zip(tokens, tokens[1:]))
    assert len(bigrams) == len(set(bigrams))


def test_stop_event_ends_generation_and_releases_the_lock():
    engine = make_engine(context=1024)
    session = engine.open_document(load_text(filler(5)), material_type="other")
    stop = threading.Event()
    updates = []
    for update in engine.ask(session, "Talk?", max_new_tokens=200, stop_event=stop):
        updates.append(update)
        stop.set()
    assert updates[-1].done and updates[-1].stopped
    assert updates[-1].new_tokens < 200
    assert engine.answer(session, "Again?", max_new_tokens=3) is not None  # the lock is free


def test_abandoned_iterator_releases_the_lock():
    engine = make_engine(context=1024)
    session = engine.open_document(load_text(filler(5)), material_type="other")
    stream = engine.ask(session, "Talk?", max_new_tokens=200)
    next(stream)
    stream.close()
    done = threading.Event()
    threading.Thread(target=lambda: (engine.answer(session, "Next?", max_new_tokens=2), done.set())).start()
    assert done.wait(60)


def test_concurrent_requests_do_not_mix():
    engine = make_engine(max_new_tokens=12)
    texts = [filler(10, seed=1), filler(10, seed=2), "zulu " * 30]
    questions = ["What is alpha?", "What is kilo?", "What is zulu?"]
    sessions = [engine.open_document(load_text(t), material_type="other") for t in texts]
    # reference: each question answered by a fresh engine with the same weights, one at a time
    reference = []
    for t, q in zip(texts, questions):
        solo = make_engine(max_new_tokens=12)
        reference.append(solo.answer(solo.open_document(load_text(t), material_type="other"), q))
    results: dict[int, list[AnswerUpdate]] = {}

    def run(i):
        results[i] = list(engine.ask(sessions[i], questions[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [results[i][-1].text for i in range(3)] == reference
    # second round: each session's cache holds only its own document
    for i in (2, 0, 1):
        assert engine.answer(sessions[i], questions[i]) == reference[i]


# ----------------------------------------------------------------------------- input checks


def test_bad_requests_fail_fast(engine):
    session = engine.open_document(load_text("Text."), material_type="other")
    with pytest.raises(ValueError, match="type a question"):
        engine.ask(session, "   ")
    with pytest.raises(ValueError, match="unknown strategy"):
        engine.ask(session, "Q?", strategy="everything")
    with pytest.raises(ValueError, match="temperature"):
        engine.ask(session, "Q?", temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        engine.ask(session, "Q?", top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.ask(session, "Q?", max_new_tokens=0)
    other = make_engine()
    with pytest.raises(ValueError, match="another engine"):
        other.ask(session, "Q?")
    with pytest.raises(ValueError, match="unknown material type"):
        engine.open_document(load_text("Text."), material_type="poem")


def test_injected_model_context_checks():
    with pytest.raises(ValueError, match="exceeds the model's 256-token window"):
        QAEngine(model=tiny_model(), tokenizer=make_char_tokenizer(), context_length=1024)
    engine = QAEngine(model=tiny_model(), tokenizer=make_char_tokenizer(), context_length=128)
    assert engine.context_length == 128 and engine.state == "ready"
    with pytest.raises(ValueError, match="both model= and tokenizer="):
        QAEngine(model=tiny_model())


def test_guess_material_type():
    assert guess_material_type(load_text("Just a note about lunch.")) == "other"
    assert guess_material_type(load_text("Abstract\nWe study things.\nReferences\n[1] A.")) == "paper"
    book = "CHAPTER 1\n" + ("It was a fine day and they walked. " * 5000)
    assert guess_material_type(load_text(book)) == "book"


# ----------------------------------------------------------------------------- one prompt for training and serving


@pytest.mark.parametrize("chat", [True, False], ids=["chat-template", "inst-wrapping"])
def test_same_document_same_prompt_in_training_and_serving(tmp_path, chat):
    """A document and a question: the LongAlpaca builder + SFT rendering give the prompt the QA engine sends."""
    import json
    from collections import Counter

    from data_tools.document import load_document
    from data_tools.longalpaca import document_index, qa_candidates
    from longlora.training.data import IGNORE_INDEX, build_sft_example

    doc_path = tmp_path / "notes.txt"
    doc_path.write_text(filler(20, seed=3))
    qa_path = tmp_path / "qa.jsonl"
    question = "Where is kilo?"
    qa_path.write_text(json.dumps({"doc": "notes.txt", "question": question, "answer": "Here."}) + "\n")
    document = load_document(doc_path)
    (record,) = [
        c.record for c in qa_candidates(str(qa_path), document_index([document]), set(), None, Counter())
    ]
    tokenizer = make_char_tokenizer() if chat else make_char_tokenizer(chat_template=None)
    example = build_sft_example(record, tokenizer, max_length=4096)
    training = [t for t, label in zip(example.input_ids, example.labels) if label == IGNORE_INDEX]

    model = tiny_model("llama", max_position_embeddings=4096)
    engine = QAEngine(model=model, tokenizer=tokenizer, max_new_tokens=8, profile=ModelProfile())
    session = engine.open_document(doc_path)
    serving, report = engine.build_prompt(session, question)
    assert report.fits_whole and session.material_type == "other"
    assert serving == training, (tokenizer.decode(serving), tokenizer.decode(training))


def test_material_type_guess_is_shared_by_training_and_serving(engine):
    """A 25,000-word text is a book for the LongAlpaca builder and for the QA engine alike."""
    from data_tools.longalpaca import default_material_type

    long_text = load_text(
        " ".join(["The river ran past the old mill and on to the sea."] * 2300), name="river.txt"
    )
    assert long_text.word_count > 25_000
    short_pdf = paged_document(["Abstract. We measure rivers.", "References [1] Someone."])
    short_txt = load_text("Abstract\nWe measure rivers.\nReferences\n[1] Someone.")
    for document, expected in ((long_text, "book"), (short_pdf, "paper"), (short_txt, "paper")):
        assert default_material_type(document) == expected
        assert guess_material_type(document) == expected
        assert engine.open_document(document).material_type == expected


# ----------------------------------------------------------------------------- sources


def test_sources_are_the_kept_pieces_with_pages_and_scores():
    engine = make_engine(budget=50, passage=24)
    pages = [filler(6, seed=s) for s in range(6)]
    pages[4] = pages[4][:40] + " The zulu code is kept in vault seven. " + pages[4][40:]
    document = paged_document(pages)
    session = engine.open_document(document, material_type="paper")
    prompt, report = engine.build_prompt(session, "Which vault keeps the zulu code?")
    assert len(report.sources) == report.passages >= 1
    for source in report.sources:
        assert document.text[source.start : source.end] == source.text
        assert source.pages == sorted(document.pages_for_span(source.start, source.end))
        assert source.score is not None
    best = max(report.sources, key=lambda s: s.score)
    assert "vault" in best.text and 5 in best.pages
    assert sorted({p for s in report.sources for p in s.pages}) == report.pages_used
    assert sum(len(s.text) for s in report.sources) == report.kept_tokens  # char tokenizer
    # a document that fits whole is one source without a score
    whole = engine.open_document(load_text("Short note."), material_type="other")
    (only,) = engine.build_prompt(whole, "What?")[1].sources
    assert only.text == "Short note." and only.pages == [] and only.score is None
    final = list(engine.ask(whole, "What?"))[-1]
    assert final.sources == final.fit.sources and final.sources[0].to_dict() == {
        "text": "Short note.",
        "pages": [],
        "score": None,
        "document": "pasted text",  # the name of the document it comes from
    }


def test_retrieve_gives_the_front_matter_to_a_bibliographic_question():
    # Authors and journal on page 1; the body says "wrote" six times, so BM25 alone (the engine's
    # retrieval before PassageIndex) fills the budget with body passages and never reaches page 1.
    engine = make_engine(context=512, budget=160, passage=32)
    front = "Seamless Widgets\nAda Lovelace and Charles Babbage\nJournal of Engines, 1843\n"
    pages = [front + filler(4, seed=0)] + [filler(6, seed=s) for s in range(1, 8)]
    for k in range(1, 7):
        pages[k] = pages[k][:30] + " The clerk wrote it down. " + pages[k][30:]
    document = paged_document(pages)
    session = engine.open_document(document, material_type="paper")
    assert session.passage_index(32) is session.passage_index(32)  # built once per size
    prompt, report = engine.build_prompt(session, "Who wrote this paper?")
    content = engine.tokenizer.decode(prompt)
    assert "Ada Lovelace and Charles Babbage" in content and "Journal of Engines" in content
    assert not report.fits_whole and report.kept_tokens <= 160
    first = report.sources[0]
    assert first.start == 0 and "Ada Lovelace and Charles Babbage" in first.text
    assert first.text == document.text[first.start : first.end] and first.pages == [1]
    assert first.score is not None and 1 in report.pages_used
    assert any("wrote" in s.text for s in report.sources[1:])  # the best windows follow the front matter
    # a question about the content gets no front matter
    _, report = engine.build_prompt(session, "What did the clerk do?")
    assert all("Lovelace" not in s.text for s in report.sources) and report.sources
    assert all(s.score > 0 for s in report.sources)


def test_retrieve_falls_back_to_the_opening_when_no_word_matches():
    engine = make_engine(budget=40, passage=16)
    session = engine.open_document(
        paged_document([filler(6, seed=s) for s in range(4)]), material_type="paper"
    )
    prompt, report = engine.build_prompt(session, "Zebra?")  # a word the document does not have
    assert [(s.start, len(s.text)) for s in report.sources] == [(0, 40)] and report.pages_used == [1]
    assert session.document.text[:40] in engine.tokenizer.decode(prompt)


# ----------------------------------------------------------------------------- model profiles


def test_profile_follows_the_model_not_its_folder(tmp_path):
    from transformers import AutoConfig, LlamaConfig

    from data_tools.bundled import DEFAULT_MODEL_NAME
    from data_tools.profiles import (
        DEFAULT_PROFILE,
        FINGERPRINTS,
        PROFILE_CONFIG_KEY,
        PROFILES,
        profile_for_config,
        record_profile,
    )

    smol = LlamaConfig(**{k: v for k, v in FINGERPRINTS[DEFAULT_MODEL_NAME].items() if k != "model_type"})
    assert profile_for_config(smol) == PROFILES[DEFAULT_MODEL_NAME]
    # extended with Position Interpolation and merged into a folder with another name: same profile
    smol.max_position_embeddings *= 8
    smol.rope_parameters = {**smol.rope_parameters, "rope_type": "linear", "factor": 8.0}
    assert record_profile(smol) == DEFAULT_MODEL_NAME
    smol.save_pretrained(tmp_path / "smol-16k-merged")
    reloaded = AutoConfig.from_pretrained(tmp_path / "smol-16k-merged")
    assert getattr(reloaded, PROFILE_CONFIG_KEY) == DEFAULT_MODEL_NAME
    assert profile_for_config(reloaded) == PROFILES[DEFAULT_MODEL_NAME]
    # a recorded name wins over the architecture; unknown architectures get the default profile
    tiny = tiny_model().config
    assert profile_for_config(tiny) == DEFAULT_PROFILE
    assert QAEngine(model=tiny_model(), tokenizer=make_char_tokenizer()).profile == DEFAULT_PROFILE
    model = tiny_model()
    model.config.update({PROFILE_CONFIG_KEY: DEFAULT_MODEL_NAME})
    assert QAEngine(model=model, tokenizer=make_char_tokenizer()).profile == PROFILES[DEFAULT_MODEL_NAME]
    with pytest.raises(ValueError, match="unknown model profile"):
        record_profile(tiny, "huge")


def test_bundled_model_location_lives_once(tmp_path, monkeypatch):
    """data_tools.bundled alone says where the bundled model is; the tokenizer and the conversion read it
    from there, and the names' old import paths warn for one release."""
    import data_tools.tokenizer as text_tokenizer
    from data_tools import bundled, profiles
    from longlora import bundled_model, models

    monkeypatch.setenv("LONGLORA_CACHE", str(tmp_path))
    assert bundled.default_model_dir() == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert text_tokenizer.default_model_dir is bundled.default_model_dir is bundled_model.default_model_dir
    for module in (profiles, models, bundled_model):
        with pytest.deprecated_call(match="moved to data_tools.bundled"):
            assert module.cache_dir is bundled.cache_dir
    with pytest.deprecated_call(match="moved to longlora.bundled_model"):
        assert models.is_converted is bundled_model.is_converted
    for module in (bundled, profiles, text_tokenizer, models, bundled_model):
        assert not hasattr(module, "GGUF_FILE")  # one name: DEFAULT_GGUF
    assert "DEFAULT_MODEL_NAME" not in profiles.__all__ and "DEFAULT_GGUF" not in text_tokenizer.__all__


def test_prompt_styles_have_one_home_and_wrap_the_document_alike():
    """data_tools.prompts holds every prompt wording; the engine's turns are built from it, document first."""
    from data_tools.prompts import PROMPT_STYLES
    from longlora.qa.prompt import first_turn

    assert set(PROMPT_STYLES) == {"paper", "brief", "grounded"}
    for style in PROMPT_STYLES:
        turn = first_turn(" Who wrote it? ", "book", style)
        head, tail = turn.split("\u0000LONGLORA_CONTENT\u0000")
        assert head == prompt_prefix("book", style) and tail == prompt_suffix("Who wrote it?", style)
        assert "a book" in head and "Who wrote it?" in tail
    assert prompt_prefix("paper") == prompt_prefix("paper", "paper")  # the paper's template by default
    with pytest.raises(ValueError, match="unknown prompt style 'long'; choose one of paper, brief, grounded"):
        prompt_prefix("paper", "long")


def test_a_whole_document_answer_cites_the_passages_that_support_it():
    """Whole-document mode reads every page, yet its sources are the passages that support the answer
    (found after generation from the answer and the question), each with its page."""
    from longlora.qa.engine import supporting_spans
    from longlora.qa.reports import AnswerUpdate

    profile_kw = dict(prompt_style="brief", whole_document=True, whole_document_style="paper")
    engine = make_engine(context=1024, budget=32, passage=16, profile_kw=profile_kw)
    pages = [filler(4, seed=1), filler(4, seed=2) + " The zebra code is 4417.", filler(4, seed=3)]
    session = engine.open_document(paged_document(pages), material_type="paper")
    index = session.passage_index(16)
    spans, _ = supporting_spans(index, "What is the zebra code?", "The zebra code is 4417.")
    cited = [session.document.text[slice(*session.char_span(s, e))] for s, e in spans]
    assert spans and all(2 in session.pages_for([span]) for span in spans)  # a window may run into page 3
    assert any("4417" in c for c in cited) and len(spans) <= 3
    assert supporting_spans(index, "qqq?", "xxyyzz")[0] == []  # no word of either in the document

    _, report = engine.build_prompt(session, "What is the zebra code?")
    assert report.fits_whole and len(report.sources) == 1 and report.sources[0].pages == [1, 2, 3]
    final = AnswerUpdate("The zebra code is 4417.", "", True, report)
    streamed = list(engine._cite_after(session, "What is the zebra code?", iter([final])))
    assert [src.pages for src in streamed[-1].sources] == [session.pages_for([span]) for span in spans]
    assert [(src.start, src.end) for src in streamed[-1].sources] == [
        session.char_span(s, e) for s, e in spans
    ]
    # through ask: the whole document is read, and the final update carries cited passages, not it
    last = list(engine.ask(session, "What is the zebra code?"))[-1]
    assert last.done and last.fit.fits_whole
    assert not last.text.strip() or all(src.pages != [1, 2, 3] for src in last.sources)


def test_kv_caches_are_bounded_in_bytes_as_well_as_in_sessions():
    """Sixteen sessions on a small budget: the least recently used caches go until the bytes fit, a
    cache larger than the budget by itself is not kept, and the count bound still holds."""
    from types import SimpleNamespace

    from longlora.qa.cache import PromptCaches, cache_bytes

    def fake_cache(tokens: int):  # two layers of keys and values, fp32, 4 values per token
        layer = lambda: SimpleNamespace(keys=torch.zeros(tokens, 4), values=torch.zeros(tokens, 4))  # noqa: E731
        return SimpleNamespace(layers=[layer(), layer()], get_seq_length=lambda: tokens)

    assert cache_bytes(fake_cache(10)) == 2 * 2 * 10 * 4 * 4  # 640 bytes
    caches = PromptCaches(max_sessions=16, max_bytes=2000)
    for i in range(16):
        caches.keep(f"s{i}", list(range(10)), fake_cache(10))
        assert caches.nbytes <= 2000
    assert len(caches) == 3 and caches.nbytes == 1920  # 3 x 640
    assert caches.stats() == dict(
        sessions=3, bytes=1920, max_sessions=16, max_bytes=2000, evicted=13, refused=0
    )
    cache, reused = caches.take("s15", list(range(10)) + [99], lambda: "new")
    assert reused == 10  # the most recent one is kept ...
    assert caches.take("s0", list(range(11)), lambda: "new") == ("new", 0)  # ... the oldest went
    caches.keep("big", list(range(40)), fake_cache(40))  # 2,560 bytes: more than the budget
    assert caches.take("big", list(range(41)), lambda: "new") == ("new", 0)
    assert caches.stats()["refused"] == 1
    counted = PromptCaches(max_sessions=2, max_bytes=None)
    for i in range(4):
        counted.keep(f"s{i}", list(range(10)), fake_cache(10))
    assert len(counted) == 2


def test_the_engine_bounds_its_caches_by_the_memory_of_its_device():
    import os

    from longlora.qa.engine import default_cache_bytes

    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert default_cache_bytes(torch.device("cpu")) == ram // 4
    engine = make_engine(max_cache_bytes=12345)
    assert engine._caches.max_bytes == 12345 and make_engine()._caches.max_bytes == ram // 4
    # a real transformers cache is measured (not 0 bytes), and one over the budget is not kept
    roomy = make_engine(context=512)
    session = roomy.open_document(paged_document([filler(3, seed=4)]), material_type="paper")
    roomy.answer(session, "Anything?")
    assert len(roomy._caches) == 1 and roomy._caches.nbytes > 1000
    tight = make_engine(context=512, max_cache_bytes=1000)
    tight.answer(tight.open_document(paged_document([filler(3, seed=4)]), material_type="paper"), "Anything?")
    assert len(tight._caches) == 0
