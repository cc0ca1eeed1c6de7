"""Load the QA engine in a thread, so the page comes up at once and says what is happening.

``BackgroundEngine`` satisfies ``longlora.qa.QAEngineLike``: ``state`` is "loading", then "ready"
or "error"; ``status_message`` follows the loader's messages (e.g. converting the bundled GGUF
file); ``wait_ready`` blocks and raises the load error. Once ready, every call goes to the engine.
Import this module only when the app starts: it imports ``longlora.qa`` (and so transformers).
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable

Status = Callable[[str], None]


def _delegate(name: str):
    """A method that waits for the engine and calls its ``name``, with ``QAEngineLike.name``'s signature."""
    from longlora.qa import QAEngineLike

    def method(self, *args, **kwargs):
        return getattr(self._loaded(), name)(*args, **kwargs)

    return functools.wraps(getattr(QAEngineLike, name))(method)


class BackgroundEngine:
    """An engine that is being loaded by ``load(status)`` in a daemon thread."""

    def __init__(self, load: Callable[[Status], object], *, model_spec="default"):
        self.model_spec = model_spec
        self.state = "loading"
        self.status_message = "Loading the model..."
        self.error: BaseException | None = None
        self.engine = None
        self._ready = threading.Event()
        threading.Thread(target=self._load, args=(load,), name="longlora-qa-load", daemon=True).start()

    @classmethod
    def from_spec(cls, model_spec: str = "default", **engine_kwargs) -> BackgroundEngine:
        """Load ``longlora.qa.QAEngine(model_spec, **engine_kwargs)`` in the background."""

        def load(status: Status):
            from longlora.qa import QAEngine

            return QAEngine(model_spec, status=status, **engine_kwargs)

        return cls(load, model_spec=model_spec)

    @classmethod
    def from_args(cls, args, **engine_kwargs) -> BackgroundEngine:
        """Load ``QAEngine.from_args(args, **engine_kwargs)`` (the shared model flags) in the background."""

        def load(status: Status):
            from longlora.qa import QAEngine

            return QAEngine.from_args(args, status=status, **engine_kwargs)

        return cls(load, model_spec=args.model)

    def _status(self, message: str) -> None:
        self.status_message = message
        print(message, file=sys.stderr, flush=True)

    def _load(self, load) -> None:
        try:
            self.engine = load(self._status)
            self.state = "ready"
            self.status_message = "Ready."
        except BaseException as err:  # noqa: BLE001 - a load failure must never take the app down
            self.error = err
            self.state = "error"
            self.status_message = f"The model could not be loaded: {err}"
        finally:
            self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the model is loaded; raise its load error, or TimeoutError."""
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the model is still loading after {timeout} s ({self.status_message})")
        if self.error is not None:
            raise self.error

    def _loaded(self):
        self.wait_ready()
        return self.engine

    @property
    def context_length(self) -> int:
        return self.engine.context_length if self.engine is not None else 0

    # -- QAEngineLike: wait for the model, then delegate (signatures are the protocol's)

    open_document = _delegate("open_document")
    open_documents = _delegate("open_documents")
    card = _delegate("card")
    ask = _delegate("ask")

    def close_session(self, session) -> None:
        if self.engine is not None:  # nothing is cached before the model is loaded
            self.engine.close_session(session)

    def __getattr__(self, name: str):
        # everything else (answer, build_prompt, tokenizer, model, profile...) is the engine's
        if name.startswith("_") or name == "engine":
            raise AttributeError(name)
        return getattr(self._loaded(), name)
