"""Atomic writes: one home (``data_tools.files.atomic_path``) for every result, report and plot writer.

A reader never sees a half-written file, a failed write (a full disk) leaves the old file as it was and no
temporary file behind, and a written file gets the permissions any new file gets (0666 less the umask),
not mkstemp's 0600.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

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


# ----------------------------------------------------------------------------- a full disk


def tiny_base_and_text(tmp_path, text: str) -> tuple[Path, Path]:
    """A tiny random Llama with a character tokenizer in tmp_path/base, and training text in text.txt."""
    from conftest import make_char_tokenizer, tiny_model

    base, data = tmp_path / "base", tmp_path / "text.txt"
    tiny_model("llama").save_pretrained(base)
    make_char_tokenizer().save_pretrained(base)
    data.write_text(text)
    return base, data


def run_with_file_size_limit(limit: int, argv: list[str], cwd) -> subprocess.CompletedProcess:
    """Run ``argv`` where no file may grow past ``limit`` bytes (RLIMIT_FSIZE, SIGXFSZ ignored): every
    write beyond it fails with EFBIG, as a write to a full disk fails with ENOSPC."""
    import resource

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    repo = str(Path(__file__).resolve().parents[1])  # this checkout's code, wherever the package points
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.run(
        argv, cwd=cwd, preexec_fn=limited, capture_output=True, text=True, timeout=600, env=env
    )


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE is POSIX")
def test_extract_on_a_full_disk_stops_with_a_clear_error_and_keeps_the_old_text(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_text("A short note.\n")
    (src / "b.txt").write_text("Long text about the weather. " * 2000)  # ~58 kB
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.txt").write_text("the earlier extraction\n")
    res = run_with_file_size_limit(
        16_000, [sys.executable, "-m", "data_tools", "extract", str(src), "-o", str(out)], cwd=tmp_path
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert f"cannot write {out / 'b.txt'}: File too large; its previous version is unchanged" in res.stderr
    assert "Free space" in res.stderr and "1 file(s) extracted before it are complete" in res.stderr
    assert (out / "a.txt").read_text() == "A short note.\n"
    assert (out / "b.txt").read_text() == "the earlier extraction\n"
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]  # no temporary left behind


def test_extract_replaces_a_text_and_its_page_map_together(tmp_path, monkeypatch):
    """If the page map cannot be written, the new text does not replace the old either (a new text
    beside an old page map would cite wrong pages)."""
    from conftest import fixture_path

    from data_tools import extract, load_document
    from data_tools.errors import WriteError

    doc = load_document(fixture_path("rcpp-jss-2011.pdf"))
    text, pages = tmp_path / "rcpp.txt", tmp_path / "rcpp.pages.json"
    text.write_text("old text\n")
    pages.write_text("{}\n")
    real_open = open

    def full_disk_for_the_page_map(path, *args, **kwargs):
        if ".pages.json." in os.fspath(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(extract, "open", full_disk_for_the_page_map, raising=False)
    with pytest.raises(WriteError, match="No space left on device; its previous version is unchanged"):
        extract.write_extraction(doc, str(text))
    assert text.read_text() == "old text\n" and pages.read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rcpp.pages.json", "rcpp.txt"]

    monkeypatch.undo()
    assert extract.write_extraction(doc, str(text)) == [str(text), str(pages)]
    assert text.read_text() == doc.text + "\n" and json.loads(pages.read_text())["num_pages"] == doc.num_pages


def test_finetune_on_a_full_disk_keeps_the_previous_checkpoint_and_resumes(tmp_path, monkeypatch, capsys):
    """A checkpoint that cannot be written (a full disk) leaves no partial folder, keeps the previous
    checkpoint, and says to free space and --resume; the resumed run finishes all its steps."""
    from longlora.finetune import main
    from longlora.training import checkpoints

    base, data = tiny_base_and_text(
        tmp_path, "Emma Woodhouse, handsome, clever, and rich, with a comfortable home. " * 300
    )
    out = tmp_path / "run"
    argv = ["--model", str(base), "--data", str(data), "--output-dir", str(out), "--dtype", "fp32"]
    argv += ["--context-length", "256", "--max-steps", "5", "--save-steps", "2", "--warmup-steps", "0"]
    argv += ["--gradient-accumulation-steps", "1"]
    real_manifest = checkpoints.checkpoint_manifest

    def disk_full_at_step_4(folder):
        if folder.name == "step-4":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_manifest(folder)

    monkeypatch.setattr(checkpoints, "checkpoint_manifest", disk_full_at_step_4)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot write the checkpoint of step 4" in err and "No space left on device" in err
    assert "step-2 is kept and --resume continues from it" in err and "Traceback" not in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]
    checkpoints.verify_checkpoint(out / "checkpoints" / "step-2")

    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5] and (out / "adapter_model.safetensors").is_file()


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE is POSIX")
def test_finetune_whose_first_checkpoint_cannot_be_written_says_so(tmp_path):
    """The real writers (accelerate, torch, safetensors) under a file-size limit: a clear error, no
    partial checkpoint folder, no traceback."""
    base, data = tiny_base_and_text(tmp_path, "Emma Woodhouse, handsome, clever, and rich. " * 200)
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "longlora.finetune", "--model", str(base), "--data", str(data)]
    argv += ["--output-dir", str(out), "--dtype", "fp32", "--max-steps", "3", "--save-steps", "2"]
    argv += ["--gradient-accumulation-steps", "1"]
    weights = (base / "model.safetensors").stat().st_size
    res = run_with_file_size_limit(weights // 8, argv, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "cannot write the checkpoint of step 2" in res.stderr and "File too large" in res.stderr
    assert "no checkpoint is kept yet" in res.stderr and "Traceback" not in res.stderr
    assert not (out / "checkpoints" / "step-2").exists()


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE is POSIX")
def test_merge_on_a_full_disk_leaves_the_output_as_it_was(tmp_path):
    from longlora.finetune import main as finetune_main

    base, data = tiny_base_and_text(tmp_path, "Emma Woodhouse, handsome, clever, and rich. " * 200)
    adapter = tmp_path / "adapter"
    argv = ["--model", str(base), "--data", str(data), "--output-dir", str(adapter), "--dtype", "fp32"]
    assert finetune_main(argv + ["--max-steps", "1", "--gradient-accumulation-steps", "1"]) == 0
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "notes.txt").write_text("mine")
    weights = (base / "model.safetensors").stat().st_size
    res = run_with_file_size_limit(
        weights // 2,
        [
            sys.executable,
            "-m",
            "longlora.merge",
            "--adapter",
            str(adapter),
            "--output",
            str(merged),
            "--overwrite",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 2, res.stderr[-3000:]
    assert f"cannot write {merged}: " in res.stderr and "File too large" in res.stderr
    assert "its previous version is unchanged" in res.stderr
    assert "Traceback" not in res.stderr
    assert [p.name for p in merged.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base", "merged", "text.txt"]
