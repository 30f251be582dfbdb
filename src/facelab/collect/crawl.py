"""Crawl image search engines with icrawler (the "Create FaceDB" collection step).

Engines: "bing", "google", "baidu", "flickr" (icrawler built-ins) and "urllist" (a text
file of URLs, fetched by icrawler's own downloader). Images land in
``<folder>/<keyword-slug>/``; ingest them with ``facelab db ingest``. Respect each site's
terms and the images' licenses: crawled images are not yours to redistribute.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from facelab.errors import ConfigError

log = logging.getLogger(__name__)
ENGINES = {
    "bing": "BingImageCrawler",
    "google": "GoogleImageCrawler",
    "baidu": "BaiduImageCrawler",
    "flickr": "FlickrImageCrawler",
    "urllist": "UrlListCrawler",
}


def slug(text: str) -> str:
    """A safe folder name for a keyword.

    Example:
        >>> slug("Ada Lovelace / 1843")
        'ada-lovelace-1843'
    """
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:80] or "query"


def crawl(
    keyword: str, folder: str | Path, engine: str = "bing", max_num: int = 100,
    threads: int = 4, min_size: tuple[int, int] | None = (64, 64), **filters: object,
) -> Path:
    """Download up to ``max_num`` images for ``keyword`` (for "urllist": a URL-list file).

    Returns the folder the images were written to.

    Example:
        >>> crawl("ada lovelace portrait", "raw/", engine="bing", max_num=50)  # doctest: +SKIP
        PosixPath('raw/ada-lovelace-portrait')
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown crawl engine {engine!r}; choose one of {sorted(ENGINES)}")
    from icrawler import builtin

    name = Path(keyword).stem if engine == "urllist" else keyword
    out = Path(folder) / slug(name)
    out.mkdir(parents=True, exist_ok=True)
    cls = getattr(builtin, ENGINES[engine])
    kwargs = {"storage": {"root_dir": str(out)}, "log_level": logging.WARNING}
    if engine == "urllist":
        crawler = cls(downloader_threads=threads, **kwargs)
        crawler.crawl(str(keyword), max_num=max_num)
    else:
        crawler = cls(downloader_threads=threads, **kwargs)
        crawler.crawl(keyword=keyword, max_num=max_num, min_size=min_size,
                      filters=dict(filters) or None)
    log.info("crawled %d files into %s", sum(1 for _ in out.iterdir()), out)
    return out
