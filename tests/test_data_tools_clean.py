"""Each cleaning step on crafted input (data_tools.clean)."""

from __future__ import annotations

import random

import pytest

from data_tools.clean import (
    GLUED_THRESHOLD,
    LIGATURES,
    clean_pages,
    cut_references,
    glued_word_ratio,
    is_page_number_line,
    join_hyphenated,
    join_pages,
    normalize_characters,
    reflow,
    remove_running_lines,
)

# --------------------------------------------------------------------------------------------- characters


def test_ligatures_become_letters():
    text = "e\ufb00ect \ufb01nd \ufb02ow o\ufb03ce ba\ufb04e \ufb05 \ufb06"
    out = normalize_characters(text)
    assert out == "effect find flow office baffle st st"
    assert not any(0xFB00 <= ord(c) <= 0xFB06 for c in out)


def test_every_ligature_is_mapped_to_ascii():
    for lig, plain in LIGATURES.items():
        assert normalize_characters(lig) == plain and plain.isascii()


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("a\u00a0b", "a b"),  # no-break space
        ("a\u2009b\u202fc", "a b c"),  # thin and narrow spaces
        ("co\u00adoperate", "cooperate"),  # soft hyphen
        ("zero\u200bwidth\ufeff", "zerowidth"),  # zero-width space, BOM
        ("x\x02y\x07z", "xyz"),  # control characters from math fonts
        ("a\ue000b", "ab"),  # private use
        ("\uff21\uff22\uff23", "ABC"),  # full-width forms
        ("wait\u2026", "wait..."),  # ellipsis
        ("\U0001d400\U0001d401", "AB"),  # math bold letters
        ("line1\r\nline2\rline3", "line1\nline2\nline3"),
        ("tab\there", "tab here"),
    ],
)
def test_compatibility_and_control_characters(raw, clean):
    assert normalize_characters(raw) == clean


def test_meaningful_characters_are_kept():
    # superscripts, fractions, accents, quotes, dashes and math symbols change meaning if flattened
    text = "x² ½ café Universität “quoted” – — ≤ β´ σ ∑"
    assert normalize_characters(text) == text


# --------------------------------------------------------------------------------------------- hyphenation


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("the soft-\nware is", "the software\nis"),
        ("the RQuantLib pack-\nage (?) and", "the RQuantLib package\n(?) and"),
        ("a soft-\nware\nnext line", "a software\nnext line"),
        ("x soft-\nware, and more", "x software,\nand more"),
        ("soft-\nware", "software"),
        ("the C-\nLevel API", "the C-\nLevel API"),  # capital after the break: a real hyphen
        ("ISO 8859-\n1 text", "ISO 8859-\n1 text"),  # digits are left alone
        ("end of sentence -\nnext", "end of sentence -\nnext"),  # a dash, not a hyphenation
    ],
)
def test_join_hyphenated(raw, clean):
    assert join_hyphenated(raw) == clean


def test_hyphen_kept_when_the_document_spells_the_word_with_it():
    text = "an object-\noriented design. Later the object-oriented view and object-oriented code."
    assert join_hyphenated(text).startswith("an object-oriented\ndesign.")
    text2 = "a well-\nknown fact; nothing is wellknown here, wellknown again"
    assert join_hyphenated(text2).startswith("a wellknown\nfact")


def test_hyphen_kept_when_both_halves_are_words_and_neither_form_is_seen():
    text = "three real-\nworld data sets. The real question of the world."
    assert join_hyphenated(text).startswith("three real-world\ndata sets.")
    # ... but a joined spelling seen anywhere wins ("some-thing" -> "something")
    assert join_hyphenated("some-\nthing here; something else, some thing").startswith("something\nhere")


