"""End to end on tiny models that copy real checkpoints' settings (tests/families/*.json).

For each family: finetune (pretrain with S2-Attn and Position Interpolation, then SFT through the
family's real chat template) -> merge (fp32 and bf16) -> plain ``transformers`` load -> perplexity
eval -> one QA answer. Plus, per family: S2-Attn really runs in training and stays causal.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import EMMA
from family import FAMILIES, TINY_ORIGINAL, family_config, family_tokenizer, save_family_model

from longlora import finetune, merge
from longlora.eval import perplexity

CONTEXT = 2 * TINY_ORIGINAL  # twice the original window: PI where the family does not ship a longer one
GROUP = CONTEXT // 4


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    path = tmp_path_factory.mktemp("book") / "emma.txt"
    path.write_text(EMMA.read_text()[:12_000])
    return path


@pytest.fixture(scope="module")
def sft_records(tmp_path_factory):
    """LongAlpaca records whose instructions end in whitespace: trimming chat templates must not drop them."""
    path = tmp_path_factory.mktemp("sft") / "qa.jsonl"
    story = "Emma Woodhouse, handsome, clever, and rich, lived in Highbury. " * 4
    records = [
        {
            "instruction": f"Below is a book. Memorize it.\n{story}\nNow the material ends. Who lived in Highbury?\n",
            "output": "Emma Woodhouse.",
        },
        {"instruction": "Name a colour. ", "output": "Blue."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _finetune(*args) -> int:
    common = ["--dtype", "fp32", "--learning-rate", "1e-3", "--warmup-steps", "0", "--max-steps", "2"]
    common += ["--gradient-accumulation-steps", "1", "--s2-group-size", str(GROUP)]
    return finetune.main([str(a) for a in args] + common)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_end_to_end(name, tmp_path, book, sft_records, capsys):
    base = save_family_model(name, tmp_path / "base")

    pre = tmp_path / "pretrain"
    assert _finetune("--model", base, "--data", book, "--output-dir", pre, "--context-length", CONTEXT) == 0
    trained = json.loads((pre / "config.json").read_text())
    assert trained["max_position_embeddings"] >= CONTEXT, "the saved window must cover what was trained"
    run_args = json.loads((pre / "longlora_args.json").read_text())
    saved_rope = trained.get("rope_parameters") or {}
    assert run_args["resolved"].get("rope_parameters", saved_rope) == saved_rope

    sft = tmp_path / "sft"
    # Character tokens: a chat template's own text (Qwen 2.5's default system prompt) takes ~100 of them.
    assert (
        _finetune(
            "--model",
            base,
            "--mode",
            "sft",
            "--data",
            sft_records,
            "--output-dir",
            sft,
            "--context-length",
            2 * CONTEXT,
        )
        == 0
    )
    stats = json.loads((sft / "longlora_args.json").read_text())["resolved"]["sft_stats"]
    assert stats["total"] == 2 and not stats["dropped"], stats

    from transformers import AutoModelForCausalLM

    ids = torch.tensor([family_tokenizer(name)("It was a truth universally acknowledged. " * 3).input_ids])
    for dtype in ("fp32", "bf16"):
        merged = tmp_path / f"merged-{dtype}"
        assert merge.main(["--adapter", str(pre), "--output", str(merged), "--dtype", dtype]) == 0
        model = AutoModelForCausalLM.from_pretrained(merged)  # plain transformers, no longlora code
        assert model.config.max_position_embeddings >= CONTEXT
        with torch.no_grad():
            assert torch.isfinite(model(ids).logits.float()).all()

    out = tmp_path / "ppl.json"
    merged = tmp_path / "merged-fp32"
    rc = perplexity.main(
        [
            "--model",
            str(merged),
            "--data",
            str(book),
            "--seq-len",
            str(CONTEXT),
            "--output",
            str(out),
            "--no-progress",
            "--max-tokens",
            str(4 * CONTEXT),
        ]
    )
    assert rc == 0
    ppl = json.loads(out.read_text())
    assert all(torch.isfinite(torch.tensor(float(v))) for v in _numbers(ppl["results"]))

    from longlora import qa

    capsys.readouterr()
    rc = qa.main(
        [
            "--doc",
            str(book),
            "--question",
            "Who is handsome?",
            "--model",
            str(merged),
            "--max-new-tokens",
            "3",
            "--dtype",
            "fp32",
            "--context-length",
            str(4 * CONTEXT),
        ]
    )
    assert rc == 0
    assert "tokens" in capsys.readouterr().err


def _numbers(results):
    for row in results if isinstance(results, list) else [results]:
        for key in ("ppl", "perplexity", "loss"):
            if key in row:
                yield row[key]


@pytest.mark.parametrize("name", FAMILIES)
def test_s2_is_active_in_training_and_causal(name):
    """In train mode the S2 backend changes the output (groups are smaller than the row) and never leaks."""
    from transformers import AutoModelForCausalLM

    from longlora.s2attn import enable_s2_attention

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(family_config(name), attn_implementation="eager").float()
    ids = torch.randint(10, model.config.vocab_size, (1, CONTEXT))
    model.eval()
    with torch.no_grad():
        full = model(ids).logits
    enable_s2_attention(model, group_size=GROUP)
    model.train()
    with torch.no_grad():
        s2 = model(ids).logits
        t = CONTEXT // 2 + 3
        changed = ids.clone()
        changed[0, t + 1 :] = torch.randint(10, model.config.vocab_size, (CONTEXT - t - 1,))
        s2_changed = model(changed).logits
    assert torch.allclose(s2[0, : GROUP // 2], full[0, : GROUP // 2], atol=1e-4), "first half-group = causal"
    assert not torch.allclose(s2, full, atol=1e-4), "S2-Attn did not run in training"
    torch.testing.assert_close(s2_changed[0, : t + 1], s2[0, : t + 1])


def test_s2_applies_gemma2_attention_logit_softcapping():
    """Gemma 2 caps attention scores (softcap * tanh(s / softcap)); S2-Attn must too, in training and after."""
    from transformers import AutoModelForCausalLM

    from longlora.s2attn import enable_s2_attention

    config = family_config("gemma-2-2b-it")
    config.attn_logit_softcapping = 0.05  # far below the scores of this model: capping changes every output
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    ids = torch.randint(10, config.vocab_size, (1, CONTEXT))
    attentions = [m for m in model.modules() if hasattr(m, "attn_logit_softcapping")]
    with torch.no_grad():
        eager = model(ids).logits
        for m in attentions:
            m.attn_logit_softcapping = None
        uncapped = model(ids).logits
        for m in attentions:
            m.attn_logit_softcapping = config.attn_logit_softcapping
    assert not torch.allclose(eager, uncapped, atol=1e-3), (
        "the cap must matter for this test to mean anything"
    )
    enable_s2_attention(model, group_size=GROUP)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, eager, atol=1e-4, rtol=1e-4)  # eval: full attention
        model.train()
        s2 = model(ids).logits
    torch.testing.assert_close(s2[0, : GROUP // 2], eager[0, : GROUP // 2], atol=1e-4, rtol=1e-4)
