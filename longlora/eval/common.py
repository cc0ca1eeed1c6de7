"""Plumbing shared by the evaluation commands: length parsing, model loading, context checks, JSON.

Kept free of any metric: ``perplexity.py`` and ``passkey.py`` hold the measurements, this module
only turns flags into a loaded model and writes results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from longlora.model_flags import parse_length

ATTENTION_CHOICES = ("auto", "sdpa", "eager", "flash", "s2")
# "auto" (None) lets transformers pick: SDPA where the architecture supports it, eager where it does not
# (Gemma 2's soft-capped attention logits).
_ATTN_IMPLEMENTATION = {
    "auto": None,
    "sdpa": "sdpa",
    "eager": "eager",
    "flash": "flash_attention_2",
    "s2": None,
}


def parse_lengths(values: list[str]) -> list[int]:
    """Expand ``["1k", "2k:8k:2k"]`` to ``[1024, 2048, 4096, 6144, 8192]`` (ranges include the end).

    Order is kept and duplicates are dropped.
    """
    out: list[int] = []
    for value in values:
        parts = str(value).split(":")
        if len(parts) == 1:
            items = [parse_length(parts[0])]
        elif len(parts) == 3:
            start, stop, step = (parse_length(p) for p in parts)
            if stop < start:
                raise argparse.ArgumentTypeError(
                    f"range {value!r} ends before it starts; write START:STOP:STEP"
                )
            items = list(range(start, stop + 1, step))
        else:
            raise argparse.ArgumentTypeError(
                f"cannot read {value!r}: give a length (4096, 4k) or a range START:STOP:STEP (1k:8k:1k)"
            )
        out.extend(i for i in items if i not in out)
    return out


def add_model_arguments(parser: argparse.ArgumentParser, *, token_dtype_dest: str | None = None) -> None:
    """The shared model flags (``longlora.models.add_model_arguments``) plus the eval-only attention choice.

    ``token_dtype_dest``: see ``longlora.models.add_model_arguments`` (perplexity's ``--dtype uint16``).
    """
    from longlora.model_flags import add_model_arguments as add_shared

    group = add_shared(parser, token_dtype_dest=token_dtype_dest)
    group.add_argument(
        "--attention",
        default="auto",
        choices=ATTENTION_CHOICES,
        help="auto (default: SDPA where the model supports it, else eager), sdpa, eager, flash (flash-attn 2, "
        "CUDA only), or s2: the paper's "
        "'test with S2-Attn' ablation (shifted sparse attention kept on at evaluation)",
    )
    group.add_argument(
        "--s2-group-size-ratio",
        type=float,
        default=0.25,
        help="with --attention s2: group size as a fraction of the sequence (paper: 1/4)",
    )
    group.add_argument(
        "--label", default=None, help="name of this run in tables and plots (default: the model)"
    )


def load_eval_model(args: argparse.Namespace):
    """Load ``(model, tokenizer)`` from the model flags, in eval mode, with the chosen attention."""
    import torch

    from longlora.models import load_from_args

    if args.attention == "flash":
        wants_cuda = args.device == "auto" or str(args.device).startswith("cuda")
        if not (wants_cuda and torch.cuda.is_available()):
            raise ValueError(
                "--attention flash needs a CUDA GPU with flash-attn installed; use --attention sdpa on CPU"
            )
    model, tokenizer = load_from_args(args, attn_implementation=_ATTN_IMPLEMENTATION[args.attention])
    if args.attention == "s2":
        from longlora.s2attn import enable_s2_attention

        if not 0 < args.s2_group_size_ratio <= 1:
            raise ValueError(f"--s2-group-size-ratio must be in (0, 1], got {args.s2_group_size_ratio}")
        enable_s2_attention(model, group_size_ratio=args.s2_group_size_ratio, in_eval=True)
    model.eval()
    return model, tokenizer


def max_positions(config) -> int | None:
    """How many positions the model addresses (after any PI applied at load): its context window."""
    from longlora.position import context_window

    if getattr(config, "max_position_embeddings", None) is None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    if getattr(config, "max_position_embeddings", None) is None:
        return None
    if not getattr(config, "rope_parameters", None):
        return int(config.max_position_embeddings)
    return context_window(config)


def check_addressable(config, length: int, *, what: str, context_length: int | None = None) -> None:
    """Raise if ``length`` positions exceed what the model addresses, and say how to extend it."""
    limit = max_positions(config)
    if limit is None or length <= limit:
        return
    suggested = 1 << math.ceil(math.log2(length))
    if context_length:
        fix = f"raise --context-length to at least {length} (e.g. --context-length {suggested})"
    else:
        fix = (
            f"add --context-length {suggested} to extend it with Position Interpolation "
            f"(linear factor {math.ceil(suggested / limit)}), or lower {what}"
        )
    raise ValueError(
        f"{what} {length} is above the {limit} positions this model can address"
        f"{' after Position Interpolation' if context_length else ' without Position Interpolation'}; {fix}"
    )


def model_label(args: argparse.Namespace) -> str:
    if args.label:
        return args.label
    if str(args.model) == "default":
        from data_tools.bundled import default_model_dir

        name = default_model_dir().name
    else:
        name = Path(str(args.model)).name or str(args.model)
    if args.adapter:
        name += f"+{Path(str(args.adapter)).name}"
    if args.context_length:
        scheme = {"linear": "PI", "yarn": "YaRN"}.get(
            getattr(args, "rope_type", None) or "linear", args.rope_type
        )
        name += f" ({scheme} {args.context_length})"
    if args.attention == "s2":
        name += " [S2]"
    return name


def model_config_record(args: argparse.Namespace, model) -> dict[str, Any]:
    """The model part of a result file's ``config``: enough to rerun and to label plots."""
    import torch
    import transformers

    config = model.config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    return {
        "label": model_label(args),
        "model": str(args.model),
        "adapter": None if args.adapter is None else str(args.adapter),
        "context_length": args.context_length,
        "rope_type": args.rope_type if args.context_length else None,
        "rope_parameters": _jsonable(rope),
        "max_position_embeddings": max_positions(config),
        "attention": args.attention,
        "s2_group_size_ratio": args.s2_group_size_ratio if args.attention == "s2" else None,
        "torch_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(next(model.parameters()).device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        return repr(value)


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as JSON atomically (``data_tools.files.atomic_write_text``)."""
    from data_tools.files import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return Path(path)


def emit_results(payload: dict, args: argparse.Namespace, table: str, plot=None) -> int:
    """The end of every eval command: print the table, write ``--output`` (JSON, atomically) and
    ``--plot`` (with ``plot(payloads, path)``, default: the plotter of ``payload["kind"]``). Returns 0."""
    import sys

    print(table)
    if getattr(args, "output", None):
        if "provenance" not in payload:  # the command, commit, machine and date of this result
            from longlora.provenance import run_record

            payload = {**payload, "provenance": run_record()}
        write_json(args.output, payload)
        print(f"wrote {args.output}", file=sys.stderr)
    if getattr(args, "plot", None):
        if plot is None:
            from longlora.eval.plot import plot_results as plot
        plot([payload], args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def greedy_answer(model, tokenizer, input_ids: list[int], max_new_tokens: int, done=None) -> str:
    """Greedy continuation of ``input_ids`` (one prompt), decoded without special tokens. Stops at EOS,
    after ``max_new_tokens``, or as soon as ``done(text_so_far)`` is true (a stop that cannot change
    the score, e.g. a complete number for passkey, every expected string for RULER)."""
    import torch
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    n = len(input_ids)

    class Done(StoppingCriteria):
        def __call__(self, ids, scores, **kwargs):
            stop = done is not None and done(tokenizer.decode(ids[0, n:], skip_special_tokens=True))
            return torch.full((ids.shape[0],), stop, dtype=torch.bool, device=ids.device)

    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad
    )
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([Done()]),
        )
    return tokenizer.decode(out[0, n:], skip_special_tokens=True)


def add_chat_template_argument(group) -> None:
    """``--chat-template auto|on|off`` for the commands that prompt a model (passkey, RULER)."""
    group.add_argument(
        "--chat-template",
        default="auto",
        choices=("auto", "on", "off"),
        help="wrap each prompt as a user turn (on) or not (off); auto: on when the tokenizer has a chat template",
    )


def use_chat_template(choice: str, tokenizer) -> bool:
    """The ``--chat-template`` rule: on, off, or (auto) on when the tokenizer has a template; ``on`` for a
    tokenizer without one is an ``InputError``."""
    from data_tools.errors import InputError

    has = bool(getattr(tokenizer, "chat_template", None))
    if choice == "on" and not has:
        raise InputError(
            "--chat-template on, but this tokenizer has no chat template; use --chat-template off"
        )
    return choice == "on" or (choice == "auto" and has)


def add_output_arguments(parser: argparse.ArgumentParser, *, output: str, plot: str):
    """The ``output`` flag group every eval command has: ``--output`` (JSON), ``--plot`` (PNG) and
    ``--no-progress``; returns the group so a command can add its own."""
    group = parser.add_argument_group("output")
    group.add_argument("--output", default=None, help=output)
    group.add_argument("--plot", default=None, help=plot)
    group.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return group
