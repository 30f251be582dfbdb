"""Placeholder, filled by the masked-face detector."""
