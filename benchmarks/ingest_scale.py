"""Ingest throughput as the face database grows: images/s with 1k, 100k, 1M images stored.

For each size N a SQLite face database is filled with N synthetic stored images (random 64-bit
perceptual hashes, random unit embeddings of the embedder's size, one face and one journal row
each, written straight into facelab's tables), then ``facelab.facedb.ingest.ingest`` adds
--images real photos (default: the first ones of $FACELAB_DATA/lfw/images) with the configured
detector and embedder. Figures per N:

  with models   images/s of the whole per-image work (read, hash, near-duplicate lookup,
                detection, embedding, crop + copy, transaction, journal, index add) plus the
                periodic index save: one save is timed and charged to every image as save
                time / images between saves (FaceDB.save_interval);
  without       the same run with the time spent in detection and embedding taken out (both
                are timed around the calls), i.e. what the database side costs; also as
                CPU ms per image (this process's CPU time, which other jobs on a shared
                machine disturb far less than wall time).

The near-duplicate lookup goes through the perceptual-hash index
(facelab.facedb.phash_index). ``--scan-max`` also runs, for N up to that size, the old lookup
(every stored hash loaded from the database and compared, per image) on the same photos as
the baseline, side by side. The one-off work on opening (building the FAISS and phash indexes
from the database, reading the journal) is reported apart, not in the rates.

Usage:
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/ingest_scale.py --sizes 1000 100000 1000000
    python benchmarks/ingest_scale.py --sizes 1000 --images 20 --detector whole --embedder pixels
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def populate(db, n: int, seed: int = 0, chunk: int = 50_000) -> float:
    """Write ``n`` synthetic stored images (image, face, embedding, journal row) into ``db``."""
    from facelab.facedb.store import now

    model, version = db.model_key
    dim = db.pipeline.embedder.dim
    rng = np.random.default_rng(seed)
    conn = db.store.conn
    t0 = time.perf_counter()
    stamp = now()
    with db.store.transaction():
        for a in range(0, n, chunk):
            m = min(chunk, n - a)
            ids = range(a + 1, a + m + 1)
            hashes = rng.integers(0, 2**63, m, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, m, dtype=np.uint64)
            vecs = rng.standard_normal((m, dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            shas = [hashlib.sha256(f"synthetic-{i}".encode()).hexdigest() for i in ids]
            conn.executemany(
                "INSERT INTO images (id, sha256, phash, source, path, width, height, added_at)"
                " VALUES (?, ?, ?, ?, NULL, 250, 250, ?)",
                [(i, s, f"{int(h):016x}", f"synthetic/{i}.jpg", stamp) for i, s, h in zip(ids, shas, hashes.tolist())])
            conn.executemany(
                "INSERT INTO faces (id, image_id, x1, y1, x2, y2, score, quality, stage)"
                " VALUES (?, ?, 60, 60, 180, 180, 0.99, 120, 'synthetic')", [(i, i) for i in ids])
            conn.executemany(
                "INSERT INTO embeddings (id, face_id, model, version, dim, vector) VALUES (?, ?, ?, ?, ?, ?)",
                [(i, i, model, version, dim, db.store.encode_vector(v)) for i, v in zip(ids, vecs)])
            conn.executemany(
                "INSERT INTO ingest_log (source, sha256, status, updated_at) VALUES (?, ?, 'added', ?)",
                [(f"/synthetic/{i}.jpg", s, stamp) for i, s in zip(ids, shas)])
    return time.perf_counter() - t0


def scan_near_duplicate(db, phash: str | None) -> int | None:
    """The lookup before the index: load and compare every stored hash (the baseline)."""
    if phash is None or db.config.phash_distance < 0:
        return None
    known = db.store.phashes()
    if not known:
        return None
    ids = np.array([k[0] for k in known])
    bits = np.array([int(k[1], 16) for k in known], dtype=np.uint64)
    ham = np.bitwise_count(np.bitwise_xor(bits, np.uint64(int(phash, 16))))
    best = int(np.argmin(ham))
    return int(ids[best]) if ham[best] <= db.config.phash_distance else None


class Timer:
    """Accumulates the wall and CPU time (this process, all threads) spent inside wrapped
    callables; CPU time is what other jobs on a shared machine disturb least."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu = 0.0

    def wrap(self, fn):
        def timed(*a, **k):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0
                self.cpu += time.process_time() - c0
        return timed


