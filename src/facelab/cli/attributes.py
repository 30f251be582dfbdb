"""`facelab train | evaluate | predict`: the attribute classifier commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from facelab.cli import app

console = Console(stderr=True)


@app.command("train")
def train_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (defaults if omitted)."),
    out: Path = typer.Option(Path("runs/attributes"), "--out", "-o", help="Run folder."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override, e.g. --set optim.lr=0.0005"),
    resume: bool = typer.Option(True, help="Continue from OUT/last.pt when it exists."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes (torchrun + DistributedDataParallel, gloo); "
                              "each trains on batch_size/nproc rows of every batch."),
) -> None:
    """Train a mask / gender / age classifier; checkpoints, logs and config go to OUT.

    Example:

        facelab train -c configs/multitask.yaml -o runs/mt --set epochs=3 --set data.image_size=112

        facelab train -c configs/multitask.yaml -o runs/mt --nproc 2 --set threads=1   # 2 processes
    """
    import os

    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # launch ourselves under torchrun
        import subprocess

        from facelab.train.distributed import launch_command

        args = ["train", "-o", str(out), "--resume" if resume else "--no-resume"]
        args += ["-c", str(config)] if config else []
        for s in set_:
            args += ["--set", s]
        raise typer.Exit(subprocess.call(launch_command(nproc, args)))

    from facelab.train.config import load_config
    from facelab.train.distributed import Distributed
    from facelab.train.trainer import fit

    cfg = load_config(config, set_)
    dist = Distributed.from_env()
    try:
        result = fit(cfg, out, resume=resume, dist=dist)
    finally:
        dist.close()
    if dist.main:
        procs = f" on {dist.world} processes" if dist.active else ""
        console.print(f"best epoch {result.best_epoch}, validation score {result.best_val.get('score', 0):.4f}, "
                      f"{result.train_images_per_s:.1f} train img/s{procs}, {result.wall_s:.0f} s")
        console.print(f"checkpoint: {out / 'best.pt'}  (next: facelab evaluate {out})")


@app.command("evaluate")
def evaluate_cmd(
    run: Path = typer.Argument(..., help="Run folder or checkpoint file."),
    split: str = typer.Option("test", help="Split to evaluate: test (reported), val or train."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (default RUN/eval_SPLIT)."),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="Horizontal-flip TTA (default: as trained)."),
    calibrated: Optional[bool] = typer.Option(
        None, "--calibrate/--no-calibrate",
        help="Decision biases tuned on the validation split (default: as trained, config calibrate)."),
) -> None:
    """Evaluate on the run's held-out person-level split and write a report with plots.

    Example:

        facelab evaluate runs/mt --split test
    """
    from facelab.evaluate.metrics import summary_line
    from facelab.evaluate.report import evaluate_run

    metrics, path = evaluate_run(run, split, out, tta, calibrated)
    typer.echo(summary_line(metrics))
    if "mask" in metrics:
        f1 = metrics["mask"]["per_class_f1"]
        typer.echo(f"mask per-class F1: correct {f1[0]:.3f} incorrect {f1[1]:.3f} none {f1[2]:.3f}")
    if "uncalibrated" in metrics:
        typer.echo("without decision biases: " + summary_line(metrics["uncalibrated"]))
    typer.echo(f"report: {path}")


@app.command("predict")
def predict_cmd(
    run: Path = typer.Argument(..., help="Run folder or checkpoint file."),
    competition: Optional[Path] = typer.Option(None, help="Competition root holding eval/info.csv + eval/images/."),
    csv: Optional[Path] = typer.Option(None, help="Labels CSV with an image column."),
    boxes: Optional[Path] = typer.Option(None, help="Boxes CSV (image,x1,y1,x2,y2)."),
    folder: Optional[Path] = typer.Option(None, help="Folder of images (recursive)."),
    out: Path = typer.Option(Path("predictions.csv"), "--out", "-o", help="Per-task probabilities CSV."),
    submission: Optional[Path] = typer.Option(None, help="Also write ImageID,ans (default for --competition: submission.csv beside --out)."),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="Horizontal-flip TTA (default: as trained)."),
    calibrated: Optional[bool] = typer.Option(
        None, "--calibrate/--no-calibrate",
        help="Decision biases tuned on the validation split (default: as trained, config calibrate)."),
    backend: str = typer.Option("torch", help="torch, onnx (exported on first use) or onnx-int8 "
                                "(see facelab export)."),
) -> None:
    """Predict mask / gender / age (and the 18-class id) for images.

    Example:

        facelab predict runs/mt --competition data/ --out preds.csv --submission submission.csv
    """
    from facelab.predict.predict import input_table, predict_table

    table = input_table(competition and str(competition), csv and str(csv), boxes and str(boxes),
                        folder and str(folder))
    preds, bad = predict_table(run, table, tta, calibrated=calibrated, backend=backend)
    write_prediction_files(preds, bad, out, submission, competition is not None)
    if not preds["ok"].any():
        typer.secho("no image could be used; nothing was predicted", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def write_prediction_files(preds, bad, out: Path, submission: Optional[Path], competition: bool,
                           note: str = "") -> None:
    """Write what `facelab predict` and `facelab ensemble` produce: the per-task probabilities
    CSV, the ImageID,ans submission (default beside `out` for a competition), and the list
    of unreadable images."""
    from facelab.predict.predict import write_submission

    out.parent.mkdir(parents=True, exist_ok=True)
    preds.to_csv(out, index=False)
    if competition and submission is None:
        submission = out.with_name("submission.csv")
    if submission:
        write_submission(preds, submission)
        typer.echo(f"submission: {submission} ({len(preds)} rows)")
    typer.echo(f"predictions: {out} ({len(preds)} rows{note})")
    if len(bad):
        bad_path = out.with_name(out.stem + "_unreadable.csv")
        bad.to_csv(bad_path, index=False)
        typer.secho(f"{len(bad)} unreadable image(s) skipped (filled with the most frequent class), "
                    f"listed in {bad_path}", fg=typer.colors.YELLOW, err=True)
