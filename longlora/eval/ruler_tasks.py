"""RULER-style synthetic tasks (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your
Long-Context Language Models?"), generated offline from local text.

A sample is a pure function of (task, length, index, seed, haystack text, tokenizer, chat
template). Its prompt is exactly ``length - max_new_tokens`` tokens, so prompt plus answer fit in
``length`` positions (as RULER does). Exactness comes from assembling token ids, not text: the
instruction before the context, the context, and the question after it are encoded separately,
and the context (filler blocks with needles between them) is cut to the token budget left over.

Tasks (RULER's names and templates):

- ``niah_single_1/2/3``: one needle; haystack of repeated filler sentences / book text / book text;
  the value is a number / number / UUID.
- ``niah_multikey_1/2/3``: one needle among other needles with other keys (distractors in book
  text / the haystack made of needles only / needles with UUID keys and values).
- ``niah_multivalue``: four needles share one key; all four values are asked.
- ``niah_multiquery``: four needles with different keys; all four are asked.
- ``vt``: variable tracking: a chain ``VAR A = 12345. VAR B = VAR A. ...`` in filler; name all
  variables that hold the value.
- ``cwe``: common-words extraction: the 10 words repeated most in a numbered word list.
- ``fwe``: frequent-words extraction: the 3 most frequent coded words of a Zipf-distributed text.
- ``qa``: a reading-comprehension passage (with its question and gold answer) hidden among
  distractor passages: the other QA passages, then paragraphs of the haystack documents.

Scoring is RULER's: ``all`` (the fraction of expected strings found in the output, case-insensitive)
for every task but ``qa``, which is ``part`` (1 when any gold answer is in the output).
"""

from __future__ import annotations

import itertools
import random
import string
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from data_tools.errors import DataError
from longlora.eval.ruler_haystack import Haystack, encode, encode_all

NOISE = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.").split(
    ". "
)
NOISE = [s if s.endswith(".") else s + "." for s in NOISE]

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
    "frequently appeared coded words.\n",
    "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three "
    "most frequently appeared words in the above coded text?",
    " Answer: According to the coded text above, the three most frequently appeared words are:",
)
QA_TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output "
    "any other words.\n\nThe following are given documents.\n\n",
    "\nAnswer the question based on the given documents. Only give me the answer and do not output "
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

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids)

    def record(self) -> dict:
        """JSON-ready description (without the token ids and needle texts)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("input_ids", "needles")}
        return {**out, "prompt_tokens": self.prompt_tokens}


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


def prompt_frame(tokenizer, before: str, after: str, answer_prefix: str, chat_template: bool):
    """Token ids around the context: ``(head, tail)``. With the chat template the instruction and
    question form the user turn and the answer prefix follows the assistant's generation prompt;
    without it the tokenizer's leading special tokens (BOS, if it adds one) start the prompt."""
    if chat_template:
        marker = "\x00CONTEXT\x00"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": before + marker + after}], tokenize=False, add_generation_prompt=True
        )
        head, tail = text.split(marker)
        return encode(tokenizer, head), encode(tokenizer, tail + answer_prefix)
    with_special = list(tokenizer("x", verbose=False)["input_ids"])
    plain = encode(tokenizer, "x")
    lead = with_special[: with_special.index(plain[0])] if plain and plain[0] in with_special else []
    return lead + encode(tokenizer, before), encode(tokenizer, after + answer_prefix)


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


# --------------------------------------------------------------------------- task generators


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


def _niah(task, rng, hay, tok, budget_fn):
    haystack, key_type, value_type, per_key, distractors, queries = NIAH[task]
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
    head, tail, budget = budget_fn(NIAH_TEMPLATE, kind=kind, query=query)
    if haystack == "noise":
        filler = _cycle_from(encode_all(tok, [" " + s for s in NOISE]), 0)
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


