"""Where facelab finds data and keeps caches (both overridable by environment variables)."""

from __future__ import annotations

import os
from pathlib import Path

from facelab.errors import DataFormatError


def data_root() -> Path:
    """The folder of development data sets: $FACELAB_DATA, else ../shared/data beside the checkout.

    Example:
        >>> data_root().name
        'data'
    """
    env = os.environ.get("FACELAB_DATA")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve()
    # src/facelab/paths.py -> checkout root is parents[2]; data lives beside the checkout.
    return (here.parents[2].parent / "shared" / "data").resolve()


def dataset_dir(name: str) -> Path:
    """The folder of one data set under :func:`data_root`, with a clear error when missing."""
    path = data_root() / name
    if not path.is_dir():
        raise DataFormatError(
            f"data set folder {path} not found; set FACELAB_DATA to the folder that holds "
            f"'{name}/' (default: ../shared/data beside the checkout)"
        )
    return path


def missing_data(*names: str) -> str | None:
    """Why data sets `names` can't be used (the first one missing under :func:`data_root`),
    or None when all are there: the skip reason of tests and benchmarks that need them.

    Example:
        >>> missing_data("no-such-set")  # doctest: +ELLIPSIS
        "data set 'no-such-set' not found under ... (set FACELAB_DATA)"
    """
    for name in names:
        if not (data_root() / name).is_dir():
            return f"data set {name!r} not found under {data_root()} (set FACELAB_DATA)"
    return None


def cache_root() -> Path:
    """Where decoded/cropped image caches live: $FACELAB_CACHE, else ~/.cache/facelab."""
    env = os.environ.get("FACELAB_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "facelab"
    root.mkdir(parents=True, exist_ok=True)
    return root
