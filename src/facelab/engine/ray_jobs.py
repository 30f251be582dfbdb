"""`facelab analyze` and `facelab db ingest` as Ray Data pipelines (``--engine ray``).

The driver (the process running the command) lists the inputs, drops those already done
(the analyze output / the ingest journal), and streams the rest through ``map_batches`` over
an actor pool: each actor loads the models once (a :class:`FaceAnalyzer`, or a
:class:`FaceDB` opened on the same database) and handles a batch of files.

Exactly once, with workers or the driver killed:

* analyze: actors return each input's rows; the driver alone writes them, one input at a
  time with one write call, and skips inputs already in the output file. A batch whose
  actor died is redone by Ray on a restarted actor, and its rows reach the driver once, from
  the attempt that finished. A rerun after the driver died skips what was written.
* ingest: actors write the database themselves, each file in one transaction with its
  journal row (as the local engine does); images are unique by content hash, and an actor
  skips a file already journaled, so a batch redone after a crash adds nothing twice and a
  rerun picks up only the files not journaled. Actors leave the FAISS index alone; the driver
  rebuilds it from the database at the end (pgvector: nothing to rebuild).

Ray is an optional dependency (``pip install 'facelab[ray]'``). Without ``address`` a local
Ray instance is started with ``workers`` CPUs; with one (``ray://host:10001`` or
``host:6379``, or "auto" on a cluster node) the job runs there, and every node needs
facelab installed and the inputs (and a SQLite database / image copies) on a shared path.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from facelab.errors import ConfigError

log = logging.getLogger(__name__)


def connect(address: str | None = None, workers: int | None = None):
    """The ``ray`` module, connected to a cluster (``address``) or to a local instance started
    here with ``workers`` CPUs; a clear error when Ray is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is the "data" extra)
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data ({exc}); install it with "
                          "pip install 'facelab[ray]' (or pip install 'ray[data]'), or use --engine local") from exc
    if not ray.is_initialized():
        opts: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            ray.init(address=address, **opts)
        else:  # local workers import the facelab this driver runs (a source checkout too)
            import os

            here = str(Path(__file__).resolve().parents[2])
            path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
            ray.init(num_cpus=workers, object_store_memory=256 * 1024 * 1024,
                     runtime_env={"env_vars": {"PYTHONPATH": path}}, **opts)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


def _pool(ray, workers: int | None, blocks: int) -> int:
    """Actor-pool size: ``workers``, else the cluster's CPUs; no more than there are batches."""
    return max(1, min(blocks, int(workers or ray.cluster_resources().get("CPU", 1))))


