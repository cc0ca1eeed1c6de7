"""The LongLoRA prompt templates (paper appendix B.6), shared by dataset building, SFT and the QA engine.

The long-QA prompt puts the whole material before the question, so a model (and a KV cache) sees
the document first and the question last:

    Below is {material_type}. Memorize the content and answer my question after the {material_type}.
    {material_content}
    Now the material ends. {question}

The first slot takes the article ("Below is a paper."), the second the bare noun ("after the paper."),
as in the original LongLoRA inference code.
"""

from __future__ import annotations

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
PROMPT_SUFFIX = "\nNow the material ends. {question}"

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


def prompt_prefix(material_type: str) -> str:
    """The part of the prompt before the document content."""
    return PROMPT_PREFIX.format(
        material_phrase=material_phrase(material_type), material_noun=MATERIAL_NOUNS[material_type]
    )


def prompt_suffix(question: str) -> str:
    """The part of the prompt after the document content."""
    return PROMPT_SUFFIX.format(question=question.strip())


def build_instruction(content: str, question: str, material_type: str = "paper") -> str:
    """The paper's long-QA prompt (B.6) with the material and the question filled in."""
    return prompt_prefix(material_type) + content + prompt_suffix(question)


def template_question(key: str, material_type: str = "paper") -> str:
    """One of the paper's question templates, worded for the material type."""
    if key not in QUESTION_TEMPLATES:
        raise ValueError(f"unknown question template {key!r}; choose one of {sorted(QUESTION_TEMPLATES)}")
    material_phrase(material_type)
    return QUESTION_TEMPLATES[key].format(short_type=_SHORT[material_type])
