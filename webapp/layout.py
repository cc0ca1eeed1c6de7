"""The page's components, laid out (no events: ``app.build_demo`` wires them)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from data_tools.prompts import QUESTIONS_FOR

from .cards import EMPTY_CARD
from .chat import EXAMPLE_LABELS

STRATEGY_HELP = (
    "How a document longer than the model's context is cut down: 'retrieve' keeps the passages most "
    "related to the question, 'truncate-middle' keeps the beginning and the end, 'truncate-end' keeps "
    "the beginning."
)
PAGE_PICK_HELP = {
    "none": "Ask a question: the pages its sources come from are listed here.",
    "pages": "The pages the last answer's sources come from (numbered as in the Sources list).",
    "text": "A plain-text document has no pages; the Sources under each answer are the text the model read.",
    "uncited": "The last answer cites no pages.",
}
MATERIAL_CHOICES = [("Paper", "paper"), ("Book", "book"), ("Other", "other")]

CSS = """
#doc-card { min-height: 8em; }
#status-line { font-size: 0.95em; }
#examples-label { margin-bottom: -0.5em; }
#page-image img { object-fit: contain; }
footer { display: none !important; }
"""


def document_column(max_new_tokens: int) -> SimpleNamespace:
    """Upload, more documents, material type, card and the advanced settings."""
    ui = SimpleNamespace()
    ui.upload = gr.File(
        label="Document (PDF, TXT or MD)",
        file_types=[".pdf", ".txt", ".md"],
        type="filepath",
        height=120,
        elem_id="upload",
    )
    # here, not at import: longlora loads transformers
    from longlora.retrieval import MAX_DOCUMENTS, STRATEGIES

    ui.add_docs = gr.File(
        label=f"Add documents, asked about together (up to {MAX_DOCUMENTS} in all)",
        file_types=[".pdf", ".txt", ".md"],
        file_count="multiple",
        type="filepath",
        height=90,
        elem_id="add-docs",
    )
    ui.material = gr.Radio(
        MATERIAL_CHOICES,
        value="other",
        label="Material type",
        info="Guessed from the file; change it if the guess is wrong.",
        elem_id="material",
    )
    ui.card = gr.Markdown(EMPTY_CARD, elem_id="doc-card", container=True)
    ui.new_doc = gr.Button("New document", variant="secondary", elem_id="new-doc")

    with gr.Accordion("Advanced settings", open=False):
        ui.strategy = gr.Radio(list(STRATEGIES), value="retrieve", label="Strategy", info=STRATEGY_HELP)
        ui.max_tokens = gr.Slider(16, 4096, value=max_new_tokens, step=16, label="Max new tokens")
        ui.temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)")
        ui.top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
    return ui


def chat_column() -> SimpleNamespace:
    """The chat, the question box with Ask/Stop, and the example questions."""
    ui = SimpleNamespace()
    ui.chatbot = gr.Chatbot(
        label="Chat about the document",
        height=460,
        feedback_options=None,
        buttons=["copy", "copy_all"],
        elem_id="chat",
        placeholder="Upload a document, then ask about it or pick an example question.",
    )
    with gr.Row():
        ui.question = gr.Textbox(
            placeholder="Ask a question about the document and press Enter",
            show_label=False,
            label="Question",
            scale=5,
            elem_id="question",
        )
        ui.ask_btn = gr.Button("Ask", variant="primary", scale=1, min_width=80, elem_id="ask")
        ui.stop_btn = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id="stop")
    gr.Markdown("Example questions (LongLoRA paper, B.6):", elem_id="examples-label")
    with gr.Row():
        ui.example_buttons = {
            key: gr.Button(label, size="sm", visible=key in QUESTIONS_FOR["other"], elem_id=f"example-{key}")
            for key, label in EXAMPLE_LABELS.items()
        }
    page_viewer(ui)
    # API-only inputs and outputs of /ask, /sources and /page (never shown in the page).
    ui.answer_text = gr.Textbox(visible=False, label="Answer")
    ui.sources_json = gr.JSON(visible=False, label="Sources")
    ui.page_number = gr.Number(visible=False, label="Page", precision=0)
    ui.page_document = gr.Textbox(visible=False, label="Document")
    return ui


def page_viewer(ui: SimpleNamespace) -> None:
    """Under the chat: pick a page the last answer's sources cite, and see it."""
    with gr.Group(elem_id="page-viewer"):
        ui.page_pick = gr.Dropdown(
            [],
            value=None,
            label="Open a cited page",
            info=PAGE_PICK_HELP["none"],
            interactive=False,
            elem_id="page-pick",
        )
        ui.page_image = gr.Image(
            type="pil",
            format="png",  # text stays sharp (webp, the default, blurs small print)
            label="Page",
            interactive=False,
            visible=False,
            buttons=["download", "fullscreen"],
            elem_id="page-image",
        )


def build_layout(status_text: str, max_new_tokens: int) -> SimpleNamespace:
    """Every component of the page, by name (call inside ``gr.Blocks``)."""
    gr.Markdown("## LongLoRA: ask questions about a long document")
    status = gr.Markdown(status_text, elem_id="status-line")
    timer = gr.Timer(1.0)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            doc = document_column(max_new_tokens)
        with gr.Column(scale=3, min_width=400):
            chat = chat_column()
    return SimpleNamespace(status=status, timer=timer, **vars(doc), **vars(chat))
