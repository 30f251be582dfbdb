"""Training configuration: dataclasses, loaded from YAML and overridden by `key=value` flags."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facelab.config import apply_overrides, build_dataclass, expand_data_vars, read_yaml
from facelab.data.config import DataConfig
from facelab.errors import ConfigError
from facelab.models.config import ModelConfig
from facelab.train.augment import AugmentConfig
from facelab.train.averaging import EmaConfig, SwaConfig
from facelab.train.losses import LossConfig
from facelab.train.optim import OptimConfig

SAMPLERS = ("uniform", "balanced", "source_balanced", "one_wear_per_person")


@dataclass
class TrainConfig:
    """Everything one training run needs; saved beside every checkpoint as config.yaml.

    Attributes:
        epochs: maximum epochs; early stopping may end sooner.
        batch_size: images per step.
        patience: epochs without a better validation score before stopping (0 = never).
        sampler: uniform | balanced (class-balanced draws over the mask task and age groups)
            | source_balanced (every source draws the same share of an epoch, with replacement)
            | one_wear_per_person (competition layout: of each person's five correct-mask
            photos mask1..mask5, one random photo per epoch; all other rows every epoch).
        seed: seeds python, numpy and torch; the same seed gives the same run.
        threads: torch CPU threads (0 = torch's default).
        channels_last: NHWC memory layout (1.6-1.8x faster for convnets on CPU).
        tta: horizontal-flip test-time augmentation for validation and evaluation.
        calibrate: after training, tune per-class decision biases for macro F1 on the
            validation split and apply them in evaluate/predict, per task only where
            cross-fitting over validation persons says they help
            (facelab.predict.calibrate).
        swa: stochastic weight averaging (see facelab.train.averaging.SwaConfig).
        ema: exponential moving average of the weights (facelab.train.averaging.EmaConfig).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    swa: SwaConfig = field(default_factory=SwaConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    epochs: int = 4
    batch_size: int = 64
    patience: int = 3
    sampler: str = "uniform"
    seed: int = 0
    threads: int = 0
    channels_last: bool = True
    tta: bool = False
    calibrate: bool = False

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler {self.sampler!r} unknown; use one of {SAMPLERS}")
        if self.swa.start_epoch and self.ema.decay:
            raise ConfigError("swa and ema are both on; choose one (swa.start_epoch=0 or ema.decay=0)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


#: settings a resumed run may change (how long and how fast it trains, not what it learns).
RESUMABLE_CHANGES = ("epochs", "patience", "threads")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(saved: str | Path, cfg: TrainConfig) -> None:
    """Refuse to resume a run folder whose ``config.yaml`` differs from ``cfg`` in anything but
    :data:`RESUMABLE_CHANGES`: the checkpoint would continue under settings it was not
    trained with, and finished runs would be reported as another config's.

    Example:
        >>> check_resumable("runs/main/config.yaml", load_config(None))  # doctest: +SKIP
    """
    old = _flat(yaml.safe_load(Path(saved).read_text()) or {})
    new = _flat(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    diff = sorted(k for k in old.keys() | new.keys()
                  if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))  # fmt: skip
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:3])
        raise ConfigError(
            f"{Path(saved).parent} holds a run of another config ({shown}"
            f"{', ...' if len(diff) > 3 else ''}); train into another --out, pass --no-resume to start over, or delete the folder"
        )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or defaults) and apply `section.key=value` overrides.

    Example:
        >>> cfg = load_config(None, ["epochs=2", "optim.lr=0.0005"])
        >>> cfg.epochs, cfg.optim.lr
        (2, 0.0005)
    """
    values = apply_overrides(read_yaml(path), overrides)
    cfg = build_dataclass(TrainConfig, values, str(path or "config"))
    for src in cfg.data.sources:
        src.path = expand_data_vars(src.path)
        src.image_root = expand_data_vars(src.image_root) if src.image_root else ""
    return cfg
