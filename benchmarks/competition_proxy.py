"""The seeds' 18-class competition task end to end, on a proxy built from UTKFace.

    FACELAB_DATA=../shared/data python benchmarks/competition_proxy.py [--people 1200]

1. `facelab make-competition`'s library call builds the competition layout from a seeded
   random sample of UTKFace faces: per person `mask1..5` (five correct-mask renders),
   `incorrect_mask` (one incorrect render) and `normal` (the photo); 20% of the people go to
   `eval/` (images under opaque names, `info.csv` with ans=0 as the competition hands it out,
   true ids in `answers.csv`).
2. `facelab train` on `train/` with the main job's settings (multi-task head, 128 px, freeze 4,
   focal + soft-F1) and `sampler: one_wear_per_person` (one of the five correct-mask photos per
   person per epoch, as the seeds did); validation persons choose the epoch.
3. `facelab predict --competition` writes `submission.csv` (ImageID,ans) for `eval/`.
4. The submission is scored against `answers.csv`: 18-class macro F1 (the competition's
   metric), per-task macro F1, and the same on the internal person-level test split.

Everything lands under --out (default $FACELAB_CACHE/competition-proxy); the build and the
training resume. Rendered masks, not real ones: this measures the pipeline and the task's
structure, not mask recognition on real photos.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from facelab.data.labels import TASKS  # noqa: E402
from facelab.paths import cache_root, dataset_dir, missing_data  # noqa: E402
from facelab.predict.calibrate import macro_f1  # noqa: E402

TRAIN_SETTINGS = ["data.image_size=128", "model.freeze=4", "epochs=5", "patience=2",
                  "sampler=one_wear_per_person", "data.test_fraction=0.15", "data.val_fraction=0.1",
                  "calibrate=false"]


def sample_labels(n: int, seed: int, out: Path) -> Path:
    """A seeded random sample of UTKFace's labels (its CSV is sorted by age)."""
    src = dataset_dir("utkface") / "labels.csv"
    df = pd.read_csv(src)
    df = df.sample(n=min(n, len(df)), random_state=seed).sort_index()
    df["image"] = [str((src.parent / p).resolve()) for p in df["image"]]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sample.csv"
    df.to_csv(path, index=False)
    return path


def decode18(ans: np.ndarray) -> dict[str, np.ndarray]:
    ans = np.asarray(ans, int)
    return {"mask": ans // 6, "gender": (ans // 3) % 2, "age": ans % 3}


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    out = {"18-class macro F1": macro_f1(y, p, 18)}
    ty, tp = decode18(y), decode18(p)
    for t, k in zip(TASKS, (3, 2, 3)):
        out[f"{t} macro F1"] = macro_f1(ty[t], tp[t], k)
    return {k: round(v, 4) for k, v in out.items()}


def facelab(*args: str) -> None:
    cmd = [sys.executable, "-m", "facelab", *args]
    print("$ facelab " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=1200, help="UTKFace faces sampled (people)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(cache_root() / "competition-proxy"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    missing = missing_data("utkface")
    if missing:
        print(f"SKIP: {missing}")
        return 0
    out = Path(args.out)
    comp = out / "layout"
    from facelab.masks.competition import build_competition

    t0 = time.perf_counter()
    report = build_competition(sample_labels(args.people, args.seed, out), comp, seed=args.seed)
    build_s = time.perf_counter() - t0
    print(f"layout {comp}: {report.train_people} train people, {report.eval_people} eval people, "
          f"{len(report.skipped)} skipped, built in {build_s:.0f} s", flush=True)
    run = out / "run"
    sets = [x for s in TRAIN_SETTINGS for x in ("--set", s)]
    main_cfg = ROOT / "configs" / "multitask.yaml"
    t1 = time.perf_counter()
    facelab("train", "-c", str(main_cfg), "-o", str(run), *sets,
            "--set", f"data.sources=[{{kind: competition, path: '{comp}'}}]")
    train_s = time.perf_counter() - t1
    facelab("evaluate", str(run))
    preds = out / "preds.csv"
    facelab("predict", str(run), "--competition", str(comp), "-o", str(preds))
    sub = pd.read_csv(preds.with_name("submission.csv"))
    answers = pd.read_csv(comp / "eval" / "answers.csv").set_index("ImageID")["ans"]
    y = answers.loc[sub["ImageID"]].to_numpy()
    held = scores(y, sub["ans"].to_numpy())
    internal = pd.read_csv(run / "eval_test" / "predictions.csv")
    known = (internal[[f"y_{t}" for t in TASKS]] >= 0).all(axis=1)
    yi = (internal["y_mask"] * 6 + internal["y_gender"] * 3 + internal["y_age"])[known].to_numpy()
    pi = (internal["pred_mask"] * 6 + internal["pred_gender"] * 3 + internal["pred_age"])[known].to_numpy()
    table = pd.DataFrame([{"split": f"eval/ ({len(sub)} images, submission.csv)", **held},
                          {"split": f"internal test ({int(known.sum())} images)", **scores(yi, pi)}])
    print(f"\n18-class competition proxy: {args.people} UTKFace people, seed {args.seed}, "
          f"train {train_s:.0f} s")
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
