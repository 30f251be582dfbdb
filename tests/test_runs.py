"""`facelab runs`: finding runs, switches against defaults, best epoch, CSV, plot, TensorBoard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from facelab.evaluate.runs import find_runs, run_history, runs_table, switches
from facelab.train.config import TrainConfig, load_config

DEFAULTS = TrainConfig().to_dict()


def make_run(folder: Path, overrides: list[str], scores: list[float]) -> Path:
    folder.mkdir(parents=True)
    load_config(None, overrides).save(folder / "config.yaml")
    pd.DataFrame(
        {
            "epoch": range(1, len(scores) + 1),
            "train_loss": 1.0,
            "val_score": scores,
            "val_mask_f1": [s + 0.1 for s in scores],
            "val_gender_f1": scores,
        }
    ).to_csv(folder / "metrics.csv", index=False)
    return folder


def test_runs_table_lists_nested_runs_with_switches_and_best_epoch(tmp_path):
    make_run(tmp_path / "base", [], [0.5, 0.6])
    make_run(tmp_path / "kf" / "fold_0", ["epochs=9", "model.backbone=resnet18"], [0.7, 0.65, 0.6])
    (tmp_path / "kf" / "fold_0" / "done.json").write_text(json.dumps({"wall_s": 12.34}))
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "not_a_run" / "config.yaml").write_text("epochs: 1\n")  # no metrics: skipped
    table = runs_table(tmp_path, DEFAULTS)
    assert table["run"].tolist() == ["kf/fold_0", "base"]  # best validation score first
    fold = table.iloc[0]
    assert fold["backbone"] == "resnet18" and fold["switches"] == "epochs=9"
    assert fold["best_epoch"] == 1 and fold["val_score"] == 0.7 and fold["mask_f1"] == 0.8
    assert fold["epochs"] == 3 and fold["wall_s"] == 12.3
    assert table.iloc[1]["switches"] == "" and pd.isna(table.iloc[1]["wall_s"])


def test_switches_only_lists_non_defaults():
    cfg = load_config(None, ["optim.lr=0.123", "tta=true"]).to_dict()
    assert switches(cfg, DEFAULTS) == {"optim.lr": 0.123, "tta": True}
    assert switches({"future_key": 1}, DEFAULTS) == {"future_key": 1}  # unknown settings are shown too


def test_loss_column_shows_the_weighted_terms_actually_trained(tmp_path):
    make_run(tmp_path / "mix", ["loss.terms={focal: 0.6, soft_f1: 0.4}"], [0.5])
    make_run(tmp_path / "focal", ["loss.kind=focal"], [0.4])
    table = runs_table(tmp_path, DEFAULTS).set_index("run")
    assert table.loc["mix", "loss"] == "0.6 focal + 0.4 soft_f1"
    assert table.loc["focal", "loss"] == "focal"


def test_tensorboard_fallback_when_metrics_csv_is_missing(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "tb"
    run.mkdir()
    load_config(None, []).save(run / "config.yaml")
    writer = SummaryWriter(str(run / "tensorboard"))
    for epoch, score in ((1, 0.3), (2, 0.45)):
        writer.add_scalar("val_score", score, epoch)
    writer.close()
    assert find_runs(tmp_path) == [run]
    hist = run_history(run)
    assert hist["epoch"].tolist() == [1, 2] and hist["val_score"].round(2).tolist() == [0.3, 0.45]
    assert runs_table(tmp_path, DEFAULTS).iloc[0]["val_score"] == 0.45


def test_runs_cli_table_csv_and_plot(tmp_path):
    make_run(tmp_path / "runs" / "a", ["optim.lr=0.123"], [0.4, 0.5])
    make_run(tmp_path / "runs" / "b", ["data.image_size=96"], [0.55])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "facelab", "runs", "runs", "--csv", "r.csv", "--plot", "curves.png"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "2 run(s)" in r.stdout and "optim.lr=0.123" in r.stdout
    csv = pd.read_csv(tmp_path / "r.csv")
    assert csv["run"].tolist() == ["b", "a"] and csv["image_size"].tolist() == [96, 128]
    assert (tmp_path / "curves.png").stat().st_size > 1000
