"""The `facelab serve` web page in real headless Chromium (Debian's `chromium`, driven by
Playwright; no browser is downloaded): connect with a key, enroll, see the thumbnail, analyze
a photo (boxes and labels drawn), search, verify two photos, delete. Saves docs/img/serve.png.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import face_image, running
from PIL import Image
from test_serve import person

from facelab.facedb.db import FaceDB, FaceDBConfig
from facelab.serve import ServeConfig, create_app
from facelab.serve.keys import KeyStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).parents[1] / "docs" / "img" / "serve.png"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no system Chromium (apt-get install chromium; scripts/bootstrap.sh --with-browser)")


def wait_js(page, expr: str, timeout: float = 20.0) -> None:
    """Poll a JS expression (page.wait_for_function evaluates strings, which the page's
    Content-Security-Policy forbids; page.evaluate goes through the debugger protocol)."""
    end = time.monotonic() + timeout
    while not page.evaluate(expr):
        assert time.monotonic() < end, f"timed out waiting for {expr}"
        time.sleep(0.05)


def _save(path: Path, arr: np.ndarray) -> str:
    Image.fromarray(arr).save(path)
    return str(path)


def test_web_page_analyze_enroll_search_verify_delete(tiny_run, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    FaceDB.init(tmp_path / "faces.db", FaceDBConfig(embedder="pixels", detector="whole", fallback="whole",
                                                   phash_distance=-1)).close()
    cfg = ServeConfig(db=str(tmp_path / "faces.db"), run=str(tiny_run))
    ks = KeyStore(cfg.keys_path)
    key = ks.add("web", "read,write,admin")[1]
    ks.close()
    ada = [_save(tmp_path / f"ada{i}.png", person(40, i, size=160)) for i in range(3)]
    grace = _save(tmp_path / "grace.png", person(41, size=160))
    rng = np.random.default_rng(0)
    cartoon = tmp_path / "cartoon.png"
    face_image(rng, mask=0, female=1, old=0, size=240).save(cartoon)

    with running(create_app(cfg)) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: d.accept())
        resp = page.goto(base + "/")
        assert page.title() == "facelab" and "script-src 'self'" in resp.headers["content-security-policy"]

        # a wrong key is reported, nothing else happens
        page.fill("#key", "flk_bad_key")
        page.click("#connect")
        wait_js(page, "document.getElementById('status').className === 'error'")
        assert "unknown or revoked" in page.text_content("#status")

        page.fill("#key", key)
        page.click("#connect")
        wait_js(page, "document.getElementById('info').textContent.includes('faces.db')")
        info = page.text_content("#info")
        assert "model run" in info and "pixels:1" in info and "0 identities" in info

        # enroll two people; thumbnails load through the API
        for name, files in (("Ada", ada[:2]), ("Grace", [grace])):
            page.fill("#enroll-name", name)
            page.set_input_files("#enroll-files", files)
            page.click("#enroll-form button[type=submit]")
            page.wait_for_selector(f"#identities li[data-name='{name}']")
        wait_js(page, "[...document.querySelectorAll('#identities img')].every(i => i.naturalWidth > 0)")
        assert "2 faces" in page.text_content("#identities li[data-name='Ada']")
        wait_js(page, "document.getElementById('info').textContent.includes('2 identities')")

        # analyze: a face box with labels is drawn on the canvas, the identity is found
        page.set_input_files("#analyze-file", ada[2])
        page.click("#analyze-form button[type=submit]")
        page.wait_for_selector("#faces li")
        label = page.text_content("#faces li")
        assert "mask " in label and "gender " in label and "age " in label and "= Ada" in label
        size = page.evaluate("[document.getElementById('canvas').width, document.getElementById('canvas').height]")
        assert size == [160, 160]
        # the box outline is drawn in the "known identity" colour on the image's left edge
        edge = page.evaluate("Array.from(document.getElementById('canvas').getContext('2d')"
                             ".getImageData(0, 80, 1, 1).data)")
        assert edge[:3] == [0x1a, 0x73, 0xe8], edge

        # search and verify
        page.set_input_files("#search-file", ada[2])
        page.click("#search-form button[type=submit]")
        page.wait_for_selector("#search-result tbody tr")
        first = page.text_content("#search-result tbody tr")
        assert "Ada" in first and "yes" in first
        page.set_input_files("#verify-a", ada[0])
        page.set_input_files("#verify-b", grace)
        page.click("#verify-form button[type=submit]")
        page.wait_for_selector("#verify-result.bad")
        assert "different people" in page.text_content("#verify-result")

        # a photo of a cartoon face for the screenshot (mask on, boxes and labels)
        page.uncheck("#identify")
        page.set_input_files("#analyze-file", str(cartoon))
        page.click("#analyze-form button[type=submit]")
        wait_js(page, "document.getElementById('canvas').width === 240")
        wait_js(page, "document.getElementById('status').textContent === 'analyze: done'")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        # delete Grace (confirm dialog accepted): gone from the list and from the database
        page.click("#identities li[data-name='Grace'] button")
        page.wait_for_selector("#identities li[data-name='Grace']", state="detached")
        assert page.query_selector("#identities li[data-name='Ada']") is not None
        browser.close()
        assert errors == []
    db = FaceDB(tmp_path / "faces.db")
    assert db.store.identity_id("Grace") is None and db.store.identity_id("Ada") is not None
    db.close()
    assert SCREENSHOT.stat().st_size > 10_000
