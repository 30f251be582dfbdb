"""The embedding interface shared by every face embedder, and a registry of them.

An embedder turns faces (an RGB image plus one box/landmarks per face) into fixed-length
vectors. Every embedder names its metric ("l2" or "cosine") and a default 1:1 threshold, so
the face database can store vectors from several models side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from facelab.distance import l2_normalize, pairwise_distance  # noqa: F401  (re-exported)
from facelab.errors import ConfigError
from facelab.types import Face


@runtime_checkable
class Embedder(Protocol):
    """What the face database needs from an embedding model.

    Attributes:
        name: registry name, e.g. "dlib-resnet".
        version: changes whenever vectors would change (weights, preprocessing).
        dim: vector length.
        metric: "l2" (Euclidean distance) or "cosine" (1 - cosine similarity).
        threshold: default "same person" distance threshold (distance <= threshold).
    """

    name: str
    version: str
    dim: int
    metric: str
    threshold: float

    def embed_faces(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """(len(faces), dim) float32 vectors for the given faces of one RGB image."""
        ...


_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_embedder(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding a factory to the embedder registry.

    Example:
        >>> @register_embedder("my-model")
        ... def _make(**kw): ...
    """

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = factory
        return factory

    return deco


def get_embedder(name: str = "dlib-resnet", **kwargs: Any) -> Embedder:
    """Build a registered embedder by name (weights load lazily on first use).

    Example:
        >>> emb = get_embedder("pixels")
        >>> emb.dim
        128
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown embedder {name!r}; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


def list_embedders() -> list[str]:
    """Names of all registered embedders."""
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    from importlib import import_module

    from facelab.embed import dlib_resnet, pixels  # noqa: F401  (registration side effect)

    for module in ("facelab.embed.mobilefacenet", "facelab.embed.students"):  # need torch
        try:
            import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name not in (module, "torch"):
                raise


