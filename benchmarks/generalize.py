"""Faces the model has never seen: leave-one-race-out, another framing, rendered to real.

Prints, side by side in one run, for the main job's config, the candidate config and the
plain single-task fine-tune (every layer, 3 epochs; benchmarks/plain_baseline.py):

- population shift: UTKFace leave-one-race-out. For each race, models train without any
  face of that race and are scored on all of its faces: gender accuracy and age-group
  macro F1, each with a 95% bootstrap interval;
- framing shift: mask state on rmfd-masked-faces (close-up photos of another source and
  population: masked -> "correct", unmasked -> "none"), macro F1 over those two classes,
  for models that never saw RMFD;
- rendered to real: the real "incorrect" class (and mask macro F1) on the face-mask
  crops of the main job's test split, for every config (the candidate also trains on
  rendered masks).

Multi-task configs train one model per held-out race and that model gives all the figures
(mask figures: the mean over the race models, the interval from resampling test images
with all models scored on each resample). The plain fine-tune trains one gender and one age
model per race and one mask model.

Configs (a priori, chosen from the evidence in issue 14, not tuned on these figures):

- ``main-job``: configs/multitask.yaml as is (4 blocks frozen, 8 epochs, face-mask crops +
  UTKFace).
- ``candidate``: the same with every layer trained (the one thing the plain fine-tune that
  generalised better does differently), 5 epochs (to stay inside the main job's 15 minutes),
  and UTKFace replaced by a masked copy (``facelab make-masked``: each face keeps its photo
  or gets a rendered correct/incorrect mask, seeded), so the mask head also learns on
  close-up faces of UTKFace's framing and gender/age are learned on masked faces too.
- ``plain``: benchmarks/plain_baseline.py's recipe.
- one lever at a time (the candidate changes three things at once): ``unfrozen`` is the main
  job with every layer trained (``model.freeze=0``, still 8 epochs, photos); ``masked`` is
  the main job (4 blocks frozen, 8 epochs) on UTKFace's masked copy; ``masked-nose`` the
  same with every incorrect render below the nose (what the real class mostly is);
  ``masked-nose-balanced`` that with ``sampler=source_balanced`` (the crowd crops and the
  masked close-ups draw the same share of each epoch, so the close-ups cannot drown the
  crowd crops' framing).

``--detect-crop`` (a lever for every config of the invocation): UTKFace's photos (training
and held-out faces) and RMFD's photos are cropped by the default detector
(``ssd-mbv2-onnx>center``, the data's margin 0.2), as a deployment crop is, instead of used
whole; the face-mask crops keep their annotated boxes (which that detector was trained to
reproduce). The seeds' crop-before-train trick: every source framed alike at train and test
time. It changes the data config, so give it an ``--out`` of its own. Configs that train on
a masked copy of UTKFace (rendered whole photos) are refused with it.

Splits: the face-mask crops keep the main job's person-level split (train/val train,
test scores). UTKFace rows are split by position (the same faces in the photo and the
masked copy): 10% validation (choosing the epoch where the config does), the rest training,
optionally subsampled (``--utk-train N``, the same faces for every config). RMFD is never
trained on.

    FACELAB_DATA=../shared/data python benchmarks/generalize.py [--races asian black] [--detect-crop]
        [--configs main-job candidate plain] [--utk-train 2000] [--out runs/generalize]

The run resumes: finished fits and their predictions are reused from --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

from facelab.data.formats import SourceSpec, load_sources  # noqa: E402
from facelab.data.labels import MISSING, TASKS  # noqa: E402
from facelab.detect.base import DEFAULT_DETECTOR  # noqa: E402
from facelab.data.prepare import assign_splits  # noqa: E402
from facelab.paths import cache_root, data_root, missing_data  # noqa: E402
from facelab.predict.run import AttributeRun  # noqa: E402
from facelab.train.config import check_resumable, load_config  # noqa: E402
from facelab.train.trainer import fit, prepare_for  # noqa: E402
from plain_baseline import PLAIN  # noqa: E402

RACES = ("white", "black", "asian", "indian", "others")
MASK_SRC, UTK_SRC, MASKED_SRC, RMFD_SRC = "face-mask-detection", "utkface", "utkface-masked", "rmfd"
NOSE_SRC = "utkface-masked-nose"
DETECTOR = f"{DEFAULT_DETECTOR}>center"  # --detect-crop: the deployment detector, centre fallback
# the real "incorrect" crops are almost all masks below the nose (docs/masks.md's renderer
# check), while "incorrect" renders are a third each below the nose, mouth uncovered, on chin
NOSE_WEARS = {"correct": 0.35, "below_nose": 0.15, "none": 0.5}
CANDIDATE = ["model.freeze=0", "epochs=5"]
CONFIGS = ("main-job", "candidate", "plain", "plain-multitask", "unfrozen", "masked", "masked-nose",
           "masked-nose-balanced")
AIMS = {"gender": 0.90, "age": 0.75, "rmfd": 0.97, "incorrect": 0.85}


def rmfd_labels(out: Path) -> Path:
    """RMFD as a labels CSV: masked -> correct, unmasked -> none, person = identity."""
    ids = pd.read_csv(data_root() / "rmfd-masked-faces" / "identities.csv")
    df = pd.DataFrame({"image": ids["image"],
                       "mask": np.where(ids["masked"].astype(int) == 1, "correct", "none"),
                       "person": ids["identity"]})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rmfd_labels.csv"
    df.to_csv(path, index=False)
    return path


def masked_utkface(seed: int) -> Path:
    from facelab.masks.masked_set import build_masked_set

    out = cache_root() / "masked-sets" / f"utkface-s{seed}"
    rep = build_masked_set(data_root() / "utkface" / "labels.csv", out, seed=seed)
    print(f"masked UTKFace: {rep.rows} faces {rep.counts} ({rep.written} rendered now, "
          f"{rep.unrendered} without landmarks kept as 'none') -> {out}", flush=True)
    return out / "labels.csv"


def masked_utkface_nose(seed: int) -> Path:
    """UTKFace's masked copy with every incorrect render below the nose (the render_masks
    source switch's cache, facelab.data.render_masks.masked_copy)."""
    from facelab.data.render_masks import masked_copy

    spec = SourceSpec("labels", str(data_root() / "utkface" / "labels.csv"), UTK_SRC,
                      render_masks={"seed": seed, "wear": NOSE_WEARS})
    return masked_copy(spec)


