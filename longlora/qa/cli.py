"""``python -m longlora.qa``: ask questions about a document from the command line.

Answers stream to stdout, fit reports to stderr; with ``--json`` each answer is printed as one JSON
object per line instead: ``{"question", "answer", "sources": [{"text", "pages", "score", "document"}],
"fit"}`` (``pages`` 1-based for PDFs, empty for plain text; ``document`` the name of the document).
Several ``--doc`` flags ask about the documents together (up to 20): every passage is ranked against
the question across all of them, and each source names its document.

Usage (CPU, bundled SmolLM2-135M-Instruct)::

    python -m longlora.qa --doc paper.pdf --question "Who wrote this paper?"
    python -m longlora.qa --doc book.txt --question "Where does Lydia elope to?" --question "With whom?"
    python -m longlora.qa --doc paper.pdf --question "What is new?" --json
    python -m longlora.qa --doc a.pdf --doc b.pdf --question "Which paper uses BM25?" --json
    python -m longlora.qa --doc paper.pdf --model ./merged-32k --strategy truncate-middle --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from data_tools.prompts import MATERIAL_TYPES
from longlora.model_flags import add_model_arguments
from longlora.retrieval import STRATEGIES

from .engine import MIN_DOCUMENT_BUDGET, QAEngine
from .session import MAX_DOCUMENTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m longlora.qa",
        description="Ask questions about a PDF/TXT/MD document; answers stream to stdout, fit reports to stderr.",
    )
    parser.add_argument(
        "--doc",
        action="append",
        required=True,
        help=f"the document (.pdf, .txt or .md); repeat to ask about several together (up to {MAX_DOCUMENTS})",
    )
    parser.add_argument(
        "--question",
        action="append",
        required=True,
        help="a question (repeat for follow-ups; they reuse the document's KV cache)",
    )
    parser.add_argument(
        "--strategy",
        default="retrieve",
        choices=STRATEGIES,
        help="what to keep when the document does not fit (default: retrieve)",
    )
    parser.add_argument(
        "--material-type",
        default=None,
        choices=sorted(MATERIAL_TYPES),
        help="how the prompt names the document (default: guessed)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    parser.add_argument(
        "--document-budget",
        type=int,
        default=None,
        help="most document tokens per prompt (default: what the model uses well)",
    )
    parser.add_argument(
        "--history", action="store_true", help="send earlier questions and answers along with each follow-up"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per question (question, answer, sources, fit) instead of streaming text",
    )
    add_model_arguments(parser)  # --model, --adapter, --context-length, --dtype, --device, ... (shared)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if any(not q.strip() for q in args.question):
        parser.error("a --question is empty; type a question about the document")
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.document_budget is not None and args.document_budget < MIN_DOCUMENT_BUDGET:
        parser.error(f"--document-budget must be at least {MIN_DOCUMENT_BUDGET}, got {args.document_budget}")
    if len(args.doc) > MAX_DOCUMENTS:
        parser.error(
            f"at most {MAX_DOCUMENTS} --doc flags, got {len(args.doc)}; ask about fewer documents at once"
        )

    try:
        engine = QAEngine.from_args(args, max_new_tokens=args.max_new_tokens)
        if args.document_budget is not None:
            engine.profile = dataclasses.replace(
                engine.profile,
                document_budget=args.document_budget,
                chosen_by=f"--document-budget {args.document_budget} given on the command line.",
            )
        session = engine.open_documents(args.doc, material_type=args.material_type)
        card = engine.card(session, args.strategy)
    except ValueError as err:  # ModelLoadError, DocumentError and prompt-size errors
        print(f"error: {err}", file=sys.stderr)
        return 2
    for each in card.documents:  # several documents: each one's size first
        print(f"[{each.file_name}: {each.tokens:,} tokens{_warning(each)}]", file=sys.stderr)
    print(
        f"[{card.file_name}: {card.tokens:,} tokens, budget {card.budget_tokens:,}, "
        f"{'fits whole' if card.fits else args.strategy}{'' if card.documents else _warning(card)}]",
        file=sys.stderr,
    )
    history: list[tuple[str, str]] = []
    for question in args.question:
        if len(args.question) > 1 and not args.json:
            print(f"\nQ: {question}\nA: ", end="", flush=True)
        try:
            final = None
            for update in engine.ask(
                session,
                question,
                history=history if args.history else None,
                strategy=args.strategy,
                temperature=args.temperature,
                top_p=args.top_p,
            ):
                if not args.json:
                    if update.revised:  # another reading's answer is better supported: it replaces this one
                        print(f"\n[revised after comparing {update.fit.readings} readings]\n", end="")
                    print(update.delta, end="", flush=True)
                final = update
        except ValueError as err:
            print(f"\nerror: {err}", file=sys.stderr)
            return 2
        fit = final.fit
        if args.json:
            print(json.dumps(answer_json(question, final), ensure_ascii=False), flush=True)
        else:
            print(flush=True)
        print(
            f"[{fit.summary()} Prompt {fit.prompt_tokens:,} tokens, {fit.reused_tokens:,} from cache; "
            f"first token after {final.first_token_s or 0:.2f} s]",
            file=sys.stderr,
        )
        history.append((question, final.text))
    return 0


def _warning(card) -> str:
    return f"; warning: {card.warning}" if card.warning else ""  # pages the model cannot read


def answer_json(question: str, final) -> dict:
    """The ``--json`` record of one answer (its last ``AnswerUpdate``)."""
    return {
        "question": question,
        "answer": final.text,
        "sources": [source.to_dict() for source in final.sources],
        "fit": final.fit.to_dict(),
    }
