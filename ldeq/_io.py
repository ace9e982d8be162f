"""Atomic file output, shared by every writer of results (checkpoints, logs, reports, images, video).

A file is written to a temporary name in its destination folder and then moved over the
destination with ``os.replace``, so a reader, or a process killed half-way, sees the old file or
the new one, never half of one. The result gets the usual permissions (0666 minus the umask), not
the private 0600 of a ``mkstemp`` file.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Callable


def publish(tmp: str, path: str) -> None:
    """Move a finished temporary file ``tmp`` over ``path``, with umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def temp_path_beside(path: str, suffix: str = "") -> str:
    """A new empty temporary file in ``path``'s folder (created if missing), named ``.tmp_*suffix``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix=".tmp_", dir=folder)
    os.close(fd)
    return tmp


def atomic_save(path, write: Callable[[str], None], suffix: str = "", fsync: bool = False) -> str:
    """``write(tmp)`` writes the content to the temporary path ``tmp``; it then replaces ``path``.

    suffix: the temporary name's extension, for writers that pick the format from it (".png",
    ".npy", ".pt"). fsync: force the content to disk before the move (checkpoints). On any error,
    interruption included, the temporary file is removed and ``path`` is untouched. Returns ``path``.
    """
    path = os.fspath(path)
    tmp = temp_path_beside(path, suffix)
    try:
        write(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path, text: str, newline: str | None = None) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically. newline: as for ``open`` ("" for csv)."""
    def _write(tmp):
        with open(tmp, "w", encoding="utf-8", newline=newline) as f:
            f.write(text)
    return atomic_save(path, _write)


def atomic_write_json(path, obj, **dump_kwargs) -> str:
    """``json.dump(obj, **dump_kwargs)`` to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, **dump_kwargs))


def atomic_savefig(fig, path, **savefig_kwargs) -> str:
    """Save a matplotlib figure as PNG to ``path`` atomically, then close it (also on error)."""
    import matplotlib.pyplot as plt  # the callers have chosen the backend already
    try:
        return atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", **savefig_kwargs), suffix=".png")
    finally:
        plt.close(fig)