def test_hyphenation_uses_the_whole_document_vocabulary():
    from data_tools.clean import word_counts

    pages = ["Several real-world data sets.", "three real-\nworld examples"]
    assert join_hyphenated(pages[1], word_counts("\n".join(pages))) == "three real-world\nexamples"
    assert clean_pages(pages)[1].split() == ["three", "real-world", "examples"]


# --------------------------------------------------------------------------------------------- running lines


@pytest.mark.parametrize("line", ["12", " 3 ", "- 7 -", "Page 4", "page 4 of 19", "xiv", "— 12 —", "3/19"])
def test_page_number_lines(line):
    assert is_page_number_line(line)


@pytest.mark.parametrize("line", ["", "1. Introduction", "12 monkeys", "Page layout matters", "x = 3"])
def test_not_page_number_lines(line):
    assert not is_page_number_line(line)


WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def _paper_pages(n: int) -> list[str]:
    rng = random.Random(n)
    pages = []
    for k in range(1, n + 1):
        header = f"{k} Seamless Integration of Things" if k % 2 == 0 else f"Jane Doe, John Roe {k}"
        body = ["Body " + " ".join(rng.choice(WORDS) for _ in range(10)) + "." for i in range(8)]
        pages.append("\n".join([header, *body, str(k)]))
    return pages


def test_running_headers_and_page_numbers_removed():
    pages = _paper_pages(8)
    bodies = [p.split("\n")[1:-1] for p in pages]
    pages[3] += "\nFootnote about Seamless Integration of Things on this page only"
    out = remove_running_lines(pages)
    joined = "\n".join(out)
    assert "Seamless Integration of Things\n" not in joined and "Jane Doe" not in joined
    for page, body in zip(out, bodies):
        assert page.split("\n")[:8] == body  # header and page number gone, body untouched
    assert "Footnote about Seamless Integration of Things on this page only" in out[3]


def test_header_text_inside_the_body_is_kept():
    pages = _paper_pages(6)
    lines = pages[2].split("\n")
    pages[2] = "\n".join(lines[:5] + ["Jane Doe, John Roe 3"] + lines[5:])  # mid-page
    out = remove_running_lines(pages)
    assert "Jane Doe, John Roe 3" in out[2]


def test_short_documents_keep_repeated_lines_but_lose_page_numbers():
    pages = ["Title line\nfirst page text\n1", "Title line\nsecond page text\n2"]
    assert remove_running_lines(pages) == ["Title line\nfirst page text", "Title line\nsecond page text"]


def test_repeated_code_lines_without_letters_are_not_headers():
    pages = [f"{w} text of the page goes here\n}}\n> z" for w in WORDS[:6]]
    assert remove_running_lines(pages) == pages


# --------------------------------------------------------------------------------------------- references


def _with_references(appendix: bool) -> list[str]:
    body = ["1. Introduction\n" + "Intro words. " * 40, "2. Method\n" + "Method words. " * 40]
    refs = "Conclusion words.\nReferences\nAbrahams D (2003). Boost.Python.\nChambers J (2008). Software for Data."
    tail = (
        "A. R code\nThe packages are required.\nAffiliation:\nJane Doe"
        if appendix
        else "Smith A (2001). More."
    )
    return [*body, refs, tail]


def test_cut_references_keeps_appendix_and_page_count():
    out = cut_references(_with_references(appendix=True))
    assert len(out) == 4
    joined = "\n".join(out)
    assert "Abrahams" not in joined and "Chambers" not in joined and "References" not in joined
    assert "Conclusion words." in joined and "A. R code\nThe packages are required." in joined


def test_cut_references_to_the_end():
    out = cut_references(_with_references(appendix=False))
    assert out[3] == "" and "Smith" not in "\n".join(out) and "Conclusion words." in out[2]


def test_references_heading_early_in_the_document_is_not_cut():
    pages = ["Contents\nReferences\n1. Introduction", "Body text. " * 200]
    assert cut_references(pages) == pages


def test_no_references_no_change():
    pages = ["one\ntwo", "three"]
    assert cut_references(pages) == pages


