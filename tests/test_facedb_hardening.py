"""Face database hardening: "no face" is a result, complete erasure, and input/CLI edge cases.

Images are made in code: a "person" is a fixed random 8x8 pattern scaled up (as in
tests/test_facedb.py); the `test-tiles` detector below finds one face per 48x48 tile that
is not flat, so a grey image has no face and two people side by side are two faces.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import facelab.cli.db  # noqa: F401  (registers the commands)
from facelab.cli import app
from facelab.detect import Detector, register_detector
from facelab.errors import FacelabError
from facelab.facedb.db import FaceDB, FaceDBConfig
from facelab.facedb.index import VectorIndex
from facelab.facedb.ingest import ingest, list_sources
from facelab.types import Face

runner = CliRunner()
TILE = 48


@register_detector("test-tiles")
class TileDetector(Detector):
    """One face per non-flat 48x48 tile (left to right, top to bottom)."""

    def _detect_one(self, image: np.ndarray) -> list[Face]:
        out = []
        for y in range(0, image.shape[0] - TILE + 1, TILE):
            for x in range(0, image.shape[1] - TILE + 1, TILE):
                if image[y:y + TILE, x:x + TILE].std() > 15:
                    out.append(Face((float(x), float(y), float(x + TILE), float(y + TILE)), 0.99))
        return out


def _person(seed: int, variant: int = 0, size: int = TILE) -> np.ndarray:
    base = np.random.default_rng(seed).integers(0, 255, (8, 8, 3)).astype(np.float32)
    img = np.kron(base, np.ones((size // 8, size // 8, 1)))
    noise = np.random.default_rng(1000 * seed + variant).normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _grey(size: int = 64, level: int = 128) -> np.ndarray:
    return np.full((size, size, 3), level, np.uint8)


def _write(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _db(tmp_path: Path, **kw) -> FaceDB:
    cfg = FaceDBConfig(embedder="pixels", detector=kw.pop("detector", "test-tiles"), phash_distance=-1, **kw)
    return FaceDB.init(tmp_path / "faces.db", cfg)


def _one_line_error(res) -> None:
    assert res.exit_code != 0
    assert isinstance(res.exception, (FacelabError, SystemExit)), repr(res.exception)
    if isinstance(res.exception, FacelabError):
        assert "\n" not in str(res.exception)


# -- A: no face is not a face --------------------------------------------------------------------
def test_no_face_is_refused_for_enroll_verify_and_search(tmp_path):
    from facelab.facedb.db import NoFaceError

    db = _db(tmp_path)  # default fallback
    grey1 = _write(tmp_path / "grey1.png", _grey(level=120))
    grey2 = _write(tmp_path / "grey2.png", _grey(level=130))
    tiny = _write(tmp_path / "tiny.png", np.full((1, 1, 3), 7, np.uint8))
    with pytest.raises(FacelabError, match="no face"):
        db.enroll("alice", [grey1])
    assert db.store.identity_id("alice") is None and db.stats()["images"] == 0
    db.enroll("alice", [_write(tmp_path / "a.png", _person(1))])
    with pytest.raises(NoFaceError, match="grey1.png"):
        db.verify(grey1, grey2)
    with pytest.raises(NoFaceError):
        db.search(tiny, k=3)
    with pytest.raises(NoFaceError):
        db.verify(tiny, "alice")
    # the CLI says so in one line
    res = runner.invoke(app, ["db", "search", str(tmp_path / "faces.db"), str(tiny)])
    _one_line_error(res)
    assert "no face" in str(res.exception)


def test_whole_image_fallback_is_an_explicit_option(tmp_path):
    crop = _write(tmp_path / "crop.png", _person(2, size=40))  # smaller than a tile: never detected
    db = _db(tmp_path / "default")
    with pytest.raises(FacelabError, match="no face"):
        db.enroll("ann", [crop])
    dbp = str(tmp_path / "crops.db")
    res = runner.invoke(app, ["db", "init", dbp, "--embedder", "pixels", "--detector", "test-tiles",
                              "--fallback", "whole", "--phash-distance", "-1"])
    assert res.exit_code == 0, res.output
    crops = FaceDB(dbp)
    assert crops.config.fallback == "whole"
    assert [r.status for r in crops.enroll("ann", [crop])] == ["added"]
    # even then, a blank or 1-pixel image is no face
    with pytest.raises(FacelabError, match="no face"):
        crops.search(_write(tmp_path / "g.png", _grey()), k=1)


def test_several_faces_are_reported_and_chosen_never_silently_picked(tmp_path):
    from facelab.facedb.db import AmbiguousFaceError

    db = _db(tmp_path)
    db.enroll("ann", [_write(tmp_path / "ann.png", _person(3))])
    db.enroll("bob", [_write(tmp_path / "bob.png", _person(4))])
    pair = _write(tmp_path / "pair.png", np.concatenate([_person(3, 1), _person(4, 1)], axis=1))
    with pytest.raises(AmbiguousFaceError, match="2 faces"):
        db.search(pair, k=1)
    both = db.search(pair, k=1, face="all")
    assert [r[0]["identity"] for r in both] == ["ann", "bob"]
    assert db.search(pair, k=1, face=1)[0][0]["identity"] == "bob"
    assert db.verify(pair, "bob", face=1)["same"]
    with pytest.raises(FacelabError, match="2 faces"):
        db.enroll("cy", [pair])
    out = runner.invoke(app, ["db", "search", str(tmp_path / "faces.db"), str(pair), "-k", "1", "--face", "all"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0].startswith("query_face,rank")


# -- B: complete erasure -------------------------------------------------------------------------
def _needles(db: FaceDB, name: str) -> dict[str, bytes]:
    rows = db.store.execute(
        "SELECT im.sha256, im.source, im.path, f.crop_path, e.vector FROM images im"
        " JOIN faces f ON f.image_id = im.id JOIN identities i ON i.id = f.identity_id"
        " JOIN embeddings e ON e.face_id = f.id WHERE i.name = ?", (name,))
    assert rows
    out = {"name": name.encode()}
    for n, (sha, source, path, crop, vec) in enumerate(rows):
        out[f"sha{n}"] = sha.encode()
        out[f"source{n}"] = source.encode()
        out[f"path{n}"] = Path(path).name.encode()
        out[f"crop{n}"] = Path(crop).name.encode()
        v = np.frombuffer(vec, np.float32)
        out[f"vector{n}"] = v.tobytes()[:64]
        out[f"vector_index{n}"] = (v / np.linalg.norm(v)).astype(np.float32).tobytes()[:64]
    return out


def _db_files(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith("faces.")
            or p.is_file() and "faces.files" in p.parts]


def test_delete_leaves_no_trace_in_any_database_file(tmp_path):
    db = _db(tmp_path, detector="whole")
    assert db.store.execute("PRAGMA secure_delete")[0][0] == 1
    assert db.store.execute("PRAGMA auto_vacuum")[0][0] == 2  # incremental, new database
    people = tmp_path / "people"
    for v in range(2):
        _write(people / "zqalice" / f"{v}.png", _person(5, v))
        _write(people / "bob" / f"{v}.png", _person(6, v))
    (people / "zqalice" / "copy.png").write_bytes((people / "zqalice" / "0.png").read_bytes())  # duplicate row
    (people / "zqalice" / "broken.jpg").write_bytes(b"not an image")  # failed row
    rep = ingest(db, list_sources(people, identity_from="folder"), progress=False)
    assert rep.counts["added"] == 4 and rep.counts["duplicate"] == 1 and rep.counts["failed"] == 1
    needles = _needles(db, "zqalice")
    other = sqlite3.connect(tmp_path / "faces.db")  # a second connection, open during the delete
    assert other.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 4
    removed = db.delete_identity("zqalice")
    assert removed["embedding_ids"] == 2 and removed["journal_rows"] == 4 and removed["wal_truncated"]
    files = _db_files(tmp_path)
    assert any(p.suffix == ".faiss" for p in files) and any(p.name == "faces.db" for p in files)
    for p in files:
        data = p.read_bytes()
        for what, needle in needles.items():
            assert needle not in data, f"{what} of the erased person found in {p}"
            assert needle.decode(errors="ignore") not in str(p) or what.startswith("vector"), (what, p)
    assert other.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 2
    other.close()
    assert db.search(_person(6, 9), k=5)[0][0]["identity"] == "bob"


def test_ingest_running_during_delete_does_not_write_the_erased_vectors_back(tmp_path):
    db = _db(tmp_path, detector="whole")
    db.enroll("alice", [_write(tmp_path / "a.png", _person(7))])
    db.enroll("bob", [_write(tmp_path / "b.png", _person(8))])
    alice = db.store.identity_embeddings("alice", *db.model_key)[0]
    db.close()
    ingesting = FaceDB(tmp_path / "faces.db")
    assert ingesting.add_image(_write(tmp_path / "c.png", _person(9))).status == "added"  # not flushed yet
    deleter = FaceDB(tmp_path / "faces.db")
    deleter.delete_identity("alice")
    deleter.close()
    ingesting.close()  # flushes its index, which was loaded while alice existed
    idx, _ = VectorIndex.load(ingesting.index_path)
    vecs = idx.reconstruct_all()
    assert len(vecs) == 2
    assert np.linalg.norm(vecs - alice, axis=1).min() > 1e-3
    assert sorted(idx.ids.tolist()) == sorted(FaceDB(tmp_path / "faces.db").store.embeddings(
        *ingesting.model_key)[0].tolist())


# -- C: calibration, inputs, concurrency, CLI ------------------------------------------------------
def _pairs_csv(tmp_path: Path, n_same: int, n_diff: int, flip_first: bool = False) -> Path:
    rows = ["image_a,image_b,same"]
    for i in range(max(n_same, n_diff)):
        a = _write(tmp_path / "pairs" / f"p{i}_0.png", _person(100 + i, 0)).name
        b = _write(tmp_path / "pairs" / f"p{i}_1.png", _person(100 + i, 1)).name
        if i < n_same:
            rows.append(f"{a},{b},{0 if (flip_first and i == 0) else 1}")
        if i < n_diff:
            c = f"p{(i + 1) % max(n_same, n_diff)}_0.png" if max(n_same, n_diff) > 1 else b
            rows.append(f"{a},{c},0")
    path = tmp_path / "pairs" / "pairs.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_calibrate_refuses_too_few_pairs_and_reports_an_interval(tmp_path):
    db = _db(tmp_path, detector="whole")
    dbp = str(tmp_path / "faces.db")
    one = _pairs_csv(tmp_path / "one", 1, 0, flip_first=True)  # a single, mislabelled pair
    res = runner.invoke(app, ["db", "calibrate", dbp, str(one)])
    _one_line_error(res)
    assert "need at least 20" in str(res.exception)
    assert db.store.threshold(*db.model_key) is None
    enough = _pairs_csv(tmp_path / "many", 22, 22)
    res = runner.invoke(app, ["db", "calibrate", dbp, str(enough)])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "bootstrap interval" in res.output
    assert db.store.threshold(*db.model_key) is not None


def test_enroll_reads_regular_files_only_and_caps_bytes(tmp_path):
    db = _db(tmp_path, detector="whole", max_image_bytes=2000)
    big = _write(tmp_path / "big.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert big.stat().st_size > 2000
    with pytest.raises(FacelabError, match="limit"):
        db.enroll("x", [big])
    with pytest.raises(FacelabError, match="not a regular file"):
        db.enroll("x", ["/dev/zero"])
    with pytest.raises(FacelabError, match="not a regular file"):
        db.search(tmp_path, k=1)


def test_concurrent_ingest_of_the_same_file_counts_a_duplicate(tmp_path):
    winner = _db(tmp_path, detector="whole")
    loser = FaceDB(tmp_path / "faces.db")
    img = _write(tmp_path / "in" / "a.png", _person(10))
    real = loser.store.image_by_hash
    calls = []

    def racing(sha):  # the loser checks, then the winner commits the same bytes
        calls.append(sha)
        if len(calls) == 1:
            assert winner.add_image(img).status == "added"
            return None
        return real(sha)

    loser.store.image_by_hash = racing
    rep = ingest(loser, list_sources(tmp_path / "in"), progress=False)
    assert rep.counts["duplicate"] == 1 and not rep.failed
    assert loser.stats()["images"] == 1


def test_ingest_exits_nonzero_when_every_file_failed(tmp_path):
    dbp = str(tmp_path / "faces.db")
    _db(tmp_path, detector="whole").close()
    for n in range(2):
        (tmp_path / "bad" / f"{n}.jpg").parent.mkdir(exist_ok=True)
        (tmp_path / "bad" / f"{n}.jpg").write_bytes(b"garbage")
    res = runner.invoke(app, ["db", "ingest", dbp, str(tmp_path / "bad"), "--no-progress"])
    assert res.exit_code == 1 and "failed=2" in res.output


def test_init_refuses_an_unknown_detector(tmp_path):
    res = runner.invoke(app, ["db", "init", str(tmp_path / "f.db"), "--embedder", "pixels", "--detector", "nope"])
    _one_line_error(res)
    assert "nope" in str(res.exception) and "mtcnn" in str(res.exception)
    assert not (tmp_path / "f.db").exists()


def test_init_refuses_a_bad_embedder_checkpoint(tmp_path):
    # found trying a hostile file: the embedder loads lazily, so init used to accept it
    # and every later ingest failed image by image
    bad = tmp_path / "weights.pt"
    bad.write_text("root:x:0:0:root:/root:/bin/bash\n")
    res = runner.invoke(app, ["db", "init", str(tmp_path / "f.db"), "--embedder", "mfn-student",
                              "--embedder-checkpoint", str(bad)])
    _one_line_error(res)
    assert "weights.pt" in str(res.exception)
    assert not (tmp_path / "f.db").exists()
    # a student that ships no weights and is given none: refused at init too
    res = runner.invoke(app, ["db", "init", str(tmp_path / "f.db"), "--embedder", "mfn-student"])
    _one_line_error(res)
    assert "not found" in str(res.exception) and not (tmp_path / "f.db").exists()


def test_enroll_is_all_or_nothing(tmp_path):
    db = _db(tmp_path, detector="whole")
    good1 = _write(tmp_path / "g1.png", _person(11, 0))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    good2 = _write(tmp_path / "g2.png", _person(11, 1))
    res = runner.invoke(app, ["db", "enroll", str(tmp_path / "faces.db"), "ann", str(good1), str(bad), str(good2)])
    _one_line_error(res)
    assert "bad.jpg" in str(res.exception) and "nothing enrolled" in str(res.exception)
    st = db.stats()
    assert st["identities"] == 0 and st["images"] == 0 and st["index"]["vectors"] == 0
    assert [r.status for r in db.enroll("ann", [good1, good2])] == ["added", "added"]


def test_enrolling_a_photo_stored_under_another_identity_says_so(tmp_path):
    db = _db(tmp_path, detector="whole")
    photo = _write(tmp_path / "p.png", _person(12))
    db.enroll("ann", [photo])
    with pytest.raises(FacelabError, match="already stored under identity 'ann'"):
        db.enroll("bob", [photo])
    assert db.store.identity_id("bob") is None
    assert [r.status for r in db.enroll("ann", [photo])] == ["duplicate"]  # same identity: fine


def test_bad_k_and_bad_csvs_are_one_line_errors(tmp_path):
    dbp = str(tmp_path / "faces.db")
    db = _db(tmp_path, detector="whole")
    probe = _write(tmp_path / "a.png", _person(13))
    db.enroll("ann", [probe])
    db.close()
    res = runner.invoke(app, ["db", "search", dbp, str(probe), "-k", "0"])
    _one_line_error(res)
    assert "-k" in res.output
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,identity\na.png,Jos\xe9\n".encode("latin-1"))
    for cmd in ("ingest", "calibrate"):
        for csv, words in ((empty, "empty"), (latin, "UTF-8")):
            res = runner.invoke(app, ["db", cmd, dbp, str(csv)])
            _one_line_error(res)
            assert words in str(res.exception), (cmd, csv, res.exception)
