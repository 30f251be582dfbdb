"""Options shared by the batch commands that can run on Ray (`analyze`, `db ingest`)."""

from __future__ import annotations

import typer

from facelab.errors import ConfigError

ENGINES = ("local", "ray")
ENGINE_OPT = typer.Option("local", "--engine", help="local (this process) or ray (a Ray Data pipeline; "
                          "pip install 'facelab[ray]'; see docs/distributed.md).")
ADDRESS_OPT = typer.Option(None, "--address", help="Ray cluster address (ray://head:10001, head:6379 or "
                           "auto); default: start a local Ray instance.")
WORKERS_OPT = typer.Option(None, "--workers", min=1, help="Ray actors (each loads the models once); "
                           "default: the cluster's CPUs.")


def check_engine(engine: str) -> str:
    """Refuse an unknown engine name."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    return engine
