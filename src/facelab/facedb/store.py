"""Storage of images, faces, identities, labels and embeddings: the backend interface and
its SQLite implementation (the embedded default, WAL mode).

Everything one ingested image produces (image row, faces, embeddings, labels, journal entry)
is written in **one transaction**, so a process killed at any point leaves either all of it
or none of it; rerunning an ingest then redoes exactly the missing images.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from facelab.errors import DataFormatError, FacelabError
from facelab.facedb.schema import MIGRATIONS, SCHEMA_VERSION, dialect


class DatabaseError(FacelabError):
    """The face database cannot be opened, is newer than this facelab, or is inconsistent."""


def now() -> str:
    """UTC timestamp string used in every *_at column."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class FaceRecord:
    """One face to store: its box, landmarks, crop, quality, identity and vectors.

    Attributes:
        vectors: model key "name:version" -> (dim,) float32 vector.
        labels: free key/value labels (e.g. {"mask": "worn"}).
    """

    box: tuple[float, float, float, float]
    score: float = 1.0
    landmarks: np.ndarray | None = None
    crop_path: str | None = None
    quality: float | None = None
    stage: str = ""
    identity: str | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class ImageRecord:
    """One image to store (content-addressed by sha256)."""

    sha256: str
    source: str | None = None
    path: str | None = None
    phash: str | None = None
    width: int | None = None
    height: int | None = None
    license: str | None = None
    notes: str | None = None


