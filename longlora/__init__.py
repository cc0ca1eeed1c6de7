"""longlora: LongLoRA long-context models: S2-Attn, LoRA+, Position Interpolation, fine-tuning,
evaluation, and a long-document QA engine.

Importing the package is light: it imports neither torch nor transformers, so the app can serve its
first page before they load (measured: ``benchmarks/app_startup.py``). The ``"s2_attention"`` backend
is registered with transformers' ``AttentionInterface`` when :mod:`longlora.s2attn` is imported (also
through ``longlora.s2_attention`` or ``longlora.register_s2_attention``), and by
:func:`longlora.s2attn.enable_s2_attention`; after that ``attn_implementation="s2_attention"`` works.
"""

__all__ = ["register_s2_attention", "s2_attention"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:  # the S2 entry points, loaded (and the backend registered) on first use
        from longlora import s2attn

        return getattr(s2attn, name)
    raise AttributeError(f"module 'longlora' has no attribute {name!r}")
