"""Model-side preprocessing shared by training and inference: uint8 pixels to tensors, and the
evaluation-time center crop that matches a run's training-time zoom."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def to_tensor(batch: np.ndarray, channels_last: bool = True) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1] (channels_last memory when asked)."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def center_crop(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Crop the central `fraction` of the side and resize back to the input size, with the
    same bilinear warp training uses (so train and eval see identical crops).

    Example:
        >>> center_crop(torch.rand(1, 3, 32, 32), 0.9).shape
        torch.Size([1, 3, 32, 32])
    """
    if fraction >= 1:
        return x
    theta = torch.tensor([[fraction, 0.0, 0.0], [0.0, fraction, 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
        memory_format=torch.channels_last) else out


def _eval_crop_hook(fraction: float, module: nn.Module, args: tuple) -> tuple | None:
    if module.training:  # training batches are cropped inside `augment`
        return None
    return (center_crop(args[0], fraction), *args[1:])


def add_eval_center_crop(model: nn.Module, fraction: float) -> nn.Module:
    """Make `model` center-crop its input whenever it runs in eval mode (validation,
    evaluate, predict), matching `AugmentConfig.center_crop` in training. No-op for 1.0.

    Returns the same model (a forward pre-hook; the state dict is unchanged).

    Example:
        >>> m = add_eval_center_crop(nn.Identity(), 0.5).eval()
        >>> x = torch.arange(16.).view(1, 1, 4, 4)
        >>> m(x)[0, 0, 0, 0].item() == x[0, 0, 0, 0].item()
        False
    """
    if fraction < 1:
        model.register_forward_pre_hook(functools.partial(_eval_crop_hook, fraction))
    return model