def _pipeline(ray, items: list[dict], actor: type, kwargs: dict, workers: int | None,
              batch_size: int) -> Iterator[dict]:
    blocks = max(1, -(-len(items) // batch_size))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    pool = ray.data.ActorPoolStrategy(size=_pool(ray, workers, blocks))
    # Ray Data restarts a dead actor (max_restarts=-1) and redoes its batch (max_task_retries=-1)
    # by default for actor pools; tests/test_engine_ray.py kills one to hold it to that
    out = ds.map_batches(actor, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="pandas",
                         compute=pool, num_cpus=1)
    return out.iter_rows()


# -- analyze --------------------------------------------------------------------------------------
class AnalyzeActor:
    """One Ray worker of `facelab analyze`: a FaceAnalyzer loaded once, inputs in batches."""

    def __init__(self, analyzer: dict, every: float, max_frames: int | None, annotate: str | None,
                 with_embedding: bool, tracker_options: dict | None) -> None:
        from facelab.analyze.analyzer import FaceAnalyzer

        a = dict(analyzer)
        threads = a.pop("threads", 1)
        import torch

        torch.set_num_threads(threads)
        self.analyzer = FaceAnalyzer(**a)
        self.opts = (every, max_frames, annotate, with_embedding)
        self.tracker_options = tracker_options

    def __call__(self, batch):
        import pandas as pd

        from facelab.analyze.batch import AnalyzeSummary, analyze_one, is_video
        from facelab.errors import FacelabError

        every, max_frames, annotate, with_embedding = self.opts
        out = []
        for path, short in zip(batch["path"], batch["short"]):
            s = AnalyzeSummary()
            tracked = self.tracker_options is not None and is_video(Path(path))
            try:
                rows, track_rows = analyze_one(self.analyzer, Path(path), short, every, max_frames, annotate,
                                               with_embedding, s, self.tracker_options if tracked else None)
                out.append({"path": path, "rows": json.dumps(rows), "tracks": json.dumps(track_rows),
                            "error": "", "frames": s.frames, "faces": s.faces,
                            "partial": next(iter(s.partial.values()), "")})
            except FacelabError as exc:
                out.append({"path": path, "rows": "[]", "tracks": "null", "error": str(exc), "frames": 0,
                            "faces": 0, "partial": ""})
        return pd.DataFrame(out)


def analyze_on_ray(analyzer: dict, paths: list[str | Path], out: str | Path, every: float = 1.0,
                   max_frames: int | None = None, annotate: str | Path | None = None,
                   with_embedding: bool = False, progress: Callable[[int, int], None] | None = None,
                   tracks: str | Path | None = None, tracker_options: dict | None = None,
                   address: str | None = None, workers: int | None = None, batch_size: int = 4):
    """:func:`facelab.analyze.batch.analyze_paths` on Ray. ``analyzer`` holds the keyword
    arguments of :class:`FaceAnalyzer` (names and paths, not objects: each actor builds its own).

    Example:
        >>> analyze_on_ray({"detector": "mtcnn", "attributes": "runs/mt"}, ["photos/"],
        ...                "faces.csv", workers=2)                      # doctest: +SKIP
    """
    from facelab.analyze.batch import ResultSink, list_inputs, output_columns

    out = Path(out)
    inputs = list_inputs(paths)
    attributes, identities = analyzer.get("attributes") is not None, analyzer.get("db") is not None
    sink = ResultSink(out, output_columns(attributes, identities, with_embedding, tracks is not None),
                      tracks, attributes, identities)
    summary = sink.summary
    todo = [{"path": str(p), "short": short} for p, short in inputs if str(p) not in sink.done]
    summary.skipped = len(inputs) - len(todo)
    try:
        if todo:
            ray = connect(address, workers)
            kwargs = {"analyzer": {"threads": 1, **analyzer}, "every": every, "max_frames": max_frames,
                      "annotate": None if annotate is None else str(annotate), "with_embedding": with_embedding,
                      "tracker_options": (tracker_options or {}) if tracks is not None else None}
            for n, r in enumerate(_pipeline(ray, todo, AnalyzeActor, kwargs, workers, batch_size), 1):
                if r["error"]:
                    sink.fail(r["path"], r["error"])
                else:
                    summary.frames += int(r["frames"])
                    summary.faces += int(r["faces"])
                    if r["partial"]:
                        summary.partial[r["path"]] = r["partial"]
                    sink.add(r["path"], json.loads(r["rows"]), json.loads(r["tracks"]))
                if progress:
                    progress(summary.skipped + n, len(inputs))
    finally:
        sink.close()
    return summary


# -- ingest ---------------------------------------------------------------------------------------
class IngestActor:
    """One Ray worker of `facelab db ingest`: the database and its models opened once."""

    def __init__(self, database: str, files_dir: str | None, face: str | int | None, retry_failed: bool) -> None:
        import torch

        from facelab.facedb.db import FaceDB

        torch.set_num_threads(1)
        self.db = FaceDB(database, files_dir=files_dir)
        self.db.defer_index = True
        self.face, self.retry_failed = face, retry_failed

    def __call__(self, batch):
        import pandas as pd

        from facelab.facedb.ingest import Source, ingest_one

        out = []
        for row in batch.to_dict("records"):
            src = Source(Path(row["path"]), row["identity"] or None, row["source"] or None, row["license"] or None)
            status = self.db.store.journal_status(src.key)
            if status is not None and not (self.retry_failed and status == "failed"):
                # done by an attempt of this batch that died before returning: its outcome
                out.append({"key": src.key, "status": status, "error": ""})
                continue
            status, error = ingest_one(self.db, src, self.face)
            out.append({"key": src.key, "status": status, "error": error or ""})
        return pd.DataFrame(out)


def ingest_on_ray(db, sources: list, retry_failed: bool = False, face: str | int | None = None,
                  progress: bool = True, address: str | None = None, workers: int | None = None,
                  batch_size: int = 8):
    """:func:`facelab.facedb.ingest.ingest` on Ray: the files not yet journaled go through an
    actor pool writing to ``db``'s database; the index is rebuilt from it at the end.

    Example:
        >>> with FaceDB("faces.db") as db:                                         # doctest: +SKIP
        ...     print(ingest_on_ray(db, list_sources("photos/"), workers=2).summary())
    """
    from rich.progress import Progress

    from facelab.facedb.ingest import IngestReport, pending

    report = IngestReport()
    todo = pending(db, sources, retry_failed)
    report.counts["already-done"] = len(sources) - len(todo)
    if todo:
        ray = connect(address, workers)
        items = [{"path": str(s.path), "identity": s.identity or "", "source": s.source or "",
                  "license": s.license or ""} for s in todo]
        database = db.url or str(db.path)
        kwargs = {"database": database, "files_dir": str(db.path.parent) if db.url else None,
                  "face": face, "retry_failed": retry_failed}
        counts: Counter = Counter()
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("ingesting (ray)", total=len(todo))
            for r in _pipeline(ray, items, IngestActor, kwargs, workers, batch_size):
                counts[r["status"]] += 1
                if r["error"]:
                    report.failed.append((r["key"], r["error"]))
                bar.advance(task)
        report.counts.update(counts)
        db.rebuild_index()  # the actors wrote rows only
    return report
