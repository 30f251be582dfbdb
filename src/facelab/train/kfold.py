"""k-fold training in one call: person-level stratified folds over the non-test rows.

Fold k trains on the other folds and validates (early-stops, picks its best epoch) on fold k,
into `out_dir/fold_k/`. The test split stays held out, so the fold ensemble's test score is
honest. The data are prepared (decoded, cached) once and every fold reuses them.

Resumable fold by fold: a fold with `done.json` is skipped; an interrupted fold continues
from its `last.pt` through the trainer's resume. Outputs in `out_dir`:

    folds.csv             row key, person and fold of every row (-1: test)
    oof.csv               out-of-fold probabilities for every non-test row, with its labels
                          (raw model outputs: decision biases from `calibrate` are not applied)
    test_predictions.csv  each fold model's probabilities on the test split (column `fold`)
    kfold_summary.json    per-fold validation scores, OOF metrics, test metrics per fold
                          and of the soft-vote ensemble
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from facelab.data.corrections import row_keys
from facelab.data.labels import TASKS, AgeScheme
from facelab.data.prepare import PreparedData
from facelab.data.splits import check_folds, kfold_assign
from facelab.errors import ConfigError
from facelab.evaluate.metrics import all_metrics
from facelab.predict.probs import probs_to_frame
from facelab.train.config import TrainConfig

log = logging.getLogger(__name__)

DONE = "done.json"


@dataclass
class KFoldResult:
    """What a k-fold run reports (also written to kfold_summary.json)."""

    out_dir: Path
    fold_val_scores: list[float]
    oof: pd.DataFrame
    oof_metrics: dict
    test_metrics: dict = field(default_factory=dict)  # soft vote of the fold models
    test_fold_scores: list[float] = field(default_factory=list)
    trained: list[int] = field(default_factory=list)  # folds trained (not skipped) in this call


def assign_folds(
    data: PreparedData, n_folds: int, seed: int, scheme: AgeScheme | None = None
) -> np.ndarray:
    """Fold index per row for the non-test rows, -1 for test rows; leakage-checked.

    Example:
        >>> folds = assign_folds(data, 5, seed=0)  # doctest: +SKIP
    """
    pool = data.split != "test"
    folds = np.full(len(data.split), -1, dtype=np.int64)
    folds[pool] = kfold_assign(data.table[pool].reset_index(drop=True), n_folds, seed, scheme)
    # The test rows count as one more fold: no person may be in the test split and a fold.
    check_folds(data.table, np.where(pool, folds, n_folds))
    return folds


def fold_data(data: PreparedData, folds: np.ndarray, k: int) -> PreparedData:
    """A shallow copy of `data` whose split trains on the other folds and validates on fold k."""
    split = np.where(folds == k, "val", np.where(folds >= 0, "train", "test")).astype(object)
    return dataclasses.replace(data, split=split)


def row_frame(data: PreparedData, rows: np.ndarray) -> pd.DataFrame:
    """Identity and labels of `rows`: what oof.csv and test predictions start with."""
    t = data.table.iloc[rows]
    return pd.DataFrame(
        {
            "row": rows,
            "key": row_keys(data.table)[rows],
            "sample_id": t["sample_id"].to_numpy(),
            "path": t["path"].to_numpy(),
            "person": t["person"].to_numpy(),
            "source": t["source"].to_numpy(),
            **{c: t[c].to_numpy() for c in ("x1", "y1", "x2", "y2")},
            "ok": data.cache.ok[rows],
            **{f"y_{task}": data.targets[task][rows] for task in TASKS},
        }
    )


def _check_folds_file(path: Path, frame: pd.DataFrame) -> None:
    old = pd.read_csv(path, dtype={"key": str}, keep_default_na=False)
    if (
        len(old) != len(frame)
        or not (old["key"].astype(str).to_numpy() == frame["key"].astype(str)).all()
        or not (old["fold"].to_numpy() == frame["fold"].to_numpy()).all()
    ):
        raise ConfigError(
            f"{path} holds another fold assignment (the data, fold count or seed changed); "
            "resume only with the same settings, or use a new --out (or --no-resume)"
        )


def fit_kfold(
    cfg: TrainConfig,
    out_dir: str | Path,
    folds: int = 5,
    resume: bool = True,
    data: PreparedData | None = None,
    seed: int | None = None,
) -> KFoldResult:
    """Train `folds` person-level folds into out_dir/fold_k and write the out-of-fold files.

    `seed` picks the fold assignment (default: the config's data.split_seed). With
    resume=False every fold is retrained from scratch (existing fold folders are removed).

    Example:
        >>> res = fit_kfold(load_config("configs/multitask.yaml"), "runs/kf", folds=5)  # doctest: +SKIP
        >>> res.oof_metrics["mask"]["macro_f1"]  # doctest: +SKIP
    """
    from facelab.predict.ensemble import soft_vote
    from facelab.predict.run import AttributeRun
    from facelab.train.trainer import fit, prepare_for

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        # Folds replace the validation split; the test split does not depend on val_fraction.
        data = prepare_for(
            dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_fraction=0.0))
        )
    if cfg.data.corrections:
        # Once, on a copy: the caller's data stay untouched, and oof.csv / test labels are the
        # corrected ones whether folds are trained now or skipped as finished (each fold's
        # trainer applies the file again, which changes nothing).
        from facelab.data.corrections import apply_corrections

        data = dataclasses.replace(data, targets={t: v.copy() for t, v in data.targets.items()})
        apply_corrections(data, cfg.data.corrections)
    seed = cfg.data.split_seed if seed is None else seed
    fold_of = assign_folds(data, folds, seed, cfg.data.age_scheme())
    ident = row_frame(data, np.arange(len(fold_of)))[["key", "sample_id", "person"]]
    ident["fold"] = fold_of
    if resume and (out / "folds.csv").is_file():
        _check_folds_file(out / "folds.csv", ident)
    ident.to_csv(out / "folds.csv", index=False)

    scores, trained = [], []
    for k in range(folds):
        fold_dir = out / f"fold_{k}"
        if resume and (fold_dir / DONE).is_file():
            done = json.loads((fold_dir / DONE).read_text())
            log.info(
                "fold %d/%d already finished (val score %.4f), skipped",
                k + 1,
                folds,
                done["best_score"],
            )
            scores.append(done["best_score"])
            continue
        if not resume and fold_dir.exists():
            shutil.rmtree(fold_dir)
        log.info(
            "fold %d/%d: %d train / %d val rows",
            k + 1,
            folds,
            int(((fold_of >= 0) & (fold_of != k)).sum()),
            int((fold_of == k).sum()),
        )
        t0 = time.perf_counter()
        result = fit(cfg, fold_dir, resume=resume, data=fold_data(data, fold_of, k))
        score = float(result.best_val.get("score", float("nan")))
        (fold_dir / DONE).write_text(
            json.dumps(
                {
                    "fold": k,
                    "folds": folds,
                    "best_epoch": result.best_epoch,
                    "best_score": score,
                    "wall_s": time.perf_counter() - t0,
                }
            )
        )
        scores.append(score)
        trained.append(k)

    # Out-of-fold probabilities: each non-test row predicted by the model that never saw it.
    parts, test_parts, test_probs = [], [], []
    test_idx = data.indices("test")
    for k in range(folds):
        fold = AttributeRun.load(out / f"fold_{k}", tta=cfg.tta, calibrated=False)  # oof stays raw
        rows = np.flatnonzero((fold_of == k) & data.cache.ok)
        probs = fold.predict_pixels(data.cache.pixels, rows)
        parts.append(
            pd.concat([row_frame(data, rows).assign(fold=k), probs_to_frame(probs)], axis=1)
        )
        if len(test_idx):
            p = fold.predict_pixels(data.cache.pixels, test_idx)
            test_probs.append(p)
            test_parts.append(
                pd.concat([row_frame(data, test_idx).assign(fold=k), probs_to_frame(p)], axis=1)
            )
    undecoded = np.flatnonzero((fold_of >= 0) & ~data.cache.ok)
    if len(undecoded):  # kept so every non-test row appears once; no probabilities
        parts.append(row_frame(data, undecoded).assign(fold=fold_of[undecoded]))
    oof = pd.concat(parts, ignore_index=True).sort_values("row", ignore_index=True)
    oof.to_csv(out / "oof.csv", index=False)

    known = oof["ok"].to_numpy(bool)
    oof_probs = {
        t: oof.loc[known, [c for c in oof.columns if c.startswith(f"p_{t}_")]].to_numpy(float)
        for t in TASKS
    }
    oof_metrics = all_metrics({t: oof.loc[known, f"y_{t}"].to_numpy() for t in TASKS}, oof_probs)
    test_metrics, test_scores = {}, []
    if test_probs:
        pd.concat(test_parts, ignore_index=True).to_csv(out / "test_predictions.csv", index=False)
        y = {t: data.targets[t][test_idx] for t in TASKS}
        test_scores = [all_metrics(y, p)["score"] for p in test_probs]
        test_metrics = all_metrics(y, soft_vote(test_probs))
    summary = {
        "folds": folds,
        "seed": seed,
        "fold_val_scores": scores,
        "test_fold_scores": test_scores,
        "oof": oof_metrics,
        "test_soft_vote": test_metrics,
    }
    (out / "kfold_summary.json").write_text(json.dumps(summary, indent=1))
    return KFoldResult(out, scores, oof, oof_metrics, test_metrics, test_scores, trained)
