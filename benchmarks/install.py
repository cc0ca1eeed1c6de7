"""A fresh install, measured: ``./setup.sh`` (or ``--dev``) in a clean clone, its wall-clock time, the size
of the virtual environment it made, and which torch build it got (``+cpu`` on a machine without CUDA).

    python benchmarks/install.py --output results/install-cpu.json          # runtime install
    python benchmarks/install.py --dev --output results/install-cpu-dev.json

The clone is made from this checkout's HEAD in a temporary folder (pip's cache is left as it is: a
machine that installed before installs faster, so the result records whether the cache held wheels).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def folder_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dev", action="store_true", help="./setup.sh --dev (tests, benchmarks, lint)")
    p.add_argument("--output", type=Path, help="write the measurement as JSON (with provenance)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "longlora"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        cmd = ["./setup.sh"] + (["--dev"] if args.dev else [])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=clone, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            return proc.returncode
        venv = clone / ".venv"
        torch_version = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        site = next((venv / "lib").glob("python*/site-packages"))
        result = {
            "command": " ".join(cmd),
            "seconds": round(seconds, 1),
            "venv_bytes": folder_bytes(venv),
            "torch": torch_version,
            "torch_bytes": folder_bytes(site / "torch"),
            "nvidia_packages": sorted(p.name for p in site.glob("nvidia*")),
            "warnings": [line for line in proc.stderr.splitlines() if "warning" in line.lower()][:10],
        }
    print(
        f"{result['command']}: {result['seconds']:.0f} s, .venv {result['venv_bytes'] / 2**30:.2f} GiB, "
        f"torch {result['torch']} ({result['torch_bytes'] / 2**20:.0f} MiB), "
        f"nvidia packages: {len(result['nvidia_packages'])}"
    )
    if args.output:
        sys.path.insert(0, str(ROOT))
        from longlora.provenance import run_record

        record = run_record()
        record["pip_config"] = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
        ).stdout.splitlines()
        args.output.write_text(
            json.dumps({"kind": "install", "provenance": record, **result}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
