"""Property-based fuzz of `facelab serve`'s OpenAPI schema with schemathesis.

The real server runs on a loopback port (uvicorn in a thread, as in tests/test_serve.py) over
the session's tiny trained run and a face database with one enrolled identity (whole-image
detector, `pixels` embedder). schemathesis reads /openapi.json from it and sends generated
requests, valid and invalid ones, to every operation with an admin key (all scopes); the only
check is `not_a_server_error`: whatever it sends, the service answers with a 2xx/4xx, never a
5xx. Bounded: at most MAX_EXAMPLES requests per operation, no shrinking past a few seconds.
"""

from __future__ import annotations

import io
import json
import os

import httpx
import numpy as np
import pytest

schemathesis = pytest.importorskip("schemathesis")

from conftest import running
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from facelab.facedb.db import FaceDB, FaceDBConfig
from facelab.serve import ServeConfig, create_app
from facelab.serve.keys import KeyStore

MAX_EXAMPLES = int(os.environ.get("FACELAB_FUZZ_EXAMPLES", "25"))  # per operation and mode
IMAGE_FIELDS = ("image", "image_a", "image_b", "images")
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
MODES = ("RGB", "L", "RGBA", "LA", "P", "1", "I;16", "I", "F", "CMYK", "YCbCr")


def _image_bytes(fmt: str, mode: str, w: int, h: int, seed: int, cut: bool) -> bytes:
    """A real image of any size, mode and format (what Pillow can save of it), maybe truncated:
    random bytes in a file field only ever reach the signature check, these reach the decoder,
    the detector and the models."""
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    img = img.convert("I").point(lambda v: v * 257).convert("I;16") if mode == "I;16" else img.convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, fmt)
    except (OSError, ValueError, KeyError):
        buf = io.BytesIO()
        img.convert("RGB").save(buf, fmt)
    data = buf.getvalue()
    return data[: max(1, len(data) // 2)] if cut else data


real_images = st.builds(_image_bytes, st.sampled_from(FORMATS), st.sampled_from(MODES),
                        st.integers(1, 320), st.integers(1, 320), st.integers(0, 2**16),
                        st.integers(0, 5).map(lambda i: i == 0))
faces = st.sampled_from(["largest", "central", "all", "0", "1", "-1", "99", "2"])


KNOWN: dict = {}  # the server, and the id of a key that the fuzz may revoke
UPLOADS = {"/v1/analyze": ("image",), "/v1/search": ("image",), "/v1/verify": ("image_a", "image_b"),
           "/v1/identities": ("images",)}


def _realistic(case, data) -> None:
    """Half of the cases: real images in the file fields (and no URL beside them), a known
    identity name, a known `face` choice, valid key scopes; the rest of the case stays as
    schemathesis made it (odd strings, numbers at the bounds, missing optional fields)."""
    if not data.draw(st.booleans(), label="realistic"):
        return
    body = case.body
    uploads = UPLOADS.get(case.path, ()) if case.method.upper() == "POST" else ()
    if uploads:
        body = case.body = body if isinstance(body, dict) else {}
        for field in uploads:
            if field == "image_b" and data.draw(st.booleans(), label="identity instead"):
                body.pop("image_b", None)
                body["identity"] = data.draw(st.sampled_from(["ada", "bob"]), label="identity")
                continue
            pics = data.draw(st.lists(real_images, min_size=1, max_size=3), label=field)
            body[field] = pics if field == "images" else pics[0]
        body.pop("url", None)
        if "face" in body or data.draw(st.booleans(), label="add face"):
            body["face"] = data.draw(faces, label="face")
        if "images" in body:
            body["name"] = data.draw(st.sampled_from(["ada", "bob", "cy"]), label="name")
        if case.path == "/v1/analyze":
            body["identify"] = data.draw(st.booleans(), label="identify")
        if case.path == "/v1/search" and data.draw(st.booleans(), label="valid k"):
            body["k"] = data.draw(st.integers(1, 10), label="k")
    if isinstance(body, dict) and "scopes" in body:
        body["scopes"] = data.draw(st.lists(st.sampled_from(["read", "write", "admin"]),
                                            min_size=1, max_size=3), label="scopes")
    if case.path_parameters and "face_id" in case.path_parameters:  # eve's stored crops
        case.path_parameters["name"] = "eve"
        live = httpx.get(f"{KNOWN['base']}/v1/identities/eve", headers=KNOWN["headers"]).json()
        stored = [f["face_id"] for f in live.get("faces", ())]
        case.path_parameters["face_id"] = data.draw(st.sampled_from([0, *stored]), label="face_id")
    elif case.path_parameters and "name" in case.path_parameters:
        case.path_parameters["name"] = data.draw(st.sampled_from(["ada", "bob", "x"]), label="path name")
    if case.path_parameters and "key_id" in case.path_parameters:
        case.path_parameters["key_id"] = data.draw(st.sampled_from(["0", *KNOWN["key_id"]]), label="key_id")


@pytest.fixture(scope="module")
def fuzz_server(tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-fuzz")
    FaceDB.init(root / "faces.db", FaceDBConfig(embedder="pixels", detector="whole", fallback="whole",
                                               phash_distance=-1)).close()
    cfg = ServeConfig(db=str(root / "faces.db"), run=str(tiny_run), max_body_bytes=1024 * 1024,
                      max_pixels=2_000_000, rate_per_minute=0, workers=2, url_deadline=2)
    ks = KeyStore(cfg.keys_path)
    _, secret = ks.add("fuzz", "read,write,admin")
    ks.close()
    with running(create_app(cfg)) as base:
        headers = {"X-API-Key": secret}
        for seed, name in enumerate(("ada", "eve"), 1):  # ada may be erased by the fuzz; eve stays
            photo = _image_bytes("PNG", "RGB", 64, 64, seed, False)
            r = httpx.post(base + "/v1/identities", headers=headers, data={"name": name},
                           files=[("images", (f"{name}.png", photo, "image/png"))], timeout=60)
            assert r.status_code == 201, r.text
        r = httpx.post(base + "/v1/keys", headers=headers, json={"name": "victim", "scopes": ["read"]})
        assert r.status_code == 201, r.text
        KNOWN.update(base=base, headers=headers, key_id=[r.json()["id"]])
        yield base, headers


def files_as_files(doc: dict) -> dict:
    """The OpenAPI document with every optional upload (FastAPI writes ``anyOf: [{type: string,
    contentMediaType: application/octet-stream}, {type: null}]``) reduced to its binary branch.

    schemathesis sends a multipart field as a file (with a filename) only when the property
    itself is binary; it does not look inside anyOf, so without this it would send optional
    images as plain text fields and every such request would stop at FastAPI's "expected
    UploadFile" 422, never reaching the image checks or the models. Optionality stays, from
    ``required``; a multipart part cannot be null anyway."""
    for body in doc.get("components", {}).get("schemas", {}).values():
        for prop in body.get("properties", {}).values():
            binary = [b for b in prop.get("anyOf", ()) if b.get("contentMediaType") == "application/octet-stream"]
            if binary:
                del prop["anyOf"]
                prop.update(binary[0])
    return doc


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    base, _ = fuzz_server
    doc = httpx.get(base + "/openapi.json").json()
    return schemathesis.openapi.from_dict(files_as_files(doc))


def _operations(schema) -> list:
    return [r.ok() for r in schema.get_all_operations()]


def _fuzzer(op, generation_mode, base: str, headers: dict, tally: dict[int, int], calls: dict):
    """A Hypothesis test for one operation: MAX_EXAMPLES cases, each sent and checked."""

    @given(case=op.as_strategy(generation_mode=generation_mode), data=st.data())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def fuzz(case, data):
        _realistic(case, data)
        calls["n"] += 1
        resp = case.call_and_validate(base_url=base, headers=headers, checks=[not_a_server_error],
                                      timeout=30)
        tally[resp.status_code] = tally.get(resp.status_code, 0) + 1
        if resp.status_code >= 400 and os.environ.get("FUZZ_DEBUG"):
            print(op.method.upper(), op.path, resp.status_code, resp.text[:200])

    return fuzz


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_operation_answers_with_a_server_error(api_schema, fuzz_server, mode):
    """Every operation, MAX_EXAMPLES generated requests each (schema-valid ones, then ones
    that break the schema on purpose): no 5xx. Failures are collected over all operations and
    reported together, each with the request that caused it."""
    base, headers = fuzz_server
    generation_mode = GenerationMode(mode)
    failures: dict[str, str] = {}
    calls = {"n": 0}
    statuses: dict[str, dict[int, int]] = {}
    for op in _operations(api_schema):
        label = f"{op.method.upper()} {op.path}"
        statuses[label] = {}
        try:
            _fuzzer(op, generation_mode, base, headers, statuses[label], calls)()
        except Unsatisfiable:  # nothing to break: no parameters and no body (e.g. GET /healthz)
            assert mode == "negative", label
        except Exception as exc:  # noqa: BLE001  (the check's failure, with the request to reproduce it)
            failures[label] = str(exc)[:2000]
    print(json.dumps(statuses, indent=1))
    assert calls["n"] >= len(_operations(api_schema)), calls
    if mode == "positive":  # the fuzz got past the checks to the models and the database
        for label, status in [("POST /v1/analyze", 200), ("POST /v1/identities", 201),
                              ("GET /v1/identities/{name}/faces/{face_id}/crop", 200),
                              ("GET /v1/identities/{name}", 200), ("POST /v1/keys", 201)]:
            assert statuses[label].get(status), (label, statuses[label])
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def test_the_fuzz_reaches_every_operation(api_schema):
    """The schema the fuzz walks lists every /v1 operation (a route left out of the OpenAPI
    document would be left out of the fuzz too)."""
    ops = {(op.method.upper(), op.path) for op in
           (r.ok() for r in api_schema.get_all_operations())}
    for want in [("POST", "/v1/analyze"), ("POST", "/v1/verify"), ("POST", "/v1/search"),
                 ("GET", "/v1/identities"), ("POST", "/v1/identities"),
                 ("GET", "/v1/identities/{name}"), ("DELETE", "/v1/identities/{name}"),
                 ("GET", "/v1/identities/{name}/faces/{face_id}/crop"), ("GET", "/v1/keys"),
                 ("POST", "/v1/keys"), ("DELETE", "/v1/keys/{key_id}"), ("GET", "/v1/audit"),
                 ("GET", "/v1/info"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]:
        assert want in ops, (want, sorted(ops))
