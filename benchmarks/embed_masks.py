"""Mask-robust embeddings side by side: dlib vs the distilled students, in one run.

For each model (dlib's ResNet, and every student whose weights are found: the bundled
``src/facelab/weights/*_student.pt`` or ``--checkpoint KIND=PATH``) it prints:

* LFW dev folds 1-3: accuracy with leave-one-fold-out thresholds;
* the same LFW pairs with a rendered mask, or a rendered accessory, on the second image;
* RMFD masked vs unmasked (its 956 pairs, identity folds): accuracy and TAR@FAR 1%;
* RMFD unmasked vs unmasked (800 random balanced pairs): the ceiling;
* "both masked": the same masked-vs-clean pairs compared after a mask is rendered on the
  clean side too (a surgical mask, worn correctly, fixed seeds: one setting, fixed before the
  first run), so both embeddings lose the same part of the face: LFW+mask and RMFD masked vs
  unmasked, accuracy and TAR@FAR 1%. Which RMFD side wears a mask is taken from the file
  name (an oracle here; a deployment would ask a mask classifier);
* parameters, and network faces/s (flip TTA included, ONNX Runtime, 2 threads) on this CPU.

Every model gets the same chips: facelab's default pipeline (MTCNN box, central face,
fallback whole image; ``--detector`` for another, e.g. the analyzer's ssd-mbv2-onnx) then
dlib's 5-point chip, cached under $FACELAB_CACHE. Nothing here
chooses a setting: students were chosen on held-out lfw-train identities.

    OMP_NUM_THREADS=2 python benchmarks/embed_masks.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def detect_chips(paths: list[str], root: Path, cache: Path,
                 detector: str = "mtcnn") -> tuple[np.ndarray, np.ndarray]:
    """(chips, chip landmarks) for every image, cached."""
    if cache.is_file():
        z = np.load(cache)
        if list(z["paths"]) == paths:
            return z["chips"], z["landmarks"]
    from rich.progress import track

    from facelab.embed.chipset import ChipMaker
    from facelab.embed.dlib_resnet import DlibResNetEmbedder
    from facelab.embed.pipeline import FacePipeline, PipelineConfig
    from facelab.io.image import load_image

    pipe = FacePipeline(PipelineConfig(detector=detector, largest_only=True, select="central"),
                        embedder=object())  # type: ignore[arg-type]  (detection only)
    chipper = DlibResNetEmbedder()
    maker = ChipMaker()
    chips, lms = [], []
    for p in track(paths, description=f"chips {root.name}"):
        image = load_image(root / p)
        chip = chipper.chips(image, pipe.faces(image)[:1])[0]
        chips.append(chip)
        lms.append(maker.landmarks_on_chip(chip))
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, paths=np.array(paths), chips=np.stack(chips), landmarks=np.stack(lms))
    return np.stack(chips), np.stack(lms)


def rendered(chips: np.ndarray, lms: np.ndarray, spec_of) -> np.ndarray:
    """Each chip k rendered with ``spec_of(k)`` (a facelab.masks.RenderSpec)."""
    from facelab.masks import render_spec

    return np.stack([render_spec(c, lm, spec_of(k)) for k, (c, lm) in enumerate(zip(chips, lms))])


def occluded(chips: np.ndarray, lms: np.ndarray, what: str) -> np.ndarray:
    """Each chip with a deterministic rendered mask ("mask") or accessory ("accessory")."""
    from facelab.masks import MASK_KINDS, RenderSpec

    accessories = [("sunglasses",), ("eyeglasses", "cap"), ("scarf",), ("cap",), ("eyeglasses",)]
    if what == "mask":
        return rendered(chips, lms, lambda k: RenderSpec(MASK_KINDS[k % len(MASK_KINDS)], "correct", (), 1000 + k))
    return rendered(chips, lms, lambda k: RenderSpec("surgical", "none", accessories[k % len(accessories)], 2000 + k))


def masked_copies(chips: np.ndarray, lms: np.ndarray, seed0: int = 3000) -> np.ndarray:
    """Each chip with a surgical mask worn correctly (the "both masked" comparison)."""
    from facelab.masks import RenderSpec

    return rendered(chips, lms, lambda k: RenderSpec("surgical", "correct", (), seed0 + k))


def speed(emb, chips: np.ndarray, repeats: int = 3) -> float:
    emb.embed_chips(list(chips[:8]))
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        emb.embed_chips(list(chips))
        best = max(best, len(chips) / (time.perf_counter() - t))
    return best


def main() -> None:
    from facelab.distance import pairwise_distance
    from facelab.embed.dlib_resnet import DlibResNetEmbedder
    from facelab.embed.students import (
        EMBEDDER_NAME,
        STUDENTS,
        StudentEmbedder,
        bundled_weights,
        count_parameters,
        load_student,
    )
    from facelab.evaluate.verification import evaluate_distances, load_pairs
    from facelab.paths import cache_root, dataset_dir, missing_data

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", nargs="*", default=[], help="KIND=PATH (dlib, dlib-lite, mobilefacenet, mobilenetv2)")
    ap.add_argument("--speed-chips", type=int, default=256)
    ap.add_argument("--detector", default="mtcnn",
                    help="detector of the chips (facelab's verification default: mtcnn; the analyzer's: ssd-mbv2-onnx)")
    ap.add_argument("--embeddings-out", type=Path, default=None,
                    help="folder for <model>_lfw.npz (paths + vectors) for benchmarks/search_bench.py --lfw")
    args = ap.parse_args()
    for name in ("lfw", "rmfd-masked-faces"):
        if (why := missing_data(name)):
            print(f"SKIP: {why}")
            return
    lfw_root, rmfd_root = dataset_dir("lfw"), dataset_dir("rmfd-masked-faces")
    lfw = load_pairs(lfw_root / "pairs.csv")
    lfw = lfw[lfw["fold"].isin([1, 2, 3])].reset_index(drop=True)
    rmfd = load_pairs(rmfd_root / "pairs.csv")
    cache = cache_root() / "embed_masks"
    tag = ""
    if args.detector != "mtcnn":  # keyed on the detector's settings and weights, not only its name
        import hashlib
        import json

        from facelab.detect.cascade import detector_from_spec

        conf = json.dumps(detector_from_spec(args.detector).config(), sort_keys=True, default=str)
        tag = "_" + hashlib.sha1(conf.encode()).hexdigest()[:12]
    lfw_paths = sorted(set(lfw.image_a) | set(lfw.image_b))
    lfw_chips, lfw_lm = detect_chips(lfw_paths, lfw_root, cache / f"lfw_chips{tag}.npz", args.detector)
    ids = __import__("pandas").read_csv(rmfd_root / "identities.csv")
    rmfd_paths = sorted(set(rmfd.image_a) | set(rmfd.image_b) | set(ids.image))
    rmfd_chips, rmfd_lm = detect_chips(rmfd_paths, rmfd_root, cache / f"rmfd_chips{tag}.npz", args.detector)
    lfw_ix = {p: i for i, p in enumerate(lfw_paths)}
    rmfd_ix = {p: i for i, p in enumerate(rmfd_paths)}
    b_rows = sorted({lfw_ix[p] for p in lfw.image_b})
    views = {what: occluded(lfw_chips[b_rows], lfw_lm[b_rows], what) for what in ("mask", "accessory")}
    b_pos = {r: k for k, r in enumerate(b_rows)}
    a_rows = sorted({lfw_ix[p] for p in lfw.image_a})
    a_pos = {r: k for k, r in enumerate(a_rows)}
    lfw_a_masked = masked_copies(lfw_chips[a_rows], lfw_lm[a_rows])
    # RMFD: which side of a pair is masked (file name), and the clean chips with a mask drawn
    is_masked = np.array([Path(p).name.startswith("masked_") for p in rmfd_paths])
    clean_rows = np.flatnonzero(~is_masked)
    rmfd_clean_masked = masked_copies(rmfd_chips[clean_rows], rmfd_lm[clean_rows], seed0=4000)

    # RMFD unmasked vs unmasked: 400 genuine + 400 impostor random pairs (seed 0)
    path_id = {p: Path(p).parent.name for p in rmfd_paths}
    unmasked = [p for p in rmfd_paths if "unmasked_" in Path(p).name]
    rng = np.random.default_rng(0)
    a, b = rng.choice(len(unmasked), 20000), rng.choice(len(unmasked), 20000)
    a, b = a[a != b], b[a != b]
    same_u = np.array([path_id[unmasked[i]] == path_id[unmasked[j]] for i, j in zip(a, b)])
    sel = np.concatenate([np.flatnonzero(same_u)[:400], np.flatnonzero(~same_u)[:400]])
    ua, ub = [rmfd_ix[unmasked[i]] for i in a[sel]], [rmfd_ix[unmasked[j]] for j in b[sel]]

    models = {"dlib": DlibResNetEmbedder()}
    given = dict(c.split("=", 1) for c in args.checkpoint)
    for kind in STUDENTS:
        path = Path(given.get(kind, bundled_weights(kind)))
        if path.is_file():
            models[EMBEDDER_NAME[kind]] = StudentEmbedder(kind, path)
        else:
            print(f"(no {kind} student at {path}; train one with scripts/distill_students.py)")

    def dist(e, x, y):
        return pairwise_distance(x, y, e.metric)

    rows = []
    for name, emb in models.items():
        t0 = time.perf_counter()
        ev = emb.embed_chips(list(lfw_chips))
        if args.embeddings_out:
            args.embeddings_out.mkdir(parents=True, exist_ok=True)
            np.savez(args.embeddings_out / f"{name}_lfw.npz", paths=np.array(lfw_paths), vectors=ev)
        ia = np.array([lfw_ix[p] for p in lfw.image_a])
        ib = np.array([lfw_ix[p] for p in lfw.image_b])
        same, folds = lfw["same"].to_numpy(), lfw["fold"].to_numpy()
        r_lfw = evaluate_distances(dist(emb, ev[ia], ev[ib]), same, folds)
        occ, e_views = {}, {}
        for what, chips in views.items():
            e_views[what] = emb.embed_chips(list(chips))
            occ[what] = evaluate_distances(dist(emb, ev[ia], e_views[what][[b_pos[i] for i in ib]]), same, folds)
        er = emb.embed_chips(list(rmfd_chips))
        ra = np.array([rmfd_ix[p] for p in rmfd.image_a])
        rb = np.array([rmfd_ix[p] for p in rmfd.image_b])
        r_mask = evaluate_distances(dist(emb, er[ra], er[rb]), rmfd["same"].to_numpy(), rmfd["fold"].to_numpy())
        r_unm = evaluate_distances(dist(emb, er[ua], er[ub]), same_u[sel].astype(int), np.arange(len(sel)) % 3)
        # both masked: the clean side of each masked-vs-clean pair gets a rendered mask
        ea = emb.embed_chips(list(lfw_a_masked))
        both_lfw = evaluate_distances(dist(emb, ea[[a_pos[i] for i in ia]],
                                           e_views["mask"][[b_pos[i] for i in ib]]),
                                      same, folds)  # fmt: skip
        ec = emb.embed_chips(list(rmfd_clean_masked))
        er_both = er.copy()
        er_both[clean_rows] = ec
        one_masked = is_masked[ra] != is_masked[rb]  # pairs with both sides masked keep their vectors
        xa = np.where((one_masked & ~is_masked[ra])[:, None], er_both[ra], er[ra])
        xb = np.where((one_masked & ~is_masked[rb])[:, None], er_both[rb], er[rb])
        both_rmfd = evaluate_distances(dist(emb, xa, xb), rmfd["same"].to_numpy(), rmfd["fold"].to_numpy())
        both = (both_lfw, both_rmfd)
        emb.prepare()
        if name == "dlib":
            from facelab.embed.dlib_torch import build_model
            params = count_parameters(build_model())
        else:
            params = count_parameters(load_student(emb.checkpoint)[0])
        fps = speed(emb, lfw_chips[: args.speed_chips])
        rows.append((name, r_lfw, occ, r_mask, r_unm, params, fps, both))
        print(f"{name}: done in {time.perf_counter() - t0:.0f}s", flush=True)

    head = (f"{'model':22s} {'LFW dev':>8s} {'LFW+mask':>9s} {'LFW+acc':>8s} {'RMFD m-u':>9s} "
            f"{'TAR@1%':>7s} {'RMFD u-u':>9s} {'ratio':>6s} {'params':>10s} {'faces/s':>8s} {'x dlib':>6s}")
    print("\n" + head)
    for name, r_lfw, occ, r_mask, r_unm, params, fps, _ in rows:
        print(f"{name:22s} {100 * r_lfw.accuracy:7.2f}% {100 * occ['mask'].accuracy:8.2f}% "
              f"{100 * occ['accessory'].accuracy:7.2f}% {100 * r_mask.accuracy:8.2f}% "
              f"{100 * r_mask.tar_at_far_1e2:6.1f}% {100 * r_unm.accuracy:8.2f}% "
              f"{r_mask.accuracy / r_unm.accuracy:6.3f} {params:10,d} {fps:8.1f} {fps / rows[0][6]:6.2f}")
    print("\nLFW: folds 1-3, leave-one-fold-out thresholds; LFW+mask / +acc: a rendered mask or "
          "accessory on image_b; RMFD m-u: masked vs unmasked (956 pairs); ratio = RMFD m-u / u-u; "
          "faces/s: network only (chips given), flip TTA, ONNX Runtime, this CPU; x dlib = faces/s "
          "over dlib's.")
    print(f"\nboth masked (a surgical mask rendered on the clean side too):\n"
          f"{'model':22s} {'LFW+mask':>9s} {'both':>8s} {'RMFD m-u':>9s} {'both':>8s} {'TAR@1%':>7s} "
          f"{'both':>7s} {'ratio both':>10s}")
    for name, _, occ, r_mask, r_unm, _, _, (b_lfw, b_rmfd) in rows:
        print(f"{name:22s} {100 * occ['mask'].accuracy:8.2f}% {100 * b_lfw.accuracy:7.2f}% "
              f"{100 * r_mask.accuracy:8.2f}% {100 * b_rmfd.accuracy:7.2f}% "
              f"{100 * r_mask.tar_at_far_1e2:6.1f}% {100 * b_rmfd.tar_at_far_1e2:6.1f}% "
              f"{b_rmfd.accuracy / r_unm.accuracy:10.3f}")


if __name__ == "__main__":
    main()
