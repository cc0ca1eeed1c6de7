"""Atomic writes: one home (``data_tools.files.atomic_path``) for every result, report and plot writer.

A reader never sees a half-written file, a failed write (a full disk) leaves the old file as it was and no
temporary file behind, and a written file gets the permissions any new file gets (0666 less the umask),
not mkstemp's 0600.
"""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from data_tools.files import atomic_path, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_path_replaces_on_success_with_ordinary_permissions(tmp_path, umask_022):
    target = tmp_path / "sub" / "out.txt"  # the folder is made
    with atomic_path(target) as tmp:
        assert os.path.dirname(tmp) == str(target.parent) and not target.exists()
        with open(tmp, "w") as fh:
            fh.write("new")
    assert target.read_text() == "new"
    assert mode(target) == 0o644
    assert os.listdir(target.parent) == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(OSError, match="No space left"):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as fh:
                fh.write("half of the ne")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["results.json"]


def test_eval_results_are_written_atomically_with_ordinary_permissions(tmp_path, umask_022):
    """longlora.eval writes its JSON through the one helper (it used to leave files 0600)."""
    from longlora.eval.common import write_json

    out = write_json(tmp_path / "ppl.json", {"kind": "perplexity", "results": []})
    assert json.loads(out.read_text()) == {"kind": "perplexity", "results": []}
    assert mode(out) == 0o644
    assert os.listdir(tmp_path) == ["ppl.json"]


def test_plots_are_written_atomically_with_ordinary_permissions(tmp_path, umask_022):
    pytest.importorskip("matplotlib")
    from longlora.eval.plot import plot_perplexity

    payload = {"kind": "perplexity", "config": {"label": "m"}, "results": [{"seq_len": 1024, "ppl": 9.0}]}
    out = plot_perplexity([payload], tmp_path / "ppl.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mode(out) == 0o644
    assert os.listdir(tmp_path) == ["ppl.png"]


def test_atomic_write_text_round_trips_unicode(tmp_path):
    atomic_write_text(tmp_path / "t.txt", "Émilie — 東京\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "Émilie — 東京\n"
