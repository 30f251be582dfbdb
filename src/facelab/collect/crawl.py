"""Crawl image search engines (the "Create FaceDB" collection step).

Engines: "bing", "google", "baidu", "flickr" (icrawler's feeders and parsers find the image
URLs) and "urllist" (a text file of URLs, one a line). For every engine the images themselves
are fetched by facelab's guarded fetcher (:mod:`facelab.collect.fetch`: address guard on every
redirect hop, size cap, total deadline, image check), never by icrawler's downloader: for
search engines a collecting downloader only records the URLs icrawler found.

Images land in ``<folder>/<keyword-slug>/`` named by a hash of their URL; every URL tried is
journaled in ``sources.csv`` there (file, url, sha256, status, detail), so ``db ingest`` can
record where each image came from, and a rerun skips URLs already finished (transient
failures are tried again). Respect each site's terms and the images' licenses: crawled images
are not yours to redistribute.
"""

from __future__ import annotations

import csv
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from facelab.collect.fetch import FetchConfig, FetchResult, save_url
from facelab.errors import ConfigError, DataFormatError

log = logging.getLogger(__name__)
ENGINES = {
    "bing": "BingImageCrawler",
    "google": "GoogleImageCrawler",
    "baidu": "BaiduImageCrawler",
    "flickr": "FlickrImageCrawler",
    "urllist": "UrlListCrawler",
}
JOURNAL = "sources.csv"
FIELDS = ("file", "url", "sha256", "status", "detail")


def slug(text: str) -> str:
    """A safe folder name for a keyword.

    Example:
        >>> slug("Ada Lovelace / 1843")
        'ada-lovelace-1843'
    """
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:80] or "query"


def read_sources(folder: str | Path) -> list[dict[str, str]]:
    """Rows of ``folder/sources.csv`` (file, url, sha256, status, detail), oldest first.

    Example:
        >>> {r["file"]: r["url"] for r in read_sources("raw/ada")          # doctest: +SKIP
        ...  if r["status"] == "ok"}
        {'3f1c...jpg': 'https://example.org/ada.jpg'}
    """
    path = Path(folder) / JOURNAL
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        return [row for row in csv.DictReader(fh) if row.get("url")]  # skips a line cut by a crash


def read_url_list(path: str | Path) -> list[str]:
    """Non-empty, non-comment lines of a URL-list file (each line kept whole)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"URL list {path} not found; pass a text file with one URL a line")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def crawl(
    keyword: str, folder: str | Path, engine: str = "bing", max_num: int = 100,
    threads: int = 4, min_size: tuple[int, int] | None = (64, 64),
    config: FetchConfig | None = None, **filters: object,
) -> Path:
    """Download up to ``max_num`` images for ``keyword`` (for "urllist": a URL-list file).

    ``max_num`` counts the images in the output folder, earlier runs included, so a rerun
    continues an interrupted crawl. ``config`` sets the fetch limits (address guard,
    ``max_bytes``, ``deadline``, retries); ``min_size`` (width, height) drops smaller
    search results. Returns the folder the images were written to.

    Example:
        >>> crawl("ada lovelace portrait", "raw/", engine="bing", max_num=50)  # doctest: +SKIP
        PosixPath('raw/ada-lovelace-portrait')
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown crawl engine {engine!r}; choose one of {sorted(ENGINES)}")
    if max_num < 1 or threads < 1:
        raise ConfigError(f"max_num ({max_num}) and threads ({threads}) must be positive")
    config = config or FetchConfig()
    name = Path(keyword).stem if engine == "urllist" else keyword
    out = Path(folder) / slug(name)
    if engine == "urllist":
        urls = read_url_list(keyword)
        out.mkdir(parents=True, exist_ok=True)
        fetch_into(urls, out, config, max_num=max_num, threads=threads)
    else:
        out.mkdir(parents=True, exist_ok=True)
        # ask icrawler for spare result URLs: some will be refused, broken or too small
        urls = search_urls(engine, keyword, out, 2 * max_num, dict(filters) or None)
        fetch_into(urls, out, config, max_num=max_num, threads=threads, min_size=min_size)
    return out


