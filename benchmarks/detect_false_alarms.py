"""A contact sheet of a detector's false alarms on the validation images, to audit precision.

Precision against a boxes CSV counts every detection that matches no annotated face (IoU
< 0.5) as a false alarm. Crowd photos often hold faces nobody annotated, and a real face can
be boxed differently enough to miss IoU 0.5; a look at the false alarms tells how much of
the measured precision gap is the labels. Only the validation part of the training split is
read (facelab.detect.ssd_train.training_split), never the test split.

    FACELAB_DATA=../shared/data python benchmarks/detect_false_alarms.py \
        [--detector ssd-mbv2-onnx] [--out runs/bench/false_alarms.png]

Writes the sheet (each tile: the detection with half its width of context, its score and
width in pixels) and prints how many detections and false alarms there were.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    import cv2

    from facelab.detect import get_detector
    from facelab.detect.evaluate import match, read_boxes
    from facelab.detect.ssd_train import SSDTrainConfig, training_split
    from facelab.io import load_image
    from facelab.paths import data_root, missing_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", default="ssd-mbv2-onnx")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/false_alarms.png"))
    ap.add_argument("--tile", type=int, default=96)
    ap.add_argument("--columns", type=int, default=8)
    args = ap.parse_args()
    missing = missing_data("face-mask-detection")
    if missing:
        print(f"skip: {missing}")
        return 0
    _, val = training_split(read_boxes(data_root() / "face-mask-detection"), SSDTrainConfig())
    det = get_detector(args.detector)
    tiles, n_det = [], 0
    for path, g in val.groupby("path", sort=True):
        img = load_image(path)
        faces = det.detect(img)
        n_det += len(faces)
        boxes = np.array([f.box for f in faces], float).reshape(-1, 4)
        _, hit = match(g[["x1", "y1", "x2", "y2"]].to_numpy(float), boxes, np.array([f.score for f in faces]))
        for f, h in zip(faces, hit):
            if h:
                continue
            x1, y1, x2, y2 = (int(round(v)) for v in f.box)
            pad = max(1, (x2 - x1) // 2)
            crop = img[max(0, y1 - pad) : y2 + pad, max(0, x1 - pad) : x2 + pad]
            if not crop.size:
                continue
            tile = cv2.resize(crop, (args.tile, args.tile))
            cv2.putText(tile, f"{f.score:.2f} {x2 - x1}px", (2, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (255, 255, 0), 1)  # fmt: skip
            tiles.append(tile)
    print(f"{args.detector}: {len(val['path'].unique())} validation images, {n_det} detections, "
          f"{len(tiles)} false alarms (precision {1 - len(tiles) / max(n_det, 1):.3f})")
    if not tiles:
        return 0
    cols = args.columns
    rows = (len(tiles) + cols - 1) // cols
    sheet = np.zeros((rows * args.tile, cols * args.tile, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * args.tile : (r + 1) * args.tile, c * args.tile : (c + 1) * args.tile] = tile
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"sheet: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
