"""RULER's synthetic tasks (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your
Long-Context Language Models?", github.com/NVIDIA/RULER), generated offline from local text.

A sample is a pure function of (task, length, index, seed, haystack text, QA records, tokenizer,
chat template). Its prompt is exactly ``length - max_new_tokens`` tokens, so prompt plus answer fit
in ``length`` positions (RULER keeps them under ``length``). Exactness comes from assembling token
ids, not text: the instruction before the context, the context, and the question after it are
encoded separately, and the context (filler blocks with needles between them) is cut to the token
budget left over. An in-context example, where RULER has one, is part of the instruction side, so
its tokens count inside the same budget.

Tasks (RULER's names, templates and metrics; what differs from RULER is in docs/eval.md):

- ``niah_single_1/2/3``: one needle; haystack of repeated filler sentences / book text / book text;
  the value is a number / number / UUID.
- ``niah_multikey_1/2/3``: one needle among other needles with other keys (distractors in book
  text / the haystack made of needles only / needles with UUID keys and values).
- ``niah_multivalue``: four needles share one key; all four values are asked.
- ``niah_multiquery``: four needles with different keys; all four are asked.
- ``vt``: variable tracking: a chain ``VAR ABCDE = 12345. VAR FGHIJ = VAR ABCDE. ...`` in filler;
  name all variables that hold the value. Preceded by RULER's worked example (a short chain of
  3-letter variables in noise, with its answer).
- ``cwe``: common-words extraction: the 10 words repeated most in a numbered word list. Preceded by
  RULER's worked example (a short list with its top 10).
- ``fwe``: frequent-words extraction: the 3 most frequent coded words of a text whose word counts
  follow a Zipf (zeta, alpha 2) law, the most frequent "word" being the noise ``...`` (RULER has
  no example for this task).
- ``qa``: RULER's QA: numbered documents (``Document i:``) of which one, the gold paragraph, states
  the answer; the others are paragraphs of the haystack documents (none stating the answer). The
  default records (``data/ruler/austen-qa.jsonl``) ask about paragraphs of the in-repository
  Austen novels.

Scoring is RULER's: ``all`` (the fraction of expected strings found in the output, case-insensitive)
for every task but ``qa``, which is ``part`` (1 when any gold answer is in the output).
"""

from __future__ import annotations

import functools
import itertools
import random
import re
import string
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from data_tools.errors import DataError
from longlora.eval.ruler_haystack import Haystack, encode, encode_all

NOISE = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.").split(
    ". "
)
NOISE = [s if s.endswith(".") else s + "." for s in NOISE]

# RULER's templates (scripts/data/synthetic/constants.py), each split into the text before the
# context, the text after it, and the answer prefix.
NIAH_TEMPLATE = (
    "Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards.\n",
    "\nWhat are all the special magic {kind} for {query} mentioned in the provided text?",
    " The special magic {kind} for {query} mentioned in the provided text are",
)
NEEDLE = "One of the special magic {kind} for {key} is: {value}."
VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n",
    "\nQuestion: Find all variables that are assigned the value {query} in the text above.",
    " Answer: According to the chain(s) of variable assignment in the text above, {count} variables "
    "are assigned the value {query}, they are:",
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n",
    "\nQuestion: What are the 10 most common words in the above list?",
    " Answer: The top 10 words that appear most often in the list are:",
)
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most "
    "frequently appeared coded words.",
    "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three "
    "most frequently appeared words in the above coded text?",
    " Answer: According to the coded text above, the three most frequently appeared words are:",
)
QA_TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output "
    "any other words.\n\nThe following are given documents.\n\n",
    "\n\nAnswer the question based on the given documents. Only give me the answer and do not output "
    "any other words.\n\nQuestion: {query}",
    " Answer:",
)

