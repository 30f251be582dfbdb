"""Decision biases for macro F1 (facelab.predict.calibrate): tuned on validation, kept only
where cross-fitting over validation persons says they help, applied by evaluate/predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from facelab.data.labels import MISSING
from facelab.errors import ConfigError
from facelab.predict.calibrate import (
    Calibration,
    TaskBias,
    calibrate,
    checkpoint_calibration,
    fit_biases,
    macro_f1,
)


def test_macro_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    for k in (2, 3):
        y, pred = rng.integers(0, k, 200), rng.integers(0, k, 200)
        pred[:5] = 0  # and a case where a class is never predicted
        assert macro_f1(y, pred, k) == pytest.approx(
            f1_score(y, pred, labels=list(range(k)), average="macro", zero_division=0))
    assert macro_f1(np.zeros(4, int), np.zeros(4, int), 3) == pytest.approx(1 / 3)


def _shifted(n: int, shift: np.ndarray, seed: int = 0):
    """Labels and log-probabilities of a model that is right in shape but pushed by `shift`
    toward some classes (like a focal/F1 loss over-predicting rare classes)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, n, p=[0.45, 0.4, 0.15])
    logits = rng.normal(0, 1.0, (n, 3))
    logits[np.arange(n), y] += 2.0
    logits += shift
    lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return y, lp


def test_fit_biases_undo_a_systematic_shift():
    y, lp = _shifted(3000, np.array([0.0, 1.2, 1.5]))
    bias = fit_biases(lp, y)
    assert bias[0] == 0 and bias[1] < -0.5 and bias[2] < -0.5
    assert macro_f1(y, (lp + bias).argmax(1), 3) > macro_f1(y, lp.argmax(1), 3) + 0.02


def test_no_evidence_means_no_bias():
    y = np.array([0, 1, 0, 1])
    lp = np.log(np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]))
    assert np.all(fit_biases(lp, y) == 0)  # already perfect: the smallest bias wins the tie


def _task_data(n_persons: int, shift: np.ndarray, seed: int):
    y, lp = _shifted(n_persons * 2, shift, seed)
    persons = np.repeat(np.arange(n_persons), 2)
    return y, np.exp(lp), persons


def test_calibrate_keeps_biases_only_where_they_help_held_out_people():
    y_age, p_age, persons = _task_data(400, np.array([0.0, 1.2, 1.5]), seed=1)
    y_g = (p_age[:, 0] > 0.5).astype(int)  # gender: a perfect 2-class task, nothing to gain
    p_g = np.stack([np.where(y_g == 0, 0.8, 0.2), np.where(y_g == 0, 0.2, 0.8)], 1)
    y_mask = np.full(len(y_age), MISSING)  # mask: 3 labelled rows only
    y_mask[:3] = [0, 1, 2]
    p_mask = np.full((len(y_age), 3), 1 / 3)
    cal = calibrate({"mask": p_mask, "gender": p_g, "age": p_age},
                    {"mask": y_mask, "gender": y_g, "age": y_age}, persons, repeats=3)
    age, gender, mask = cal.tasks["age"], cal.tasks["gender"], cal.tasks["mask"]
    assert age.used and age.val_gain > 0 and age.bias[2] < 0
    assert not gender.used
    assert not mask.used and "too few" in mask.reason
    # apply: renormalised probabilities whose argmax is argmax(log p + b), other tasks untouched
    out = cal.apply({"mask": p_mask, "gender": p_g, "age": p_age})
    assert np.allclose(out["age"].sum(1), 1)
    assert np.array_equal(out["age"].argmax(1), (np.log(p_age) + np.array(age.bias)).argmax(1))
    assert out["gender"] is p_g and out["mask"] is p_mask
    again = Calibration.from_dict(cal.to_dict())  # what best.pt stores
    assert again.tasks["age"].bias == age.bias and again.active
    assert "age: used" in cal.describe() and "gender: not used" in cal.describe()


def test_checkpoint_calibration_as_trained_and_by_request():
    class Cfg:
        calibrate = False

    assert checkpoint_calibration(Cfg().calibrate, {"calibration": {}}) is None
    stored = {"age": vars(TaskBias([0.0, -1.0, -1.0], True, 0.01, 0.02, "test"))}
    assert checkpoint_calibration(Cfg().calibrate, {"calibration": stored}, True).active
    with pytest.raises(ConfigError, match="no decision biases"):
        checkpoint_calibration(Cfg().calibrate, {"path": "runs/x/best.pt"}, True)


def test_predict_applies_the_stored_biases(tmp_path):
    """A run whose stored age bias is huge predicts that age group everywhere, unless
    --no-calibrate; the plain run predicts as before."""
    from conftest import make_competition

    from facelab.predict.predict import folder_table, predict_table
    from facelab.train.checkpoint import load_checkpoint, save_checkpoint
    from facelab.train.config import load_config
    from facelab.train.trainer import fit

    torch.set_num_threads(1)
    comp = make_competition(tmp_path / "comp", n_people=10, n_eval=6)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"data:\n  sources:\n    - {{kind: competition, path: '{comp}'}}\n")
    tiny = ["model.backbone=mobilenet_v3_small", "model.pretrained=''", "data.image_size=32",
            "batch_size=8", "epochs=1", "threads=1", "patience=0", "calibrate=true",
            "data.test_fraction=0.25", "data.val_fraction=0.2"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACELAB_CACHE", str(tmp_path / "cache"))
        fit(load_config(cfg_path, tiny), tmp_path / "run")
        ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
        ckpt.pop("path")
        ckpt["calibration"]["age"] = vars(TaskBias([0.0, 0.0, 50.0], True, 0.01, 0.0, "forced"))
        save_checkpoint(tmp_path / "run" / "best.pt", ckpt)
        table = folder_table(comp / "eval" / "images")
        biased, _ = predict_table(tmp_path / "run", table)
        plain, _ = predict_table(tmp_path / "run", table, calibrated=False)
    assert (biased["age"] == 2).all() and (biased["ans"] % 3 == 2).all()
    assert np.allclose(biased["p_age_>=60"], 1.0)
    assert np.array_equal(biased["mask"], plain["mask"]) and not (plain["p_age_>=60"] > 0.99).all()
