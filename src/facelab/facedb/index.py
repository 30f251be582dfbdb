"""FAISS vector index over stored embeddings: exact ("flat") or approximate ("hnsw", "ivf"),
and :class:`PgVectorIndex`, the same interface answered by PostgreSQL with pgvector.

Vectors are keyed by their embedding row id, so search results map straight back to the
database. The index is a cache: it is saved beside the database (``<db>.<model>.faiss`` plus a
JSON sidecar) and can always be rebuilt from the stored embeddings.

Distances returned are in the model's metric: Euclidean for "l2", ``1 - cos`` for "cosine"
(vectors are L2-normalised and searched with L2, since ``|a-b|^2 = 2 - 2cos``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facelab.errors import ConfigError
from facelab.io.atomic import atomic_path

log = logging.getLogger(__name__)
KINDS = ("flat", "hnsw", "ivf")


@dataclass
class IndexConfig:
    """Which FAISS index to build.

    Attributes:
        kind: "flat" (exact), "hnsw" (graph, approximate) or "ivf" (inverted lists, approximate).
        hnsw_m: HNSW graph degree.
        ef_construction: HNSW build-time beam width.
        ef_search: HNSW query-time beam width (recall vs. latency).
        nlist: IVF list count (0 = about 4*sqrt(N)).
        nprobe: IVF lists visited per query.
    """

    kind: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int = 0
    nprobe: int = 32

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown index kind {self.kind!r}; choose one of {KINDS}")


class VectorIndex:
    """A FAISS index keyed by int64 ids.

    Example:
        >>> idx = VectorIndex(dim=4, metric="l2")
        >>> idx.build(np.array([7, 9]), np.eye(4, dtype=np.float32)[:2])
        >>> idx.search(np.eye(4, dtype=np.float32)[:1], k=1)[1].tolist()
        [[7]]
    """

    shared = False  # lives in this process (saved to local files), not in the database

    def __init__(self, dim: int, metric: str = "l2", config: IndexConfig | None = None) -> None:
        if metric not in ("l2", "cosine"):
            raise ConfigError(f"unknown metric {metric!r}; use 'l2' or 'cosine'")
        self.dim, self.metric = int(dim), metric
        self.config = config or IndexConfig()
        self.index = None
        self.ids = np.zeros(0, np.int64)

    def _prep(self, vecs: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(vecs, np.float32).reshape(-1, self.dim)
        if self.metric == "cosine":
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

    def _new(self, n: int):
        import faiss

        c = self.config
        if c.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatL2(self.dim))
        if c.kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, c.hnsw_m)
            base.hnsw.efConstruction = c.ef_construction
            base.hnsw.efSearch = c.ef_search
            return faiss.IndexIDMap2(base)
        nlist = c.nlist or max(1, min(int(4 * np.sqrt(max(n, 1))), max(1, n // 39)))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(self.dim), self.dim, nlist)
        ivf.nprobe = c.nprobe
        return ivf

    def build(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Replace the contents with (ids, vecs); trains IVF on the vectors themselves."""
        x = self._prep(vecs) if len(ids) else np.zeros((0, self.dim), np.float32)
        ids = np.ascontiguousarray(ids, np.int64)
        self.index = self._new(len(ids))
        if self.config.kind == "ivf" and len(ids):
            self.index.train(x)
        if len(ids):
            self.index.add_with_ids(x, ids)
        self.ids = ids.copy()

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Add vectors (IVF: an untrained index is rebuilt with them)."""
        if self.index is None or (self.config.kind == "ivf" and not self.index.is_trained):
            self.build(np.r_[self.ids, ids], np.r_[self.reconstruct_all(), self._prep(vecs)])
            return
        self.index.add_with_ids(self._prep(vecs), np.ascontiguousarray(ids, np.int64))
        self.ids = np.r_[self.ids, np.asarray(ids, np.int64)]

    def reconstruct_all(self) -> np.ndarray:
        if self.index is None or not len(self.ids):
            return np.zeros((0, self.dim), np.float32)
        if self.config.kind == "ivf":
            self.index.make_direct_map()
        return np.stack([self.index.reconstruct(int(i)) for i in self.ids])

    def remove(self, ids: list[int] | np.ndarray) -> bool:
        """Remove ids; returns False when this kind cannot delete (HNSW: rebuild instead)."""
        if self.index is None or not len(ids):
            return True
        if self.config.kind == "hnsw":
            return False
        import faiss

        sel = faiss.IDSelectorBatch(np.ascontiguousarray(ids, np.int64))
        self.index.remove_ids(sel)
        self.ids = self.ids[~np.isin(self.ids, np.asarray(ids, np.int64))]
        return True

    def search(self, queries: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """(distances (Q, k), ids (Q, k)); missing neighbours have id -1 and distance inf."""
        q = self._prep(queries)
        if self.ntotal == 0:
            return np.full((len(q), k), np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        d2, ids = self.index.search(q, min(k, self.ntotal))
        d2 = np.maximum(d2, 0)
        dist = np.sqrt(d2) if self.metric == "l2" else d2 / 2.0
        dist[ids < 0] = np.inf
        if ids.shape[1] < k:
            pad = k - ids.shape[1]
            dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return dist.astype(np.float32), ids

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Write ``path`` (FAISS) and ``path.json`` (config, ids checksum) atomically."""
        import faiss

        path = Path(path)
        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))
        meta = {"dim": self.dim, "metric": self.metric, "config": asdict(self.config),
                "count": len(self.ids), "checksum": ids_checksum(self.ids), **(extra or {})}
        Path(str(path) + ".json").write_text(json.dumps(meta, indent=1))
        np.save(str(path) + ".ids.npy", self.ids)

    @classmethod
    def load(cls, path: str | Path) -> tuple[VectorIndex, dict]:
        """Read an index written by :meth:`save`; returns (index, sidecar metadata)."""
        import faiss

        path = Path(path)
        meta = json.loads(Path(str(path) + ".json").read_text())
        idx = cls(meta["dim"], meta["metric"], IndexConfig(**meta["config"]))
        idx.index = faiss.read_index(str(path))
        idx.ids = np.load(str(path) + ".ids.npy")
        if idx.config.kind == "hnsw":
            faiss.downcast_index(idx.index.index).hnsw.efSearch = idx.config.ef_search
        return idx, meta


