"""Embedders: registry, pixel baseline, MobileFaceNet size/heads, resumable training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facelab.embed.base import get_embedder, list_embedders, pairwise_distance
from facelab.embed.mobilefacenet import MarginHead, MobileFaceNet, count_parameters
from facelab.embed.pipeline import FacePipeline, PipelineConfig
from facelab.errors import ConfigError
from facelab.types import Face


def test_registry_and_pixels():
    assert {"dlib-resnet", "dlib-resnet-upper", "pixels", "mobilefacenet"} <= set(list_embedders())
    with pytest.raises(ConfigError):
        get_embedder("nope")
    e = get_embedder("pixels")
    img = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    v = e.embed_faces(img, [Face((0, 0, 40, 40)), Face((0, 0, 20, 20))])
    assert v.shape == (2, 128) and np.allclose(np.linalg.norm(v, axis=1), 1)
    assert pairwise_distance(v[:1], v[:1], "cosine")[0] == pytest.approx(0, abs=1e-6)


def test_pipeline_fallback_and_central_selection():
    class Two:
        def detect(self, image):
            return [Face((0, 0, 30, 30), 0.9), Face((40, 40, 60, 60), 0.9)]

    class Nothing:
        def detect(self, image):
            return []

    img = np.zeros((100, 100, 3), np.uint8)
    pipe = FacePipeline(PipelineConfig(detector="x", select="central", largest_only=True), get_embedder("pixels"))
    pipe._detector = Two()
    assert pipe.faces(img)[0].box == (40, 40, 60, 60)   # the centred face, not the larger corner one
    pipe.config.select = "largest"
    assert pipe.faces(img)[0].box == (0, 0, 30, 30)
    pipe._detector = Nothing()
    assert pipe.faces(img)[0].stage == "fallback:whole"
    pipe.config.fallback = "skip"
    assert pipe.run(img)[1].shape == (0, 128)


def test_pipeline_takes_detector_specs():
    """A spec string (options, a cascade, a union) names a detector as everywhere else."""
    pipe = FacePipeline(PipelineConfig(detector="haar(min_size=40)"), get_embedder("pixels"))
    assert pipe.detector.name == "haar(min_size=40)"
    union = FacePipeline(PipelineConfig(detector="haar|haar(min_size=40)"), get_embedder("pixels"))
    assert union.detector.name == "haar|haar(min_size=40)"
    with pytest.raises(ConfigError):
        _ = FacePipeline(PipelineConfig(detector="nope(x=1)"), get_embedder("pixels")).detector


def test_mobilefacenet_size_and_heads():
    net = MobileFaceNet()
    n = count_parameters(net)
    assert 0.9e6 < n < 5e6
    assert net(torch.zeros(2, 3, 112, 112)).shape == (2, 128)
    emb, y = torch.randn(4, 128), torch.tensor([0, 1, 2, 3])
    for kind in ("arcface", "cosface"):
        head = MarginHead(128, 5, kind=kind)
        with_margin, plain = head(emb, y), head(emb)
        # the margin only lowers the target-class logit
        assert torch.all(with_margin.gather(1, y[:, None]) < plain.gather(1, y[:, None]))
        mask = torch.nn.functional.one_hot(y, 5).bool()
        assert torch.allclose(with_margin[~mask], plain[~mask])


def test_train_and_resume(tmp_path, capsys):
    from facelab.embed.train import TrainConfig, train

    rng = np.random.default_rng(0)
    for p in range(6):
        base = rng.integers(0, 255, (4, 4, 3)).astype(float)
        for v in range(3):
            img = np.kron(base, np.ones((28, 28, 1))) + rng.normal(0, 8, (112, 112, 3))
            (tmp_path / "people" / f"p{p}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(tmp_path / "people" / f"p{p}" / f"{v}.png")
    cfg = TrainConfig(data=str(tmp_path / "people"), out=str(tmp_path / "run"), detector="whole",
                      epochs=2, batch_size=8, width=0.25, threads=1, val_fraction=0.34)
    fig = train(cfg)
    assert fig["epoch"] == 2 and np.isfinite(fig["loss"])
    assert "MobileFaceNet parameters:" in capsys.readouterr().out
    cfg.epochs = 3
    fig = train(cfg, resume=True)
    assert "resumed from epoch 2" in capsys.readouterr().out and fig["epoch"] == 3
    emb = get_embedder("mobilefacenet", checkpoint=str(tmp_path / "run" / "last.pt"))
    v = emb.embed_faces(np.zeros((112, 112, 3), np.uint8), [Face((0, 0, 112, 112))])
    assert v.shape == (1, 128) and emb.metric == "cosine"


def test_train_device_switch(tmp_path):
    """--device reaches the model: asking for CUDA where torch has none fails clearly."""
    from facelab.embed.train import TrainConfig, train

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the CPU-only error path is not reachable")
    people = tmp_path / "people"
    for p in range(3):
        (people / f"p{p}").mkdir(parents=True)
        for v in range(2):
            Image.fromarray(np.full((112, 112, 3), 40 * p + v, np.uint8)).save(people / f"p{p}" / f"{v}.png")
    cfg = TrainConfig(data=str(people), out=str(tmp_path / "run"), detector="whole", epochs=1, batch_size=4,
                      width=0.25, threads=1, device="cuda")
    with pytest.raises(ConfigError, match="cuda"):
        train(cfg)
