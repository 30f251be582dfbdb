"""Settings of the `facelab serve` service (one dataclass, filled by the CLI or by code)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from facelab.errors import ConfigError

BACKENDS = ("torch", "onnx", "onnx-int8")


@dataclass
class ServeConfig:
    """What the service serves and the limits it enforces.

    Attributes:
        db: face database (SQLite path or postgresql:// URL) for identities, verify and search;
            None = no identity endpoints (they answer 503).
        run: attribute run folder or checkpoint (mask / gender / age); None = boxes only.
        keys: the service's own SQLite file (hashed API keys, audit log); default: next to the
            database as ``<db stem>.serve.db``, else ``facelab-serve.db`` in the working folder.
        detector: detector for /v1/analyze: a registered name or cascade spec; None = the
            database's detector (``whole`` there means each photo is one face), else mtcnn.
        backend: attribute backend: torch, onnx or onnx-int8.
        max_body_bytes: larger request bodies are refused with 413 (before they are read).
        max_pixels: images with more pixels are refused with 413 from their header, before
            any pixel is decoded (decompression bombs).
        rate_per_minute: requests per minute per API key (token bucket, burst = this many / 4,
            at least 5); 0 = no limit.
        workers: threads that run models and database calls (off the event loop).
        cors_origins: origins allowed by CORS; empty = CORS off (no CORS headers at all).
        url_allow_hosts: host names fetched by URL even when private (a local mirror; tests).
        url_deadline: seconds allowed for one URL fetch (all redirects and the body).
        max_k: largest top-k of /v1/search.
        max_enroll_images: most photos in one enrollment request.
        threads: ONNX Runtime / PyTorch threads for the attribute model (None = default).
        clips_run: a trained clip run folder (or its model.pt) for POST /v1/clips (`facelab
            clips train`); None = /v1/clips answers 404 "no clip model loaded".
        max_clip_frames: /v1/clips refuses (413) videos whose container declares more frames.
    """

    db: str | None = None
    run: str | None = None
    keys: str | None = None
    detector: str | None = None
    backend: str = "torch"
    max_body_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    rate_per_minute: int = 600
    workers: int = 4
    cors_origins: list[str] = field(default_factory=list)
    url_allow_hosts: tuple[str, ...] = ()
    url_deadline: float = 20.0
    max_k: int = 100
    max_enroll_images: int = 20
    threads: int | None = None
    clips_run: str | None = None
    max_clip_frames: int = 3000

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend {self.backend!r} unknown; use one of {BACKENDS}")
        for name in ("max_body_bytes", "max_pixels", "workers", "max_k", "max_enroll_images",
                     "max_clip_frames"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.rate_per_minute < 0:
            raise ConfigError(f"rate_per_minute must be >= 0, got {self.rate_per_minute}")
        if "*" in self.cors_origins:
            raise ConfigError("CORS origin '*' is refused (API keys travel in headers); "
                              "list the origins that may call the API")

    @property
    def keys_path(self) -> Path:
        """Where API keys and the audit log live."""
        return Path(keys_path_for(self.db, self.keys))


def keys_path_for(db: str | None, keys: str | None) -> str:
    """The service's key file for a database (see ServeConfig.keys).

    Example:
        >>> keys_path_for("data/faces.db", None)
        'data/faces.serve.db'
    """
    if keys:
        return str(keys)
    if db and "://" not in str(db):
        p = Path(db)
        return str(p.with_name(p.stem + ".serve.db"))
    return "facelab-serve.db"
