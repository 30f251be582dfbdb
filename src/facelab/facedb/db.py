"""`FaceDB`: enroll, search (1:N), verify (1:1) and erase faces, over a store and an index.

Layout on disk for ``faces.db``::

    faces.db                     SQLite database (WAL): the source of truth
    faces.files/images/ab/<sha256>.jpg   managed copies of ingested images
    faces.files/crops/ab/<sha256>_<i>.jpg  face crops
    faces.<model>.faiss (+ .json, .ids.npy)  vector index, rebuilt whenever it is stale
    faces.db.lock                file lock taken while the index files are written or a person
                                 is erased (so a concurrent ingest cannot write an erased
                                 vector back)

"No face" is a result, not a fallback: enrolling, verifying or searching an image where the
detector finds no face raises :class:`NoFaceError`, and an image with several faces raises
:class:`AmbiguousFaceError` unless the caller chooses one (``face="largest" | "central" |
"all" | <index>``). The whole-image fallback (``fallback="whole"``) is off by default and
meant for data sets of face crops.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facelab.detect.select import CHOICES
from facelab.errors import ConfigError, DataFormatError, ImageDecodeError
from facelab.facedb.index import IndexConfig, PgVectorIndex, VectorIndex, ids_checksum
from facelab.facedb.phash_index import StoredPhashes
from facelab.facedb.store import (
    DatabaseError,
    FaceRecord,
    FaceStore,
    ImageRecord,
    SQLiteStore,
    store_checksum,
)

log = logging.getLogger(__name__)

FALLBACKS = ("skip", "whole")
FACE_CHOICES = CHOICES  # facelab.detect.select: largest, central, score, all
CONFIG_VERSION = 2  # 2: fallback is an explicit choice ("skip" by default)
MIN_WHOLE_SIDE = 16  # a whole-image "face" smaller than this (pixels) is no face
MIN_WHOLE_STD = 2.0  # ... and so is a flat (blank) one
PG_ID_LOOKBACK = 256  # PostgreSQL ids may commit out of order: re-read this many below the highest


class NoFaceError(DataFormatError):
    """No face was detected where a person's identity is at stake (enroll, verify, search)."""


class AmbiguousFaceError(DataFormatError):
    """Several faces were detected and the caller did not say which one is meant."""


class EnrollError(DataFormatError):
    """An enrollment was refused (nothing was stored): one or more photos are unusable."""


def check_face_choice(face: str | int | None) -> str | int | None:
    """Validate a face choice: None (exactly one face), largest, central, all or an index.

    Example:
        >>> check_face_choice("2")
        2
    """
    if face is None or isinstance(face, int):
        return face
    if str(face).lstrip("-").isdigit():
        return int(face)
    if face not in FACE_CHOICES:
        raise ConfigError(f"unknown face choice {face!r}; use one of {FACE_CHOICES} or a face index (0, 1, ...)")
    return face


@dataclass
class FaceDBConfig:
    """Settings saved in the database at ``init`` and reused on every open.

    Attributes:
        embedder: registered embedder name ("dlib-resnet", "dlib-resnet-upper", ...).
        embedder_options: keyword options of the embedder.
        detector: face detector name ("mtcnn", "dlib-hog", "whole" for pre-cropped faces).
        fallback: "skip" (default): an image where the detector finds no face has no face;
            "whole": use the whole image as the face box (only for data sets of face crops).
        index: FAISS index settings.
        copy_images: keep a managed copy of each image (erased by ``delete``).
        save_crops: save each face crop as JPEG.
        phash_distance: images within this perceptual-hash Hamming distance of a stored one are
            near-duplicates and skipped (-1 disables).
        embedding_distance: a face closer than this to a stored face of the same identity is a
            near-duplicate and skipped (0 disables).
        max_image_bytes: larger image files are refused (read with this cap, regular files only).
        config_version: format of this configuration (older databases are upgraded on open).
    """

    embedder: str = "dlib-resnet"
    embedder_options: dict[str, Any] = field(default_factory=dict)
    detector: str = "mtcnn"
    fallback: str = "skip"
    index: IndexConfig = field(default_factory=IndexConfig)
    copy_images: bool = True
    save_crops: bool = True
    phash_distance: int = 4
    embedding_distance: float = 0.0
    max_image_bytes: int = 50 * 1024 * 1024
    config_version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ConfigError(f"unknown fallback {self.fallback!r}; choose one of {FALLBACKS}")
        if self.max_image_bytes <= 0:
            raise ConfigError(f"max_image_bytes must be positive, got {self.max_image_bytes}")

    @classmethod
    def from_json(cls, text: str) -> FaceDBConfig:
        d = json.loads(text)
        d["index"] = IndexConfig(**d.get("index", {}))
        if int(d.get("config_version", 1)) < 2 and d.get("fallback") == "whole":
            # version 1 wrote the old default ("whole") whether or not anyone chose it
            log.warning("this face database predates the explicit whole-image fallback; it is now "
                        "off (no face = no face). For face-crop data sets: FaceDB.update_config(fallback='whole')")
            d["fallback"] = "skip"
        d["config_version"] = CONFIG_VERSION
        return cls(**d)


