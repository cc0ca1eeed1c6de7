"""Several readings of a long document per question, and the answer the model itself supports best.

A small model's answer depends on which passages it reads far more than on whether the evidence is
among them: on the development questions (``benchmarks/qa_dev_set.jsonl``, dev split) three retrieval
settings that each answered 33-36 of 103 agreed on only about half of their right answers, and 49
questions were answered by at least one of them. A profile with ``alternate_readings`` therefore
retrieves the document once per setting (passage size, opening kept), answers each reading, and keeps
the answer that the model finds most likely *across all the readings*: for every candidate, the mean
log-probability per token (its end-of-turn token included) under each reading's prompt, averaged over
the readings (:func:`choose_answer`). An answer copied from one passage set that the other passage sets
also support scores high; one the model made up under one prompt scores low under the others. Chosen
by answers (``results/qa-readings-dev.jsonl``), not by a proxy.

Pure selection here, plus :func:`answer_logprobs`, which scores all candidates under one reading
(its prompt run once, the candidates as one batch on its KV cache) (the end of an answer is scored as the probability of any end token).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

# An answer that says the passages lack the answer ("The document does not say.", "This is not
# stated in the document.", "There is no mention of it."): a reading that found nothing, not a finding.
NOT_FOUND = re.compile(
    r"\b(?:does|do|did)(?: not|n[’']t) (?:say|mention|state|specify|give|provide|contain|include)\b"
    r"|\bnot (?:stated|mentioned|given|specified|provided|included)\b"
    r"|\bno (?:information|mention|details?)\b",
    re.IGNORECASE,
)


def says_not_found(text: str) -> bool:
    """Whether an answer says the document (the passages it was given) does not hold the answer."""
    return NOT_FOUND.search(text) is not None


def choose_answer(texts: Sequence[str], scores: Sequence[Sequence[float]]) -> int:
    """Index of the answer to keep: the best mean, over the readings, of its per-token log-probability.

    texts: each reading's answer. scores[c][r]: mean log-probability per token of answer ``c`` under
    reading ``r``'s prompt. Ties go to the earlier reading (the profile's own comes first).

    A reading that found nothing defers to one that found an answer: empty answers are kept only when
    every answer is empty, and answers saying the document does not give the answer
    (:func:`says_not_found`) only when no reading gave anything else. Each reading sees other passages,
    so "not in these passages" from one is no evidence against another's answer; a short stock phrase
    would also outscore real answers on likelihood under every prompt.
    """
    if len(texts) != len(scores) or not texts:
        raise ValueError(f"one score row per answer: {len(texts)} answers, {len(scores)} rows")
    given = [c for c, t in enumerate(texts) if t.strip()]
    found = [c for c in given if not says_not_found(texts[c])]
    allowed = found or given or list(range(len(texts)))
    return max(allowed, key=lambda c: (sum(scores[c]) / len(scores[c]), -c))


@torch.inference_mode()
def answer_logprobs(
    model, prompt: Sequence[int], answers: Sequence[Sequence[int]], end_ids: Iterable[int]
) -> list[float]:
    """Mean log-probability per token of each answer (token ids) after ``prompt``, its end included.

    The end is one more scored step: the probability of any of ``end_ids`` (the model's end-of-answer
    tokens) after the answer. The prompt is run once; its KV cache is repeated for the candidates,
    which then go through as one right-padded batch (causal attention keeps the padding away from
    the positions that are scored).
    """
    from transformers import DynamicCache

    ends = sorted(set(end_ids))
    if not answers or not ends or not prompt:
        raise ValueError("need a prompt, at least one answer and one end token")
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    prompt_ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    after_prompt = model(input_ids=prompt_ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    longest = max(map(len, answers))
    # predictions for every answer position: the prompt's last logits for the first token, then
    # the answers' own logits (position i predicts token i + 1, and the end after the last)
    logits = after_prompt[:, -1:].float().expand(len(answers), 1, -1)
    if longest:
        cache.batch_repeat_interleave(len(answers))
        rows = [list(a) + [ends[0]] * (longest - len(a)) for a in answers]
        batch = torch.tensor(rows, dtype=torch.long, device=device)
        logits = torch.cat(
            [logits, model(input_ids=batch, past_key_values=cache, use_cache=True).logits.float()], 1
        )
    logp = torch.log_softmax(logits, dim=-1)
    end_index = torch.tensor(ends, dtype=torch.long, device=device)
    out = []
    for row, a in zip(logp, answers):
        target = torch.tensor(list(a), dtype=torch.long, device=device)
        tokens = row[: len(a)].gather(1, target[:, None])[:, 0]
        end = torch.logsumexp(row[len(a)].index_select(0, end_index), dim=0)
        out.append(torch.cat([tokens, end[None]]).mean().item())
    return out
