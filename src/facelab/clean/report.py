"""The label-review page: one HTML file, thumbnails embedded (base64 PNG), given vs suggested."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from facelab.data.cache import PixelSettings, RowDecoder
from facelab.errors import FacelabError


def _png_b64(pixels: np.ndarray, size: int) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).resize((size, size)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail(rec: pd.Series, pixels: np.ndarray | None, size: int, decoder: RowDecoder) -> str:
    """Base64 PNG of one ranked row: from the pixel cache when given, else decoded from its file
    (its face box cropped); '' when the image cannot be read."""
    if pixels is not None and "row" in rec and pd.notna(rec["row"]):
        return _png_b64(pixels[int(rec["row"])], size)
    row = pd.Series(
        {c: rec.get(c, np.nan) for c in ("x1", "y1", "x2", "y2")} | {"path": rec["path"]}
    )
    try:
        return _png_b64(decoder(row)[0], size)
    except FacelabError:
        return ""


def write_review_page(
    ranked: pd.DataFrame,
    path: str | Path,
    pixels: np.ndarray | None = None,
    top: int = 200,
    thumb: int = 96,
    title: str = "facelab label review",
) -> Path:
    """An HTML page of the `top` ranked labels: thumbnail, task, given -> suggested, confidence.

    Example:
        >>> write_review_page(rank_label_issues(oof), "clean/review.html")  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    decoder = RowDecoder(PixelSettings(size=thumb, crop="auto"))
    cards = []
    for _, rec in ranked.head(top).iterrows():
        img = thumbnail(rec, pixels, thumb, decoder)
        pic = (
            f"<img src='data:image/png;base64,{img}' width={thumb} height={thumb}>"
            if img
            else "<div class=na>unreadable</div>"
        )
        flag = " issue" if rec.get("is_issue", False) else ""
        cards.append(
            f"<div class='card{flag}'>{pic}<div><b>#{int(rec['rank'])}</b> {html.escape(str(rec['task']))}"
            f"</div><div>{html.escape(str(rec['given']))} &rarr; <b>{html.escape(str(rec['suggested']))}</b>"
            f"</div><div>conf {rec['confidence']:.2f} &middot; q {rec['quality']:.2f}</div>"
            f"<div class=key title='{html.escape(str(rec['key']))}'>{html.escape(Path(str(rec['path'])).name)}</div></div>"
        )
    n_issue = int(ranked["is_issue"].sum()) if "is_issue" in ranked else 0
    style = (
        "body{font-family:sans-serif;margin:1.5em;color:#222}.grid{display:flex;flex-wrap:wrap;gap:8px}"
        ".card{border:1px solid #ccc;padding:4px;width:" + str(thumb + 40) + "px;font-size:12px}"
        ".card.issue{border-color:#d33;background:#fff4f4}.key{color:#777;overflow:hidden;"
        "text-overflow:ellipsis;white-space:nowrap}.na{width:"
        + str(thumb)
        + "px;height:"
        + str(thumb)
        + "px;background:#eee}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{len(ranked)} labels ranked, {n_issue} flagged by confident learning (red). "
        f"Showing the top {min(top, len(ranked))}: given label &rarr; suggested label, the "
        "model's confidence in the suggestion and the label quality (probability of the given "
        "label). Review them, then fill the <code>new</code> column of corrections.csv.</p>"
        f"<div class=grid>{''.join(cards)}</div></body></html>"
    )
    path.write_text(page)
    return path
