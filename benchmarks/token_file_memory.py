"""Python-allocated memory of reading token files as pre-training data (``longlora.data.read_pretrain_stream``).

Writes ``--files`` uint16 token files of ``--tokens`` random ids each (in ``--documents`` documents, with
their sidecars) into a temporary folder, then reads them as ``python -m longlora.finetune --data`` does and
reports, with ``tracemalloc``, the memory Python holds after reading and its peak while reading. Token
files stay memory-mapped, so both should be a small fraction of the files' size; an in-memory copy of the
corpus (for example one int64 array) would hold 8 bytes per token.

Usage:
    python benchmarks/token_file_memory.py --output results/token-file-memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB = 49152  # the bundled model's vocabulary: uint16 ids


class _Tokenizer:
    """All ``read_pretrain_stream`` asks of a tokenizer for token files: its size."""

    def __len__(self) -> int:
        return VOCAB


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=2, help="token files (default %(default)s)")
    p.add_argument("--tokens", type=int, default=4_000_000, help="tokens per file (default %(default)s)")
    p.add_argument("--documents", type=int, default=100, help="documents per file (default %(default)s)")
    p.add_argument("--output", type=Path, help="write the result as JSON (with provenance)")
    args = p.parse_args(argv)

    import numpy as np

    from data_tools.tokenfile import write_token_file
    from longlora.data import read_pretrain_stream

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="token-file-memory-") as tmp:
        paths = []
        for i in range(args.files):
            ids = rng.integers(0, VOCAB, size=args.tokens, dtype=np.uint16)
            path = Path(tmp) / f"part{i}.bin"
            write_token_file(path, np.array_split(ids, args.documents), vocab_size=VOCAB, tokenizer="random")
            paths.append(str(path))
        disk = sum(os.path.getsize(p) for p in paths)
        tracemalloc.start()
        stream = read_pretrain_stream(paths, _Tokenizer())
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        tokens = len(stream)
        del stream
    result = {
        "files": args.files,
        "tokens": tokens,
        "disk_bytes": disk,
        "python_bytes_after_reading": held,
        "python_bytes_peak": peak,
        "int64_copy_bytes": 8 * tokens,
    }
    print(
        f"{args.files} uint16 token files, {tokens:,} tokens, {disk / 1e6:.1f} MB on disk: Python holds "
        f"{held / 1e6:.2f} MB after reading (peak {peak / 1e6:.2f} MB, tracemalloc); one int64 copy would be "
        f"{8 * tokens / 1e6:.0f} MB"
    )
    if args.output:
        from longlora.provenance import run_record

        payload = {"kind": "token-file-memory", "provenance": run_record(), **result}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
