"""`facelab db ...` (the face database) and `facelab verify-eval` commands."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from facelab.cli import app
from facelab.cli.engines import ADDRESS_OPT, ENGINE_OPT, WORKERS_OPT, check_engine

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its AVX2 probe is noise

db_app = typer.Typer(
    help=(
        "The face database: collect, enroll, search, verify and erase faces.\n\n"
        "Example:\n\n  facelab db init faces.db --detector mtcnn\n\n"
        "  facelab db ingest faces.db people/ --identity-from folder\n\n"
        "  facelab db search faces.db probe.jpg -k 5"
    ),
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")

DB_ARG = typer.Argument(..., help="Database file (SQLite) or postgresql:// URL.")
FACE_OPT = typer.Option(
    None, "--face",
    help="Which face when a photo shows several: largest, central, all (search) or an index "
         "(0 = largest). Default: refuse photos with several faces.")


def _open(db: str):
    from facelab.facedb.db import FaceDB

    return FaceDB(db)


def _json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@db_app.command("init")
def init(
    db: str = DB_ARG,
    embedder: str = typer.Option("dlib-resnet", help="Embedding model (dlib-resnet, dlib-resnet-upper, "
                                 "dlib-student, lite-student, mfn-student, mbv2-student, pixels, mobilefacenet)."),
    embedder_checkpoint: Path | None = typer.Option(
        None, help="Student / mobilefacenet weights (best.pt of `facelab embed-train distill`; "
        "dlib-student has bundled weights, the others need this)."),
    detector: str = typer.Option("mtcnn", help="Face detector (mtcnn, dlib-hog, dlib-cnn, haar, whole)."),
    fallback: str = typer.Option(
        "skip", help="When no face is detected: skip (no face = no face) or whole (use the whole "
                     "image; only for data sets of face crops)."),
    index: str = typer.Option("flat", help="Vector index: flat (exact), hnsw or ivf (approximate)."),
    copy_images: bool = typer.Option(True, help="Keep a managed copy of each image (erased by delete)."),
    phash_distance: int = typer.Option(4, help="Perceptual-hash near-duplicate distance (-1 = off)."),
    embedding_distance: float = typer.Option(0.0, help="Same-identity embedding near-duplicate distance (0 = off)."),
) -> None:
    """Create a face database.

    Example: facelab db init faces.db --detector mtcnn --index hnsw
    """
    from facelab.facedb.db import FaceDB, FaceDBConfig
    from facelab.facedb.index import IndexConfig

    opts = {"checkpoint": str(embedder_checkpoint.resolve())} if embedder_checkpoint else {}
    cfg = FaceDBConfig(embedder=embedder, embedder_options=opts, detector=detector, fallback=fallback,
                       index=IndexConfig(kind=index),
                       copy_images=copy_images, phash_distance=phash_distance,
                       embedding_distance=embedding_distance)
    with FaceDB.init(db, cfg) as fdb:
        _json(fdb.store.stats())


@db_app.command("ingest")
def ingest_cmd(
    db: str = DB_ARG,
    target: Path = typer.Argument(..., help="Folder of images, or CSV with path[,identity,source,license]."),
    identity_from: str = typer.Option("none", help="'folder': identity = parent folder name."),
    identity: str | None = typer.Option(None, help="Give every image this identity."),
    retry_failed: bool = typer.Option(False, help="Retry files that failed in an earlier run."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    face: str | None = FACE_OPT,
    engine: str = ENGINE_OPT,
    address: str | None = ADDRESS_OPT,
    workers: int | None = WORKERS_OPT,
) -> None:
    """Add a folder or CSV of images (resumable: rerun after a crash to finish).

    Exits 1 when every file it tried failed. With --engine ray the files go through a Ray
    actor pool (models loaded once per worker) writing to the same database; see
    docs/distributed.md.

    Examples:

        facelab db ingest faces.db people/ --identity-from folder

        facelab db ingest faces.db crawl/ --engine ray --workers 8

        facelab db ingest postgresql://db-host/faces crawl.csv --engine ray --address ray://head:10001
    """
    from facelab.errors import DataFormatError
    from facelab.facedb.db import check_face_choice
    from facelab.facedb.ingest import ingest, list_sources

    choice = check_face_choice(face)
    sources = list_sources(target, identity_from, identity)
    if not sources:
        raise DataFormatError(f"{target}: no image files found (extensions .jpg .png .bmp .webp .tif .gif)")
    with _open(db) as fdb:
        if check_engine(engine) == "ray":
            from facelab.engine.ray_jobs import ingest_on_ray

            rep = ingest_on_ray(fdb, sources, retry_failed, choice, progress, address, workers)
        else:
            rep = ingest(fdb, sources, retry_failed, progress, face=choice)
    typer.echo(rep.summary())
    for path, err in rep.failed:
        typer.echo(f"failed\t{path}\t{err}", err=True)
    if rep.all_failed:
        typer.echo(f"error: every file failed ({rep.counts['failed']}); see the lines above", err=True)
        raise typer.Exit(1)


@db_app.command("enroll")
def enroll(
    db: str = DB_ARG,
    name: str = typer.Argument(..., help="Identity name."),
    images: list[Path] = typer.Argument(..., help="Photos of this person (one face each)."),
    face: str | None = FACE_OPT,
) -> None:
    """Enroll one person from a few photos: all of them or none (each problem is listed).

    Example: facelab db enroll faces.db ada ada1.jpg ada2.jpg
    """
    from facelab.facedb.db import check_face_choice

    choice = check_face_choice(face)
    with _open(db) as fdb:
        for path, res in zip(images, fdb.enroll(name, images, face=choice)):
            typer.echo(f"{path}\t{res.status}\t{res.faces}")


@db_app.command("search")
def search(
    db: str = DB_ARG,
    image: Path = typer.Argument(..., help="Query photo (one face, or choose with --face)."),
    k: int = typer.Option(5, "-k", min=1, help="Number of neighbours (at least 1)."),
    face: str | None = FACE_OPT,
) -> None:
    """1:N search: print the k nearest stored faces as CSV (rank,identity,distance,match,path;
    with --face all, a leading query_face column).

    Example: facelab db search faces.db probe.jpg -k 3
    """
    from facelab.facedb.db import check_face_choice

    choice = check_face_choice(face)
    with _open(db) as fdb:
        results = fdb.search(image, k, face=choice)
        typer.echo(("query_face," if choice == "all" else "") + "rank,identity,distance,match,path")
        for q, matches in enumerate(results):
            lead = f"{q}," if choice == "all" else ""
            for r, m in enumerate(matches, 1):
                typer.echo(f"{lead}{r},{m.get('identity') or ''},{m['distance']:.4f},{int(m['match'])},{m.get('path')}")


@db_app.command("verify")
def verify(
    db: str = DB_ARG,
    a: Path = typer.Argument(..., help="First photo."),
    b: str = typer.Argument(..., help="Second photo, or an enrolled identity name."),
    face: str | None = FACE_OPT,
) -> None:
    """1:1 verify: same person? Uses the calibrated (or model default) threshold. A photo
    with no face is an error, never a whole-image match.

    Example: facelab db verify faces.db probe.jpg ada
    """
    from facelab.facedb.db import check_face_choice

    choice = check_face_choice(face)
    with _open(db) as fdb:
        bb = b if fdb.store.identity_id(b) is not None else Path(b)
        _json(fdb.verify(a, bb, face=choice))


@db_app.command("calibrate")
def calibrate(
    db: str = DB_ARG,
    pairs: Path = typer.Argument(..., help="Pairs CSV (image_a,image_b,same) to choose the threshold on."),
    min_pairs: int = typer.Option(20, min=1, help="Refuse with fewer usable pairs of each kind."),
    face: str = typer.Option("largest", "--face", help="Face used in photos with several: largest, central or an index."),
) -> None:
    """Choose and store the verify threshold from labelled pairs (never from your test pairs).

    Needs at least --min-pairs usable same-person and different-person pairs; prints the
    threshold with its 95% bootstrap interval.

    Example: facelab db calibrate faces.db dev_pairs.csv
    """
    from facelab.facedb.db import check_face_choice

    choice = check_face_choice(face)
    with _open(db) as fdb:
        r = fdb.calibrate_pairs(pairs, min_pairs=min_pairs, face=choice)
    lo, hi = r["interval"]
    typer.echo(f"threshold={r['threshold']:.4f} (95% bootstrap interval {lo:.4f}-{hi:.4f}; "
               f"same={r['same_pairs']} different={r['different_pairs']} skipped={r['skipped_pairs']} "
               f"accuracy={100 * r['accuracy']:.2f}% on these pairs)")


@db_app.command("stats")
def stats(db: str = DB_ARG) -> None:
    """Counts of identities, images, faces, embeddings; index and model.

    Example: facelab db stats faces.db
    """
    with _open(db) as fdb:
        _json(fdb.stats())


@db_app.command("delete")
def delete(
    db: str = DB_ARG,
    name: str = typer.Argument(..., help="Identity to erase."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Erase an identity: images, crops, embeddings, index entries and ingest-journal rows;
    then vacuum the database and truncate its WAL.

    Example: facelab db delete faces.db ada --yes
    """
    if not yes:
        typer.confirm(f"Erase every face and image of {name!r}?", abort=True)
    with _open(db) as fdb:
        _json(fdb.delete_identity(name))


