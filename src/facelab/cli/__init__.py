"""The `facelab` command line: a thin Typer layer over the library.

Each sub-module registers its commands on `app`; logic lives in the library packages.
"""

from __future__ import annotations

import logging
import sys

import typer

from facelab.errors import FacelabError

app = typer.Typer(
    name="facelab",
    help=(
        "Train, evaluate and serve face models: mask/gender/age classifiers, detection, "
        "embeddings and a face database.\n\n"
        "Examples:\n\n"
        "  facelab train --config configs/multitask.yaml --out runs/mt\n\n"
        "  facelab evaluate runs/mt\n\n"
        "  facelab predict runs/mt --competition path/to/comp --out preds.csv\n\n"
        "  facelab analyze photos/ clip.mp4 --run runs/mt --out faces.csv\n\n"
        "  facelab detect-eval --help ;  facelab db --help"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_COMMAND_MODULES = ("attributes", "analyze", "detect", "db", "recipes", "serve", "masks", "clips",
                    "embed")


def _register() -> None:
    from importlib import import_module

    for name in _COMMAND_MODULES:
        try:
            import_module(f"facelab.cli.{name}")
        except ModuleNotFoundError as exc:  # a command group not written yet
            if exc.name != f"facelab.cli.{name}":
                raise


def main() -> None:
    """Console entry point: run the app, turning user errors into one clear line and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _register()
    try:
        app()
    except FacelabError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
