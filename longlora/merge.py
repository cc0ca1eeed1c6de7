"""python -m longlora.merge: fold a fine-tuned adapter into its base and save a plain model.

The output folder is an ordinary transformers model (safetensors weights, ``config.json`` carrying the
RoPE scaling the adapter was trained with, the tokenizer beside it): load it with
``AutoModelForCausalLM.from_pretrained(DIR)`` without this project. (The original LongLoRA release
pipeline forgot the RoPE scaling, so its merged models produced garbage past the base context.)

The merge checks itself on a probe input: logits of base + adapter, of the merged model in memory and of
the merged model reloaded from disk must agree; the maximum differences are printed and written to
``merge_report.json``, and a difference above ``--tolerance`` fails the command. Adapters of every
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

ARGS_FILE = "longlora_args.json"
REPORT_FILE = "merge_report.json"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    p.add_argument(
        "--dtype", choices=sorted(_DTYPES), default="fp32", help="dtype of the saved weights (default fp32)"
    )
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --output")
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="largest allowed logit difference in the self-check (default 1e-3 for fp32, 0.1 otherwise)",
    )
    p.add_argument("--probe-tokens", type=int, default=64, help="length of the probe input of the self-check")
    return p


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"cannot read {path}: {err}; is this a folder written by longlora.finetune?"
        ) from None


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


def merge(
    adapter: str,
    output: str,
    *,
    base: str | None = None,
    dtype: str = "fp32",
    overwrite: bool = False,
    tolerance: float | None = None,
    probe_tokens: int = 64,
    say=print,
) -> dict:
    """Merge ``adapter`` into its base, save to ``output``, verify; return the report dict."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from longlora.models import load_model, load_tokenizer

    src = Path(adapter)
    out = Path(output)
    if not src.is_dir():
        raise ValueError(
            f"--adapter {adapter}: no such folder; pass the --output-dir of a longlora.finetune run"
        )
    if out.resolve() == src.resolve():
        raise ValueError("--output must differ from --adapter; write the merged model to a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"--output {out} is not empty; pass --overwrite or choose another folder")
    if dtype not in _DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    tolerance = tolerance if tolerance is not None else (1e-3 if dtype == "fp32" else 0.1)
    args = _read_json(src / ARGS_FILE).get("args", {}) if (src / ARGS_FILE).is_file() else {}
    method = args.get("method")
    is_adapter = (src / "adapter_config.json").is_file()
    is_full = (src / "config.json").is_file() and (any(src.glob("*.safetensors")) and not is_adapter)
    if not (is_adapter or is_full):
        raise ValueError(
            f"--adapter {adapter}: no adapter_config.json or model weights; pass a folder written by longlora.finetune"
        )

    if is_full:
        say(f"{src} is a full model (--method full): re-saving it")
        model, tokenizer = load_model(str(src), dtype="fp32", device="cpu", status=say)
        probe = _probe_ids(tokenizer, model.config.vocab_size, probe_tokens)
        reference = _logits(model, probe)
        merged = model
    else:
        from transformers import AutoConfig

        spec, base_path = _resolve_base(src, base, say)
        config = AutoConfig.from_pretrained(src if (src / "config.json").is_file() else base_path)
        qlora = method == "qlora"
        kwargs = dict(config=config, dtype=torch.float32, attn_implementation="sdpa", use_safetensors=True)
        if qlora:
            from transformers import BitsAndBytesConfig

            from longlora.lora import require_qlora_support

            require_qlora_support()
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float32,
            )
            kwargs["device_map"] = {"": "cpu"}
        say(f"loading base {spec} ({base_path}){' in 4 bits' if qlora else ''}")
        model = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
        tokenizer = load_tokenizer(str(src) if (src / "tokenizer_config.json").is_file() else base_path)
        probe = _probe_ids(tokenizer, config.vocab_size, probe_tokens)
        peft_model = PeftModel.from_pretrained(model, str(src))
        reference = _logits(peft_model, probe)  # base + adapter, exactly as trained
        if qlora:
            # Merging into 4-bit weights would re-quantize the sum; merge into the dequantized base instead.
            model = _dequantize(peft_model.unload())
            peft_model = PeftModel.from_pretrained(model, str(src))
        merged = peft_model.merge_and_unload()

    merged = merged.to(_DTYPES[dtype])
    in_memory = _logits(merged, probe)
    cfg = merged.config
    for key in ("quantization_config",):
        if hasattr(cfg, key):
            delattr(cfg, key)
    cfg.use_cache = True
    _save_atomically(merged, tokenizer, out, overwrite)

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=_DTYPES[dtype])
    from_disk = _logits(reloaded, probe)
    report = {
        "adapter": str(src),
        "output": str(out),
        "method": method or ("full" if is_full else "lora"),
        "dtype": dtype,
        "probe_tokens": int(probe.shape[1]),
        "max_abs_diff_merged": float((in_memory - reference).abs().max()),
        "max_abs_diff_reloaded": float((from_disk - reference).abs().max()),
        "logit_scale": float(reference.abs().max()),
        "tolerance": tolerance,
        "rope_parameters": dict(getattr(reloaded.config, "rope_parameters", {}) or {}),
        "max_position_embeddings": reloaded.config.max_position_embeddings,
        "tied_embeddings": _tied(reloaded),
    }
    report["ok"] = max(report["max_abs_diff_merged"], report["max_abs_diff_reloaded"]) <= tolerance
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    say(
        f"merged model saved to {out}: max |logit diff| vs base+adapter = {report['max_abs_diff_merged']:.3g} "
        f"in memory, {report['max_abs_diff_reloaded']:.3g} after reload (logits up to {report['logit_scale']:.3g})"
    )
    if not report["ok"]:
        raise ValueError(
            f"merge self-check failed: logits differ by {max(report['max_abs_diff_merged'], report['max_abs_diff_reloaded']):.3g} "
            f"> tolerance {tolerance}; the output in {out} is not trustworthy (try --dtype fp32, or report a bug)"
        )
    return report


def _resolve_base(src: Path, base: str | None, say) -> tuple[str, str]:
    """The base model spec and its local path: --base, else what the adapter was trained on."""
    from longlora.models import ModelLoadError, resolve_model_path

    if base:
        return base, resolve_model_path(base, status=say)
    info = _read_json(src / ARGS_FILE) if (src / ARGS_FILE).is_file() else {}
    candidates = [
        info.get("resolved", {}).get("model_path"),  # absolute, so a relative --model still resolves
        info.get("args", {}).get("model"),
        _read_json(src / "adapter_config.json").get("base_model_name_or_path"),
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


def _tied(model) -> bool:
    inp, outp = model.get_input_embeddings(), model.get_output_embeddings()
    return outp is not None and outp.weight.data_ptr() == inp.weight.data_ptr()


def _save_atomically(model, tokenizer, out: Path, overwrite: bool) -> None:
    """Write into a temporary sibling folder, then move it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
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
            overwrite=a.overwrite,
            tolerance=a.tolerance,
            probe_tokens=a.probe_tokens,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
