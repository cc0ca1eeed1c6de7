"""Where a result came from: the command, the code's git commit, the machine and the date.

Every result file a recipe or benchmark writes carries :func:`run_record`, so a figure quoted in the
README can be traced to the command that made it, on which code and hardware.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit(root: str | os.PathLike = REPO) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout at ``root``."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if sha is None and os.environ.get("LONGLORA_SOURCE_COMMIT"):
        # a copy of the tree without its .git (an exported checkout run elsewhere): the commit it was made from
        return {"commit": os.environ["LONGLORA_SOURCE_COMMIT"], "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"commit": sha, "dirty": None if status is None else bool(status)}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_record() -> dict:
    """CPU, cores, torch threads, native bf16, GPU (if any) and versions."""
    import torch

    from longlora.models import cpu_has_fast_bf16

    record = {
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16_native": cpu_has_fast_bf16(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "os": platform.platform(),
    }
    try:
        import transformers

        record["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - a dependency of the project
        pass
    return record


def run_record(argv: list[str] | None = None) -> dict:
    """The provenance block of a result file: command, git commit, machine, date (UTC, ISO 8601)."""
    argv = sys.argv if argv is None else argv
    return {
        "command": shlex.join([Path(sys.executable).name, *argv]) if argv else None,
        **git_commit(),
        "machine": machine_record(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
