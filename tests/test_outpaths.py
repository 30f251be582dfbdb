"""Output-path policy (facelab.io.outpaths) and the batch behaviour of `crop` / `detect`.

CLI tests run the real entry point on tiny images made here; `crop` uses the "center"
fallback only (no detector), `detect` OpenCV's Haar cascade, so each test takes seconds.
"""

from __future__ import annotations

import csv
import doctest
import io
import os

import numpy as np
import pandas as pd
import pytest
from conftest import face_image, run_cli
from PIL import Image

from facelab.errors import DataFormatError
from facelab.io import outpaths
from facelab.io.outpaths import derived_path, relative_output_name

# Haar with no neighbour vote finds "faces" in conftest's cartoon faces: rows to quote.
EAGER_HAAR = "haar(min_neighbors=0, min_size=10)"


def _img(path, value=120, size=(40, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _inside(path, root):
    return os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)


# --- the policy itself -------------------------------------------------------------------


def test_doctests_pass():
    assert doctest.testmod(outpaths).failed == 0


def test_name_keeps_relative_path_and_extension():
    out = derived_path("o", "a/b/face.jpg", suffix=".png")
    assert out.as_posix() == "o/a/b/face.jpg.png"
    assert derived_path("o", "face.jpg", suffix=".png") != derived_path(
        "o", "face.png", suffix=".png"
    )


@pytest.mark.parametrize(
    "name",
    ["../x.jpg", "../../../../etc/passwd", "/etc/passwd", "a/../../b.jpg", "..", "./../x",
     "C:/win/x.jpg", "..\\..\\x.jpg", "//server/share/x.jpg"],
)  # fmt: skip
def test_outputs_stay_inside_out_dir(tmp_path, name):
    out = tmp_path / "out"
    dest = derived_path(out, name, suffix=".jpg")
    assert _inside(dest, out), dest
    assert ".." not in dest.relative_to(out).parts


def test_distinct_names_never_collide():
    names = [
        "face.jpg", "face.png", "face", "face.jpg.jpg", "../x.jpg", "%2E%2E/x.jpg", "/x.jpg",
        "%2F/x.jpg", "x.jpg", "a,b\nc.png", "a,b%0Ac.png", "a#1.jpg", "a.jpg#1", "a\\b.jpg",
        "a%5Cb.jpg", "a:b.jpg", "é" * 200 + ".jpg", "é" * 201 + ".jpg", "x" * 300, "x" * 301,
    ]  # fmt: skip
    outs = [relative_output_name(n, suffix=".jpg") for n in names]
    outs += [relative_output_name(n, suffix=".jpg", variant=1) for n in names]
    outs += [relative_output_name(n, suffix=".jpg", variant=2) for n in names]
    assert len(set(outs)) == len(outs)
    for o in outs:  # every component fits a file name (255 bytes) and has no control byte
        assert all(len(part.encode()) <= 255 for part in o.split("/")), o
        assert o.isprintable(), o


def test_symlink_pointing_outside_is_refused(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataFormatError, match="outside"):
        derived_path(out, "sub/a.png", suffix=".jpg")
    (out / "a.png.jpg").symlink_to(outside / "victim.jpg")  # a dangling file link
    with pytest.raises(DataFormatError, match="outside"):
        derived_path(out, "a.png", suffix=".jpg")
    (out / "inner").mkdir()
    (out / "ok").symlink_to(out / "inner", target_is_directory=True)  # inside: fine
    assert derived_path(out, "ok/a.png", suffix=".jpg") == out / "ok" / "a.png.jpg"


def test_out_dir_reached_through_a_symlink_is_fine(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    assert derived_path(tmp_path / "link", "a.png", suffix=".jpg") == tmp_path / "link/a.png.jpg"


# --- facelab crop --------------------------------------------------------------------------


def _crop(tmp_path, source, out="out", *extra):
    return run_cli("crop", str(source), "--out", str(tmp_path / out), "--spec", "center",
                   *extra, cwd=tmp_path)  # fmt: skip


def test_crop_dotdot_row_does_not_overwrite_the_source(tmp_path):
    victim = _img(tmp_path / "x" / "victim" / "good.jpg", size=(80, 60))
    before = victim.read_bytes()
    (tmp_path / "a" / "b").mkdir(parents=True)
    # from a/b/, ../../x/victim/good.jpg is the photo; the old code wrote
    # out/crops/../../x/victim/good.jpg, i.e. over it
    (tmp_path / "a" / "b" / "list.csv").write_text("path\n../../x/victim/good.jpg\n")
    r = _crop(tmp_path, tmp_path / "a" / "b" / "list.csv", "out", "--size", "16")
    assert r.returncode == 0, r.stderr
    assert "cropped 1" in r.stdout
    assert victim.read_bytes() == before
    assert _files(tmp_path / "x") == ["victim/good.jpg"]
    crop = pd.read_csv(tmp_path / "out" / "crops.csv")["crop"].iloc[0]
    assert _inside(tmp_path / "out" / "crops" / crop, tmp_path / "out" / "crops")
    assert Image.open(tmp_path / "out" / "crops" / crop).size == (16, 16)


def test_crop_absolute_row_is_cropped_inside_out(tmp_path):
    photo = _img(tmp_path / "elsewhere" / "p.png")
    (tmp_path / "list.csv").write_text(f"path\n{photo}\n")
    r = _crop(tmp_path, tmp_path / "list.csv")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "cropped 1" in r.stdout
    files = _files(tmp_path / "out" / "crops")
    assert len(files) == 1 and files[0].endswith("p.png.jpg")
    assert _files(tmp_path / "elsewhere") == ["p.png"]


def test_crop_symlinks_never_write_outside(tmp_path):
    src, outside = tmp_path / "imgs", tmp_path / "outside"
    _img(src / "sub" / "a.png")
    _img(src / "b.png")
    _img(outside / "photo.png", value=30)
    (src / "link.png").symlink_to(outside / "photo.png")  # an input linking outside: read only
    (tmp_path / "out" / "crops").mkdir(parents=True)
    # a link inside the output folder that points outside: writing through it is refused
    (tmp_path / "out" / "crops" / "sub").symlink_to(outside, target_is_directory=True)
    r = _crop(tmp_path, src)
    assert r.returncode == 0, r.stderr
    assert "cropped 2" in r.stdout and "failed 1" in r.stdout
    assert _files(outside) == ["photo.png"]
    assert "sub/a.png" in (tmp_path / "out" / "errors.csv").read_text()
    assert (tmp_path / "out" / "crops" / "link.png.jpg").is_file()
    assert (tmp_path / "out" / "crops" / "b.png.jpg").is_file()


def test_crop_face_jpg_and_png_get_separate_crops(tmp_path):
    src = tmp_path / "imgs"
    _img(src / "face.jpg", value=200, size=(40, 40))
    _img(src / "face.png", value=20, size=(60, 60))
    r = _crop(tmp_path, src)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(tmp_path / "out" / "crops.csv")
    assert len(df) == 2 and df["crop"].nunique() == 2
    crops = tmp_path / "out" / "crops"
    assert _files(crops) == ["face.jpg.jpg", "face.png.jpg"]
    assert np.asarray(Image.open(crops / "face.jpg.jpg")).mean() > 150  # not overwritten
    assert np.asarray(Image.open(crops / "face.png.jpg")).mean() < 70


def test_crop_bad_items_in_a_batch_are_skipped_and_listed(tmp_path):
    src = tmp_path / "imgs"
    for n in ("a.png", "b.png", "c.png"):
        _img(src / n)
    (src / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (src / "list.csv").write_text("path\na.png\nmissing.png\ncorrupt.jpg\nb.png\nc.png\n")
    # b's crop cannot be written (a folder sits at its output path): listed, the rest go on
    derived_path(tmp_path / "out" / "crops", "b.png", suffix=".jpg").mkdir(parents=True)
    r = _crop(tmp_path, src / "list.csv", "out", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert "cropped 2" in r.stdout and "failed 3" in r.stdout
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert sorted(errors["source"]) == ["b.png", "corrupt.jpg", "missing.png"]
    assert (errors["error"].str.count("\n") == 0).all()
    assert set(pd.read_csv(tmp_path / "out" / "crops.csv")["source"]) == {"a.png", "c.png"}


def test_crop_all_bad_exits_nonzero(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    (src / "x.jpg").write_bytes(b"junk")
    (src / "y.png").write_bytes(b"")
    r = _crop(tmp_path, src)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "nothing cropped" in r.stderr
    assert len(pd.read_csv(tmp_path / "out" / "errors.csv")) == 2


@pytest.mark.parametrize(
    ("content", "expect"),
    [(b"", "empty CSV"), ("path\ncaf\u00e9.jpg\n".encode("latin-1"), "UTF-8"),
     (b"path\n", "no rows")],
)  # fmt: skip
def test_crop_unreadable_csv_is_a_one_line_error(tmp_path, content, expect):
    (tmp_path / "list.csv").write_bytes(content)
    r = _crop(tmp_path, tmp_path / "list.csv")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "list.csv" in lines[0] and expect in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


# --- facelab detect -----------------------------------------------------------------------


def _faces(folder, *names):
    for n in names:  # the same picture each time (seed 0): Haar finds faces in it
        face_image(np.random.default_rng(0), 2, 0, 0, size=64).save(folder / n)


def test_detect_quotes_odd_names_and_skips_bad_files(tmp_path):
    odd = "a,b\nc.png"
    _faces(tmp_path, "first.png", odd, "last.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    args = [str(tmp_path / n) for n in ("first.png", "bad.jpg", odd, "missing.png", "last.png")]
    r = run_cli("detect", *args, "-d", EAGER_HAAR, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0][:3] == ["image", "stage", "score"]
    assert all(len(row) == len(rows[0]) for row in rows)
    images = {row[0] for row in rows[1:]}
    assert images == {str(tmp_path / n) for n in ("first.png", odd, "last.png")}
    failed = [ln for ln in r.stderr.splitlines() if ln.startswith("failed:")]
    assert len(failed) == 2 and "bad.jpg" in failed[0] and "missing.png" in failed[1]


def test_detect_all_bad_exits_nonzero(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    r = run_cli("detect", str(tmp_path / "bad.jpg"), str(tmp_path / "no.png"), "-d", "haar",
                cwd=tmp_path)  # fmt: skip
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "none of the 2 images" in r.stderr
