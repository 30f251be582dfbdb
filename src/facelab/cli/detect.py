"""CLI: `facelab detect`, `facelab crop`, `facelab detect-eval`, `facelab detect-train`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from facelab.cli import app

log = logging.getLogger(__name__)


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _shown(name: object) -> str:
    """A file name on one line: as it is, or quoted when it holds a newline or control bytes."""
    text = str(name)
    return text if text.isprintable() else repr(text)


@app.command("detect")
def detect_cmd(
    images: list[Path] = typer.Argument(..., help="Image files."),
    detector: str = typer.Option("mtcnn", "--detector", "-d", help="Detector or cascade spec."),
) -> None:
    """Print the faces found in images as CSV (image, score, box, 5 landmarks).

    The CSV is quoted as the csv module does (a comma or newline in a file name stays in
    its cell). Unreadable images are skipped and listed on stderr; the exit status is
    non-zero only when no image could be read.

    Example:

      facelab detect photo.jpg --detector "mtcnn(min_face_size=12)"

      facelab detect selfie.jpg -d blazeface-short-onnx   # MediaPipe BlazeFace, close-ups
    """
    import csv
    import sys

    from facelab.detect.cascade import detector_from_spec
    from facelab.errors import CheckpointError, ConfigError, DataFormatError, WeightsError
    from facelab.io import load_image

    det = detector_from_spec(detector)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(
        ["image", "stage", "score", "x1", "y1", "x2", "y2"]
        + [f"lm{i}_{a}" for i in range(5) for a in "xy"]
    )
    failed = 0
    for path in images:
        try:
            faces = det.detect(load_image(path))
        except (ConfigError, WeightsError, CheckpointError, MemoryError):
            raise  # the detector itself is unusable: stop
        except Exception as exc:  # noqa: BLE001  (skip and list the bad image)
            failed += 1
            reason = " ".join(str(exc).split()) or type(exc).__name__
            typer.echo(f"failed: {_shown(path)}: {reason}", err=True)
            continue
        for f in faces:
            lm = f.landmarks.ravel().tolist() if f.landmarks is not None else [None] * 10
            cells = [str(path), f.stage, f"{f.score:.4f}", *(f"{v:.1f}" for v in f.box)]
            cells += ["" if v is None else f"{v:.1f}" for v in lm]
            writer.writerow(cells)
        sys.stdout.flush()
    if failed:
        typer.echo(f"{len(images) - failed} images read, {failed} failed", err=True)
    if failed == len(images):
        raise DataFormatError(
            f"none of the {failed} images could be read (see the failures above); "
            "check the paths and files"
        )


@app.command("crop")
def crop_cmd(
    source: Path = typer.Argument(..., help="Image folder, labels CSV, or competition folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (crops/, crops.csv)."),
    spec: str = typer.Option("mtcnn>center", help="Cascade: detectors then center|original."),
    margin: float = typer.Option(0.2, help="Context on each side, fraction of the face box."),
    square: bool = typer.Option(True, help="Square crops."),
    choose: str = typer.Option("largest", help="largest | central | score | all"),
    size: int | None = typer.Option(None, help="Resize crops to SIZE x SIZE."),
    align: bool = typer.Option(False, help="5-point alignment to the ArcFace template."),
    image_format: str = typer.Option("jpg", "--format", help="jpg or png."),
    batch_size: int = typer.Option(8, help="Images per detector batch."),
    overwrite: bool = typer.Option(False, help="Start over even if settings changed."),
    threads: int | None = typer.Option(None, help="torch CPU threads."),
) -> None:
    """Crop faces from many images into a folder plus a CSV of boxes, landmarks, scores, stage.

    Resumable: a rerun skips images already cropped. Unreadable (or unwritable) inputs are
    skipped and listed in OUT/errors.csv; the exit status is non-zero when nothing was
    cropped or already done. Crops are named by facelab.io.outpaths.derived_path: the
    input's relative path and extension plus the format (a/face.png -> crops/a/face.png.jpg),
    always inside OUT/crops, even for "..", absolute or symlinked inputs.

    Example:

      facelab crop data/train/images --out cache/crops --spec "mtcnn-mask>mtcnn>center" --size 224
    """
    from facelab.detect.cascade import FaceCropper
    from facelab.detect.crop_job import run_crop_job

    _threads(threads)
    cropper = FaceCropper(spec, margin=margin, square=square, choose=choose, size=size, align=align)
    s = run_crop_job(
        source, out, cropper, image_format=image_format, batch_size=batch_size, overwrite=overwrite
    )
    typer.echo(f"cropped {s.done}, skipped (already done) {s.skipped}, failed {len(s.errors)}")
    for stage, n in sorted(s.stages.items(), key=lambda kv: -kv[1]):
        typer.echo(f"  {stage}: {n}")
    for name, err in s.errors[:20]:
        typer.echo(f"  failed: {_shown(name)}: {err}", err=True)
    if len(s.errors) > 20:
        typer.echo(f"  ... {len(s.errors) - 20} more in {out / 'errors.csv'}", err=True)
    typer.echo(f"cache key {cropper.cache_key()}; CSV {out / 'crops.csv'}")
    if s.done + s.skipped == 0:
        from facelab.errors import DataFormatError

        raise DataFormatError(
            f"nothing cropped: all {len(s.errors)} inputs of {source} failed "
            f"(listed in {out / 'errors.csv'}); fix or remove them and rerun"
        )


@app.command("detect-eval")
def detect_eval_cmd(
    boxes: Path = typer.Option(..., help="boxes.csv (image,x1,y1,x2,y2,label) or its folder."),
    detector: list[str] = typer.Option(
        ["mtcnn"], "--detector", "-d", help="Detector or cascade spec; repeat for several."
    ),
    split: str = typer.Option(
        "test", help="test | train | val | fit | all: the image-hash split detect-train uses (test = "
        "held out; val = the training split's validation images, where thresholds and the "
        "default detector are chosen)."
    ),
    limit: int | None = typer.Option(None, help="Only the first N images (quick looks)."),
    min_size: float = typer.Option(32.0, help="Face-width bucket edge in pixels."),
    iou: float = typer.Option(0.5, help="IoU for a match."),
    batch_size: int = typer.Option(8, help="Images per detect_batch call."),
    threads: int | None = typer.Option(1, help="torch CPU threads."),
    out: Path | None = typer.Option(
        None, help="Also write the table (.md) and numbers (.json)."
    ),
    photos: list[Path] = typer.Option(
        [], help="Folder of single-face photos (e.g. utkface, rmfd-masked-faces); repeat for several."
    ),
    photos_limit: int = typer.Option(300, help="Evenly spaced photos per --photos folder (0 = all)."),
) -> None:
    """Recall per class and face size, precision and speed of detectors on a boxes CSV, and
    (with --photos) found-face rate and framing on single-face photo folders.

    Examples:

      facelab detect-eval --boxes ../shared/data/face-mask-detection -d mtcnn -d haar -d "mtcnn-mask>mtcnn"

      facelab detect-eval --boxes ../shared/data/face-mask-detection -d ssd-mbv2 -d ssd-mbv2-onnx -d mtcnn --threads 2 --photos ../shared/data/utkface

      facelab detect-eval --boxes ../shared/data/face-mask-detection -d blazeface-short-onnx -d "blazeface-full-onnx(size=384)" --photos ../shared/data/rmfd-masked-faces/images
    """
    from facelab.detect.cascade import detector_from_spec
    from facelab.detect.evaluate import evaluate_detector, format_table, read_boxes, split_rows

    _threads(threads)
    df = read_boxes(boxes)
    df = split_rows(df, split)
    if limit:
        df = df[df["image"].isin(list(dict.fromkeys(df["image"]))[:limit])]
    labels = sorted(df["label"].unique(), key=lambda s: (s != "with_mask", s))
    typer.echo(f"{df['image'].nunique()} images, {len(df)} faces ({split} split), IoU {iou}")
    results = []
    for spec in detector:
        res = evaluate_detector(detector_from_spec(spec), df, iou=iou, batch_size=batch_size)
        res.name = spec
        results.append(res)
        if res.failed:
            typer.echo(f"{spec}: {len(res.failed)} unreadable images", err=True)
        typer.echo(format_table([res], labels, min_size).splitlines()[-1])  # as it finishes
    table = format_table(results, labels, min_size)
    typer.echo("\n" + table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(table + "\n")
        rows = [dict(r.row(labels, min_size), stages=r.stage_counts) for r in results]
        out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    if photos:
        _photo_tables(photos, photos_limit, detector, batch_size, out)


def _photo_tables(folders: list[Path], limit: int, specs: list[str], batch_size: int,
                  out: Path | None) -> None:
    from facelab.detect.cascade import detector_from_spec
    from facelab.detect.evaluate import evaluate_photos, format_photo_table, sample_photos

    report = {}
    for folder in folders:
        files = sample_photos(folder, limit)
        typer.echo(f"\n{folder}: {len(files)} single-face photos")
        results = []
        for spec in specs:
            res = evaluate_photos(detector_from_spec(spec), files, batch_size=batch_size)
            res.name = spec
            results.append(res)
        table = format_photo_table(results)
        typer.echo(table)
        report[str(folder)] = table
    if out:
        text = "\n\n".join(f"{k}\n\n{v}" for k, v in report.items())
        out.with_suffix(".photos.md").write_text(text + "\n")


@app.command("detect-train")
def detect_train_cmd(
    boxes: Path = typer.Option(..., help="boxes.csv (image,x1,y1,x2,y2,label) or its folder."),
    arch: str = typer.Option(
        "mtcnn-mask", help="mtcnn-mask (fine-tune MTCNN) or ssd-mbv2 (single-shot MobileNetV2)."
    ),
    out: Path | None = typer.Option(None, help="Checkpoint to write [runs/detect/<arch>.pt]."),
    install: bool = typer.Option(
        False, help="Also copy it to $FACELAB_CACHE/weights/<arch>.pt (the default weights)."
    ),
    min_face_size: float = typer.Option(10.0, help="mtcnn-mask: smallest face searched for (px)."),
    precision_target: float = typer.Option(0.9, help="Validation precision the threshold aims at."),
    size: int = typer.Option(480, help="ssd-mbv2: reference letterbox side for the training scales (px)."),
    infer_size: int = typer.Option(0, help="ssd-mbv2: letterbox side the detector runs at, saved in the checkpoint (px; 0 = --size, or with --threshold-only the checkpoint's own size)."),
    crop: int = typer.Option(224, help="ssd-mbv2: training crop side, px (0 = --size)."),
    freeze: int = typer.Option(4, help="ssd-mbv2: MobileNetV2 blocks kept frozen."),
    epochs: int = typer.Option(30, help="ssd-mbv2: passes over the training images."),
    batch_size: int = typer.Option(16, help="ssd-mbv2: crops per step."),
    lr: float = typer.Option(2e-3, help="ssd-mbv2: AdamW peak learning rate."),
    workers: int = typer.Option(0, help="ssd-mbv2: data-loading worker processes."),
    device: str = typer.Option("", help="ssd-mbv2: cpu or cuda (default: cuda when available)."),
    landmarks: Path | None = typer.Option(
        None, help="ssd-mbv2: CSV caching MTCNN landmark targets [<out>.landmarks.csv]."
    ),
    photos: list[Path] = typer.Option(
        [], help="ssd-mbv2: folder of single-face photos of another data set (e.g. lfw-train), "
        "labelled by MTCNN, used as whole images and pasted into crops; repeat for several."
    ),
    photos_limit: int = typer.Option(0, help="ssd-mbv2: evenly spaced photos per --photos folder (0 = all)."),
    photo_share: float = typer.Option(0.25, help="ssd-mbv2: whole photos per epoch, as a share of the boxes images."),
    paste_prob: float = typer.Option(0.5, help="ssd-mbv2: chance a crop gets pasted photo faces."),
    paste_mask: float = typer.Option(0.3, help="ssd-mbv2: chance a pasted face wears a rendered mask."),
    mosaic: float = typer.Option(0.5, help="ssd-mbv2: chance a boxes-CSV crop is a 2x2 mosaic of four training images at half scale (0 = off)."),
    unmasked_repeat: int = typer.Option(1, help="ssd-mbv2: draw each training image holding an unmasked face this many times per epoch."),
    teacher_cache: Path | None = typer.Option(
        None, help="ssd-mbv2: CSV caching the teacher's photo boxes [<out>.teacher.csv]."
    ),
    unannotated: float = typer.Option(
        0.0, help="ssd-mbv2: ignore (neither face nor background) faces MTCNN finds at this score "
        "or above in a training image that overlap no annotated box (0 = off, else 0.5-1; e.g. 0.95)."
    ),
    threshold_only: bool = typer.Option(
        False, help="ssd-mbv2: no training; choose the score threshold of the --out checkpoint "
        "again on the validation images (at the checkpoint's size, or --infer-size) and write it (and that size) into the checkpoint."
    ),
    threads: int = typer.Option(1, help="torch CPU threads."),
    seed: int = typer.Option(0),
) -> None:
    """Train a detector on masked faces; the test split (by image hash) is never read.

    Examples:

      facelab detect-train --boxes ../shared/data/face-mask-detection --install

      facelab detect-train --arch ssd-mbv2 --boxes ../shared/data/face-mask-detection --threads 1

      facelab detect-train --arch ssd-mbv2 --boxes ../shared/data/face-mask-detection --photos ../shared/data/lfw-train/images

      facelab detect-train --arch ssd-mbv2 --boxes ../shared/data/face-mask-detection --out runs/detect/ssd-mbv2.pt --threshold-only
    """
    import shutil

    from facelab.errors import ConfigError

    if threshold_only and arch != "ssd-mbv2":
        raise ConfigError("--threshold-only works with --arch ssd-mbv2")
    if threshold_only and size != 480:  # --size only shapes training; it once meant the run size
        raise ConfigError("--threshold-only keeps the checkpoint's size; give the size to threshold "
                          "at as --infer-size, not --size")
    if arch == "mtcnn-mask":
        from facelab.detect.mtcnn import default_mask_weights
        from facelab.detect.train import DetectTrainConfig, train_detector

        out = out or Path("runs/detect/mtcnn-mask.pt")
        cfg = DetectTrainConfig(
            boxes=str(boxes), out=str(out), min_face_size=min_face_size,
            precision_target=precision_target, threads=threads, seed=seed,
        )  # fmt: skip
        meta = train_detector(cfg)
        dest = default_mask_weights()
    elif arch == "ssd-mbv2":
        from facelab.detect.ssd import default_ssd_weights
        from facelab.detect.ssd_train import SSDTrainConfig, rethreshold, train_ssd

        out = out or Path("runs/detect/ssd-mbv2.pt")
        cfg = SSDTrainConfig(
            boxes=str(boxes), out=str(out), size=size, infer_size=infer_size, crop=crop, freeze=freeze, epochs=epochs,
            batch_size=batch_size, save_every=1,
            lr=lr, workers=workers, device=device, landmarks=str(landmarks or ""),
            precision_target=precision_target, threads=threads, seed=seed,
            photos=[str(p) for p in photos], photos_limit=photos_limit, photo_share=photo_share,
            paste_prob=paste_prob, paste_mask=paste_mask, teacher_cache=str(teacher_cache or ""),
            mosaic=mosaic, unannotated=unannotated, unmasked_repeat=unmasked_repeat,
        )  # fmt: skip
        meta = rethreshold(cfg) if threshold_only else train_ssd(cfg)
        dest = default_ssd_weights()
    else:
        raise ConfigError(f"--arch must be mtcnn-mask or ssd-mbv2, got {arch!r}")
    skip = ("config", "history", "train_image_names")
    typer.echo(json.dumps({k: v for k, v in meta.items() if k not in skip}, indent=1))
    if install:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, dest)
        typer.echo(f"installed as {dest}")
    typer.echo(f"checkpoint {out}")
