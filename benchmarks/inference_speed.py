"""Inference speed of a trained attribute run, side by side in one process on this CPU.

    FACELAB_DATA=../shared/data python benchmarks/inference_speed.py [--run runs/main]

Run `scripts/main.sh` first (it writes runs/main). Prints four tables:

1. The model alone at its input size (128 px for the main job), batch 64, forward only, on
   test-split crops: PyTorch eager (NCHW), PyTorch channels-last, ONNX Runtime fp32 and ONNX
   Runtime int8 (static QDQ quantization calibrated on training-split crops).
2. Test-split macro F1 per task of fp32 and int8 (same TTA and decision biases as the run).
3. `predict` end to end on a folder of UTKFace photos from a cold pixel cache (decode + crop
   + model, flip TTA on), PyTorch vs ONNX Runtime int8.
4. `analyze` end to end (decode + detect + attributes + embedding) on face-mask-detection
   scenes (the detector's image-hash test split) and on UTKFace photos, against the
   face_recognition recipe (dlib HOG detector + landmarks + dlib ResNet embedding, one
   forward per face), with detection recall at IoU 0.5 on the scenes and per-stage seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from facelab.data.labels import TASKS  # noqa: E402
from facelab.paths import dataset_dir, missing_data  # noqa: E402
from facelab.predict.backends import OnnxBackend, TorchBackend  # noqa: E402
from facelab.predict.calibrate import macro_f1  # noqa: E402
from facelab.predict.export import export_onnx, quantize_int8  # noqa: E402
from facelab.predict.run import AttributeRun  # noqa: E402


def throughput(backend, pixels: np.ndarray, batch: int = 64, seconds: float = 8.0) -> float:
    """Images/s of forward passes over `pixels` in batches (one warm-up batch first)."""
    backend(pixels[:batch])
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i in range(0, len(pixels) - batch + 1, batch):
            backend(pixels[i : i + batch])
            n += batch
    return n / (time.perf_counter() - t0)


def model_table(run: AttributeRun, data, threads: int) -> tuple[pd.DataFrame, dict]:
    test = data.indices("test")
    pixels = np.ascontiguousarray(data.cache.pixels[test[:512]])
    train = data.indices("train")
    calib = data.cache.pixels[train[np.linspace(0, len(train) - 1, 512).astype(int)]]
    fp32 = export_onnx(run)
    int8 = quantize_int8(run, calib, fp32=fp32)
    eager = run.model_config.build(pretrained="")
    eager.load_state_dict(run.checkpoint["model"])
    from facelab.models.preprocess import add_eval_center_crop

    eager = add_eval_center_crop(eager, run.center_crop).eval()
    backends = {
        "PyTorch eager (NCHW)": TorchBackend(eager, channels_last=False),
        "PyTorch channels-last": TorchBackend(run.model, channels_last=True),
        "ONNX Runtime fp32": OnnxBackend(fp32, threads),
        "ONNX Runtime int8": OnnxBackend(int8, threads),
    }
    rows = [{"backend": k, "images/s": round(throughput(b, pixels), 1)} for k, b in backends.items()]
    return pd.DataFrame(rows), {"fp32": backends["ONNX Runtime fp32"],
                                "int8": backends["ONNX Runtime int8"]}


def f1_table(run: AttributeRun, data, onnx: dict) -> pd.DataFrame:
    from facelab.predict.backends import predict_batches

    idx = data.indices("test")
    rows = []
    for name, backend in onnx.items():
        probs = predict_batches(backend, data.cache.pixels, idx, 64, run.tta)
        if run.calibration is not None:
            probs = run.calibration.apply(probs)
        rec = {"model": name}
        for t in TASKS:
            y = data.targets[t][idx]
            known = y >= 0
            rec[f"{t} macro F1"] = round(macro_f1(y[known], probs[t][known].argmax(1), probs[t].shape[1]), 4)
        rows.append(rec)
    df = pd.DataFrame(rows)
    diff = {"model": "int8 - fp32", **{c: round(df[c].iloc[1] - df[c].iloc[0], 4) for c in df.columns[1:]}}
    return pd.concat([df, pd.DataFrame([diff])], ignore_index=True)


def predict_table_speed(run_dir: Path, photos: list[Path]) -> pd.DataFrame:
    from facelab.predict.predict import predict_table
    from facelab.predict.probs import prob_columns

    folder = Path(tempfile.mkdtemp(prefix="facelab-photos-"))
    for p in photos:
        os.symlink(p, folder / p.name)
    from facelab.predict.predict import folder_table

    table = folder_table(folder)
    rows, outs = [], {}
    for backend in ("torch", "onnx-int8"):
        cache = Path(tempfile.mkdtemp(prefix="facelab-cold-cache-"))
        os.environ["FACELAB_CACHE"] = str(cache)
        t0 = time.perf_counter()
        preds, bad = predict_table(run_dir, table, tta=True, backend=backend)
        wall = time.perf_counter() - t0
        outs[backend] = preds
        rows.append({"predict backend": backend, "photos": len(table), "seconds": round(wall, 1),
                     "images/s": round(len(table) / wall, 1), "unreadable": len(bad)})
        shutil.rmtree(cache, ignore_errors=True)
    agree = {t: float((outs["torch"][t] == outs["onnx-int8"][t]).mean()) for t in TASKS}
    cols = [c for t in TASKS for c in prob_columns(t)]
    gap = float(np.nanmax(np.abs(outs["torch"][cols].to_numpy() - outs["onnx-int8"][cols].to_numpy())))
    print(f"torch vs int8 predictions: label agreement {agree}, max |p difference| {gap:.3f}")
    shutil.rmtree(folder, ignore_errors=True)
    return pd.DataFrame(rows)


def scene_set(n: int):
    """(paths, {path: gt boxes}) of face-mask-detection scenes from the detector test split."""
    from facelab.detect.evaluate import read_boxes, split_images

    df = read_boxes(dataset_dir("face-mask-detection"))
    side = split_images(df["image"].unique())
    test = sorted(i for i, s in side.items() if s == "test")[:n]
    paths = [str(df.loc[df.image == i, "path"].iloc[0]) for i in test]
    gt = {p: df.loc[df.image == i, ["x1", "y1", "x2", "y2"]].to_numpy(float) for p, i in zip(paths, test)}
    return paths, gt


def analyze_speed(run_dir: Path, scenes: list[str], gt: dict, faces: list[str]) -> pd.DataFrame:
    from facelab.analyze import FaceAnalyzer
    from facelab.detect.evaluate import match
    from facelab.embed.base import get_embedder

    # face_recognition's face_encodings: dlib's C++ network on a 5-point chip, one forward
    # per face, no flip, no jitter
    recipe = get_embedder("dlib-resnet", net="dlib", flip=False)
    ours = get_embedder("dlib-resnet")  # facelab's default: the same network in ONNX Runtime,
    attrs = AttributeRun.load(run_dir, backend="onnx-int8")  # batched, with flip
    from facelab.detect.base import DEFAULT_DETECTOR

    pipelines = {
        f"facelab default: {DEFAULT_DETECTOR} + attributes (int8) + dlib network (ONNX, flip)":
            FaceAnalyzer(DEFAULT_DETECTOR, attrs, ours),
        f"facelab: {DEFAULT_DETECTOR} + attributes (int8), no embedding": FaceAnalyzer(DEFAULT_DETECTOR, attrs),
        "facelab: mtcnn + attributes (int8) + dlib network (ONNX, flip)": FaceAnalyzer("mtcnn", attrs, ours),
        "facelab: mtcnn + attributes (int8), no embedding": FaceAnalyzer("mtcnn", attrs),
        "face_recognition recipe: HOG + 5-point chip + dlib embedding": FaceAnalyzer("dlib-hog", None, recipe),
    }
    rows = []
    for name, fa in pipelines.items():
        fa.analyze(scenes[0])  # load models before timing
        for label, paths in (("mask scenes", scenes), ("UTKFace photos", faces)):
            fa.timings.clear()
            hits = total = 0
            t0 = time.perf_counter()
            for p in paths:
                found = fa.analyze(p)
                if p in gt:
                    det = np.array([f.face.box for f in found]).reshape(-1, 4)
                    g, _ = match(gt[p], det, np.array([f.face.score for f in found]))
                    hits, total = hits + int(g.sum()), total + len(g)
            wall = time.perf_counter() - t0
            rows.append({"pipeline": name, "images": label, "n": len(paths),
                         "images/s": round(len(paths) / wall, 2),
                         "recall@IoU0.5": round(hits / total, 3) if total else "",
                         **{f"{k} s": round(v, 1) for k, v in fa.timings.items()}})
    return pd.DataFrame(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "main"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--photos", type=int, default=1000, help="UTKFace photos for predict")
    ap.add_argument("--scenes", type=int, default=100, help="mask scenes for analyze")
    ap.add_argument("--faces", type=int, default=200, help="UTKFace photos for analyze")
    ap.add_argument("--sections", default="1234", help="which tables to print, e.g. 4")
    args = ap.parse_args()
    missing = missing_data("face-mask-detection", "utkface")
    if missing:
        print(f"SKIP: {missing}")
        return 0
    run_dir = Path(args.run)
    if not (run_dir / "best.pt").is_file():
        print(f"SKIP: {run_dir}/best.pt not found; run scripts/main.sh first")
        return 0
    torch.set_num_threads(args.threads)
    pd.set_option("display.width", 200)
    run = AttributeRun.load(run_dir, threads=args.threads)
    data = run.prepare_data()
    print(f"run {run_dir}: {run.model_config.backbone} {run.settings.size}px, TTA {run.tta}, "
          f"{args.threads} threads")
    if "1" in args.sections or "2" in args.sections:
        speed, onnx = model_table(run, data, args.threads)
        print("\n1. model forward, batch 64\n" + speed.to_string(index=False), flush=True)
        print("\n2. test split macro F1\n" + f1_table(run, data, onnx).to_string(index=False),
              flush=True)
    utk = sorted((dataset_dir("utkface") / "images").glob("*.jpg"))
    if "3" in args.sections:
        photos = [utk[i] for i in np.linspace(0, len(utk) - 1, args.photos).astype(int)]
        print("\n3. predict end to end, cold cache, flip TTA\n"
              + predict_table_speed(run_dir, photos).to_string(index=False), flush=True)
    if "4" in args.sections:
        if not (run_dir / "model.int8.onnx").is_file():
            print("section 4 needs runs/main/model.int8.onnx: run section 1 first")
            return 1
        scenes, gt = scene_set(args.scenes)
        faces = [str(utk[i]) for i in np.linspace(1, len(utk) - 2, args.faces).astype(int)]
        print("\n4. analyze end to end (one image at a time)\n"
              + analyze_speed(run_dir, scenes, gt, faces).to_string(index=False), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
