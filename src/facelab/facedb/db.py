"""`FaceDB`: enroll, search (1:N), verify (1:1) and erase faces, over a store and an index.

Layout on disk for ``faces.db``::

    faces.db                     SQLite database (WAL): the source of truth
    faces.files/images/ab/<sha256>.jpg   managed copies of ingested images
    faces.files/crops/ab/<sha256>_<i>.jpg  face crops
    faces.<model>.faiss (+ .json, .ids.npy)  vector index, rebuilt whenever it is stale
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facelab.errors import ConfigError, DataFormatError
from facelab.facedb.index import IndexConfig, VectorIndex
from facelab.facedb.store import (
    DatabaseError,
    FaceRecord,
    FaceStore,
    ImageRecord,
    SQLiteStore,
    store_checksum,
)

log = logging.getLogger(__name__)


@dataclass
class FaceDBConfig:
    """Settings saved in the database at ``init`` and reused on every open.

    Attributes:
        embedder: registered embedder name ("dlib-resnet", "dlib-resnet-upper", ...).
        embedder_options: keyword options of the embedder.
        detector: face detector name ("mtcnn", "dlib-hog", "whole" for pre-cropped faces).
        fallback: "whole" keeps images where no face is found (whole image as the box), "skip".
        index: FAISS index settings.
        copy_images: keep a managed copy of each image (erased by ``delete``).
        save_crops: save each face crop as JPEG.
        phash_distance: images within this perceptual-hash Hamming distance of a stored one are
            near-duplicates and skipped (-1 disables).
        embedding_distance: a face closer than this to a stored face of the same identity is a
            near-duplicate and skipped (0 disables).
    """

    embedder: str = "dlib-resnet"
    embedder_options: dict[str, Any] = field(default_factory=dict)
    detector: str = "mtcnn"
    fallback: str = "whole"
    index: IndexConfig = field(default_factory=IndexConfig)
    copy_images: bool = True
    save_crops: bool = True
    phash_distance: int = 4
    embedding_distance: float = 0.0

    @classmethod
    def from_json(cls, text: str) -> FaceDBConfig:
        d = json.loads(text)
        d["index"] = IndexConfig(**d.get("index", {}))
        return cls(**d)


@dataclass
class AddResult:
    """Outcome of adding one image: status is added | duplicate | near-duplicate | no-face."""

    status: str
    sha256: str
    image_id: int | None = None
    faces: int = 0
    duplicate_of: int | None = None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FaceDB:
    """The face database.

    Example:
        >>> db = FaceDB.init("faces.db", FaceDBConfig(detector="mtcnn"))
        >>> db.enroll("ada", ["ada1.jpg", "ada2.jpg"])
        >>> db.search("unknown.jpg", k=3)[0][0]["identity"]
        'ada'
        >>> db.delete_identity("ada")
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
        self._index: VectorIndex | None = None
        self._dirty = False

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
        store = cls._open_store(path)
        rows = store.execute("SELECT value FROM meta WHERE key = 'config'")
        if rows and not exist_ok:
            raise DatabaseError(f"{path} already exists; open it or pass exist_ok")
        if not rows:
            cfg = config or FaceDBConfig()
            from facelab.embed.base import list_embedders

            if cfg.embedder not in list_embedders():
                raise ConfigError(f"unknown embedder {cfg.embedder!r}; choose one of {list_embedders()}")
            with store.transaction():
                store._set_meta("config", json.dumps(asdict(cfg)))
        return cls(path, store, files_dir)

    # -- models ----------------------------------------------------------------------------
    @property
    def pipeline(self):
        if self._pipeline is None:
            from facelab.embed.base import get_embedder
            from facelab.embed.pipeline import FacePipeline, PipelineConfig

            emb = get_embedder(self.config.embedder, **self.config.embedder_options)
            pcfg = PipelineConfig(detector=self.config.detector, fallback=self.config.fallback)
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

    # -- index -----------------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        name, version = self.model_key
        return self.path.parent / f"{self.path.stem}.{name}-{version}.faiss"

    @property
    def index(self) -> VectorIndex:
        """The vector index, loaded from disk when current, else rebuilt from the store."""
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

    def rebuild_index(self) -> VectorIndex:
        """Rebuild the FAISS index from stored embeddings and save it."""
        ids, vecs = self.store.embeddings(*self.model_key)
        emb = self.pipeline.embedder
        idx = VectorIndex(emb.dim, emb.metric, self.config.index)
        idx.build(ids, vecs if len(ids) else np.zeros((0, emb.dim), np.float32))
        self._index = idx
        self._dirty = True
        self.flush()
        return idx

    def flush(self) -> None:
        """Persist the index if it changed."""
        if self._index is not None and self._dirty:
            self._index.save(self.index_path, {"model": "%s:%s" % self.model_key})
            self._dirty = False

    def close(self) -> None:
        self.flush()
        self.store.close()

    def __enter__(self) -> FaceDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- adding ----------------------------------------------------------------------------
    def add_image(
        self, path: str | Path, identity: str | None = None, source: str | None = None,
        license: str | None = None, labels: dict[str, str] | None = None, journal: str | None = None,
    ) -> AddResult:
        """Detect, embed and store the faces of one image file (one transaction).

        With ``identity`` (enrollment) only the largest face is kept and labelled with it.
        ``journal`` is the ingest source key recorded in the same transaction.
        """
        from facelab.io.image import load_image

        path = Path(path)
        data = path.read_bytes()
        sha = sha256_bytes(data)
        existing = self.store.image_by_hash(sha)
        if existing is not None:
            self._journal_only(journal, sha, "duplicate")
            return AddResult("duplicate", sha, existing, duplicate_of=existing)
        image = load_image(path)
        phash = _phash(image)
        near = self._near_duplicate(phash)
        if near is not None:
            self._journal_only(journal, sha, "near-duplicate")
            return AddResult("near-duplicate", sha, None, duplicate_of=near)
        faces, vecs = self.pipeline.run(image)
        if identity is not None:
            faces, vecs = faces[:1], vecs[:1]
        if identity and self.config.embedding_distance > 0 and len(vecs):
            if self._embedding_duplicate(identity, vecs[0]):
                self._journal_only(journal, sha, "near-duplicate")
                return AddResult("near-duplicate", sha)
        stored = self._copy_image(path, sha) if self.config.copy_images else str(path)
        records = self._face_records(image, sha, faces, vecs, identity, labels or {})
        rec = ImageRecord(sha, source or str(path), stored, phash, image.shape[1], image.shape[0], license)
        index = self.index  # load/rebuild before writing, so the new rows are added exactly once
        with self.store.transaction():
            image_id, emb_ids = self.store.add_image(rec, records)
            if journal:
                self.store.journal_mark(journal, sha, "added" if faces else "no-face")
        if emb_ids:
            index.add(np.array(emb_ids), vecs)
            self._dirty = True
        return AddResult("added" if faces else "no-face", sha, image_id, len(faces))

    def _journal_only(self, journal: str | None, sha: str, status: str) -> None:
        if journal:
            with self.store.transaction():
                self.store.journal_mark(journal, sha, status)

    def _near_duplicate(self, phash: str | None) -> int | None:
        if phash is None or self.config.phash_distance < 0:
            return None
        known = self.store.phashes()
        if not known:
            return None
        ids = np.array([k[0] for k in known])
        bits = np.array([int(k[1], 16) for k in known], dtype=np.uint64)
        diff = np.bitwise_xor(bits, np.uint64(int(phash, 16)))
        ham = np.unpackbits(diff.view(np.uint8).reshape(-1, 8), axis=1).sum(1)
        best = int(np.argmin(ham))
        return int(ids[best]) if ham[best] <= self.config.phash_distance else None

    def _embedding_duplicate(self, identity: str, vec: np.ndarray) -> bool:
        from facelab.embed.base import pairwise_distance

        known = self.store.identity_embeddings(identity, *self.model_key)
        if not len(known):
            return False
        d = pairwise_distance(known, np.broadcast_to(vec, known.shape), self.pipeline.embedder.metric)
        return bool(d.min() < self.config.embedding_distance)

    def _copy_image(self, path: Path, sha: str) -> str:
        dest = self.files / "images" / sha[:2] / f"{sha}{path.suffix.lower() or '.img'}"
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(dest.suffix + ".part")
            shutil.copyfile(path, tmp)
            tmp.replace(dest)
        return str(dest)

    def _face_records(self, image, sha, faces, vecs, identity, labels) -> list[FaceRecord]:
        from PIL import Image

        from facelab.align.crop import crop_box

        model = "%s:%s" % self.model_key
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

    def enroll(self, identity: str, paths: list[str | Path]) -> list[AddResult]:
        """Add photos of one person (largest face per photo) under ``identity``."""
        if not identity:
            raise DataFormatError("enroll needs a non-empty identity name")
        results = [self.add_image(p, identity=identity) for p in paths]
        self.flush()
        return results

    # -- querying ----------------------------------------------------------------------------
    def embed_query(self, query: str | Path | np.ndarray) -> np.ndarray:
        """The vector of the largest face of an image path / RGB array, or a given vector."""
        from facelab.io.image import load_image

        arr = np.asarray(query) if not isinstance(query, (str, Path)) else None
        if arr is not None and arr.ndim == 1:
            return arr.astype(np.float32)
        image = load_image(query) if arr is None else arr
        faces, vecs = self.pipeline.run(image)
        if not len(vecs):
            raise DataFormatError(f"no face found in {query if arr is None else 'the query image'}")
        return vecs[0]

    def search(self, query: str | Path | np.ndarray, k: int = 5) -> list[list[dict[str, Any]]]:
        """Top-k nearest stored faces: one list of matches (identity, distance, path, ...)."""
        q = self.embed_query(query)
        dist, ids = self.index.search(q[None], k)
        info = self.store.describe_embeddings([int(i) for i in ids[0] if i >= 0])
        t = self.threshold
        return [[{"embedding_id": int(i), "distance": float(d), "match": bool(d <= t), **info.get(int(i), {})}
                 for d, i in zip(dist[0], ids[0]) if i >= 0]]

    def verify(self, a: str | Path | np.ndarray, b: str | Path | np.ndarray) -> dict[str, Any]:
        """1:1: is ``a`` the same person as ``b`` (an image, a vector or an enrolled identity)?"""
        from facelab.embed.base import pairwise_distance

        va = self.embed_query(a)
        metric = self.pipeline.embedder.metric
        if isinstance(b, str) and self.store.identity_id(b) is not None:
            known = self.store.identity_embeddings(b, *self.model_key)
            if not len(known):
                raise DataFormatError(f"identity {b!r} has no embeddings for this model; re-enroll it")
            d = float(pairwise_distance(known, np.broadcast_to(va, known.shape), metric).min())
        else:
            d = float(pairwise_distance(va[None], self.embed_query(b)[None], metric)[0])
        return {"distance": d, "threshold": self.threshold, "same": d <= self.threshold}

    def calibrate(self, distances: np.ndarray, same: np.ndarray, name: str) -> float:
        """Store the accuracy-maximising threshold found on labelled pairs (name = their source)."""
        from facelab.evaluate.verification import best_threshold

        t = best_threshold(distances, same)
        emb = self.pipeline.embedder
        self.store.set_threshold(emb.name, emb.version, emb.metric, t, name)
        return t

    # -- erasing -------------------------------------------------------------------------------
    def delete_identity(self, name: str) -> dict[str, int]:
        """Erase a person: faces, embeddings, index entries, crops and managed image copies."""
        index = self.index  # load it while it still matches the database
        removed = self.store.delete_identity(name)
        for p in removed["crop_paths"] + removed["image_paths"]:
            fp = Path(p)
            if self._managed(fp):
                fp.unlink(missing_ok=True)
        if removed["embedding_ids"]:
            if not index.remove(removed["embedding_ids"]):
                self.rebuild_index()
            self._dirty = True
            self.flush()
        return {k: len(v) for k, v in removed.items()}

    def _managed(self, p: Path) -> bool:
        try:
            p.resolve().relative_to(self.files.resolve())
            return True
        except ValueError:
            return False

    def stats(self) -> dict[str, Any]:
        s = self.store.stats()
        s["index"] = {"kind": self.config.index.kind, "vectors": self.index.ntotal,
                      "path": str(self.index_path)}
        s["threshold"] = self.threshold
        s["embedder"] = "%s:%s" % self.model_key
        s["detector"] = self.config.detector
        return s


def _phash(image: np.ndarray) -> str | None:
    try:
        import imagehash
        from PIL import Image

        return str(imagehash.phash(Image.fromarray(image)))
    except Exception:  # noqa: BLE001  (degenerate images: no perceptual hash)
        return None
