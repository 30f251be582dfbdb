"""The main job: one multi-task model for mask state, gender and age group, figures on a
fixed seeded person-level test split.

Trains MobileNetV2 (ImageNet weights from the offline package) jointly on face-mask-detection
crops (mask state) and UTKFace (gender, age group), selects the epoch on a validation split,
and reports on a held-out test split that neither training nor selection saw.

    FACELAB_DATA=../shared/data python benchmarks/attributes.py [--set key=value ...]
        [--seeds 0 1 2]   # one model per training seed, then mean +- sd

Prints mask macro F1 (and the rare "incorrect" class F1), gender accuracy, age-group macro
F1, training images/s and wall time, then where the report is. With `calibrate` on (the main
config), the figures use decision biases tuned on the validation split, and the plain-argmax
figures are printed beside them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

from facelab.evaluate.report import evaluate_run  # noqa: E402
from facelab.paths import missing_data  # noqa: E402
from facelab.train.config import load_config  # noqa: E402
from facelab.train.trainer import fit  # noqa: E402

# The bar: a plain single-task script (ImageNet MobileNetV2, 3-epoch fine-tune at 128px, CE).
BASELINE = {"mask_f1": 0.88, "incorrect_f1": 0.71, "gender_acc": 0.90, "age_f1": 0.83}


def bootstrap_ci(predictions: Path, n: int = 1000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% bootstrap intervals of the four figures (test images resampled with replacement):
    with ~20 "incorrect" faces in the test split, one face moves that F1 by ~0.03."""
    df = pd.read_csv(predictions)
    rng = np.random.default_rng(seed)
    figures = {
        "mask_f1": ("mask", lambda y, p: f1_score(y, p, labels=[0, 1, 2], average="macro", zero_division=0)),
        "incorrect_f1": ("mask", lambda y, p: f1_score(y, p, labels=[1], average="macro", zero_division=0)),
        "gender_acc": ("gender", lambda y, p: float((y == p).mean())),
        "age_f1": ("age", lambda y, p: f1_score(y, p, labels=[0, 1, 2], average="macro", zero_division=0)),
    }
    out = {}
    for key, (task, fn) in figures.items():
        rows = df[df[f"y_{task}"] >= 0]
        y, p = rows[f"y_{task}"].to_numpy(), rows[f"pred_{task}"].to_numpy()
        draws = [fn(y[i], p[i]) for i in (rng.integers(0, len(y), len(y)) for _ in range(n))]
        out[key] = (float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5)))
    return out


FIGURES = (("mask_f1", "mask-state macro F1"), ("incorrect_f1", '  "incorrect" class F1'),
           ("gender_acc", "gender accuracy"), ("age_f1", "age-group macro F1"))


def run_one(cfg, out: str, resume: bool) -> dict:
    """Train + evaluate one config; print its table; return its four figures and timings."""
    t0 = time.perf_counter()
    result = fit(cfg, out, resume=resume)
    metrics, report = evaluate_run(out, "test")
    wall = time.perf_counter() - t0
    got = {
        "mask_f1": metrics["mask"]["macro_f1"],
        "incorrect_f1": metrics["mask"]["per_class_f1"][1],
        "gender_acc": metrics["gender"]["accuracy"],
        "age_f1": metrics["age"]["macro_f1"],
    }
    print("\nfacelab multi-task model, person-level test split (seed "
          f"{cfg.data.split_seed}, {cfg.data.image_size}px, {cfg.model.backbone}, training seed {cfg.seed})")
    ci = bootstrap_ci(Path(out) / "eval_test" / "predictions.csv")
    print(f"{'figure':<28}{'facelab':>10}{'95% bootstrap CI':>20}{'plain baseline':>16}")
    for key, label in FIGURES:
        mark = "beats" if got[key] > BASELINE[key] else "BELOW"
        interval = f"{ci[key][0]:.3f}-{ci[key][1]:.3f}"
        print(f"{label:<28}{got[key]:>10.4f}{interval:>20}{BASELINE[key]:>16.2f}  {mark}")
    if "uncalibrated" in metrics:  # decision biases on: show plain argmax too
        raw = metrics["uncalibrated"]
        print("without decision biases (plain argmax): "
              f"mask F1 {raw['mask']['macro_f1']:.4f}, \"incorrect\" F1 {raw['mask']['per_class_f1'][1]:.4f}, "
              f"gender acc {raw['gender']['accuracy']:.4f}, age F1 {raw['age']['macro_f1']:.4f}")
        cal = json.loads((Path(out) / "calibration.json").read_text())
        print("decision biases (chosen on validation): " + "; ".join(
            f"{t} {'used ' + str(v['bias']) if v['used'] else 'not used'} ({v['reason']})" for t, v in cal.items()))
    print(f"{'training images/s':<28}{result.train_images_per_s:>10.1f}")
    print(f"{'epochs run (best)':<28}{len(result.history):>10d} ({result.best_epoch})")
    print(f"{'wall time (s)':<28}{wall:>10.0f}")
    print(f"report: {report}", flush=True)
    trained = result.train_images_per_s > 0  # 0 when a finished run was only re-evaluated
    return got | {"images_per_s": result.train_images_per_s if trained else float("nan"),
                  "wall_s": wall if trained else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "multitask.yaml"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "main"))
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="train one model per training seed (the split stays fixed) and print "
                         "mean +- sd; seed k > 0 goes to OUT_s<k>; finished seeds are reused")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    missing = missing_data("face-mask-detection", "utkface")
    if missing:
        print(f"SKIP: {missing}")
        return 0
    if not args.seeds:
        run_one(load_config(args.config, args.set), args.out, args.resume)
        return 0
    rows = []
    for seed in args.seeds:
        out = args.out if seed == 0 else f"{args.out}_s{seed}"
        cfg = load_config(args.config, [*args.set, f"seed={seed}"])
        done = (Path(out) / "eval_test" / "metrics.json").is_file()
        rows.append({"seed": seed} | run_one(cfg, out, resume=args.resume or done))
    table = pd.DataFrame(rows)
    print(f"\nover training seeds {args.seeds} (split seed fixed):")
    print(table.round(4).to_string(index=False))
    for key, label in (*FIGURES, ("wall_s", "wall time (s)")):
        print(f"{label.strip():<28}{table[key].mean():>10.4f} +- {table[key].std(ddof=1):.4f} (sd)"
              + (" (runs trained now only)" if key == "wall_s" and table[key].isna().any() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
