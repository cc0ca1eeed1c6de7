"""RULER-style suite: generators, exact lengths, scoring, effective context, the command, resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import EMMA, FIXTURES, bpe_tokenizer, make_char_tokenizer, needs_fixtures, tiny_model

from data_tools.errors import InputError
from longlora.eval.ruler import effective_context, main, read_log, summarize
from longlora.eval.ruler_haystack import Haystack, encode, read_qa_records
from longlora.eval.ruler_tasks import (
    NIAH,
    TASKS,
    assemble,
    make_sample,
    score_output,
)

ROOT = Path(__file__).resolve().parents[1]
BOOK = EMMA
QA = FIXTURES / "short-qa-bigbench-sample.jsonl"  # also the command's default --qa
needs_qa = needs_fixtures(QA.name)


@pytest.fixture(scope="module")
def haystack_file(tmp_path_factory):
    """The first ~300k characters of Emma: enough text, quick to tokenize character by character."""
    path = tmp_path_factory.mktemp("hay") / "emma-part.txt"
    path.write_text(BOOK.read_text(encoding="utf-8")[:300_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def hay(haystack_file):
    return Haystack.from_paths([haystack_file], QA)


@pytest.fixture(scope="module")
def char_tok():
    return make_char_tokenizer()


@pytest.fixture(scope="module")
def bpe_tok():
    """A byte-level BPE tokenizer trained offline on the book: merges make token counts of joined
    text differ from the sum of its parts, the case exact lengths must survive."""
    return bpe_tokenizer(BOOK.read_text(encoding="utf-8")[:200_000], vocab_size=600)


def _context_words(text: str) -> list[str]:
    return re.findall(r"\d+\. ([a-z]+)\b", text)


@needs_qa
@pytest.mark.parametrize("task", list(TASKS))
def test_samples_are_deterministic_per_seed(hay, bpe_tok, task):
    a = make_sample(task, 2048, 3, 7, hay, bpe_tok)
    b = make_sample(task, 2048, 3, 7, hay, bpe_tok)
    assert a.input_ids == b.input_ids and a.answers == b.answers and a.positions == b.positions
    c = make_sample(task, 2048, 3, 8, hay, bpe_tok)
    d = make_sample(task, 2048, 4, 7, hay, bpe_tok)
    assert c.input_ids != a.input_ids and d.input_ids != a.input_ids


@needs_qa
@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("length", [1500, 2048, 3001, 6000])
@pytest.mark.parametrize("task", list(TASKS))
def test_prompt_is_exactly_length_minus_answer_budget(hay, bpe_tok, task, length, chat):
    s = make_sample(task, length, 0, 0, hay, bpe_tok, chat_template=chat)
    assert s.prompt_tokens + s.max_new_tokens == length
    text = bpe_tok.decode(s.input_ids)
    if chat:
        assert text.startswith("<|im_start|>user\n") and "<|im_start|>assistant\n" in text
    else:
        assert text.startswith("<s>")  # the tokenizer's BOS leads a raw prompt


@needs_qa
@pytest.mark.parametrize("task", [t for t in TASKS if t in NIAH or t in ("vt", "qa")])
@pytest.mark.parametrize("tok_name", ["char_tok", "bpe_tok"])
def test_answers_sit_in_their_needles_at_the_stated_depth(hay, request, task, tok_name):
    tok = request.getfixturevalue(tok_name)
    for index in range(3):
        s = make_sample(task, 4096, index, 0, hay, tok)
        needle_ids = [encode(tok, n) if task == "qa" else encode(tok, " " + n) for n in s.needles]
        room = s.context_tokens - sum(len(n) for n in needle_ids)
        for ids, pos, depth in zip(needle_ids, s.positions, s.depths):
            assert s.input_ids[pos : pos + len(ids)] == ids  # the needle is where the record says
            offset = pos - s.context_start
            assert 0 <= offset <= s.context_tokens - len(ids)
            # at the filler boundary nearest to depth x filler, after any needles placed before it;
            # a boundary is at most one block (a sentence, a passage) away
            block = 600 if task == "qa" else 200
            assert abs(offset - depth * room) <= block + sum(map(len, needle_ids)), (offset, depth, room)
        text = tok.decode(s.input_ids)
        joined = " ".join(s.needles)
        for answer in s.answers:
            assert answer in joined
        if task in NIAH:  # the queried values appear only in their needles
            for answer in s.answers:
                assert text.count(answer) == joined.count(answer)


@needs_qa
@pytest.mark.parametrize("tok_name", ["char_tok", "bpe_tok"])
@pytest.mark.parametrize("length", [2048, 6000])
def test_common_and_frequent_words_are_the_real_top_words(hay, request, tok_name, length):
    tok = request.getfixturevalue(tok_name)
    cwe = make_sample("cwe", length, 1, 0, hay, tok)
    listing = tok.decode(cwe.input_ids[cwe.context_start : cwe.context_start + cwe.context_tokens])
    counts = Counter(_context_words(listing))
    top = counts.most_common(11)
    assert {w for w, _ in top[:10]} == set(cwe.answers)
    assert top[9][1] > top[10][1]  # unambiguous
    fwe = make_sample("fwe", length, 1, 0, hay, tok)
    words = tok.decode(fwe.input_ids[fwe.context_start : fwe.context_start + fwe.context_tokens]).split()
    ranked = Counter(w for w in words[:-1] if w != "...").most_common(4)  # the last word may be cut
    assert [w for w, _ in ranked[:3]] == fwe.answers and ranked[2][1] > ranked[3][1]


def test_assemble_is_exact_and_places_needles_between_blocks():
    blocks = [[1, 1, 1], [2, 2], [3, 3, 3, 3], [4, 4, 4]]
    ids, offsets, complete = assemble(iter(blocks * 3), [[9, 9]], [0.5], 12)
    assert len(ids) == 12
    assert ids[offsets[0] : offsets[0] + 2] == [9, 9]
    assert offsets[0] == 5  # boundary nearest to 0.5 x 10 filler tokens
    assert ids == [1, 1, 1, 2, 2, 9, 9, 3, 3, 3, 3, 4] and complete == 3
    ids, offsets, _ = assemble(iter(blocks), [[8], [9]], [1.0, 0.0], 6)
    assert ids == [9, 1, 1, 1, 2, 8] and offsets == [5, 0]
    with pytest.raises(ValueError, match="needles alone need 3 tokens"):
        assemble(iter(blocks), [[9, 9, 9]], [0.5], 2)


@pytest.mark.parametrize(
    "output,answers,metric,expected",
    [
        (": 1234567.", ["1234567"], "all", 1.0),
        ("The numbers are 1234567 and 7654321", ["7654321", "1234567"], "all", 1.0),
        (": 1234567, 1234568", ["1234567", "7654321", "1111111", "2222222"], "all", 0.25),
        (": 123456", ["1234567"], "all", 0.0),
        ("ABCDE, fghij", ["abcde", "FGHIJ", "KLMNO"], "all", 2 / 3),  # case-insensitive
        ("", ["x"], "all", 0.0),
        ("USLNH then gqngk", ["GQNGK", "NGFXS", "RPYLD", "USLNH", "EMHDB"], "all", 2 / 5),
        ("12345678", ["1234567"], "all", 1.0),  # a substring match, as in RULER
        ("cec216ea-c17e", ["cec216ea-c17e-4121-bba8-60553c0747a1"], "all", 0.0),  # a prefix is not enough
        (" Hendrix", ["Hendrix", "Jimi Hendrix"], "part", 1.0),
        (" Jimi", ["Hendrix", "Jimi Hendrix"], "part", 0.0),
        ("It was JIMI HENDRIX.", ["Hendrix", "Jimi Hendrix"], "part", 1.0),  # both found: still 1
        ("the Experience", ["Hendrix", "the experience"], "part", 1.0),  # any gold answer, case-insensitive
        ("", ["Hendrix"], "part", 0.0),
    ],
)
def test_scoring_is_rulers_string_match(output, answers, metric, expected):
    assert score_output(output, answers, metric) == pytest.approx(expected)


def test_an_unknown_metric_is_an_error():
    with pytest.raises(ValueError, match="unknown metric 'exact'"):
        score_output("x", ["x"], "exact")


def reference_score(output: str, answers: list[str], metric: str) -> float:
    """RULER's string_match_all / string_match_part, written out by hand for checking the command."""
    found = 0
    for answer in answers:
        if answer.lower() in output.lower():
            found += 1
    if metric == "all":
        return found / len(answers)
    assert metric == "part"
    return 1.0 if found > 0 else 0.0


