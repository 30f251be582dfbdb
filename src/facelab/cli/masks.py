"""`facelab make-competition`: the competition layout with rendered masks (thin over
facelab.masks.competition)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facelab.cli import app


@app.command("make-competition")
def make_competition_cmd(
    labels: Annotated[Path, typer.Argument(help="Labels CSV: image, age, gender (race) columns.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Layout root folder.")] = Path(
        "data/competition"),
    limit: Annotated[int, typer.Option("--limit", "-n", help="First N people only (0: all).")] = 0,
    seed: Annotated[int, typer.Option(help="Render and split seed (rerun with it to resume).")] = 0,
    eval_fraction: Annotated[float, typer.Option(help="Share of people in eval/.")] = 0.2,
    image_root: Annotated[Path | None, typer.Option(
        help="Folder image paths start from (default: the CSV's folder).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Build train/ (mask1..5, incorrect_mask, normal per person) and eval/ from a face set.

    Masks are rendered on dlib's 68 landmarks; people already written are skipped, so an
    interrupted build resumes. Images without a usable face are skipped and listed in
    OUT/skipped.csv; the exit status is 1 when no person could be written.

    Example:

      facelab make-competition ../shared/data/utkface/labels.csv --out comp --limit 200
    """
    from facelab.masks.competition import build_competition

    rep = build_competition(labels, out, limit=limit, seed=seed, eval_fraction=eval_fraction,
                            image_root=image_root, progress=progress)
    for image, reason in rep.skipped:
        typer.echo(f"skipped {image}: {reason}", err=True)
    typer.echo(
        f"{rep.out}: {rep.train_people} train + {rep.eval_people} eval people "
        f"({rep.written} written now, {rep.already_there} already there, "
        f"{len(rep.skipped)} skipped -> {rep.out / 'skipped.csv'})"
    )
    if rep.train_people + rep.eval_people == 0:
        raise typer.Exit(1)


def _wear_weights(text: str) -> dict[str, float]:
    from facelab.errors import ConfigError

    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        try:
            weights[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"--wear {text!r}: use comma-separated state=weight, "
                              "e.g. correct=0.35,incorrect=0.15,none=0.5")
    return weights


@app.command("make-masked")
def make_masked_cmd(
    labels: Annotated[Path, typer.Argument(help="Labels CSV: image, age, gender (race) columns.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (images/, labels.csv).")] = Path(
        "data/masked"),
    wear: Annotated[str, typer.Option(
        help="Relative weights of the mask states (a wear variant such as below_nose works too).")
    ] = "correct=0.35,incorrect=0.15,none=0.5",
    limit: Annotated[int, typer.Option("--limit", "-n", help="First N faces only (0: all).")] = 0,
    seed: Annotated[int, typer.Option(help="Render seed (rerun with it to resume).")] = 0,
    image_root: Annotated[Path | None, typer.Option(
        help="Folder image paths start from (default: the CSV's folder).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Copy a labelled face set with one rendered mask state per face (mask, gender and age
    on the same faces); OUT/labels.csv is a `labels` source for `facelab train`.

    Faces without landmarks keep their photo as "none". Undecodable images are skipped
    and listed in OUT/skipped.csv (exit 1 when nothing was written). Resumable.

    Example:

      facelab make-masked ../shared/data/utkface/labels.csv --out utk-masked --wear correct=0.4,incorrect=0.2,none=0.4
    """
    from facelab.masks.masked_set import build_masked_set

    rep = build_masked_set(labels, out, wear_weights=_wear_weights(wear), seed=seed, limit=limit,
                           image_root=image_root, progress=progress)
    for image, reason in rep.skipped:
        typer.echo(f"skipped {image}: {reason}", err=True)
    typer.echo(f"{rep.out / 'labels.csv'}: {rep.rows} faces {rep.counts} ({rep.written} written now, "
               f"{rep.already_there} already there, {rep.unrendered} without landmarks kept as "
               f"'none', {len(rep.skipped)} skipped)")
    if rep.rows == 0:
        raise typer.Exit(1)
