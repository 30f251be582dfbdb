"""Typed user-facing errors. Each message says what went wrong, where, and what to do."""

from __future__ import annotations


class FacelabError(Exception):
    """Base class for errors a user can fix (bad input, missing files, bad config)."""


class ImageDecodeError(FacelabError):
    """An image file could not be read or decoded."""


class DataFormatError(FacelabError):
    """A dataset file (CSV, folder layout) does not have the expected shape or values."""


class LeakageError(FacelabError):
    """A split would put the same person (or identical image) on both sides."""


class ConfigError(FacelabError):
    """A configuration value is unknown or out of range."""


class WeightsError(FacelabError):
    """Model weights are missing, corrupt, or cannot be fetched (e.g. offline)."""


class CheckpointError(FacelabError):
    """A checkpoint cannot be loaded or does not match the requested model."""
