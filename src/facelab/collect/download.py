"""Download a list of image URLs into one folder: concurrent, resumable, retried, limited.

Every URL goes through the guarded fetcher :mod:`facelab.collect.fetch` (shared with
``db crawl``), so:

* every host is resolved first; private, loopback, link-local, reserved and multicast
  addresses are refused (also after each redirect hop, which is followed by hand) unless
  ``allow_private`` is set or the host is in ``allow_hosts``;
* files are named by a hash of the URL plus an extension chosen from the detected type, never
  from the URL, and written as ``.part`` then renamed, so nothing lands outside the folder and
  no half file is ever taken for a whole one;
* responses over ``max_bytes`` (by header, while streaming, or once decoded) and non-images
  (by Content-Type and by magic bytes) are dropped; each attempt has a total ``deadline``;
* a malformed URL line is journaled as ``bad-url`` and skipped, never stopping the run.

Progress is journaled in ``<folder>/downloads.jsonl`` (one line per finished URL, with its
file, status and sha256); a rerun skips finished URLs, so an interrupted download resumes
where it stopped.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from facelab.collect.fetch import (
    MAGIC,
    BadURL,
    FetchConfig,
    FetchResult,
    Refused,
    check_url,
    save_url,
    sniff_extension,
)
from facelab.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["MAGIC", "BadURL", "DownloadConfig", "DownloadReport", "DownloadResult", "Refused",
           "check_url", "download_urls", "fetch_one", "sniff_extension"]

DownloadResult = FetchResult


@dataclass
class DownloadConfig(FetchConfig):
    """Limits and behaviour of :func:`download_urls`: the fetch limits of
    :class:`~facelab.collect.fetch.FetchConfig` (timeout, deadline, retries, backoff,
    max_bytes, allow_private, allow_hosts, max_redirects) plus ``workers``, the number of
    concurrent downloads."""

    workers: int = 8


@dataclass
class DownloadReport:
    results: list[DownloadResult] = field(default_factory=list)
    skipped: int = 0

    @property
    def counts(self) -> Counter:
        return Counter(r.status for r in self.results)

    def summary(self) -> str:
        c = self.counts
        return " ".join(f"{k}={v}" for k, v in sorted(c.items())) + f" already-done={self.skipped}"


def fetch_one(url: str, folder: Path, config: DownloadConfig) -> DownloadResult:
    """Download one URL with retries through the guarded fetcher; never raises for URL,
    network or content problems (they become the result's status)."""
    return save_url(url, folder, config)


def download_urls(
    urls: list[str], folder: str | Path, config: DownloadConfig | None = None, progress: bool = False
) -> DownloadReport:
    """Download every URL not already journaled in ``folder/downloads.jsonl``.

    Example:
        >>> rep = download_urls(["https://example.org/a.jpg"], "raw/")   # doctest: +SKIP
        >>> rep.summary()                                                  # doctest: +SKIP
        'ok=1 already-done=0'
    """
    config = config or DownloadConfig()
    if config.workers < 1 or config.max_bytes < 1 or config.deadline <= 0:
        raise ConfigError("workers, max_bytes and deadline must be positive")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    journal = folder / "downloads.jsonl"
    done = _journaled(journal)
    todo = list(dict.fromkeys(u.strip() for u in urls if u.strip() and u.strip() not in done))
    report = DownloadReport(skipped=len({u.strip() for u in urls if u.strip()} & done))
    lock = threading.Lock()

    def work(url: str) -> DownloadResult:
        res = fetch_one(url, folder, config)
        with lock:
            report.results.append(res)
            if res.status != "error":  # transient failures are retried by the next run
                with open(journal, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(res.__dict__) + "\n")
        return res

    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        list(pool.map(work, todo))
    return report


def _journaled(journal: Path) -> set[str]:
    if not journal.is_file():
        return set()
    out = set()
    for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.add(json.loads(line)["url"])
        except (ValueError, KeyError):  # a line cut by a crash
            continue
    return out
