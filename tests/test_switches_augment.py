"""Augmentation switches: CutMix, vertical CutMix, MixUp (labels mixed by area / weight),
random erasing, center crop (same in training and evaluation)."""

from __future__ import annotations

import pytest
import torch

from facelab.data.labels import MISSING
from facelab.errors import ConfigError
from facelab.models.heads import task_log_probs
from facelab.train.augment import AugmentConfig, add_eval_center_crop, augment, center_crop
from facelab.train.config import TrainConfig, load_config
from facelab.train.losses import LossConfig, MultiTaskLoss
from facelab.train.mixing import mix_batch

OFF = {"hflip": 0.0, "scale": 0.0, "translate": 0.0, "rotate": 0.0, "color": 0.0}


def _ids(b=6, h=10, w=12):
    """Image i is filled with the value i, so every pixel tells where it came from."""
    return torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, h, w).clone()


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_lam_is_the_kept_area_and_the_box_comes_from_the_partner(seed):
    x = _ids()
    out, mix = mix_batch(x, AugmentConfig(cutmix=1.0), torch.Generator().manual_seed(seed))
    assert mix.kind == "cutmix"
    top, bottom, left, right = mix.box
    inside = torch.zeros(10, 12, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    for i in range(6):
        assert torch.all(out[i][:, inside] == mix.perm[i])  # pasted from the partner
        assert torch.all(out[i][:, ~inside] == i)  # the rest is the image itself
    assert mix.lam == pytest.approx(1 - inside.float().mean().item())
    assert 0 < inside.sum() or mix.lam == 1


def test_vertical_cutmix_left_from_the_image_right_from_the_partner():
    x = _ids()
    out, mix = mix_batch(x, AugmentConfig(vcutmix=1.0), torch.Generator().manual_seed(0))
    assert mix.kind == "vcutmix" and mix.lam == 0.5 and mix.box == (0, 10, 6, 12)
    assert not torch.equal(mix.perm, torch.arange(6))
    for i in range(6):
        assert torch.all(out[i, :, :, :6] == i) and torch.all(out[i, :, :, 6:] == mix.perm[i])
    cuts = set()
    for seed in range(8):
        out, mix = mix_batch(x, AugmentConfig(vcutmix=1.0, vcutmix_cut="random"),
                             torch.Generator().manual_seed(seed))
        cut = mix.box[2]
        cuts.add(cut)
        assert mix.lam == pytest.approx(cut / 12)
        assert torch.all(out[0, :, :, :cut] == 0) and torch.all(out[0, :, :, cut:] == mix.perm[0])
    assert len(cuts) > 2


def test_mixup_blends_images_with_the_drawn_weight():
    x = torch.rand(5, 3, 8, 8)
    out, mix = mix_batch(x, AugmentConfig(mixup=1.0), torch.Generator().manual_seed(1))
    assert mix.kind == "mixup" and 0 < mix.lam < 1
    assert torch.allclose(out, mix.lam * x + (1 - mix.lam) * x[mix.perm])
    assert not torch.allclose(out, x)


def test_no_mixing_draws_nothing_and_probabilities_must_sum_to_at_most_one():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8)
    out, mix = mix_batch(x, AugmentConfig(), g)
    assert mix is None and out is x
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())
    with pytest.raises(ConfigError, match="at most one"):
        load_config(None, ["augment.cutmix=0.6", "augment.mixup=0.6"])


def test_mixed_batch_loss_is_lam_weighted_and_each_term_ignores_its_missing_labels(tmp_path):
    from facelab.train.trainer import Trainer

    cfg = TrainConfig()
    cfg.augment = AugmentConfig(cutmix=1.0)
    trainer = Trainer(cfg, tmp_path)
    y = {"mask": torch.tensor([0, 1, 2, MISSING]), "gender": torch.tensor([1, MISSING, 0, 1]),
         "age": torch.tensor([MISSING, MISSING, 2, 0])}
    head = torch.nn.Linear(3, 8)

    def model(x):
        z = head(x.mean((2, 3)))
        return {"mask": z[:, :3], "gender": z[:, 3:5], "age": z[:, 5:]}

    loss_fn = MultiTaskLoss(LossConfig())
    x = torch.rand(4, 3, 16, 16)
    got = trainer._batch_loss(model, x, y, torch.Generator().manual_seed(3), loss_fn)
    mixed, mix = mix_batch(x, cfg.augment, torch.Generator().manual_seed(3))
    lp = task_log_probs(model(mixed))
    want = (mix.lam * loss_fn(lp, y)[0]
            + (1 - mix.lam) * loss_fn(lp, {t: v[mix.perm] for t, v in y.items()})[0])
    got, want = float(got.detach()), float(want.detach())
    assert got == pytest.approx(want, rel=1e-6)
    assert got != pytest.approx(float(loss_fn(lp, y)[0].detach()))


def test_random_erasing_changes_pixels_only_when_on():
    x = torch.full((4, 3, 16, 16), 0.5)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment(x, AugmentConfig(**OFF), g), x)
    out = augment(x, AugmentConfig(**OFF, erase=1.0, erase_area=[0.1, 0.2]), g)
    changed = (out != x).any(1).float().mean((1, 2))
    assert torch.all(changed > 0.05) and torch.all(changed < 0.3)


def test_center_crop_zooms_and_train_and_eval_crops_match():
    x = torch.zeros(2, 3, 20, 20)
    x[:, :, 2:18, 2:18] = 1.0  # a 2-pixel dark border around a bright face
    cropped = center_crop(x, 0.8)  # the central 16 x 16 pixels: the border is gone
    assert cropped.shape == x.shape and cropped.min() > 0.5  # (edge pixels blend a little)
    assert cropped[..., 1:-1, 1:-1].min() > 0.99
    train = augment(x, AugmentConfig(**OFF, center_crop=0.8), torch.Generator().manual_seed(0))
    assert torch.allclose(train, cropped, atol=1e-6)
    model = add_eval_center_crop(torch.nn.Identity(), 0.8)
    assert torch.allclose(model.eval()(x), cropped) and torch.equal(model.train()(x), x)
    assert torch.equal(center_crop(x, 1.0), x)
    with pytest.raises(ConfigError, match="center_crop"):
        load_config(None, ["augment.center_crop=1.5"])
