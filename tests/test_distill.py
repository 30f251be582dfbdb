"""Distillation: chip sets, students, the trainer (tiny, CPU), serving students as embedders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facelab.embed.chipset import ChipSet, load_chipset, save_chipset
from facelab.embed.distill import DistillConfig, best_accuracy, distill, make_pairs
from facelab.errors import ConfigError, DataFormatError
from facelab.masks.landmarks import MEAN_SHAPE68


def _faces(n: int, seed: int = 0) -> ChipSet:
    """Synthetic 'faces': a per-identity colour pattern + noise, landmarks on the mean shape."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"p:{k % 6}" for k in range(n)])
    base = {i: rng.integers(0, 255, (1, 1, 3)) for i in set(ids)}
    yy, xx = np.mgrid[0:150, 0:150]
    chips = []
    for k, i in enumerate(ids):
        pattern = (np.sin(xx[..., None] / (5 + int(i[-1])) + yy[..., None] / 9) * 60)
        chips.append(np.clip(base[i] + pattern + rng.normal(0, 8, (150, 150, 3)), 0, 255).astype(np.uint8))
    # the mean 68-point shape (a 0..1 template) placed where dlib chips put the face
    lm = (np.asarray(MEAN_SHAPE68, np.float32) - np.min(MEAN_SHAPE68, 0)) / np.ptp(MEAN_SHAPE68, 0)
    lm = 30 + lm * 90
    return ChipSet(np.stack(chips), np.repeat(lm[None], n, 0), np.array(["synthetic"] * n), ids,
                   np.array([f"img{k}.jpg" for k in range(n)]))


def test_chipset_round_trip_and_bad_file(tmp_path):
    cs = _faces(5)
    path = save_chipset(cs, tmp_path / "c.npz", quality=95)
    back = load_chipset(path, path)
    assert len(back) == 10 and back.chips.shape == (10, 150, 150, 3)
    assert np.abs(back.chips[:5].astype(int) - cs.chips).mean() < 6  # JPEG, not bit-exact
    assert np.allclose(back.landmarks[:5], cs.landmarks) and list(back.identity[:5]) == list(cs.identity)
    with pytest.raises(DataFormatError, match="not found"):
        load_chipset(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(DataFormatError, match="not a facelab chip set"):
        load_chipset(tmp_path / "bad.npz")


def test_pairs_are_balanced_and_threshold_accuracy_is_exact():
    ids = np.array(["a", "a", "b", "b", "c", "c", "d"])
    pairs = make_pairs(ids, 40, seed=1)
    assert len(pairs) == 40 and pairs[:, 2].sum() == 20
    assert all((ids[i] == ids[j]) == bool(s) for i, j, s in pairs)
    acc, thr = best_accuracy(np.array([0.1, 0.2, 0.3, 0.7, 0.8]), np.array([1, 1, 0, 0, 0]))
    assert acc == 1.0 and 0.2 < thr < 0.3
    acc, _ = best_accuracy(np.array([0.1, 0.2, 0.3]), np.array([0, 1, 1]))
    assert acc == pytest.approx(2 / 3)


def test_students_fit_the_parameter_budget_and_dlib_student_starts_as_dlib():
    from facelab.embed.dlib_torch import build_model
    from facelab.embed.students import build_student, count_parameters

    x = torch.from_numpy(_faces(2).chips)
    for kind in ("mobilefacenet", "mobilenetv2"):
        net = build_student(kind).eval()
        assert count_parameters(net) <= 5_000_000
        assert net(x).shape == (2, 128)
    student, teacher = build_student("dlib").eval(), build_model(channels_last=False)
    with torch.no_grad():
        assert torch.allclose(student(x), teacher(x), atol=1e-5)
    with pytest.raises(ConfigError, match="unknown student"):
        build_student("resnet1000")


def test_distill_trains_resumes_and_serves_as_an_embedder(tmp_path):
    from facelab.embed.base import get_embedder
    from facelab.embed.students import StudentEmbedder

    chips = save_chipset(_faces(24), tmp_path / "faces.npz")
    cfg = DistillConfig(chips=[str(chips)], out=str(tmp_path / "run"), student="mobilefacenet",
                        epochs=1, batch_size=8, val_pairs=20, val_identities=0.34, threads=1)
    first = distill(cfg, progress=False)
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "model_card.md").is_file()
    assert [h["epoch"] for h in first["history"]] == [0, 1]  # teacher row, then epoch 1
    cfg.epochs = 2
    second = distill(cfg, resume=True, progress=False)
    assert [h["epoch"] for h in second["history"]] == [0, 1, 2]  # resumed: epoch 1 not redone
    card = (tmp_path / "run" / "model_card.md").read_text()
    assert "held-out lfw-train identities" in card and "| 2 |" in card

    best = tmp_path / "run" / "best.pt"
    onnx = StudentEmbedder("mobilefacenet", best, net="onnx")
    eager = get_embedder("mfn-student", checkpoint=str(best), net="torch")
    faces = list(_faces(3, seed=5).chips)
    a, b = onnx.embed_chips(faces), eager.embed_chips(faces)
    assert a.shape == (3, 128) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert np.abs(a - b).max() < 1e-4  # ONNX Runtime == eager PyTorch
    assert onnx.metric == "cosine" and onnx.name == "mfn-student"
    assert onnx.version != eager.version  # backend in the version: a database never mixes them


