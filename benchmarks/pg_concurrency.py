"""Several writer and reader processes on one PostgreSQL (pgvector) face database at once.

Each of --writers processes ingests its own folder of --per-writer synthetic photos plus the
same --common photos as every other writer (identical bytes under other paths), through
``facelab.facedb.ingest.ingest`` (one transaction per file with its journal row). Meanwhile
--readers processes search random stored faces by vector (``FaceDB.search``, pgvector HNSW in
SQL) until the writers are done, and check every hit names a stored row. Then the database is
checked: every photo stored once (the common ones once in all), one face and one embedding
per photo, one journal row per (writer, file), each common photo "added" by one writer and
"duplicate" for the others. Prints writer images/s, reader queries/s and latency p50/p95, and
exits 1 when a row is lost or duplicated.

``--url auto`` starts the PostgreSQL+pgvector of the ``pgserver`` wheel in a temporary folder;
a postgresql:// URL uses that server (a database ``facelab_search_bench`` is created and
dropped).

Usage:
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/pg_concurrency.py --writers 3 --readers 2
    python benchmarks/pg_concurrency.py --url postgresql://localhost/postgres --writers 8 --readers 8
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_bench import pg_database  # noqa: E402  (the same temporary pgvector database)


def photo(seed: int, size: int = 48) -> np.ndarray:
    """A synthetic face-crop-sized RGB photo, distinct per seed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (12, 12, 3)).astype(np.uint8)
    img = np.kron(base, np.ones((size // 12, size // 12, 1), np.uint8))
    return np.clip(img.astype(int) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)


def save(path: Path, arr: np.ndarray) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return str(path)


def writer(url: str, files: str, folder: str) -> tuple[dict, tuple[float, float], int]:
    import torch

    from facelab.facedb.db import FaceDB
    from facelab.facedb.ingest import ingest, list_sources

    torch.set_num_threads(1)
    db = FaceDB(url, files_dir=files)
    sources = list_sources(folder)
    t0 = time.time()
    rep = ingest(db, sources, progress=False)
    span = (t0, time.time())
    db.close()
    return dict(rep.counts), span, len(sources)


def reader(url: str, files: str, stop, seed: int) -> tuple[list[tuple[float, float, int]], int]:
    import torch

    from facelab.facedb.db import FaceDB

    torch.set_num_threads(1)
    db = FaceDB(url, files_dir=files)
    rng = np.random.default_rng(seed)
    dim = db.pipeline.embedder.dim
    log, bad = [], 0  # (wall-clock start, seconds, hits) per search
    while not stop.is_set():
        q = rng.standard_normal(dim).astype(np.float32)
        start, t0 = time.time(), time.perf_counter()
        hits = db.search(q, k=5)[0]
        log.append((start, time.perf_counter() - t0, len(hits)))
        ids = [h["embedding_id"] for h in hits]
        if ids:  # every hit is a stored, complete row (face + image) at the time of reading
            got = db.store.describe_embeddings(ids)
            bad += sum(1 for i in ids if i not in got)
    db.close()
    return log, bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="auto", help="auto (pgserver) or a postgresql:// URL")
    ap.add_argument("--writers", type=int, default=3)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--per-writer", type=int, default=100)
    ap.add_argument("--common", type=int, default=10, help="photos every writer ingests")
    args = ap.parse_args()

    from facelab.facedb.db import FaceDB, FaceDBConfig
    from facelab.facedb.index import IndexConfig

    tmp = Path(tempfile.mkdtemp(prefix="facelab-pg-concurrency-"))
    for w in range(args.writers):
        for i in range(args.per_writer):
            save(tmp / "in" / f"w{w}" / f"p{i}.png", photo(10_000 * (w + 1) + i))
        for c in range(args.common):
            save(tmp / "in" / f"w{w}" / f"common{c}.png", photo(c))
    want_images = args.writers * args.per_writer + args.common
    ctx = mp.get_context("spawn")
    with pg_database(args.url) as url:
        cfg = FaceDBConfig(embedder="pixels", detector="whole", fallback="whole", phash_distance=4,
                           index=IndexConfig(kind="hnsw", hnsw_m=16, ef_construction=64, ef_search=64))
        FaceDB.init(url, cfg, files_dir=tmp / "files").close()
        stop = ctx.Manager().Event()
        with ctx.Pool(args.writers + args.readers) as pool:
            reads = [pool.apply_async(reader, (url, str(tmp / "files"), stop, r)) for r in range(args.readers)]
            writes = [pool.apply_async(writer, (url, str(tmp / "files"), str(tmp / "in" / f"w{w}")))
                      for w in range(args.writers)]
            wres = [w.get() for w in writes]
            stop.set()
            rres = [r.get() for r in reads]
        db = FaceDB(url, files_dir=tmp / "files")
        st = db.store.stats()
        distinct = db.store.execute("SELECT COUNT(DISTINCT sha256) FROM images")[0][0]
        journal = db.store.execute("SELECT COUNT(*) FROM ingest_log")[0][0]
        orphans = db.store.execute(
            "SELECT COUNT(*) FROM images im WHERE NOT EXISTS (SELECT 1 FROM faces f WHERE f.image_id = im.id)")[0][0]
        db.close()
    counts: dict = {}
    for c, _, _ in wres:
        for k, v in c.items():
            counts[k] = counts.get(k, 0) + v
    n_sources = sum(n for _, _, n in wres)
    first, last = min(s[0] for _, s, _ in wres), max(s[1] for _, s, _ in wres)
    wall = last - first  # from the first writer's first file to the last writer's last
    during = [(t, hits) for log, _ in rres for start, t, hits in log if first <= start <= last]
    lat = np.array([t for t, _ in during]) * 1000
    queries = len(during)
    empty = sum(1 for _, hits in during if hits == 0)
    bad = sum(b for _, b in rres)
    print(f"{args.writers} writers x {args.per_writer + args.common} photos ({args.common} common to all), "
          f"{args.readers} readers, one PostgreSQL database")
    print(f"writers: {n_sources} files in {wall:.1f} s = {n_sources / wall:.1f} files/s "
          f"({' '.join(f'{k}={v}' for k, v in sorted(counts.items()))})")
    if queries:
        print(f"readers: {queries} searches while writing = {queries / wall:.1f} queries/s, "
              f"p50 {np.percentile(lat, 50):.2f} ms, p95 {np.percentile(lat, 95):.2f} ms "
              f"({empty} returned no hit, e.g. before the first row was stored)")
    checks = {
        "images stored once each": st["images"] == distinct == want_images,
        "one face and one embedding per image": st["faces"] == st["embeddings"] == want_images and orphans == 0,
        "one journal row per file": journal == n_sources,
        "common photos added once, duplicates elsewhere": counts.get("added", 0) == want_images
        and counts.get("duplicate", 0) == (args.writers - 1) * args.common,
        "every search hit was a stored row": bad == 0,
    }
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    print(f"stored: images={st['images']} distinct={distinct} faces={st['faces']} embeddings={st['embeddings']} "
          f"journal={journal} (want {want_images} images, {n_sources} journal rows)")
    if not all(checks.values()):
        raise SystemExit(1)
    print("no lost or duplicated rows")


if __name__ == "__main__":
    main()
