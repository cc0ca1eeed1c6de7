"""Training data: packed rows for context extension and supervised examples for long-QA fine-tuning.

Pre-training (paper Sec. 4.1, next-token prediction on long text) reads documents into one token stream
with document boundaries and cuts it into rows of ``context_length`` tokens:

- ``pack="document"`` (default): ``position_ids`` restart at 0 at every document start inside a row. With
  no attention mask, transformers builds a block-diagonal causal mask from them, and S2-Attn counts its
  groups from each document's start, so no token attends across documents. The first token of each
  document carries no loss (nothing in its row predicts it).
- ``pack="eos"``: documents are joined with EOS and rows are plain windows of the stream (positions
  ``0..L-1``), as in the original LongLoRA. Token files are used as written.

Sources (``read_pretrain_stream``): files, folders and globs read by ``data_tools.reader`` (the reader
every command shares: documents .pdf/.txt/.md/..., ``.jsonl``/``.json`` records with a ``text`` field,
``data_tools`` token files ``.bin``), a ``datasets`` dataset saved with ``save_to_disk``, or a dataset
name for ``datasets.load_dataset`` (its ``train`` split, ``text`` column). Token files stay memory-mapped
in their own dtype, also when several are given (``data_tools.tokenfile.ChainedTokens``).

Supervised fine-tuning reads LongAlpaca records (``instruction``, optional ``input``, ``output``). The
prompt uses the tokenizer's chat template when it has one, else ``[INST]{instruction}[/INST]``; only the
answer tokens carry loss. A record longer than ``context_length`` loses tokens from the *middle of its
document* (the material between the paper's prompt prefix and "Now the material ends.", or the
``input`` field); the question and the answer are never cut (the original code truncated on the right,
which silently dropped both). What was cut or dropped, and why, is counted in ``SFTStats``.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data_tools.errors import DataError
from data_tools.prompts import MATERIAL_END, wrap_plain
from data_tools.reader import find_sources, is_glob, read_texts
from data_tools.tokenfile import ChainedTokens

IGNORE_INDEX = -100
PACK_MODES = ("document", "eos")


# ----------------------------------------------------------------------------- pre-training stream


@dataclass
class TokenStream:
    """One flat token stream and the sorted start offsets of its documents.

    ``tokens`` is an array, a memmap of a token file, or a ``ChainedTokens`` view of several of them.
    """

    tokens: np.ndarray | ChainedTokens
    doc_starts: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_documents(self) -> int:
        return int(len(self.doc_starts))


def concat_streams(streams: Sequence[TokenStream]) -> TokenStream:
    """Join streams end to end without copying: token files stay memory-mapped in their own dtype."""
    streams = [s for s in streams if len(s)]
    if len(streams) == 1:
        return streams[0]
    if not streams:
        return TokenStream(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    offsets = np.cumsum([0] + [len(s) for s in streams[:-1]])
    parts = [
        p for s in streams for p in (s.tokens.parts if isinstance(s.tokens, ChainedTokens) else [s.tokens])
    ]
    starts = np.concatenate([s.doc_starts + off for s, off in zip(streams, offsets)])
    return TokenStream(ChainedTokens(parts), starts)


def tokenize_documents(texts: Iterable[str], tokenizer, *, add_eos: bool = False) -> TokenStream:
    """Tokenize each text (no special tokens; EOS appended when ``add_eos``) into one stream."""
    pieces: list[np.ndarray] = []
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise DataError("--pack eos needs a tokenizer with an EOS token; use --pack document")
    for text in texts:
        if not text or not text.strip():
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if add_eos:
            ids = [*ids, eos]
        pieces.append(np.asarray(ids, dtype=np.int64))
    if not pieces:
        return TokenStream(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    starts = np.cumsum([0] + [len(p) for p in pieces[:-1]])
    return TokenStream(np.concatenate(pieces), starts.astype(np.int64))


def _texts_from_dataset(ds, source: str) -> list[str]:
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{source}: dataset has splits {sorted(ds.keys())} but no 'train' split")
        ds = ds["train"]
    if "text" not in ds.column_names:
        raise DataError(f"{source}: dataset has columns {ds.column_names} but no 'text' column")
    return list(ds["text"])


def _is_saved_dataset(path: Path) -> bool:
    return (
        (path / "dataset_info.json").is_file()
        or (path / "dataset_dict.json").is_file()
        or (path / "state.json").is_file()
    )


def _stream_of_source(source, tokenizer, add_eos: bool) -> TokenStream:
    """One ``data_tools.reader.Source`` -> its tokens (a token file stays a memmap)."""
    if source.kind == "tokens":
        return _token_file_stream(source.path, tokenizer)
    texts = (text for _, text in read_texts(source))
    return tokenize_documents(texts, tokenizer, add_eos=add_eos)


def read_pretrain_stream(sources: Sequence[str], tokenizer, *, pack: str = "document") -> TokenStream:
    """Read every source into one token stream (see the module docstring for the accepted sources)."""
    if pack not in PACK_MODES:
        raise DataError(f"unknown --pack {pack!r}; choose one of {', '.join(PACK_MODES)}")
    add_eos = pack == "eos"
    streams: list[TokenStream] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir() and _is_saved_dataset(path):
            import datasets

            texts = _texts_from_dataset(datasets.load_from_disk(str(path)), source)
            streams.append(tokenize_documents(texts, tokenizer, add_eos=add_eos))
        elif path.exists() or is_glob(source) or os.sep in source or source.startswith(".") or path.suffix:
            # files, folders and globs: the reader every command shares (it explains a missing path)
            for found in find_sources([source], flag="--data"):
                streams.append(_stream_of_source(found, tokenizer, add_eos))
        else:
            import datasets

            try:
                ds = datasets.load_dataset(source, split="train")
            except Exception as err:
                raise DataError(
                    f"{source}: not a local file and datasets.load_dataset failed ({type(err).__name__}: {err}); "
                    "check the name, or save the dataset with save_to_disk and pass the folder"
                ) from None
            streams.append(tokenize_documents(_texts_from_dataset(ds, source), tokenizer, add_eos=add_eos))
    stream = concat_streams(streams)
    if len(stream) == 0:
        raise DataError(
            f"no training text in {', '.join(map(str, sources))}: every source is empty; pass documents with text"
        )
    return stream


def _token_file_stream(path: Path, tokenizer) -> TokenStream:
    from data_tools.tokenfile import open_token_file

    tf = open_token_file(path)
    tf.check_vocabulary(len(tokenizer))
    starts = (
        np.asarray([s for s, _ in tf.documents], dtype=np.int64) if tf.documents else np.zeros(1, np.int64)
    )
    return TokenStream(tf.tokens, starts)


class PackedDataset(torch.utils.data.Dataset):
    """Rows of ``context_length`` tokens cut from a ``TokenStream``; the last row is padded.

    Each item: ``input_ids``, ``position_ids``, ``labels`` (LongTensor ``(L,)``; padding and
    unpredictable document starts carry ``-100``).
    """

    def __init__(self, stream: TokenStream, context_length: int, *, pack: str = "document", pad_id: int = 0):
        if pack not in PACK_MODES:
            raise DataError(f"unknown --pack {pack!r}; choose one of {', '.join(PACK_MODES)}")
        if context_length < 2:
            raise DataError(f"--context-length must be at least 2, got {context_length}")
        if len(stream) == 0:
            raise DataError("the training data is empty; pass documents with text")
        self.stream = stream
        self.context_length = int(context_length)
        self.pack = pack
        self.pad_id = int(pad_id)
        self._starts = np.asarray(stream.doc_starts, dtype=np.int64)

    def __len__(self) -> int:
        return math.ceil(len(self.stream) / self.context_length)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        L = self.context_length
        lo, hi = i * L, min((i + 1) * L, len(self.stream))
        ids = np.full(L, self.pad_id, dtype=np.int64)
        ids[: hi - lo] = np.asarray(self.stream.tokens[lo:hi], dtype=np.int64)
        labels = ids.copy()
        labels[hi - lo :] = IGNORE_INDEX
        if self.pack == "eos":
            positions = np.arange(L, dtype=np.int64)
        else:
            # position inside the current document, restarting at the row start and at each document start
            flat = np.arange(lo, lo + L, dtype=np.int64)
            doc = np.searchsorted(self._starts, flat, side="right") - 1
            start = np.where(doc >= 0, self._starts[np.clip(doc, 0, None)], lo)
            start = np.maximum(start, lo)
            start[hi - lo :] = hi  # padding is its own segment
            positions = flat - start
            labels[positions == 0] = IGNORE_INDEX
        return {
            "input_ids": torch.from_numpy(ids),
            "position_ids": torch.from_numpy(positions),
            "labels": torch.from_numpy(labels),
        }


# ----------------------------------------------------------------------------- supervised fine-tuning


@dataclass
class SFTStats:
    """How the records fared against the context length."""

    total: int = 0
    kept_whole: int = 0
    cut: int = 0
    cut_tokens: int = 0
    dropped: Counter = field(default_factory=Counter)

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        text = (
            f"{self.total} records: {self.kept_whole} fit whole, {self.cut} had the middle of their document "
            f"cut ({self.cut_tokens} tokens removed), {self.num_dropped} dropped"
        )
        if self.dropped:
            text += " (" + "; ".join(f"{n} {reason}" for reason, n in self.dropped.most_common()) + ")"
        return text

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "kept_whole": self.kept_whole,
            "cut": self.cut,
            "cut_tokens": self.cut_tokens,
            "dropped": dict(self.dropped),
        }


def _user_text(record: dict) -> tuple[str, int, int]:
    """The user turn and the character span of its document (start == end when there is none)."""
    instruction = record["instruction"]
    extra = (record.get("input") or "").strip()
    if extra:
        text = f"{instruction}\n\n{extra}"
        return text, len(text) - len(extra), len(text)
    end = instruction.rfind(MATERIAL_END)
    if end >= 0:
        # the paper's template: "Below is a paper. ... after the paper.\n{content}\nNow the material ends. {q}"
        start = instruction.find("\n") + 1 if instruction.startswith("Below is") else 0
        if start > end:
            start = 0
        return instruction, start, end
    # no template: treat the last line as the question, everything before it as the material
    end = instruction.rstrip().rfind("\n")
    return instruction, 0, max(end, 0)


def _render(tokenizer, user: str, answer: str) -> tuple[str, str, bool]:
    """(prompt text, answer text, answer needs an explicit EOS)."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], tokenize=False
        )
        # templates may trim the answer too (Llama-2-chat's `.strip()`): train on what the template renders
        if full.startswith(prompt) and answer.strip() in full[len(prompt) :]:
            tail = full[len(prompt) :]
            return prompt, tail, tokenizer.eos_token is not None and tokenizer.eos_token not in tail
        return prompt, answer, True
    return wrap_plain(user), answer, True


