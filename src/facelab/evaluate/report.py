"""Evaluate a trained attribute model on a split and write a report people want to read.

The report (Markdown + HTML with PNG plots) holds macro F1 per task and per class, confusion
matrices, errors per age group x gender and per race (where labels have it), crop fallbacks,
training curves, and the list of images that could not be read.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import pandas as pd

from facelab.data.labels import CLASS_NAMES, MISSING, TASKS
from facelab.evaluate import plots
from facelab.evaluate.metrics import all_metrics, class_names, task_metrics

log = logging.getLogger(__name__)


def group_table(table: pd.DataFrame, targets: dict, probs: dict, by: list[str]) -> pd.DataFrame:
    """Gender accuracy and age-group accuracy/macro F1 per group of `by` columns (rows with labels)."""
    df = table[by].copy().reset_index(drop=True)
    rows = []
    for key, sub in df.groupby(by, sort=True):
        idx = sub.index.to_numpy()
        rec = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        rec["n"] = len(idx)
        for task in ("gender", "age", "mask"):
            y = targets[task][idx]
            if (y != MISSING).sum():
                m = task_metrics(y, probs[task][idx], len(CLASS_NAMES[task]))
                rec[f"{task}_acc"] = round(m["accuracy"], 3)
                rec[f"{task}_f1"] = round(m["macro_f1"], 3)
        rows.append(rec)
    return pd.DataFrame(rows)


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(no rows)_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _headline(metrics: dict) -> pd.DataFrame:
    rows = []
    for task in (*TASKS, "class18"):
        if task in metrics:
            m = metrics[task]
            rows.append({"task": task, "n": m["n"], "macro F1": round(m["macro_f1"], 4),
                         "accuracy": round(m["accuracy"], 4),
                         "per-class F1": ", ".join(f"{n} {v:.3f}" for n, v in zip(
                             class_names(task), m["per_class_f1"]) if task != "class18")})
    return pd.DataFrame(rows)


def write_report(out: Path, title: str, metrics: dict, table: pd.DataFrame, targets: dict,
                 probs: dict, stages: list[str], history: list[dict], bad: pd.DataFrame,
                 notes: list[str]) -> Path:
    """Write report.md, report.html, metrics.json and plots into `out`; returns the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}\n", *[f"- {n}" for n in notes], "", "## Headline\n", _md_table(_headline(metrics))]
    images = []
    for task in (*TASKS, "class18"):
        if task in metrics:
            png = out / f"confusion_{task}.png"
            plots.confusion_png(metrics[task]["confusion"], class_names(task), f"{task} (test)", png)
            images.append((f"Confusion matrix: {task}", png.name))
    has = lambda t: (targets[t] != MISSING).any()  # noqa: E731
    if has("gender") and has("age"):
        known = (targets["gender"] != MISSING) & (targets["age"] != MISSING)
        sub = table.reset_index(drop=True)[known].copy()
        sub["age group"] = [CLASS_NAMES["age"][a] for a in targets["age"][known]]
        sub["sex"] = [CLASS_NAMES["gender"][g] for g in targets["gender"][known]]
        sel = {t: targets[t][known] for t in TASKS}
        psel = {t: probs[t][known] for t in TASKS}
        cells = group_table(sub, sel, psel, ["age group", "sex"])
        # Inside one age x sex cell each task has a single true class: macro F1 means nothing.
        cells = cells.drop(columns=[c for c in cells.columns if c.endswith("_f1")])
        md += ["## Errors per age group x gender\n", _md_table(cells)]
        plots.bars_png([f"{a}/{s}" for a, s in zip(cells["age group"], cells["sex"])],
                       {"gender acc": cells["gender_acc"].tolist(), "age acc": cells["age_acc"].tolist()},
                       "accuracy per age group x gender", out / "groups_age_gender.png")
        images.append(("Accuracy per age group x gender", "groups_age_gender.png"))
        if (sub["race"].astype(str) != "").any():
            races = group_table(sub, sel, psel, ["race"])
            md += ["## Errors per race\n",
                   "Gaps here mean the model serves some groups worse; UTKFace is mostly white "
                   "faces, the competition's are Asian.\n", _md_table(races)]
            plots.bars_png(races["race"].tolist(), {"gender acc": races["gender_acc"].tolist(),
                                                    "age F1": races["age_f1"].tolist()},
                           "per race", out / "groups_race.png")
            images.append(("Per race", "groups_race.png"))
    if stages:
        counts = pd.Series(stages).value_counts().rename_axis("crop stage").reset_index(name="images")
        md += ["## Crop stages (which detector or fallback produced each crop)\n", _md_table(counts)]
    if history:
        plots.curves_png(history, out / "curves.png")
        images.append(("Training curves", "curves.png"))
    md += [f"## Unreadable images ({len(bad)})\n", _md_table(bad.head(50))]
    md += ["## Plots\n"] + [f"![{t}]({p})\n" for t, p in images]
    (out / "report.md").write_text("\n".join(md))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "report.html").write_text(_html(title, "\n".join(md), images))
    return out / "report.html"


