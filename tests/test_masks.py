"""The mask / accessory renderer and `make-competition` (synthetic faces, fake landmarks)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.conftest import run_cli

from facelab.detect.dlib_backend import five_from_68
from facelab.errors import ConfigError
from facelab.masks import (
    MEAN_SHAPE68,
    LandmarksError,
    MaskRenderer,
    RenderSpec,
    render,
    to68,
)
from facelab.masks.competition import build_competition, class_id
from facelab.types import Face

H, W = 220, 180
PTS = MEAN_SHAPE68 * 1.4 + np.array([12.0, -5.0])  # a face in the upper part, room below


def synthetic_face(seed: int = 0) -> np.ndarray:
    """A textured skin-coloured face with darker eyes, nose and mouth at the fake landmarks."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.full((H, W, 3), (90, 110, 130), np.uint8)
    hull = cv2.convexHull(np.vstack([PTS[:17], PTS[17:27] - [0, 25]]).astype(np.int32))
    cv2.fillConvexPoly(img, hull, (205, 160, 135))
    for idx in (range(36, 42), range(42, 48), range(48, 60)):
        cv2.fillPoly(img, [PTS[list(idx)].astype(np.int32)], (70, 40, 40))
    cv2.polylines(img, [PTS[27:36].astype(np.int32)], False, (150, 110, 95), 2)
    return np.clip(img.astype(int) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)


def region(pts: np.ndarray, pad: float = 0.0) -> tuple[slice, slice]:
    x0, y0 = np.floor(pts.min(0) - pad).astype(int)
    x1, y1 = np.ceil(pts.max(0) + pad).astype(int)
    return slice(max(y0, 0), y1 + 1), slice(max(x0, 0), x1 + 1)


def changed(a: np.ndarray, b: np.ndarray, where) -> float:
    """Share of pixels in ``where`` (a region or "eyes") that differ by more than 2 levels."""
    if where == "eyes":
        return (changed(a, b, EYE_L) + changed(a, b, EYE_R)) / 2
    d = np.abs(a[where].astype(int) - b[where].astype(int)).max(-1)
    return float((d > 2).mean())


FACE = synthetic_face()
EYE_L, EYE_R = region(PTS[36:42], 1), region(PTS[42:48], 1)
MOUTH = region(PTS[60:68], 0)  # inner lips
NOSE_TIP = region(PTS[[30]], 2)
UNDER_CHIN = region(PTS[[57]] + 0.82 * (PTS[[8]] - PTS[[57]]), 1)
FOREHEAD = region(PTS[17:27] - [0, 0.9 * 49], 0)[0], region(PTS[20:24])[1]
BELOW_FACE = region(PTS[[8]] + [0, 0.8 * 49], 3)


