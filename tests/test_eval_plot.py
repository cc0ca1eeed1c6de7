"""Plotters are chosen per result kind: a kind without a plotter is a clear error, never another plot."""

from __future__ import annotations

import json

import pytest

from longlora.eval import plot
from longlora.eval.plot import PLOTTERS, main, plot_results


def test_each_kind_has_its_own_plotter():
    assert PLOTTERS == {
        "perplexity": plot.plot_perplexity,
        "passkey": plot.plot_passkey,
        "ruler": plot.plot_ruler,
    }


def test_ruler_results_plot_with_the_ruler_plotter(tmp_path):
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "results" / "ruler-smollm2.json"
    assert main([str(shipped), "-o", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_kind_is_refused_by_name(tmp_path, capsys):
    bogus = {"kind": "bogus", "config": {"label": "x"}, "results": []}
    with pytest.raises(ValueError, match="no plot for results of kind 'bogus'.*perplexity, passkey, ruler"):
        plot_results([bogus], tmp_path / "r.png")
    path = tmp_path / "bogus.json"
    path.write_text(json.dumps(bogus))
    assert main([str(path), "-o", str(tmp_path / "r.png")]) == 2
    assert "kind 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "r.png").exists()


def test_mixed_kinds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot mix passkey and perplexity"):
        plot_results([{"kind": "perplexity"}, {"kind": "passkey"}], tmp_path / "x.png")
