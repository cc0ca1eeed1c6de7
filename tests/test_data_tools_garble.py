"""PDFium text engine: garbled-page detection, PDFium's quirks, OCR, and the real corpus vs pdftotext."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import corpus_names, corpus_path, needs_corpus  # noqa: E402

from data_tools import NoTextLayerError, load_document
from data_tools.extract import main as extract_main
from data_tools.garble import GARBLED_JUNK, detect_shift, is_junk_word, page_quality
from data_tools.minipdf import write_image_pdf, write_text_pdf
from data_tools.pdf import fix_pdfium_quirks, read_pdf_pages

PROSE = [
    "The Debian GNU/Linux FAQ answers the questions users ask most often about the system.",
    "It is a collection of answers that were written by many people over the years, and",
    "it is kept in the package of the same name. If you have a question that is not here,",
    "ask it on the mailing list of the project, and it may be added to a later version.",
]
GOOD = ["This page is set in a font with a correct map, and it is kept."]


def test_shifted_glyph_font_page_is_reported_and_left_out(tmp_path):
    path = write_text_pdf(tmp_path / "shifted.pdf", [PROSE, GOOD], unicode_offset=-29, offset_pages=[1])
    raw = read_pdf_pages(path)
    assert raw.texts[0].startswith("7KH 'HELDQ")  # the "7KH" failure is reproduced...
    assert raw.quality[0].shift == 29 and raw.quality[0].garbled and not raw.quality[1].garbled
    doc = load_document(path)  # ...reported, and not fed on
    assert doc.garbled_pages == [1] and "7KH" not in doc.text
    assert doc.text == GOOD[0] and doc.pages[0].start == doc.pages[0].end
    assert "1 of 2 page(s) are not readable text" in doc.warning and "pages 1;" in doc.warning


def test_private_use_page_is_garbled(tmp_path):
    path = write_text_pdf(tmp_path / "pua.pdf", [PROSE, GOOD], unicode_offset=0xE000, offset_pages=[1])
    doc = load_document(path)
    assert doc.garbled_pages == [1] and doc.page_quality[0].junk == 1.0


def test_all_pages_garbled_is_a_clear_error(tmp_path):
    path = write_text_pdf(tmp_path / "allbad.pdf", [PROSE, PROSE], unicode_offset=-29)
    with pytest.raises(
        NoTextLayerError, match=r"allbad\.pdf: the text of all 2 page\(s\) is not language.*--ocr"
    ):
        load_document(path)


def test_junk_words_and_scores():
    assert is_junk_word("(cid:12)") and is_junk_word("ab\ue000c") and is_junk_word("x\x13y")
    assert is_junk_word("吀is") and is_junk_word("ហdsិ.ÄÅ") and is_junk_word("†៉")
    for fine in ("This", "naïve", "wℓ", "αβ-stable", "µm", "ប៉ុន្តែ", "東京", "—"):
        assert not is_junk_word(fine), fine
    cid_page = " ".join([f"(cid:{i})" for i in range(40)] + ["the", "end"])
    assert page_quality(cid_page).junk > GARBLED_JUNK
    assert page_quality(" ".join(PROSE)).junk == 0.0 and detect_shift(" ".join(PROSE)) == 0
    shifted = "".join(chr(ord(c) - 29) if c != " " else c for c in " ".join(PROSE))
    assert detect_shift(shifted) == 29


def test_index_pages_are_not_shifted_text():
    # an index or table of contents has few stopwords either way; digits shift to letters
    index = "\n".join(f"apt-{w}, {i}, {i + 3}" for i, w in enumerate(["doc", "file", "move", "get"] * 10))
    toc = "\n".join(
        f"{i}.{j} Section title . . . . . . {i * 7 + j}" for i in range(1, 9) for j in range(1, 5)
    )
    assert detect_shift(index) == 0 and detect_shift(toc) == 0


def test_pdfium_quirks_are_cleaned():
    assert fix_pdfium_quirks("soft\x02\r\nware is\r\nhere") == "soft-\nware is\nhere"
    # the line break after the hyphen mark is sometimes lost, and get_text_range writes U+FFFE
    assert fix_pdfium_quirks("com\x02mand and com\ufffemands") == "com-\nmand and com-\nmands"
    # a subscript ends PDFium's line: the punctuation after it goes back where it was
    assert fix_pdfium_quirks("error term ui\r\n. In the usual, yi\r\n, k-dim\r\n.libPaths()") == (
        "error term ui. In the usual, yi, k-dim\n.libPaths()"
    )


def test_image_only_pdf_error_and_optional_ocr(tmp_path, monkeypatch):
    path = write_image_pdf(tmp_path / "scan.pdf", pages=1)
    with pytest.raises(NoTextLayerError, match=r"scan\.pdf: .*no text layer.*--ocr"):
        load_document(path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no tesseract on PATH: OCR says how to get it
    from data_tools.errors import DependencyError

    with pytest.raises(DependencyError, match="tesseract-ocr"):
        load_document(path, ocr=True)


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")
def test_ocr_reads_an_image_only_page(tmp_path):
    import pypdfium2 as pdfium

    # render a text PDF to an image and wrap it in an image-only PDF
    text_pdf = write_text_pdf(tmp_path / "text.pdf", [["Tesseract reads this sentence."]])
    image = pdfium.PdfDocument(text_pdf)[0].render(scale=300 / 72).to_pil()
    image.save(tmp_path / "scan.pdf", resolution=300)
    doc = load_document(tmp_path / "scan.pdf", ocr=True)
    assert "reads this sentence" in doc.text and doc.ocr_pages == [1] and "OCR" in doc.warning


def test_extract_report_names_garbled_pages(tmp_path, capsys):
    pages = [PROSE, GOOD, ["A third page with other words on it."]]
    path = write_text_pdf(tmp_path / "shifted.pdf", pages, unicode_offset=-29, offset_pages=[1])
    assert extract_main([path, "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "shifted.pdf" in err and "not readable text" in err and "pages 1" in err
    page_map = (tmp_path / "out" / "shifted.pages.json").read_text()
    assert json.loads(page_map)["garbled_pages"] == [1]


@needs_corpus()
@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) is not installed")
@pytest.mark.parametrize("name", corpus_names("*.pdf"))
def test_corpus_words_within_2_percent_of_pdftotext(name):
    from data_tools.clean import clean_pages

    path = corpus_path(name)
    raw = read_pdf_pages(path)
    ref = subprocess.run(["pdftotext", "-enc", "UTF-8", str(path), "-"], capture_output=True, text=True)
    ref_pages = ref.stdout.split("\f")
    kept = [i for i, q in enumerate(raw.quality) if not q.garbled]
    ours = sum(len(p.split()) for p in clean_pages([raw.texts[i] for i in kept], running_lines=False))
    theirs = sum(len(ref_pages[i].split()) for i in kept)
    assert abs(ours - theirs) <= 0.02 * theirs, (ours, theirs)
    # only the legacy-font Khmer examples page is not language
    assert [i + 1 for i, q in enumerate(raw.quality) if q.garbled] == (
        [9] if name.startswith("khmer") else []
    )


def test_run_together_words_of_a_man_page_are_spaced():
    # groff -> Ghostscript: PDFium's spacing rule misses ~0.3 em word gaps ("theyare", "anyremaining")
    raw = read_pdf_pages(corpus_path("bash-manpage.pdf"))
    assert len(raw.respaced_pages) > 40
    text = " ".join(raw.texts)
    assert "theyare" not in text and "they are" in text and "any remaining" in text


def test_respacing_follows_rotated_text():
    # the Excel chart's page 4 is a landscape table on a rotated page: its lines run bottom to top
    import pypdfium2 as pdfium

    from data_tools.pdf import respaced_text

    page = pdfium.PdfDocument(corpus_path("ezra-unicode-chart.pdf"))[3]
    assert page.get_rotation() == 90
    textpage = page.get_textpage()
    plain, respaced = textpage.get_text_range(), respaced_text(textpage)
    assert abs(len(respaced.split()) - len(plain.split())) <= 0.05 * len(plain.split())
    assert "SIL Ezra to Unicode Chart 4/2/2007 Page 4 of 6" in respaced  # not one letter per line
