"""Make a fixed face embedding tolerant of masks without retraining it.

dlib's ResNet embedding was trained on unmasked faces: a mask moves a face's vector far
from the same person's unmasked vector. Two pieces fix part of that on a CPU:

* ``paint_synthetic_mask``: draws a face mask (surgical / cloth shapes, random colour,
  shading, pleats and noise) over the lower face of an aligned 150px dlib chip, so any
  identity set of unmasked photos yields masked twins of every photo;
* ``MaskAdapter``: a linear discriminant projection (scikit-learn LDA with shrinkage) fitted
  on embeddings of both twins, identities as classes. Directions that a mask moves become
  within-class variance and are damped, directions that separate people are kept. Vectors
  are compared by cosine distance in the projected space.

Example:
    >>> rng = np.random.default_rng(0)
    >>> chip = paint_synthetic_mask(np.zeros((150, 150, 3), np.uint8), rng)
    >>> bool(chip[130, 75].any()), bool(chip[30, 75].any())   # chin covered, eyes not
    (True, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelab.errors import ConfigError

# Mask colours seen in the wild: surgical blue / green, white, black, grey, pink, navy.
MASK_COLOURS = np.array([
    [126, 178, 214], [160, 205, 225], [150, 200, 190], [235, 235, 235], [245, 245, 240],
    [30, 30, 35], [60, 60, 70], [140, 140, 145], [230, 180, 190], [40, 50, 90],
], np.float32)


def paint_synthetic_mask(chip: np.ndarray, rng: np.random.Generator, size: int = 150) -> np.ndarray:
    """A copy of a dlib-aligned face chip (nose tip near row 0.51, mouth near 0.66 of the
    side) with a mask painted from about the nose bridge to below the chin."""
    import cv2

    if chip.ndim != 3 or chip.shape[2] != 3:
        raise ConfigError(f"paint_synthetic_mask needs an (H, W, 3) chip, got shape {chip.shape}")
    s = chip.shape[0] / size
    top = rng.uniform(58, 74)  # nose bridge (high) .. nose tip (worn low)
    side = rng.uniform(14, 26)
    sag = rng.uniform(-4, 6)
    pts = np.array([
        [side, top + 10 + sag], [45, top + 1], [75, top - 3 + rng.uniform(-2, 2)], [105, top + 1],
        [150 - side, top + 10 + sag], [150 - side + 4, top + 45], [128, 128],
        [100, 146], [75, 152], [50, 146], [22, 128], [side - 4, top + 45],
    ], np.float64)
    pts[:, 0] += rng.uniform(-4, 4)  # slight off-centre fit
    poly = np.round(pts * s).astype(np.int32)
    region = np.zeros(chip.shape[:2], np.uint8)
    cv2.fillPoly(region, [poly], 1)
    colour = MASK_COLOURS[rng.integers(len(MASK_COLOURS))] * rng.uniform(0.8, 1.1)
    h, w = chip.shape[:2]
    # lit from above: brighter top, darker bottom and sides, plus fabric noise
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 1.0 - 0.25 * (yy / h) - 0.2 * np.abs(xx / w - 0.5)
    fabric = colour[None, None] * shade[..., None] + rng.normal(0, 6, (h, w, 1))
    if rng.random() < 0.5:  # surgical pleats
        for row in rng.uniform(top + 12, top + 50, 3):
            r = int(round(row * s))
            fabric[max(0, r - 1) : r + 1] *= 0.8
    out = chip.astype(np.float32)
    out[region == 1] = fabric[region == 1]
    return np.clip(out, 0, 255).astype(np.uint8)


@dataclass
class MaskAdapter:
    """LDA projection of embeddings (fitted with identities as classes); cosine metric.

    Attributes:
        mean: (D,) training mean, subtracted first.
        scalings: (D, K) projection.
    """

    mean: np.ndarray
    scalings: np.ndarray

    @classmethod
    def fit(cls, vectors: np.ndarray, identities: np.ndarray, n_components: int = 96,
            shrinkage: float | str = "auto") -> MaskAdapter:
        """Fit on (N, D) vectors of several photos per identity, masked and unmasked."""
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        _, counts = np.unique(identities, return_counts=True)
        if (counts > 1).sum() < 2:
            raise ConfigError("MaskAdapter.fit needs at least two identities with two or more vectors")
        k = min(n_components, vectors.shape[1], len(counts) - 1)
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage, n_components=k)
        lda.fit(vectors, identities)
        return cls(mean=np.asarray(vectors, np.float32).mean(0), scalings=lda.scalings_[:, :k].astype(np.float32))

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """(N, K) projected, L2-normalised vectors (compare with cosine / L2)."""
        z = (np.asarray(vectors, np.float32) - self.mean) @ self.scalings
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, mean=self.mean, scalings=self.scalings)
        return path

    @classmethod
    def load(cls, path: str | Path) -> MaskAdapter:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"mask adapter file {path} not found; fit one with "
                              "benchmarks/rmfd_adapter.py or MaskAdapter.fit(...).save(path)")
        d = np.load(path)
        return cls(mean=d["mean"], scalings=d["scalings"])
