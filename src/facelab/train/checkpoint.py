"""Checkpoints: model, head, optimizer, scheduler, epoch, RNG state and config in one file."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facelab.errors import CheckpointError

FORMAT = "facelab-attributes-1"


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a half-written checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a facelab checkpoint with a clear error for missing or foreign files."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass a run folder or a .pt file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a facelab attribute checkpoint")
    ckpt["path"] = str(path)
    return ckpt


def load_model(path: str | Path):
    """(model, config, checkpoint) from a checkpoint file or run folder, ready for inference.

    The model applies the run's `augment.center_crop` to its input in eval mode, so callers
    feed the same uncropped pixels as for any other run.

    Example:
        >>> model, cfg, ckpt = load_model("runs/mt")  # doctest: +SKIP
    """
    from facelab.train.augment import add_eval_center_crop
    from facelab.train.config import TrainConfig, _build

    ckpt = load_checkpoint(path)
    cfg = _build(TrainConfig, ckpt["config"], ckpt["path"])
    model = cfg.model.build(pretrained="")
    model.load_state_dict(ckpt["model"])  # the averaged weights when SWA/EMA was on
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    add_eval_center_crop(model, cfg.augment.center_crop)  # the training-time center crop
    model.eval()
    return model, cfg, ckpt
