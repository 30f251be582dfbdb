"""PostgreSQL backend of the face database (the scale option), same interface as SQLite.

Vectors are stored as BYTEA (float32) so the store works on any PostgreSQL; search uses the
same FAISS index as the SQLite backend (kept in a local folder, rebuilt from the server).
The store enables the ``vector`` extension (pgvector) when the server has it, and reports
that in ``pgvector``; server-side pgvector search is not implemented yet.

Example:
    >>> db = FaceDB.init("postgresql://user@localhost/faces")   # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from facelab.facedb.store import DatabaseError, FaceStore

log = logging.getLogger(__name__)


class PostgresStore(FaceStore):
    """FaceStore over psycopg 3 (autocommit outside explicit transactions)."""

    backend = "postgres"

    def __init__(self, dsn: str) -> None:
        import psycopg

        try:
            self.conn = psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot connect to PostgreSQL ({exc}); check the URL and server") from exc
        self.dsn = dsn
        self._tx_depth = 0
        self.migrate()
        self.pgvector = self._try_pgvector()

    def _try_pgvector(self) -> bool:
        import psycopg

        try:
            with self.transaction():
                self.execute("CREATE EXTENSION IF NOT EXISTS vector")
            return True
        except psycopg.Error as exc:
            log.info("pgvector not available (%s); vectors stay BYTEA, search uses FAISS", exc)
            return False

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
