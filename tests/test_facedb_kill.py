"""Killing an ingest with SIGKILL midway, then rerunning it, loses nothing and duplicates nothing."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facelab.facedb.db import FaceDB, FaceDBConfig

N_UNIQUE = 500
N_DUPES = 30


def _facelab() -> list[str]:
    exe = Path(sys.executable).with_name("facelab")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from facelab.cli import main; main()"]


def _count(db: Path, sql: str) -> int:
    try:
        conn = sqlite3.connect(db, timeout=5)
        try:
            return int(conn.execute(sql).fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def test_kill9_then_resume(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_UNIQUE):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(src / f"{i:05d}.png")
    for i in range(N_DUPES):  # byte-identical copies under other names
        shutil.copyfile(src / f"{i:05d}.png", src / f"dup_{i:05d}.png")
    db_path = tmp_path / "faces.db"
    FaceDB.init(db_path, FaceDBConfig(embedder="pixels", detector="whole", phash_distance=-1)).close()
    cmd = _facelab() + ["db", "ingest", str(db_path), str(src), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if _count(db_path, "SELECT COUNT(*) FROM ingest_log") >= 80:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"ingest finished before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = _count(db_path, "SELECT COUNT(*) FROM ingest_log")
    assert 80 <= done_at_kill < N_UNIQUE + N_DUPES

    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"already-done={done_at_kill}" in res.stdout

    db = FaceDB(db_path)
    st = db.stats()
    assert st["images"] == N_UNIQUE                      # nothing lost, no duplicate image
    assert st["faces"] == N_UNIQUE and st["embeddings"] == N_UNIQUE
    assert st["ingest"] == {"added": N_UNIQUE, "duplicate": N_DUPES}
    assert db.index.ntotal == N_UNIQUE                   # index rebuilt/caught up, no double entries
    assert len(set(db.index.ids.tolist())) == N_UNIQUE
    stored = {Path(p) for (p,) in db.store.execute("SELECT path FROM images")}
    on_disk = set((db.files / "images").rglob("*.png"))
    assert stored == on_disk                             # no orphan or missing managed copies
    crops = {Path(p) for (p,) in db.store.execute("SELECT crop_path FROM faces")}
    assert crops == set((db.files / "crops").rglob("*.jpg"))
    # a third run has nothing left to do
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert f"already-done={N_UNIQUE + N_DUPES}" in res.stdout