# task -> (answer tokens to generate, metric). RULER generates 128 / 30 / 120 / 50 / 32 tokens for
# niah / vt / cwe / fwe / qa; these budgets still hold every expected answer about twice over (7-digit
# numbers, 36-character UUIDs, ten short words) and keep a CPU run affordable: a wrong answer runs
# to the end of its budget, and decoding dominates the cost at short lengths.
TASKS: dict[str, tuple[int, str]] = {
    "niah_single_1": (32, "all"),
    "niah_single_2": (32, "all"),
    "niah_single_3": (64, "all"),
    "niah_multikey_1": (32, "all"),
    "niah_multikey_2": (32, "all"),
    "niah_multikey_3": (64, "all"),
    "niah_multivalue": (64, "all"),
    "niah_multiquery": (64, "all"),
    "vt": (30, "all"),
    "cwe": (64, "all"),
    "fwe": (32, "all"),
    "qa": (32, "part"),
}

# Bumped whenever a change to the generators changes the prompts, so a resumed run never mixes
# samples of two versions (it is part of the log's fingerprint).
GENERATOR_VERSION = 2

# RULER builds the variable-tracking example at 500 tokens for every length (its lengths start at
# 4k); here it is at most a quarter of the sample's length, so it leaves room at 1k-2k.
VT_EXAMPLE_TOKENS = 500


@dataclass
class Sample:
    """One prompt and what a correct answer contains. ``input_ids``: exactly ``prompt_tokens`` ids."""

    task: str
    length: int
    index: int
    seed: int
    input_ids: list[int]
    answers: list[str]
    metric: str
    max_new_tokens: int
    depths: list[float] = field(default_factory=list)  # requested, one per answer-bearing needle
    positions: list[int] = field(default_factory=list)  # token offset of each such needle in the prompt
    needles: list[str] = field(default_factory=list)  # the text of each such needle
    context_start: int = 0  # prompt ids [context_start, context_start + context_tokens) are the context
    context_tokens: int = 0
    example_answers: list[str] = field(default_factory=list)  # the in-context example's answers, if any
    example_context_start: int | None = None  # its context: prompt ids [start, start + tokens)
    example_context_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids)

    def record(self) -> dict:
        """JSON-ready description (without the token ids and needle texts)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("input_ids", "needles")}
        return {**out, "prompt_tokens": self.prompt_tokens}


@dataclass
class Example:
    """RULER's in-context example: a short solved instance of the task, placed before the real one."""

    before: str  # its instruction (the template's text before the context)
    context: list[int]  # its context, as token ids
    question: str  # the template's text after the context
    prefix: str  # the answer prefix
    answers: list[str]  # what it asks for
    answer: str  # the worked answer, written after the prefix
    separator: str  # between the example and the real prompt (RULER: a newline or two)


def score_output(output: str, answers: list[str], metric: str) -> float:
    """RULER's string match: ``all`` = share of answers found in the output; ``part`` = 1 if any is."""
    text = output.lower()
    hits = [a.lower() in text for a in answers]
    if metric == "all":
        return sum(hits) / len(hits)
    if metric == "part":
        return float(any(hits))
    raise ValueError(f"unknown metric {metric!r}; use 'all' or 'part'")


# --------------------------------------------------------------------------- assembly


