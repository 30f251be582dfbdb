import numpy as np
import pytest

from facelab.data.labels import AgeScheme, decode, encode, encode_array, parse_task_value
from facelab.errors import ConfigError, DataFormatError


def test_encode_decode_roundtrip_all_18():
    ids = [encode(*decode(c)) for c in range(18)]
    assert ids == list(range(18))
    assert encode(0, 0, 0) == 0 and encode(1, 1, 2) == 11 and encode(2, 0, 1) == 13


def test_encode_rejects_out_of_range():
    with pytest.raises(DataFormatError):
        encode(3, 0, 0)
    with pytest.raises(DataFormatError):
        decode(18)


def test_encode_array_missing_propagates():
    out = encode_array(np.array([0, -1]), np.array([1, 1]), np.array([2, 2]))
    assert out.tolist() == [5, -1]


def test_age_thresholds_configurable_and_drop_band():
    default, moved = AgeScheme(), AgeScheme(old_min=58, drop_band=(57, 59))
    ages = np.array([29, 30, 57, 58, 59, 60, np.nan])
    assert default.groups(ages).tolist() == [0, 1, 1, 1, 1, 2, -1]
    assert moved.groups(ages).tolist() == [0, 1, 1, 2, 2, 2, -1]
    assert moved.in_drop_band(ages).tolist() == [False, False, True, True, True, False, False]
    with pytest.raises(ConfigError):
        AgeScheme(young_max=60, old_min=30)


def test_parse_values_and_clear_error():
    assert parse_task_value("mask", "with_mask", "x") == 0
    assert parse_task_value("mask", "mask_weared_incorrect", "x") == 1
    assert parse_task_value("gender", "Female", "x") == 1
    assert parse_task_value("gender", "", "x") == -1
    with pytest.raises(DataFormatError, match="row 7.*unknown gender label 'robot'"):
        parse_task_value("gender", "robot", "file.csv row 7")
