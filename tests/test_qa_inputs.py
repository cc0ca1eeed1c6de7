"""Bad input to the QA engine and its CLI: clear errors naming the problem and the fix, no crash."""

from __future__ import annotations

import pytest
from conftest import make_char_tokenizer, tiny_model

from data_tools import (
    CorruptFileError,
    DocumentError,
    EmptyDocumentError,
    EncryptedPDFError,
    NoTextLayerError,
    UnsupportedFileTypeError,
)
from data_tools.errors import ModelLoadError
from data_tools.minipdf import write_image_pdf, write_text_pdf
from longlora import qa
from longlora.qa import QAEngine


@pytest.fixture(scope="module")
def engine():
    return QAEngine(model=tiny_model(), tokenizer=make_char_tokenizer(), max_new_tokens=4)


def encrypted_pdf(path):
    from pypdf import PdfReader, PdfWriter

    plain = write_text_pdf(path.with_suffix(".plain.pdf"), [["Secret text on a page."]])
    writer = PdfWriter()
    for page in PdfReader(plain).pages:
        writer.add_page(page)
    writer.encrypt(user_password="hunter2", owner_password="owner")
    with open(path, "wb") as f:
        writer.write(f)
    return path


@pytest.mark.parametrize(
    "make, error, message",
    [
        (
            lambda p: (p / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf") and p / "broken.pdf",
            CorruptFileError,
            "broken.pdf",
        ),
        (lambda p: encrypted_pdf(p / "locked.pdf"), EncryptedPDFError, "locked.pdf"),
        (lambda p: write_image_pdf(p / "scan.pdf", pages=2), NoTextLayerError, "scan.pdf"),
        (
            lambda p: (p / "empty.txt").write_text("  \n\n ") and p / "empty.txt",
            EmptyDocumentError,
            "empty.txt",
        ),
        (lambda p: (p / "empty.md").write_text("") or p / "empty.md", EmptyDocumentError, "empty.md"),
        (
            lambda p: (p / "slides.pptx").write_bytes(b"PK") and p / "slides.pptx",
            UnsupportedFileTypeError,
            "slides.pptx",
        ),
        (lambda p: p / "missing.pdf", DocumentError, "no such file"),
    ],
    ids=["corrupt-pdf", "encrypted-pdf", "image-only-pdf", "empty-txt", "empty-md", "unsupported", "missing"],
)
def test_bad_documents_raise_clear_errors(engine, tmp_path, make, error, message):
    path = make(tmp_path)
    with pytest.raises(error, match=message) as info:
        engine.open_document(str(path))
    assert isinstance(info.value, ValueError)
    assert len(str(info.value)) > len(message) + 10  # says more than the file name: what to do


def test_engine_keeps_working_after_bad_input(engine, tmp_path):
    with pytest.raises(DocumentError):
        engine.open_document(str(tmp_path / "nope.txt"))
    path = write_text_pdf(tmp_path / "ok.pdf", [["The code word is maple."], ["Page two."]])
    session = engine.open_document(str(path))
    assert session.document.num_pages == 2
    _, report = engine.build_prompt(session, "What is the code word?")
    assert report.pages_used == [1, 2] and report.fits_whole
    with pytest.raises(ValueError, match="type a question"):
        engine.ask(session, "")
    assert isinstance(engine.answer(session, "What is the code word?"), str)


def test_unknown_model_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown model"):
        QAEngine(str(tmp_path / "no-such-model"))


def test_cli_reports_bad_input_without_traceback(tmp_path, tiny_model_dir, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = qa.main(["--doc", str(empty), "--question", "What?", "--model", str(tiny_model_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and "empty.txt" in err and "Traceback" not in err
    code = qa.main(["--doc", str(empty), "--question", "What?", "--model", str(tmp_path / "missing")])
    assert code == 2 and "unknown model" in capsys.readouterr().err
    doc = tmp_path / "note.txt"
    doc.write_text("The meeting is on Tuesday.")
    with pytest.raises(SystemExit) as info:  # checked before any model is loaded
        qa.main(["--doc", str(doc), "--question", "  ", "--model", str(tiny_model_dir)])
    assert info.value.code == 2 and "type a question" in capsys.readouterr().err
    code = qa.main(["--doc", str(doc), "--question", "When?", "--model", str(tiny_model_dir)])
    assert code == 2 and "lower max_new_tokens" in capsys.readouterr().err  # 256 new tokens > tiny window


def test_cli_streams_answers_for_several_questions(tmp_path, tiny_model_dir, capsys):
    doc = tmp_path / "note.md"
    doc.write_text("# Note\n\nThe meeting is on Tuesday in room 4.")
    code = qa.main(
        [
            "--doc",
            str(doc),
            "--question",
            "When?",
            "--question",
            "Where?",
            "--model",
            str(tiny_model_dir),
            "--max-new-tokens",
            "5",
            "--dtype",
            "float32",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "Q: When?" in captured.out and "Q: Where?" in captured.out
    reports = [line for line in captured.err.splitlines() if "from cache" in line]
    assert len(reports) == 2
    assert " 0 from cache" in reports[0] and " 0 from cache" not in reports[1]  # follow-up reused the prefix


def test_cli_json_prints_one_object_per_question(tmp_path, tiny_model_dir, capsys):
    import json

    doc = tmp_path / "note.txt"
    doc.write_text("The meeting is on Tuesday in room 4.")
    argv = ["--doc", str(doc), "--question", "When?", "--question", "Where?", "--model", str(tiny_model_dir)]
    code = qa.main([*argv, "--max-new-tokens", "5", "--dtype", "float32", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["question"] for r in records] == ["When?", "Where?"]
    for record in records:
        assert set(record) == {"question", "answer", "sources", "fit"}
        assert record["sources"] == [
            {
                "text": "The meeting is on Tuesday in room 4.",
                "pages": [],
                "score": None,
                "document": "note.txt",
            }
        ]
        assert record["fit"]["fits_whole"] and record["fit"]["strategy"] == "retrieve"
    assert records[1]["fit"]["reused_tokens"] > 0  # the follow-up still reuses the cache
