"""Masked-face verification with dlib's embedding + a mask adapter fitted on synthetic masks.

1. MTCNN + landmark alignment gives a dlib chip for every LFW and RMFD image (cached).
2. Every LFW chip gets a masked twin (``paint_synthetic_mask``); dlib embeds both.
3. Selection, on LFW only: the adapter (LDA over identities) is fitted on the people of
   LFW folds 1-2 and scored on fold 3's pairs with image_a masked synthetically; the number
   of LDA components is chosen there.
4. The chosen adapter is refitted on all of LFW and applied, once, to RMFD's real
   masked-vs-unmasked pairs (thresholds leave-one-identity-fold-out, as in verify_rmfd.py).
   RMFD never shapes a choice. LFW's own (unmasked) accuracy with the adapter is printed too.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/rmfd_adapter.py [--out runs/rmfd_adapter]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def chips_for(paths: list[str], root: Path, cache: Path, align: str) -> np.ndarray:
    """(N, 150, 150, 3) dlib chips of the main face of each image (MTCNN, whole-image fallback)."""
    if cache.is_file():
        d = np.load(cache, allow_pickle=True)
        if list(d["paths"]) == paths:
            return d["chips"]
    from rich.progress import track

    from facelab.embed.dlib_resnet import DlibEmbedConfig, DlibResNetEmbedder
    from facelab.embed.pipeline import FacePipeline, PipelineConfig
    from facelab.io.image import load_image

    pipe = FacePipeline(PipelineConfig(detector="mtcnn", largest_only=True, select="central"),
                        embedder=object())  # type: ignore[arg-type]  (detection only)
    emb = DlibResNetEmbedder(DlibEmbedConfig(align=align))
    out = np.zeros((len(paths), 150, 150, 3), np.uint8)
    for i, p in enumerate(track(paths, description=f"chips {root.name}")):
        image = load_image(root / p)
        out[i] = emb.chips(image, [pipe.faces(image)[0]])[0]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, chips=out, paths=np.array(paths, dtype=object))
    return out


def embed(chips: np.ndarray, cache: Path) -> np.ndarray:
    if cache.is_file():
        v = np.load(cache)
        if len(v) == len(chips):
            return v
    from rich.progress import track

    from facelab.embed.dlib_resnet import DlibEmbedConfig, DlibResNetEmbedder

    emb = DlibResNetEmbedder(DlibEmbedConfig(flip=True))
    vecs = np.concatenate([emb.embed_chips(list(chips[i : i + 64]))
                           for i in track(range(0, len(chips), 64), description=f"embed {cache.stem}")])
    np.save(cache, vecs)
    return vecs


def pair_scores(vecs: dict[str, np.ndarray], a: list[str], b: list[str]) -> np.ndarray:
    va, vb = np.stack([vecs[p] for p in a]), np.stack([vecs[p] for p in b])
    return np.linalg.norm(va - vb, axis=1)


def main() -> None:
    from facelab.embed.mask_adapter import MaskAdapter, paint_synthetic_mask
    from facelab.evaluate.verification import evaluate_distances, load_pairs
    from facelab.paths import dataset_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "rmfd_adapter")
    ap.add_argument("--align", default="landmarks")
    ap.add_argument("--components", type=int, nargs="+", default=[32, 64, 96, 127])
    ap.add_argument("--twins", type=int, default=1, help="synthetic masked twins per LFW photo")
    args = ap.parse_args()
    t0 = time.perf_counter()
    lfw_root, rmfd_root = dataset_dir("lfw"), dataset_dir("rmfd-masked-faces")
    ids = pd.read_csv(lfw_root / "identities.csv")
    lfw_paths = ids.image.tolist()
    lfw_chips = chips_for(lfw_paths, lfw_root, args.out / f"chips_lfw_{args.align}.npz", args.align)
    rng = np.random.default_rng(20240601)
    masked = [np.stack([paint_synthetic_mask(c, rng) for c in lfw_chips]) for _ in range(args.twins)]
    plain = embed(lfw_chips, args.out / f"vec_lfw_{args.align}.npy")
    twins = [embed(m, args.out / f"vec_lfw_{args.align}_masked{k}.npy") for k, m in enumerate(masked)]
    # LFW dlib vectors in the format benchmarks/search_bench.py --lfw reads
    np.savez(args.out / "lfw_dlib_embeddings.npz", paths=np.array(lfw_paths), vectors=plain)

    rmfd_pairs = load_pairs(rmfd_root / "pairs.csv")
    rmfd_paths = sorted(set(rmfd_pairs.image_a) | set(rmfd_pairs.image_b))
    rmfd_vec = embed(chips_for(rmfd_paths, rmfd_root, args.out / f"chips_rmfd_{args.align}.npz", args.align),
                     args.out / f"vec_rmfd_{args.align}.npy")
    print(f"chips + embeddings ready in {time.perf_counter() - t0:.0f}s")

    # --- selection on LFW: fit on folds 1-2 people, score fold-3 pairs masked-vs-unmasked
    lfw_pairs = load_pairs(lfw_root / "pairs.csv")
    fold = ids.fold.to_numpy()
    ident = ids.identity.to_numpy()
    index = {p: i for i, p in enumerate(lfw_paths)}
    val = lfw_pairs[lfw_pairs.fold == 3]
    ia, ib = val.image_a.map(index).to_numpy(), val.image_b.map(index).to_numpy()
    same_v = val.same.to_numpy()
    sub_folds = np.arange(len(val)) % 3  # threshold folds inside fold 3

    def lfw_val(transform, a_vecs) -> float:
        d = np.linalg.norm(transform(a_vecs[ia]) - transform(plain[ib]), axis=1)
        return evaluate_distances(d, same_v, sub_folds).accuracy

    fit_rows = fold != 3
    fit_x = np.concatenate([plain[fit_rows]] + [t[fit_rows] for t in twins])
    fit_y = np.concatenate([ident[fit_rows]] * (1 + len(twins)))
    scores = {}
    for k in ["none", *args.components]:
        tf = (lambda v: v) if k == "none" else MaskAdapter.fit(fit_x, fit_y, n_components=k).transform
        scores[k] = lfw_val(tf, twins[0])
        print(f"LFW fold 3 (people unseen by the adapter), components={k}: synthetic-masked vs unmasked "
              f"{100 * scores[k]:.2f}%, unmasked vs unmasked {100 * lfw_val(tf, plain):.2f}%")
    best = max(scores, key=scores.get)
    print(f"chosen on LFW: components={best}")

    # --- how well does the embedding tell these people apart at all? (no masks involved)
    rmfd_id = np.array([Path(p).parent.name for p in rmfd_paths])
    unmasked = np.array(["unmasked_" in Path(p).name for p in rmfd_paths])
    for name, rows in (("unmasked vs unmasked", unmasked), ("masked vs masked", ~unmasked)):
        pick = np.random.default_rng(0)
        ix = np.flatnonzero(rows)
        a, b = pick.choice(ix, 20000), pick.choice(ix, 20000)
        a, b = a[a != b], b[a != b]
        s_same = np.flatnonzero(rmfd_id[a] == rmfd_id[b])[:400]
        s_diff = np.flatnonzero(rmfd_id[a] != rmfd_id[b])[: len(s_same)]
        sel = np.concatenate([s_same, s_diff])
        d = np.linalg.norm(rmfd_vec[a[sel]] - rmfd_vec[b[sel]], axis=1)
        rep = evaluate_distances(d, (rmfd_id[a[sel]] == rmfd_id[b[sel]]).astype(int), np.arange(len(sel)) % 3)
        print(f"RMFD {name} (diagnostic, {len(sel)} random balanced pairs, dlib alone): {rep.summary()}")

    # --- the figure: refit on all of LFW, apply once to RMFD
    def report(name: str, transform) -> None:
        vec = dict(zip(rmfd_paths, transform(rmfd_vec)))
        d = pair_scores(vec, rmfd_pairs.image_a.tolist(), rmfd_pairs.image_b.tolist())
        rep = evaluate_distances(d, rmfd_pairs.same.to_numpy(), rmfd_pairs.fold.to_numpy())
        print(f"RMFD masked-vs-unmasked, {name}: {rep.summary()}")

    report("dlib (no adapter)", lambda v: v)
    if best != "none":
        all_x = np.concatenate([plain] + twins)
        all_y = np.concatenate([ident] * (1 + len(twins)))
        adapter = MaskAdapter.fit(all_x, all_y, n_components=int(best))
        adapter.save(args.out / "mask_adapter.npz")
        report(f"dlib + mask adapter ({best} components, fitted on LFW + synthetic masks)", adapter.transform)
    print(f"wall {time.perf_counter() - t0:.0f}s; adapter: {args.out / 'mask_adapter.npz'}")


if __name__ == "__main__":
    main()
