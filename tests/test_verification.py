"""Verification metrics: thresholds never chosen on their own fold, ROC, TAR@FAR, report files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facelab.evaluate.verification import (
    best_threshold,
    evaluate_distances,
    load_pairs,
    lofo_accuracy,
    roc_auc,
    tar_at_far,
    write_report,
)


def test_best_threshold_and_perfect_separation():
    d = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    y = np.array([1, 1, 1, 0, 0, 0])
    assert 0.3 < best_threshold(d, y) < 0.7
    r = evaluate_distances(d, y, np.array([1, 2, 3, 1, 2, 3]))
    assert r.accuracy == 1.0 and r.roc_auc == 1.0 and r.tar_at_far_1e2 == 1.0


def test_lofo_uses_other_folds_only():
    # fold 1 has its genuine pairs at large distances: a threshold chosen on folds 2-3
    # (which say "small = same") must get fold 1 wrong, a self-chosen one would get it right.
    d = np.array([0.9, 0.95, 0.1, 0.2, 0.1, 0.2, 0.8, 0.9, 0.8, 0.9])
    y = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    f = np.array([1, 1, 2, 2, 3, 3, 2, 2, 3, 3])
    acc, detail = lofo_accuracy(d, y, f)
    assert detail[1]["accuracy"] == 0.0
    assert detail[2]["accuracy"] == 1.0 and detail[3]["accuracy"] == 1.0


def test_auc_and_tar_at_far_match_brute_force():
    rng = np.random.default_rng(0)
    gen, imp = rng.normal(0.5, 0.2, 300), rng.normal(1.0, 0.2, 1000)
    d, y = np.r_[gen, imp], np.r_[np.ones(300), np.zeros(1000)].astype(int)
    brute = np.mean(gen[:, None] < imp[None, :])
    assert roc_auc(d, y) == pytest.approx(brute, abs=1e-3)
    t = np.sort(imp)[10]  # accept everything below the 11th impostor: 10 false accepts = 1%
    assert tar_at_far(d, y, 0.01) == pytest.approx(np.mean(gen < t), abs=1e-9)
    assert tar_at_far(d, y, 0.001) <= tar_at_far(d, y, 0.01)


def test_missing_embeddings_count_as_rejects_and_files(tmp_path):
    import pandas as pd

    csv = tmp_path / "pairs.csv"
    csv.write_text("image_a,image_b,same\nA/1.jpg,A/2.jpg,1\nB/1.jpg,C/1.jpg,0\nC/2.jpg,C/3.jpg,1\n")
    df = load_pairs(csv)
    assert set(df["fold"]) <= {1, 2, 3}
    assert df.loc[df.image_a == "C/2.jpg", "fold"].item() == df.loc[df.image_a.str.startswith("C"), "fold"].iloc[0]
    d = np.array([0.2, 0.9, np.inf])
    r = evaluate_distances(d, df["same"].to_numpy(), df["fold"].to_numpy(), failed=["C/3.jpg"])
    assert r.tar_at_far_1e2 < 1.0  # the genuine pair without an embedding is a miss
    write_report(r, d, df, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["failed_images"] == ["C/3.jpg"]
    assert (tmp_path / "out" / "roc.png").stat().st_size > 1000
    assert len(pd.read_csv(tmp_path / "out" / "scores.csv")) == 3


def test_folds_without_pairs_are_a_clear_error(tmp_path):
    from facelab.errors import DataFormatError
    from facelab.evaluate.verification import run_verify_eval

    csv = tmp_path / "pairs.csv"
    csv.write_text("image_a,image_b,same,fold\nA/1.jpg,A/2.jpg,1,1\nB/1.jpg,C/1.jpg,0,2\n")
    with pytest.raises(DataFormatError, match=r"no pairs in fold\(s\) \[4, 5\]; its folds are \[1, 2\]"):
        run_verify_eval(csv, pipeline=None, folds=[4, 5])


def test_a_bad_student_checkpoint_is_one_error_not_a_skip_per_image(tmp_path):
    from PIL import Image

    from facelab.embed.base import get_embedder
    from facelab.embed.pipeline import FacePipeline, PipelineConfig
    from facelab.errors import CheckpointError
    from facelab.evaluate.verification import run_verify_eval

    for name in ("A/1.jpg", "A/2.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (64, 64), (120, 90, 60)).save(tmp_path / name)
    csv = tmp_path / "pairs.csv"
    csv.write_text("image_a,image_b,same\nA/1.jpg,A/2.jpg,1\n")
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    pipe = FacePipeline(PipelineConfig(detector="whole"),
                        get_embedder("mfn-student", checkpoint=str(tmp_path / "bad.pt")))
    with pytest.raises(CheckpointError, match="bad.pt"):
        run_verify_eval(csv, pipe, progress=False)
