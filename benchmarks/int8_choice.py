"""Which layers stay in fp32 when the attribute model is quantized to int8, chosen on the
VALIDATION split of the main job (the test split is reported by inference_speed.py only).

    FACELAB_DATA=../shared/data python benchmarks/int8_choice.py [--run runs/main]

For each choice: agreement of int8 and fp32 predicted labels per task on validation
images, mean |probability difference|, and forward images/s (batch 64, 2 threads).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from inference_speed import throughput  # noqa: E402

from facelab.data.labels import TASKS  # noqa: E402
from facelab.predict.backends import OnnxBackend, predict_batches  # noqa: E402
from facelab.predict.export import export_onnx, quantize_int8  # noqa: E402
from facelab.predict.run import AttributeRun  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "main"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not (Path(args.run) / "best.pt").is_file():
        print(f"SKIP: {args.run}/best.pt not found; run scripts/main.sh first")
        return 0
    torch.set_num_threads(args.threads)
    run = AttributeRun.load(args.run, threads=args.threads)
    data = run.prepare_data()
    val, train = data.indices("val"), data.indices("train")
    calib = data.cache.pixels[train[np.linspace(0, len(train) - 1, 512).astype(int)]]
    fp32 = export_onnx(run, Path(args.run) / "model.onnx")
    ref = predict_batches(OnnxBackend(fp32, args.threads), data.cache.pixels, val, 64, run.tta)
    pixels = np.ascontiguousarray(data.cache.pixels[val[:512]])
    rows = []
    for convs in (0, 1, 3, 5, 8):
        q = quantize_int8(run, calib, Path(args.run) / f"choice.fp32conv{convs}.int8.onnx", fp32, convs)
        backend = OnnxBackend(q, args.threads)
        p = predict_batches(backend, data.cache.pixels, val, 64, run.tta)
        rows.append({"fp32 convolutions (+ heads)": convs,
                     **{f"{t} agreement": round(float((p[t].argmax(1) == ref[t].argmax(1)).mean()), 4)
                        for t in TASKS},
                     "mean |dp|": round(float(np.mean([np.abs(p[t] - ref[t]).mean() for t in TASKS])), 4),
                     "images/s": round(throughput(backend, pixels, seconds=5), 1)})
        q.unlink()
    print(f"{len(val)} validation images, int8 vs fp32 ONNX Runtime")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
