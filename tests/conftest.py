"""Shared test fixtures: tiny random models built from configs, an offline character tokenizer, and the
real documents (``fixture_path`` and friends skip a test, saying why, when a document is absent).

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

ROOT = Path(__file__).resolve().parents[1]

# Real documents (PDFs, books, the short-QA sample) live in shared/fixtures beside the repository, and the
# development corpus of PDFs in shared/corpus; LONGLORA_FIXTURES overrides the fixtures folder (the corpus is
# then its sibling). A clone without them still runs the rest: use these only through fixture_path(),
# corpus_path() or needs_fixtures() / needs_corpus(), which skip, saying why, when a document is absent.
FIXTURES = Path(os.environ.get("LONGLORA_FIXTURES") or ROOT.parent / "shared" / "fixtures")
CORPUS = FIXTURES.parent / "corpus"

# In-repository copies of two fixture books (data/books/README.md: byte-identical to the fixtures): for
# tests that need a real book, these always exist.
EMMA = ROOT / "data" / "books" / "dev" / "austen-emma.txt"
PRIDE_AND_PREJUDICE = ROOT / "data" / "books" / "heldout" / "austen-prideprejudice.txt"


def absent_reason(path: Path) -> str:
    """Why a test that reads ``path`` (under FIXTURES or CORPUS) is skipped."""
    return (
        f"{path} is absent: the real documents live in ../shared/fixtures and ../shared/corpus beside "
        "the repository (or set LONGLORA_FIXTURES to the fixtures folder)"
    )


def _present(paths) -> tuple[bool, str]:
    missing = [path for path in paths if not path.exists()]
    return not missing, absent_reason(missing[0]) if missing else ""


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(absent_reason(path))
    return path


def fixture_path(name: str) -> Path:
    """``FIXTURES / name``; skips the calling test (or fixture) when that file is absent."""
    return _require(FIXTURES / name)


def corpus_path(name: str = "") -> Path:
    """``CORPUS / name`` (the corpus folder itself without a name); skips the calling test when absent."""
    return _require(CORPUS / name if name else CORPUS)


def needs_fixtures(*names: str) -> pytest.MarkDecorator:
    """A skip mark, decided at collection without reading anything, for tests that need these fixture
    files: for a whole module (``pytestmark``), for a test whose expensive module-scoped fixtures should
    not be built when it would skip, and for parametrize values (``pytest.param(..., marks=...)``)."""
    present, reason = _present([FIXTURES / name for name in names])
    return pytest.mark.skipif(not present, reason=reason)


def needs_corpus(*names: str) -> pytest.MarkDecorator:
    """As ``needs_fixtures``, for files of the corpus (the corpus folder itself without names)."""
    present, reason = _present([CORPUS / name for name in names] or [CORPUS])
    return pytest.mark.skipif(not present, reason=reason)


def corpus_names(pattern: str = "*.pdf") -> list[str]:
    """Sorted names of the corpus files matching ``pattern`` (none when the corpus is absent): for
    parametrize, together with ``needs_corpus()``."""
    return sorted(path.name for path in CORPUS.glob(pattern)) if CORPUS.is_dir() else []


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


def bpe_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE tokenizer trained offline on ``text``, with a BOS and a chat template: merges
    make token counts of joined text differ from the sum of its parts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator([text], trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")
    tok.chat_template = make_char_tokenizer().chat_template
    return tok
