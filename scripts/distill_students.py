"""Train the mask-robust students side by side, and publish fp16 weights for the repo.

Runs `facelab.embed.distill` once per student (in parallel on a GPU, one after another on a
CPU), then writes each best checkpoint as fp16 (the bundled size) with its model card into
--publish.

    python scripts/distill_students.py --chips runs/chips/lfw-train.npz runs/chips/utkface.npz \
        --device cuda --time-limit 400 --publish src/facelab/weights

The chip sets come from `facelab embed-train chips` (see docs/facedb.md). The bundled
weights were trained on this project's 2-core CPU with the `facelab embed-train distill`
command written in each model card (`src/facelab/weights/*_student.md`); `--publish` alone
(with `--students` and `--out` naming finished runs, `--skip-training`) stores them.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import sys
from pathlib import Path

SETTINGS = {  # chosen on held-out lfw-train identities (the model cards list the epochs)
    "dlib": {"lr": 2e-3, "batch_size": 128, "epochs": 40},
    "mobilefacenet": {"lr": 2e-3, "batch_size": 256, "epochs": 200},
    "mobilenetv2": {"lr": 1e-3, "batch_size": 256, "epochs": 200},
    "dlib-lite": {"lr": 3e-4, "batch_size": 128, "epochs": 8},
}


def _one(kind: str, args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {kind}: %(message)s")
    from facelab.embed.distill import DistillConfig, distill

    init = args.init.get(kind, "")
    cfg = DistillConfig(chips=args.chips, out=str(Path(args.out) / kind), student=kind,
                        teacher=args.teacher, init=init, device=args.device, workers=args.workers,
                        time_limit=args.time_limit, seed=args.seed, occlusion=args.occlusion,
                        **SETTINGS[kind])
    distill(cfg, progress=False)


def publish(kind: str, run: Path, folder: Path) -> Path:
    """best.pt -> fp16 weights + model card in ``folder`` (the repo's bundled size)."""
    import torch

    ck = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    ck["student"] = {k: (v.half() if v.is_floating_point() else v) for k, v in ck["student"].items()}
    folder.mkdir(parents=True, exist_ok=True)
    from facelab.embed.students import BUNDLED_FILE

    target = folder / BUNDLED_FILE[kind]
    torch.save(ck, target)
    card = (run / "model_card.md").read_text()
    (folder / BUNDLED_FILE[kind].replace(".pt", ".md")).write_text(
        card + f"\nStored as fp16 ({target.name}) by `python scripts/distill_students.py --publish`; "
        "the command above reproduces the checkpoint.\n")
    return target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chips", nargs="+", default=[], help="chip sets (needed unless --skip-training)")
    p.add_argument("--students", nargs="+", default=["dlib", "mobilefacenet", "mobilenetv2"],
                   choices=list(SETTINGS))
    p.add_argument("--out", default="runs/students")
    p.add_argument("--teacher", default="", help="converted dlib state file (default: installed dlib)")
    p.add_argument("--init-mobilenetv2", default="", help="ImageNet MobileNetV2 features file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=0.0, help="seconds of training per student")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--occlusion", type=float, default=0.75, help="share of faces given a mask/accessory")
    p.add_argument("--publish", default="", help="folder for the fp16 bundled weights")
    p.add_argument("--skip-training", action="store_true",
                   help="only publish the finished runs under --out/<student>")
    args = p.parse_args()
    if not args.skip_training and not args.chips:
        p.error("--chips is required unless --skip-training")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    args.init = {"mobilenetv2": args.init_mobilenetv2}
    ctx = mp.get_context("spawn")
    procs = [] if args.skip_training else [ctx.Process(target=_one, args=(k, args)) for k in args.students]
    parallel = args.device.startswith("cuda")
    for pr in procs:
        pr.start()
        if not parallel:
            pr.join()
    for pr in procs:
        pr.join()
    summary = {}
    for k in args.students:
        run = Path(args.out) / k
        hist = json.loads((run / "history.json").read_text()) if (run / "history.json").is_file() else []
        summary[k] = [h for h in hist if not h.get("teacher")][-1:] or hist
        if args.publish and (run / "best.pt").is_file():
            print("published", publish(k, run, Path(args.publish)))
    print(json.dumps(summary, indent=1))
    sys.exit(0 if all((Path(args.out) / k / "best.pt").is_file() for k in args.students) else 1)


if __name__ == "__main__":
    main()
