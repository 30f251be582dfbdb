"""Near-duplicate lookup over 64-bit perceptual hashes without scanning every stored image.

:class:`PhashIndex` answers "which stored hashes are within Hamming distance ``r`` of this
one?" exactly, by multi-index hashing: the 64 bits are cut into ``r + 1`` disjoint chunks, and
two hashes that differ in at most ``r`` bits agree on at least one whole chunk (pigeonhole).
Each chunk has a sorted table, so a lookup reads ``r + 1`` buckets (binary search) and measures
the Hamming distance of those candidates only, instead of the whole collection. Recent
additions sit in a small unsorted buffer (scanned directly) that is merged into the tables
when it grows.

:class:`StoredPhashes` keeps such an index in step with a face store: it is built from the
database on first use (like the vector index), catches up with rows other processes added
(an id range query), and confirms a hit still exists before reporting it (rows erased by
another process are dropped), so its answer equals a brute-force scan of the database:
the closest stored hash within the radius, the lowest image id among equally close ones.
"""

from __future__ import annotations

import numpy as np

BITS = 64
MERGE_AT = 8192  # buffered additions merged into the sorted tables beyond this many
MIN_CHUNK_BITS = 6  # narrower chunks hit too many rows: scan everything instead


def parse_hashes(hexes: list[str]) -> np.ndarray:
    """Hex perceptual hashes (imagehash's ``str``) as uint64.

    Example:
        >>> parse_hashes(["00000000000000ff"]).tolist()
        [255]
    """
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def hamming(bits: np.ndarray, q: int) -> np.ndarray:
    """Hamming distance of each uint64 in ``bits`` to ``q``."""
    return np.bitwise_count(np.bitwise_xor(bits, np.uint64(q))).astype(np.int64)


class PhashIndex:
    """Exact Hamming-radius search over (id, 64-bit hash) pairs.

    Example:
        >>> idx = PhashIndex(radius=4)
        >>> idx.add(np.array([1, 2]), np.array([0b1011, 2**63], dtype=np.uint64))
        >>> idx.nearest(0b1)
        (1, 2)
    """

    def __init__(self, radius: int) -> None:
        self.radius = int(radius)
        n = self.radius + 1
        width = BITS // n if 0 < n <= BITS else 0
        self.scan_all = self.radius < 0 or width < MIN_CHUNK_BITS
        # chunk c covers bits [lo, hi): the first BITS % n chunks are one bit wider
        self.chunks: list[tuple[int, int]] = []
        if not self.scan_all:
            lo = 0
            for c in range(n):
                hi = lo + width + (1 if c < BITS % n else 0)
                self.chunks.append((lo, hi))
                lo = hi
        self.ids = np.zeros(0, np.int64)  # merged rows (the sorted tables index these)
        self.bits = np.zeros(0, np.uint64)
        self._tables: list[tuple[np.ndarray, np.ndarray]] = []  # per chunk: (sorted keys, row order)
        self._new_ids: list[np.ndarray] = []
        self._new_bits: list[np.ndarray] = []
        self._removed: set[int] = set()

    def __len__(self) -> int:
        return len(self.ids) + sum(len(a) for a in self._new_ids) - len(self._removed)

    def _keys(self, bits: np.ndarray, lo: int, hi: int) -> np.ndarray:
        mask = np.uint64((1 << (hi - lo)) - 1)
        keys = np.right_shift(bits, np.uint64(lo)) & mask
        return keys.astype(np.uint16 if hi - lo <= 16 else np.uint32 if hi - lo <= 32 else np.uint64)

    def build(self, ids: np.ndarray, bits: np.ndarray) -> None:
        """Replace the contents with these rows."""
        self.ids = np.ascontiguousarray(ids, np.int64)
        self.bits = np.ascontiguousarray(bits, np.uint64)
        self._new_ids, self._new_bits, self._removed = [], [], set()
        self._tables = []
        for lo, hi in self.chunks:
            keys = self._keys(self.bits, lo, hi)
            order = np.argsort(keys, kind="stable")  # radix sort for 16-bit keys
            self._tables.append((keys[order], order))

    def add(self, ids: np.ndarray, bits: np.ndarray) -> None:
        """Add rows (ids not already present)."""
        ids = np.ascontiguousarray(ids, np.int64)
        if not len(ids):
            return
        self._removed.difference_update(int(i) for i in ids)
        self._new_ids.append(ids)
        self._new_bits.append(np.ascontiguousarray(bits, np.uint64))
        if sum(len(a) for a in self._new_ids) > MERGE_AT:
            self.merge()

    def merge(self) -> None:
        """Fold the buffered additions into the sorted tables."""
        if self._new_ids:
            keep = ~np.isin(self.ids, np.fromiter(self._removed, np.int64)) if self._removed else slice(None)
            self.build(np.concatenate([self.ids[keep], *self._new_ids]),
                       np.concatenate([self.bits[keep], *self._new_bits]))

    def remove(self, ids) -> None:
        """Forget rows (lazily: they stop matching at once)."""
        self._removed.update(int(i) for i in ids)

    def within(self, q: int) -> list[tuple[int, int]]:
        """[(distance, id)] of every row within the radius of ``q``, closest first, then by id."""
        if self.radius < 0:
            return []
        q = int(q)
        if self.scan_all or not len(self.ids):
            rows = np.arange(len(self.ids))
        else:
            qa = np.array([q], np.uint64)
            parts = []
            for (lo, hi), (keys, order) in zip(self.chunks, self._tables):
                key = self._keys(qa, lo, hi)[0]
                a, b = np.searchsorted(keys, key, "left"), np.searchsorted(keys, key, "right")
                if b > a:
                    parts.append(order[a:b])
            rows = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        ids = self.ids[rows]
        bits = self.bits[rows]
        if self._new_ids:
            ids = np.concatenate([ids, *self._new_ids])
            bits = np.concatenate([bits, *self._new_bits])
        d = hamming(bits, q)
        hit = d <= self.radius
        ids, d = ids[hit], d[hit]
        out = sorted(zip(d.tolist(), ids.tolist()))
        if self._removed:
            out = [t for t in out if t[1] not in self._removed]
        return out

    def nearest(self, q: int) -> tuple[int, int] | None:
        """(id, distance) of the closest row within the radius (lowest id on ties), or None."""
        hits = self.within(q)
        return (hits[0][1], hits[0][0]) if hits else None


