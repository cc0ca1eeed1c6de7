"""Plotters are chosen per result kind: a kind without a plotter is a clear error, never another plot."""

from __future__ import annotations

import json

import pytest

from longlora.eval import plot
from longlora.eval.plot import PLOTTERS, main, plot_results


def test_each_kind_has_its_own_plotter():
    assert PLOTTERS == {"perplexity": plot.plot_perplexity, "passkey": plot.plot_passkey}


def test_unknown_kind_is_refused_by_name(tmp_path, capsys):
    ruler = {"kind": "ruler", "config": {"label": "x"}, "results": []}
    with pytest.raises(ValueError, match="no plot for results of kind 'ruler'.*perplexity, passkey"):
        plot_results([ruler], tmp_path / "r.png")
    path = tmp_path / "ruler.json"
    path.write_text(json.dumps(ruler))
    assert main([str(path), "-o", str(tmp_path / "r.png")]) == 2
    assert "kind 'ruler'" in capsys.readouterr().err
    assert not (tmp_path / "r.png").exists()


def test_mixed_kinds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot mix passkey and perplexity"):
        plot_results([{"kind": "perplexity"}, {"kind": "passkey"}], tmp_path / "x.png")
