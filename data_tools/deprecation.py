"""Old import paths kept for one release: each warns (``DeprecationWarning``) and names the new home.

A module whose names moved elsewhere sets ``__getattr__ = moved_names(__name__, {"name": "new.module"})``,
so ``from old.module import name`` still works and says where to import it from; a module that moved as a
whole is replaced by a shim that calls :func:`warn_moved_module` and imports the new module's public
names. Every such path is listed in ``CHANGELOG.md`` and goes in the next release.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable


def moved_names(module: str, new_homes: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for names that moved out of ``module``: ``new_homes`` maps each to the
    module that holds it now; reading one warns and returns the object from its new home."""

    def __getattr__(name: str) -> object:
        home = new_homes.get(name)
        if home is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(
            f"{module}.{name} moved to {home}.{name}; import it from there "
            "(the old path will be removed in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(home), name)

    return __getattr__


def warn_moved_module(old: str, new: str) -> None:
    """Warn that module ``old`` moved to ``new`` (called on import of the shim left at ``old``)."""
    warnings.warn(
        f"{old} moved to {new}; import it from there (the old module will be removed in the next release)",
        DeprecationWarning,
        stacklevel=3,
    )
