"""Training throughput from the pixel cache vs decoding + cropping JPEGs at every step.

Runs the same training steps (MobileNetV2, batch 64) on the same images both ways and prints
both rates and their ratio.

    FACELAB_DATA=../shared/data python benchmarks/cache_speed.py [--steps 8] [--size 112]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from facelab.data.cache import PixelCache, PixelSettings, RowDecoder  # noqa: E402
from facelab.data.formats import SourceSpec, load_sources  # noqa: E402
from facelab.models.heads import task_log_probs  # noqa: E402
from facelab.models.model import AttributeModel  # noqa: E402
from facelab.paths import data_root  # noqa: E402
from facelab.train.augment import AugmentConfig, augment, to_tensor  # noqa: E402


def run(model, opt, get_batch, steps, batch) -> float:
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for s in range(steps):
        x = augment(to_tensor(get_batch(s)), AugmentConfig(), gen)
        loss = sum(v.sum() for v in task_log_probs(model(x)).values())
        opt.zero_grad()
        (-loss / len(x)).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    root = data_root()
    if not (root / "face-mask-detection").is_dir() or not (root / "utkface").is_dir():
        print(f"SKIP: data not found under {root} (set FACELAB_DATA)")
        return 0
    table = load_sources([SourceSpec("boxes", str(root / "face-mask-detection/boxes.csv")),
                          SourceSpec("labels", str(root / "utkface/labels.csv"))])
    settings = PixelSettings(size=args.size)
    t0 = time.perf_counter()
    cache = PixelCache.build(table, settings)
    print(f"cache ready in {time.perf_counter() - t0:.1f} s ({len(table)} images)")
    order = np.random.default_rng(0).permutation(len(table))
    decoder = RowDecoder(settings)
    batches = [np.sort(order[i * args.batch:(i + 1) * args.batch]) for i in range(args.steps + 1)]
    model = AttributeModel().to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    run(model, opt, lambda s: cache.pixels[batches[-1]], 1, args.batch)  # warm-up
    cached = run(model, opt, lambda s: cache.pixels[batches[s]], args.steps, args.batch)
    decoded = run(model, opt, lambda s: np.stack([decoder(table.iloc[i])[0] for i in batches[s]]),
                  args.steps, args.batch)
    print(f"train img/s from cache:          {cached:.1f}")
    print(f"train img/s decoding every step: {decoded:.1f}")
    print(f"cache speed-up: {cached / decoded:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
