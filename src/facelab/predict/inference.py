"""Batched inference over cached pixels, with optional horizontal-flip TTA."""

from __future__ import annotations

import numpy as np
import torch

from facelab.predict.backends import TorchBackend, predict_batches
from facelab.runtime import tune_allocator


def predict_pixels(
    model: torch.nn.Module,
    pixels: np.ndarray,
    indices: np.ndarray | None = None,
    batch_size: int = 128,
    tta: bool = False,
    channels_last: bool = True,
    progress=None,
) -> dict[str, np.ndarray]:
    """Per-task probabilities {task: (N, k)} for uint8 (N, S, S, 3) pixels.

    With `tta`, probabilities of the image and its mirror image are averaged.

    Example:
        >>> probs = predict_pixels(model, cache.pixels, tta=True)  # doctest: +SKIP
    """
    tune_allocator()
    return predict_batches(TorchBackend(model, channels_last), pixels, indices, batch_size, tta,
                           progress)
