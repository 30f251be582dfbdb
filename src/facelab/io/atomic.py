"""Write a file so readers see the old file or the whole new one, never a part."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """A unique temporary path beside ``target``; it replaces ``target`` when the block ends
    without an error and is removed otherwise (no stray ``.tmp`` files, and two threads or
    processes writing the same target never share a temporary file).

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
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
