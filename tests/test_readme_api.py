"""The README's Python API block runs as written, and every documented facelab import resolves."""

from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).parents[1]


def _api_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_block_runs(tiny_run, tmp_path, monkeypatch, capsys):
    (tmp_path / "runs").mkdir()
    shutil.copytree(tiny_run, tmp_path / "runs" / "mt")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (80, 64, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(_api_block(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'mask':" in out and "(128,)" in out


def test_documented_imports_resolve():
    """`from facelab.x import y` lines in the README and docs name things that exist."""
    pattern = re.compile(r"from (facelab[\w.]*) import ([\w, ]+)")
    checked = 0
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for module, names in pattern.findall(doc.read_text()):
            mod = importlib.import_module(module)
            for name in (n.strip() for n in names.split(",") if n.strip()):
                assert hasattr(mod, name), f"{doc.name}: {module} has no {name}"
                checked += 1
    assert checked >= 3
