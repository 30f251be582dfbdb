"""Dataset readers, person-level splits and leakage checks."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facelab.data.formats import SourceSpec, load_source, load_sources
from facelab.data.labels import AgeScheme
from facelab.data.prepare import assign_splits
from facelab.data.splits import check_folds, check_no_leak, kfold_assign
from facelab.errors import DataFormatError, LeakageError


def test_competition_layout(competition):
    t = load_source(SourceSpec("competition", str(competition)))
    assert len(t) == 12 * 7  # the ._ junk files are ignored
    assert sorted(t["mask"].value_counts().to_dict().items()) == [(0, 60), (1, 12), (2, 12)]
    assert t.groupby("person").size().eq(7).all()
    ev = load_source(SourceSpec("competition-eval", str(competition)))
    assert len(ev) == 10 and ev["sample_id"].iloc[0] == "0000eval.jpg"


def _img(path, color=(1, 2, 3)):
    Image.new("RGB", (16, 16), color).save(path)
    return path.name


def test_labels_csv_partial_labels_and_duplicates(tmp_path):
    a, b, c = _img(tmp_path / "a.png"), _img(tmp_path / "b.png"), _img(tmp_path / "c.png", (9, 9, 9))
    (tmp_path / "l.csv").write_text(f"image,mask,gender,age\n{a},wear,,\n{b},,female,61\n{c},none,male,\n")
    t = load_source(SourceSpec("labels", str(tmp_path / "l.csv")))
    assert t["mask"].tolist() == [0, -1, 2] and t["gender"].tolist() == [-1, 1, 0]
    assert t["person"].iloc[0] == t["person"].iloc[1] != t["person"].iloc[2]  # a, b identical bytes


def test_bad_csvs_name_file_and_problem(tmp_path):
    (tmp_path / "x.csv").write_text("file,label\na.png,wear\n")
    with pytest.raises(DataFormatError, match="x.csv.*missing column 'image'"):
        load_source(SourceSpec("labels", str(tmp_path / "x.csv")))
    (tmp_path / "y.csv").write_text("image,mask\na.png,maybe\n")
    with pytest.raises(DataFormatError, match="y.csv row 2.*unknown mask label 'maybe'"):
        load_source(SourceSpec("labels", str(tmp_path / "y.csv")))
    (tmp_path / "z.csv").write_text("image,x1,y1,label\na.png,1,2,with_mask\n")
    with pytest.raises(DataFormatError, match=r"z.csv.*missing column.*x2"):
        load_source(SourceSpec("boxes", str(tmp_path / "z.csv")))
    with pytest.raises(DataFormatError, match="not found"):
        load_source(SourceSpec("competition", str(tmp_path / "none")))


def test_kfold_never_splits_a_person(competition):
    t = load_source(SourceSpec("competition", str(competition)))
    folds = kfold_assign(t, 3, seed=1)
    assert (pd.Series(folds).groupby(t["person"].to_numpy()).nunique() == 1).all()
    assert set(folds) == {0, 1, 2}
    bad = folds.copy()
    bad[0] = (bad[1] + 1) % 3  # move one photo of a person to another fold
    with pytest.raises(LeakageError, match="more than one fold"):
        check_folds(t, bad)


def test_default_split_is_leak_free_and_leak_is_caught(competition):
    t = load_source(SourceSpec("competition", str(competition)))
    split = assign_splits(t, 0.25, 0.25, 0, AgeScheme())
    for a in ("train", "val", "test"):
        for b in ("train", "val", "test"):
            if a < b:
                assert not set(t.loc[split == a, "person"]) & set(t.loc[split == b, "person"])
    leaky = t.sample(frac=1, random_state=0)  # an image-level split, as a naive script does
    with pytest.raises(LeakageError, match="leaks"):
        check_no_leak(leaky.iloc[:50], leaky.iloc[50:])


def test_several_sources_concatenate(tmp_path, competition):
    a = _img(tmp_path / "a.png")
    (tmp_path / "l.csv").write_text(f"image,age,gender\n{a},33,male\n")
    t = load_sources([SourceSpec("competition", str(competition)),
                      SourceSpec("labels", str(tmp_path / "l.csv"), name="extra")])
    assert len(t) == 85 and set(t["source"]) == {"comp", "extra"}
    assert np.isnan(t["x1"]).all()
