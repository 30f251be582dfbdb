"""Renderer check: does a model trained on real masks only read the renders as intended?

Renders correct / incorrect / none on UTKFace faces (a seeded sample; dlib's 68 landmarks)
and asks the main job's model (runs/main, trained on real masks, never on renders) for the
mask state. Prints the share called "correct" for correct renders (aim >= 0.90), "none" for
no mask (>= 0.90) and the mask-state rates for incorrect renders, per kind and wear variant,
each with a 95% Wilson interval. SKIPs when runs/main or UTKFace is absent.

    .venv/bin/python benchmarks/render_check.py [--run runs/main] [--faces 300] [--framing box|whole]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from facelab.io.image import load_image
from facelab.masks import MASK_KINDS, RenderSpec, detect_landmarks68, render_spec
from facelab.masks.landmarks import LandmarksError
from facelab.paths import data_root, missing_data

STATES = ("correct", "incorrect", "none")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return c - h, c + h


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/main")
    ap.add_argument("--faces", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--framing", choices=["box", "whole"], default="box",
                    help="model input: dlib's landmark box + 15%% (as the real mask boxes), or the whole UTKFace crop")
    args = ap.parse_args()
    if not (Path(args.run) / "best.pt").is_file():
        print(f"SKIP: no trained run at {args.run} (train the main job first: scripts/main.sh)")
        return 0
    missing = missing_data("utkface")
    if missing:
        print(f"SKIP: {missing}")
        return 0
    import torch

    import facelab

    torch.set_num_threads(1)
    model = facelab.load(args.run)
    root = data_root() / "utkface"
    df = pd.read_csv(root / "labels.csv").sort_values("image").reset_index(drop=True)
    order = np.random.default_rng(args.seed).permutation(len(df))
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    used = no_face = 0
    for i in order:
        if used == args.faces:
            break
        img = load_image(root / df.image[i])
        try:
            pts = detect_landmarks68(img)
        except LandmarksError:
            no_face += 1
            continue
        used += 1
        rng = np.random.default_rng([args.seed, int(i)])
        kind = MASK_KINDS[rng.integers(len(MASK_KINDS))]
        seed = int(rng.integers(2**31))
        specs = [RenderSpec(kind, "correct", (), seed), RenderSpec(kind, "incorrect", (), seed)]
        images = [render_spec(img, pts, s) for s in specs] + [img]
        box = None
        if args.framing == "box":
            lo, hi = pts.min(0), pts.max(0)
            pad = 0.15 * (hi - lo)
            box = (*np.maximum(lo - pad, 0), *np.minimum(hi + pad, img.shape[1::-1]))
        preds = model.predict_batch(images, [box] * 3 if box else None)
        got = [p.labels["mask"] for p in preds]
        keys = [("correct", f"correct/{kind}"), ("incorrect", f"incorrect/{specs[1].resolved_wear}"),
                ("none", "none")]
        for (group, detail), g in zip(keys, got):
            for key in {group, detail}:
                tally[key][STATES.index(g)] += 1
    print(f"model {args.run}, {used} UTKFace faces ({no_face} without a dlib face skipped), "
          f"framing={args.framing}, seed={args.seed}")
    print(f"{'rendered':26s} {'n':>5s}  " + "  ".join(f"{s:>9s}" for s in STATES) + "   target")
    aims = {"correct": ("correct", 0.90), "none": ("none", 0.90)}
    for key in sorted(tally, key=lambda k: (STATES.index(k.split("/")[0]), k)):
        counts = tally[key]
        n = sum(counts)
        row = "  ".join(f"{c / n:9.3f}" for c in counts)
        extra = ""
        if key in aims:
            state, aim = aims[key]
            k = counts[STATES.index(state)]
            lo, hi = wilson(k, n)
            ok = "met" if k / n >= aim else "NOT met"
            extra = f"   '{state}' {k / n:.3f} [{lo:.3f}, {hi:.3f}] aim >= {aim} {ok}"
        elif key == "incorrect":
            k = counts[1]
            lo, hi = wilson(k, n)
            extra = f"   'incorrect' rate {k / n:.3f} [{lo:.3f}, {hi:.3f}] (reported)"
        print(f"{key:26s} {n:5d}  {row}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
