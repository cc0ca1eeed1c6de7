"""Documents: fixture PDFs, PDFs generated here (encrypted, scanned, blank, corrupt, glued), text
files, and the extract command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pypdf
import pytest
from conftest import PRIDE_AND_PREJUDICE, fixture_path  # noqa: E402

from data_tools import (
    CorruptFileError,
    Document,
    DocumentError,
    EmptyDocumentError,
    EncryptedPDFError,
    NoTextLayerError,
    UnsupportedFileTypeError,
    load_document,
    load_text,
)
from data_tools.clean import LIGATURES, normalize_characters
from data_tools.extract import main as extract_main
from data_tools.minipdf import write_image_pdf, write_text_pdf

PDFS = ["rcpp-jss-2011.pdf", "sandwich-hac-jss.pdf", "zoo-faq.pdf"]

_CACHE: dict[tuple[str, bool], Document] = {}


def fixture_doc(name: str, drop_references: bool = False) -> Document:
    """A fixture PDF, loaded once per setting; skips the test when the fixture is absent."""
    key = (name, drop_references)
    if key not in _CACHE:
        _CACHE[key] = load_document(fixture_path(name), drop_references=drop_references)
    return _CACHE[key]


def squash(text: str) -> str:
    return " ".join(normalize_characters(text).split())


# --------------------------------------------------------------------------------------------- fixture PDFs


@pytest.mark.parametrize("name", PDFS)
def test_fixture_pdf_is_clean(name):
    doc = fixture_doc(name)
    assert doc.kind == "pdf" and doc.name == name
    assert not any(lig in doc.text for lig in LIGATURES)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", doc.text)
    # no glued-word runs: the longest letter run is a real word ("heteroskedasticity", 18)
    assert max(len(r) for r in re.findall(r"[^\W\d_]+", doc.text)) <= 20
    # words hyphenated at line ends are joined
    assert not re.search(r"[a-z]-\n[a-z]", doc.text)


@pytest.mark.parametrize("name", PDFS)
def test_fixture_page_map_is_consistent(name):
    doc = fixture_doc(name)
    raw_pages = [p.extract_text() for p in pypdf.PdfReader(fixture_path(name)).pages]
    assert doc.num_pages == len(raw_pages) == len(doc.pages)
    assert [p.number for p in doc.pages] == list(range(1, len(raw_pages) + 1))
    previous_end = 0
    for span in doc.pages:
        assert previous_end <= span.start <= span.end <= len(doc.text)
        assert doc.text[previous_end : span.start].strip() == ""  # only separators between pages
        previous_end = span.end
    # a long line from the middle of each raw page is found inside that page's span
    for span, raw in zip(doc.pages, raw_pages):
        lines = [line for line in raw.split("\n") if len(line) > 60 and not line.rstrip().endswith("-")]
        if not lines:
            continue
        probe = squash(lines[len(lines) // 2])[5:45]
        assert probe in squash(doc.text[span.start : span.end]), (span.number, probe)
        start = doc.text.find(probe)
        if start >= 0 and doc.text.count(probe) == 1:
            assert span.number in doc.pages_for_span(start, start + len(probe))


def test_running_headers_removed_from_fixture():
    doc = fixture_doc("rcpp-jss-2011.pdf")
    # the running header (title on even pages, authors on odd pages) stays only where it is content
    header_lines = re.findall(r"^(?:\d+ )?Rcpp: Seamless R and C\+\+ Integration$", doc.text, re.MULTILINE)
    assert header_lines == ["Rcpp: Seamless R and C++ Integration"]  # the title only
    assert "Dirk Eddelbuettel, Romain François" not in doc.text
    assert not re.search(r"^\d{1,2}$", doc.text, re.MULTILINE)  # no bare page numbers


def test_drop_references_on_fixtures():
    full, cut = fixture_doc("sandwich-hac-jss.pdf"), fixture_doc("sandwich-hac-jss.pdf", drop_references=True)
    assert "Andrews DWK (1991)" in full.text and "Andrews DWK (1991)" not in cut.text
    assert "A. R code" in cut.text  # the appendix after the references is kept
    assert cut.num_pages == full.num_pages and cut.word_count < full.word_count
    rcpp = fixture_doc("rcpp-jss-2011.pdf", drop_references=True)
    assert "Abrahams D, Grosse-Kunstleve RW" not in rcpp.text and "1. Introduction" in rcpp.text


# --------------------------------------------------------------------------------------------- generated PDFs

PAGES = [
    ["Journal of Examples 1", "A Small Test Paper", "Here are a few basic methods that we use to build it."],
    ["Journal of Examples 2", "The second page says something else entirely.", "2"],
    ["Journal of Examples 3", "Third page.", "3"],
]


@pytest.fixture
def text_pdf(tmp_path):
    return write_text_pdf(tmp_path / "small.pdf", PAGES)


def test_generated_pdf_pages(text_pdf):
    doc = load_document(text_pdf)
    assert doc.num_pages == 3
    assert doc.text == (
        "A Small Test Paper\nHere are a few basic methods that we use to build it.\n\n"
        "The second page says something else entirely.\n\nThird page."
    )
    assert [doc.text[p.start : p.end] for p in doc.pages] == [
        "A Small Test Paper\nHere are a few basic methods that we use to build it.",
        "The second page says something else entirely.",
        "Third page.",
    ]
    i = doc.text.index("something else")
    assert doc.pages_for_span(i, i + 5) == [2]
    assert doc.pages_for_span(0, len(doc.text)) == [1, 2, 3]


def test_tex_style_word_gaps_read_as_spaces(tmp_path):
    # words drawn as one TJ array with offsets and no space glyph: pypdf glued them, PDFium does not
    path = write_text_pdf(tmp_path / "glued.pdf", PAGES, glued=True)
    assert "Hereareafewbasicmethods" in pypdf.PdfReader(path).pages[0].extract_text()  # old failure
    doc = load_document(path)
    assert "Here are a few basic methods that we use to build it." in doc.text
    assert doc.text == load_document(write_text_pdf(tmp_path / "plain.pdf", PAGES)).text


def test_pdf_pages_are_read_one_at_a_time(tmp_path, monkeypatch):
    """PDFium keeps about 0.3 MB per loaded page, so holding every page until the end took 650 MB
    for a 2,000-page PDF (benchmarks/large_pdf.py). When the pages are scored, after all of them were
    read, none may still be loaded; the text stays the same."""
    import gc

    import pypdfium2 as pdfium

    import data_tools.pdf as pdf_module

    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
    pages = [[" ".join(words[i:] + words[:i]).capitalize() + "."] for i in range(8)]
    path = write_text_pdf(tmp_path / "eight.pdf", pages)
    loaded = []

    def scored_with_pages_counted(text):
        loaded.append(sum(1 for o in gc.get_objects() if isinstance(o, pdfium.PdfPage) and o.raw))
        return page_quality(text)

    page_quality = pdf_module.page_quality
    monkeypatch.setattr(pdf_module, "page_quality", scored_with_pages_counted)
    doc = load_document(path)
    assert len(loaded) == 8 and max(loaded) == 0, f"pages still loaded while scoring: {loaded}"
    assert doc.num_pages == 8 and [doc.text[p.start : p.end] for p in doc.pages] == [p[0] for p in pages]


def test_encrypted_pdf_needs_its_password(tmp_path, text_pdf):
    writer = pypdf.PdfWriter(clone_from=text_pdf)
    writer.encrypt("secret", algorithm="RC4-128")
    writer.write(tmp_path / "locked.pdf")
    with pytest.raises(EncryptedPDFError, match=r"locked\.pdf: the PDF is encrypted.*password"):
        load_document(tmp_path / "locked.pdf")
    with pytest.raises(EncryptedPDFError, match="check the password"):
        load_document(tmp_path / "locked.pdf", password="wrong")
    assert load_document(tmp_path / "locked.pdf", password="secret").text == load_document(text_pdf).text


def test_encrypted_pdf_with_empty_user_password_opens(tmp_path, text_pdf):
    pytest.importorskip("cryptography", reason="AES-encrypted PDFs need the cryptography package")
    writer = pypdf.PdfWriter(clone_from=text_pdf)
    writer.encrypt(user_password="", owner_password="owner", algorithm="AES-256")
    writer.write(tmp_path / "restricted.pdf")
    assert load_document(tmp_path / "restricted.pdf").text == load_document(text_pdf).text


def test_scanned_pdf_says_ocr_is_needed(tmp_path):
    path = write_image_pdf(tmp_path / "scan.pdf", pages=2)
    with pytest.raises(
        NoTextLayerError, match=r"scan\.pdf: .*2 page\(s\) of images but no text layer.*--ocr"
    ):
        load_document(path)


def test_blank_pdf_is_empty(tmp_path):
    writer = pypdf.PdfWriter()
    writer.add_blank_page(612, 792)
    writer.write(tmp_path / "blank.pdf")
    with pytest.raises(EmptyDocumentError, match=r"blank\.pdf: .*hold no text"):
        load_document(tmp_path / "blank.pdf")


def test_corrupt_and_fake_pdfs(tmp_path, text_pdf):
    data = Path(text_pdf).read_bytes()
    (tmp_path / "truncated.pdf").write_bytes(data[: len(data) // 3])
    (tmp_path / "fake.pdf").write_bytes(b"<html>not a pdf</html>")
    with pytest.raises(CorruptFileError, match=r"truncated\.pdf: .*damaged"):
        load_document(tmp_path / "truncated.pdf")
    with pytest.raises(CorruptFileError, match=r"fake\.pdf: not a PDF"):
        load_document(tmp_path / "fake.pdf")


def test_unsupported_and_missing_files(tmp_path):
    (tmp_path / "notes.docx").write_bytes(b"PK\x03\x04")
    with pytest.raises(
        UnsupportedFileTypeError, match=r"notes\.docx: unsupported file type '\.docx'.*\.pdf, \.txt, \.md"
    ):
        load_document(tmp_path / "notes.docx")
    with pytest.raises(DocumentError, match="no such file"):
        load_document(tmp_path / "missing.pdf")
    with pytest.raises(DocumentError, match="is a directory"):
        load_document(tmp_path)


def test_document_errors_are_value_errors():
    for cls in (
        EncryptedPDFError,
        NoTextLayerError,
        CorruptFileError,
        UnsupportedFileTypeError,
        EmptyDocumentError,
    ):
        assert issubclass(cls, DocumentError) and issubclass(cls, ValueError)


# --------------------------------------------------------------------------------------------- text files


def test_text_file_is_reflowed(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(
        "CHAPTER I\n\nEmma Woodhouse, handsome, clever, and rich, with a comfortable home\n"
        "and happy disposition, seemed to unite some of the best blessings\nof existence.\n\n"
        "She was the youngest of the two daughters.\n",
        encoding="utf-8",
    )
    doc = load_document(path)
    assert doc.kind == "txt" and doc.pages == [] and doc.num_pages is None
    assert doc.text == (
        "CHAPTER I\n\nEmma Woodhouse, handsome, clever, and rich, with a comfortable home and happy "
        "disposition, seemed to unite some of the best blessings of existence.\n\n"
        "She was the youngest of the two daughters."
    )
    assert doc.word_count == len(doc.text.split())


def test_text_file_encodings_and_empty(tmp_path):
    (tmp_path / "latin.txt").write_bytes("caf\xe9 na\xefve \x93quoted\x94".encode("latin-1"))
    assert load_document(tmp_path / "latin.txt").text == "café naïve “quoted”"
    (tmp_path / "bom.txt").write_bytes("\ufeffHello e\ufb03cient".encode())
    assert load_document(tmp_path / "bom.txt").text == "Hello efficient"
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(EmptyDocumentError, match=r"empty\.txt: the file is empty"):
        load_document(tmp_path / "empty.txt")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02" * 10)
    with pytest.raises(CorruptFileError, match="binary"):
        load_document(tmp_path / "binary.txt")


def test_markdown_keeps_its_lines(tmp_path):
    md = "# Title\n\n- item one\n- item two\n\n```\ncode  block\n```\n"
    (tmp_path / "notes.md").write_text(md)
    doc = load_document(tmp_path / "notes.md")
    assert doc.kind == "md" and doc.text == md.strip()


def test_load_text():
    doc = load_text("Some pasted\ufb01 text.")
    assert (doc.name, doc.kind, doc.path, doc.pages, doc.text) == (
        "pasted text",
        "txt",
        None,
        [],
        "Some pastedfi text.",
    )
    with pytest.raises(EmptyDocumentError, match="paste or load some text"):
        load_text("   ")


def test_austen_novel_loads():
    doc = load_document(PRIDE_AND_PREJUDICE)
    assert doc.word_count > 100_000 and "Elizabeth" in doc.text


# --------------------------------------------------------------------------------------------- extract command


def test_extract_directory_reports_failures_and_goes_on(tmp_path, text_pdf, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Path(text_pdf).rename(src / "sub" / "paper.pdf")
    (src / "book.txt").write_text("A short book.\n")
    (src / "broken.pdf").write_bytes(b"%PDF-1.4\n garbage")
    write_image_pdf(src / "scan.pdf")
    (src / "ignored.csv").write_text("a,b\n")
    out = tmp_path / "out"
    assert extract_main([str(src), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "broken.pdf" in err and "scan.pdf" in err and "OCR" in err
    assert "extracted 2 of 4 file(s)" in err
    assert (out / "book.txt").read_text() == "A short book.\n"
    text = (out / "sub" / "paper.txt").read_text()[:-1]
    page_map = json.loads((out / "sub" / "paper.pages.json").read_text())
    assert page_map["source"] == "paper.pdf" and page_map["num_pages"] == 3
    assert [text[s:e] for s, e in page_map["pages"].values()] == [
        "A Small Test Paper\nHere are a few basic methods that we use to build it.",
        "The second page says something else entirely.",
        "Third page.",
    ]
    assert not (out / "ignored.txt").exists()


def test_extract_single_file_to_named_txt_and_stdout(tmp_path, text_pdf, capsys):
    assert extract_main([text_pdf, "-o", str(tmp_path / "x.txt"), "--quiet"]) == 0
    assert (tmp_path / "x.txt").exists() and (tmp_path / "x.pages.json").exists()
    capsys.readouterr()
    assert extract_main([text_pdf, "-o", "-"]) == 0
    assert capsys.readouterr().out.startswith("A Small Test Paper\n")
    assert extract_main([str(tmp_path / "nope.pdf"), "-o", str(tmp_path)]) == 2


# --------------------------------------------------------------------------------------------- package


def test_data_tools_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, data_tools, data_tools.extract, data_tools.longalpaca, data_tools.tokenize_corpus, "
        "data_tools.tokenfile, data_tools.records, data_tools.tokenizer, data_tools.__main__; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_command_dispatch(capsys):
    from data_tools.__main__ import main

    assert main(["--help"]) == 0 and "build-longalpaca" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "--help"])
    assert exit_info.value.code == 0 and "--drop-references" in capsys.readouterr().out
