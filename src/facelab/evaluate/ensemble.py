"""Scoring an ensemble of runs (k-fold folds, seeds) on one split of their data."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from facelab.data.labels import TASKS
from facelab.evaluate.metrics import all_metrics
from facelab.predict.ensemble import ensemble_pixels, expand_runs
from facelab.predict.run import AttributeRun

log = logging.getLogger(__name__)


def evaluate_ensemble(
    runs: list[str | Path],
    data=None,
    split: str = "test",
    vote: str = "soft",
    tta: bool | None = None,
) -> dict:
    """Metrics (facelab.evaluate.metrics.all_metrics) of the ensemble on one split.

    Without `data`, the first member's config prepares it; the members should share its
    split settings (a k-fold run's folds do), else the "test" rows may be ones they trained on.

    Example:
        >>> evaluate_ensemble(["runs/kf"], vote="soft")["mask"]["macro_f1"]  # doctest: +SKIP
    """

    paths = expand_runs(runs)
    if data is None:
        cfgs = [AttributeRun.load(p).data for p in paths]
        split_keys = {(c.test_fraction, c.split_seed, repr(c.sources)) for c in cfgs}
        if len(split_keys) > 1:
            log.warning(
                "ensemble members were trained with different data/split settings; "
                "the %s split of the first one may hold rows others trained on",
                split,
            )
        # the test split does not depend on val_fraction (k-fold runs have none)
        changes = {"val_fraction": 0.0} if split == "test" else {}
        data = dataclasses.replace(cfgs[0], **changes).prepare()
    idx = data.indices(split)
    probs = ensemble_pixels(paths, data, idx, vote, tta)
    return all_metrics({t: data.targets[t][idx] for t in TASKS}, probs)
