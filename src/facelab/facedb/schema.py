"""The face-database schema and its migrations (shared by the SQLite and PostgreSQL stores).

Each migration is a list of SQL statements that moves the schema from version ``n-1`` to
``n``. The current version lives in the ``meta`` table (key ``schema_version``); opening a
database applies whatever migrations it lacks, each in its own transaction. A database
written by a newer facelab (higher version than this code knows) is refused.
"""

from __future__ import annotations

# Column types are written so both SQLite and PostgreSQL accept them; the PostgreSQL store
# substitutes the few dialect tokens in `dialect()`.
_V1 = [
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE identities (
        id {PK}, name TEXT NOT NULL UNIQUE, notes TEXT, created_at TEXT NOT NULL)""",
    """CREATE TABLE images (
        id {PK}, sha256 TEXT NOT NULL UNIQUE, phash TEXT, source TEXT, path TEXT,
        width INTEGER, height INTEGER, license TEXT, notes TEXT, added_at TEXT NOT NULL)""",
    """CREATE TABLE faces (
        id {PK}, image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        identity_id INTEGER REFERENCES identities(id) ON DELETE CASCADE,
        x1 REAL, y1 REAL, x2 REAL, y2 REAL, score REAL, landmarks TEXT, crop_path TEXT,
        quality REAL, stage TEXT)""",
    """CREATE INDEX faces_image ON faces(image_id)""",
    """CREATE INDEX faces_identity ON faces(identity_id)""",
    """CREATE TABLE embeddings (
        id {PK}, face_id INTEGER NOT NULL REFERENCES faces(id) ON DELETE CASCADE,
        model TEXT NOT NULL, version TEXT NOT NULL, dim INTEGER NOT NULL, vector {BLOB} NOT NULL,
        UNIQUE (face_id, model, version))""",
    """CREATE INDEX embeddings_model ON embeddings(model, version)""",
    """CREATE TABLE labels (
        id {PK}, face_id INTEGER REFERENCES faces(id) ON DELETE CASCADE,
        image_id INTEGER REFERENCES images(id) ON DELETE CASCADE,
        key TEXT NOT NULL, value TEXT)""",
]

# v2: the ingest journal (resumable ingest) and per-model calibrated thresholds.
_V2 = [
    """CREATE TABLE ingest_log (
        source TEXT PRIMARY KEY, sha256 TEXT, status TEXT NOT NULL, error TEXT,
        updated_at TEXT NOT NULL)""",
    """CREATE TABLE models (
        model TEXT NOT NULL, version TEXT NOT NULL, metric TEXT NOT NULL,
        threshold REAL NOT NULL, calibrated_on TEXT, PRIMARY KEY (model, version))""",
    """CREATE INDEX images_phash ON images(phash)""",
]

# v3: the journal remembers which identity a source was ingested under and which stored image
# a near-duplicate pointed at, so erasing a person also erases their journal rows.
_V3 = [
    """ALTER TABLE ingest_log ADD COLUMN identity TEXT""",
    """ALTER TABLE ingest_log ADD COLUMN ref_sha256 TEXT""",
    """CREATE INDEX ingest_log_sha ON ingest_log(sha256)""",
    """CREATE INDEX ingest_log_identity ON ingest_log(identity)""",
]

MIGRATIONS: list[list[str]] = [_V1, _V2, _V3]
SCHEMA_VERSION = len(MIGRATIONS)


def dialect(sql: str, backend: str) -> str:
    """Fill the dialect tokens of a statement for "sqlite" or "postgres".

    Example:
        >>> dialect("CREATE TABLE t (id {PK})", "sqlite")
        'CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT)'
    """
    if backend == "sqlite":
        return sql.format(PK="INTEGER PRIMARY KEY AUTOINCREMENT", BLOB="BLOB")
    return sql.format(PK="BIGSERIAL PRIMARY KEY", BLOB="BYTEA")
