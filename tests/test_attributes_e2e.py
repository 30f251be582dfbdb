"""train -> evaluate -> predict through the CLI on a tiny competition-layout data set."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import run_cli

from facelab.data.formats import SourceSpec
from facelab.train.config import load_config
from facelab.train.trainer import fit

TINY = ["model.backbone=mobilenet_v3_small", "model.pretrained=''", "data.image_size=32",
        "batch_size=8", "epochs=2", "threads=1", "data.test_fraction=0.25",
        "data.val_fraction=0.2", "optim.lr=0.003"]


def facelab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, timeout=600)


def write_config(path: Path, competition: Path) -> Path:
    path.write_text(f"data:\n  sources:\n    - {{kind: competition, path: '{competition}'}}\n")
    return path


def test_cli_train_evaluate_predict(competition, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", competition)
    sets = [x for s in TINY for x in ("--set", s)]
    r = facelab("train", "-c", str(cfg), "-o", str(tmp_path / "run"), *sets, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("best.pt", "last.pt", "config.yaml", "metrics.csv", "split.csv"):
        assert (tmp_path / "run" / name).is_file(), name
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    assert split.groupby("person")["split"].nunique().max() == 1  # no person on two sides

    r = facelab("evaluate", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "mask F1" in r.stdout and "report:" in r.stdout
    report = tmp_path / "run" / "eval_test"
    assert (report / "report.html").is_file() and (report / "confusion_mask.png").is_file()
    assert "Errors per age group x gender" in (report / "report.md").read_text()

    r = facelab("predict", str(tmp_path / "run"), "--competition", str(competition),
                "-o", str(tmp_path / "preds.csv"), "--tta", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    sub = pd.read_csv(tmp_path / "submission.csv")
    info = pd.read_csv(competition / "eval" / "info.csv")
    assert list(sub.columns) == ["ImageID", "ans"]
    assert sub["ImageID"].tolist() == info["ImageID"].tolist()
    assert sub["ans"].between(0, 17).all()
    preds = pd.read_csv(tmp_path / "preds.csv")
    probs = preds[[c for c in preds.columns if c.startswith("p_mask_")]].sum(1)
    assert (probs.sub(1).abs() < 1e-4).all()


def test_predict_skips_and_lists_unreadable(competition, tmp_path):
    cfg = load_config(write_config(tmp_path / "c.yaml", competition), [*TINY, "epochs=1"])
    fit(cfg, tmp_path / "run")
    (competition / "eval" / "images" / "0003eval.jpg").write_bytes(b"\xff\xd8 broken")
    r = facelab("predict", str(tmp_path / "run"), "--competition", str(competition),
                "-o", str(tmp_path / "p.csv"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "1 unreadable image" in r.stderr
    bad = pd.read_csv(tmp_path / "p_unreadable.csv")
    assert bad["path"].str.endswith("0003eval.jpg").all()
    assert len(pd.read_csv(tmp_path / "submission.csv")) == 10  # every row still answered


def test_resume_is_exact(competition, tmp_path):
    from facelab.train.trainer import Trainer

    cfg_path = write_config(tmp_path / "c.yaml", competition)
    straight = fit(load_config(cfg_path, TINY), tmp_path / "a")
    # Same 2-epoch run, interrupted after one epoch, then resumed from last.pt.
    Trainer(load_config(cfg_path, TINY), tmp_path / "b").fit(resume=False, stop_after=1)
    resumed = Trainer(load_config(cfg_path, TINY), tmp_path / "b").fit(resume=True)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]


def test_cli_errors_are_one_clear_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("epochs: 2\noptim: {name: sgdx}\n")
    r = facelab("train", "-c", str(tmp_path / "bad.yaml"), cwd=tmp_path)
    assert r.returncode == 2 and "optimizer 'sgdx' unknown" in r.stderr
    assert "Traceback" not in r.stderr
    r = facelab("evaluate", str(tmp_path / "missing_run"), cwd=tmp_path)
    assert r.returncode == 2 and "not found" in r.stderr


def test_source_spec_in_config_expands_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("FACELAB_DATA", str(tmp_path))
    (tmp_path / "c.yaml").write_text(
        "data:\n  sources:\n    - {kind: labels, path: '${FACELAB_DATA}/u/labels.csv'}\n")
    cfg = load_config(tmp_path / "c.yaml", ["data.age_drop_band=[57, 59]"])
    assert isinstance(cfg.data.sources[0], SourceSpec)
    assert cfg.data.sources[0].path == f"{tmp_path}/u/labels.csv"
    assert cfg.data.age_scheme().drop_band == (57, 59)
    with pytest.raises(Exception, match="unknown key"):
        load_config(tmp_path / "c.yaml", ["data.colour=1"])
