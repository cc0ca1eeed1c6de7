"""Side-by-side report: reads every kind of result file, one table, one plot per metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longlora.eval.report import load_result, main, markdown_table, series

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _ppl(label, values):
    return {
        "kind": "perplexity",
        "config": {"label": label, "data": [{"path": "books/emma.txt"}]},
        "results": [{"seq_len": n, "ppl": p} for n, p in values.items()],
    }


def _passkey(label, values):
    return {
        "kind": "passkey",
        "config": {"label": label},
        "by_length": [{"length": n, "accuracy": a} for n, a in values.items()],
    }


def _ruler(label, values, effective, complete=True):
    return {
        "kind": "ruler",
        "config": {"label": label},
        "scores": {"vt": {str(n): a for n, a in values.items()}},
        "average": {str(n): a for n, a in values.items()},
        "by_length": [{"length": n, "average": a} for n, a in values.items()],
        "effective_context": {"length": effective},
        "complete": complete,
    }


@pytest.fixture
def files(tmp_path):
    payloads = {
        "ppl-base.json": _ppl("base", {1024: 33.51, 2048: 31.83}),
        "ppl-pi.json": _ppl("base + PI 16k", {1024: 57.72, 16384: 60.1}),
        "pk-base.json": _passkey("base", {1024: 1.0, 2048: 0.6}),
        "ruler-base.json": _ruler("base", {1024: 0.5, 2048: 0.25}, 1024),
        "ruler-pi.json": _ruler("base + PI 16k", {1024: 0.4, 16384: 0.0}, None, complete=False),
    }
    paths = []
    for name, payload in payloads.items():
        (tmp_path / name).write_text(json.dumps(payload))
        paths.append(tmp_path / name)
    return paths


def test_table_has_a_row_per_run_and_metric_and_a_column_per_length(files):
    payloads = [load_result(p) for p in files]
    table = markdown_table(payloads).splitlines()
    assert table[0] == "| model | metric | 1k | 2k | 16k | summary |"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert len(rows) == 5
    # rows of one model stay together, in the order the model first appears
    assert [r[0] for r in rows] == ["base", "base", "base", "base + PI 16k", "base + PI 16k"]
    by = {(r[0], r[1].split(" (")[0]): r for r in rows}
    assert by["base", "perplexity"][2:5] == ["33.51", "31.83", ""]
    assert by["base", "perplexity"][5] == "best 31.83 at 2k"
    assert by["base", "passkey accuracy"][2:4] == ["1.000", "0.600"]
    assert by["base", "RULER average"][5] == "effective context 1k"
    assert by["base + PI 16k", "RULER average"][2:5] == ["0.400", "", "0.000"]
    assert by["base + PI 16k", "RULER average"][5] == "effective context none (partial run)"
    assert "emma" in by["base", "perplexity"][1] and "lower is better" in by["base", "perplexity"][1]


def test_cli_writes_markdown_and_one_plot_per_metric(files, tmp_path, capsys):
    out = tmp_path / "report.md"
    prefix = tmp_path / "plots" / "cmp"
    assert main([*map(str, files), "--output", str(out), "--plot-prefix", str(prefix)]) == 0
    text = out.read_text()
    assert text.startswith("| model | metric |") and text == capsys.readouterr().out
    for kind in ("perplexity", "passkey", "ruler", "ruler-tasks"):
        assert Path(f"{prefix}-{kind}.png").read_bytes()[:4] == b"\x89PNG"


def test_labels_override_and_must_match_the_files(files, capsys):
    assert main([str(files[0]), "--labels", "Llama-2 7B"]) == 0
    assert "| Llama-2 7B | perplexity" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(files[0]), str(files[1]), "--labels", "one"])
    assert "--labels got 1 names for 2 result files" in capsys.readouterr().err


def test_unknown_files_are_explained(tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"kind": "table1-small"}))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert main([str(other)]) == 2
    assert (
        "is not a perplexity, passkey or ruler result (its 'kind' is 'table1-small')"
        in capsys.readouterr().err
    )
    assert main([str(broken)]) == 2
    assert "is not a JSON result file" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.json")]) == 2
    assert "no such result file" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["ppl-smollm2-emma.json", "passkey-smollm2.json"])
def test_shipped_result_files_read_back(name):
    path = RESULTS / name
    if not path.exists():
        pytest.skip(f"{path} not shipped")
    payload = load_result(path)
    values = series(payload)
    assert values and all(isinstance(n, int) for n in values)
    raw = json.loads(path.read_text())
    if payload["kind"] == "perplexity":
        assert values == {r["seq_len"]: r["ppl"] for r in raw["results"]}
    else:
        assert values == {r["length"]: r["accuracy"] for r in raw["by_length"]}
