"""Loss and head switches: soft-F1, weighted loss terms, ArcFace / CosFace margin heads."""

from __future__ import annotations

import math

import pytest
import torch

from facelab.data.labels import MISSING, NUM_CLASSES, TASKS, decode
from facelab.errors import ConfigError
from facelab.models.heads import MarginHead, class18_log_probs, create_head, task_log_probs
from facelab.train.config import ModelConfig, load_config
from facelab.train.losses import LossConfig, MultiTaskLoss, soft_f1_loss


def test_soft_f1_value_matches_hand_computation_and_ignores_missing():
    probs = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.9, 0.1]])
    y = torch.tensor([0, 1, 1, MISSING])
    # class 0: tp .8, fp .7, fn .2 -> F1 .64; class 1: tp 1.3, fp .2, fn .7 -> 2.6/3.5
    expected = 1 - (1.6 / 2.5 + 2.6 / 3.5) / 2
    assert float(soft_f1_loss(probs, y)) == pytest.approx(expected, abs=1e-6)


def test_soft_f1_gradient_raises_the_true_class_and_is_lower_for_better_predictions():
    y = torch.tensor([0, 1, 2, 1])
    logits = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    loss = soft_f1_loss(logits.softmax(-1), y)
    loss.backward()
    assert all(logits.grad[i, y[i]] < 0 for i in range(4))  # descent raises the true logit
    assert torch.autograd.gradcheck(lambda z: soft_f1_loss(z.softmax(-1), y), (logits.detach().requires_grad_(),))
    good = torch.nn.functional.one_hot(y, 3).double() * 5
    assert soft_f1_loss(good.softmax(-1), y) < loss
    assert float(soft_f1_loss(torch.nn.functional.one_hot(y, 3).double(), y)) == pytest.approx(0, abs=1e-6)


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = {t: torch.randn(n, k, generator=g) for t, k in (("mask", 3), ("gender", 2), ("age", 3))}
    y = {"mask": torch.tensor([0, 1, 2, 0, MISSING, 1, 2, 0]),
         "gender": torch.tensor([0, 1, MISSING, 1, 0, 1, 0, MISSING]),
         "age": torch.tensor([MISSING, 0, 1, 2, 0, MISSING, 1, 2])}
    return logits, y


def test_weighted_sum_of_terms_equals_the_weighted_parts():
    logits, y = _batch()
    lp = task_log_probs(logits)
    focal = MultiTaskLoss(LossConfig(kind="focal"))(lp, y)[0]
    f1 = MultiTaskLoss(LossConfig(kind="soft_f1"))(lp, y)[0]
    both, parts = MultiTaskLoss(LossConfig(terms={"focal": 0.6, "soft_f1": 0.4}))(lp, y)
    assert float(both) == pytest.approx(0.6 * float(focal) + 0.4 * float(f1), rel=1e-6)
    assert float(f1) != pytest.approx(float(focal))
    assert {"focal_mask", "soft_f1_age"} <= set(parts)
    # The flat 18-way head: CE/focal on consistent-class sets, soft-F1 on task marginals.
    joint = torch.randn(8, NUM_CLASSES).log_softmax(-1)
    f1_flat = MultiTaskLoss(LossConfig(kind="soft_f1"))({}, y, joint=joint)[0]
    f1_marg = MultiTaskLoss(LossConfig(kind="soft_f1"))(task_log_probs({"all": joint}), y)[0]
    assert float(f1_flat) == pytest.approx(float(f1_marg), rel=1e-6)
    ce_flat = MultiTaskLoss(LossConfig(kind="ce"))({}, y, joint=joint)[0]
    mix_flat = MultiTaskLoss(LossConfig(terms={"ce": 0.5, "soft_f1": 0.5}))({}, y, joint=joint)[0]
    assert float(mix_flat) == pytest.approx(0.5 * float(ce_flat) + 0.5 * float(f1_flat), rel=1e-6)


def test_unknown_loss_term_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown loss kind"):
        load_config(None, ["loss.terms={focal: 0.5, dice: 0.5}"])


def _head_with_angles(kind, angles, m=None, layout="multitask"):
    """A 2-d margin head whose 'mask' class k sits at angle angles[k] from the x axis."""
    head = create_head(layout, 2, dropout=0.0, margin=kind, scale=30.0, m=m)
    with torch.no_grad():
        for w in head.weight.values():
            w.copy_(torch.randn(w.shape))
        head.weight["mask" if layout == "multitask" else "all"][: len(angles)] = torch.tensor(
            [[math.cos(a), math.sin(a)] for a in angles])
    return head


