"""Markdown the app shows about the documents and about the model: the card and the status line."""

from __future__ import annotations

from data_tools.prompts import MATERIAL_TYPES

EMPTY_CARD = "*No document yet.* Upload a PDF, TXT or MD file to start."
_MODE = {"retrieve": "retrieval", "truncate-middle": "truncation", "truncate-end": "truncation"}
_HOW = {
    "retrieve": "each question gets the passages most relevant to it",
    "truncate-middle": "the beginning and the end are kept",
    "truncate-end": "the beginning is kept",
}


def card_markdown(card) -> str:
    """A ``longlora.qa.DocumentCard`` as Markdown: size, material type, its reading mode (whole document,
    retrieval or truncation) and what chose that mode for the model, and the reader's warning about pages
    the model cannot read (for several documents, ``documents_markdown``)."""
    if card.documents:
        return documents_markdown(card)
    size = f"{card.pages} pages · " if card.pages else ""
    head = (
        f"**{card.file_name}** · {card.kind.upper()} · {size}{card.words:,} words · "
        f"{card.tokens:,} tokens · read as {MATERIAL_TYPES.get(card.material_type, card.material_type)}"
    )
    mode = _mode(card)
    if mode == "whole":
        fit = (
            f"**Mode: whole document.** Fits whole in the {card.budget_tokens:,}-token document budget "
            f"(context {card.context_length:,})."
        )
    else:
        fit = (
            f"**Mode: {mode}.** Longer than the {card.budget_tokens:,}-token document budget (context "
            f"{card.context_length:,}): {_HOW[card.strategy]} (`{card.strategy}`)."
        )
    return f"{head}\n\n{fit}" + _reason(card) + warning_markdown(card.warning)


def documents_markdown(card) -> str:
    """The card of a session of several documents: a row per document (pages, tokens, whether it fits
    the budget alone), then how the session is read: whole, or by retrieval across the documents, and
    what chose that mode for the model."""
    material = MATERIAL_TYPES.get(card.material_type, card.material_type)
    rows = [
        f"| {each.file_name} | {each.pages or '-'} | {each.tokens:,} | {'yes' if each.fits else 'no'} |"
        for each in card.documents
    ]
    table = "\n".join(["| document | pages | tokens | fits alone |", "| --- | --- | --- | --- |", *rows])
    head = f"**{len(card.documents)} documents** · {card.tokens:,} tokens together · read as {material}"
    budget = f"{card.budget_tokens:,}-token document budget (context {card.context_length:,})"
    if _mode(card) == "whole":
        mode = (
            f"**Mode: whole documents.** All of them fit together in the {budget}: the model reads every one."
        )
    else:
        mode = (
            f"**Mode: {_mode(card)}.** Together they are longer than the {budget}: "
            f"{_HOW[card.strategy]}, from all the documents (`{card.strategy}`)."
        )
    warnings = "".join(
        warning_markdown(f"{each.file_name}: {each.warning}") for each in card.documents if each.warning
    )
    return f"{head}\n\n{table}\n\n{mode}{_reason(card)}{warnings}"


def _mode(card) -> str:
    """The card's reading mode: "whole", "retrieval" or "truncation" (worked out from whether it fits and
    the strategy when the engine did not say)."""
    return card.mode or ("whole" if card.fits else _MODE[card.strategy])


def _reason(card) -> str:
    """What chose the reading mode for this model (``ModelProfile.chosen_by``); empty when not said."""
    return f"\n\n{card.mode_reason}" if card.mode_reason else ""


def pending_documents_markdown(documents) -> str:
    """Card for several documents whose tokens cannot be counted yet (the model is still loading)."""
    if len(documents) == 1:
        return pending_card_markdown(documents[0])
    lines = [f"### {len(documents)} documents"]
    for document in documents:
        pages = f", {document.num_pages} pages" if document.num_pages else ""
        lines.append(f"- **{document.name}** ({document.kind}{pages}, {document.word_count:,} words)")
    lines.append("- **Tokens:** counted when the model is ready...")
    warnings = [warning_markdown(f"{d.name}: {d.warning}") for d in documents if d.warning]
    return "\n".join(lines) + "".join(warnings)


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


def sources_markdown(sources, name_documents: bool = False) -> str:
    """The passages an answer was based on (``longlora.qa.Source``), with their pages (and, from a
    session of several documents, the document each comes from)."""
    if not sources:
        return ""
    lines = []
    for i, source in enumerate(sources, start=1):
        where = ("p. " + ", ".join(str(p) for p in source.pages)) if source.pages else "text"
        if name_documents:
            where = f"{source.document}, {where}" if source.pages else source.document
        snippet = " ".join(source.text.split())
        if len(snippet) > 300:
            snippet = snippet[:297] + "..."
        lines.append(f"{i}. ({where}) {snippet}")
    return "\n".join(lines)