def test_student_embedder_refuses_missing_or_foreign_weights(tmp_path):
    from facelab.embed.students import StudentEmbedder, load_student
    from facelab.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not found"):
        StudentEmbedder("mobilefacenet", tmp_path / "nope.pt")
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a facelab student"):
        load_student(tmp_path / "foreign.pt")
    with pytest.raises(ConfigError, match="give at least one chip set"):
        DistillConfig(chips=[])


def test_frozen_dlib_blocks_stay_dlibs_and_only_the_rest_trains(tmp_path):
    from facelab.embed.distill import freeze_dlib
    from facelab.embed.students import build_student

    with pytest.raises(ConfigError, match="only the dlib students"):
        DistillConfig(chips=["x.npz"], student="mobilefacenet", freeze=3)
    with pytest.raises(ConfigError, match="0..14"):
        DistillConfig(chips=["x.npz"], student="dlib", freeze=15)
    student = build_student("dlib")
    freeze_dlib(student, 10)
    trained = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trained and all(n.startswith(("blocks.10.", "blocks.11.", "blocks.12.", "blocks.13.", "fc."))
                           for n in trained)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    chips = save_chipset(_faces(24), tmp_path / "faces.npz")
    cfg = DistillConfig(chips=[str(chips)], out=str(tmp_path / "run"), student="dlib", freeze=10,
                        epochs=1, batch_size=8, val_pairs=20, val_identities=0.34, threads=1)
    distill(cfg, progress=False)
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["student"]
    assert torch.equal(state["stem.weight"], before["stem.weight"])  # frozen: exactly dlib's
    assert torch.equal(state["blocks.9.conv2.weight"], before["blocks.9.conv2.weight"])
    assert not torch.equal(state["fc.weight"], before["fc.weight"])  # the rest trained
    assert "--freeze 10" in (tmp_path / "run" / "model_card.md").read_text()


def test_compact_dlib_student_fits_the_budget_starts_from_dlib_and_serves(tmp_path):
    from facelab.embed.base import get_embedder
    from facelab.embed.dlib_torch import build_model
    from facelab.embed.students import LITE_BLOCKS, build_student, count_parameters

    lite, dlib_net = build_student("dlib-lite").eval(), build_model(channels_last=False)
    assert count_parameters(lite) <= 5_000_000 < count_parameters(dlib_net)
    assert len(lite.blocks) == LITE_BLOCKS
    for name, value in lite.state_dict().items():  # every kept weight is dlib's
        assert torch.equal(value, dlib_net.state_dict()[name]), name
    x = torch.from_numpy(_faces(2).chips)  # dlib's 150 px chips in, resized inside
    with torch.no_grad():
        assert lite(x).shape == (2, 128)
    with pytest.raises(ConfigError, match="0..13"):
        DistillConfig(chips=["x.npz"], student="dlib-lite", freeze=14)

    chips = save_chipset(_faces(24), tmp_path / "faces.npz")
    cfg = DistillConfig(chips=[str(chips)], out=str(tmp_path / "run"), student="dlib-lite",
                        freeze=12, epochs=1, batch_size=8, val_pairs=20, val_identities=0.34,
                        threads=1)
    distill(cfg, progress=False)
    best = tmp_path / "run" / "best.pt"
    onnx = get_embedder("lite-student", checkpoint=str(best))
    eager = get_embedder("lite-student", checkpoint=str(best), net="torch")
    faces = list(_faces(3, seed=5).chips)
    a, b = onnx.embed_chips(faces), eager.embed_chips(faces)
    assert a.shape == (3, 128) and np.abs(a - b).max() < 1e-3  # ONNX Runtime == eager
    assert onnx.metric == "l2" and onnx.name == "lite-student"
    from facelab.embed.students import load_student
    from facelab.errors import CheckpointError

    ck = torch.load(best, weights_only=True)
    torch.save({**ck, "input_px": 96}, tmp_path / "other_size.pt")  # same weights, other input side
    with pytest.raises(CheckpointError, match="trained at 96 px"):
        load_student(tmp_path / "other_size.pt")
    torch.save({**ck, "blocks": 12}, tmp_path / "other_depth.pt")
    with pytest.raises(CheckpointError, match="with 12 blocks"):
        load_student(tmp_path / "other_depth.pt")
