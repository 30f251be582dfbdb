"""`facelab serve` (the REST service and web page) and `facelab serve keys add|list|revoke`."""

from __future__ import annotations

import json

import typer

from facelab.cli import app

serve_app = typer.Typer(
    help=("Serve the face analyzer and the face database over HTTP (REST API + web page).\n\n"
          "Example:\n\n  facelab serve keys add ops --scopes read,write,admin --db faces.db\n\n"
          "  facelab serve --db faces.db --run runs/mt --port 8000"),
    invoke_without_command=True,
)
app.add_typer(serve_app, name="serve")
keys_app = typer.Typer(help="API keys of the service (stored hashed; the secret is shown once).",
                       no_args_is_help=True)
serve_app.add_typer(keys_app, name="keys")

KEYS_OPT = typer.Option(None, "--keys", help="The service's key file (default: <db stem>.serve.db "
                                             "beside --db, else ./facelab-serve.db).")
CORS_OPT = typer.Option(None, "--cors-origin",
                        help="Allow this browser origin (repeatable); CORS is off by default.")
DB_OPT = typer.Option(None, "--db", help="Face database (SQLite file or postgresql:// URL).")


@serve_app.callback()
def serve(
    ctx: typer.Context,
    db: str | None = DB_OPT,
    run: str | None = typer.Option(None, "--run", help="Attribute run folder (mask / gender / age)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, help="TCP port."),
    keys: str | None = KEYS_OPT,
    detector: str | None = typer.Option(None, help="Detector for /v1/analyze (default: the database's, else mtcnn; none = photos are face crops)."),
    backend: str = typer.Option("torch", help="Attribute backend: torch, onnx or onnx-int8."),
    max_body_mb: float = typer.Option(10.0, help="Largest request body (MB); larger ones get 413."),
    max_pixels: int = typer.Option(40_000_000, help="Largest image (pixels), checked from the header before decoding."),
    rate: int = typer.Option(600, help="Requests per minute per API key (0 = no limit)."),
    workers: int = typer.Option(4, help="Threads that run models and database calls."),
    cors: list[str] | None = CORS_OPT,
    ssl_certfile: str | None = typer.Option(None, help="TLS certificate (PEM) to serve HTTPS."),
    ssl_keyfile: str | None = typer.Option(None, help="TLS private key (PEM)."),
    clips_run: str | None = typer.Option(None, "--clips-run", help="Clip run folder (facelab clips train) for POST /v1/clips."),
) -> None:
    """Run the service: JSON API under /v1 (OpenAPI at /docs), web page at /, health at
    /healthz and /readyz, Prometheus metrics at /metrics.

    Example: facelab serve --db faces.db --run runs/mt --host 127.0.0.1 --port 8000
    """
    if ctx.invoked_subcommand is not None:
        return
    from facelab.serve.config import ServeConfig
    from facelab.serve.run import serve as run_server

    cfg = ServeConfig(db=db, run=run, keys=keys, detector=detector, backend=backend,
                      max_body_bytes=int(max_body_mb * 1024 * 1024), max_pixels=max_pixels,
                      rate_per_minute=rate, workers=workers, cors_origins=list(cors or []),
                      clips_run=clips_run)
    run_server(cfg, host=host, port=port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)


def _store(db: str | None, keys: str | None):
    from facelab.serve.config import keys_path_for
    from facelab.serve.keys import KeyStore

    return KeyStore(keys_path_for(db, keys))


@keys_app.command("add")
def keys_add(
    name: str = typer.Argument(..., help="Who or what uses the key (e.g. 'door-cam', 'ops')."),
    scopes: str = typer.Option("read", help="Comma-separated: read (analyze/verify/search), write (enroll), admin (delete, keys)."),
    db: str | None = DB_OPT,
    keys: str | None = KEYS_OPT,
) -> None:
    """Create an API key and print it once (only its SHA-256 is stored).

    Example: facelab serve keys add door-cam --scopes read --db faces.db
    """
    store = _store(db, keys)
    key, secret = store.add(name, scopes)
    store.audit("add_key", None, "ok", key.id, None, json.dumps({"scopes": key.scopes, "via": "cli"}))
    store.close()
    typer.echo(f"id={key.id} name={key.name} scopes={','.join(key.scopes)}")
    typer.echo(secret)
    typer.secho("store this key now: it is not shown again", err=True, fg=typer.colors.YELLOW)


@keys_app.command("list")
def keys_list(db: str | None = DB_OPT, keys: str | None = KEYS_OPT) -> None:
    """List keys (id, name, scopes, created, revoked, last used); never the secrets."""
    store = _store(db, keys)
    typer.echo(json.dumps([k.to_dict() for k in store.list()], indent=2))
    store.close()


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id (see `keys list`)."),
                db: str | None = DB_OPT, keys: str | None = KEYS_OPT) -> None:
    """Revoke a key: requests with it get 401 from now on (audited)."""
    store = _store(db, keys)
    key = store.revoke(key_id)
    store.audit("revoke_key", None, "ok", key.id, None, json.dumps({"via": "cli"}))
    store.close()
    typer.echo(f"revoked id={key.id} name={key.name} at {key.revoked_at}")
