"""Training-step speed with and without facelab's malloc tuning (facelab.runtime).

Each setting runs in its own process (the tuning is process-wide): MobileNetV2 (ImageNet
weights, channels_last, multitask head) trains on random 128px batches of 64 with the usual
augmentation; the first 5 steps warm up, the next --steps are timed. Prints img/s, user and
kernel CPU seconds and minor page faults per setting.

    python benchmarks/train_step_speed.py [--freeze 4 7] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(freeze: int, steps: int, size: int) -> str:
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np
    import torch

    from facelab.runtime import tune_allocator
    from facelab.train.augment import AugmentConfig, augment, to_tensor
    from facelab.train.config import ModelConfig

    tuned = tune_allocator()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    pixels = np.random.default_rng(0).integers(0, 255, (64, size, size, 3), dtype=np.uint8)
    model = ModelConfig(backbone="mobilenet_v2", pretrained="imagenet", head="multitask",
                        freeze=freeze).build().to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
    for step in range(5 + steps):
        if step == 5:
            t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        out = model(augment(to_tensor(pixels, True), AugmentConfig(), gen))
        loss = sum(o.logsumexp(1).mean() for o in out.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return (f"freeze {freeze:<3d} malloc tuned {'yes' if tuned else 'no ':<4s}"
            f"{steps * 64 / dt:8.1f} img/s  user {r1.ru_utime - r0.ru_utime:6.1f}s  "
            f"kernel {r1.ru_stime - r0.ru_stime:5.1f}s  minor faults {r1.ru_minflt - r0.ru_minflt}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--freeze", type=int, nargs="+", default=[4, 7])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(measure(args.child, args.steps, args.size), flush=True)
        return
    for freeze in args.freeze:
        for tune in ("0", "1"):
            env = {**os.environ, "FACELAB_MALLOC_TUNE": tune}
            subprocess.run([sys.executable, __file__, "--child", str(freeze), "--steps", str(args.steps),
                            "--size", str(args.size)], env=env, check=True)


if __name__ == "__main__":
    main()
