"""Property-based fuzzing: the image decoder and the CSV readers either return well-formed
data or raise facelab's own one-line error, whatever bytes they are given (issue 12)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from facelab.errors import FacelabError
from facelab.io.image import load_image

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


SEEDS = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP")}


def _check_decoded(data: bytes) -> None:
    try:
        arr = load_image(data)
    except FacelabError as exc:
        assert "\n" not in str(exc)
        return
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 and arr.size > 0


@FUZZ
@given(st.binary(max_size=2048))
def test_decoder_on_arbitrary_bytes(data):
    _check_decoded(data)


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                                  min_size=1, max_size=8), st.integers(0, 10_000))
def test_decoder_on_mutated_and_truncated_images(fmt, flips, cut):
    data = bytearray(SEEDS[fmt])
    for pos, value in flips:
        data[pos % len(data)] = value
    _check_decoded(bytes(data[: max(1, len(data) - cut % len(data))]))


CSV_TEXT = st.text(alphabet=st.sampled_from(list("image,x1y2mask gender age\n\"0123456789.-;\tinf" + "é")),
                   max_size=300)


@FUZZ
@given(text=CSV_TEXT, encoding=st.sampled_from(["utf-8", "latin-1"]))
def test_csv_readers_on_arbitrary_text(tmp_path, text, encoding):
    from facelab.data.formats import load_boxes_csv, load_labels_csv
    from facelab.predict.predict import input_table

    path = tmp_path / "in.csv"
    path.write_bytes(text.encode(encoding, errors="replace"))
    for read in (lambda: load_labels_csv(path), lambda: load_boxes_csv(path),
                 lambda: input_table(csv=str(path)), lambda: input_table(boxes=str(path))):
        try:
            table = read()
        except FacelabError as exc:
            assert str(path) in str(exc)  # the message names the file
            continue
        assert {"path", "x1", "y1", "x2", "y2"} <= set(table.columns)


@pytest.mark.parametrize("fmt", sorted(SEEDS))
def test_seed_images_decode(fmt):
    assert load_image(SEEDS[fmt]).shape == (24, 20, 3)
