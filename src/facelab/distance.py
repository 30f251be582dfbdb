"""Distances between embedding vectors (shared by embedders, evaluation and the face database)."""

from __future__ import annotations

import numpy as np

from facelab.errors import ConfigError


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation of a (N, D) array (float32)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def pairwise_distance(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Distance between matching rows of `a` and `b` under "l2" or "cosine".

    Example:
        >>> float(pairwise_distance(np.ones((1, 2)), np.zeros((1, 2)), "l2")[0])
        1.4142135
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if metric == "l2":
        return np.linalg.norm(a - b, axis=-1)
    if metric == "cosine":
        return 1.0 - np.sum(l2_normalize(a) * l2_normalize(b), axis=-1)
    raise ConfigError(f"unknown metric {metric!r}; use 'l2' or 'cosine'")
