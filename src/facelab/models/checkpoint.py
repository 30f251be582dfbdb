"""Reading facelab attribute checkpoints (format check first, data only, no code runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facelab.errors import CheckpointError
from facelab.io.torchfile import load_torch_file

FORMAT = "facelab-attributes-1"


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder's best.pt (else last.pt), or the file itself."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass a run folder or a .pt file")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a facelab checkpoint with a clear error for missing, foreign or unsafe files.

    Example:
        >>> ckpt = load_checkpoint("runs/mt")  # doctest: +SKIP
        >>> ckpt["config"]["model"]["backbone"]  # doctest: +SKIP
        'mobilenet_v2'
    """
    path = resolve_checkpoint(path)
    ckpt = load_torch_file(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a facelab attribute checkpoint; pass a run folder "
                              "or a best.pt / last.pt written by `facelab train`")
    ckpt["path"] = str(path)
    return ckpt
