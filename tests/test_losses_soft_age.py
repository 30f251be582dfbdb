"""Soft age-group targets (loss.age_sigma): boundary ages train towards both groups."""

import numpy as np
import pytest
import torch

from facelab.data.labels import AgeScheme
from facelab.errors import ConfigError
from facelab.train.losses import LossConfig, MultiTaskLoss, soft_f1_loss, soft_nll


def test_soft_groups_near_and_far_from_boundaries():
    q = AgeScheme().soft_groups(np.array([5, 29, 30, 59, 60, 90, np.nan]), 2.0)
    assert np.allclose(q[:6].sum(1), 1)
    assert q[0, 0] > 0.999 and q[5, 2] > 0.999
    assert 0.5 < q[1, 0] < 0.7 and 0.5 < q[2, 1] < 0.7  # 29 mostly young, 30 mostly middle
    assert 0.5 < q[3, 1] < 0.7 and 0.5 < q[4, 2] < 0.7
    assert np.isnan(q[6]).all()
    # follows the configured thresholds
    assert AgeScheme(old_min=58).soft_groups(np.array([58]), 1.0)[0, 2] > 0.6
    with pytest.raises(ConfigError):
        AgeScheme().soft_groups(np.array([20]), 0)


def test_soft_losses_equal_hard_losses_for_one_hot_targets():
    torch.manual_seed(0)
    lp = torch.randn(6, 3).log_softmax(-1)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    onehot = torch.nn.functional.one_hot(y, 3).float()
    for kind in ("ce", "focal"):
        cfg = LossConfig(kind=kind, label_smoothing=0.1)
        hard = MultiTaskLoss(cfg)({"mask": lp, "gender": lp[:, :2].log_softmax(-1), "age": lp},
                                  {"mask": y, "gender": y % 2, "age": y})[0]
        soft = MultiTaskLoss(cfg)({"mask": lp, "gender": lp[:, :2].log_softmax(-1), "age": lp},
                                  {"mask": y, "gender": y % 2, "age": y, "age_soft": onehot})[0]
        assert torch.allclose(hard, soft, atol=1e-6)
    assert torch.allclose(soft_f1_loss(lp.exp(), y), soft_f1_loss(lp.exp(), y, q=onehot))
    assert torch.isclose(soft_nll(lp, onehot, LossConfig(label_smoothing=0)),
                         -lp.gather(1, y[:, None]).mean())


def test_soft_targets_change_the_loss_and_nan_rows_fall_back_to_hard():
    lp = torch.log(torch.tensor([[0.6, 0.4, 0.0001], [0.1, 0.8, 0.1]]))
    y = torch.tensor([0, 1])
    loss = MultiTaskLoss(LossConfig(label_smoothing=0, task_weights={"mask": 0, "gender": 0, "age": 1}))
    base = {"mask": torch.tensor([-1, -1]), "gender": torch.tensor([-1, -1]), "age": y}
    hard = loss({"mask": lp, "gender": lp[:, :2], "age": lp}, base)[0]
    soft_q = torch.tensor([[0.6, 0.4, 0.0], [float("nan")] * 3])
    soft = loss({"mask": lp, "gender": lp[:, :2], "age": lp}, {**base, "age_soft": soft_q})[0]
    # row 0 is scored against its soft target, row 1 (NaN: no exact age) against its label
    assert not torch.isclose(soft, hard)
    expected = (-(soft_q[0] * lp[0]).sum() - lp[1, 1]) / 2
    assert torch.isclose(soft, expected)


def test_age_sigma_validated():
    with pytest.raises(ConfigError, match="age_sigma"):
        LossConfig(age_sigma=-1)
