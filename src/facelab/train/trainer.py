"""The training loop: seeded, resumable, early-stopped on validation macro F1, logged.

Each epoch re-seeds from (seed, epoch), so a run resumed from `last.pt` continues exactly as
the uninterrupted run would have. Optional tricks (all off by default) are switched by the
config: loss terms, margin heads, CutMix/MixUp, schedules, SWA/EMA, samplers, corrections.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from facelab.data.labels import TASKS
from facelab.data.prepare import PreparedData, write_split
from facelab.errors import ConfigError
from facelab.evaluate.metrics import all_metrics, summary_line
from facelab.models.heads import class18_log_probs, task_log_probs
from facelab.predict.inference import predict_pixels
from facelab.runtime import tune_allocator
from facelab.train.augment import add_eval_center_crop, augment, center_crop, to_tensor
from facelab.train.averaging import WeightAverager
from facelab.train.checkpoint import load_checkpoint, rng_state, save_checkpoint
from facelab.train.config import TrainConfig, check_resumable
from facelab.train.distributed import Distributed
from facelab.train.losses import MultiTaskLoss, balanced_class_weights
from facelab.train.mixing import mix_batch, mixed_targets
from facelab.train.optim import create_optimizer, create_scheduler, steps_per_batch
from facelab.train.sampling import epoch_order, wear_rows

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a finished run reports."""

    out_dir: Path
    best_epoch: int
    best_val: dict
    history: list[dict] = field(default_factory=list)
    train_images_per_s: float = 0.0
    wall_s: float = 0.0


def prepare_for(cfg: TrainConfig, progress=None) -> PreparedData:
    return cfg.data.prepare(progress=progress)


def _progress(show: bool = True) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=True, disable=not show)