def test_same_seed_same_pixels_and_seeds_differ() -> None:
    a = render(FACE, PTS, kind="cloth", wear="correct", accessories=("cap",), seed=7)
    b = render(FACE, PTS, kind="cloth", wear="correct", accessories=("cap",), seed=7)
    c = render(FACE, PTS, kind="cloth", wear="correct", accessories=("cap",), seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == FACE.shape
    assert np.array_equal(FACE, synthetic_face())  # the input is not modified


@pytest.mark.parametrize("kind", ["surgical", "kn95", "n95", "cloth"])
def test_correct_mask_covers_nose_and_mouth_not_eyes(kind: str) -> None:
    out = render(FACE, PTS, kind=kind, wear="correct", seed=1)
    assert changed(FACE, out, MOUTH) > 0.95
    assert changed(FACE, out, NOSE_TIP) > 0.95
    assert changed(FACE, out, "eyes") == 0.0


def test_kinds_look_different() -> None:
    outs = [render(FACE, PTS, kind=k, seed=3) for k in ("surgical", "kn95", "n95", "cloth")]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert changed(outs[i], outs[j], MOUTH) > 0.3


def test_below_nose_leaves_the_nose_tip() -> None:
    out = render(FACE, PTS, kind="surgical", wear="below_nose", seed=2)
    assert changed(FACE, out, NOSE_TIP) == 0.0
    assert changed(FACE, out, MOUTH) > 0.95


@pytest.mark.parametrize("wear", ["mouth_uncovered", "on_chin"])
def test_lowered_masks_leave_nose_and_mouth(wear: str) -> None:
    out = render(FACE, PTS, kind="kn95", wear=wear, seed=4)
    assert changed(FACE, out, NOSE_TIP) == 0.0
    assert changed(FACE, out, MOUTH) == 0.0
    assert changed(FACE, out, UNDER_CHIN) > 0.95


def test_incorrect_picks_a_variant_by_seed_and_none_is_the_photo() -> None:
    variants = {RenderSpec(wear="incorrect", seed=s).resolved_wear for s in range(30)}
    assert variants == {"below_nose", "mouth_uncovered", "on_chin"}
    assert RenderSpec(wear="incorrect", seed=5).mask_label == 1
    assert RenderSpec(wear="below_nose").mask_label == 1
    assert RenderSpec(wear="none").mask_label == 2 and RenderSpec().mask_label == 0
    assert np.array_equal(render(FACE, PTS, wear="none", seed=9), FACE)


def test_accessories_change_their_own_region() -> None:
    sun = render(FACE, PTS, wear="none", accessories=("sunglasses",), seed=1)
    assert changed(FACE, sun, "eyes") > 0.9 and changed(FACE, sun, MOUTH) == 0.0
    assert sun[EYE_L].mean() < FACE[EYE_L].mean()  # dark lenses
    glasses = render(FACE, PTS, wear="none", accessories=("eyeglasses",), seed=1)
    assert 0.0 < changed(FACE, glasses, "eyes") and changed(FACE, glasses, MOUTH) == 0.0
    assert changed(FACE, glasses, "eyes") < changed(FACE, sun, "eyes")  # clear lenses
    cap = render(FACE, PTS, wear="none", accessories=("cap",), seed=1)
    assert changed(FACE, cap, FOREHEAD) > 0.95 and changed(FACE, cap, MOUTH) == 0.0
    scarf = render(FACE, PTS, wear="none", accessories=("scarf",), seed=1)
    assert changed(FACE, scarf, BELOW_FACE) > 0.95
    assert changed(FACE, scarf, MOUTH) == 0.0 and changed(FACE, scarf, "eyes") == 0.0


def test_five_points_fit_the_mean_face() -> None:
    five = five_from_68(PTS)
    assert np.allclose(to68(five), PTS, atol=0.5)
    out = render(FACE, five, kind="surgical", seed=1)
    assert changed(FACE, out, MOUTH) > 0.95 and changed(FACE, out, "eyes") == 0.0
    face = Face(box=(0.0, 0.0, W, H), landmarks=five)
    assert np.array_equal(render(FACE, face, seed=1), out)
    face.extra["landmarks68"] = PTS
    assert np.array_equal(render(FACE, face, seed=1), render(FACE, PTS, seed=1))


@pytest.mark.parametrize("bad", [None, np.zeros((4, 2)), np.zeros(136),
                                 np.full((68, 2), np.nan), Face(box=(0, 0, 10, 10))])
def test_missing_or_bad_landmarks_raise(bad) -> None:
    with pytest.raises(LandmarksError):
        render(FACE, bad)


def test_unknown_options_raise() -> None:
    with pytest.raises(ConfigError):
        render(FACE, PTS, kind="gas")
    with pytest.raises(ConfigError):
        render(FACE, PTS, wear="sideways")
    with pytest.raises(ConfigError):
        render(FACE, PTS, accessories=("hat",))
    with pytest.raises(ConfigError):
        MaskRenderer(wear_weights={"correct": 0.0})


def test_sampler_is_deterministic_and_follows_weights() -> None:
    r = MaskRenderer(wear_weights={"correct": 3, "none": 1}, accessory_prob=0.5, seed=2)
    specs = [r.spec(i) for i in range(200)]
    assert specs == [MaskRenderer(wear_weights={"correct": 3, "none": 1}, accessory_prob=0.5,
                                  seed=2).spec(i) for i in range(200)]
    share = np.mean([s.wear == "correct" for s in specs])
    assert 0.65 < share < 0.85
    assert {s.kind for s in specs} == {"surgical", "kn95", "n95", "cloth"}
    assert any(s.accessories for s in specs)
    out, spec = r(FACE, PTS, index=5)
    assert spec == r.spec(5) and np.array_equal(out, render(FACE, PTS, spec.kind, spec.wear,
                                                             spec.accessories, spec.seed))


# ----------------------------------------------------------------------------- make-competition


def face_set(root: Path, n: int = 3, bad: bool = False) -> Path:
    """n synthetic faces + labels.csv (image, age, gender, race); optionally one corrupt file."""
    (root / "images").mkdir(parents=True)
    rows = [("image", "age", "gender", "race")]
    ages, genders = [22, 45, 71], ["male", "female", "female"]
    for i in range(n):
        name = f"images/f{i}.{'png' if i == 1 else 'jpg'}"
        Image.fromarray(synthetic_face(i)).save(root / name)
        rows.append((name, ages[i % 3], genders[i % 3], "asian"))
    if bad:
        (root / "images" / "broken.jpg").write_bytes(b"not an image")
        rows.append(("images/broken.jpg", 30, "male", "white"))
    with (root / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root / "labels.csv"


def fake_landmarks(image: np.ndarray) -> np.ndarray:
    return PTS


def test_make_competition_layout_reads_back_with_labels(tmp_path: Path) -> None:
    from facelab.data.formats import SourceSpec, load_source

    labels = face_set(tmp_path / "faces", bad=True)
    rep = build_competition(labels, tmp_path / "comp", eval_fraction=0.0, landmarks=fake_landmarks)
    assert rep.train_people == 3 and rep.written == 3 and len(rep.skipped) == 1
    assert "broken.jpg" in (tmp_path / "comp" / "skipped.csv").read_text()
    table = load_source(SourceSpec("competition", str(tmp_path / "comp")))
    assert len(table) == 21
    stems = table["sample_id"].str.split("/").str[1].str.split(".").str[0]
    expect = {**{f"mask{i}": 0 for i in range(1, 6)}, "incorrect_mask": 1, "normal": 2}
    assert (table["mask"].to_numpy() == stems.map(expect).to_numpy()).all()
    by_person = table.groupby("person").agg(gender=("gender", "first"), age=("age", "first"),
                                            n=("path", "size"))
    assert sorted(zip(by_person.gender, by_person.age)) == [(0, 22.0), (1, 45.0), (1, 71.0)]
    assert (by_person.n == 7).all()
    # five different renders, an incorrect one, and the photo's own bytes as normal
    folder = Path(table.path[0]).parent
    masks = [np.asarray(Image.open(folder / f"mask{i}.jpg")) for i in range(1, 6)]
    assert all(not np.array_equal(masks[0], m) for m in masks[1:])
    person = table[table.path.str.contains("f1.png") | table.sample_id.str.contains("normal.png")]
    assert len(person) == 1
    assert Path(person.path.iloc[0]).read_bytes() == (tmp_path / "faces/images/f1.png").read_bytes()


def test_make_competition_eval_split_and_answers(tmp_path: Path) -> None:
    from facelab.data.formats import SourceSpec, load_source

    labels = face_set(tmp_path / "faces")
    rep = build_competition(labels, tmp_path / "comp", eval_fraction=0.5, seed=1,
                            landmarks=fake_landmarks)
    assert rep.train_people + rep.eval_people == 3
    ev = load_source(SourceSpec("competition-eval", str(tmp_path / "comp")))
    assert len(ev) == 7 * rep.eval_people
    with (tmp_path / "comp/eval/answers.csv").open() as fh:
        answers = list(csv.DictReader(fh))
    assert len(answers) == len(ev)
    for a in answers:
        assert int(a["ans"]) == class_id(int(a["mask"]), int(a["gender"]), int(a["age"]))
        assert (tmp_path / "comp/eval/images" / a["ImageID"]).is_file()
    train = load_source(SourceSpec("competition", str(tmp_path / "comp")))
    eval_people = {a["person"] for a in answers}
    assert not eval_people & {p.split("/")[-1] for p in train.person}


def test_make_competition_resumes(tmp_path: Path) -> None:
    labels = face_set(tmp_path / "faces")
    out = tmp_path / "comp"
    first = build_competition(labels, out, eval_fraction=0.0, limit=2, landmarks=fake_landmarks)
    assert (first.written, first.already_there) == (2, 0)
    folder = next((out / "train/images").iterdir())
    before = (folder / "mask3.jpg").read_bytes()
    (folder / "mask3.jpg").unlink()
    calls = []
    second = build_competition(labels, out, eval_fraction=0.0,
                               landmarks=lambda im: calls.append(1) or PTS)
    assert (second.written, second.already_there, second.train_people) == (2, 1, 3)
    assert len(calls) == 2  # the complete person was not rendered again
    assert (folder / "mask3.jpg").read_bytes() == before  # re-rendered identically
    assert len((out / "train/train.csv").read_text().strip().splitlines()) == 4


def test_make_competition_cli_lists_bad_images(tmp_path: Path) -> None:
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces/x.jpg").write_bytes(b"junk")
    (tmp_path / "faces/labels.csv").write_text("image,age,gender\nx.jpg,30,female\n")
    res = run_cli("make-competition", str(tmp_path / "faces/labels.csv"), "--out",
                  str(tmp_path / "comp"), "--no-progress", cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert "skipped" in res.stderr and "x.jpg" in res.stderr
    bad = run_cli("make-competition", str(tmp_path / "nope.csv"), cwd=tmp_path)
    assert bad.returncode == 2 and "not found" in bad.stderr


# ----------------------------------------------------------------------------- make-masked


def test_masked_set_labels_follow_renders_and_read_back(tmp_path: Path) -> None:
    from facelab.data.formats import SourceSpec, load_source
    from facelab.masks.masked_set import build_masked_set

    labels = face_set(tmp_path / "faces", n=6, bad=True)
    rep = build_masked_set(labels, tmp_path / "m", wear_weights={"correct": 1, "incorrect": 1, "none": 1},
                           seed=2, landmarks=fake_landmarks)
    assert rep.rows == 6 and len(rep.skipped) == 1 and rep.unrendered == 0
    table = load_source(SourceSpec("labels", str(tmp_path / "m" / "labels.csv")))
    assert len(table) == 6 and (table["gender"] >= 0).all() and (table["age"] > 0).all()
    rows = list(csv.DictReader((tmp_path / "m" / "labels.csv").open()))
    assert {r["mask"] for r in rows} <= {"correct", "incorrect", "none"}
    for r, mask in zip(rows, table["mask"]):
        out = np.asarray(Image.open(tmp_path / "m" / r["image"]))
        src = np.asarray(Image.open(tmp_path / "faces" / "images" / f"f{int(r['person'][1:])}."
                                    f"{'png' if r['person'] == 'p000001' else 'jpg'}").convert("RGB"))
        mouth = np.abs(src[MOUTH].astype(int) - out[MOUTH].astype(int)).mean()
        # the label says what the pixels show: a rendered mask covers the mouth unless it was
        # pulled below it; "none" is the photo (JPEG noise only)
        if r["mask"] == "none":
            assert mouth < 8 and mask == 2
        elif r["mask"] == "correct":
            assert mouth > 30 and mask == 0
        else:
            assert mask == 1
    again = build_masked_set(labels, tmp_path / "m", wear_weights={"correct": 1, "incorrect": 1, "none": 1},
                             seed=2, landmarks=lambda im: (_ for _ in ()).throw(AssertionError("re-rendered")))
    assert (again.written, again.already_there) == (0, 6)
    assert (tmp_path / "m" / "labels.csv").read_text().count("\n") == 7
    # other settings into the same folder would relabel images rendered with the old ones
    from facelab.errors import ConfigError

    with pytest.raises(ConfigError, match="was built with"):
        build_masked_set(labels, tmp_path / "m", wear_weights={"none": 1}, seed=5)


def test_masked_set_keeps_faces_without_landmarks_as_none(tmp_path: Path) -> None:
    from facelab.masks.masked_set import build_masked_set

    def no_face(image):
        raise LandmarksError("no face found")

    labels = face_set(tmp_path / "faces", n=3)
    rep = build_masked_set(labels, tmp_path / "m", wear_weights={"correct": 1.0}, landmarks=no_face)
    assert rep.rows == 3 and rep.unrendered == 3 and rep.counts == {"none": 3}


def test_make_masked_cli(tmp_path: Path) -> None:
    labels = face_set(tmp_path / "faces", n=2)
    bad = run_cli("make-masked", str(labels), "--wear", "correct", cwd=tmp_path)
    assert bad.returncode == 2 and "state=weight" in bad.stderr
    res = run_cli("make-masked", str(tmp_path / "nope.csv"), cwd=tmp_path)
    assert res.returncode == 2 and "not found" in res.stderr


def test_render_masks_swaps_training_faces_only_and_keeps_the_split(tmp_path: Path, monkeypatch) -> None:
    import facelab.masks.masked_set as ms
    from facelab.data.cache import PixelSettings
    from facelab.data.formats import SourceSpec
    from facelab.data.labels import AgeScheme
    from facelab.data.prepare import prepare
    from facelab.errors import DataFormatError

    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ms, "detect_landmarks68", fake_landmarks)
    labels = face_set(tmp_path / "faces", n=30)
    args = (PixelSettings(48, "none", 0.0, True, "center"), AgeScheme(), 0.2, 0.2, 3)
    plain = prepare([SourceSpec("labels", str(labels), "utk")], *args)
    spec = SourceSpec("labels", str(labels), "utk", render_masks={"wear": {"correct": 1.0}, "seed": 1})
    masked = prepare([spec], *args)
    assert (masked.split == plain.split).all()  # the split is drawn on the photos
    fit_rows = np.isin(masked.split, ["train", "val"])
    assert fit_rows.any() and (~fit_rows).any()
    assert (masked.targets["mask"][fit_rows] == 0).all() and (masked.targets["mask"][~fit_rows] == -1).all()
    assert (masked.table["path"][~fit_rows] == plain.table["path"][~fit_rows]).all()
    assert masked.table["path"][fit_rows].str.contains("masked-sets").all()
    assert (masked.targets["age"] == plain.targets["age"]).all()
    monkeypatch.setattr(ms, "build_masked_set", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    again = prepare([spec], *args)  # the copy is reused, not rebuilt
    assert (again.table["path"] == masked.table["path"]).all()
    with pytest.raises(DataFormatError, match="render_masks takes wear and seed"):
        prepare([SourceSpec("labels", str(labels), render_masks={"colour": "red"})], *args)
