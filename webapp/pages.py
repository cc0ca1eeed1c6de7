"""The page view under the chat: pick a page that the last answer's sources cite and see it.

The image comes from PDFium (``pypdfium2``), the library that reads the text, rendering the
session's private copy of the PDF (``webapp.files.PdfCopy``), so what the user sees is the page the
passages were taken from. ``/page`` serves any page of the document to ``gradio_client``, and
``/page_of`` any page of one of the session's documents, named as the sources name it.
"""

from __future__ import annotations

import os

import gradio as gr

from data_tools.errors import DocumentError
from data_tools.pdf import render_pdf_page

from .chat import ChatState, last_sources
from .layout import PAGE_PICK_HELP
from .server import LIGHT

# 1.5 x 72 dpi = 108 dpi: body text is readable in the page panel and a letter page is ~920 x 1190 px.
RENDER_SCALE = 1.5


def cited_pages(sources, documents: list[str] | None = None) -> list[tuple[str, int | str]]:
    """Dropdown choices for the pages that ``sources`` (``longlora.qa.Source``) come from.

    Each page once, in page order, labelled with the numbers of the sources under the answer that
    cite it: ``[("Page 2 (source 1)", 2), ("Page 5 (sources 1, 3)", 5)]``. With ``documents`` (the
    names of a session's several documents, in order) each page also names its document and its
    value says which: ``[("a.pdf, page 2 (source 1)", "1:2")]`` (document 1, page 2).
    """
    cited: dict[tuple[int, int], list[int]] = {}
    for number, source in enumerate(sources, start=1):
        k = documents.index(source.document) + 1 if documents and source.document in documents else 0
        if documents and not k:
            continue  # a document no longer in the session
        for page in source.pages:
            cited.setdefault((k, page), []).append(number)
    choices: list[tuple[str, int | str]] = []
    for (k, page), numbers in sorted(cited.items()):
        label = f"source{'s' * (len(numbers) > 1)} {', '.join(map(str, numbers))}"
        if documents:
            choices.append((f"{documents[k - 1]}, page {page} ({label})", f"{k}:{page}"))
        else:
            choices.append((f"Page {page} ({label})", page))
    return choices


def check_page(document, pdf, page) -> int:
    """``page`` as a 1-based page number of ``document``; DocumentError saying what to do otherwise."""
    if document is None:
        raise DocumentError("Upload a PDF first, ask about it, then open a page its sources cite.")
    if document.kind != "pdf":
        raise DocumentError(
            f"{document.name} is a plain-text document: it has no pages to show. The sources under "
            "each answer are the text the model read."
        )
    if pdf is None or not os.path.exists(pdf.path):
        raise DocumentError(
            f"{document.name} is no longer kept by the app; upload it again to see its pages."
        )
    count = document.num_pages
    try:
        number = int(page)
        whole = number == float(page)
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise DocumentError(f"Pick a page number from 1 to {count}; got {page!r}.")
    if not 1 <= number <= count:
        raise DocumentError(
            f"{document.name} has {count} page{'s' * (count != 1)}; there is no page {number}. "
            f"Pick a page from 1 to {count}."
        )
    return number


# --------------------------------------------------------------------------------------------------
# Handlers and their wiring (``app.build_demo`` calls ``wire_pages`` and chains ``refresh_pages``)
# --------------------------------------------------------------------------------------------------


def page_picker(state: ChatState | None):
    """The cited-page dropdown for the last finished answer; the page image hides when there is none.

    Returns (dropdown update, image update).
    """
    documents = state.documents if state is not None else []
    answered = state is not None and any(turn.done for turn in state.turns)
    choices = []
    if documents and all(document.kind != "pdf" for document in documents):
        help_key = "text"
    else:
        names = [document.name for document in documents] if len(documents) > 1 else None
        choices = cited_pages(last_sources(state), names)
        help_key = "pages" if choices else "uncited" if answered else "none"
    picker = gr.update(choices=choices, value=None, interactive=bool(choices), info=PAGE_PICK_HELP[help_key])
    return picker, (gr.skip() if answered else gr.update(value=None, visible=False))


