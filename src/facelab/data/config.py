"""Which data a model trains on and how its pixels are made: the data half of a run's config."""

from __future__ import annotations

from dataclasses import dataclass, field

from facelab.data.cache import PixelSettings
from facelab.data.formats import SourceSpec
from facelab.data.labels import AgeScheme


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

    def prepare(self, progress=None):
        """Sample table, targets, person-level split and pixel cache for these settings.

        Example:
            >>> data = DataConfig(sources=[SourceSpec("labels", "faces.csv")]).prepare()  # doctest: +SKIP
        """
        from facelab.data.prepare import prepare

        return prepare(self.sources, self.pixel_settings(), self.age_scheme(), self.test_fraction,
                       self.val_fraction, self.split_seed, progress=progress)
