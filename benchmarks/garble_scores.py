"""Page scores behind the PDF reader's thresholds: garbled-page junk and shifts, and respacing's effect.

For every PDF of the development corpus and the fixtures (as ``benchmarks/extraction.py`` picks them)
it loads the document and records each page's ``PageQuality`` (``data_tools.garble``): the highest
``junk`` of a page kept as language, the pages left out as garbled with their scores, and any kept page
with a ``shift``. Then, for the documents whose pages were rebuilt from character boxes (respaced), it
counts their words again with respacing switched off and compares both counts with ``pdftotext``'s
(like for like, as ``extraction.py``'s "engine words": no running-line removal, the pages kept).

Usage:
    python benchmarks/garble_scores.py --output results/garble-scores.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from extraction import default_pdfs, measure  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pdfs", nargs="*", help="PDFs (default: the corpus and the fixture PDFs)")
    p.add_argument("--output", type=Path, help="write the scores as JSON (with provenance)")
    args = p.parse_args(argv)

    import data_tools.pdf as pdf
    from data_tools import load_document

    files, pages_total = [], 0
    for path in args.pdfs or default_pdfs():
        doc = load_document(path)
        quality = doc.page_quality
        pages_total += len(quality)
        kept = [(i + 1, q) for i, q in enumerate(quality) if not q.garbled]
        worst = max(kept, key=lambda pq: pq[1].junk) if kept else None
        files.append(
            {
                "file": Path(path).name,
                "pages": len(quality),
                "max_junk_kept": round(worst[1].junk, 4) if worst else None,
                "max_junk_kept_page": worst[0] if worst else None,
                "garbled": [
                    {"page": i + 1, "junk": round(q.junk, 4), "shift": q.shift}
                    for i, q in enumerate(quality)
                    if q.garbled
                ],
                "kept_pages_with_shift": [i for i, q in kept if q.shift],
                "respaced_pages": len(doc.respaced_pages),
                "path": path,
            }
        )
    kept_max = max((f for f in files if f["max_junk_kept"] is not None), key=lambda f: f["max_junk_kept"])
    print(f"{len(files)} PDFs, {pages_total} pages")
    print(
        f"highest junk of a kept page: {kept_max['max_junk_kept']} ({kept_max['file']} page "
        f"{kept_max['max_junk_kept_page']}); kept pages with a shift: "
        f"{sum(len(f['kept_pages_with_shift']) for f in files)}"
    )
    for f in files:
        for g in f["garbled"]:
            print(f"garbled: {f['file']} page {g['page']}: junk {g['junk']}, shift {g['shift']}")

    respacing = []
    if shutil.which("pdftotext"):
        saved = pdf.RUN_TOGETHER_DOC, pdf.RUN_TOGETHER_PAGE
        for f in files:
            if not f["respaced_pages"]:
                continue
            on = measure(f["path"], repeat=1)  # like for like: no running-line removal, kept pages
            pdf.RUN_TOGETHER_DOC = pdf.RUN_TOGETHER_PAGE = float("inf")  # no page qualifies: respacing off
            try:
                off = measure(f["path"], repeat=1)
            finally:
                pdf.RUN_TOGETHER_DOC, pdf.RUN_TOGETHER_PAGE = saved
            row = {
                "file": f["file"],
                "pdftotext_words": on["ref_kept"],
                "engine_words_respaced": on["engine"],
                "engine_words_not_respaced": off["engine"],
                "engine_diff_respaced_pct": round(on["engine_diff"], 2),
                "engine_diff_not_respaced_pct": round(off["engine_diff"], 2),
            }
            respacing.append(row)
            print(
                f"respacing {f['file']}: {off['engine']:,} words without it ({off['engine_diff']:+.1f}% against "
                f"pdftotext's {on['ref_kept']:,}), {on['engine']:,} with it ({on['engine_diff']:+.1f}%)"
            )
    if args.output:
        from longlora.provenance import run_record

        for f in files:
            f.pop("path")
        payload = {
            "kind": "garble-scores",
            "provenance": run_record(),
            "pdfs": len(files),
            "pages": pages_total,
            "max_junk_kept": {k: kept_max[k] for k in ("file", "max_junk_kept", "max_junk_kept_page")},
            "files": files,
            "respacing": respacing,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
