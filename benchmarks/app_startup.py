"""Seconds from ``python app.py`` to its first page (HTTP 200 on ``/``).

Each run starts the app in a fresh process on a free port and polls ``/`` every 50 ms until it answers.
``--compare DIR`` times a second checkout's ``app.py`` too, alternating the two so that a busy machine
slows both alike; the medians, ranges and their ratio are printed, and ``--output`` writes them with
their provenance.

Usage:
    OMP_WAIT_POLICY=PASSIVE python benchmarks/app_startup.py --runs 5
    python benchmarks/app_startup.py --runs 7 --compare ../other-checkout --output results/app-startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(root: Path, app_args: list[str], timeout: float) -> float:
    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(root / "app.py"), "--port", str(port), *app_args],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    page = None
    try:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode} before serving a page")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    if r.status == 200:
                        page = time.perf_counter() - t0
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    if page is None:
        raise RuntimeError(f"no page within {timeout:.0f} s")
    return round(page, 3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="app starts to time (per checkout)")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for the page")
    p.add_argument("--compare", type=Path, help="another checkout whose app.py is timed alternately")
    p.add_argument("--output", type=Path, help="write the runs, medians and ranges as JSON (with provenance)")
    p.add_argument("app_args", nargs="*", help="arguments for app.py, after --")
    args = p.parse_args(argv)
    roots = {"this": ROOT, **({"compare": args.compare.resolve()} if args.compare else {})}
    times = {name: [] for name in roots}
    for _ in range(args.runs):
        for name, root in roots.items():
            times[name].append(one_run(root, args.app_args, args.timeout))
    summary = {
        name: {
            "root": str(roots[name]),
            "median_s": statistics.median(ts),
            "range_s": [min(ts), max(ts)],
            "runs": ts,
        }
        for name, ts in times.items()
    }
    for name, s in summary.items():
        print(
            f"{name} ({s['root']}): first page after {s['median_s']:.2f} s (median of {args.runs}; range "
            f"{s['range_s'][0]:.2f}-{s['range_s'][1]:.2f} s)"
        )
    if args.compare:
        ratio = summary["compare"]["median_s"] / summary["this"]["median_s"]
        summary["ratio_compare_over_this"] = round(ratio, 3)
        print(f"compare/this: {ratio:.2f}x")
    if args.output:
        sys.path.insert(0, str(ROOT))
        from longlora.provenance import run_record

        args.output.write_text(
            json.dumps({"kind": "app-startup", "provenance": run_record(), **summary}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
