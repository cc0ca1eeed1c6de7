"""longlora: LongLoRA long-context models: S2-Attn, LoRA+, Position Interpolation, fine-tuning,
evaluation, and a long-document QA engine.

Importing the package registers the ``"s2_attention"`` backend with transformers'
``AttentionInterface`` (idempotent), so ``attn_implementation="s2_attention"`` works afterwards.
"""

from longlora.s2attn import register_s2_attention, s2_attention

register_s2_attention()

__all__ = ["register_s2_attention", "s2_attention"]
__version__ = "0.1.0"
