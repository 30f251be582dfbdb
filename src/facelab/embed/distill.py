"""Distil dlib's face embedding into students that survive masks and accessories.

No identity labels are needed: the frozen teacher (dlib's ResNet, PyTorch port) embeds the
*clean* chip; the student sees the same chip, under the same random geometric jitter, with a
rendered mask or accessory (``facelab.masks``) and colour jitter, and learns to give the
teacher's clean answer. Loss: squared Euclidean distance to the teacher's vector for the
``dlib`` and ``dlib-lite`` students (they keep dlib's metric), ``1 - cosine`` for the others.
The ``dlib-lite`` student's head is refit to the teacher before training (:func:`fit_head`).

Settings are chosen on pairs of *held-out lfw-train identities* (``val_identities``), never
on LFW or RMFD. Each epoch writes ``last.pt`` (exact resume); ``best.pt`` holds the student
with the best validation score (mean of clean-vs-clean and masked-vs-clean pair accuracy),
its threshold (fitted on those pairs) and the model card figures; ``model_card.md`` says
what data, command and figures made it.

Example:
    facelab embed-train chips ../shared/data/lfw-train/identities.csv:lfw-train --out chips.npz
    facelab embed-train distill chips.npz --student mobilefacenet --out runs/mfn-student
"""

from __future__ import annotations

import json
import logging
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from facelab.distance import pairwise_distance
from facelab.embed.chipset import ChipSet, load_chipset
from facelab.embed.students import (
    DLIB_FAMILY,
    METRIC,
    STUDENTS,
    build_student,
    count_parameters,
    student_blocks,
    student_input_px,
)
from facelab.errors import ConfigError
from facelab.io.atomic import atomic_path

log = logging.getLogger(__name__)
FORMAT = "facelab-student-v1"


