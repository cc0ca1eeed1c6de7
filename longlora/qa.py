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
in: ``retrieve`` (BM25-ranked passages, kept in document order), ``truncate-middle`` (head and tail)
or ``truncate-end`` (head). Every answer reports what was done (``FitReport``): document tokens, kept
tokens, strategy and pages used.

One model serves many users: requests are serialized by a lock (each waits its turn), each session's
document and cache are its own. The engine never imports gradio; ``app.py`` is a thin shell over it.

Usage (CPU, bundled SmolLM2-135M-Instruct)::

    python -m longlora.qa --doc paper.pdf --question "Who wrote this paper?"
    python -m longlora.qa --doc book.txt --question "Where does Lydia elope to?" --question "With whom?"
    python -m longlora.qa --doc paper.pdf --model ./merged-32k --strategy truncate-middle --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import queue
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_tools.prompts import MATERIAL_TYPES, material_phrase, prompt_prefix, prompt_suffix
from longlora.retrieval import GAP_MARKER, STRATEGIES, BM25Index, fit_document, split_passages

# Without a chat template the prompt uses the original LongLoRA SFT wrapping ([INST]...[/INST]).
PLAIN_TEMPLATE = ("[INST]", "[/INST]")
# Prompt wordings: "paper" is the paper's B.6 template (data_tools.prompts); the others keep its shape
# (material first, question last, so the document prefix is cacheable) in words small models follow
# without echoing "Now the material ends.". Chosen per model in PROFILES.
PROMPT_STYLES: dict[str, tuple[str, str] | None] = {
    "paper": None,
    "brief": (
        "Read {material} below and answer the question after it.\n\n",
        "\n\nQuestion: {question}\nAnswer in one short sentence.",
    ),
}
_CONTENT = "\u0000LONGLORA_CONTENT\u0000"  # placeholder, split out of the rendered chat template
MIN_DOCUMENT_BUDGET = 16


# ----------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class ModelProfile:
    """What a model can really use, measured with ``benchmarks/qa_accuracy.py``.

    document_budget: most document tokens to put in the prompt (None: the whole context window).
    passage_tokens: retrieval passage size. repetition_penalty / no_repeat_ngram_size: applied to the
    answer's own tokens only (never to the document, which the answer may need to copy from).
    """

    document_budget: int | None = None
    passage_tokens: int = 256
    prompt_style: str = "paper"
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0


# Long-context models (what LongLoRA produces) use their whole window with the paper's template.
DEFAULT_PROFILE = ModelProfile()
# Keyed by the model folder/id basename. Values from benchmarks/qa_accuracy.py (see docs/qa.md).
PROFILES: dict[str, ModelProfile] = {
    # 14/30 on the QA set vs 7/30 for a 512-token paper-template prompt and 6/30 at 1,024 tokens:
    # with a 135M model, fewer and shorter passages and a plain wording win (docs/qa.md).
    "SmolLM2-135M-Instruct": ModelProfile(
        document_budget=256, passage_tokens=128, prompt_style="brief", no_repeat_ngram_size=4
    ),
}


