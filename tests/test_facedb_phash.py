"""The near-duplicate index (multi-index hashing over perceptual hashes) against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_person, write_image

from facelab.facedb import phash_index
from facelab.facedb.db import FaceDB, FaceDBConfig
from facelab.facedb.phash_index import PhashIndex, hamming
from facelab.facedb.store import ImageRecord, SQLiteStore


def brute(ids: np.ndarray, bits: np.ndarray, q: int, radius: int) -> int | None:
    """The old scan: every stored hash, closest within the radius, lowest id on ties."""
    if radius < 0 or not len(ids):
        return None
    d = hamming(bits, q)
    best = d.min()
    return int(ids[d == best].min()) if best <= radius else None


def clustered(rng: np.random.Generator, n: int, centres: int = 40) -> np.ndarray:
    """Hashes in tight clusters (many near-duplicates and ties), like real photo collections."""
    c = rng.integers(0, 2**63, centres, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, centres, dtype=np.uint64)
    flips = np.zeros(n, np.uint64)
    for _ in range(3):
        flips |= np.uint64(1) << rng.integers(0, 64, n).astype(np.uint64)
    return c[rng.integers(0, centres, n)] ^ (flips * (rng.random(n) < 0.7).astype(np.uint64))


def jitter(rng: np.random.Generator, bits: np.ndarray, n: int) -> np.ndarray:
    """``n`` queries near stored hashes: 0-5 flipped bits."""
    out = bits[rng.integers(0, len(bits), n)].copy()
    for _ in range(5):
        out ^= (np.uint64(1) << rng.integers(0, 64, n).astype(np.uint64)) * (rng.random(n) < 0.5).astype(np.uint64)
    return out


@pytest.mark.parametrize("radius", [-1, 0, 1, 4, 7, 12])
def test_index_equals_brute_force(radius, monkeypatch):
    monkeypatch.setattr(phash_index, "MERGE_AT", 150)  # exercise the buffer and its merges
    rng = np.random.default_rng(radius + 10)
    bits = np.r_[clustered(rng, 1500), rng.integers(0, 2**63, 500, dtype=np.uint64)]
    ids = rng.permutation(5000)[: len(bits)].astype(np.int64) + 1
    idx = PhashIndex(radius)
    assert idx.scan_all == (radius < 0 or radius == 12)
    idx.build(ids[:700], bits[:700])
    for a in range(700, len(ids), 97):  # incremental additions, merged now and then
        idx.add(ids[a:a + 97], bits[a:a + 97])
    gone = ids[rng.choice(len(ids), 300, replace=False)]
    idx.remove(gone)
    keep = ~np.isin(ids, gone)
    queries = np.r_[jitter(rng, bits, 300), rng.integers(0, 2**63, 100, dtype=np.uint64), bits[:50]]
    hits = 0
    for q in queries.tolist():
        want = brute(ids[keep], bits[keep], q, radius)
        got = idx.nearest(q)
        assert (got[0] if got else None) == want
        if want is not None:
            assert got[1] == int(hamming(bits[ids == want], q)[0])
            hits += 1
    if radius >= 1:
        assert hits > 80  # the comparison covered real near-duplicates, not only misses
    assert len(idx) == int(keep.sum())


def _add_rows(store, first: int, bits: np.ndarray) -> list[int]:
    out = []
    with store.transaction():
        for n, b in enumerate(bits.tolist()):
            rec = ImageRecord(f"{first + n:064x}", "synthetic", None, f"{b:016x}", 8, 8)
            out.append(store.add_image(rec, [])[0])
    return out


def test_facedb_lookup_follows_other_writers_and_erasures(tmp_path):
    """Same answer as a scan of the database while another connection adds and erases rows."""
    db = FaceDB.init(tmp_path / "faces.db", FaceDBConfig(embedder="pixels", detector="whole", phash_distance=4))
    rng = np.random.default_rng(0)
    bits = clustered(rng, 600, centres=15)
    ids = _add_rows(db.store, 0, bits[:300])
    assert len(db.phash_index.index) == 300                      # built from the database
    other = SQLiteStore(tmp_path / "faces.db")                    # another process, same file
    ids += _add_rows(other, 300, bits[300:])
    erased = ids[::7]
    with other.transaction():
        for i in erased:
            other.execute("DELETE FROM images WHERE id = ?", (i,))
    other.close()
    rows = db.store.execute("SELECT id, phash FROM images")
    all_ids = np.array([r[0] for r in rows], np.int64)
    all_bits = np.array([int(r[1], 16) for r in rows], np.uint64)
    queries = np.r_[jitter(rng, bits, 200), rng.integers(0, 2**63, 50, dtype=np.uint64)]
    found = 0
    for q in queries.tolist():
        want = brute(all_ids, all_bits, q, 4)
        assert db._near_duplicate(f"{q:016x}") == want
        found += want is not None
    assert found > 100 and not set(erased) & {db._near_duplicate(f"{b:016x}") for b in bits.tolist()}
    db.update_config(phash_distance=0)                            # a new radius: a new index
    assert db._near_duplicate(f"{int(bits[1]):016x}") == brute(all_ids, all_bits, int(bits[1]), 0)
    db.close()


def test_ingest_skips_near_duplicates_through_the_index(tmp_path):
    db = FaceDB.init(tmp_path / "faces.db", FaceDBConfig(embedder="pixels", detector="whole",
                                                         fallback="whole", phash_distance=6))
    a = write_image(tmp_path / "a.png", synthetic_person(3, 0, size=64))
    b = write_image(tmp_path / "b.png", synthetic_person(3, 1, size=64))  # same pattern, new noise
    assert db.add_image(a).status == "added"
    res = db.add_image(b)
    assert res.status == "near-duplicate" and res.duplicate_of == 1
    db.close()