class StoredPhashes:
    """A :class:`PhashIndex` over a face store's images, kept current with the database.

    ``lookback`` re-reads that many ids below the highest one seen on every catch-up: on
    PostgreSQL, concurrent transactions may commit ids out of order (SQLite's AUTOINCREMENT
    ids become visible in order, so 0 suffices there).
    """

    def __init__(self, store, radius: int, lookback: int = 0) -> None:
        self.store, self.lookback = store, int(lookback)
        self.index = PhashIndex(radius)
        self.high = 0
        self._recent: set[int] = set()  # ids within the lookback window already indexed
        rows = store.phashes()
        if rows:
            ids = np.array([r[0] for r in rows], np.int64)
            self.index.build(ids, parse_hashes([r[1] for r in rows]))
            self._note(ids)

    def _note(self, ids: np.ndarray) -> None:
        if len(ids):
            self.high = max(self.high, int(ids.max()))
        if self.lookback:
            floor = self.high - self.lookback
            self._recent = {i for i in self._recent if i > floor} | set(ids[ids > floor].tolist())

    def catch_up(self) -> int:
        """Index rows stored since the last look (by any process); returns how many."""
        rows = self.store.phashes(after=max(0, self.high - self.lookback))
        rows = [r for r in rows if r[0] not in self._recent] if self.lookback else rows
        if not rows:
            return 0
        ids = np.array([r[0] for r in rows], np.int64)
        self.index.add(ids, parse_hashes([r[1] for r in rows]))
        self._note(ids)
        return len(rows)

    def nearest(self, phash: str) -> int | None:
        """The stored image closest to ``phash`` within the radius (lowest id on ties), or None."""
        self.catch_up()
        hits = self.index.within(int(phash, 16))
        if not hits:
            return None
        alive = self.store.existing_images([i for _, i in hits])
        gone = [i for _, i in hits if i not in alive]
        if gone:  # erased by some process since they were indexed
            self.index.remove(gone)
        for _, i in hits:
            if i in alive:
                return i
        return None
