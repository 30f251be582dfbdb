"""Training configuration: dataclasses, loaded from YAML and overridden by `key=value` flags."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facelab.data.cache import PixelSettings
from facelab.data.formats import SourceSpec
from facelab.data.labels import AgeScheme
from facelab.errors import ConfigError
from facelab.train.augment import AugmentConfig
from facelab.train.averaging import EmaConfig, SwaConfig
from facelab.train.losses import LossConfig
from facelab.train.optim import OptimConfig

SAMPLERS = ("uniform", "balanced", "one_wear_per_person")


@dataclass
class DataConfig:
    """Which data to train on and how to split and preprocess it.

    Attributes:
        sources: data sets (kind + path); paths may use ${FACELAB_DATA}.
        image_size: model input side in pixels.
        crop: auto | none | box | detect (see facelab.data.cache.PixelSettings).
        margin: context around face boxes (fraction of box size per side).
        detector: detector cascade for crop=detect.
        test_fraction: person-level held-out share used for the reported figures.
        val_fraction: share of the rest used for early stopping / model selection.
        split_seed: seed of the split (fixed so figures are comparable across runs).
        age_young_max, age_old_min: age-group boundaries (30 / 60 in the competition).
        age_drop_band: [lo, hi] ages dropped from training only (e.g. [57, 59]).
        corrections: path of a label-corrections CSV applied to the targets before training
            (facelab.data.corrections.apply_corrections); "" = none.
    """

    sources: list[SourceSpec] = field(default_factory=list)
    image_size: int = 128
    crop: str = "auto"
    margin: float = 0.2
    detector: str = "mtcnn>center"
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    split_seed: int = 20240601
    age_young_max: int = 30
    age_old_min: int = 60
    age_drop_band: list[int] | None = None
    corrections: str = ""

    def pixel_settings(self) -> PixelSettings:
        return PixelSettings(self.image_size, self.crop, self.margin, True, self.detector)

    def age_scheme(self) -> AgeScheme:
        band = tuple(self.age_drop_band) if self.age_drop_band else None
        return AgeScheme(self.age_young_max, self.age_old_min, band)


@dataclass
class ModelConfig:
    """Backbone and head.

    Attributes:
        backbone: torchvision name (mobilenet_v2, resnet18, ...) or timm:<name>.
        pretrained: '' | 'imagenet' (offline package) | file path | 'hub'.
        head: multitask | flat18.
        dropout: dropout before the head.
        freeze: leading backbone stages kept fixed (weights and BatchNorm statistics);
            0 trains everything. 4 on MobileNetV2 trains ~1.7x faster on CPU.
        margin: none | arcface | cosface. With a margin the head (multitask or flat18) is a
            cosine classifier: logits = margin_scale * cos(features, class weights), and in
            training each known target logit becomes s*cos(theta + m) (arcface) or
            s*(cos(theta) - m) (cosface).
        margin_scale: s, the logit scale of the cosine head.
        margin_m: m; null = 0.5 for arcface, 0.35 for cosface.
    """

    backbone: str = "mobilenet_v2"
    pretrained: str = "imagenet"
    head: str = "multitask"
    dropout: float = 0.2
    freeze: int = 0
    margin: str = "none"
    margin_scale: float = 30.0
    margin_m: float | None = None

    def __post_init__(self) -> None:
        from facelab.models.heads import MARGINS

        if self.margin not in MARGINS:
            raise ConfigError(f"model.margin {self.margin!r} unknown; use one of {MARGINS}")
        if self.margin_scale <= 0:
            raise ConfigError(f"model.margin_scale must be > 0, got {self.margin_scale}")
        if self.margin_m is not None:
            import math

            top = math.pi / 2 if self.margin == "arcface" else float("inf")
            if not 0 <= self.margin_m < top:
                raise ConfigError(f"model.margin_m={self.margin_m} out of range for {self.margin}: "
                                  "use 0 <= m < pi/2 for arcface (0.5 is usual), m >= 0 for cosface")

    def build(self, pretrained: str | None = None):
        """The AttributeModel these settings describe (`pretrained` overrides the weights,
        e.g. "" when a checkpoint's weights are loaded next).

        Example:
            >>> m = ModelConfig("mobilenet_v2", "", margin="arcface").build()
            >>> type(m.head).__name__
            'MarginHead'
        """
        from facelab.models.heads import create_head
        from facelab.models.model import AttributeModel

        model = AttributeModel(self.backbone, self.pretrained if pretrained is None else pretrained,
                               self.head, self.dropout, self.freeze)
        if self.margin != "none":  # AttributeModel builds plain heads; swap in the cosine head
            model.head = create_head(self.head, model.backbone.num_features, self.dropout,
                                     self.margin, self.margin_scale, self.margin_m)
        return model


@dataclass
class TrainConfig:
    """Everything one training run needs; saved beside every checkpoint as config.yaml.

    Attributes:
        epochs: maximum epochs; early stopping may end sooner.
        batch_size: images per step.
        patience: epochs without a better validation score before stopping (0 = never).
        sampler: uniform | balanced (class-balanced draws over the mask task and age groups)
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


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Recursively build dataclass `cls` from a dict, rejecting unknown keys by name."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{where}.{key}")
        elif typing.get_origin(hint) is list and typing.get_args(hint)[0] is SourceSpec:
            kwargs[key] = [_build(SourceSpec, v, f"{where}.{key}[{i}]") for i, v in enumerate(value)]
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _expand(text: str) -> str:
    import os

    from facelab.paths import data_root

    return os.path.expandvars(text.replace("${FACELAB_DATA}", str(data_root())))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or defaults) and apply `section.key=value` overrides.

    Example:
        >>> cfg = load_config(None, ["epochs=2", "optim.lr=0.0005"])
        >>> cfg.epochs, cfg.optim.lr
        (2, 0.0005)
    """
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        try:
            values = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        node = values
        *parents, leaf = key.strip().split(".")
        try:
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
            if isinstance(node, list):
                node[int(leaf)] = yaml.safe_load(raw)
            else:
                node[leaf] = yaml.safe_load(raw)
        except (ValueError, IndexError, TypeError) as exc:
            raise ConfigError(f"override {item!r}: no such setting ({exc})") from exc
    cfg = _build(TrainConfig, values, str(path or "config"))
    for src in cfg.data.sources:
        src.path = _expand(src.path)
        src.image_root = _expand(src.image_root) if src.image_root else ""
    return cfg
