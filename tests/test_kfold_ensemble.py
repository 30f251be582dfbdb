"""k-fold training, out-of-fold files, resume, and soft/hard-vote ensembles on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_competition, run_cli

from facelab.data.labels import TASKS
from facelab.errors import CheckpointError, ConfigError
from facelab.predict.ensemble import expand_runs, hard_vote, soft_vote, vote

FOLDS = 3
TINY = [
    "model.backbone=mobilenet_v3_small",
    "model.pretrained=''",
    "data.image_size=32",
    "batch_size=8",
    "epochs=1",
    "threads=1",
    "data.test_fraction=0.25",
    "optim.lr=0.003",
]


@pytest.fixture(scope="module")
def kf(tmp_path_factory):
    """One 3-fold run through the CLI, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("kf")
    comp = make_competition(root / "comp")
    cfg = root / "c.yaml"
    cfg.write_text(f"data:\n  sources:\n    - {{kind: competition, path: '{comp}'}}\n")
    sets = [x for s in TINY for x in ("--set", s)]
    r = run_cli(
        "kfold",
        "-c",
        str(cfg),
        "--folds",
        str(FOLDS),
        "-o",
        str(root / "kf"),
        *sets,
        cwd=root,
        cache=root / "cache",
    )
    assert r.returncode == 0, r.stderr
    return {
        "root": root,
        "comp": comp,
        "cfg": cfg,
        "out": root / "kf",
        "sets": sets,
        "stdout": r.stdout,
    }


@pytest.fixture
def data(kf, monkeypatch):
    """The run's prepared data, from the run's own pixel cache."""
    from facelab.train.config import load_config
    from facelab.train.trainer import prepare_for

    monkeypatch.setenv("FACELAB_CACHE", str(kf["root"] / "cache"))
    cfg = load_config(kf["cfg"], [*TINY, "data.val_fraction=0"])
    return prepare_for(cfg)


def test_folds_are_person_disjoint_and_oof_covers_non_test_rows_once(kf):
    out = kf["out"]
    folds = pd.read_csv(out / "folds.csv")
    assert folds.groupby("person")["fold"].nunique().max() == 1  # one fold per person
    assert set(folds["fold"]) == {-1, *range(FOLDS)}
    oof = pd.read_csv(out / "oof.csv")
    non_test = folds[folds["fold"] >= 0]
    assert sorted(oof["key"]) == sorted(non_test["key"]) and oof["key"].is_unique
    assert not set(oof["person"]) & set(folds.loc[folds["fold"] == -1, "person"])
    for k in range(FOLDS):  # fold k's model validated exactly on the rows it predicts in oof.csv
        split = pd.read_csv(out / f"fold_{k}" / "split.csv")
        val = set(split.loc[split["split"] == "val", "sample_id"])
        assert val == set(oof.loc[oof["fold"] == k, "sample_id"])
        assert not val & set(split.loc[split["split"] == "train", "sample_id"])
    probs = oof[[c for c in oof.columns if c.startswith("p_mask_")]].sum(1)
    assert np.allclose(probs, 1, atol=1e-4)
    assert {"y_mask", "y_gender", "y_age", "path"} <= set(oof.columns)
    test = pd.read_csv(out / "test_predictions.csv")
    assert sorted(test["fold"].unique()) == list(range(FOLDS))
    summary = json.loads((out / "kfold_summary.json").read_text())
    assert len(summary["fold_val_scores"]) == FOLDS and "score" in summary["test_soft_vote"]
    assert "soft-vote ensemble" in kf["stdout"]