def _rec(task, length, score, seconds=1.0):
    return {"task": task, "length": length, "score": score, "seconds": seconds}


def test_summary_and_effective_context():
    records = [
        _rec("a", 1024, 1.0),
        _rec("a", 1024, 0.5),
        _rec("b", 1024, 1.0),
        _rec("a", 2048, 0.75),
        _rec("b", 2048, 0.6),
        _rec("a", 4096, 0.2),
        _rec("b", 4096, 0.3),
        _rec("a", 8192, 0.9),
        _rec("b", 8192, 0.9),  # recovers: effective context must still stop at 2k
        _rec("a", 16384, 1.0),  # b missing at 16k: no average there
    ]
    s = summarize(records, ["a", "b"], [1024, 2048, 4096, 8192, 16384])
    assert s["scores"]["a"] == {"1024": 0.75, "2048": 0.75, "4096": 0.2, "8192": 0.9, "16384": 1.0}
    assert s["average"] == pytest.approx({"1024": 0.875, "2048": 0.675, "4096": 0.25, "8192": 0.9})
    eff = effective_context(s["average"])
    assert eff["threshold"] == pytest.approx(0.85 * 0.875) and eff["kind"] == "relative"
    assert eff["length"] == 1024  # 0.675 < 0.744
    assert effective_context(s["average"], relative=0.75)["length"] == 2048
    assert effective_context(s["average"], threshold=0.25)["length"] == 8192
    assert effective_context(s["average"], threshold=0.95)["length"] is None
    assert effective_context({})["length"] is None
    zero = {"1024": 0.0, "2048": 0.0}
    assert effective_context(zero)["length"] is None  # nothing solved: no effective context
    assert effective_context(zero, threshold=0.0)["length"] == 2048  # an explicit bar of 0 is met