@dataclass
class DistillConfig:
    """Distillation settings (stored in every checkpoint and in the model card)."""

    chips: list[str] = field(default_factory=list)
    out: str = "runs/student"
    student: str = "dlib"
    init: str = ""            # student start weights ("" = dlib's / ImageNet / scratch)
    teacher: str = ""         # converted dlib state file ("" = the installed dlib weights)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-5
    warmup: float = 0.05       # share of steps with linear LR warm-up
    occlusion: float = 0.75    # share of samples that get a mask and/or accessory
    mask_share: float = 0.8    # of those: a mask (else accessories only)
    accessory_prob: float = 0.25
    freeze: int = 0            # dlib student: the stem and this many of its 14 residual blocks
                               # kept as dlib's (no backward through them: CPU-sized training)
    jitter: float = 1.0        # scale of the geometric jitter (0 = none)
    colour: float = 1.0        # scale of the colour jitter on the student's input
    val_identities: float = 0.2  # share of lfw-train identities held out for validation
    val_pairs: int = 600
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    threads: int = 2
    amp: bool = True          # bf16 autocast on CUDA
    time_limit: float = 0.0   # seconds of training (0 = none); the LR schedule follows
                              # whichever of steps or time runs out first

    def __post_init__(self) -> None:
        if self.student not in STUDENTS:
            raise ConfigError(f"unknown student {self.student!r}; choose one of {STUDENTS}")
        if not self.chips:
            raise ConfigError("give at least one chip set (facelab embed-train chips ...)")
        blocks = student_blocks(self.student)
        if self.freeze and (blocks is None or not 0 <= self.freeze <= blocks):
            raise ConfigError(f"freeze={self.freeze}: only the dlib students freeze, 0..{blocks} "
                              "of their residual blocks")
        for name in ("occlusion", "mask_share", "accessory_prob", "val_identities"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {v}")


# ----------------------------------------------------------------------------- data


def split_identities(cs: ChipSet, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, val) masks: a stable random share of named identities held out.

    Faces without an identity (UTKFace) always train; validation needs identities for pairs.
    """
    ids = np.array(cs.identity)
    named = sorted({i for i in ids if i})
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(named)[: round(share * len(named))]) if named else set()
    val = np.array([i in held for i in ids])
    return ~val, val


def make_pairs(identity: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, 3) rows (i, j, same): half genuine pairs (same identity), half impostors."""
    rng = np.random.default_rng(seed)
    by_id: dict[str, list[int]] = {}
    for k, ident in enumerate(identity):
        by_id.setdefault(ident, []).append(k)
    multi = [v for v in by_id.values() if len(v) > 1]
    pairs = []
    if multi:
        for _ in range(n // 2):
            v = multi[rng.integers(len(multi))]
            i, j = rng.choice(len(v), 2, replace=False)
            pairs.append((v[i], v[j], 1))
    keys = list(by_id)
    while len(pairs) < n and len(keys) > 1:
        a, b = rng.choice(len(keys), 2, replace=False)
        pairs.append((by_id[keys[a]][rng.integers(len(by_id[keys[a]]))],
                      by_id[keys[b]][rng.integers(len(by_id[keys[b]]))], 0))
    return np.array(pairs, np.int64).reshape(-1, 3)


class Augmenter:
    """Same geometric jitter for clean and student views; render + colour on the student's."""

    def __init__(self, cfg: DistillConfig) -> None:
        from facelab.masks import MaskRenderer

        self.cfg = cfg
        self.masks = MaskRenderer(wear_weights={"correct": 0.6, "incorrect": 0.25, "none": 0.15},
                                  accessory_prob=cfg.accessory_prob)
        self.accessories = MaskRenderer(wear_weights={"none": 1.0}, accessory_prob=0.5)

    def occlude(self, chip: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from facelab.masks import render_spec

        sampler = self.masks if rng.random() < self.cfg.mask_share else self.accessories
        spec = sampler.sample(rng)
        if spec.resolved_wear == "none" and not spec.accessories:
            spec = self.accessories.sample(rng)
            if not spec.accessories:
                return chip
        try:
            return render_spec(chip, lm, spec)
        except Exception:  # noqa: BLE001  (degenerate landmarks: train on the clean chip)
            return chip

    def geometry(self, rng: np.random.Generator) -> np.ndarray | None:
        j = self.cfg.jitter
        if j <= 0:
            return None
        import cv2

        angle = rng.uniform(-6, 6) * j
        scale = 1 + rng.uniform(-0.06, 0.06) * j
        m = cv2.getRotationMatrix2D((74.5, 74.5), angle, scale)
        m[:, 2] += rng.uniform(-5, 5, 2) * j
        return m

    def colour(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.cfg.colour
        if c <= 0:
            return img
        x = img.astype(np.float32)
        x = x * (1 + rng.uniform(-0.3, 0.3) * c) + rng.uniform(-25, 25) * c  # contrast, brightness
        grey = x.mean(axis=2, keepdims=True)
        sat = 0.0 if rng.random() < 0.1 * c else 1 + rng.uniform(-0.4, 0.4) * c
        x = grey + (x - grey) * sat
        if rng.random() < 0.15 * c:
            import cv2

            x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.5))
        return np.clip(x, 0, 255).astype(np.uint8)

    def __call__(self, chip: np.ndarray, lm: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        student = self.occlude(chip, lm, rng) if rng.random() < self.cfg.occlusion else chip
        m = self.geometry(rng)
        if m is not None:
            warp = lambda im: cv2.warpAffine(im, m, (150, 150), flags=cv2.INTER_LINEAR,
                                             borderMode=cv2.BORDER_REFLECT)
            chip, student = warp(chip), warp(student)
        if rng.random() < 0.5:
            chip, student = chip[:, ::-1], student[:, ::-1]
        return np.ascontiguousarray(self.colour(student, rng)), np.ascontiguousarray(chip)


class DistillDataset(torch.utils.data.Dataset):
    """(student view, clean view) uint8 chip pairs; randomness from (seed, epoch, index)."""

    def __init__(self, cs: ChipSet, cfg: DistillConfig) -> None:
        self.cs, self.aug, self.seed, self.epoch = cs, Augmenter(cfg), cfg.seed, 0

    def __len__(self) -> int:
        return len(self.cs)

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        s, c = self.aug(self.cs.chips[i], self.cs.landmarks[i], rng)
        return torch.from_numpy(s), torch.from_numpy(c)


def validation_views(cs: ChipSet, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(clean chips, the same chips each with a fixed rendered mask) for validation pairs."""
    from facelab.masks import MaskRenderer, render_spec

    r = MaskRenderer(wear_weights={"correct": 1.0}, accessory_prob=0.0, seed=seed + 7)
    masked = []
    for k in range(len(cs)):
        try:
            masked.append(render_spec(cs.chips[k], cs.landmarks[k], r.spec(k)))
        except Exception:  # noqa: BLE001
            masked.append(cs.chips[k])
    return cs.chips, np.stack(masked)


# ----------------------------------------------------------------------------- scoring


def best_accuracy(dist: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(accuracy, threshold) of the best single threshold on these pairs
    (:func:`facelab.evaluate.verification.best_threshold`)."""
    from facelab.evaluate.verification import best_threshold

    thr = best_threshold(dist, same)
    return float(np.mean((np.asarray(dist) <= thr) == (np.asarray(same) == 1))), thr


def embed_views(model: torch.nn.Module, chips: np.ndarray, device: str, batch: int = 256,
                flip: bool = True) -> np.ndarray:
    """Embeddings (mean with the mirror image, as the served embedder does)."""
    model.eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(chips), batch):
            x = torch.from_numpy(np.ascontiguousarray(chips[i:i + batch])).to(device)
            e = model(x).float()
            if flip:
                e = (e + model(torch.flip(x, dims=[2])).float()) / 2
            outs.append(e.cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 128), np.float32)


def validate(model, clean, masked, pairs, metric, device) -> dict:
    """Pair accuracy on held-out identities: clean-clean and masked-clean."""
    ec, em = embed_views(model, clean, device), embed_views(model, masked, device)
    i, j, same = pairs[:, 0], pairs[:, 1], pairs[:, 2]
    d_clean = pairwise_distance(ec[i], ec[j], metric)
    d_mask = pairwise_distance(em[i], ec[j], metric)
    acc_c, _ = best_accuracy(d_clean, same)
    acc_m, _ = best_accuracy(d_mask, same)
    acc_all, thr = best_accuracy(np.concatenate([d_clean, d_mask]), np.concatenate([same, same]))
    return {"val_clean_acc": acc_c, "val_masked_acc": acc_m, "val_score": (acc_c + acc_m) / 2,
            "threshold": thr, "val_joint_acc": acc_all}


# ----------------------------------------------------------------------------- training


def _loss(s: torch.Tensor, t: torch.Tensor, metric: str, center: torch.Tensor) -> torch.Tensor:
    if metric == "l2":
        return ((s - t) ** 2).sum(1).mean()
    # dlib's vectors share a large common component (two strangers' cosine is ~0.9), so a
    # cosine loss on raw targets is met by predicting the mean face: regress the centred
    # direction instead.
    return (1 - F.cosine_similarity(s, t - center, dim=1)).mean()


@torch.no_grad()
def teacher_center(teacher: torch.nn.Module, chips: np.ndarray, device: str) -> torch.Tensor:
    """Mean teacher vector over the clean training chips."""
    total, n = torch.zeros(128, device=device), 0
    for i in range(0, len(chips), 256):
        x = torch.from_numpy(np.ascontiguousarray(chips[i:i + 256])).to(device)
        total += teacher(x).float().sum(0)
        n += len(x)
    return total / max(n, 1)


def _teacher(cfg: DistillConfig) -> torch.nn.Module:
    from facelab.embed.dlib_torch import build_model
    from facelab.io.torchfile import load_torch_file

    state = None
    if cfg.teacher:
        blob = load_torch_file(Path(cfg.teacher), "converted dlib teacher")
        state = {k: v.float() for k, v in blob["state"].items()}
    return build_model(state, channels_last=False)


def _one_thread(_: int) -> None:
    """Loader workers render with OpenCV: one thread each, or N workers x all cores
    oversubscribe the CPU (seen: 180 faces/s per process on a 16-core machine)."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def freeze_dlib(student: torch.nn.Module, n_blocks: int) -> None:
    """Keep the dlib student's stem and first `n_blocks` residual blocks as dlib's: no
    gradient, so backward stops above them (what makes CPU training affordable)."""
    if n_blocks <= 0:
        return
    for module in (student.stem, *list(student.blocks)[:n_blocks]):
        module.requires_grad_(False)


def _param_groups(student: torch.nn.Module, cfg: DistillConfig) -> list[dict]:
    """Plain AdamW groups, except for the dlib student: its weights carry dlib's folded
    affines and input scaling (the stem's are ~1/256 of usual), so a fixed step size would
    wreck them at once. Each tensor's step is scaled by its own RMS (a relative step, as in
    LARS/LAMB), and there is no weight decay."""
    trainable = [p for p in student.parameters() if p.requires_grad]
    if cfg.student not in DLIB_FAMILY:
        return [{"params": trainable, "lr_scale": 1.0, "weight_decay": cfg.weight_decay}]
    return [{"params": [p], "lr_scale": float(p.detach().float().pow(2).mean().sqrt().clamp_min(1e-8)),
             "weight_decay": 0.0} for p in trainable]


@torch.no_grad()
def fit_head(student: torch.nn.Module, teacher: torch.nn.Module, chips: np.ndarray, device: str,
             ridge: float = 1e-3) -> float:
    """Refit a dlib-family student's last linear layer to the teacher's clean embeddings by
    ridge regression; returns the mean squared L2 error after the fit.

    The compact student's kept blocks feed ``fc`` other features than dlib's (one block
    fewer, smaller input): its first outputs lie ~1.0 (squared L2) from the teacher's, so
    the first epochs would spend themselves, and the pretrained blocks, on re-learning that
    map. The closed-form fit takes it to 0.14 at 112 px (0.18 at 96) before any step (seen
    on lfw-train + UTKFace). It runs once, at the start of a fresh run without ``--init`` (an
    ``--init`` student brings its own head).
    """
    feats, targets = [], []
    head = student.fc
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0]))
    try:
        for i in range(0, len(chips), 256):
            x = torch.from_numpy(np.ascontiguousarray(chips[i:i + 256])).to(device)
            student(x)
            feats.append(captured.pop().double())
            targets.append(teacher(x).double())
    finally:
        hook.remove()
    f, t = torch.cat(feats), torch.cat(targets)
    gram = f.T @ f
    gram += ridge * torch.trace(gram) / len(gram) * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    w = torch.linalg.solve(gram, f.T @ t)  # (features, 128)
    head.weight.copy_(w.T.to(head.weight.dtype))
    return float(((f @ w - t) ** 2).sum(1).mean())


def distill(cfg: DistillConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train a student; returns the best checkpoint's metadata (see the module docstring)."""
    from rich.progress import Progress

    torch.manual_seed(cfg.seed)
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cs = load_chipset(*cfg.chips)
    train_mask, val_mask = split_identities(cs, cfg.val_identities, cfg.seed)
    train_cs, val_cs = cs.subset(train_mask), cs.subset(val_mask)
    pairs = make_pairs(val_cs.identity, cfg.val_pairs, cfg.seed)
    v_clean, v_masked = validation_views(val_cs, cfg.seed)
    metric = METRIC[cfg.student]
    dev = cfg.device
    teacher = _teacher(cfg).to(dev).eval()
    student = build_student(cfg.student, cfg.init or (cfg.teacher if cfg.student in DLIB_FAMILY and cfg.teacher else None)).to(dev)
    freeze_dlib(student, cfg.freeze)
    params = count_parameters(student)
    log.info("student %s: %d parameters (%d trained); %d training faces, %d validation faces (%d pairs)",
             cfg.student, params, sum(p.numel() for p in student.parameters() if p.requires_grad),
             len(train_cs), len(val_cs), len(pairs))
    ds = DistillDataset(train_cs, cfg)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(ds) > cfg.batch_size,
        num_workers=cfg.workers, persistent_workers=False, pin_memory=dev.startswith("cuda"),
        generator=torch.Generator().manual_seed(cfg.seed), worker_init_fn=_one_thread)
    opt = torch.optim.AdamW(_param_groups(student, cfg), lr=cfg.lr)
    total = max(1, cfg.epochs * len(loader))
    warm = max(1, int(cfg.warmup * total))
    history: list[dict] = []
    start, step, elapsed = 0, 0, 0.0
    best = {"val_score": -1.0}
    last = out / "last.pt"
    if resume and last.is_file():
        from facelab.io.torchfile import load_torch_file

        ck = load_torch_file(last, "distillation checkpoint", map_location=dev)
        student.load_state_dict(ck["student"])
        opt.load_state_dict(ck["optimizer"])
        start, history, best = ck["epoch"], ck["history"], ck["best"]
        step, elapsed = ck["step"], ck["elapsed"]
        log.info("resumed %s at epoch %d", last, start)
    if start == 0:
        base = validate(teacher, v_clean, v_masked, pairs, "l2", dev)
        history.append({"epoch": 0, "teacher": True, **base})
        log.info("teacher on validation pairs: clean %.4f masked %.4f",
                 base["val_clean_acc"], base["val_masked_acc"])
    if start == 0 and cfg.student == "dlib-lite" and not cfg.init:
        # after the optimizer: per-tensor step sizes stay set from dlib's own head, as in the
        # run measured in docs/facedb.md
        student.eval()
        log.info("compact student: head refit to the teacher, squared L2 %.3f",
                 fit_head(student, teacher, train_cs.chips, dev))
    use_amp = cfg.amp and dev.startswith("cuda")
    center = teacher_center(teacher, train_cs.chips, dev)
    with Progress(disable=not progress) as bar:
        task = bar.add_task("distill", total=(cfg.epochs - start) * len(loader))
        for epoch in range(start, cfg.epochs):
            if cfg.time_limit and elapsed >= cfg.time_limit:
                log.info("time limit reached after %d epochs", epoch)
                break
            ds.epoch = epoch
            student.train()  # (dlib's port has no BatchNorm or dropout: frozen blocks stay exact)
            t0, seen, run_loss = time.time(), 0, 0.0
            for s_view, c_view in loader:
                # cosine schedule over steps or time, whichever runs out first
                frac = step / total
                if cfg.time_limit:
                    frac = max(frac, (elapsed + time.time() - t0) / cfg.time_limit)
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * g["lr_scale"] * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
                s_view, c_view = s_view.to(dev, non_blocking=True), c_view.to(dev, non_blocking=True)
                with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=use_amp):
                    target = teacher(c_view).float()
                with torch.autocast("cuda", torch.bfloat16, enabled=use_amp):
                    pred = student(s_view).float()
                loss = _loss(pred, target, metric, center)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                seen += len(s_view)
                run_loss += float(loss.detach()) * len(s_view)
                bar.advance(task)
            elapsed += time.time() - t0
            row = {"epoch": epoch + 1, "loss": run_loss / max(seen, 1),
                   "faces_per_s": seen / max(time.time() - t0, 1e-9), "elapsed_s": elapsed,
                   **validate(student, v_clean, v_masked, pairs, metric, dev)}
            history.append(row)
            log.info("epoch %d: loss %.4f val clean %.4f masked %.4f (%.0f faces/s)", epoch + 1,
                     row["loss"], row["val_clean_acc"], row["val_masked_acc"], row["faces_per_s"])
            state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
            meta = {"format": FORMAT, "kind": cfg.student, "config": asdict(cfg), "epoch": epoch + 1,
                    "metric": metric, "threshold": row["threshold"], "parameters": params,
                    "input_px": student_input_px(cfg.student), "blocks": student_blocks(cfg.student),
                    "teacher_center": center.cpu(),
                    "validation": {k: row[k] for k in row if k.startswith("val_")},
                    "history": history}
            if row["val_score"] > best["val_score"]:
                best = {"val_score": row["val_score"], "epoch": epoch + 1}
                with atomic_path(out / "best.pt", ".pt") as tmp:
                    torch.save({**meta, "student": state}, tmp)
            with atomic_path(last, ".pt") as tmp:
                torch.save({"student": state, "optimizer": opt.state_dict(), "step": step,
                            "elapsed": elapsed, "epoch": epoch + 1, "history": history, "best": best,
                            "config": asdict(cfg)}, tmp)
            (out / "history.json").write_text(json.dumps(history, indent=1))
    write_model_card(out, cfg, history, best, params)
    return {"best": best, "history": history, "parameters": params}


