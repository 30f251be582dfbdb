"""Resumable ingest of a folder or a CSV into a :class:`FaceDB`.

Each source file is processed in one database transaction that also records it in the
ingest journal (``ingest_log``). Killing the process (even ``kill -9``) loses at most the
file in flight; rerunning skips every file already journaled and redoes the rest, so nothing
is lost or stored twice (images are also content-addressed by sha256). The FAISS index is
a cache: when a crash leaves it stale, the next open rebuilds it from the database.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from facelab.errors import DataFormatError, FacelabError
from facelab.facedb.db import FaceDB

log = logging.getLogger(__name__)
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


@dataclass
class Source:
    """One file to ingest, with optional identity / provenance."""

    path: Path
    identity: str | None = None
    source: str | None = None
    license: str | None = None

    @property
    def key(self) -> str:
        return str(self.path.resolve())


@dataclass
class IngestReport:
    """Counts per outcome, and the files that failed (with their error)."""

    counts: Counter = field(default_factory=Counter)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.counts.items())]
        return " ".join(parts) or "nothing to do"


def list_sources(
    target: str | Path, identity_from: str = "none", identity: str | None = None
) -> list[Source]:
    """Files to ingest from a folder (recursive, sorted) or a CSV.

    CSV columns: ``path`` (required, relative to the CSV's folder or absolute), optional
    ``identity``, ``source`` (e.g. URL), ``license``. For folders, ``identity_from="folder"``
    names each image's identity after its parent folder (identity-folder layout).

    Example:
        >>> [s.identity for s in list_sources("people/", identity_from="folder")][:1]  # doctest: +SKIP
        ['ada']
    """
    target = Path(target)
    if target.is_dir():
        files = sorted(p for p in target.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        out = []
        for p in files:
            ident = identity if identity else (p.parent.name if identity_from == "folder" else None)
            out.append(Source(p, ident))
        return out
    if target.is_file() and target.suffix.lower() == ".csv":
        df = pd.read_csv(target, dtype=str, keep_default_na=False)
        if "path" not in df.columns:
            raise DataFormatError(f"{target} needs a 'path' column (and optionally identity, source, license)")
        out = []
        for row in df.to_dict("records"):
            p = Path(row["path"])
            p = p if p.is_absolute() else target.parent / p
            ident = row.get("identity") or identity or None
            out.append(Source(p, ident, row.get("source") or None, row.get("license") or None))
        return out
    raise DataFormatError(f"{target} is neither a folder nor a .csv file")


def ingest(
    db: FaceDB, sources: list[Source], retry_failed: bool = False, progress: bool = True,
    flush_every: int = 200,
) -> IngestReport:
    """Add every source not yet journaled; returns counts per outcome.

    Example:
        >>> with FaceDB("faces.db") as db:                                  # doctest: +SKIP
        ...     print(ingest(db, list_sources("photos/")).summary())
        added=120 duplicate=3 no-face=2
    """
    from rich.progress import track

    report = IngestReport()
    done = db.store.journal_sources()
    failed_before = db.store.journal_sources("failed") if retry_failed else set()
    todo = [s for s in sources if s.key not in done or s.key in failed_before]
    report.counts["already-done"] = len(sources) - len(todo)
    it = track(todo, description="ingesting") if progress and todo else todo
    for n, src in enumerate(it, 1):
        try:
            res = db.add_image(src.path, identity=src.identity, source=src.source,
                               license=src.license, journal=src.key)
            report.counts[res.status] += 1
        except (FacelabError, OSError) as exc:
            log.warning("skipping %s: %s", src.path, exc)
            report.failed.append((str(src.path), str(exc)))
            report.counts["failed"] += 1
            with db.store.transaction():
                db.store.journal_mark(src.key, None, "failed", str(exc)[:500])
        if n % flush_every == 0:
            db.flush()
    db.flush()
    return report
