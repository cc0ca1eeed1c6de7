"""A 2,000-page PDF through the app's path: wall time and memory of each stage, and one answer.

The PDF is built from real documents: the PDFs of the development corpus and the fixtures
(../shared/corpus, ../shared/fixtures) concatenated with pypdf, cycled until it has ``--pages`` pages,
into a temporary folder (it is never committed). A fresh process, so that its peak RSS is this
document's and the model's alone, then does what the app does with an upload and a question, and
times each stage:

- ``load_model``: the QA engine with the bundled model (the app's background loader);
- ``extract``: ``data_tools.load_document`` (PDFium text, cleaning, the page map);
- ``copy``: ``webapp.files.PdfCopy``, the app's private copy for the page view;
- ``tokenize``: ``engine.open_document`` (token ids and character offsets);
- ``card``: ``engine.card``, the document card the upload returns;
- ``index``: the session's BM25 passage index (built on the first question);
- ``answer``: ``engine.ask`` with retrieval, ``--max-new-tokens`` tokens at most.

After each stage it reads the process's RSS and its peak so far (``ru_maxrss``); each stage's CPU
time is kept beside its wall time, since on a shared machine the wall time also measures the other
jobs. The question is
about one of the concatenated documents (the RAxML manual), so the answer's sources must lie on that
document's pages; the result says whether they do. The file size is compared with the app's upload
limit (``--max-upload-mb``, default ``webapp.server.DEFAULT_MAX_UPLOAD_MB``).

Usage (CPU)::

    python benchmarks/large_pdf.py --output results/large-pdf-2000.json
    python benchmarks/large_pdf.py --pages 300                   # a quick look, nothing written
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = Path(os.environ.get("LONGLORA_FIXTURES") or ROOT.parent / "shared" / "fixtures")
CORPUS = FIXTURES.parent / "corpus"
QUESTION = "What does the GTRGAMMA model of RAxML do?"
TARGET = "raxml-manual.pdf"  # the document the question is about


def source_pdfs() -> list[Path]:
    found = sorted(CORPUS.glob("*.pdf")) + sorted(FIXTURES.glob("*.pdf"))
    if not found:
        raise SystemExit(f"no PDFs in {CORPUS} or {FIXTURES}; set LONGLORA_FIXTURES to the fixtures folder")
    return found


def build_pdf(out: Path, pages: int) -> list[dict]:
    """Concatenate the real PDFs, cycling, into ``out`` until it has ``pages`` pages; returns the pieces
    as [{"name", "first", "last"}] (1-based pages of ``out``)."""
    from pypdf import PdfReader, PdfWriter

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # one corpus file has a broken xref (its README)
    readers = [(path.name, PdfReader(path)) for path in source_pdfs()]
    writer, pieces, total = PdfWriter(), [], 0
    while total < pages:
        for name, reader in readers:
            take = min(len(reader.pages), pages - total)
            writer.append(reader, pages=(0, take))
            pieces.append({"name": name, "first": total + 1, "last": total + take})
            total += take
            if total == pages:
                break
    with open(out, "wb") as f:
        writer.write(f)
    return pieces


def _memory() -> dict:
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"rss_mib": round(rss / 2**20, 1), "peak_rss_mib": round(peak / 2**20, 1)}


def measure(pdf: Path, max_new_tokens: int) -> dict:
    """The stages of the module docstring, in this process; returns their times and memory."""
    stages: list[dict] = [{"stage": "start", "seconds": 0.0, "cpu_seconds": 0.0, **_memory()}]

    def stage(name: str, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        value = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        stages.append({"stage": name, "seconds": round(wall, 3), "cpu_seconds": round(cpu, 3), **_memory()})
        print(f"{name}: {stages[-1]}", file=sys.stderr, flush=True)
        return value

    from data_tools import load_document
    from longlora.qa import QAEngine
    from webapp.files import PdfCopy

    engine = stage("load_model", lambda: QAEngine("default", max_new_tokens=max_new_tokens))
    document = stage("extract", lambda: load_document(pdf))
    copy = stage("copy", lambda: PdfCopy(str(pdf)))
    session = stage("tokenize", lambda: engine.open_document(document))
    card = stage("card", lambda: engine.card(session))
    index = stage("index", lambda: session.passage_index(engine.profile.passage_tokens))
    final = stage("answer", lambda: list(engine.ask(session, QUESTION))[-1])
    copy.close()
    return {
        "stages": stages,
        "document": {
            "pages": document.num_pages,
            "words": document.word_count,
            "characters": len(document.text),
            "tokens": session.num_tokens,
            "passages": len(index.windows),
            "respaced_pages": len(document.respaced_pages),
            "garbled_pages": len(document.garbled_pages),
        },
        "card": {"fits": card.fits, "budget_tokens": card.budget_tokens, "strategy": card.strategy},
        "answer": {
            "question": QUESTION,
            "text": final.text,
            "new_tokens": final.new_tokens,
            "prompt_tokens": final.fit.prompt_tokens,
            "source_pages": [source.pages for source in final.fit.sources],
        },
        "model": {"spec": engine.model_spec, "dtype": str(next(engine.model.parameters()).dtype)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pages", type=int, default=2000, help="pages of the PDF to build")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit in tokens")
    p.add_argument("--output", type=Path, help="write the stages and checks as JSON (with provenance)")
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the fresh process: measure this PDF
    args = p.parse_args(argv)
    if args.pages < 1:
        p.error(f"--pages must be at least 1, got {args.pages}")
    if args.measure:
        print(json.dumps(measure(args.measure, args.max_new_tokens)))
        return 0

    from webapp.server import DEFAULT_MAX_UPLOAD_MB

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="longlora-large-pdf-") as tmp:
        pdf = Path(tmp) / f"concatenated-{args.pages}.pdf"
        t0 = time.perf_counter()
        pieces = build_pdf(pdf, args.pages)
        built_s = time.perf_counter() - t0
        size = pdf.stat().st_size
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        run = [sys.executable, __file__, "--measure", str(pdf), "--max-new-tokens", str(args.max_new_tokens)]
        done = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"the measuring process failed with exit status {done.returncode}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    load_after = os.getloadavg()[0]

    target = {
        p for piece in pieces if piece["name"] == TARGET for p in range(piece["first"], piece["last"] + 1)
    }
    cited = [p for pages in result["answer"]["source_pages"] for p in pages]
    on_target = bool(cited) and set(cited) <= target
    stages = result["stages"]
    after_model = next(s for s in stages if s["stage"] == "load_model")
    document_stages = [s for s in stages if s["stage"] in ("extract", "copy", "tokenize", "card", "index")]
    summary = {
        "pdf_mib": round(size / 2**20, 2),
        "upload_limit_mb": DEFAULT_MAX_UPLOAD_MB,
        "under_upload_limit": size <= DEFAULT_MAX_UPLOAD_MB * 10**6,
        "build_seconds": round(built_s, 2),
        "open_seconds": round(sum(s["seconds"] for s in document_stages), 2),
        "open_cpu_seconds": round(sum(s["cpu_seconds"] for s in document_stages), 2),
        "answer_seconds": stages[-1]["seconds"],
        "answer_cpu_seconds": stages[-1]["cpu_seconds"],
        "peak_rss_gib": round(stages[-1]["peak_rss_mib"] / 1024, 2),
        "rss_after_model_mib": after_model["rss_mib"],
        "rss_after_open_mib": document_stages[-1]["rss_mib"],
        "sources_on_target_pages": on_target,
    }
    for s in stages[1:]:
        print(
            f"{s['stage']:10s} {s['seconds']:8.2f} s ({s['cpu_seconds']:7.2f} s CPU)   RSS {s['rss_mib']:8.1f} MiB   "
            f"peak {s['peak_rss_mib']:8.1f} MiB"
        )
    doc = result["document"]
    print(
        f"\n{doc['pages']:,} pages ({summary['pdf_mib']} MiB; upload limit {DEFAULT_MAX_UPLOAD_MB} MB), "
        f"{doc['words']:,} words, {doc['tokens']:,} tokens, {doc['passages']:,} passages: opened in "
        f"{summary['open_seconds']:.1f} s ({summary['open_cpu_seconds']:.1f} s CPU: extract, copy, tokenize, "
        f"card, index), answered in {summary['answer_seconds']:.1f} s ({summary['answer_cpu_seconds']:.1f} s CPU); "
        f"peak RSS {summary['peak_rss_gib']} GiB (model included)"
    )
    print(f"answer: {result['answer']['text']!r}; cited pages {cited} (on {TARGET}'s pages: {on_target})")
    if args.output:
        from data_tools.files import atomic_write_text
        from longlora.provenance import run_record

        payload = {
            "kind": "large-pdf",
            "provenance": run_record(),
            "environment": {
                **{k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ},
                "nice": os.nice(0),
                "load_average_before": load_before,
                "load_average_after": load_after,
            },
            "pages_requested": args.pages,
            "max_new_tokens": args.max_new_tokens,
            "summary": summary,
            **result,
            "pieces": pieces,
        }
        atomic_write_text(args.output, json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0 if on_target else 1


if __name__ == "__main__":
    raise SystemExit(main())
