"""`facelab embed-train chips | distill`: mask-robust embeddings distilled from dlib (thin
over facelab.embed.chipset and facelab.embed.distill)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facelab.cli import app

embed_app = typer.Typer(
    help=("Train face embeddings that survive masks and accessories, without identity labels: "
          "a frozen dlib teacher embeds the clean chip, the student sees it with a rendered "
          "mask/accessory.\n\n"
          "Examples:\n\n"
          "  facelab embed-train chips ../shared/data/lfw-train/identities.csv:lfw-train "
          "../shared/data/utkface/labels.csv:utkface --out runs/chips.npz\n\n"
          "  facelab embed-train distill runs/chips.npz --student mobilefacenet --out runs/mfn\n\n"
          "  facelab verify-eval ../shared/data/lfw/pairs.csv --embedder mfn-student "
          "--checkpoint runs/mfn/best.pt"),
    no_args_is_help=True,
)
app.add_typer(embed_app, name="embed-train")


@embed_app.command("chips")
def chips_cmd(
    sources: Annotated[list[str], typer.Argument(
        help="CSV (image[,identity] columns) or image folder, optionally ':name' (source name).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The chip-set .npz to write.")],
    limit: Annotated[int, typer.Option(help="First N photos per source (0: all).")] = 0,
    quality: Annotated[int, typer.Option(help="JPEG quality of the stored chips.")] = 90,
) -> None:
    """Detect (dlib HOG), align (dlib 5-point chip) and landmark (68 points) clean photos once.

    Example:

      facelab embed-train chips ../shared/data/lfw-train/identities.csv:lfw-train --out chips.npz
    """
    from facelab.embed.chipset import build_chipset, load_chipset

    pairs = []
    for s in sources:
        path, _, name = s.rpartition(":") if ":" in s and not Path(s).exists() else (s, "", "")
        pairs.append((path, name or Path(path).parent.name or Path(path).stem))
    written = build_chipset(pairs, out, limit=limit or None, quality=quality)
    typer.echo(f"{written}: {len(load_chipset(written))} face chips")


@embed_app.command("distill")
def distill_cmd(
    chips: Annotated[list[Path], typer.Argument(help="Chip sets from `facelab embed-train chips`.")],
    student: Annotated[str, typer.Option(help="dlib | dlib-lite | mobilefacenet | mobilenetv2.")] = "dlib",
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (best.pt, last.pt, model_card.md).")] = Path("runs/student"),
    epochs: Annotated[int, typer.Option(help="Epochs over the chips.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Faces per step.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (cosine schedule).")] = 1e-3,
    occlusion: Annotated[float, typer.Option(help="Share of faces given a mask/accessory.")] = 0.75,
    freeze: Annotated[int, typer.Option(help="dlib / dlib-lite student: keep its stem and this many of its 14 (dlib-lite: 13) residual blocks fixed (CPU-sized training; 0: train all).")] = 0,
    init: Annotated[str, typer.Option(help="Student start weights file (default: dlib / ImageNet / scratch).")] = "",
    teacher: Annotated[str, typer.Option(help="Converted dlib teacher file (default: the installed dlib weights).")] = "",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    workers: Annotated[int, typer.Option(help="Data-loading processes (rendering runs there).")] = 0,
    time_limit: Annotated[float, typer.Option(help="Stop after this many seconds of training (0: none).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of split, sampling and rendering.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
) -> None:
    """Distil dlib's embedding into a mask-robust student (settings chosen on held-out
    lfw-train identities, never on LFW or RMFD).

    Example:

      facelab embed-train distill runs/chips.npz --student mobilefacenet --epochs 30 --device cuda
    """
    from facelab.embed.distill import DistillConfig, distill

    cfg = DistillConfig(chips=[str(c) for c in chips], out=str(out), student=student, epochs=epochs,
                        batch_size=batch_size, lr=lr, occlusion=occlusion, freeze=freeze, init=init, teacher=teacher,
                        device=device, workers=workers, time_limit=time_limit, seed=seed)
    res = distill(cfg, resume=resume)
    best = next(h for h in res["history"] if h.get("epoch") == res["best"].get("epoch") and not h.get("teacher"))
    typer.echo(f"{out / 'best.pt'}: {student} student, {res['parameters']:,} parameters; best epoch "
               f"{best['epoch']}: held-out lfw-train clean {best['val_clean_acc']:.4f}, "
               f"masked-vs-clean {best['val_masked_acc']:.4f}")
