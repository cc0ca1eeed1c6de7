"""Shared test fixtures: tiny random models built from configs and an offline character tokenizer.

Nothing here downloads anything. Tiny configs use GQA (kv heads < heads) and an odd number of
query heads on purpose: that is the case that breaks attention code.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Real documents (PDFs, books) live in shared/fixtures beside the repository; LONGLORA_FIXTURES overrides.
FIXTURES = Path(
    os.environ.get("LONGLORA_FIXTURES") or Path(__file__).resolve().parents[2] / "shared" / "fixtures"
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]


def build_char_tokenizer(specials, chat_template=None, **special_tokens):
    """A character-level fast tokenizer built offline: ``specials`` first (ids 0..), then printable ASCII.

    ``special_tokens``: pad_token, bos_token, eos_token, unk_token, additional_special_tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(specials)}
    for c in string.printable:
        if c not in "\x0b\x0c":
            vocab.setdefault(c, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special_tokens.get("unk_token", "<unk>")))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def make_char_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A character-level fast tokenizer built offline (printable ASCII + specials).

    ids 0..5 are the special tokens; pad=0, bos=1, eos=2, unk=3.
    """
    return build_char_tokenizer(
        SPECIAL_TOKENS,
        chat_template,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=4096,
    )


def tiny_config(arch: str = "llama", vocab_size: int = 128, **overrides):
    """Tiny decoder config: 2 layers, hidden 48, 6 query heads / 2 kv heads (GQA), head dim 8."""
    from transformers import AutoConfig

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=arch == "llama",
    )
    if arch in ("llama", "mistral", "qwen2"):
        kwargs["head_dim"] = 8
    kwargs.update(overrides)
    return AutoConfig.for_model(arch, **kwargs)


def tiny_model(arch: str = "llama", seed: int = 0, attn_implementation: str = "sdpa", **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, **overrides)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.float()


@pytest.fixture
def char_tokenizer():
    return make_char_tokenizer()


@pytest.fixture
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A saved tiny Llama + char tokenizer directory, loadable like any local model."""
    model = tiny_model("llama")
    tok = make_char_tokenizer()
    out = tmp_path / "tiny-llama"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