def run_ingest(db, sources, lookup: str) -> dict:
    """Ingest ``sources``; returns per-image timings (the models' share measured apart).

    Index saves are not timed inside the run (a run of a few hundred images would pay the
    last save in full, a crawl of millions once per ``save_interval`` images): one save of
    the final index is timed and charged to every image as save time / save interval.
    """
    from facelab.facedb.ingest import ingest

    work, models = Timer(), Timer()
    if lookup == "scan":
        db._near_duplicate = lambda phash: scan_near_duplicate(db, phash)
    emb = db.pipeline.embedder
    db._detect = models.wrap(db._detect)
    emb.embed_faces = models.wrap(emb.embed_faces)
    db.add_image = work.wrap(db.add_image)
    flush = db.flush
    db.flush = lambda: None
    t0 = time.perf_counter()
    rep = ingest(db, sources, progress=False)
    wall = time.perf_counter() - t0
    del emb.embed_faces, db.flush  # back to the classes' methods
    every = db.save_interval()
    db._dirty = True
    t0, c0 = time.perf_counter(), time.process_time()
    flush()
    save, save_cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(sources)
    per = work.seconds + n * save / every
    cpu = work.cpu + n * save_cpu / every - models.cpu
    return {"n": n, "counts": dict(rep.counts), "work": per, "models": models.seconds,
            "with": n / per, "without": n / max(per - models.seconds, 1e-9), "cpu_without": n / max(cpu, 1e-9),
            "startup": wall - work.seconds, "save": save, "every": every}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000, 1_000_000])
    ap.add_argument("--images", type=int, default=200, help="photos ingested per size")
    ap.add_argument("--folder", default=None, help="photos to ingest (default $FACELAB_DATA/lfw/images)")
    ap.add_argument("--detector", default="mtcnn")
    ap.add_argument("--embedder", default="dlib-resnet")
    ap.add_argument("--phash-distance", type=int, default=4)
    ap.add_argument("--scan-max", type=int, default=100_000, help="run the old scan baseline up to this size")
    ap.add_argument("--workdir", default=None, help="where the databases go (default: a temporary folder)")
    args = ap.parse_args()

    import torch

    from facelab.facedb.db import FaceDB, FaceDBConfig
    from facelab.facedb.ingest import IMAGE_EXTS, Source

    torch.set_num_threads(1)
    folder = Path(args.folder or Path(os.environ.get("FACELAB_DATA", "data")) / "lfw" / "images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)[: args.images]
    if len(files) < args.images:
        raise SystemExit(f"{folder}: {len(files)} images found, need {args.images}; pass --folder")
    for p in files:  # page cache warm for every run alike
        p.read_bytes()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="facelab-ingest-scale-"))
    cfg = FaceDBConfig(embedder=args.embedder, detector=args.detector, phash_distance=args.phash_distance)
    print(f"ingesting {len(files)} photos from {folder} ({args.detector} + {args.embedder}); stored part synthetic")
    print(f"{'stored':>9} {'lookup':>6} {'with models':>12} {'without':>10} {'ms/img w/o':>10} {'CPU ms':>7} "
          f"{'index save':>10} {'every':>6} {'open: faiss':>11} {'phash':>6} {'journal':>7}  outcomes")
    rates = {}
    try:
        warm = FaceDB.init(root / "warm-up" / "faces.db", cfg)  # imports, model loading: not timed
        run_ingest(warm, [Source(p) for p in files[:3]], "index")
        warm.close()
        for n in args.sizes:
            for lookup in (["scan"] if n <= args.scan_max else []) + ["index"]:
                path = root / f"n{n}-{lookup}" / "faces.db"
                db = FaceDB.init(path, cfg)
                populate(db, n)
                db.close()
                db = FaceDB(path)
                t0 = time.perf_counter()
                _ = db.index
                t_faiss = time.perf_counter() - t0
                t0 = time.perf_counter()
                if lookup == "index":
                    _ = db.phash_index
                t_phash = time.perf_counter() - t0
                sources = [Source(p) for p in files]
                r = run_ingest(db, sources, lookup)
                db.close()
                rates[(n, lookup)] = r
                ms = 1000 * (r["work"] - r["models"]) / r["n"]
                print(f"{n:>9,} {lookup:>6} {r['with']:>10.1f}/s {r['without']:>8.1f}/s {ms:>10.2f} "
                      f"{1000 / r['cpu_without']:>7.2f} "
                      f"{r['save']:>9.2f}s {r['every']:>6} {t_faiss:>10.1f}s {t_phash:>5.1f}s {r['startup']:>6.1f}s  "
                      + " ".join(f"{k}={v}" for k, v in sorted(r["counts"].items())), flush=True)
                shutil.rmtree(path.parent, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    lo, hi = min(args.sizes), max(args.sizes)
    if lo != hi:
        for key, what in (("with", "with models, wall"), ("without", "without models, wall"),
                          ("cpu_without", "without models, CPU")):
            a, b = rates[(lo, "index")][key], rates[(hi, "index")][key]
            print(f"index, {what}: rate at {hi:,} stored / rate at {lo:,} = {b / a:.2f}")


if __name__ == "__main__":
    main()
