"""Plots for reports (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_png(confusion: list[list[int]], names: tuple[str, ...], title: str, path: Path) -> None:
    """Row-normalised confusion matrix with counts, saved as PNG."""
    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = 1.2 + 0.55 * len(names)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(names) <= 6:
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=9,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bars_png(groups: list[str], series: dict[str, list[float]], title: str, path: Path) -> None:
    """Grouped bar chart (e.g. accuracy per age group x gender)."""
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(groups) + 2), 3.6))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for k, (name, values) in enumerate(series.items()):
        ax.bar(x + k * width - 0.4 + width / 2, values, width, label=name)
    ax.set_xticks(x, groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves_png(history: list[dict], path: Path) -> None:
    """Training loss and validation scores per epoch."""
    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax[0].set_title("training loss")
    for key in sorted(k for k in history[0] if k.startswith("val_") and k.endswith("_f1")):
        ax[1].plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key[4:-3])
    ax[1].set_title("validation macro F1")
    ax[1].legend(fontsize=8)
    for a in ax:
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
