"""`FaceAnalyzer`: every face of a photo with its box, landmarks, attributes and identity.

Stages, each optional and swappable: a detector (any registered backend or cascade spec,
or None when every image is already one face crop), face choice (facelab.detect.select),
the attribute run (facelab.predict.run.AttributeRun, PyTorch or ONNX Runtime), an
embedder, and identity lookup in a FaceDB (which then also decides the embedder, so
vectors are comparable).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facelab.data.labels import CLASS_NAMES, TASKS
from facelab.detect.base import DEFAULT_DETECTOR
from facelab.detect.select import check_choice, select_faces
from facelab.io.image import load_image
from facelab.predict.probs import prob_columns
from facelab.predict.run import AttributePrediction, AttributeRun
from facelab.types import Face


@dataclass
class AnalyzedFace:
    """One face found in an image, with what each stage added.

    Attributes:
        face: the detection (box, score, 5 landmarks, detector stage).
        attributes: mask / gender / age probabilities and labels (None without a run).
        embedding: the face's vector (None without an embedder).
        identity: the nearest enrolled identity when it is within the database threshold.
        distance: distance to the nearest enrolled face (None without a database).
    """

    face: Face
    attributes: AttributePrediction | None = None
    embedding: np.ndarray | None = None
    identity: str | None = None
    distance: float | None = None
    nearest: str | None = None

    def to_dict(self, with_embedding: bool = False) -> dict[str, Any]:
        """A flat, JSON-ready record (the rows `facelab analyze` writes)."""
        f = self.face
        out: dict[str, Any] = {
            "x1": round(float(f.box[0]), 2), "y1": round(float(f.box[1]), 2),
            "x2": round(float(f.box[2]), 2), "y2": round(float(f.box[3]), 2),
            "score": round(float(f.score), 4), "stage": f.stage,
            "landmarks": None if f.landmarks is None else np.round(
                np.asarray(f.landmarks, float), 2).tolist(),
        }
        if self.attributes is not None:
            out.update(self.attributes.labels)
            out["class18"] = self.attributes.class18
            for t in TASKS:
                out.update({c: round(float(v), 5) for c, v in
                            zip(prob_columns(t), self.attributes.probs[t])})
        if self.distance is not None:
            out.update(identity=self.identity, nearest=self.nearest,
                       distance=round(float(self.distance), 5))
        if with_embedding and self.embedding is not None:
            out["embedding"] = np.round(self.embedding.astype(float), 6).tolist()
        return out


class FaceAnalyzer:
    """Detect faces and run the chosen stages on each.

    Args:
        detector: a registered detector name or cascade spec ("ssd-mbv2-onnx", the default;
            "mtcnn", "mtcnn-mask|mtcnn"), a Detector object, or None: each image is one face
            already (face crops).
        attributes: a run folder / checkpoint, an AttributeRun, or None.
        embedder: an embedder name or object, or None (no vectors); ignored with `db`.
        embedder_options: keyword options for a named embedder (e.g. {"checkpoint": path}).
        db: a FaceDB (or its path) for identity lookup; its own embedder is used.
        choose: which faces to keep: "all" (default), "largest", "central" or "score".
        min_score, min_size: drop detections below this score / narrower than this (px).
        backend: attribute backend: "torch", "onnx" or "onnx-int8".

    Example:
        >>> fa = FaceAnalyzer("mtcnn", attributes="runs/mt")           # doctest: +SKIP
        >>> [f.attributes.labels for f in fa.analyze("group.jpg")]      # doctest: +SKIP
        [{'mask': 'correct', 'gender': 'female', 'age': '<30'}, ...]
    """

    def __init__(self, detector: Any = DEFAULT_DETECTOR, attributes: Any = None, embedder: Any = None,
                 db: Any = None, choose: str = "all", min_score: float = 0.0, min_size: float = 0.0,
                 backend: str = "torch", threads: int | None = None,
                 embedder_options: dict | None = None) -> None:
        self.choose = check_choice(choose)
        self.min_score, self.min_size = float(min_score), float(min_size)
        self.detector = self._detector(detector)
        if isinstance(attributes, (str, Path)):
            attributes = AttributeRun.load(attributes, backend=backend, threads=threads)
        self.run: AttributeRun | None = attributes
        if isinstance(db, (str, Path)):
            from facelab.facedb.db import FaceDB

            db = FaceDB(db)
        self.db = db
        if db is not None:
            embedder = db.pipeline.embedder
        elif isinstance(embedder, str):
            from facelab.embed.base import get_embedder

            embedder = get_embedder(embedder, **(embedder_options or {}))
        self.embedder = embedder
        self.timings: dict[str, float] = defaultdict(float)  # seconds per stage, cumulative

    @staticmethod
    def _detector(detector: Any):
        if detector is None or not isinstance(detector, str):
            return detector
        from facelab.detect.cascade import detector_from_spec

        return detector_from_spec(detector)  # a name, "name(options)" or "a>b" / "a|b"

    def _find(self, images: list[np.ndarray]) -> list[list[Face]]:
        if self.detector is None:
            return [[Face((0.0, 0.0, float(im.shape[1]), float(im.shape[0])), 1.0, None, "whole")]
                    for im in images]
        found = self.detector.detect_batch(images)
        kept = []
        for im, faces in zip(images, found):
            faces = [f for f in faces if f.score >= self.min_score and f.width >= self.min_size]
            kept.append(select_faces(faces, im.shape, self.choose))
        return kept

    def analyze(self, image: np.ndarray | str | Path | bytes) -> list[AnalyzedFace]:
        """Every chosen face of one image (RGB uint8 array, path or file bytes); [] = no face."""
        return self.analyze_batch([image])[0]

    def analyze_batch(self, images: list) -> list[list[AnalyzedFace]]:
        """`analyze` for several images at once (detection and models run batched)."""
        t0 = time.perf_counter()
        arrays = [im if isinstance(im, np.ndarray) else load_image(im) for im in images]
        t1 = time.perf_counter()
        faces = self._find(arrays)
        t2 = time.perf_counter()
        self.timings["decode"] += t1 - t0
        self.timings["detect"] += t2 - t1
        results = [[AnalyzedFace(f) for f in fs] for fs in faces]
        flat = [(i, r) for i, rs in enumerate(results) for r in rs]
        if self.run is not None and flat:
            # a face crop (no detector) is fed as `facelab predict` feeds a photo: the run's own
            # crop mode, not a box padded by the run's margin
            boxes = [None if r.face.stage == "whole" else r.face for _, r in flat]
            preds = self.run.predict_batch([arrays[i] for i, _ in flat], boxes)
            for (_, r), p in zip(flat, preds):
                r.attributes = p
        t3 = time.perf_counter()
        self.timings["attributes"] += t3 - t2
        if self.embedder is not None:
            for i, rs in enumerate(results):
                if rs:
                    vecs = self.embedder.embed_faces(arrays[i], [r.face for r in rs])
                    for r, v in zip(rs, vecs):
                        r.embedding = np.asarray(v, np.float32)
        t4 = time.perf_counter()
        self.timings["embed"] += t4 - t3
        if self.db is not None:
            for _, r in flat:
                self._lookup(r)
        self.timings["lookup"] += time.perf_counter() - t4
        return results

    def _lookup(self, r: AnalyzedFace) -> None:
        hits = self.db.search(r.embedding, k=1)[0] if r.embedding is not None else []
        if hits:
            r.nearest, r.distance = hits[0].get("identity"), float(hits[0]["distance"])
            r.identity = r.nearest if hits[0]["match"] else None


def attribute_columns() -> list[str]:
    """Columns the attribute stage adds to a record, in order."""
    return [*TASKS, "class18", *(c for t in TASKS for c in prob_columns(t))]


__all__ = ["AnalyzedFace", "FaceAnalyzer", "attribute_columns", "CLASS_NAMES"]
