"""Choosing the next token and knowing when to stop: sampling settings, n-gram bans, end tokens.

Pure functions over a logits vector; the engine calls ``pick`` once per generated token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# End-of-turn tokens of common chat templates, stopped on when the tokenizer knows them.
END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>")


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. temperature 0 is greedy; top_p is the nucleus threshold.

    repetition_penalty / no_repeat_ngram_size apply to the answer's own tokens only (never to the
    document, which the answer may need to copy from).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self):
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


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


def pick(logits: torch.Tensor, generated: Sequence[int], sampling: Sampling) -> int:
    """The next token id. logits: (V,) float for the last position; generated: the answer so far."""
    logits = logits.clone()
    if sampling.repetition_penalty != 1.0 and generated:
        seen = torch.tensor(sorted(set(generated)), device=logits.device)
        values = logits[seen]
        penalty = sampling.repetition_penalty
        logits[seen] = torch.where(values > 0, values / penalty, values * penalty)
    banned = banned_ngram_tokens(generated, sampling.no_repeat_ngram_size)
    if banned:
        logits[list(banned)] = -float("inf")
    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / sampling.temperature, dim=-1)  # (V,)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1))


def eos_ids(model, tokenizer) -> set[int]:
    """Every token id that ends an answer: the model's and tokenizer's EOS and known end-of-turn tokens."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if value is not None:
            ids.update(value if isinstance(value, (list, tuple)) else [value])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in END_TOKENS if token in vocab)
    return ids
