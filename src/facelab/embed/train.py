"""Train the MobileFaceNet embedding with an ArcFace/CosFace head on identity folders.

Data: a folder of ``<identity>/<image>`` (or a CSV with ``image,identity[,fold]`` columns,
paths relative to the CSV). Faces are detected and aligned once (112x112, ArcFace template)
and cached beside the run. Each epoch writes ``last.pt`` (model, head, optimizer, scheduler,
epoch, config) so ``--resume`` continues an interrupted run; the threshold is calibrated on
pairs from held-out *validation identities* and stored in the checkpoint.

Example:
    python -m facelab.embed.train ../shared/data/lfw/identities.csv --folds 1 2 --out runs/mfn
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from facelab.embed.mobilefacenet import (
    MarginHead,
    MobileFaceNet,
    align_or_crop,
    count_parameters,
    to_tensor,
)
from facelab.errors import ConfigError, DataFormatError
from facelab.io.atomic import atomic_path
from facelab.io.torchfile import load_torch_file

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training settings (saved in every checkpoint)."""

    data: str = ""
    out: str = "runs/mobilefacenet"
    folds: list[int] = field(default_factory=list)
    min_images: int = 2
    val_fraction: float = 0.1
    detector: str = "mtcnn"
    whole_margin: float = 0.0
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    head: str = "arcface"
    s: float = 30.0
    m: float = 0.4
    dim: int = 128
    width: float = 1.0
    mask_prob: float = 0.3
    seed: int = 0
    threads: int = 2
    device: str = "cpu"  # "cuda" to train on a GPU (same recipe, scale epochs/batch size)


def list_identities(cfg: TrainConfig) -> pd.DataFrame:
    """(image path, identity) rows with at least ``min_images`` per identity."""
    src = Path(cfg.data)
    if src.is_dir():
        rows = [(str(p), p.parent.name) for p in sorted(src.glob("*/*")) if p.is_file()]
        df = pd.DataFrame(rows, columns=["image", "identity"])
    elif src.suffix == ".csv":
        df = pd.read_csv(src)
        if not {"image", "identity"} <= set(df.columns):
            raise DataFormatError(f"{src} needs image,identity columns")
        df["image"] = [str(src.parent / p) for p in df["image"]]
        if cfg.folds and "fold" in df.columns:
            df = df[df["fold"].isin(cfg.folds)]
    else:
        raise DataFormatError(f"{src} is neither an identity folder nor a CSV")
    counts = df["identity"].map(df["identity"].value_counts())
    return df[counts >= cfg.min_images].reset_index(drop=True)


