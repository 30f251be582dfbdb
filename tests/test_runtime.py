"""facelab.runtime.tune_allocator: applies once on Linux glibc, honours the opt-out."""

import sys

import pytest

from facelab import runtime


def test_opt_out_and_idempotence(monkeypatch):
    monkeypatch.setattr(runtime, "_done", False)
    monkeypatch.setenv("FACELAB_MALLOC_TUNE", "0")
    assert runtime.tune_allocator() is False
    monkeypatch.delenv("FACELAB_MALLOC_TUNE")
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc malloc tuning applies on Linux only")
    first = runtime.tune_allocator()
    assert first is True  # glibc on the CI machines
    assert runtime.tune_allocator() is False  # already applied: a no-op
    big = bytearray(64 * 1024 * 1024)  # big blocks still allocate and free normally
    big[-1] = 1
    assert big[-1] == 1