@db_app.command("rebuild-index")
def rebuild_index(db: str = DB_ARG) -> None:
    """Rebuild the vector index from the stored embeddings.

    Example: facelab db rebuild-index faces.db
    """
    with _open(db) as fdb:
        typer.echo(f"vectors={fdb.rebuild_index().ntotal}")


@app.command("verify-eval")
def verify_eval(
    pairs: Path = typer.Argument(..., help="Pairs CSV: image_a,image_b,same[,fold]."),
    out: Path | None = typer.Option(None, help="Folder for report.json, scores.csv, roc.png."),
    detector: str = typer.Option("mtcnn", help="Face detector (or 'whole' for face crops)."),
    embedder: str = typer.Option("dlib-resnet", help="Embedding model."),
    flip: bool = typer.Option(True, help="dlib: average with the mirrored chip."),
    occlude_below: float | None = typer.Option(None, help="dlib: grey out the chip below this row fraction."),
    align: str = typer.Option("shape5", help="dlib chip alignment: shape5, landmarks or eyes."),
    checkpoint: Path | None = typer.Option(None, help="mobilefacenet / *-student: trained checkpoint "
                                           "(best.pt of `facelab embed-train distill`; dlib-student "
                                           "has bundled weights, the others need this)."),
    plain: bool = typer.Option(False, help="Also run the plain face_recognition recipe (dlib HOG "
                               "boxes, dlib 5-point chip, dlib's C++ network, no jitter, no flip) "
                               "on the same pairs and print both."),
    folds: list[int] | None = typer.Option(None, "--fold", help="Only pairs of these folds (repeatable)."),
    whole_margin: float = typer.Option(0.0, help="Margin (fraction) of the 'whole' detector / fallback box."),
    root: Path | None = typer.Option(None, help="Folder image paths are relative to (default: the CSV's)."),
    limit: int | None = typer.Option(None, help="Only the first N pairs (quick check)."),
) -> None:
    """Verification figures on a pairs CSV: accuracy (leave-one-fold-out threshold), ROC AUC,
    TAR@FAR 1% / 0.1%, ROC plot.

    Examples:

      facelab verify-eval ../shared/data/lfw/pairs.csv --out runs/lfw --plain

      facelab verify-eval pairs.csv --embedder dlib-student --checkpoint runs/distill/dlib/best.pt
    """
    from facelab.embed.base import get_embedder
    from facelab.embed.pipeline import FacePipeline, PipelineConfig
    from facelab.evaluate.verification import run_verify_eval

    opts: dict = {}
    if embedder.startswith("dlib-resnet") or embedder.endswith("-student"):
        opts = {"flip": flip, "align": align}
        if occlude_below is not None:
            opts["occlude_below"] = occlude_below
    if embedder == "mobilefacenet" or (embedder.endswith("-student") and checkpoint):
        opts["checkpoint"] = str(checkpoint) if checkpoint else None
    pcfg = PipelineConfig(detector=detector, largest_only=True, select="central", whole_margin=whole_margin)
    runs = [("facelab", FacePipeline(pcfg, get_embedder(embedder, **opts)))]
    if plain:  # face_recognition's recipe: HOG (1 upsample), 5-point chip, dlib C++ net, 1 jitter
        runs.append(("plain face_recognition", FacePipeline(
            PipelineConfig(detector="dlib-hog", largest_only=True, select="central", fallback="skip"),
            get_embedder("dlib-resnet", flip=False, net="dlib"))))
    for name, pipe in runs:
        sub = (out / name.split()[0]) if (out and len(runs) > 1) else out
        rep = run_verify_eval(pairs, pipe, out=sub, root=root, limit=limit, folds=folds)
        prefix = f"{name}: " if len(runs) > 1 else ""
        typer.echo(prefix + rep.summary())
        typer.echo(prefix + json.dumps({"images_per_s": round(rep.extra["images_per_s"], 1),
                                        "embedder": rep.extra["embedder"], "detector": rep.extra["detector"],
                                        "stages": rep.extra["stages"], "failed": len(rep.failed_images)}))


