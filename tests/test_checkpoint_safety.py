"""Checkpoints and weight files are read as data: a crafted pickle never runs code (issue 12)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from facelab.errors import CheckpointError


class _Evil:
    """Unpickling this object runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_checkpoint(tmp_path: Path, payload: dict) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({**payload, "x": _Evil(marker)}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    return path, marker


def test_attribute_checkpoint_with_code_is_refused_before_it_runs(tmp_path):
    from facelab.predict.run import AttributeRun

    path, marker = _evil_checkpoint(tmp_path, {"format": "facelab-attributes-1"})
    with pytest.raises(CheckpointError, match="refused to load"):
        AttributeRun.load(path)
    assert not marker.exists()


def test_cli_predict_on_a_malicious_checkpoint_runs_nothing(tmp_path):
    from conftest import run_cli

    path, marker = _evil_checkpoint(tmp_path, {"format": "facelab-attributes-1"})
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32), (90, 60, 40)).save(tmp_path / "imgs" / "a.png")
    proc = run_cli("predict", str(path), "--folder", str(tmp_path / "imgs"), cwd=tmp_path)
    assert proc.returncode == 2 and "refused to load" in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("loader", ["mtcnn-mask", "mobilefacenet", "embed-train"])
def test_other_weight_files_with_code_are_refused(tmp_path, loader):
    path, marker = _evil_checkpoint(tmp_path, {"states": {}, "meta": {}, "model": {}, "config": {}})
    with pytest.raises(CheckpointError):
        if loader == "mtcnn-mask":
            from facelab.detect.mtcnn import MTCNNMask

            MTCNNMask(weights=str(path))._checkpoint()
        elif loader == "mobilefacenet":
            from facelab.embed.mobilefacenet import MobileFaceNetEmbedder

            MobileFaceNetEmbedder(path)
        else:
            from facelab.io.torchfile import load_torch_file

            load_torch_file(path, "training checkpoint")
    assert not marker.exists()


def test_truncated_and_foreign_files_give_one_line_errors(tmp_path):
    from facelab.models.checkpoint import load_checkpoint

    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError, match="cannot be read") as err:
        load_checkpoint(tmp_path / "cut.pt")
    assert "\n" not in str(err.value)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a facelab attribute checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
