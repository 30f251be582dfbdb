"""Face tracks over a video made of a real photo: `facelab analyze VIDEO --tracks` checked
against the photo's annotated faces (issue 16, item 5).

No clip here shows faces large enough to analyse (GMDCSA24 / UP-Fall film whole bodies from
afar), so the video is a slow camera pan over one real face-mask-detection photo (several
people, mask labels per face): the photo is scaled x2 and a window of 80% of it slides
left to right over --seconds at 10 fps, written with PyAV (H.264). The annotated boxes move
with the window, so every sampled frame has ground truth. The run's per-track CSV is printed
with, for each track, the annotated face it overlaps most (IoU at the track's middle frame)
and that face's mask label. Caveat: the attribute run may have been trained on this data
set's training images, and this photo may be one of them.

    FACELAB_DATA=../shared/data .venv/bin/python benchmarks/video_tracks.py --run runs/main \\
        [--image images/maksssksksss83.jpg] [--out /tmp/video_tracks]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import av
import numpy as np
import pandas as pd
from PIL import Image

from facelab.detect.evaluate import iou_matrix
from facelab.paths import dataset_dir, missing_data

FPS = 10


def pan_video(image: Path, out: Path, seconds: float) -> tuple[int, int, int]:
    """Write the pan; returns (x offset per frame numerator span, window width, y offset)."""
    img = Image.open(image).convert("RGB")
    big = np.asarray(img.resize((img.width * 2, img.height * 2), Image.BICUBIC))
    h, w = big.shape[:2]
    ww, wh = int(0.8 * w) // 2 * 2, int(0.8 * h) // 2 * 2
    y0, span = (h - wh) // 2, w - ww
    n = int(seconds * FPS)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = ww, wh, "yuv420p"
        for i in range(n):
            x0 = round(span * i / max(n - 1, 1))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(big[y0:y0 + wh, x0:x0 + ww]),
                                               format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return span, n, y0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="attribute run folder (mask / gender / age)")
    ap.add_argument("--image", default="images/maksssksksss83.jpg",
                    help="a face-mask-detection image (relative to its folder)")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--every", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=Path("/tmp/video_tracks"))
    args = ap.parse_args()
    reason = missing_data("face-mask-detection")
    if reason:
        print(f"skipped: {reason}")
        return
    root = dataset_dir("face-mask-detection")
    args.out.mkdir(parents=True, exist_ok=True)
    video = args.out / "pan.mp4"
    span, n, y0 = pan_video(root / args.image, video, args.seconds)
    boxes = pd.read_csv(root / "boxes.csv")
    boxes = boxes[boxes["image"] == args.image].reset_index(drop=True)
    print(f"{video}: {n} frames at {FPS} fps from {args.image} ({len(boxes)} annotated faces: "
          f"{', '.join(boxes['label'])})")
    cmd = [sys.executable, "-m", "facelab", "analyze", str(video), "--run", args.run,
           "--every", str(args.every), "-o", str(args.out / "faces.csv"),
           "--tracks", str(args.out / "tracks.csv"), "--annotate", str(args.out / "annotated")]
    for stale in ("faces.csv", "tracks.csv"):
        (args.out / stale).unlink(missing_ok=True)
    print("$ facelab " + " ".join(cmd[3:]))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    print(r.stdout.strip() or r.stderr.strip())
    if r.returncode:
        sys.exit(r.stderr)
    tracks = pd.read_csv(args.out / "tracks.csv")
    gt_rows = []
    for t in tracks.itertuples():
        mid = (t.first_time + t.last_time) / 2
        x0 = span * round(mid * FPS) / max(n - 1, 1)
        gt = boxes[["x1", "y1", "x2", "y2"]].to_numpy(float) * 2 - [x0, y0, x0, y0]
        iou = iou_matrix(np.array([[t.x1, t.y1, t.x2, t.y2]]), gt)[0]
        j = int(iou.argmax())
        gt_rows.append((boxes["label"][j] if iou[j] > 0.3 else "(no annotated face)", float(iou[j])))
    tracks["annotated"] = [g for g, _ in gt_rows]
    tracks["iou"] = [round(v, 2) for _, v in gt_rows]
    cols = [c for c in ("track", "first_time", "last_time", "frames", "mask", "mask_share_correct",
                        "mask_share_incorrect", "mask_share_none", "gender", "age",
                        "annotated", "iou") if c in tracks]
    print(tracks[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"annotated video: {args.out / 'annotated'}")


if __name__ == "__main__":
    main()
