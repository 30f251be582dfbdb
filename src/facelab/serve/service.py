"""What the HTTP layer calls: the face analyzer and the face database behind one object.

Every method here is blocking (models, SQLite, FAISS) and is run by the app in a worker
thread, never on the event loop. Database calls are serialised by one lock (FaceDB and its
FAISS index are not thread-safe); detection, attributes and embeddings run outside it.

Nothing here takes a file path from a request: images arrive as bytes (uploads, or bytes
fetched by the guarded URL fetcher), identities as names that are looked up, never opened.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from facelab.data.labels import CLASS_NAMES, TASKS
from facelab.errors import FacelabError
from facelab.serve.config import ServeConfig
from facelab.serve.images import (
    TooLargeImage,
    UnsupportedMediaType,
    check_image_bytes,
    decode_upload,
    image_kind,
)

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[^\x00-\x1f\x7f/\\]{1,200}$")


class NotFound(FacelabError):
    """An identity, face or key that does not exist (HTTP 404)."""


class Unavailable(FacelabError):
    """The service cannot do this now: models still loading, or no database configured (503)."""


class NoClipModel(NotFound):
    """/v1/clips on a server started without --clips-run (404: the route has nothing to serve)."""


def check_identity_name(name: str) -> str:
    """A usable identity name: 1-200 characters, no control characters or slashes.

    Example:
        >>> check_identity_name("Ada Lovelace")
        'Ada Lovelace'
    """
    from facelab.errors import ConfigError

    if not isinstance(name, str) or not NAME_RE.match(name) or not name.strip():
        raise ConfigError(f"identity name {str(name)[:40]!r} is not valid: use 1-200 characters "
                          "without control characters or slashes")
    return name


class FaceService:
    """The analyzer, the database and their locks; built once per process by :meth:`load`."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.db = None
        self.analyzer = None
        self.run = None
        self.clips = None  # (ClipModel, ClipConfig, class names) with --clips-run
        self.clips_lock = threading.Lock()
        self.db_lock = threading.RLock()
        self.load_seconds: float | None = None
        self.error: str | None = None
        self.ready = threading.Event()

    # -- loading -------------------------------------------------------------------------------
    def load(self) -> None:
        """Open the database, load the attribute model and warm every stage (blocking)."""
        t0 = time.perf_counter()
        try:
            from facelab.analyze.analyzer import FaceAnalyzer

            cfg = self.config
            if cfg.db:
                from facelab.facedb.db import FaceDB

                self.db = FaceDB(cfg.db)
                _ = self.db.pipeline, self.db.index  # models and index now, not on a request
            if cfg.run:
                from facelab.predict.run import AttributeRun

                self.run = AttributeRun.load(cfg.run, backend=cfg.backend, threads=cfg.threads)
                _ = self.run.backend
            if cfg.clips_run:
                from facelab.clips.engine import load_model

                self.clips = load_model(cfg.clips_run)
            self.analyzer = FaceAnalyzer(self._detector(), attributes=self.run, embedder=None)
            warm = np.full((64, 64, 3), 128, np.uint8)
            warm[16:48, 16:48] = 200
            self.analyzer.analyze(warm)  # first call builds lazy pieces (e.g. ONNX sessions)
        except FacelabError as exc:
            self.error = str(exc)
            log.error("facelab serve: cannot load: %s", exc)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("facelab serve: cannot load")
        finally:
            self.load_seconds = time.perf_counter() - t0
            self.ready.set()

    def _detector(self) -> str | None:
        name = self.config.detector
        if name is None:
            name = self.db.config.detector if self.db is not None else "mtcnn"
        return None if name in ("none", "whole") else name

    def check_ready(self, need_db: bool = False) -> None:
        if not self.ready.is_set():
            raise Unavailable("the service is still loading its models; retry in a few seconds")
        if self.error:
            raise Unavailable(f"the service failed to load: {self.error}")
        if need_db and self.db is None:
            raise Unavailable("no face database is configured; start the service with --db")

    # -- info ----------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ready": self.ready.is_set() and not self.error,
            "model_load_seconds": self.load_seconds,
            "detector": self._detector() if self.analyzer is not None else None,
            "attributes": None, "database": None,
            "limits": {"max_body_bytes": self.config.max_body_bytes,
                       "max_pixels": self.config.max_pixels, "max_k": self.config.max_k,
                       "rate_per_minute": self.config.rate_per_minute},
        }
        if self.run is not None:
            out["attributes"] = {"run": Path(self.run.path).parent.name, "backend": self.run.backend_name,
                                 "backbone": self.run.model_config.backbone, "tta": self.run.tta,
                                 "classes": {t: list(CLASS_NAMES[t]) for t in TASKS}}
        if self.clips is not None:
            _, ccfg, classes = self.clips
            out["clips"] = {"run": self.clips_run_name(), "kind": ccfg.model.kind,
                            "frames": ccfg.sampling.eval_frames, "classes": classes}
        if self.db is not None:
            with self.db_lock:
                s = self.db.stats()
            out["database"] = {"name": Path(str(self.db.path)).name, "backend": s["backend"],
                               "identities": s["identities"], "faces": s["faces"],
                               "embedder": s["embedder"], "detector": s["detector"],
                               "threshold": s["threshold"], "index": s["index"]["kind"]}
        return out

    # -- analysis ------------------------------------------------------------------------------
    def decode(self, data: bytes, what: str) -> np.ndarray:
        return decode_upload(data, what, self.config.max_pixels, self.config.max_body_bytes)

    def fetch_url(self, url: str) -> bytes:
        """Image bytes of a URL through the guarded fetcher (no private addresses, capped)."""
        from facelab.collect.fetch import FetchConfig, fetch_to

        cfg = FetchConfig(timeout=min(10.0, self.config.url_deadline), deadline=self.config.url_deadline,
                          retries=0, max_bytes=self.config.max_body_bytes,
                          allow_hosts=tuple(self.config.url_allow_hosts))
        tmp = Path(tempfile.mkdtemp(prefix="facelab-url-"))
        try:
            fetch_to(url, tmp / "image", cfg)
            return (tmp / "image").read_bytes()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def analyze(self, image: np.ndarray, identify: bool = False) -> dict[str, Any]:
        self.check_ready(need_db=identify)
        t0 = time.perf_counter()
        faces = self.analyzer.analyze(image)
        out = [face_record(f) for f in faces]
        if identify and faces:
            emb = self.db.pipeline.embedder
            vecs = emb.embed_faces(image, [f.face for f in faces])
            with self.db_lock:
                self._sync_index()
                threshold = self.db.threshold
                for rec, v in zip(out, vecs):
                    hits = self.db.search(np.asarray(v, np.float32), k=1)[0]
                    hit = hits[0] if hits else None
                    rec["identity"] = {
                        "name": hit["identity"] if hit and hit["match"] else None,
                        "nearest": hit["identity"] if hit else None,
                        "distance": round(float(hit["distance"]), 6) if hit else None,
                        "threshold": threshold, "match": bool(hit and hit["match"])}
        return {"width": int(image.shape[1]), "height": int(image.shape[0]), "faces": out,
                "seconds": round(time.perf_counter() - t0, 4)}

    # -- the database ----------------------------------------------------------------------------
    def _sync_index(self) -> None:
        """Rebuild the in-memory index when another process changed the database."""
        from facelab.facedb.index import ids_checksum
        from facelab.facedb.store import store_checksum

        if ids_checksum(self.db.index.ids) != store_checksum(self.db.store, *self.db.model_key):
            self.db.rebuild_index()

    def _faces(self, image: np.ndarray, face: str | None, what: str) -> list[tuple[Any, np.ndarray]]:
        """[(face, vector)] of the chosen face(s) of one image (NoFace/Ambiguous errors)."""
        from facelab.facedb.db import check_face_choice

        choice = check_face_choice(face)
        faces = self.db._choose(self.db._detect(image), image, choice, what)
        vecs = self.db.pipeline.embedder.embed_faces(image, faces)
        return list(zip(faces, vecs))

    def search(self, image: np.ndarray, k: int, face: str | None = None) -> dict[str, Any]:
        self.check_ready(need_db=True)
        from facelab.errors import ConfigError

        if not 1 <= int(k) <= self.config.max_k:
            raise ConfigError(f"k must be between 1 and {self.config.max_k} (got {k})")
        chosen = self._faces(image, face, "the image")
        results = []
        with self.db_lock:
            self._sync_index()
            threshold = self.db.threshold
            for f, v in chosen:
                hits = self.db.search(np.asarray(v, np.float32), k=int(k))[0]
                results.append({"query_box": [round(float(x), 2) for x in f.box],
                                "matches": [{"identity": h["identity"], "distance": round(float(h["distance"]), 6),
                                             "match": bool(h["match"]), "face_id": h["face_id"],
                                             "box": [round(float(x), 2) for x in h["box"]]}
                                            for h in hits]})
        return {"threshold": threshold, "results": results}

    def verify(self, a: np.ndarray, b: np.ndarray | None = None, identity: str | None = None,
               face: str | None = None) -> dict[str, Any]:
        """1:1 of image a against image b or an enrolled identity (looked up, never a path)."""
        self.check_ready(need_db=True)
        from facelab.distance import pairwise_distance
        from facelab.errors import ConfigError

        if (b is None) == (identity is None):
            raise ConfigError("give image_b or identity (exactly one)")
        va = self._one(a, face, "image_a")
        metric = self.db.pipeline.embedder.metric
        if identity is not None:
            with self.db_lock:
                if self.db.store.identity_id(identity) is None:
                    raise NotFound(f"identity {identity!r} is not enrolled")
                known = self.db.store.identity_embeddings(identity, *self.db.model_key)
                threshold = self.db.threshold
            if not len(known):
                raise NotFound(f"identity {identity!r} has no faces for this model; re-enroll it")
            d = float(pairwise_distance(known, np.broadcast_to(va, known.shape), metric).min())
        else:
            vb = self._one(b, face, "image_b")
            d = float(pairwise_distance(va[None], vb[None], metric)[0])
            with self.db_lock:
                threshold = self.db.threshold
        return {"distance": round(d, 6) + 0.0, "threshold": threshold, "same": bool(d <= threshold),
                "against": "identity" if identity is not None else "image"}

    def _one(self, image: np.ndarray, face: str | None, what: str) -> np.ndarray:
        from facelab.errors import ConfigError

        chosen = self._faces(image, face, what)
        if len(chosen) != 1:
            raise ConfigError(f"{what}: verify compares one face; choose one with face=largest|central|<index>")
        return np.asarray(chosen[0][1], np.float32)

    def identities(self, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        self.check_ready(need_db=True)
        with self.db_lock:
            total = int(self.db.store.execute("SELECT COUNT(*) FROM identities")[0][0])
            rows = self.db.store.execute(
                "SELECT i.name, i.created_at, COUNT(f.id), MIN(f.id) FROM identities i"
                " LEFT JOIN faces f ON f.identity_id = i.id GROUP BY i.id, i.name, i.created_at"
                " ORDER BY i.name LIMIT ? OFFSET ?", (int(limit), int(offset)))
        return {"total": total, "limit": limit, "offset": offset,
                "identities": [{"name": r[0], "created_at": r[1], "faces": int(r[2]),
                                "thumbnail_face_id": None if r[3] is None else int(r[3])} for r in rows]}

    def identity(self, name: str) -> dict[str, Any]:
        self.check_ready(need_db=True)
        with self.db_lock:
            row = self.db.store.execute("SELECT id, created_at FROM identities WHERE name = ?", (name,))
            if not row:
                raise NotFound(f"identity {name!r} is not enrolled")
            faces = self.db.store.execute(
                "SELECT f.id, f.x1, f.y1, f.x2, f.y2, f.score, f.stage, im.sha256, im.width, im.height,"
                " im.added_at, f.crop_path FROM faces f JOIN images im ON im.id = f.image_id"
                " WHERE f.identity_id = ? ORDER BY f.id", (row[0][0],))
        return {"name": name, "created_at": row[0][1], "faces": [
            {"face_id": int(r[0]), "box": [round(float(v), 2) for v in r[1:5]], "score": r[5], "stage": r[6],
             "image_sha256": r[7], "image_width": r[8], "image_height": r[9], "added_at": r[10],
             "has_crop": bool(r[11])} for r in faces]}

    def face_crop(self, name: str, face_id: int) -> bytes:
        """JPEG bytes of a stored face crop (a path read from the database, checked to lie in
        the database's managed files folder)."""
        self.check_ready(need_db=True)
        with self.db_lock:
            rows = self.db.store.execute(
                "SELECT f.crop_path FROM faces f JOIN identities i ON i.id = f.identity_id"
                " WHERE i.name = ? AND f.id = ?", (name, int(face_id)))
        if not rows or not rows[0][0]:
            raise NotFound(f"no stored crop for face {face_id} of identity {name!r}")
        path = Path(rows[0][0])
        if not self.db._managed(path) or not path.is_file():
            raise NotFound(f"the crop of face {face_id} is not available")
        return path.read_bytes()

    def enroll(self, name: str, uploads: list[tuple[bytes, str | None]], face: str | None = None
               ) -> dict[str, Any]:
        """Enroll photos (bytes) under a name: all of them or none (FaceDB.enroll)."""
        self.check_ready(need_db=True)
        from facelab.errors import ConfigError

        check_identity_name(name)
        if not uploads:
            raise ConfigError("enroll needs at least one image")
        if len(uploads) > self.config.max_enroll_images:
            raise ConfigError(f"at most {self.config.max_enroll_images} images per enrollment")
        tmp = Path(tempfile.mkdtemp(prefix="facelab-enroll-"))
        try:
            paths = []
            for i, (data, _) in enumerate(uploads, 1):
                what = f"image {i}"
                check_image_bytes(data, what, self.config.max_pixels, self.config.max_body_bytes)
                p = tmp / f"image-{i}{image_kind(data[:16]) or '.img'}"
                p.write_bytes(data)
                paths.append(p)
            try:
                with self.db_lock:
                    self._sync_index()
                    results = self.db.enroll(name, paths, face=face)
            except FacelabError as exc:
                raise type(exc)(str(exc).replace(f"{tmp}/", "")) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return {"name": name, "results": [
            {"image": i, "status": r.status, "sha256": r.sha256, "faces": r.faces} for i, r in enumerate(results, 1)]}

    def delete(self, name: str) -> dict[str, Any]:
        """Erase an identity as `facelab db delete` does (FaceDB.delete_identity)."""
        self.check_ready(need_db=True)
        with self.db_lock:
            if self.db.store.identity_id(name) is None:
                raise NotFound(f"identity {name!r} is not enrolled")
            out = self.db.delete_identity(name)
        return {"name": name, "deleted": True, **{k: v for k, v in out.items() if k != "journal_rows"},
                "journal_rows": out.get("journal_rows", 0)}

    # -- clips -----------------------------------------------------------------------------------
    def clips_run_name(self) -> str:
        p = Path(str(self.config.clips_run))
        return (p.parent if p.is_file() else p).name

    def classify_clip(self, data: bytes, what: str = "video") -> dict[str, Any]:
        """Class probabilities of one uploaded video (bytes), via a private temporary file.

        415 when PyAV cannot open the bytes or they hold no video stream; 422 (bad_image) when
        the stream does not decode (corrupt, truncated, zero frames)."""
        self.check_ready()
        if self.clips is None:
            raise NoClipModel("no clip model loaded; start the server with --clips-run")
        if not data:
            raise UnsupportedMediaType(f"{what}: empty file; send the video's bytes")
        from facelab.clips.engine import predict_clips
        from facelab.clips.video import FrameCache
        from facelab.errors import ImageDecodeError

        model, ccfg, classes = self.clips
        tmp = Path(tempfile.mkdtemp(prefix="facelab-clip-"))  # mode 0700, a name we chose
        try:
            path = tmp / "upload.bin"
            with open(path, "xb") as fh:
                fh.write(data)
            _probe_video(path, what, self.config.max_clip_frames)
            t0 = time.perf_counter()
            with self.clips_lock:  # one clip at a time: torch threads and memory stay bounded
                probs, bad, _ = predict_clips(model, ccfg, [str(path)],
                                              cache=FrameCache(ccfg.data.size, tmp, enabled=False))
            seconds = time.perf_counter() - t0
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if bad or not np.isfinite(probs[0]).all():
            reason = bad[0][1] if bad else "no prediction"
            raise ImageDecodeError(f"{what}: " + reason.replace(str(path), "the upload"))
        p = probs[0].astype(float)
        top = int(p.argmax())
        return {"run": self.clips_run_name(), "label": classes[top], "probability": round(float(p[top]), 5),
                "probabilities": {c: round(float(v), 5) for c, v in zip(classes, p)},
                "frames_used": int(ccfg.sampling.eval_frames), "seconds": round(seconds, 4)}

    def close(self) -> None:
        if self.db is not None:
            with self.db_lock:
                self.db.close()


def _probe_video(path: Path, what: str, max_frames: int) -> None:
    """UnsupportedMediaType unless PyAV opens the file and finds a video stream in it (a
    still image that FFmpeg would read as a one-frame video is refused too);
    TooLargeImage when the container declares more than `max_frames` frames (a long video
    would be decoded whole), checked before any frame is decoded."""
    import av

    try:
        container = av.open(str(path))
    except Exception:  # noqa: BLE001  (whatever PyAV says, the bytes are not a video we take)
        raise UnsupportedMediaType(f"{what}: not a video PyAV can open; send an MP4, AVI, MKV "
                                   "or WebM file") from None
    with container:
        if not container.streams.video:
            kinds = ",".join(s.type for s in container.streams) or "none"
            raise UnsupportedMediaType(f"{what}: no video stream (streams: {kinds})")
        fmt = container.format.name or ""
        if fmt == "image2" or fmt.endswith("_pipe"):  # FFmpeg reads a still image as 1 frame
            raise UnsupportedMediaType(f"{what}: a still image ({fmt}), not a video")
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        if not n and stream.duration and stream.time_base and stream.average_rate:
            n = int(float(stream.duration * stream.time_base) * float(stream.average_rate))
        if n > max_frames:
            raise TooLargeImage(f"{what}: {n} frames exceeds the limit of {max_frames}; "
                                "send a short clip")


def face_record(f) -> dict[str, Any]:
    """JSON of one AnalyzedFace: box, landmarks, labels, 18-class id, probabilities."""
    face = f.face
    rec: dict[str, Any] = {
        "box": [round(float(v), 2) for v in face.box], "score": round(float(face.score), 4),
        "stage": face.stage,
        "landmarks": None if face.landmarks is None else np.round(np.asarray(face.landmarks, float), 2).tolist(),
        "attributes": None, "class18": None, "probabilities": None, "identity": None,
    }
    if f.attributes is not None:
        rec["attributes"] = f.attributes.labels
        rec["class18"] = f.attributes.class18
        rec["probabilities"] = {t: {c: round(float(p), 5) for c, p in zip(CLASS_NAMES[t], f.attributes.probs[t])}
                                for t in TASKS}
    return rec
