"""Deprecated: moved to :mod:`longlora.eval.tokens` (evaluation data read into one token stream).

Importing this module warns (``DeprecationWarning``); it goes in the next release (CHANGELOG.md).
"""

from data_tools.deprecation import warn_moved_module
from longlora.eval.tokens import (  # noqa: F401 - the old path's public names, for one release
    SUPPORTED,
    EvalData,
    expand_paths,
    load_eval_tokens,
)

warn_moved_module(__name__, "longlora.eval.tokens")
