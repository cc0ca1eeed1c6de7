"""The QA engine: one loaded model and tokenizer, shared by every open document.

It owns the prompt (``prompt.py``), what part of a long document goes in (``longlora.retrieval``),
the per-session KV caches (``cache.py``) and streaming generation with the sampling rules of
``sampling.py``. Requests are serialized by a lock (each waits its turn and is told so); each
session's documents and cache are its own. Loading in the background belongs to the app
(``webapp/loading.py`` beside app.py); this engine is ready as soon as it exists.

A session may hold several documents (``open_documents``, up to ``MAX_DOCUMENTS``): they go in whole,
each headed by its name, when all of them fit together; otherwise one BM25 ranking over the passages of
all of them picks what goes in, each passage headed by its document and pages, and every source names
its document.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from functools import partial

import torch

from data_tools.profiles import ModelProfile, profile_for_config
from data_tools.prompts import MATERIAL_TYPES, guess_material_type
from longlora.position import context_window
from longlora.retrieval import GAP_MARKER, STRATEGIES, fit_document

from .cache import PromptCaches
from .prompt import document_heading, normalize_history, passage_heading, prompt_parts
from .readings import answer_logprobs, choose_answer
from .reports import AnswerUpdate, DocumentCard, FitReport, Source, reading_mode
from .sampling import Sampling, eos_ids, pick
from .session import MAX_DOCUMENTS, DocumentPart, DocumentSession, Span, tokenize_document

MIN_DOCUMENT_BUDGET = 16


def _print_status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def profile_for(model) -> ModelProfile:
    """The profile of a loaded model, chosen by what it is (``data_tools.profiles``)."""
    return profile_for_config(model.config)


class QAEngine:
    """Long-document QA over one model shared by every session (see the module docstring).

    Pass a loaded ``model=`` and ``tokenizer=``, or a ``model_spec`` (with context_length,
    load_in_4bit, dtype, device, adapter) to load through ``longlora.models.load_model`` now;
    ``status`` receives loading messages. ``context_length`` at most the model's window (larger
    windows need Position Interpolation at load). ``profile`` overrides what the model is assumed to
    use well (default: ``data_tools.profiles.profile_for_config``).
    """

    # The engine is loaded when it exists; these match the app's background loader (QAEngineLike).
    state = "ready"
    status_message = "Ready."

    def __init__(
        self,
        model_spec: str = "default",
        *,
        context_length: int | None = None,
        load_in_4bit: bool = False,
        dtype: str = "auto",
        device: str = "auto",
        max_new_tokens: int = 512,
        model=None,
        tokenizer=None,
        adapter: str | None = None,
        profile: ModelProfile | None = None,
        max_cached_sessions: int = 4,
        max_cache_bytes: int | None = None,
        prefill_chunk: int = 1024,
        status=_print_status,
    ):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if (model is None) != (tokenizer is None):
            raise ValueError("pass both model= and tokenizer= (or neither, to load model_spec)")
        if model is None:
            from longlora.models import load_model

            model, tokenizer = load_model(
                model_spec,
                adapter=adapter,
                dtype=dtype,
                device=device,
                context_length=context_length,
                load_in_4bit=load_in_4bit,
                status=status,
            )
        model.eval()
        window = context_window(model.config)
        if context_length is not None:
            if context_length > window:
                raise ValueError(
                    f"context_length {context_length} exceeds the model's {window}-token window; load the "
                    "model through QAEngine(model_spec, context_length=...) so Position Interpolation is applied"
                )
            window = int(context_length)
        self.model_spec = model_spec
        self.model, self.tokenizer = model, tokenizer
        self.context_length = window
        self.max_new_tokens = int(max_new_tokens)
        self.profile = profile if profile is not None else profile_for(model)
        self.prefill_chunk = int(prefill_chunk)
        self.eos_ids = eos_ids(model, tokenizer)
        self._gap_ids = tokenizer(GAP_MARKER, add_special_tokens=False)["input_ids"]
        if max_cache_bytes is None:
            max_cache_bytes = default_cache_bytes(next(model.parameters()).device)
        self._caches = PromptCaches(max_cached_sessions, max_cache_bytes)
        self._generate_lock = threading.Lock()

    @classmethod
    def from_args(cls, args, *, status=_print_status, **engine_kwargs) -> QAEngine:
        """Load the model named by the flags of ``longlora.models.add_model_arguments`` (parsed ``args``)."""
        from longlora.models import load_from_args

        model, tokenizer = load_from_args(args, status=status)
        return cls(
            args.model,
            model=model,
            tokenizer=tokenizer,
            context_length=getattr(args, "context_length", None),
            **engine_kwargs,
        )

    @property
    def max_cached_sessions(self) -> int:
        return self._caches.max_sessions

    def cache_stats(self) -> dict:
        """The sessions' KV caches now: how many are kept and their bytes, the bounds (``max_sessions``,
        ``max_bytes``), and how many were evicted or refused so far (``PromptCaches.stats``)."""
        return self._caches.stats()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Nothing to wait for (kept so the app's background loader and the engine read alike)."""

    # -- documents

    def open_document(self, path_or_document, material_type: str | None = None) -> DocumentSession:
        """A path (.pdf/.txt/.md) or a data_tools Document -> a session (raises DocumentError subclasses)."""
        return self.open_documents([path_or_document], material_type)

    def open_documents(self, paths_or_documents, material_type: str | None = None) -> DocumentSession:
        """Paths (.pdf/.txt/.md) or data_tools Documents -> one session asking about all of them.

        At most ``MAX_DOCUMENTS``, each with its own name (sources and prompts name them);
        ``material_type`` None guesses it from the first. Raises DocumentError subclasses for a
        file that cannot be read, ValueError for the rest.
        """
        from data_tools import Document, EmptyDocumentError, load_document

        given = list(paths_or_documents)
        if not given:
            raise ValueError("no document to open; give at least one path or Document")
        if len(given) > MAX_DOCUMENTS:
            raise ValueError(
                f"a session holds at most {MAX_DOCUMENTS} documents, got {len(given)}; "
                f"ask about at most {MAX_DOCUMENTS} at once (or open the rest in another session)"
            )
        documents = [d if isinstance(d, Document) else load_document(d) for d in given]
        names = [d.name for d in documents]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(
                f"two documents are named {twice[0]}; rename one, so that sources can say which one they "
                "come from"
            )
        for document in documents:
            if not document.text.strip():
                raise EmptyDocumentError(
                    f"{document.name}: the document has no text; open a file that contains text"
                )
        if material_type is None:
            material_type = guess_material_type(documents[0])
        if material_type not in MATERIAL_TYPES:
            raise ValueError(
                f"unknown material type {material_type!r}; choose one of {sorted(MATERIAL_TYPES)}"
            )
        parts, ids = [], []
        for k, document in enumerate(documents):
            if len(documents) > 1:  # each document after a heading that names it
                ids += self._encode(document_heading(document.name, first=k == 0), first=False)
            part = DocumentPart(document, *tokenize_document(self.tokenizer, document.text), start=len(ids))
            parts.append(part)
            ids += part.ids
        return DocumentSession(parts, material_type, ids, engine=self)

    def close_session(self, session: DocumentSession) -> None:
        """Drop the session's cached prompt (its memory) now rather than on LRU eviction."""
        self._caches.drop(session.id)

    def card(self, session: DocumentSession, strategy: str = "retrieve") -> DocumentCard:
        """The session's size and how it fits this model with ``strategy``: its document's card, or
        for several, a card of them together with each one's own card in ``documents``.

        ``mode`` is how it is read: "whole" when it fits the budget (for a profile with a small
        budget, such as the bundled model's 256 tokens, only a document that short), else what
        ``strategy`` makes of it; ``mode_reason`` is the profile's ``chosen_by``.
        """
        _check_strategy(strategy)
        budget = self.document_budget(self._own(session), "")

        def card_of(doc, tokens: int, **together) -> DocumentCard:
            fits = tokens <= budget
            fields = dict(
                file_name=doc.name,
                kind=doc.kind,
                pages=doc.num_pages,
                words=doc.word_count,
                tokens=tokens,
                context_length=self.context_length,
                budget_tokens=budget,
                fits=fits,
                strategy=strategy,
                material_type=session.material_type,
                warning=doc.warning,
                mode=reading_mode(fits, strategy),
                mode_reason=self.profile.chosen_by,
            )
            return DocumentCard(**{**fields, **together})

        cards = [card_of(part.document, len(part.ids)) for part in session.parts]
        if len(cards) == 1:
            return cards[0]
        return card_of(
            session.parts[0].document,
            session.num_tokens,
            file_name=", ".join(card.file_name for card in cards),
            kind="+".join(dict.fromkeys(card.kind for card in cards)),
            pages=sum(card.pages or 0 for card in cards) or None,
            words=sum(card.words for card in cards),
            warning="; ".join(f"{card.file_name}: {card.warning}" for card in cards if card.warning),
            documents=cards,
        )

    def _own(self, session) -> DocumentSession:
        if not isinstance(session, DocumentSession) or session.engine is not self:
            raise ValueError("this session belongs to another engine; open the document with this engine")
        return session

    # -- prompt assembly

    def _encode(self, text: str, *, first: bool) -> list[int]:
        # With a chat template the rendered text already holds any BOS; a plain prompt gets the
        # tokenizer's usual specials on its first piece only.
        add = first and not getattr(self.tokenizer, "chat_template", None)
        return list(self.tokenizer(text, add_special_tokens=add)["input_ids"])

    def prompt_frame(self, session, question, history=None, max_new_tokens=None):
        """(head ids, tail ids, document budget); drops the oldest history turns if they do not fit.

        A profile with ``whole_document`` puts a document that fits the window in whole, in its
        ``whole_document_style``; otherwise the profile's ``prompt_style`` and ``document_budget`` apply.
        """
        max_new = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        profile = self.profile
        if profile.whole_document:
            head_ids, tail_ids, room = self._frame(
                question, session, history, max_new, profile.whole_document_style
            )
            if session.num_tokens <= room:
                return head_ids, tail_ids, room
        head_ids, tail_ids, room = self._frame(question, session, history, max_new, profile.prompt_style)
        if room < MIN_DOCUMENT_BUDGET:
            raise ValueError(
                f"the question and answer reserve leave no room for the document: context {self.context_length} "
                f"tokens, prompt {len(head_ids) + len(tail_ids)}, answer reserve {max_new}; ask a shorter "
                "question or lower max_new_tokens"
            )
        limit = profile.document_budget
        return head_ids, tail_ids, room if limit is None else min(room, limit)

    def _frame(self, question, session, history, max_new: int, style: str):
        """(head ids, tail ids, room for the document) in ``style``, dropping the oldest history turns
        until at least ``MIN_DOCUMENT_BUDGET`` tokens are left (or no turn is left to drop)."""
        pairs = normalize_history(history)
        while True:
            head, tail = prompt_parts(self.tokenizer, question, session.material_type, pairs, style=style)
            head_ids, tail_ids = self._encode(head, first=True), self._encode(tail, first=False)
            room = self.context_length - len(head_ids) - len(tail_ids) - max_new
            if room >= MIN_DOCUMENT_BUDGET or not pairs:
                return head_ids, tail_ids, room
            pairs = pairs[1:]

    def document_budget(self, session: DocumentSession, question: str = "", history=None) -> int:
        """Tokens of document that fit with this question (what a card reports for an empty question)."""
        return self.prompt_frame(session, question, history)[2]

    def build_prompt(
        self,
        session: DocumentSession,
        question: str,
        *,
        history=None,
        strategy: str = "retrieve",
        max_new_tokens: int | None = None,
        reading: tuple[int, int] | None = None,
    ) -> tuple[list[int], FitReport]:
        """The full prompt ids for a question and the report of what was kept (with its sources).

        ``reading``: the ``(passage_tokens, lead_tokens)`` that retrieval uses (default: the profile's).
        """
        head_ids, tail_ids, budget = self.prompt_frame(session, question, history, max_new_tokens)
        ids = session.ids
        found: dict = {}  # the windows and scores behind the retrieved spans, for the sources

        def retrieve(room: int) -> list[tuple[int, int]]:
            spans, found["windows"], found["scores"] = self._retrieve(session, question, room, reading)
            return spans

        spans, content = fit_document(ids, budget, strategy, retrieve=retrieve, gap_ids=self._gap_ids)
        several = len(session.parts) > 1
        if several and found:  # passages of several documents: each headed by its document and pages
            content = self._headed_passages(session, spans)
        windows, scores = found.get("windows"), found.get("scores")
        prompt = head_ids + content + tail_ids
        report = FitReport(
            strategy=strategy,
            document_tokens=len(ids),
            kept_tokens=sum(e - s for s, e in spans),
            fits_whole=len(ids) <= budget,
            pages_used=[] if several else session.pages_for(spans),
            budget_tokens=budget,
            passages=len(spans),
            prompt_tokens=len(prompt),
            sources=_sources(session, spans, windows, scores),
            documents=len(session.parts),
            document_pages=session.pages_by_document(spans),
        )
        return prompt, report

    def _retrieve(self, session: DocumentSession, question: str, budget: int, reading=None):
        """(spans, windows, window scores) for documents longer than ``budget`` (``PassageIndex``);
        ``reading``: (passage_tokens, lead_tokens), default the profile's."""
        passage_tokens, lead = reading or (self.profile.passage_tokens, self.profile.lead_tokens)
        index = session.passage_index(passage_tokens)
        scores = index.scores(question)
        if len(session.parts) > 1:
            cost = partial(self._headed_length, session)
            spans = index.select(question, budget, scores=scores, cost=cost, lead_tokens=lead)
            return spans or [self._opening(session, budget)], index.windows, scores
        spans = index.select(
            question, budget, separator_len=len(self._gap_ids), scores=scores, lead_tokens=lead
        )
        if not spans:
            # No word of the question occurs in the document: its opening (title, abstract,
            # contents) is a better guess than an empty prompt.
            spans = [(0, budget)]
        return spans, index.windows, scores

    def _passage_headings(self, session: DocumentSession, spans: Sequence[Span]) -> list[list[int]]:
        """The heading ids before each passage (session token spans, each inside one document)."""
        headings = []
        for k, (part, span) in enumerate(session.locate(spans)):
            text = passage_heading(part.name, part.pages_for([span]), first=k == 0)
            if text not in session.headings:
                session.headings[text] = self._encode(text, first=False)
            headings.append(session.headings[text])
        return headings

    def _headed_length(self, session: DocumentSession, spans: Sequence[Span]) -> int:
        return sum(e - s for s, e in spans) + sum(map(len, self._passage_headings(session, spans)))

    def _headed_passages(self, session: DocumentSession, spans: Sequence[Span]) -> list[int]:
        out: list[int] = []
        for heading, (s, e) in zip(self._passage_headings(session, spans), spans):
            out += heading + session.ids[s:e]
        return out

    def _opening(self, session: DocumentSession, budget: int) -> Span:
        """The longest opening of the first document that fits ``budget`` with its heading (what goes
        in when no word of the question occurs in any document)."""
        start = session.parts[0].start
        end = min(session.parts[0].end, start + budget)
        while end > start:
            over = self._headed_length(session, [(start, end)]) - budget
            if over <= 0:
                break
            end = max(start, end - over)
        return (start, end)

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
        _check_strategy(strategy)
        sampling = Sampling(
            float(temperature),
            float(top_p),
            self.profile.repetition_penalty,
            self.profile.no_repeat_ngram_size,
        )
        max_new = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if max_new < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new}")
        self._own(session)
        prompt, report = self.build_prompt(
            session, question.strip(), history=history, strategy=strategy, max_new_tokens=max_new
        )
        stop_event = stop_event or threading.Event()
        if strategy == "retrieve" and not report.fits_whole and self.profile.alternate_readings:
            # a retrieval reading: answer the others too and keep the best supported (readings.py)
            return self._ask_readings(
                session, question.strip(), history, max_new, sampling, stop_event, prompt, report
            )
        job = _Job(session.id, prompt, report, sampling, max_new, stop_event)
        updates = self._stream(job)
        if report.kept_tokens == report.document_tokens > self.profile.passage_tokens:
            # the whole document was read: its sources are found after the answer, not before
            return self._cite_after(session, question.strip(), updates)
        return updates

    def _ask_readings(
        self, session, question, history, max_new, sampling, stop_event, prompt, report
    ) -> Iterator[AnswerUpdate]:
        """Stream the profile's own reading as usual, then answer the other readings (progress updates
        that keep the first answer's text and add nothing) and end with the answer the model supports
        best across all of them (``readings.choose_answer``), with the passages of the reading that gave
        it. When that is another reading's answer, the last update has ``revised`` set: its text
        replaces what was streamed. Stopped: the first reading's answer, as far as it got."""
        readings = self.profile.readings()
        report.readings = len(readings)
        updates = self._stream(_Job(session.id, prompt, report, sampling, max_new, stop_event))
        first = yield from _until_done(updates)  # streamed live, all but its last update
        prompts, finals = [prompt], [first]
        for k, reading in enumerate(readings[1:], start=2):
            if stop_event.is_set():
                break
            status = (
                f"Comparing with {len(readings) - 1} other readings of the document ({k} of {len(readings)})"
            )
            yield AnswerUpdate(first.text, "", False, first.fit, status=status)
            prompt, report = self.build_prompt(
                session, question, history=history, max_new_tokens=max_new, reading=reading
            )
            report.readings = len(readings)
            updates = self._stream(_Job(session.id, prompt, report, sampling, max_new, stop_event))
            try:
                for update in updates:
                    if update.queued:
                        yield AnswerUpdate(first.text, "", False, first.fit, queued=True, status=status)
                    elif update.done:
                        prompts.append(prompt)
                        finals.append(update)
            finally:
                updates.close()
        chosen = first
        if not stop_event.is_set() and len(finals) > 1:
            chosen = finals[self._best_supported(prompts, [f.text for f in finals])]
        revised = chosen.text != first.text
        yield dataclasses.replace(
            chosen,
            delta=chosen.text if revised else first.delta,
            revised=revised,
            stopped=first.stopped or stop_event.is_set(),
            first_token_s=first.first_token_s,
        )

    def _best_supported(self, prompts: Sequence[list[int]], texts: Sequence[str]) -> int:
        """Index of the answer the model supports best across the readings' prompts."""
        distinct = list(dict.fromkeys(texts))
        answers = [self._encode(t, first=False) for t in distinct]
        with self._generate_lock:
            per_prompt = [answer_logprobs(self.model, p, answers, self.eos_ids) for p in prompts]
        scores = [[row[c] for row in per_prompt] for c in range(len(distinct))]
        return texts.index(distinct[choose_answer(distinct, scores)])

    def _cite_after(self, session: DocumentSession, question: str, updates) -> Iterator[AnswerUpdate]:
        """Pass ``updates`` on; before the last one, replace the whole document as its source with the
        passages that support the answer (:func:`supporting_spans`), each with its pages."""
        for update in updates:
            if update.done and update.text.strip():
                index = session.passage_index(self.profile.passage_tokens)
                spans, scores = supporting_spans(index, question, update.text)
                if spans:
                    update.fit.sources = _sources(session, spans, index.windows, scores)
                    update.fit.document_pages = session.pages_by_document(spans)
            yield update

    def answer(self, session: DocumentSession, question: str, **kwargs) -> str:
        """The complete answer text (non-streaming convenience)."""
        final = None
        for update in self.ask(session, question, **kwargs):
            final = update
        return final.text if final else ""

    def _stream(self, job: _Job) -> Iterator[AnswerUpdate]:
        updates: queue.Queue = queue.Queue()
        worker = threading.Thread(
            target=self._worker, args=(job, updates), name="longlora-qa-generate", daemon=True
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
            job.cancel.set()  # the consumer went away
            worker.join(timeout=120)  # a cancelled worker stops after at most one forward pass

    def _worker(self, job: _Job, updates: queue.Queue) -> None:
        try:
            if self._generate_lock.locked():
                updates.put(AnswerUpdate("", "", False, job.report, queued=True))
            with self._generate_lock:
                self._generate(job, updates.put)
        except BaseException as err:  # noqa: BLE001 - delivered to the consumer, never lost
            updates.put(err)

    def _generate(self, job: _Job, emit) -> None:
        from transformers import DynamicCache

        device = next(self.model.parameters()).device
        cache, reused = self._caches.take(
            job.session_id, job.prompt, lambda: DynamicCache(config=self.model.config)
        )
        job.report.reused_tokens = reused
        fed: list[int] = job.prompt[:reused]
        generated: list[int] = []
        text = ""
        try:
            with torch.inference_mode():
                logits = None
                for i in range(reused, len(job.prompt), self.prefill_chunk):
                    if job.stopped():
                        break
                    chunk = job.prompt[i : i + self.prefill_chunk]
                    logits = self._forward(chunk, cache, device)
                    fed.extend(chunk)
                while logits is not None and not job.stopped() and len(generated) < job.max_new_tokens:
                    token = pick(logits, generated, job.sampling)
                    if token in self.eos_ids:
                        break
                    generated.append(token)
                    job.first_token()
                    # trailing whitespace is held back until more text follows, so the deltas
                    # always add up to the final (stripped) answer
                    new_text = self.tokenizer.decode(generated, skip_special_tokens=True).strip()
                    if not new_text.endswith("\ufffd") and new_text != text:
                        emit(job.update(new_text, text, len(generated), done=False))
                        text = new_text
                    if len(generated) >= job.max_new_tokens or job.stopped():
                        break
                    logits = self._forward([token], cache, device)
                    fed.append(token)
        finally:
            self._caches.keep(job.session_id, fed, cache)
        final = self.tokenizer.decode(generated, skip_special_tokens=True).strip()
        emit(job.update(final, text, len(generated), done=True))

    def _forward(self, ids: Sequence[int], cache, device) -> torch.Tensor:
        """Run ``ids`` through the model on top of ``cache``; returns the last logits, (V,) float32."""
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)  # (1, T)
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float()


