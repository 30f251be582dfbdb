"""Alignment geometry: known similarity transforms must be recovered exactly."""

import numpy as np
import pytest

from facelab.align import align_face, center_crop, crop_box, estimate_similarity, face_template
from facelab.errors import ConfigError


def _similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.concatenate([rot, np.array(shift)[:, None]], axis=1)


@pytest.mark.parametrize(
    "angle,scale,shift", [(0, 1, (0, 0)), (30, 2.5, (40, -7)), (-75, 0.4, (3, 90))]
)
def test_rotated_scaled_points_map_back_to_template(angle, scale, shift):
    tpl = face_template(112)
    fwd = _similarity(angle, scale, shift)
    pts = tpl @ fwd[:, :2].T + fwd[:, 2]  # the template moved somewhere in an image
    m = estimate_similarity(pts, tpl)
    back = pts @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(back, tpl, atol=1e-9)
    # the recovered matrix is the inverse similarity: scale 1/scale, angle -angle
    assert np.isclose(np.sqrt(abs(np.linalg.det(m[:, :2]))), 1 / scale)
    assert np.isclose(np.degrees(np.arctan2(m[1, 0], m[0, 0])), -angle)


def test_estimate_similarity_is_least_squares_with_noise():
    rng = np.random.default_rng(0)
    tpl = face_template(112)
    fwd = _similarity(12, 1.7, (20, 30))
    pts = tpl @ fwd[:, :2].T + fwd[:, 2] + rng.normal(0, 0.5, (5, 2))
    m = estimate_similarity(pts, tpl)
    err = np.abs(pts @ m[:, :2].T + m[:, 2] - tpl).max()
    assert 0 < err < 1.0


def test_no_reflection_even_for_mirrored_points():
    tpl = face_template(112)
    mirrored = tpl * np.array([-1, 1])
    m = estimate_similarity(mirrored, tpl)
    assert np.linalg.det(m[:, :2]) > 0


def test_align_face_puts_marked_pixels_on_template():
    # paint a dot at each landmark of a rotated, scaled face; after alignment the dots are
    # at the template positions of the output.
    size = 112
    fwd = _similarity(25, 1.8, (90, 60))
    pts = face_template(size) @ fwd[:, :2].T + fwd[:, 2]
    img = np.zeros((400, 400, 3), np.uint8)
    for x, y in pts:
        img[int(round(y)) - 2 : int(round(y)) + 3, int(round(x)) - 2 : int(round(x)) + 3] = 255
    out = align_face(img, pts, size=size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    for x, y in face_template(size):
        assert out[int(round(y)), int(round(x))].max() > 100


def test_align_face_other_size_scales_template():
    tpl224 = face_template(224)
    np.testing.assert_allclose(tpl224, face_template(112) * 2)
    img = np.random.default_rng(1).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    assert align_face(img, tpl224 + 10, size=224).shape == (224, 224, 3)


def test_align_face_rejects_bad_landmarks():
    img = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ConfigError):
        align_face(img, np.zeros((4, 2)))
    with pytest.raises(ConfigError):
        align_face(img, np.zeros((5, 2)))  # all at one point
    with pytest.raises(ConfigError):
        align_face(img, np.full((5, 2), np.nan))


def test_crop_helpers_unchanged():
    img = np.zeros((100, 100, 3), np.uint8)
    assert crop_box(img, (90, 90, 110, 110)).shape == (20, 20, 3)
    assert center_crop(img, 0.5).shape == (50, 50, 3)