def _tokenize_with_span(tokenizer, text: str, start: int, end: int, add_special: bool):
    """Token ids of ``text`` and the token range [a, b) that lies inside the character span [start, end)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        inside = [i for i, (s, e) in enumerate(offsets) if e > s and s >= start and e <= end]
        if not inside:
            return ids, 0, 0
        return ids, inside[0], inside[-1] + 1
    before = tokenizer(text[:start], add_special_tokens=add_special)["input_ids"]
    middle = tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
    after = tokenizer(text[end:], add_special_tokens=False)["input_ids"]
    return before + middle + after, len(before), len(before) + len(middle)


def _locate_document(prompt: str, user: str, start: int, end: int) -> tuple[int, int] | None:
    """The character span of the user's document ``user[start:end]`` inside the rendered ``prompt``.

    Chat templates may trim the user message (Llama-3's ``| trim``, Llama-2-chat's ``.strip()``), so the
    message is looked up as given, then stripped, then the document alone. None: the template rewrote the
    document (there is no span to shorten); ``(0, 0)``: the record has no document.
    """
    if end <= start:
        return 0, 0
    offset = prompt.find(user)
    if offset >= 0:
        return offset + start, offset + end
    core = user.strip()
    offset = prompt.find(core) if core else -1
    if offset >= 0:
        lead = len(user) - len(user.lstrip())
        lo, hi = (min(max(x - lead, 0), len(core)) for x in (start, end))
        return offset + lo, offset + hi
    document = user[start:end].strip()
    offset = prompt.find(document) if document else -1
    return (offset, offset + len(document)) if offset >= 0 else None


@dataclass
class SFTExample:
    input_ids: list[int]
    labels: list[int]
    cut_tokens: int = 0


def build_sft_example(record: dict, tokenizer, max_length: int) -> SFTExample | str:
    """One record -> ``SFTExample`` (prompt tokens masked with -100), or the reason it is dropped."""
    answer = record.get("output") or ""
    if not answer.strip():
        return "empty output"
    if not (record.get("instruction") or "").strip():
        return "empty instruction"
    user, doc_start, doc_end = _user_text(record)
    prompt, answer_text, add_eos = _render(tokenizer, user, answer)
    span = _locate_document(prompt, user, doc_start, doc_end)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    prompt_ids, a, b = _tokenize_with_span(tokenizer, prompt, *(span or (0, 0)), add_special=not has_template)
    answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    if add_eos:
        answer_ids = [*answer_ids, tokenizer.eos_token_id]
    excess = len(prompt_ids) + len(answer_ids) - max_length
    cut = 0
    if excess > 0:
        fixed = len(prompt_ids) - (b - a) + len(answer_ids)
        if span is None and doc_end > doc_start:
            return "the chat template rewrote the document, so it cannot be shortened to the context length"
        if fixed > max_length:
            return "question and answer alone are longer than the context length"
        keep = (b - a) - excess
        head = keep // 2
        prompt_ids = prompt_ids[: a + head] + prompt_ids[b - (keep - head) :]
        cut = excess
    ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(answer_ids)
    return SFTExample(ids, labels, cut)


class SFTDataset(torch.utils.data.Dataset):
    """Supervised examples built from records; ``stats`` says how many were cut or dropped."""

    def __init__(self, records: Sequence[dict], tokenizer, max_length: int):
        self.examples: list[SFTExample] = []
        self.stats = SFTStats()
        for record in records:
            self.stats.total += 1
            ex = build_sft_example(record, tokenizer, max_length)
            if isinstance(ex, str):
                self.stats.dropped[ex] += 1
                continue
            if ex.cut_tokens:
                self.stats.cut += 1
                self.stats.cut_tokens += ex.cut_tokens
            else:
                self.stats.kept_whole += 1
            self.examples.append(ex)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ex = self.examples[i]
        return {"input_ids": torch.tensor(ex.input_ids), "labels": torch.tensor(ex.labels)}


def read_sft_dataset(paths: Sequence[str], tokenizer, max_length: int) -> SFTDataset:
    """LongAlpaca records from JSON lists / JSONL files -> ``SFTDataset`` (raises on an empty result)."""
    from data_tools.records import read_records

    records: list[dict] = []
    for path in paths:
        if not Path(path).expanduser().is_file():
            raise DataError(
                f"{path}: no such file; --mode sft reads LongAlpaca records from a .json or .jsonl file"
            )
        records.extend(read_records(path, required=("instruction", "output")))
    if not records:
        raise DataError(
            f"no records in {', '.join(map(str, paths))}: the file(s) are empty; pass LongAlpaca records"
        )
    ds = SFTDataset(records, tokenizer, max_length)
    if len(ds) == 0:
        raise DataError(
            f"all {ds.stats.total} records were dropped ({ds.stats.summary()}); raise --context-length or fix the data"
        )
    return ds


def collate(batch: Sequence[dict[str, torch.Tensor]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack items; SFT items of different lengths are right-padded with an attention mask."""
    if "position_ids" in batch[0]:  # packed rows: equal length, masks come from position_ids
        return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}
    width = max(len(b["input_ids"]) for b in batch)
    out = {
        "input_ids": torch.full((len(batch), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long),
        "attention_mask": torch.zeros((len(batch), width), dtype=torch.long),
    }
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        out["input_ids"][i, :n] = b["input_ids"]
        out["labels"][i, :n] = b["labels"]
        out["attention_mask"][i, :n] = 1
    if len(batch) == 1:
        del out["attention_mask"]  # no padding: let the model use its plain causal mask
    return out
