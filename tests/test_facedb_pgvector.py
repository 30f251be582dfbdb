"""The face database on PostgreSQL with pgvector, against a real server started here.

The server is the one bundled by the ``pgserver`` wheel (PostgreSQL 16 with pgvector; the
dev extra installs it). As root, pgserver runs it as a system user ``pgserver`` it creates.
Skips with the reason when pgserver is missing or the server cannot start.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_person, write_image


@pytest.fixture(scope="module")
def pg_server():
    pytest.importorskip("psycopg", reason="psycopg not installed")
    pgserver = pytest.importorskip("pgserver", reason="pgserver not installed (pip install -e '.[dev]')")
    root = Path(tempfile.mkdtemp(prefix="facelab-pgvector-"))
    try:
        srv = pgserver.get_server(root, cleanup_mode="delete")
    except Exception as exc:  # noqa: BLE001  (any failure to start is a reason to skip)
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start pgserver's PostgreSQL: {exc}")
    yield srv
    srv.cleanup()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server, request):
    """A fresh database on the server, per test."""
    import psycopg

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    base = pg_server.get_uri()
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_server.get_uri(name)


def _cfg(kind: str = "hnsw"):
    from facelab.facedb.db import FaceDBConfig
    from facelab.facedb.index import IndexConfig

    return FaceDBConfig(embedder="pixels", detector="whole", fallback="whole", phash_distance=-1,
                        index=IndexConfig(kind=kind, hnsw_m=16, ef_construction=64, ef_search=64))


def test_replicas_share_enroll_search_verify_delete(pg_url, tmp_path):
    from facelab.facedb.db import FaceDB

    a = FaceDB.init(pg_url, _cfg(), files_dir=tmp_path / "a")
    b = FaceDB(pg_url, files_dir=tmp_path / "b")   # a second replica on the same database
    assert a.store.pgvector and b.store.pgvector and a.in_sql and b.in_sql
    photos = {name: [write_image(tmp_path / "in" / name / f"{v}.png", synthetic_person(s, v)) for v in range(2)]
              for s, name in enumerate(["ada", "bob", "cyd"])}
    assert b.search(photos["ada"][0], k=3) == [[]]            # B's index built while empty
    for name in ("ada", "bob"):
        assert [r.status for r in a.enroll(name, photos[name])] == ["added", "added"]
    # B sees A's enrollments at once: no rebuild, no local index file
    top = b.search(photos["ada"][1], k=3)[0]
    assert [m["identity"] for m in top[:2]] == ["ada", "ada"] and top[0]["distance"] < 1e-5
    assert b.verify(photos["ada"][0], "ada")["same"]
    assert not b.verify(photos["cyd"][0], "ada")["same"]
    nearest = b.verify(photos["bob"][0], "ada")["distance"]   # in SQL: MIN(embedding <=> q)
    ada = b.store.identity_embeddings("ada", *b.model_key)
    q = b.embed_query(photos["bob"][0])
    cos = ada @ q / np.linalg.norm(ada, axis=1) / np.linalg.norm(q)
    assert nearest == pytest.approx(float((1 - cos).min()), abs=1e-5)
    assert not list(tmp_path.rglob("*.faiss"))
    # the layout: a vector column, BYTEA column empty, an HNSW index with the cosine operator class
    kinds = dict(a.store.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'embeddings'::regclass AND attname IN ('vector', 'embedding')"))
    assert kinds == {"vector": "bytea", "embedding": "vector"}
    assert a.store.execute("SELECT COUNT(*) FROM embeddings WHERE vector IS NOT NULL")[0][0] == 0
    (indexdef,) = [r[0] for r in a.store.execute("SELECT indexdef FROM pg_indexes WHERE indexname LIKE 'facelab_vec_%'")]
    assert "hnsw" in indexdef and "vector_cosine_ops" in indexdef and "vector(128)" in indexdef
    st = b.stats()
    assert st["index"]["vectors"] == 4 and st["index"]["path"].startswith("postgresql index facelab_vec_")
    # erase through A: B no longer finds her, and no row holds her vector
    ada_vec = ada[0]
    out = a.delete_identity("ada")
    assert out["embedding_ids"] == 2 and out["vacuum"] == "plain"
    hits = b.search(photos["ada"][0], k=5)[0]
    assert "ada" not in [m["identity"] for m in hits] and len(hits) == 2
    left = b.store.execute("SELECT COUNT(*) FROM embeddings WHERE embedding <=> ?::vector < 1e-6",
                           (b.store.encode_vector(ada_vec),))[0][0]
    assert left == 0 and b.stats()["identities"] == 1
    # another index kind: the old index is dropped, the exact scan answers the same
    from facelab.facedb.index import IndexConfig

    a.update_config(index=IndexConfig(kind="flat"))
    assert a.index.name is None and a.index.location == "postgresql (exact scan)"
    assert not a.store.vector_indexes(*a.model_key)
    assert [m["identity"] for m in a.search(photos["bob"][0], k=2)[0]] == ["bob", "bob"]
    a.close()
    b.close()


def _random_store(url: str, n: int, dim: int, seed: int):
    from facelab.facedb.postgres import PostgresStore
    from facelab.facedb.store import FaceRecord, ImageRecord

    store = PostgresStore(url)
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    ids = []
    with store.transaction():
        for i, v in enumerate(x):
            faces = [FaceRecord(box=(0, 0, 1, 1), vectors={"rand:l2": v, "rand:cosine": v})]
            ids.append(store.add_image(ImageRecord(sha256=f"{seed}-{i}"), faces)[1])
    return store, x, np.array(ids)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_topk_equals_brute_force(pg_url, kind):
    from facelab.facedb.index import IndexConfig, PgVectorIndex

    n, dim, k = 400, 32, 5
    store, x, ids = _random_store(pg_url, n, dim, seed=3)
    queries = np.random.default_rng(4).standard_normal((60, dim)).astype(np.float32)
    for col, metric in enumerate(["l2", "cosine"]):
        idx = PgVectorIndex(store, "rand", metric, dim, metric,
                            IndexConfig(kind=kind, hnsw_m=16, ef_construction=64, ef_search=40))
        assert idx.ntotal == n and sorted(idx.ids) == sorted(ids[:, col])
        if metric == "l2":
            truth_d = np.linalg.norm(queries[:, None] - x[None], axis=2)
        else:
            xn = x / np.linalg.norm(x, axis=1, keepdims=True)
            qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
            truth_d = 1 - qn @ xn.T
        order = np.argsort(truth_d, axis=1)[:, :k]
        truth_ids = ids[:, col][order]
        if kind == "hnsw":
            # on 400 rows the planner rightly prefers an exact scan; make it use the HNSW index
            # (this also shows the query is written so the model's partial index matches it)
            store.execute("SET enable_seqscan = off")
            store.execute("SET enable_sort = off")
            assert idx.name in store.explain_search("rand", metric, dim, metric)
        dist, got = idx.search(queries, k)
        assert got.shape == (60, k) and (got >= 0).all()
        if kind == "flat":
            assert (got == truth_ids).all()
            assert np.allclose(dist, np.take_along_axis(truth_d, order, 1), atol=1e-5)
        else:
            assert float(np.mean(got[:, 0] == truth_ids[:, 0])) >= 0.99
            assert float(np.mean([len(set(g) & set(t)) / k for g, t in zip(got, truth_ids)])) >= 0.95
            assert store.execute("SHOW hnsw.ef_search")[0][0] == "40"
            store.execute("RESET enable_seqscan")
            store.execute("RESET enable_sort")
        # k beyond the stored rows pads with -1 / inf like the FAISS index
        d_all, i_all = idx.search(queries[:1], n + 3)
        assert (i_all[0, n:] == -1).all() and np.isinf(d_all[0, n:]).all()
    store.close()


def test_bytea_rows_move_into_the_vector_column(pg_url):
    from facelab.facedb.postgres import PostgresStore
    from facelab.facedb.store import FaceRecord, ImageRecord

    old = PostgresStore(pg_url, use_pgvector=False)      # a database written as BYTEA
    assert not old.pgvector
    x = np.random.default_rng(0).standard_normal((7, 16)).astype(np.float32)
    with old.transaction():
        for i, v in enumerate(x):
            old.add_image(ImageRecord(sha256=f"s{i}"), [FaceRecord(box=(0, 0, 1, 1), vectors={"m:1": v})])
    old.close()
    new = PostgresStore(pg_url)
    assert new.pgvector
    ids, vecs = new.embeddings("m", "1")
    assert len(ids) == 7 and np.array_equal(vecs, x)     # exact float32 round trip
    assert new.execute("SELECT COUNT(*) FROM embeddings WHERE vector IS NOT NULL OR embedding IS NULL")[0][0] == 0
    new.close()


def _writer(url: str, files: str, folder: str, names: list[str], shared: str, common: str) -> dict:
    from facelab.facedb.db import FaceDB

    db = FaceDB(url, files_dir=files)
    out = {}
    for name in names:
        out[name] = [r.status for r in db.enroll(name, sorted(Path(folder, name).glob("*.png")))]
    out["shared"] = [r.status for r in db.enroll("shared", [shared])]
    out["common"] = db.add_image(common).status
    db.close()
    return out


def test_concurrent_writers_lose_and_duplicate_nothing(pg_url, tmp_path):
    from facelab.facedb.db import FaceDB

    writers, per, photos = 3, 3, 2
    FaceDB.init(pg_url, _cfg(), files_dir=tmp_path / "files").close()
    common = write_image(tmp_path / "common.png", synthetic_person(999))
    jobs = []
    for w in range(writers):
        names = [f"w{w}p{i}" for i in range(per)]
        for i, name in enumerate(names):
            for v in range(photos):
                write_image(tmp_path / "in" / name / f"{v}.png", synthetic_person(100 * w + i, v))
        shared = write_image(tmp_path / "shared" / f"{w}.png", synthetic_person(500 + w))
        jobs.append((pg_url, str(tmp_path / "files"), str(tmp_path / "in"), names, str(shared), str(common)))
    with mp.get_context("spawn").Pool(writers) as pool:
        results = pool.starmap(_writer, jobs)
    assert all(s == ["added"] * photos for r in results for k, s in r.items() if k.startswith("w"))
    assert all(r["shared"] == ["added"] for r in results)
    assert sorted(r["common"] for r in results) == ["added"] + ["duplicate"] * (writers - 1)
    db = FaceDB(pg_url, files_dir=tmp_path / "files")
    st = db.stats()
    want_faces = writers * per * photos + writers + 1
    assert st["identities"] == writers * per + 1 and st["images"] == want_faces
    assert st["faces"] == want_faces and st["embeddings"] == want_faces
    assert db.store.execute("SELECT COUNT(DISTINCT sha256) FROM images")[0][0] == want_faces
    per_identity = dict(db.store.execute(
        "SELECT i.name, COUNT(*) FROM faces f JOIN identities i ON i.id = f.identity_id GROUP BY i.name"))
    assert per_identity == {**{f"w{w}p{i}": photos for w in range(writers) for i in range(per)}, "shared": writers}
    for w in range(writers):   # every enrollment is found by a reader on the same database
        assert db.search(tmp_path / "in" / f"w{w}p1" / "0.png", k=1)[0][0]["identity"] == f"w{w}p1"
    db.close()


def test_near_duplicate_index_on_postgres(pg_url, tmp_path):
    """The perceptual-hash index on PostgreSQL: same answer as a scan while another replica writes."""
    from test_facedb_phash import _add_rows, brute, clustered, jitter

    from facelab.facedb.db import FaceDB, FaceDBConfig
    from facelab.facedb.postgres import PostgresStore

    db = FaceDB.init(pg_url, FaceDBConfig(embedder="pixels", detector="whole", phash_distance=4), files_dir=tmp_path)
    rng = np.random.default_rng(1)
    bits = clustered(rng, 400, centres=12)
    ids = _add_rows(db.store, 0, bits[:200])
    assert len(db.phash_index.index) == 200
    other = PostgresStore(pg_url)
    ids += _add_rows(other, 200, bits[200:])
    with other.transaction():
        for i in ids[::5]:
            other.execute("DELETE FROM images WHERE id = ?", (i,))
    other.close()
    rows = db.store.execute("SELECT id, phash FROM images")
    all_ids = np.array([r[0] for r in rows], np.int64)
    all_bits = np.array([int(r[1], 16) for r in rows], np.uint64)
    found = 0
    for q in np.r_[jitter(rng, bits, 150), rng.integers(0, 2**63, 30, dtype=np.uint64)].tolist():
        want = brute(all_ids, all_bits, q, 4)
        assert db._near_duplicate(f"{q:016x}") == want
        found += want is not None
    assert found > 60
    db.close()


def test_writers_and_readers_at_once_lose_and_duplicate_nothing(pg_server):
    """benchmarks/pg_concurrency.py at a small size: 2 writer + 2 reader processes on one database."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "benchmarks" / "pg_concurrency.py"), "--url", pg_server.get_uri(),
           "--writers", "2", "--readers", "2", "--per-writer", "8", "--common", "3"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no lost or duplicated rows" in proc.stdout
    assert "added=19" in proc.stdout and "duplicate=3" in proc.stdout   # 2x8 own + 3 common, 3 repeats