@dataclasses.dataclass
class _Job:
    """One question being answered: its prompt, settings and stop signals."""

    session_id: str
    prompt: list[int]
    report: FitReport
    sampling: Sampling
    max_new_tokens: int
    stop_event: threading.Event
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    start: float = dataclasses.field(default_factory=time.perf_counter)
    first_token_s: float | None = None

    def stopped(self) -> bool:
        return self.stop_event.is_set() or self.cancel.is_set()

    def first_token(self) -> None:
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.start

    def update(self, text: str, previous: str, new_tokens: int, *, done: bool) -> AnswerUpdate:
        delta = text[len(previous) :] if text.startswith(previous) else text
        return AnswerUpdate(
            text,
            delta,
            done,
            self.report,
            stopped=done and self.stopped(),
            new_tokens=new_tokens,
            first_token_s=self.first_token_s,
        )


def _until_done(updates) -> Iterator[AnswerUpdate]:
    """Yield every update of a stream but its last (done) one, which is returned."""
    try:
        for update in updates:
            if update.done:
                return update
            yield update
    finally:
        updates.close()
    raise RuntimeError("an answer stream ended without its last update")


def default_cache_bytes(device) -> int:
    """The sessions' KV caches may hold a quarter of the memory of the device the model is on (GPU
    memory on CUDA, RAM otherwise); with the model and one prompt's activations that leaves room."""
    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 4
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): 2 GiB
        return 2 << 30


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def supporting_spans(index, question: str, answer: str, most: int = 3) -> tuple[list[Span], list[float]]:
    """The passages (token spans, in document order) that support an answer given from the whole
    document, and every window's score: the windows that score best by BM25 for the answer's words
    with the question's, up to ``most``, keeping those within half the best score. Nothing when no
    word of either occurs in the document."""
    scores = index.scores(f"{answer} {question}")
    best = max(scores, default=0.0)
    if best <= 0:
        return [], scores
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])[:most]
    spans = sorted(index.windows[i] for i in ranked if scores[i] >= best / 2)
    merged: list[Span] = []
    for s, e in spans:  # overlapping windows become one passage
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged, scores


def _sources(session: DocumentSession, spans: Sequence[Span], passages, scores) -> list[Source]:
    """The kept token spans (of the session's sequence) as sources, one per document they touch;
    a retrieved span's score is the best BM25 score of the passages (windows) it overlaps."""
    out = []
    for s, e in spans:
        score = None
        if passages is not None:
            score = max((scores[i] for i, (ps, pe) in enumerate(passages) if ps < e and pe > s), default=None)
        for part, span in session.locate([(s, e)]):
            a, b = part.char_span(*span)
            out.append(Source(part.document.text[a:b], a, b, part.pages_for([span]), score, part.name))
    return out
