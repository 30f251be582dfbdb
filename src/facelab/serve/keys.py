"""API keys (stored as SHA-256 hashes, never in clear), their scopes, and the audit log.

The service keeps its own small SQLite file (``<db stem>.serve.db`` by default), apart from
the face database. A key is ``flk_<id>_<secret>`` with 32 random bytes of secret; only its
SHA-256 is stored (a key is random, not a password, so a fast hash is enough to make a stolen
file useless), and it is shown once, when created.

Scopes (a key holds any subset; nothing implies anything else):

* ``read``: analyze, verify, search, list and show identities, model info;
* ``write``: enroll;
* ``admin``: delete identities, manage keys, read the audit log.

Every delete (identities and keys) and every enrollment is written to the ``audit`` table.
An erased person's name is recorded only as its SHA-256 (``target_sha256``), so the log can
answer "was this name erased, when and by which key" without keeping the name.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from facelab.errors import ConfigError, FacelabError

SCOPES = ("read", "write", "admin")
PREFIX = "flk_"

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, key_sha256 TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT, last_used_at TEXT)""",
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, key_id TEXT, action TEXT NOT NULL,
        target TEXT, target_sha256 TEXT, outcome TEXT NOT NULL, detail TEXT, client TEXT)""",
]


class ApiKeyError(FacelabError):
    """An API key that does not exist or cannot be changed."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_scopes(scopes: list[str] | str) -> list[str]:
    """Validated, de-duplicated scopes in canonical order.

    Example:
        >>> check_scopes("write, read")
        ['read', 'write']
    """
    items = [s.strip() for s in scopes.split(",")] if isinstance(scopes, str) else list(scopes)
    items = [s for s in items if s]
    bad = [s for s in items if s not in SCOPES]
    if bad or not items:
        raise ConfigError(f"unknown or empty scopes {bad or items}; use any of {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in items]


@dataclass
class ApiKey:
    """A stored key (without its secret)."""

    id: str
    name: str
    scopes: list[str]
    created_at: str
    revoked_at: str | None = None
    last_used_at: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class KeyStore:
    """Hashed API keys and the audit log in one SQLite file (WAL, safe across processes).

    Example:
        >>> ks = KeyStore("faces.serve.db")                     # doctest: +SKIP
        >>> key, secret = ks.add("ci", ["read"])                # doctest: +SKIP
        >>> ks.authenticate(secret).scopes                      # doctest: +SKIP
        ['read']
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA secure_delete=ON")
            for sql in _SCHEMA:
                self.conn.execute(sql)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"cannot open the service key file {self.path}: {exc}") from None
        try:
            self.path.chmod(0o600)  # key hashes and the audit log: owner only
        except OSError:
            pass
        self._lock = threading.Lock()

    def _exec(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def add(self, name: str, scopes: list[str] | str) -> tuple[ApiKey, str]:
        """Create a key; returns (its record, the secret key string, shown only now)."""
        if not name or len(name) > 100:
            raise ConfigError("a key needs a name of 1 to 100 characters")
        scopes = check_scopes(scopes)
        kid = secrets.token_hex(4)
        secret = f"{PREFIX}{kid}_{secrets.token_urlsafe(32)}"
        created = _now()
        self._exec("INSERT INTO api_keys (id, name, key_sha256, scopes, created_at) VALUES (?, ?, ?, ?, ?)",
                   (kid, name, sha256_hex(secret), ",".join(scopes), created))
        return ApiKey(kid, name, scopes, created), secret

    def list(self, include_revoked: bool = True) -> list[ApiKey]:
        rows = self._exec("SELECT id, name, scopes, created_at, revoked_at, last_used_at FROM api_keys"
                          " ORDER BY created_at, id")
        keys = [ApiKey(r[0], r[1], r[2].split(","), r[3], r[4], r[5]) for r in rows]
        return [k for k in keys if include_revoked or k.revoked_at is None]

    def get(self, kid: str) -> ApiKey | None:
        return next((k for k in self.list() if k.id == kid), None)

    def revoke(self, kid: str) -> ApiKey:
        """Revoke a key by id (its hash stays, marked revoked, so it can never be reused)."""
        key = self.get(kid)
        if key is None:
            raise ApiKeyError(f"no API key with id {kid!r}; see `facelab serve keys list`")
        if key.revoked_at is None:
            self._exec("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (_now(), kid))
        return self.get(kid)  # type: ignore[return-value]

    def authenticate(self, secret: str) -> ApiKey | None:
        """The active key this secret belongs to, or None (unknown, malformed or revoked)."""
        if not secret or not secret.startswith(PREFIX) or len(secret) > 200:
            return None
        kid = secret[len(PREFIX):].split("_", 1)[0]
        rows = self._exec("SELECT id, name, scopes, created_at, revoked_at, last_used_at, key_sha256"
                          " FROM api_keys WHERE id = ?", (kid,))
        if not rows or not hmac.compare_digest(rows[0][6], sha256_hex(secret)) or rows[0][4]:
            return None
        r = rows[0]
        return ApiKey(r[0], r[1], r[2].split(","), r[3], r[4], r[5])

    def touch(self, kid: str) -> None:
        self._exec("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (_now(), kid))

    # -- audit ---------------------------------------------------------------------------------
    def audit(self, action: str, key_id: str | None, outcome: str, target: str | None = None,
              target_sha256: str | None = None, detail: str | None = None,
              client: str | None = None) -> None:
        """Append one audit row (never updated or deleted by the service)."""
        self._exec("INSERT INTO audit (at, key_id, action, target, target_sha256, outcome, detail, client)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (_now(), key_id, action, target, target_sha256, outcome, detail, client))

    def audit_rows(self, limit: int = 100, action: str | None = None) -> list[dict]:
        sql = "SELECT id, at, key_id, action, target, target_sha256, outcome, detail, client FROM audit"
        params: tuple = ()
        if action:
            sql, params = sql + " WHERE action = ?", (action,)
        rows = self._exec(sql + " ORDER BY id DESC LIMIT ?", (*params, int(limit)))
        cols = ("id", "at", "key_id", "action", "target", "target_sha256", "outcome", "detail", "client")
        return [dict(zip(cols, r)) for r in rows]

    def close(self) -> None:
        with self._lock:
            self.conn.close()
