"""Records, LongAlpaca dataset building, token files and the tokenize command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture_path  # noqa: E402

from data_tools.longalpaca import BuildConfig, build, dedupe, mix, record_candidates
from data_tools.longalpaca import main as build_main
from data_tools.minipdf import write_text_pdf
from data_tools.prompts import build_instruction, template_question
from data_tools.records import RecordError, read_records, write_records
from data_tools.tokenfile import TokenFileError, TokenWriter, open_token_file, write_token_file
from data_tools.tokenize_corpus import main as tokenize_main
from data_tools.tokenize_corpus import split_for_tokenizing


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------- records


def test_records_round_trip_json_and_jsonl(tmp_path):
    rows = [
        {"instruction": "q1 ünïcode", "output": "a1"},
        {"instruction": "q2", "input": "ctx", "output": "a2"},
    ]
    for name in ("r.json", "r.jsonl"):
        write_records(tmp_path / name, rows)
        assert read_records(tmp_path / name) == rows
    assert (tmp_path / "r.json").read_text().lstrip().startswith("[")
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


def test_malformed_records_name_file_and_line(tmp_path):
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c", \n')
    with pytest.raises(RecordError, match=r"bad\.jsonl:3: not valid JSON"):
        read_records(bad_jsonl)
    missing = tmp_path / "missing.json"
    missing.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c"}\n]\n')
    with pytest.raises(RecordError, match=r"missing\.json:3 \(record 2\): missing field\(s\) \['output'\]"):
        read_records(missing)
    not_str = tmp_path / "notstr.jsonl"
    not_str.write_text('{"instruction": "a", "output": 3}\n')
    with pytest.raises(RecordError, match=r"notstr\.jsonl:1: field\(s\) \['output'\] must be strings"):
        read_records(not_str)
    with pytest.raises(RecordError, match="no such file"):
        read_records(tmp_path / "nope.json")
    assert issubclass(RecordError, ValueError)


# --------------------------------------------------------------------------------------------- longalpaca


@pytest.fixture
def corpus(tmp_path):
    """Two small PDFs, a text file, a QA file using both question forms, a short-QA file."""
    docs = tmp_path / "docs"
    docs.mkdir()
    write_text_pdf(docs / "alpha.pdf", [["Alpha paper about shifted sparse attention."], ["It trains fast."]])
    write_text_pdf(docs / "beta.pdf", [["Beta paper about position interpolation."]])
    (docs / "gamma.txt").write_text("Gamma is a tiny story about two friends.\n")
    qa = write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"doc": "alpha.pdf", "question": "What does alpha study?", "answer": "Shifted sparse attention."},
            {"doc": "alpha", "template": "summary", "answer": "A paper on S2-Attn."},
            {"doc": "beta.pdf", "template": "limitations", "answer": "Only linear scaling."},
            {"doc": "gamma.txt", "template": "characters", "answer": "Two friends.", "material_type": "book"},
            {"doc": "beta.pdf", "question": "Empty answer?", "answer": "  "},
            {
                "doc": "alpha.pdf",
                "question": "What does  alpha study?",
                "answer": "shifted sparse attention.",
            },
        ],
    )
    short = write_jsonl(
        tmp_path / "short.jsonl",
        [
            {"instruction": f"Short task {i}", "input": f"context {i}", "output": f"answer {i}"}
            for i in range(40)
        ]
        + [{"instruction": "Short task 0", "input": "context 0", "output": "answer 0"}],
    )
    return {"dir": tmp_path, "docs": docs, "qa": qa, "short": short}


def test_build_long_records_follow_the_paper_template(corpus):
    records, stats = build(
        BuildConfig(output=str(corpus["dir"] / "o.json"), docs=[str(corpus["docs"])], qa=[str(corpus["qa"])]),
        log=lambda m: None,
    )
    assert len(records) == 4 and stats["dropped"] == {"duplicate": 1, "empty answer": 1}
    by_output = {r["output"]: r["instruction"] for r in records}
    alpha_text = "Alpha paper about shifted sparse attention.\n\nIt trains fast."
    assert by_output["Shifted sparse attention."] == build_instruction(
        alpha_text, "What does alpha study?", "paper"
    )
    assert by_output["A paper on S2-Attn."] == build_instruction(
        alpha_text, template_question("summary", "paper"), "paper"
    )
    assert by_output["Two friends."].endswith(template_question("characters", "book"))
    assert by_output["Two friends."].startswith("Below is a book.")


def test_build_is_deterministic_and_respects_the_ratio(corpus, tmp_path):
    def run(seed, out):
        argv = ["--docs", str(corpus["docs"]), "--qa", str(corpus["qa"]), "--short", str(corpus["short"])]
        argv += ["--short-fraction", "0.25", "--seed", str(seed), "-o", str(out)]
        assert build_main(argv) == 0
        return out.read_bytes()

    a, b, c = run(0, tmp_path / "a.jsonl"), run(0, tmp_path / "b.jsonl"), run(1, tmp_path / "c.jsonl")
    assert a == b and a != c
    records = read_records(tmp_path / "a.jsonl")
    long = [r for r in records if r["instruction"].startswith("Below is")]
    short = [r for r in records if not r["instruction"].startswith("Below is")]
    assert len(long) == 4 and len(short) == round(0.25 / 0.75 * 4) == 1
    assert all("input" in r for r in short)
    stats = json.loads((tmp_path / "a.stats.json").read_text())
    assert stats["records"] == 5 and stats["short"] == 1
    assert stats["dropped"]["duplicate"] == 2  # one long, one short
    assert stats["dropped"]["short records beyond --short-fraction 0.25"] == 39
    assert stats["sources"]["short:short.jsonl"] == {
        "read": 41,
        "kept": 1,
        "lengths": stats["sources"]["short:short.jsonl"]["lengths"],
    }
    assert (tmp_path / "a.lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mix_ratio_property():
    from random import Random

    from data_tools.longalpaca import Candidate

    long = [Candidate({"instruction": f"L{i}", "output": "x"}, "l", "long", "") for i in range(90)]
    short = [Candidate({"instruction": f"S{i}", "output": "x"}, "s", "short", "") for i in range(100)]
    for fraction in (0.0, 0.1, 0.25, 0.5):
        out = mix(long, short, fraction, Random(0))
        n_short = sum(c.kind == "short" for c in out)
        assert len(out) - n_short == 90
        assert n_short == min(100, round(fraction / (1 - fraction) * 90))
    assert len(mix([], short, 0.25, Random(0))) == 100  # no long records: short data passes through
    assert len(mix(long, short[:5], 0.5, Random(0))) == 95  # pool runs out


def test_dedupe_ignores_whitespace_and_case():
    from data_tools.longalpaca import Candidate

    cands = [
        Candidate({"instruction": s, "output": "A"}, "x", "long", "")
        for s in ("Hello  world", "hello world\n", "other")
    ]
    kept, dropped = dedupe(cands)
    assert [c.record["instruction"] for c in kept] == ["Hello  world", "other"] and dropped == 1


def test_length_filter_with_a_tokenizer(corpus, tiny_model_dir, char_tokenizer, tmp_path):
    out = tmp_path / "f.jsonl"
    argv = ["--docs", str(corpus["docs"]), "--qa", str(corpus["qa"]), "--short", str(corpus["short"])]
    argv += [
        "--tokenizer",
        str(tiny_model_dir),
        "--max-tokens",
        "200",
        "--short-fraction",
        "0.5",
        "-o",
        str(out),
    ]
    assert build_main(argv) == 0
    records = read_records(out)
    from data_tools.longalpaca import record_text

    lengths = [len(char_tokenizer(record_text(r), add_special_tokens=False)["input_ids"]) for r in records]
    assert records and max(lengths) <= 200
    stats = json.loads((tmp_path / "f.stats.json").read_text())
    assert stats["length_unit"] == "tokens (tiny-llama)" and stats["lengths"]["max"] == max(lengths)
    assert stats["dropped"]["longer than --max-tokens 200"] == 4  # every long record is > 200 chars


def test_convert_and_filter_existing_longalpaca(tmp_path):
    src = tmp_path / "LongAlpaca.json"
    rows = [{"instruction": "Below is a paper. " + "word " * n, "output": "ok"} for n in (5, 50, 500)]
    src.write_text(json.dumps(rows + rows[:1]))
    out = tmp_path / "LongAlpaca-short.jsonl"
    assert build_main(["--longalpaca", str(src), "--no-stats", "-o", str(out)]) == 0
    converted = read_records(out)  # JSON list -> JSONL, the duplicate dropped, shuffled by the seed
    assert sorted(converted, key=lambda r: len(r["instruction"])) == rows
    assert not (tmp_path / "LongAlpaca-short.stats.json").exists()


def test_build_reports_bad_input(corpus, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"doc": "alpha.pdf", "question": "q", "answer": "a"}\n{"doc": "alpha.pdf", "answer": "a"}\n'
    )
    assert build_main(["--docs", str(corpus["docs"]), "--qa", str(bad), "-o", str(tmp_path / "o.json")]) == 2
    assert "bad.jsonl:2: give exactly one of 'question' or 'template'" in capsys.readouterr().err
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"doc": "zeta.pdf", "question": "q", "answer": "a"}])
    assert (
        build_main(["--docs", str(corpus["docs"]), "--qa", str(unknown), "-o", str(tmp_path / "o.json")]) == 2
    )
    assert (
        "unknown.jsonl:1: doc 'zeta.pdf' is not one of the --docs documents (alpha.pdf, beta.pdf, gamma.txt)"
        in capsys.readouterr().err
    )
    template = write_jsonl(tmp_path / "t.jsonl", [{"doc": "alpha.pdf", "template": "plot", "answer": "a"}])
    assert (
        build_main(["--docs", str(corpus["docs"]), "--qa", str(template), "-o", str(tmp_path / "o.json")])
        == 2
    )
    assert "t.jsonl:1: unknown template 'plot'" in capsys.readouterr().err
    assert build_main(["--qa", str(corpus["qa"]), "-o", str(tmp_path / "o.json")]) == 2
    assert "--qa needs --docs" in capsys.readouterr().err
    assert (
        build_main(["--short", str(corpus["short"]), "--max-tokens", "10", "-o", str(tmp_path / "o.json")])
        == 2
    )
    assert "pass --tokenizer" in capsys.readouterr().err


def test_failed_documents_drop_their_questions(corpus, tmp_path, capsys):
    (corpus["docs"] / "broken.pdf").write_bytes(b"%PDF-1.4 broken")
    qa = write_jsonl(
        tmp_path / "qa2.jsonl",
        [
            {"doc": "broken.pdf", "question": "q", "answer": "a"},
            {"doc": "beta.pdf", "question": "q", "answer": "a"},
        ],
    )
    out = tmp_path / "o.json"
    assert build_main(["--docs", str(corpus["docs"]), "--qa", str(qa), "-o", str(out)]) == 0
    assert "FAILED" in capsys.readouterr().err
    stats = json.loads((tmp_path / "o.stats.json").read_text())
    assert stats["dropped"] == {"document failed to load": 1} and "broken.pdf" in stats["documents"]["failed"]
    assert len(read_records(out)) == 1


def test_short_fixture_reads_as_short_records():
    from collections import Counter

    cands = record_candidates(str(fixture_path("short-qa-bigbench-sample.jsonl")), "short", Counter())
    assert len(cands) == 450 and all(c.kind == "short" and c.record["output"] for c in cands)


def test_round_trip_into_sft(corpus, tiny_model_dir, tmp_path):
    # The project's own fine-tuning command, on required packages only (torch, transformers, peft,
    # accelerate): an ImportError here is a failure of the project, never a reason to skip.
    from longlora.finetune import main as finetune_main

    data = tmp_path / "sft.json"
    argv = [
        "--docs",
        str(corpus["docs"]),
        "--qa",
        str(corpus["qa"]),
        "--short",
        str(corpus["short"]),
        "-o",
        str(data),
    ]
    assert build_main(argv) == 0
    out = tmp_path / "run"
    finetune_main(
        ["--model", str(tiny_model_dir), "--mode", "sft", "--data", str(data), "--output-dir", str(out)]
        + [
            "--max-steps",
            "1",
            "--context-length",
            "256",
            "--method",
            "lora+",
            "--attention",
            "s2",
            "--dtype",
            "fp32",
        ]
    )
    assert (out / "adapter_config.json").exists()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert losses and all(np.isfinite(losses))  # the records produced answer tokens to train on


# --------------------------------------------------------------------------------------------- token files


@pytest.mark.parametrize(
    "vocab_size, dtype", [(128, "uint16"), (65_536, "uint16"), (65_537, "uint32"), (151_936, "uint32")]
)
def test_token_file_round_trip(tmp_path, vocab_size, dtype):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, vocab_size, size=n) for n in (0, 7, 300)]
    docs[2][-1] = vocab_size - 1
    tf = write_token_file(tmp_path / "c.bin", docs, vocab_size=vocab_size, tokenizer="tok")
    assert tf.dtype == dtype and os.path.getsize(tmp_path / "c.bin") == 307 * np.dtype(dtype).itemsize
    assert tf.documents == [(0, 0), (0, 7), (7, 307)]
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(tf.document(i), d)
    meta = json.loads((tmp_path / "c.bin.json").read_text())
    assert meta == {
        "dtype": dtype,
        "tokenizer": "tok",
        "vocab_size": vocab_size,
        "num_tokens": 307,
        "documents": [[0, 0], [0, 7], [7, 307]],
    }


def test_raw_uint16_file_without_sidecar(tmp_path):
    ids = np.array([1, 65535, 3], dtype="<u2")
    ids.tofile(tmp_path / "pg19.bin")
    with pytest.raises(TokenFileError, match="without a pg19.bin.json sidecar.*dtype='uint16'"):
        open_token_file(tmp_path / "pg19.bin")
    tf = open_token_file(tmp_path / "pg19.bin", dtype="uint16")
    assert tf.tokens.tolist() == [1, 65535, 3] and tf.documents is None


def test_token_file_errors(tmp_path):
    with pytest.raises(TokenFileError, match="outside \\[0, 100\\)"):
        write_token_file(tmp_path / "x.bin", [[1, 100]], vocab_size=100)
    assert not (tmp_path / "x.bin").exists() and not list(tmp_path.glob(".x.bin*"))  # nothing half-written
    with pytest.raises(TokenFileError, match="does not fit in uint16"):
        TokenWriter(tmp_path / "y.bin", vocab_size=70_000, dtype="uint16")
    write_token_file(tmp_path / "z.bin", [[1, 2, 3]], vocab_size=10)
    with open(tmp_path / "z.bin", "ab") as f:
        f.write(b"\x00\x00")
    with pytest.raises(TokenFileError, match="holds 4 tokens but its sidecar says 3"):
        open_token_file(tmp_path / "z.bin")
    with pytest.raises(TokenFileError, match="sidecar says 'uint16'"):
        open_token_file(tmp_path / "z.bin", dtype="uint32")


def test_split_for_tokenizing_concatenates_back():
    text = ("para one line\nline two\n\n" * 50) + "x" * 300
    pieces = split_for_tokenizing(text, piece_chars=100)
    assert "".join(pieces) == text and all(len(p) <= 300 for p in pieces) and len(pieces) > 5


def test_tokenize_command(tmp_path, tiny_model_dir, char_tokenizer, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("Hello world. " * 30)
    write_text_pdf(tmp_path / "in" / "b.pdf", [["A pdf page."], ["Second page."]])
    (tmp_path / "in" / "broken.pdf").write_bytes(b"%PDF-1.4 broken")
    write_jsonl(tmp_path / "in" / "c.jsonl", [{"text": "record one"}, {"text": "record two"}])
    out = tmp_path / "corpus.bin"
    code = tokenize_main(
        [str(tmp_path / "in"), "--tokenizer", str(tiny_model_dir), "-o", str(out), "--eos", "--quiet"]
    )
    assert code == 1 and "FAILED" in capsys.readouterr().err  # broken.pdf reported, the rest written
    tf = open_token_file(out)
    assert tf.dtype == "uint16" and tf.meta["tokenizer"] == "tiny-llama" and len(tf.documents) == 4
    texts = [("Hello world. " * 30).strip(), "A pdf page.\n\nSecond page.", "record one", "record two"]
    for i, text in enumerate(texts):
        expected = char_tokenizer(text, add_special_tokens=False)["input_ids"] + [char_tokenizer.eos_token_id]
        assert tf.document(i).tolist() == expected
    assert (
        tokenize_main(
            [
                str(tmp_path / "in" / "a.txt"),
                "--tokenizer",
                str(tiny_model_dir),
                "-o",
                str(tmp_path / "x.tok"),
            ]
        )
        == 2
    )


def test_tokenize_reports_malformed_jsonl(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "wrong field"}\n')
    assert (
        tokenize_main(
            [str(bad), "--tokenizer", str(tiny_model_dir), "-o", str(tmp_path / "o.bin"), "--quiet"]
        )
        == 2
    )
    assert "bad.jsonl:2: missing field(s) ['text']" in capsys.readouterr().err
    assert not (tmp_path / "o.bin").exists()