class PgVectorIndex:
    """The index inside PostgreSQL (pgvector): the same search interface as
    :class:`VectorIndex`, answered in SQL, so it is never stale and never saved locally.

    ``config.kind`` "hnsw" / "ivf" build that pgvector index for the model (``hnsw_m``,
    ``ef_construction``, ``nlist``; ``ef_search`` / ``nprobe`` apply at query time); "flat"
    searches exactly (sequential scan). Rows added or deleted through the store are in the
    index as soon as their transaction commits, for every process on the database.
    """

    shared = True

    def __init__(self, store, model: str, version: str, dim: int, metric: str = "l2",
                 config: IndexConfig | None = None) -> None:
        if metric not in ("l2", "cosine"):
            raise ConfigError(f"unknown metric {metric!r}; use 'l2' or 'cosine'")
        self.store, self.model, self.version = store, model, version
        self.dim, self.metric = int(dim), metric
        self.config = config or IndexConfig()
        c = self.config
        self.name = store.ensure_vector_index(model, version, self.dim, metric, c.kind, m=c.hnsw_m,
                                              ef_construction=c.ef_construction, nlist=c.nlist)

    @property
    def location(self) -> str:
        return f"postgresql index {self.name}" if self.name else "postgresql (exact scan)"

    @property
    def ntotal(self) -> int:
        return self.store.vector_count(self.model, self.version)

    @property
    def ids(self) -> np.ndarray:
        """Every stored id of the model (read from the database: always current)."""
        return self.store.vector_ids(self.model, self.version)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Nothing to do: PostgreSQL indexes the rows the store wrote."""

    def remove(self, ids: list[int] | np.ndarray) -> bool:
        """Nothing to do: deleting the rows removed them from the index."""
        return True

    def search(self, queries: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """(distances (Q, k), ids (Q, k)) as :meth:`VectorIndex.search`."""
        c = self.config
        return self.store.vector_search(
            self.model, self.version, self.dim, self.metric, queries, int(k),
            ef_search=c.ef_search if c.kind == "hnsw" else 0, probes=c.nprobe if c.kind == "ivf" else 0)


CHECKSUM_MOD = 1_000_000_007


def ids_checksum(ids: np.ndarray) -> str:
    """Order-independent fingerprint of an id set (count, sum, sum of squares mod p) used to
    detect a stale index; the store computes the same figure in SQL.

    Example:
        >>> ids_checksum(np.array([1, 2]))
        '2:3:5'
    """
    ids = np.asarray(ids, np.int64)
    if not ids.size:
        return "0:0:0"
    sq = int(np.sum((ids * ids) % CHECKSUM_MOD))
    return f"{ids.size}:{int(ids.sum())}:{sq}"
