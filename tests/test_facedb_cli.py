"""`facelab db ...` through the Typer app (CliRunner), with tiny synthetic 'people'."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

import facelab.cli.db  # noqa: F401  (registers the commands)
from facelab.cli import app

runner = CliRunner()


def _people(root):
    for s, name in enumerate(["ada", "bob", "cy"]):
        base = np.random.default_rng(s).integers(0, 255, (8, 8, 3)).astype(float)
        for v in range(2):
            img = np.kron(base, np.ones((8, 8, 1))) + np.random.default_rng(10 * s + v).normal(0, 5, (64, 64, 3))
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{v}.png")


def _ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, (args, res.output, res.exception)
    return res.output


def test_db_cli_roundtrip(tmp_path):
    _people(tmp_path / "people")
    db = str(tmp_path / "f.db")
    _ok(["db", "init", db, "--embedder", "pixels", "--detector", "whole", "--phash-distance", "-1"])
    out = _ok(["db", "ingest", db, str(tmp_path / "people"), "--identity-from", "folder", "--no-progress"])
    assert "added=6" in out
    out = _ok(["db", "search", db, str(tmp_path / "people" / "bob" / "0.png"), "-k", "3"])
    rows = [r.split(",") for r in out.strip().splitlines()]
    assert rows[0][:3] == ["rank", "identity", "distance"]
    assert rows[1][1] == "bob" and rows[2][1] == "bob"
    out = _ok(["db", "verify", db, str(tmp_path / "people" / "cy" / "1.png"), "cy"])
    assert json.loads(out)["same"] is True
    # the same bytes already stored as ada: refused, and said so (nothing enrolled as dee)
    res = runner.invoke(app, ["db", "enroll", db, "dee", str(tmp_path / "people" / "ada" / "0.png")])
    assert res.exit_code != 0 and "already stored under identity 'ada'" in str(res.exception)
    out = _ok(["db", "delete", db, "bob", "--yes"])
    assert json.loads(out)["embedding_ids"] == 2
    stats = json.loads(_ok(["db", "stats", db]))
    assert stats["identities"] == 2 and stats["embeddings"] == 4 and stats["index"]["vectors"] == 4
    assert "vectors=4" in _ok(["db", "rebuild-index", db])


def test_db_cli_unknown_identity_is_a_clear_error(tmp_path):
    db = str(tmp_path / "f.db")
    _ok(["db", "init", db, "--embedder", "pixels", "--detector", "whole"])
    res = runner.invoke(app, ["db", "delete", db, "nobody", "--yes"])
    assert res.exit_code != 0
    assert "not in the database" in str(res.exception)


def test_every_db_command_has_an_example():
    for cmd in ["init", "ingest", "enroll", "search", "verify", "calibrate", "stats", "delete",
                "rebuild-index", "download", "crawl", "frames"]:
        assert "Example" in _ok(["db", cmd, "--help"]), cmd
    assert "Example" in _ok(["verify-eval", "--help"])
