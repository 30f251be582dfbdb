"""Write a file so readers see the old file or the whole new one, never a part."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only
    be read by setting it, which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _umask_by_setting()


@functools.cache
def _umask_by_setting() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """A unique temporary path beside ``target``; it replaces ``target`` when the block ends
    without an error and is removed otherwise (no stray ``.tmp`` files, and two threads or
    processes writing the same target never share a temporary file). The new file gets the
    mode of the file it replaces, or a new file's usual mode (0666 less the umask), not the
    owner-only mode of a temporary file, so a team's run folder stays readable.

    Example:
        >>> with atomic_path("model.onnx", ".onnx") as tmp:  # doctest: +SKIP
        ...     torch.onnx.export(net, x, str(tmp))
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        try:
            mode = target.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        try:
            tmp.chmod(mode)
        except OSError:  # a file system without modes: the write matters more
            pass
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
