"""facelab: face attribute classifiers, detection, embeddings and a face database.

The public API is small and loads nothing heavy at import time::

    import facelab
    img = facelab.load_image("photo.jpg")      # RGB uint8 HxWx3, EXIF-rotated
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# name -> "module:attribute"; resolved on first access so `import facelab` stays cheap.
_LAZY = {
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
