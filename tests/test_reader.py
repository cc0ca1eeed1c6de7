"""One reader from paths to documents: finetune, eval and `data_tools tokenize | extract | build-longalpaca`
accept the same files."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import make_char_tokenizer

from data_tools.errors import DataError
from data_tools.extract import main as extract_main
from data_tools.longalpaca import main as build_main
from data_tools.minipdf import write_text_pdf
from data_tools.reader import find_sources, read_documents
from data_tools.tokenfile import open_token_file
from data_tools.tokenize_corpus import main as tokenize_main
from longlora.eval.tokens import load_eval_tokens
from longlora.training.data import read_pretrain_stream


@pytest.fixture
def corpus(tmp_path):
    """A folder with every accepted document type, records, and files every reader must skip."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("plain text")
    (root / "b.md").write_text("# markdown")
    (root / "c.markdown").write_text("long markdown suffix")
    (root / "d.text").write_text("long text suffix")
    write_text_pdf(root / "e.pdf", [["a pdf page"], ["second page"]])
    (root / "sub" / "f.txt").write_text("nested")
    (root / "g.jsonl").write_text(
        json.dumps({"text": "record one"}) + "\n" + json.dumps({"text": "two"}) + "\n"
    )
    (root / ".hidden.txt").write_text("hidden file")
    (root / ".git").mkdir()
    (root / ".git" / "x.txt").write_text("hidden folder")
    (root / "notes.csv").write_text("not a document")
    (root / "image.png").write_bytes(b"\x89PNG")
    return root


EXPECTED = [
    "plain text",
    "# markdown",
    "long markdown suffix",
    "long text suffix",
    "PDF",  # the text data_tools.load_document extracts (filled in below)
    "record one",
    "two",
    "nested",
]


def _finetune_texts(paths, tok):
    stream = read_pretrain_stream([str(p) for p in paths], tok)
    bounds = list(stream.doc_starts) + [len(stream)]
    ids = stream.tokens[:]
    return [tok.decode(ids[a:b].tolist()) for a, b in zip(bounds, bounds[1:])]


def _eval_texts(paths, tok):
    ids = load_eval_tokens(list(paths), tok).tokens.tolist()
    docs, current = [], []
    for i in ids + [tok.eos_token_id]:
        if i == tok.eos_token_id:
            docs.append(tok.decode(current))
            current = []
        else:
            current.append(i)
    return docs


def _tokenize_texts(paths, tok_dir, tok, out):
    assert tokenize_main([*map(str, paths), "--tokenizer", str(tok_dir), "-o", str(out), "--quiet"]) == 0
    tf = open_token_file(out)
    return [tok.decode(tf.document(i).tolist()) for i in range(len(tf.documents))]


def test_finetune_eval_and_tokenize_read_the_same_documents(corpus, tiny_model_dir, tmp_path):
    from data_tools import load_document

    tok = make_char_tokenizer()
    expected = [load_document(corpus / "e.pdf").text if t == "PDF" else t for t in EXPECTED]
    assert "second page" in expected[4]
    assert _finetune_texts([corpus], tok) == expected
    assert _eval_texts([corpus], tok) == expected
    assert _tokenize_texts([corpus], tiny_model_dir, tok, tmp_path / "c.bin") == expected


def test_globs_and_directly_named_files_are_the_same_everywhere(corpus, tiny_model_dir, tmp_path):
    tok = make_char_tokenizer()
    paths = [f"{corpus}/*.*down", corpus / ".hidden.txt", f"{corpus}/**/f.txt"]
    expected = ["long markdown suffix", "hidden file", "nested"]
    assert _finetune_texts(paths, tok) == expected
    assert _eval_texts(paths, tok) == expected
    assert _tokenize_texts(paths, tiny_model_dir, tok, tmp_path / "g.bin") == expected


def test_the_same_refusals_everywhere(corpus, tiny_model_dir, tmp_path, capsys):
    tok = make_char_tokenizer()
    cases = {
        str(corpus / "notes.csv"): r"unsupported file type \.csv; use one of \.pdf, \.txt",
        str(corpus / "missing.txt"): "no such file or folder",
        str(corpus / "*.docx"): "the pattern matches no",
        str(tmp_path / "empty_dir"): "folder holds no",
    }
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / ".only-hidden.txt").write_text("x")
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"doc": "a.txt", "question": "What?", "answer": "Text."}) + "\n")
    for path, message in cases.items():
        with pytest.raises(DataError, match=message):
            read_pretrain_stream([path], tok)
        with pytest.raises(DataError, match=message):
            load_eval_tokens([path], tok)
        assert tokenize_main([path, "--tokenizer", str(tiny_model_dir), "-o", str(tmp_path / "x.bin")]) == 2
        assert "error: " in capsys.readouterr().err
        # the document commands: the same refusals, before anything is written
        assert extract_main([path, "-o", str(tmp_path / "out")]) == 2
        assert re.search("error: input .*" + message, capsys.readouterr().err)
        assert build_main(["--docs", path, "--qa", str(qa), "-o", str(tmp_path / "o.json")]) == 2
        assert re.search("error: --docs .*" + message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "o.json").exists()


def test_extract_reads_the_documents_every_command_reads(corpus, tmp_path):
    """extract writes one text per document the reader finds: hidden files, records and others skipped."""
    out = tmp_path / "out"
    assert extract_main([str(corpus), "-o", str(out), "--quiet"]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt"))
    expected = [
        s.path.relative_to(corpus).with_suffix(".txt").as_posix()
        for s in find_sources([corpus], ("document",))
    ]
    assert written == sorted(expected) == ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt", "sub/f.txt"]
    assert extract_main([f"{corpus}/*.*down", "-o", str(tmp_path / "globbed"), "--quiet"]) == 0
    assert (tmp_path / "globbed" / "c.txt").read_text() == "long markdown suffix\n"


def test_documents_come_with_pages_and_token_file_sidecars_are_not_records(corpus, tmp_path):
    from data_tools.tokenfile import write_token_file

    docs = list(read_documents([corpus]))
    pdf = next(d for d in docs if d.kind == "pdf")
    assert pdf.num_pages == 2 and pdf.pages_for_span(0, 3) == [1]
    write_token_file(corpus / "t.bin", [np.arange(3)], vocab_size=10)
    kinds = {s.path.name: s.kind for s in find_sources([corpus])}
    assert kinds["t.bin"] == "tokens" and "t.bin.json" not in kinds and kinds["g.jsonl"] == "records"
    with pytest.raises(DataError, match="sidecar of token file"):
        find_sources([corpus / "t.bin.json"])
