"""Passkey retrieval: can the model find a number hidden at any depth of a long prompt?

The prompt is the Landmark Attention format used by the LongLoRA paper (Section 4.2, Figure 4)::

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize them.
    I will quiz you about the important information there.
    The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ...
    The pass key is 31415. Remember it. 31415 is the pass key.
    ... The grass is green. The sky is blue. ...
    What is the pass key? The pass key is

The filler before the key line is ``depth`` of all filler sentences (0 = right after the task
line, 1 = right before the question). Unlike LongLoRA's ``passkey_retrivial.py``, which drops the
filler after the key (so the key always sits at the end), the filler really surrounds it. The key
is drawn from ``random.Random(seed)`` in 1..50000, so a prompt is a pure function of
(length, depth, seed, tokenizer). A length-L trial is a prompt of ``L - max_new_tokens`` tokens
(within one filler sentence) so prompt and answer fit in L positions. Decoding is greedy; a
trial is correct when the first number in the answer is exactly the key.

Usage (CPU example first)::

    python -m longlora.eval.passkey --model default --lengths 1k 2k 4k 8k \\
        --depths 0 0.25 0.5 0.75 1 --seeds 0 --chat-template off --torch-dtype bfloat16 \\
        --output results/passkey-smollm2.json --plot docs/passkey-smollm2.png

    # --chat-template off for base models (and to measure retrieval alone on small instruct
    # models); auto turns it on when the tokenizer has a chat template
    python -m longlora.eval.passkey --model my-base-model --chat-template off --lengths 1k:8k:1k

    # a model extended with Position Interpolation, on a GPU
    python -m longlora.eval.passkey --model Yukang/LongAlpaca-7B --lengths 4k:32k:4k --attention flash
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from dataclasses import dataclass

from longlora.eval.common import (
    add_chat_template_argument,
    add_model_arguments,
    add_output_arguments,
    check_addressable,
    emit_results,
    greedy_answer,
    load_eval_model,
    model_config_record,
    parse_lengths,
    use_chat_template,
)

TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
FILLER = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
QUESTION = "What is the pass key? The pass key is"
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def passkey_for_seed(seed: int) -> int:
    """The pass key of a trial: uniform in 1..50000 (as Landmark Attention), fixed by ``seed``."""
    return random.Random(seed).randint(1, 50000)


def needle(key: int) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def build_prompt(num_sentences: int, depth: float, key: int) -> str:
    """The prompt text with ``num_sentences`` filler sentences, ``depth`` of them before the key."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    before = round(depth * num_sentences)
    prefix = " ".join(FILLER[i % len(FILLER)] for i in range(before))
    suffix = " ".join(FILLER[i % len(FILLER)] for i in range(before, num_sentences))
    return "\n".join(part for part in (TASK, prefix, needle(key), suffix, QUESTION) if part)


def encode_prompt(tokenizer, prompt: str, chat_template: bool) -> list[int]:
    """Token ids the model reads: the raw prompt (with the tokenizer's BOS, if any) or a user turn
    in the chat template followed by the assistant's generation prompt."""
    if chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    return list(tokenizer(prompt, verbose=False)["input_ids"])


@dataclass
class PasskeyPrompt:
    length: int  # requested prompt tokens
    depth: float
    seed: int
    key: int
    text: str
    input_ids: list[int]

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


def make_prompt(
    tokenizer, length: int, depth: float, seed: int, *, chat_template: bool = False
) -> PasskeyPrompt:
    """The longest prompt of at most ``length`` tokens (short of it by less than one filler sentence)."""
    key = passkey_for_seed(seed)

    def encoded(n: int) -> list[int]:
        return encode_prompt(tokenizer, build_prompt(n, depth, key), chat_template)

    bare = len(encoded(0))
    if bare > length:
        raise ValueError(
            f"passkey length {length} is shorter than the prompt without any filler ({bare} tokens); "
            f"use lengths of at least {bare + 64}"
        )
    per_sentence = max(1.0, (len(encoded(50)) - bare) / 50)
    lo, hi = 0, int((length - bare) / per_sentence * 1.5) + 8  # invariant: encoded(lo) fits
    while len(encoded(hi)) <= length:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(encoded(mid)) <= length:
            lo = mid
        else:
            hi = mid
    text = build_prompt(lo, depth, key)
    return PasskeyPrompt(
        length=length,
        depth=depth,
        seed=seed,
        key=key,
        text=text,
        input_ids=encode_prompt(tokenizer, text, chat_template),
    )


def score_answer(answer: str, key: int) -> bool:
    """Exact match: the first number in the answer is the key (``' 31415.'`` yes, ``'314150'`` no)."""
    found = re.search(r"\d+", answer)
    return found is not None and found.group() == str(key)


def generate_answer(model, tokenizer, input_ids: list[int], max_new_tokens: int) -> str:
    """Greedy continuation of ``input_ids``, decoded without special tokens.

    Stops early once the answer holds a complete number (digits followed by a non-digit): the
    rest cannot change the score.
    """
    return greedy_answer(
        model, tokenizer, input_ids, max_new_tokens, done=lambda text: re.search(r"\d+\D", text) is not None
    )


