"""Run a command that prints its results and keep its output as a result file, with provenance.

For benchmarks and tools that print tables but write no result file of their own: the file gets a
header with the command, the git commit, the machine, the date (``longlora.provenance.run_record``),
the thread settings and niceness it ran under, the load average before and after and the wall time of
each run, then the command's stdout (and with ``--stderr-lines N`` the last N lines of its stderr, for
tools that report there). With ``--runs N`` the command runs N times in a row and every run's output is
kept, so a figure quoted from the file can give the median and the range.

Usage:
    python benchmarks/record.py -o results/extraction.txt -- python benchmarks/extraction.py --pypdf
    python benchmarks/record.py --runs 3 --stderr-lines 1 -o results/tokenize-austen.txt -- \\
        python -m data_tools tokenize ../shared/fixtures/austen-emma.txt --tokenizer default -o /tmp/a.bin
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENV_KEYS = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "MKL_NUM_THREADS",
    "TOKENIZERS_PARALLELISM",
    "LONGLORA_CACHE",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", type=Path, required=True, help="the result file to write")
    p.add_argument("--runs", type=int, default=1, help="run the command this many times (default 1)")
    p.add_argument(
        "--stderr-lines",
        type=int,
        default=0,
        help="also keep the last N lines of stderr of each run (default 0)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("no command given (put it after --)")

    from longlora.provenance import run_record

    record = run_record()
    record["command"] = shlex.join(command)
    record["recorded_with"] = shlex.join(["python", "benchmarks/record.py", *(argv or sys.argv[1:])])
    # what else shapes a timing: thread settings and the scheduling priority the runs inherit
    record["environment"] = {k: os.environ.get(k) for k in ENV_KEYS if os.environ.get(k) is not None}
    record["environment"]["nice"] = os.nice(0)
    parts, status = [], 0
    for i in range(args.runs):
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()
        status = status or done.returncode
        head = (
            f"--- run {i + 1} of {args.runs}: exit status {done.returncode}, wall {wall:.1f} s, "
            f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}"
        )
        parts.append(head + "\n" + done.stdout.rstrip("\n") + "\n")
        if args.stderr_lines:  # tools that report on stderr: its last lines, progress bars collapsed
            lines = [ln for ln in done.stderr.replace("\r", "\n").splitlines() if ln.strip()]
            kept = [f"stderr: {ln}" for ln in lines[-args.stderr_lines :]]
            parts.append("\n".join(kept) + "\n" if kept else "")
        print(head, file=sys.stderr, flush=True)
        if done.returncode:
            print(done.stderr[-4000:], file=sys.stderr)
    header = "# " + json.dumps(record, indent=2).replace("\n", "\n# ") + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(header + "".join(parts))
    print(f"wrote {args.output}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
