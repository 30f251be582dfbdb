"""facelab: face attribute classifiers, detection, embeddings and a face database.

The public API is small and loads nothing heavy at import time::

    import facelab
    img = facelab.load_image("photo.jpg")               # RGB uint8 HxWx3, EXIF-rotated
    run = facelab.load("runs/mt")                       # a trained attribute run
    run.predict_image(img).labels                       # {'mask': ..., 'gender': ..., 'age': ...}
    faces = facelab.FaceAnalyzer("mtcnn", attributes=run).analyze(img)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# name -> "module:attribute"; resolved on first access so `import facelab` stays cheap.
_LAZY = {
    "load": "facelab.predict.run:load",
    "AttributeRun": "facelab.predict.run:AttributeRun",
    "FaceAnalyzer": "facelab.analyze.analyzer:FaceAnalyzer",
    "FaceDB": "facelab.facedb.db:FaceDB",
    "get_detector": "facelab.detect.base:get_detector",
    "get_embedder": "facelab.embed.base:get_embedder",
    "load_image": "facelab.io.image:load_image",
    "FacelabError": "facelab.errors:FacelabError",
    "Face": "facelab.types:Face",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name].split(":")
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'facelab' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
