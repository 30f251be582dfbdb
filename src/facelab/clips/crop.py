"""Person-centred crops without a person detector: the box around what moves in a clip.

A fixed camera's clip has a still background; the median of a clip's sampled frames
estimates it, and pixels far from it in any frame are the moving person. The box around
those pixels (robust percentiles, a margin, made square) is cut out of every frame and
scaled back to the frame size, so a model sees the person at a similar scale whatever the
room, camera distance or field of view: a lever for cross-dataset transfer.

A clip with too little motion (or none) keeps the whole frame.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CROPS = ("none", "motion")


def motion_box(frames: np.ndarray, threshold: int = 30, min_share: float = 0.003,
               margin: float = 0.15, q: float = 2.0) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) around the moving pixels of uint8 frames (T, H, W, 3); the whole frame
    when fewer than `min_share` of the pixels ever move.

    Example:
        >>> f = np.zeros((4, 40, 40, 3), np.uint8)
        >>> for t in range(4): f[t, 10 + 2 * t:14 + 2 * t, 20:24] = 255
        >>> motion_box(f, margin=0.0, q=0.0)  # rows 10-19 move, columns 20-23: a 10 px square
        (17, 10, 27, 20)
    """
    t, h, w, _ = frames.shape
    background = np.median(frames, axis=0)
    moving = (np.abs(frames.astype(np.int16) - background).max(-1) > threshold).any(0)
    ys, xs = np.nonzero(moving)
    if t < 2 or len(ys) < min_share * h * w:
        return 0, 0, w, h
    y0, y1 = np.percentile(ys, [q, 100 - q])
    x0, x1 = np.percentile(xs, [q, 100 - q])
    side = max(y1 - y0 + 1, x1 - x0 + 1) * (1 + 2 * margin)
    side = int(min(max(side, 0.25 * min(h, w)), min(h, w)))
    cy, cx = (y0 + y1 + 1) / 2, (x0 + x1 + 1) / 2
    top = int(np.clip(round(cy - side / 2), 0, h - side))
    left = int(np.clip(round(cx - side / 2), 0, w - side))
    return left, top, left + side, top + side


def crop_stack(frames: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Every frame of uint8 (T, H, W, 3) cut to `box` and scaled back to H x W (bilinear)."""
    x0, y0, x1, y1 = box
    h, w = frames.shape[1:3]
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return frames
    part = torch.from_numpy(np.ascontiguousarray(frames[:, y0:y1, x0:x1])).permute(0, 3, 1, 2).float()
    out = F.interpolate(part, size=(h, w), mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def apply_crop(stacks: dict[int, np.ndarray], crop: str, pool: int) -> dict[int, np.ndarray]:
    """One clip's stacks ({k: frames}) cropped as `crop` says; the box comes from the
    `pool`-frame stack, so a 1-frame stack is cropped around the clip's motion too."""
    if crop == "none":
        return stacks
    if crop != "motion":
        raise ValueError(f"crop {crop!r} unknown; use one of {CROPS}")
    box = motion_box(stacks[pool])
    return {k: crop_stack(v, box) for k, v in stacks.items()}
