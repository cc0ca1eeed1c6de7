"""Several retrieval readings per question (longlora.qa.readings), with a tiny random model.

References: each reading answered alone by an engine whose profile has only that reading, and the
log-probabilities of each answer recomputed one prompt and one answer at a time.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
from test_qa import filler, make_engine

from data_tools import load_text
from data_tools.profiles import ModelProfile
from longlora.qa.readings import answer_logprobs, choose_answer, says_not_found

READINGS = ((16, 0), (32, 8))  # beside the profile's own 24-token passages


def reading_engine(**kw):
    return make_engine(
        context=512,
        budget=64,
        passage=24,
        max_new_tokens=kw.pop("max_new_tokens", 6),
        profile_kw={"alternate_readings": READINGS, **kw},
    )


def long_document():
    text = filler(40) + " The bridge opened in 1987 after nine years of work. " + filler(40, seed=1)
    return load_text(text, name="bridge.txt")


def reference_logprob(model, prompt, answer, end_ids) -> float:
    """Mean log-probability of the answer's tokens and of ending after them: one full pass per token."""
    values = []
    for i in range(len(answer) + 1):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([list(prompt) + list(answer[:i])])).logits[0, -1].float()
        logp = torch.log_softmax(logits, -1)
        if i < len(answer):
            values.append(logp[answer[i]].item())
        else:
            values.append(torch.logsumexp(logp[sorted(end_ids)], 0).item())
    return sum(values) / len(values)


def test_choose_answer_takes_the_best_mean_over_readings_and_never_an_empty_one():
    # answer 1 wins under one reading only; answer 2 is best on average
    assert choose_answer(["a", "b", "c"], [[-1.0, -1.0], [-0.1, -3.0], [-0.5, -0.6]]) == 2
    assert choose_answer(["a", "b"], [[-1.0, -2.0], [-2.0, -1.0]]) == 0  # a tie goes to the earlier reading
    assert choose_answer(["", "b"], [[-0.01, -0.01], [-5.0, -5.0]]) == 1  # an empty answer is no answer
    assert choose_answer(["", " "], [[-3.0], [-1.0]]) == 1  # ...unless every answer is empty
    with pytest.raises(ValueError, match="one score row per answer"):
        choose_answer(["a", "b"], [[-1.0]])


def test_an_answer_that_found_nothing_defers_to_one_that_found_something():
    # "not in these passages" scores best here, but another reading found an answer
    texts = [
        "The document does not say.",
        "It was written by Jane Austen.",
        "This is not stated in the document.",
    ]
    assert choose_answer(texts, [[-0.1, -0.1], [-1.5, -2.0], [-0.2, -0.3]]) == 1
    # every reading found nothing: the best-supported way of saying so
    nothing = ["The document does not mention it.", "It doesn't say.", ""]
    assert choose_answer(nothing, [[-0.9, -0.9], [-0.4, -0.5], [-0.01, -0.01]]) == 1


@pytest.mark.parametrize(
    "text, said",
    [
        ("The document does not say.", True),
        ("This is not stated in the document.", True),
        ("The paper doesn't mention a license.", True),
        ("There is no information about the sponsor.", True),
        ("The text does not mention it.", True),
        ("It is not mentioned.", True),
        ("Rcpp is not a replacement for R.", False),  # a finding with a negation in it
        ("The package does not support Windows.", False),
        ("No, Compaq Alpha machines are little-endian.", False),
        ("It was written by Jane Austen.", False),
    ],
)
def test_says_not_found(text, said):
    assert says_not_found(text) is said


def test_answer_logprobs_match_one_pass_per_token():
    engine = make_engine(context=256)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, 90, (23,), generator=g).tolist()
    answers = [torch.randint(5, 90, (n,), generator=g).tolist() for n in (1, 7, 4)] + [[]]
    ends = sorted(engine.eos_ids)
    got = answer_logprobs(engine.model, prompt, answers, ends)
    want = [reference_logprob(engine.model, prompt, a, ends) for a in answers]
    assert got == pytest.approx(want, abs=1e-4)
    # only empty answers: the probability of ending right after the prompt
    assert answer_logprobs(engine.model, prompt, [[]], ends) == pytest.approx([want[-1]], abs=1e-4)