class Trainer:
    """Runs one training configuration into `out_dir` (config.yaml, last.pt, best.pt, logs).

    Under torchrun (``facelab train --nproc N``) each process trains on its share of every
    global batch in DistributedDataParallel (see :mod:`facelab.train.distributed`); rank 0
    writes the files.
    """

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, data: PreparedData | None = None,
                 dist: Distributed | None = None):
        self.cfg, self.out = cfg, Path(out_dir)
        self.dist = dist or Distributed.from_env()
        if self.dist.active:
            self.dist.check_batch(cfg.batch_size)
            if cfg.model.margin != "none":
                raise ConfigError(f"model.margin={cfg.model.margin} is not supported with several processes "
                                  "(the margin head bypasses DistributedDataParallel); train it with --nproc 1")
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.data = data
        self.ddp = None  # the model as trained: DistributedDataParallel around it on several processes
        self._val_probs = None  # the last validation predictions (none without a val split)

    def _seed(self, epoch: int) -> torch.Generator:
        s = self.cfg.seed * 1009 + epoch
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)
        return torch.Generator().manual_seed(s)

    def _build(self):
        cfg = self.cfg
        self._seed(0)
        model = cfg.model.build()
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        add_eval_center_crop(model, cfg.augment.center_crop)  # before the averager copies it
        steps = max(1, len(self._order(0)) // cfg.batch_size)
        opt = create_optimizer(model, cfg.optim)
        self._lr_mults = [g["lr"] / cfg.optim.lr for g in opt.param_groups]
        sched = create_scheduler(opt, cfg.optim, steps, cfg.epochs)
        self.averager = WeightAverager(model, cfg.swa, cfg.ema, steps)
        self.ddp = self.dist.wrap(model)
        weights = None
        if cfg.loss.class_weights == "balanced":
            idx = self.data.indices("train")
            weights = balanced_class_weights({t: self.data.targets[t][idx] for t in TASKS})
        self._age_soft = None
        if cfg.loss.age_sigma > 0:
            if cfg.model.head != "multitask":
                raise ConfigError("loss.age_sigma (soft age groups) needs model.head: multitask")
            ages = pd.to_numeric(self.data.table["age"], errors="coerce").to_numpy(float)
            self._age_soft = self.cfg.data.age_scheme().soft_groups(ages, cfg.loss.age_sigma).astype(np.float32)
        return model, opt, sched, MultiTaskLoss(cfg.loss, weights)

    def _order(self, epoch: int) -> np.ndarray:
        idx = self.data.indices("train")
        rng = np.random.default_rng(self.cfg.seed * 1009 + epoch)
        wear = None
        if self.cfg.sampler == "one_wear_per_person":
            if getattr(self, "_wear", None) is None:
                self._wear = wear_rows(self.data.table)
            wear = self._wear
        return epoch_order(self.data, idx, self.cfg.sampler, rng, wear)

    def _loss(self, loss_fn, out, y):
        if "all" in out:
            return loss_fn({}, y, joint=class18_log_probs(out))[0]
        return loss_fn(task_log_probs(out), y)[0]

    def _batch_loss(self, model, x, y, gen, loss_fn) -> torch.Tensor:
        """Loss of one batch; mixed batches sum lam * L(y) + (1 - lam) * L(y[perm])."""
        x, mix = mix_batch(x, self.cfg.augment, gen)
        if self.cfg.model.margin != "none":  # the margin head needs the targets
            feats = model.features(x)
            parts = [(self._loss(loss_fn, model.head(feats, yy), yy), w)
                     for yy, w in mixed_targets(y, mix)]
        else:
            out = model(x)
            parts = [(self._loss(loss_fn, out, yy), w) for yy, w in mixed_targets(y, mix)]
        if mix is None:
            return parts[0][0]
        return sum(loss * w for loss, w in parts)

    def _bn_batches(self):
        """Training images for SWA's BatchNorm update: cropped like evaluation, not augmented.
        Full batches only (like training), since update_bn weights every batch equally."""
        cfg, idx = self.cfg, self.data.indices("train")
        for start in range(0, max(1, len(idx) - cfg.batch_size + 1), cfg.batch_size):
            x = to_tensor(self.data.cache.pixels[idx[start : start + cfg.batch_size]], cfg.channels_last)
            yield center_crop(x, cfg.augment.center_crop)

    def _train_epoch(self, epoch, model, opt, sched, loss_fn, bar) -> tuple[float, float]:
        cfg, gen = self.cfg, self._seed(epoch)
        model.train()
        order = self._order(epoch)
        n_steps = len(order) // cfg.batch_size  # drop the ragged last batch (BatchNorm)
        if self.averager.swa_active(epoch):
            sched = self.averager.scheduler(opt, self._lr_mults)
        elif not steps_per_batch(sched):
            sched = None  # plateau: stepped once per epoch on the validation score
        task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=n_steps, info="")
        total, seen, t0 = 0.0, 0, time.perf_counter()
        part = self.dist.shard(cfg.batch_size)  # this process's rows of each global batch
        for step in range(n_steps):
            idx = np.sort(order[step * cfg.batch_size : (step + 1) * cfg.batch_size])
            # every rank augments the whole global batch (same generator) and keeps its share
            x = augment(to_tensor(self.data.cache.pixels[idx], cfg.channels_last), cfg.augment, gen)[part]
            y = {t: torch.from_numpy(self.data.targets[t][idx[part]]) for t in TASKS}
            if self._age_soft is not None:
                y["age_soft"] = torch.from_numpy(self._age_soft[idx[part]])
            loss = self._batch_loss(self.ddp, x, y, gen, loss_fn)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            self.averager.after_step(model)
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            rate = seen / (time.perf_counter() - t0)
            bar.update(task, advance=1, info=f"loss {total / seen:.3f} {rate:.0f} img/s")
        bar.remove_task(task)
        total = self.dist.sum(total)[0] / self.dist.world  # mean over ranks of the shard losses
        return total / max(1, seen), seen / max(1e-9, time.perf_counter() - t0)

    def validate(self, model, split: str = "val") -> dict:
        idx = self.data.indices(split)
        probs = predict_pixels(model, self.data.cache.pixels, idx, tta=self.cfg.tta,
                               channels_last=self.cfg.channels_last)
        self._val_probs = probs  # kept for calibration when this epoch becomes best.pt
        return all_metrics({t: self.data.targets[t][idx] for t in TASKS}, probs)

    def _calibrate(self, best_probs: dict | None) -> None:
        """Tune decision biases on the validation split for best.pt and store them in it."""
        from facelab.predict.calibrate import calibrate
        from facelab.predict.run import AttributeRun

        idx, path = self.data.indices("val"), self.out / "best.pt"
        if not len(idx) or not path.is_file():
            log.warning("calibrate: no validation split or no best.pt; skipped")
            return
        ckpt = load_checkpoint(path)
        if best_probs is None:  # resumed after training ended: predict again
            if "calibration" in ckpt:
                return
            best = AttributeRun.load(path, tta=self.cfg.tta, calibrated=False)
            best_probs = best.predict_pixels(self.data.cache.pixels, idx)
        cal = calibrate(best_probs, {t: self.data.targets[t][idx] for t in TASKS},
                        self.data.table["person"].to_numpy()[idx])
        ckpt.pop("path", None)
        save_checkpoint(path, {**ckpt, "calibration": cal.to_dict()})
        (self.out / "calibration.json").write_text(json.dumps(cal.to_dict(), indent=1))
        log.info("calibration: %s", cal.describe())

    def fit(self, resume: bool = True, stop_after: int | None = None) -> FitResult:
        """Train (or resume) until `epochs` or early stopping; returns the best validation result.

        `stop_after` ends this call after that many epochs (a time-boxed session); a later
        call with resume=True continues exactly where it stopped.
        """
        cfg, t_start, main = self.cfg, time.perf_counter(), self.dist.main
        tune_allocator()  # no page faults on big blocks every step (see facelab.runtime)
        if resume and (self.out / "last.pt").is_file() and (self.out / "config.yaml").is_file():
            check_resumable(self.out / "config.yaml", cfg)
        if main:
            cfg.save(self.out / "config.yaml")
        with _progress(main) as bar:
            if self.data is None:
                task = bar.add_task("caching images", total=None, info="")
                for turn in (True, False):  # rank 0 fills the pixel cache, the others then read it
                    if main == turn:
                        self.data = prepare_for(cfg, lambda d, n: bar.update(task, completed=d, total=n))
                    self.dist.barrier()
                bar.remove_task(task)
            if cfg.data.corrections:
                self._apply_corrections()
            if main:
                write_split(self.data, self.out / "split.csv")
                self.data.bad_images().to_csv(self.out / "bad_images.csv", index=False)
            model, opt, sched, loss_fn = self._build()
            state = {"epoch": 0, "best_score": float("-inf"), "best_epoch": -1, "history": [], "stale": 0}
            if resume and (self.out / "last.pt").is_file():
                ckpt = load_checkpoint(self.out / "last.pt")
                model.load_state_dict(ckpt.get("raw_model", ckpt["model"]))
                # Before the optimizer state: creating SWALR may touch the groups' lr.
                self.averager.load_state_dict(ckpt.get("averager", {}), opt, self._lr_mults)
                opt.load_state_dict(ckpt["optimizer"])
                sched.load_state_dict(ckpt["scheduler"])
                state = ckpt["state"]
                log.info("resumed %s at epoch %d", self.out, state["epoch"])
            elif main:
                self._clear_previous_run()
            if main:
                self._rewrite_log(state["history"])  # rows after last.pt's epoch are dropped
            writer = self._tensorboard() if main else None
            self.dist.barrier()  # nobody reads last.pt while rank 0 may still remove it
            rates, best_probs = [], None
            last = cfg.epochs if stop_after is None else min(cfg.epochs, state["epoch"] + stop_after)
            while state["epoch"] < last:
                epoch = state["epoch"]
                train_loss, rate = self._train_epoch(epoch, model, opt, sched, loss_fn, bar)
                rates.append(rate)
                self.averager.after_epoch(model, epoch, self._bn_batches)
                eval_model = self.averager.eval_model(model)
                val = (self.validate(eval_model) if len(self.data.indices("val"))
                       else {"score": -train_loss})
                if not steps_per_batch(sched) and not self.averager.swa_active(epoch):
                    sched.step(val["score"])
                record = {"epoch": epoch + 1, "train_loss": train_loss, "images_per_s": rate,
                          "val_score": val["score"], "lr": opt.param_groups[-1]["lr"],
                          **{f"val_{t}_f1": val[t]["macro_f1"] for t in (*TASKS, "class18") if t in val}}
                state["history"].append(record)
                state["epoch"] = epoch + 1
                # With SWA only averaged epochs may become best.pt, and the run may not stop
                # early before averaging starts: the SWA model is what was asked for.
                eligible = self.averager.kind != "swa" or self.averager.swa_active(epoch)
                improved = eligible and val["score"] > state["best_score"]
                if improved:
                    state.update(best_score=val["score"], best_epoch=epoch + 1, stale=0, best_val=val)
                    best_probs = self._val_probs
                    if main:
                        save_checkpoint(self.out / "best.pt", self._payload(model, state))
                elif eligible:
                    state["stale"] += 1
                extra = {}
                if self.averager.kind:  # "model" holds the average; keep what resume needs
                    extra = {"raw_model": model.state_dict(), "averager": self.averager.state_dict()}
                if main:
                    save_checkpoint(self.out / "last.pt", {
                        **self._payload(model, state), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "rng": rng_state(), **extra})
                    self._log(record, writer)
                self.dist.barrier()  # every epoch ends with last.pt written
                log.info("epoch %d: loss %.4f, %.1f img/s, val %s%s", epoch + 1, train_loss, rate,
                         summary_line(val), " (best)" if improved else "")
                if cfg.patience and state["stale"] >= cfg.patience:
                    log.info("early stop: no better validation score for %d epochs", cfg.patience)
                    break
            if writer:
                writer.close()
            if cfg.calibrate and main:
                self._calibrate(best_probs)
            self.dist.barrier()
        return FitResult(self.out, state["best_epoch"], state.get("best_val", {}), state["history"],
                         float(np.mean(rates)) if rates else 0.0, time.perf_counter() - t_start)

    def _payload(self, model, state) -> dict:
        return {"config": self.cfg.to_dict(), "model": self.averager.eval_model(model).state_dict(),
                "state": state}

    def _apply_corrections(self) -> None:
        path = self.cfg.data.corrections
        try:
            from facelab.data.corrections import apply_corrections
        except ImportError as exc:
            raise ConfigError(f"data.corrections={path!r} needs facelab.data.corrections, which "
                              f"this installation lacks ({exc}); remove the setting") from exc
        changed = apply_corrections(self.data, path)
        log.info("label corrections %s: %d rows changed", path, changed)

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional at run time
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    def _clear_previous_run(self) -> None:
        """A fresh start in a used folder: the old run's checkpoints and logs would mix with
        the new ones (metrics.csv rows appended, a stale best.pt), so they go."""
        old = [p for p in (self.out / n for n in ("best.pt", "last.pt", "metrics.csv", "calibration.json"))
               if p.is_file()]
        if old or (self.out / "tensorboard").is_dir():
            log.info("%s: starting afresh, removing the previous run's checkpoints and logs", self.out)
        for p in old:
            p.unlink()
        shutil.rmtree(self.out / "tensorboard", ignore_errors=True)

    def _rewrite_log(self, history: list[dict]) -> None:
        path = self.out / "metrics.csv"
        path.unlink(missing_ok=True)
        if history:
            pd.DataFrame(history).to_csv(path, index=False)

    def _log(self, record: dict, writer) -> None:
        path = self.out / "metrics.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(record))
            if new:
                w.writeheader()
            w.writerow(record)
        if writer:
            for key, value in record.items():
                if key != "epoch":
                    writer.add_scalar(key, value, record["epoch"])


def fit(cfg: TrainConfig, out_dir: str | Path, resume: bool = True,
        data: PreparedData | None = None, dist: Distributed | None = None) -> FitResult:
    """Train one configuration. Example: ``fit(load_config("configs/multitask.yaml"), "runs/mt")``."""
    return Trainer(cfg, out_dir, data, dist).fit(resume)
