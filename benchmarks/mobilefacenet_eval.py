"""LFW fold-3 and RMFD figures of a trained MobileFaceNet checkpoint (`python -m facelab.embed.train`).

Two thresholds are reported, both chosen without the reported pairs:
  * ``stored``: the threshold calibrated at training time on pairs of held-out *validation
    identities* (saved in the checkpoint) -- what `facelab db verify` would use;
  * ``lofo``: leave-one-fold-out thresholds on the pairs themselves (LFW fold 3 alone is split
    3 ways; RMFD folds are identities of the masked image), as `facelab verify-eval` does.
AUC and TAR@FAR need no threshold. Train on LFW folds 1-2 only: View 2 folds are
identity-disjoint, so fold 3 holds people the model never saw.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/mobilefacenet_eval.py runs/mfn/last.pt \
        [--lfw-margin 0.25] [--rmfd-margin 0.0] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def evaluate(pairs_csv: Path, pipeline, folds: list[int] | None, stored_t: float) -> tuple[str, dict]:
    """Embed each image once; figures with leave-one-fold-out and with the stored threshold."""
    from facelab.evaluate.verification import (
        embed_images,
        evaluate_distances,
        load_pairs,
        pair_distances,
    )
    from facelab.io.image import load_image

    df = load_pairs(pairs_csv)
    if folds:
        df = df[df["fold"].isin(folds)].reset_index(drop=True)

    def embed_one(path: Path) -> np.ndarray:
        image = load_image(path)
        return pipeline.embedder.embed_faces(image, pipeline.faces(image)[:1])[0]

    t0 = time.perf_counter()
    vecs, failed = embed_images(list(df.image_a) + list(df.image_b), pairs_csv.parent, embed_one, progress=False)
    seconds = time.perf_counter() - t0
    dist = pair_distances(df, vecs, "cosine")
    same = df["same"].to_numpy()
    rep = evaluate_distances(dist, same, df["fold"].to_numpy(), failed)
    return rep.summary(), {
        "pairs": rep.n_pairs, "accuracy_lofo": rep.accuracy,
        "accuracy_stored_threshold": float(np.mean((dist <= stored_t) == (same == 1))),
        "roc_auc": rep.roc_auc, "tar_far_1e2": rep.tar_at_far_1e2, "tar_far_1e3": rep.tar_at_far_1e3,
        "images": len(vecs), "failed_images": len(failed), "images_per_s": len(vecs) / max(seconds, 1e-9)}


def write_embeddings(emb, lfw: Path, detector: str, margin: float, out: Path) -> None:
    """Embed every image listed in LFW's identities.csv (search-benchmark queries)."""
    import pandas as pd

    from facelab.embed.pipeline import FacePipeline, PipelineConfig
    from facelab.io.image import load_image

    pipe = FacePipeline(PipelineConfig(detector=detector, largest_only=True, select="central",
                                       whole_margin=margin), emb)
    paths = list(pd.read_csv(lfw / "identities.csv")["image"])
    vecs = []
    for p in paths:
        image = load_image(lfw / p)
        vecs.append(emb.embed_faces(image, pipe.faces(image)[:1])[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, paths=np.array(paths), vectors=np.stack(vecs))
    print(f"wrote {len(paths)} LFW embeddings to {out}")


def main() -> None:
    import torch

    from facelab.embed.mobilefacenet import MobileFaceNetEmbedder
    from facelab.embed.pipeline import FacePipeline, PipelineConfig
    from facelab.paths import dataset_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--lfw", type=Path, default=None, help="LFW folder (default: data root / lfw)")
    ap.add_argument("--rmfd", type=Path, default=None, help="RMFD folder (default: data root / rmfd-masked-faces)")
    ap.add_argument("--detector", default="whole", help="'whole' for LFW/RMFD crops, or 'mtcnn'")
    ap.add_argument("--lfw-margin", type=float, default=0.25, help="whole-image margin on LFW's 250px photos")
    ap.add_argument("--rmfd-margin", type=float, default=0.0, help="RMFD images are already tight crops")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--embeddings-out", type=Path, default=None,
                    help="also embed every LFW image (identities.csv) into this .npz (paths, vectors): "
                         "real queries for benchmarks/search_bench.py --lfw")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    emb = MobileFaceNetEmbedder(args.checkpoint, device=args.device)
    print(f"checkpoint {args.checkpoint} ({emb.version}), stored threshold {emb.threshold:.4f}")
    sets = [("LFW fold 3", (args.lfw or dataset_dir("lfw")) / "pairs.csv", [3], args.lfw_margin),
            ("RMFD masked<->unmasked", (args.rmfd or dataset_dir("rmfd-masked-faces")) / "pairs.csv", None,
             args.rmfd_margin)]
    for name, csv, folds, margin in sets:
        pipe = FacePipeline(PipelineConfig(detector=args.detector, largest_only=True, select="central",
                                           whole_margin=margin), emb)
        summary, res = evaluate(csv, pipe, folds, emb.threshold)
        print(f"{name}: {summary}  accuracy@stored-threshold={100 * res['accuracy_stored_threshold']:.2f}%")
        print(json.dumps({"set": name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}}),
              flush=True)
    if args.embeddings_out:
        write_embeddings(emb, args.lfw or dataset_dir("lfw"), args.detector, args.lfw_margin, args.embeddings_out)


if __name__ == "__main__":
    main()