def test_the_answer_is_one_readings_answer_the_best_supported_across_all():
    engine = reading_engine()
    session = engine.open_document(long_document())
    question = "When did the bridge open?"
    updates = list(engine.ask(session, question))
    final = updates[-1]
    assert final.done and final.fit.readings == 3 and not any(u.done for u in updates[:-1])
    assert "best across 3 readings" in final.fit.summary()
    streamed = "".join(u.delta for u in updates[:-1])  # the profile's own reading, token by token
    assert sum(bool(u.delta) for u in updates) >= 3
    comparing = [u for u in updates if u.status]
    assert len(comparing) == 2 and all(u.text == streamed and u.delta == "" for u in comparing)

    # reference: each reading alone, then the slow scores of every answer under every reading's prompt
    readings = engine.profile.readings()
    alone, prompts = [], []
    for reading in readings:
        single = dataclasses.replace(
            engine.profile, passage_tokens=reading[0], lead_tokens=reading[1], alternate_readings=()
        )
        solo = make_engine(context=512, budget=64, passage=reading[0], max_new_tokens=6)
        solo.model, solo.tokenizer, solo.profile = engine.model, engine.tokenizer, single
        solo_session = solo.open_document(long_document())
        answer = list(solo.ask(solo_session, question))[-1]
        alone.append(answer)
        prompts.append(solo.build_prompt(solo_session, question)[0])
    texts = [a.text for a in alone]
    assert streamed == texts[0]
    assert (
        len(set(texts)) == 3 and len({tuple(s.text for s in a.sources) for a in alone}) == 3
    )  # a real choice
    assert final.text in texts
    ids = [engine.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    scores = [[reference_logprob(engine.model, p, a, engine.eos_ids) for p in prompts] for a in ids]
    best = choose_answer(texts, scores)
    assert best != 0  # not simply the profile's own reading
    assert final.text == texts[best]
    assert final.revised and final.delta == final.text  # it replaces the streamed answer
    # the passages cited are those of the reading that gave the answer
    assert [s.text for s in final.sources] == [s.text for s in alone[best].sources]


def test_a_document_that_fits_is_read_once():
    engine = reading_engine()
    session = engine.open_document(load_text("The bridge opened in 1987.", name="short.txt"))
    updates = list(engine.ask(session, "When did the bridge open?"))
    assert updates[-1].fit.fits_whole and updates[-1].fit.readings == 1
    assert "".join(u.delta for u in updates) == updates[-1].text  # streamed as usual


def test_truncation_strategies_are_read_once():
    engine = reading_engine()
    session = engine.open_document(long_document())
    final = list(engine.ask(session, "When did the bridge open?", strategy="truncate-end"))[-1]
    assert final.fit.readings == 1 and not final.fit.fits_whole


def test_stopping_while_streaming_keeps_what_was_streamed_and_frees_the_model():
    engine = reading_engine(max_new_tokens=200)
    session = engine.open_document(long_document())
    stop = threading.Event()
    updates = []
    for update in engine.ask(session, "When did the bridge open?", stop_event=stop):
        updates.append(update)
        if update.text:
            stop.set()  # stop as soon as the first text arrives
    final = updates[-1]
    assert final.done and final.stopped and not final.revised
    assert final.new_tokens < 200 and not any(u.status for u in updates)  # no other reading was started
    assert "".join(u.delta for u in updates) == final.text
    assert not engine._generate_lock.locked()
    # the engine keeps serving
    assert list(engine.ask(session, "When did the bridge open?"))[-1].done


def test_stopping_while_comparing_keeps_the_first_answer():
    engine = reading_engine()
    session = engine.open_document(long_document())
    alone = reading_engine()
    alone.profile = dataclasses.replace(alone.profile, alternate_readings=())
    first = alone.answer(alone.open_document(long_document()), "When did the bridge open?")
    stop = threading.Event()
    updates = []
    for update in engine.ask(session, "When did the bridge open?", stop_event=stop):
        updates.append(update)
        if update.status:
            stop.set()  # the first answer is complete; stop the comparison
    final = updates[-1]
    assert final.done and final.stopped and not final.revised
    assert final.text == first == "".join(u.delta for u in updates)
    assert sum(bool(u.status) for u in updates) == 1


def test_profile_readings_are_checked():
    assert ModelProfile(passage_tokens=64, lead_tokens=8, alternate_readings=((32, 0),)).readings() == [
        (64, 8),
        (32, 0),
    ]
    with pytest.raises(ValueError, match="alternate_readings"):
        ModelProfile(alternate_readings=((0, 4),))


def test_concurrent_questions_with_readings_do_not_mix():
    engine = reading_engine()
    documents = [long_document(), load_text(filler(60, seed=5) + " Zulu is the last word.", name="z.txt")]
    questions = ["When did the bridge open?", "What is the last word?"]
    sessions = [engine.open_document(d) for d in documents]
    solo = reading_engine()  # same weights (seeded), one question at a time
    reference = [solo.answer(solo.open_document(d), q) for d, q in zip(documents, questions)]
    results: dict[int, str] = {}

    def run(i):
        results[i] = list(engine.ask(sessions[i], questions[i]))[-1].text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [results[0], results[1]] == reference


def test_the_command_line_shows_a_revised_answer_after_the_streamed_one(tmp_path, monkeypatch, capsys):
    from longlora.qa import cli

    doc = tmp_path / "bridge.txt"
    doc.write_text(long_document().text)
    question = "When did the bridge open?"
    reference = reading_engine()
    updates = list(reference.ask(reference.open_document(doc), question))
    first = "".join(u.delta for u in updates[:-1])
    assert updates[-1].revised  # this question's best-supported answer is another reading's
    monkeypatch.setattr(cli.QAEngine, "from_args", classmethod(lambda cls, args, **kw: reading_engine()))
    assert cli.main(["--doc", str(doc), "--question", question]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith(first) and f"{first}\n[revised after comparing 3 readings]\n{updates[-1].text}" in out
    )
