"""The mask adapter: synthetic masks on dlib chips, LDA projection that damps mask shifts."""

import numpy as np
import pytest

from facelab.embed.mask_adapter import MaskAdapter, paint_synthetic_mask
from facelab.errors import ConfigError


def test_paint_covers_lower_face_only():
    rng = np.random.default_rng(1)
    chip = np.full((150, 150, 3), 7, np.uint8)
    for _ in range(20):
        out = paint_synthetic_mask(chip, rng)
        assert out.shape == chip.shape and out.dtype == np.uint8
        assert (out[:50] == 7).all()  # eyes and brows untouched
        assert (out[100:140, 60:90] != 7).any(axis=-1).mean() > 0.9  # mouth and chin covered
    assert (chip == 7).all()  # input not modified


def test_paint_scales_with_chip_size_and_rejects_grey():
    out = paint_synthetic_mask(np.zeros((300, 300, 3), np.uint8), np.random.default_rng(0))
    assert (out[200:280, 120:180] != 0).any(axis=-1).mean() > 0.9
    with pytest.raises(ConfigError, match="chip"):
        paint_synthetic_mask(np.zeros((150, 150), np.uint8), np.random.default_rng(0))


def _toy(rng, mask_dirs, n_id=60, per=4):
    """Identities as points; a 'mask' adds a big shift along a few fixed directions
    (a property of the embedding model, shared by everyone)."""
    dim = mask_dirs.shape[1]
    centres = rng.normal(0, 1, (n_id, dim))
    ident = np.repeat(np.arange(n_id), per)
    plain = centres[ident] + rng.normal(0, 0.3, (len(ident), dim))
    shift = rng.normal(0, 2.0, (len(ident), len(mask_dirs))) @ mask_dirs
    masked = centres[ident] + rng.normal(0, 0.3, (len(ident), dim)) + shift
    return ident, plain, masked


def _accuracy(a, b, same):
    d = np.linalg.norm(a - b, axis=1)
    return max(((d <= t) == same).mean() for t in np.unique(d))


def test_adapter_improves_masked_vs_unmasked_on_new_identities():
    mask_dirs = np.random.default_rng(9).normal(0, 1, (3, 24))
    ident, plain, masked = _toy(np.random.default_rng(0), mask_dirs)
    adapter = MaskAdapter.fit(np.concatenate([plain, masked]), np.concatenate([ident, ident]), n_components=16)
    # new people: each masked photo vs an unmasked photo of the same person, then of another
    ident, plain, masked = _toy(np.random.default_rng(1), mask_dirs)
    i = np.arange(len(ident))
    mate = i // 4 * 4 + (i + 1) % 4  # another photo of the same person
    stranger = (i + 4) % len(ident)  # a photo of the next person
    a = np.concatenate([masked, masked])
    b = np.concatenate([plain[mate], plain[stranger]])
    same = np.concatenate([np.ones(len(i), bool), np.zeros(len(i), bool)])
    raw = _accuracy(a, b, same)
    adapted = _accuracy(adapter.transform(a), adapter.transform(b), same)
    assert adapted > raw + 0.05, (raw, adapted)


def test_save_load_roundtrip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    ident, plain, masked = _toy(rng, rng.normal(0, 1, (3, 24)), n_id=10)
    adapter = MaskAdapter.fit(np.concatenate([plain, masked]), np.concatenate([ident, ident]), n_components=99)
    assert adapter.scalings.shape == (24, 9)  # capped at classes - 1
    again = MaskAdapter.load(adapter.save(tmp_path / "a.npz"))
    np.testing.assert_allclose(again.transform(plain), adapter.transform(plain), rtol=1e-6)
    assert np.allclose(np.linalg.norm(again.transform(plain), axis=1), 1)
    with pytest.raises(ConfigError, match="not found"):
        MaskAdapter.load(tmp_path / "missing.npz")
    with pytest.raises(ConfigError, match="two identities"):
        MaskAdapter.fit(plain[:3], np.arange(3))