def _vt(rng, hay, tok, budget_fn, hops: int = 4):
    names: set[str] = set()
    while len(names) < hops + 1:
        names.add("".join(rng.choice(string.ascii_uppercase) for _ in range(5)))
    chain = sorted(names, key=lambda _: rng.random())
    value = str(rng.randint(10_000, 99_999))
    texts = [f"VAR {chain[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(chain, chain[1:])]
    head, tail, budget = budget_fn(VT_TEMPLATE, query=value, count=len(chain))
    depths = sorted(round(rng.random(), 4) for _ in texts)  # the chain reads in order
    filler = _cycle_from(encode_all(tok, [" " + s for s in NOISE]), 0)
    ids, offsets, _ = assemble(filler, encode_all(tok, [" " + t for t in texts]), depths, budget)
    return head + ids + tail, chain, depths, [len(head) + o for o in offsets], texts


def _cwe(rng, hay, tok, budget_fn, common: int = 10, rare_freq: int = 3):
    head, tail, budget = budget_fn(CWE_TEMPLATE)
    words = rng.sample(hay.vocabulary, len(hay.vocabulary))
    per_item = (
        sum(len(b) for b in encode_all(tok, [f" {100 + i}. {w}" for i, w in enumerate(words[:50])])) / 50
    )
    # RULER repeats each common word 30 times; short contexts get fewer so the rare words still fill
    # half the list (always at least 3x as often as a rare word, so the top 10 stay unambiguous).
    common_freq = int(max(rare_freq * 3, min(30, budget * 0.5 / (common * per_item))))
    rare_count = max(0, int((budget / per_item - common * common_freq) / rare_freq))
    top, rare, spare = words[:common], words[common : common + rare_count], words[common + rare_count :]
    items = top * common_freq + rare * rare_freq
    rng.shuffle(items)
    items += spare  # read once each, only if the estimate fell short of the budget

    def blocks() -> Iterator[list[int]]:
        for start in range(0, len(items), 256):
            chunk = items[start : start + 256]
            yield from encode_all(tok, [f" {start + i + 1}. {w}" for i, w in enumerate(chunk)])
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


def _fwe(rng, hay, tok, budget_fn, alpha: float = 2.0, vocab: int = 1000):
    head, tail, budget = budget_fn(FWE_TEMPLATE)
    coded: list[str] = []
    seen: set[str] = set()
    while len(coded) < vocab:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))
        if w not in seen:
            seen.add(w)
            coded.append(w)
    weights = [1 / (r + 1) ** alpha for r in range(vocab)]
    for _ in range(20):
        words = rng.choices(coded, weights, k=budget + 16)  # a word is at least one token
        blocks = encode_all(tok, [" " + w for w in words])
        ids, _, complete = assemble(iter(blocks), [], [], budget)
        ranked = Counter(words[:complete]).most_common(4)
        if len(ranked) == 4 and ranked[2][1] > ranked[3][1]:  # a unique top 3
            return head + ids + tail, [w for w, _ in ranked[:3]], [], [], []
    raise ValueError(f"fwe at {budget} tokens: no unique top 3 words after 20 draws; use longer lengths")


def _qa(rng, hay, tok, budget_fn):
    if not hay.qa_records:
        raise DataError("the qa task needs QA records: pass --qa-data FILE.jsonl (Passage/Question records)")
    # The gold passage must leave room for distractors: draw among those under half the budget
    # (the budget depends on the question only through a few tokens, so size it with the longest).
    longest = max(hay.qa_records, key=lambda r: len(r["question"]))
    _, _, room = budget_fn(QA_TEMPLATE, query=longest["question"])
    passages = hay.passage_ids(tok)
    sizes = [len(b) for b in passages]
    fits = [i for i, n in enumerate(sizes) if n <= room // 2]
    if not fits:
        raise ValueError(
            f"qa at this length leaves {room} tokens of context, too few for any QA passage "
            f"(shortest {min(sizes)} tokens) and distractors; use longer lengths or leave qa out of --tasks"
        )
    gold_i = fits[rng.randrange(len(fits))]
    gold = hay.qa_records[gold_i]
    head, tail, budget = budget_fn(QA_TEMPLATE, query=gold["question"])
    others = [p for i, p in enumerate(passages) if i != gold_i]
    rng.shuffle(others)
    sentences = hay.sentences
    start = rng.randrange(len(sentences))

    def filler() -> Iterator[list[int]]:
        yield from others
        i = start
        while True:  # then paragraphs of ~8 sentences of the haystack documents
            text = " ".join(sentences[(i + j) % len(sentences)] for j in range(8))
            yield encode(tok, f"Passage: {text}\n\n")
            i += 8

    depth = round(rng.random(), 4)
    needle = f"Passage: {gold['passage']}\n\n"
    ids, offsets, _ = assemble(filler(), [passages[gold_i]], [depth], budget)
    return head + ids + tail, gold["answers"], [depth], [len(head) + offsets[0]], [needle]


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
    rng = random.Random(f"{seed}:{task}:{length}:{index}")
    frame: dict[str, int] = {}

    def budget_fn(template, **fmt):
        before, after, prefix = (part.format(**fmt) for part in template)
        head, tail = prompt_frame(tokenizer, before, after, prefix, chat_template)
        budget = length - max_new - len(head) - len(tail)
        if budget < 32:
            raise ValueError(
                f"{task} at length {length}: the instruction, question and {max_new} answer tokens "
                f"leave {budget} tokens of context; use lengths of at least {length - budget + 256}"
            )
        frame.update(context_start=len(head), context_tokens=budget)
        return head, tail, budget

    gen = _niah if task in NIAH else {"vt": _vt, "cwe": _cwe, "fwe": _fwe, "qa": _qa}[task]
    args = (
        (task, rng, haystack, tokenizer, budget_fn) if task in NIAH else (rng, haystack, tokenizer, budget_fn)
    )
    ids, answers, depths, positions, needles = gen(*args)
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
