"""Checkpoints: model, head, optimizer, scheduler, epoch, RNG state and config in one file."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facelab.io.atomic import atomic_path
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
    with atomic_path(path, ".pt") as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)
