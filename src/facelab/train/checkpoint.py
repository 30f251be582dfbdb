"""Checkpoints: model, head, optimizer, scheduler, epoch, RNG state and config in one file."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facelab.models.checkpoint import FORMAT, load_checkpoint  # noqa: F401  (re-exported)


def rng_state() -> dict[str, Any]:
    # numpy's state as plain data (list, not ndarray) so checkpoints load with weights_only.
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a half-written checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def load_model(path: str | Path):
    """(model, config, checkpoint) from a checkpoint file or run folder, ready for inference;
    the training-side view of facelab.predict.run.AttributeRun (a full TrainConfig).

    Example:
        >>> model, cfg, ckpt = load_model("runs/mt")  # doctest: +SKIP
    """
    from facelab.config import build_dataclass
    from facelab.predict.run import AttributeRun
    from facelab.train.config import TrainConfig

    run = AttributeRun.load(path)
    cfg = build_dataclass(TrainConfig, run.config, str(run.path))
    return run.model, cfg, run.checkpoint
