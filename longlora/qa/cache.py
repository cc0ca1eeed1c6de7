"""The KV cache of each session's last prompt, so a follow-up question prefills only what differs.

An LRU keyed by session id, bounded by a count (``max_sessions``) and by bytes (``max_bytes``: the
keys and values the caches hold; those of one 16k-token document of an 8B model take gigabytes, so a
count alone does not bound memory). ``take`` removes the entry and crops its cache to the longest common prefix
with the new prompt; ``keep`` puts it back after generation, evicting the least recently used entries
until both bounds hold (a cache larger than ``max_bytes`` by itself is not kept). ``stats`` says how
many are kept, their bytes, and how many were evicted or refused (for a server's load report).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class _Entry:
    ids: list[int]
    cache: object  # transformers DynamicCache holding exactly `ids`
    nbytes: int = 0


def cache_bytes(cache) -> int:
    """Bytes of the key and value tensors a transformers cache holds (its ``layers``' ``keys`` and
    ``values``)."""
    total = 0
    for layer in getattr(cache, "layers", None) or []:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and hasattr(t, "element_size"):
                total += t.numel() * t.element_size()
    return total


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def crop(cache, length: int) -> None:
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)  # transformers 5: a negative count removes that many tokens from the end


class PromptCaches:
    """Per-session KV caches (LRU). Thread-safe."""

    def __init__(self, max_sessions: int = 4, max_bytes: int | None = None):
        self.max_sessions = int(max_sessions)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0  # entries dropped, least recently used first, to keep within the bounds
        self.refused = 0  # caches larger than max_bytes by themselves, not kept

    def take(self, session_id: str, prompt: Sequence[int], new_cache):
        """(cache, reused): the session's cache cropped to its common prefix with ``prompt``, or
        ``new_cache()`` and 0. At least one prompt token is left to run, to give logits."""
        with self._lock:
            entry = self._entries.pop(session_id, None)
        if entry is not None:
            common = min(common_prefix(entry.ids, prompt), len(prompt) - 1)
            if common > 0:
                crop(entry.cache, common)
                return entry.cache, common
        return new_cache(), 0

    def keep(self, session_id: str, ids: list[int], cache) -> None:
        if self.max_sessions <= 0 or not ids:
            return
        if cache.get_seq_length() != len(ids):  # interrupted mid-forward: do not trust it
            return
        nbytes = cache_bytes(cache)
        if self.max_bytes is not None and nbytes > self.max_bytes:
            with self._lock:
                self._entries.pop(session_id, None)
                self.refused += 1
            return
        with self._lock:
            self._entries[session_id] = _Entry(list(ids), cache, nbytes)
            self._entries.move_to_end(session_id)
            while len(self._entries) > self.max_sessions or (
                self.max_bytes is not None and self._nbytes() > self.max_bytes
            ):
                self._entries.popitem(last=False)
                self.evicted += 1

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._entries.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held by the kept caches."""
        with self._lock:
            return self._nbytes()

    def _nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def stats(self) -> dict:
        """The kept caches (``sessions``, ``bytes``), the bounds, and the ``evicted`` and ``refused``
        counts so far, read together (another thread may be keeping a cache)."""
        with self._lock:
            return {
                "sessions": len(self._entries),
                "bytes": self._nbytes(),
                "max_sessions": self.max_sessions,
                "max_bytes": self.max_bytes,
                "evicted": self.evicted,
                "refused": self.refused,
            }
