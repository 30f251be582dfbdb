"""Quick out-of-fold probabilities without fine-tuning: frozen ImageNet features + logistic
regression per task, over person-level folds. Minutes on CPU instead of a k-fold training.

The ranking only needs probabilities from models that never saw the row; a linear probe on
fixed features gives that cheaply and is good enough to surface flipped labels.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from facelab.data.labels import MISSING, TASK_CLASSES, TASKS
from facelab.data.prepare import PreparedData
from facelab.data.splits import kfold_assign
from facelab.predict.probs import probs_to_frame
from facelab.train.kfold import row_frame

log = logging.getLogger(__name__)


@torch.inference_mode()
def backbone_features(
    pixels: np.ndarray,
    rows: np.ndarray,
    backbone: str = "mobilenet_v2",
    pretrained: str = "imagenet",
    batch_size: int = 64,
) -> np.ndarray:
    """(len(rows), F) pooled features of a frozen backbone for uint8 (N, S, S, 3) pixels."""
    from facelab.models.backbone import create_backbone

    net = create_backbone(backbone, pretrained).eval()
    mean = torch.tensor(net.mean).view(1, 3, 1, 1)
    std = torch.tensor(net.std).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(rows), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(pixels[rows[start : start + batch_size]]))
        x = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
        out.append(net(x).numpy())
    return np.concatenate(out) if out else np.zeros((0, net.num_features), np.float32)


def probe_probs(
    feats: np.ndarray, y: np.ndarray, folds: np.ndarray, n_classes: int, C: float = 0.0
) -> np.ndarray:
    """Out-of-fold (N, k) probabilities of a logistic regression; NaN where no fold model fits.

    Rows with y == MISSING are predicted but never trained on. C <= 0 picks C per fold by
    inner cross-validation (log loss); measured best for planted-error recall.
    """
    probs = np.full((len(y), n_classes), np.nan)
    for k in np.unique(folds):
        train = (folds != k) & (y != MISSING)
        if len(np.unique(y[train])) < 2:
            continue
        if C > 0:
            lr = LogisticRegression(C=C, max_iter=2000)
        else:  # pick the L2 strength by inner 3-fold log loss: few samples, many features
            lr = LogisticRegressionCV(
                Cs=np.logspace(-4, 0, 5), cv=3, scoring="neg_log_loss", max_iter=2000
            )
        clf = make_pipeline(StandardScaler(), lr)
        clf.fit(feats[train], y[train])
        p = np.zeros(((folds == k).sum(), n_classes))
        p[:, clf.classes_] = clf.predict_proba(feats[folds == k])
        probs[folds == k] = p
    return probs


def quick_oof(
    data: PreparedData,
    folds: int = 5,
    seed: int = 0,
    splits=("train", "val", "test"),
    backbone: str = "mobilenet_v2",
    pretrained: str = "imagenet",
    C: float = 0.0,
) -> pd.DataFrame:
    """Out-of-fold probabilities (oof.csv layout) for the decoded rows of `splits`.

    By default every split is included: a wrong label hurts in the test split too, and
    the fold models here are only used to point at suspicious labels.

    Example:
        >>> oof = quick_oof(prepare_for(load_config("configs/multitask.yaml")))  # doctest: +SKIP
    """
    rows = np.flatnonzero(np.isin(data.split, splits) & data.cache.ok)
    fold_of = kfold_assign(data.table.iloc[rows].reset_index(drop=True), folds, seed)
    log.info("quick OOF: features of %d images (%s, frozen)", len(rows), backbone)
    feats = backbone_features(data.cache.pixels, rows, backbone, pretrained)
    probs = {
        t: probe_probs(feats, data.targets[t][rows], fold_of, TASK_CLASSES[t], C) for t in TASKS
    }
    return pd.concat([row_frame(data, rows).assign(fold=fold_of), probs_to_frame(probs)], axis=1)
