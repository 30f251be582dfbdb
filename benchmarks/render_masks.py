"""Contact sheet of mask / accessory renders on UTKFace faces, and the renderer's speed.

Writes docs/img/renders.png (rows: faces; columns: the photo, each mask kind worn correctly,
the three incorrect wear modes, a mask fitted from the detector's 5 points only, and the
accessories) and prints renders per second (one CPU thread, landmarks precomputed) and the
time dlib takes to find the 68 landmarks.

    .venv/bin/python benchmarks/render_masks.py [--faces 6] [--tile 128] [--n 400]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from facelab.detect.dlib_backend import five_from_68
from facelab.io.image import load_image
from facelab.masks import MaskRenderer, detect_landmarks68, render
from facelab.masks.landmarks import LandmarksError
from facelab.paths import data_root, missing_data

COLUMNS = [
    ("photo", {"wear": "none"}),
    ("surgical", {"kind": "surgical"}),
    ("kn95", {"kind": "kn95"}),
    ("n95", {"kind": "n95"}),
    ("cloth", {"kind": "cloth"}),
    ("below nose", {"kind": "surgical", "wear": "below_nose"}),
    ("mouth out", {"kind": "cloth", "wear": "mouth_uncovered"}),
    ("on chin", {"kind": "kn95", "wear": "on_chin"}),
    ("from 5 pts", {"kind": "surgical", "five": True}),
    ("sunglasses", {"wear": "none", "accessories": ("sunglasses",)}),
    ("eyeglasses", {"kind": "surgical", "accessories": ("eyeglasses",)}),
    ("cap", {"wear": "none", "accessories": ("cap",)}),
    ("scarf+cap", {"kind": "cloth", "wear": "correct", "accessories": ("scarf", "cap")}),
]


def pick_faces(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """``n`` UTKFace faces spread over races, genders and ages, with dlib's 68 landmarks."""
    root = data_root() / "utkface"
    df = pd.read_csv(root / "labels.csv").sort_values("image")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(df))
    out, seen = [], set()
    for i in order:
        row = df.iloc[i]
        key = (row.race, row.gender, int(row.age) >= 40)
        if key in seen and len(seen) < 12:
            continue
        img = load_image(root / row.image)
        try:
            pts = detect_landmarks68(img)
        except LandmarksError:
            continue
        seen.add(key)
        out.append((img, pts, f"{row.age} {row.gender} {row.race}"))
        if len(out) == n:
            break
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=6)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--n", type=int, default=400, help="renders timed for renders/s")
    ap.add_argument("--out", default="docs/img/renders.png")
    args = ap.parse_args()
    missing = missing_data("utkface")
    if missing:
        print(f"SKIP: {missing}")
        return 0
    cv2.setNumThreads(1)
    faces = pick_faces(args.faces)
    t, head = args.tile, 18
    sheet = Image.new("RGB", (t * len(COLUMNS), head + t * len(faces)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, (name, _) in enumerate(COLUMNS):
        draw.text((c * t + 4, 3), name, fill="black")
    for r, (img, pts, _label) in enumerate(faces):
        for c, (_name, opts) in enumerate(COLUMNS):
            opts = dict(opts)
            lm = five_from_68(pts) if opts.pop("five", False) else pts
            out = render(img, lm, seed=100 * r + c, **opts)
            tile = Image.fromarray(out).resize((t, t), Image.LANCZOS)
            sheet.paste(tile, (c * t, head + r * t))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out}: {len(faces)} faces x {len(COLUMNS)} columns, "
          f"{Path(args.out).stat().st_size / 1e6:.2f} MB")

    # speed: random specs (mixed kinds / wear / accessories), landmarks precomputed
    sampler = MaskRenderer(accessory_prob=0.2, seed=1)
    render(faces[0][0], faces[0][1])  # warm-up
    t0 = time.perf_counter()
    for i in range(args.n):
        img, pts, _ = faces[i % len(faces)]
        sampler(img, pts, index=i)
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    for img, _, _ in faces:
        detect_landmarks68(img)
    dl = (time.perf_counter() - t1) / len(faces)
    h, w = faces[0][0].shape[:2]
    print(f"renders/s: {args.n / dt:.0f} ({w}x{h} faces, mixed specs, 1 thread; "
          f"{1000 * dt / args.n:.2f} ms each)")
    print(f"dlib 68 landmarks: {1000 * dl:.1f} ms per face (HOG detector + shape predictor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
