"""A trained attribute run as one object: checkpoint, model, pixel settings, TTA, decision
biases and the inference backend, with predict calls for one image, a batch or a table.

Everything that runs a trained model (predict, evaluate, compare, ensembles, the face
analyzer, benchmarks) goes through `AttributeRun`, so preprocessing and decisions are the
same everywhere and inference never imports the training code.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facelab.config import build_dataclass
from facelab.data.cache import PixelCache, RowDecoder
from facelab.data.config import DataConfig
from facelab.data.labels import CLASS_NAMES, TASKS, encode_array
from facelab.errors import CheckpointError, ConfigError
from facelab.models.checkpoint import load_checkpoint
from facelab.models.config import ModelConfig
from facelab.models.preprocess import add_eval_center_crop
from facelab.predict.backends import BACKENDS, OnnxBackend, TorchBackend, predict_batches
from facelab.predict.calibrate import Calibration, checkpoint_calibration
from facelab.predict.probs import prediction_frame
from facelab.types import Face

log = logging.getLogger(__name__)


@dataclass
class AttributePrediction:
    """One face's attributes: per-task probabilities, labels and the 18-class id.

    Example:
        >>> p = AttributePrediction({"mask": np.array([.8, .1, .1]), "gender": np.array([.3, .7]),
        ...                          "age": np.array([.6, .3, .1])})
        >>> p.labels, p.class18
        ({'mask': 'correct', 'gender': 'female', 'age': '<30'}, 3)
    """

    probs: dict[str, np.ndarray]

    @property
    def indices(self) -> dict[str, int]:
        return {t: int(np.argmax(self.probs[t])) for t in TASKS}

    @property
    def labels(self) -> dict[str, str]:
        return {t: CLASS_NAMES[t][i] for t, i in self.indices.items()}

    @property
    def class18(self) -> int:
        i = self.indices
        return int(encode_array(np.array([i["mask"]]), np.array([i["gender"]]),
                                np.array([i["age"]]))[0])


class AttributeRun:
    """A trained attribute model, ready for inference.

    Attributes:
        path: the checkpoint file.
        config: the run's full config as stored (a plain dict).
        data: its DataConfig (sources, split, pixel settings).
        model_config: its ModelConfig.
        tta: flip test-time augmentation (the run's setting unless overridden).
        calibration: decision biases applied to every prediction, or None.
        backend: "torch", "onnx" or "onnx-int8".

    Example:
        >>> run = AttributeRun.load("runs/mt")                        # doctest: +SKIP
        >>> run.predict_image(load_image("face.jpg")).labels          # doctest: +SKIP
        {'mask': 'none', 'gender': 'female', 'age': '30-59'}
    """

    def __init__(self, checkpoint: dict[str, Any], tta: bool | None = None,
                 calibrated: bool | None = None, backend: str = "torch",
                 threads: int | None = None) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"backend {backend!r} unknown; use one of {BACKENDS}")
        self.checkpoint = checkpoint
        self.path = Path(checkpoint["path"])
        self.config: dict[str, Any] = checkpoint["config"]
        where = str(self.path)
        self.data: DataConfig = build_dataclass(DataConfig, self.config.get("data", {}), f"{where}: data")
        self.model_config: ModelConfig = build_dataclass(ModelConfig, self.config.get("model", {}),
                                                         f"{where}: model")
        self.channels_last = bool(self.config.get("channels_last", True))
        self.center_crop = float(self.config.get("augment", {}).get("center_crop", 1.0))
        self.tta = bool(self.config.get("tta", False)) if tta is None else tta
        self.calibration = self._calibration(calibrated)
        self.settings = self.data.pixel_settings()
        self.decoder = RowDecoder(self.settings)
        self.backend_name = backend
        self.threads = threads
        self._model = None
        self._backend = None

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> AttributeRun:
        """Load a run folder (its best.pt, else last.pt) or a checkpoint file.

        Keyword arguments: tta, calibrated (None = as trained), backend, threads.
        """
        return cls(load_checkpoint(path), **kwargs)

    # -- the pieces -------------------------------------------------------------------------

    def _calibration(self, use: bool | None) -> Calibration | None:
        configured = bool(self.config.get("calibrate", False))
        return checkpoint_calibration(configured, self.checkpoint, use)

    @property
    def model(self):
        """The PyTorch model (eval mode, the run's center crop applied to its input)."""
        if self._model is None:
            import torch

            model = self.model_config.build(pretrained="")
            try:
                model.load_state_dict(self.checkpoint["model"])  # averaged weights with SWA/EMA
            except (RuntimeError, KeyError) as exc:
                raise CheckpointError(f"{self.path}: weights do not match its config "
                                      f"({str(exc).splitlines()[0][:160]})") from None
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self._model = add_eval_center_crop(model, self.center_crop).eval()
        return self._model

    @property
    def backend(self):
        """The inference backend, created on first use."""
        if self._backend is None:
            if self.backend_name == "torch":
                from facelab.runtime import tune_allocator

                tune_allocator()
                self._backend = TorchBackend(self.model, self.channels_last)
            else:
                from facelab.predict.export import onnx_path

                path = onnx_path(self, int8=self.backend_name == "onnx-int8")
                self._backend = OnnxBackend(path, self.threads)
        return self._backend

    @property
    def state(self) -> dict[str, Any]:
        return self.checkpoint.get("state", {})

    def prepare_data(self, progress=None, **changes: Any):
        """The run's own data (table, targets, split, pixel cache); `changes` replace
        DataConfig fields, e.g. val_fraction=0.0."""
        data = dataclasses.replace(self.data, **changes) if changes else self.data
        return data.prepare(progress=progress)

    # -- prediction -------------------------------------------------------------------------

    def predict_pixels(self, pixels: np.ndarray, indices: np.ndarray | None = None,
                       batch_size: int = 128, progress=None, calibrated: bool = True
                       ) -> dict[str, np.ndarray]:
        """Per-task probabilities for preprocessed uint8 (N, S, S, 3) pixels (TTA and, with
        `calibrated`, the decision biases applied)."""
        probs = predict_batches(self.backend, pixels, indices, batch_size, self.tta, progress)
        if calibrated and self.calibration is not None:
            probs = self.calibration.apply(probs)
        return probs

    def preprocess(self, image: np.ndarray | str | Path | bytes, face: Face | Any = None
                   ) -> np.ndarray:
        """The model's input pixels (S, S, 3) for one image, exactly as the training cache
        makes them: the face box (a Face or (x1, y1, x2, y2)) cropped with the run's margin,
        or the run's own crop mode when no face is given."""
        box = None if face is None else tuple(float(v) for v in getattr(face, "box", face))
        if isinstance(image, np.ndarray):
            pixels, _ = self.decoder.from_image(image, box)
            return pixels
        return self.decoder.decode(image, box)[0]

    def predict_image(self, image: np.ndarray | str | Path | bytes, face: Face | Any = None
                      ) -> AttributePrediction:
        """Attributes of one face: `image` is RGB uint8 (H, W, 3), a path or file bytes.

        Example:
            >>> facelab.load("runs/mt").predict_image("face.jpg").labels  # doctest: +SKIP
        """
        return self.predict_batch([image], None if face is None else [face])[0]

    def predict_batch(self, images: list, faces: list | None = None) -> list[AttributePrediction]:
        """Attributes of several faces (one per image; `faces` gives each image's face box)."""
        faces = faces if faces is not None else [None] * len(images)
        if len(faces) != len(images):
            raise ConfigError(f"{len(images)} images but {len(faces)} faces; give one face per image")
        if not images:
            return []
        pixels = np.stack([self.preprocess(im, f) for im, f in zip(images, faces)])
        probs = self.predict_pixels(pixels)
        return [AttributePrediction({t: probs[t][i] for t in TASKS}) for i in range(len(images))]

    def predict_table(self, table: pd.DataFrame, progress=None, calibrated: bool = True
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Predict every row of a sample table; returns (predictions, unreadable images).

        Predictions hold per-task probabilities (p_mask_correct, ...), the task labels and the
        18-class id `ans`. Rows that could not be used (unreadable, too small, box outside the
        image) get `ok = False` and the most frequent predicted class.
        """
        cache = PixelCache.build(table, self.settings, progress=progress)
        ok = np.flatnonzero(cache.ok)
        probs = self.predict_pixels(cache.pixels, ok, calibrated=calibrated)
        full = {t: np.zeros((len(table), len(CLASS_NAMES[t]))) for t in TASKS}
        for t in TASKS:
            full[t][ok] = probs[t]
        out = prediction_frame(table, full, cache.ok)
        out["crop_stage"] = cache.stages
        bad = pd.DataFrame({"path": table["path"].to_numpy()[sorted(cache.errors)],
                            "error": [cache.errors[i] for i in sorted(cache.errors)]})
        return out, bad


def load(path: str | Path, **kwargs: Any) -> AttributeRun:
    """A trained attribute run, ready to predict (see AttributeRun.load).

    Example:
        >>> run = facelab.load("runs/mt", backend="onnx")  # doctest: +SKIP
    """
    return AttributeRun.load(path, **kwargs)
