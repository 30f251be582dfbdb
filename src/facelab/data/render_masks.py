"""The ``render_masks`` source switch: train on a masked copy of an unmasked face set.

A ``labels`` source with ``render_masks`` set is loaded and split as the photos; then its
training and validation rows are swapped for the matching faces of a masked copy
(facelab.masks.masked_set: each face keeps its photo or gets a rendered correct / incorrect
mask) and take the copy's mask label. Test rows stay the photos with their own labels, so a
model trained with the switch is scored on exactly the faces a model trained without it is.
The copy is built once per (CSV and its size/mtime, wear weights, seed) under the cache
root and reused; an edited CSV gets a new copy.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from facelab.data.formats import SourceSpec
from facelab.data.labels import parse_task_value
from facelab.errors import DataFormatError

log = logging.getLogger(__name__)

#: below this share of train/val rows found in the masked copy, the switch is an error
#: (paths that stopped matching would otherwise silently train on photos only).
MIN_MATCHED = 0.95


def masked_copy(spec: SourceSpec) -> Path:
    """The labels CSV of the source's masked copy, built (or completed) under the cache root."""
    from facelab.masks.masked_set import DEFAULT_WEARS, build_masked_set
    from facelab.paths import cache_root

    path = Path(spec.path).expanduser()
    if spec.kind != "labels":
        raise DataFormatError(f"{path}: render_masks works on a labels source, not {spec.kind!r}")
    options = dict(spec.render_masks)
    unknown = set(options) - {"wear", "seed"}
    if unknown:
        raise DataFormatError(f"{path}: render_masks takes wear and seed, not {sorted(unknown)}")
    wear = {k: float(v) for k, v in (options.get("wear") or DEFAULT_WEARS).items()}
    seed = int(options.get("seed", 0))
    stat = path.stat()
    key = hashlib.sha1(repr((str(path.resolve()), stat.st_size, stat.st_mtime_ns, spec.image_root,
                             sorted(wear.items()), seed, spec.limit)).encode()).hexdigest()[:12]
    out = cache_root() / "masked-sets" / f"{path.parent.name}-{key}"
    if not (out / "complete").is_file():
        rep = build_masked_set(path, out, wear_weights=wear, seed=seed, limit=spec.limit,
                               image_root=spec.image_root or None, progress=True)
        if rep.rows == 0:
            raise DataFormatError(f"{path}: no face could be read for render_masks; check the images")
        (out / "complete").write_text(f"{rep.rows} faces {rep.counts}\n")
    return out / "labels.csv"


def apply_render_masks(table: pd.DataFrame, split: np.ndarray, sources: list[SourceSpec]
                       ) -> pd.DataFrame:
    """The table with train/val rows of ``render_masks`` sources swapped for masked faces."""
    specs = [s for s in sources if s.render_masks]
    if not specs:
        return table
    table = table.copy()
    for spec in specs:
        csv = masked_copy(spec)
        copy = pd.read_csv(csv, keep_default_na=False)
        by_source = dict(zip(copy["source_image"], zip(copy["image"], copy["mask"])))
        name = spec.name or Path(spec.path).expanduser().parent.name
        rows = np.flatnonzero((table["source"].to_numpy() == name) & np.isin(split, ["train", "val"]))
        swapped = 0
        for i in rows:
            hit = by_source.get(table.at[i, "path"])
            if hit is None:  # undecodable in the copy too: the row stays as it is
                continue
            table.at[i, "path"] = str((csv.parent / hit[0]).resolve())
            table.at[i, "mask"] = parse_task_value("mask", hit[1], str(csv))
            swapped += 1
        log.info("render_masks %s: %d of %d train/val faces swapped for the masked copy", name,
                 swapped, len(rows))
        if len(rows) and swapped < MIN_MATCHED * len(rows):
            raise DataFormatError(
                f"{spec.path}: only {swapped} of {len(rows)} train/val faces matched its masked copy "
                f"{csv}; delete that folder so it is rebuilt, or check the source's image paths"
            )
    return table

