"""`facelab clips train | evaluate | predict`: short-clip classifiers (e.g. fall vs ADL)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facelab.cli import app

clips_app = typer.Typer(help="Short video clip classifiers (fall vs ADL, activities): train with "
                        "grouped cross-validation, evaluate, predict per clip or along long "
                        "videos (predict --timeline).", no_args_is_help=True)
app.add_typer(clips_app, name="clips")


def _summary(m: dict) -> str:
    if "macro_f1" not in m:
        return f"no clip with a known label could be scored ({m['n_failed']} not decodable)"
    a, f = m["accuracy_ci"], m["macro_f1_ci"]
    return (f"{m['n']} clips: accuracy {m['accuracy']:.3f} [{a[0]:.3f}, {a[1]:.3f}], "
            f"macro F1 {m['macro_f1']:.3f} [{f[0]:.3f}, {f[1]:.3f}] (95% bootstrap over events)")


@clips_app.command("train")
def train_cmd(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="YAML config (defaults if omitted).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/clips"),
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="Override, e.g. --set augment.rotate=30")] = None,
    cv: Annotated[bool, typer.Option("--cv/--no-cv", help="Grouped k-fold cross-validation "
                  "(data.folds) with a report, instead of one model on all clips.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue finished epochs / folds found in OUT.")] = True,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train a clip classifier on data.train (or cross-validate it with --cv).

    Example:

        facelab clips train -c configs/clips.yaml -o runs/falls --cv --set data.size=112

        facelab clips train -c configs/clips_motion.yaml -o runs/motion --set data.train=gmdcsa24
    """
    from facelab.clips.config import load_clip_config
    from facelab.clips.dataset import load_clips
    from facelab.clips.engine import cross_validate, fit

    cfg = load_clip_config(config, set_ or [])
    table = load_clips(cfg.data.train, cfg.data.task)
    if cv:
        m = cross_validate(cfg, table, out, resume=resume, progress=progress)
        typer.echo(_summary(m))
        for fold, r in m.get("per_fold", {}).items():
            typer.echo(f"  fold {fold}: n {r['n']} accuracy {r['accuracy']:.3f} macro F1 {r['macro_f1']:.3f}")
        typer.echo(f"report: {out / 'report.md'}")
        return
    res = fit(cfg, table, out, resume=resume, progress=progress)
    last = res.history[-1] if res.history else {}
    fitted = (f"final train loss {last['train_loss']:.3f}" if "train_loss" in last
              else f"train accuracy {last.get('train_acc', float('nan')):.3f}")
    typer.echo(f"trained on {len(table) - len(res.skipped)} clips ({', '.join(res.classes)}), "
               f"{fitted}, {res.train_clips_per_s:.1f} train clips/s")
    if cfg.model.kind == "frozen":
        typer.echo(f"feature sets: {last.get('features', cfg.model.features)}"
                   + (" (chosen by grouped CV on the training clips)" if cfg.model.auto_features else ""))
        if cfg.model.tune_C:
            typer.echo(f"logistic-regression C per set (grouped CV on the training clips): {last.get('C')}")
    if res.skipped:
        typer.secho(f"{len(res.skipped)} clip(s) not decodable, listed in {out / 'skipped.csv'}",
                    fg=typer.colors.YELLOW, err=True)
    typer.echo(f"model: {out / 'model.pt'}  (next: facelab clips evaluate {out} --data <set>)")


@clips_app.command("evaluate")
def evaluate_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder (or its model.pt).")],
    data: Annotated[str | None, typer.Option(
        "--data", "-d", help="Clip set: gmdcsa24, up-fall, both, a labels CSV or a class folder "
        "(default: the training set, which flatters the model).")] = None,
    task: Annotated[str | None, typer.Option(
        help="label or activity (default: as trained).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report folder.")] = None,
) -> None:
    """Evaluate a trained clip model on a clip set (e.g. cross-dataset) and write a report.

    Example:

        facelab clips evaluate runs/gmdcsa --data up-fall
    """
    from facelab.clips.engine import evaluate_run

    m = evaluate_run(run, data, task, out)
    typer.echo(_summary(m))
    if m["n_failed"]:
        typer.secho(f"{m['n_failed']} clip(s) not decodable: " + "; ".join(m["failed"]),
                    fg=typer.colors.YELLOW, err=True)


def _inputs(items: list[Path]) -> list[str]:
    from facelab.clips.dataset import VIDEO_EXTENSIONS, from_csv

    clips: list[str] = []
    for item in items:
        if item.suffix.lower() == ".csv":
            clips += list(from_csv(item)["clip"])
        elif item.is_dir():
            clips += [str(p.resolve()) for p in sorted(item.rglob("*"))
                      if p.suffix.lower() in VIDEO_EXTENSIONS]
        else:
            clips.append(str(item.resolve()))
    return clips