def prompt_frame(
    tokenizer,
    before: str,
    after: str,
    answer_prefix: str,
    chat_template: bool,
    example: Example | None = None,
) -> tuple[list[int], list[int], int | None]:
    """Token ids around the context: ``(head, tail, example_context_start)``.

    With the chat template the instruction and question form the user turn and the answer prefix
    follows the assistant's generation prompt; an example is an earlier user turn (its instruction,
    context and question) answered by an assistant turn (its prefix and answer). Without it the
    tokenizer's leading special tokens (BOS, if it adds one) start the prompt, then the example as
    RULER writes it (instruction, context, question, prefix, answer, separator). The example's
    context ids go in as they are, starting at ``example_context_start`` (None without an example).
    """
    if chat_template:
        marker, example_marker = "\x00CONTEXT\x00", "\x00EXAMPLE\x00"
        messages = [{"role": "user", "content": before + marker + after}]
        if example is not None:
            messages = [
                {"role": "user", "content": example.before + example_marker + example.question},
                {"role": "assistant", "content": (example.prefix + example.answer).strip()},
                *messages,
            ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        head, tail = text.split(marker)
        tail_ids = encode(tokenizer, tail + answer_prefix)
        if example is None:
            return encode(tokenizer, head), tail_ids, None
        pre, mid = head.split(example_marker)
        pre_ids = encode(tokenizer, pre)
        return pre_ids + example.context + encode(tokenizer, mid), tail_ids, len(pre_ids)
    with_special = list(tokenizer("x", verbose=False)["input_ids"])
    plain = encode(tokenizer, "x")
    lead = with_special[: with_special.index(plain[0])] if plain and plain[0] in with_special else []
    tail_ids = encode(tokenizer, after + answer_prefix)
    if example is None:
        return lead + encode(tokenizer, before), tail_ids, None
    pre_ids = lead + encode(tokenizer, example.before)
    mid = example.question + example.prefix + example.answer + example.separator + before
    return pre_ids + example.context + encode(tokenizer, mid), tail_ids, len(pre_ids)


def assemble(
    filler: Iterator[list[int]], needles: list[list[int]], depths: list[float], budget: int
) -> tuple[list[int], list[int], int]:
    """Exactly ``budget`` context ids: filler blocks with the needles inserted between blocks.

    A needle at depth d goes to the block boundary nearest to d of the filler tokens (needles at
    the same boundary keep their order). The filler is cut to the budget left after the needles.
    Returns ``(ids, needle_offsets, complete_blocks)``: the offset of each needle in ``ids`` and how
    many filler blocks are in ``ids`` whole.
    """
    room = budget - sum(len(n) for n in needles)
    if room < 0:
        raise ValueError(f"the needles alone need {budget - room} tokens, more than the {budget} available")
    blocks: list[list[int]] = []
    total = 0
    while total < room:
        block = next(filler)
        blocks.append(block)
        total += len(block)
    bounds, cum = [0], 0
    for block in blocks:
        cum += len(block)
        bounds.append(min(cum, room))
    complete, cum = 0, 0
    for block in blocks:
        if cum + len(block) <= room:
            complete += 1
        cum += len(block)
    flat = [t for block in blocks for t in block][:room]
    at = [min(bounds, key=lambda b: (abs(b - d * room), b)) for d in depths]
    order = sorted(range(len(needles)), key=lambda i: (at[i], i))
    ids: list[int] = []
    offsets = [0] * len(needles)
    cursor = 0
    for i in order:
        ids.extend(flat[cursor : at[i]])
        cursor = at[i]
        offsets[i] = len(ids)
        ids.extend(needles[i])
    ids.extend(flat[cursor:])
    return ids, offsets, complete


def _cycle_from(items: list, start: int) -> Iterator:
    return itertools.islice(itertools.cycle(items), start, None)


def _noise(tok) -> Iterator[list[int]]:
    return _cycle_from(encode_all(tok, [" " + s for s in NOISE]), 0)


# --------------------------------------------------------------------------- task generators


@dataclass
class _Job:
    """What a generator gets: the sample's identity, its random stream, the text and the tokenizer,
    and ``budget`` (template, example=None, **fields) -> (head ids, tail ids, context budget)."""

    task: str
    length: int
    index: int
    seed: int
    rng: random.Random
    hay: Haystack
    tok: object
    budget: Callable


def _key(rng: random.Random, vocabulary: list[str], used: set[str]) -> str:
    while True:
        key = f"{rng.choice(vocabulary)}-{rng.choice(vocabulary)}"
        if key not in used:
            used.add(key)
            return key


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# task -> (haystack, key type, value type, needles with the queried key, distractor keys, queries)
NIAH = {
    "niah_single_1": ("noise", "words", "numbers", 1, 0, 1),
    "niah_single_2": ("essay", "words", "numbers", 1, 0, 1),
    "niah_single_3": ("essay", "words", "uuids", 1, 0, 1),
    "niah_multikey_1": ("essay", "words", "numbers", 1, 3, 1),
    "niah_multikey_2": ("needle", "words", "numbers", 1, 0, 1),
    "niah_multikey_3": ("needle", "uuids", "uuids", 1, 0, 1),
    "niah_multivalue": ("essay", "words", "numbers", 4, 0, 1),
    "niah_multiquery": ("essay", "words", "numbers", 1, 0, 4),
}


def _niah(job: _Job):
    rng, hay, tok = job.rng, job.hay, job.tok
    haystack, key_type, value_type, per_key, distractors, queries = NIAH[job.task]
    new_key = (lambda: _uuid(rng)) if key_type == "uuids" else (lambda: _key(rng, hay.vocabulary, used))
    new_value = _uuid if value_type == "uuids" else _number
    used: set[str] = set()
    keys = [new_key() for _ in range(queries)]
    pairs = [(k, new_value(rng)) for k in keys for _ in range(per_key)]
    wrong = [(new_key(), new_value(rng)) for _ in range(distractors)]
    kind = "uuids" if value_type == "uuids" else "numbers"
    needle_texts = [NEEDLE.format(kind=kind, key=k, value=v) for k, v in pairs]
    wrong_texts = [NEEDLE.format(kind=kind, key=k, value=v) for k, v in wrong]
    query = ", ".join(keys[:-1]) + (" and " if len(keys) > 1 else "") + keys[-1]
    head, tail, budget = job.budget(NIAH_TEMPLATE, kind=kind, query=query)
    if haystack == "noise":
        filler = _noise(tok)
    elif haystack == "essay":
        sentences = hay.sentence_ids(tok)
        filler = _cycle_from(sentences, rng.randrange(len(sentences)))
    else:  # a haystack of needles with other keys (RULER's "needle" haystack)
        filler = _distractor_needles(rng, tok, kind, new_key, new_value)
    texts = needle_texts + wrong_texts
    depths = [round(rng.random(), 4) for _ in texts]
    ids, offsets, _ = assemble(filler, encode_all(tok, [" " + t for t in texts]), depths, budget)
    n = len(needle_texts)
    return (
        head + ids + tail,
        [v for _, v in pairs],
        depths[:n],
        [len(head) + o for o in offsets[:n]],
        needle_texts,
    )


def _distractor_needles(rng, tok, kind, new_key, new_value) -> Iterator[list[int]]:
    while True:
        texts = [" " + NEEDLE.format(kind=kind, key=new_key(), value=new_value(rng)) for _ in range(64)]
        yield from encode_all(tok, texts)


def _vt_chain(rng: random.Random, hops: int, name_length: int, value: str) -> tuple[list[str], list[str]]:
    """``hops + 1`` distinct variable names (in the order drawn) and the chain's statements."""
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(name_length))
        if name not in names:
            names.append(name)
    texts = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    return names, texts


