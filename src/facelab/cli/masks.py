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
