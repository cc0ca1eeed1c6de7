"""The page view under the chat: pick a page that the last answer's sources cite and see it.

The image comes from PDFium (``pypdfium2``), the library that reads the text, rendering the
session's private copy of the PDF (``webapp.files.PdfCopy``), so what the user sees is the page the
passages were taken from. ``/page`` serves any page of the document to ``gradio_client``.
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


def cited_pages(sources) -> list[tuple[str, int]]:
    """Dropdown choices for the pages that ``sources`` (``longlora.qa.Source``) come from.

    Each page once, in page order, labelled with the numbers of the sources under the answer that
    cite it: ``[("Page 2 (source 1)", 2), ("Page 5 (sources 1, 3)", 5)]``.
    """
    cited: dict[int, list[int]] = {}
    for number, source in enumerate(sources, start=1):
        for page in source.pages:
            cited.setdefault(page, []).append(number)
    return [
        (f"Page {page} (source{'s' * (len(numbers) > 1)} {', '.join(map(str, numbers))})", page)
        for page, numbers in sorted(cited.items())
    ]


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
    document = state.document if state is not None else None
    answered = state is not None and any(turn.done for turn in state.turns)
    choices = []
    if document is not None and document.kind != "pdf":
        help_key = "text"
    else:
        choices = cited_pages(last_sources(state))
        help_key = "pages" if choices else "uncited" if answered else "none"
    picker = gr.update(choices=choices, value=None, interactive=bool(choices), info=PAGE_PICK_HELP[help_key])
    return picker, (gr.skip() if answered else gr.update(value=None, visible=False))


def page_image(page, state: ChatState | None):
    """API: page ``page`` (1-based) of the uploaded PDF as an image (e.g. a page a source cites)."""
    document = state.document if state is not None else None
    try:
        number = check_page(document, state.pdf if state is not None else None, page)
    except DocumentError as exc:  # the user's choice, not a failure: no server-side traceback
        raise gr.Error(str(exc), title="Cannot show this page", print_exception=False) from exc
    return render_pdf_page(state.pdf.path, number, scale=RENDER_SCALE)


def show_page(page, state: ChatState | None):
    """The page picked under the chat, shown with its number (and whether the model can read it)."""
    image = page_image(page, state)
    document, number = state.document, int(page)
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
    """A cited page picked in the page, and any page from the API (``/page``), rendered as an image."""
    # in the uploads' group: PDFium must not render while a PDF is being read in another thread
    render = dict(outputs=[ui.page_image], concurrency_id="document")
    ui.page_pick.input(
        show_page, [ui.page_pick, state], api_name="page_pick", api_visibility="private", **render
    )
    gr.on(triggers=[], fn=page_image, inputs=[ui.page_number, state], api_name="page", **render)