def test_arcface_target_logit_is_s_cos_theta_plus_m_and_others_stay_s_cos():
    head = _head_with_angles("arcface", [0.3, 1.0, 2.0])
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    y = {"mask": torch.tensor([1, MISSING]), "gender": torch.tensor([MISSING, MISSING]),
         "age": torch.tensor([MISSING, MISSING])}
    with torch.no_grad():
        plain = head(feats)["mask"]
        margin = head(feats, y)["mask"]
    expect_plain = 30 * torch.cos(torch.tensor([0.3, 1.0, 2.0]))
    assert torch.allclose(plain[0], expect_plain, atol=1e-5)
    assert float(margin[0, 1]) == pytest.approx(30 * math.cos(1.0 + 0.5), abs=1e-4)
    assert torch.allclose(margin[0, [0, 2]], expect_plain[[0, 2]], atol=1e-5)
    assert torch.allclose(margin[1], plain[1])  # unknown label: no margin
    assert float(margin[0, 1]) < float(plain[0, 1]) - 5  # the margin really bites


def test_cosface_target_logit_is_s_times_cos_minus_m():
    head = _head_with_angles("cosface", [0.3, 1.0, 2.0])
    y = {"mask": torch.tensor([2]), "gender": torch.tensor([MISSING]), "age": torch.tensor([0])}
    out = head(torch.tensor([[2.0, 0.0]]), y)["mask"].detach()
    assert float(out[0, 2]) == pytest.approx(30 * (math.cos(2.0) - 0.35), abs=1e-4)
    assert float(out[0, 0]) == pytest.approx(30 * math.cos(0.3), abs=1e-4)


def test_flat18_margin_head_puts_the_margin_on_every_consistent_class():
    head = create_head("flat18", 4, dropout=0.0, margin="cosface", scale=10.0, m=0.2)
    feats = torch.randn(1, 4)
    y = {"mask": torch.tensor([1]), "gender": torch.tensor([MISSING]), "age": torch.tensor([MISSING])}
    diff = head(feats)["all"] - head(feats, y)["all"]
    consistent = torch.tensor([decode(c)[0] == 1 for c in range(NUM_CLASSES)])
    assert torch.allclose(diff[0, consistent], torch.tensor(2.0))
    assert torch.allclose(diff[0, ~consistent], torch.tensor(0.0))


def test_margin_config_builds_a_cosine_head_whose_outputs_feed_the_usual_log_probs():
    model = ModelConfig("mobilenet_v3_small", "", head="multitask", margin="arcface").build()
    assert isinstance(model.head, MarginHead) and model.head.margin == 0.5
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert set(task_log_probs(out)) == set(TASKS) and class18_log_probs(out).shape == (2, 18)
    assert float(out["mask"].abs().max()) <= 30 + 1e-4  # scale * cos
    assert ModelConfig(margin="cosface", margin_m=0.1, pretrained="").build().head.margin == 0.1
    with pytest.raises(ConfigError, match="margin"):
        load_config(None, ["model.margin=sphereface"])


def test_trainer_feeds_the_targets_to_the_margin_head(tmp_path):
    from facelab.train.trainer import Trainer

    cfg = load_config(None, ["model.backbone=mobilenet_v3_small", "model.pretrained=''",
                             "model.margin=cosface", "model.dropout=0"])
    torch.manual_seed(0)
    model = cfg.model.build().eval()
    x = torch.rand(4, 3, 32, 32)
    y = {"mask": torch.tensor([0, 1, 2, MISSING]), "gender": torch.tensor([1, 0, MISSING, 1]),
         "age": torch.tensor([2, MISSING, 0, 1])}
    loss_fn = MultiTaskLoss(LossConfig())
    with torch.no_grad():
        got = Trainer(cfg, tmp_path)._batch_loss(model, x, y, torch.Generator(), loss_fn)
        with_margin = loss_fn(task_log_probs(model.head(model.features(x), y)), y)[0]
        without = loss_fn(task_log_probs(model(x)), y)[0]
    assert float(got) == pytest.approx(float(with_margin))
    assert float(got) > float(without)  # the margin makes the targets harder
