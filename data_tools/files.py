"""Small file helpers: atomic writes and file hashes. Input paths are expanded by ``data_tools.reader``."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from .deprecation import moved_names
from .errors import WriteError

# The folder rule moved to data_tools.reader with the rest of input expansion; it warns here for one
# release (CHANGELOG.md). expand_inputs is gone: data_tools.reader.find_sources expands inputs.
__getattr__ = moved_names(__name__, {"list_folder": "data_tools.reader"})


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """A temporary path beside ``path`` to write to; on success it replaces ``path`` (``os.replace``),
    with the permissions an ordinary new file gets (0666 less the umask), so readers never see a
    half-written file and a crash or a full disk leaves the old file as it was. On error the temporary
    file is removed. The one home of atomic writes: every writer of results, reports and plots uses it."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=suffix)
    os.close(fd)
    existed = os.path.exists(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise write_error(path, err, kept=existed) from err
        raise


def write_error(path: str | os.PathLike, err: Exception, kept: bool) -> WriteError:
    """The :class:`WriteError` for a failed write of ``path``: the file, the system's reason, the fix."""
    reason = getattr(err, "strerror", None) or str(err)
    left = "its previous version is unchanged" if kept else "nothing was written there"
    return WriteError(
        f"cannot write {os.fspath(path)}: {reason}; {left}. Free space on that disk (or choose an output "
        "folder on another one) and run the command again"
    )


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))
