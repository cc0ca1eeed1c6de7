"""The figures checker (benchmarks/figures.py): what counts as a figure, what covers it; and the README and
docs themselves: every measured figure cites a committed result file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("figures", ROOT / "benchmarks" / "figures.py")
figures = importlib.util.module_from_spec(spec)
sys.modules["figures"] = figures  # dataclasses look their module up there
spec.loader.exec_module(figures)


def _check(tmp_path, text):
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    return figures.check([doc])


def test_a_measured_figure_without_a_result_file_is_reported(tmp_path):
    covered, uncovered = _check(tmp_path, "# Speed\n\nS2 trains 1.76x faster than full attention.\n")
    assert not covered and [b.figures for b in uncovered] == [["1.76x"]]


def test_a_result_file_in_the_block_or_its_caption_covers_it(tmp_path):
    existing = next((ROOT / "results").glob("*.json")).relative_to(ROOT).as_posix()
    text = (
        f"S2 trains 1.76x faster ({existing}).\n\n"
        "| T | ppl |\n| --- | --- |\n| 4k | 23.03 |\n\n"
        f"Source: [{existing}](../{existing}).\n"
    )
    covered, uncovered = _check(tmp_path, text)
    assert not uncovered and len(covered) == 2
    assert covered[1].figures == ["23.03"] and covered[1].results == [existing]


def test_a_missing_result_file_does_not_cover(tmp_path):
    _, uncovered = _check(tmp_path, "Recall is 95% (results/no-such-file.json).\n")
    assert [b.figures for b in uncovered] == [["95%"]]


def test_code_versions_factors_fractions_and_targets_are_not_figures(tmp_path):
    text = (
        "Run `--max-steps 32 --lr 3e-4` with torch 2.13.0.\n\n"
        "```\npython x.py  # 12.5 s\n```\n\n"
        "Extending 4x with groups of 1/4 of the context, target >= 1.8x and ≤ 5%.\n\n"
        "Each average has a 95% interval (a 95% Wilson score interval).\n"
    )
    covered, uncovered = _check(tmp_path, text)
    assert not covered and not uncovered


def test_fractions_times_and_memory_are_figures(tmp_path):
    _, uncovered = _check(tmp_path, "18/40 answered, first token after 83.5 s, peak 8157 MiB.\n")
    assert uncovered[0].figures == ["18/40", "83.5 s", "8157 MiB"]


def test_every_figure_in_the_readme_and_docs_cites_a_result_file():
    covered, uncovered = figures.check(figures.documents())
    assert not uncovered, "\n".join(f"{b.path.name}:{b.line} {b.figures[:6]}" for b in uncovered)


def test_the_provenance_index_is_current():
    """results/PROVENANCE.md lists every result file with where its provenance is (or that it has none)."""
    spec = importlib.util.spec_from_file_location(
        "provenance_index", ROOT / "benchmarks" / "provenance_index.py"
    )
    index = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(index)
    assert index.main(["--check"]) == 0, "run python benchmarks/provenance_index.py"
    text = (ROOT / "results" / "PROVENANCE.md").read_text()
    for path in (ROOT / "results").rglob("*.json"):
        assert f"`{path.relative_to(ROOT / 'results').as_posix()}`" in text
