"""The project is installed: its commands and imports work from any folder, not only the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing points at the checkout
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "longlora.finetune", "--help"],
        ["-m", "longlora.qa", "--help"],
        ["-m", "data_tools", "--help"],
        ["-c", "import longlora, data_tools; print(longlora.__file__); print(data_tools.__file__)"],
    ],
    ids=["finetune", "qa", "data_tools", "import"],
)
def test_commands_run_outside_the_checkout(args, tmp_path):
    done = _run(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    if args[0] == "-c":  # the installed package is this checkout (editable), not a stale copy
        assert all(Path(line).resolve().is_relative_to(REPO) for line in done.stdout.split()), done.stdout