# --------------------------------------------------------------------------------------------- reflow

WRAPPED = """The Rcpp package provides a consistent API for seamlessly accessing,
extending or modifying R objects at the C++ level. The API is a rewritten
and extended version of an earlier API.
It is still provided in the RcppClassic package to ensure compatibility,
but its use is otherwise deprecated.
R> fm <- lm(y ~ x, data = d)
R> coeftest(fm, vcov = sandwich)
The next paragraph is short.
• first item of a list that is long enough to be a full line of text here
• second item"""


def test_reflow_joins_wrapped_lines_and_keeps_structure():
    out = reflow(WRAPPED)
    assert out.startswith(
        "The Rcpp package provides a consistent API for seamlessly accessing, extending or modifying "
        "R objects at the C++ level. The API is a rewritten and extended version of an earlier API.\n"
    )
    assert "R> fm <- lm(y ~ x, data = d)\nR> coeftest(fm, vcov = sandwich)\n" in out
    assert "\n• first item of a list that is long enough to be a full line of text here\n• second item" in out
    assert "deprecated.\n\nR> fm" in out or "deprecated.\nR> fm" in out
    # nothing is lost: the same words in the same order
    assert out.split() == WRAPPED.split()


def test_reflow_blank_lines_and_spaces():
    assert reflow("a  b\n\n\n\nc") == "a b\n\nc"


# --------------------------------------------------------------------------------------------- glued words


def test_glued_word_ratio_separates_glued_from_normal_text():
    normal = "Here are a few basic methods that we use to build the interface between the systems."
    glued = "Hereareafewbasicmethodsthatweuse tobuildtheinterfacebetweenthesystems."
    technical = (
        "Heteroskedasticity and autocorrelation consistent covariance matrix estimators are used. " * 5
    )
    assert glued_word_ratio(normal) == 0.0
    assert glued_word_ratio(glued) > 0.9
    assert glued_word_ratio(technical) < GLUED_THRESHOLD
    assert glued_word_ratio("123 456 ...") == 0.0


# --------------------------------------------------------------------------------------------- pages


def test_join_pages_spans_are_exact():
    pages = ["First page ends here.", "", "Third page runs on to", "the next page and ends.", "   "]
    text, spans = join_pages(pages)
    assert len(spans) == 5
    assert [text[s:e] for s, e in spans] == [
        "First page ends here.",
        "",
        "Third page runs on to",
        "the next page and ends.",
        "",
    ]
    assert text == "First page ends here.\n\nThird page runs on to the next page and ends."
    starts = [s for s, _ in spans]
    assert starts == sorted(starts)


def test_join_pages_joins_a_word_hyphenated_across_pages():
    text, spans = join_pages(["we use the RQuantLib pack-", "age (?) as an example."])
    assert text == "we use the RQuantLib package (?) as an example."
    assert text[slice(*spans[0])] == "we use the RQuantLib package"
    assert text[slice(*spans[1])] == "(?) as an example."


def test_clean_pages_then_join_pages_partitions_the_text():
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    pages = []
    for k in range(7):
        lines = [f"Running Header Of The Paper {k + 1}"]
        lines += [
            " ".join(rng.choice(words) for _ in range(12)) + f" page{k}" for _ in range(rng.randint(0, 6))
        ]
        lines.append(str(k + 1))
        pages.append("\n".join(lines))
    cleaned = clean_pages(pages)
    text, spans = join_pages(cleaned)
    for k, (s, e) in enumerate(spans):
        assert text[s:e] == cleaned[k].strip()
        assert text[s:e].count(f"page{k}") == pages[k].count(f"page{k}")
        assert "Running Header" not in text[s:e]
    # everything outside the spans is separator whitespace
    covered = set()
    for s, e in spans:
        covered.update(range(s, e))
    assert all(text[i].isspace() for i in range(len(text)) if i not in covered)