def position_plan(n: int, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """UTKFace positions: a fixed 10% validation set and a fixed training order."""
    rng = np.random.default_rng(20240601)
    val = rng.random(n) < 0.1
    order = rng.permutation(n)  # training faces are taken in this order (nested subsets)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return val, rank


def loro_split(data, race: str, train_src: str, n_train: int) -> np.ndarray:
    """Rows' split for one held-out race (see the module docstring)."""
    table = data.table
    src = table["source"].to_numpy()
    split = np.full(len(table), "unused", dtype=object)
    mask_rows = src == MASK_SRC
    split[mask_rows] = data.split[mask_rows]
    split[src == RMFD_SRC] = "test"
    utk = np.flatnonzero(src == UTK_SRC)
    races = table["race"].to_numpy()[utk]
    held = races == race
    split[utk[held]] = "test"
    rows = np.flatnonzero(src == train_src)
    assert len(rows) == len(utk), "the masked copy must list UTKFace's faces in order"
    val, rank = position_plan(len(utk), n_train)
    free = ~held & ~val
    if n_train:
        keep = np.zeros(len(utk), bool)
        keep[np.flatnonzero(free)[np.argsort(rank[free])[:n_train]]] = True
    else:
        keep = free
    split[rows[~held & val]] = "val"
    split[rows[keep]] = "train"
    return split


def main_job_split(data, config: str) -> np.ndarray:
    """The face-mask crops' split exactly as the main job draws it (its split is stratified
    over all of its rows, so adding sources here would move crops across it)."""
    cfg = load_config(config)
    table = load_sources(cfg.data.sources)
    split = assign_splits(table, cfg.data.test_fraction, cfg.data.val_fraction,
                          cfg.data.split_seed, cfg.data.age_scheme())
    mine = data.split.copy()
    rows = np.flatnonzero(data.table["source"].to_numpy() == MASK_SRC)
    theirs = np.flatnonzero(table["source"].to_numpy() == MASK_SRC)
    assert (data.table["sample_id"].to_numpy()[rows] == table["sample_id"].to_numpy()[theirs]).all()
    mine[rows] = split[theirs]
    return mine


def with_split(data, split: np.ndarray, task: str | None = None):
    """A shallow copy of the prepared data with another split (and, for a single-task
    model, only that task's labels: validation rows join training, as the plain script)."""
    one = copy.copy(data)
    one.split = split
    one.train_ok = data.train_ok.copy()
    if task is not None:
        one.split = np.where(split == "val", "train", split)
        one.train_ok = one.train_ok & (data.targets[task] != MISSING)
        one.targets = {t: (v if t == task else np.full_like(v, MISSING))
                       for t, v in data.targets.items()}
    return one


def train_and_predict(cfg, data, out: Path, eval_idx: np.ndarray, last: bool) -> dict:
    """Fit (resumable) and return {task: probs} on eval_idx, cached in out/probs.npz."""
    cached = out / "probs.npz"
    if (out / "config.yaml").is_file():  # a folder of another config is refused, not reused
        check_resumable(out / "config.yaml", cfg)
    if cached.is_file():
        z = np.load(cached)
        if np.array_equal(z["idx"], eval_idx):
            return {t: z[t] for t in TASKS} | {"_ips": float(z["ips"]), "_wall": float(z["wall"])}
    t0 = time.perf_counter()
    result = fit(cfg, out, resume=True, data=data)
    run = AttributeRun.load(out / ("last.pt" if last else "best.pt"))
    probs = run.predict_pixels(data.cache.pixels, eval_idx)
    wall = time.perf_counter() - t0
    np.savez(cached, idx=eval_idx, ips=result.train_images_per_s, wall=wall, **probs)
    return probs | {"_ips": result.train_images_per_s, "_wall": wall}


def boot_ci(stat, n_items: int, n: int, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    vals = [stat(rng.integers(0, n_items, n_items)) for _ in range(n)]
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def figure(y: np.ndarray, preds: list[np.ndarray], metric, n_boot: int) -> dict:
    """metric averaged over models, with a bootstrap interval over the test items."""
    value = float(np.mean([metric(y, p) for p in preds]))
    lo, hi = boot_ci(lambda i: np.mean([metric(y[i], p[i]) for p in preds]), len(y), n_boot)
    return {"value": value, "lo": lo, "hi": hi, "n": int(len(y))}


def acc(y, p):
    return float((y == p).mean())


def macro3(y, p):
    return float(f1_score(y, p, labels=[0, 1, 2], average="macro", zero_division=0))


def rmfd_f1(y, p):
    return float(f1_score(y, p, labels=[0, 2], average="macro", zero_division=0))


def incorrect_f1(y, p):
    return float(f1_score(y, p, labels=[1], average="macro", zero_division=0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--config", default=str(ROOT / "configs" / "multitask.yaml"))
    ap.add_argument("--races", nargs="+", default=list(RACES), choices=RACES)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS[:3]), choices=CONFIGS)
    ap.add_argument("--utk-train", type=int, default=0,
                    help="UTKFace training faces per held-out race (0: all that are not held out)")
    ap.add_argument("--render-seed", type=int, default=0)
    ap.add_argument("--detect-crop", action="store_true",
                    help=f"crop UTKFace's and RMFD's photos with {DETECTOR} (train and test)")
    ap.add_argument("--seed", type=int, default=0, help="training seed of every fit")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "runs" / "generalize"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override for every config (smoke tests, e.g. --set epochs=1)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    missing = missing_data("face-mask-detection", "utkface", "rmfd-masked-faces")
    if missing:
        print(f"SKIP: {missing}")
        return 0
    masked_trained = [c for c in args.configs if c in ("candidate", "plain-multitask") or c.startswith("masked")]
    if args.detect_crop and masked_trained:
        print(f"--detect-crop crops UTKFace's and RMFD's photos only; {masked_trained} train on the "
              "masked copy's whole photos, so they would not be framed alike: run them without it")
        return 2
    out = Path(args.out)
    t_start = time.perf_counter()
    base = load_config(args.config, [f"seed={args.seed}", *args.set])
    mask_spec = next(s for s in base.data.sources if s.kind == "boxes")
    photo_crop = "detect" if args.detect_crop else "auto"
    if args.detect_crop:
        base.data.detector = DETECTOR
    base.data.sources = [
        mask_spec,
        SourceSpec("labels", str(data_root() / "utkface" / "labels.csv"), UTK_SRC, crop=photo_crop),
        SourceSpec("labels", str(masked_utkface(args.render_seed)), MASKED_SRC),
        SourceSpec("labels", str(rmfd_labels(out)), RMFD_SRC,
                   image_root=str(data_root() / "rmfd-masked-faces"), crop=photo_crop),
    ]
    if any(c.startswith("masked-nose") for c in args.configs):
        base.data.sources.append(SourceSpec("labels", str(masked_utkface_nose(args.render_seed)), NOSE_SRC))
    data = prepare_for(base)
    data.split = main_job_split(data, args.config)
    table = data.table
    src = table["source"].to_numpy()
    ok = data.cache.ok
    configs = {
        "main-job": (base, UTK_SRC),
        "candidate": (load_config(args.config, [f"seed={args.seed}", *CANDIDATE, *args.set]), MASKED_SRC),
        "plain": (load_config(args.config, [f"seed={args.seed}", *PLAIN, *args.set]), UTK_SRC),
        # the plain recipe (CE, 3 epochs, last epoch) as one multi-task model on the masked copy
        "plain-multitask": (load_config(args.config, [f"seed={args.seed}", *PLAIN, *args.set]),
                            MASKED_SRC),
        # one lever at a time (the candidate changes three things together):
        "unfrozen": (load_config(args.config, [f"seed={args.seed}", "model.freeze=0", *args.set]), UTK_SRC),
        "masked": (base, MASKED_SRC),
        "masked-nose": (base, NOSE_SRC),
        "masked-nose-balanced": (load_config(args.config, [f"seed={args.seed}", "sampler=source_balanced",
                                                           *args.set]), NOSE_SRC),
    }
    for cfg, _ in configs.values():
        cfg.data = base.data
    rows: dict[str, dict] = {}
    timing: dict[str, list] = {c: [] for c in args.configs}
    mask_preds: dict[str, list[np.ndarray]] = {c: [] for c in args.configs}
    rmfd_preds: dict[str, list[np.ndarray]] = {c: [] for c in args.configs}
    mask_idx = rmfd_idx = None
    for race in args.races:
        for name in args.configs:
            cfg, train_src = configs[name]
            split = loro_split(data, race, train_src, args.utk_train)
            race_idx = np.flatnonzero((src == UTK_SRC) & (split == "test") & ok)
            mask_idx = np.flatnonzero((src == MASK_SRC) & (split == "test") & ok)
            rmfd_idx = np.flatnonzero((src == RMFD_SRC) & ok)
            eval_idx = np.concatenate([race_idx, mask_idx, rmfd_idx])
            n_race, n_mask = len(race_idx), len(mask_idx)
            if name == "plain":
                probs = {}
                for task in ("gender", "age"):
                    p = train_and_predict(cfg, with_split(data, split, task),
                                          out / name / race / task, eval_idx, last=True)
                    probs[task] = p[task]
                    timing[name].append((f"{race}/{task}", p["_ips"], p["_wall"]))
                if not mask_preds[name]:  # the plain mask model does not depend on the race
                    p = train_and_predict(cfg, with_split(data, split, "mask"), out / name / "mask",
                                          eval_idx, last=True)
                    timing[name].append(("mask", p["_ips"], p["_wall"]))
                    mask_preds[name].append(p["mask"][n_race:n_race + n_mask].argmax(1))
                    rmfd_preds[name].append(p["mask"][n_race + n_mask:].argmax(1))
            else:
                probs = train_and_predict(cfg, with_split(data, split), out / name / race,
                                          eval_idx, last=name == "plain-multitask")
                timing[name].append((race, probs["_ips"], probs["_wall"]))
                mask_preds[name].append(probs["mask"][n_race:n_race + n_mask].argmax(1))
                rmfd_preds[name].append(probs["mask"][n_race + n_mask:].argmax(1))
            for task, metric in (("gender", acc), ("age", macro3)):
                y = data.targets[task][race_idx]
                known = y != MISSING
                pred = probs[task][:n_race].argmax(1)
                rows.setdefault(f"{task} held-out {race}", {})[name] = figure(
                    y[known], [pred[known]], metric, args.n_boot)
            print(json.dumps({"race": race, "config": name,
                              "gender": rows[f"gender held-out {race}"][name]["value"],
                              "age": rows[f"age held-out {race}"][name]["value"],
                              "test faces": n_race}), flush=True)
    y_mask = data.targets["mask"][mask_idx]
    y_rmfd = data.targets["mask"][rmfd_idx]
    for name in args.configs:
        rows.setdefault("RMFD mask-state F1 (correct/none)", {})[name] = figure(
            y_rmfd, rmfd_preds[name], rmfd_f1, args.n_boot)
        rows.setdefault("real 'incorrect' F1 (mask test crops)", {})[name] = figure(
            y_mask, mask_preds[name], incorrect_f1, args.n_boot)
        rows.setdefault("mask macro F1 (mask test crops)", {})[name] = figure(
            y_mask, mask_preds[name], macro3, args.n_boot)
    aims = {k: next((v for a, v in AIMS.items() if k.startswith(a) or a in k.lower()), None) for k in rows}
    aims["mask macro F1 (mask test crops)"] = None
    table_rows = []
    for key, per in rows.items():
        rec = {"figure": key}
        for name in args.configs:
            f = per.get(name)
            rec[name] = f"{f['value']:.3f} [{f['lo']:.3f}, {f['hi']:.3f}]" if f else "-"
        rec["aim"] = f">= {aims[key]:.2f}" if aims.get(key) else ""
        if "candidate" in per and "plain" in per:
            rec["candidate - plain"] = f"{per['candidate']['value'] - per['plain']['value']:+.3f}"
        table_rows.append(rec)
    report = pd.DataFrame(table_rows)
    print(f"\nGeneralization (held-out races: {', '.join(args.races)}; UTKFace training faces per "
          f"race: {args.utk_train or 'all'}; seed {args.seed}; {args.n_boot} bootstrap resamples; "
          f"{len(mask_idx)} mask test crops, {int((y_mask == 1).sum())} 'incorrect'; "
          f"{len(rmfd_idx)} RMFD photos{'; photos cropped by ' + DETECTOR if args.detect_crop else ''})")
    print(report.to_string(index=False))
    print("\ntraining images/s and wall s per fit:")
    for name, items in timing.items():
        print(f"  {name}: " + ", ".join(f"{k} {ips:.0f}/s {w:.0f}s" for k, ips, w in items))
    print(f"total wall {time.perf_counter() - t_start:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    report.to_csv(out / "table.csv", index=False)
    (out / "figures.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
