"""`--engine ray`: analyze and db ingest as Ray Data pipelines on a local 2-CPU Ray instance, on
real photos, with a worker killed midway: the results equal the local engine's, no row twice,
none missing. Skips without Ray (pip install -e '.[ray]') or without $FACELAB_DATA."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import real_data



def test_engine_choice_and_missing_ray_are_one_line_errors(monkeypatch):
    import sys

    from facelab.cli.engines import check_engine
    from facelab.engine.ray_jobs import connect
    from facelab.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown engine 'spark'"):
        check_engine("spark")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ConfigError, match=r"pip install 'facelab\[ray\]'"):
        connect()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    lfw = real_data("lfw") / "images"
    people = sorted(p for p in lfw.iterdir() if p.is_dir())[:40]
    files = [f for p in people for f in sorted(p.glob("*.jpg"))][:14]
    root = tmp_path_factory.mktemp("photos")
    out = []
    for f in files:  # a folder of our own, identity folders kept
        dest = root / f.parent.name / f.name
        dest.parent.mkdir(exist_ok=True)
        dest.symlink_to(f)
        out.append(dest)
    return out


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray", reason="Ray not installed (pip install -e '.[ray]')")
    pytest.importorskip("ray.data", reason="Ray Data not installed (pip install -e '.[ray]')")
    import ray

    from facelab.engine.ray_jobs import connect

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    yield connect(None, 2)
    ray.shutdown()


def _kill_a_worker_when(ready, job) -> int | None:
    """Run ``job`` in a thread; once ``ready()`` holds, SIGKILL one Ray actor process of it."""
    import psutil

    errors: list[BaseException] = []

    def run():
        try:
            job()
        except BaseException as exc:  # noqa: BLE001  (re-raised below)
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    killed = None
    while t.is_alive() and killed is None:
        if ready():
            for p in psutil.process_iter(["pid", "cmdline"]):
                if "MapBatches(" in " ".join(p.info["cmdline"] or []):
                    os.kill(p.info["pid"], signal.SIGKILL)
                    killed = p.info["pid"]
                    break
        time.sleep(0.05)
    t.join()
    if errors:
        raise errors[0]
    return killed


def _lines(path: Path) -> int:
    return sum(1 for _ in open(path)) if path.exists() else 0


def test_analyze_on_ray_with_a_worker_killed_equals_local(photos, cluster, tmp_path):
    from facelab.analyze.analyzer import FaceAnalyzer
    from facelab.analyze.batch import analyze_paths
    from facelab.engine.ray_jobs import analyze_on_ray

    folder = photos[0].parent.parent
    opts = {"detector": "mtcnn", "embedder": "dlib-resnet"}
    local = analyze_paths(FaceAnalyzer(**opts), [folder], tmp_path / "local.csv", with_embedding=True)
    out = tmp_path / "ray.csv"
    res = {}
    killed = _kill_a_worker_when(
        lambda: _lines(out) > 3,
        lambda: res.setdefault("s", analyze_on_ray(opts, [folder], out, with_embedding=True, workers=2,
                                                   batch_size=2)))
    assert killed is not None, "the job ended before a worker could be killed"
    assert res["s"].done == local.done == len(photos) and not res["s"].failed
    a = pd.read_csv(tmp_path / "local.csv").sort_values(["source", "face"]).reset_index(drop=True)
    b = pd.read_csv(out).sort_values(["source", "face"]).reset_index(drop=True)
    assert not b.duplicated(["source", "face"]).any() and set(b["source"]) == set(a["source"])
    pd.testing.assert_frame_equal(a.drop(columns=["embedding", "landmarks", "x1", "y1", "x2", "y2", "score"]),
                                  b.drop(columns=["embedding", "landmarks", "x1", "y1", "x2", "y2", "score"]))
    assert np.allclose(a[["x1", "y1", "x2", "y2", "score"]], b[["x1", "y1", "x2", "y2", "score"]], atol=1e-3)
    ea = np.array([eval(e) for e in a["embedding"]])
    eb = np.array([eval(e) for e in b["embedding"]])
    assert np.abs(ea - eb).max() < 1e-3
    again = analyze_on_ray(opts, [folder], out, workers=2)  # a rerun: all done already
    assert again.done == 0 and again.skipped == len(photos) and _lines(out) == len(b) + 1


def test_ingest_on_ray_with_a_worker_killed_equals_local(photos, cluster, tmp_path):
    from facelab.engine.ray_jobs import ingest_on_ray
    from facelab.facedb.db import FaceDB, FaceDBConfig
    from facelab.facedb.ingest import ingest, list_sources

    folder = photos[0].parent.parent
    cfg = FaceDBConfig(detector="mtcnn", embedder="dlib-resnet")
    sources = list_sources(folder, identity_from="folder")
    with FaceDB.init(tmp_path / "local.db", cfg) as db:
        local = ingest(db, sources, progress=False)
    db = FaceDB.init(tmp_path / "ray.db", cfg)
    res = {}

    def journaled() -> int:
        import sqlite3

        with sqlite3.connect(tmp_path / "ray.db") as c:
            return c.execute("SELECT COUNT(*) FROM ingest_log").fetchone()[0]

    killed = _kill_a_worker_when(lambda: journaled() >= 2,
                                 lambda: res.setdefault("r", ingest_on_ray(db, sources, progress=False,
                                                                           workers=2, batch_size=2)))
    assert killed is not None, "the job ended before a worker could be killed"
    assert res["r"].counts == local.counts, (res["r"].counts, local.counts)

    def content(d: FaceDB) -> dict:
        rows = d.store.execute(
            "SELECT im.sha256, i.name, e.vector FROM images im JOIN faces f ON f.image_id = im.id"
            " LEFT JOIN identities i ON i.id = f.identity_id JOIN embeddings e ON e.face_id = f.id")
        return {(sha, name): d.store.decode_vector(v, 128) for sha, name, v in rows}

    with FaceDB(tmp_path / "local.db") as ldb:
        a, b = content(ldb), content(db)
        assert set(a) == set(b) and len(b) == db.store.stats()["faces"]           # none missing, none twice
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-3
        assert sorted(db.store.journal_sources()) == sorted(ldb.store.journal_sources())
        journal = dict(db.store.execute("SELECT source, status FROM ingest_log"))
        assert journal == dict(ldb.store.execute("SELECT source, status FROM ingest_log"))
    assert db.index.ntotal == len(b)                                               # rebuilt by the driver
    again = ingest_on_ray(db, sources, progress=False, workers=2)
    assert again.counts["already-done"] == len(sources) and sum(again.counts.values()) == len(sources)
    db.close()
