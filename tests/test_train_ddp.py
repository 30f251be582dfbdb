"""Training on 2 processes (torchrun, DDP over gloo on CPU) equals 1 process on the same batches."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY_RUN, make_competition

from facelab.errors import ConfigError
from facelab.train.config import load_config
from facelab.train.distributed import Distributed, launch_command
from facelab.train.trainer import Trainer, fit

# dropout off: its masks are drawn per process, so they cannot match one process's; SGD, since
# Adam turns near-zero gradients (where summation order shows) into full-size steps
DDP_RUN = [*TINY_RUN, "model.dropout=0", "batch_size=8", "threads=1", "optim.name=sgd"]


def test_two_processes_train_like_one(tmp_path):
    comp = make_competition(tmp_path / "comp", n_people=8, n_eval=6)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"data:\n  sources:\n    - {{kind: competition, path: '{comp}'}}\n")
    torch.set_num_threads(1)
    one = fit(load_config(cfg_file, DDP_RUN), tmp_path / "one")
    cmd = [sys.executable, "-m", "facelab", "train", "-c", str(cfg_file), "-o", str(tmp_path / "two"),
           "--nproc", "2", *[a for s in DDP_RUN for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 processes" in proc.stderr + proc.stdout
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert a["state"]["epoch"] == b["state"]["epoch"] == one.history[-1]["epoch"] == 1
    for k, va in a["model"].items():
        vb = b["model"][k]
        if va.is_floating_point():  # weights and BatchNorm running statistics
            assert torch.allclose(va, vb, rtol=1e-3, atol=2e-5), (k, float((va - vb).abs().max()))
        else:
            assert torch.equal(va, vb), k
    assert a["state"]["history"][0]["train_loss"] == pytest.approx(b["state"]["history"][0]["train_loss"], rel=1e-4)
    cfg = load_config(cfg_file, DDP_RUN)
    Trainer(cfg, tmp_path / "init")._seed(0)
    init = cfg.model.build().state_dict()
    moved = max(float((a["model"][k] - v).abs().max()) for k, v in init.items() if v.is_floating_point())
    assert moved > 1e-2  # the steps changed the weights far beyond the tolerance


def test_batch_must_split_evenly_and_launch_line():
    with pytest.raises(ConfigError, match="not divisible"):
        Distributed(rank=0, world=3).check_batch(8)
    assert Distributed(rank=1, world=2).shard(8) == slice(4, 8)
    cmd = launch_command(2, ["train", "-o", "x"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and cmd[-4:] == ["facelab", "train", "-o", "x"]


def _rank_resumes(rank: int, port: int, cfg_file: str, out: str, overrides: list[str]) -> None:
    """One of 2 processes: train 1 epoch, stop, resume from last.pt and finish."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist = Distributed.from_env()
    cfg = load_config(cfg_file, overrides)
    first = _Counting(cfg, out, dist=dist)
    first.fit(stop_after=1)
    second = _Counting(cfg, out, dist=dist)
    second.fit(resume=True)
    dist.close()
    assert (first.epochs, second.epochs) == ([0], [1])  # the second call resumed, not restarted


class _Counting(Trainer):
    """A Trainer that records which epochs it trained."""

    def _train_epoch(self, epoch, *args):
        self.epochs = [*getattr(self, "epochs", []), epoch]
        return super()._train_epoch(epoch, *args)


def test_two_processes_resume_exactly(tmp_path):
    """2 processes stopped after epoch 1 and resumed end where one uninterrupted process does."""
    import socket

    import torch.multiprocessing as tmp

    comp = make_competition(tmp_path / "comp", n_people=8, n_eval=6)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"data:\n  sources:\n    - {{kind: competition, path: '{comp}'}}\n")
    run = [*DDP_RUN, "epochs=2"]
    torch.set_num_threads(1)
    fit(load_config(cfg_file, run), tmp_path / "one")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp.start_processes(_rank_resumes, args=(port, str(cfg_file), str(tmp_path / "two"), run), nprocs=2,
                        start_method="spawn")
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert a["state"]["epoch"] == b["state"]["epoch"] == 2 and len(b["state"]["history"]) == 2
    for k, va in a["model"].items():
        if va.is_floating_point():
            assert torch.allclose(va, b["model"][k], rtol=1e-3, atol=2e-5), (k, float((va - b["model"][k]).abs().max()))
