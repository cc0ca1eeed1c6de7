"""python -m longlora.merge: fold a fine-tuned adapter into its base and save a plain model.

The output folder is an ordinary transformers model (safetensors weights, ``config.json`` carrying the
RoPE scaling the adapter was trained with, the tokenizer beside it): load it with
``AutoModelForCausalLM.from_pretrained(DIR)`` without this project. (The original LongLoRA release
pipeline forgot the RoPE scaling, so its merged models produced garbage past the base context.)

The merge checks itself on a probe input, comparing like with like: base + adapter (unmerged) in the
output dtype is the reference for the merged model in memory and reloaded from disk. Both must stay
within a tolerance scaled to the dtype's precision and to the logits' magnitude (``--tolerance`` sets an
absolute one) and must pick the same greedy token wherever the reference's choice is clear (top-2
margin above the tolerance). The numbers go to ``merge_report.json``; a failure fails the command. Adapters of every
``longlora.finetune`` method work: LoRA+/LoRA (embedding and norm copies included, tied embeddings
kept tied), QLoRA (the 4-bit base is dequantized first, so the merged weights are the ones the adapter
was trained against), and full fine-tuning outputs (already full models: re-saved and checked).

Usage (CPU)::

    python -m longlora.merge --adapter out/smol-16k --output out/smol-16k-merged
    python -m longlora.merge --adapter out/llama-32k --base meta-llama/Llama-2-7b-hf --output merged --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from data_tools.files import atomic_write_text, write_error
from data_tools.profiles import PROFILES, record_profile
from longlora.models import (
    RUN_ARGS_FILE,
    WRITE_FAILURES,
    ModelLoadError,
    adapter_base,
    add_model_arguments,
    canonical_dtype,
    dtype_name,
    is_adapter_dir,
    read_run_args,
    resolve_device,
    resolve_dtype,
)

ARGS_FILE = RUN_ARGS_FILE  # the earlier name
REPORT_FILE = "merge_report.json"
# Relative tolerance per dtype: sqrt(machine epsilon), "half the digits", times the largest |logit|.
# Merging rounds W + BA once into the dtype; the unmerged reference keeps BA apart, so they differ by
# rounding only (a no-op adapter gives identical weights), far below this; a wrong weight moves logits
# by a sizeable fraction of their scale and changes greedy tokens.
_RELATIVE_TOLERANCE = {
    dt: float(torch.finfo(dt).eps) ** 0.5 for dt in (torch.float32, torch.bfloat16, torch.float16)
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m longlora.merge",
        description="Merge a longlora.finetune adapter into its base model and save a plain transformers model.",
    )
    p.add_argument("--adapter", required=True, help="adapter folder written by longlora.finetune")
    p.add_argument("--output", required=True, help="folder for the merged model (must be empty or absent)")
    p.add_argument(
        "--base",
        default=None,
        help="base model spec ('default', a folder or a hub id); default: the one the adapter was trained on",
    )
    add_model_arguments(
        p, model=False, adapter=False, context_length=False, load_in_4bit=False, dtype_default="fp32"
    )
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --output")
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="largest allowed logit difference in the self-check (default: sqrt of the dtype's epsilon "
        "times the largest |logit|: 3.5e-4, 0.088 and 0.031 relative for fp32, bf16, fp16)",
    )
    p.add_argument("--probe-tokens", type=int, default=64, help="length of the probe input of the self-check")
    p.add_argument(
        "--profile",
        default=None,
        help="serving profile to record in the merged config (a name in data_tools.profiles.PROFILES, e.g. "
        "the extended profile python -m longlora.recipe chooses); default: the base's",
    )
    return p


def _probe_ids(tokenizer, vocab_size: int, n: int) -> torch.Tensor:
    """A fixed probe: real text when the tokenizer has enough of it, else seeded random ids."""
    text = (
        "Below is a paper. Memorize the content and answer my question after the paper.\n"
        "Long-context models read whole books; Position Interpolation rescales rotary positions. "
    ) * 4
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n] if tokenizer is not None else []
    if len(ids) < n:
        g = torch.Generator().manual_seed(0)
        ids = ids + torch.randint(0, vocab_size, (n - len(ids),), generator=g).tolist()
    return torch.tensor([ids], dtype=torch.long)


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    # bitsandbytes repacks 4-bit weights in place for its CPU inference kernel when a Linear4bit runs in
    # eval mode, after which dequantize() reads garbage. In train mode it dequantizes and multiplies in
    # the compute dtype: the exact computation training used.
    for module in model.modules():
        if type(module).__name__ == "Linear4bit":
            module.train()
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device), use_cache=False).logits.float().cpu()


def _dequantize(model):
    """A bitsandbytes 4-bit model -> the same model with dense weights (the values training saw)."""
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_quantized", False):
        model = model.dequantize()
    return model


def self_check(reference: torch.Tensor, candidate: torch.Tensor, dtype: torch.dtype, tolerance=None) -> dict:
    """Compare a merged model's logits with the unmerged reference computed in the same dtype.

    reference, candidate: (B, T, V) float32 logits. Returns ``max_abs_diff``, ``tolerance`` (given, else
    the dtype's relative tolerance times the largest |reference logit|), ``greedy_mismatches`` and ``ok``.
    A greedy mismatch is a position whose reference top-2 margin exceeds the tolerance yet whose argmax
    differs: rounding noise only flips near-ties, while a merge that stays under the tolerance
    everywhere could still flip a choice with a margin up to twice the tolerance.
    """
    scale = float(reference.abs().max())
    if tolerance is None:
        tolerance = _RELATIVE_TOLERANCE.get(dtype, 1e-3) * max(scale, 1.0)
    diff = float((candidate - reference).abs().max())
    top2 = reference.topk(2, dim=-1).values  # (B, T, 2)
    clear = (top2[..., 0] - top2[..., 1]) > tolerance
    flipped = clear & (reference.argmax(-1) != candidate.argmax(-1))
    mismatches = int(flipped.sum())
    return {
        "max_abs_diff": diff,
        "tolerance": float(tolerance),
        "greedy_mismatches": mismatches,
        "ok": diff <= tolerance and mismatches == 0,
    }


def _merge_weights(peft_model):
    """Fold the adapter into the base weights (peft's merge); one place a test can swap for a wrong merge."""
    return peft_model.merge_and_unload()


def merge(
    adapter: str,
    output: str,
    *,
    base: str | None = None,
    dtype: str = "fp32",
    device: str = "auto",
    overwrite: bool = False,
    tolerance: float | None = None,
    probe_tokens: int = 64,
    trust_remote_code: bool = False,
    profile: str | None = None,
    say=print,
) -> dict:
    """Merge ``adapter`` into its base, save to ``output``, verify; return the report dict.

    ``profile``: the serving profile recorded in the merged config (None: the base's)."""
    from transformers import AutoModelForCausalLM

    from longlora.lora import has_tied_embeddings

    src, out = Path(adapter), Path(output)
    _check_paths(src, out, overwrite, profile)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(canonical_dtype(dtype), torch_device)
    method = read_run_args(src).get("args", {}).get("method")
    is_adapter = is_adapter_dir(src)
    is_full = not is_adapter and (src / "config.json").is_file() and any(src.glob("*.safetensors"))
    if not (is_adapter or is_full):
        raise ValueError(
            f"--adapter {adapter}: no adapter_config.json or model weights; pass a folder written by longlora.finetune"
        )
    common = dict(dtype=torch_dtype, device=torch_device, trust_remote_code=trust_remote_code, status=say)
    merged, tokenizer, probe, reference = _merged_model(src, base, is_full, method, probe_tokens, common, say)
    merged = merged.to(torch_dtype)
    in_memory = _logits(merged, probe)
    cfg = merged.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg.use_cache = True
    record_profile(cfg, profile)  # None keeps the base's serving profile, whatever the folder
    _save_atomically(merged, tokenizer, out, overwrite)

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch_dtype).to(torch_device)
    from_disk = _logits(reloaded, probe)
    checks = {
        "merged": self_check(reference, in_memory, torch_dtype, tolerance),
        "reloaded": self_check(reference, from_disk, torch_dtype, tolerance),
    }
    report = {
        "adapter": str(src),
        "output": str(out),
        "method": method or ("full" if is_full else "lora"),
        "dtype": dtype_name(torch_dtype),
        "probe_tokens": int(probe.shape[1]),
        "max_abs_diff_merged": checks["merged"]["max_abs_diff"],
        "max_abs_diff_reloaded": checks["reloaded"]["max_abs_diff"],
        "greedy_mismatches": max(c["greedy_mismatches"] for c in checks.values()),
        "logit_scale": float(reference.abs().max()),
        "tolerance": checks["merged"]["tolerance"],
        "rope_parameters": dict(getattr(reloaded.config, "rope_parameters", {}) or {}),
        "max_position_embeddings": reloaded.config.max_position_embeddings,
        "tied_embeddings": has_tied_embeddings(reloaded),
        "ok": all(c["ok"] for c in checks.values()),
    }
    atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    say(
        f"merged model saved to {out}: max |logit diff| vs base+adapter ({report['dtype']}) = "
        f"{report['max_abs_diff_merged']:.3g} in memory, {report['max_abs_diff_reloaded']:.3g} after reload "
        f"(tolerance {report['tolerance']:.3g}, logits up to {report['logit_scale']:.3g}), "
        f"{report['greedy_mismatches']} greedy-token mismatches"
    )
    if not report["ok"]:
        worst = max(report["max_abs_diff_merged"], report["max_abs_diff_reloaded"])
        raise ValueError(
            f"merge self-check failed: logits differ by {worst:.3g} (tolerance {report['tolerance']:.3g}) and "
            f"{report['greedy_mismatches']} clear greedy tokens changed; the output in {out} is not "
            "trustworthy (try --dtype fp32, or report a bug)"
        )
    return report


def _check_paths(src: Path, out: Path, overwrite: bool, profile: str | None) -> None:
    if not src.is_dir():
        raise ValueError(f"--adapter {src}: no such folder; pass the --output-dir of a longlora.finetune run")
    if out.resolve() == src.resolve():
        raise ValueError("--output must differ from --adapter; write the merged model to a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"--output {out} is not empty; pass --overwrite or choose another folder")
    if profile is not None and profile not in PROFILES:
        raise ValueError(
            f"--profile {profile!r} is not a known profile; choose one of {', '.join(sorted(PROFILES))}"
        )


def _merged_model(src: Path, base: str | None, is_full: bool, method, probe_tokens: int, common: dict, say):
    """The merged model (or the full model re-loaded), its tokenizer, the probe tokens and the reference
    logits of base + adapter, unmerged, in the output dtype."""
    from peft import PeftModel

    from longlora.lora import require_qlora_support
    from longlora.models import load_model

    if is_full:
        say(f"{src} is a full model (--method full): re-saving it")
        merged, tokenizer = load_model(str(src), **common)
        probe = _probe_ids(tokenizer, merged.config.vocab_size, probe_tokens)
        return merged, tokenizer, probe, _logits(merged, probe)
    spec, base_path = _resolve_base(src, base, say)
    qlora = method == "qlora"
    if qlora:
        require_qlora_support()
    say(f"loading base {spec} ({base_path}){' in 4 bits' if qlora else ''} with the adapter")
    peft_model, tokenizer = load_model(
        base_path, adapter=str(src), load_in_4bit=qlora, merge_adapter=False, **common
    )
    probe = _probe_ids(tokenizer, peft_model.config.vocab_size, probe_tokens)
    reference = _logits(peft_model, probe)
    if qlora:
        # Merging into 4-bit weights would re-quantize the sum; merge into the dequantized base instead.
        peft_model = PeftModel.from_pretrained(_dequantize(peft_model.unload()), str(src))
    return _merge_weights(peft_model), tokenizer, probe, reference


def _resolve_base(src: Path, base: str | None, say) -> tuple[str, str]:
    """The base model spec and its local path: --base, else what the adapter was trained on."""
    from longlora.models import resolve_model_path

    if base:
        return base, resolve_model_path(base, status=say)
    info = read_run_args(src)
    candidates = [
        info.get("resolved", {}).get("model_path"),  # absolute, so a relative --model still resolves
        info.get("args", {}).get("model"),
        adapter_base(src),
    ]
    errors = []
    for spec in [c for c in candidates if c]:
        try:
            return spec, resolve_model_path(spec, status=say)
        except ModelLoadError as err:
            errors.append(str(err))
    raise ValueError(
        f"cannot find the base model of {src} ({'; '.join(errors) or 'none recorded'}); pass --base SPEC"
    )


def _save_atomically(model, tokenizer, out: Path, overwrite: bool) -> None:
    """Write into a temporary sibling folder, then move it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        except WRITE_FAILURES as err:  # a full disk: the half-written folder goes, --output stays as it was
            raise write_error(out, err, kept=out.exists()) from err
        if out.exists():
            if not overwrite and any(out.iterdir()):
                raise ValueError(f"--output {out} is not empty; pass --overwrite")
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        merge(
            a.adapter,
            a.output,
            base=a.base,
            dtype=a.dtype,
            device=a.device,
            overwrite=a.overwrite,
            tolerance=a.tolerance,
            probe_tokens=a.probe_tokens,
            trust_remote_code=a.trust_remote_code,
            profile=a.profile,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
