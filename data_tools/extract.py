"""Extract clean UTF-8 text (and a page map for PDFs) from .pdf, .txt and .md files.

Usage:
    python -m data_tools extract paper.pdf -o out/                # out/paper.txt + out/paper.pages.json
    python -m data_tools extract papers/ -o out/ --drop-references  # a directory, recursively
    python -m data_tools extract paper.pdf -o paper.txt           # one file to a named .txt
    python -m data_tools extract paper.pdf -o -                   # text to stdout
    python -m data_tools extract scan.pdf -o out/ --ocr           # image-only/garbled pages via tesseract

The page map ``NAME.pages.json`` maps each page number to its [start, end) character span in
``NAME.txt`` (Python string offsets, i.e. code points):

    {"source": "paper.pdf", "num_pages": 19, "pages": {"1": [0, 2732], "2": [2734, 5812], ...},
     "notes": [], "garbled_pages": [], "ocr_pages": []}

Pages whose text is not language (a font mapping glyphs to wrong characters, see
``data_tools.garble``) are left out (empty span), listed in ``garbled_pages`` and named in the
report line of that file.

Inputs are read by ``data_tools.reader`` (the rules of every command: a directory is searched
recursively with hidden files skipped, a glob expands like a directory, a file must be a document). A
missing input, an input with no document and a file of another type stop the run before anything is
written (exit status 2). A directory run reports each failing file (encrypted, scanned, damaged) and
goes on; the exit status is 1 when any file failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path

from .document import Document
from .errors import DataError, DocumentError, WriteError
from .files import atomic_path
from .reader import find_sources, read_document


def page_map(doc: Document) -> dict:
    """The JSON page map of a document: page number (as a string key) -> [start, end]."""
    return {
        "source": doc.name,
        "num_pages": doc.num_pages,
        "pages": {str(p.number): [p.start, p.end] for p in doc.pages},
        "notes": list(doc.notes),
        "garbled_pages": list(doc.garbled_pages),
        "ocr_pages": list(doc.ocr_pages),
    }


def write_extraction(doc: Document, text_path: str) -> list[str]:
    """Write ``text_path`` (and ``<stem>.pages.json`` beside it for PDFs) atomically, as a pair: both are
    written in full before either replaces its old version, so a failed write (a full disk) never leaves a
    new text beside an old page map. Returns the paths."""
    files = {text_path: doc.text + "\n"}
    if doc.kind == "pdf":
        files[os.path.splitext(text_path)[0] + ".pages.json"] = json.dumps(page_map(doc), indent=1) + "\n"
    with ExitStack() as stack:
        for path, text in files.items():
            tmp = stack.enter_context(atomic_path(path))
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
    return list(files)


def _output_path(src: str, root: Path | None, out_dir: str) -> str:
    rel = os.path.relpath(src, root) if root else os.path.basename(src)
    return os.path.join(out_dir, os.path.splitext(rel)[0] + ".txt")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_tools extract",
        description="Extract clean UTF-8 text (with a page map for PDFs) from .pdf/.txt/.md files.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Usage:")[1].split("\n\n")[0],
    )
    p.add_argument(
        "inputs", nargs="+", metavar="FILE_OR_DIR", help="files, directories searched recursively, or globs"
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output directory; or a .txt file when extracting one file; '-' prints the text",
    )
    p.add_argument("--drop-references", action="store_true", help="cut the references/bibliography section")
    p.add_argument(
        "--password", default=None, help="password for encrypted PDFs (the empty one is always tried)"
    )
    p.add_argument(
        "--ocr",
        action="store_true",
        help="read image-only and garbled PDF pages with tesseract (must be installed; off by default)",
    )
    p.add_argument("--quiet", action="store_true", help="print only failures, garbled pages and the summary")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    jobs: list[tuple[str, Path | None]] = []  # (file, directory it was found in)
    for given in args.inputs:
        try:  # data_tools.reader's rules: folders recursively (hidden files skipped), globs, files
            found = find_sources([given], ("document",))
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        root = Path(given).expanduser()
        jobs += [(str(source.path), root if root.is_dir() else None) for source in found]
    single_target = args.output == "-" or args.output.lower().endswith(".txt")
    if single_target and len(jobs) != 1:
        print(
            f"error: -o {args.output} names one file but {len(jobs)} inputs were found; pass a directory",
            file=sys.stderr,
        )
        return 2

    failed, pages, words, garbled, done = [], 0, 0, 0, 0
    for src, root in jobs:
        try:
            doc = read_document(
                src, drop_references=args.drop_references, password=args.password, ocr=args.ocr
            )
        except DocumentError as e:
            failed.append(src)
            print(f"FAILED {src}: {e}", file=sys.stderr)
            continue
        pages += doc.num_pages or 0
        words += doc.word_count
        garbled += len(doc.garbled_pages)
        if doc.garbled_pages and (args.quiet or args.output == "-"):
            print(f"WARNING {src}: {doc.warning}", file=sys.stderr)
        if args.output == "-":
            sys.stdout.write(doc.text + "\n")
            continue
        target = args.output if single_target else _output_path(src, root, args.output)
        try:
            written = write_extraction(doc, target)
        except WriteError as e:  # a full disk fails every file after this one too: stop here
            print(f"error: {e} (the {done} file(s) extracted before it are complete)", file=sys.stderr)
            return 2
        done += 1
        if not args.quiet:
            extra = f", {doc.num_pages} pages" if doc.num_pages else ""
            note = f" ({'; '.join(doc.notes)})" if doc.notes else ""
            print(f"{src} -> {', '.join(written)} [{doc.word_count:,} words{extra}]{note}", file=sys.stderr)
    ok = len(jobs) - len(failed)
    print(
        f"extracted {ok} of {len(jobs)} file(s): {words:,} words, {pages:,} PDF pages "
        f"({garbled} garbled, left out); {len(failed)} failed",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
