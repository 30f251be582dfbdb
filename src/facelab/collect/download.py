"""Download a list of image URLs into one folder: concurrent, resumable, retried, limited.

Safety rules:

* every host is resolved first; private, loopback, link-local, reserved and multicast
  addresses are refused (also after each redirect hop, which is followed by hand) unless
  ``allow_private`` is set or the host is in ``allow_hosts``;
* files are named by a hash of the URL plus an extension chosen from the detected type, never
  from the URL, and written as ``.part`` then renamed, so nothing lands outside the folder and
  no half file is ever taken for a whole one;
* responses over ``max_bytes`` (by header or while streaming) and non-images (by
  Content-Type and by magic bytes) are dropped.

Progress is journaled in ``<folder>/downloads.jsonl`` (one line per finished URL); a rerun
skips finished URLs, so an interrupted download resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlparse

from facelab.errors import ConfigError

log = logging.getLogger(__name__)

MAGIC = {b"\xff\xd8\xff": ".jpg", b"\x89PNG\r\n\x1a\n": ".png", b"GIF87a": ".gif",
         b"GIF89a": ".gif", b"BM": ".bmp"}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp")


@dataclass
class DownloadConfig:
    """Limits and behaviour of :func:`download_urls`.

    Attributes:
        workers: concurrent downloads.
        timeout: seconds to connect and between received bytes.
        retries: extra attempts after a timeout, connection error or 5xx/429.
        backoff: first retry delay in seconds (doubles each time).
        max_bytes: largest accepted file.
        allow_private: allow private/loopback/link-local addresses (off by default).
        allow_hosts: hosts (name or IP) allowed even when private, e.g. a local mirror.
        max_redirects: redirect hops followed (each one re-checked).
    """

    workers: int = 8
    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.5
    max_bytes: int = 20 * 1024 * 1024
    allow_private: bool = False
    allow_hosts: tuple[str, ...] = ()
    max_redirects: int = 5
    user_agent: str = "facelab-downloader/0.1"


@dataclass
class DownloadResult:
    """Outcome of one URL: status is ok | refused | too-large | not-image | http-<code> | error."""

    url: str
    status: str
    path: str | None = None
    detail: str = ""
    bytes: int = 0


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


class Refused(Exception):
    """A URL the downloader will not fetch (scheme, private address, ...)."""


def check_url(url: str, config: DownloadConfig) -> None:
    """Raise :class:`Refused` unless ``url`` is http(s) to a public address (or allowed).

    Example:
        >>> check_url("http://127.0.0.1/x.jpg", DownloadConfig())
        Traceback (most recent call last):
        ...
        facelab.collect.download.Refused: 127.0.0.1 resolves to non-public address 127.0.0.1
    """
    parts = urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused(f"only http(s) URLs with a host are fetched, got {url!r}")
    host = parts.hostname
    if config.allow_private or host in config.allow_hosts:
        return
    try:
        infos = socket.getaddrinfo(host, parts.port or 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise Refused(f"cannot resolve {host}: {exc}") from exc
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if not addr.is_global or addr.is_multicast:
            raise Refused(f"{host} resolves to non-public address {addr}")


def sniff_extension(head: bytes) -> str | None:
    """File extension from an image's first bytes, or None when it is not an image we keep."""
    for magic, ext in MAGIC.items():
        if head.startswith(magic):
            return ext
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    return None


def _safe_target(folder: Path, url: str, ext: str) -> Path:
    name = hashlib.sha256(url.encode()).hexdigest()[:24] + ext
    target = (folder / name).resolve()
    if target.parent != folder.resolve():  # cannot happen with a hex name; kept as a guard
        raise Refused(f"refusing to write outside {folder}")
    return target