@dataclass
class AddResult:
    """Outcome of adding one image: status is added | duplicate | near-duplicate | no-face."""

    status: str
    sha256: str
    image_id: int | None = None
    faces: int = 0
    duplicate_of: int | None = None
    message: str = ""


@dataclass
class _Prepared:
    """An image read, hashed, detected and embedded, not yet written."""

    path: Path
    data: bytes
    sha: str
    image: np.ndarray | None = None
    phash: str | None = None
    faces: list = field(default_factory=list)
    vecs: np.ndarray | None = None
    status: str = "added"
    duplicate_of: int | None = None
    ref_sha: str | None = None
    message: str = ""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_capped(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file no larger than ``max_bytes`` (devices, FIFOs and folders are
    refused; the read itself is capped, so a growing file cannot exhaust memory).

    Example:
        >>> read_capped("/dev/zero", 10)
        Traceback (most recent call last):
        facelab.errors.ImageDecodeError: /dev/zero: not a regular file; pass an image file
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read ({exc.strerror}); check the path") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ImageDecodeError(f"{path}: not a regular file; pass an image file")
    if st.st_size > max_bytes:
        raise ImageDecodeError(f"{path}: {st.st_size} bytes exceeds the {max_bytes}-byte limit; "
                               "downscale it or raise max_image_bytes")
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageDecodeError(f"{path}: more than {max_bytes} bytes; downscale it or raise max_image_bytes")
    return data


class FaceDB:
    """The face database.

    Example:
        >>> db = FaceDB.init("faces.db", FaceDBConfig(detector="mtcnn"))  # doctest: +SKIP
        >>> db.enroll("ada", ["ada1.jpg", "ada2.jpg"])                    # doctest: +SKIP
        >>> db.search("unknown.jpg", k=3)[0][0]["identity"]               # doctest: +SKIP
        'ada'
        >>> db.delete_identity("ada")                                     # doctest: +SKIP
    """

    def __init__(self, path: str | Path, store: FaceStore | None = None,
                 files_dir: str | Path | None = None) -> None:
        self.url = str(path) if "://" in str(path) else None
        if self.url:  # PostgreSQL: files and index live in a local folder named after the DB
            from urllib.parse import urlparse

            name = (urlparse(self.url).path.strip("/") or "facedb").replace("/", "_")
            self.path = Path(files_dir or Path.cwd()).resolve() / f"pg-{name}.db"
        else:
            self.path = Path(path).resolve()
        self.store = store or self._open_store(self.url or self.path)
        rows = self.store.execute("SELECT value FROM meta WHERE key = 'config'")
        if not rows:
            raise DatabaseError(f"{self.path} is not an initialised face database; run `facelab db init`")
        self.config = FaceDBConfig.from_json(rows[0][0])
        self.files = self.path.parent / (self.path.stem + ".files")
        self._pipeline = None
        self._index: VectorIndex | PgVectorIndex | None = None
        self._phashes: StoredPhashes | None = None
        # True: add_image leaves the vector index alone (a worker of a parallel ingest; whoever
        # runs the job rebuilds the index from the database at the end)
        self.defer_index = False
        self._dirty = False
        self._lock_depth = 0
        self._pin_dlib_net()

    def _pin_dlib_net(self) -> None:
        """Record which dlib network backend makes this database's vectors, once.

        The dlib embedder's default backend changed from dlib's C++ network to the ONNX port
        (same network, cosine >= 0.9999, a different `version`). A database whose stored
        options name no backend keeps the one its vectors were made with: dlib's own when it
        holds any vector, the current default when it is still empty. Without this, an old
        database would search an empty set after the upgrade, silently.
        """
        if not self.config.embedder.startswith("dlib-resnet"):
            return
        if "net" in self.config.embedder_options:
            return
        has_vectors = bool(self.store.execute("SELECT 1 FROM embeddings LIMIT 1"))
        from facelab.embed.dlib_resnet import DlibEmbedConfig

        net = "dlib" if has_vectors else DlibEmbedConfig().net
        self.update_config(embedder_options={**self.config.embedder_options, "net": net})

    @staticmethod
    def _open_store(path: str | Path) -> FaceStore:
        if str(path).startswith(("postgresql://", "postgres://")):
            from facelab.facedb.postgres import PostgresStore

            return PostgresStore(str(path))
        if "://" in str(path):
            raise ConfigError(f"unsupported database URL {path}; use a file path or postgresql://")
        return SQLiteStore(path)

    @classmethod
    def init(cls, path: str | Path, config: FaceDBConfig | None = None, exist_ok: bool = True,
             files_dir: str | Path | None = None) -> FaceDB:
        """Create (or reopen, when ``exist_ok``) a database with this configuration."""
        cfg = config or FaceDBConfig()
        from facelab.embed.base import list_embedders

        if cfg.embedder not in list_embedders():
            raise ConfigError(f"unknown embedder {cfg.embedder!r}; choose one of {list_embedders()}")
        check_detector(cfg.detector)
        if "://" in str(path) or not Path(path).exists():  # a new database takes cfg
            # the embedder loads lazily: without this a student with no weights, or a bad
            # weights file, would be accepted here and fail at ingest, once per image
            from facelab.embed.base import get_embedder

            embedder = get_embedder(cfg.embedder, **cfg.embedder_options)
            if cfg.embedder_options.get("checkpoint"):
                embedder.prepare()
        store = cls._open_store(path)
        rows = store.execute("SELECT value FROM meta WHERE key = 'config'")
        if rows and not exist_ok:
            raise DatabaseError(f"{path} already exists; open it or pass exist_ok")
        if not rows:
            with store.transaction():
                store._set_meta("config", json.dumps(asdict(cfg)))
        return cls(path, store, files_dir)

    def update_config(self, **changes: Any) -> FaceDBConfig:
        """Change stored settings (e.g. ``fallback="whole"`` for a face-crop database)."""
        d = asdict(self.config)
        unknown = set(changes) - set(d) - {"index"}
        if unknown:
            raise ConfigError(f"unknown database settings {sorted(unknown)}; see FaceDBConfig")
        d.update(changes)
        d["index"] = IndexConfig(**d["index"]) if isinstance(d["index"], dict) else d["index"]
        cfg = FaceDBConfig(**d)
        check_detector(cfg.detector)
        with self.store.transaction():
            self.store._set_meta("config", json.dumps(asdict(cfg)))
        self.config, self._pipeline, self._index = cfg, None, None
        return cfg

    # -- models ----------------------------------------------------------------------------
    @property
    def pipeline(self):
        if self._pipeline is None:
            from facelab.embed.base import get_embedder
            from facelab.embed.pipeline import FacePipeline, PipelineConfig

            emb = get_embedder(self.config.embedder, **self.config.embedder_options)
            pcfg = PipelineConfig(detector=self.config.detector, fallback=self.config.fallback,
                                  select="largest")
            self._pipeline = FacePipeline(pcfg, emb)
        return self._pipeline

    @property
    def model_key(self) -> tuple[str, str]:
        e = self.pipeline.embedder
        return e.name, e.version

    @property
    def threshold(self) -> float:
        """Calibrated threshold if one was stored (``calibrate``), else the model default."""
        t = self.store.threshold(*self.model_key)
        return float(t) if t is not None else float(self.pipeline.embedder.threshold)

    # -- locking -----------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def file_lock(self) -> Iterator[None]:
        """Exclusive lock on ``<db>.lock`` (re-entrant within this object), taken while index
        files are written and while a person is erased, by every process."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        import fcntl

        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.lock_path, "a+b")  # noqa: SIM115  (held for the duration of the block)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
                fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            fh.close()

    # -- index -----------------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        name, version = self.model_key
        return self.path.parent / f"{self.path.stem}.{name}-{version}.faiss"

    @property
    def in_sql(self) -> bool:
        """True when search runs in the database (PostgreSQL with pgvector), not in FAISS."""
        return bool(getattr(self.store, "pgvector", False))

    @property
    def index(self) -> VectorIndex | PgVectorIndex:
        """The vector index: pgvector's (in SQL), else the FAISS one, loaded from disk when
        current, else rebuilt from the store."""
        if self._index is None and self.in_sql:
            self._index = self._build_from_store()
        if self._index is None:
            want = store_checksum(self.store, *self.model_key)
            p = self.index_path
            if p.is_file() and Path(str(p) + ".json").is_file():
                try:
                    idx, meta = VectorIndex.load(p)
                    if meta.get("checksum") == want and meta.get("config") == asdict(self.config.index):
                        self._index = idx
                        return idx
                    log.info("index %s is stale; rebuilding from the database", p)
                except Exception as exc:  # corrupt cache: rebuild  # noqa: BLE001
                    log.warning("cannot read index %s (%s); rebuilding", p, exc)
            self.rebuild_index()
        return self._index  # type: ignore[return-value]

    def _build_from_store(self) -> VectorIndex | PgVectorIndex:
        emb = self.pipeline.embedder
        if self.in_sql:
            return PgVectorIndex(self.store, *self.model_key, emb.dim, emb.metric, self.config.index)
        ids, vecs = self.store.embeddings(*self.model_key)
        idx = VectorIndex(emb.dim, emb.metric, self.config.index)
        idx.build(ids, vecs if len(ids) else np.zeros((0, emb.dim), np.float32))
        return idx

    def rebuild_index(self) -> VectorIndex | PgVectorIndex:
        """Rebuild the FAISS index from stored embeddings and save it (pgvector: make sure the
        database's index exists with the configured settings)."""
        self._index = self._build_from_store()
        self._dirty = True
        self.flush()
        return self._index

    def flush(self) -> None:
        """Persist the index if it changed.

        Under the file lock, the in-memory index is first checked against the database: when
        another process added or erased faces since it was loaded, it is rebuilt from the
        database, so an erased person's vectors are never written back.
        """
        if self._index is not None and self._index.shared:
            self._dirty = False  # the database is the index: nothing to save
        if self._index is not None and self._dirty:
            with self.file_lock():
                if ids_checksum(self._index.ids) != store_checksum(self.store, *self.model_key):
                    log.info("the database changed under this index; rebuilding it before saving")
                    self._index = self._build_from_store()
                self._index.save(self.index_path, {"model": "{}:{}".format(*self.model_key)})
                self._dirty = False

    def save_interval(self, every: int = 200) -> int:
        """Images between index saves in a bulk ingest: ``every``, or 1% of the FAISS index
        when that is more, so the cost of saving (proportional to the index) per image stays
        flat as the database grows. The saved index is a cache (a stale one is rebuilt from
        the database on open), so saving less often loses nothing."""
        idx = self._index
        if idx is None or idx.shared:
            return every
        return max(every, idx.ntotal // 100)

    def close(self) -> None:
        self.flush()
        self.store.close()

    def __enter__(self) -> FaceDB:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faces -----------------------------------------------------------------------------
    def _detect(self, image: np.ndarray) -> list:
        """Detected faces, largest first; whole-image boxes on blank or tiny images are dropped."""
        faces = self.pipeline.faces(image)
        out = []
        for f in faces:
            if f.stage in ("whole", "fallback:whole"):
                h, w = image.shape[:2]
                if min(h, w) < MIN_WHOLE_SIDE or float(image.std()) < MIN_WHOLE_STD:
                    continue
            out.append(f)
        return out

    @staticmethod
    def _choose(faces: list, image: np.ndarray, face: str | int | None, name: str) -> list:
        """The faces meant by ``face`` (see :func:`check_face_choice`); raises when none / ambiguous."""
        from facelab.detect.select import rank_faces

        face = check_face_choice(face)
        if not faces:
            raise NoFaceError(f"{name}: no face detected; use a photo showing one face "
                              "(databases of face crops: init with --fallback whole)")
        if face is None:
            if len(faces) > 1:
                boxes = "; ".join(f"{i}: " + ",".join(f"{v:.0f}" for v in f.box) for i, f in enumerate(faces))
                raise AmbiguousFaceError(
                    f"{name}: {len(faces)} faces detected ({boxes}); choose one with "
                    "--face largest|central|<index>, or --face all")
            return faces
        if face == "all":
            return faces
        if isinstance(face, int):
            if not -len(faces) <= face < len(faces):
                raise ConfigError(f"{name}: face index {face} out of range; {len(faces)} face(s) detected")
            return [faces[face]]
        return rank_faces(faces, image.shape, face)[:1]

    # -- adding ----------------------------------------------------------------------------
    def _read(self, path: Path, data: bytes | None = None) -> tuple[bytes, np.ndarray]:
        """(bytes, RGB image) of a file, read once (capped) and decoded from those bytes."""
        from facelab.io.image import load_image

        if data is None:
            data = read_capped(path, self.config.max_image_bytes)
        try:
            return data, load_image(data)
        except ImageDecodeError as exc:
            raise ImageDecodeError(str(exc).replace("<image bytes>", str(path))) from None

    def _prepare(self, path: str | Path, identity: str | None, face: str | int | None) -> _Prepared:
        """Read, hash, check for duplicates, detect and embed one image; writes nothing."""
        path = Path(path)
        data = read_capped(path, self.config.max_image_bytes)
        sha = sha256_bytes(data)
        prep = _Prepared(path, data, sha)
        existing = self.store.image_by_hash(sha)
        if existing is not None:
            prep.status, prep.duplicate_of, prep.ref_sha = "duplicate", existing, sha
            if identity is not None:
                owners = self._owners(existing)
                if identity not in owners:
                    who = f"identity {', '.join(repr(o) for o in owners)}" if owners else "no identity"
                    prep.status = "conflict"
                    prep.message = (f"{path}: the same photo is already stored under {who} (image "
                                    f"{existing}); not enrolled as {identity!r}")
            return prep
        _, prep.image = self._read(path, data)
        prep.phash = _phash(prep.image)
        near = self._near_duplicate(prep.phash)
        if near is not None:
            prep.status, prep.duplicate_of = "near-duplicate", near
            prep.ref_sha = self._sha_of(near)
            if prep.ref_sha == sha:  # the same bytes, stored by another process since we looked
                prep.status = "duplicate"
            return prep
        faces = self._detect(prep.image)
        if identity is not None:
            try:
                faces = self._choose(faces, prep.image, face, str(path))
            except NoFaceError as exc:
                prep.status, prep.message = "no-face", str(exc)
                return prep
            except AmbiguousFaceError as exc:
                prep.status, prep.message = "ambiguous", str(exc)
                return prep
            if len(faces) > 1:
                raise ConfigError(f"{path}: face='all' cannot label several faces with one identity; "
                                  "choose largest, central or an index")
        elif face is not None and faces:
            faces = self._choose(faces, prep.image, face, str(path))
        prep.faces = faces
        prep.vecs = (self.pipeline.embedder.embed_faces(prep.image, faces) if faces
                     else np.zeros((0, self.pipeline.embedder.dim), np.float32))
        if (identity and self.config.embedding_distance > 0 and len(prep.vecs)
                and self._embedding_duplicate(identity, prep.vecs[0])):
            prep.status = "near-duplicate"
            return prep
        prep.status = "added" if faces else "no-face"
        return prep

    def _owners(self, image_id: int) -> list[str]:
        rows = self.store.execute(
            "SELECT DISTINCT i.name FROM faces f JOIN identities i ON i.id = f.identity_id"
            " WHERE f.image_id = ? ORDER BY i.name", (image_id,))
        return [r[0] for r in rows]

    def _sha_of(self, image_id: int) -> str | None:
        rows = self.store.execute("SELECT sha256 FROM images WHERE id = ?", (image_id,))
        return rows[0][0] if rows else None

    def _write(self, prep: _Prepared, identity: str | None, source: str | None, license: str | None,
               labels: dict[str, str] | None, journal: str | None) -> tuple[AddResult, list[int]]:
        """Store a prepared image (call inside a transaction); returns (result, embedding ids)."""
        jmark = {"identity": identity, "ref_sha256": prep.ref_sha}
        store_it = prep.status == "added" or (prep.status == "no-face" and identity is None)
        if store_it:
            # a concurrent writer may have stored the same bytes since _prepare looked
            existing = self.store.image_by_hash(prep.sha)
            if existing is not None:
                prep.status, prep.duplicate_of, prep.ref_sha = "duplicate", existing, prep.sha
                jmark["ref_sha256"] = prep.sha
                store_it = False
        if not store_it:
            if journal:
                self.store.journal_mark(journal, prep.sha, prep.status, prep.message[:500] or None, **jmark)
            return AddResult(prep.status, prep.sha, prep.duplicate_of, 0, prep.duplicate_of, prep.message), []
        stored = self._copy_image(prep.path, prep.data, prep.sha) if self.config.copy_images else str(prep.path)
        records = self._face_records(prep.image, prep.sha, prep.faces, prep.vecs, identity, labels or {})
        img = prep.image
        rec = ImageRecord(prep.sha, source or str(prep.path), stored, prep.phash, img.shape[1], img.shape[0], license)
        image_id, emb_ids = self.store.add_image(rec, records)
        if journal:
            self.store.journal_mark(journal, prep.sha, prep.status, **jmark)
        return AddResult(prep.status, prep.sha, image_id, len(prep.faces)), emb_ids

    def add_image(
        self, path: str | Path, identity: str | None = None, source: str | None = None,
        license: str | None = None, labels: dict[str, str] | None = None, journal: str | None = None,
        face: str | int | None = None,
    ) -> AddResult:
        """Detect, embed and store the faces of one image file (one transaction).

        With ``identity`` (enrollment) exactly one face is stored and labelled with it: an
        image with no face gives status "no-face" and one with several faces "ambiguous"
        (nothing stored) unless ``face`` chooses ("largest", "central" or an index). Bytes
        already stored under another identity give "conflict". Without identity every face
        is stored. ``journal`` is the ingest source key recorded in the same transaction.
        """
        prep = self._prepare(path, identity, face)
        # load before writing: rows added once
        index = self.index if prep.status == "added" and not self.defer_index else None
        try:
            with self.store.transaction():
                res, emb_ids = self._write(prep, identity, source, license, labels, journal)
        except Exception as exc:
            if not _is_integrity_error(exc):
                raise
            # another process stored these bytes between our check and our insert
            existing = self.store.image_by_hash(prep.sha)
            if existing is None:
                raise
            prep.status, prep.duplicate_of, prep.ref_sha = "duplicate", existing, prep.sha
            with self.store.transaction():
                res, emb_ids = self._write(prep, identity, source, license, labels, journal)
        if emb_ids and index is not None:
            index.add(np.array(emb_ids), prep.vecs)
            self._dirty = True
        return res

    @property
    def phash_index(self) -> StoredPhashes:
        """The near-duplicate index over stored perceptual hashes (built from the database on
        first use, then kept current; see :mod:`facelab.facedb.phash_index`)."""
        if self._phashes is None or self._phashes.index.radius != self.config.phash_distance:
            lookback = PG_ID_LOOKBACK if self.store.backend == "postgres" else 0
            self._phashes = StoredPhashes(self.store, self.config.phash_distance, lookback)
        return self._phashes

    def _near_duplicate(self, phash: str | None) -> int | None:
        """The stored image whose perceptual hash is closest to ``phash`` within
        ``phash_distance`` bits (lowest id on ties), or None: an index lookup, not a scan."""
        if phash is None or self.config.phash_distance < 0:
            return None
        return self.phash_index.nearest(phash)

    def _embedding_duplicate(self, identity: str, vec: np.ndarray) -> bool:
        d = self.store.identity_distance(identity, *self.model_key, vec, self.pipeline.embedder.metric)
        return d is not None and d < self.config.embedding_distance

    def _copy_image(self, path: Path, data: bytes, sha: str) -> str:
        dest = self.files / "images" / sha[:2] / f"{sha}{path.suffix.lower() or '.img'}"
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f"{dest.name}.{os.getpid()}.{id(data):x}.part")
            tmp.write_bytes(data)
            tmp.replace(dest)
        return str(dest)

    def _face_records(self, image, sha, faces, vecs, identity, labels) -> list[FaceRecord]:
        from PIL import Image

        from facelab.align.crop import crop_box

        model = "{}:{}".format(*self.model_key)
        out = []
        for i, (face, vec) in enumerate(zip(faces, vecs)):
            crop_path = None
            if self.config.save_crops:
                dest = self.files / "crops" / sha[:2] / f"{sha}_{i}.jpg"
                dest.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(crop_box(image, face.box, margin=0.1)).save(dest, quality=92)
                crop_path = str(dest)
            out.append(FaceRecord(
                box=tuple(float(v) for v in face.box), score=float(face.score),
                landmarks=face.landmarks, crop_path=crop_path, stage=face.stage,
                quality=float(min(face.width, face.height)), identity=identity,
                vectors={model: vec}, labels=dict(labels)))
        return out

    def enroll(self, identity: str, paths: list[str | Path], face: str | int | None = None) -> list[AddResult]:
        """Add photos of one person under ``identity``: all of them, or none.

        Every photo must show exactly one face (or ``face`` chooses one). Photos already stored
        under this identity are reported as "duplicate"; if any photo is unreadable, has no
        face, several faces, or is already stored under another identity, nothing is stored
        and :class:`EnrollError` lists each problem.
        """
        if not identity:
            raise DataFormatError("enroll needs a non-empty identity name")
        if not paths:
            raise DataFormatError(f"enroll {identity!r}: no photos given")
        preps, problems = [], []
        for p in paths:
            try:
                prep = self._prepare(p, identity, face)
            except (ImageDecodeError, NoFaceError, AmbiguousFaceError) as exc:
                problems.append(str(exc))
                continue
            if prep.status in ("no-face", "ambiguous", "conflict"):
                problems.append(prep.message)
            preps.append(prep)
        if problems:
            raise EnrollError(f"nothing enrolled for {identity!r}: " + " | ".join(problems))
        index = self.index
        results, new = [], []
        with self.store.transaction():
            for prep in preps:
                res, emb_ids = self._write(prep, identity, None, None, None, None)
                results.append(res)
                if emb_ids:
                    new.append((emb_ids, prep.vecs))
        for emb_ids, vecs in new:
            index.add(np.array(emb_ids), vecs)
            self._dirty = True
        self.flush()
        return results

    # -- querying ----------------------------------------------------------------------------
    def embed_faces(self, query: str | Path | np.ndarray, face: str | int | None = None) -> list[tuple[Any, np.ndarray]]:
        """[(face, vector)] of the chosen face(s) of an image path / RGB array; a 1-D array is
        taken as a vector. Raises :class:`NoFaceError` / :class:`AmbiguousFaceError`."""
        arr = np.asarray(query) if not isinstance(query, (str, Path)) else None
        if arr is not None and arr.ndim == 1:
            return [(None, arr.astype(np.float32))]
        name = str(query) if arr is None else "the query image"
        image = self._read(Path(query))[1] if arr is None else arr
        faces = self._choose(self._detect(image), image, face, name)
        vecs = self.pipeline.embedder.embed_faces(image, faces)
        return list(zip(faces, vecs))

    def embed_query(self, query: str | Path | np.ndarray, face: str | int | None = None) -> np.ndarray:
        """The vector of the one face of an image path / RGB array (or a given vector)."""
        chosen = self.embed_faces(query, face)
        if len(chosen) > 1:
            raise ConfigError("embed_query needs one face; use embed_faces for face='all'")
        return chosen[0][1]

    def search(self, query: str | Path | np.ndarray, k: int = 5,
               face: str | int | None = None) -> list[list[dict[str, Any]]]:
        """Top-k nearest stored faces: one list of matches (identity, distance, path, ...) per
        chosen query face (one, unless ``face="all"``)."""
        if int(k) < 1:
            raise ConfigError(f"k must be at least 1 (got {k})")
        chosen = self.embed_faces(query, face)
        q = np.stack([v for _, v in chosen])
        dist, ids = self.index.search(q, int(k))
        t = self.threshold
        out = []
        for (f, _), drow, irow in zip(chosen, dist, ids):
            info = self.store.describe_embeddings([int(i) for i in irow if i >= 0])
            qbox = None if f is None else tuple(float(v) for v in f.box)
            out.append([{"embedding_id": int(i), "distance": float(d), "match": bool(d <= t),
                         "query_box": qbox, **info[int(i)]}
                        for d, i in zip(drow, irow) if i >= 0 and int(i) in info])  # erased meanwhile: gone
        return out

    def verify(self, a: str | Path | np.ndarray, b: str | Path | np.ndarray,
               face: str | int | None = None) -> dict[str, Any]:
        """1:1: is ``a`` the same person as ``b`` (an image, a vector or an enrolled identity)?

        ``face`` chooses the face of ``a`` (and of an image ``b``) when there are several.
        """
        from facelab.embed.base import pairwise_distance

        va = self.embed_query(a, face)
        metric = self.pipeline.embedder.metric
        if isinstance(b, str) and self.store.identity_id(b) is not None:
            nearest = self.store.identity_distance(b, *self.model_key, va, metric)  # in SQL on pgvector
            if nearest is None:
                raise DataFormatError(f"identity {b!r} has no embeddings for this model; re-enroll it")
            d = nearest
        else:
            d = float(pairwise_distance(va[None], self.embed_query(b, face)[None], metric)[0])
        return {"distance": d, "threshold": self.threshold, "same": d <= self.threshold}

    def calibrate(self, distances: np.ndarray, same: np.ndarray, name: str, min_pairs: int = 20,
                  n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
        """Store the accuracy-maximising threshold found on labelled pairs (name = their source).

        Pairs with a non-finite distance (no face) are not valid. Refuses (nothing stored) with
        fewer than ``min_pairs`` valid pairs of each kind. Returns {"threshold", "interval"
        (95% bootstrap interval of the threshold over resampled pairs), "same_pairs",
        "different_pairs", "accuracy"}.
        """
        from facelab.evaluate.verification import best_threshold

        d = np.asarray(distances, float)
        y = np.asarray(same, int)
        ok = np.isfinite(d)
        d, y = d[ok], y[ok]
        n_same, n_diff = int((y == 1).sum()), int((y == 0).sum())
        if min(n_same, n_diff) < min_pairs:
            raise DataFormatError(
                f"{name}: {n_same} usable same-person and {n_diff} different-person pairs; need at "
                f"least {min_pairs} of each to calibrate (pairs whose images have no face are not usable)")
        t = best_threshold(d, y)
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(n_boot):
            i = rng.integers(0, len(d), len(d))
            if 0 < y[i].sum() < len(i):
                boots.append(best_threshold(d[i], y[i]))
        lo, hi = (np.percentile(boots, [2.5, 97.5]) if boots else (t, t))
        emb = self.pipeline.embedder
        self.store.set_threshold(emb.name, emb.version, emb.metric, t, name)
        return {"threshold": float(t), "interval": (float(lo), float(hi)), "same_pairs": n_same,
                "different_pairs": n_diff, "accuracy": float(np.mean((d <= t) == (y == 1)))}

    def calibrate_pairs(self, pairs_csv: str | Path, min_pairs: int = 20, face: str | int | None = "largest",
                        root: str | Path | None = None) -> dict[str, Any]:
        """Embed the images of a pairs CSV (image_a,image_b,same) and :meth:`calibrate` on it.

        Images that cannot be read or show no face make their pairs unusable (counted in
        "skipped_pairs"); the one-face rule of ``face`` applies as in :meth:`verify`.
        """
        from facelab.embed.base import pairwise_distance
        from facelab.facedb.ingest import read_csv_checked

        pairs_csv = Path(pairs_csv)
        df = read_csv_checked(pairs_csv, ("image_a", "image_b", "same"))
        try:
            same = df["same"].astype(int).to_numpy()
        except ValueError as exc:
            raise DataFormatError(f"{pairs_csv}: column 'same' must be 0 or 1 ({exc})") from exc
        root = Path(root) if root else pairs_csv.parent
        vecs: dict[str, np.ndarray | None] = {}

        def vec(p: str) -> np.ndarray | None:
            if p not in vecs:
                path = Path(p) if Path(p).is_absolute() else root / p
                try:
                    vecs[p] = self.embed_query(path, face)
                except DataFormatError as exc:  # no face / ambiguous / unreadable
                    log.warning("calibrate: %s", exc)
                    vecs[p] = None
            return vecs[p]

        dist = np.full(len(df), np.inf)
        metric = self.pipeline.embedder.metric
        for n, (a, b) in enumerate(zip(df["image_a"], df["image_b"])):
            va, vb = vec(str(a)), vec(str(b))
            if va is not None and vb is not None:
                dist[n] = float(pairwise_distance(va[None], vb[None], metric)[0])
        out = self.calibrate(dist, same, str(pairs_csv), min_pairs=min_pairs)
        out["skipped_pairs"] = int((~np.isfinite(dist)).sum())
        return out

    # -- erasing -------------------------------------------------------------------------------
    def delete_identity(self, name: str) -> dict[str, Any]:
        """Erase a person: faces, embeddings, index entries, crops, managed image copies and
        ingest-journal rows; then vacuum the database and truncate its WAL.

        Runs under the database file lock, so no concurrent ingest can save an index that
        still holds the erased vectors.
        """
        with self.file_lock():
            removed = self.store.delete_identity(name)
            for p in removed["crop_paths"] + removed["image_paths"]:
                fp = Path(p)
                if self._managed(fp):
                    fp.unlink(missing_ok=True)
            if self._index is None or not self._index.remove(removed["embedding_ids"]):
                self._index = self._build_from_store()
            self._dirty = True
            self.flush()
            purge = self.store.purge()
        if purge.get("wal_truncated") is False:
            log.warning("%s-wal could not be truncated (another connection is reading); it still holds "
                        "old copies until every connection closes", self.path)
        out: dict[str, Any] = {k: len(v) for k, v in removed.items()}
        out.update(purge)
        return out

    def _managed(self, p: Path) -> bool:
        try:
            p.resolve().relative_to(self.files.resolve())
            return True
        except ValueError:
            return False

    def stats(self) -> dict[str, Any]:
        s = self.store.stats()
        idx = self.index
        s["index"] = {"kind": self.config.index.kind, "vectors": idx.ntotal,
                      "path": idx.location if idx.shared else str(self.index_path)}
        s["threshold"] = self.threshold
        s["embedder"] = "{}:{}".format(*self.model_key)
        s["detector"] = self.config.detector
        s["fallback"] = self.config.fallback
        return s


def check_detector(name: str) -> None:
    """Refuse an unknown detector name, listing the known ones."""
    from facelab.detect import available_detectors

    names = ["whole", *available_detectors()]
    if name not in names:
        raise ConfigError(f"unknown detector {name!r}; choose one of {', '.join(names)}")


def _is_integrity_error(exc: BaseException) -> bool:
    """A unique-constraint violation from SQLite or PostgreSQL."""
    import sqlite3

    return isinstance(exc, sqlite3.IntegrityError) or type(exc).__name__ in ("IntegrityError", "UniqueViolation")


def _phash(image: np.ndarray) -> str | None:
    try:
        import imagehash
        from PIL import Image

        return str(imagehash.phash(Image.fromarray(image)))
    except Exception:  # noqa: BLE001  (degenerate images: no perceptual hash)
        return None
