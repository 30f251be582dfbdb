"""The one guarded URL fetcher behind ``db download`` and ``db crawl``.

Every image byte facelab takes from the network goes through :func:`fetch_to`, which:

* accepts only http(s) URLs with a host; a malformed URL raises :class:`BadURL`;
* resolves the host and refuses private, loopback, link-local, reserved and multicast
  addresses (unless ``allow_private`` or the host name is in ``allow_hosts``), then connects
  to the very address it checked (no second lookup, so DNS rebinding cannot slip past);
* follows redirects by hand, re-checking every ``Location`` hop the same way;
* asks for ``Accept-Encoding: identity``; a gzip/deflate body sent anyway is decoded in
  bounded steps and the *decoded* bytes count against ``max_bytes``; other encodings are
  refused; so a small compressed "bomb" can never expand in memory;
* streams to disk and stops at ``max_bytes`` (by Content-Length or while reading);
* enforces a total ``deadline`` per fetch (all hops, headers and body): every socket read
  waits at most the time left, and a watchdog shuts the socket when the deadline passes;
* refuses non-images: by Content-Type and by the first bytes (JPEG/PNG/GIF/BMP/WebP magic).

Proxies from the environment are not used (they would resolve hosts beyond the guard).
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

from facelab.errors import FacelabError

log = logging.getLogger(__name__)

MAGIC = {b"\xff\xd8\xff": ".jpg", b"\x89PNG\r\n\x1a\n": ".png", b"GIF87a": ".gif",
         b"GIF89a": ".gif", b"BM": ".bmp"}
REDIRECTS = (301, 302, 303, 307, 308)
CHUNK = 64 * 1024


@dataclass
class FetchConfig:
    """Limits of one guarded fetch.

    Attributes:
        timeout: seconds to connect and between received bytes.
        deadline: total seconds for one attempt (all redirect hops, headers and body).
        retries: extra attempts after a timeout, connection error or 5xx/429.
        backoff: first retry delay in seconds (doubles each time).
        max_bytes: largest accepted file (decoded bytes).
        allow_private: allow private/loopback/link-local addresses (off by default).
        allow_hosts: host names or IP literals allowed even when private, e.g. a local mirror
            (matched against the URL's host, per hop: a redirect to another name is re-checked).
        max_redirects: redirect hops followed (each one re-checked).
    """

    timeout: float = 10.0
    deadline: float = 60.0
    retries: int = 2
    backoff: float = 0.5
    max_bytes: int = 20 * 1024 * 1024
    allow_private: bool = False
    allow_hosts: tuple[str, ...] = ()
    max_redirects: int = 5
    user_agent: str = "facelab-downloader/0.1"


class FetchError(FacelabError):
    """A URL that was not fetched; ``status`` is the short word journaled for it."""

    status = "error"


class BadURL(FetchError):
    """The URL cannot be parsed (bad brackets, port, characters)."""

    status = "bad-url"


class Refused(FetchError):
    """A URL the fetcher will not fetch (scheme, non-public address, too many redirects)."""

    status = "refused"


class TooLarge(FetchError):
    status = "too-large"


class NotImage(FetchError):
    status = "not-image"


class HTTPStatus(FetchError):
    def __init__(self, url: str, code: int) -> None:
        super().__init__(f"{url}: HTTP {code}")
        self.status = f"http-{code}"


class Transient(FetchError):
    """Timeout, deadline, connection error, 5xx or 429: worth retrying later."""

    status = "error"


@dataclass
class Fetched:
    """A fetched image: where it ended up and what it is."""

    url: str
    final_url: str
    ext: str
    size: int
    sha256: str


@dataclass
class FetchResult:
    """Outcome of one URL: status is ok | refused | bad-url | too-large | not-image |
    http-<code> | error (transient: retried by the next run)."""

    url: str
    status: str
    path: str | None = None
    detail: str = ""
    bytes: int = 0
    sha256: str = ""


def sniff_extension(head: bytes) -> str | None:
    """File extension from an image's first bytes, or None when it is not an image we keep.

    Example:
        >>> sniff_extension(b"\\x89PNG\\r\\n\\x1a\\n....")
        '.png'
    """
    for magic, ext in MAGIC.items():
        if head.startswith(magic):
            return ext
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    return None


def _split(url: str):
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise BadURL(f"malformed URL {url!r}: {exc}; fix or drop that line") from exc
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise BadURL(f"malformed URL {url!r}: spaces or control characters; fix or drop that line")
    if parts.scheme not in ("http", "https") or not host:
        raise Refused(f"only http(s) URLs with a host are fetched, got {url!r}")
    return parts, host, port or (443 if parts.scheme == "https" else 80)


def _public(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast and not addr.is_reserved


def resolve(host: str, port: int, config: FetchConfig, url: str = "") -> str:
    """The address to connect to for ``host``; raises :class:`Refused` when any is non-public."""
    where = f"{url}: " if url else ""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"{where}cannot resolve {host}: {exc}; check the URL") from exc
    if not infos:
        raise Refused(f"{where}cannot resolve {host}; check the URL")
    allowed = config.allow_private or host in config.allow_hosts
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if not allowed and not _public(addr):
            raise Refused(f"{where}{host} resolves to non-public address {addr}; only a trusted "
                          "local mirror should be let through (allow_hosts / --allow-private)")
    return infos[0][4][0]


def check_url(url: str, config: FetchConfig) -> None:
    """Raise :class:`Refused`/:class:`BadURL` unless ``url`` is http(s) to a public address.

    Example:
        >>> check_url("http://127.0.0.1/x.jpg", FetchConfig())
        Traceback (most recent call last):
        ...
        facelab.collect.fetch.Refused: http://127.0.0.1/x.jpg: 127.0.0.1 resolves to non-public address 127.0.0.1; ...
    """
    _, host, port = _split(url)
    resolve(host, port, config, url)


class _HTTP(http.client.HTTPConnection):
    """Connects to the address the guard checked, not to a fresh lookup of the name."""

    def __init__(self, host: str, port: int, addr: str, timeout: float, dog: _Watchdog) -> None:
        super().__init__(host, port, timeout=timeout)
        self._addr, self._dog = addr, dog

    def connect(self) -> None:
        self.sock = socket.create_connection((self._addr, self.port), self.timeout)
        self._dog.watch(self.sock)


class _HTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, addr: str, timeout: float, dog: _Watchdog) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._addr, self._dog = addr, dog

    def connect(self) -> None:
        sock = socket.create_connection((self._addr, self.port), self.timeout)
        self._dog.watch(sock)  # a dripping TLS handshake is cut at the deadline too
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
        self._dog.watch(self.sock)


class _Watchdog:
    """Shuts the current connection's socket when the deadline passes (header drips etc.)."""

    def __init__(self, seconds: float) -> None:
        self.sock: socket.socket | None = None
        self.fired = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            if self.sock is not None:
                self._fire_unlocked()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self.sock = sock
            if self.fired:
                self._fire_unlocked()

    def _fire_unlocked(self) -> None:
        try:  # the plain socket method also for TLS sockets: blocked reads then see EOF
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass

    def cancel(self) -> None:
        self._timer.cancel()


def _target(parts) -> str:
    path = quote(parts.path or "/", safe="/%;:@&=+$,!~*'()-._")
    if parts.query:
        path += "?" + quote(parts.query, safe="/%;:@&=+$,!~*'()-._?")
    return path


class _Decoder:
    """Content-Encoding decoding with every step bounded by the bytes still allowed."""

    def __init__(self, encoding: str, url: str) -> None:
        enc = encoding.strip().lower()
        if enc in ("", "identity"):
            self._z = None
        elif enc in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            self._z = zlib.decompressobj()
        else:
            raise Refused(f"{url}: Content-Encoding {enc!r} is not accepted (asked for identity)")

    def feed(self, data: bytes, room: int) -> tuple[bytes, bool]:
        """Decoded bytes (at most ``room`` + 1) and whether input was left undecoded."""
        if self._z is None:
            return data, False
        try:
            out = self._z.decompress(data, room + 1)
        except zlib.error as exc:
            raise NotImage(f"corrupt compressed body: {exc}") from exc
        return out, bool(self._z.unconsumed_tail)

    @property
    def identity(self) -> bool:
        return self._z is None

    def more(self, room: int) -> tuple[bytes, bool]:
        """Continue decoding input left over by the last bounded step."""
        return self.feed(self._z.unconsumed_tail, room)


def fetch_to(url: str, dest: str | Path, config: FetchConfig | None = None) -> Fetched:
    """Fetch one image URL into ``dest`` (one attempt, every guard applied).

    Raises a :class:`FetchError` subclass (``dest`` is then removed); never writes more than
    ``config.max_bytes`` and never runs past ``config.deadline`` (each read waits at most the
    time left and a watchdog shuts the socket at the deadline; only the DNS lookup is not
    bounded by it).

    Example:
        >>> fetch_to("https://example.org/a.jpg", "a.part")    # doctest: +SKIP
        Fetched(url='https://example.org/a.jpg', ..., ext='.jpg', size=51234, sha256='...')
    """
    config = config or FetchConfig()
    dest = Path(dest)
    start = time.monotonic()
    end = start + config.deadline
    dog = _Watchdog(config.deadline)
    opened: list = []  # connections and responses to close
    try:
        sock, resp, final = _open(url, config, end, dog, opened)
        return _read(url, final, resp, sock, dest, config, end, dog)
    except FetchError:
        dest.unlink(missing_ok=True)
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        dest.unlink(missing_ok=True)
        if dog.fired or time.monotonic() >= end:
            raise Transient(f"{url}: deadline of {config.deadline:g} s exceeded") from exc
        raise Transient(f"{url}: {type(exc).__name__}: {exc}") from exc
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        dog.cancel()
        for item in reversed(opened):
            item.close()


def _left(end: float, url: str, config: FetchConfig) -> float:
    left = end - time.monotonic()
    if left <= 0:
        raise Transient(f"{url}: deadline of {config.deadline:g} s exceeded")
    return left


def _open(url: str, config: FetchConfig, end: float, dog: _Watchdog, opened: list):
    current = url
    for _ in range(config.max_redirects + 1):
        parts, host, port = _split(current)
        addr = resolve(host, port, config, current)
        cls = _HTTPS if parts.scheme == "https" else _HTTP
        conn = cls(host, port, addr, min(config.timeout, _left(end, url, config)), dog)
        opened.append(conn)
        try:
            conn.putrequest("GET", _target(parts), skip_accept_encoding=True)
        except (http.client.InvalidURL, ValueError) as exc:  # UnicodeError included
            raise BadURL(f"malformed URL {current!r}: {exc}; fix or drop that line") from exc
        conn.putheader("User-Agent", config.user_agent)
        conn.putheader("Accept", "image/*")
        conn.putheader("Accept-Encoding", "identity")
        conn.putheader("Connection", "close")
        conn.endheaders()
        sock = conn.sock  # getresponse() hands the socket to the response and drops it here
        sock.settimeout(min(config.timeout, _left(end, url, config)))
        resp = conn.getresponse()
        opened.append(resp)
        if resp.status in REDIRECTS:
            location = resp.getheader("Location", "")
            resp.close()
            conn.close()
            if not location:
                raise HTTPStatus(current, resp.status)
            current = urljoin(current, location.strip())
            continue
        if resp.status == 429 or resp.status >= 500:
            raise Transient(f"{current}: HTTP {resp.status}")
        if resp.status != 200:
            raise HTTPStatus(current, resp.status)
        return sock, resp, current
    raise Refused(f"{url}: more than {config.max_redirects} redirects")


def _read(url, final, resp, sock, dest: Path, config: FetchConfig, end: float, dog) -> Fetched:
    ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
    if ctype and not ctype.startswith("image/") and ctype != "application/octet-stream":
        raise NotImage(f"{final}: Content-Type {ctype}, not an image")
    decoder = _Decoder(resp.getheader("Content-Encoding") or "", final)
    length = (resp.getheader("Content-Length") or "").strip()
    if decoder.identity and length.isdigit() and int(length) > config.max_bytes:
        raise TooLarge(f"{final}: Content-Length {length} > {config.max_bytes} bytes")
    digest = hashlib.sha256()
    size, head, ext = 0, b"", None
    with open(dest, "wb") as fh:

        def take(data: bytes) -> None:
            nonlocal size, head, ext
            if not data:
                return
            size += len(data)
            if size > config.max_bytes:
                raise TooLarge(f"{final}: more than {config.max_bytes} bytes")
            if ext is None:
                head += data[: 16 - len(head)]
                if len(head) >= 16:
                    ext = _sniff_or_refuse(head, final)
            digest.update(data)
            fh.write(data)

        while True:
            sock.settimeout(min(config.timeout, _left(end, url, config)))
            raw = resp.read1(CHUNK)
            if not raw:
                if dog.fired:
                    raise Transient(f"{url}: deadline of {config.deadline:g} s exceeded")
                if resp.length:  # http.client counts down Content-Length; EOF came early
                    raise Transient(f"{final}: connection closed {resp.length} bytes early")
                break
            data, pending = decoder.feed(raw, config.max_bytes - size)
            take(data)
            while pending:
                _left(end, url, config)
                data, pending = decoder.more(config.max_bytes - size)
                take(data)
                if not data and pending:  # cannot happen with zlib; guards an endless loop
                    raise NotImage(f"{final}: compressed body does not decode")
        if ext is None:
            ext = _sniff_or_refuse(head, final)
    return Fetched(url, final, ext, size, digest.hexdigest())


def _sniff_or_refuse(head: bytes, url: str) -> str:
    ext = sniff_extension(head)
    if ext is None:
        raise NotImage(f"{url}: content is not a JPEG/PNG/GIF/BMP/WebP image")
    return ext


def url_name(url: str) -> str:
    """A file stem chosen from a hash of the URL (never from the URL itself)."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def save_url(url: str, folder: str | Path, config: FetchConfig | None = None,
             stem: str | None = None) -> FetchResult:
    """Fetch ``url`` into ``folder/<stem><ext>`` with retries; never raises for URL, network or
    content problems (they become the result's status).

    The file is written as ``<stem>.part`` and renamed once complete, with the extension
    taken from the detected type; ``stem`` defaults to a hash of the URL.
    """
    config = config or FetchConfig()
    folder = Path(folder)
    stem = stem or url_name(url)
    part = folder / f"{stem}.part"
    if part.resolve().parent != folder.resolve():
        return FetchResult(url, "refused", detail=f"refusing to write outside {folder}")
    delay = config.backoff
    detail = ""
    for attempt in range(config.retries + 1):
        try:
            got = fetch_to(url, part, config)
        except Transient as exc:
            detail = str(exc)
        except FetchError as exc:
            return FetchResult(url, exc.status, detail=str(exc))
        else:
            target = folder / f"{stem}{got.ext}"
            part.replace(target)
            return FetchResult(url, "ok", str(target), bytes=got.size, sha256=got.sha256)
        if attempt < config.retries:
            time.sleep(delay)
            delay *= 2
    return FetchResult(url, "error", detail=detail)
