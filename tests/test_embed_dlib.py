"""dlib ResNet embedding on real LFW photos (slow: real data + weights; skips without them)."""

from __future__ import annotations

import numpy as np
import pytest

from facelab.types import Face

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lfw():
    from facelab.paths import data_root

    root = data_root() / "lfw"
    if not (root / "pairs.csv").is_file():
        pytest.skip(f"LFW not found under {root}; set FACELAB_DATA")
    pytest.importorskip("dlib", reason="dlib (dlib-bin) not installed")
    return root


def test_dlib_same_person_closer_than_threshold(lfw):
    from facelab.embed.base import get_embedder
    from facelab.embed.pipeline import FacePipeline, PipelineConfig
    from facelab.io.image import load_image

    pipe = FacePipeline(PipelineConfig(detector="whole", whole_margin=0.28, largest_only=True),
                        get_embedder("dlib-resnet", flip=False))
    names = ["Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg",
             "Akhmed_Zakayev/Akhmed_Zakayev_0001.jpg"]
    vecs = [pipe.run(load_image(lfw / "images" / n))[1][0] for n in names]
    same = np.linalg.norm(vecs[0] - vecs[1])
    diff = np.linalg.norm(vecs[0] - vecs[2])
    assert vecs[0].shape == (128,)
    assert same < 0.6 < diff


def test_landmark_alignment_matches_template(lfw):
    """A face whose landmarks already sit on the chip template is warped by the identity."""
    from facelab.embed.dlib_resnet import DLIB_CHIP_TEMPLATE, DlibEmbedConfig, DlibResNetEmbedder

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (150, 150, 3), dtype=np.uint8)
    emb = DlibResNetEmbedder(DlibEmbedConfig(align="landmarks", flip=False))
    chip = emb.chips(img, [Face((0, 0, 150, 150), landmarks=DLIB_CHIP_TEMPLATE.copy())])[0]
    assert np.abs(chip.astype(int) - img.astype(int))[5:-5, 5:-5].mean() < 1.0
    occ = DlibResNetEmbedder(DlibEmbedConfig(align="landmarks", occlude_below=0.5))
    chip = occ.chips(img, [Face((0, 0, 150, 150), landmarks=DLIB_CHIP_TEMPLATE.copy())])[0]
    assert (chip[75:] == 128).all()
