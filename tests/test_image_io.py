"""Robust decoding: every odd file either decodes to upright RGB uint8 or names itself in the error."""

import io

import numpy as np
import pytest
from PIL import Image

from facelab.errors import ImageDecodeError
from facelab.io.image import load_image


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_rgba_png_composited_on_white(tmp_path):
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[..., 3] = 0  # fully transparent
    out = load_image(_save(Image.fromarray(arr, "RGBA"), tmp_path / "a.png"))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8 and (out == 255).all()


def test_cmyk_grayscale_16bit_palette(tmp_path):
    cmyk = Image.new("CMYK", (10, 6), (0, 255, 255, 0))  # red
    out = load_image(_save(cmyk, tmp_path / "c.jpg"))
    assert out.shape == (6, 10, 3) and out[..., 0].mean() > 200 and out[..., 1].mean() < 60
    assert load_image(_save(Image.new("L", (5, 5), 128), tmp_path / "g.png")).shape == (5, 5, 3)
    img16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert (load_image(_save(img16, tmp_path / "h.png")) == 255).all()
    assert load_image(_save(Image.new("P", (3, 3)), tmp_path / "p.png")).shape == (3, 3, 3)


def test_exif_rotation_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "r.jpg"
    img.save(path, exif=exif)
    assert load_image(path).shape == (20, 10, 3)


def test_truncated_empty_corrupt_missing_name_the_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match="trunc.jpg.*truncated"):
        load_image(trunc)
    assert load_image(trunc, allow_truncated=True).shape == (64, 64, 3)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty.png.*empty"):
        load_image(empty)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(ImageDecodeError, match="junk.jpg"):
        load_image(junk)
    with pytest.raises(ImageDecodeError, match="nope.jpg.*not found"):
        load_image(tmp_path / "nope.jpg")


def test_huge_image_refused(tmp_path):
    path = _save(Image.new("RGB", (300, 300)), tmp_path / "big.png")
    with pytest.raises(ImageDecodeError, match="big.png.*exceeds"):
        load_image(path, max_pixels=10_000)


def test_bytes_input():
    buf = io.BytesIO()
    Image.new("RGB", (7, 5), (1, 2, 3)).save(buf, "PNG")
    assert load_image(buf.getvalue()).shape == (5, 7, 3)
    with pytest.raises(ImageDecodeError):
        load_image(b"")
