"""RULER's in-context examples, the book-paragraph QA task and its data, exact prompt lengths with
both, and the effective context's intervals and two thresholds (expected values worked by hand)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import EMMA, PRIDE_AND_PREJUDICE, bpe_tokenizer, make_char_tokenizer, tiny_model

from longlora.eval.ruler import (
    DEFAULT_HAYSTACK,
    DEFAULT_QA,
    RULER_THRESHOLD,
    build_parser,
    effective_context,
    effective_contexts,
    format_table,
    load_haystack,
    main,
    summarize,
    wilson_interval,
)
from longlora.eval.ruler_haystack import Haystack, encode, read_qa_records
from longlora.eval.ruler_tasks import CWE_TEMPLATE, TASKS, VT_TEMPLATE, make_sample

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    """The first 200k characters of each novel: enough paragraphs, quick to tokenize."""
    folder = tmp_path_factory.mktemp("books")
    for book in (EMMA, PRIDE_AND_PREJUDICE):
        (folder / book.name).write_text(book.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def hay(books):
    return Haystack.from_paths([books], DEFAULT_QA)


@pytest.fixture(scope="module")
def bpe_tok():
    """A byte-level BPE tokenizer trained offline on a novel, with a BOS and a chat template."""
    return bpe_tokenizer(PRIDE_AND_PREJUDICE.read_text(encoding="utf-8")[:200_000], vocab_size=800)


def _span(tok, sample, start, tokens) -> str:
    return tok.decode(sample.input_ids[start : start + tokens])


# --------------------------------------------------------------------------- in-context examples


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("length", [2048, 8192])
def test_vt_starts_with_a_worked_example_of_its_own(hay, bpe_tok, length, chat):
    s = make_sample("vt", length, 2, 5, hay, bpe_tok, chat_template=chat)
    assert len(s.example_answers) == 5 and all(re.fullmatch(r"[A-Z]{3}", v) for v in s.example_answers)
    assert not set(s.example_answers) & set(s.answers)  # 3-letter example variables, 5-letter real ones
    assert s.example_context_start is not None
    assert s.example_context_start + s.example_context_tokens <= s.context_start
    # the example's context holds its own chain, in order: VAR A = value, VAR B = VAR A, ...
    chain = re.findall(
        r"VAR ([A-Z]+) = (VAR [A-Z]+|\d+)\.",
        _span(bpe_tok, s, s.example_context_start, s.example_context_tokens),
    )
    assert [name for name, _ in chain] == s.example_answers
    value = chain[0][1]
    assert [ref for _, ref in chain[1:]] == [f"VAR {v}" for v in s.example_answers[:-1]]
    # then its question about that value and the worked answer, then the real instruction
    before = bpe_tok.decode(s.input_ids[: s.context_start])
    assert before.count(VT_TEMPLATE[0].strip()) == 2
    assert f"assigned the value {value} in the text above" in before
    assert f"they are: {' '.join(s.example_answers)}" in before
    assert s.prompt_tokens + s.max_new_tokens == length  # the example counts inside the budget
    # deterministic per (seed, index); another index gets another example
    again = make_sample("vt", length, 2, 5, hay, bpe_tok, chat_template=chat)
    assert again.input_ids == s.input_ids and again.example_answers == s.example_answers
    other = make_sample("vt", length, 3, 5, hay, bpe_tok, chat_template=chat)
    assert other.example_answers != s.example_answers


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("length,items", [(2048, 40), (8192, 190)])
def test_cwe_starts_with_rulers_worked_example(hay, bpe_tok, length, items, chat):
    """Below 4k: 10 common words x 3 and 10 others once (40 items); from 4k: 10 x 10 and 30 x 3."""
    s = make_sample("cwe", length, 1, 2, hay, bpe_tok, chat_template=chat)
    assert len(s.example_answers) == 10 and not set(s.example_answers) & set(s.answers)
    listing = _span(bpe_tok, s, s.example_context_start, s.example_context_tokens)
    numbered = re.findall(r"(\d+)\. ([a-z]+)", listing)
    assert [int(n) for n, _ in numbered] == list(range(1, items + 1))
    counts = Counter(w for _, w in numbered)
    common = 3 if length < 4096 else 10
    assert {w for w, c in counts.items() if c == common} == set(s.example_answers)
    assert max(c for w, c in counts.items() if w not in s.example_answers) < common
    before = bpe_tok.decode(s.input_ids[: s.context_start])
    assert before.count(CWE_TEMPLATE[0].strip()) == 2
    worked = " ".join(f"{i + 1}. {w}" for i, w in enumerate(s.example_answers))
    assert f"appear most often in the list are: {worked}" in before
    assert s.prompt_tokens + s.max_new_tokens == length
    assert make_sample("cwe", length, 1, 2, hay, bpe_tok, chat_template=chat).input_ids == s.input_ids


@pytest.mark.parametrize("task", [t for t in TASKS if t not in ("vt", "cwe")])
def test_only_vt_and_cwe_have_an_example_as_in_ruler(hay, bpe_tok, task):
    s = make_sample(task, 4096, 0, 0, hay, bpe_tok)
    assert s.example_answers == [] and s.example_context_start is None


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("length", [1024, 2048, 3001, 5000, 8192])
@pytest.mark.parametrize("task", list(TASKS))
def test_every_prompt_is_exactly_length_minus_answer_budget(hay, bpe_tok, task, length, chat):
    s = make_sample(task, length, 1, 4, hay, bpe_tok, chat_template=chat)
    assert s.prompt_tokens + s.max_new_tokens == length
    assert s.context_start + s.context_tokens <= s.prompt_tokens
    if task in ("vt", "cwe"):
        assert s.example_answers and s.example_context_start + s.example_context_tokens <= s.context_start


def test_fwe_is_rulers_zipf_text_with_dots_as_the_top_word(hay, bpe_tok):
    s = make_sample("fwe", 4096, 0, 0, hay, bpe_tok)
    words = _span(bpe_tok, s, s.context_start, s.context_tokens).split()[:-1]  # the last may be cut
    ranked = Counter(words).most_common(5)
    assert ranked[0][0] == "..."  # RULER's noise word, which the question says to ignore
    assert [w for w, _ in ranked[1:4]] == s.answers and ranked[3][1] > ranked[4][1]
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in s.answers)
    assert bpe_tok.decode(s.input_ids).count("coded words. ") == 1  # RULER's "words. {context}"


# --------------------------------------------------------------------------- qa


def test_qa_data_is_paragraphs_of_the_books_stating_their_answers():
    lines = DEFAULT_QA.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) >= 40 and len({r["id"] for r in records}) == len(records)
    for r in records:
        book = ROOT / r["book"]
        assert book.parent.parent == ROOT / "data" / "books"
        raw = book.read_text(encoding="utf-8")[r["offset"] : r["offset"] + r["length"]]
        assert " ".join(raw.split()) == r["paragraph"]  # the paragraph, verbatim, at its offset
        assert r["offset"] == 0 or book.read_text(encoding="utf-8")[r["offset"] - 2 : r["offset"]] == "\n\n"
        assert r["question"].endswith("?")
        for answer in r["answers"]:
            assert answer in r["paragraph"] and len(answer.split()) <= 5
    assert [r["passage"] for r in read_qa_records(DEFAULT_QA)] == [r["paragraph"] for r in records]


@pytest.mark.parametrize("tok_name,length", [("bpe_tok", 2048), ("bpe_tok", 8192), ("char_tok", 8192)])
def test_qa_gold_paragraph_sits_among_haystack_paragraphs_and_alone_states_the_answer(
    hay, request, tok_name, length
):
    tok = make_char_tokenizer() if tok_name == "char_tok" else request.getfixturevalue(tok_name)
    by_passage = {r["passage"]: r for r in hay.qa_records}
    haystack_paragraphs = set(hay.paragraphs)
    for index in range(4):
        s = make_sample("qa", length, index, 0, hay, tok)
        (needle,) = s.needles
        number, gold = re.fullmatch(r"(?:\n\n)?Document (\d+):\n(.*)", needle, re.S).groups()
        record = by_passage[gold]
        assert s.answers == record["answers"] and all(a in gold for a in s.answers)
        ids = encode(tok, needle)
        assert s.input_ids[s.positions[0] : s.positions[0] + len(ids)] == ids
        context = _span(tok, s, s.context_start, s.context_tokens)
        documents = re.split(r"\n\n(?=Document \d+:\n)", context)
        assert [int(d.split(":", 1)[0].split()[1]) for d in documents] == list(range(1, len(documents) + 1))
        assert len(documents) >= 3
        texts = [d.split(":\n", 1)[1] for d in documents]
        assert texts[int(number) - 1] == gold and texts.count(gold) == 1
        for text in texts[:-1]:  # the others are whole paragraphs of the haystack (the last may be cut)
            assert text == gold or text in haystack_paragraphs
        for text in texts:
            if text != gold:
                assert not any(
                    re.search(rf"(?<!\w){re.escape(a.lower())}(?!\w)", text.lower()) for a in s.answers
                )
        assert _after_context(tok, s).endswith(f"Question: {record['question']} Answer:")


def _after_context(tok, s) -> str:
    return tok.decode(s.input_ids[s.context_start + s.context_tokens :])


def test_qa_leaves_out_distractors_that_state_the_answer():
    """Haystack paragraphs that contain a gold answer (as a word) are never distractors."""
    paragraphs = re.split(r"\n\s*\n", EMMA.read_text(encoding="utf-8")[:120_000])
    seeded = [p + (" The answer was the blue door." if i % 3 == 0 else "") for i, p in enumerate(paragraphs)]
    gold = "Long paragraph of the gold document. " * 4 + "The key was under the blue door mat of the house."
    record = {"passage": gold, "question": "Where was the key?", "answers": ["blue door"], "id": "x"}
    haystack = Haystack(["\n\n".join(seeded)], [record])
    assert sum("blue door" in p for p in haystack.paragraphs) > 50
    tok = make_char_tokenizer()
    for index in range(3):
        s = make_sample("qa", 6000, index, 0, haystack, tok)
        context = _span(tok, s, s.context_start, s.context_tokens)
        assert context.count("blue door") == 1 and s.needles[0].endswith(gold)


def test_qa_asks_the_same_questions_at_every_length(hay, bpe_tok):
    for index in range(3):
        asked = {tuple(make_sample("qa", n, index, 1, hay, bpe_tok).answers) for n in (2048, 4096, 8192)}
        assert len(asked) == 1
    first = [make_sample("qa", 4096, i, 1, hay, bpe_tok).answers for i in range(6)]
    assert len({tuple(a) for a in first}) == 6  # one question per sample index, no repeats


def test_defaults_come_from_the_repository():
    assert all(p.is_file() and p.is_relative_to(ROOT / "data" / "books") for p in DEFAULT_HAYSTACK)
    assert DEFAULT_QA == ROOT / "data" / "ruler" / "austen-qa.jsonl"
    args = build_parser().parse_args(["--model", "x", "--tasks", "qa", "vt"])
    assert args.threshold is None and args.relative_threshold == 0.85 and args.samples == 16
    hay = load_haystack(args)
    assert hay.sources == [str(p) for p in DEFAULT_HAYSTACK]
    assert len(hay.qa_records) == len(DEFAULT_QA.read_text(encoding="utf-8").splitlines())
    books = " ".join(" ".join(p.read_text(encoding="utf-8").split()) for p in DEFAULT_HAYSTACK)
    for r in hay.qa_records:  # the gold paragraphs are paragraphs of the default haystack's books
        assert r["passage"] in books


# --------------------------------------------------------------------------- intervals and thresholds

# z = 1.959964 (95%), z^2 = 3.841459. Worked by hand from Wilson's formula:
#   all n trials right:  low = n / (n + z^2)        (n = 10: 10 / 13.841459 = 0.722467)
#   none right:          high = z^2 / (n + z^2)     (n = 5: 3.841459 / 8.841459 = 0.434482)
#   half right:          0.5 -+ z / (2 sqrt(n + z^2))  (n = 4: 0.5 -+ 0.349961 -> 0.150039, 0.849961;
#                        n = 16/3: 0.5 -+ 1.959964 / (2 sqrt(9.174792)) = 0.5 -+ 0.323534)
#   three quarters, n = 4: center (0.75 + z^2/8) / (1 + z^2/4) = 1.230182 / 1.960365 = 0.627524,
#                        half z / 1.960365 x sqrt(0.046875 + z^2/64) = 0.326886 -> 0.300638, 0.954410


def test_wilson_interval_by_hand():
    assert wilson_interval(1.0, 10) == pytest.approx((0.722467, 1.0), abs=1e-6)
    assert wilson_interval(0.0, 5) == pytest.approx((0.0, 0.434482), abs=1e-6)
    assert wilson_interval(0.5, 4) == pytest.approx((0.150039, 0.849961), abs=1e-6)
    assert wilson_interval(0.3, 0) == (0.0, 1.0)


def _rec(task, length, score):
    return {"task": task, "length": length, "score": score, "seconds": 1.0}


def test_summary_reports_samples_and_the_interval_of_each_average():
    records = [
        *(_rec("a", 1024, 1.0) for _ in range(5)),
        *(_rec("b", 1024, 1.0) for _ in range(5)),  # 10 of 10: [0.722467, 1]
        *(_rec("a", 2048, s) for s in (1.0, 1.0, 0.0, 0.0)),
        *(_rec("b", 2048, s) for s in (1.0, 0.0)),  # mean of 0.5 and 0.5 over 2^2 / (1/4 + 1/2) = 16/3
        _rec("a", 4096, 1.0),  # b missing at 4k: no average, no interval
    ]
    s = summarize(records, ["a", "b"], [1024, 2048, 4096])
    assert s["average"] == {"1024": 1.0, "2048": 0.5}
    assert s["average_ci95"]["1024"] == pytest.approx([0.722467, 1.0], abs=1e-6)
    assert s["average_ci95"]["2048"] == pytest.approx([0.176466, 0.823534], abs=1e-6)
    assert "4096" not in s["average_ci95"]
    rows = {r["length"]: r for r in s["by_length"]}
    assert (rows[1024]["samples"], rows[1024]["samples_per_task"]) == (10, 5)
    assert (rows[2048]["samples"], rows[2048]["samples_per_task"]) == (6, 2)
    assert rows[2048]["ci95"] == s["average_ci95"]["2048"]


HAND = {
    "average": {"1024": 0.95, "2048": 0.90, "4096": 0.86, "8192": 0.80},
    "average_ci95": {
        "1024": [0.90, 0.98],
        "2048": [0.84, 0.95],
        "4096": [0.80, 0.92],
        "8192": [0.70, 0.88],
    },
}


def test_both_thresholds_and_the_lengths_from_the_bounds_by_hand():
    both = effective_contexts(HAND)
    # relative: 0.85 x 0.95 = 0.8075. Averages: 0.80 < 0.8075 at 8k -> 4k. Lower bounds: 0.80 < 0.8075
    # at 4k -> 2k. Upper bounds all >= 0.8075 -> 8k.
    rel = both["relative"]
    assert rel["kind"] == "relative" and rel["threshold"] == pytest.approx(0.8075)
    assert (rel["length"], rel["length_from_lower_bound"], rel["length_from_upper_bound"]) == (
        4096,
        2048,
        8192,
    )
    # absolute, RULER's 0.856: averages 0.86 >= 0.856 at 4k, 0.80 < at 8k -> 4k. Lower bounds: 0.84 <
    # 0.856 at 2k -> 1k. Upper bounds: 0.88 >= 0.856 at 8k -> 8k.
    ab = both["absolute"]
    assert ab["kind"] == "absolute" and ab["threshold"] == RULER_THRESHOLD == 0.856
    assert (ab["length"], ab["length_from_lower_bound"], ab["length_from_upper_bound"]) == (4096, 1024, 8192)
    # another absolute bar: 0.9 -> averages 0.86 < 0.9 at 4k -> 2k; lower 0.90 ok at 1k, 0.84 not -> 1k;
    # upper 0.88 < 0.9 at 8k -> 4k
    ab9 = effective_contexts(HAND, threshold=0.9)["absolute"]
    assert (ab9["length"], ab9["length_from_lower_bound"], ab9["length_from_upper_bound"]) == (
        2048,
        1024,
        4096,
    )
    # a lower bound under the bar at the shortest length: no effective context from the bounds; the
    # upper bounds 0.98, 0.95, 0.92 meet 0.92 (equal counts as kept), 0.88 does not -> 4k
    low = effective_context(HAND["average"], threshold=0.92, interval=HAND["average_ci95"])
    assert (low["length"], low["length_from_lower_bound"], low["length_from_upper_bound"]) == (
        1024,
        None,
        4096,
    )


def test_the_table_prints_intervals_samples_and_both_effective_contexts():
    summary = summarize(
        [_rec(t, n, 1.0 if n == 1024 else 0.75) for t in ("a", "b") for n in (1024, 2048) for _ in range(2)],
        ["a", "b"],
        [1024, 2048],
    )
    summary["effective_contexts"] = effective_contexts(summary)
    table = format_table(summary)
    # 1k: 4 of 4 right -> low 4 / 7.841459 = 0.51; 2k: 0.75 over 4 -> 0.30 .. 0.95 (worked above).
    # Relative bar 0.85 x 1.0: 0.75 < 0.85 at 2k -> 1k; lower bound 0.51 < 0.85 at 1k -> none;
    # upper 0.95 >= 0.85 at 2k -> 2k. Absolute 0.856: the same lengths.
    assert re.search(r"95% low\s+0\.51\s+0\.30\n95% high\s+1\.00\s+0\.95\nsamples\s+4\s+4", table)
    assert (
        "effective context (relative, average >= 0.850 = 0.85 x 1.000, the shortest length's): 1024" in table
    )
    assert "effective context (absolute, average >= 0.856, RULER's Llama-2-7B at 4k): 1024" in table
    assert table.count("(from the 95% bounds: none to 2048)") == 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "tiny"
    tiny_model("llama", max_position_embeddings=4096).eval().save_pretrained(out)
    make_char_tokenizer().save_pretrained(out)
    return out


def test_the_command_reports_both_effective_contexts(model_dir, books, tmp_path, capsys):
    base = ["--model", str(model_dir), "--torch-dtype", "float32", "--haystack", str(books)]
    base += ["--tasks", "niah_single_1", "fwe", "--lengths", "1k", "1500", "--samples", "2"]
    base += ["--max-new-tokens", "2", "--chat-template", "off", "--no-progress"]
    out = tmp_path / "r.json"
    assert main([*base, "--output", str(out)]) == 0
    payload = json.loads(out.read_text())
    both = payload["effective_contexts"]
    assert both["absolute"]["threshold"] == 0.856 and both["relative"]["kind"] == "relative"
    assert payload["effective_context"] == both["relative"]  # the headline one without --threshold
    assert {"length_from_lower_bound", "length_from_upper_bound"} <= set(both["absolute"])
    for row in payload["by_length"]:
        assert row["samples"] == 4 and row["samples_per_task"] == 2 and len(row["ci95"]) == 2
    provenance = payload["provenance"]
    assert provenance["command"].split()[1:3] == ["-m", "longlora.eval.ruler"] and "commit" in provenance
    printed = capsys.readouterr().out
    assert "effective context (relative" in printed and "effective context (absolute" in printed
    assert "95% low" in printed
    out2 = tmp_path / "r2.json"
    assert main([*base, "--threshold", "0.5", "--output", str(out2)]) == 0
    payload = json.loads(out2.read_text())
    assert (
        payload["effective_context"]["kind"] == "absolute"
        and payload["effective_context"]["threshold"] == 0.5
    )
    assert payload["config"]["threshold"] == 0.5 and payload["config"]["relative_threshold"] == 0.85


def test_a_log_from_an_older_generator_is_refused(model_dir, books, tmp_path, capsys):
    """The generator version is in the fingerprint: a log written by other task code is not mixed in."""
    out = tmp_path / "r.json"
    args = ["--model", str(model_dir), "--torch-dtype", "float32", "--haystack", str(books)]
    args += ["--tasks", "niah_single_1"]
    args += [
        "--lengths",
        "1k",
        "--samples",
        "1",
        "--max-new-tokens",
        "2",
        "--no-progress",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    assert main(args) == 0  # the same settings resume (nothing to do)
    from longlora.eval import ruler

    old = ruler.GENERATOR_VERSION
    try:
        ruler.GENERATOR_VERSION = old + 1
        assert main(args) == 2
        assert "other settings" in capsys.readouterr().err
    finally:
        ruler.GENERATOR_VERSION = old
