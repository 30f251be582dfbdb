"""MTCNN on CPU: seconds per image one at a time vs. in batches (prints the speed ratio).

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detect_mtcnn_batch.py [--images 32] [--batch 16]

Uses the face-mask-detection images (resized to one size so P-Net batches stack, as a
training/prediction pipeline feeding fixed-size frames does) or, without the data,
random-noise images of that size.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _images(n: int, size: tuple[int, int]) -> tuple[list[np.ndarray], str]:
    import cv2

    from facelab.paths import data_root

    folder = data_root() / "face-mask-detection" / "images"
    files = sorted(folder.glob("*.jpg"))[:n] if folder.is_dir() else []
    if len(files) < n:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(n)], "noise"
    from facelab.io import load_image

    return [
        cv2.resize(load_image(f), size[::-1], interpolation=cv2.INTER_AREA) for f in files
    ], str(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-face-size", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch

    from facelab.detect import get_detector

    torch.set_num_threads(args.threads)
    images, source = _images(args.images, (300, 400))
    det = get_detector("mtcnn", min_face_size=args.min_face_size).prepare()
    det.detect(images[0])  # warm-up
    single, batched = [], []
    for _ in range(args.repeats):  # interleave to share the machine's load fairly
        t = time.perf_counter()
        one = [det.detect(im) for im in images]
        single.append((time.perf_counter() - t) / len(images))
        t = time.perf_counter()
        many = [
            f
            for i in range(0, len(images), args.batch)
            for f in det.detect_batch(images[i : i + args.batch])
        ]
        batched.append((time.perf_counter() - t) / len(images))
    same = sum(len(a) == len(b) for a, b in zip(one, many))
    s, b = min(single), min(batched)
    print(f"images: {len(images)} x 300x400 from {source}; torch threads {args.threads}")
    print(
        f"faces found: {sum(map(len, one))} single, {sum(map(len, many))} batched; "
        f"same count on {same}/{len(images)} images"
    )
    print(f"single: {s * 1000:.1f} ms/image ({1 / s:.1f} images/s)")
    print(f"batch {args.batch}: {b * 1000:.1f} ms/image ({1 / b:.1f} images/s)")
    print(f"batch speed-up per image: {s / b:.2f}x")


if __name__ == "__main__":
    main()