@needs_qa
def test_qa_records_keep_only_answers_inside_their_passage():
    records = read_qa_records(QA)
    assert len(records) > 50
    for r in records:
        assert r["question"] and all(a in r["passage"] for a in r["answers"])


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = make_char_tokenizer()
    out = tmp_path_factory.mktemp("tiny") / "tiny"
    tiny_model("llama", max_position_embeddings=8192).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


TASKS_SMALL = ["niah_single_1", "niah_multikey_2", "vt", "cwe", "fwe"]  # no qa: only the haystack is read


def _args(model_dir, haystack_file, out, *extra):
    return [
        "--model",
        str(model_dir),
        "--torch-dtype",
        "float32",
        "--haystack",
        str(haystack_file),
        "--tasks",
        *TASKS_SMALL,
        "--lengths",
        "1k",
        "1500",
        "--samples",
        "2",
        "--seed",
        "3",
        "--max-new-tokens",
        "4",
        "--chat-template",
        "off",
        "--output",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_cli_end_to_end_writes_scores_records_and_plot(model_dir, haystack_file, tmp_path, capsys):
    out, png = tmp_path / "ruler.json", tmp_path / "ruler.png"
    assert main(_args(model_dir, haystack_file, out, "--plot", str(png))) == 0
    payload = json.loads(out.read_text())
    assert payload["kind"] == "ruler" and payload["complete"]
    assert set(payload["scores"]) == set(TASKS_SMALL)
    assert len(payload["records"]) == len(TASKS_SMALL) * 2 * 2
    for r in payload["records"]:
        assert r["prompt_tokens"] == r["length"] - 4
        assert r["score"] == pytest.approx(reference_score(r["output"], r["answers"], r["metric"]))
    for task in TASKS_SMALL:
        for n in (1024, 1500):
            mine = [r["score"] for r in payload["records"] if (r["task"], r["length"]) == (task, n)]
            assert payload["scores"][task][str(n)] == pytest.approx(sum(mine) / 2)
    assert payload["effective_context"]["kind"] == "relative"
    assert payload["config"]["seed"] == 3 and payload["config"]["chat_template"] is False
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "average" in capsys.readouterr().out
    log = Path(str(out) + ".samples.jsonl")
    assert len(log.read_text().splitlines()) == len(payload["records"])


def _rotate(answer: str) -> str:
    """A wrong answer of the right shape: each digit +5 (mod 10), each letter 13 places on."""
    out = []
    for ch in answer:
        if ch.isdigit():
            out.append(str((int(ch) + 5) % 10))
        elif ch.isascii() and ch.isalpha():
            base = ord("a") if ch.islower() else ord("A")
            out.append(chr(base + (ord(ch) - base + 13) % 26))
        else:
            out.append(ch)
    return "".join(out)


@needs_qa
@pytest.mark.parametrize("correct", [True, False], ids=["answers-right", "answers-wrong"])
def test_a_model_that_answers_right_scores_1_and_one_that_answers_wrong_scores_0(
    model_dir, haystack_file, tmp_path, monkeypatch, correct
):
    """The whole command (samples, prompts, scoring, summary, effective context, the JSON), with a stub
    in place of generation: it reads the answers hidden in each sample and says them (or says wrong
    answers of the same shape). Every task, the part-scored qa included."""
    import longlora.eval.ruler as ruler

    seen = []

    def stub_generate(model, tokenizer, sample):
        assert model is not None and tokenizer is not None and len(sample.input_ids) == sample.prompt_tokens
        seen.append((sample.task, sample.length, sample.index))
        if correct:
            return ", ".join(sample.answers)
        output = ", ".join(_rotate(a) for a in sample.answers)
        assert not any(a.lower() in output.lower() for a in sample.answers), (sample.answers, output)
        return "The answer is " + output

    monkeypatch.setattr(ruler, "generate", stub_generate)
    out = tmp_path / "ruler.json"
    argv = ["--model", str(model_dir), "--torch-dtype", "float32", "--haystack", str(haystack_file)]
    argv += ["--qa-data", str(QA), "--lengths", "2k", "3k", "--samples", "2", "--seed", "5"]
    argv += ["--chat-template", "off", "--output", str(out), "--no-progress"]
    assert ruler.main(argv) == 0
    payload = json.loads(out.read_text())
    expected = 1.0 if correct else 0.0
    grid = {(t, n, i) for t in TASKS for n in (2048, 3072) for i in range(2)}
    assert len(seen) == len(grid) and set(seen) == grid  # every sample generated, once
    assert payload["complete"] and len(payload["records"]) == len(grid)
    assert {r["metric"] for r in payload["records"]} == {"all", "part"}
    assert all(r["score"] == expected for r in payload["records"]), [
        (r["task"], r["score"]) for r in payload["records"] if r["score"] != expected
    ]
    assert payload["scores"] == {t: {"2048": expected, "3072": expected} for t in TASKS}
    assert payload["average"] == {"2048": expected, "3072": expected}
    assert payload["effective_context"]["length"] == (3072 if correct else None)


def test_resume_after_a_kill_neither_redoes_nor_loses_samples(model_dir, haystack_file, tmp_path):
    out = tmp_path / "ruler.json"
    log = Path(str(out) + ".samples.jsonl")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "longlora.eval.ruler", *_args(model_dir, haystack_file, out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert 3 <= len(before) < 20, "the run finished before it could be killed"
    with open(log, "a") as fh:  # a record cut short by the kill
        fh.write('{"task": "vt", "length": 15')
    assert main(_args(model_dir, haystack_file, out)) == 0
    payload = json.loads(out.read_text())
    keys = [(r["task"], r["length"], r["index"]) for r in payload["records"]]
    assert len(keys) == len(set(keys)) == 20  # nothing lost, nothing twice
    by_key = {(r["task"], r["length"], r["index"]): r for r in payload["records"]}
    for r in before:  # kept as scored before the kill, not redone (same timing record)
        assert by_key[r["task"], r["length"], r["index"]] == r
    fresh = tmp_path / "fresh.json"
    assert main(_args(model_dir, haystack_file, fresh)) == 0
    again = {
        (r["task"], r["length"], r["index"]): r["output"] for r in json.loads(fresh.read_text())["records"]
    }
    assert {k: r["output"] for k, r in by_key.items()} == again  # same answers as an unbroken run


def test_a_log_from_other_settings_is_refused(model_dir, haystack_file, tmp_path, capsys):
    out = tmp_path / "r.json"
    log = Path(str(out) + ".samples.jsonl")
    log.write_text(json.dumps({"task": "vt", "length": 1024, "index": 0, "fingerprint": "other"}) + "\n")
    with pytest.raises(InputError, match="other settings"):
        read_log(log, "mine")
    assert main(_args(model_dir, haystack_file, out)) == 2
    assert "holds samples scored with other settings" in capsys.readouterr().err


@needs_qa
def test_cli_errors_name_the_fix(model_dir, haystack_file, tmp_path, capsys):
    base = [
        "--model",
        str(model_dir),
        "--torch-dtype",
        "float32",
        "--haystack",
        str(haystack_file),
        "--no-progress",
    ]
    assert main(base + ["--lengths", "16k"]) == 2
    assert "--lengths 16384 is above the 8192 positions" in capsys.readouterr().err
    assert main(base + ["--tasks", "vt", "--lengths", "200"]) == 2
    assert "use lengths of at least" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("Too short. Really.")
    assert main(["--model", str(model_dir), "--haystack", str(short), "--no-progress"]) == 2
    assert "give longer documents with --haystack" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--samples", "0"])
    assert "--samples must be at least 1" in capsys.readouterr().err


@pytest.mark.real_model
@needs_qa
def test_real_tokenizer_lengths_are_exact():
    from longlora.models import load_tokenizer, resolve_model_path

    tok = load_tokenizer(resolve_model_path("default"))
    hay = Haystack.from_paths([BOOK], QA)
    for task in TASKS:
        for chat in (False, True):
            s = make_sample(task, 4096, 0, 0, hay, tok, chat_template=chat)
            assert s.prompt_tokens == 4096 - s.max_new_tokens
