"""Training-engine switches: schedules, optimizers, SWA / EMA, samplers, age-band dropping,
label corrections, and a short tiny-model run with each switch on (plus exact resume)."""

from __future__ import annotations

import itertools
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from facelab.errors import ConfigError
from facelab.train.augment import center_crop
from facelab.train.averaging import EmaConfig, SwaConfig, WeightAverager, update_bn_keep_frozen
from facelab.train.config import load_config
from facelab.train.optim import OPTIMIZERS, OptimConfig, create_optimizer, create_scheduler
from facelab.train.sampling import WEAR_STEMS, wear_rows
from facelab.train.trainer import Trainer, fit, prepare_for

TINY = ["model.backbone=mobilenet_v3_small", "model.pretrained=''", "data.image_size=32",
        "batch_size=8", "epochs=1", "threads=1", "data.test_fraction=0.25",
        "data.val_fraction=0.2", "optim.lr=0.003", "patience=0"]


# ---- schedules and optimizers -------------------------------------------------------------

def _opt(lr=0.1):
    return torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=lr)


def test_plateau_schedule_lowers_the_lr_only_when_the_score_stalls():
    opt = _opt()
    sched = create_scheduler(opt, OptimConfig(schedule="plateau", plateau_patience=1,
                                              plateau_factor=0.5), 10, 5)
    for score in (0.5, 0.6, 0.7):  # improving: lr stays
        sched.step(score)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    for score in (0.7, 0.7):  # stalled for longer than the patience
        sched.step(score)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize("schedule", ["cyclic", "onecycle"])
