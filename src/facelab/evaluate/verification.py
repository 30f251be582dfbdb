"""Face verification (1:1) evaluation on a pairs CSV: accuracy, ROC AUC, TAR@FAR, ROC plot.

Pairs CSV columns: ``image_a, image_b, same`` and optionally ``fold``. Accuracy uses
leave-one-fold-out thresholds: for each fold, the threshold that maximises accuracy on the
*other* folds is applied to it, so no reported pair ever chose its own threshold. When the
CSV has no ``fold`` column, folds are made from the identity of ``image_a`` (its parent
folder), so a person's pairs stay in one fold.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from facelab.distance import pairwise_distance
from facelab.errors import DataFormatError

log = logging.getLogger(__name__)


def load_pairs(path: str | Path, n_folds: int = 3) -> pd.DataFrame:
    """Read a pairs CSV and make sure it has an integer ``fold`` column.

    Example:
        >>> df = load_pairs("lfw/pairs.csv")   # doctest: +SKIP
        >>> sorted(df.fold.unique())           # doctest: +SKIP
        [1, 2, 3]
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"pairs file {path} not found")
    df = pd.read_csv(path)
    missing = {"image_a", "image_b", "same"} - set(df.columns)
    if missing:
        raise DataFormatError(f"{path} lacks columns {sorted(missing)}; need image_a,image_b,same")
    df["same"] = df["same"].astype(int)
    if "fold" not in df.columns:
        ids = df["image_a"].map(lambda p: Path(str(p)).parent.name or str(p))
        order = sorted(ids.unique(), key=lambda s: zlib.crc32(s.encode()))
        fold_of = {ident: 1 + i % n_folds for i, ident in enumerate(order)}
        df["fold"] = ids.map(fold_of)
    df["fold"] = df["fold"].astype(int)
    return df


def best_threshold(dist: np.ndarray, same: np.ndarray) -> float:
    """Distance threshold maximising accuracy of ``dist <= t`` (midpoint between scores).

    Example:
        >>> best_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0]))
        0.5
    """
    d = np.asarray(dist, float)
    y = np.asarray(same, int)
    finite = np.sort(np.unique(d[np.isfinite(d)]))
    if finite.size == 0:
        return 0.0
    cands = np.concatenate([[finite[0] - 1e-6], (finite[:-1] + finite[1:]) / 2, [finite[-1] + 1e-6]])
    accs = [np.mean((d <= t) == (y == 1)) for t in cands]
    return float(cands[int(np.argmax(accs))])


