"""RMFD masked-vs-unmasked verification with facelab's pipeline, with honest model selection.

Every candidate configuration (chip alignment x lower-face occlusion) is scored on the pairs,
but the figure reported is *nested*: for each identity fold, the configuration and the
threshold are chosen on the other folds only, then applied to the held-out fold. Figures per
configuration are printed too (their accuracy uses leave-one-fold-out thresholds, but the row
itself was not chosen blind, so only the nested line is the result).

Usage:
    OMP_NUM_THREADS=1 python benchmarks/verify_rmfd.py [--data ../shared/data/rmfd-masked-faces]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np


def detect_all(paths: list[str], root: Path, detector: str) -> dict:
    from facelab.embed.pipeline import FacePipeline, PipelineConfig
    from facelab.io.image import load_image

    pipe = FacePipeline(PipelineConfig(detector=detector, largest_only=True, select="central"),
                        embedder=object())  # type: ignore[arg-type]  (detection only)
    out = {}
    for p in paths:
        image = load_image(root / p)
        out[p] = (image, pipe.faces(image)[0])
    return out


def embed_config(faces: dict, align: str, occ: float | None, flip: bool) -> dict:
    from facelab.embed.dlib_resnet import DlibEmbedConfig, DlibResNetEmbedder

    emb = DlibResNetEmbedder(DlibEmbedConfig(flip=flip, occlude_below=occ, align=align))
    return {p: emb.embed_faces(img, [face])[0] for p, (img, face) in faces.items()}


def main() -> None:
    from facelab.evaluate.verification import (
        best_threshold,
        evaluate_distances,
        load_pairs,
        pair_distances,
        tar_at_far,
    )
    from facelab.paths import dataset_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--detector", default="mtcnn")
    ap.add_argument("--aligns", nargs="+", default=["shape5", "landmarks", "eyes"])
    ap.add_argument("--occlusions", nargs="+", default=["none", "0.55"])
    ap.add_argument("--flip", action="store_true")
    args = ap.parse_args()
    root = args.data or dataset_dir("rmfd-masked-faces")
    df = load_pairs(root / "pairs.csv")
    same, folds = df["same"].to_numpy(), df["fold"].to_numpy()
    t0 = time.perf_counter()
    faces = detect_all(sorted(set(df.image_a) | set(df.image_b)), root, args.detector)
    stages = {}
    for _, f in faces.values():
        stages[f.stage] = stages.get(f.stage, 0) + 1
    print(f"detected {len(faces)} images in {time.perf_counter() - t0:.0f}s: {stages}")
    dists = {}
    for align, occ in itertools.product(args.aligns, args.occlusions):
        o = None if occ == "none" else float(occ)
        d = pair_distances(df, embed_config(faces, align, o, args.flip), "l2")
        dists[(align, occ)] = d
        print(f"{args.detector:6s} align={align:9s} occlude={occ:5s} {evaluate_distances(d, same, folds).summary()}",
              flush=True)
    correct, tars, chosen = np.zeros(len(df), bool), [], []
    for f in np.unique(folds):
        test, train = folds == f, folds != f
        best = max(dists, key=lambda k: np.mean((dists[k][train] <= best_threshold(dists[k][train], same[train]))
                                                == (same[train] == 1)))
        t = best_threshold(dists[best][train], same[train])
        correct[test] = (dists[best][test] <= t) == (same[test] == 1)
        tars.append(tar_at_far(dists[best][test], same[test], 0.01))
        chosen.append(best)
    print(f"NESTED (config + threshold chosen on the other folds): accuracy={100 * correct.mean():.2f}% "
          f"TAR@FAR1%={100 * np.mean(tars):.1f}% (mean over folds) chosen={chosen}")


if __name__ == "__main__":
    main()
