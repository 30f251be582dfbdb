"""Search benchmark: FAISS exact / IVF-flat / HNSW vs brute-force NumPy on 1M 128-d vectors.

Two query sets:
  random  1,000 vectors from the same distribution as the 1M random gallery;
  lfw     real LFW embeddings (any embedder; an .npz of paths + vectors): for each person with
          >= 2 images the first image is enrolled into the gallery (beside the random
          distractors, drawn from a Gaussian fitted to the LFW embeddings so they sit in the
          same region), the others query.
Figures: index build time (--build-threads), p50/p95 single-query latency (--threads, batch
size 1), recall@1 against exact search, and for lfw the rank-1 identification rate.

pgvector column: the same gallery loaded (COPY) into facelab's PostgreSQL layout (images,
faces, embeddings with a ``vector`` column) and searched through ``PostgresStore.vector_search``
(one SQL query per vector, as FaceDB.search does): an exact scan, then the per-model HNSW index
(--hnsw-m, --ef-construction; build time is CREATE INDEX with --build-threads - 1 parallel
workers) at each --ef-search. ``--pgvector auto`` starts the PostgreSQL+pgvector bundled by the
``pgserver`` wheel in a temporary folder; a postgresql:// URL uses that server (a database
``facelab_search_bench`` is created and dropped); ``off`` skips it. Skipped with the reason when
unavailable, or when the gallery is larger than --pg-max-n.

Usage (embeddings.npz from `facelab verify-eval ... --out runs/lfw` or
`benchmarks/mobilefacenet_eval.py ... --embeddings-out`):
    OMP_NUM_THREADS=1 python benchmarks/search_bench.py --n 1000000 --lfw runs/lfw/embeddings.npz
    OMP_NUM_THREADS=1 python benchmarks/search_bench.py --n 100000 --nlist 1024 --pgvector auto"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def latencies(fn, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, times = [], []
    for q in queries:
        t = time.perf_counter()
        ids.append(fn(q[None]))
        times.append(time.perf_counter() - t)
    return np.array(ids), np.array(times) * 1000


def numpy_search(gallery: np.ndarray, norms: np.ndarray):
    def fn(q: np.ndarray) -> int:
        d = norms - 2.0 * (gallery @ q[0])
        return int(np.argmin(d))

    return fn


def faiss_search(index):
    def fn(q: np.ndarray) -> int:
        return int(index.search(q, 1)[1][0, 0])

    return fn


def build_indexes(x: np.ndarray, args):
    """Yield (name, index or (kind, index, param), build seconds) as each index is built, so a
    long run prints its rows as it goes. ``--hnsw-m 0`` / ``--nlist 0`` skip a kind."""
    import faiss

    t = time.perf_counter()
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    yield "faiss-flat (exact)", flat, time.perf_counter() - t
    for nlist in args.nlist:
        if nlist <= 0:
            continue
        t = time.perf_counter()
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(x.shape[1]), x.shape[1], nlist)
        ivf.train(x[np.random.default_rng(1).choice(len(x), min(len(x), args.train_per_list * nlist), replace=False)])
        ivf.add(x)
        build = time.perf_counter() - t
        for nprobe in args.nprobe:
            if nprobe <= nlist:
                yield f"faiss-ivf{nlist} nprobe{nprobe}", ("ivf", ivf, nprobe), build
        del ivf
    if args.hnsw_m > 0:
        t = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(x.shape[1], args.hnsw_m)
        hnsw.hnsw.efConstruction = args.ef_construction
        hnsw.add(x)
        build = time.perf_counter() - t
        for ef in args.ef_search:
            yield f"faiss-hnsw M{args.hnsw_m} efC{args.ef_construction} ef{ef}", ("hnsw", hnsw, ef), build


def run(gallery: np.ndarray, queries: np.ndarray, args, label: str, truth_ids=None) -> None:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    norms = np.einsum("ij,ij->i", gallery, gallery)
    print(f"\n## {label}: gallery {len(gallery):,} x {gallery.shape[1]}, {len(queries)} queries; "
          f"build threads {args.build_threads}, query threads {args.threads}, batch size 1")
    print(f"{'method':34s} {'build s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'recall@1':>9s}"
          + (" rank1-id" if truth_ids is not None else ""), flush=True)
    exact_all = faiss_search_all(gallery, queries)

    def report(name: str, build: float, t: np.ndarray, ids: np.ndarray) -> None:
        recall = float(np.mean(ids == exact_all[: len(ids)]))
        line = f"{name:34s} {build:8.1f} {np.percentile(t, 50):8.2f} {np.percentile(t, 95):8.2f} {recall:9.4f}"
        if truth_ids is not None:
            line += f" {np.mean(ids == truth_ids[: len(ids)]):8.4f}"
        print(line, flush=True)

    nq_np = min(len(queries), args.numpy_queries)
    ids, t_np = latencies(numpy_search(gallery, norms), queries[:nq_np])
    report(f"numpy brute force ({nq_np} q)", 0.0, t_np, ids)
    faiss.omp_set_num_threads(args.build_threads)
    for name, obj, build in build_indexes(gallery, args):
        faiss.omp_set_num_threads(args.threads)
        if isinstance(obj, tuple):
            kind, index, param = obj
            if kind == "hnsw":
                index.hnsw.efSearch = param
            else:
                index.nprobe = param
        else:
            index = obj
        ids, t = latencies(faiss_search(index), queries)
        report(name, build, t, ids)
        faiss.omp_set_num_threads(args.build_threads)
    pgvector_rows(gallery, queries, args, report)


@contextmanager
def pg_database(target: str):
    """A URL of an empty database on a PostgreSQL server with pgvector (dropped afterwards)."""
    import psycopg

    srv, root = None, None
    if target == "auto":
        import pgserver

        root = Path(tempfile.mkdtemp(prefix="facelab-search-bench-pg-"))
        srv = pgserver.get_server(root, cleanup_mode="delete")
        base = srv.get_uri()
    else:
        base = target
    name = "facelab_search_bench"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    if "://" in base:  # a URL stays a URL (FaceDB opens postgresql:// URLs, not key=value strings)
        from urllib.parse import urlsplit, urlunsplit

        url = urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    else:
        url = psycopg.conninfo.make_conninfo(base, dbname=name)
    try:
        yield url
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if srv is not None:
            srv.cleanup()
            shutil.rmtree(root, ignore_errors=True)


def load_pg(store, gallery: np.ndarray, model: str, version: str) -> None:
    """COPY the gallery into images / faces / embeddings (embedding id i+1 = gallery row i)."""
    from facelab.facedb.postgres import vector_text

    n, dim = gallery.shape
    cur = store.conn.cursor()
    with cur.copy("COPY images (id, sha256, added_at) FROM STDIN") as cp:
        for i in range(1, n + 1):
            cp.write_row((i, f"bench-{i}", "0"))
    with cur.copy("COPY faces (id, image_id) FROM STDIN") as cp:
        for i in range(1, n + 1):
            cp.write_row((i, i))
    with cur.copy("COPY embeddings (id, face_id, model, version, dim, embedding) FROM STDIN") as cp:
        for i, v in enumerate(gallery, 1):
            cp.write_row((i, i, model, version, dim, vector_text(v)))
    store.execute("ANALYZE embeddings")


def pgvector_rows(gallery: np.ndarray, queries: np.ndarray, args, report) -> None:
    """The pgvector rows of the table: exact scan, then HNSW at each --ef-search."""
    if args.pgvector == "off":
        return
    if len(gallery) > args.pg_max_n:
        print(f"pgvector: skipped, gallery {len(gallery):,} > --pg-max-n {args.pg_max_n:,}", flush=True)
        return
    try:
        from facelab.facedb.postgres import PostgresStore

        ctx = pg_database(args.pgvector)
        url = ctx.__enter__()
    except Exception as exc:  # noqa: BLE001  (no pgserver / no server: say why, keep the FAISS rows)
        print(f"pgvector: skipped ({type(exc).__name__}: {exc})", flush=True)
        return
    try:
        store = PostgresStore(url)
        if not store.pgvector:
            print("pgvector: skipped (the server has no 'vector' extension)", flush=True)
            return
        model, version, dim = "bench", "l2", gallery.shape[1]
        t = time.perf_counter()
        load_pg(store, gallery, model, version)
        print(f"   (pgvector: COPY of {len(gallery):,} rows took {time.perf_counter() - t:.1f} s; "
              f"server {store.execute('SHOW server_version')[0][0]})", flush=True)

        def search_fn(q: np.ndarray) -> int:
            return int(store.vector_search(model, version, dim, "l2", q, 1, ef_search=ef)[1][0, 0]) - 1

        ef = 0
        nq = min(len(queries), args.pg_exact_queries)
        ids, t_ex = latencies(search_fn, queries[:nq])
        report(f"pgvector exact scan ({nq} q)", 0.0, t_ex, ids)
        if args.hnsw_m > 0:
            store.execute(f"SET max_parallel_maintenance_workers = {max(0, args.build_threads - 1)}")
            t = time.perf_counter()
            name = store.ensure_vector_index(model, version, dim, "l2", "hnsw", m=args.hnsw_m,
                                             ef_construction=args.ef_construction)
            build = time.perf_counter() - t
            if name not in store.explain_search(model, version, dim, "l2", k=1):
                print("   (pgvector: the planner does not use the HNSW index for this query)", flush=True)
            for ef in args.ef_search:
                ids, t = latencies(search_fn, queries)
                report(f"pgvector-hnsw M{args.hnsw_m} efC{args.ef_construction} ef{ef}", build, t, ids)
        store.close()
    finally:
        ctx.__exit__(None, None, None)


def faiss_search_all(gallery: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatL2(gallery.shape[1])
    flat.add(gallery)
    return flat.search(queries, 1)[1][:, 0]


def lfw_sets(npz: Path, n_random: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = np.load(npz)
    paths, vecs = data["paths"], data["vectors"].astype(np.float32)
    person = np.array([Path(str(p)).parent.name for p in paths])
    gal_idx, q_idx, q_truth = [], [], []
    for name in np.unique(person):
        idx = np.flatnonzero(person == name)
        if len(idx) < 2:
            continue
        gal_idx.append(idx[0])
        q_idx += list(idx[1:])
        q_truth += [len(gal_idx) - 1] * (len(idx) - 1)
    mean, cov = vecs.mean(0), np.cov(vecs, rowvar=False)
    noise = rng.multivariate_normal(mean, cov, size=n_random).astype(np.float32)
    gallery = np.concatenate([vecs[gal_idx], noise])
    return gallery, vecs[q_idx], np.array(q_truth)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000, help="random queries; cap on LFW queries")
    ap.add_argument("--numpy-queries", type=int, default=200)
    ap.add_argument("--lfw", type=Path, default=None, help="embeddings.npz from verify-eval --out")
    ap.add_argument("--hnsw-m", type=int, default=32, help="0: no HNSW")
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--nlist", type=int, nargs="+", default=[4096], help="IVF list counts (0: no IVF)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--train-per-list", type=int, default=64, help="k-means training points per IVF list")
    ap.add_argument("--threads", type=int, default=1, help="FAISS threads while querying")
    ap.add_argument("--build-threads", type=int, default=1, help="FAISS threads while building")
    ap.add_argument("--skip-random", action="store_true")
    ap.add_argument("--pgvector", default="auto",
                    help="auto (pgserver's bundled PostgreSQL+pgvector), a postgresql:// URL, or off")
    ap.add_argument("--pg-max-n", type=int, default=200_000, help="skip pgvector for larger galleries")
    ap.add_argument("--pg-exact-queries", type=int, default=50, help="queries for the exact SQL scan")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    if not args.skip_random:
        gallery = rng.standard_normal((args.n, args.dim), dtype=np.float32)
        queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
        run(gallery, queries, args, "random N(0, I) vectors")
        del gallery
    if args.lfw:
        gallery, queries, truth = lfw_sets(args.lfw, args.n, rng)
        if len(queries) > args.queries:  # a fixed random subset keeps the exact-search rows affordable
            keep = np.sort(rng.choice(len(queries), args.queries, replace=False))
            queries, truth = queries[keep], truth[keep]
        run(gallery, queries, args, f"LFW embeddings {args.lfw} + random distractors", truth)


if __name__ == "__main__":
    main()