def prepare_faces(df: pd.DataFrame, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Detect + align every image once; cached in ``out/faces.npz`` (reused on resume)."""
    from facelab.embed.pipeline import FacePipeline, PipelineConfig
    from facelab.io.image import load_image

    cache = Path(cfg.out) / "faces.npz"
    if cache.is_file():
        z = np.load(cache)
        return z["faces"], z["identity"]
    pipe = FacePipeline(PipelineConfig(detector=cfg.detector, largest_only=True, select="central",
                                       whole_margin=cfg.whole_margin),
                        embedder=object())  # type: ignore[arg-type]  (detection only)
    faces, ids = [], []
    for path, ident in zip(df["image"], df["identity"]):
        try:
            image = load_image(path)
            face = pipe.faces(image)[0]
        except Exception as exc:  # noqa: BLE001  (skip and list bad files)
            log.warning("skipping %s: %s", path, exc)
            continue
        faces.append(align_or_crop(image, face))
        ids.append(ident)
    arr, idents = np.stack(faces), np.array(ids)
    np.savez(cache, faces=arr, identity=idents)
    return arr, idents


def synthetic_mask(batch: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Paint a flat 'mask' over the lower face (nose bridge to chin, ArcFace-aligned crops)."""
    n = batch.shape[0]
    hit = torch.rand(n, generator=gen) < prob
    if not hit.any():
        return batch
    out = batch.clone()
    top = 60 + torch.randint(0, 10, (n,), generator=gen)
    colour = (torch.rand(n, 3, generator=gen) * 2 - 1).to(batch.device)  # generator stays on CPU
    for i in torch.nonzero(hit).flatten().tolist():
        out[i, :, int(top[i]):, 14:98] = colour[i].view(3, 1, 1)
    return out


def split_identities(idents: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: whole identities, never split across train/val."""
    names = np.unique(idents)
    rng = np.random.default_rng(seed)
    val = set(rng.choice(names, max(1, round(frac * len(names))), replace=False).tolist())
    return np.array([i in val for i in idents])


def val_pairs(idents: np.ndarray, seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    by = {k: np.flatnonzero(idents == k) for k in np.unique(idents)}
    multi = [v for v in by.values() if len(v) >= 2]
    a, b, same = [], [], []
    for _ in range(n // 2):
        v = multi[rng.integers(len(multi))]
        i, j = rng.choice(v, 2, replace=False)
        a.append(i), b.append(j), same.append(1)
        i, j = rng.choice(len(idents), 2, replace=False)
        a.append(i), b.append(j), same.append(int(idents[i] == idents[j]))
    return np.array(a), np.array(b), np.array(same)


@torch.inference_mode()
def embed_array(model: MobileFaceNet, faces: np.ndarray, bs: int = 128) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(faces), bs):
        x = to_tensor(list(faces[i : i + bs])).to(device)
        out.append(F.normalize(F.normalize(model(x)) + F.normalize(model(torch.flip(x, dims=[3])))))
    return torch.cat(out).cpu().numpy()


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Run (or resume) training; returns the final validation figures."""
    from facelab.evaluate.verification import best_threshold, evaluate_distances

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    faces, idents = prepare_faces(list_identities(cfg), cfg)
    is_val = split_identities(idents, cfg.val_fraction, cfg.seed)
    names = np.unique(idents[~is_val])
    label = {n: i for i, n in enumerate(names)}
    x_tr, y_tr = faces[~is_val], np.array([label[i] for i in idents[~is_val]])
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {cfg.device!r} asked for but torch sees no CUDA GPU; use --device cpu")
    model = MobileFaceNet(cfg.dim, cfg.width).to(cfg.device)
    head = MarginHead(cfg.dim, len(names), cfg.head, cfg.s, cfg.m).to(cfg.device)
    print(f"MobileFaceNet parameters: {count_parameters(model):,} (head {count_parameters(head):,}); "
          f"train {len(x_tr)} faces / {len(names)} identities, val {int(is_val.sum())} faces")
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=cfg.lr, momentum=0.9,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    start = 0
    if resume and (out / "last.pt").is_file():
        ck = load_torch_file(out / "last.pt", "training checkpoint", map_location=cfg.device)
        model.load_state_dict(ck["model"]), head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["optimizer"]), sched.load_state_dict(ck["scheduler"])
        start = ck["epoch"]
        print(f"resumed from epoch {start}")
    gen = torch.Generator().manual_seed(cfg.seed + start)
    a, b, same = val_pairs(idents[is_val], cfg.seed)
    figures: dict = {}
    for epoch in range(start, cfg.epochs):
        model.train()
        t0, total = time.time(), 0.0
        perm = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size].numpy()
            x = to_tensor(list(x_tr[idx])).to(cfg.device)
            if torch.rand(1, generator=gen) < 0.5:
                x = torch.flip(x, dims=[3])
            x = synthetic_mask(x, cfg.mask_prob, gen)
            y = torch.from_numpy(y_tr[idx]).to(cfg.device)
            loss = F.cross_entropy(head(model(x), y), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        emb = embed_array(model, faces[is_val])
        dist = 1.0 - np.sum(emb[a] * emb[b], axis=1)
        rep = evaluate_distances(dist, same, np.arange(len(dist)) % 3)
        threshold = best_threshold(dist, same)
        figures = {"epoch": epoch + 1, "loss": total / len(x_tr), "val_accuracy": rep.accuracy,
                   "val_auc": rep.roc_auc, "threshold": threshold, "seconds": time.time() - t0}
        print(json.dumps(figures), flush=True)
        ck = {"model": model.state_dict(), "head": head.state_dict(), "optimizer": opt.state_dict(),
              "scheduler": sched.state_dict(), "epoch": epoch + 1, "config": asdict(cfg),
              "threshold": threshold, "figures": figures}
        with atomic_path(out / "last.pt", ".pt") as tmp:
            torch.save(ck, tmp)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return figures


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="identity folder or CSV (image,identity[,fold])")
    for f in ("out", "detector", "head", "device"):
        ap.add_argument(f"--{f}", default=getattr(TrainConfig, f))
    for f in ("epochs", "batch_size", "threads", "seed", "min_images"):
        ap.add_argument(f"--{f.replace('_', '-')}", dest=f, type=int, default=getattr(TrainConfig, f))
    for f in ("lr", "width", "mask_prob", "m", "s", "whole_margin"):
        ap.add_argument(f"--{f.replace('_', '-')}", dest=f, type=float, default=getattr(TrainConfig, f))
    ap.add_argument("--folds", type=int, nargs="*", default=[])
    ap.add_argument("--resume", action="store_true")
    args = vars(ap.parse_args(argv))
    resume = args.pop("resume")
    train(TrainConfig(**args), resume=resume)


if __name__ == "__main__":
    main()
