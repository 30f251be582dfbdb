"""The detection commands through the real `facelab` entry point."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

FACELAB = str(Path(sys.executable).with_name("facelab"))


def _run(*args):
    return subprocess.run([FACELAB, *args], capture_output=True, text=True, timeout=300, check=False)


def test_help_lists_commands_with_examples():
    for cmd in ("detect", "crop", "detect-eval", "detect-train"):
        r = _run(cmd, "--help")
        assert r.returncode == 0 and "Example" in r.stdout, (cmd, r.stderr)


def test_crop_and_eval_on_tiny_folder(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    Image.fromarray(np.zeros((50, 70, 3), np.uint8)).save(src / "a.png")
    (src / "bad.jpg").write_bytes(b"not an image")
    r = _run(
        "crop", str(src), "--out", str(tmp_path / "out"), "--spec", "haar>center", "--size", "32"
    )
    assert r.returncode == 0, r.stderr
    assert "cropped 1" in r.stdout and "failed 1" in r.stdout and "fallback:center: 1" in r.stdout
    assert Image.open(tmp_path / "out" / "crops" / "a.png.jpg").size == (32, 32)
    r = _run(
        "crop", str(src), "--out", str(tmp_path / "out"), "--spec", "haar>center", "--size", "32"
    )
    assert "skipped (already done) 1" in r.stdout

    pd.DataFrame(
        [{"image": "a.png", "x1": 5, "y1": 5, "x2": 45, "y2": 45, "label": "with_mask"}]
    ).to_csv(src / "boxes.csv", index=False)
    r = _run(
        "detect-eval", "--boxes", str(src), "--split", "all", "-d", "haar", "-d", "haar>dlib-hog"
    )
    assert r.returncode == 0, r.stderr
    assert "| haar | 0.000 |" in r.stdout and "| haar>dlib-hog |" in r.stdout


def test_user_errors_exit_2_with_message(tmp_path):
    r = _run("detect-eval", "--boxes", str(tmp_path / "missing.csv"))
    assert r.returncode == 2 and "not found" in r.stderr
    r = _run("crop", str(tmp_path), "--out", str(tmp_path / "o"), "--spec", "nosuch>center")
    assert r.returncode == 2 and "unknown detector" in r.stderr


def test_threshold_only_refuses_size_which_no_longer_sets_the_run_size(tmp_path):
    r = _run("detect-train", "--arch", "ssd-mbv2", "--boxes", str(tmp_path), "--threshold-only",
             "--size", "576")
    assert r.returncode != 0
    assert "--infer-size" in r.stderr + r.stdout and "Traceback" not in r.stderr
