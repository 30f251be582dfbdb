"""PostgreSQL backend of the face database (the scale option), same interface as SQLite.

Two layouts, chosen when the store opens:

* **pgvector** (the server has the ``vector`` extension): vectors live in the ``embedding``
  column (type ``vector``) of ``embeddings`` and are searched in SQL
  (``ORDER BY embedding::vector(dim) <-> query LIMIT k``), through an HNSW (or IVFFlat) index
  per model built with the operator class of the embedder's metric (``vector_l2_ops`` for
  L2, ``vector_cosine_ops`` for cosine). Nothing is kept on local disk, so any number of
  service replicas share one database and see each other's enrollments and erasures at once.
  Rows written as BYTEA before the extension was there are moved into the column on open.
* **BYTEA** (no pgvector): vectors are float32 bytes and search uses the same local FAISS
  index as the SQLite backend, rebuilt from the server when stale.

Example:
    >>> db = FaceDB.init("postgresql://user@localhost/faces")   # doctest: +SKIP
    >>> db.store.pgvector                                        # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from facelab.errors import ConfigError
from facelab.facedb.store import DatabaseError, FaceStore

log = logging.getLogger(__name__)

# metric -> (distance operator, HNSW/IVFFlat operator class)
OPS = {"l2": ("<->", "vector_l2_ops"), "cosine": ("<=>", "vector_cosine_ops")}
INDEX_PREFIX = "facelab_vec_"
_LOCK_KEY = 0x66616365  # advisory lock taken while the vector layout or an index is changed
TABLES = ("embeddings", "labels", "faces", "images", "identities", "ingest_log")


def vector_text(v: np.ndarray) -> str:
    """pgvector's text form of a float32 vector (exact: each float32 is printed as the float64
    it equals, which the server parses back to the same float32).

    Example:
        >>> vector_text(np.array([0.5, -1], np.float32))
        '[0.5,-1.0]'
    """
    return "[" + ",".join(map(repr, np.asarray(v, np.float32).ravel().tolist())) + "]"


def parse_vector(text: str | bytes | memoryview) -> np.ndarray:
    """The float32 array of pgvector's text form ``[1,2,3]``.

    Example:
        >>> parse_vector("[1,2.5]").tolist()
        [1.0, 2.5]
    """
    s = bytes(text).decode() if not isinstance(text, str) else text
    body = s.strip()[1:-1]
    return np.array(body.split(","), np.float32) if body else np.zeros(0, np.float32)


def _model_tag(model: str, version: str) -> str:
    return hashlib.sha1(f"{model}:{version}".encode()).hexdigest()[:10]


class PostgresStore(FaceStore):
    """FaceStore over psycopg 3 (autocommit outside explicit transactions).

    Attributes:
        pgvector: True when vectors are stored in a ``vector`` column and searched in SQL.
    """

    backend = "postgres"

    def __init__(self, dsn: str, use_pgvector: bool = True) -> None:
        import psycopg

        try:
            self.conn = psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot connect to PostgreSQL ({exc}); check the URL and server") from exc
        self.dsn = dsn
        self._session: dict[str, str] = {}
        self.migrate()
        self.pgvector = use_pgvector and self._try_pgvector()
        if self.pgvector:
            self._use_vector_column()

    # -- pgvector layout ---------------------------------------------------------------------
    def _try_pgvector(self) -> bool:
        import psycopg

        if self.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'"):
            return True
        try:
            with self.transaction():
                self.execute("SELECT pg_advisory_xact_lock(?)", (_LOCK_KEY,))
                self.execute("CREATE EXTENSION IF NOT EXISTS vector")
            return True
        except psycopg.Error as exc:
            log.info("pgvector not available (%s); vectors stay BYTEA, search uses FAISS", exc)
            return False

    def _use_vector_column(self) -> None:
        """Add the ``embedding vector`` column (once), register the loader, move BYTEA rows."""
        from psycopg.adapt import Loader
        from psycopg.types import TypeInfo

        cols = dict(self.execute(
            "SELECT column_name, is_nullable FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'embeddings'"))
        if "embedding" not in cols or cols.get("vector") == "NO":
            with self.transaction():
                self.execute("SELECT pg_advisory_xact_lock(?)", (_LOCK_KEY,))
                self.execute("ALTER TABLE embeddings ADD COLUMN IF NOT EXISTS embedding vector")
                self.execute("ALTER TABLE embeddings ALTER COLUMN vector DROP NOT NULL")
        self.vector_column, self.vector_param = "embedding", "?::vector"

        class VectorLoader(Loader):
            def load(self, data: Any) -> np.ndarray:
                return parse_vector(data)

        info = TypeInfo.fetch(self.conn, "vector")
        if info is not None:
            self.conn.adapters.register_loader(info.oid, VectorLoader)
        moved = self._backfill()
        if moved:
            log.info("moved %d BYTEA vectors into the pgvector column", moved)

    def _backfill(self, batch: int = 2000) -> int:
        """Move vectors stored as BYTEA (by a store without pgvector) into ``embedding``."""
        moved = 0
        while True:
            with self.transaction():
                rows = self.execute(
                    "SELECT id, dim, vector FROM embeddings WHERE embedding IS NULL AND vector IS NOT NULL"
                    " ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED", (batch,))
                if not rows:
                    return moved
                with self.conn.cursor() as cur:
                    cur.executemany(
                        "UPDATE embeddings SET embedding = %s::vector, vector = NULL WHERE id = %s",
                        [(vector_text(np.frombuffer(bytes(r[2]), np.float32, count=int(r[1]))), int(r[0]))
                         for r in rows])
            moved += len(rows)

    def encode_vector(self, v: np.ndarray) -> Any:
        return vector_text(v) if self.pgvector else super().encode_vector(v)

    def decode_vector(self, raw: Any, dim: int) -> np.ndarray:
        if isinstance(raw, np.ndarray):
            return raw
        if isinstance(raw, str):
            return parse_vector(raw)
        return super().decode_vector(raw, dim)

    def _set(self, name: str, value: str) -> None:
        """SET a session setting once (searches run outside transactions, so it sticks)."""
        if self._session.get(name) != value:
            self.execute(f"SET {name} = {value}")
            self._session[name] = value

    def vector_indexes(self, model: str, version: str) -> list[str]:
        """Names of the ANN indexes facelab made for one model."""
        pattern = f"{INDEX_PREFIX}{_model_tag(model, version)}_%"
        return [r[0] for r in self.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'embeddings' AND indexname LIKE ?",
            (pattern,))]

    def ensure_vector_index(self, model: str, version: str, dim: int, metric: str, kind: str = "hnsw",
                            m: int = 32, ef_construction: int = 80, nlist: int = 0) -> str | None:
        """Create the model's ANN index if it is missing (dropping ones with other settings).

        ``kind`` "hnsw" / "ivf" (IVFFlat) build that index on ``embedding::vector(dim)``,
        restricted to the model's rows; "flat" drops them (exact sequential search). Returns
        the index name (None for "flat").
        """
        from psycopg import sql

        if metric not in OPS:
            raise ConfigError(f"unknown metric {metric!r}; use 'l2' or 'cosine'")
        tag = _model_tag(model, version)
        params = f"{kind}:{dim}:{metric}:{m}:{ef_construction}:{nlist}"
        name = None if kind == "flat" else f"{INDEX_PREFIX}{tag}_{hashlib.sha1(params.encode()).hexdigest()[:8]}"
        have = self.vector_indexes(model, version)
        if have == ([name] if name else []):
            return name
        with self.transaction():
            self.execute("SELECT pg_advisory_xact_lock(?)", (_LOCK_KEY,))
            have = self.vector_indexes(model, version)  # another replica may have done it
            for old in have:
                if old != name:
                    self.conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(old)))
            if name is None or name in have:
                return name
            self.execute("SET LOCAL maintenance_work_mem = '1GB'")
            if kind == "hnsw":
                method, opts = "hnsw", sql.SQL("m = {}, ef_construction = {}").format(
                    sql.Literal(int(m)), sql.Literal(int(ef_construction)))
            elif kind == "ivf":
                n = int(self.execute("SELECT COUNT(*) FROM embeddings WHERE model = ? AND version = ?",
                                     (model, version))[0][0])
                lists = nlist or max(1, min(int(4 * np.sqrt(max(n, 1))), max(1, n // 39)))
                method, opts = "ivfflat", sql.SQL("lists = {}").format(sql.Literal(int(lists)))
            else:
                raise ConfigError(f"unknown index kind {kind!r} for pgvector; use flat, hnsw or ivf")
            self.conn.execute(sql.SQL(
                "CREATE INDEX {name} ON embeddings USING {method} ((embedding::vector({dim})) {ops})"
                " WITH ({opts}) WHERE model = {model} AND version = {version}").format(
                name=sql.Identifier(name), method=sql.SQL(method), dim=sql.Literal(int(dim)),
                ops=sql.SQL(OPS[metric][1]), opts=opts, model=sql.Literal(model), version=sql.Literal(version)))
        return name

    def _search_sql(self, model: str, version: str, dim: int, metric: str, k: int):
        from psycopg import sql

        # model, version, dim and k are literals so the planner matches the partial index
        return sql.SQL(
            "SELECT id, embedding::vector({dim}) {op} %s::vector({dim}) AS d FROM embeddings"
            " WHERE model = {model} AND version = {version}"
            " ORDER BY embedding::vector({dim}) {op} %s::vector({dim}) LIMIT {k}").format(
            dim=sql.Literal(int(dim)), op=sql.SQL(OPS[metric][0]), model=sql.Literal(model),
            version=sql.Literal(version), k=sql.Literal(int(k)))

    def vector_search(self, model: str, version: str, dim: int, metric: str, queries: np.ndarray,
                      k: int, ef_search: int = 0, probes: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(distances (Q, k), ids (Q, k)) of the k nearest stored vectors of one model, in SQL;
        missing neighbours have id -1 and distance inf. Distances are Euclidean ("l2") or
        ``1 - cos`` ("cosine")."""
        q = np.asarray(queries, np.float32).reshape(-1, dim)
        if ef_search:
            self._set("hnsw.ef_search", str(max(int(ef_search), int(k))))
        if probes:
            self._set("ivfflat.probes", str(int(probes)))
        stmt = self._search_sql(model, version, dim, metric, k)
        dist = np.full((len(q), k), np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        for n, v in enumerate(q):
            text = vector_text(v)
            rows = self.conn.execute(stmt, (text, text)).fetchall()
            for j, (i, d) in enumerate(rows):
                ids[n, j], dist[n, j] = int(i), float(d)
        return dist, ids

    def explain_search(self, model: str, version: str, dim: int, metric: str, k: int = 5) -> str:
        """The query plan of :meth:`vector_search` (shows whether the ANN index is used)."""
        from psycopg import sql

        text = vector_text(np.ones(dim, np.float32))
        rows = self.conn.execute(sql.SQL("EXPLAIN ") + self._search_sql(model, version, dim, metric, k),
                                 (text, text)).fetchall()
        return "\n".join(r[0] for r in rows)

    def vector_count(self, model: str, version: str) -> int:
        return int(self.execute("SELECT COUNT(*) FROM embeddings WHERE model = ? AND version = ?",
                                (model, version))[0][0])

    def vector_ids(self, model: str, version: str) -> np.ndarray:
        rows = self.execute("SELECT id FROM embeddings WHERE model = ? AND version = ? ORDER BY id",
                            (model, version))
        return np.array([r[0] for r in rows], np.int64)

    def identity_distance(self, name: str, model: str, version: str, vec: np.ndarray,
                          metric: str) -> float | None:
        if not self.pgvector:
            return super().identity_distance(name, model, version, vec, metric)
        if metric not in OPS:
            raise ConfigError(f"unknown metric {metric!r}; use 'l2' or 'cosine'")
        rows = self.execute(
            f"SELECT MIN(e.embedding {OPS[metric][0]} ?::vector) FROM embeddings e"
            " JOIN faces f ON f.id = e.face_id JOIN identities i ON i.id = f.identity_id"
            " WHERE i.name = ? AND e.model = ? AND e.version = ?",
            (vector_text(vec), name, model, version))
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    # -- erasure ---------------------------------------------------------------------------------
    def purge(self) -> dict[str, Any]:
        """After an erasure: VACUUM the tables, which removes the dead rows from the heap and
        their entries from every index (HNSW/IVFFlat included)."""
        import psycopg

        try:
            for table in TABLES:
                self.execute(f"VACUUM {table}")
        except psycopg.Error as exc:  # e.g. not the table owner
            log.warning("VACUUM after erasure failed (%s); run VACUUM on the face tables", exc)
            return {"vacuum": "failed"}
        return {"vacuum": "plain"}

    # -- primitives ------------------------------------------------------------------------------
    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        if params:
            sql = sql.replace("%", "%%").replace("?", "%s")
        cur = self.conn.execute(sql, params or None)
        return cur.fetchall() if cur.description else []

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    def close(self) -> None:
        self.conn.close()
