"""facelab compare: a paired bootstrap over persons between two runs on the same split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facelab.data.labels import MISSING
from facelab.errors import ConfigError
from facelab.evaluate.compare import compare_probs


def _onehot(labels: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k)[labels]


def test_a_perfect_run_beats_a_random_one_and_equal_runs_tie():
    rng = np.random.default_rng(0)
    n = 300
    y = {"mask": rng.integers(0, 3, n), "gender": rng.integers(0, 2, n), "age": np.full(n, MISSING)}
    groups = np.repeat(np.arange(n // 3), 3)  # three images per person
    good = {"mask": _onehot(y["mask"], 3), "gender": _onehot(y["gender"], 2), "age": np.full((n, 3), 1 / 3)}
    bad = {"mask": _onehot(rng.integers(0, 3, n), 3), "gender": _onehot(rng.integers(0, 2, n), 2),
           "age": np.full((n, 3), 1 / 3)}
    table = compare_probs(y, bad, good, groups, n=200).set_index("task")
    assert list(table.index) == ["mask", "gender"]  # age has no labels here
    assert table.loc["mask", "f1_b"] == 1.0 and table.loc["mask", "p_b_better"] == 1.0
    assert table.loc["mask", "ci_low"] > 0.3 and table.loc["gender", "persons"] == n // 3
    same = compare_probs(y, good, good, groups, n=50).set_index("task")
    assert (same["diff"] == 0).all() and (same["p_b_better"] == 0).all()


def test_interval_widens_when_whole_persons_are_resampled():
    """The same images grouped into fewer persons carry less evidence: a wider interval."""
    rng = np.random.default_rng(1)
    n = 400
    y = {"mask": np.full(n, MISSING), "gender": rng.integers(0, 2, n), "age": np.full(n, MISSING)}
    flip = rng.random(n) < 0.2
    a = {"mask": np.full((n, 3), 1 / 3), "gender": _onehot(np.where(flip, 1 - y["gender"], y["gender"]), 2),
         "age": np.full((n, 3), 1 / 3)}
    b = {**a, "gender": _onehot(y["gender"], 2)}
    many = compare_probs(y, a, b, np.arange(n), n=300).iloc[0]
    few = compare_probs(y, a, b, np.repeat(np.arange(20), 20), n=300).iloc[0]
    assert few["ci_high"] - few["ci_low"] > many["ci_high"] - many["ci_low"]


def test_compare_runs_on_the_validation_split_and_refuse_different_splits(tmp_path):
    from conftest import make_competition, run_cli

    from facelab.evaluate.compare import compare_runs
    from facelab.train.config import load_config
    from facelab.train.trainer import fit

    torch.set_num_threads(1)
    comp = make_competition(tmp_path / "comp", n_people=10)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"data:\n  sources:\n    - {{kind: competition, path: '{comp}'}}\n")
    tiny = ["model.backbone=mobilenet_v3_small", "model.pretrained=''", "data.image_size=32",
            "batch_size=8", "epochs=1", "threads=1", "patience=0", "data.test_fraction=0.25",
            "data.val_fraction=0.2"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACELAB_CACHE", str(tmp_path / "cache"))
        fit(load_config(cfg_path, tiny), tmp_path / "a")
        fit(load_config(cfg_path, [*tiny, "seed=1", "data.image_size=40"]), tmp_path / "b")
        fit(load_config(cfg_path, [*tiny, "data.split_seed=7"]), tmp_path / "other_split")
        table = compare_runs(tmp_path / "a", tmp_path / "b", n=50)
        assert set(table["task"]) == {"mask", "gender", "age"}
        assert np.allclose(table["diff"], table["f1_b"] - table["f1_a"], atol=1e-3)
        assert (table["ci_low"] <= table["ci_high"]).all()
        with pytest.raises(ConfigError, match="different 'val' rows"):
            compare_runs(tmp_path / "a", tmp_path / "other_split", n=10)
        r = run_cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--n", "20",
                    "--csv", str(tmp_path / "cmp.csv"), cwd=tmp_path, cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert "p_b_better" in r.stdout and (tmp_path / "cmp.csv").is_file()