def write_model_card(out: Path, cfg: DistillConfig, history: list[dict], best: dict, params: int) -> Path:
    """``model_card.md``: data, command, validation figures per epoch, what it is for."""
    teacher = next((h for h in history if h.get("teacher")), None)
    lines = [
        f"# facelab {cfg.student} student (distilled from dlib's ResNet)", "",
        f"- parameters: {params:,}; metric: {METRIC[cfg.student]}; input: dlib 5-point 150 px chips",
        f"- training data (clean photos only, no identity labels used): {', '.join(cfg.chips)}",
        (f"- validation: pairs of {cfg.val_identities:.0%} held-out lfw-train identities "
        "(clean vs clean, rendered mask vs clean); LFW and RMFD were never used"),
        f"- command: `facelab embed-train distill {' '.join(cfg.chips)} --student {cfg.student} "
        f"--epochs {cfg.epochs} --batch-size {cfg.batch_size} --lr {cfg.lr} --seed {cfg.seed}"
        + (f" --freeze {cfg.freeze}" if cfg.freeze else "") + "`",
        f"- made with: torch {torch.__version__}, Python {platform.python_version()}, device {cfg.device}",
        f"- best epoch: {best.get('epoch')} (validation score {best.get('val_score', 0):.4f})", "",
        "| epoch | loss | val clean acc | val masked-vs-clean acc | faces/s (train) |",
        "|---|---|---|---|---|",
    ]
    if teacher:
        lines.append(f"| teacher (dlib) | | {teacher['val_clean_acc']:.4f} | {teacher['val_masked_acc']:.4f} | |")
    for h in history:
        if not h.get("teacher"):
            lines.append(f"| {h['epoch']} | {h['loss']:.4f} | {h['val_clean_acc']:.4f} | "
                         f"{h['val_masked_acc']:.4f} | {h['faces_per_s']:.0f} |")
    lines += ["", "Figures on LFW and RMFD: `python benchmarks/embed_masks.py` (docs/facedb.md)."]
    path = out / "model_card.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - thin wrapper
    """``python -m facelab.embed.distill`` = ``facelab embed-train distill``."""
    from facelab.cli import app

    sys.argv = ["facelab", "embed-train", "distill", *(argv or sys.argv[1:])]
    app()
