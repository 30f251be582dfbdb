"""Training levers for ssd-mbv2, on validation images: single-face photos, mosaic crops.

Issue 17, item 2: single-face photos of another data set (lfw-train by default), labelled by
a teacher (MTCNN, boxes moved to the boxes CSV's framing), used as whole training images and
pasted into crowd crops (some with rendered masks). Mosaic (``--variants mosaic``): half of
the crowd crops are 2x2 mosaics of four training images at half scale (more and smaller
faces per step, where the detector misses most). Unannotated (``--variants unannotated``):
mosaic, and faces MTCNN finds at score >= 0.95 in a training image that overlap no annotated
box are ignored instead of being background (the boxes CSV leaves background faces out;
``ssd_train.unannotated``). Unfrozen (``--variants unfrozen``): mosaic, and every MobileNetV2
block trained (``freeze 0`` instead of 4: the stride-8 features that small faces rely on
can adapt). Unmasked (``--variants unmasked``): mosaic, and every image holding an unmasked
face drawn twice per epoch (``unmasked_repeat``). Ref576 (``--variants ref576``): mosaic, with the
training scales drawn around 576 px (``size``) instead of 480, for a detector run at 576
(``--infer-size 576``). All variants train with the same
settings and seeds on the training split of face-mask-detection; they are compared only on
data that chooses things (validation images of the training split, at the score threshold
each checkpoint gets for precision >= 0.90) and on the close-up photo sets, never on the
test split.

Usage:
    OMP_NUM_THREADS=2 python benchmarks/detect_photos.py [--seeds 0 1] [--epochs 30]
        [--variants boxes photos mosaic unannotated unfrozen unmasked ref576] [--photos-limit 1500] [--out runs/bench/detect_photos]
        [--threads 2] [--infer-size 480]

Checkpoints already in --out are reused (delete them to retrain); each is about 10 minutes
with 2 threads on an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


#: tag (checkpoint name) -> (row label, options)
VARIANTS = {"boxes": ("boxes only", {}), "photos": ("boxes + photos", {"photos": True}),
            "mosaic": ("boxes, mosaic 0.5", {"mosaic": 0.5}),
            "unannotated": ("mosaic 0.5, unannotated faces ignored", {"mosaic": 0.5, "unannotated": 0.95}),
            "unfrozen": ("mosaic 0.5, no backbone block frozen", {"mosaic": 0.5, "freeze": 0}),
            "unmasked": ("mosaic 0.5, unmasked images x2", {"mosaic": 0.5, "unmasked_repeat": 2}),
            "ref576": ("mosaic 0.5, training scales around 576 px", {"mosaic": 0.5, "size": 576})}


def main() -> int:
    from facelab.detect.evaluate import evaluate_photos, read_boxes, sample_photos, split_rows
    from facelab.detect.ssd import SSDMobileNetV2Detector
    from facelab.detect.ssd_train import SSDTrainConfig, choose_score_threshold, train_ssd
    from facelab.paths import data_root, missing_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--photos-limit", type=int, default=1500)
    ap.add_argument("--close-ups", type=int, default=150, help="photos per close-up set")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/detect_photos"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=["boxes", "photos"], choices=list(VARIANTS))
    ap.add_argument("--infer-size", type=int, default=480,
                    help="letterbox side every checkpoint is thresholded and scored at (passed explicitly, so a "
                         "checkpoint reused from an earlier run is scored at it too; the default detector's: 480)")
    args = ap.parse_args()
    missing = missing_data("face-mask-detection", *(["lfw-train"] if "photos" in args.variants else []))
    if missing:
        print(f"skip: {missing}")
        return 0
    boxes = data_root() / "face-mask-detection"
    val = split_rows(read_boxes(boxes), "val")
    close_ups = {name: sample_photos(data_root() / name / "images", args.close_ups)
                 for name in ("rmfd-masked-faces", "utkface") if not missing_data(name)}  # fmt: skip
    rows = []
    for seed in args.seeds:
        for tag in args.variants:
            name, options = VARIANTS[tag]
            photos = [str(data_root() / "lfw-train" / "images")] if options.get("photos") else []
            out = args.out / f"{tag}-s{seed}.pt"
            if not out.is_file():
                cfg = SSDTrainConfig(boxes=str(boxes), out=str(out), epochs=args.epochs, seed=seed,
                                     threads=args.threads, photos=photos,
                                     photos_limit=args.photos_limit,
                                     mosaic=options.get("mosaic", 0.0),
                                     unannotated=options.get("unannotated", 0.0),
                                     freeze=options.get("freeze", SSDTrainConfig.freeze),
                                     unmasked_repeat=options.get("unmasked_repeat", 1),
                                     size=options.get("size", SSDTrainConfig.size), infer_size=args.infer_size,
                                     unannotated_cache=str(args.out / "unannotated.csv"),
                                     landmarks=str(args.out / "landmarks.csv"),
                                     teacher_cache=str(args.out / "teacher.csv"))  # fmt: skip
                train_ssd(cfg)
            thr = choose_score_threshold(out, val, 0.90, size=args.infer_size)
            row = {"variant": name, "seed": seed, "threshold": thr["score_thresh"],
                   "val recall @P>=0.90": thr["val_recall"], "val precision": thr["val_precision"]}
            det = SSDMobileNetV2Detector(weights=str(out), score_thresh=thr["score_thresh"], size=args.infer_size)
            for set_name, files in close_ups.items():
                res = evaluate_photos(det, files, progress=False)
                r = res.row()
                row[f"{set_name} found"] = r["found"]
                row[f"{set_name} extra"] = r["extra"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_tables(rows, "variant", ("seed", "threshold"), "seeds " + " ".join(map(str, args.seeds)))
    return 0


def print_tables(rows: list[dict], group: str, hide: tuple[str, ...], over: str) -> None:
    """Markdown table of every row, then mean +- sd of the numeric columns per ``group``
    (also used by detect_sizes.py)."""
    import pandas as pd

    table = pd.DataFrame(rows)
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r] for r in table.itertuples(index=False)]
    print("\nper run:\n| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
    print("\n".join("| " + " | ".join(c) + " |" for c in cells))
    cols = [c for c in table.columns if c not in (group, *hide) and pd.api.types.is_numeric_dtype(table[c])]
    summary = table.groupby(group, sort=False)[cols].agg(["mean", "std"])
    print(f"\nmean and sd over {over}:")
    for key, r in summary.iterrows():
        print(f"{key!s:<20}  " + "  ".join(
            f"{c} {r[(c, 'mean')]:.3f}" + ("" if np.isnan(r[(c, 'std')]) else f" +- {r[(c, 'std')]:.3f}")
            for c in cols))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
