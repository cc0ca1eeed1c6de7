"""Model profiles: what a model can really use when it answers questions about a document.

A profile is chosen by what the model *is*, never by the folder it sits in, so a model merged into
``out/smol-16k-merged`` keeps its base's profile:

1. the profile name recorded in the model's config (``config.longlora_profile``, see
   :data:`PROFILE_CONFIG_KEY`; :func:`record_profile` writes it when a model is saved or merged);
2. else the architecture: a known base is recognised by its config fingerprint (model type, sizes,
   vocabulary), which merging and Position Interpolation leave unchanged;
3. else :data:`DEFAULT_PROFILE` (a long-context model uses its whole window with the paper's prompt).

The bundled model's name comes from ``data_tools.bundled``. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from .bundled import DEFAULT_MODEL_NAME
from .deprecation import moved_names

__all__ = [
    "DEFAULT_PROFILE",
    "DEFAULT_PROFILE_NAME",
    "EXTENDED_PROFILES",
    "FINGERPRINTS",
    "PROFILES",
    "PROFILE_CONFIG_KEY",
    "ModelProfile",
    "extended_profile_name",
    "profile_for_config",
    "profile_name_for_config",
    "record_profile",
]
# The bundled model's location moved to data_tools.bundled; its names warn here for one release
# (CHANGELOG.md). GGUF_FILE is gone: data_tools.bundled.DEFAULT_GGUF is the one name of the GGUF file.
__getattr__ = moved_names(
    __name__,
    dict.fromkeys(("DEFAULT_GGUF", "GGUF_PACKAGE", "cache_dir", "default_model_dir"), "data_tools.bundled"),
)


@dataclass(frozen=True)
class ModelProfile:
    """What a model can really use, measured with ``benchmarks/qa_accuracy.py``.

    document_budget: most document tokens to put in the prompt (None: the whole context window).
    passage_tokens: retrieval passage size. prompt_style: "paper" (the paper's B.6 wording) or
    "brief" (see ``data_tools.prompts.PROMPT_STYLES``). repetition_penalty / no_repeat_ngram_size:
    applied to the answer's own tokens only (never to the document, which the answer may copy from).
    whole_document: a document that fits the whole context window goes in whole, in
    ``whole_document_style`` (the paper's demo: full attention over all of it), whatever
    ``document_budget`` says; longer documents are fitted by the settings above.
    lead_tokens: the document's first tokens (title, authors, abstract) kept in every retrieval
    prompt before the retrieved passages (0: only for bibliographic questions).
    alternate_readings: further retrievals, each ``(passage_tokens, lead_tokens)``, answered beside the
    profile's own for every question that needs retrieval; the answer the model supports best across
    all the readings is kept (``longlora.qa.readings``). Empty: one reading.
    chosen_by: one line for the document card saying what chose how this model reads a document
    (whole when it fits the budget, else retrieval): the measurement and its result file, or, for a
    profile that was never measured, that it was not.
    """

    document_budget: int | None = None
    passage_tokens: int = 256
    prompt_style: str = "paper"
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    whole_document: bool = False
    whole_document_style: str = "paper"
    lead_tokens: int = 0
    alternate_readings: tuple[tuple[int, int], ...] = ()
    chosen_by: str = ""

    def __post_init__(self):
        for reading in self.alternate_readings:
            if len(reading) != 2 or reading[0] < 1 or reading[1] < 0:
                raise ValueError(
                    f"alternate_readings holds (passage_tokens >= 1, lead_tokens >= 0) pairs, got {reading!r}"
                )

    def readings(self) -> list[tuple[int, int]]:
        """Every retrieval reading, ``(passage_tokens, lead_tokens)``, the profile's own first."""
        return [(self.passage_tokens, self.lead_tokens), *self.alternate_readings]


# The config key that carries the profile name through save / merge / Position Interpolation.
PROFILE_CONFIG_KEY = "longlora_profile"
DEFAULT_PROFILE_NAME = "default"
# Long-context models (what LongLoRA produces) use their whole window with the paper's template.
DEFAULT_PROFILE = ModelProfile(
    chosen_by=(
        "Reads a document whole when it fits the context window, as the paper's demo does; not measured "
        "for this model (no QA result exists for a model without a profile of its own)."
    )
)
# Values from benchmarks/qa_accuracy.py (see docs/qa.md).
PROFILES: dict[str, ModelProfile] = {
    DEFAULT_PROFILE_NAME: DEFAULT_PROFILE,
    # 14/30 on the QA set vs 7/30 for a 512-token paper-template prompt and 6/30 at 1,024 tokens:
    # with a 135M model, fewer and shorter passages and a plain wording win (docs/qa.md). Windows of
    # 128 tokens after the document's first 64 (its title and abstract), chosen by answers on the dev
    # split of qa_dev_set.jsonl (results/qa-tune-dev.jsonl): 36/103 against 30/103 for the 64-token
    # windows that retrieval recall had picked, 33/103 for 128 without the opening, and 29/103 with
    # the "grounded" wording; the held-out split is reported apart (results/qa-tune-holdout.jsonl).
    # Those settings agreed on only about half of their right answers, so the profile reads all three
    # (64-token windows, and 128 without the opening, beside its own) and keeps the answer the model
    # supports best across them (longlora.qa.readings): 43/103 dev answers (results/qa-readings-dev.jsonl).
    DEFAULT_MODEL_NAME: ModelProfile(
        document_budget=256,
        passage_tokens=128,
        prompt_style="brief",
        no_repeat_ngram_size=4,
        lead_tokens=64,
        alternate_readings=((64, 0), (128, 0)),
        chosen_by=(
            "Chosen for this model by answers: retrieval into 256 tokens, three readings per question "
            "(128-token passages after the document's first 64; 64-token; 128-token) and the answer the "
            "model supports best across them, answered 43/103 dev questions against 36/103 for the best "
            "single reading (results/qa-readings-dev.jsonl, results/qa-tune-dev.jsonl); the whole document "
            "answered 2/14 of the questions whose document fits its 8k window (results/qa-whole-bundled.jsonl)."
        ),
    ),
}
# The profile of a model extended by LongLoRA from a base with a profile of its own (written into the
# merged model's config by ``python -m longlora.recipe``): what the extended model answers best with,
# measured on the development QA set (benchmarks/qa_accuracy.py --fitting-only; docs/recipe.md).
EXTENDED_PROFILES: dict[str, str] = {DEFAULT_MODEL_NAME: f"{DEFAULT_MODEL_NAME}-LongLoRA"}
# For the recipe's 16k SmolLM2 (results/qa-recipe-extended.jsonl, the 40 development questions whose
# document fits 16k): retrieval into a 256-token prompt answered 18/40, the whole document in the paper's
# template 6/40 (19 of its answers degenerate into repetition). Long prompts were already the bundled
# model's weak point (docs/qa.md) and 32 steps on novels do not change that, so retrieval is its default;
# the profile keeps its own name so that a better extension can change how its models are served.
PROFILES[EXTENDED_PROFILES[DEFAULT_MODEL_NAME]] = ModelProfile(
    document_budget=256,
    passage_tokens=64,
    prompt_style="brief",
    no_repeat_ngram_size=4,
    whole_document=False,
    chosen_by=(
        "Chosen for this model by answers: on the 40 development questions whose document fits its 16k "
        "window, retrieval into 256 tokens answered 18/40 and the whole document in the paper's template "
        "6/40 (results/qa-recipe-extended.jsonl)."
    ),
)
# Config values that identify a known base architecture (unchanged by merging or by PI).
FINGERPRINTS: dict[str, dict[str, object]] = {
    DEFAULT_MODEL_NAME: dict(
        model_type="llama",
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        vocab_size=49152,
    ),
}


def _get(config, key: str):
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def profile_name_for_config(config) -> str:
    """The profile name for a model config (a transformers config or its dict); see the module docstring."""
    recorded = _get(config, PROFILE_CONFIG_KEY)
    if isinstance(recorded, str) and recorded in PROFILES:
        return recorded
    for name, fingerprint in FINGERPRINTS.items():
        if all(_get(config, key) == value for key, value in fingerprint.items()):
            return name
    return DEFAULT_PROFILE_NAME


def profile_for_config(config) -> ModelProfile:
    """The :class:`ModelProfile` a model with this config uses."""
    return PROFILES[profile_name_for_config(config)]


def extended_profile_name(base_profile: str) -> str | None:
    """The profile of a LongLoRA extension of a model with ``base_profile`` (None: keep the base's)."""
    return EXTENDED_PROFILES.get(base_profile)


def record_profile(config, name: str | None = None) -> str:
    """Write a profile name into the config (``config.longlora_profile``) and return it.

    Call before saving a fine-tuned, merged or extended model, so it keeps its profile whatever
    folder it is saved to. ``name`` None keeps the base's profile (what the config is now); pass
    :data:`DEFAULT_PROFILE_NAME` for a model trained on the paper's prompt to use its whole window.
    """
    if name is None:
        name = profile_name_for_config(config)
    if name not in PROFILES:
        raise ValueError(f"unknown model profile {name!r}; choose one of {sorted(PROFILES)}")
    if isinstance(config, dict):
        config[PROFILE_CONFIG_KEY] = name
    else:
        setattr(config, PROFILE_CONFIG_KEY, name)
    return name
