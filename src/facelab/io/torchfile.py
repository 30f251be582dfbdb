"""Reading torch checkpoint and weight files without running code from them.

`torch.load(..., weights_only=False)` unpickles arbitrary objects, so a crafted `.pt` file
runs code the moment it is opened. Every facelab checkpoint and weight file is read here
with `weights_only=True`: tensors, plain containers, numbers, strings and numpy arrays
(RNG states and figures in older checkpoints) load; anything else is refused before it can
execute.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facelab.errors import CheckpointError


def _numpy_globals() -> list:
    """numpy types a checkpoint may legitimately hold: arrays, dtypes and scalars only."""
    core = getattr(np, "_core", None) or np.core
    names = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # numpy >= 1.25 pickles dtypes by their class
        names += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return names


def load_torch_file(path: str | Path, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """Load a `.pt` file as data only; raise CheckpointError naming the file otherwise.

    Example:
        >>> load_torch_file("runs/mt/best.pt")["format"]  # doctest: +SKIP
        'facelab-attributes-1'
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} not found (or not a regular file)")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to load this {what}: it holds objects other than tensors and "
            f"plain data, which could run code ({first[:160]}); only load files you trust "
            "and that facelab wrote") from None
    except Exception as exc:  # truncated, not a torch file, zip errors, ...
        raise CheckpointError(f"{path}: cannot be read as a {what} ({type(exc).__name__}: "
                              f"{str(exc)[:160]})") from None
