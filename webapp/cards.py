"""Markdown the app shows about a document and about the model: the card and the status line."""

from __future__ import annotations

from data_tools.prompts import MATERIAL_TYPES

EMPTY_CARD = "*No document yet.* Upload a PDF, TXT or MD file to start."
_HOW = {
    "retrieve": "each question gets the passages most relevant to it",
    "truncate-middle": "the beginning and the end are kept",
    "truncate-end": "the beginning is kept",
}


def card_markdown(card) -> str:
    """A ``longlora.qa.DocumentCard`` as Markdown: size, material type, how it fits, and the reader's
    warning about pages the model cannot read."""
    size = f"{card.pages} pages · " if card.pages else ""
    head = (
        f"**{card.file_name}** · {card.kind.upper()} · {size}{card.words:,} words · "
        f"{card.tokens:,} tokens · read as {MATERIAL_TYPES.get(card.material_type, card.material_type)}"
    )
    if card.fits:
        fit = f"Fits whole in the {card.budget_tokens:,}-token document budget (context {card.context_length:,})."
    else:
        fit = (
            f"Longer than the {card.budget_tokens:,}-token document budget (context "
            f"{card.context_length:,}): {_HOW[card.strategy]} (`{card.strategy}`)."
        )
    return f"{head}\n\n{fit}" + warning_markdown(card.warning)


def warning_markdown(warning: str) -> str:
    """The reader's warning about pages the model cannot read (or read by OCR); empty when none."""
    return f"\n\n**Warning:** {warning}." if warning else ""


def pending_card_markdown(document) -> str:
    """Card for a document whose tokens cannot be counted yet (the model is still loading)."""
    pages = document.num_pages
    lines = [
        f"### {document.name}",
        f"- **Type:** {document.kind}" + (f", {pages} pages" if pages else ""),
        f"- **Words:** {document.word_count:,}",
        "- **Tokens:** counted when the model is ready...",
    ]
    return "\n".join(lines) + warning_markdown(document.warning)


def status_markdown(engine) -> str:
    """The status line: loading / converting, ready, or the load error."""
    message = getattr(engine, "status_message", "") or ""
    if engine.state == "ready":
        spec = getattr(engine, "model_spec", None)
        name = "the bundled SmolLM2-135M-Instruct" if spec in (None, "default") else f"`{spec}`"
        context = getattr(engine, "context_length", 0)
        return f"**Model ready:** {name}" + (f", context {context:,} tokens." if context else ".")
    if engine.state == "error":
        return (
            f"**The model failed to load:** {message} "
            "Restart the app with a different `--model` (a local folder, a merged model or an adapter)."
        )
    return f"**Loading the model...** {message or 'Please wait.'}"


def sources_markdown(sources) -> str:
    """The passages an answer was based on (``longlora.qa.Source``), with their pages."""
    if not sources:
        return ""
    lines = []
    for i, source in enumerate(sources, start=1):
        where = ("p. " + ", ".join(str(p) for p in source.pages)) if source.pages else "text"
        snippet = " ".join(source.text.split())
        if len(snippet) > 300:
            snippet = snippet[:297] + "..."
        lines.append(f"{i}. ({where}) {snippet}")
    return "\n".join(lines)
