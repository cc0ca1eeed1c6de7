"""Haystack text for the RULER-style tasks: sentences and paragraphs of local documents, a word
vocabulary, and reading-comprehension records, with their token ids cached per tokenizer.

Documents are read through ``data_tools.load_document`` (.txt, .md, PDF text extraction), so any
book, paper or folder of them can serve as the haystack (``--haystack``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from data_tools.errors import DataError


def split_sentences(text: str) -> list[str]:
    """Whitespace-normalised sentences (a sentence ends at . ! ? followed by a capital or quote)."""
    flat = " ".join(text.split())
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", flat) if s]


def split_paragraphs(text: str, min_words: int = 20, max_words: int = 300) -> list[str]:
    """Whitespace-normalised paragraphs (separated by a blank line) of ``min_words`` to ``max_words``
    words: the documents of the ``qa`` haystack (chapter headings and one-line replies are left out)."""
    paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text))
    return [p for p in paragraphs if min_words <= len(p.split()) <= max_words]


def read_qa_records(path: str | Path) -> list[dict]:
    """Reading-comprehension records ``{"passage", "question", "answers"}`` from a JSONL file.

    Two formats: the project's ``{"question", "answers", "paragraph", "book", "offset"}`` records
    (``data/ruler/austen-qa.jsonl``: each answer stated verbatim in its paragraph of a book; a record
    whose answer is not in its paragraph is an error), and BIG-bench's short-QA records
    ``{"input": "Passage: ... Question: ...", "output", "all_targets"}`` (the sample in the fixtures),
    of which those whose answer is not a span of the passage are skipped. Either way every gold
    answer is in its passage."""
    out = []
    path = Path(path)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not JSON ({err}); give a JSONL file of QA records") from None
        if "paragraph" in rec:
            passage = " ".join(str(rec["paragraph"]).split())
            answers = [str(a) for a in rec.get("answers") or []]
            missing = [a for a in answers if a not in passage]
            if not rec.get("question") or not answers or missing:
                raise DataError(
                    f"{path}:{number}: a QA record needs a question and answers stated verbatim in its "
                    f"paragraph (not found: {missing or 'no answers'})"
                )
            out.append(
                {
                    "passage": passage,
                    "question": str(rec["question"]).strip(),
                    "answers": answers,
                    "id": str(rec.get("id", number)),
                }
            )
            continue
        text = str(rec.get("input", ""))
        if not text.startswith("Passage:") or "\nQuestion:" not in text:
            continue
        passage, question = text[len("Passage:") :].split("\nQuestion:", 1)
        passage = " ".join(passage.split())
        targets = rec.get("all_targets") or [rec.get("output", "")]
        answers = [a for a in (str(t).strip().rstrip(".").strip() for t in targets) if a and a in passage]
        if answers:
            out.append(
                {"passage": passage, "question": question.strip(), "answers": answers, "id": str(number)}
            )
    return out


class Haystack:
    """Local text turned into filler: sentences and paragraphs of real documents, a vocabulary for
    keys and word lists, and QA records. Token ids are computed once per tokenizer."""

    def __init__(
        self, texts: list[str], qa_records: list[dict] | None = None, sources: list[str] | None = None
    ):
        self.sentences = [s for t in texts for s in split_sentences(t)]
        if len(self.sentences) < 50:
            raise DataError(
                f"the haystack text holds only {len(self.sentences)} sentences; give longer documents "
                "with --haystack (books, PDFs, a folder of them)"
            )
        words = {w.lower() for t in texts for w in re.findall(r"\b[A-Za-z]{4,10}\b", t)}
        self.vocabulary = sorted(words)
        if len(self.vocabulary) < 200:
            raise DataError(
                f"the haystack text has only {len(self.vocabulary)} distinct words; give longer "
                "documents with --haystack"
            )
        self.paragraphs = [p for t in texts for p in split_paragraphs(t)]
        if len(self.paragraphs) < 20:  # text without blank lines (some PDFs): paragraphs of 8 sentences
            self.paragraphs = [" ".join(self.sentences[i : i + 8]) for i in range(0, len(self.sentences), 8)]
        self.qa_records = list(qa_records or [])
        self.sources = list(sources or [])
        self._ids: dict[tuple, list[list[int]]] = {}

    @classmethod
    def from_paths(cls, paths: list[str | Path], qa_path: str | Path | None = None) -> Haystack:
        """Read .txt / .md / .pdf files (folders recursively) through ``data_tools.load_document``."""
        from data_tools import load_document
        from longlora.eval.tokens import expand_paths

        files = [p for p in expand_paths(paths) if p.suffix.lower() in (".txt", ".md", ".pdf")]
        if not files:
            raise DataError(
                f"no .txt, .md or .pdf files in {', '.join(map(str, paths))}; pass documents with --haystack"
            )
        texts = [load_document(p).text for p in files]
        qa = read_qa_records(qa_path) if qa_path else []
        return cls(texts, qa, [str(p) for p in files])

    def sentence_ids(self, tokenizer) -> list[list[int]]:
        """Each sentence encoded with a leading space, so blocks join as they would in running text."""
        key = ("sentences", id(tokenizer))
        if key not in self._ids:
            self._ids[key] = encode_all(tokenizer, [" " + s for s in self.sentences])
        return self._ids[key]


def encode_all(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(x) for x in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]


def encode(tokenizer, text: str) -> list[int]:
    return encode_all(tokenizer, [text])[0] if text else []
