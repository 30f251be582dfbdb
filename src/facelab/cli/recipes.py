"""`facelab kfold | ensemble | clean | runs | compare`: the competition recipes (thin over the library)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console

from facelab.cli import app

console = Console(stderr=True)


@app.command("kfold")
def kfold_cmd(
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="YAML config (defaults if omitted)."
    ),
    folds: int = typer.Option(5, "--folds", "-k", help="Number of person-level folds."),
    out: Path = typer.Option(
        Path("runs/kfold"), "--out", "-o", help="Folder for fold_0..fold_k-1 and oof.csv."
    ),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override, e.g. --set epochs=3"),
    resume: bool = typer.Option(True, help="Skip finished folds, continue an interrupted one."),
    seed: Optional[int] = typer.Option(
        None, help="Fold assignment seed (default: data.split_seed)."
    ),
) -> None:
    """Train k person-level folds (test split held out) and write out-of-fold predictions.

    Example:

        facelab kfold -c configs/multitask.yaml --folds 5 -o runs/kf --set epochs=3

        facelab ensemble runs/kf --split test      # soft vote of the 5 fold models

        facelab clean --oof runs/kf/oof.csv        # rank the likely wrong labels
    """
    from facelab.train.config import load_config
    from facelab.train.kfold import fit_kfold

    res = fit_kfold(load_config(config, set_), out, folds, resume, seed=seed)
    for k, score in enumerate(res.fold_val_scores):
        state = "trained" if k in res.trained else "skipped (finished before)"
        console.print(f"fold {k}: val score {score:.4f}  {state}")
    typer.echo(
        f"out-of-fold score {res.oof_metrics.get('score', 0):.4f} "
        f"({len(res.oof)} rows): {out / 'oof.csv'}"
    )
    if res.test_metrics:
        s = np.array(res.test_fold_scores)
        typer.echo(
            f"test: single folds {s.mean():.4f} +- {s.std():.4f}, soft-vote ensemble "
            f"{res.test_metrics['score']:.4f}"
        )


@app.command("ensemble")
def ensemble_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folders, .pt checkpoints or k-fold folders."),
    vote: str = typer.Option(
        "soft", "--vote", help="soft (mean probabilities) or hard (majority)."
    ),
    tta: Optional[bool] = typer.Option(
        None, "--tta/--no-tta", help="Horizontal-flip TTA (default: as trained)."
    ),
    competition: Optional[Path] = typer.Option(
        None, help="Competition root holding eval/info.csv + eval/images/."
    ),
    csv: Optional[Path] = typer.Option(None, help="Labels CSV with an image column."),
    boxes: Optional[Path] = typer.Option(None, help="Boxes CSV (image,x1,y1,x2,y2)."),
    folder: Optional[Path] = typer.Option(None, help="Folder of images (recursive)."),
    split: Optional[str] = typer.Option(
        None, help="Instead of predicting files, score this split (test) of the members' data."
    ),
    out: Path = typer.Option(
        Path("predictions.csv"), "--out", "-o", help="Per-task probabilities CSV."
    ),
    submission: Optional[Path] = typer.Option(
        None,
        help="Also write ImageID,ans (default for --competition: submission.csv beside --out).",
    ),
) -> None:
    """Soft- or hard-vote several models (folds, checkpoints, architectures); same files as predict.

    Example:

        facelab ensemble runs/kf --vote soft --tta --competition data/comp -o preds.csv

        facelab ensemble runs/mobilenet runs/resnet18/best.pt --vote hard --split test
    """
    from facelab.cli.attributes import write_prediction_files
    from facelab.evaluate.ensemble import evaluate_ensemble
    from facelab.predict.ensemble import predict_ensemble
    from facelab.predict.predict import input_table

    if split and not any((competition, csv, boxes, folder)):
        from facelab.evaluate.metrics import summary_line

        metrics = evaluate_ensemble(runs, None, split, vote, tta)
        typer.echo(f"{vote} vote of {len(runs)} input(s) on {split}: {summary_line(metrics)}")
        return
    table = input_table(
        competition and str(competition),
        csv and str(csv),
        boxes and str(boxes),
        folder and str(folder),
    )
    preds, bad = predict_ensemble(runs, table, vote, tta)
    write_prediction_files(preds, bad, out, submission, competition is not None, f", {vote} vote")


@app.command("clean")
def clean_cmd(
    oof: Optional[Path] = typer.Option(None, help="oof.csv from `facelab kfold`."),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="No fine-tuning: frozen ImageNet MobileNetV2 features + logistic regression over person-level folds.",
    ),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Data config for --quick."),
    set_: list[str] = typer.Option(
        [], "--set", "-s", help="Override for --quick, e.g. --set data.image_size=96"
    ),
    folds: int = typer.Option(5, "--folds", "-k", help="Folds for --quick."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output folder (default: beside --oof, or runs/clean)."
    ),
    top: int = typer.Option(200, help="Labels shown on the review page."),
    prefill: bool = typer.Option(
        False, help="Fill corrections.csv `new` with the suggestions (else blank = keep)."
    ),
    task: list[str] = typer.Option(
        [], "--task", "-t", help="Only these tasks (mask, gender, age)."
    ),
) -> None:
    """Rank the labels most likely wrong (confident learning) for review and correction.

    Writes ranked.csv, review.html (thumbnails, given -> suggested) and corrections.csv
    (path,task,old,new). Fill `new` for the rows you confirm, then train with
    --set data.corrections=OUT/corrections.csv.

    Example:

        facelab clean --oof runs/kf/oof.csv

        facelab clean --quick -c configs/multitask.yaml --set data.image_size=96 -o runs/clean
    """
    from facelab.clean.workflow import clean_labels, read_oof
    from facelab.errors import ConfigError

    if bool(oof) == quick:
        raise ConfigError("give exactly one of --oof FILE or --quick")
    pixels = None
    if quick:
        from facelab.clean.quick import quick_oof
        from facelab.train.config import load_config
        from facelab.train.trainer import prepare_for

        # every row gets an out-of-fold probability, so no train/val/test split is needed
        data = prepare_for(
            load_config(config, [*set_, "data.test_fraction=0", "data.val_fraction=0"])
        )
        table = quick_oof(data, folds)
        pixels = data.cache.pixels
        out = out or Path("runs/clean")
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "oof.csv", index=False)
    else:
        table = read_oof(oof)
        out = out or oof.parent / "clean"
    res = clean_labels(table, out, pixels, top, prefill, task or None)
    n_issue = int(res.ranked["is_issue"].sum())
    typer.echo(f"{len(res.ranked)} labels ranked, {n_issue} flagged as likely wrong")
    typer.echo(
        f"review page: {res.page}\nranked: {res.ranked_csv}\ncorrections: {res.corrections_csv}"
    )


@app.command("runs")
def runs_cmd(
    root: Path = typer.Argument(Path("runs"), help="Folder searched recursively for runs."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Also write the table as CSV."),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="PNG of validation curves of the listed runs."
    ),
    metric: str = typer.Option("val_score", help="Curve metric for --plot (a metrics.csv column)."),
) -> None:
    """List runs (k-fold folds included): config, switches, epochs, best val score and F1.

    Example:

        facelab runs runs/ --csv runs.csv --plot curves.png
    """
    from facelab.errors import DataFormatError
    from facelab.evaluate.runs import plot_curves, print_table, runs_table
    from facelab.train.config import TrainConfig

    if not root.is_dir():
        raise DataFormatError(f"{root}: folder not found")
    table = runs_table(root, TrainConfig().to_dict())
    if table.empty:
        typer.echo(f"no runs (folders with config.yaml and metrics.csv) under {root}")
        return
    print_table(table, Console(width=200))
    if csv:
        table.to_csv(csv, index=False)
        typer.echo(f"csv: {csv}")
    if plot:
        plot_curves(root, table["run"].tolist(), plot, metric)
        typer.echo(f"plot: {plot}")


@app.command("compare")
def compare_cmd(
    run_a: Path = typer.Argument(..., help="Run folder or checkpoint (A, the reference)."),
    run_b: Path = typer.Argument(..., help="Run folder or checkpoint (B, the candidate)."),
    split: str = typer.Option("val", help="Split both runs hold: val (to choose) or test (to report)."),
    n: int = typer.Option(1000, help="Bootstrap resamples of persons."),
    calibrated: bool = typer.Option(
        False, "--calibrate/--no-calibrate",
        help="Apply stored decision biases (off: they were tuned on val, which would flatter them)."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Also write the table as CSV."),
) -> None:
    """Is B better than A? Per-task macro F1 of both best checkpoints on the same split rows,
    with a paired bootstrap over persons: the difference, its 95% interval, P(B better).

    Example:

        facelab compare runs/mt runs/mt_144px --split val
    """
    from facelab.evaluate.compare import compare_runs
    from facelab.evaluate.runs import print_table

    table = compare_runs(run_a, run_b, split, n, calibrated=calibrated)
    print_table(table, Console(width=200), f"B = {run_b} vs A = {run_a}, {split} split, {n} person resamples")
    if csv:
        table.to_csv(csv, index=False)
        typer.echo(f"csv: {csv}")