def profile_for(model) -> ModelProfile:
    name = str(getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", ""))
    return PROFILES.get(Path(name.rstrip("/")).name, DEFAULT_PROFILE)


def model_spec_is_dir(spec) -> bool:
    return isinstance(spec, (str, Path)) and Path(str(spec)).expanduser().is_dir()


@dataclass
class FitReport:
    """What went into the prompt. pages_used is empty for documents without pages (txt/md)."""

    strategy: str
    document_tokens: int
    kept_tokens: int
    fits_whole: bool
    pages_used: list[int] = field(default_factory=list)
    budget_tokens: int = 0
    passages: int = 0
    reused_tokens: int = 0  # prompt tokens served from the session's KV cache
    prompt_tokens: int = 0

    def summary(self) -> str:
        pages = f" ({_page_ranges(self.pages_used)})" if self.pages_used else ""
        if self.fits_whole:
            return f"The whole document is in the prompt: {self.document_tokens:,} tokens{pages}."
        share = 100 * self.kept_tokens / max(1, self.document_tokens)
        how = {
            "retrieve": f"{self.passages} passage{'s' * (self.passages != 1)} most relevant to the question",
            "truncate-middle": "the beginning and the end",
            "truncate-end": "the beginning",
        }[self.strategy]
        return (
            f"The document ({self.document_tokens:,} tokens) is longer than the {self.budget_tokens:,}-token "
            f"budget; kept {how}: {self.kept_tokens:,} tokens ({share:.0f}%){pages}."
        )


@dataclass
class AnswerUpdate:
    """One step of a streamed answer. text is cumulative; delta is what this step added."""

    text: str
    delta: str
    done: bool
    fit: FitReport
    stopped: bool = False
    queued: bool = False  # waiting for another request to finish
    new_tokens: int = 0
    first_token_s: float | None = None  # seconds from the request to the first answer token


@dataclass
class DocumentCard:
    file_name: str
    kind: str
    pages: int | None
    words: int
    tokens: int
    context_length: int
    budget_tokens: int
    fits: bool
    strategy: str
    material_type: str

    def to_markdown(self) -> str:
        size = f"{self.pages} pages · " if self.pages else ""
        head = (
            f"**{self.file_name}** · {self.kind.upper()} · {size}{self.words:,} words · "
            f"{self.tokens:,} tokens · read as {MATERIAL_TYPES.get(self.material_type, self.material_type)}"
        )
        if self.fits:
            fit = f"Fits whole in the {self.budget_tokens:,}-token document budget (context {self.context_length:,})."
        else:
            how = {
                "retrieve": "each question gets the passages most relevant to it",
                "truncate-middle": "the beginning and the end are kept",
                "truncate-end": "the beginning is kept",
            }[self.strategy]
            fit = (
                f"Longer than the {self.budget_tokens:,}-token document budget (context "
                f"{self.context_length:,}): {how} (`{self.strategy}`)."
            )
        return f"{head}\n\n{fit}"


def _page_ranges(pages: Sequence[int]) -> str:
    if not pages:
        return ""
    parts, start, prev = [], pages[0], pages[0]
    for p in list(pages[1:]) + [None]:
        if p is not None and p == prev + 1:
            prev = p
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if p is not None:
            start = prev = p
    return ("page " if len(pages) == 1 else "pages ") + ", ".join(parts)


# ----------------------------------------------------------------------------- prompt


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


def prompt_parts(
    tokenizer, question: str, material_type: str = "paper", history=None, style: str = "paper"
) -> tuple[str, str]:
    """(head, tail): the prompt text before and after the document content.

    The first user turn holds the template (document, then the first question); later turns of
    ``history`` are plain chat turns, and the current question is the last user turn. ``style``
    "paper" is the paper's B.6 template; "brief" is a wording small models follow better (see
    ``PROMPT_STYLES``), still document first.
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")
    pairs = normalize_history(history)
    questions = [q for q, _ in pairs] + [question]
    if style == "paper":
        first = prompt_prefix(material_type) + _CONTENT + prompt_suffix(questions[0])
    else:
        prefix, suffix = PROMPT_STYLES[style]
        first = (
            prefix.format(material=material_phrase(material_type))
            + _CONTENT
            + suffix.format(question=questions[0].strip())
        )
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": first}]
        for (_, answer), q in zip(pairs, questions[1:]):
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": q}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        start, end = PLAIN_TEMPLATE
        text = f"{start}{first}{end}"
        for (_, answer), q in zip(pairs, questions[1:]):
            text += f" {answer}\n{start}{q.strip()}{end}"
    head, sep, tail = text.partition(_CONTENT)
    if not sep:
        raise ValueError(
            "the chat template dropped the document; use a model whose template keeps user content"
        )
    return head, tail


def guess_material_type(document) -> str:
    """'paper' for PDFs that look like articles, 'book' for long prose, else 'other'."""
    text = document.text
    sample = text[:20000].lower()
    words = document.word_count
    if words > 30000 and ("chapter" in sample or document.kind != "pdf"):
        return "book"
    if "abstract" in sample or "references" in text[-40000:].lower() or document.kind == "pdf":
        return "paper" if words < 60000 else "book"
    return "other"


# ----------------------------------------------------------------------------- sessions


class DocumentSession:
    """One user's open document: its tokens (computed once) and per-size passage splits.

    Create with ``engine.open_document``. The KV cache of its last prompt lives in the engine (an
    LRU keyed by this session's id), so a session object stays small and can sit in UI state.
    """

    def __init__(self, engine: QAEngine, document, material_type: str):
        self.id = uuid.uuid4().hex
        self.document = document
        self.material_type = material_type
        self._engine = engine
        self._ids: list[int] | None = None
        self._offsets: list[tuple[int, int]] | None = None
        self._passages: dict[int, tuple[list[tuple[int, int]], BM25Index]] = {}
        self._lock = threading.Lock()

    def _tokens(self) -> tuple[list[int], list[tuple[int, int]]]:
        with self._lock:
            if self._ids is None:
                self._ids, self._offsets = self._engine._tokenize_document(self.document.text)
            return self._ids, self._offsets

    def passages(self, size: int) -> tuple[list[tuple[int, int]], BM25Index]:
        """Token spans of ~``size``-token passages and their BM25 index (computed once per size)."""
        ids, offsets = self._tokens()
        with self._lock:
            if size not in self._passages:
                spans = split_passages(offsets, self.document.text, size)
                texts = [self.document.text[offsets[s][0] : offsets[e - 1][1]] for s, e in spans]
                self._passages[size] = (spans, BM25Index(texts))
            return self._passages[size]

    def char_span(self, start: int, end: int) -> tuple[int, int]:
        _, offsets = self._tokens()
        if start >= end:
            return (0, 0)
        return offsets[start][0], offsets[end - 1][1]

    def pages_for(self, spans: Sequence[tuple[int, int]]) -> list[int]:
        if not getattr(self.document, "pages", None):
            return []
        pages: set[int] = set()
        for s, e in spans:
            a, b = self.char_span(s, e)
            pages.update(self.document.pages_for_span(a, b))
        return sorted(pages)

    @property
    def num_tokens(self) -> int:
        return len(self._tokens()[0])

    def card(self, strategy: str = "retrieve") -> DocumentCard:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        engine = self._engine
        engine.wait_ready()
        budget = engine.document_budget(self, "")
        tokens = self.num_tokens
        doc = self.document
        return DocumentCard(
            file_name=doc.name,
            kind=doc.kind,
            pages=doc.num_pages,
            words=doc.word_count,
            tokens=tokens,
            context_length=engine.context_length,
            budget_tokens=budget,
            fits=tokens <= budget,
            strategy=strategy,
            material_type=self.material_type,
        )


@dataclass
class _CacheEntry:
    ids: list[int]
    cache: object  # transformers DynamicCache holding exactly `ids`


# ----------------------------------------------------------------------------- engine


class QAEngine:
    """Long-document QA over one model shared by every session (see the module docstring).

    model_spec/context_length/load_in_4bit/dtype/device go to ``longlora.models.load_model``;
    ``model=``/``tokenizer=`` inject an already-loaded pair instead. With ``background=True`` the
    model loads in a thread: ``state`` is "loading", then "ready" or "error" (``status_message``
    says what is happening; ``wait_ready`` raises the load error). ``profile`` overrides what the
    model is assumed to use well (default: looked up in ``PROFILES`` by model name).
    """

    def __init__(
        self,
        model_spec: str = "default",
        *,
        context_length: int | None = None,
        load_in_4bit: bool = False,
        dtype: str = "auto",
        device: str = "auto",
        max_new_tokens: int = 512,
        background: bool = False,
        model=None,
        tokenizer=None,
        adapter: str | None = None,
        profile: ModelProfile | None = None,
        max_cached_sessions: int = 4,
        prefill_chunk: int = 1024,
    ):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if (model is None) != (tokenizer is None):
            raise ValueError("pass both model= and tokenizer= (or neither, to load model_spec)")
        self.model_spec = model_spec
        self.max_new_tokens = int(max_new_tokens)
        self.model = model
        self.tokenizer = tokenizer
        self.profile = profile
        self.prefill_chunk = int(prefill_chunk)
        self.max_cached_sessions = int(max_cached_sessions)
        self._requested_context = context_length
        self._load_args = dict(
            adapter=adapter,
            dtype=dtype,
            device=device,
            context_length=context_length,
            load_in_4bit=load_in_4bit,
        )
        self.context_length = 0
        self.state = "loading"
        self.status_message = "Loading the model..."
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._generate_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._caches: OrderedDict[str, _CacheEntry] = OrderedDict()
        self._waiting = 0
        if model is not None:
            self._finish_load(model, tokenizer)
        elif background:
            threading.Thread(target=self._load, name="longlora-qa-load", daemon=True).start()
        else:
            self._load()
            if self.error is not None:
                raise self.error

    # -- loading

    def _load(self) -> None:
        from longlora.models import load_model

        def status(message: str) -> None:
            self.status_message = message
            print(message, file=sys.stderr, flush=True)

        try:
            model, tokenizer = load_model(self.model_spec, status=status, **self._load_args)
            self._finish_load(model, tokenizer)
        except BaseException as err:  # noqa: BLE001 - a load failure must never take the app down
            self.error = err
            self.state = "error"
            self.status_message = f"The model could not be loaded: {err}"
            self._ready.set()

    def _finish_load(self, model, tokenizer) -> None:
        model.eval()
        window = int(model.config.max_position_embeddings)
        requested = self._requested_context
        if requested is not None:
            if requested > window:
                raise ValueError(
                    f"context_length {requested} exceeds the model's {window}-token window; load the model "
                    "through QAEngine(model_spec, context_length=...) so Position Interpolation is applied"
                )
            window = int(requested)
        self.model, self.tokenizer = model, tokenizer
        self.context_length = window
        if self.profile is None:
            # A fine-tuned adapter on a known base is a new model: assume it uses its whole window.
            adapted = self._load_args["adapter"] or (
                model_spec_is_dir(self.model_spec)
                and (Path(self.model_spec) / "adapter_config.json").is_file()
            )
            self.profile = DEFAULT_PROFILE if adapted else profile_for(model)
        self._eos_ids = _eos_ids(model, tokenizer)
        self._gap_ids = tokenizer(GAP_MARKER, add_special_tokens=False)["input_ids"]
        self.state = "ready"
        self.status_message = "Ready."
        self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the model is loaded; raise its load error, or TimeoutError."""
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the model is still loading after {timeout} s ({self.status_message})")
        if self.error is not None:
            raise self.error

    # -- documents

    def open_document(self, path_or_document, material_type: str | None = None) -> DocumentSession:
        """A path (.pdf/.txt/.md) or a data_tools Document -> a session (raises DocumentError subclasses)."""
        from data_tools import Document, EmptyDocumentError, load_document

        document = path_or_document
        if not isinstance(document, Document):
            document = load_document(path_or_document)
        if not document.text.strip():
            raise EmptyDocumentError(
                f"{document.name}: the document has no text; open a file that contains text"
            )
        if material_type is None:
            material_type = guess_material_type(document)
        if material_type not in MATERIAL_TYPES:
            raise ValueError(
                f"unknown material type {material_type!r}; choose one of {sorted(MATERIAL_TYPES)}"
            )
        return DocumentSession(self, document, material_type)

    def _tokenize_document(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        self.wait_ready()
        tokenizer = self.tokenizer
        try:
            # verbose=False: a document longer than the model's window is expected here
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        except (NotImplementedError, TypeError, KeyError):  # slow tokenizer: spread offsets evenly
            ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            step = len(text) / max(1, len(ids))
            return ids, [(int(i * step), int((i + 1) * step)) for i in range(len(ids))]

    def close_session(self, session: DocumentSession) -> None:
        """Drop the session's cached prompt (its memory) now rather than on LRU eviction."""
        with self._cache_lock:
            self._caches.pop(session.id, None)

    # -- prompt assembly

    def _encode(self, text: str, *, first: bool) -> list[int]:
        # With a chat template the rendered text already holds any BOS; a plain prompt gets the
        # tokenizer's usual specials on its first piece only.
        add = first and not getattr(self.tokenizer, "chat_template", None)
        return list(self.tokenizer(text, add_special_tokens=add)["input_ids"])

    def _prompt_frame(self, session, question, history, max_new_tokens):
        """Head/tail ids and the document budget; drops the oldest history turns if they do not fit."""
        pairs = normalize_history(history)
        while True:
            head, tail = prompt_parts(
                self.tokenizer, question, session.material_type, pairs, style=self.profile.prompt_style
            )
            head_ids, tail_ids = self._encode(head, first=True), self._encode(tail, first=False)
            room = self.context_length - len(head_ids) - len(tail_ids) - max_new_tokens
            if room >= MIN_DOCUMENT_BUDGET or not pairs:
                break
            pairs = pairs[1:]
        if room < MIN_DOCUMENT_BUDGET:
            raise ValueError(
                f"the question and answer reserve leave no room for the document: context {self.context_length} "
                f"tokens, prompt {len(head_ids) + len(tail_ids)}, answer reserve {max_new_tokens}; ask a shorter "
                "question or lower max_new_tokens"
            )
        limit = self.profile.document_budget
        budget = room if limit is None else min(room, limit)
        return head_ids, tail_ids, budget

    def document_budget(self, session: DocumentSession, question: str = "", history=None) -> int:
        """Tokens of document that fit with this question (what a card reports for an empty question)."""
        return self._prompt_frame(session, question, history, self.max_new_tokens)[2]

    def build_prompt(
        self,
        session: DocumentSession,
        question: str,
        *,
        history=None,
        strategy: str = "retrieve",
        max_new_tokens: int | None = None,
    ) -> tuple[list[int], FitReport]:
        """The full prompt ids for a question and the report of what was kept."""
        self.wait_ready()
        max_new = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        head_ids, tail_ids, budget = self._prompt_frame(session, question, history, max_new)
        ids, _ = session._tokens()
        passages = scores = None
        if strategy == "retrieve" and len(ids) > budget:
            passages, index = session.passages(self.profile.passage_tokens)
            scores = index.scores(question)
        spans, content = fit_document(
            ids, budget, strategy, passages=passages, scores=scores, gap_ids=self._gap_ids
        )
        report = FitReport(
            strategy=strategy,
            document_tokens=len(ids),
            kept_tokens=sum(e - s for s, e in spans),
            fits_whole=len(ids) <= budget,
            pages_used=session.pages_for(spans),
            budget_tokens=budget,
            passages=len(spans),
        )
        prompt = head_ids + content + tail_ids
        report.prompt_tokens = len(prompt)
        return prompt, report

    # -- asking

    def ask(
        self,
        session: DocumentSession,
        question: str,
        *,
        history=None,
        strategy: str = "retrieve",
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop_event: threading.Event | None = None,
    ) -> Iterator[AnswerUpdate]:
        """Stream the answer to a question about the session's document.

        Validation errors are raised here (not on first iteration). Greedy when temperature is 0.
        Setting ``stop_event`` (or closing the iterator) ends generation promptly; the last update
        has ``done=True`` and ``stopped`` tells whether it was cut short.
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty; type a question about the document")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if temperature < 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        max_new = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if max_new < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new}")
        if not isinstance(session, DocumentSession) or session._engine is not self:
            raise ValueError("this session belongs to another engine; open the document with this engine")
        self.wait_ready()
        prompt, report = self.build_prompt(
            session, question.strip(), history=history, strategy=strategy, max_new_tokens=max_new
        )
        settings = dict(max_new_tokens=max_new, temperature=float(temperature), top_p=float(top_p))
        return self._stream(session, prompt, report, settings, stop_event or threading.Event())

    def _stream(self, session, prompt, report, settings, stop_event) -> Iterator[AnswerUpdate]:
        updates: queue.Queue = queue.Queue()
        cancel = threading.Event()  # set when the consumer goes away
        worker = threading.Thread(
            target=self._worker,
            args=(session, prompt, report, settings, stop_event, cancel, updates),
            name="longlora-qa-generate",
            daemon=True,
        )
        worker.start()
        try:
            while True:
                item = updates.get()
                if isinstance(item, BaseException):
                    raise item
                if item.done:
                    # the worker ends right after its last update; joining means the lock is free
                    # and no thread is left inside torch when the caller (or the process) moves on
                    worker.join()
                    yield item
                    return
                yield item
        finally:
            cancel.set()
            worker.join(timeout=120)  # a cancelled worker stops after at most one forward pass

    def _worker(self, session, prompt, report, settings, stop_event, cancel, updates) -> None:
        start = time.perf_counter()
        try:
            if self._generate_lock.locked():
                updates.put(AnswerUpdate("", "", False, report, queued=True))
            with self._generate_lock:
                self._generate(session, prompt, report, settings, stop_event, cancel, updates, start)
        except BaseException as err:  # noqa: BLE001 - delivered to the consumer, never lost
            updates.put(err)

    def _generate(self, session, prompt, report, settings, stop_event, cancel, updates, start) -> None:
        model = self.model
        device = next(model.parameters()).device
        stopped = lambda: stop_event.is_set() or cancel.is_set()  # noqa: E731
        cache, reused = self._take_cache(session.id, prompt)
        report.reused_tokens = reused
        fed: list[int] = prompt[:reused]
        generated: list[int] = []
        text = ""
        first_token_s = None
        try:
            with torch.inference_mode():
                logits = None
                for i in range(reused, len(prompt), self.prefill_chunk):
                    if stopped():
                        break
                    chunk = prompt[i : i + self.prefill_chunk]
                    logits = self._forward(chunk, cache, device)
                    fed.extend(chunk)
                while logits is not None and not stopped() and len(generated) < settings["max_new_tokens"]:
                    token = self._pick(logits, generated, settings)
                    if token in self._eos_ids:
                        break
                    generated.append(token)
                    if first_token_s is None:
                        first_token_s = time.perf_counter() - start
                    # trailing whitespace is held back until more text follows, so the deltas
                    # always add up to the final (stripped) answer
                    new_text = self.tokenizer.decode(generated, skip_special_tokens=True).strip()
                    if not new_text.endswith("\ufffd") and new_text != text:
                        delta = new_text[len(text) :] if new_text.startswith(text) else new_text
                        text = new_text
                        updates.put(
                            AnswerUpdate(
                                text,
                                delta,
                                False,
                                report,
                                new_tokens=len(generated),
                                first_token_s=first_token_s,
                            )
                        )
                    if len(generated) >= settings["max_new_tokens"] or stopped():
                        break
                    logits = self._forward([token], cache, device)
                    fed.append(token)
        finally:
            self._keep_cache(session.id, fed, cache)
        final = self.tokenizer.decode(generated, skip_special_tokens=True).strip()
        updates.put(
            AnswerUpdate(
                final,
                final[len(text) :] if final.startswith(text) else final,
                True,
                report,
                stopped=stopped(),
                new_tokens=len(generated),
                first_token_s=first_token_s,
            )
        )

    def _forward(self, ids: Sequence[int], cache, device) -> torch.Tensor:
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float()

    def _pick(self, logits: torch.Tensor, generated: list[int], settings) -> int:
        profile = self.profile
        logits = logits.clone()
        if profile.repetition_penalty != 1.0 and generated:
            seen = torch.tensor(sorted(set(generated)), device=logits.device)
            values = logits[seen]
            logits[seen] = torch.where(
                values > 0, values / profile.repetition_penalty, values * profile.repetition_penalty
            )
        n = profile.no_repeat_ngram_size
        if n > 0 and len(generated) >= n:
            banned = banned_ngram_tokens(generated, n)
            if banned:
                logits[list(banned)] = -float("inf")
        if settings["temperature"] == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / settings["temperature"], dim=-1)
        if settings["top_p"] < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < settings["top_p"]
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs, 1))

    # -- KV cache per session (LRU)

    def _take_cache(self, session_id: str, prompt: Sequence[int]):
        """The session's cache cropped to its longest common prefix with ``prompt`` (or a new one)."""
        from transformers import DynamicCache

        with self._cache_lock:
            entry = self._caches.pop(session_id, None)
        if entry is not None:
            common = _common_prefix(entry.ids, prompt)
            common = min(common, len(prompt) - 1)  # at least one token must run to give logits
            if common > 0:
                _crop(entry.cache, common)
                return entry.cache, common
        return DynamicCache(config=self.model.config), 0

    def _keep_cache(self, session_id: str, ids: list[int], cache) -> None:
        if self.max_cached_sessions <= 0 or not ids:
            return
        if cache.get_seq_length() != len(ids):  # interrupted mid-forward: do not trust it
            return
        with self._cache_lock:
            self._caches[session_id] = _CacheEntry(list(ids), cache)
            self._caches.move_to_end(session_id)
            while len(self._caches) > self.max_cached_sessions:
                self._caches.popitem(last=False)

    def answer(self, session: DocumentSession, question: str, **kwargs) -> str:
        """The complete answer text (non-streaming convenience)."""
        final = None
        for update in self.ask(session, question, **kwargs):
            final = update
        return final.text if final else ""


def banned_ngram_tokens(tokens: Sequence[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram already present in ``tokens`` (no_repeat_ngram_size)."""
    if n <= 0 or len(tokens) < n:
        return set()
    prefix = tuple(tokens[len(tokens) - n + 1 :]) if n > 1 else ()
    banned = set()
    for i in range(len(tokens) - n + 1):
        if tuple(tokens[i : i + n - 1]) == prefix:
            banned.add(tokens[i + n - 1])
    return banned


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _crop(cache, length: int) -> None:
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)  # transformers 5: a negative count removes that many tokens from the end


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if value is not None:
            ids.update(value if isinstance(value, (list, tuple)) else [value])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    for token in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>"):
        tid = tokenizer.convert_tokens_to_ids(token) if token in tokenizer.get_vocab() else None
        if tid is not None:
            ids.add(tid)
    return ids


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m longlora.qa",
        description="Ask questions about a PDF/TXT/MD document; answers stream to stdout, fit reports to stderr.",
    )
    parser.add_argument("--doc", required=True, help="the document (.pdf, .txt or .md)")
    parser.add_argument(
        "--question",
        action="append",
        required=True,
        help="a question (repeat for follow-ups; they reuse the document's KV cache)",
    )
    parser.add_argument(
        "--model", default="default", help="'default', a local model/adapter dir, or a hub id"
    )
    parser.add_argument("--adapter", default=None, help="a LoRA adapter folder to put on --model")
    parser.add_argument(
        "--strategy",
        default="retrieve",
        choices=STRATEGIES,
        help="what to keep when the document does not fit (default: retrieve)",
    )
    parser.add_argument(
        "--material-type",
        default=None,
        choices=sorted(MATERIAL_TYPES),
        help="how the prompt names the document (default: guessed)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    parser.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="context window; above the model's, Position Interpolation is applied at load",
    )
    parser.add_argument(
        "--document-budget",
        type=int,
        default=None,
        help="most document tokens per prompt (default: what the model uses well)",
    )
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--load-in-4bit", action="store_true", help="NF4 weights through bitsandbytes (CUDA)")
    parser.add_argument(
        "--history", action="store_true", help="send earlier questions and answers along with each follow-up"
    )
    args = parser.parse_args(argv)
    if any(not q.strip() for q in args.question):
        parser.error("a --question is empty; type a question about the document")
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.document_budget is not None and args.document_budget < MIN_DOCUMENT_BUDGET:
        parser.error(f"--document-budget must be at least {MIN_DOCUMENT_BUDGET}, got {args.document_budget}")

    try:
        engine = QAEngine(
            args.model,
            adapter=args.adapter,
            context_length=args.context_length,
            dtype=args.dtype,
            device=args.device,
            load_in_4bit=args.load_in_4bit,
            max_new_tokens=args.max_new_tokens,
        )
        if args.document_budget is not None:
            engine.profile = dataclasses.replace(engine.profile, document_budget=args.document_budget)
        session = engine.open_document(args.doc, material_type=args.material_type)
        card = session.card(args.strategy)
    except ValueError as err:  # ModelLoadError, DocumentError and prompt-size errors
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"[{card.file_name}: {card.tokens:,} tokens, budget {card.budget_tokens:,}, "
        f"{'fits whole' if card.fits else args.strategy}]",
        file=sys.stderr,
    )
    history: list[tuple[str, str]] = []
    for question in args.question:
        if len(args.question) > 1:
            print(f"\nQ: {question}\nA: ", end="", flush=True)
        try:
            final = None
            for update in engine.ask(
                session,
                question,
                history=history if args.history else None,
                strategy=args.strategy,
                temperature=args.temperature,
                top_p=args.top_p,
            ):
                print(update.delta, end="", flush=True)
                final = update
        except ValueError as err:
            print(f"\nerror: {err}", file=sys.stderr)
            return 2
        print(flush=True)
        fit = final.fit
        print(
            f"[{fit.summary()} Prompt {fit.prompt_tokens:,} tokens, {fit.reused_tokens:,} from cache; "
            f"first token after {final.first_token_s or 0:.2f} s]",
            file=sys.stderr,
        )
        history.append((question, final.text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
