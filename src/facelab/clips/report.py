"""Clip evaluation reports: metrics.json, report.md, confusion.png and predictions.csv."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from facelab.clips.folds import bootstrap
from facelab.evaluate.plots import confusion_png
from facelab.predict.calibrate import macro_f1


def write_report(out: str | Path, table: pd.DataFrame, probs: np.ndarray, classes: list[str],
                 title: str = "") -> dict:
    """Metrics over clips with a prediction (bootstrap over events), per fold when `table`
    has a `fold` column, per data set; clips without a prediction are counted and listed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ok = ~np.isnan(probs).any(1)
    pred = np.where(ok, np.nan_to_num(probs).argmax(1), -1)
    preds = table[["clip", "label", "group", "event", "dataset"]].copy()
    if "fold" in table:
        preds["fold"] = table["fold"].to_numpy()
    preds["predicted"] = [classes[i] if i >= 0 else "" for i in pred]
    for j, c in enumerate(classes):
        preds[f"p_{c}"] = probs[:, j]
    preds.to_csv(out / "predictions.csv", index=False)
    known = ok & table["label"].isin(classes).to_numpy()
    y = np.array([classes.index(v) if v in classes else -1 for v in table["label"]])
    k = len(classes)
    metrics = {"title": title, "classes": classes, "n_clips": len(table),
               "n_failed": int((~ok).sum()),
               "failed": table["clip"][~ok].tolist()}
    if known.any():
        metrics.update(bootstrap(y[known], pred[known], table["event"].to_numpy()[known], k))
        from sklearn.metrics import confusion_matrix

        cm = confusion_matrix(y[known], pred[known], labels=list(range(k)))
        metrics["confusion"] = cm.tolist()
        confusion_png(cm.tolist(), tuple(classes), title[:60] or "clips", out / "confusion.png")
        for col in ("fold", "dataset"):
            if col in table and table[col].nunique() > 1:
                metrics[f"per_{col}"] = {
                    str(v): {"n": int(m.sum()),
                             "accuracy": float((y[m] == pred[m]).mean()),
                             "macro_f1": macro_f1(y[m], pred[m], k)}
                    for v in sorted(table[col].unique())
                    for m in [known & (table[col] == v).to_numpy()] if m.any()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "report.md").write_text(_markdown(metrics))
    return metrics


def _markdown(m: dict) -> str:
    lines = [f"# {m['title'] or 'clip evaluation'}", ""]
    if "macro_f1" in m:
        a, f = m["accuracy_ci"], m["macro_f1_ci"]
        lines += [f"{m['n']} clips ({m['units']} events), {m['n_failed']} not decodable.", "",
                  f"- accuracy {m['accuracy']:.3f} [{a[0]:.3f}, {a[1]:.3f}]",
                  f"- macro F1 {m['macro_f1']:.3f} [{f[0]:.3f}, {f[1]:.3f}]",
                  "", "95% intervals: bootstrap over events (1000 resamples).", ""]
        for col in ("fold", "dataset"):
            if f"per_{col}" in m:
                lines += [f"| {col} | n | accuracy | macro F1 |", "|---|---|---|---|"]
                lines += [f"| {v} | {r['n']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} |"
                          for v, r in m[f"per_{col}"].items()]
                lines.append("")
        lines += ["Confusion (rows true, columns predicted): " + ", ".join(m["classes"]), ""]
        lines += ["    " + " ".join(f"{v:4d}" for v in row) for row in m["confusion"]]
    if m["failed"]:
        lines += ["", "Not decodable:", *[f"- {c}" for c in m["failed"]]]
    return "\n".join(lines) + "\n"
