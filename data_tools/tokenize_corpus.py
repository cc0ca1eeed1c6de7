"""Tokenize texts into a token file for pre-training and perplexity (``NAME.bin`` + ``NAME.bin.json``).

Usage:
    python -m data_tools tokenize ../shared/fixtures/austen-emma.txt --tokenizer default -o emma.bin
    python -m data_tools tokenize books/ papers/ corpus.jsonl --tokenizer MODEL_DIR -o corpus.bin --eos
    python -m data_tools tokenize pg19.jsonl --field text --tokenizer MODEL_DIR -o pg19.bin

Inputs are files or directories (searched recursively): .pdf/.txt/.md files are one document each
(extracted and cleaned like ``extract``), and every record of a .jsonl/.json file is one document
(its ``--field``, default "text"). Documents are tokenized one at a time (long ones in pieces cut at
paragraph breaks) and streamed to disk, so corpus size is bounded by disk, not memory. The ids are
stored as uint16 when the vocabulary fits (<= 65,536 ids) and as uint32 otherwise; the sidecar
records dtype, tokenizer name, vocabulary size, token count and each document's [start, end).
Read it back with ``data_tools.tokenfile.open_token_file``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from .errors import DataError, DocumentError
from .reader import find_sources, read_texts
from .tokenfile import DTYPES, TokenFileError, TokenWriter, open_token_file

PIECE_CHARS = 1 << 20  # tokenize long documents in ~1M-character pieces


def split_for_tokenizing(text: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    """Cut ``text`` into pieces of at most ~``piece_chars`` at paragraph (else line, else space)
    breaks; the pieces concatenate back to ``text``."""
    pieces, start = [], 0
    while len(text) - start > piece_chars:
        end = start + piece_chars
        cut = -1
        for sep in ("\n\n", "\n", " "):
            cut = text.rfind(sep, start + piece_chars // 2, end)
            if cut != -1:
                cut += len(sep)
                break
        if cut == -1:
            cut = end
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def iter_documents(
    inputs: list[str], field: str = "text", drop_references: bool = False, errors: list[str] | None = None
) -> Iterator[tuple[str, str]]:
    """(where, text) for every document in ``inputs`` (files, folders, globs; see ``data_tools.reader``);
    document failures go to ``errors`` and are skipped, a malformed record file raises ``RecordError``."""
    for source in find_sources(inputs, ("document", "records")):
        try:
            yield from read_texts(source, field=field, drop_references=drop_references)
        except DocumentError as e:
            if errors is None:
                raise
            errors.append(f"{source.path}: {e}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_tools tokenize",
        description="Tokenize texts into NAME.bin (uint16/uint32 ids) + NAME.bin.json (metadata).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Usage examples:" + __doc__.split("Usage:")[1].split("\n\n")[0],
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE_OR_DIR",
        help="documents (.pdf/.txt/.md, ...), .jsonl/.json record files, folders or globs (see data_tools.reader)",
    )
    p.add_argument(
        "--tokenizer", required=True, help="model dir, tokenizer.json, 'default' (bundled SmolLM2) or hub id"
    )
    p.add_argument(
        "-o", "--output", required=True, help="output token file, e.g. corpus.bin (sidecar: corpus.bin.json)"
    )
    p.add_argument(
        "--field", default="text", help="record field holding the text in .jsonl/.json inputs (default: text)"
    )
    p.add_argument(
        "--eos", action="store_true", help="append the tokenizer's end-of-sequence id to every document"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="force the id dtype (default: uint16 if the vocabulary fits)",
    )
    p.add_argument(
        "--drop-references", action="store_true", help="cut references sections from PDFs and texts"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from .tokenizer import TokenizerLoadError, load_tokenizer

    if not args.output.endswith(".bin"):
        print(
            f"error: -o {args.output}: token files end in .bin (the sidecar is NAME.bin.json)",
            file=sys.stderr,
        )
        return 2
    try:
        tok = load_tokenizer(args.tokenizer)
    except TokenizerLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.eos and tok.eos_id is None:
        print(f"error: --eos: tokenizer {tok.name!r} has no end-of-sequence token", file=sys.stderr)
        return 2
    failures: list[str] = []
    try:
        writer = TokenWriter(args.output, vocab_size=tok.vocab_size, tokenizer=tok.name, dtype=args.dtype)
    except TokenFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar = tqdm(desc="tokenizing", unit=" docs", disable=args.quiet, file=sys.stderr)
    try:
        with writer:
            for _, text in iter_documents(args.inputs, args.field, args.drop_references, failures):
                ids: list[int] = []
                for piece_ids in tok.encode_batch(split_for_tokenizing(text)):
                    ids.extend(piece_ids)
                if args.eos:
                    ids.append(tok.eos_id)
                writer.add(ids)
                bar.update(1)
                bar.set_postfix(tokens=f"{writer.num_tokens:,}")
    except DataError as e:  # a missing path, a malformed record file, an unwritable token file
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar.close()
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    tf = open_token_file(args.output)
    print(
        f"{args.output}: {len(tf):,} tokens in {len(tf.documents or []):,} documents, {tf.dtype} "
        f"(vocabulary {tok.vocab_size:,}, tokenizer {tok.name}); {len(failures)} failed",
        file=sys.stderr,
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
