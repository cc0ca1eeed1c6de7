"""16 concurrent sessions of the app on 16 different real documents: every one answered, none mixed,
memory bounded.

The app (``app.build_demo`` over a ``QAEngine`` with the bundled model, CPU) is served on 127.0.0.1 by
a second process, so that its RSS is the server's alone. 16 ``gradio_client`` clients, one thread
and one browser session each, then each upload a different document (11 corpus PDFs, 3 fixture PDFs
and 2 novels as text: ``SESSIONS``) and ask a question about it; once all 16 have asked, each asks
a second one (after the first round, caches of other sessions have been evicted), and after each
answer reads ``/sources``.

Each document has *markers*: strings that occur in its text and in none of the other 15 (checked
before the run starts). Mixing is counted when an answer, or one of its sources, contains a marker of
another document, or when a source is not a passage of the session's own document. The run is
repeated for each ``--configs`` entry:

- ``shipped``: the app's defaults (``--concurrency 1``; the engine keeps 4 sessions' KV caches, in
  at most a quarter of the RAM);
- ``tight``: 4 events at a time, room for 16 caches but only ``--tight-cache-mb`` MiB of them, so
  the byte budget evicts.

Reported per configuration: per-session upload and answer latency (median and range: the answers
queue behind one another, the model answers one at a time), the total wall time, the server's RSS
after loading the model and its peak, and the KV caches (most kept at once, their most bytes, the
budget, evicted, refused), sampled every 0.1 s in the server, and the server's CPU time for the
uploads and answers (on a shared machine the wall times also measure the other jobs).

Usage (CPU)::

    OMP_NUM_THREADS=1 python benchmarks/qa_sessions.py --output results/qa-sessions-16.json
    python benchmarks/qa_sessions.py --configs tight --sessions 4        # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = Path(os.environ.get("LONGLORA_FIXTURES") or ROOT.parent / "shared" / "fixtures")
CORPUS = FIXTURES.parent / "corpus"

# (folder, file, first question, second question, markers: strings of this document only)
SESSIONS = [
    ("corpus", "bash-manpage.pdf", "Which variable holds the search path for the cd command?",
     "Who wrote bash?", ["CDPATH", "GLOBIGNORE", "Chet Ramey"]),
    ("corpus", "cdhit-user-guide.pdf", "Who developed CD-HIT?",
     "How does cd-hit-est cluster DNA sequences?", ["CD-HIT", "Weizhong", "Godzik"]),
    ("corpus", "debian-faq.pdf", "Which live CD based on Debian does the FAQ mention?",
     "How can I donate to the Debian project?", ["Knoppix", "Slackware", "Kleinmann"]),
    ("corpus", "fhs-3.0.pdf", "What was the name of the filesystem standard before the FHS?",
     "What belongs in /srv?", ["FSSTND", "Rusty Russell", "LANANA"]),
    ("corpus", "glpk-gmpl-language.pdf", "What is the modeling language of GLPK called?",
     "Which cities appear in the transportation problem example?", ["MathProg", "Makhorin", "Topeka"]),
    ("corpus", "khmer-register-shifters.pdf", "What are the two Khmer register shifters called?",
     "Which font is this document about?", ["Muusikatoan", "Triisap", "Mondulkiri"]),
    ("corpus", "lualatex-guide.pdf", "Who wrote this guide to LuaLaTeX?",
     "Which package loads OpenType fonts in LuaLaTeX?", ["Gonnard", "Oberdiek", "fontspec"]),
    ("corpus", "r-data-import-export.pdf", "Which R package connects to databases through ODBC?",
     "How do I read a CSV file into R?", ["RODBC", "RMySQL", "USArrests"]),
    ("corpus", "raxml-manual.pdf", "Who wrote RAxML?",
     "What is the GTRGAMMA model?", ["RAxML", "Stamatakis", "GTRGAMMA"]),
    ("corpus", "tugboat-lua-widow-control.pdf", "Who wrote lua-widow-control?",
     "Which TeX formats does lua-widow-control support?", ["Chernoff", "TUGboat", "OpTEX"]),
    ("corpus", "ubuntu-packaging-guide.pdf", "Where are Ubuntu packages built and published?",
     "What does FTBFS mean?", ["Launchpad", "Kubuntu", "FTBFS"]),
    ("fixtures", "rcpp-jss-2011.pdf", "Who are the authors of Rcpp?",
     "What is a NumericVector?", ["Eddelbuettel", "NumericVector", "RcppArmadillo"]),
    ("fixtures", "sandwich-hac-jss.pdf", "Which HAC covariance estimators does the paper implement?",
     "Which kernel did Andrews recommend?", ["Newey", "Cribari", "RealInt"]),
    ("fixtures", "zoo-faq.pdf", "How do I read a time series from a text file into a zoo object?",
     "How do I fill in missing values in a zoo series?", ["read.zoo", "zooreg", "na.locf"]),
    ("fixtures", "austen-emma.txt", "What is the name of Emma's father?",
     "Whom does Emma marry?", ["Woodhouse", "Knightley", "Highbury"]),
    ("fixtures", "austen-prideprejudice.txt", "Whom does Elizabeth Bennet marry?",
     "Where does Mr. Darcy live?", ["Darcy", "Bingley", "Longbourn"]),
]  # fmt: skip
CONFIGS = {
    "shipped": {"concurrency": 1, "max_cached_sessions": 4, "tight": False},
    "tight": {"concurrency": 4, "max_cached_sessions": 16, "tight": True},
}


def path_of(folder: str, name: str) -> Path:
    return (CORPUS if folder == "corpus" else FIXTURES) / name


# --------------------------------------------------------------------------------------------------
# The server process


TAG = "qa_sessions server: "  # the server's reports on its stdout start with this


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def serve(args) -> int:
    """Load the model, serve the app, then answer ``stats`` lines on stdin until ``stop`` (or EOF)."""
    import app
    from longlora.qa import QAEngine
    from webapp.server import launch

    engine = QAEngine(
        "default",
        max_new_tokens=args.max_new_tokens,
        max_cached_sessions=args.max_cached_sessions,
        max_cache_bytes=None if args.max_cache_mb is None else int(args.max_cache_mb * 2**20),
    )
    demo = app.build_demo(engine, max_new_tokens=args.max_new_tokens, concurrency=args.concurrency)
    for attempt in range(10):  # a loaded machine can miss gradio's 3-second self-check of localhost
        try:
            _, url, _ = launch(
                demo, port=None, prevent_thread_lock=True, quiet=True, concurrency=args.concurrency
            )
            break
        except ValueError as exc:
            demo.close()
            if "localhost is not accessible" not in str(exc) or attempt == 9:
                raise
    seen = {"max_sessions": 0, "max_bytes": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            stats = engine.cache_stats()
            seen["max_sessions"] = max(seen["max_sessions"], stats["sessions"])
            seen["max_bytes"] = max(seen["max_bytes"], stats["bytes"])

    threading.Thread(target=sample, daemon=True).start()

    def report() -> dict:
        return {
            "cpu_s": round(time.process_time(), 2),  # all the server's threads
            "rss_mib": round(_rss_mib(), 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "cache": engine.cache_stats(),
            "cache_most_kept": dict(seen),
        }

    print(TAG + json.dumps({"url": url, **report()}), flush=True)
    for line in sys.stdin:
        if line.strip() == "stop":
            break
        print(TAG + json.dumps(report()), flush=True)
    done.set()
    print(TAG + json.dumps(report()), flush=True)
    demo.close()
    return 0


class Server:
    """The server process of one configuration."""

    def __init__(self, settings: dict, args, upload_dir: str):
        command = [
            sys.executable, __file__, "--serve",
            "--concurrency", str(settings["concurrency"]),
            "--max-cached-sessions", str(settings["max_cached_sessions"]),
            "--max-new-tokens", str(args.max_new_tokens),
        ]  # fmt: skip
        if settings["tight"]:
            command += ["--max-cache-mb", str(args.tight_cache_mb)]
        env = {**os.environ, "GRADIO_TEMP_DIR": upload_dir, "GRADIO_ANALYTICS_ENABLED": "False"}
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.ready = self._read()
        self.url = self.ready["url"]

    def _read(self) -> dict:
        for line in self.proc.stdout:  # what gradio or a library prints goes to stderr
            if line.startswith(TAG):
                return json.loads(line[len(TAG) :])
            sys.stderr.write(line)
        raise SystemExit(f"the server exited with status {self.proc.wait()} without a report")

    def stats(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> dict:
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        final = self._read()
        self.proc.wait(60)
        return final


# --------------------------------------------------------------------------------------------------
# The clients


def check_markers(texts: dict[str, str]) -> None:
    """Every marker occurs in its own document and in none of the others (case-insensitive)."""
    lowered = {name: text.lower() for name, text in texts.items()}
    for _, name, _, _, markers in SESSIONS:
        if name not in texts:
            continue
        for marker in markers:
            if marker.lower() not in lowered[name]:
                raise SystemExit(f"marker {marker!r} does not occur in {name}; choose another")
            others = [o for o in lowered if o != name and marker.lower() in lowered[o]]
            if others:
                raise SystemExit(f"marker {marker!r} of {name} also occurs in {others}; choose another")


def foreign_markers(text: str, own: str, sessions) -> list[str]:
    low = text.lower()
    return [m for _, name, _, _, markers in sessions if name != own for m in markers if m.lower() in low]


def converse(url: str, index: int, session, own_text: str, sessions, barrier, out: dict) -> None:
    """One client: upload, ask, read the sources; wait for every client; ask again, read the sources."""
    from gradio_client import Client, handle_file

    folder, name, first, second, markers = session
    row: dict = {"document": name, "answers": [], "answer_s": [], "sources": []}
    out[index] = row
    try:
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 3600})
        t0 = time.perf_counter()
        card = client.predict(handle_file(str(path_of(folder, name))), api_name="/upload")
        row["upload_s"] = round(time.perf_counter() - t0, 2)
        row["card_names_document"] = name in card
        for turn, question in enumerate((first, second)):
            if turn:
                barrier.wait()  # every session has asked its first question (a failed one aborts it)
            t0 = time.perf_counter()
            answer = client.predict(question, api_name="/ask")
            row["answer_s"].append(round(time.perf_counter() - t0, 2))
            row["answers"].append(answer)
            row["sources"].append(client.predict(api_name="/sources"))
    except Exception as exc:  # noqa: BLE001 - counted as an unanswered session
        row["error"] = f"{type(exc).__name__}: {exc}"
        barrier.abort()
        return
    own_low = [m.lower() for m in markers]
    answer_parts = [a.split("\n\n*", 1)[0] for a in row["answers"]]  # the answer without its fit note
    row["own_marker_in_answer"] = [any(m in a.lower() for m in own_low) for a in answer_parts]
    row["own_marker_in_sources"] = [
        any(m in s["text"].lower() for s in sources for m in own_low) for sources in row["sources"]
    ]
    mixed = []
    for answer, sources in zip(row["answers"], row["sources"]):
        mixed += [f"answer names {m!r}" for m in foreign_markers(answer, name, sessions)]
        for source in sources:
            mixed += [f"source names {m!r}" for m in foreign_markers(source["text"], name, sessions)]
            if source["text"] not in own_text:
                mixed.append(f"source not in {name}: {source['text'][:60]!r}")
    row["mixing"] = mixed
    row["source_pages"] = [[s["pages"] for s in sources] for sources in row["sources"]]
    del row["sources"]


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "range": [min(values), max(values)]}


def run_config(name: str, settings: dict, args, texts: dict[str, str], sessions) -> dict:
    with tempfile.TemporaryDirectory(prefix="longlora-sessions-") as upload_dir:
        server = Server(settings, args, upload_dir)
        print(
            f"[{name}] serving at {server.url}; RSS after loading {server.ready['rss_mib']} MiB",
            file=sys.stderr,
        )
        barrier = threading.Barrier(len(sessions))
        rows: dict[int, dict] = {}
        t0 = time.perf_counter()
        threads = [
            threading.Thread(
                target=converse, args=(server.url, i, s, texts[s[1]], sessions, barrier, rows), daemon=True
            )
            for i, s in enumerate(sessions)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        final = server.stop()
    rows_list = [rows[i] for i in range(len(sessions))]
    answered = sum(len(r["answers"]) for r in rows_list)
    mixed = sum(len(r.get("mixing", [])) for r in rows_list)
    uploads = [r["upload_s"] for r in rows_list if "upload_s" in r]
    answers = [s for r in rows_list for s in r["answer_s"]]
    summary = {
        "sessions": len(sessions),
        "questions_answered": answered,
        "questions_asked": 2 * len(sessions),
        "errors": [r["error"] for r in rows_list if "error" in r],
        "mixing_found": mixed,
        "wall_s": round(wall, 1),
        "server_cpu_s": round(final["cpu_s"] - server.ready["cpu_s"], 1),  # uploads and answers
        "upload_s": spread(uploads) if uploads else None,
        "answer_s": spread(answers) if answers else None,
        "first_answer_s": spread([r["answer_s"][0] for r in rows_list if r["answer_s"]]) if answers else None,
        "second_answer_s": spread([r["answer_s"][1] for r in rows_list if len(r["answer_s"]) > 1])
        if answers
        else None,
        "answers_with_own_marker": sum(sum(r.get("own_marker_in_answer", [])) for r in rows_list),
        "server_rss_after_model_mib": server.ready["rss_mib"],
        "server_peak_rss_mib": final["peak_rss_mib"],
        "server_rss_end_mib": final["rss_mib"],
        "cache_budget_bytes": final["cache"]["max_bytes"],
        "cache_max_sessions": final["cache"]["max_sessions"],
        "caches_most_kept": final["cache_most_kept"]["max_sessions"],
        "cache_most_bytes": final["cache_most_kept"]["max_bytes"],
        "caches_evicted": final["cache"]["evicted"],
        "caches_refused": final["cache"]["refused"],
    }
    return {"settings": settings, "summary": summary, "server_final": final, "sessions": rows_list}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["shipped", "tight"], help="runs")
    p.add_argument("--sessions", type=int, default=len(SESSIONS), help="how many of the 16 sessions to run")
    p.add_argument("--max-new-tokens", type=int, default=24, help="answer length limit in tokens")
    p.add_argument("--tight-cache-mb", type=float, default=32, help="KV cache budget of the tight run (MiB)")
    p.add_argument("--output", type=Path, help="write the runs as JSON (with provenance)")
    # the server process (internal)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--max-cached-sessions", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--max-cache-mb", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return serve(args)
    if not 1 <= args.sessions <= len(SESSIONS):
        p.error(f"--sessions must be between 1 and {len(SESSIONS)}, got {args.sessions}")

    from data_tools import load_document

    sessions = SESSIONS[: args.sessions]
    missing = [str(path_of(f, n)) for f, n, *_ in sessions if not path_of(f, n).exists()]
    if missing:
        raise SystemExit(f"missing documents {missing}; set LONGLORA_FIXTURES to the fixtures folder")
    # the same extraction as the server's: what a source must be a passage of
    texts = {n: load_document(path_of(f, n)).text for f, n, *_ in sessions}
    check_markers(texts)
    load_before = os.getloadavg()[0]
    runs = {name: run_config(name, CONFIGS[name], args, texts, sessions) for name in args.configs}
    load_after = os.getloadavg()[0]

    print("| run | answered | mixing | wall | server CPU | upload (median, range) | answer (median, range) | "
          "server peak RSS | caches most kept | their most MiB | budget MiB | evicted |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ok = True
    for name, run in runs.items():
        s = run["summary"]
        ok &= s["questions_answered"] == s["questions_asked"] and not s["mixing_found"] and not s["errors"]
        up, ans = s["upload_s"] or {}, s["answer_s"] or {}
        print(
            f"| {name} | {s['questions_answered']}/{s['questions_asked']} | {s['mixing_found']} | {s['wall_s']:.0f} s | "
            f"{s['server_cpu_s']:.0f} s | "
            f"{up.get('median')} s ({up.get('range')}) | {ans.get('median')} s ({ans.get('range')}) | "
            f"{s['server_peak_rss_mib'] / 1024:.2f} GiB | {s['caches_most_kept']} of {s['cache_max_sessions']} | "
            f"{s['cache_most_bytes'] / 2**20:.1f} | {s['cache_budget_bytes'] / 2**20:.0f} | {s['caches_evicted']} |"
        )
        for row in run["sessions"]:
            if row.get("error") or row.get("mixing"):
                print(f"  {row['document']}: {row.get('error') or row['mixing']}")
    if args.output:
        from data_tools.files import atomic_write_text
        from longlora.provenance import run_record

        payload = {
            "kind": "qa-sessions",
            "provenance": run_record(),
            "environment": {
                **{k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ},
                "nice": os.nice(0),
                "load_average_before": load_before,
                "load_average_after": load_after,
            },
            "max_new_tokens": args.max_new_tokens,
            "tight_cache_mb": args.tight_cache_mb,
            "markers": {n: m for _, n, _, _, m in sessions},
            "questions": {n: [q1, q2] for _, n, q1, q2, _ in sessions},
            "runs": runs,
        }
        atomic_write_text(args.output, json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