def _the_pdf(state: ChatState | None):
    """The document ``/page`` shows: the session's document, or its one PDF among several."""
    documents = state.documents if state is not None else []
    if len(documents) <= 1:
        return documents[0] if documents else None
    pdfs = [document for document in documents if document.kind == "pdf"]
    if len(pdfs) != 1:
        names = ", ".join(document.name for document in documents)
        raise DocumentError(
            f"This session holds {len(documents)} documents ({names}); say whose page to show with "
            "/page_of (document, page), the document named as the sources name it."
        )
    return pdfs[0]


def _named(state: ChatState | None, name) -> object:
    documents = state.documents if state is not None else []
    for document in documents:
        if document.name == name:
            return document
    if not documents:
        raise DocumentError("Upload a PDF first, ask about it, then open a page its sources cite.")
    names = ", ".join(document.name for document in documents)
    raise DocumentError(f"No document named {name!r} in this session; its documents: {names}.")


def _render(state: ChatState | None, find, page):
    """(image, document, page number): page ``page`` of the document ``find(state)`` picks."""
    try:
        document = find(state)
        pdf = state.pdf_of(document) if state is not None else None
        number = check_page(document, pdf, page)
    except DocumentError as exc:  # the user's choice, not a failure: no server-side traceback
        raise gr.Error(str(exc), title="Cannot show this page", print_exception=False) from exc
    return render_pdf_page(pdf.path, number, scale=RENDER_SCALE), document, number


def page_image(page, state: ChatState | None):
    """API: page ``page`` (1-based) of the uploaded PDF as an image (e.g. a page a source cites).
    A session of several documents shows its one PDF; with several PDFs, use ``page_of``."""
    return _render(state, _the_pdf, page)[0]


def page_of(document: str, page, state: ChatState | None):
    """API: page ``page`` (1-based) of the session's document named ``document`` (as sources name it)."""
    return _render(state, lambda s: _named(s, document), page)[0]


def show_page(choice, state: ChatState | None):
    """The page picked under the chat, shown with its number (and whether the model can read it).

    ``choice``: a page number, or "k:page" for page ``page`` of the session's k-th document."""
    documents = state.documents if state is not None else []
    k, page = "1", choice
    if isinstance(choice, str) and ":" in choice:
        k, _, page = choice.partition(":")
    pick = documents[int(k) - 1] if k.isdigit() and 1 <= int(k) <= len(documents) else None
    image, document, number = _render(state, lambda s: pick, page)
    label = f"{document.name}: page {number} of {document.num_pages}"
    if number in document.garbled_pages:
        label += " (its text is not readable: the model does not see it)"
    return gr.update(value=image, label=label, visible=True)


def refresh_pages(ui, state: gr.State, name: str) -> dict:
    """Event arguments that refresh the cited-page dropdown (chained after answers and resets)."""
    return dict(
        fn=page_picker,
        inputs=[state],
        outputs=[ui.page_pick, ui.page_image],
        api_name=f"{name}_pages",
        api_visibility="private",
        **LIGHT,
    )


def wire_pages(ui, state: gr.State) -> None:
    """A cited page picked in the page, and any page from the API (``/page``, ``/page_of``), rendered
    as an image."""
    # in the uploads' group: PDFium must not render while a PDF is being read in another thread
    render = dict(outputs=[ui.page_image], concurrency_id="document")
    ui.page_pick.input(
        show_page, [ui.page_pick, state], api_name="page_pick", api_visibility="private", **render
    )
    gr.on(triggers=[], fn=page_image, inputs=[ui.page_number, state], api_name="page", **render)
    gr.on(
        triggers=[],
        fn=page_of,
        inputs=[ui.page_document, ui.page_number, state],
        api_name="page_of",
        **render,
    )
