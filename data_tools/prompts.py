"""The LongLoRA prompt templates (paper appendix B.6), shared by dataset building, SFT and the QA engine.

The long-QA prompt puts the whole material before the question, so a model (and a KV cache) sees
the document first and the question last:

    Below is {material_type}. Memorize the content and answer my question after the {material_type}.
    {material_content}
    Now the material ends. {question}

The first slot takes the article ("Below is a paper."), the second the bare noun ("after the paper."),
as in the original LongLoRA inference code. Without a chat template the user turn is wrapped as in
the original SFT code, ``[INST]{instruction}[/INST]`` (:func:`wrap_plain`).

This module is the one home of the prompt and of the material-type guess: the LongAlpaca builder,
SFT rendering (``longlora.training.data``) and the QA engine all use it, so a document gets the same prompt in
training and in serving.
"""

from __future__ import annotations

import re

# Short names users pick (CLI flags, the app's radio buttons) -> the noun phrase the paper's template uses.
MATERIAL_TYPES: dict[str, str] = {
    "paper": "a paper",
    "book": "a book",
    "other": "some content",
}

# ... and the bare noun the second slot of the template uses ("after the paper").
MATERIAL_NOUNS: dict[str, str] = {
    "paper": "paper",
    "book": "book",
    "other": "content",
}

PROMPT_PREFIX = (
    "Below is {material_phrase}. Memorize the content and answer my question after the {material_noun}.\n"
)
MATERIAL_END = "Now the material ends."
PROMPT_SUFFIX = "\n" + MATERIAL_END + " {question}"
# Prompt wordings around the document, by style: "paper" is the paper's B.6 template above; "brief"
# keeps its shape (material first, question last, so the document prefix is cacheable) in words small
# models follow without echoing "Now the material ends.". A model's profile (data_tools.profiles) picks
# one. Each is (prefix, suffix): the prefix formats {material_phrase} and {material_noun}, the suffix
# {question}.
PROMPT_STYLES: dict[str, tuple[str, str]] = {
    "paper": (PROMPT_PREFIX, PROMPT_SUFFIX),
    "brief": (
        "Read {material_phrase} below and answer the question after it.\n\n",
        "\n\nQuestion: {question}\nAnswer in one short sentence.",
    ),
    # "brief" plus leave to say the answer is not there: without it a small model names whatever the
    # passages hold when asked about something the document never mentions (benchmarks/qa_accuracy.py,
    # the development set's "absent" questions).
    "grounded": (
        "Read {material_phrase} below and answer the question after it. If the {material_noun} does not "
        "give the answer, say that it does not.\n\n",
        "\n\nQuestion: {question}\nAnswer in one short sentence.",
    ),
}
# The original LongLoRA SFT wrapping, used when the tokenizer has no chat template.
PLAIN_TEMPLATE = ("[INST]", "[/INST]")

# Above this many words a text is "a book" (a long PDF only when it also has chapters).
BOOK_WORDS = 20_000
_ABSTRACT = re.compile(r"\babstract\b", re.IGNORECASE)
_REFERENCES = re.compile(r"\b(references|bibliography)\b", re.IGNORECASE)
_CHAPTER = re.compile(r"\bchapter\b", re.IGNORECASE)

# The paper's typical questions (B.6), keyed by a short id.
QUESTION_TEMPLATES: dict[str, str] = {
    "summary": "Please summarize the {short_type} in one paragraph.",
    "contributions": "What are the main contributions and novelties of this {short_type}?",
    "limitations": "What are the limitations of this {short_type}?",
    "characters": "Please describe the relationships among the main characters in the {short_type}.",
    "importance": "Why is the main character important in the {short_type}?",
}

# Which question templates make sense for which material type.
QUESTIONS_FOR: dict[str, tuple[str, ...]] = {
    "paper": ("summary", "contributions", "limitations"),
    "book": ("summary", "characters", "importance"),
    "other": ("summary",),
}

_SHORT = {"paper": "paper", "book": "book", "other": "material"}


def material_phrase(material_type: str) -> str:
    """'paper' -> 'a paper'. Unknown short names are rejected with the valid choices."""
    try:
        return MATERIAL_TYPES[material_type]
    except KeyError:
        raise ValueError(
            f"unknown material type {material_type!r}; choose one of {sorted(MATERIAL_TYPES)}"
        ) from None


def _style(style: str) -> tuple[str, str]:
    try:
        return PROMPT_STYLES[style]
    except KeyError:
        raise ValueError(
            f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}"
        ) from None


def prompt_prefix(material_type: str, style: str = "paper") -> str:
    """The part of the prompt before the document content."""
    return _style(style)[0].format(
        material_phrase=material_phrase(material_type), material_noun=MATERIAL_NOUNS[material_type]
    )


def prompt_suffix(question: str, style: str = "paper") -> str:
    """The part of the prompt after the document content."""
    return _style(style)[1].format(question=question.strip())


def build_instruction(content: str, question: str, material_type: str = "paper") -> str:
    """The paper's long-QA prompt (B.6) with the material and the question filled in."""
    return prompt_prefix(material_type) + content + prompt_suffix(question)


def template_question(key: str, material_type: str = "paper") -> str:
    """One of the paper's question templates, worded for the material type."""
    if key not in QUESTION_TEMPLATES:
        raise ValueError(f"unknown question template {key!r}; choose one of {sorted(QUESTION_TEMPLATES)}")
    material_phrase(material_type)
    return QUESTION_TEMPLATES[key].format(short_type=_SHORT[material_type])


def wrap_plain(user: str) -> str:
    """A user turn in the original SFT wrapping (for tokenizers without a chat template)."""
    start, end = PLAIN_TEMPLATE
    return f"{start}{user}{end}"


def guess_material_type(document) -> str:
    """The material type of a ``data_tools.Document``: 'paper', 'book' or 'other'.

    One rule for training data and serving: a PDF is a paper unless it is long (> ``BOOK_WORDS``
    words) and has chapters; any other long text is a book; a shorter text with an abstract and a
    reference list is a paper; everything else is 'other'.
    """
    text = document.text
    long = document.word_count > BOOK_WORDS
    if document.kind == "pdf":
        return "book" if long and _CHAPTER.search(text[:200_000]) else "paper"
    if long:
        return "book"
    if _ABSTRACT.search(text[:20_000]) and _REFERENCES.search(text[-40_000:]):
        return "paper"
    return "other"