def test_resume_skips_finished_folds_and_continues_an_interrupted_one(kf, data):
    from facelab.train.config import load_config
    from facelab.train.kfold import fit_kfold

    out = kf["out"]
    stamps = {k: (out / f"fold_{k}" / "best.pt").stat().st_mtime_ns for k in range(FOLDS)}
    r = run_cli(
        "kfold",
        "-c",
        str(kf["cfg"]),
        "--folds",
        str(FOLDS),
        "-o",
        str(out),
        *kf["sets"],
        cwd=kf["root"],
        cache=kf["root"] / "cache",
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("skipped (finished before)") == FOLDS
    # fold 1 "interrupted" after its last epoch but before done.json: resumed, not retrained
    (out / "fold_1" / "done.json").unlink()
    res = fit_kfold(load_config(kf["cfg"], TINY), out, FOLDS, resume=True, data=data)
    assert res.trained == [1]
    assert (out / "fold_1" / "done.json").is_file()
    assert len(pd.read_csv(out / "fold_1" / "metrics.csv")) == 1  # no extra epoch was run
    assert {k: (out / f"fold_{k}" / "best.pt").stat().st_mtime_ns for k in range(FOLDS)} == stamps
    with pytest.raises(ConfigError, match="another fold assignment"):
        fit_kfold(load_config(kf["cfg"], TINY), out, FOLDS - 1, resume=True, data=data)


def test_soft_vote_is_the_mean_of_fold_probabilities_and_hard_vote_a_majority(kf, data):
    from facelab.evaluate.ensemble import evaluate_ensemble
    from facelab.evaluate.metrics import all_metrics
    from facelab.predict.ensemble import ensemble_pixels
    from facelab.predict.run import AttributeRun

    idx = data.indices("test")
    folds = expand_runs([kf["out"]])
    assert [p.name for p in folds] == [f"fold_{k}" for k in range(FOLDS)]
    single = [AttributeRun.load(p, tta=False).predict_pixels(data.cache.pixels, idx) for p in folds]
    soft = ensemble_pixels([kf["out"]], data, idx, "soft", tta=False)
    for t in TASKS:
        assert np.allclose(soft[t], np.mean([s[t] for s in single], 0), atol=1e-6)
        assert not np.allclose(soft[t], single[0][t], atol=1e-4)  # an ensemble, not one model
    hard = ensemble_pixels([kf["out"]], data, idx, "hard", tta=False)
    for t in TASKS:
        votes = np.stack([s[t].argmax(1) for s in single])  # (folds, N)
        for n in range(len(idx)):
            counts = np.bincount(votes[:, n], minlength=single[0][t].shape[1])
            tied = np.flatnonzero(counts == counts.max())
            expect = tied[np.argmax(soft[t][n, tied])]
            assert hard[t][n].argmax() == expect
        assert np.allclose(hard[t].sum(1), 1)
    metrics = evaluate_ensemble([kf["out"]], data, "test", "soft", tta=False)
    targets = {t: data.targets[t][idx] for t in TASKS}
    assert metrics == all_metrics(targets, soft)


def test_ensemble_cli_writes_the_predict_files(kf, data):
    from facelab.predict.predict import input_table, predict_table

    root = kf["root"]
    r = run_cli(
        "ensemble",
        str(kf["out"]),
        "--vote",
        "soft",
        "--tta",
        "--competition",
        str(kf["comp"]),
        "-o",
        str(root / "ens.csv"),
        cwd=root,
        cache=root / "cache",
    )
    assert r.returncode == 0, r.stderr
    sub = pd.read_csv(root / "submission.csv")
    info = pd.read_csv(kf["comp"] / "eval" / "info.csv")
    assert (
        list(sub.columns) == ["ImageID", "ans"]
        and sub["ImageID"].tolist() == info["ImageID"].tolist()
    )
    assert sub["ans"].between(0, 17).all()
    ens = pd.read_csv(root / "ens.csv")
    table = input_table(competition=str(kf["comp"]))
    parts = [predict_table(p, table, tta=True)[0] for p in expand_runs([kf["out"]])]
    assert list(ens.columns) == list(parts[0].columns)
    cols = [c for c in ens.columns if c.startswith("p_")]
    assert np.allclose(ens[cols], np.mean([p[cols].to_numpy() for p in parts], 0), atol=1e-5)
    r = run_cli(
        "ensemble",
        str(kf["out"]),
        "--vote",
        "hard",
        "--split",
        "test",
        cwd=root,
        cache=root / "cache",
    )
    assert r.returncode == 0, r.stderr
    assert "hard vote" in r.stdout and "score" in r.stdout


def test_hard_vote_majority_and_tie_break():
    a = {"t": np.array([[0.9, 0.1, 0.0], [0.5, 0.4, 0.1]])}
    b = {"t": np.array([[0.2, 0.8, 0.0], [0.1, 0.1, 0.8]])}
    c = {"t": np.array([[0.3, 0.7, 0.0], [0.2, 0.7, 0.1]])}
    h = hard_vote([a, b, c])["t"]
    assert h[0].argmax() == 1  # two of three say 1
    # majority beats a confident minority: soft voting would pick class 0 here
    m = [
        {"t": np.array([[0.99, 0.01]])},
        {"t": np.array([[0.4, 0.6]])},
        {"t": np.array([[0.4, 0.6]])},
    ]
    assert soft_vote(m)["t"][0].argmax() == 0 and hard_vote(m)["t"][0].argmax() == 1
    # row 1: one vote each; the tie goes to the highest mean probability (class 1: 0.4)
    assert h[1].argmax() == 1 and np.allclose(h.sum(1), 1)
    # a 1:1 tie between two models: class 1 wins on mean probability (0.55 vs 0.45)
    two = hard_vote([{"t": np.array([[0.6, 0.4]])}, {"t": np.array([[0.3, 0.7]])}])["t"]
    assert two[0].argmax() == 1
    with pytest.raises(ConfigError, match="vote 'median' unknown"):
        vote([a], "median")


def test_expand_runs_errors_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        expand_runs([tmp_path])


def test_kfold_oof_labels_are_corrected_even_when_every_fold_is_resumed(kf, data, tmp_path):
    import shutil

    from facelab.train.config import load_config
    from facelab.train.kfold import fit_kfold

    out = tmp_path / "kf"
    shutil.copytree(kf["out"], out)  # every fold finished: nothing is trained below
    oof = pd.read_csv(out / "oof.csv", dtype={"key": str})
    row = oof[oof["y_gender"] >= 0].iloc[0]
    flipped = 1 - int(row["y_gender"])
    csv = tmp_path / "corr.csv"
    csv.write_text(f"path,task,old,new\n{row['key']},gender,,{flipped}\n")
    before = data.targets["gender"].copy()
    cfg = load_config(kf["cfg"], [*TINY, f"data.corrections={csv}"])
    res = fit_kfold(cfg, out, FOLDS, resume=True, data=data)
    assert res.trained == []
    got = res.oof.set_index("key").loc[row["key"], "y_gender"]
    assert got == flipped
    assert np.array_equal(data.targets["gender"], before)  # the caller's data are not changed
