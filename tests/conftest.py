"""Shared fixtures: tiny synthetic data sets made in code (no files from outside the repo)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

COMPETITION_FILES = ["mask1.jpg", "mask2.jpeg", "mask3.png", "mask4.jpg", "mask5.jpg",
                     "incorrect_mask.png", "normal.jpeg"]


def face_image(rng: np.random.Generator, mask: int, female: int, old: int, size: int = 48) -> Image.Image:
    """A cartoon 'face' whose colours encode the labels, so a tiny model can learn them."""
    img = np.full((size, size, 3), 40 + 150 * female, np.uint8)
    img[..., 2] = 60 + 80 * old
    yy, xx = np.mgrid[:size, :size]
    face = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    img[face] = (220, 180, 150)
    if mask < 2:  # a mask over the lower face; "incorrect" sits lower
        top = size // 2 + (6 if mask == 1 else 0)
        img[top : top + size // 5, size // 4 : 3 * size // 4] = (90, 160, 230)
    img = np.clip(img.astype(int) + rng.integers(-15, 16, img.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img)


def make_competition(root: Path, n_people: int = 12, n_eval: int = 10, seed: int = 0) -> Path:
    """Write a competition-layout data set: train/train.csv + person folders, eval/info.csv."""
    rng = np.random.default_rng(seed)
    (root / "train" / "images").mkdir(parents=True)
    lines = ["id,gender,race,age,path"]
    for p in range(n_people):
        female, age = p % 2, [20, 45, 65][p % 3]
        gender = "female" if female else "male"
        folder = f"{p:06d}_{gender}_Asian_{age}"
        lines.append(f"{p:06d},{gender},Asian,{age},{folder}")
        d = root / "train" / "images" / folder
        d.mkdir()
        for name in COMPETITION_FILES:
            mask = 0 if name.startswith("mask") else 1 if name.startswith("incorrect") else 2
            face_image(rng, mask, female, int(age >= 60)).save(d / name)
        (d / "._mask1.jpg").write_bytes(b"macOS resource fork junk")  # must be ignored
    (root / "train" / "train.csv").write_text("\n".join(lines) + "\n")
    (root / "eval" / "images").mkdir(parents=True)
    ids = []
    for i in range(n_eval):
        name = f"{i:04d}eval.jpg"
        face_image(rng, i % 3, i % 2, 0).save(root / "eval" / "images" / name)
        ids.append(name)
    (root / "eval" / "info.csv").write_text("ImageID,ans\n" + "".join(f"{n},0\n" for n in ids))
    return root


@pytest.fixture
def competition(tmp_path: Path) -> Path:
    return make_competition(tmp_path / "comp")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own preprocessing cache folder."""
    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path / "cache"))


def run_cli(*args: str, cwd: Path, cache: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m facelab ARGS` in a subprocess, one CPU thread (and its own cache folder)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if cache is not None:
        env["FACELAB_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-m", "facelab", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def real_data(name: str) -> Path:
    """The folder of a real data set, or skip the test with the reason."""
    from facelab.paths import data_root, missing_data

    missing = missing_data(name)
    if missing:
        pytest.skip(f"real {missing}")
    return data_root() / name


os.environ.setdefault("OMP_NUM_THREADS", "2")


TINY_RUN = ["model.backbone=mobilenet_v3_small", "model.pretrained=''", "data.image_size=32",
            "batch_size=8", "epochs=1", "threads=1", "patience=0", "augment.center_crop=0.9",
            "data.test_fraction=0.25", "data.val_fraction=0.2"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A 1-epoch run on a synthetic competition set (center crop on, to cover that path)."""
    from facelab.train.config import load_config
    from facelab.train.trainer import fit

    root = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    comp = make_competition(root / "comp", n_people=8, n_eval=6)
    cfg = root / "c.yaml"
    cfg.write_text(f"data:\n  sources:\n    - {{kind: competition, path: '{comp}'}}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACELAB_CACHE", str(root / "cache"))
        fit(load_config(cfg, TINY_RUN), root / "run")
    return root / "run"


def synthetic_person(seed: int, variant: int = 0, size: int = 48) -> np.ndarray:
    """A synthetic 'person' for face-database tests: a fixed random pattern per seed, plus
    small noise per photo (variant)."""
    base = np.random.default_rng(seed).integers(0, 255, (8, 8, 3)).astype(np.float32)
    img = np.kron(base, np.ones((size // 8, size // 8, 1)))
    noise = np.random.default_rng(1000 * seed + variant).normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def write_image(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@contextlib.contextmanager
def running(app, wait_ready: bool = True):
    """Serve an ASGI app with uvicorn in a thread on a free loopback port; yields its base URL
    (after /readyz answers 200 when `wait_ready`)."""
    import httpx
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    if wait_ready:
        while httpx.get(base + "/readyz").status_code != 200:
            assert time.monotonic() < deadline, httpx.get(base + "/readyz").text
            time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