class FaceStore(ABC):
    """What the face database needs from a storage backend (SQLite, PostgreSQL).

    SQL is written with ``?`` placeholders; backends translate if needed.
    """

    backend = "abstract"
    # where vectors live: the column read and written, and the placeholder that writes it
    # (PostgreSQL with pgvector: a ``vector`` column written through ``?::vector``)
    vector_column = "vector"
    vector_param = "?"

    # -- primitives every backend provides ------------------------------------------------
    @abstractmethod
    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one statement; returns all rows (empty for statements without a result)."""

    @abstractmethod
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All statements inside commit together or not at all."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def encode_vector(self, v: np.ndarray) -> Any:
        return np.asarray(v, np.float32).tobytes()

    def decode_vector(self, raw: Any, dim: int) -> np.ndarray:
        return np.frombuffer(bytes(raw), np.float32, count=dim)

    # -- schema ----------------------------------------------------------------------------
    def schema_version(self) -> int:
        self.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        rows = self.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        return int(rows[0][0]) if rows else 0

    def migrate(self) -> int:
        """Apply missing migrations; returns the resulting schema version."""
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise DatabaseError(
                f"database schema version {current} is newer than this facelab knows "
                f"({SCHEMA_VERSION}); upgrade facelab"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                for stmt in MIGRATIONS[version - 1]:
                    self.execute(dialect(stmt, self.backend))
                self._set_meta("schema_version", str(version))
        return SCHEMA_VERSION

    def _set_meta(self, key: str, value: str) -> None:
        self.execute("DELETE FROM meta WHERE key = ?", (key,))
        self.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- identities / images -----------------------------------------------------------------
    def identity_id(self, name: str, create: bool = False) -> int | None:
        rows = self.execute("SELECT id FROM identities WHERE name = ?", (name,))
        if rows:
            return int(rows[0][0])
        if not create:
            return None
        # a concurrent writer may create the same name: keep theirs (no unique-violation abort)
        self.execute("INSERT INTO identities (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                     (name, now()))
        return int(self.execute("SELECT id FROM identities WHERE name = ?", (name,))[0][0])

    def image_by_hash(self, sha256: str) -> int | None:
        rows = self.execute("SELECT id FROM images WHERE sha256 = ?", (sha256,))
        return int(rows[0][0]) if rows else None

    def phashes(self, after: int = 0) -> list[tuple[int, str]]:
        """[(image id, perceptual hash)] of images with a hash and an id above ``after``, by id."""
        rows = self.execute("SELECT id, phash FROM images WHERE id > ? AND phash IS NOT NULL ORDER BY id",
                            (int(after),))
        return [(int(r[0]), r[1]) for r in rows]

    def existing_images(self, ids: list[int]) -> set[int]:
        """The ids among ``ids`` that are still stored images."""
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        return {int(r[0]) for r in self.execute(f"SELECT id FROM images WHERE id IN ({marks})", tuple(ids))}

    def add_image(self, image: ImageRecord, faces: list[FaceRecord]) -> tuple[int, list[int]]:
        """Insert an image with its faces/vectors/labels (call inside :meth:`transaction`).

        Returns (image id, new embedding ids).
        """
        rows = self.execute(
            "INSERT INTO images (sha256, phash, source, path, width, height, license, notes, added_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (image.sha256, image.phash, image.source, image.path, image.width, image.height,
             image.license, image.notes, now()),
        )
        image_id = int(rows[0][0])
        emb_ids: list[int] = []
        for face in faces:
            emb_ids += self.add_face(image_id, face)
        return image_id, emb_ids

    def add_face(self, image_id: int, face: FaceRecord) -> list[int]:
        """Insert one face of an existing image; returns its new embedding ids."""
        ident = self.identity_id(face.identity, create=True) if face.identity else None
        lm = None if face.landmarks is None else json.dumps(np.asarray(face.landmarks).tolist())
        rows = self.execute(
            "INSERT INTO faces (image_id, identity_id, x1, y1, x2, y2, score, landmarks, crop_path,"
            " quality, stage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (image_id, ident, *map(float, face.box), float(face.score), lm, face.crop_path,
             face.quality, face.stage),
        )
        face_id = int(rows[0][0])
        for key, value in face.labels.items():
            self.execute("INSERT INTO labels (face_id, key, value) VALUES (?, ?, ?)", (face_id, key, value))
        emb_ids = []
        for model_key, vec in face.vectors.items():
            model, _, version = model_key.partition(":")
            vec = np.asarray(vec, np.float32).ravel()
            rows = self.execute(
                f"INSERT INTO embeddings (face_id, model, version, dim, {self.vector_column})"
                f" VALUES (?, ?, ?, ?, {self.vector_param}) RETURNING id",
                (face_id, model, version, int(vec.size), self.encode_vector(vec)),
            )
            emb_ids.append(int(rows[0][0]))
        return emb_ids

    # -- embeddings ----------------------------------------------------------------------------
    def embeddings(self, model: str, version: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (N,), vectors float32 (N, dim)) of one model, ordered by id."""
        rows = self.execute(
            f"SELECT id, dim, {self.vector_column} FROM embeddings WHERE model = ? AND version = ? ORDER BY id",
            (model, version),
        )
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        ids = np.array([r[0] for r in rows], np.int64)
        return ids, np.stack([self.decode_vector(r[2], int(r[1])) for r in rows])

    def describe_embeddings(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        """Identity, image and face details of embedding ids (for search results)."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.execute(
            "SELECT e.id, i.name, im.path, im.source, im.sha256, f.id, f.x1, f.y1, f.x2, f.y2"
            " FROM embeddings e JOIN faces f ON f.id = e.face_id JOIN images im ON im.id = f.image_id"
            f" LEFT JOIN identities i ON i.id = f.identity_id WHERE e.id IN ({marks})",
            tuple(int(i) for i in ids),
        )
        return {
            int(r[0]): {"identity": r[1], "path": r[2], "source": r[3], "sha256": r[4],
                        "face_id": int(r[5]), "box": tuple(r[6:10])}
            for r in rows
        }

    def identity_embeddings(self, name: str, model: str, version: str) -> np.ndarray:
        """All vectors of one identity under one model, (N, dim)."""
        rows = self.execute(
            f"SELECT e.dim, e.{self.vector_column} FROM embeddings e JOIN faces f ON f.id = e.face_id"
            " JOIN identities i ON i.id = f.identity_id WHERE i.name = ? AND e.model = ?"
            " AND e.version = ?",
            (name, model, version),
        )
        if not rows:
            return np.zeros((0, 0), np.float32)
        return np.stack([self.decode_vector(r[1], int(r[0])) for r in rows])

    def identity_distance(self, name: str, model: str, version: str, vec: np.ndarray,
                          metric: str) -> float | None:
        """Smallest distance from ``vec`` to one identity's stored vectors (None: it has none).

        Computed here from :meth:`identity_embeddings`; PostgreSQL with pgvector does it in SQL.
        """
        from facelab.distance import pairwise_distance

        known = self.identity_embeddings(name, model, version)
        if not len(known):
            return None
        v = np.asarray(vec, np.float32).ravel()
        return float(pairwise_distance(known, np.broadcast_to(v, known.shape), metric).min())

    # -- models / thresholds ---------------------------------------------------------------------
    def set_threshold(self, model: str, version: str, metric: str, threshold: float, on: str) -> None:
        with self.transaction():
            self.execute("DELETE FROM models WHERE model = ? AND version = ?", (model, version))
            self.execute(
                "INSERT INTO models (model, version, metric, threshold, calibrated_on)"
                " VALUES (?, ?, ?, ?, ?)", (model, version, metric, float(threshold), on),
            )

    def threshold(self, model: str, version: str) -> float | None:
        rows = self.execute(
            "SELECT threshold FROM models WHERE model = ? AND version = ?", (model, version)
        )
        return float(rows[0][0]) if rows else None

    # -- ingest journal ----------------------------------------------------------------------------
    def journal_status(self, source: str) -> str | None:
        rows = self.execute("SELECT status FROM ingest_log WHERE source = ?", (source,))
        return rows[0][0] if rows else None

    def journal_sources(self, status: str | None = None) -> set[str]:
        if status is None:
            return {r[0] for r in self.execute("SELECT source FROM ingest_log")}
        return {r[0] for r in self.execute("SELECT source FROM ingest_log WHERE status = ?", (status,))}

    def journal_mark(self, source: str, sha256: str | None, status: str, error: str | None = None,
                     identity: str | None = None, ref_sha256: str | None = None) -> None:
        """Record the outcome of one source (call inside the same transaction as its data).

        ``identity`` (the name it was ingested under) and ``ref_sha256`` (the stored image a
        near-duplicate matched) let :meth:`delete_identity` erase every row about a person.
        """
        self.execute("DELETE FROM ingest_log WHERE source = ?", (source,))
        self.execute(
            "INSERT INTO ingest_log (source, sha256, status, error, updated_at, identity, ref_sha256)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (source, sha256, status, error, now(), identity, ref_sha256),
        )

    def purge(self) -> dict[str, Any]:
        """After an erasure: remove freed data from the backend's files (no-op by default)."""
        return {}

    # -- deletion / stats --------------------------------------------------------------------------
    def delete_identity(self, name: str) -> dict[str, list]:
        """Erase an identity: its faces, embeddings, labels, images no one else appears in, and
        every ingest-journal row that names it or points at one of those images.

        Returns {"embedding_ids", "crop_paths", "image_paths", "journal_rows"} so the caller
        can remove index entries and files.
        """
        ident = self.identity_id(name)
        if ident is None:
            raise DataFormatError(f"identity {name!r} is not in the database; see `facelab db stats`")
        with self.transaction():
            emb = [int(r[0]) for r in self.execute(
                "SELECT e.id FROM embeddings e JOIN faces f ON f.id = e.face_id WHERE f.identity_id = ?",
                (ident,))]
            crops = [r[0] for r in self.execute(
                "SELECT crop_path FROM faces WHERE identity_id = ? AND crop_path IS NOT NULL", (ident,))]
            images = self.execute(
                "SELECT DISTINCT im.id, im.path, im.sha256 FROM images im JOIN faces f ON f.image_id = im.id"
                " WHERE f.identity_id = ? AND NOT EXISTS (SELECT 1 FROM faces g WHERE g.image_id = im.id"
                " AND (g.identity_id IS NULL OR g.identity_id <> ?))", (ident, ident))
            self.execute("DELETE FROM faces WHERE identity_id = ?", (ident,))
            journal = [r[0] for r in self.execute(
                "SELECT source FROM ingest_log WHERE identity = ?", (name,))]
            for image_id, _, sha in images:
                self.execute("DELETE FROM images WHERE id = ?", (image_id,))
                journal += [r[0] for r in self.execute(
                    "SELECT source FROM ingest_log WHERE sha256 = ? OR ref_sha256 = ?", (sha, sha))]
            for source in set(journal):
                self.execute("DELETE FROM ingest_log WHERE source = ?", (source,))
            self.execute("DELETE FROM identities WHERE id = ?", (ident,))
        return {"embedding_ids": emb, "crop_paths": crops, "image_paths": [r[1] for r in images if r[1]],
                "journal_rows": sorted(set(journal))}

    def stats(self) -> dict[str, Any]:
        """Row counts per table, embeddings per model, schema version."""
        out: dict[str, Any] = {"backend": self.backend, "schema_version": self.schema_version()}
        for table in ("identities", "images", "faces", "embeddings", "labels"):
            out[table] = int(self.execute(f"SELECT COUNT(*) FROM {table}")[0][0])
        out["models"] = {
            f"{m}:{v}": int(n) for m, v, n in self.execute(
                "SELECT model, version, COUNT(*) FROM embeddings GROUP BY model, version")
        }
        out["ingest"] = {s: int(n) for s, n in self.execute("SELECT status, COUNT(*) FROM ingest_log GROUP BY status")}
        return out


class SQLiteStore(FaceStore):
    """SQLite backend: one file, WAL journal, foreign keys on, schema migrated on open.

    Every connection sets ``secure_delete`` (deleted rows are overwritten with zeros), new
    files use ``auto_vacuum=INCREMENTAL``, and :meth:`purge` (run after an erasure) vacuums
    and truncates the WAL so no copy of a deleted row is left in ``.db`` or ``.db-wal``.

    Example:
        >>> store = SQLiteStore("faces.db")              # doctest: +SKIP
        >>> store.stats()["schema_version"]             # doctest: +SKIP
        3
    """

    backend = "sqlite"

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(
                str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
            if not self.conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall():
                self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only effective on a new file
            self.conn.execute("PRAGMA secure_delete=ON")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"cannot open face database {self.path}: {exc}") from exc
        self._lock = threading.RLock()
        self._depth = 0
        self.migrate()

    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")
            finally:
                self._depth = 0

    def purge(self, attempts: int = 50) -> dict[str, Any]:
        """Vacuum freed pages and truncate the WAL (old frames still hold deleted rows).

        Databases made before auto_vacuum was set are converted by one full VACUUM. Returns
        {"vacuum": "incremental" | "full" | "auto", "wal_truncated": bool}; the WAL cannot be
        truncated while another connection is inside a read transaction, so this retries for
        a few seconds and then reports False (rerun ``facelab db delete``'s purge later).
        """
        import time

        mode = int(self.execute("PRAGMA auto_vacuum")[0][0])
        if mode == 0:
            self.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self.execute("VACUUM")
            how = "full"
        elif mode == 2:
            self.execute("PRAGMA incremental_vacuum")
            how = "incremental"
        else:
            how = "auto"
        truncated = False
        for _ in range(max(1, attempts)):
            busy = int(self.execute("PRAGMA wal_checkpoint(TRUNCATE)")[0][0])
            wal = Path(str(self.path) + "-wal")
            if not busy and (not wal.exists() or wal.stat().st_size == 0):
                truncated = True
                break
            time.sleep(0.1)
        return {"vacuum": how, "wal_truncated": truncated}

    def close(self) -> None:
        self.conn.close()


def store_checksum(store: FaceStore, model: str, version: str) -> str:
    """The :func:`facelab.facedb.index.ids_checksum` of a model's embedding ids, in SQL."""
    rows = store.execute(
        "SELECT COUNT(*), COALESCE(SUM(id), 0), COALESCE(SUM((id * id) % 1000000007), 0)"
        " FROM embeddings WHERE model = ? AND version = ?", (model, version))
    n, s, sq = (int(v) for v in rows[0])
    return "0:0:0" if n == 0 else f"{n}:{s}:{sq}"
