"""ssd-mbv2 against the other detectors, side by side, as `facelab detect-eval` prints it.

Usage:
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/detect_ssd.py [--part val|test|photos|all]
        [--out runs/bench/detect_ssd] [--photos-limit 300]

- val: the training split's validation images (where the default detector is chosen);
- test: the held-out test split of face-mask-detection, plus, in the same run, 300 evenly
  spaced photos each of rmfd-masked-faces and utkface (one face per photo).

Detectors: ssd-mbv2 in PyTorch and in ONNX Runtime (2 threads each), MTCNN, the
`mtcnn-mask|mtcnn` union (needs `facelab detect-train --install` first), dlib HOG and Haar.
Each part is one `facelab detect-eval` call, so all detectors share one run and one machine
load; tables go to stdout and to --out (.md/.json/.photos.md).
`-d` replaces the detector list, e.g. the BlazeFace comparison in docs/detection.md:
`--part test --threads 1 --photos-limit 150 --out runs/bench/blazeface_1t -d blazeface-short
-d blazeface-short-onnx -d blazeface-full -d blazeface-full-onnx ... -d ssd-mbv2-onnx -d mtcnn`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

DETECTORS = ["ssd-mbv2", "ssd-mbv2-onnx", "mtcnn", "mtcnn-mask|mtcnn", "dlib-hog", "haar"]


def main() -> None:
    from facelab.paths import data_root, missing_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", choices=["val", "test", "all"])
    ap.add_argument("--out", type=Path, default=Path("runs/bench/detect_ssd"))
    ap.add_argument("--photos-limit", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-d", "--detector", action="append", help="override the detector list")
    args = ap.parse_args()
    missing = missing_data("face-mask-detection")
    if missing:
        sys.exit(f"skip: {missing}")
    dets = args.detector or DETECTORS
    base = [sys.executable, "-m", "facelab", "detect-eval",
            "--boxes", str(data_root() / "face-mask-detection"), "--threads", str(args.threads)]
    for d in dets:
        base += ["-d", d]
    parts = ["val", "test"] if args.part == "all" else [args.part]
    for part in parts:
        cmd = [*base, "--split", part, "--out", str(args.out.with_name(f"{args.out.name}_{part}"))]
        if part == "test":
            for name in ("rmfd-masked-faces", "utkface"):
                if not missing_data(name):
                    cmd += ["--photos", str(data_root() / name / "images")]
            cmd += ["--photos-limit", str(args.photos_limit)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