def fetch_one(url: str, folder: Path, config: DownloadConfig, session=None) -> DownloadResult:
    """Download one URL with retries; never raises for network or content problems."""
    import requests

    session = session or requests.Session()
    delay = config.backoff
    for attempt in range(config.retries + 1):
        try:
            return _attempt(url, folder, config, session)
        except Refused as exc:
            return DownloadResult(url, "refused", detail=str(exc))
        except _Retryable as exc:
            detail = str(exc)
        except requests.RequestException as exc:
            detail = f"{type(exc).__name__}: {exc}"
        if attempt < config.retries:
            time.sleep(delay)
            delay *= 2
    return DownloadResult(url, "error", detail=detail)


class _Retryable(Exception):
    pass


class _Final(Exception):
    def __init__(self, status: str, detail: str = "") -> None:
        super().__init__(detail)
        self.status = status


def _attempt(url: str, folder: Path, config: DownloadConfig, session) -> DownloadResult:
    current = url
    for _ in range(config.max_redirects + 1):
        check_url(current, config)
        headers = {"User-Agent": config.user_agent}
        with session.get(current, stream=True, timeout=config.timeout, allow_redirects=False,
                         headers=headers) as resp:
            if resp.is_redirect or resp.status_code in (301, 302, 303, 307, 308):
                current = urljoin(current, resp.headers.get("Location", ""))
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                raise _Retryable(f"HTTP {resp.status_code}")
            if resp.status_code != 200:
                return DownloadResult(url, f"http-{resp.status_code}")
            try:
                return _save(url, resp, folder, config)
            except _Final as exc:
                return DownloadResult(url, exc.status, detail=str(exc))
    return DownloadResult(url, "refused", detail=f"more than {config.max_redirects} redirects")


def _save(url: str, resp, folder: Path, config: DownloadConfig) -> DownloadResult:
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype and not ctype.startswith("image/") and ctype != "application/octet-stream":
        raise _Final("not-image", f"Content-Type {ctype}")
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > config.max_bytes:
        raise _Final("too-large", f"Content-Length {length} > {config.max_bytes}")
    part = folder / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".part")
    size, head = 0, b""
    try:
        with open(part, "wb") as fh:
            for chunk in resp.iter_content(64 * 1024):
                size += len(chunk)
                if size > config.max_bytes:
                    raise _Final("too-large", f"more than {config.max_bytes} bytes")
                if len(head) < 16:
                    head += chunk[:16]
                fh.write(chunk)
        ext = sniff_extension(head)
        if ext is None:
            raise _Final("not-image", "content is not a JPEG/PNG/GIF/BMP/WebP image")
        target = _safe_target(folder, url, ext)
        part.replace(target)
        return DownloadResult(url, "ok", str(target), bytes=size)
    finally:
        part.unlink(missing_ok=True)


def download_urls(
    urls: list[str], folder: str | Path, config: DownloadConfig | None = None, progress: bool = False
) -> DownloadReport:
    """Download every URL not already journaled in ``folder/downloads.jsonl``.

    Example:
        >>> rep = download_urls(["https://example.org/a.jpg"], "raw/")   # doctest: +SKIP
        >>> rep.summary()                                                  # doctest: +SKIP
        'ok=1 already-done=0'
    """
    import requests

    config = config or DownloadConfig()
    if config.workers < 1 or config.max_bytes < 1:
        raise ConfigError("workers and max_bytes must be positive")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    journal = folder / "downloads.jsonl"
    done = _journaled(journal)
    todo = list(dict.fromkeys(u.strip() for u in urls if u.strip() and u.strip() not in done))
    report = DownloadReport(skipped=len({u.strip() for u in urls if u.strip()} & done))
    lock = threading.Lock()
    local = threading.local()

    def work(url: str) -> DownloadResult:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        res = fetch_one(url, folder, config, local.session)
        with lock:
            report.results.append(res)
            if res.status != "error":  # transient failures are retried by the next run
                with open(journal, "a") as fh:
                    fh.write(json.dumps(res.__dict__) + "\n")
        return res

    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        list(pool.map(work, todo))
    return report


def _journaled(journal: Path) -> set[str]:
    if not journal.is_file():
        return set()
    out = set()
    for line in journal.read_text().splitlines():
        try:
            out.add(json.loads(line)["url"])
        except (ValueError, KeyError):  # a line cut by a crash
            continue
    return out
