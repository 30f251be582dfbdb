"""Clip data sets, decoding + cache, grouped folds, bad input and the `facelab clips` CLI,
on tiny videos made here with PyAV (a square that drops fast = "fall", one that walks
sideways = "adl"); the real-data checks skip when $FACELAB_DATA lacks the sets."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch

from facelab.clips.config import load_clip_config
from facelab.clips.dataset import from_csv, from_folder, load_clips
from facelab.clips.engine import _train_indices, fit, load_model, load_stacks, predict_clips
from facelab.clips.folds import assign_folds, bootstrap, check_folds, present_macro_f1
from facelab.clips.video import FrameCache, decode_clip, segment_indices
from facelab.errors import ConfigError, DataFormatError, ImageDecodeError, LeakageError
from facelab.paths import missing_data


def write_clip(path: Path, kind: str, n: int = 20, size: int = 48, seed: int = 0,
               codec: str = "mpeg4", faststart: bool = False) -> Path:
    """A square on a noisy background: 'fall' drops fast, 'adl' moves sideways slowly.
    `faststart`: the MP4 index first, so a file cut short still opens."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else None) as out:
        stream = out.add_stream(codec, rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(n):
            img = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
            if kind == "fall":
                y, x = min(size - 12, int(t * 3)), size // 2 - 6
            else:
                y, x = size // 4, min(size - 12, 4 + t)
            img[y:y + 12, x:x + 12] = (230, 60, 40) if kind == "fall" else (40, 200, 90)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mp2", rate=16000)
        stream.layout = "mono"
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1152
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_zero_frames(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        out.start_encoding()  # header with a video stream, then no frame at all
    return path


def write_unknown_codec(path: Path) -> Path:
    """An AVI whose video stream names a codec FFmpeg does not know (fourcc ZZZ9)."""
    src = write_clip(path.with_name("for_unknown.avi"), "adl", n=4, size=32)
    path.write_bytes(src.read_bytes().replace(b"FMP4", b"ZZZ9"))
    return path


def write_truncated(path: Path, src: Path) -> Path:
    data = src.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def clip_set(tmp_path) -> Path:
    """labels.csv with 8 clips: 4 subjects x (1 fall + 1 adl)."""
    root = tmp_path / "set"
    (root / "clips").mkdir(parents=True)
    rows = []
    for s in range(4):
        for kind in ("fall", "adl"):
            name = f"clips/s{s}_{kind}.mp4"
            write_clip(root / name, kind, seed=s * 2 + (kind == "fall"))
            rows.append({"clip": name, "label": kind, "subject": f"p{s}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def test_decode_and_segment_sampling(tmp_path):
    clip = write_clip(tmp_path / "a.mp4", "fall", n=20)
    frames = decode_clip(clip, 32)
    assert frames.shape == (20, 32, 32, 3) and frames.dtype == np.uint8
    assert segment_indices(20, 1).tolist() == [10]
    assert segment_indices(20, 4).tolist() == [2, 7, 12, 17]
    assert segment_indices(3, 8).max() == 2  # more frames wanted than the clip has
    cache = FrameCache(32, tmp_path / "c")
    np.testing.assert_array_equal(cache.frames(clip, 1)[0], frames[10])
    np.testing.assert_array_equal(cache.frames(clip, 4), frames[[2, 7, 12, 17]])
    # random training frames: the same seed gives the same frames, another seed others
    a = [_train_indices(16, 4, np.random.default_rng(3)).tolist() for _ in range(2)]
    b = _train_indices(16, 4, np.random.default_rng(4)).tolist()
    assert a[0] == a[1]
    assert all(4 * i <= v < 4 * i + 4 for i, v in enumerate(a[0]))  # one frame per segment
    draws = {int(_train_indices(16, 1, np.random.default_rng(s))[0]) for s in range(40)}
    assert a[0] != b and len(draws) > 8


def test_cache_resume_and_invalidation(tmp_path):
    clips = [write_clip(tmp_path / f"c{i}.mp4", "adl", seed=i) for i in range(3)]
    cache = FrameCache(24, tmp_path / "cache")
    first = {str(c): cache.fill(c, (1, 4)) for c in clips}
    assert cache.decoded == 3
    again = FrameCache(24, tmp_path / "cache")  # a new process: everything from disk
    for c in clips:
        got = again.fill(c, (1, 4))
        np.testing.assert_array_equal(got[4], first[str(c)][4])
    assert again.decoded == 0
    again.path_for(clips[0], 4).unlink()  # an interrupted fill: only the missing entry decodes
    again.fill(clips[0], (1, 4))
    assert again.decoded == 1
    os.utime(clips[1], ns=(1, 1))  # a changed file gets a new key
    assert again.path_for(clips[1], 4) != FrameCache(24, tmp_path / "cache").path_for(clips[2], 4)
    assert not again.path_for(clips[1], 4).is_file()
    assert FrameCache(32, tmp_path / "cache").path_for(clips[0], 4) != again.path_for(clips[0], 4)
    assert list((tmp_path / "cache").rglob("*.tmp")) == []


def test_bad_inputs_are_listed_and_the_batch_goes_on(tmp_path):
    good = write_clip(tmp_path / "good.mp4", "fall", codec="libx264")
    bad = {
        "truncated": write_truncated(tmp_path / "trunc.mp4", good),
        # index first: the cut file opens, and fewer frames decode than it promises
        "cut": write_truncated(tmp_path / "cut.mp4", write_clip(tmp_path / "fs.mp4", "fall", n=40,
                                                                 faststart=True)),
        "zero": write_zero_frames(tmp_path / "zero.avi"),
        "audio": write_audio_only(tmp_path / "audio.mp4"),
        "text": tmp_path / "notes.mp4",
        "missing": tmp_path / "gone.mp4",
        "codec": write_unknown_codec(tmp_path / "unknown.avi"),
    }
    bad["text"].write_text("this is not a video")
    expected = {"truncated": "cannot open", "cut": "frames decode", "zero": "zero decodable frames",
                "audio": "no video stream",
                "text": "cannot open", "missing": "not found", "codec": "codec is unknown"}
    for name, path in bad.items():
        with pytest.raises(ImageDecodeError) as exc:
            decode_clip(path, 32)
        msg = str(exc.value)
        assert "\n" not in msg and str(path) in msg and expected[name] in msg, msg
    # a 4K clip is no error: frames are scaled as they are decoded
    uhd = write_clip(tmp_path / "uhd.mp4", "adl", n=3, size=2160, codec="libx264")
    clips = [str(good)] + [str(p) for p in bad.values()] + [str(uhd), str(good)]
    stacks, failed = load_stacks(clips, (1,), FrameCache(32, tmp_path / "c"))
    assert list(stacks) == [str(good), str(uhd)] and stacks[str(uhd)][1].shape == (1, 32, 32, 3)
    assert [c for c, _ in failed] == [str(p) for p in bad.values()]


def test_folds_never_split_a_group():
    rng = np.random.default_rng(0)
    t = pd.DataFrame({"label": rng.choice(["fall", "adl"], 60),
                      "group": [f"e{i // 2}" for i in range(60)], "dataset": "up"})
    t["event"] = t["group"]
    loso = pd.DataFrame({"label": ["fall", "adl"] * 8, "group": [f"s{i // 4}" for i in range(16)],
                         "dataset": "g"})
    loso["event"] = [f"c{i}" for i in range(16)]
    both = pd.concat([t, loso], ignore_index=True)
    folds = assign_folds(both, 4, seed=1)
    check_folds(both, folds)
    for _, part in both.assign(f=folds).groupby("group"):
        assert part["f"].nunique() == 1
    # 4 subjects in 4 folds: leave-one-subject-out
    g = both.assign(f=folds)[both["dataset"] == "g"]
    assert sorted(g.groupby("f")["group"].nunique()) == [1, 1, 1, 1]
    with pytest.raises(LeakageError):
        check_folds(both, np.arange(len(both)) % 4)
    with pytest.raises(ConfigError):
        assign_folds(loso, 5)


def test_bootstrap_intervals_cover_the_point():
    y = np.array([0, 1] * 20)
    pred = y.copy()
    pred[:6] = 1 - pred[:6]
    m = bootstrap(y, pred, np.arange(40) // 2, 2, n=200)
    assert m["units"] == 20 and m["accuracy"] == pytest.approx(34 / 40)
    assert m["macro_f1_ci"][0] <= m["macro_f1"] <= m["macro_f1_ci"][1] < 1


def test_bootstrap_a_class_missing_from_a_resample_is_not_scored_zero():
    # 11 classes, 2 clips each, all right: every resample is perfect even when it lacks
    # classes (counting an absent class as F1 0 gave a lower bound of 0.73)
    y = np.repeat(np.arange(11), 2)
    m = bootstrap(y, y.copy(), np.arange(22), 11, n=300)
    assert m["macro_f1"] == 1.0 and m["macro_f1_ci"] == [1.0, 1.0]
    # a wrong prediction into a class absent from the truth still costs the true class
    assert present_macro_f1(np.array([0, 0]), np.array([0, 1]), 3) == pytest.approx(2 / 3)
    assert present_macro_f1(np.array([0, 1]), np.array([0, 1]), 3) == 1.0


def test_loaders_csv_and_folder(clip_set, tmp_path):
    t = from_csv(clip_set / "labels.csv")
    assert len(t) == 8 and set(t["label"]) == {"fall", "adl"}
    assert (t["group"] == t["subject"]).all() and Path(t["clip"][0]).is_file()
    assert load_clips(str(clip_set)).equals(t)
    folder = tmp_path / "byclass"
    for kind in ("fall", "adl"):
        (folder / kind).mkdir(parents=True)
        write_clip(folder / kind / "x.mp4", kind)
    f = from_folder(folder)
    assert sorted(f["label"]) == ["adl", "fall"] and f["group"].nunique() == 2


@pytest.mark.skipif(missing_data("gmdcsa24-fall", "up-fall") is not None,
                    reason=str(missing_data("gmdcsa24-fall", "up-fall")))
def test_real_sets_load_with_groups():
    both = load_clips("both")
    assert both.groupby("dataset").size().to_dict() == {"gmdcsa24": 26, "up-fall": 67}
    assert set(both["label"]) == {"fall", "adl"}
    assert all(Path(c).is_file() for c in both["clip"])
    up = load_clips("up-fall", task="activity")
    assert up["label"].nunique() == 11
    assert up.groupby("event")["clip"].count().max() == 2  # two camera views per trial
    folds = assign_folds(both, 4)
    g = both.assign(f=folds)
    assert (g.groupby("event")["f"].nunique() == 1).all()
    gm = g[g["dataset"] == "gmdcsa24"]
    assert (gm.groupby("f")["subject"].nunique() == 1).all()  # leave-one-subject-out
    assert (gm.groupby("subject")["f"].nunique() == 1).all()
    fa = assign_folds(up, 3)
    assert (up.assign(f=fa).groupby("event")["f"].nunique() == 1).all()


def test_3d_model_trains_a_step(clip_set, tmp_path):
    cfg = load_clip_config(None, ["model.kind=3d", "model.arch3d=mc3_18", "data.size=32",
                                  "sampling.pool=4", "sampling.train_frames=4",
                                  "sampling.eval_frames=4", "epochs=1", "batch_size=8",
                                  f"data.cache_dir={tmp_path / 'c'}"])
    table = from_csv(clip_set / "labels.csv")
    res = fit(cfg, table, tmp_path / "run3d")
    model, _, classes = load_model(tmp_path / "run3d")
    probs, bad, _ = predict_clips(model, cfg, list(table["clip"][:2]))
    assert probs.shape == (2, 2) and not bad and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert res.history and classes == ["adl", "fall"]


def test_inflated_mobilenet_matches_2d_on_a_still_clip_and_trains(clip_set, tmp_path):
    from facelab.clips.inflate import inflate
    from facelab.models.backbone import create_backbone

    torch.manual_seed(0)
    bb = create_backbone("mobilenet_v2", "imagenet").eval()  # offline weights
    x = torch.rand(2, 3, 48, 48)
    y2 = bb(x)
    inflate(bb.body, 3)
    assert not any(isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d)) for m in bb.modules())
    still = x.unsqueeze(2).repeat(1, 1, 5, 1, 1)  # 5 identical frames: the 2D features
    scale = y2.abs().max()
    assert (bb(still) - y2).abs().max() < 1e-4 * scale
    moving = still.clone()
    moving[:, :, 2] = 0
    assert (bb(moving) - y2).abs().max() > 1e-2 * scale  # time matters once frames differ
    cfg = load_clip_config(None, ["model.kind=i3d", "model.pretrained=", "model.freeze=2",
                                  "data.size=32", "sampling.pool=4", "sampling.train_frames=4",
                                  "sampling.eval_frames=4", "epochs=1", "batch_size=8",
                                  f"data.cache_dir={tmp_path / 'c'}"])
    table = from_csv(clip_set / "labels.csv")
    fit(cfg, table, tmp_path / "runi3d")
    model, _, _ = load_model(tmp_path / "runi3d")
    probs, bad, _ = predict_clips(model, cfg, list(table["clip"][:2]))
    assert probs.shape == (2, 2) and not bad and np.allclose(probs.sum(1), 1, atol=1e-5)
    with pytest.raises(ConfigError):
        load_clip_config(None, ["model.kind=i3d", "model.time_kernel=2"])


def test_motion_crop_centres_the_moving_square(tmp_path):
    from facelab.clips.crop import apply_crop, motion_box

    frames = np.full((8, 64, 64, 3), 50, np.uint8)
    for t in range(8):  # a square moving down in the left half
        frames[t, 10 + 3 * t:18 + 3 * t, 8:16] = 250
    x0, y0, x1, y1 = motion_box(frames)
    assert x0 <= 8 and x1 >= 16 and y0 <= 12 and y1 >= 36 and x1 - x0 == y1 - y0 < 64
    out = apply_crop({1: frames[[4]], 8: frames}, "motion", 8)
    assert out[1].shape == (1, 64, 64, 3) and out[8].shape == frames.shape
    assert (out[1] > 200).mean() > 2 * (frames[4] > 200).mean()  # the person fills more
    still = np.full((8, 64, 64, 3), 50, np.uint8)
    assert motion_box(still) == (0, 0, 64, 64)  # nothing moves: the whole frame
    with pytest.raises(ConfigError):
        load_clip_config(None, ["data.crop=person"])


def test_cli_train_cv_evaluate_predict(clip_set, tmp_path, cache_env):
    from typer.testing import CliRunner

    from facelab.cli import _register, app

    _register()
    torch.manual_seed(0)
    cfg = tmp_path / "clips.yaml"
    cfg.write_text(
        f"data: {{train: {clip_set / 'labels.csv'}, size: 32, folds: 2}}\n"
        "model: {pretrained: '', freeze: 0}\n"
        "sampling: {pool: 4, train_frames: 1, eval_frames: 2}\n"
        "epochs: 2\nbatch_size: 4\nlr: 0.003\n")
    runner = CliRunner()
    r = runner.invoke(app, ["clips", "train", "-c", str(cfg), "-o", str(tmp_path / "cv"), "--cv",
                            "--no-progress", "--set", "augment.rotate=10"])
    assert r.exit_code == 0, r.output
    assert "macro F1" in r.output and "fold 0" in r.output and "fold 1" in r.output
    for name in ("metrics.json", "report.md", "confusion.png", "predictions.csv"):
        assert (tmp_path / "cv" / name).is_file()
    preds = pd.read_csv(tmp_path / "cv" / "predictions.csv")
    assert len(preds) == 8 and (preds.groupby("group")["fold"].nunique() == 1).all()
    # resume: finished folds are read back, not trained again
    mtime = (tmp_path / "cv" / "fold0" / "model.pt").stat().st_mtime_ns
    r = runner.invoke(app, ["clips", "train", "-c", str(cfg), "-o", str(tmp_path / "cv"), "--cv",
                            "--no-progress", "--set", "augment.rotate=10"])
    assert r.exit_code == 0 and (tmp_path / "cv" / "fold0" / "model.pt").stat().st_mtime_ns == mtime

    run = tmp_path / "run"
    r = runner.invoke(app, ["clips", "train", "-c", str(cfg), "-o", str(run), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(run / "log.csv")) == 2 and (run / "last.pt").is_file()
    r = runner.invoke(app, ["clips", "train", "-c", str(cfg), "-o", str(run), "--no-progress",
                            "--set", "epochs=3"])
    assert r.exit_code != 0  # another config in the same folder is refused, not mixed
    r = runner.invoke(app, ["clips", "evaluate", str(run), "--data", str(clip_set / "labels.csv"),
                            "-o", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ev" / "confusion.png").is_file() and "accuracy" in r.output

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    r = runner.invoke(app, ["clips", "predict", str(run), str(clip_set / "clips"), str(bad),
                            "-o", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    p = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert len(p) == 9 and set(p["predicted"][:8]) <= {"fall", "adl"}
    assert p["predicted"].iloc[8] == "" and "cannot open" in p["error"].iloc[8]
    assert "skipped" in r.output
    assert any(cache_env.rglob("*.npy"))  # the default cache lives under FACELAB_CACHE


def test_motion_features_tell_a_drop_from_a_walk(tmp_path):
    from facelab.clips.motion import FEATURES, FLOW_FEATURES, clip_features

    # 64 px: the square is still for only 3 of 20 frames (a body lying still for most of
    # a clip joins the median background: the trajectory's known weakness)
    fall = clip_features(write_clip(tmp_path / "f.mp4", "fall", n=20, size=64), height=64,
                         cache_dir=tmp_path / "m")
    walk = clip_features(write_clip(tmp_path / "w.mp4", "adl", n=20, size=64), height=64,
                         cache_dir=tmp_path / "m")
    assert fall["trajectory"].shape == (len(FEATURES),) and np.isfinite(fall["trajectory"]).all()
    assert fall["flow"].shape == (len(FLOW_FEATURES),) and np.isfinite(fall["flow"]).all()
    drop = FEATURES.index("drop_top_1s")
    assert fall["trajectory"][drop] > 1.0 and abs(walk["trajectory"][drop]) < 0.3  # > its height in 1 s
    # the flow sees the same: fast downward motion against a slow sideways one
    down, vert = FLOW_FEATURES.index("down_speed_peak"), FLOW_FEATURES.index("vertical_share")
    assert fall["flow"][down] > 1.0 and abs(walk["flow"][down]) < 0.3
    assert fall["flow"][vert] > 0.7 > walk["flow"][vert]
    assert len(list((tmp_path / "m").glob("*.npz"))) == 2  # cached
    again = clip_features(tmp_path / "f.mp4", height=64, cache_dir=tmp_path / "m")
    for name in ("trajectory", "flow"):
        np.testing.assert_array_equal(again[name], fall[name])
    with pytest.raises(ImageDecodeError):
        clip_features(tmp_path / "missing.mp4", cache_dir=tmp_path / "m")
    # only the sets asked for are computed; a later call adds the other to the same entry
    only = clip_features(tmp_path / "f.mp4", height=64, cache_dir=tmp_path / "m2", sets=("trajectory",))
    assert set(only) == {"trajectory"}
    with np.load(next((tmp_path / "m2").glob("*.npz"))) as z:
        assert z.files == ["trajectory"]
    both = clip_features(tmp_path / "f.mp4", height=64, cache_dir=tmp_path / "m2")
    np.testing.assert_array_equal(both["flow"], fall["flow"])
    # a damaged entry is computed again, not an error
    next((tmp_path / "m2").glob("*.npz")).write_bytes(b"PK\x03\x04broken")
    np.testing.assert_array_equal(clip_features(tmp_path / "f.mp4", height=64,
                                                cache_dir=tmp_path / "m2")["flow"], fall["flow"])


def test_linear_head_matches_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from facelab.clips.frozen import LinearHead

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)) * [1, 10, 0.1, 3, 1]
    for n_classes in (2, 3):
        y = np.arange(60) % n_classes
        head = LinearHead.fit(x, y, n_classes, c=0.5)
        ref = LogisticRegression(C=0.5, max_iter=3000).fit(StandardScaler().fit_transform(x), y)
        want = ref.predict_proba(StandardScaler().fit(x).transform(x))
        np.testing.assert_allclose(head.proba(x), want, atol=1e-4)
        back = LinearHead.from_state(head.state())
        np.testing.assert_allclose(back.proba(x), head.proba(x), atol=1e-6)


class _Payload:
    pass


def test_frozen_model_trains_predicts_and_loads_as_data(clip_set, tmp_path, cache_env):
    from facelab.clips.engine import clip_scorer, predict_timeline
    from facelab.clips.timeline import DetectConfig
    from facelab.errors import CheckpointError

    table = from_csv(clip_set / "labels.csv")
    cfg = load_clip_config(None, ["data.size=32", "model.kind=frozen",
                                  "model.features=mhi,trajectory,flow", "sampling.eval_frames=8",
                                  "sampling.pool=8"])
    res = fit(cfg, table, tmp_path / "run")
    assert res.classes == ["adl", "fall"] and (tmp_path / "run" / "model.pt").is_file()
    model, cfg2, classes = load_model(tmp_path / "run")
    assert model.kind == "frozen" and classes == ["adl", "fall"] and set(model.heads) == {"mhi", "trajectory", "flow"}
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    clips = list(table["clip"]) + [str(bad)]
    probs, failed, _ = predict_clips(model, cfg2, clips)
    assert np.isnan(probs[-1]).all() and failed[0][0] == str(bad)
    assert (probs[:-1].argmax(1) == (table["label"] == "fall").to_numpy()).mean() >= 0.75
    with pytest.raises(ConfigError, match="whole clips"):  # trajectory needs the whole clip
        clip_scorer(model)
    # a motion-only model decodes each clip once, itself: no frame stacks, bad clips still listed
    fit(load_clip_config(None, ["data.size=32", "model.kind=frozen", "model.features=trajectory"]),
        table, tmp_path / "traj")
    m4, c4, _ = load_model(tmp_path / "traj")
    frames = FrameCache(32, tmp_path / "frames")
    probs4, failed4, _ = predict_clips(m4, c4, clips, cache=frames)
    assert frames.decoded == 0 and np.isnan(probs4[-1]).all() and failed4[0][0] == str(bad)
    assert np.isfinite(probs4[:-1]).all()
    # an mhi-only model scores sliding windows
    fit(load_clip_config(None, ["data.size=32", "model.kind=frozen", "model.features=mhi",
                                "sampling.eval_frames=4", "sampling.pool=8"]), table, tmp_path / "mhi")
    m2, c2, cl2 = load_model(tmp_path / "mhi")
    tl = predict_timeline(m2, c2, cl2, table["clip"][0], DetectConfig(window=1.0, hop=0.5))
    assert len(tl) >= 2 and np.allclose(tl[["p_adl", "p_fall"]].sum(axis=1), 1, atol=1e-5)
    with pytest.raises(ConfigError):
        load_clip_config(None, ["model.kind=frozen", "model.features=mhi,colour"])
    # auto: the fusion is chosen by grouped CV on the training clips and saved with the heads
    auto_cfg = load_clip_config(None, ["data.size=32", "model.kind=frozen", "model.features=auto",
                                       "sampling.eval_frames=8", "sampling.pool=8"])
    res = fit(auto_cfg, table, tmp_path / "auto")
    chosen = res.history[0]["features"].split(",")
    m3, _, _ = load_model(tmp_path / "auto")
    assert chosen and set(chosen) <= {"mhi", "flow", "trajectory"} and m3.sets == chosen
    assert set(m3.heads) == set(chosen) and len(m3.selection) == 7  # every non-empty subset scored
    assert max(m3.selection.values()) == m3.selection["+".join(chosen)]
    from facelab.errors import CheckpointError as CkErr

    with pytest.raises(CkErr, match="another config"):  # a frozen refit does not overwrite
        fit(load_clip_config(None, ["data.size=32", "model.kind=frozen", "model.features=mhi",
                                    "sampling.eval_frames=8", "sampling.pool=8"]), table, tmp_path / "run")
    # a pickled object other than tensors and plain data: refused, never run
    torch.save({"format": "facelab-clips-1", "x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_model(tmp_path / "evil.pt")


def test_resume_accepts_a_checkpoint_saved_before_new_config_fields(clip_set, tmp_path, cache_env):
    """last.pt stores the config dict of its day; fields added since (defaults) must not make
    an interrupted run refuse to resume."""
    table = from_csv(clip_set / "labels.csv")
    cfg = load_clip_config(None, ["data.size=32", "model.pretrained=", "model.freeze=0",
                                  "sampling.pool=4", "epochs=2", "batch_size=4"])
    run = tmp_path / "run"
    fit(cfg, table, run)
    ck = torch.load(run / "last.pt", weights_only=True)
    for key in ("features", "C"):  # as written before model.kind frozen existed
        ck["config"]["model"].pop(key)
    ck["epoch"] = 0
    ck["history"] = ck["history"][:1]
    torch.save(ck, run / "last.pt")
    res = fit(cfg, table, run)  # resumes after epoch 0 instead of refusing
    assert len(res.history) == 2


def test_mirror_makes_backbone_features_mirror_invariant():
    from facelab.clips.frozen import FrozenClipModel

    rng = np.random.default_rng(0)
    stacks = rng.integers(0, 255, (2, 4, 32, 32, 3), dtype=np.uint8)
    flipped = np.ascontiguousarray(stacks[:, :, :, ::-1])
    feats = {}
    for mirror in (False, True):
        cfg = load_clip_config(None, ["data.size=32", "model.kind=frozen", "model.features=appearance,mhi",
                                      f"model.mirror={str(mirror).lower()}", "sampling.eval_frames=4"])
        m = FrozenClipModel(cfg, ["adl", "fall"])
        feats[mirror] = (m.image_features(stacks), m.image_features(flipped))
    with pytest.raises(ConfigError, match="frozen"):
        load_clip_config(None, ["model.kind=2d", "model.mirror=true"])
    for name in ("appearance", "mhi"):
        plain, mirrored = feats[False][0][name], feats[False][1][name]
        assert not np.allclose(plain, mirrored, atol=1e-3)  # the backbone alone sees the side
        np.testing.assert_allclose(feats[True][0][name], feats[True][1][name], atol=1e-4)


def test_tune_c_chooses_each_sets_c_by_grouped_cv_on_the_training_clips():
    from facelab.clips.config import C_GRID
    from facelab.clips.frozen import FrozenClipModel, LinearHead, choose_c

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 24)
    groups = np.arange(48) % 8
    # one informative column among 40 noisy ones
    x = np.c_[y + 0.3 * rng.normal(size=48), rng.normal(size=(48, 40))]
    best, scores = choose_c(x, y, groups, 2)
    assert set(scores) == set(C_GRID) and scores[best] == max(scores.values())
    assert scores[0.01] < scores[best]  # the grid's candidates really differ on these clips
    assert choose_c(x, y, groups, 2) == (best, scores)  # deterministic
    # a tie (every C separates the classes perfectly) goes to the strongest regularisation
    separable = np.c_[10.0 * y, np.zeros(48)]
    assert choose_c(separable, y, groups, 2) == (min(C_GRID), dict.fromkeys(C_GRID, 1.0))
    assert choose_c(x[:, :5], y, None, 2)[0] in C_GRID  # no groups: each clip its own group
    cfg = load_clip_config(None, ["model.kind=frozen", "model.features=trajectory,flow", "model.tune_C=true"])
    m = FrozenClipModel(cfg, ["adl", "fall"])
    m.fit({"trajectory": x, "flow": x[:, :5]}, y, groups)
    assert m.heads_c == {"trajectory": best, "flow": choose_c(x[:, :5], y, groups, 2)[0]}
    for name, xs in (("trajectory", x), ("flow", x[:, :5])):  # each head is fitted with its chosen C
        expected = LinearHead.fit(xs, y, 2, m.heads_c[name]).proba(xs)
        np.testing.assert_allclose(m.heads[name].proba(xs), expected, atol=1e-9)
    assert len(m.selection) == 2 * len(C_GRID)  # every candidate's inner-CV score is kept
    back = FrozenClipModel.from_checkpoint(m.checkpoint(), cfg, "model.pt")  # saved with the model
    assert back.heads_c == m.heads_c and back.selection == m.selection
    plain = FrozenClipModel(load_clip_config(None, ["model.kind=frozen", "model.features=trajectory"]),
                            ["adl", "fall"])
    plain.fit({"trajectory": x}, y, groups)
    assert plain.heads_c == {"trajectory": 1.0} and not plain.selection
    with pytest.raises(ConfigError, match="tune_C"):
        load_clip_config(None, ["model.kind=2d", "model.tune_C=true"])
    with pytest.raises(DataFormatError, match="2 groups"):
        choose_c(x, y, np.zeros(48), 2)


def test_benchmark_cell_store_reads_back_by_clip_and_refuses_other_clips(tmp_path):
    """benchmarks/clips.py --cells: a kept fold result is read back row by clip name (another
    order of the same clips gives the same rows) and is a miss for other clips or classes."""
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location(
        "clips_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "clips.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = SimpleNamespace(cells=str(tmp_path), epochs=6, epochs3d=3)
    train = pd.DataFrame({"clip": ["t1", "t2"]})
    test = pd.DataFrame({"clip": ["a", "b", "c"]})
    assert bench.cell_path(SimpleNamespace(cells="", epochs=6, epochs3d=3), "x", 112, "m", train, test) is None
    path = bench.cell_path(args, "x", 112, "m", train, test)
    assert path != bench.cell_path(args, "x", 112, "m", train, test.iloc[:2])
    assert path != bench.cell_path(args, "y", 112, "m", train, test)
    assert bench.read_cell(path, ["a", "b", "c"], ["adl", "fall"]) is None  # nothing kept yet
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    bench.write_cell(path, proba, 10.0, 20.0, "mhi:1", ["a", "b", "c"], ["adl", "fall"])
    p, tr_speed, inf_speed, note = bench.read_cell(path, ["c", "a", "b"], ["adl", "fall"])
    np.testing.assert_array_equal(p, proba[[2, 0, 1]])
    assert (tr_speed, inf_speed, note) == (10.0, 20.0, "mhi:1")
    assert bench.read_cell(path, ["a", "b", "d"], ["adl", "fall"]) is None
    assert bench.read_cell(path, ["a", "b", "c"], ["fall", "adl"]) is None
