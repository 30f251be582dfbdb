"""Compare training runs: find run folders, summarise config and metrics, plot val curves.

A run folder holds config.yaml plus metrics.csv (or TensorBoard event files under
tensorboard/); k-fold folds (fold_k/) are runs too. "Switches" are the settings that differ
from the defaults of facelab.train.config.TrainConfig.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from facelab.data.labels import TASKS

log = logging.getLogger(__name__)

# Shown in their own columns or not a "switch" (where the data live, thread count).
_OWN_COLUMNS = {"model.backbone", "model.head", "data.image_size", "data.sources", "threads"}


def find_runs(root: str | Path) -> list[Path]:
    """Run folders under `root` (itself included), sorted by path."""
    root = Path(root)
    found = {
        p.parent
        for p in root.rglob("config.yaml")
        if (p.parent / "metrics.csv").is_file() or any((p.parent / "tensorboard").glob("events.*"))
    }
    return sorted(found)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def switches(config: dict, defaults: dict) -> dict:
    """Settings of a saved config that differ from `defaults` (a fresh config as a dict; the
    caller gives it, since evaluation sits below the training code that defines it).

    Example:
        >>> switches({"epochs": 9, "model": {"backbone": "resnet18", "dropout": 0.2}},
        ...          {"epochs": 4, "model": {"backbone": "mobilenet_v2", "dropout": 0.2}})
        {'epochs': 9, 'model.backbone': 'resnet18'}
    """
    defaults = _flatten(defaults)
    return {
        k: v
        for k, v in _flatten(config).items()
        if k not in _OWN_COLUMNS
        and k in defaults
        and defaults[k] != v
        or k not in defaults
        and k not in _OWN_COLUMNS
    }


def tensorboard_history(folder: Path) -> pd.DataFrame:
    """Scalars of a run's TensorBoard event files as a per-epoch table (metrics.csv layout)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    cols = {}
    for tag in acc.Tags().get("scalars", []):
        cols[tag] = pd.Series({e.step: e.value for e in acc.Scalars(tag)})
    frame = pd.DataFrame(cols).sort_index()
    return frame.rename_axis("epoch").reset_index()


def run_history(run: Path) -> pd.DataFrame:
    """Per-epoch metrics: metrics.csv, else the TensorBoard logs."""
    if (run / "metrics.csv").is_file():
        return pd.read_csv(run / "metrics.csv")
    return tensorboard_history(run / "tensorboard")


def _loss_name(cfg: dict) -> str:
    """The loss actually trained: loss.terms (a weighted sum) when set, else loss.kind.

    Example:
        >>> _loss_name({"loss": {"kind": "ce", "terms": {"focal": 0.6, "soft_f1": 0.4}}})
        '0.6 focal + 0.4 soft_f1'
    """
    loss = cfg.get("loss", {}) or {}
    terms = loss.get("terms") or {}
    if terms:
        return " + ".join(f"{w:g} {k}" for k, w in terms.items())
    name = loss.get("kind") or loss.get("name") or "ce"
    return str(name)


def run_summary(run: Path, root: Path | None = None, defaults: dict | None = None) -> dict:
    """One row of the runs table (`switches` against `defaults`, all settings without)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    hist = run_history(run)
    rec = {
        "run": str(run.relative_to(root)) if root and run != root else run.name,
        "backbone": cfg.get("model", {}).get("backbone", ""),
        "head": cfg.get("model", {}).get("head", ""),
        "image_size": cfg.get("data", {}).get("image_size", ""),
        "loss": _loss_name(cfg),
        "switches": " ".join(f"{k}={v}" for k, v in switches(cfg, defaults or {}).items()),
        "epochs": len(hist),
    }
    if "val_score" in hist and len(hist):
        best = hist.loc[hist["val_score"].idxmax()]
        rec["best_epoch"] = int(best["epoch"])
        rec["val_score"] = round(float(best["val_score"]), 4)
        for task in (*TASKS, "class18"):
            if f"val_{task}_f1" in hist:
                rec[f"{task}_f1"] = round(float(best[f"val_{task}_f1"]), 4)
    wall = None
    if (run / "done.json").is_file():
        wall = json.loads((run / "done.json").read_text()).get("wall_s")
    elif "wall_s" in hist and len(hist):
        wall = float(hist["wall_s"].sum())
    rec["wall_s"] = round(wall, 1) if wall is not None else None
    return rec


def runs_table(root: str | Path, defaults: dict | None = None) -> pd.DataFrame:
    """The runs table of every run under `root`, best validation score first; `defaults`
    (a fresh config as a dict) decides which settings are listed as switches.

    Example:
        >>> runs_table("runs")[["run", "val_score"]]  # doctest: +SKIP
    """
    root = Path(root)
    rows = []
    for run in find_runs(root):
        try:
            rows.append(run_summary(run, root, defaults))
        except (OSError, ValueError, yaml.YAMLError, KeyError) as exc:
            log.warning("%s: skipped (%s)", run, exc)
    table = pd.DataFrame(rows)
    if "val_score" in table:
        table = table.sort_values(
            "val_score", ascending=False, na_position="last", ignore_index=True
        )
    return table


def plot_curves(
    root: str | Path, runs: list[str], path: str | Path, metric: str = "val_score"
) -> Path:
    """A PNG of `metric` per epoch for the named runs (relative to `root`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in runs:
        folder = Path(root) / name if name != Path(root).name else Path(root)
        hist = run_history(folder)
        if metric in hist:
            ax.plot(hist["epoch"], hist[metric], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def print_table(table: pd.DataFrame, console=None, title: str | None = None) -> None:
    """A table (the runs table by default title) as a Rich table; NaN cells print empty."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rich_table = Table(title=title or f"{len(table)} run(s)")
    for col in table.columns:
        rich_table.add_column(col, overflow="fold")
    for _, row in table.iterrows():
        cells = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in row]
        if "switches" in table:  # one switch per line reads better than one wrapped blob
            i = list(table.columns).index("switches")
            cells[i] = cells[i].replace(" ", "\n")
        rich_table.add_row(*cells)
    console.print(rich_table)
