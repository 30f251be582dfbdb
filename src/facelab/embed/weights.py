"""Locating offline weight files (dlib models from the `face-recognition-models` package).

The package's ``__init__`` imports ``pkg_resources`` (often missing), so it is never imported;
its folder is found through ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from facelab.errors import WeightsError

DLIB_FILES = {
    "shape5": "shape_predictor_5_face_landmarks.dat",
    "shape68": "shape_predictor_68_face_landmarks.dat",
    "resnet": "dlib_face_recognition_resnet_model_v1.dat",
    "mmod": "mmod_human_face_detector.dat",
}


def dlib_model_path(key: str) -> Path:
    """Path of one dlib model file; $FACELAB_DLIB_MODELS overrides the package folder.

    Example:
        >>> dlib_model_path("resnet").name
        'dlib_face_recognition_resnet_model_v1.dat'
    """
    if key not in DLIB_FILES:
        raise WeightsError(f"unknown dlib model {key!r}; choose one of {sorted(DLIB_FILES)}")
    env = os.environ.get("FACELAB_DLIB_MODELS")
    folders: list[Path] = [Path(env)] if env else []
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(p) / "models" for p in spec.submodule_search_locations]
    for folder in folders:
        path = folder / DLIB_FILES[key]
        if path.is_file():
            return path
    raise WeightsError(
        f"dlib model file {DLIB_FILES[key]} not found (looked in {[str(f) for f in folders]}); "
        "install it offline with `pip install --no-deps face-recognition-models` or set "
        "FACELAB_DLIB_MODELS to a folder holding it"
    )
