"""facelab.serve: the REST service and web page over the face analyzer and the face database.

`create_app(ServeConfig(db="faces.db", run="runs/mt"))` gives the FastAPI app;
`facelab serve --db faces.db --run runs/mt` runs it on uvicorn. See docs/serve.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeConfig", "create_app", "serve"]


def __getattr__(name: str) -> Any:  # FastAPI loads only when the service is used
    if name == "create_app":
        from facelab.serve.app import create_app

        return create_app
    if name == "ServeConfig":
        from facelab.serve.config import ServeConfig

        return ServeConfig
    if name == "serve":
        from facelab.serve.run import serve

        return serve
    raise AttributeError(name)
