"""Data tools commands.

Usage:
    python -m data_tools extract paper.pdf -o out/
    python -m data_tools build-longalpaca --docs papers/ --qa qa.jsonl -o longalpaca.json
    python -m data_tools tokenize books/ --tokenizer DIR_OR_ID -o corpus.bin

Run ``python -m data_tools COMMAND -h`` for each command's flags.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "extract": ("data_tools.extract", "clean text (+ page map) from .pdf/.txt/.md files"),
    "build-longalpaca": ("data_tools.longalpaca", "LongAlpaca-style long-QA datasets, mixed and filtered"),
    "tokenize": ("data_tools.tokenize_corpus", "texts to a uint16/uint32 token file with a metadata sidecar"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [__doc__.strip(), "", "Commands:"]
        lines += [f"  {name:<18} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("\n".join(lines), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(
                f"\nerror: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr
            )
            return 2
        return 0 if argv else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