def test_cyclic_and_onecycle_lrs_vary_within_a_run(schedule):
    opt = _opt()
    cfg = OptimConfig(lr=0.1, schedule=schedule, cycle_epochs=1.0, cycle_min=0.1)
    sched = create_scheduler(opt, cfg, 10, 3)
    lrs = []
    for _ in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(0.1, rel=0.05) and min(lrs) < 0.02
    rises = sum(b > a for a, b in itertools.pairwise(lrs))
    falls = sum(b < a for a, b in itertools.pairwise(lrs))
    assert rises >= 3 and falls > 3
    if schedule == "cyclic":  # three full cycles: the peak comes back
        assert lrs[5] == pytest.approx(0.1) and lrs[15] == pytest.approx(0.1)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_trains(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    opt = create_optimizer(model, OptimConfig(name=name, lr=0.01, weight_decay=0.0))
    first = None
    for _ in range(40):
        loss = ((model(x) - y) ** 2).mean()
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first


# ---- weight averaging ---------------------------------------------------------------------

def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _train_steps(model, opt, data, n=3):
    model.train()
    for i in range(n):
        loss = model(data[i % len(data)]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_swa_averages_epoch_weights_and_recomputes_batchnorm_stats():
    model = _bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [torch.randn(8, 3) * 3 + 1 for _ in range(4)]
    avg = WeightAverager(model, SwaConfig(start_epoch=2, lr=0.01), EmaConfig(), steps_per_epoch=3)
    assert avg.kind == "swa"
    snapshots = []
    for epoch in range(4):
        _train_steps(model, opt, data)
        if avg.swa_active(epoch):
            snapshots.append([p.detach().clone() for p in model.parameters()])
        avg.after_epoch(model, epoch, lambda: iter(data))
    averaged = avg.eval_model(model)
    assert averaged is not model and len(snapshots) == 3
    for p_avg, *snaps in zip(averaged.parameters(), *snapshots):
        assert torch.allclose(p_avg, torch.stack(snaps).mean(0), atol=1e-6)  # equal-weight mean
    # ... so it differs from the last epoch's weights (a bias before BatchNorm never moves)
    assert not torch.allclose(averaged[2].weight, model[2].weight)
    assert not torch.allclose(averaged[0].weight, model[0].weight)
    bn, raw_bn = averaged[1], model[1]
    with torch.no_grad():
        pre = averaged[0](torch.cat(data))
    assert torch.allclose(bn.running_mean, pre.mean(0), atol=1e-5)  # recomputed on the data
    assert int(bn.num_batches_tracked) == len(data)  # reset, then one pass
    assert not torch.allclose(bn.running_mean, raw_bn.running_mean)


def test_swa_lr_anneals_to_the_swa_lr():
    model = _bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    avg = WeightAverager(model, SwaConfig(start_epoch=1, lr=0.01, anneal_epochs=1), EmaConfig(), 4)
    sched = avg.scheduler(opt, [1.0])
    for _ in range(6):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


def test_update_bn_keeps_frozen_batchnorm_statistics():
    class Frozen(nn.Sequential):
        def train(self, mode=True):
            super().train(mode)
            self[1].eval()  # like Backbone.freeze: the first BN keeps its statistics
            return self

    model = Frozen(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.BatchNorm1d(4))
    with torch.no_grad():
        model[1].running_mean.fill_(7.0)
    update_bn_keep_frozen([torch.randn(8, 3)], model)
    assert torch.all(model[1].running_mean == 7.0)
    assert not torch.all(model[2].running_mean == 0.0)


def test_update_bn_uses_frozen_statistics_for_the_layers_after_them():
    class Frozen(nn.Sequential):
        def train(self, mode=True):
            super().train(mode)
            self[0].eval()  # frozen BN: normalises with its own (ImageNet-like) statistics
            return self

    model = Frozen(nn.BatchNorm1d(4), nn.BatchNorm1d(4))
    with torch.no_grad():
        model[0].running_mean.fill_(7.0)
        model[0].running_var.fill_(4.0)
    x = torch.randn(64, 4) + 7.0
    update_bn_keep_frozen([x], model)
    # The second BN sees (x - 7) / 2, not x: its mean is about 0, not about 7.
    expect = ((x - 7.0) / torch.sqrt(torch.tensor(4.0 + 1e-5))).mean(0)
    assert torch.allclose(model[1].running_mean, expect, atol=1e-5)
    assert model[0].momentum == 0.1 and model[1].momentum == 0.1


def test_ema_follows_the_weights_every_step_and_differs_from_raw():
    model = _bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    avg = WeightAverager(model, SwaConfig(), EmaConfig(decay=0.8), steps_per_epoch=3)
    expect = None
    data = [torch.randn(8, 3) for _ in range(3)]
    for i in range(5):
        _train_steps(model, opt, data[i % 3:i % 3 + 1], n=1)
        avg.after_step(model)
        cur = [p.detach().clone() for p in model.parameters()]
        expect = cur if expect is None else [0.8 * e + 0.2 * c for e, c in zip(expect, cur)]
    ema = avg.eval_model(model)
    for p_ema, e in zip(ema.parameters(), expect):
        assert torch.allclose(p_ema, e, atol=1e-6)
    assert not torch.allclose(ema[0].weight, model[0].weight)
    assert not torch.allclose(ema[2].weight, model[2].weight)
    assert not torch.equal(ema[1].running_mean, model[1].running_mean)  # buffers averaged too
    with pytest.raises(ConfigError, match="both on"):
        load_config(None, ["swa.start_epoch=1", "ema.decay=0.9"])


# ---- data: samplers, age band, corrections ------------------------------------------------

@pytest.fixture
def comp_cfg(competition, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"data:\n  sources:\n    - {{kind: competition, path: '{competition}'}}\n")
    return path


def test_one_wear_per_person_gives_exactly_one_wear_photo_per_person_per_epoch(comp_cfg, tmp_path):
    cfg = load_config(comp_cfg, [*TINY, "sampler=one_wear_per_person"])
    trainer = Trainer(cfg, tmp_path / "run", prepare_for(cfg))
    table, train = trainer.data.table, trainer.data.indices("train")
    wear = wear_rows(table)
    assert wear.sum() == 5 * table["person"].nunique()
    picks = []
    for epoch in range(4):
        order = trainer._order(epoch)
        assert len(order) == len(set(order))
        per_person = pd.Series(wear[order]).groupby(table["person"].to_numpy()[order]).sum()
        assert (per_person == 1).all() and len(per_person) == table["person"].iloc[train].nunique()
        assert set(train[~wear[train]]) <= set(order)  # incorrect + normal photos all kept
        picks.append(tuple(sorted(order[wear[order]])))
    assert len(set(picks)) > 1  # reseeded: a different photo in another epoch
    assert {Path(p).stem for p in table["path"][wear]} == set(WEAR_STEMS)


def test_source_balanced_draws_each_source_equally():
    from facelab.train.sampling import epoch_order

    table = pd.DataFrame({"source": ["big"] * 900 + ["small"] * 100})
    data = types.SimpleNamespace(table=table)
    order = epoch_order(data, np.arange(1000), "source_balanced", np.random.default_rng(0))
    share = (table["source"].to_numpy()[order] == "small").mean()
    assert len(order) == 1000 and 0.45 < share < 0.55  # 0.10 under uniform draws
    uniform = epoch_order(data, np.arange(1000), "uniform", np.random.default_rng(0))
    assert sorted(uniform.tolist()) == list(range(1000))


def test_age_drop_band_removes_the_band_from_training_only(comp_cfg):
    cfg = load_config(comp_cfg, [*TINY, "data.age_drop_band=[60, 70]"])
    data = prepare_for(cfg)
    ages = data.table["age"].to_numpy()
    assert not ((ages[data.indices("train")] >= 60) & (ages[data.indices("train")] <= 70)).any()
    held = np.concatenate([data.indices("val"), data.indices("test")])
    full = prepare_for(load_config(comp_cfg, TINY))
    assert len(full.indices("train")) > len(data.indices("train"))
    assert np.array_equal(held, np.concatenate([full.indices("val"), full.indices("test")]))


def test_label_corrections_are_applied_before_training(comp_cfg, tmp_path, monkeypatch):
    calls = []

    def apply_corrections(data, path):
        calls.append(path)
        mask = data.targets["mask"].copy()  # the arrays may be read-only views of the table
        mask[data.indices("train")[:3]] = 2
        data.targets["mask"] = mask
        return 3

    fake = types.ModuleType("facelab.data.corrections")
    fake.apply_corrections = apply_corrections
    monkeypatch.setitem(sys.modules, "facelab.data.corrections", fake)
    csv = tmp_path / "fix.csv"
    cfg = load_config(comp_cfg, [*TINY, f"data.corrections={csv}"])
    data = prepare_for(cfg)
    first = data.indices("train")[:3]
    assert (data.targets["mask"][first] != 2).any()
    Trainer(cfg, tmp_path / "run", data).fit()
    assert calls == [str(csv)]
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    assert (split["y_mask"].to_numpy()[first] == 2).all()


def test_real_corrections_csv_changes_the_training_labels(comp_cfg, tmp_path):
    pytest.importorskip("facelab.data.corrections", reason="facelab.data.corrections not built yet")
    from facelab.data.labels import CLASS_NAMES

    data = prepare_for(load_config(comp_cfg, TINY))
    row = int(data.indices("train")[0])
    old = int(data.targets["mask"][row])
    new = (old + 1) % 3
    csv = tmp_path / "fix.csv"
    csv.write_text(f"path,task,old,new\n{data.table['path'][row]},mask,"
                   f"{CLASS_NAMES['mask'][old]},{CLASS_NAMES['mask'][new]}\n")
    cfg = load_config(comp_cfg, [*TINY, f"data.corrections={csv}"])
    Trainer(cfg, tmp_path / "run", data).fit()
    assert pd.read_csv(tmp_path / "run" / "split.csv")["y_mask"][row] == new


# ---- tiny runs ----------------------------------------------------------------------------

SWITCHES = {
    "focal+soft_f1": ["loss.terms={focal: 0.6, soft_f1: 0.4}"],
    "flat18 soft_f1": ["model.head=flat18", "loss.kind=soft_f1"],
    "arcface": ["model.margin=arcface"],
    "cosface flat18": ["model.margin=cosface", "model.head=flat18"],
    "cutmix": ["augment.cutmix=1.0"],
    "vcutmix+mixup": ["augment.vcutmix=0.5", "augment.mixup=0.5", "augment.vcutmix_cut=random"],
    "erase+center_crop": ["augment.erase=0.5", "augment.center_crop=0.9"],
    "cyclic": ["optim.schedule=cyclic", "optim.cycle_epochs=0.5"],
    "onecycle sgd": ["optim.schedule=onecycle", "optim.name=sgd"],
    "plateau adamp": ["optim.schedule=plateau", "optim.name=adamp", "epochs=2"],
    "madgrad": ["optim.name=madgrad", "optim.lr=0.001"],
    "swa": ["swa.start_epoch=2", "epochs=2", "swa.lr=0.001"],
    "ema": ["ema.decay=0.9"],
    "one_wear": ["sampler=one_wear_per_person"],
    "balanced": ["sampler=balanced", "loss.class_weights=balanced"],
    "source_balanced": ["sampler=source_balanced"],
    "soft age + cutmix": ["loss.age_sigma=2", "augment.cutmix=1.0", "loss.terms={focal: 0.6, soft_f1: 0.4}"],
    "calibrate": ["calibrate=true"],
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from conftest import make_competition

    root = tmp_path_factory.mktemp("switch_runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACELAB_CACHE", str(root / "cache"))
        comp = make_competition(root / "comp", n_people=10)
        cfg_path = root / "c.yaml"
        cfg_path.write_text(f"data:\n  sources:\n    - {{kind: competition, path: '{comp}'}}\n")
        return cfg_path, prepare_for(load_config(cfg_path, TINY))


@pytest.mark.parametrize("name", list(SWITCHES))
def test_tiny_run_with_each_switch_completes(name, tiny_data, tmp_path):
    from facelab.predict.run import AttributeRun

    torch.set_num_threads(1)
    cfg_path, data = tiny_data
    cfg = load_config(cfg_path, [*TINY, *SWITCHES[name]])
    result = fit(cfg, tmp_path / "run", data=data)
    assert len(result.history) == cfg.epochs and np.isfinite(result.history[-1]["train_loss"])
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    if cfg.swa.start_epoch or cfg.ema.decay:  # "model" holds the average, raw kept for resume
        raw, avg = ckpt["raw_model"], ckpt["model"]
        assert any(not torch.equal(raw[k], avg[k]) for k in raw if raw[k].is_floating_point())
    if cfg.optim.schedule == "plateau":
        assert "best" in ckpt["scheduler"]
    if cfg.calibrate:  # decision biases vetted on validation, stored with best.pt
        cal = torch.load(tmp_path / "run" / "best.pt", weights_only=False)["calibration"]
        assert set(cal) == {"mask", "gender", "age"} and (tmp_path / "run" / "calibration.json").is_file()
        assert all("validation" in v["reason"] for v in cal.values())
    model = AttributeRun.load(tmp_path / "run").model  # evaluate/predict load it like any run
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert all(torch.isfinite(v).all() for v in out.values())
    if cfg.augment.center_crop < 1:  # the loaded model crops its input like training did
        seen = []
        model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        with torch.no_grad():
            model(x)
        normalised = (center_crop(x, cfg.augment.center_crop) - model.mean) / model.std
        assert torch.allclose(seen[0], normalised, atol=1e-5)


def test_soft_age_needs_the_multitask_head(tiny_data, tmp_path):
    cfg_path, data = tiny_data
    with pytest.raises(ConfigError, match="age_sigma"):
        fit(load_config(cfg_path, [*TINY, "loss.age_sigma=2", "model.head=flat18"]), tmp_path / "r", data=data)


@pytest.mark.parametrize("switch", [["ema.decay=0.8"], ["swa.start_epoch=2", "swa.lr=0.001"]])
def test_resume_is_exact_with_weight_averaging(switch, tiny_data, tmp_path):
    torch.set_num_threads(1)
    cfg_path, data = tiny_data
    sets = [*TINY, "epochs=3", *switch]
    straight = fit(load_config(cfg_path, sets), tmp_path / "a", data=data)
    Trainer(load_config(cfg_path, sets), tmp_path / "b", data).fit(resume=False, stop_after=2)
    resumed = Trainer(load_config(cfg_path, sets), tmp_path / "b", data).fit(resume=True)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    for key in ("model", "raw_model"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]
    assert [h["val_score"] for h in straight.history] == [h["val_score"] for h in resumed.history]


def test_single_loss_term_keeps_its_weight_and_bad_settings_are_refused():
    import pytest
    import torch

    from facelab.errors import ConfigError
    from facelab.train.config import ModelConfig
    from facelab.train.losses import LossConfig, MultiTaskLoss

    logp = {"mask": torch.log_softmax(torch.randn(4, 3), -1), "gender": torch.log_softmax(torch.randn(4, 2), -1),
            "age": torch.log_softmax(torch.randn(4, 3), -1)}
    y = {"mask": torch.tensor([0, 1, 2, 0]), "gender": torch.tensor([-1, 0, 1, 1]), "age": torch.tensor([0, -1, 2, 1])}
    full, _ = MultiTaskLoss(LossConfig(kind="soft_f1"))(logp, y)
    part, _ = MultiTaskLoss(LossConfig(terms={"soft_f1": 0.4}))(logp, y)
    assert torch.isclose(part, 0.4 * full)
    with pytest.raises(ConfigError, match=">= 0"):
        LossConfig(terms={"focal": -1.0})
    with pytest.raises(ConfigError, match="margin_m"):
        ModelConfig(margin="arcface", margin_m=2.0)


def test_swa_best_checkpoint_is_an_averaged_epoch(tiny_data, tmp_path):
    """best.pt holds an SWA epoch, and early stopping waits for averaging to start."""
    torch.set_num_threads(1)
    cfg_path, data = tiny_data
    cfg = load_config(cfg_path, [*TINY, "epochs=3", "patience=1", "swa.start_epoch=3", "swa.lr=0.001"])
    result = fit(cfg, tmp_path / "run", data=data)
    assert len(result.history) == 3  # patience 1 did not stop it before SWA began
    assert result.best_epoch == 3


def test_fresh_start_in_a_used_folder_does_not_mix_runs(tiny_data, tmp_path):
    cfg_path, data = tiny_data
    cfg = load_config(cfg_path, [*TINY, "epochs=2"])
    Trainer(cfg, tmp_path / "r", data).fit(resume=True, stop_after=1)
    Trainer(cfg, tmp_path / "r", data).fit(resume=True)  # resumed: epochs 1 and 2, once each
    assert pd.read_csv(tmp_path / "r" / "metrics.csv")["epoch"].tolist() == [1, 2]
    fit(load_config(cfg_path, TINY), tmp_path / "r", resume=False, data=data)  # afresh, 1 epoch
    assert pd.read_csv(tmp_path / "r" / "metrics.csv")["epoch"].tolist() == [1]
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=False)["state"]["epoch"] == 1


def test_a_run_without_validation_split_trains_and_keeps_its_best_by_train_loss(tmp_path):
    from conftest import make_competition

    comp = make_competition(tmp_path / "comp", n_people=10)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"data:\n  sources:\n    - {{kind: competition, path: '{comp}'}}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACELAB_CACHE", str(tmp_path / "cache"))
        cfg = load_config(cfg_path, [*TINY, "data.val_fraction=0", "calibrate=true"])
        result = fit(cfg, tmp_path / "r")
    assert result.best_epoch == 1 and result.history[0]["val_score"] < 0  # -train loss
    assert "calibration" not in torch.load(tmp_path / "r" / "best.pt", weights_only=False)


def test_resume_refuses_a_run_folder_of_another_config(tmp_path):
    """A run folder is only continued under its own settings (epochs may grow); anything
    else would train or report one config's checkpoint as another's."""
    from facelab.errors import ConfigError
    from facelab.train.config import check_resumable, load_config

    saved = tmp_path / "config.yaml"
    load_config(None, ["epochs=2", "optim.lr=0.001"]).save(saved)
    check_resumable(saved, load_config(None, ["epochs=5", "optim.lr=0.001", "threads=2"]))
    with pytest.raises(ConfigError, match=r"another config \(optim.lr: 0.001 -> 0.002"):
        check_resumable(saved, load_config(None, ["epochs=2", "optim.lr=0.002"]))
    with pytest.raises(ConfigError, match="seed"):
        check_resumable(saved, load_config(None, ["epochs=2", "optim.lr=0.001", "seed=1"]))
