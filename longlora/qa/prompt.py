"""The QA prompt around a document: the paper's template (``data_tools.prompts``) in the model's
chat template, with earlier turns of the conversation after the first question.

The document always comes before the question, so a follow-up question shares the whole document
prefix with the previous prompt (the engine reuses its KV cache).

With several documents the template stays the same; what goes in its content slot names where each
piece comes from: every document whole, each after a heading with its name (``document_heading``),
or the retrieved passages, each after a heading with its document and pages (``passage_heading``).
"""

from __future__ import annotations

from collections.abc import Sequence

from data_tools.prompts import PROMPT_STYLES, prompt_prefix, prompt_suffix, wrap_plain

from .reports import page_ranges

_CONTENT = "\u0000LONGLORA_CONTENT\u0000"  # placeholder, split out of the rendered chat template


def document_heading(name: str, first: bool) -> str:
    """The line before a whole document in a prompt of several: ``[paper.pdf]``."""
    return ("" if first else "\n\n") + f"[{name}]\n"


def passage_heading(name: str, pages: Sequence[int], first: bool) -> str:
    """The line before a retrieved passage in a prompt of several documents:
    ``[paper.pdf, pages 3-4]`` (``[notes.txt]`` for a document without pages)."""
    where = f"{name}, {page_ranges(pages)}" if pages else name
    return ("" if first else "\n\n") + f"[{where}]\n"


def normalize_history(history) -> list[tuple[str, str]]:
    """(question, answer) pairs from pairs or chat messages ({"role", "content"} dicts)."""
    if not history:
        return []
    pairs: list[tuple[str, str]] = []
    if isinstance(history[0], dict):
        pending = None
        for message in history:
            role, content = message.get("role"), str(message.get("content") or "")
            if role == "user":
                pending = content
            elif role == "assistant" and pending is not None:
                pairs.append((pending, content))
                pending = None
        return pairs
    return [(str(q), str(a)) for q, a in history]


def first_turn(question: str, material_type: str, style: str) -> str:
    """The first user turn with the content placeholder where the document goes."""
    return prompt_prefix(material_type, style) + _CONTENT + prompt_suffix(question, style)


def prompt_parts(
    tokenizer, question: str, material_type: str = "paper", history=None, style: str = "paper"
) -> tuple[str, str]:
    """(head, tail): the prompt text before and after the document content.

    The first user turn holds the template (document, then the first question); later turns of
    ``history`` are plain chat turns, and the current question is the last user turn. ``style``
    "paper" is the paper's B.6 template; "brief" is a wording small models follow better (see
    ``PROMPT_STYLES``), still document first. Without a chat template the turns use the original
    SFT wrapping (``[INST]...[/INST]``), as in training.
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")
    pairs = normalize_history(history)
    questions = [q for q, _ in pairs] + [question]
    first = first_turn(questions[0], material_type, style)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": first}]
        for (_, answer), q in zip(pairs, questions[1:]):
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": q}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = wrap_plain(first)
        for (_, answer), q in zip(pairs, questions[1:]):
            text += f" {answer}\n{wrap_plain(q.strip())}"
    head, sep, tail = text.partition(_CONTENT)
    if not sep:
        raise ValueError(
            "the chat template dropped the document; use a model whose template keeps user content"
        )
    return head, tail
