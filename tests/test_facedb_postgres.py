"""The PostgreSQL backend against a real server started here (skips with a reason if it can't)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_person, write_image


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("initdb")
    return Path(exe).parent if exe else None


def _as_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]  # postgres refuses to run as root


@pytest.fixture(scope="module")
def pg_url():
    pytest.importorskip("psycopg", reason="psycopg not installed")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb) not found; run scripts/bootstrap.sh --with-postgres as root")
    if os.geteuid() == 0:
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run the server as")
    root = Path(tempfile.mkdtemp(prefix="facelab-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        for p in (root, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    try:
        subprocess.run(_as_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                                 "--auth=trust", "-E", "UTF8"]), check=True, capture_output=True, timeout=120)
        subprocess.run(_as_user([str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l",
                                 str(root / "log"), "-o", f"-k {sock} -c listen_addresses='' -p 54329",
                                 "start"]), check=True, capture_output=True, timeout=90)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        out = getattr(exc, "stderr", b"") or b""
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL server: {exc} {out.decode(errors='replace')[-300:]}")
    yield f"postgresql://postgres@/postgres?host={sock}&port=54329"
    subprocess.run(_as_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                   capture_output=True, timeout=60)
    shutil.rmtree(root, ignore_errors=True)


def test_postgres_store_roundtrip(pg_url, tmp_path):
    from facelab.facedb.db import FaceDB, FaceDBConfig
    from facelab.facedb.ingest import ingest, list_sources
    from facelab.facedb.schema import SCHEMA_VERSION

    cfg = FaceDBConfig(embedder="pixels", detector="whole", phash_distance=-1)
    db = FaceDB.init(pg_url, cfg, files_dir=tmp_path)
    assert db.store.schema_version() == SCHEMA_VERSION
    for s, name in enumerate(["ada", "bob"]):
        for v in range(2):
            write_image(tmp_path / "people" / name / f"{v}.png", synthetic_person(s, v))
    rep = ingest(db, list_sources(tmp_path / "people", identity_from="folder"), progress=False)
    assert rep.counts["added"] == 4
    assert ingest(db, list_sources(tmp_path / "people", identity_from="folder"), progress=False).counts["already-done"] == 4
    top = db.search(tmp_path / "people" / "bob" / "1.png", k=2)[0]
    assert [m["identity"] for m in top] == ["bob", "bob"] and top[0]["distance"] < 1e-5
    assert db.verify(synthetic_person(0, 5), "ada")["same"]
    ids, vecs = db.store.embeddings(*db.model_key)
    assert vecs.shape == (4, 128) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert db.delete_identity("ada")["embedding_ids"] == 2
    db.close()
    db2 = FaceDB(pg_url, files_dir=tmp_path)   # reopen: config, schema and index come back
    st = db2.stats()
    assert st["backend"] == "postgres" and st["identities"] == 1 and st["index"]["vectors"] == 2
    db2.close()