def _html(title: str, md: str, images: list[tuple[str, str]]) -> str:
    """A dependency-free HTML rendering of the Markdown tables and the plots."""
    body, table = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            if not line.startswith("|---"):
                cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if table:
            body.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("!["):
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<p>&bull; {html.escape(line[2:])}</p>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if table:
        body.append("<table>" + "".join(table) + "</table>")
    body += [f"<figure><img src='{p}' alt='{html.escape(t)}'><figcaption>{html.escape(t)}"
             "</figcaption></figure>" for t, p in images]
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:4px 8px;font-size:14px}th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def evaluate_run(run: str | Path, split: str = "test", out: str | Path | None = None,
                 tta: bool | None = None, calibrated: bool | None = None) -> tuple[dict, Path]:
    """Evaluate a run's best checkpoint on one of its splits and write the report.

    With decision biases (config `calibrate`, or `calibrated=True`) the headline figures use
    them, and metrics["uncalibrated"] keeps the plain-argmax figures beside them.

    Example:
        >>> metrics, html_path = evaluate_run("runs/mt")  # doctest: +SKIP
    """
    from facelab.predict.run import AttributeRun

    attr = AttributeRun.load(run, tta=tta, calibrated=calibrated)
    tta, cal, ckpt = attr.tta, attr.calibration, attr.checkpoint
    data = attr.prepare_data()
    idx = data.indices(split)
    probs = attr.predict_pixels(data.cache.pixels, idx, calibrated=False)
    targets = {t: data.targets[t][idx] for t in TASKS}
    uncalibrated = None
    if cal is not None and cal.active:
        uncalibrated = all_metrics(targets, probs)
        probs = cal.apply(probs)
    metrics = all_metrics(targets, probs)
    out = Path(out) if out else Path(ckpt["path"]).parent / f"eval_{split}"
    table = data.table.iloc[idx].reset_index(drop=True)
    pred = pd.DataFrame({"sample_id": table["sample_id"], "source": table["source"],
                         **{f"y_{t}": targets[t] for t in TASKS},
                         **{f"pred_{t}": probs[t].argmax(1) for t in TASKS}})
    out.mkdir(parents=True, exist_ok=True)
    pred.to_csv(out / "predictions.csv", index=False)
    notes = [f"checkpoint: {ckpt['path']} (epoch {ckpt['state'].get('best_epoch')})",
             f"split: {split} ({len(idx)} images, {table['person'].nunique()} person groups; "
             "person-level, never seen in training or model selection)",
             f"model: {attr.model_config.backbone} + {attr.model_config.head} head, "
             f"{attr.data.image_size}px, crop {attr.data.crop}, TTA {'on' if tta else 'off'}"]
    if cal is not None:
        notes.append(f"decision biases tuned on the validation split: {cal.describe()}")
        if uncalibrated is not None:
            notes.append("without them (plain argmax): " + ", ".join(
                f"{t} macro F1 {uncalibrated[t]['macro_f1']:.4f}" for t in TASKS if t in uncalibrated))
    stages = [data.cache.stages[i] for i in idx]
    path = write_report(out, f"facelab evaluation: {Path(ckpt['path']).parent.name}", metrics,
                        table, targets, probs, stages, ckpt["state"].get("history", []),
                        data.bad_images(), notes)
    if uncalibrated is not None:
        metrics["uncalibrated"] = uncalibrated
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics, path
