"""Does cropping the face first help mask-state classification? Detector crops vs whole photo.

Competition photos show one person with the face filling only part of the frame. To measure
the effect of `data.crop=detect` on real masks, this script turns every face-mask-detection
box (side >= --min-face px) into such a photo: a square region about --context times the
face's size, centred on the face, cut from the original scene (neighbours and background
included). Scenes are the person groups, so one scene's faces never straddle the split.
Then the same mask-only model (MobileNetV2 ImageNet, same seed and split) is trained twice:

  - crop=none:   the whole "photo" resized to the input size;
  - crop=detect: facelab's detector cascade (default mtcnn>center) crops the face first.

and both are scored on the same person-level test split (mask macro F1, "incorrect" F1).

    FACELAB_DATA=../shared/data python benchmarks/crop_effect.py [--epochs 4] [--size 112]

Derived photos go to $FACELAB_CACHE/derived/ (never into the repository).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from facelab.data.formats import SourceSpec  # noqa: E402
from facelab.evaluate.report import evaluate_run  # noqa: E402
from facelab.paths import cache_root, data_root  # noqa: E402
from facelab.train.config import load_config  # noqa: E402
from facelab.train.trainer import fit, prepare_for  # noqa: E402


def make_photos(boxes_csv: Path, out: Path, min_face: int, context: float) -> Path:
    """Write one face-centred region per box and a labels CSV (image, mask, person)."""
    labels = out / "labels.csv"
    if labels.is_file():
        return labels
    out.mkdir(parents=True, exist_ok=True)
    boxes = pd.read_csv(boxes_csv)
    rows = []
    for scene, group in boxes.groupby("image", sort=True):
        image = Image.open(boxes_csv.parent / scene).convert("RGB")
        w, h = image.size
        for i, b in enumerate(group.itertuples(index=False)):
            side = max(b.x2 - b.x1, b.y2 - b.y1)
            if side < min_face:
                continue
            region = min(int(round(side * context)), w, h)
            cx, cy = (b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2
            x0 = int(min(max(cx - region / 2, 0), w - region))
            y0 = int(min(max(cy - region / 2, 0), h - region))
            name = f"{Path(scene).stem}_{i}.jpg"
            image.crop((x0, y0, x0 + region, y0 + region)).save(out / name, quality=95)
            rows.append({"image": name, "mask": b.label, "person": Path(scene).stem})
    pd.DataFrame(rows).to_csv(labels, index=False)
    return labels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--freeze", type=int, default=4, help="frozen MobileNetV2 stages (speed)")
    ap.add_argument("--min-face", type=int, default=24, help="smallest face side kept, px")
    ap.add_argument("--context", type=float, default=2.5, help="photo side / face side")
    ap.add_argument("--detector", default="mtcnn>center")
    ap.add_argument("--out", default=str(ROOT / "runs" / "crop_effect"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    boxes = data_root() / "face-mask-detection" / "boxes.csv"
    if not boxes.is_file():
        print(f"SKIP: {boxes} not found (set FACELAB_DATA)")
        return 0
    photos = cache_root() / "derived" / f"fmd_photos_min{args.min_face}_ctx{args.context}"
    labels = make_photos(boxes, photos, args.min_face, args.context)
    n = len(pd.read_csv(labels))
    results = {}
    for crop in ("none", "detect"):
        cfg = load_config(None, [
            f"data.image_size={args.size}", f"data.crop={crop}", f"data.detector={args.detector}",
            "data.margin=0.2", f"model.freeze={args.freeze}", f"epochs={args.epochs}",
            "patience=0", "loss.class_weights=balanced", "tta=true",
        ])
        cfg.data.sources = [SourceSpec(kind="labels", path=str(labels), name="fmd-photos")]
        t0 = time.perf_counter()
        out = Path(args.out) / crop
        data = prepare_for(cfg)
        fit(cfg, out, resume=True, data=data)
        metrics, _ = evaluate_run(out, "test")
        stages = pd.Series([data.cache.stages[i] for i in data.indices("test")]).value_counts()
        results[crop] = (metrics["mask"], time.perf_counter() - t0, stages)
    print(f"\nmask state on {n} face-centred photos (faces >= {args.min_face}px, photo = "
          f"{args.context}x face), {args.size}px, {args.epochs} epochs, person-level test split")
    print(f"{'input':<34}{'macro F1':>10}{'incorrect F1':>14}{'wall s':>9}")
    for crop, (m, wall, _) in results.items():
        label = "whole photo (crop=none)" if crop == "none" else f"detector crop ({args.detector})"
        print(f"{label:<34}{m['macro_f1']:>10.4f}{m['per_class_f1'][1]:>14.4f}{wall:>9.0f}")
    stages = results["detect"][2]
    print("detector stages on the test split: " + ", ".join(f"{k} {v}" for k, v in stages.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
