"""Detection + embedding in one call: image -> faces -> vectors.

Detectors come from ``facelab.detect.get_detector`` (MTCNN, dlib HOG/CNN, Haar, ...). Two
detector names are handled here because they need no model: ``"whole"`` (the image is already
a face crop: the box is the whole image, shrunk by ``whole_margin``) and ``"none"``.
When a detector finds nothing, ``fallback="whole"`` keeps the image with a whole-image box
(marked ``stage="fallback:whole"``) instead of dropping it; ``fallback="skip"`` returns no
face. The face database always passes its own setting (``"skip"`` unless a database is made
for face-crop data sets), because there "no face" must stay a result, never a whole-image
"face".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from facelab.detect.select import CHOICES, face_rank, rank_faces  # noqa: F401
from facelab.embed.base import Embedder, get_embedder
from facelab.errors import ConfigError
from facelab.types import Face

log = logging.getLogger(__name__)


class WholeImageDetector:
    """Treats the whole image (minus a relative margin) as one face; for pre-cropped faces.

    Example:
        >>> WholeImageDetector(0.1).detect(np.zeros((100, 100, 3), np.uint8))[0].box
        (10.0, 10.0, 90.0, 90.0)
    """

    def __init__(self, margin: float = 0.0) -> None:
        self.margin = margin

    def detect(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        mx, my = self.margin * w, self.margin * h
        return [Face((float(mx), float(my), float(w - mx), float(h - my)), 1.0, None, "whole")]


def resolve_detector(name: str, **kwargs: Any) -> Any:
    """A detector object with ``.detect(image) -> list[Face]`` for a name.

    Example:
        >>> resolve_detector("whole").detect(np.zeros((8, 8, 3), np.uint8))[0].stage
        'whole'
    """
    if name == "whole":
        return WholeImageDetector(kwargs.get("margin", 0.0))
    try:
        from facelab.detect import get_detector  # provided by the detection package
        from facelab.detect.cascade import detector_from_spec
    except ImportError as exc:
        raise ConfigError(
            f"detector {name!r} needs facelab.detect.get_detector, which is not available "
            "in this install; use detector='whole' for images that are already face crops"
        ) from exc
    if not kwargs and any(c in name for c in "(|>"):  # a spec: options, a cascade or a union
        return detector_from_spec(name)
    return get_detector(name, **kwargs)


FALLBACKS = ("skip", "whole")
# The package's one face-choice vocabulary (facelab.detect.select); "all" is the pipeline's
# default ordering anyway, so a pipeline ranks by one of the single-face choices.
SELECTS = tuple(c for c in CHOICES if c != "all")


@dataclass
class PipelineConfig:
    """How faces are found before embedding.

    Attributes:
        detector: detector name ("mtcnn", "dlib-hog", "whole", ...).
        fallback: "whole" to keep images where nothing is found, or "skip".
        whole_margin: margin used for the "whole" detector and the fallback box.
        largest_only: keep only the main face per image (enrollment photos, pairs).
        min_score: drop detections below this score.
        select: how faces are ordered (the first is "the main face"): "largest" by box area,
            or "central": area discounted by distance from the image centre (LFW-style photos
            where the subject is centred and bystanders may be larger).
    """

    detector: str = "mtcnn"
    fallback: str = "whole"
    whole_margin: float = 0.0
    largest_only: bool = False
    min_score: float = 0.0
    select: str = "largest"

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ConfigError(f"unknown fallback {self.fallback!r}; choose one of {FALLBACKS}")
        if self.select not in SELECTS:
            raise ConfigError(f"unknown face selection {self.select!r}; choose one of {SELECTS}")


class FacePipeline:
    """Find faces and embed them.

    Example:
        >>> pipe = FacePipeline(PipelineConfig(detector="whole"), get_embedder("pixels"))
        >>> faces, vecs = pipe.run(np.zeros((32, 32, 3), np.uint8))
        >>> vecs.shape
        (1, 128)
    """

    def __init__(self, config: PipelineConfig | None = None, embedder: Embedder | None = None):
        self.config = config or PipelineConfig()
        self.embedder = embedder or get_embedder("dlib-resnet")
        self._detector: Any = None

    @property
    def detector(self) -> Any:
        if self._detector is None:
            kw = {"margin": self.config.whole_margin} if self.config.detector == "whole" else {}
            self._detector = resolve_detector(self.config.detector, **kw)
        return self._detector

    def faces(self, image: np.ndarray) -> list[Face]:
        """Detected faces (largest first), with the configured fallback."""
        found = [f for f in self.detector.detect(image) if f.score >= self.config.min_score]
        found = rank_faces(found, image.shape, self.config.select)
        if not found and self.config.fallback == "whole":
            face = WholeImageDetector(self.config.whole_margin).detect(image)[0]
            face.stage = "fallback:whole"
            found = [face]
        return found[:1] if self.config.largest_only else found

    def run(self, image: np.ndarray) -> tuple[list[Face], np.ndarray]:
        """(faces, (len(faces), dim) vectors) for one RGB image."""
        faces = self.faces(image)
        if not faces:
            return [], np.zeros((0, self.embedder.dim), np.float32)
        return faces, self.embedder.embed_faces(image, faces)
