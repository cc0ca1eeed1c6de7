"""Evaluation data loading and result plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EMMA, fixture_path, make_char_tokenizer  # noqa: E402

from data_tools.errors import DataError
from longlora.eval.common import check_addressable, parse_lengths
from longlora.eval.plot import main as plot_main
from longlora.eval.tokens import load_eval_tokens


@pytest.fixture(scope="module")
def tok():
    return make_char_tokenizer()


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_folder_of_text_markdown_and_jsonl_joins_documents_with_eos(tok, tmp_path):
    (tmp_path / "a.txt").write_text("first book")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("second")
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"text": "third"}) + "\n" + json.dumps({"text": "fourth"}) + "\n"
    )
    (tmp_path / "notes.csv").write_text("ignored")
    data = load_eval_tokens([tmp_path], tok)
    eos = tok.eos_token_id
    # Sorted order: a.txt, c.jsonl, sub/b.md
    expected = (
        _ids(tok, "first book")
        + [eos]
        + _ids(tok, "third")
        + [eos]
        + _ids(tok, "fourth")
        + [eos]
        + _ids(tok, "second")
    )
    assert data.tokens.tolist() == expected
    assert [s["kind"] for s in data.sources] == ["text", "records", "text"]
    assert not data.truncated


def test_max_tokens_keeps_the_first_tokens(tok, tmp_path):
    (tmp_path / "a.txt").write_text("x" * 50)
    (tmp_path / "b.txt").write_text("y" * 50)
    data = load_eval_tokens([tmp_path], tok, max_tokens=60)
    assert len(data) == 60 and data.truncated
    assert data.tokens.tolist() == _ids(tok, "x" * 50) + [tok.eos_token_id] + _ids(tok, "y" * 9)


def test_pdf_goes_through_data_tools_extraction(tok):
    data = load_eval_tokens([str(fixture_path("zoo-faq.pdf"))], tok, max_tokens=2000)
    assert len(data) == 2000
    text = tok.decode(data.tokens.tolist())
    assert "zoo" in text.lower()


def test_token_files_sidecar_raw_and_vocabulary_checks(tmp_path):
    from data_tools.tokenfile import write_token_file

    write_token_file(tmp_path / "t32.bin", [[1, 70000, 3], [4, 5]], vocab_size=100000, tokenizer="big")
    data = load_eval_tokens([tmp_path / "t32.bin"])
    assert data.tokens.tolist() == [1, 70000, 3, 4, 5] and data.tokens.dtype == np.int64
    with pytest.raises(DataError, match=r"id 70000, beyond the model's vocabulary of 49152.*\(big\)"):
        load_eval_tokens([tmp_path / "t32.bin"], vocab_size=49152)
    raw = tmp_path / "pg19.bin"
    raw.write_bytes(np.arange(10, dtype="<u2").tobytes())
    assert load_eval_tokens([raw], token_dtype="uint16").tokens.tolist() == list(range(10))
    assert load_eval_tokens([raw], token_dtype="uint32").tokens.tolist() == [
        int(v) for v in np.arange(10, dtype="<u2").view("<u4")
    ]
    with pytest.raises(DataError, match=r"cannot read token file .*--dtype uint16 or uint32"):
        load_eval_tokens([raw])


def test_missing_unsupported_and_empty_inputs_are_explained(tok, tmp_path):
    from data_tools import EmptyDocumentError

    with pytest.raises(DataError, match="no such file or folder"):
        load_eval_tokens([tmp_path / "nope.txt"], tok)
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(DataError, match=r"unsupported file type \.csv"):
        load_eval_tokens([tmp_path / "data.csv"], tok)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"folder holds no \.pdf, \.txt.* files"):
        load_eval_tokens([tmp_path / "empty"], tok)
    (tmp_path / "blank.txt").write_text("   \n")
    with pytest.raises((EmptyDocumentError, DataError), match="(?i)empty"):
        load_eval_tokens([tmp_path / "blank.txt"], tok)
    with pytest.raises(DataError, match="a tokenizer is needed"):
        load_eval_tokens([str(EMMA)])


def test_lengths_and_context_checks():
    assert parse_lengths(["1k", "1536", "2k:4k:1k", "2k"]) == [1024, 1536, 2048, 3072, 4096]

    class Config:
        max_position_embeddings = 8192

    check_addressable(Config(), 8192, what="--seq-len")
    with pytest.raises(ValueError, match=r"--seq-len 10000 is above the 8192 .* --context-length 16384"):
        check_addressable(Config(), 10000, what="--seq-len")
    with pytest.raises(ValueError, match=r"raise --context-length to at least 10000"):
        check_addressable(Config(), 10000, what="--seq-len", context_length=9000)


# ----------------------------------------------------------------------------- plots


def _ppl_payload(label, ppls):
    return {
        "kind": "perplexity",
        "config": {"label": label, "protocol": "sliding"},
        "results": [{"seq_len": n, "ppl": p, "tokens": 100, "seconds": 1.0} for n, p in ppls],
    }


def _passkey_payload(label):
    cells = [
        {"length": n, "depth": d, "accuracy": a, "correct": 0, "trials": 1}
        for n in (1024, 2048)
        for d, a in ((0.0, 1.0), (1.0, 0.5))
    ]
    return {
        "kind": "passkey",
        "config": {"label": label},
        "by_length_depth": cells,
        "by_length": [{"length": 1024, "accuracy": 0.75}, {"length": 2048, "accuracy": 0.75}],
    }


def test_plot_command_draws_several_runs_and_refuses_bad_input(tmp_path, capsys):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(_ppl_payload("base", [(1024, 20.0), (2048, 18.0)])))
    b.write_text(json.dumps(_ppl_payload("PI", [(1024, 21.0), (4096, 16.0)])))
    c.write_text(json.dumps(_passkey_payload("base")))
    out = tmp_path / "plots" / "ppl.png"
    assert plot_main([str(a), str(b), "-o", str(out), "--labels", "one", "two"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert plot_main([str(c), str(c), "-o", str(tmp_path / "pk.png")]) == 0
    assert (tmp_path / "pk.png").stat().st_size > 1000
    assert plot_main([str(a), str(c), "-o", str(tmp_path / "x.png")]) == 2
    assert "cannot mix" in capsys.readouterr().err
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    assert plot_main([str(junk), "-o", str(tmp_path / "x.png")]) == 2
    assert "not a JSON result file" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_the_old_module_path_warns_and_keeps_its_names(monkeypatch):
    """longlora.eval.data moved to longlora.eval.tokens; the old path is a shim for one release."""
    import importlib
    import sys

    from longlora.eval import tokens

    monkeypatch.delitem(sys.modules, "longlora.eval.data", raising=False)
    with pytest.deprecated_call(match="longlora.eval.data moved to longlora.eval.tokens"):
        old = importlib.import_module("longlora.eval.data")
    assert old.load_eval_tokens is tokens.load_eval_tokens and old.EvalData is tokens.EvalData
