"""dlib's face ResNet: dlib's C++ network vs the PyTorch port vs ONNX Runtime, side by side.

The same batch of aligned 150x150 chips (real UTKFace faces through dlib's 5-point
alignment when FACELAB_DATA holds utkface, else synthetic) goes through

* dlib: ``face_recognition_model_v1.compute_face_descriptor(list_of_chips)`` (C++, CPU);
* torch: ``facelab.embed.dlib_torch`` port, eager, channels-last, one forward per batch;
* onnx: the port exported to ONNX, ONNX Runtime CPU;

and prints faces/s (best of --repeats timed passes after a warm-up) and the parity of each
backend with dlib (minimum cosine similarity, max absolute difference).

    python benchmarks/dlib_torch_speed.py [--chips 64] [--repeats 3] [--threads 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np


def real_chips(n: int) -> np.ndarray | None:
    from facelab.embed.dlib_resnet import DlibEmbedConfig, DlibResNetEmbedder
    from facelab.io.image import load_image
    from facelab.paths import data_root, missing_data
    from facelab.types import Face

    if missing_data("utkface"):
        return None
    paths = sorted((data_root() / "utkface" / "images").iterdir())
    step = max(1, len(paths) // n)
    emb = DlibResNetEmbedder(DlibEmbedConfig(net="dlib"))
    out = []
    for p in paths[::step][:n]:
        img = load_image(p)
        h, w = img.shape[:2]
        out += emb.chips(img, [Face((w * 0.12, h * 0.12, w * 0.88, h * 0.88))])
    return np.stack(out)


def synthetic_chips(n: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (n, 150, 150, 3), dtype=np.uint8)
    return np.stack([cv2.GaussianBlur(c, (0, 0), 2.0) for c in noise])


def timed(fn, chips: np.ndarray, repeats: int) -> tuple[np.ndarray, float]:
    fn(chips[:4])  # warm-up (allocations, lazy init)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(chips)
        best = min(best, time.perf_counter() - t0)
    return np.asarray(out, np.float32), len(chips) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch/ORT threads (0: their default)")
    args = ap.parse_args()

    import dlib
    import torch

    from facelab.embed import dlib_torch
    from facelab.embed.weights import dlib_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    chips = real_chips(args.chips)
    source = "UTKFace (dlib 5-point chips)" if chips is not None else "synthetic (smoothed noise)"
    if chips is None:
        chips = synthetic_chips(args.chips)

    net = dlib.face_recognition_model_v1(str(dlib_model_path("resnet")))
    t0 = time.perf_counter()
    port = dlib_torch.TorchDescriptor(batch=len(chips))
    t_build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = dlib_torch.export_onnx(Path(tmp) / "dlib_resnet.onnx", model=port.model)
        t_export = time.perf_counter() - t0
        onnx = dlib_torch.OnnxDescriptor(batch=len(chips), path=path)
        if args.threads:
            onnx.session = dlib_torch.onnx_session(path, threads=args.threads)
        backends = {
            "dlib (C++)": lambda c: net.compute_face_descriptor(list(c), 0),
            "torch eager channels-last": port,
            "onnxruntime": onnx,
        }
        results = {name: timed(fn, chips, args.repeats) for name, fn in backends.items()}

    ref = results["dlib (C++)"][0]
    print(f"chips: {len(chips)} x 150x150 RGB, {source}; CPU cores {os.cpu_count()}, "
          f"torch threads {torch.get_num_threads()}, dlib {dlib.__version__}, "
          f"torch {torch.__version__}")
    print(f"port build (cached weights) {t_build:.1f}s, ONNX export {t_export:.1f}s")
    print(f"{'backend':28s} {'faces/s':>9s} {'x dlib':>7s} {'min cos vs dlib':>16s} "
          f"{'max |diff|':>11s}")
    base = results["dlib (C++)"][1]
    for name, (vecs, rate) in results.items():
        cos = (vecs * ref).sum(1) / np.linalg.norm(vecs, axis=1) / np.linalg.norm(ref, axis=1)
        print(f"{name:28s} {rate:9.1f} {rate / base:7.2f} {cos.min():16.7f} "
              f"{np.abs(vecs - ref).max():11.2e}")


if __name__ == "__main__":
    main()