@db_app.command("download")
def download(
    urls: Path = typer.Argument(..., help="Text file with one image URL per line."),
    folder: Path = typer.Argument(..., help="Folder to download into (resumable journal inside)."),
    workers: int = typer.Option(8, help="Concurrent downloads."),
    max_mb: float = typer.Option(20.0, help="Largest accepted file in MB."),
    retries: int = typer.Option(2, help="Retries after timeouts / 5xx."),
    allow_private: bool = typer.Option(False, help="Allow private/loopback addresses."),
) -> None:
    """Download a URL list (concurrent, resumable, size/type limits, no private addresses).

    Example: facelab db download urls.txt raw/ && facelab db ingest faces.db raw/
    """
    from facelab.collect.download import DownloadConfig, download_urls

    cfg = DownloadConfig(workers=workers, max_bytes=int(max_mb * 1024 * 1024), retries=retries,
                         allow_private=allow_private)
    rep = download_urls(urls.read_text().split(), folder, cfg)
    typer.echo(rep.summary())


@db_app.command("crawl")
def crawl_cmd(
    keyword: str = typer.Argument(..., help="Search keyword (or a URL-list file with --engine urllist)."),
    folder: Path = typer.Argument(..., help="Images go to FOLDER/<keyword-slug>/."),
    engine: str = typer.Option("bing", help="bing, google, baidu, flickr or urllist."),
    max_num: int = typer.Option(100, help="Maximum images."),
    allow_private: bool = typer.Option(False, help="Allow private/loopback addresses."),
) -> None:
    """Collect images from an image search engine through icrawler.

    Example: facelab db crawl "ada lovelace portrait" raw/ --max-num 50
    """
    from facelab.collect.crawl import crawl
    from facelab.collect.fetch import FetchConfig

    cfg = FetchConfig(allow_private=allow_private)
    typer.echo(str(crawl(keyword, folder, engine=engine, max_num=max_num, config=cfg)))


@db_app.command("frames")
def frames(
    video: Path = typer.Argument(..., help="Video file."),
    folder: Path = typer.Argument(..., help="Where the JPEG frames go."),
    every: float = typer.Option(1.0, help="Seconds between sampled frames."),
    max_frames: int | None = typer.Option(None, help="Stop after this many frames."),
) -> None:
    """Sample video frames (PyAV) as JPEGs, ready to ingest.

    Example: facelab db frames clip.mp4 frames/ --every 0.5
    """
    from facelab.collect.video import save_frames

    typer.echo(f"frames={len(save_frames(video, folder, every, max_frames))}")