def _vt_context(rng: random.Random, tok, texts: list[str], budget: int):
    """The chain's statements, in order, at random depths of noise filler: ``(ids, offsets, depths)``."""
    depths = sorted(round(rng.random(), 4) for _ in texts)
    ids, offsets, _ = assemble(_noise(tok), encode_all(tok, [" " + t for t in texts]), depths, budget)
    return ids, offsets, depths


def _vt(job: _Job, hops: int = 4):
    rng, tok = job.rng, job.tok
    example_rng = random.Random(rng.getrandbits(64))
    value = str(rng.randint(10_000, 99_999))
    chain, texts = _vt_chain(rng, hops, 5, value)
    # RULER's in-context example (variable_tracking.py): the same task with 3-letter variables and
    # another value, in noise, at most VT_EXAMPLE_TOKENS tokens with its instruction and question.
    example_value = value
    while example_value == value:
        example_value = str(example_rng.randint(10_000, 99_999))
    example_chain, example_texts = _vt_chain(example_rng, hops, 3, example_value)
    before, after, prefix = VT_TEMPLATE
    question = after.format(query=example_value, count=len(example_chain))
    answer_prefix = prefix.format(query=example_value, count=len(example_chain))
    frame = len(encode(tok, before)) + len(encode(tok, question + answer_prefix))
    needles = sum(len(ids) for ids in encode_all(tok, [" " + t for t in example_texts]))
    size = max(min(VT_EXAMPLE_TOKENS, job.length // 4) - frame, needles + 16)
    example_ids, _, _ = _vt_context(example_rng, tok, example_texts, size)
    example = Example(
        before=before,
        context=example_ids,
        question=question,
        prefix=answer_prefix,
        answers=example_chain,
        answer=" " + " ".join(example_chain),
        separator="\n\n",
    )
    head, tail, budget = job.budget(VT_TEMPLATE, example=example, query=value, count=len(chain))
    ids, offsets, depths = _vt_context(rng, tok, texts, budget)
    return head + ids + tail, chain, depths, [len(head) + o for o in offsets], texts


def _numbered(tok, words: list[str], start: int = 1) -> list[list[int]]:
    return encode_all(tok, [f" {start + i}. {w}" for i, w in enumerate(words)])


def _cwe_example(rng: random.Random, tok, words: list[str], length: int, common: int) -> Example | None:
    """RULER's in-context example (common_words_extraction.py): from 4k on, 40 words, the ``common``
    ones 10 times each and the others 3 times; below 4k, 20 words, 3 times and once. The list may
    take at most a third of the length (RULER's 4k list is about a quarter of 4k): past that the 4k
    one falls back to the short one, and there is no example (None) when even that does not fit
    (tokenizers of very short tokens at ~1k)."""
    sizes = ((40, 10, 3), (20, 3, 1)) if length >= 4096 else ((20, 3, 1),)
    for n_words, common_freq, rare_freq in sizes:
        chosen = words[:n_words]
        items = chosen[:common] * common_freq + chosen[common:] * rare_freq
        rng.shuffle(items)
        ids = [t for block in _numbered(tok, items) for t in block]
        if len(ids) <= length // 3:
            break
    else:
        return None
    before, after, prefix = CWE_TEMPLATE
    top = chosen[:common]
    return Example(
        before=before,
        context=ids,
        question=after,
        prefix=prefix,
        answers=top,
        answer=" " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(top)),
        separator="\n",
    )


def _cwe(job: _Job, common: int = 10):
    rng, hay, tok = job.rng, job.hay, job.tok
    example_rng = random.Random(rng.getrandbits(64))
    words = rng.sample(hay.vocabulary, len(hay.vocabulary))
    example = _cwe_example(example_rng, tok, words[-40:], job.length, common)
    words = words[:-40]  # the example's words stay out of the real list
    head, tail, budget = job.budget(CWE_TEMPLATE, example=example)
    per_item = sum(len(b) for b in _numbered(tok, words[:50], 100)) / 50
    # RULER repeats each common word 30 times and the others 3 times from 4k on, 6 times and once
    # below 4k; a context too short for that gets fewer common repeats (still 3x a rare word's), so
    # the rare words fill at least half the list and the top 10 stay unambiguous.
    common_freq, rare_freq = (30, 3) if job.length >= 4096 else (6, 1)
    common_freq = int(max(rare_freq * 3, min(common_freq, budget * 0.5 / (common * per_item))))
    rare_count = max(0, int((budget / per_item - common * common_freq) / rare_freq))
    top, rare, spare = words[:common], words[common : common + rare_count], words[common + rare_count :]
    items = top * common_freq + rare * rare_freq
    rng.shuffle(items)
    items += spare  # read once each, only if the estimate fell short of the budget

    def blocks() -> Iterator[list[int]]:
        for start in range(0, len(items), 256):
            yield from _numbered(tok, items[start : start + 256], start + 1)
        raise DataError(
            f"cwe at {budget} tokens needs more distinct words than the haystack has; add documents"
        )

    ids, _, complete = assemble(blocks(), [], [], budget)
    counts = Counter(items[:complete])
    answers = [w for w, _ in counts.most_common(common)]
    if set(answers) != set(top):
        raise ValueError(
            f"cwe at {budget} tokens: the list is too short for {common} common words; use longer lengths"
        )
    return head + ids + tail, answers, [], [], []


@functools.lru_cache(maxsize=8)
def _zeta(alpha: float) -> float:
    """Riemann zeta(alpha) for alpha > 1 (partial sum plus the integral of the tail)."""
    n = 100_000
    return sum(k**-alpha for k in range(1, n)) + n ** (1 - alpha) / (alpha - 1)


def _fwe(job: _Job, alpha: float = 2.0, word_length: int = 6):
    """RULER's freq_words_extraction.py: a vocabulary of ``length // 50`` random 6-letter words, the
    first replaced by the noise ``...``; word k appears int(n * k^-alpha / zeta(alpha)) times, shuffled;
    the answers are words 2-4 (the three most frequent after the dots)."""
    rng, tok = job.rng, job.tok
    head, tail, budget = job.budget(FWE_TEMPLATE)
    size = max(16, job.length // 50)
    vocab: list[str] = []
    while len(vocab) < size:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(word_length))
        if word not in vocab:
            vocab.append(word)
    vocab[0] = "..."
    ids_of = encode_all(tok, [" " + w for w in vocab])
    share = [(k + 1) ** -alpha / _zeta(alpha) for k in range(size)]
    per_word = sum(p * len(ids) for p, ids in zip(share, ids_of)) / sum(share)
    n = int(budget / per_word * 1.05) + 16
    for _ in range(20):
        order = [k for k in range(size) for _ in range(int(n * share[k]))]
        rng.shuffle(order)
        blocks = [ids_of[k] for k in order]
        if sum(map(len, blocks)) < budget:
            n = int(n * 1.1) + 16
            continue
        ids, _, complete = assemble(iter(blocks), [], [], budget)
        ranked = Counter(k for k in order[:complete] if k).most_common(4)
        if len(ranked) == 4 and [k for k, _ in ranked[:3]] == [1, 2, 3] and ranked[2][1] > ranked[3][1]:
            return head + ids + tail, vocab[1:4], [], [], []
        n = int(n * 1.1) + 16
    raise ValueError(f"fwe at {budget} tokens: no clear top 3 words after 20 draws; use longer lengths")


def _document(number: int, text: str) -> str:
    """RULER's QA document block; blocks after the first carry the blank line that separates them."""
    return ("" if number == 1 else "\n\n") + f"Document {number}:\n{text}"


def _place_documents(tok, gold: str, pool: Iterator[str], depth: float, budget: int):
    """Numbered documents filling exactly ``budget`` tokens (the last one cut), the gold one whole at
    the document boundary nearest to ``depth`` of the distractors: ``(ids, gold offset, gold block)``."""
    gold_tokens = len(encode(tok, _document(2, gold)))
    room = budget - gold_tokens
    texts: list[str] = []
    estimate = 0
    while estimate < budget:  # distractors, until they (with their headings) fill the budget
        texts.append(next(pool))
        estimate += len(encode(tok, texts[-1])) + 8
    bounds, cum = [0], 0
    for block in encode_all(tok, [_document(k + 1, t) for k, t in enumerate(texts)]):
        cum += len(block)
        bounds.append(min(cum, room))
    at = min(range(len(bounds)), key=lambda i: (abs(bounds[i] - depth * room), i))
    while True:
        docs = texts[:at] + [gold] + texts[at:]
        blocks = encode_all(tok, [_document(k + 1, d) for k, d in enumerate(docs)])
        offset = sum(len(b) for b in blocks[:at])
        if offset + len(blocks[at]) > budget and at > 0:
            at -= 1  # it would end past the budget (numbers before it grew longer): one boundary earlier
            continue
        if sum(map(len, blocks)) < budget:
            texts.append(next(pool))
            continue
        ids = [t for block in blocks for t in block][:budget]
        return ids, offset, _document(at + 1, gold)


def _qa(job: _Job):
    rng, hay, tok = job.rng, job.hay, job.tok
    records = hay.qa_records
    if not records:
        raise DataError("the qa task needs QA records: pass --qa-data FILE.jsonl")
    # The gold paragraph must leave room for distractors: questions whose paragraph takes at most
    # half the context (the budget depends on the question only through a few tokens, so size it
    # with the longest). Sample i asks the i-th of them in an order fixed by the seed alone, so
    # every length asks the same questions (as RULER does).
    longest = max(records, key=lambda r: len(r["question"]))
    _, _, room = job.budget(QA_TEMPLATE, query=longest["question"])
    sizes = [len(ids) for ids in encode_all(tok, [_document(2, r["passage"]) for r in records])]
    order = list(range(len(records)))
    random.Random(f"{job.seed}:qa").shuffle(order)
    fits = [i for i in order if sizes[i] <= room // 2]
    if not fits:
        raise ValueError(
            f"qa at this length leaves {room} tokens of context, too few for any QA paragraph "
            f"(shortest {min(sizes)} tokens) and distractors; use longer lengths or leave qa out of --tasks"
        )
    gold = records[fits[job.index % len(fits)]]
    head, tail, budget = job.budget(QA_TEMPLATE, query=gold["question"])
    # distractors: the haystack's paragraphs in random order, without the gold paragraph and without
    # any paragraph that has a gold answer in it, so the gold paragraph is the only one that answers
    stated = re.compile("|".join(rf"(?<!\w){re.escape(a.lower())}(?!\w)" for a in gold["answers"]))
    pool = [p for p in hay.paragraphs if p != gold["passage"] and not stated.search(p.lower())]
    if len(pool) < 10:
        raise DataError(
            f"the haystack has only {len(pool)} paragraphs without the answer to {gold['question']!r}; "
            "give longer documents with --haystack"
        )
    rng.shuffle(pool)
    depth = round(rng.random(), 4)
    ids, offset, needle = _place_documents(tok, gold["passage"], _cycle_from(pool, 0), depth, budget)
    return head + ids + tail, gold["answers"], [depth], [len(head) + offset], [needle]


GENERATORS = {**dict.fromkeys(NIAH, _niah), "vt": _vt, "cwe": _cwe, "fwe": _fwe, "qa": _qa}


def make_sample(
    task: str,
    length: int,
    index: int,
    seed: int,
    haystack: Haystack,
    tokenizer,
    *,
    chat_template: bool = False,
    max_new_tokens: int | None = None,
) -> Sample:
    """Build sample ``index`` of ``task`` at ``length`` tokens (prompt + answer budget; the answer
    budget is the task's own unless ``max_new_tokens`` is given)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    max_new, metric = TASKS[task]
    max_new = max_new_tokens or max_new
    frame: dict = {}

    def budget_fn(template, example: Example | None = None, **fmt):
        before, after, prefix = (part.format(**fmt) for part in template)
        head, tail, example_start = prompt_frame(tokenizer, before, after, prefix, chat_template, example)
        budget = length - max_new - len(head) - len(tail)
        if budget < 32:
            raise ValueError(
                f"{task} at length {length}: the instruction, question{', example' if example else ''} "
                f"and {max_new} answer tokens leave {budget} tokens of context; use lengths of at "
                f"least {length - budget + 256}"
            )
        frame.update(context_start=len(head), context_tokens=budget)
        if example is not None:
            frame.update(
                example_answers=list(example.answers),
                example_context_start=example_start,
                example_context_tokens=len(example.context),
            )
        return head, tail, budget

    rng = random.Random(f"{seed}:{task}:{length}:{index}")
    job = _Job(task, length, index, seed, rng, haystack, tokenizer, budget_fn)
    ids, answers, depths, positions, needles = GENERATORS[task](job)
    return Sample(
        task=task,
        length=length,
        index=index,
        seed=seed,
        input_ids=ids,
        answers=list(answers),
        metric=metric,
        max_new_tokens=max_new,
        depths=list(depths),
        positions=list(positions),
        needles=list(needles),
        **frame,
    )
