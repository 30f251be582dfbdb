"""Face database: storage, migrations, index, enroll/search/verify/delete, ingest."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_person, write_image

from facelab.facedb.db import FaceDB, FaceDBConfig
from facelab.facedb.index import IndexConfig, VectorIndex
from facelab.facedb.ingest import ingest, list_sources
from facelab.facedb.schema import SCHEMA_VERSION
from facelab.facedb.store import DatabaseError, SQLiteStore


def _db(tmp_path: Path, kind: str = "flat", phash: int = -1) -> FaceDB:
    cfg = FaceDBConfig(embedder="pixels", detector="whole", index=IndexConfig(kind=kind),
                       phash_distance=phash)
    return FaceDB.init(tmp_path / "faces.db", cfg)


def test_schema_version_and_wal(tmp_path):
    store = SQLiteStore(tmp_path / "a.db")
    assert store.schema_version() == SCHEMA_VERSION
    assert store.execute("PRAGMA journal_mode")[0][0] == "wal"
    store.close()


def test_migration_from_v1(tmp_path):
    """A v1 database (no ingest journal) is upgraded in place, keeping its rows."""
    from facelab.facedb.schema import MIGRATIONS, dialect

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for stmt in MIGRATIONS[0]:
        conn.execute(dialect(stmt, "sqlite"))
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO identities (name, created_at) VALUES ('old', 'x')")
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    assert store.identity_id("old") is not None
    assert store.execute("SELECT COUNT(*) FROM ingest_log")[0][0] == 0


def test_newer_schema_refused(tmp_path):
    path = tmp_path / "new.db"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseError, match="newer"):
        SQLiteStore(path)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_search_save_load(tmp_path, kind):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    ids = np.arange(100, 600)
    idx = VectorIndex(16, "l2", IndexConfig(kind=kind, nprobe=64))
    idx.build(ids, x)
    d, found = idx.search(x[:20], k=3)
    assert (found[:, 0] == ids[:20]).mean() >= 0.95
    assert np.allclose(d[:, 0][found[:, 0] == ids[:20]], 0, atol=1e-3)
    idx.save(tmp_path / "i.faiss")
    idx2, meta = VectorIndex.load(tmp_path / "i.faiss")
    assert meta["count"] == 500
    assert (idx2.search(x[:20], 3)[1] == found).all()


def test_enroll_search_verify_delete(tmp_path):
    db = _db(tmp_path)
    files = {name: [write_image(tmp_path / "in" / f"{name}{v}.png", synthetic_person(s, v)) for v in range(3)]
             for s, name in enumerate(["ada", "bob", "cy"])}
    for name, paths in files.items():
        res = db.enroll(name, paths)
        assert [r.status for r in res] == ["added"] * 3
    probe = write_image(tmp_path / "probe.png", synthetic_person(1, 99))
    top = db.search(probe, k=3)[0]
    assert top[0]["identity"] == "bob"
    assert top[0]["distance"] <= top[1]["distance"]
    assert db.verify(probe, "bob")["same"]
    assert not db.verify(probe, "ada")["same"]
    # re-adding the same bytes is a duplicate, not a second image
    assert db.add_image(files["ada"][0]).status == "duplicate"
    stats = db.stats()
    assert stats["images"] == 9 and stats["embeddings"] == 9 and stats["index"]["vectors"] == 9

    crops = [Path(r[0]) for r in db.store.execute(
        "SELECT crop_path FROM faces f JOIN identities i ON i.id=f.identity_id WHERE i.name='bob'")]
    copies = [Path(r[0]) for r in db.store.execute(
        "SELECT im.path FROM images im JOIN faces f ON f.image_id=im.id JOIN identities i "
        "ON i.id=f.identity_id WHERE i.name='bob'")]
    assert all(p.is_file() for p in crops + copies)
    removed = db.delete_identity("bob")
    assert removed["embedding_ids"] == 3
    assert not any(p.exists() for p in crops + copies)
    assert db.store.identity_id("bob") is None
    assert db.index.ntotal == 6
    assert all(m["identity"] != "bob" for m in db.search(probe, k=6)[0])
    db.close()
    # reopening uses the saved index, which matches the database
    db2 = FaceDB(tmp_path / "faces.db")
    assert db2.index.ntotal == 6
    assert db2.stats()["identities"] == 2


def test_delete_with_hnsw_rebuilds(tmp_path):
    db = _db(tmp_path, kind="hnsw")
    for s, name in enumerate(["ada", "bob"]):
        db.enroll(name, [write_image(tmp_path / f"{name}{v}.png", synthetic_person(s, v)) for v in range(2)])
    db.delete_identity("ada")
    assert db.index.ntotal == 2
    assert {m["identity"] for m in db.search(synthetic_person(0, 7), k=5)[0]} == {"bob"}


def test_stale_index_is_rebuilt(tmp_path):
    db = _db(tmp_path)
    db.enroll("ada", [write_image(tmp_path / "a.png", synthetic_person(0))])
    db.close()
    db = FaceDB(tmp_path / "faces.db")
    db.enroll("bob", [write_image(tmp_path / "b.png", synthetic_person(1))])  # index not flushed yet ...
    db.store.close()                                           # ... as if the process died
    db = FaceDB(tmp_path / "faces.db")
    assert db.index.ntotal == 2


def test_near_duplicate_by_phash(tmp_path):
    db = _db(tmp_path, phash=6)
    a = write_image(tmp_path / "a.png", synthetic_person(3, 0, size=64))
    b = write_image(tmp_path / "b.png", synthetic_person(3, 1, size=64))  # same pattern, new noise
    c = write_image(tmp_path / "c.png", synthetic_person(4, 0, size=64))
    assert db.add_image(a).status == "added"
    assert db.add_image(b).status == "near-duplicate"
    assert db.add_image(c).status == "added"


def test_ingest_folder_and_csv(tmp_path):
    db = _db(tmp_path)
    for s, name in enumerate(["ada", "bob"]):
        for v in range(2):
            write_image(tmp_path / "people" / name / f"{v}.png", synthetic_person(s, v))
    (tmp_path / "people" / "bob" / "broken.jpg").write_bytes(b"not an image")
    rep = ingest(db, list_sources(tmp_path / "people", identity_from="folder"), progress=False)
    assert rep.counts["added"] == 4 and rep.counts["failed"] == 1
    assert db.store.identity_id("ada") is not None
    rep2 = ingest(db, list_sources(tmp_path / "people", identity_from="folder"), progress=False)
    assert rep2.counts["already-done"] == 5 and rep2.counts["added"] == 0
    csv = tmp_path / "list.csv"
    write_image(tmp_path / "x.png", synthetic_person(9))
    csv.write_text("path,identity,source,license\nx.png,zed,http://example.org/x.png,CC0\n")
    rep3 = ingest(db, list_sources(csv), progress=False)
    assert rep3.counts["added"] == 1
    row = db.store.execute("SELECT source, license FROM images WHERE source LIKE 'http%'")
    assert row == [("http://example.org/x.png", "CC0")]


def test_a_database_keeps_the_dlib_backend_its_vectors_were_made_with(tmp_path):
    """An existing dlib database (options without "net") is pinned to dlib's own network, so
    the new ONNX default cannot make it search an empty set; an empty one takes the default."""
    import json
    import sqlite3

    from facelab.embed.dlib_resnet import DlibEmbedConfig
    from facelab.facedb.db import FaceDB, FaceDBConfig

    for name, with_vector, expected in (("old.db", True, "dlib"), ("new.db", False, DlibEmbedConfig().net)):
        path = tmp_path / name
        FaceDB.init(path, FaceDBConfig(embedder="dlib-resnet", detector="whole")).close()
        con = sqlite3.connect(path)
        cfg = json.loads(con.execute("SELECT value FROM meta WHERE key='config'").fetchone()[0])
        cfg["embedder_options"] = {}  # as databases made before the backend option stored it
        con.execute("UPDATE meta SET value=? WHERE key='config'", (json.dumps(cfg),))
        if with_vector:
            con.execute("INSERT INTO images (id, sha256, path, width, height, added_at) "
                        "VALUES (1, 'h', 'p', 1, 1, 't')")
            con.execute("INSERT INTO faces (id, image_id) VALUES (1, 1)")
            con.execute("INSERT INTO embeddings (face_id, model, version, dim, vector) "
                        "VALUES (1, 'dlib-resnet', 'v1-j0-f1-p0.25-occnone-shape5', 128, x'00')")
        con.commit()
        con.close()
        db = FaceDB(path)
        assert db.config.embedder_options["net"] == expected
        if with_vector:
            assert db.model_key == ("dlib-resnet", "v1-j0-f1-p0.25-occnone-shape5")
        db.close()
        assert FaceDB(path).config.embedder_options["net"] == expected  # stored, stable
