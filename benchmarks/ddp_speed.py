"""Training samples/s on 1 and several processes (`facelab train --nproc N`, DDP over gloo).

Runs `facelab train` once per setting on the same config and overrides (default: the
multitask config for one epoch at 64 px), each into a fresh run folder with a shared pixel
cache (filled before the first timed run), and prints the training images/s of the epoch
(global batch images over the training loop's time, from metrics.csv, validation excluded),
the wall time of the whole command, and the speedup over the first setting. A setting is
PROCS[xTHREADS]: "1x2" is one process with two torch threads, "2" two processes with
--threads each.

``--synthetic N`` trains on a generated competition-layout set of N people instead (the test
suite's cartoon faces, tests/conftest.py; no data files needed, ImageNet weights off).

Usage:
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/ddp_speed.py --settings 1 1x2 2
    python benchmarks/ddp_speed.py --synthetic 400 --settings 1 2 4 8   # a bigger box, no data
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SET = ["epochs=1", "data.image_size=64", "batch_size=64", "patience=0", "calibrate=false"]


def run(config: Path, out: Path, procs: int, threads: int, sets: list[str], env: dict) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "facelab", "train", "-c", str(config), "-o", str(out), "--no-resume",
           "--nproc", str(procs), "--set", f"threads={threads}"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rate = float(pd.read_csv(out / "metrics.csv")["images_per_s"].iloc[-1])
    return rate, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "multitask.yaml")
    ap.add_argument("--settings", nargs="+", default=["1", "1x2", "2"], help="PROCS or PROCSxTHREADS")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process unless the setting says")
    ap.add_argument("--set", dest="sets", action="append", default=None, help="extra overrides (key=value)")
    ap.add_argument("--synthetic", type=int, default=0, help="generated data set of this many people")
    args = ap.parse_args()
    sets = DEFAULT_SET + (args.sets or [])
    root = Path(tempfile.mkdtemp(prefix="facelab-ddp-speed-"))
    if args.synthetic:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import make_competition

        comp = make_competition(root / "comp", n_people=args.synthetic, n_eval=4)
        args.config = root / "synthetic.yaml"
        args.config.write_text(f"data:\n  sources:\n    - {{kind: competition, path: '{comp}'}}\n"
                               "  val_fraction: 0.1\n  test_fraction: 0.1\n")
        sets = ["model.pretrained=''", *sets]
    env = {**os.environ, "FACELAB_CACHE": os.environ.get("FACELAB_CACHE", str(root / "cache")),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    # fill the pixel cache once (a run of 0 epochs), so no timed run pays for decoding
    subprocess.run([sys.executable, "-m", "facelab", "train", "-c", str(args.config), "-o", str(root / "warm"),
                    *[a for s in [*sets, "epochs=0"] for a in ("--set", s)]], env=env, check=True,
                   capture_output=True)
    print(f"config {args.config.name}, overrides {' '.join(sets)}; {os.cpu_count()} CPUs")
    print(f"{'setting':>8} {'train img/s':>12} {'wall s':>8} {'speedup':>8}")
    base = None
    for setting in args.settings:
        procs, _, threads = setting.partition("x")
        rate, wall = run(args.config, root / f"run-{setting}", int(procs), int(threads or args.threads), sets, env)
        base = base or rate
        print(f"{setting:>8} {rate:>12.1f} {wall:>8.1f} {rate / base:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
