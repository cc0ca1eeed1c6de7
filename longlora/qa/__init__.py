"""Ask questions about a long document: prompt, fit-to-context, streaming generation, KV-cache reuse.

The engine puts a document into the LongLoRA QA prompt (paper appendix B.6)::

    Below is {material_type}. Memorize the content and answer my question after the {material_type}.
    {content}
    Now the material ends. {question}

wrapped in the model's chat template when it has one. The document comes *before* the question, so
a follow-up question shares the whole document prefix with the previous prompt: the engine keeps the
KV cache of the last prompt of each session and prefills only what differs (the new question).

When the document is longer than the token budget (context length - prompt - question - answer
reserve, and at most what the model can really use, see ``ModelProfile``) a strategy decides what goes
in: ``retrieve`` (``longlora.retrieval.PassageIndex``: BM25-ranked, half-overlapping windows cut at
sentence starts, kept in document order, and the document's opening first for questions about the
document itself: authors, journal, date), ``truncate-middle`` (head and tail)
or ``truncate-end`` (head). Every answer reports what was done (``FitReport``): document tokens, kept
tokens, strategy, pages used and the passages themselves (``sources``).

The parts, each readable on its own:

- ``engine.py``: ``QAEngine`` (a loaded model + tokenizer; prompts, caches, generation)
- ``session.py``: ``DocumentSession`` (its documents' tokens, offsets, retrieval index; plain data)
- ``prompt.py``: the prompt around the document (``prompt_parts``)
- ``sampling.py``: picking tokens, n-gram bans, end tokens
- ``cache.py``: the per-session KV caches (LRU)
- ``reports.py``: ``FitReport``, ``Source``, ``AnswerUpdate``, ``DocumentCard``
- ``protocol.py``: ``QAEngineLike``, what the app needs from an engine
- ``cli.py``: ``python -m longlora.qa``

Model profiles live in ``data_tools.profiles``, the paper's prompt and the material-type guess in
``data_tools.prompts``. The engine never imports gradio; ``app.py`` is a thin shell over it.

Usage (CPU, bundled SmolLM2-135M-Instruct)::

    python -m longlora.qa --doc paper.pdf --question "Who wrote this paper?"
    python -m longlora.qa --doc book.txt --question "Where does Lydia elope to?" --question "With whom?"
    python -m longlora.qa --doc paper.pdf --model ./merged-32k --strategy truncate-middle --max-new-tokens 256
"""

# The engine's public surface; everything else is imported from the module that owns it (prompt styles
# from ``longlora.qa.prompt``, profiles from ``data_tools.profiles``, retrieval from ``longlora.retrieval``).
from .cli import main
from .engine import QAEngine
from .protocol import QAEngineLike
from .reports import AnswerUpdate, DocumentCard, FitReport, Source
from .session import MAX_DOCUMENTS, DocumentSession

__all__ = [
    "MAX_DOCUMENTS",
    "AnswerUpdate",
    "DocumentCard",
    "DocumentSession",
    "FitReport",
    "QAEngine",
    "QAEngineLike",
    "Source",
    "main",
]
