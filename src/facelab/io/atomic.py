"""Write a file so readers see the old file or the whole new one, never a part."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _new_temp(target: Path, suffix: str) -> Path:
    """A new empty file with a unique name beside ``target``, created with mode 0o666 so the
    kernel applies the umask as for any new file (mkstemp's are owner-only, and reading the
    umask needs /proc or a racy os.umask call)."""
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp{suffix}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {target}")


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
    tmp = _new_temp(target, suffix)
    try:
        yield tmp
        try:  # a replaced file keeps its mode; a new one has the umask's, from _new_temp
            tmp.chmod(target.stat().st_mode & 0o777)
        except OSError:  # no file to replace, or a file system without modes
            pass
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
