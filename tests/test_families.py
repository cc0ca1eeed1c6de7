"""End to end on tiny models that copy real checkpoints' settings (tests/families/*.json).

For each family: finetune (pretrain with S2-Attn and Position Interpolation, then SFT through the
family's real chat template) -> merge (fp32 and bf16) -> plain ``transformers`` load -> perplexity
eval -> one QA answer. Plus, per family: S2-Attn really runs in training and stays causal.
"""

from __future__ import annotations

import json
import math
import re

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
    rope = expected_rope_parameters(name)
    assert trained["rope_parameters"] == rope, "the saved config must carry the RoPE it was trained with"
    assert run_args["resolved"]["rope_parameters"] == rope

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
        assert _plain(model.config.rope_parameters) == rope, "merging must keep the trained RoPE"
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
    results = json.loads(out.read_text())["results"]
    assert [row["seq_len"] for row in results] == [CONTEXT], results
    row = results[0]
    assert row["tokens"] > 0 and math.isfinite(row["loss"]) and row["loss"] > 0
    assert row["ppl"] == pytest.approx(math.exp(row["loss"]))

    from longlora import qa

    capsys.readouterr()
    question, window = "Who is handsome?", 4 * CONTEXT
    rc = qa.main(
        [
            "--doc",
            str(book),
            "--question",
            question,
            "--model",
            str(merged),
            "--max-new-tokens",
            "3",
            "--dtype",
            "fp32",
            "--context-length",
            str(window),
            "--json",
        ]
    )
    streams = capsys.readouterr()
    assert rc == 0, streams.err
    (line,) = streams.out.splitlines()  # one question, one JSON answer
    answer = json.loads(line)
    assert answer["question"] == question
    fit = answer["fit"]
    # the 12,000-character book does not fit 512 tokens: the prompt holds retrieved passages of it
    assert not fit["fits_whole"] and 0 < fit["kept_tokens"] <= fit["budget_tokens"] < fit["document_tokens"]
    text = " ".join(book.read_text().split())
    assert answer["sources"] and all(" ".join(src["text"].split()) in text for src in answer["sources"])
    assert re.search(r"^\[emma\.txt: [\d,]+ tokens, budget [\d,]+, retrieve\]$", streams.err, re.M)
    expected, prompt_tokens = _greedy_reference_answer(merged, book, question, window, max_new_tokens=3)
    assert fit["prompt_tokens"] == prompt_tokens
    assert answer["answer"] == expected, "the answer must be the model's own greedy continuation"


def _plain(rope: dict) -> dict:
    """RoPE parameters as a saved config.json holds them (JSON types)."""
    return json.loads(json.dumps(rope))


def expected_rope_parameters(name: str) -> dict:
    """The RoPE a pretraining run at CONTEXT must end with, from the family's shipped settings alone.

    A family whose shipped window already covers CONTEXT (an extended release: Llama 3.x, Phi-3 128k,
    Gemma 3) keeps its RoPE as shipped. The others were pre-trained at TINY_ORIGINAL = CONTEXT / 2 with
    plain RoPE: the paper's Position Interpolation makes them linear at factor ceil(CONTEXT / 64) = 2, with
    every other setting (theta) kept.
    """
    config = family_config(name)
    shipped = _plain(config.rope_parameters)
    if config.max_position_embeddings >= CONTEXT:
        return shipped
    assert config.max_position_embeddings == TINY_ORIGINAL and shipped["rope_type"] == "default", shipped
    return {**shipped, "rope_type": "linear", "factor": 2.0}


def _greedy_reference_answer(model_dir, book, question: str, window: int, max_new_tokens: int):
    """(answer, prompt tokens): the prompt the QA engine builds, continued greedily the slow way (the whole
    sequence through the model for every token, no KV cache), up to an end-of-answer token."""
    from longlora.qa import QAEngine

    engine = QAEngine(
        str(model_dir),
        context_length=window,
        dtype="fp32",
        device="cpu",
        max_new_tokens=max_new_tokens,
        status=lambda message: None,
    )
    profile = engine.profile
    assert profile.repetition_penalty == 1.0 and not 0 < profile.no_repeat_ngram_size <= max_new_tokens, (
        "plain greedy is the engine's rule only without repetition rules that can act within the answer"
    )
    session = engine.open_document(str(book))
    prompt, _ = engine.build_prompt(session, question, max_new_tokens=max_new_tokens)
    generated: list[int] = []
    with torch.no_grad():
        while len(generated) < max_new_tokens:
            token = int(engine.model(torch.tensor([prompt + generated])).logits[0, -1].argmax())
            if token in engine.eos_ids:
                break
            generated.append(token)
    return engine.tokenizer.decode(generated, skip_special_tokens=True).strip(), len(prompt)


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
