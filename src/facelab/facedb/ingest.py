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

    @property
    def all_failed(self) -> bool:
        """True when files were attempted and every one of them failed."""
        attempted = sum(v for k, v in self.counts.items() if k != "already-done")
        return attempted > 0 and self.counts["failed"] == attempted


def read_csv_checked(path: str | Path, required: tuple[str, ...]) -> pd.DataFrame:
    """Read a UTF-8 CSV of strings, with one-line errors for empty, undecodable or malformed
    files and missing columns.

    Example:
        >>> read_csv_checked("pairs.csv", ("image_a", "image_b", "same"))  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found; check the path")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError as exc:
        raise DataFormatError(f"{path}: empty file; it needs a header line with {','.join(required)}") from exc
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 (byte {exc.object[exc.start]:#x} at offset {exc.start}); "
                              "save it as UTF-8") from exc
    except (pd.errors.ParserError, ValueError) as exc:
        msg = " ".join(str(exc).split())
        raise DataFormatError(f"{path}: not a readable CSV ({msg}); fix the file") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataFormatError(f"{path}: missing column(s) {missing}; it needs {','.join(required)}")
    return df


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
        df = read_csv_checked(target, ("path",))
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
    flush_every: int = 200, face: str | int | None = None,
) -> IngestReport:
    """Add every source not yet journaled; returns counts per outcome.

    Labelled sources (with an identity) need exactly one face, or ``face`` chooses one
    (see :meth:`FaceDB.add_image`); otherwise they are recorded as no-face / ambiguous.
    A file stored meanwhile by a concurrent ingest counts as a duplicate.

    Example:
        >>> with FaceDB("faces.db") as db:                                  # doctest: +SKIP
        ...     print(ingest(db, list_sources("photos/")).summary())
        added=120 duplicate=3 no-face=2
    """
    from rich.progress import track

    report = IngestReport()
    todo = pending(db, sources, retry_failed)
    report.counts["already-done"] = len(sources) - len(todo)
    it = track(todo, description="ingesting") if progress and todo else todo
    saved = 0
    for n, src in enumerate(it, 1):
        status, error = ingest_one(db, src, face)
        report.counts[status] += 1
        if error is not None:
            report.failed.append((str(src.path), error))
        if n - saved >= db.save_interval(flush_every):
            db.flush()
            saved = n
    db.flush()
    return report


def pending(db: FaceDB, sources: list[Source], retry_failed: bool = False) -> list[Source]:
    """The sources not yet in the ingest journal (plus the failed ones, with ``retry_failed``)."""
    done = db.store.journal_sources()
    failed_before = db.store.journal_sources("failed") if retry_failed else set()
    return [s for s in sources if s.key not in done or s.key in failed_before]


def ingest_one(db: FaceDB, src: Source, face: str | int | None = None) -> tuple[str, str | None]:
    """Add one source with its journal row; returns (status, error or None). A file that
    cannot be used is journaled as "failed" with the error, not raised."""
    try:
        res = db.add_image(src.path, identity=src.identity, source=src.source,
                           license=src.license, journal=src.key, face=face)
        return res.status, None
    except (FacelabError, OSError) as exc:
        log.warning("skipping %s: %s", src.path, exc)
        with db.store.transaction():
            db.store.journal_mark(src.key, None, "failed", str(exc)[:500], identity=src.identity)
        return "failed", str(exc)
