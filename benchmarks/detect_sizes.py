"""ssd-mbv2's letterbox size at inference, chosen on validation images (no retraining).

The face-mask-detection photos are 400 px on their longer side and a third of their faces
are under 16 px; the detector letterboxes to 480 px by default (its training scale). A larger
input shows small faces at more pixels, for more compute. For each checkpoint (by default the
two mosaic seeds of ``benchmarks/detect_photos.py --variants mosaic``) and each size, the
score threshold is chosen again on the validation images for precision >= 0.90, then the
ONNX Runtime backend runs at that size and threshold over the validation images (recall per
class and size, precision, images/s with ``--threads``, one image per call; `facelab
detect-eval` passes 8) and over close-up photo samples (found / extra faces). The test split
is never opened.

Usage:
    OMP_NUM_THREADS=2 python benchmarks/detect_sizes.py [--sizes 480 544 576 608 640]
        [--weights runs/bench/detect_photos/mosaic-s0.pt runs/bench/detect_photos/mosaic-s1.pt]
        [--close-ups 150] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_WEIGHTS = [Path("runs/bench/detect_photos/mosaic-s0.pt"), Path("runs/bench/detect_photos/mosaic-s1.pt")]


def main() -> int:
    from facelab.detect.evaluate import (
        evaluate_detector,
        evaluate_photos,
        read_boxes,
        sample_photos,
        split_rows,
    )
    from facelab.detect.ssd_onnx import SSDOnnxDetector
    from facelab.detect.ssd_train import choose_score_threshold
    from facelab.paths import data_root, missing_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[480, 544, 576, 608, 640])
    ap.add_argument("--weights", type=Path, nargs="+", default=DEFAULT_WEIGHTS)
    ap.add_argument("--close-ups", type=int, default=150, help="photos per close-up set")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    missing = missing_data("face-mask-detection")
    if missing:
        print(f"skip: {missing}")
        return 0
    absent = [str(w) for w in args.weights if not w.is_file()]
    if absent:
        print(f"error: no checkpoint {', '.join(absent)}; train them with "
              "`python benchmarks/detect_photos.py --variants mosaic` or pass --weights", file=sys.stderr)
        return 2
    val = split_rows(read_boxes(data_root() / "face-mask-detection"), "val")
    close_ups = {name: sample_photos(data_root() / name / "images", args.close_ups)
                 for name in ("rmfd-masked-faces", "utkface") if not missing_data(name)}  # fmt: skip
    rows = []
    for weights in args.weights:
        for size in args.sizes:
            thr = choose_score_threshold(weights, val, 0.90, size=size)
            det = SSDOnnxDetector(weights=str(weights), size=size,
                                             score_thresh=thr["score_thresh"], threads=args.threads)  # fmt: skip
            det.prepare()
            evaluate_detector(det, val.head(40), progress=False)  # warm-up: first calls are slow
            res = evaluate_detector(det, val, progress=False)
            row = {"weights": weights.stem, "size": size, "threshold": thr["score_thresh"],
                   "val recall @P>=0.90": thr["val_recall"], "val precision": thr["val_precision"],
                   "without_mask >=32px": res.recall("without_mask", 32),
                   "with_mask >=32px": res.recall("with_mask", 32),
                   "all >=32px": res.recall(None, 32), "faces < 16px": res.gt[res.gt["width"] < 16]["hit"].mean(),
                   "images/s": res.images_per_s}  # fmt: skip
            for name, files in close_ups.items():
                r = evaluate_photos(det, files, progress=False).row()
                row[f"{name} found"], row[f"{name} extra"] = r["found"], r["extra"]
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    from detect_photos import print_tables  # same folder: the run-table printer

    print_tables(rows, "size", ("weights", "threshold"), f"{len(args.weights)} checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
