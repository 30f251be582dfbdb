"""Run the service on uvicorn (what `facelab serve` calls)."""

from __future__ import annotations

import ipaddress
import logging

from facelab.serve.config import ServeConfig

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost.

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0")
        (True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:
    """Serve `create_app(config)` until interrupted (one process; models load in the background,
    /readyz says when they are ready)."""
    import uvicorn

    from facelab.serve.app import create_app
    from facelab.serve.keys import KeyStore

    keys = KeyStore(config.keys_path)
    active = keys.list(include_revoked=False)
    keys.close()
    if not active:
        log.warning("no active API key in %s: every /v1 request will be refused with 401; create one "
                    "with `facelab serve keys add NAME --scopes read,write,admin --keys %s`",
                    config.keys_path, config.keys_path)
    if not is_loopback(host) and not ssl_certfile:
        log.warning("serving on %s without TLS: API keys cross the network in clear; put a TLS "
                    "proxy in front or pass --ssl-certfile/--ssl-keyfile", host)
    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level, proxy_headers=False,
                server_header=False, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