def lofo_accuracy(dist: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[float, dict]:
    """Accuracy with leave-one-fold-out thresholds; returns (mean over pairs, per-fold detail)."""
    dist, same, folds = np.asarray(dist, float), np.asarray(same, int), np.asarray(folds)
    if len(np.unique(folds)) < 2:  # one fold only: 3-way split of its pairs, never self-chosen
        folds = np.arange(len(dist)) % 3 + 1
    correct = np.zeros(len(dist), bool)
    detail = {}
    for f in np.unique(folds):
        test = folds == f
        train = ~test
        t = best_threshold(dist[train], same[train])
        correct[test] = (dist[test] <= t) == (same[test] == 1)
        detail[int(f)] = {"threshold": t, "accuracy": float(correct[test].mean()), "n": int(test.sum())}
    return float(correct.mean()), detail


def roc_curve(dist: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FAR, TAR, thresholds) sweeping ``dist <= t`` over all distinct distances."""
    d = np.where(np.isfinite(dist), dist, np.finfo(float).max)
    y = np.asarray(same, int)
    order = np.argsort(d, kind="mergesort")
    d, y = d[order], y[order]
    tp, fp = np.cumsum(y == 1), np.cumsum(y == 0)
    last = np.r_[np.diff(d) != 0, True]  # keep the last index of each tied run
    pos, neg = max(1, int((y == 1).sum())), max(1, int((y == 0).sum()))
    tar = np.r_[0.0, tp[last] / pos]
    far = np.r_[0.0, fp[last] / neg]
    return far, tar, np.r_[-np.inf, d[last]]


def roc_auc(dist: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve (probability a genuine pair is closer than an impostor)."""
    far, tar, _ = roc_curve(dist, same)
    return float(np.trapezoid(tar, far)) if hasattr(np, "trapezoid") else float(np.trapz(tar, far))


def tar_at_far(dist: np.ndarray, same: np.ndarray, far_target: float) -> float:
    """Highest true-accept rate whose false-accept rate is <= ``far_target``."""
    far, tar, _ = roc_curve(dist, same)
    ok = far <= far_target + 1e-12
    return float(tar[ok].max()) if ok.any() else 0.0


@dataclass
class VerificationReport:
    """Figures of one verification run (all fractions in [0, 1])."""

    n_pairs: int
    accuracy: float
    accuracy_std_folds: float
    roc_auc: float
    tar_at_far_1e2: float
    tar_at_far_1e3: float
    threshold: float
    folds: dict = field(default_factory=dict)
    failed_images: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One human-readable line."""
        return (
            f"pairs={self.n_pairs} accuracy={100 * self.accuracy:.2f}% "
            f"(+-{100 * self.accuracy_std_folds:.2f} over folds) AUC={self.roc_auc:.4f} "
            f"TAR@FAR1%={100 * self.tar_at_far_1e2:.1f}% TAR@FAR0.1%={100 * self.tar_at_far_1e3:.1f}%"
        )


def evaluate_distances(
    dist: np.ndarray, same: np.ndarray, folds: np.ndarray, failed: list | None = None
) -> VerificationReport:
    """All verification figures from pair distances (``inf`` = no embedding: a reject).

    Example:
        >>> r = evaluate_distances(np.array([.1, .2, .8, .9]), np.array([1, 1, 0, 0]), np.array([1, 2, 1, 2]))
        >>> r.accuracy
        1.0
    """
    acc, detail = lofo_accuracy(dist, same, folds)
    return VerificationReport(
        n_pairs=len(dist),
        accuracy=acc,
        accuracy_std_folds=float(np.std([v["accuracy"] for v in detail.values()])),
        roc_auc=roc_auc(dist, same),
        tar_at_far_1e2=tar_at_far(dist, same, 0.01),
        tar_at_far_1e3=tar_at_far(dist, same, 0.001),
        threshold=best_threshold(dist, same),
        folds=detail,
        failed_images=list(failed or []),
    )


def plot_roc(dist: np.ndarray, same: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Save the ROC curve (log-scale FAR) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    far, tar, _ = roc_curve(dist, same)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(np.maximum(far, 1e-4), tar, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title or f"ROC (AUC {roc_auc(dist, same):.4f})")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def embed_images(
    paths: list[str], root: Path, embed_one: Callable[[Path], np.ndarray | None], progress: bool = True
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Embed each distinct image once; returns (path -> vector, failed paths)."""
    from rich.progress import track

    from facelab.errors import FacelabError

    vecs: dict[str, np.ndarray] = {}
    failed: list[str] = []
    uniq = sorted(set(paths))
    it = track(uniq, description="embedding") if progress else uniq
    for p in it:
        try:
            v = embed_one(root / p)
        except FacelabError as exc:
            log.warning("skipping %s: %s", p, exc)
            v = None
        if v is None:
            failed.append(p)
        else:
            vecs[p] = v
    return vecs, failed


def pair_distances(df: pd.DataFrame, vecs: dict[str, np.ndarray], metric: str) -> np.ndarray:
    """Distance per pair row; ``inf`` where either image has no embedding."""
    out = np.full(len(df), np.inf)
    for i, (a, b) in enumerate(zip(df["image_a"], df["image_b"])):
        if a in vecs and b in vecs:
            out[i] = pairwise_distance(vecs[a][None], vecs[b][None], metric)[0]
    return out


def write_report(report: VerificationReport, dist: np.ndarray, df: pd.DataFrame, out: Path) -> None:
    """report.json, scores.csv and roc.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    df.assign(distance=dist).to_csv(out / "scores.csv", index=False)
    plot_roc(dist, df["same"].to_numpy(), out / "roc.png")


def run_verify_eval(
    pairs_csv: str | Path,
    pipeline,
    out: str | Path | None = None,
    root: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
    folds: list[int] | None = None,
) -> VerificationReport:
    """Embed every image of a pairs CSV with a :class:`facelab.embed.pipeline.FacePipeline`
    (largest face per image) and compute all verification figures.

    Example:
        >>> pipe = FacePipeline(PipelineConfig(detector="mtcnn"))            # doctest: +SKIP
        >>> run_verify_eval("lfw/pairs.csv", pipe, out="runs/lfw").summary()  # doctest: +SKIP
    """
    import time

    from facelab.io.image import load_image

    pairs_csv = Path(pairs_csv)
    root = Path(root) if root else pairs_csv.parent
    df = load_pairs(pairs_csv)
    if folds:
        have = sorted(df["fold"].unique().tolist())
        df = df[df["fold"].isin(folds)].reset_index(drop=True)
        if df.empty:
            raise DataFormatError(f"{pairs_csv}: no pairs in fold(s) {sorted(folds)}; its folds are "
                                  f"{have}")
    if limit:
        df = df.iloc[:limit].reset_index(drop=True)
    stages: dict[str, int] = {}
    # load the model now: a bad checkpoint is one run-level error, not a skip per image
    prepare = getattr(pipeline.embedder, "prepare", None)
    if prepare is not None:
        prepare()

    def embed_one(path: Path) -> np.ndarray | None:
        image = load_image(path)
        faces = pipeline.faces(image)
        if not faces:
            return None
        stages[faces[0].stage] = stages.get(faces[0].stage, 0) + 1
        return pipeline.embedder.embed_faces(image, faces[:1])[0]

    t0 = time.perf_counter()
    vecs, failed = embed_images(list(df.image_a) + list(df.image_b), root, embed_one, progress)
    seconds = time.perf_counter() - t0
    dist = pair_distances(df, vecs, pipeline.embedder.metric)
    report = evaluate_distances(dist, df["same"].to_numpy(), df["fold"].to_numpy(), failed)
    report.extra = {
        "images": len(vecs) + len(failed),
        "images_per_s": (len(vecs) + len(failed)) / max(seconds, 1e-9),
        "stages": stages,
        "embedder": f"{pipeline.embedder.name}:{pipeline.embedder.version}",
        "detector": pipeline.config.detector,
    }
    if out is not None:
        write_report(report, dist, df, Path(out))
        keys = sorted(vecs)
        np.savez_compressed(Path(out) / "embeddings.npz", paths=np.array(keys),
                            vectors=np.stack([vecs[k] for k in keys]) if keys else np.zeros((0, 0)))
    return report