def search_urls(engine: str, keyword: str, out: Path, max_num: int,
                filters: dict | None = None) -> list[str]:
    """Image URLs an icrawler search engine returns for ``keyword`` (nothing is downloaded)."""
    from icrawler import builtin
    from icrawler.downloader import Downloader

    class Collect(Downloader):
        """Records each result URL instead of downloading it."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.urls: list[str] = []

        def download(self, task, default_ext, timeout=5, max_retry=3, overwrite=False, **kw):
            with self.lock:
                if self.reach_max_num():
                    self.signal.set(reach_max_num=True)
                    return False
                self.urls.append(str(task["file_url"]))
                self.fetched_num += 1
            return True

    cls = getattr(builtin, ENGINES[engine])
    crawler = cls(downloader_cls=Collect, downloader_threads=1,
                  storage={"root_dir": str(out)}, log_level=logging.WARNING)
    # min_size is applied by fetch_into on the fetched file, not by icrawler
    crawler.crawl(keyword=keyword, max_num=max_num, filters=filters)
    return list(dict.fromkeys(crawler.downloader.urls))


def fetch_into(urls: list[str], out: str | Path, config: FetchConfig | None = None,
               max_num: int | None = None, threads: int = 4,
               min_size: tuple[int, int] | None = None) -> list[FetchResult]:
    """Fetch ``urls`` into ``out`` through the guarded fetcher, journaling each in sources.csv.

    URLs already finished in the journal are skipped; stops once ``out`` holds ``max_num``
    images. Returns this run's results (malformed or refused URLs included, as statuses).
    """
    config = config or FetchConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_sources(out)
    done = {r["url"] for r in rows if r["status"] != "error"}
    seen = {r["sha256"] for r in rows if r["status"] == "ok" and r["sha256"]}
    state = {"ok": sum(r["status"] == "ok" for r in rows), "busy": 0}
    limit = max_num if max_num is not None else float("inf")
    todo = [u for u in dict.fromkeys(urls) if u not in done]
    cond = threading.Condition()
    results: list[FetchResult] = []
    journal = out / JOURNAL
    new_file = not journal.is_file() or journal.stat().st_size == 0

    with open(journal, "a", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if new_file:
            writer.writerow(FIELDS)
            fh.flush()

        def work(url: str) -> None:
            with cond:  # reserve a slot so concurrent fetches never overshoot max_num
                while state["ok"] + state["busy"] >= limit and state["busy"]:
                    cond.wait()
                if state["ok"] >= limit:
                    return
                state["busy"] += 1
            res = None
            try:
                res = save_url(url, out, config)
            finally:
                with cond:
                    state["busy"] -= 1
                    if res is not None:
                        if res.status == "ok":
                            res = _keep(res, seen, min_size)
                        state["ok"] += res.status == "ok"
                        results.append(res)
                        name = Path(res.path).name if res.path else ""
                        writer.writerow([name, res.url, res.sha256, res.status,
                                         res.detail.replace("\n", " ")])
                        fh.flush()
                    cond.notify_all()

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(work, todo))
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    log.info("fetched into %s: %s", out, " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return results


def _keep(res: FetchResult, seen: set[str], min_size: tuple[int, int] | None) -> FetchResult:
    """Drop a fetched file that duplicates an earlier one or is smaller than ``min_size``
    (called under the journal lock, so the duplicate check sees every earlier file)."""
    path = Path(res.path)
    if res.sha256 in seen:
        path.unlink(missing_ok=True)
        return FetchResult(res.url, "duplicate", detail="same bytes as an earlier file",
                           bytes=res.bytes, sha256=res.sha256)
    if min_size:
        from PIL import Image

        try:
            with Image.open(path) as im:  # reads the header only
                w, h = im.size
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "not an image"
            path.unlink(missing_ok=True)
            return FetchResult(res.url, "not-image", detail=f"{path.name}: {exc}",
                               bytes=res.bytes, sha256=res.sha256)
        if min(w, h) < min(min_size) or max(w, h) < max(min_size):
            path.unlink(missing_ok=True)
            return FetchResult(res.url, "too-small", detail=f"{w}x{h} < {min_size}",
                               bytes=res.bytes, sha256=res.sha256)
    seen.add(res.sha256)
    return res
