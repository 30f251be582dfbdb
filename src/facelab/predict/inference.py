"""Batched inference over cached pixels, with optional horizontal-flip TTA."""

from __future__ import annotations

import numpy as np
import torch

from facelab.data.labels import TASKS
from facelab.models.heads import task_log_probs
from facelab.train.augment import to_tensor
from facelab.runtime import tune_allocator


@torch.inference_mode()
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
    model.eval()
    idx = np.arange(len(pixels)) if indices is None else np.asarray(indices)
    out: dict[str, list[np.ndarray]] = {t: [] for t in TASKS}
    for start in range(0, len(idx), batch_size):
        x = to_tensor(pixels[idx[start : start + batch_size]], channels_last)
        probs = {t: v.exp() for t, v in task_log_probs(model(x)).items()}
        if tta:
            flipped = task_log_probs(model(x.flip(3)))
            probs = {t: (probs[t] + flipped[t].exp()) / 2 for t in TASKS}
        for t in TASKS:
            out[t].append(probs[t].float().numpy())
        if progress:
            progress(min(start + batch_size, len(idx)), len(idx))
    return {t: np.concatenate(v) if v else np.zeros((0, 1)) for t, v in out.items()}