def run_trial(
    model, tokenizer, length: int, depth: float, seed: int, *, chat_template: bool, max_new_tokens: int
) -> dict:
    prompt = make_prompt(tokenizer, length - max_new_tokens, depth, seed, chat_template=chat_template)
    t0 = time.perf_counter()
    answer = generate_answer(model, tokenizer, prompt.input_ids, max_new_tokens)
    return {
        "length": length,
        "depth": depth,
        "seed": seed,
        "key": prompt.key,
        "prompt_tokens": prompt.num_tokens,
        "answer": answer,
        "correct": score_answer(answer, prompt.key),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def summarize(trials: list[dict]) -> dict:
    """Accuracy per (length, depth) cell and per length."""
    cells: dict[tuple[int, float], list[dict]] = {}
    for t in trials:
        cells.setdefault((t["length"], t["depth"]), []).append(t)
    by_cell = [
        {
            "length": length,
            "depth": depth,
            "accuracy": sum(t["correct"] for t in ts) / len(ts),
            "correct": sum(t["correct"] for t in ts),
            "trials": len(ts),
        }
        for (length, depth), ts in sorted(cells.items())
    ]
    by_length = []
    for length in sorted({t["length"] for t in trials}):
        ts = [t for t in trials if t["length"] == length]
        by_length.append(
            {
                "length": length,
                "accuracy": sum(t["correct"] for t in ts) / len(ts),
                "correct": sum(t["correct"] for t in ts),
                "trials": len(ts),
                "seconds": round(sum(t["seconds"] for t in ts), 3),
            }
        )
    return {"by_length_depth": by_cell, "by_length": by_length}


def format_table(summary: dict, label: str | None = None) -> str:
    lengths = [r["length"] for r in summary["by_length"]]
    depths = sorted({c["depth"] for c in summary["by_length_depth"]})
    acc = {(c["length"], c["depth"]): c["accuracy"] for c in summary["by_length_depth"]}
    lines = [f"# {label}: passkey accuracy (rows: depth, columns: length)"] if label else []
    lines.append(f"{'depth':>6} " + " ".join(f"{n:>7}" for n in lengths))
    for d in depths:
        lines.append(f"{d:>6.2f} " + " ".join(f"{acc.get((n, d), float('nan')):>7.2f}" for n in lengths))
    lines.append(f"{'all':>6} " + " ".join(f"{r['accuracy']:>7.2f}" for r in summary["by_length"]))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m longlora.eval.passkey",
        description="Passkey retrieval accuracy over a grid of prompt lengths x key depths x seeds.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Usage (CPU example first)::", 1)[1],
    )
    add_model_arguments(parser)
    grid = parser.add_argument_group("grid")
    grid.add_argument(
        "--lengths",
        nargs="+",
        default=["1k", "2k", "4k"],
        help="total tokens per trial (prompt + answer): 4096, 4k, or START:STOP:STEP ranges",
    )
    grid.add_argument(
        "--depths",
        nargs="+",
        type=float,
        default=list(DEFAULT_DEPTHS),
        help="where the key sits, as a fraction of the filler before it (default: 0 .25 .5 .75 1)",
    )
    grid.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0, 1, 2],
        help="one trial per seed in each cell; the seed fixes the key (default: 0 1 2)",
    )
    add_chat_template_argument(grid)
    grid.add_argument(
        "--max-new-tokens", type=int, default=16, help="answer tokens to generate (default: 16)"
    )
    add_output_arguments(
        parser,
        output="write trials and accuracies as JSON to this file",
        plot="write a PNG heatmap (length x depth) + accuracy-vs-length line",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    from tqdm.auto import tqdm

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        lengths = parse_lengths(args.lengths)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    if bad := [d for d in args.depths if not 0.0 <= d <= 1.0]:
        parser.error(f"--depths must be fractions in [0, 1], got {bad}")
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    depths = sorted(set(args.depths))
    try:
        model, tokenizer = load_eval_model(args)
        chat = use_chat_template(args.chat_template, tokenizer)
        for length in lengths:
            check_addressable(model.config, length, what="--lengths", context_length=args.context_length)
        # Build every prompt first: a length too short for the prompt fails before any generation.
        for length in lengths:
            make_prompt(tokenizer, length - args.max_new_tokens, depths[0], args.seeds[0], chat_template=chat)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    trials = []
    grid = [(n, d, s) for n in lengths for d in depths for s in args.seeds]
    with tqdm(grid, desc="passkey", unit="trial", disable=args.no_progress, file=sys.stderr) as bar:
        for length, depth, seed in bar:
            bar.set_postfix(length=length, depth=depth)
            trials.append(
                run_trial(
                    model,
                    tokenizer,
                    length,
                    depth,
                    seed,
                    chat_template=chat,
                    max_new_tokens=args.max_new_tokens,
                )
            )
    summary = summarize(trials)
    config = model_config_record(args, model)
    config.update(
        {
            "lengths": lengths,
            "depths": depths,
            "seeds": args.seeds,
            "chat_template": chat,
            "max_new_tokens": args.max_new_tokens,
        }
    )
    payload = {"kind": "passkey", "config": config, **summary, "trials": trials}
    return emit_results(payload, args, format_table(summary, config["label"]))


if __name__ == "__main__":
    raise SystemExit(main())