@clips_app.command("predict")
def predict_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder (or its model.pt).")],
    inputs: Annotated[list[Path], typer.Argument(
        help="Clip files, folders of clips, or a labels CSV.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Predictions CSV (one row per clip).")] = Path(
        "clip_predictions.csv"),
    timeline: Annotated[Path | None, typer.Option(
        help="Sliding-window mode for long videos: write per video <DIR>/<name>_timeline.csv "
        "and .png (class probabilities over time) and <DIR>/intervals.csv (detected "
        "intervals of --target).")] = None,
    window: Annotated[float, typer.Option(help="Window length, seconds.")] = 2.0,
    hop: Annotated[float, typer.Option(help="Seconds between windows.")] = 0.5,
    threshold: Annotated[float, typer.Option(help="Probability of --target that makes a "
                         "window positive.")] = 0.5,
    min_duration: Annotated[float, typer.Option(help="Drop intervals whose positive windows' "
                            "centres span less (seconds).")] = 0.0,
    merge_gap: Annotated[float, typer.Option(help="Merge intervals this close (seconds).")] = 1.0,
    target: Annotated[str, typer.Option(help="Class whose intervals are detected.")] = "fall",
    fps: Annotated[float, typer.Option(help="Frames per second decoded for the timeline.")] = 10.0,
) -> None:
    """Class probabilities per clip, or (--timeline) over time in long videos with the
    detected intervals of one class; files that cannot be decoded are listed and skipped.

    Examples:

        facelab clips predict runs/falls clips/ -o preds.csv

        facelab clips predict runs/falls long.mp4 --timeline tl/ --threshold 0.6 --min-duration 0.5
    """
    import pandas as pd

    from facelab.clips.engine import load_model, predict_clips

    clips = _inputs(inputs)
    if not clips:
        typer.secho("no clip found in the inputs", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    model, cfg, classes = load_model(run)
    if timeline is not None:
        from facelab.clips.timeline import DetectConfig

        if target not in classes:
            typer.secho(f"--target {target!r} is not a class of the model ({', '.join(classes)})",
                        fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
        det = DetectConfig(window, hop, threshold, min_duration, merge_gap)
        done = _timelines(model, cfg, classes, clips, timeline, det, target, fps)
        if not done:
            raise typer.Exit(1)
        return
    probs, bad, _ = predict_clips(model, cfg, clips)
    reasons = dict(bad)
    rows = pd.DataFrame({"clip": clips})
    ok = ~pd.isna(probs).any(axis=1)
    rows["predicted"] = [classes[int(p.argmax())] if good else "" for p, good in zip(probs, ok)]
    for j, c in enumerate(classes):
        rows[f"p_{c}"] = probs[:, j]
    rows["error"] = [reasons.get(c, "") for c in clips]
    out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out, index=False)
    typer.echo(f"predictions: {out} ({int(ok.sum())} of {len(clips)} clips)")
    for clip, reason in bad:
        typer.secho(f"skipped: {reason}", fg=typer.colors.YELLOW, err=True)
    if not ok.any():
        raise typer.Exit(1)


def _timelines(model, cfg, classes, clips, out_dir: Path, det, target: str, fps: float) -> int:
    """Timeline CSV + PNG per video and one intervals.csv; a bad video is reported, the
    rest go on, and intervals.csv is rewritten after each video. Returns videos done."""
    import pandas as pd
    from rich.progress import Progress

    from facelab.clips.engine import predict_timeline
    from facelab.clips.timeline import detect_intervals, timeline_png
    from facelab.errors import ImageDecodeError

    out_dir.mkdir(parents=True, exist_ok=True)
    found, done = [], 0
    with Progress(transient=True) as bar:
        task = bar.add_task("timelines", total=len(clips))
        for clip in clips:
            stem = Path(clip).stem
            try:
                tl = predict_timeline(model, cfg, classes, clip, det, fps)
            except ImageDecodeError as exc:
                typer.secho(f"skipped: {exc}", fg=typer.colors.YELLOW, err=True)
                found.append({"clip": clip, "error": str(exc)})
            else:
                tl.to_csv(out_dir / f"{stem}_timeline.csv", index=False)
                iv = detect_intervals(tl, target, det)
                timeline_png(tl, iv, out_dir / f"{stem}_timeline.png", det.threshold, title=stem)
                found += [{"clip": clip, "start": r.start, "end": r.end, "peak": r.peak, "error": ""}
                          for r in iv.itertuples()]
                typer.echo(f"{stem}: {len(tl)} windows, {len(iv)} {target} interval(s)"
                           + "".join(f" [{r.start:.1f}-{r.end:.1f} s, p {r.peak:.2f}]"
                                     for r in iv.itertuples()))
                done += 1
            pd.DataFrame(found, columns=["clip", "start", "end", "peak", "error"]).to_csv(
                out_dir / "intervals.csv", index=False)
            bar.advance(task)
    typer.echo(f"timelines and intervals: {out_dir} ({done} of {len(clips)} videos)")
    return done
